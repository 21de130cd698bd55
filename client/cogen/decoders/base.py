"""The one interface of the device's decoding rules: what a decoder may use of the device, and what it does.

Why: the decoders (per-token fusion, speculative, gated, sketch) used to be methods of ``CogenDevice`` or
classes that called its private methods through an import cycle. As in PEFT's tuners (one base class,
every method a sibling module), each rule here is a :class:`Decoder` in its own file, and the device
offers them only the public surface of :class:`DecodingDevice`: its settings, its token choice and
fusion, and the way to open a cloud stream or a device batch. The device picks a decoder per variant
(``CogenDevice.decoder_for``) and never reaches into one; a decoder never imports the device.

What every decoder shares lives here: opening the rows' cloud streams and the device batch, the
per-row cap on new tokens, reconnect-and-replay after a cloud failure, and closing the streams.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol

import torch

from fedcogen.client.cogen.batch_lm import BatchLM
from fedcogen.client.cogen.cloud_client import CloudClient, DecodeSession
from fedcogen.client.cogen.decoding import RepetitionControl
from fedcogen.client.cogen.device_config import DeviceConfig
from fedcogen.client.cogen.lockstep_rows import Row, answer_or_fall_back
from fedcogen.protocols.codecs import logit_codec

log = logging.getLogger(__name__)


class DecodingDevice(Protocol):
    """What a decoder may use of the device (``CogenDevice`` provides it)."""

    config: DeviceConfig
    stop_ids: set[int]
    pad_id: int
    repetition: RepetitionControl

    @property
    def vocab_size(self) -> int: ...

    def device_ids(self, instruction: str, private_context: str, sketch: str | None = None) -> list[int]: ...

    def fuse(self, lp_small: torch.Tensor, lp_large: torch.Tensor) -> torch.Tensor: ...

    def choose(self, lp: torch.Tensor, generated: Sequence[int]) -> int: ...

    def uncertain(self, lp_small: torch.Tensor) -> bool: ...

    def check_fingerprint(self, session: DecodeSession) -> None: ...

    def open_session(self, text: str, max_tokens: int | None = None,
                     client: CloudClient | None = None) -> DecodeSession: ...

    def batch_lm(self) -> BatchLM: ...


class Decoder(ABC):
    """One decoding rule over a lockstep batch of rows (one batched device forward per step)."""

    def __init__(self, device: DecodingDevice, rows: Sequence[Row]) -> None:
        self.device, self.rows, self.cfg = device, list(rows), device.config

    @abstractmethod
    def run(self) -> None:
        """Decode every row until it stops (stop token, ``max_new_tokens``); fills ``row.generated``."""

    # ------------------------------------------------------------------ shared by the rules
    def start(self, use_cloud: bool = True, use_device: bool = True) -> tuple[BatchLM, torch.Tensor | None]:
        """Open every row's cloud stream (only queues its open message) and prefill the device's batch."""
        if use_cloud:
            for row in self.rows:
                row.session = self.device.open_session(row.cloud_text, client=row.client)
        dev = self.device.batch_lm()
        return dev, (dev.prefill([row.prompt for row in self.rows]) if use_device else None)

    def finish_full_rows(self) -> None:
        for row in self.rows:
            if not row.done and len(row.generated) >= self.cfg.max_new_tokens:
                row.finish()

    def close_sessions(self) -> None:
        """End every row's stream: cancel it where the row fell back, else close it (drains, asks for stats)."""
        for row in self.rows:
            if row.session is not None:
                if row.run.fell_back:
                    row.session.cancel()
                else:
                    row.session.close()

    def reopen(self, row: Row) -> None:
        """A new stream for ``row`` that has seen what the cloud may see of the answer so far (replayed)."""
        row.mark_reconnect()
        msg = f"cloud call failed; reconnecting and replaying {len(row.generated)} tokens"
        log.warning(msg)
        row.run.warnings.append(msg)
        row.session.cancel()
        row.client.connect()
        row.session = self.device.open_session(row.cloud_text, client=row.client)
        replay = list(row.generated if row.guard is None else row.guard.sent)
        row.pending = []
        if replay:
            row.session.send_step(replay)

    def fetch(self, row: Row) -> torch.Tensor | None:
        """The cloud's log-probs for the row's current prefix (reconnecting once where allowed), or None
        once the row fell back to the device alone."""
        if row.run.fell_back:
            return None
        return answer_or_fall_back(row, lambda: self._latest(row), lambda: self._reopen_and_latest(row))

    def _latest(self, row: Row) -> torch.Tensor:
        if row.pending:
            row.session.send_step(row.pending)
            row.pending = []
        packet = row.session.latest()  # drains every owed reply (the open, catch-up steps, a replay; silent steps owe none)
        self.device.check_fingerprint(row.session)
        row.run.calls += 1
        row.run.round_trips += 1
        return logit_codec.decode(packet, self.device.vocab_size)

    def _reopen_and_latest(self, row: Row) -> torch.Tensor:
        self.reopen(row)
        return self._latest(row)
