"""The one byte ledger: every message of a LedgerGrid exchange is booked both ways by Flower's serde size."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from flwr.app import Message
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from fedcogen.protocols import fl_messages as fm
from fedcogen.server.fl.byte_ledger import ByteLedger, LedgerGrid, by_phase


@pytest.fixture(autouse=True)
def _task_identity():
    """Messages take their sender from the process's task identity, as in the loopback engine."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    yield
    TaskIdentity.node_id = SUPERLINK_NODE_ID


def _reply(msg: Message, blob: bytes) -> Message:
    """A node's reply: its sender is the node the message went to."""
    TaskIdentity.node_id = msg.metadata.dst_node_id
    try:
        return Message(fm.make_recorddict(update={"blob": blob}), reply_to=msg)
    finally:
        TaskIdentity.node_id = SUPERLINK_NODE_ID


@dataclass
class Book:
    ledger: list[dict[str, Any]] = field(default_factory=list)
    bytes_total: int = 0


class EchoGrid:
    """Answers each message with a reply carrying a blob of ``reply_bytes`` (drops node 3: a timeout)."""

    def __init__(self, reply_bytes: int = 100) -> None:
        self.reply_bytes = reply_bytes
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]

    def send_and_receive(self, messages: list[Message], *, timeout: float | None = None) -> list[Message]:
        self.sent.extend(messages)
        return [_reply(m, b"x" * self.reply_bytes) for m in messages if m.metadata.dst_node_id != 3]


def _msgs(nodes: list[int], patch: bytes = b"p" * 40) -> list[Message]:
    return [Message(fm.make_recorddict(config={"patch": patch}), dst_node_id=n, message_type=fm.MSG_TRAIN,
                    group_id="1") for n in nodes]


def test_every_message_booked_both_ways_with_wire_size_and_payload() -> None:
    book = Book()
    ledger = ByteLedger(book, {1: "u1", 2: "u2", 3: "u3"})
    grid = LedgerGrid(EchoGrid(), ledger, 1, "train")
    msgs = _msgs([1, 2, 3])
    replies = grid.send_and_receive(msgs, timeout=1.0)
    assert len(replies) == 2  # node 3 timed out: its download is still booked
    down = [r for r in book.ledger if r["direction"] == "down"]
    up = [r for r in book.ledger if r["direction"] == "up"]
    assert [r["client_id"] for r in down] == ["u1", "u2", "u3"] and [r["client_id"] for r in up] == ["u1", "u2"]
    assert all(r["payload_bytes"] == 40 for r in down) and all(r["payload_bytes"] == 100 for r in up)
    assert [r["bytes"] for r in down] == [fm.wire_bytes(m) for m in msgs]
    assert all(r["bytes"] > r["payload_bytes"] for r in book.ledger)  # the envelope counts too
    assert book.bytes_total == sum(r["bytes"] for r in book.ledger)
    assert ledger.round_bytes(1) == {"bytes_up": sum(r["bytes"] for r in up), "bytes_down": sum(r["bytes"] for r in down),
                                     "cum_bytes": book.bytes_total}
    assert by_phase(book.ledger, "up") == {"train": sum(r["bytes"] for r in up)}


def test_hidden_rounds_do_not_name_clients_and_phases_follow_each_message() -> None:
    book = Book()
    names = {1: "u1", 2: "u2"}
    ledger = ByteLedger(book, names, hidden=lambda rnd: rnd > 0)
    LedgerGrid(EchoGrid(), ledger, 2, lambda m: f"stage{m.metadata.dst_node_id}").send_and_receive(_msgs([1, 2]))
    assert {r["node_id"] for r in book.ledger} == {-1} and {r["client_id"] for r in book.ledger} == {""}
    assert sorted({r["phase"] for r in book.ledger}) == ["stage1", "stage2"]  # replies take their request's phase


def test_replies_reach_the_hook_and_late_names_are_filled() -> None:
    book = Book()
    names: dict[int, str] = {}
    seen: list[int] = []
    ledger = ByteLedger(book, names)
    grid = LedgerGrid(EchoGrid(), ledger, 0, "query", on_reply=lambda rep: seen.append(rep.metadata.src_node_id))
    grid.send_and_receive(_msgs([1, 2]))
    assert seen == [1, 2]
    assert {r["client_id"] for r in book.ledger} == {""}  # the handshake learns names from the replies
    names.update({1: "u1", 2: "u2"})
    ledger.name_clients(0, "query")
    assert sorted({r["client_id"] for r in book.ledger}) == ["u1", "u2"]
    assert grid.get_node_ids() == [1, 2, 3]  # everything else is the wrapped grid's
