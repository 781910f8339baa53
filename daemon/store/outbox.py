"""The outbox: what must go upstream, per stream, in order, durable before the append returns.

Records are appended by the writer thread in the same transaction as the data they describe (a MAIF
block, an audit record, a memory write, a reading), so after a crash there is never data without its
outbox record or the other way round. The uplink peeks the oldest records, sends them, and acknowledges
up to a sequence number.

The ``maif`` stream is the block log itself: its records are the blocks after a per-stream cursor
(kept in ``settings``), its ``seq`` is the block's chain position and ``created`` the block's time.
A block therefore cannot exist without its outbox record (they are the same row), its bytes are
written once, and acknowledging or dropping only moves the cursor: blocks are never deleted.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daemon.store.blocklog import content_hash
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


# One outbox row: ``nbytes`` is ``len(payload)``, kept so the spool's stats never read the payloads.
OUTBOX_INSERT = "INSERT INTO outbox(stream, record_id, payload, created, nbytes) VALUES (?, ?, ?, ?, ?)"


def enqueue(
    conn: sqlite3.Connection,
    stream: str,
    record_id: str,
    payload: bytes,
    created: float,
) -> None:
    """Add one record inside the caller's transaction (writer thread only)."""
    conn.execute(OUTBOX_INSERT, (stream, record_id, payload, created, len(payload)))


_BLOCK_TEMPLATE = (
    b'{"seq":%d,"block_id":"%s","fourcc":"%s","flags":%d,"ts_us":%d,'
    b'"prev_hash":"%s","content_hash":"%s","chain_hash":"%s","metadata":%s,"payload_b64":"%s"}'
)


def block_record_payload(  # noqa: PLR0917 - mirrors the fields of a fixed record layout
    seq: int,
    block_id: bytes,
    fourcc: str,
    flags: int,
    ts_us: int,
    metadata: bytes,
    payload: bytes,
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
        content_hash(payload, metadata).hex().encode(),
        chain_hash.hex().encode(),
        metadata,
        base64.b64encode(payload),
    )


_FIXED = len(_BLOCK_TEMPLATE) - 10 * 2 + 32 + 4 + 3 * 64  # template less its ten %-fields, plus hex/fourcc


def block_record_size(seq: int, flags: int, ts_us: int, metadata_len: int, payload_len: int) -> int:
    """Exact length of ``block_record_payload`` without building it."""
    return _FIXED + len(str(seq)) + len(str(flags)) + len(str(ts_us)) + metadata_len + 4 * ((payload_len + 2) // 3)


# The same length as an SQL expression over a blocks row, for stats without rendering every block.
_BLOCK_SIZE_SQL = (
    "CASE WHEN fourcc = 'OUTB' THEN length(payload) ELSE "
    f"{_FIXED} + length(seq) + length(flags) + length(ts_us) + length(metadata) + 4 * ((length(payload) + 2) / 3)"
    " END"
)
# Records appended to the maif stream with ``outbox_append`` become blocks of this type: they are
# chained and signed like any block, and peeked back as the caller's own record id and payload.
OUTBOX_FOURCC = "OUTB"
_CURSOR_KEY = "outbox_cursor.maif"
_BLOCK_ROW = "seq, block_id, fourcc, flags, ts_us, metadata, payload, prev_hash, chain_hash"


def _outbox_block_record(row: Sequence[Any]) -> tuple[str, bytes]:
    """Record id and payload of a block made by ``outbox_append("maif", ...)``."""
    try:
        meta = json.loads(row[5])
        record_id = str(meta["record_id"]) if isinstance(meta, dict) and "record_id" in meta else bytes(row[1]).hex()
    except (ValueError, TypeError):
        record_id = bytes(row[1]).hex()
    return record_id, bytes(row[6])


def _maif_cursor(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM settings WHERE key = ?", (_CURSOR_KEY,)).fetchone()
    return 0 if row is None else int(row[0])


def _advance_maif_cursor(conn: sqlite3.Connection, new: int) -> int:
    """Move the cursor forward (never back, never past the last block); returns records passed over."""
    old = _maif_cursor(conn)
    last = conn.execute("SELECT coalesce(max(seq), 0) FROM blocks").fetchone()[0]
    new = min(int(new), int(last))
    if new <= old:
        return 0
    passed = int(conn.execute("SELECT count(*) FROM blocks WHERE seq > ? AND seq <= ?", (old, new)).fetchone()[0])
    conn.execute(
        "INSERT INTO settings(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (_CURSOR_KEY, str(new)),
    )
    return passed


class Outbox:
    """The async outbox API the uplink uses; all SQL runs on the store's threads."""

    def __init__(
        self,
        db: Database,
        clock: Callable[[], float],
        *,
        maif_append: Callable[[Sequence[tuple[str, bytes]]], Awaitable[object]] | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._maif_append = maif_append

    async def outbox_append(self, stream: str, records: Sequence[tuple[str, bytes]]) -> None:
        """Append records in order; durable when this returns."""
        check_stream(stream)
        if not records:
            return
        rows = [(str(rid), bytes(payload)) for rid, payload in records]
        if stream == "maif":
            if self._maif_append is None:
                raise InvalidInputError("this outbox has no block log behind its maif stream")
            await self._maif_append(rows)
            return
        created = self._clock()

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(OUTBOX_INSERT, [(stream, rid, payload, created, len(payload)) for rid, payload in rows])

        await self._db.write(run)

    async def outbox_peek(self, stream: str, *, limit: int, max_bytes: int) -> list[OutboxRecord]:
        """Oldest records first, at most ``limit`` and ``max_bytes`` (but always the first one)."""
        check_stream(stream)
        if limit <= 0:
            return []

        def run(conn: sqlite3.Connection) -> list[OutboxRecord]:
            out: list[OutboxRecord] = []
            total = 0
            if stream == "maif":
                rows = conn.execute(
                    f"SELECT {_BLOCK_ROW} FROM blocks WHERE seq > ? ORDER BY seq LIMIT ?", (_maif_cursor(conn), limit)  # noqa: S608 - only fixed column names and ? placeholders are interpolated
                )
                for row in rows:
                    if row[2] == OUTBOX_FOURCC:
                        record_id, payload = _outbox_block_record(row)
                    else:
                        record_id, payload = bytes(row[1]).hex(), block_record_payload(*row)
                    if out and total + len(payload) > max_bytes:
                        break
                    total += len(payload)
                    out.append(OutboxRecord(int(row[0]), stream, record_id, payload, row[4] / 1_000_000))
                return out
            for seq, record_id, payload, created, nbytes in conn.execute(
                "SELECT seq, record_id, payload, created, nbytes FROM outbox WHERE stream = ? ORDER BY seq LIMIT ?",
                (stream, limit),
            ):
                if out and total + int(nbytes) > max_bytes:
                    break
                total += int(nbytes)
                out.append(OutboxRecord(int(seq), stream, str(record_id), bytes(payload), float(created)))
            return out

        return await self._db.read(run)

    async def outbox_ack(self, stream: str, upto_seq: int) -> int:
        """Remove the stream's records with ``seq <= upto_seq``; returns how many were removed."""
        check_stream(stream)

        def run(conn: sqlite3.Connection) -> int:
            if stream == "maif":
                return _advance_maif_cursor(conn, upto_seq)
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
            cursor = _maif_cursor(conn)
            count, nbytes = conn.execute(
                f"SELECT count(*), coalesce(sum({_BLOCK_SIZE_SQL}), 0) FROM blocks WHERE seq > ?", (cursor,)  # noqa: S608 - only fixed column names and ? placeholders are interpolated
            ).fetchone()
            first = conn.execute("SELECT ts_us FROM blocks WHERE seq > ? ORDER BY seq LIMIT 1", (cursor,)).fetchone()
            stats["maif"] = OutboxStats(int(count), int(nbytes), None if first is None else first[0] / 1_000_000)
            return stats

        return await self._db.read(run)

    async def outbox_drop_oldest(self, stream: str, *, count: int) -> int:
        """Drop up to ``count`` oldest records of a stream (the uplink's thinning policy decides which)."""
        check_stream(stream)
        if count <= 0:
            return 0

        def run(conn: sqlite3.Connection) -> int:
            if stream == "maif":
                row = conn.execute(
                    "SELECT max(seq) FROM (SELECT seq FROM blocks WHERE seq > ? ORDER BY seq LIMIT ?)",
                    (_maif_cursor(conn), count),
                ).fetchone()
                return 0 if row[0] is None else _advance_maif_cursor(conn, int(row[0]))
            return conn.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE stream = ? ORDER BY seq LIMIT ?)",
                (stream, count),
            ).rowcount

        return await self._db.write(run)

    async def outbox_drop_before(self, stream: str, *, created_before: float) -> int:
        """Drop a stream's records created before the given time; returns how many were dropped."""
        check_stream(stream)

        def run(conn: sqlite3.Connection) -> int:
            if stream == "maif":
                # A queue drops from its head: up to the first block that is not older than the limit.
                cursor = _maif_cursor(conn)
                row = conn.execute(
                    "SELECT min(seq) FROM blocks WHERE seq > ? AND ts_us >= ?", (cursor, created_before * 1_000_000)
                ).fetchone()
                if row[0] is None:
                    last = conn.execute("SELECT coalesce(max(seq), 0) FROM blocks").fetchone()[0]
                    return _advance_maif_cursor(conn, int(last))
                return _advance_maif_cursor(conn, int(row[0]) - 1)
            return conn.execute(
                "DELETE FROM outbox WHERE stream = ? AND created < ?", (stream, created_before)
            ).rowcount

        return await self._db.write(run)
