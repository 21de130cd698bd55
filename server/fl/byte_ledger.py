"""One byte ledger for every message of a round, both ways, whichever path sent it.

Why one: bytes used to be counted three ways (the server's own sends, the SecAgg+ workflow's sends
through a wrapping grid, and the SecAgg experiment's recording grid), and three counters drift. Here
every path sends through a :class:`LedgerGrid`, which books each message after the exchange, when
Flower has filled in its metadata, by its serialized size with Flower's own serde
(:func:`fedcogen.protocols.fl_messages.wire_bytes`): what crosses the wire.

Rows go to a :class:`LedgerBook`, an object with a ``ledger`` list and a ``bytes_total`` count. The
server's book is its :class:`~fedcogen.server.fl.fl_state.ServerState`, whose pending rows are moved to
an append-only journal at each checkpoint (so the book's list is looked up on every booking, never kept).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from flwr.app import Message

from fedcogen.protocols import fl_messages as fm


class LedgerBook(Protocol):
    """Where ledger rows go."""

    ledger: list[dict[str, Any]]
    bytes_total: int


def payload_bytes(msg: Message) -> int:
    """Bytes of the adapter payload in a message (the patch down, the codec blob up)."""
    payload = 0
    if msg.has_content():
        for key in (fm.CONFIG, fm.UPDATE):
            if key in msg.content.config_records:
                rec = msg.content.config_records[key]
                payload += len(rec.get("patch", b"") or b"") + len(rec.get("blob", b"") or b"")
    return payload


class ByteLedger:
    """Books messages as rows ``{round, phase, node_id, client_id, direction, bytes, payload_bytes, error}``.

    ``client_of`` maps node ids to client ids (the server's handshake fills it); ``hidden(round)`` says
    whether a round's rows may not name who took part (under DP the sample is secret).
    """

    def __init__(self, book: LedgerBook, client_of: Mapping[int, str] | None = None,
                 hidden: Callable[[int], bool] | None = None) -> None:
        self.book = book
        self.client_of: Mapping[int, str] = client_of if client_of is not None else {}
        self.hidden = hidden or (lambda _round: False)

    def record(self, server_round: int, phase: str, direction: str, msg: Message) -> int:
        """Book one message; returns its size in bytes."""
        node_id = int(msg.metadata.dst_node_id if direction == "down" else msg.metadata.src_node_id)
        size = fm.wire_bytes(msg)
        hide = self.hidden(server_round)
        self.book.bytes_total += size
        self.book.ledger.append({
            "round": server_round,
            "phase": phase,
            "node_id": -1 if hide else node_id,
            "client_id": "" if hide else self.client_of.get(node_id, ""),
            "direction": direction,
            "bytes": size,
            "payload_bytes": payload_bytes(msg),
            "error": bool(msg.has_error()),
        })
        return size

    def name_clients(self, server_round: int, phase: str) -> None:
        """Fill in client ids of rows booked before the server knew them (the handshake's queries)."""
        for row in self.book.ledger:
            if row["round"] == server_round and row["phase"] == phase and not row["client_id"]:
                row["client_id"] = self.client_of.get(row["node_id"], "")

    def round_bytes(self, server_round: int) -> dict[str, int]:
        """Bytes of a round whose rows are still pending, and the run's total so far."""
        rows = [e for e in self.book.ledger if e["round"] == server_round]
        return {"bytes_up": sum(e["bytes"] for e in rows if e["direction"] == "up"),
                "bytes_down": sum(e["bytes"] for e in rows if e["direction"] == "down"),
                "cum_bytes": self.book.bytes_total}


def by_phase(rows: Iterable[Mapping[str, Any]], direction: str) -> dict[str, int]:
    """Bytes per phase in one direction."""
    out: dict[str, int] = {}
    for row in rows:
        if row["direction"] == direction:
            out[row["phase"]] = out.get(row["phase"], 0) + int(row["bytes"])
    return out


class LedgerGrid:
    """A Flower ``Grid`` whose every ``send_and_receive`` is booked in a :class:`ByteLedger`.

    ``phase`` names each message's row (a fixed name, or a function of the message: the SecAgg+
    stages); ``on_reply`` sees every reply after booking (the server forgets the broadcast version of
    a client whose rebuild failed; the SecAgg experiment keeps the masked vectors). Everything else is
    the wrapped grid's, so Flower's workflows take it as a grid.
    """

    def __init__(self, grid: Any, ledger: ByteLedger, server_round: int,
                 phase: str | Callable[[Message], str], on_reply: Callable[[Message], None] | None = None) -> None:
        self.grid = grid
        self.ledger = ledger
        self.server_round = server_round
        self.phase = phase
        self.on_reply = on_reply

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def phase_of(self, msg: Message) -> str:
        return self.phase(msg) if callable(self.phase) else self.phase

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        if not messages:
            return []
        phases = {int(m.metadata.dst_node_id): self.phase_of(m) for m in messages}
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        for msg in messages:
            self.ledger.record(self.server_round, phases[int(msg.metadata.dst_node_id)], "down", msg)
        for rep in replies:
            node = int(rep.metadata.src_node_id)
            phase = phases[node] if node in phases else self.phase_of(rep)  # a reply takes its request's phase
            self.ledger.record(self.server_round, phase, "up", rep)
            if self.on_reply is not None:
                self.on_reply(rep)
        return replies
