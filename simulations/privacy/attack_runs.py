"""The attacks of a privacy run, each on what its attacker really sees.

Membership inference and canary exposure on a run's final global adapter, membership inference on
one client's update as the server sees it, and the CoGenesis cloud as attacker: every variant run
over real gRPC on loopback, its captured bytes attacked for private attributes and audited against
every private value and canary (together with the Flower bytes the :class:`FlowerTap` kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedcogen import dataset as d
from fedcogen.client.cogen.cogen_device import CogenDevice, DeviceConfig
from fedcogen.client.cogen.wire_capture import WireCapture
from fedcogen.client.fl.lora_training import encode_examples, train_local
from fedcogen.lora_adapter import get_adapter, set_adapter
from fedcogen.models import LoadedModel, shared_model
from fedcogen.prompts import device_prompt
from fedcogen.protocols.privacy import dp
from fedcogen.server.cogen.cloud_service import CloudConfig, start_cloud_server
from fedcogen.simulations.federation import federation
from fedcogen.simulations.federation.federation import load_run_adapter
from fedcogen.simulations.privacy.attack_metrics import canary_exposure, membership_inference, split_disjoint
from fedcogen.simulations.privacy.audit import cloud_view_text, wire_audit
from fedcogen.simulations.privacy.context_leakage import context_leakage, profile_attributes

if TYPE_CHECKING:  # the run imports these attacks; the attacks only read its settings
    from fedcogen.simulations.privacy.privacy_run import PrivacyRunConfig


def mia_pairs(fed: Any, limit: int, seed: int, users: Sequence[str] | None = None) -> tuple[list, list]:
    """Members = training tasks, non-members = held-out test+val tasks of the same users (same format)."""

    users = list(users or d.user_ids(fed))

    def pairs(split: str) -> list[tuple[str, str]]:
        return [(device_prompt(t.instruction, t.private_context), t.reference)
                for u in users for t in fed.tasks_of(u, split)]

    members = pairs("train")
    non = pairs("test") + pairs("val")
    members, non = split_disjoint(members, non)
    rng = np.random.default_rng(seed)
    n = min(limit, len(members), len(non))
    pick = lambda xs: [xs[i] for i in sorted(rng.choice(len(xs), n, replace=False))]  # noqa: E731
    return pick(members), pick(non)


class FlowerTap:
    """Keeps the serialized bytes of every reply a device sends through the loopback engine's grid."""

    def __init__(self) -> None:
        self.by_partition: dict[int, list[bytes]] = {}
        self._orig: Any = None

    def __enter__(self) -> FlowerTap:
        from flwr.common.serde import message_to_proto


        self._orig = federation.LoopbackGrid.send_and_receive
        tap, orig = self, self._orig

        def send_and_receive(grid: Any, messages: Any, **kw: Any) -> list[Any]:
            replies = orig(grid, messages, **kw)
            for r in replies:
                nid = int(r.metadata.src_node_id)
                ctx = grid.contexts.get(nid)
                part = int(ctx.node_config["partition-id"]) if ctx is not None else -1
                tap.by_partition.setdefault(part, []).append(message_to_proto(r).SerializeToString())
            return replies

        federation.LoopbackGrid.send_and_receive = send_and_receive
        return self

    def __exit__(self, *exc: Any) -> None:

        federation.LoopbackGrid.send_and_receive = self._orig


def attack_run(run_dir: str | Path, fed: Any, cfg: PrivacyRunConfig, progress: bool = True) -> dict[str, Any]:
    """Canary exposure + membership inference on the final global adapter of one run."""

    lm, _ = load_run_adapter(run_dir)
    exposure = canary_exposure(lm.model, lm.tokenizer, d.canary_records(fed), cfg.n_alternatives, cfg.run.seed,
                               alternatives_fn=d.random_canary_like, progress=progress)
    members, non = mia_pairs(fed, cfg.mia_max_examples, cfg.run.seed)
    mia = membership_inference(lm.model, lm.tokenizer, members, non)
    return {"canary_exposure": exposure, "mia": mia}


def single_update_mia(run_dir: str | Path, fed: Any, cfg: PrivacyRunConfig, sigma: float) -> dict[str, Any]:
    """MIA on one client's update as the server would see it (no SecAgg): clipped, noised in client mode.

    The client trains ``local_steps`` from the final global adapter; its update is clipped to
    ``dp_clip`` (when DP is on) and in ``client`` mode noised with its share ``sigma*C/sqrt(n)``; the
    attacker scores that client's training tasks vs its held-out tasks under global + update.
    """

    lm, _ = load_run_adapter(run_dir)
    uid = d.user_ids(fed)[0]
    start = get_adapter(lm)
    data = encode_examples(lm.tokenizer, d.client_examples(fed, uid, "train"))
    train_local(lm, data, steps=cfg.run.local_steps, batch_size=cfg.run.batch_size, lr=cfg.run.lr, seed=cfg.run.seed + 99)
    update = {k: v - start[k] for k, v in get_adapter(lm).items()}
    if sigma > 0:
        update, _ = dp.clip_dense(update, cfg.run.dp_clip_norm)
        if cfg.run.dp_mode == "client":
            dpc = dp.DPConfig(mode="client", clip_norm=cfg.run.dp_clip_norm, noise_multiplier=sigma,
                              clients_per_round=cfg.run.clients_per_round)
            noise = dp.gaussian_noise_like(update, dp.client_noise_std(dpc), np.random.default_rng(cfg.run.seed))
            update = {k: update[k] + noise[k] for k in update}
    set_adapter(lm, {k: start[k] + update[k] for k in start})
    members, non = mia_pairs(fed, cfg.mia_max_examples, cfg.run.seed, users=[uid])
    try:
        return {"user_id": uid, **membership_inference(lm.model, lm.tokenizer, members, non)}
    finally:
        set_adapter(lm, start)


# --------------------------------------------------------------------------- CoGenesis


def cogen_captures(cfg: PrivacyRunConfig, fed: Any, device_run: str | Path) -> dict[str, dict[str, Any]]:
    """Run every variant over gRPC on loopback; ``{variant: {user_id: WireCapture}}``."""

    lm, s = load_run_adapter(device_run)
    device_lm = LoadedModel(model=lm.model, tokenizer=lm.tokenizer, name=f"{s['model']}+federated", source=str(device_run))
    cloud_lm = shared_model(cfg.cloud_model, cfg.run.seed)
    cloud = start_cloud_server(CloudConfig(model=cfg.cloud_model, insecure=True, allow_eval_only_context=True,
                                           sketch_max_new_tokens=cfg.max_new_tokens,
                                           eval_max_new_tokens=cfg.max_new_tokens), lm=cloud_lm)
    out: dict[str, dict[str, Any]] = {}
    users = d.user_ids(fed)[: cfg.cogen_users]
    try:
        from tqdm import tqdm

        jobs = [(v, u) for v in cfg.variants for u in users]
        for variant, uid in tqdm(jobs, desc="CoGenesis captures", unit="user"):
            cap = WireCapture()
            dev = CogenDevice(DeviceConfig(device_model=s["model"], seed=cfg.run.seed, cloud=cloud.address, insecure=True,
                                           max_new_tokens=cfg.max_new_tokens, sketch_max_new_tokens=cfg.max_new_tokens,
                                           protect_private_spans=cfg.protect_private_spans),
                              device_lm=device_lm, capture=cap)
            try:
                for t in fed.tasks_of(uid, "test")[: cfg.cogen_tasks_per_user]:
                    dev.generate_batch([(t.instruction, t.private_context)], variant)
            finally:
                dev.close()
            out.setdefault(variant, {})[uid] = cap
    finally:
        cloud.stop(grace=1.0)
    return out


def leakage_and_audit(cfg: PrivacyRunConfig, fed: Any, captures: dict[str, dict[str, Any]],
                      flower: dict[str, list[bytes]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Context-leakage attacker and wire audit per variant (Flower bytes are audited with every variant)."""

    attacker = shared_model(cfg.cloud_model, cfg.run.seed)
    leakage, audits = {}, {}
    for variant, caps in captures.items():
        views = {uid: cloud_view_text(cap, attacker.tokenizer) for uid, cap in caps.items()}
        truths = {uid: profile_attributes(fed.profile(uid)) for uid in caps}
        leakage[variant] = context_leakage(views, truths, model=attacker.model, tokenizer=attacker.tokenizer,
                                           fields=cfg.attacker_fields)
        combined = {uid: [cap, *flower.get(uid, [])] for uid, cap in caps.items()}
        audits[variant] = wire_audit(combined, fed.profiles, fed.canaries, tokenizer=attacker.tokenizer)
    return leakage, audits
