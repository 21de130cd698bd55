"""Speculative collaboration: the device drafts several tokens, the cloud scores the whole draft at once.

Why: the per-token ``logit`` variant pays one round trip per token, and on a CPU the device waits for
the cloud at every step. Here each round is

1. the token committed last round goes to the cloud at once (as in the per-token variant, so the cloud
   computes its next distribution while the device runs its own forward);
2. the device drafts up to ``draft_tokens`` tokens with its own greedy choice (context included), as
   long as it is confident (top-1 probability >= ``draft_min_p``: an unsure device is usually overruled
   by the fusion, and a rejected draft token costs a device forward and a packet);
3. one ``TokenStep`` carries the draft and asks for a distribution after every draft token (``score``);
   the cloud runs them in ONE forward and answers with a :class:`LogitBlock` of top-k packets;
4. the device fuses position by position and keeps the longest prefix of the draft whose fused
   choice equals the draft, then commits the fused token at the first disagreement (or the fused
   token after the whole draft). Rejected draft tokens are rewound on both sides (``rewind`` on the
   next step; :meth:`BatchLM.retract` on the device).

Every committed token is the fused greedy choice at its position, so the tokens are exactly those of
the per-token variant (``tests/client/cogen/test_speculative.py`` checks it over real gRPC). The device sends the
draft to the cloud before it runs its own forward of the last draft token, so the two overlap.

Private spans (docs/privacy-spans.md) stay on the device: a draft token goes on the wire only if a
fork of the row's :class:`PrivateSpanGuard` would release it as itself with nothing held, so a draft
stops before the first private or held token. Behind a span the device decodes alone (as the
per-token variant does) and drafting resumes once the cloud's view has caught up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from fedcogen.client.cogen.batch_lm import BatchLM
from fedcogen.client.cogen.cloud_client import CloudRefused
from fedcogen.client.cogen.decoders.base import Decoder, DecodingDevice
from fedcogen.client.cogen.decoding import apply_repetition_control
from fedcogen.client.cogen.lockstep_rows import Row, answer_or_fall_back
from fedcogen.client.cogen.private_spans import PrivateSpanGuard
from fedcogen.protocols.codecs import logit_codec


@dataclass
class _Round:
    """One row's state in the current round."""

    smalls: list[torch.Tensor] = field(default_factory=list)  # device log-probs at each draft position
    draft: list[int] = field(default_factory=list)
    drafting: bool = False
    asked: bool = False  # the cloud's distributions are used this round
    block_sent: bool = False  # the draft went to the cloud
    trial: PrivateSpanGuard | None = None


@dataclass
class _Link:
    """One row's view of its cloud session across rounds."""

    owed0: bool = True  # a reply with the distribution at the committed end is on its way (first: the open)
    rewind: int = 0  # rejected draft tokens the cloud still holds (dropped by the next step)
    n: int = 1  # this row's current draft length (adapts to how much of its drafts the fusion accepts)


class SpeculativeDecoder(Decoder):
    """Lockstep speculative fusion of a batch of rows (one batched device forward per draft position)."""

    def __init__(self, device: DecodingDevice, rows: Sequence[Row], draft_tokens: int, min_p: float = 0.0,
                 min_live: float = 0.0) -> None:
        super().__init__(device, rows)
        self.n, self.min_p, self.min_live = max(1, int(draft_tokens)), min_p, min_live
        self.links = [_Link(n=self.n) for _ in self.rows]

    # ------------------------------------------------------------------ cloud side
    def _cloud_ok(self, row: Row) -> bool:
        return not row.run.fell_back and (row.guard is None or row.guard.synced)

    def _limit(self, row: Row, link: _Link) -> int:
        # m accepted drafts + 1 fused token must fit in max_new_tokens
        return max(0, min(link.n, self.cfg.max_new_tokens - len(row.generated) - 1))

    def _draft_token(self, i: int, rnd: _Round) -> int | None:
        """The device's next draft token, or None where the draft must stop (unsure, stop token, private)."""
        row = self.rows[i]
        if len(rnd.draft) >= self._limit(row, self.links[i]):
            return None
        lp = apply_repetition_control(rnd.smalls[-1], row.generated + rnd.draft, self.device.repetition)
        tok = int(lp.argmax())
        if tok in self.device.stop_ids or float(lp[tok].exp()) < self.min_p:
            return None
        if rnd.trial is not None and not (rnd.trial.commit(tok) == [tok] and rnd.trial.synced):
            return None  # private or held: never on the wire, not even as a draft
        return tok

    def _flush(self, i: int) -> None:
        """Send the committed tokens now (the cloud works while the device runs its forward)."""
        row, link = self.rows[i], self.links[i]
        if row.pending and self._cloud_ok(row):
            row.session.send_step(row.pending, rewind=link.rewind, score=1)
            row.pending, link.rewind, link.owed0 = [], 0, True

    def _ask(self, i: int, rnd: _Round) -> None:
        """Send the finished draft for scoring without waiting for the answer."""
        row, link = self.rows[i], self.links[i]
        if rnd.draft:
            row.session.send_step(rnd.draft, rewind=link.rewind, score=len(rnd.draft))
            link.rewind, rnd.block_sent = 0, True

    def _decode_reply(self, row: Row) -> list[torch.Tensor]:
        reply = row.session.next_reply()
        self.device.check_fingerprint(row.session)
        vocab = self.device.vocab_size
        if reply.WhichOneof("kind") == "block":
            return logit_codec.decode_block(reply.block, vocab)
        if reply.WhichOneof("kind") != "logits":
            raise CloudRefused(f"unexpected reply '{reply.WhichOneof('kind')}' to a decoding step")
        return [logit_codec.decode(reply.logits, vocab)]

    def _receive(self, i: int, rnd: _Round) -> list[torch.Tensor]:
        row, link = self.rows[i], self.links[i]
        # Every reply owed before the draft's block is about the committed prefix: the open's, a catch-up
        # step's and, after a reconnect, the replay's. Only the newest is the distribution at the committed
        # end; reading just one (the old code) left the replay's reply to be taken for the block, and the
        # stream stayed one reply out of step for the rest of the answer (issue 27).
        ahead = row.session.owed - (1 if rnd.block_sent else 0)
        if not link.owed0 or ahead < 1:
            raise CloudRefused("no distribution for the committed prefix is on its way")
        for _ in range(ahead):
            larges = self._decode_reply(row)[-1:]
        link.owed0 = False
        if rnd.block_sent:
            larges += self._decode_reply(row)
        if len(larges) != len(rnd.draft) + 1:
            raise CloudRefused(f"cloud answered {len(larges) - 1} draft distributions, {len(rnd.draft)} were asked for")
        return larges

    def _reconnect_and_score(self, i: int, rnd: _Round) -> list[torch.Tensor]:
        """Reconnect, replay what the cloud may see, and score the same draft again."""
        link = self.links[i]
        self.reopen(self.rows[i])
        link.owed0, link.rewind, rnd.block_sent = True, 0, False
        self._ask(i, rnd)
        return self._receive(i, rnd)

    def _larges(self, i: int, rnd: _Round) -> list[torch.Tensor] | None:
        row = self.rows[i]
        if not rnd.asked or row.run.fell_back:
            return None
        return answer_or_fall_back(row, lambda: self._receive(i, rnd), lambda: self._reconnect_and_score(i, rnd))

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        dev, lp = self.start()
        feed: list[int | None] = [None] * len(self.rows)
        try:
            while True:
                if any(f is not None for f in feed):
                    lp = dev.step([self.device.pad_id if f is None else f for f in feed],
                                  [f is not None for f in feed])
                    feed = [None] * len(self.rows)
                self.finish_full_rows()
                active = [i for i, row in enumerate(self.rows) if not row.done]
                if not active:
                    break
                rounds = {i: self._new_round(i, lp[i]) for i in active}
                self._draft(dev, rounds)
                for i in active:
                    feed[i] = self._settle(dev, i, rounds[i])
        finally:
            self.close_sessions()

    def _new_round(self, i: int, small: torch.Tensor) -> _Round:
        row = self.rows[i]
        ok = self._cloud_ok(row)
        rnd = _Round(smalls=[small], drafting=ok, asked=ok)
        if ok and row.guard is not None:
            rnd.trial = row.guard.fork()
        return rnd

    def _draft(self, dev: BatchLM, rounds: dict[int, _Round]) -> None:
        """Draft in lockstep; each row's draft leaves as soon as it is complete.

        A lockstep forward costs the whole batch however few rows still draft, so the round's drafting ends
        once fewer than ``min_live`` of the rows that began it are still drafting (their drafts leave as
        they are). Which draft tokens are scored never changes the committed tokens, only the cost.
        """
        began = sum(r.drafting for r in rounds.values())
        while any(r.drafting for r in rounds.values()):
            if sum(r.drafting for r in rounds.values()) < self.min_live * began:
                for i, rnd in rounds.items():
                    if rnd.drafting:
                        rnd.drafting = False
                        self._ask(i, rnd)
                break
            tokens = [self.device.pad_id] * len(self.rows)
            live = [False] * len(self.rows)
            for i, rnd in rounds.items():
                if not rnd.drafting:
                    continue
                tok = self._draft_token(i, rnd)
                if tok is None:
                    rnd.drafting = False
                    self._ask(i, rnd)
                    continue
                rnd.draft.append(tok)
                tokens[i], live[i] = tok, True
                if len(rnd.draft) >= self._limit(self.rows[i], self.links[i]):
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
            lp = rnd.smalls[j] if larges is None else dv.fuse(rnd.smalls[j], larges[j])
            tok = dv.choose(lp, row.generated + rnd.draft[:j])
            if j < len(rnd.draft) and tok == rnd.draft[j]:
                accepted = j + 1
                continue
            break
        row.run.positions += accepted + 1
        if larges is not None:
            row.run.calls += accepted + 1
            row.run.round_trips += 1  # one wait for the cloud per round
            if rnd.draft:  # grow after a fully accepted draft, shrink to what was accepted otherwise
                link.n = min(self.n, 2 * link.n) if accepted == len(rnd.draft) else max(1, accepted + 1)
        released: list[int] = []
        for t in rnd.draft[:accepted]:
            row.generated.append(t)
            released += [t] if row.guard is None else row.guard.commit(t)
        dev.retract(i, len(rnd.draft) - accepted)
        if rnd.block_sent:
            if released == rnd.draft[:accepted]:
                link.rewind += len(rnd.draft) - accepted  # the cloud keeps the accepted drafts
            else:  # (cannot happen: the fork released them as themselves) resend what the guard released
                link.rewind += len(rnd.draft)
                row.pending += released
        assert tok is not None
        if tok in dv.stop_ids:
            row.finish()
            return None
        row.generated.append(tok)
        out = [tok] if row.guard is None else row.guard.commit(tok)
        if not row.run.fell_back:
            row.pending += out
            self._flush(i)
        return tok
