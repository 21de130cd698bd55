"""The real generator of an evaluation: the device-side CoGenesis generator behind the evaluator's
:class:`~fedcogen.simulations.evaluation.evaluate.Generator` protocol, and what the cloud saw of each answer."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from fedcogen.client.cogen.cogen_device import CogenDevice, DeviceConfig
from fedcogen.simulations.evaluation.evaluate import EvalAnswer
from fedcogen.variants import COLLABORATIVE_VARIANTS, PERSONALISED_VARIANT


def cloud_view(records: Iterable[Any], tokenizer: Any = None) -> list[bytes | str]:
    """Everything the cloud received in a list of ``WireCapture`` records, in searchable form.

    The raw payload of every message the device *sent* (strings inside protobuf are plain UTF-8),
    plus, when a tokenizer is given, the decoded text of the token ids the device sent in Decode
    streams (``open.instruction_ids`` and committed ``step.token_ids``): the logit variant reveals
    its answer to the cloud as token ids, which a byte search alone would never find.
    """
    out: list[bytes | str] = []
    ids: list[int] = []
    for rec in records:
        if getattr(rec, "direction", "sent") != "sent":
            continue
        raw = getattr(rec, "raw", b"")
        if raw:
            out.append(raw)
        msg = getattr(rec, "message", None)
        try:
            kind = msg.WhichOneof("kind") if msg is not None else None
        except (AttributeError, ValueError):  # not a DecodeRequest
            kind = None
        if kind == "open":
            if ids and tokenizer is not None:  # a new session: never glue two sessions' tokens together
                out.append(tokenizer.decode(ids))
            ids = []
            ids.extend(msg.open.instruction_ids)
        elif kind == "step":
            ids.extend(msg.step.token_ids)
    if ids and tokenizer is not None:
        out.append(tokenizer.decode(ids))
    return out


class CogenGenerator:
    """Adapter from :class:`fedcogen.client.cogen.cogen_device.CogenDevice` to the :class:`Generator` protocol.

    Each answer's wire records are turned into :func:`cloud_view` (what the cloud received, token
    ids decoded), so leakage is measured per answer. With a ``personalised`` device (the base model
    plus the federated LoRA adapter; PEFT injects LoRA layers in place, so it cannot share the plain
    model), ``device_personalised`` and the CoGenesis variants (sketch, logit, gated, draft_edit) run on it:
    the question is whether the cloud helps the *personalised* device. ``device`` and ``cloud`` stay
    the base model's baselines.
    """

    COLLABORATIVE = COLLABORATIVE_VARIANTS

    def __init__(self, device: Any, personalised: Any = None) -> None:
        self.device = device
        self.personalised = personalised
        self.private_values: dict[str, list[str]] = {}  # user id -> the device's stored private values

    @classmethod
    def create(
        cls,
        *,
        device_model: str,
        cloud_address: str | None,
        adapter: str | None = None,
        insecure: bool = False,
        tls_dir: str | None = None,
        token: str | None = None,
        seed: int = 0,
        personalised: bool = False,
        **device_settings: Any,
    ) -> CogenGenerator:
        """Load the device model (and, if asked, a personalised copy with ``adapter``); any other
        :class:`DeviceConfig` field (``gated_threshold``, ``repetition_penalty``, ...) may be given."""
        def make(with_adapter: str | None) -> Any:
            cfg = DeviceConfig(device_model=device_model, seed=seed, adapter=with_adapter, cloud=cloud_address,
                               tls_dir=tls_dir, token=token, insecure=insecure, **device_settings)
            return CogenDevice(cfg)

        return cls(make(None), make(adapter) if personalised else None)

    def _device_for(self, variant: str) -> tuple[Any, str]:
        if variant == PERSONALISED_VARIANT:
            if self.personalised is None:
                raise ValueError(f"variant {PERSONALISED_VARIANT} needs an adapter")
            return self.personalised, "device"
        if variant in self.COLLABORATIVE and self.personalised is not None:
            return self.personalised, variant
        return self.device, variant

    def generate(self, task: Any, variant: str) -> EvalAnswer:
        return self.generate_batch([task], variant)[0]

    def generate_batch(self, tasks: Sequence[Any], variant: str) -> list[EvalAnswer]:
        device, real_variant = self._device_for(variant)
        values = [self.private_values.get(getattr(t, "user_id", ""), []) for t in tasks]
        results = device.generate_batch([(t.instruction, t.private_context) for t in tasks], real_variant, values)
        device.capture.clear()  # a batch of one records into the device's own capture
        return [
            EvalAnswer(
                text=res.text, tokens=res.tokens, tokens_per_s=res.tokens_per_s, bytes_sent=res.bytes_sent,
                bytes_received=res.bytes_received, cloud_call_fraction=res.cloud_call_fraction,
                latency_s=res.latency_s, fell_back=res.fell_back, warnings=list(res.warnings),
                cloud_received=cloud_view(res.wire_records, device.tokenizer),
                draft_tokens=res.draft_tokens, draft_accepted=res.draft_accepted,
                device_written=res.device_written, device_passes=res.device_passes, device_fed=res.device_fed,
            )
            for res in results
        ]

    def close(self) -> None:
        for dev in (self.device, self.personalised):
            if dev is not None:
                dev.close()
