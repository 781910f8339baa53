"""The reference upstream's SQLite store: records kept once per ``(stream, id)``, in first-seen order.

``pos`` (an AUTOINCREMENT key) is the upstream's view of order: a record's position is fixed by the
first batch that carried it. All SQLite work runs on one dedicated thread (a single writer, as SQLite
wants), so the event loop never blocks and batches commit strictly one after another.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from daemon.sync.wire import IngestBatch

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    id TEXT NOT NULL,
    source TEXT NOT NULL,
    seq INTEGER NOT NULL,
    created REAL NOT NULL,
    payload TEXT NOT NULL,
    payload_b64 INTEGER NOT NULL DEFAULT 0,
    received REAL NOT NULL,
    UNIQUE (stream, id)
);
CREATE INDEX IF NOT EXISTS records_stream_pos ON records (stream, pos);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    response TEXT NOT NULL,
    created REAL NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class StoredBatch:
    accepted: int
    duplicates: int


class UpstreamDb:
    """One SQLite file on one thread; ``close`` stops the thread."""

    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="upstream-db")
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash; only power loss may lose the last commits
        # (sqlite.org/pragma.html#pragma_synchronous), fine for a reference server.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None, "UpstreamDb used before open()"
        return self._conn

    async def replayed(self, key: str) -> str | None:
        """The stored response of a batch with this idempotency key, if it was committed before."""
        return await self._run(self._replayed, key)

    def _replayed(self, key: str) -> str | None:
        row = self._db().execute("SELECT response FROM idempotency WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    async def store(self, batch: IngestBatch, key: str | None) -> StoredBatch:
        return await self._run(self._store, batch, key)

    def _store(self, batch: IngestBatch, key: str | None) -> StoredBatch:
        conn = self._db()
        now = time.time()
        rows = [
            (batch.stream, r.id, batch.source, r.seq, r.created,
             base64.b64encode(r.payload).decode() if r.payload_is_b64 else json.dumps(r.payload, separators=(",", ":")),
             1 if r.payload_is_b64 else 0, now)
            for r in batch.records
        ]
        conn.execute("BEGIN IMMEDIATE")
        try:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO records (stream, id, source, seq, created, payload, payload_b64, received)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            accepted = conn.total_changes - before
            result = StoredBatch(accepted, len(rows) - accepted)
            if key is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO idempotency (key, response, created) VALUES (?, ?, ?)",
                    (key, json.dumps(response_body(batch.stream, result)), now),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return result

    async def counts(self) -> dict[str, int]:
        return await self._run(self._counts)

    def _counts(self) -> dict[str, int]:
        rows = self._db().execute("SELECT stream, COUNT(*) FROM records GROUP BY stream").fetchall()
        return {str(s): int(n) for s, n in rows}

    async def records(self, stream: str, *, after: int, limit: int) -> list[dict[str, Any]]:
        return await self._run(self._records, stream, after, limit)

    def _records(self, stream: str, after: int, limit: int) -> list[dict[str, Any]]:
        rows = self._db().execute(
            "SELECT pos, id, source, seq, created, payload, payload_b64 FROM records"
            " WHERE stream = ? AND pos > ? ORDER BY pos LIMIT ?",
            (stream, after, limit),
        ).fetchall()
        return [
            {"pos": pos, "id": rid, "source": source, "seq": seq, "created": created,
             **({"payload_b64": payload} if b64 else {"payload": json.loads(payload)})}
            for pos, rid, source, seq, created, payload, b64 in rows
        ]

    async def ids(self, stream: str) -> list[str]:
        """Every record id of ``stream`` in first-seen order (for tests and the benchmark's check)."""
        return await self._run(self._ids, stream)

    def _ids(self, stream: str) -> list[str]:
        rows = self._db().execute("SELECT id FROM records WHERE stream = ? ORDER BY pos", (stream,))
        return [str(r[0]) for r in rows]

    async def prune_idempotency(self, older_than: float) -> int:
        return await self._run(self._prune, older_than)

    def _prune(self, older_than: float) -> int:
        return self._db().execute("DELETE FROM idempotency WHERE created < ?", (older_than,)).rowcount


def response_body(stream: str, result: StoredBatch) -> dict[str, Any]:
    return {
        "stream": stream,
        "accepted": result.accepted,
        "duplicates": result.duplicates,
        "received": result.accepted + result.duplicates,
    }
