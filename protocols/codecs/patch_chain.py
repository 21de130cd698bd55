"""A catch-up patch made of the broadcast deltas a client missed, in order.

Why: a client that skipped rounds used to get an ``overwrite`` patch with the fp32 value of every
coordinate that changed since its version. With compressed broadcasts (int4, top-k) that costs up to
8x a normal delta, and catch-ups dominated the bytes of sparse runs (every client evaluates every
few rounds). Re-sending the missed deltas themselves rebuilds exactly the same adapter (both sides
apply the same deltas, in the same order, with the same float32 code) and is smaller whenever few
rounds were missed; the server picks whichever of the two is smaller.

Wire layout: ``magic "FCCH" | varint n | (varint length | delta blob) * n``. The container is checked
(count cap, every length within the remaining bytes, nothing trailing) before any blob is split
off, and each blob is then validated by the sparse codec like any other.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedcogen.protocols.codecs.index_coding import write_varint
from fedcogen.protocols.codecs.sparse_format import UpdateRejected

MAGIC = b"FCCH"
MAX_LINKS = 4096


def pack_chain(blobs: Sequence[bytes]) -> bytes:
    out = bytearray(MAGIC)
    write_varint(out, len(blobs))
    for b in blobs:
        write_varint(out, len(b))
        out += b
    return bytes(out)


def _varint(data: memoryview, pos: int, what: str) -> tuple[int, int]:
    value = 0
    for shift in range(0, 63, 7):
        if pos >= len(data):
            raise UpdateRejected("byte_count", f"catch-up chain ends inside its {what}")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise UpdateRejected("malformed", f"catch-up chain {what} varint is too long")


def unpack_chain(blob: bytes | bytearray | memoryview) -> list[bytes]:
    """The delta blobs of a chain, in order; raises :class:`UpdateRejected` on any container flaw."""
    data = memoryview(bytes(blob))
    if bytes(data[:4]) != MAGIC:
        raise UpdateRejected("malformed", "not a catch-up chain (bad magic)")
    count, pos = _varint(data, 4, "count")
    if not 1 <= count <= MAX_LINKS:
        raise UpdateRejected("malformed", f"catch-up chain holds {count} deltas (allowed 1..{MAX_LINKS})")
    out = []
    for _ in range(count):
        size, pos = _varint(data, pos, "delta length")
        if size > len(data) - pos:
            raise UpdateRejected("byte_count", f"catch-up chain delta claims {size} bytes, {len(data) - pos} remain")
        out.append(bytes(data[pos : pos + size]))
        pos += size
    if pos != len(data):
        raise UpdateRejected("byte_count", f"{len(data) - pos} unexplained bytes after the last catch-up delta")
    return out
