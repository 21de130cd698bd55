"""Per-token decoding: every step one device forward and (where the cloud takes part) one cloud distribution.

One rule serves three variants, told apart by who takes part: ``device`` (the device alone, context
included), ``cloud`` and ``cloud_with_context`` (the cloud alone: only the text it was opened with
differs) and per-token ``logit`` (both, fused at every position; ``draft_tokens=0``). Every row's
catch-up step goes out before any reply is awaited, and a committed token goes to the cloud before the
device runs its own forward, so the two sides compute at the same time.

Private spans: only what the row's :class:`PrivateSpanGuard` releases is sent; behind a span the device
decodes alone. A cloud-only row whose cloud went away finishes with the device alone (``device_tail``).
"""

from __future__ import annotations

from collections.abc import Sequence

from fedcogen.client.cogen.decoders.base import Decoder, DecodingDevice
from fedcogen.client.cogen.lockstep_rows import Row


class PerTokenDecoder(Decoder):
    """Lockstep per-token decoding with the device, the cloud, or both fused."""

    def __init__(self, device: DecodingDevice, rows: Sequence[Row], use_cloud: bool, use_device: bool) -> None:
        if not (use_cloud or use_device):
            raise ValueError("a per-token decoder needs the device, the cloud or both")
        super().__init__(device, rows)
        self.use_cloud, self.use_device = use_cloud, use_device

    def run(self) -> None:
        dv, rows = self.device, self.rows
        dev, lp_small = self.start(self.use_cloud, self.use_device)
        try:
            while True:
                self.finish_full_rows()
                active = [i for i, row in enumerate(rows) if not row.done]
                if not active:
                    break
                asks = [i for i in active if self.use_cloud and not rows[i].run.fell_back
                        and (rows[i].guard is None or rows[i].guard.synced)]  # behind a private span: device alone
                for i in asks:  # catch-up steps of every asking row go out before any reply is awaited
                    row = rows[i]
                    if row.pending:
                        row.session.send_step(row.pending)
                        row.pending = []
                lp_large = {i: self.fetch(rows[i]) for i in asks}
                step_tokens = [dv.pad_id] * len(rows)
                for i in active:
                    row = rows[i]
                    row.run.positions += 1
                    small = lp_small[i] if lp_small is not None else None
                    large = lp_large.get(i)
                    if small is None and large is None:  # the cloud-only baseline lost its cloud
                        row.finish(device_tail=True)
                        continue
                    lp = small if large is None else large if small is None else dv.fuse(small, large)
                    tok = dv.choose(lp, row.generated)
                    if tok in dv.stop_ids:
                        row.finish()
                        continue
                    row.generated.append(tok)
                    step_tokens[i] = tok
                    if self.use_cloud and not row.run.fell_back:
                        out = [tok] if row.guard is None else row.guard.commit(tok)  # private tokens stay here
                        if out:
                            row.session.send_step(out)  # the cloud works while the device computes below
                if self.use_device and any(not row.done for row in rows):
                    lp_small = dev.step(step_tokens)
                    for i in active:
                        if not rows[i].done:
                            rows[i].run.device_passes += 1
                            rows[i].run.device_fed += 1
        finally:
            self.close_sessions()
        for row in rows:
            if row.device_tail:  # finish device-only after the cloud went away (cloud variant)
                row.device_tail = False
                tail = Row(row.instruction, row.context, row.run, generated=list(row.generated),
                           prompt=dv.device_ids(row.instruction, row.context) + row.generated)
                PerTokenDecoder(dv, [tail], use_cloud=False, use_device=True).run()
                row.generated = tail.generated
                row.finished_at = tail.finished_at
