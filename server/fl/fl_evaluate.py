"""The aggregate half of a round's evaluation: per-client losses and their token-weighted mean.

A function of what it needs rather than of the server object; the round loop
(:class:`fedcogen.server.fl.fl_serverapp.FederatedServer`) reads configure_evaluate -> send -> aggregate_evaluate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from flwr.app import Message

from fedcogen.protocols import fl_messages as fm
from fedcogen.server.fl.fl_console import error_summary
from fedcogen.server.fl.fl_outputs import ppl
from fedcogen.server.fl.fl_state import ServerState


def aggregate_evaluate(replies: list[Message], client_of: Mapping[int, str], state: ServerState) -> dict[str, Any]:
    """Per-client losses and the token-weighted mean; a client that answered holds the current broadcast.

    (A client whose rebuild failed was already marked unknown by the grid's reply hook: full patch next.)
    """
    per_client: dict[str, dict[str, float]] = {}
    failures: dict[str, str] = {}
    tot = tok = 0.0
    for rep in replies:
        cid = client_of.get(int(rep.metadata.src_node_id), "?")
        if rep.has_error():
            failures[cid] = error_summary(rep.error.reason)
            continue
        state.client_versions[cid] = state.version
        met = fm.metrics_of(rep.content)
        loss, n_tok = met.get("eval_loss", float("nan")), met.get("eval_tokens", 0.0)
        per_client[cid] = {"loss": loss, "ppl": ppl(loss), "tokens": n_tok}
        if math.isfinite(loss) and n_tok > 0:
            tot += loss * n_tok
            tok += n_tok
    mean = tot / tok if tok else float("nan")
    return {"eval_loss": mean, "eval_ppl": ppl(mean), "eval_clients": per_client, "eval_failures": failures}
