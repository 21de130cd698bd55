"""The evaluation phase of a round: who evaluates, their patches, and the token-weighted mean loss."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from flwr.app import Message

from fedcogen.protocols import fl_messages as fm
from fedcogen.server.fl.client_sampling import eval_cohort
from fedcogen.server.fl.fl_console import error_summary
from fedcogen.server.fl.fl_outputs import ppl
from fedcogen.server.fl.fl_state import forget_if_stale


def evaluate_round(server: Any, server_round: int, only: Iterable[str] | None = None) -> dict[str, Any]:
    """Every client (or the cohort of ``eval_clients``, or the clients named in ``only``) scores the
    current broadcast adapter on its private validation split; clients that hold an older version get
    their catch-up patch first, and a client whose rebuild fails is marked unknown (full patch next)."""
    msgs = []
    keep = None if only is None else set(only)
    cohort = eval_cohort(set(server.nodes.values()), server.s.eval_clients, server.s.seed)
    if cohort is not None:
        keep = cohort if keep is None else keep & cohort
    for n in sorted(server.nodes):
        if keep is not None and server.nodes[n] not in keep:
            continue
        cfg = {**server._client_config(server_round), **fm.patch_fields(server.patch_for(server.nodes[n]))}
        msgs.append(Message(fm.make_recorddict(config=cfg), dst_node_id=n, message_type=fm.MSG_EVALUATE,
                            group_id=str(server_round)))
    per_client: dict[str, dict[str, float]] = {}
    failures: dict[str, str] = {}
    tot = tok = 0.0
    for rep in server._send(msgs, "evaluate", server_round):
        cid = server.nodes.get(int(rep.metadata.src_node_id), "?")
        if rep.has_error():
            failures[cid] = error_summary(rep.error.reason)
            forget_if_stale(server.state, cid, rep.error.reason)
            continue
        server.state.client_versions[cid] = server.state.version
        met = fm.metrics_of(rep.content)
        loss, n_tok = met.get("eval_loss", float("nan")), met.get("eval_tokens", 0.0)
        per_client[cid] = {"loss": loss, "ppl": ppl(loss), "tokens": n_tok}
        if math.isfinite(loss) and n_tok > 0:
            tot += loss * n_tok
            tok += n_tok
    mean = tot / tok if tok else float("nan")
    return {"eval_loss": mean, "eval_ppl": ppl(mean), "eval_clients": per_client, "eval_failures": failures}
