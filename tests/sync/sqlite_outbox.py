"""A small SQLite-file implementation of ``daemon.sync.Outbox`` for the uplink's tests and benchmark.

It keeps the store's contract (durable on return, per-stream order, prefix drops) on a real WAL
database, with its own clock so a test can simulate a day offline. Counts and bytes are kept in a side
table in the same transactions, so ``outbox_stats`` stays cheap at a million queued records.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    record_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_stream_seq ON outbox (stream, seq);
CREATE TABLE IF NOT EXISTS outbox_level (
    stream TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    seq: int
    stream: str
    record_id: str
    payload: bytes
    created: float


@dataclass(frozen=True, slots=True)
class OutboxStats:
    count: int
    bytes: int
    oldest_created: float | None


def _size(record_id: str, payload: bytes) -> int:
    return len(payload) + len(record_id.encode())


class SqliteOutbox:
    """``Outbox`` on one SQLite file, one connection, one worker thread."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time,
                 synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self._clock = clock
        self._synchronous = synchronous
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def __aenter__(self) -> Self:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-outbox")
        await self._run(self._open)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _open(self) -> None:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.executescript(_SCHEMA)
        self._conn = conn

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._executor is not None, "SqliteOutbox used outside its context"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        assert conn is not None
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

    @staticmethod
    def _level(conn: sqlite3.Connection, stream: str, count: int, nbytes: int) -> None:
        conn.execute(
            "INSERT INTO outbox_level (stream, count, bytes) VALUES (?, ?, ?) ON CONFLICT (stream)"
            " DO UPDATE SET count = count + excluded.count, bytes = bytes + excluded.bytes",
            (stream, count, nbytes),
        )

    async def outbox_append(self, stream: str, records: Sequence[tuple[str, bytes]]) -> None:
        if not records:
            return
        created = self._clock()

        def work(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO outbox (stream, record_id, payload, created) VALUES (?, ?, ?, ?)",
                [(stream, rid, payload, created) for rid, payload in records],
            )
            self._level(conn, stream, len(records), sum(_size(r, p) for r, p in records))

        await self._run(self._tx, work)

    async def outbox_peek(self, stream: str, *, limit: int, max_bytes: int) -> list[OutboxRecord]:
        def work() -> list[OutboxRecord]:
            assert self._conn is not None
            out: list[OutboxRecord] = []
            total = 0
            with self._lock:
                rows = self._conn.execute(
                    "SELECT seq, record_id, payload, created FROM outbox WHERE stream = ? ORDER BY seq LIMIT ?",
                    (stream, limit),
                ).fetchall()
            for seq, rid, payload, created in rows:
                total += _size(rid, payload)
                if out and total > max_bytes:
                    break
                out.append(OutboxRecord(seq, stream, rid, bytes(payload), created))
            return out

        return await self._run(work)

    def _delete(self, conn: sqlite3.Connection, stream: str, where: str, arg: float | int) -> int:
        # ``where`` is one of a few fixed clauses written in this file, never input.
        sizes = conn.execute(
            f"DELETE FROM outbox WHERE stream = ? AND {where}"
            " RETURNING length(payload) + length(CAST(record_id AS BLOB))",
            (stream, arg),
        ).fetchall()
        if sizes:
            self._level(conn, stream, -len(sizes), -sum(s for (s,) in sizes))
        return len(sizes)

    async def outbox_ack(self, stream: str, upto_seq: int) -> int:
        return await self._run(self._tx, lambda c: self._delete(c, stream, "seq <= ?", upto_seq))

    async def outbox_drop_before(self, stream: str, *, created_before: float) -> int:
        return await self._run(self._tx, lambda c: self._delete(c, stream, "created < ?", created_before))

    async def outbox_drop_oldest(self, stream: str, *, count: int) -> int:
        def work(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT seq FROM outbox WHERE stream = ? ORDER BY seq LIMIT 1 OFFSET ?", (stream, count - 1)
            ).fetchone()
            if row is None:
                return self._delete(conn, stream, "1 = ?", 1)
            return self._delete(conn, stream, "seq <= ?", int(row[0]))

        if count <= 0:
            return 0
        return await self._run(self._tx, work)

    async def outbox_stats(self) -> dict[str, OutboxStats]:
        def work() -> dict[str, OutboxStats]:
            assert self._conn is not None
            with self._lock:
                levels = self._conn.execute("SELECT stream, count, bytes FROM outbox_level").fetchall()
                out: dict[str, OutboxStats] = {}
                for stream, count, nbytes in levels:
                    if count <= 0:
                        continue
                    oldest = self._conn.execute(
                        "SELECT created FROM outbox WHERE stream = ? ORDER BY seq LIMIT 1", (stream,)
                    ).fetchone()
                    out[stream] = OutboxStats(count, nbytes, None if oldest is None else float(oldest[0]))
            return out

        return await self._run(work)
