"""Flower ServerApp (Message API, flwr 1.41): sparse federated LoRA with compressed broadcast.

The round loop is our own (``@app.main()`` + ``Grid.send_and_receive``) rather than a built-in
strategy because three things need control over every message:

* **Compressed broadcast with server-side error feedback.** The server keeps the true global
  adapter ``G`` and the broadcast ``B`` every up-to-date client has rebuilt, and sends the top-k of
  ``G - B`` as version ``r`` (what was not sent stays in the gap). Clients that missed rounds get
  the chain of deltas they missed or, where smaller, a lossless ``overwrite``; unknown clients a chain
  or ``full`` patch from the seeded version 0 (:mod:`fedcogen.server.fl.fl_state`). A sha256 digest of
  ``B`` travels along; a client that rebuilds something else reports an error.
* **Validation before aggregation** with the expected shapes, size and norm caps
  (:mod:`fedcogen.server.fl.aggregation`) and the DP clip (:mod:`fedcogen.server.fl.dp_guard`).
* **One byte ledger** of every message sent and received, measured with Flower's own serde
  (:mod:`fedcogen.server.fl.byte_ledger`): every phase, SecAgg+'s stages included, sends through it.

A round reads as Flower's strategy verbs: ``configure_train`` (sample + per-client config with its
broadcast patch) -> send -> ``aggregate_train`` (validate + FedAvg, or FedAdam/FedYogi, + DP) ->
broadcast version ``r`` -> ``configure_evaluate`` -> send -> ``aggregate_evaluate`` -> atomic
checkpoint; ``resume`` continues identically.
Without DP the sample is seeded by (seed, round) and a run is bit-reproducible; with DP the noise and
the sample are secret (:func:`fedcogen.protocols.privacy.dp.secret_rng`), the released outputs (metrics rows,
ledger, logs) do not name the sampled clients, and a resume draws fresh noise while the accountant
continues from the checkpointed rounds.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from fedcogen.lora_adapter import adapter_layout, adapter_norm, adapter_sub, lora_spec
from fedcogen.protocols import fl_messages as fm
from fedcogen.protocols.codecs import sparse_codec as codec
from fedcogen.protocols.privacy import dp
from fedcogen.run_config import RUN_KEYS, FLSettings, load_run_config
from fedcogen.server.fl.agg_probe import ab_averaging_error, keeps_updates
from fedcogen.server.fl.aggregation import (
    RoundAggregate,
    RoundAggregator,
    ServerOptConfig,
    ServerOptimizer,
    ValidationLimits,
)
from fedcogen.server.fl.byte_ledger import ByteLedger, LedgerGrid
from fedcogen.server.fl.checkpoint import has_checkpoint
from fedcogen.server.fl.client_sampling import eval_cohort, released_round_fields, train_sample
from fedcogen.server.fl.dp_guard import DPGuard
from fedcogen.server.fl.fl_console import error_summary, log_round, progress, show_progress_lines
from fedcogen.server.fl.fl_evaluate import aggregate_evaluate
from fedcogen.server.fl.fl_outputs import write_outputs
from fedcogen.server.fl.fl_state import (
    ServerState,
    advance_broadcast,
    clear_journals,
    forget_if_stale,
    load_state,
    patch_for,
    save_state,
    start_fresh,
)
from fedcogen.server.fl.round_tally import RoundTally
from fedcogen.server.fl.run_status import COMPLETED, FAILED, RUNNING, RunStatus, write_run_status
from fedcogen.server.fl.secagg_round import SecureRoundInputs, secagg_phase, secure_round

log = logging.getLogger("fedcogen.server")

# --------------------------------------------------------------------------- the federation server


class FederatedServer:
    """The round loop, independent of how the ServerApp was started (simulation or deployment)."""

    def __init__(self, grid: Grid, settings: FLSettings) -> None:
        self.grid = grid
        self.s = settings
        self.out = Path(settings.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        # shapes and version 0 from the architecture alone: the server never loads the model's weights
        self.layout = adapter_layout(settings.model, settings.seed, lora_spec(settings))
        self.shapes = self.layout.shapes
        self.n_params = self.layout.num_adapter_params()
        self.limits = ValidationLimits(max_norm=settings.max_update_norm, max_bytes=settings.max_update_bytes)
        self.guard = DPGuard(settings)
        self.opt = ServerOptimizer(ServerOptConfig(settings.server_opt, settings.server_lr))
        self.nodes: dict[int, str] = {}  # node id -> client id
        self.accountant: Any = None
        self.stopped_reason = ""
        self.round_sample: list[str] = []
        self.state = self._initial_state()
        # under DP the ledger does not name who took part (the sample is secret)
        self.ledger = ByteLedger(self.state, self.nodes, hidden=lambda rnd: self.guard.enabled and rnd > 0)

    # ------------------------------------------------------------------ state

    def _initial_state(self) -> ServerState:
        if self.s.resume and has_checkpoint(self.out):
            state = load_state(self.out, self.s)
            self.opt.load_state_arrays(
                {**{f"m/{k}": v for k, v in state.opt_m.items()}, **{f"v/{k}": v for k, v in state.opt_v.items()}},
                state.opt_steps,
            )
            log.info("resuming from %s after round %d", self.out, state.round)
            return state
        if self.s.resume:
            log.info("resume requested but no checkpoint in %s: starting fresh", self.out)
        # an earlier run's results are replaced only when asked to (resume without a checkpoint: a run
        # that crashed before its first checkpoint, nothing to keep)
        start_fresh(self.out, self.s.replace(overwrite=True) if self.s.resume else self.s)
        clear_journals(self.out)
        return ServerState.fresh(self.layout.initial)

    def _dp(self) -> Any:
        eps = self.s.dp_target_epsilon if self.s.dp_target_epsilon > 0 else None
        return None if self.s.dp_mode == "none" else dataclasses.replace(self.guard.dp_config(), target_epsilon=eps)

    def _accountant(self) -> Any:
        if self.accountant is None and self.s.dp_mode != "none":
            self.accountant = dp.DPAccountant(self._dp())
            for _sigma, rate in self.state.dp_history:  # the rounds as they ran (sigma is fingerprinted)
                self.accountant.step(rate)
        return self.accountant

    def _sample_rate(self) -> float:
        """The rate the accountant composes with (1 where it may not claim amplification: dp_guard)."""
        rate = min(1.0, self.s.clients_per_round / max(1, len(self.nodes) or self.s.num_clients))
        return self.guard.accounted_rate(rate)

    # ------------------------------------------------------------------ messaging

    def _client_config(self, server_round: int) -> dict[str, Any]:
        cfg = self.s.round_settings(server_round).client_config()
        cfg["server_round"] = server_round
        return cfg

    def _patched_configs(self, server_round: int, nodes: Iterable[int]) -> dict[int, dict[str, Any]]:
        """Each node's config for this round: the round's settings (built once) + the patch that brings
        its client to the current broadcast."""
        base = self._client_config(server_round)
        return {n: {**base, **fm.patch_fields(self.patch_for(self.nodes[n]))} for n in nodes}

    @staticmethod
    def _messages(configs: Mapping[int, dict[str, Any]], message_type: str, server_round: int) -> list[Message]:
        """One message of ``message_type`` per node, carrying that node's config."""
        return [Message(fm.make_recorddict(config=cfg), dst_node_id=n, message_type=message_type,
                        group_id=str(server_round)) for n, cfg in configs.items()]

    def grid_for(self, server_round: int, phase: str | Any) -> LedgerGrid:
        """The grid this round's ``phase`` sends through: every message booked both ways."""
        return LedgerGrid(self.grid, self.ledger, server_round, phase, on_reply=self._forget_if_failed)

    def _forget_if_failed(self, rep: Message) -> None:
        """A client whose rebuild of the broadcast failed gets a full patch next time."""
        if rep.has_error():
            forget_if_stale(self.state, self.nodes.get(int(rep.metadata.src_node_id), ""), rep.error.reason)

    def send(self, messages: list[Message], phase: str, server_round: int) -> list[Message]:
        """Send, wait (``round_timeout``), and book every message both ways in the ledger."""
        return self.grid_for(server_round, phase).send_and_receive(messages, timeout=self.s.round_timeout)

    def handshake(self) -> None:
        """Wait for nodes, then learn which client (user) each node is."""
        node_ids = self.wait_for_nodes()
        msgs = self._messages({n: self.s.client_config() for n in node_ids}, fm.MSG_QUERY, 0)
        for rep in self.send(msgs, "query", 0):
            if rep.has_error():
                log.warning("node %s failed the handshake: %s", rep.metadata.src_node_id, rep.error.reason)
                continue
            cid = str(fm.config_of(rep.content)["client_id"])
            if cid in self.nodes.values():
                log.warning("node %s claims client id %s, which another node already has: ignored",
                            rep.metadata.src_node_id, cid)
                continue
            self.nodes[int(rep.metadata.src_node_id)] = cid
        self.ledger.name_clients(0, "query")
        names = sorted(self.nodes.values())
        log.info("%d clients connected: %s", len(names), ", ".join(names) if len(names) <= 20
                 else f"{', '.join(names[:5])}, ..., {', '.join(names[-2:])}")

    def wait_for_nodes(self, report_every: float = 10.0) -> list[int]:
        """Wait (up to ``max(30 s, round_timeout)``) for ``num_clients`` nodes, saying what it waits for.

        Why the messages: a federation with fewer SuperNodes than ``num_clients`` (e.g. ``flwr run .``
        with another ``num-supernodes``) otherwise waits in silence; every ``report_every`` seconds
        the log names how many nodes are missing and how long the wait may still take.
        """
        wait_s = max(30.0, self.s.round_timeout)
        started = time.monotonic()
        want = max(1, self.s.num_clients)
        next_report = started
        while True:
            node_ids = sorted(self.grid.get_node_ids())
            now = time.monotonic()
            if len(node_ids) >= want or now - started > wait_s:
                break
            if now >= next_report:
                log.info("waiting for %d of %d nodes (%d connected), up to %.0f s (num_clients=%d; "
                         "a simulation needs as many SuperNodes)", want - len(node_ids), want, len(node_ids),
                         wait_s - (now - started), want)
                next_report = now + report_every
            time.sleep(0.5)
        if len(node_ids) < max(1, self.s.min_fit_clients):
            raise RuntimeError(f"only {len(node_ids)} of {want} nodes connected within {wait_s:.0f} s, "
                               f"min_fit_clients={self.s.min_fit_clients}")
        if len(node_ids) < want:
            log.warning("only %d of %d nodes connected within %.0f s: going on with them",
                        len(node_ids), want, wait_s)
        return node_ids

    # ------------------------------------------------------------------ broadcast

    def patch_for(self, client_id: str) -> fm.Patch:
        """Patch bringing ``client_id`` from the version it holds to the current broadcast version."""
        return patch_for(self.state, client_id)

    def new_broadcast_version(self, server_round: int) -> None:
        """Compress ``G - B`` into broadcast version ``server_round`` (see :mod:`fedcogen.server.fl.fl_state`)."""
        s = self.s.round_settings(server_round)
        cfg = codec.CodecConfig(density=s.effective_down_density(), scope=self.s.scope,
                                quant=self.s.down_quant or self.s.quant, index_coding=self.s.index_coding,
                                shared_seed=s.support_seed(server_round))  # the uploads' support (or a denser one)
        advance_broadcast(self.state, server_round, cfg, self.shapes)

    # ------------------------------------------------------------------ phases

    def sample(self, server_round: int) -> list[int]:
        """This round's training sample: seeded without DP, secret (OS CSPRNG) with DP."""
        return train_sample(self.nodes, self.s.clients_per_round, self.s.seed, server_round, secret=self.guard.enabled)

    def configure_train(self, server_round: int) -> dict[int, dict[str, Any]]:
        """This round's sample, each sampled node with its train config (settings + its broadcast patch)."""
        return self._patched_configs(server_round, self.sample(server_round))

    def train_round(self, server_round: int) -> dict[str, Any]:
        """configure_train -> send -> aggregate_train -> DP noise + server step; the round's metrics row."""
        started = time.perf_counter()
        configs = self.configure_train(server_round)
        nodes = list(configs)
        tally = RoundTally()
        if self.s.secagg == "secaggplus":  # the server learns only the mean of the values at a shared support
            res = self._secure_train(server_round, configs, tally)
        else:
            msgs = self._messages(configs, fm.MSG_TRAIN, server_round)
            res = self.aggregate_train(server_round, nodes, self.send(msgs, "train", server_round), tally)
        return self._apply_round(server_round, nodes, res, tally, started)

    def _secure_train(self, server_round: int, configs: dict[int, dict[str, Any]], tally: RoundTally) -> RoundAggregate:
        """SecAgg+ sends and aggregates inside Flower's workflow (:mod:`.secagg_round`); its stages are
        booked in the same ledger."""
        version = self.state.version
        inputs = SecureRoundInputs(settings=self.s, server_round=server_round, configs=configs,
                                   client_of=self.nodes, shapes=self.shapes)
        mean, info = secure_round(self.grid_for(server_round, secagg_phase), inputs)
        tally.failures.update(info["failures"])
        for met in info["metrics"]:
            self._accept(str(met["client_id"]), met, version, tally)
        return RoundAggregate(mean, list(info["accepted"]), Counter(), float(len(info["accepted"])))

    def _accept(self, cid: str, met: Mapping[str, Any], version: int, tally: RoundTally) -> None:
        """Book an accepted update: the client holds ``version`` now; its metrics enter the round's."""
        self.state.client_versions[cid] = version
        self.state.participations[cid] = self.state.participations.get(cid, 0) + 1
        tally.add(met)

    def aggregate_train(self, server_round: int, nodes: list[int], replies: list[Message],
                        tally: RoundTally) -> RoundAggregate:
        """Codec blobs back: each update validated (DP clip included) and aggregated; failures tallied."""
        version = self.state.version
        keep = self.s.dp_mode == "none" and keeps_updates(self.s.lora_mode, len(nodes))  # probe: un-noised
        s = self.s.round_settings(server_round)
        seed = s.support_seed(server_round)
        support = None if seed is None else codec.SupportRule(seed, s.density)
        agg = RoundAggregator(self.shapes, self.limits, keep=keep, check=self.guard.check, support=support)
        answered = set()
        for i, rep in enumerate(replies):
            node = int(rep.metadata.src_node_id)
            cid = self.nodes.get(node, str(node))
            label = f"sampled client {i + 1}" if self.guard.enabled else cid  # DP: logs do not name the sample
            answered.add(node)
            if rep.has_error():  # (a failed rebuild was already forgotten by the grid's reply hook)
                tally.failures[cid] = error_summary(rep.error.reason)
                continue
            upd = rep.content.config_records.get(fm.UPDATE)
            met = fm.metrics_of(rep.content)
            if upd is None or "blob" not in upd:
                agg.rejected["malformed"] += 1
                continue
            # under DP every accepted update weighs 1 (a client's claimed example count is ignored)
            reason = agg.offer(label, upd["blob"], self.guard.weight(met.get(fm.NUM_EXAMPLES, 0)))
            self.state.client_versions[cid] = version  # it rebuilt the broadcast it trained on
            if reason is None:
                self._accept(cid, met, version, tally)
        for n in nodes:
            if n not in answered:
                tally.failures[self.nodes[n]] = f"no reply within {self.s.round_timeout:.0f} s"
        return agg.result()

    def _apply_round(self, server_round: int, nodes: list[int], res: RoundAggregate, tally: RoundTally,
                     started: float) -> dict[str, Any]:
        """DP noise + accounting, the server optimiser step, and the round's metrics row."""
        aborted = len(res.accepted) < max(1, self.s.min_fit_clients)
        st = self.state
        update_norm = 0.0
        probe: dict[str, float] = {}
        if not aborted and res.mean is not None:
            if res.kept:  # how inexact separate A/B averaging is this round (lora_mode "lora" only)
                probe = ab_averaging_error(self.s.lora_alpha / self.s.lora_r, st.global_adapter, res.kept)
            mean = res.mean
            if self.s.dp_mode == "server":  # secret noise: not derivable from the seed, never stored
                mean = dp.server_noise(mean, self._dp(), len(res.accepted), dp.secret_rng())
            if self.s.dp_mode != "none":
                self._accountant().step(self._sample_rate())
                st.dp_history.append([self.s.dp_noise_multiplier, self._sample_rate()])

            update_norm = adapter_norm(mean)
            st.global_adapter = self.opt.step(st.global_adapter, mean)
            st.opt_m, st.opt_v, st.opt_steps = dict(self.opt.m), dict(self.opt.v), self.opt.steps
        else:
            log.warning("round %d aborted: %d accepted updates < min_fit_clients=%d (model unchanged)",
                        server_round, len(res.accepted), self.s.min_fit_clients)
        self.round_sample = sorted(self.nodes[n] for n in nodes)  # who evaluates with eval_on "round"
        sums = tally.fields()
        return {
            "round": server_round,
            **released_round_fields(self.round_sample, tally.failures, secret=self.guard.enabled),
            "accepted": len(res.accepted),
            "rejected": dict(res.rejected),
            "aborted": aborted,
            "train_loss": sums["train_loss"],
            "client_tokens_per_s": sums["client_tokens_per_s"],
            "update_norm": update_norm,
            **probe,
            "index_bits_over_bound": sums["index_bits_over_bound"],
            "train_seconds": time.perf_counter() - started,
        }

    def evaluate(self, server_round: int, only: Iterable[str] | None = None) -> dict[str, Any]:
        """Every client (or the cohort, or the clients named in ``only``) scores the current broadcast
        adapter on its private validation split: configure_evaluate -> send -> aggregate_evaluate
        (:mod:`fedcogen.server.fl.fl_evaluate`)."""
        msgs = self.configure_evaluate(server_round, only)
        return aggregate_evaluate(self.send(msgs, "evaluate", server_round), self.nodes, self.state)

    def configure_evaluate(self, server_round: int, only: Iterable[str] | None = None) -> list[Message]:
        """An evaluate message per evaluating node: the round's settings and the patch to the current
        broadcast (clients that hold an older version catch up first)."""
        keep = self._eval_cohort(only)
        nodes = [n for n in sorted(self.nodes) if keep is None or self.nodes[n] in keep]
        return self._messages(self._patched_configs(server_round, nodes), fm.MSG_EVALUATE, server_round)

    def _eval_cohort(self, only: Iterable[str] | None) -> set[str] | None:
        """Which clients evaluate: every one, the ``eval_clients`` cohort, ``only``, or both (None: all)."""
        keep = None if only is None else set(only)
        cohort = eval_cohort(set(self.nodes.values()), self.s.eval_clients, self.s.seed)
        if cohort is not None:
            keep = cohort if keep is None else keep & cohort
        return keep

    # ------------------------------------------------------------------ main loop

    def run(self) -> dict[str, Any]:
        self.handshake()
        st = self.state
        if st.round == 0 and not st.metrics:
            entry = {"round": 0, **self.evaluate(0)}
            entry.update(self.ledger.round_bytes(0))
            st.metrics.append(entry)
            log.info("round 0: eval loss %.4f", entry["eval_loss"])
        last = self.s.rounds if not self.s.stop_after else min(self.s.rounds, self.s.stop_after)
        rounds = range(st.round + 1, last + 1)
        for r in progress(rounds, st.round, last):
            if self._over_budget():
                self.stopped_reason = f"dp budget: round {r} would exceed epsilon {self.s.dp_target_epsilon}"
                log.warning("stopping before round %d: %s", r, self.stopped_reason)
                break
            started = time.perf_counter()
            entry = self.train_round(r)
            self.new_broadcast_version(r)
            if r % max(1, self.s.eval_every) == 0 or r == self.s.rounds:
                # "round": only this round's clients, who hold the previous broadcast and need a small
                # delta; "all": every client, some of which need a large catch-up patch first
                entry.update(self.evaluate(r, self.round_sample if self.s.eval_on == "round" else None))
                if self.guard.enabled and self.s.eval_on == "round":  # the evaluators are the secret sample
                    hidden = released_round_fields(list(entry["eval_clients"]), entry["eval_failures"], secret=True)
                    entry.update(eval_clients=hidden["sampled"], eval_failures=hidden["failures"])
            entry["broadcast_gap_norm"] = adapter_norm(adapter_sub(st.global_adapter, st.broadcast))
            if self.accountant is not None:
                eps = self.accountant.epsilon() if self.guard.central else self.guard.local_epsilon(st.participations)
                entry["dp_epsilon" if self.guard.central else "dp_local_epsilon"] = float(eps)
            entry.update(self.ledger.round_bytes(r))
            entry["round_seconds"] = time.perf_counter() - started  # training, broadcast and evaluation
            st.metrics.append(entry)
            save_state(self.out, st, self.s)
            if 0 < entry.get("eval_loss", math.inf) <= self.s.target_eval_loss:  # NaN never stops a run
                self.stopped_reason = f"eval loss {entry['eval_loss']:.4f} reached target {self.s.target_eval_loss}"
            log_round(entry, self.s.rounds)
            if self.stopped_reason:
                break
        return self.write_outputs()

    def _over_budget(self) -> bool:
        """Whether the next round would exceed ``dp_target_epsilon`` (the guarantee this run reports)."""
        if self.s.dp_mode == "none" or self.s.dp_target_epsilon <= 0:
            return False
        if self.guard.central:
            return self._accountant().would_exceed(self.s.dp_target_epsilon, self._sample_rate())
        self._accountant()
        return self.guard.local_epsilon(self.state.participations, extra=1) > self.s.dp_target_epsilon

    def write_outputs(self) -> dict[str, Any]:
        if self.s.dp_mode != "none":
            self._accountant()
        return write_outputs(self.out, self.state, self.s, self.n_params, self.stopped_reason,
                             self.guard.report(self.accountant, self.state.participations))


# --------------------------------------------------------------------------- the apps


def make_server_app(overrides: Mapping[str, Any] | None = None) -> ServerApp:
    """A ServerApp whose settings are ``context.run_config`` updated with ``overrides`` (grouped run-config keys).

    ``flwr run`` (``flwr run .``, ``fedcogen simulate``, deployments) uses the module-level :data:`app`:
    pyproject ``[tool.flwr.app.config]`` plus ``--run-config`` overrides, validated by the one loader
    :func:`fedcogen.run_config.load_run_config`; ``overrides`` serve in-process callers.
    """
    server_app = ServerApp()
    extra = dict(overrides or {})

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        show_progress_lines()
        run_recorded(grid, {**dict(context.run_config), **extra})

    return server_app


def run_recorded(grid: Grid, run_config: Mapping[str, Any]) -> dict[str, Any]:
    """Run the federation and leave its outcome in ``<out_dir>/run-status.json`` (:mod:`.run_status`).

    Why: Flower reports a ServerApp that raised only in its log ("Exit Code: 700") while ``flwr
    run`` exits 0, so callers (``fedcogen simulate``) read this record to fail with the cause.
    """
    out_dir = str(run_config.get(RUN_KEYS["out_dir"]) or FLSettings().out_dir)  # known even if the config is bad
    status = RunStatus(RUNNING, started=time.time(), pid=os.getpid())
    write_run_status(out_dir, status)
    try:
        settings = load_run_config(run_config)
        target = settings.rounds if not settings.stop_after else min(settings.rounds, settings.stop_after)
        status = status.ended(RUNNING, target_rounds=target)
        write_run_status(out_dir, status)
        result = FederatedServer(grid, settings).run()
    except BaseException as exc:
        write_run_status(out_dir, status.ended(FAILED, error=f"{type(exc).__name__}: {exc}"))
        raise
    write_run_status(out_dir, status.ended(COMPLETED, completed_rounds=int(result["completed_rounds"]),
                                           stopped_reason=str(result.get("stopped_reason") or "")))
    return result


app = make_server_app()
