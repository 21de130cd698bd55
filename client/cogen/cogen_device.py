"""The CoGenesis device: a small LM with the private context, helped by a cloud LM over gRPC.

Variants (``CogenDevice.generate(..., variant=...)``):

* ``device``  - the device SLM alone, conditioned on private context + instruction.
* ``cloud``   - the cloud LM alone, conditioned on the bare instruction (over ``Decode``).
* ``sketch``  - the cloud writes an outline from the bare instruction (``Sketch``); the device writes
  the answer from ``device_prompt(instruction, private_context, sketch)``.
* ``logit``   - every step fuses the device's distribution (with context) and the cloud's (instruction +
  the tokens generated so far, never the context). The generated prefix DOES reach the cloud. By
  default in speculative rounds (``client/cogen/decoders/speculative.py``: the cloud scores a device draft in
  one forward; identical tokens); ``draft_tokens=0``, and lockstep batches of more than ``draft_max_batch``
  rows, give one round trip per token (cheaper there: every draft forward costs the whole batch).
* ``gated``   - like ``logit`` but the device asks the cloud only when it is uncertain (entropy or
  top-2 margin past a calibrated threshold); committed tokens go ahead in silent chunks and the device
  runs a guessed forward while the cloud answers (``client/cogen/decoders/gated.py``).
* ``draft_edit`` - the cloud drafts the answer from the bare instruction (the ``cloud`` baseline's stream);
  the device, with the private context, keeps the draft's tokens it finds likely enough and rewrites the
  rest, scoring a block of draft tokens per forward (``client/cogen/decoders/draft_edit.py``, P³). Nothing
  the device writes is sent.
* ``cloud_with_context`` - EVALUATION ONLY privacy-violating upper bound: the cloud decodes like ``cloud``
  but its prompt carries the private context (the wire audit must flag it).

Each variant is decoded by one :class:`~fedcogen.client.cogen.decoders.base.Decoder` (``decoder_for``);
the decoders are siblings in ``client/cogen/decoders/`` and use only this class's public methods.

Robustness: every call has a deadline (per step, not just per stream); when the cloud dies
(UNAVAILABLE / DEADLINE_EXCEEDED / CANCELLED) the device reconnects and replays (again after any answer
in between: an idle reap is not a dead cloud), else finishes device-only with a warning. It never hangs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from fedcogen.client.cogen.adapter_loading import load_adapter
from fedcogen.client.cogen.batch_lm import BatchLM
from fedcogen.client.cogen.cloud_client import CloudClient, DecodeSession
from fedcogen.client.cogen.decoders.base import Decoder
from fedcogen.client.cogen.decoders.draft_edit import DraftEditDecoder
from fedcogen.client.cogen.decoders.gated import GatedDecoder
from fedcogen.client.cogen.decoders.per_token import PerTokenDecoder
from fedcogen.client.cogen.decoders.sketch import SketchDecoder
from fedcogen.client.cogen.decoders.speculative import SpeculativeDecoder
from fedcogen.client.cogen.decoding import RepetitionControl, choose
from fedcogen.client.cogen.device_config import DeviceConfig
from fedcogen.client.cogen.fusion import FusionGate, entropy, fuse_logprobs, top2_margin
from fedcogen.client.cogen.lockstep_rows import Row, RunStats
from fedcogen.client.cogen.private_spans import PrivateSpanGuard
from fedcogen.client.cogen.wire_capture import WireCapture
from fedcogen.models import LoadedModel, ModelError, chat_input_ids, load_model, stop_token_ids
from fedcogen.prompts import DEVICE_SYSTEM, cloud_prompt, device_prompt, fit_context
from fedcogen.protocols.codecs import logit_codec
from fedcogen.variants import VARIANTS

__all__ = ["VARIANTS", "CogenDevice", "DeviceAnswer", "DeviceConfig"]

log = logging.getLogger(__name__)


@dataclass
class DeviceAnswer:
    """One CoGenesis answer from the device: the text and what it cost (bytes, cloud calls, time)."""

    text: str
    variant: str
    tokens: int
    tokens_per_s: float
    cloud_calls: int
    cloud_call_fraction: float
    bytes_sent: int
    bytes_received: int
    fell_back: bool
    latency_s: float
    token_ids: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sketch: str | None = None
    cloud_round_trips: int = 0  # times the device waited for cloud distributions (per-token: one per call; speculative: one per round)
    private_tokens: int = 0  # committed tokens kept off the wire by private-span protection
    # draft_edit (decoders/draft_edit.py): the cloud's draft length, the draft tokens kept, the tokens the device
    # wrote itself; device_passes: device forwards after the prefill (draft_edit and the device-only variants)
    draft_tokens: int = 0
    draft_accepted: int = 0
    device_written: int = 0
    device_passes: int = 0
    device_fed: int = 0  # tokens those forwards appended (their mean width prices a pass: bench draft-edit)
    wire_records: list[Any] = field(default_factory=list, repr=False)  # what this answer put on the wire

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "wire_records"}


class CogenDevice:
    """Device-side CoGenesis client. Build once, call :meth:`generate` per (instruction, context)."""

    def __init__(
        self,
        config: DeviceConfig,
        device_lm: LoadedModel | None = None,
        gate: FusionGate | None = None,
        capture: WireCapture | None = None,
    ) -> None:
        config.validate()
        self.config = config
        lm = device_lm if device_lm is not None else load_model(config.device_model, seed=config.seed, device=config.device)
        if config.adapter:
            lm = load_adapter(lm, config.adapter)
        self.lm = lm
        changed = config.fit_vocabulary(lm.vocab_size)
        if changed:
            log.warning(changed)
        self.tokenizer = lm.tokenizer
        self.stop_ids = stop_token_ids(self.tokenizer)
        self.fingerprint = logit_codec.tokenizer_fingerprint(self.tokenizer)
        self.gate = gate if gate is not None else (FusionGate.load(config.gate_path) if config.gate_path else None)
        self.capture = capture if capture is not None else WireCapture()
        self._client: CloudClient | None = None
        self._rng = torch.Generator().manual_seed(config.seed)
        self.repetition = RepetitionControl(config.repetition_penalty, config.no_repeat_ngram)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (self.tokenizer.eos_token_id or 0))

    # ----------------------------------------------------------------- plumbing
    @property
    def client(self) -> CloudClient:
        if self._client is None:
            if not self.config.cloud:
                raise ValueError("this variant needs --cloud HOST:PORT")
            self._client = CloudClient(
                self.config.cloud,
                tls_dir=self.config.tls_dir,
                token=self.config.token,
                insecure=self.config.insecure,
                capture=self.capture,
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def device_ids(self, instruction: str, private_context: str, sketch: str | None = None) -> list[int]:
        """The device's prompt ids; a context too long for ``max_prompt_tokens`` is shrunk with
        :func:`fit_context` (profile and newest texts kept, oldest history dropped first)."""
        def ids(ctx: str) -> list[int]:
            return chat_input_ids(self.tokenizer, device_prompt(instruction, ctx, sketch), system=DEVICE_SYSTEM)

        out = ids(private_context)
        if len(out) <= self.config.max_prompt_tokens:
            return out
        return ids(fit_context(private_context, lambda c: len(ids(c)), self.config.max_prompt_tokens))

    # ----------------------------------------------------------------- what the decoders use (decoders/base.py)
    @property
    def vocab_size(self) -> int:
        return self.lm.vocab_size

    def fuse(self, lp_small: torch.Tensor, lp_large: torch.Tensor) -> torch.Tensor:
        """The fused log-probs of one position: the learned gate where one is loaded, else the fixed weight."""
        if self.gate is not None:
            with torch.no_grad():
                return self.gate(lp_small, lp_large)
        return fuse_logprobs(lp_small, lp_large, self.config.weight)

    def uncertain(self, lp_small: torch.Tensor) -> bool:
        """The gated variant's rule: ask the cloud where the device's distribution is this unsure."""
        if self.config.gated_metric == "margin":
            return float(top2_margin(lp_small)) < self.config.gated_threshold
        return float(entropy(lp_small)) > self.config.gated_threshold

    def check_fingerprint(self, session: DecodeSession) -> None:
        """Refuse a cloud whose tokenizer differs: fusing distributions over different vocabularies is noise."""
        if session.fingerprint and session.fingerprint != self.fingerprint:
            raise ModelError(
                f"tokenizer mismatch: cloud tokenizer {session.fingerprint} != device tokenizer {self.fingerprint}; "
                "logit fusion needs the same vocabulary (use the sketch variant for unrelated models)"
            )

    def choose(self, lp: torch.Tensor, generated: Sequence[int]) -> int:
        """The next token from ``lp`` under the device's rules (repetition control; greedy or sampled)."""
        cfg = self.config
        return choose(lp, generated, self.repetition, sample=cfg.sample, temperature=cfg.temperature, rng=self._rng)

    def open_session(self, text: str, max_tokens: int | None = None, client: CloudClient | None = None) -> DecodeSession:
        """A cloud ``Decode`` stream conditioned on ``text`` (the bare instruction; the upper bound's full prompt)."""
        return (client or self.client).open_session(
            text,
            k=self.config.k,
            encoding=self.config.encoding,
            max_tokens=max_tokens or self.config.max_new_tokens + 1,
            step_timeout=self.config.step_timeout_s,
        )

    def batch_lm(self) -> BatchLM:
        """A fresh lockstep batch over the device model (prefill it with the rows' prompts)."""
        return BatchLM(self.lm.model, self.pad_id)

    def decoder_for(self, variant: str, rows: Sequence[Row]) -> Decoder:
        """The decoding rule of ``variant`` over ``rows`` (their prompts and cloud texts already set)."""
        cfg = self.config
        speculative = (cfg.draft_tokens > 0 and len(rows) <= cfg.draft_max_batch and not cfg.sample
                       and cfg.encoding != "full" and cfg.k <= 1024)
        if variant == "logit" and speculative:
            return SpeculativeDecoder(self, rows, cfg.draft_tokens, cfg.draft_min_p, cfg.draft_min_live)
        if variant == "gated":
            return GatedDecoder(self, rows)
        if variant == "sketch":
            return SketchDecoder(self, rows)
        if variant == "draft_edit":
            return DraftEditDecoder(self, rows)
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant '{variant}' (choose from {', '.join(VARIANTS)})")
        cloud_only = variant in ("cloud", "cloud_with_context")
        return PerTokenDecoder(self, rows, use_cloud=cloud_only or variant == "logit", use_device=not cloud_only)

    # ----------------------------------------------------------------- public API
    def generate(self, instruction: str, private_context: str, variant: str = "logit") -> DeviceAnswer:
        """Generate one answer with the chosen variant (see module docstring)."""
        return self.generate_batch([(instruction, private_context)], variant)[0]

    def generate_batch(self, items: Sequence[tuple[str, str]], variant: str = "logit",
                       private_values: Sequence[Sequence[str]] | None = None) -> list[DeviceAnswer]:
        """Answer several (instruction, private context) pairs in lockstep: one batched device forward
        per step, every row's cloud step in flight at once (the cloud batches them).

        A batch of one uses this device's own cloud client and capture; larger batches give each row
        its own channel and :class:`WireCapture`, so bytes and the wire view stay exact per answer.
        Each row's latency runs from the batch start to the moment that row finished.
        ``private_values``: per item, private values the device holds beyond the context (its user's
        stored profile); private-span protection keeps them off the wire too.
        """
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant '{variant}' (choose from {', '.join(VARIANTS)})")
        if not items:
            return []
        started = time.perf_counter()
        rows = [Row(instr, ctx, RunStats(variant), cloud_text=cloud_prompt(instr)) for instr, ctx in items]
        own_clients: list[CloudClient] = []
        try:
            if variant != "device":
                for row in rows:
                    if len(rows) == 1:
                        row.client = self.client
                    else:
                        row.client = CloudClient(self.config.cloud or "", tls_dir=self.config.tls_dir,
                                                 token=self.config.token, insecure=self.config.insecure,
                                                 capture=WireCapture())
                        own_clients.append(row.client)
                    row.mark = (len(row.client.capture.records), row.client.capture.sent_bytes,
                                row.client.capture.received_bytes)
            if variant == "cloud_with_context":
                self._upper_bound_texts(rows)
            elif variant != "sketch":  # the sketch decoder sets its prompts once the outlines are in
                for i, row in enumerate(rows):
                    row.prompt = self.device_ids(row.instruction, row.context)
                    if variant in ("logit", "gated") and self.config.protect_private_spans:
                        extra = private_values[i] if private_values else ()
                        row.guard = PrivateSpanGuard.for_context(self.tokenizer, row.context, extra,
                                                                 detector=self.config.private_spans,
                                                                 instruction=row.instruction)
            self.decoder_for(variant, rows).run()
            return [self._result(row, variant, started) for row in rows]
        finally:
            for c in own_clients:
                c.close()

    def _result(self, row: Row, variant: str, started: float) -> DeviceAnswer:
        latency = (row.finished_at or time.perf_counter()) - started
        ids = row.generated
        sent = received = 0
        records: list[Any] = []
        if row.client is not None:
            cap = row.client.capture
            records = list(cap.records[row.mark[0]:])
            sent, received = cap.sent_bytes - row.mark[1], cap.received_bytes - row.mark[2]
        run = row.run
        return DeviceAnswer(
            text=self.tokenizer.decode(ids, skip_special_tokens=True),
            variant=variant,
            tokens=len(ids),
            tokens_per_s=len(ids) / latency if latency > 0 else 0.0,
            cloud_calls=run.calls,
            cloud_round_trips=run.round_trips,
            cloud_call_fraction=(run.calls / run.positions) if run.positions and variant in ("logit", "gated", "cloud", "cloud_with_context") else 0.0,
            bytes_sent=sent,
            bytes_received=received,
            fell_back=run.fell_back,
            latency_s=latency,
            token_ids=list(ids),
            warnings=run.warnings,
            sketch=run.sketch,
            private_tokens=row.guard.private_tokens if row.guard is not None else 0,
            draft_tokens=run.draft_tokens,
            draft_accepted=run.draft_accepted,
            device_written=run.device_written,
            device_passes=run.device_passes,
            device_fed=run.device_fed,
            wire_records=records,
        )

    # ----------------------------------------------------------------- variants
    def _upper_bound_texts(self, rows: list[Row]) -> None:
        """The privacy-violating upper bound: the cloud's prompt carries the private context (evaluation
        only). It decodes like the ``cloud`` variant, in lockstep with the same token choice rules, so
        only what the cloud sees differs."""
        log.warning("cloud_with_context sends the PRIVATE CONTEXT to the cloud: evaluation upper bound only")
        for row in rows:
            def count(c: str, row: Row = row) -> int:
                return len(self.tokenizer(device_prompt(row.instruction, c))["input_ids"]) + 64

            row.cloud_text = device_prompt(row.instruction, fit_context(row.context, count, self.config.max_prompt_tokens))

    # ----------------------------------------------------------------- training helpers
    def cloud_teacher_forced(self, instruction: str, target_ids: Sequence[int]) -> list[torch.Tensor]:
        """Cloud log-probs predicting each target token given instruction + target prefix (no context)."""
        session = self.open_session(cloud_prompt(instruction), max_tokens=len(target_ids) + 1)
        out = []
        try:
            for i, tok in enumerate(target_ids):
                out.append(logit_codec.decode(session.latest(), self.lm.vocab_size))
                if i + 1 < len(target_ids):
                    session.send_step([tok])
            self.check_fingerprint(session)
        finally:
            session.close()
        return out

    def sketch_training_pairs(self, tasks: Iterable[dict[str, str]]) -> list[tuple[str, str]]:
        """Sketch-aware training data: (device prompt WITH a cloud sketch, target) per task.

        ``tasks`` are dicts with ``instruction``, ``private_context`` and ``target`` (e.g. built from
        ``fedcogen.dataset`` records). Only the instruction is sent to the cloud (``Sketch``); the
        returned prompts are formatted by ``fedcogen.prompts.device_prompt`` so the federated trainer
        can fine-tune the device model to use outlines the way it will see them at inference.
        """
        pairs = []
        for task in tasks:
            sketch = self.client.sketch(task["instruction"], self.config.sketch_max_new_tokens, self.config.sketch_timeout_s)
            pairs.append((device_prompt(task["instruction"], task["private_context"], sketch.sketch), task["target"]))
        return pairs
