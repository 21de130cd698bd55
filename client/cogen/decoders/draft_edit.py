"""The ``draft_edit`` variant (P³, arXiv 2601.17569): the cloud drafts from the instruction, the device
edits the draft with the private context.

1. **Draft.** Every row opens the same ``Decode`` stream as the ``cloud`` baseline (conditioned on
   ``cloud_prompt(instruction)``, nothing else) and the cloud's distributions are decoded with the
   device's usual token choice until a stop token or ``max_new_tokens``: the draft is exactly the
   ``cloud`` variant's answer. The tokens fed back to the cloud are its own choices. All rows draft in
   lockstep (each row's step is in flight at once; the cloud batches them). A cloud that fails twice
   ends that row's draft where it stood (``fell_back``); the device still answers.
2. **Edit.** The device decodes over (private context + instruction) with its own model and uses the
   draft as a proposal. Each round, every row appends in ONE batched forward (:meth:`BatchLM.extend`) the
   token it wrote last round (if any) and up to ``draft_edit_block`` next draft tokens, and keeps the
   longest prefix of the draft it accepts under :func:`accepts`: the device's log-prob of the draft token
   is >= ``log(tau)`` + its largest log-prob (the token is at least ``tau`` times as likely as the device's
   own favourite). At the first rejected position the device writes its own token (its usual greedy
   choice with repetition control); the rejected draft tokens are retracted from its KV cache. A fully
   accepted block grows the next one (x2, up to the cap), a rejection shrinks it to what was accepted + 1
   (as in ``speculative.py``: a rejected token costs compute).
3. **Realign** (:func:`realign`). After the device writes a token at draft position ``q`` it looks for
   that token in the draft at positions ``q .. q + draft_edit_window + n - 1`` (``n``: tokens it wrote
   since it left the draft); at the first match ``r`` it resumes proposing from ``r + 1`` (a rewritten
   word, a dropped phrase). Without a match it keeps writing alone, one token per forward, and the window
   grows with every token it writes, so a long insertion skips ahead in the draft instead of waiting
   forever. The draft's stop token is proposed like any other: accepting it ends the answer.

``tau = 0`` keeps the whole draft (the answer is the cloud's); ``tau > 1`` keeps none, and every token
is the device's greedy choice after exactly the tokens the device variant would have seen: the answer
is the device variant's (``tests/client/cogen/decoders/test_draft_edit.py`` checks both).

Privacy: the cloud receives only the instruction (the stream's open) and its own draft tokens back;
nothing the device writes, accepts or rejects is ever sent (the edit phase has no cloud session). The
row's wire capture, and so the evaluation's ``cloud_received`` and wire audit, record exactly that.

Counted per answer (``RunStats``): draft tokens, draft tokens kept, device-written tokens and device
forwards after the prefill (a token of the device variant costs one forward; here every forward commits
the accepted draft tokens plus one written token).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from fedcogen.client.cogen.batch_lm import BatchLM
from fedcogen.client.cogen.decoders.base import Decoder, DecodingDevice
from fedcogen.client.cogen.lockstep_rows import Row


def accepts(lp: torch.Tensor, token: int, tau: float) -> bool:
    """The edit rule: keep ``token`` where the device gives it at least ``tau`` times the probability of its
    own top token (log-space: ``lp[token] >= log(tau) + max(lp)``). ``tau = 0`` keeps every token, any
    ``tau > 1`` none."""
    if tau <= 0.0:
        return True
    return float(lp[token]) >= math.log(tau) + float(lp.max())


def realign(draft: Sequence[int], start: int, token: int, written: int, window: int) -> int | None:
    """Where to resume proposing after the device wrote ``token`` instead of ``draft[start]``: the position
    after the first ``draft[r] == token`` with ``start <= r < start + window + written``, else None.

    ``written`` counts the tokens the device wrote since it left the draft (>= 1): the longer it writes on
    its own, the further ahead its text may have caught up with the draft.
    """
    stop = min(len(draft), start + window + written)
    for r in range(start, stop):
        if draft[r] == token:
            return r + 1
    return None


@dataclass
class _Edit:
    """One row's state in the edit phase."""

    draft: list[int]
    lp: torch.Tensor  # the device's log-probs for the next token (valid when feed is None)
    n: int  # this row's next block size
    p: int = 0  # next draft position to propose
    aligned: bool = True
    lost_at: int = 0  # the draft position the device left the draft at
    written: int = 0  # tokens written since it left
    feed: int | None = None  # committed token not yet in the device's KV cache
    props: list[int] = field(default_factory=list)


class DraftEditDecoder(Decoder):
    """Cloud draft from the instruction (lockstep), then lockstep device editing with one forward per round."""

    def __init__(self, device: DecodingDevice, rows: Sequence[Row]) -> None:
        super().__init__(device, rows)
        self.tau = self.cfg.draft_edit_tau
        self.block = self.cfg.draft_edit_block or self.cfg.max_new_tokens + 1
        self.window = self.cfg.draft_edit_window

    def run(self) -> None:
        drafts = self.draft()
        self.edit(drafts)

    # ------------------------------------------------------------------ 1. the cloud's draft
    def draft(self) -> list[list[int]]:
        """Every row's draft (its stop token included where the cloud chose one), decoded in lockstep."""
        dv, rows = self.device, self.rows
        self.start(use_cloud=True, use_device=False)
        try:
            live = list(range(len(rows)))
            while live:
                for i in live:  # every row's step goes out before any reply is awaited
                    row = rows[i]
                    if row.pending and not row.run.fell_back:
                        row.session.send_step(row.pending)
                        row.pending = []
                lps = {i: self.fetch(rows[i]) for i in live}
                nxt = []
                for i in live:
                    row, lp = rows[i], lps[i]
                    if lp is None:  # the cloud went away twice: the draft ends here
                        continue
                    tok = dv.choose(lp, row.generated)
                    row.generated.append(tok)  # (``reopen`` replays row.generated: the draft so far)
                    if tok in dv.stop_ids or len(row.generated) >= self.cfg.max_new_tokens:
                        continue
                    row.pending = [tok]
                    nxt.append(i)
                live = nxt
        finally:
            self.close_sessions()
        drafts = []
        for row in rows:
            drafts.append(row.generated)
            row.run.draft_tokens = sum(t not in dv.stop_ids for t in row.generated)
            row.generated, row.pending = [], []
        return drafts

    # ------------------------------------------------------------------ 2. the device's edit
    def edit(self, drafts: list[list[int]]) -> None:
        dev = self.device.batch_lm()
        lp0 = dev.prefill([row.prompt for row in self.rows])
        states = [_Edit(draft=d, lp=lp0[i], n=self.block) for i, d in enumerate(drafts)]
        while True:
            self.finish_full_rows()
            active = [i for i, row in enumerate(self.rows) if not row.done]
            if not active:
                break
            inputs: list[list[int]] = [[] for _ in self.rows]
            for i in active:
                inputs[i] = self._plan(i, states[i])
            if not any(inputs):
                continue
            outs = dev.extend(inputs)
            for i in active:
                if inputs[i]:
                    self.rows[i].run.device_passes += 1
                    self.rows[i].run.device_fed += len(inputs[i])
                    self._settle(dev, i, states[i], outs[i])

    def _proposals(self, row: Row, st: _Edit) -> list[int]:
        if not st.aligned:
            return []
        room = self.cfg.max_new_tokens - len(row.generated)  # every kept token must fit
        return st.draft[st.p: st.p + max(0, min(st.n, room))]

    def _write(self, row: Row, st: _Edit, lp: torch.Tensor, at: int) -> bool:
        """The device writes its own token at draft position ``at``; False where it chose to stop."""
        dv = self.device
        tok = dv.choose(lp, row.generated)
        row.run.device_written += 1
        if tok in dv.stop_ids:
            row.finish()
            return False
        row.generated.append(tok)
        st.feed = tok
        if st.aligned:
            st.aligned, st.lost_at, st.written = False, at, 0
        st.written += 1
        resume = realign(st.draft, st.lost_at, tok, st.written, self.window)
        if resume is not None:
            st.aligned, st.p = True, resume
        return True

    def _plan(self, i: int, st: _Edit) -> list[int]:
        """This round's input of row ``i``: the token it wrote last round (if any) and the next proposals."""
        row = self.rows[i]
        st.props = self._proposals(row, st)
        if st.feed is None and not st.props:  # nothing to verify: the device writes on its own (no forward yet)
            if not self._write(row, st, st.lp, st.p if st.aligned else st.lost_at):
                return []
            if len(row.generated) >= self.cfg.max_new_tokens:
                row.finish()
                return []
            st.props = self._proposals(row, st)
        return ([st.feed] if st.feed is not None else []) + st.props

    def _settle(self, dev: BatchLM, i: int, st: _Edit, out: torch.Tensor) -> None:
        """Keep the accepted prefix of the proposals, write the device's token at the first rejection."""
        row, dv = self.rows[i], self.device
        off = 1 if st.feed is not None else 0
        before = [st.lp] if off == 0 else []
        lps = before + [out[j] for j in range(out.shape[0])]  # lps[j]: the device's view of props[j]
        st.feed = None
        kept = 0
        for j, tok in enumerate(st.props):
            if not accepts(lps[j], tok, self.tau):
                break
            kept += 1
            if tok in dv.stop_ids:
                row.finish()
                return
            row.generated.append(tok)
            row.run.draft_accepted += 1
        st.p += kept
        if kept == len(st.props):
            st.lp = lps[-1]
            if st.props:
                st.n = min(self.block, 2 * st.n)
            return
        dev.retract(i, len(st.props) - kept)
        st.n = max(1, kept + 1)
        self._write(row, st, lps[kept], st.p)
