"""The ``gated`` variant with the cloud's work overlapped with the device's.

The device asks the cloud only at positions where it is uncertain (entropy above / top-2 margin below
a threshold calibrated on validation tasks, ``fedcogen gate calibrate``). Two things keep the device
from waiting:

* **Catch-up ahead of time.** Tokens committed by the device alone go to the cloud in silent chunks
  (``TokenStep.silent``: no reply) while the device keeps decoding, so the cloud's KV cache is nearly
  up to date when the next uncertain position comes; the ask then carries only the last few tokens.
* **A guess while the cloud answers.** At an uncertain position the device sends the ask, then runs
  its own forward on its own greedy choice. If the fused choice equals the guess, that forward was
  the next step already; otherwise the guess is retracted (:meth:`BatchLM.retract`) and the fused
  token is fed at the next step. The guess never goes on the wire.

The tokens are exactly those of the plain gated loop (the guess only decides what the device computes
while it waits). Private spans: only what :class:`PrivateSpanGuard` releases is sent; behind a span
the device decodes alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedcogen.client.cogen.cloud_client import CloudUnavailable
from fedcogen.client.cogen.decoders.base import Decoder, DecodingDevice
from fedcogen.client.cogen.lockstep_rows import Row


class GatedDecoder(Decoder):
    """Lockstep gated fusion of a batch of rows with silent catch-up and guessed forwards."""

    def __init__(self, device: DecodingDevice, rows: Sequence[Row], chunk: int = 4) -> None:
        super().__init__(device, rows)
        self.chunk = max(1, chunk)

    def _ask_ok(self, row: Row, small: torch.Tensor) -> bool:
        return (not row.run.fell_back and (row.guard is None or row.guard.synced)
                and self.device.uncertain(small))

    def _commit(self, row: Row, tok: int) -> None:
        row.generated.append(tok)
        if row.run.fell_back:
            return
        row.pending += [tok] if row.guard is None else row.guard.commit(tok)
        if len(row.pending) > self.chunk:  # catch-up in the background; the last token waits for the ask
            try:
                row.session.send_step(row.pending[:-1], silent=True)
                row.pending = row.pending[-1:]
            except CloudUnavailable:
                pass  # the ask's reconnect replays everything

    def run(self) -> None:
        dv = self.device
        dev, lp = self.start()
        refeed: list[int | None] = [None] * len(self.rows)
        try:
            while True:
                self.finish_full_rows()
                if all(row.done for row in self.rows):
                    break
                feed: list[int | None] = [None] * len(self.rows)
                asked: dict[int, tuple[torch.Tensor, int]] = {}
                for i, row in enumerate(self.rows):
                    if row.done:
                        continue
                    if refeed[i] is not None:  # the fused token after a wrong guess
                        feed[i], refeed[i] = refeed[i], None
                        continue
                    row.run.positions += 1
                    if self._ask_ok(row, lp[i]):
                        if row.pending:
                            row.session.send_step(row.pending)
                            row.pending = []
                        guess = dv.choose(lp[i], row.generated)
                        asked[i] = (lp[i], guess)
                        feed[i] = guess if guess not in dv.stop_ids else None
                        continue
                    tok = dv.choose(lp[i], row.generated)
                    if tok in dv.stop_ids:
                        row.finish()
                        continue
                    self._commit(row, tok)
                    feed[i] = tok
                if any(f is not None for f in feed):  # the device works while the asks are answered
                    lp = dev.step([dv.pad_id if f is None else f for f in feed], [f is not None for f in feed])
                for i, (small, guess) in asked.items():
                    row = self.rows[i]
                    large = self.fetch(row)  # the reply to the ask sent before the device's forward
                    tok = guess if large is None else dv.choose(dv.fuse(small, large), row.generated)
                    if tok != guess and guess not in dv.stop_ids:
                        dev.retract(i, 1)
                    if tok in dv.stop_ids:
                        row.finish()
                        continue
                    self._commit(row, tok)
                    if tok != guess:
                        refeed[i] = tok
                        if row.pending and not row.run.fell_back:  # the cloud reads it while the device refeeds
                            row.session.send_step(row.pending)
                            row.pending = []
        finally:
            self.close_sessions()
