"""Speculative collaboration: the device drafts several tokens, the cloud scores the whole draft at once.

Why: the per-token ``logit`` variant pays one round trip per token, and on a CPU the device waits for
the cloud at every step. Here each round is

1. the device drafts up to ``draft_tokens`` tokens with its own greedy choice (context included);
2. one ``TokenStep`` carries the tokens committed since the last round plus the draft, and asks for a
   distribution after the last committed token and after every draft token (``score``); the cloud
   runs them in ONE forward and answers with a :class:`LogitBlock` of top-k packets;
3. the device fuses position by position and keeps the longest prefix of the draft whose fused
   choice equals the draft, then commits the fused token at the first disagreement (or the fused
   token after the whole draft). Rejected draft tokens are rewound on both sides (``rewind`` on the
   next step; :meth:`BatchLM.retract` on the device).

Every committed token is the fused greedy choice at its position, so the tokens are exactly those of
the per-token variant (``tests/test_speculative.py`` checks it over real gRPC). The device sends the
draft to the cloud before it runs its own forward of the last draft token, so the two overlap.

Private spans (docs/privacy-spans.md) stay on the device: a draft token goes on the wire only if a
fork of the row's :class:`PrivateSpanGuard` would release it as itself with nothing held, so a draft
stops before the first private or held token. Behind a span the device decodes alone (as the
per-token variant does) and drafting resumes once the cloud's view has caught up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from fedcogen.client.batch_lm import BatchLM
from fedcogen.client.cloud_client import CloudRefused, CloudUnavailable
from fedcogen.client.lockstep_rows import Row
from fedcogen.client.private_spans import PrivateSpanGuard
from fedcogen.protocols import logit_codec

if TYPE_CHECKING:  # annotations only: cogen_device imports this module
    from fedcogen.client.cogen_device import CogenDevice


@dataclass
class _Round:
    """One row's state in the current round."""

    smalls: list[torch.Tensor] = field(default_factory=list)  # device log-probs at each draft position
    draft: list[int] = field(default_factory=list)
    drafting: bool = False
    asked: bool = False  # a request for this round's distributions is out (or pos0 covers it)
    sent_pending: bool = False  # the request carried committed tokens (its first packet is position 0)
    trial: PrivateSpanGuard | None = None


@dataclass
class _Link:
    """One row's view of its cloud session across rounds."""

    pos0: torch.Tensor | None = None  # the cloud's distribution at the committed end, if already received
    rewind: int = 0  # rejected draft tokens the cloud still holds (dropped by the next step)
    n: int = 1  # this row's current draft length (adapts to how much of its drafts the fusion accepts)


class SpeculativeDecoder:
    """Lockstep speculative fusion of a batch of rows (one batched device forward per draft position)."""

    def __init__(self, device: CogenDevice, rows: Sequence[Row], draft_tokens: int) -> None:
        self.device, self.rows, self.n = device, list(rows), max(1, int(draft_tokens))
        self.cfg = device.config
        self.links = [_Link(n=self.n) for _ in self.rows]

    # ------------------------------------------------------------------ cloud side
    def _cloud_ok(self, row: Row) -> bool:
        return not row.run.fell_back and (row.guard is None or row.guard.synced)

    def _draftable(self, row: Row, link: _Link, rnd: _Round, tok: int) -> bool:
        if tok in self.device.stop_ids or len(rnd.draft) >= self._limit(row, link):
            return False
        if rnd.trial is None:
            return True
        return rnd.trial.commit(tok) == [tok] and rnd.trial.synced  # public, released as itself, nothing held

    def _limit(self, row: Row, link: _Link) -> int:
        # m accepted drafts + 1 fused token must fit in max_new_tokens
        return max(0, min(link.n, self.cfg.max_new_tokens - len(row.generated) - 1))

    def _ask(self, i: int, rnd: _Round) -> None:
        """Send this round's request (pending committed tokens + draft) without waiting for the answer."""
        row, link = self.rows[i], self.links[i]
        rnd.asked = True
        try:
            if not row.pending and link.pos0 is None:
                link.pos0 = self._decode_one(row, row.session.latest())  # the open (or replay) reply
            ids = row.pending + rnd.draft
            if ids:
                rnd.sent_pending = bool(row.pending)
                row.session.send_step(ids, rewind=link.rewind, score=len(rnd.draft) + int(rnd.sent_pending))
                row.pending, link.rewind = [], 0
                row.run.round_trips += 1
        except CloudUnavailable:
            rnd.sent_pending = False
            link.pos0 = None
            link.rewind = -1  # marks "reconnect when the answer is needed"

    def _decode_one(self, row: Row, packet: object) -> torch.Tensor:
        self.device._check_fingerprint(row.session)
        return logit_codec.decode(packet, self.device.lm.vocab_size)

    def _receive(self, i: int, rnd: _Round) -> list[torch.Tensor]:
        row, link = self.rows[i], self.links[i]
        if link.rewind < 0:
            raise CloudUnavailable("the step could not be sent")
        wanted = len(rnd.draft) + int(rnd.sent_pending)
        got: list[torch.Tensor] = []
        if wanted:
            reply = row.session.latest_reply()
            self.device._check_fingerprint(row.session)
            if reply.WhichOneof("kind") == "block":
                got = logit_codec.decode_block(reply.block, self.device.lm.vocab_size)
            else:
                got = [logit_codec.decode(reply.logits, self.device.lm.vocab_size)]
            if len(got) != wanted:
                raise CloudRefused(f"cloud answered {len(got)} distributions, {wanted} were asked for")
        larges = got if rnd.sent_pending else [link.pos0, *got]
        link.pos0 = None
        return larges

    def _reconnect_and_score(self, i: int, rnd: _Round) -> list[torch.Tensor]:
        """Reconnect once, replay what the cloud may see, and score the same draft again (blocking)."""
        row, link = self.rows[i], self.links[i]
        row.reconnected = True
        msg = f"cloud call failed; reconnecting once and replaying {len(row.generated)} tokens"
        row.run.warnings.append(msg)
        row.session.cancel()
        row.client.connect()
        row.session = self.device._open(row.cloud_text, client=row.client)
        replay = list(row.generated if row.guard is None else row.guard.sent)
        if replay:
            row.session.send_step(replay)
        link.pos0, link.rewind, row.pending = self._decode_one(row, row.session.latest()), 0, []
        rnd.sent_pending = False
        if rnd.draft:
            row.session.send_step(rnd.draft, score=len(rnd.draft))
            row.run.round_trips += 1
        return self._receive(i, rnd)

    def _larges(self, i: int, rnd: _Round) -> list[torch.Tensor] | None:
        if not rnd.asked or self.rows[i].run.fell_back:
            return None
        row = self.rows[i]
        for attempt in (1, 2):
            try:
                return self._receive(i, rnd) if attempt == 1 else self._reconnect_and_score(i, rnd)
            except CloudUnavailable as exc:
                if attempt == 1 and not row.reconnected:
                    continue
                row.session.cancel()
                row.run.fall_back(f"cloud unavailable ({exc}); continuing device-only for the rest")
        return None

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        dev_ = self.device
        for row in self.rows:
            row.session = dev_._open(row.cloud_text, client=row.client)
        dev = BatchLM(dev_.lm.model, dev_.pad_id)
        lp = dev.prefill([row.prompt for row in self.rows])
        feed: list[int | None] = [None] * len(self.rows)
        try:
            while True:
                if any(f is not None for f in feed):
                    lp = dev.step([dev_.pad_id if f is None else f for f in feed], [f is not None for f in feed])
                    feed = [None] * len(self.rows)
                for row in self.rows:
                    if not row.done and len(row.generated) >= self.cfg.max_new_tokens:
                        row.finish()
                active = [i for i, row in enumerate(self.rows) if not row.done]
                if not active:
                    break
                rounds = {i: self._start(i, lp[i]) for i in active}
                self._draft(dev, rounds)
                for i in active:
                    feed[i] = self._settle(dev, i, rounds[i])
        finally:
            for row in self.rows:
                if row.session is not None:
                    row.session.cancel() if row.run.fell_back else row.session.close()

    def _start(self, i: int, small: torch.Tensor) -> _Round:
        row = self.rows[i]
        rnd = _Round(smalls=[small], drafting=self._cloud_ok(row))
        if rnd.drafting and row.guard is not None:
            rnd.trial = row.guard.fork()
        return rnd

    def _draft(self, dev: BatchLM, rounds: dict[int, _Round]) -> None:
        """Draft in lockstep; each row's request leaves as soon as its draft is complete."""
        while any(r.drafting for r in rounds.values()):
            tokens = [self.device.pad_id] * len(self.rows)
            live = [False] * len(self.rows)
            for i, rnd in rounds.items():
                if not rnd.drafting:
                    continue
                row = self.rows[i]
                tok = self.device._choose_for(rnd.smalls[-1], row.generated + rnd.draft)
                if not self._draftable(row, self.links[i], rnd, tok):
                    rnd.drafting = False
                    self._ask(i, rnd)
                    continue
                rnd.draft.append(tok)
                tokens[i], live[i] = tok, True
                if len(rnd.draft) >= self._limit(row, self.links[i]):
                    rnd.drafting = False
                    self._ask(i, rnd)  # out before the device's forward of the last draft token: overlap
            if any(live):
                out = dev.step(tokens, live)
                for i, rnd in rounds.items():
                    if live[i]:
                        rnd.smalls.append(out[i])

    def _settle(self, dev: BatchLM, i: int, rnd: _Round) -> int | None:
        """Fuse, accept the agreeing draft prefix, commit the fused token; returns the token to feed next."""
        row, link, dv = self.rows[i], self.links[i], self.device
        larges = self._larges(i, rnd)
        accepted, tok = 0, None
        for j in range(len(rnd.draft) + 1):
            lp = rnd.smalls[j] if larges is None else dv._fuse(rnd.smalls[j], larges[j])
            tok = dv._choose_for(lp, row.generated + rnd.draft[:j])
            if j < len(rnd.draft) and tok == rnd.draft[j]:
                accepted = j + 1
                continue
            break
        row.run.positions += accepted + 1
        if larges is not None:
            row.run.calls += accepted + 1
            if rnd.draft:  # grow after a fully accepted draft, shrink to what was accepted otherwise
                full = accepted == len(rnd.draft)
                link.n = min(self.n, 2 * link.n) if full else max(1, accepted + 1)
        released: list[int] = []
        for t in rnd.draft[:accepted]:
            row.generated.append(t)
            released += [t] if row.guard is None else row.guard.commit(t)
        dev.retract(i, len(rnd.draft) - accepted)
        if released == rnd.draft[:accepted]:
            link.rewind += len(rnd.draft) - accepted  # the cloud keeps the accepted drafts
        else:  # (cannot happen: the fork released them as themselves) resend what the guard released
            link.rewind += len(rnd.draft)
            row.pending += released
        if row.run.fell_back:
            link.rewind = 0
        assert tok is not None
        if tok in dv.stop_ids:
            row.finish()
            return None
        row.generated.append(tok)
        if not row.run.fell_back:
            row.pending += [tok] if row.guard is None else row.guard.commit(tok)
        elif row.guard is not None:
            row.guard.commit(tok)
        return tok
