"""What a device node reads: its settings and its private data partition.

Settings are the server's run config except the keys a node owns (:data:`NODE_LOCAL_KEYS`: its data,
state folder, model and accelerator come from its own ``--node-config``); data is its partition of the
synthetic federation, generated deterministically when missing, tokenised and cached per process.
Both live in one module because a data folder a node config names must never be fabricated
(:func:`settings_from` records it, :func:`federation_for` refuses to generate it).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

from flwr.app import Context, Message

from fedcogen import dataset as sd
from fedcogen.client.fl import secagg_train
from fedcogen.client.fl.lora_training import encode_examples
from fedcogen.protocols import fl_messages as fm
from fedcogen.run_config import FLSettings

log = logging.getLogger(__name__)

ENCODED_CACHE_CLIENTS = 64  # tokenised splits kept per process (LRU): memory must not grow with clients


def federation_for(settings: FLSettings) -> Any:
    """Load the synthetic federation from ``data_dir``, generating it (deterministically) if missing.

    Generation writes to a temporary sibling folder that is renamed into place, so concurrent
    processes (Ray workers, the server) never read a half-written folder.
    """

    if not settings.data_dir:
        raise ValueError("run config 'data_dir' is empty: set the folder of the synthetic federation")
    folder = Path(settings.data_dir)
    if not folder.exists() and str(folder) in _NODE_LOCAL_DATA:
        # a device's own data folder is its data: never fabricate a federation in its place
        raise FileNotFoundError(f"this node's data-dir {folder} (from its node config) does not exist")
    if not folder.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        fed = sd.generate_federation(sd.FederationConfig(n_users=settings.num_clients, seed=settings.seed))
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        sd.write_federation(fed, tmp)
        try:
            os.rename(tmp, folder)
        except OSError:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race; its copy is identical
    fed = _load_federation(str(folder))
    n_users = len(sd.user_ids(fed))
    if n_users < settings.num_clients:
        raise ValueError(f"federation in {folder} has {n_users} users but num_clients={settings.num_clients}: "
                         "use another data_dir or fewer clients")
    return fed


_FED_CACHE: dict[str, Any] = {}
_ENC_CACHE: OrderedDict[tuple, Any] = OrderedDict()


def _load_federation(folder: str) -> Any:

    if folder not in _FED_CACHE:
        _FED_CACHE[folder] = sd.load_federation(folder)
    return _FED_CACHE[folder]


def client_id_for(settings: FLSettings, partition_id: int) -> str:
    """Partition id -> user id of the federation (sorted user list, so every process agrees)."""

    users = sd.user_ids(federation_for(settings))
    if not 0 <= partition_id < len(users):
        raise ValueError(f"partition-id {partition_id} out of range: federation has {len(users)} users")
    return users[partition_id]


def encoded_split(settings: FLSettings, client_id: str, split: str, tokenizer: Any) -> list[Any]:
    """Tokenised (prompt, target) pairs of one client's split, cached per process."""

    key = (settings.data_dir, settings.model, client_id, split, settings.max_seq_len, settings.history_examples,
           settings.fact_swaps)
    if key not in _ENC_CACHE:
        examples = sd.client_examples(federation_for(settings), client_id, split, history=settings.history_examples,
                                       fact_swaps=settings.fact_swaps)
        _ENC_CACHE[key] = encode_examples(tokenizer, examples, settings.max_seq_len)
        while len(_ENC_CACHE) > ENCODED_CACHE_CLIENTS:
            _ENC_CACHE.popitem(last=False)
    _ENC_CACHE.move_to_end(key)
    return _ENC_CACHE[key]


# Node-config keys a device owns: its data, its state folder, its model and its accelerator come from its
# own configuration (``--node-config 'data-dir=... state-dir=... model=... device=cuda'``), never from the server.
NODE_LOCAL_KEYS: dict[str, str] = {"data-dir": "data_dir", "state-dir": "client_state_dir", "model": "model",
                                   "device": "device"}
_NODE_LOCAL_DATA: set[str] = set()  # data folders named by a node config (never generated)


def settings_from(msg: Message, context: Context) -> tuple[FLSettings, dict[str, Any]]:
    """Settings = dataclass defaults + what the server sent, except the node-local keys.

    The server is the source of truth for training hyper-parameters (so client and server never
    disagree), but not for where the device reads its data, keeps its state or which model it
    loads: when the node config sets ``data-dir`` / ``state-dir`` / ``model`` / ``device``, those win and any
    server-sent value is ignored. Without them (the simulation engine) the run config's values,
    which the server forwards, are used.
    """
    cfg = fm.config_of(msg.content, secagg_train.config_key(msg.content))
    settings = FLSettings.from_client_config(cfg)
    node = context.node_config
    local = {field: str(node[key]) for key, field in NODE_LOCAL_KEYS.items() if key in node and str(node[key])}
    if local:
        ignored = {f: getattr(settings, f) for f in local if getattr(settings, f) != local[f]}
        if ignored:
            log.info("using this node's own %s; ignoring the server's %s", sorted(local), ignored)
        settings = dataclasses.replace(settings, **local)
        if "data_dir" in local:
            _NODE_LOCAL_DATA.add(str(Path(local["data_dir"])))
    return settings, cfg


def partition_id(context: Context) -> int:
    pid = context.node_config.get("partition-id")
    if pid is None:
        raise ValueError("node config has no 'partition-id' (start the SuperNode with --node-config "
                         "'partition-id=N num-partitions=M')")
    return int(pid)
