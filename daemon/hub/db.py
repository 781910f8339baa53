"""The hub's own SQLite file (``<state_dir>/hub.db``): agents, queued messages, handoffs, pools, policies.

The store's migrations only read ``daemon/store/schema_vN.sql``, so the hub keeps its tables in a file of
its own (WAL, ``PRAGMA user_version`` migrations listed below). One thread owns the connection; jobs
queued while a transaction commits are taken into the next one (group commit), each in a SAVEPOINT so a
failing job never takes its neighbours down. Nothing here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from daemon.hub.errors import HubError
from daemon.store.db import split_sql

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_GROUP = 512

MIGRATIONS: tuple[str, ...] = (
    # v1
    """
    CREATE TABLE agents (
        id TEXT PRIMARY KEY, type TEXT NOT NULL, owner TEXT NOT NULL, name TEXT NOT NULL,
        capabilities TEXT NOT NULL, reach TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE,
        mqtt_username TEXT NOT NULL, mqtt_password_hash TEXT NOT NULL, metadata TEXT NOT NULL,
        created REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX agents_owner ON agents(owner);
    CREATE TABLE message_queue (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, target TEXT NOT NULL, msg_id TEXT NOT NULL,
        envelope TEXT NOT NULL, enqueued REAL NOT NULL, expires REAL NOT NULL
    );
    CREATE INDEX message_queue_target ON message_queue(target, seq);
    CREATE INDEX message_queue_expires ON message_queue(expires);
    CREATE TABLE dead_letters (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, target TEXT NOT NULL, msg_id TEXT NOT NULL,
        envelope TEXT NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL
    );
    CREATE TABLE handoffs (
        id TEXT PRIMARY KEY, initiator TEXT NOT NULL, target TEXT NOT NULL, state TEXT NOT NULL,
        context TEXT NOT NULL, result TEXT, reason TEXT, created REAL NOT NULL, updated REAL NOT NULL,
        expires_at REAL NOT NULL, history TEXT NOT NULL
    );
    CREATE INDEX handoffs_target ON handoffs(target, state);
    CREATE INDEX handoffs_initiator ON handoffs(initiator, state);
    CREATE TABLE pools (
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, scope TEXT NOT NULL, owner TEXT NOT NULL,
        description TEXT NOT NULL, created REAL NOT NULL
    );
    CREATE TABLE pool_members (
        pool_id TEXT NOT NULL REFERENCES pools(id) ON DELETE CASCADE, agent_id TEXT NOT NULL,
        permission TEXT NOT NULL, joined REAL NOT NULL, PRIMARY KEY (pool_id, agent_id)
    );
    CREATE INDEX pool_members_agent ON pool_members(agent_id);
    CREATE TABLE policies (id TEXT PRIMARY KEY, body TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    """,
)


class HubDatabaseError(HubError):
    status = 503
    kind = "hub-database"


@dataclass(slots=True)
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    result: Any = None
    error: BaseException | None = None


_STOP = object()


def migrate(conn: sqlite3.Connection) -> None:
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if current > len(MIGRATIONS):
        raise HubDatabaseError(f"hub.db schema v{current} is newer than this code (v{len(MIGRATIONS)})")
    for version in range(current + 1, len(MIGRATIONS) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in split_sql(MIGRATIONS[version - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={version}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise HubDatabaseError(f"hub.db migration to v{version} failed: {exc}") from exc


class HubDatabase:
    """``await db.open()``, then ``await db.write(fn)`` / ``await db.read(fn)``; ``await db.close()``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.commits = 0

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(target=self._main, args=(loop, ready), name="hub-db", daemon=True)
        self._thread.start()
        try:
            await ready
        except BaseException:
            self._thread.join(timeout=5)
            self._thread = None
            raise

    async def close(self) -> None:
        if self._thread is None:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._jobs.put((_STOP, done, loop))
        await done
        self._thread.join(timeout=5)
        self._thread = None

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread is None:
            raise HubDatabaseError("hub database is not open")
        loop = asyncio.get_running_loop()
        job = _Job(fn, loop.create_future(), loop)
        self._jobs.put(job)
        result: T = await job.future
        return result

    read = write  # one connection, one thread: reads queue behind writes and see them

    def _main(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit returns once the WAL is fsynced, so a queued message or handoff survives power loss
            # (https://www.sqlite.org/pragma.html#pragma_synchronous).
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            migrate(conn)
        except (sqlite3.Error, HubDatabaseError, OSError) as exc:
            err = exc if isinstance(exc, HubDatabaseError) else HubDatabaseError(f"cannot open {self.path}: {exc}")
            loop.call_soon_threadsafe(_settle, ready, None, err)
            return
        loop.call_soon_threadsafe(_settle, ready, None, None)
        try:
            while True:
                first = self._jobs.get()
                batch: list[_Job] = []
                stop: Any = None
                for item in self._drain(first):
                    if isinstance(item, tuple) and item[0] is _STOP:
                        stop = item
                        break
                    batch.append(item)
                if batch:
                    self._run(conn, batch)
                if stop is not None:
                    conn.close()
                    stop[2].call_soon_threadsafe(_settle, stop[1], None, None)
                    return
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _drain(self, first: Any) -> list[Any]:
        items = [first]
        while len(items) < MAX_GROUP:
            try:
                items.append(self._jobs.get_nowait())
            except queue.Empty:
                break
        return items

    def _run(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    job.result = job.fn(conn)
                    conn.execute("RELEASE job")
                except Exception as exc:  # the job's own error goes back to its caller only
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    job.error = exc
            conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            error = HubDatabaseError(f"hub.db transaction failed: {exc}")
            for job in batch:
                job.error, job.result = error, None
        for job in batch:
            job.loop.call_soon_threadsafe(_settle, job.future, job.result, job.error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
