"""A deployed device trusts its own configuration, not the server's, for data, state and model (#12 F)."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Context, Message, RecordDict

from fedcogen import dataset as sd
from fedcogen.client.fl import fl_clientapp as ca
from fedcogen.client.fl.node_data import settings_from
from fedcogen.protocols import fl_messages as fm
from fedcogen.run_config import FLSettings
from fedcogen.simulations.federation import fault_app


@pytest.fixture(autouse=True)
def _task_identity():
    """Messages take their sender from the process's task identity, as in the loopback engine."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID


def _query(settings: FLSettings) -> Message:
    return Message(fm.make_recorddict(config=settings.to_config()), dst_node_id=7, message_type=fm.MSG_QUERY,
                   group_id="0")


def _context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


@pytest.fixture(scope="module")
def own_data(tmp_path_factory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("device") / "my-data"
    fed = sd.generate_federation(sd.FederationConfig(n_users=2, seed=5))
    sd.write_federation(fed, folder)
    return folder, sd.user_ids(fed)


def test_node_config_data_dir_wins_over_server_sent_path(tmp_path: Path, own_data) -> None:
    folder, users = own_data
    server_path = tmp_path / "server-chosen" / "data"  # what a (malicious or misconfigured) server sends
    server_state = tmp_path / "server-state"
    sent = FLSettings(data_dir=str(server_path), client_state_dir=str(server_state), num_clients=2, model="tiny")
    node = {"partition-id": 1, "data-dir": str(folder), "state-dir": str(tmp_path / "mine"), "model": "tiny-large"}

    settings, _ = settings_from(_query(sent), _context(node))
    assert settings.data_dir == str(folder) and settings.client_state_dir == str(tmp_path / "mine")
    assert settings.model == "tiny-large"

    reply = ca.query(_query(sent), _context(node))
    assert fm.config_of(reply.content)["client_id"] == users[1]  # read from the node's own folder
    assert not server_path.exists() and not server_path.parent.exists()  # nothing read or written there
    assert not server_state.exists()


def test_without_node_keys_the_run_config_values_are_used(tmp_path: Path) -> None:
    sent = FLSettings(data_dir=str(tmp_path / "sim-data"), client_state_dir="", num_clients=2, model="tiny")
    settings, _ = settings_from(_query(sent), _context({"partition-id": 0, "num-partitions": 2}))
    assert settings.data_dir == str(tmp_path / "sim-data") and settings.model == "tiny"


def test_missing_node_data_dir_is_an_error_not_a_generated_federation(tmp_path: Path) -> None:
    mine = tmp_path / "not-there"
    sent = FLSettings(data_dir=str(tmp_path / "server"), num_clients=2)
    with pytest.raises(FileNotFoundError, match="node config"):
        ca.query(_query(sent), _context({"partition-id": 0, "data-dir": str(mine)}))
    assert not mine.exists()


def test_fault_hooks_live_only_in_the_test_app() -> None:
    settings = FLSettings(fail_nodes="1@2")
    assert fault_app.injected_failure(settings, 2, 1) and fault_app.injected_failure(settings, 3, 1) is None
    assert fault_app.needs_fault_app(settings) and not fault_app.needs_fault_app(FLSettings())
    import inspect

    assert "fail" not in inspect.getsource(ca.train)  # the production handler has no failure hook
