"""The outbox: what must go upstream, per stream, in order, durable before the append returns.

Records are appended by the writer thread in the same transaction as the data they describe (a MAIF
block, an audit record, a memory write, a reading), so after a crash there is never data without its
outbox record or the other way round. The uplink peeks the oldest records, sends them, and acknowledges
up to a sequence number. MAIF blocks are not copied into the outbox: the outbox row references the block
and ``outbox_peek`` renders it, so a block's bytes are written once.
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from daemon.store.errors import InvalidInputError

if TYPE_CHECKING:
    from daemon.store.db import Database

STREAMS = ("telemetry", "maif", "audit", "memory", "events")


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One record to send upstream; ``seq`` orders records within the whole outbox and never repeats."""

    seq: int
    stream: str
    record_id: str
    payload: bytes
    created: float


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """Fill level of one stream: records, payload bytes, and the creation time of the oldest record."""

    count: int
    bytes: int
    oldest_created: float | None


def check_stream(stream: str) -> None:
    if stream not in STREAMS:
        raise InvalidInputError(f"unknown outbox stream {stream!r} (known: {', '.join(STREAMS)})")


def enqueue(
    conn: sqlite3.Connection,
    stream: str,
    record_id: str,
    payload: bytes,
    created: float,
) -> None:
    """Add one record inside the caller's transaction (writer thread only)."""
    conn.execute(
        "INSERT INTO outbox(stream, record_id, payload, created, nbytes) VALUES (?, ?, ?, ?, ?)",
        (stream, record_id, payload, created, len(payload)),
    )


def enqueue_block_ref(
    conn: sqlite3.Connection, block_seq: int, record_id: str, created: float, nbytes: int
) -> None:
    """Add a ``maif`` record that points at a stored block instead of copying it."""
    conn.execute(
        "INSERT INTO outbox(stream, record_id, ref_block, created, nbytes) VALUES ('maif', ?, ?, ?, ?)",
        (record_id, block_seq, created, nbytes),
    )


_BLOCK_TEMPLATE = (
    b'{"seq":%d,"block_id":"%s","fourcc":"%s","flags":%d,"ts_us":%d,'
    b'"prev_hash":"%s","content_hash":"%s","chain_hash":"%s","metadata":%s,"payload_b64":"%s"}'
)


def block_record_payload(
    seq: int,
    block_id: bytes,
    fourcc: str,
    flags: int,
    ts_us: int,
    metadata: bytes,
    payload: bytes,
    content_hash: bytes,
    prev_hash: bytes,
    chain_hash: bytes,
) -> bytes:
    """The JSON form of a block sent upstream (metadata is embedded verbatim: it is canonical JSON)."""
    return _BLOCK_TEMPLATE % (
        seq,
        block_id.hex().encode(),
        fourcc.encode("ascii"),
        flags,
        ts_us,
        prev_hash.hex().encode(),
        content_hash.hex().encode(),
        chain_hash.hex().encode(),
        metadata,
        base64.b64encode(payload),
    )


def block_record_size(seq: int, flags: int, ts_us: int, metadata_len: int, payload_len: int) -> int:
    """Exact length of ``block_record_payload`` without building it (hot path of every append)."""
    fixed = len(_BLOCK_TEMPLATE) - 10 * 2  # ten %-fields
    return (
        fixed
        + len(str(seq))
        + 32
        + 4
        + len(str(flags))
        + len(str(ts_us))
        + 3 * 64
        + metadata_len
        + 4 * ((payload_len + 2) // 3)
    )


class Outbox:
    """The async outbox API the uplink uses; all SQL runs on the store's threads."""

    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock

    async def outbox_append(self, stream: str, records: Sequence[tuple[str, bytes]]) -> None:
        """Append records in order; durable when this returns."""
        check_stream(stream)
        if not records:
            return
        rows = [(str(rid), bytes(payload)) for rid, payload in records]
        created = self._clock()

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO outbox(stream, record_id, payload, created, nbytes) VALUES (?, ?, ?, ?, ?)",
                [(stream, rid, payload, created, len(payload)) for rid, payload in rows],
            )

        await self._db.write(run)

    async def outbox_peek(self, stream: str, *, limit: int, max_bytes: int) -> list[OutboxRecord]:
        """Oldest records first, at most ``limit`` and ``max_bytes`` (but always the first one)."""
        check_stream(stream)
        if limit <= 0:
            return []

        def run(conn: sqlite3.Connection) -> list[OutboxRecord]:
            cursor = conn.execute(
                "SELECT o.seq, o.record_id, o.payload, o.created, o.nbytes, b.seq, b.block_id, b.fourcc,"
                " b.flags, b.ts_us, b.metadata, b.payload, b.content_hash, b.prev_hash, b.chain_hash"
                " FROM outbox o LEFT JOIN blocks b ON b.seq = o.ref_block"
                " WHERE o.stream = ? ORDER BY o.seq LIMIT ?",
                (stream, limit),
            )
            out: list[OutboxRecord] = []
            total = 0
            for row in cursor:
                nbytes = int(row[4])
                if out and total + nbytes > max_bytes:
                    break
                payload = row[2]
                if payload is None:
                    if row[5] is None:
                        # The referenced block is gone (cannot happen through this API); send a tombstone
                        # rather than stall the stream forever.
                        payload = b'{"missing_block":true}'
                    else:
                        payload = block_record_payload(*row[5:15])
                total += nbytes
                out.append(OutboxRecord(int(row[0]), stream, str(row[1]), bytes(payload), float(row[3])))
            return out

        return await self._db.read(run)

    async def outbox_ack(self, stream: str, upto_seq: int) -> int:
        """Remove the stream's records with ``seq <= upto_seq``; returns how many were removed."""
        check_stream(stream)

        def run(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM outbox WHERE stream = ? AND seq <= ?", (stream, upto_seq)).rowcount

        return await self._db.write(run)

    async def outbox_stats(self) -> dict[str, OutboxStats]:
        """Count, bytes and oldest creation time per stream (every known stream is present)."""

        def run(conn: sqlite3.Connection) -> dict[str, OutboxStats]:
            stats = {name: OutboxStats(0, 0, None) for name in STREAMS}
            for stream, count, nbytes, oldest in conn.execute(
                "SELECT stream, count(*), coalesce(sum(nbytes), 0), min(created) FROM outbox GROUP BY stream"
            ):
                stats[str(stream)] = OutboxStats(int(count), int(nbytes), float(oldest))
            return stats

        return await self._db.read(run)

    async def outbox_drop_oldest(self, stream: str, *, count: int) -> int:
        """Drop up to ``count`` oldest records of a stream (the uplink's thinning policy decides which)."""
        check_stream(stream)
        if count <= 0:
            return 0

        def run(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE stream = ? ORDER BY seq LIMIT ?)",
                (stream, count),
            ).rowcount

        return await self._db.write(run)

    async def outbox_drop_before(self, stream: str, *, created_before: float) -> int:
        """Drop a stream's records created before the given time; returns how many were dropped."""
        check_stream(stream)

        def run(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM outbox WHERE stream = ? AND created < ?", (stream, created_before)
            ).rowcount

        return await self._db.write(run)
