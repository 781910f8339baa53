"""The database layer: migrations, integrity check at open, group commit, work off the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from daemon.store import Ed25519Signer, Store
from daemon.store.db import Database, latest_schema_version
from daemon.store.errors import CorruptDatabaseError, SchemaError, StoreClosedError


async def test_migrations_set_user_version_and_wal(tmp_path: Path, signer: Ed25519Signer) -> None:
    async with Store(tmp_path / "m.db", signer=signer, embedding_dim=4, ttl_sweep_s=0) as store:
        version, mode = await store.db.read(
            lambda c: (c.execute("PRAGMA user_version").fetchone()[0], c.execute("PRAGMA journal_mode").fetchone()[0])
        )
    assert version == latest_schema_version() >= 1
    assert mode == "wal"


async def test_newer_schema_is_refused(tmp_path: Path, signer: Ed25519Signer) -> None:
    conn = sqlite3.connect(tmp_path / "n.db")
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    with pytest.raises(SchemaError):
        async with Store(tmp_path / "n.db", signer=signer, embedding_dim=4, ttl_sweep_s=0):
            pass


async def test_corrupt_database_is_refused_at_open(tmp_path: Path, signer: Ed25519Signer) -> None:
    path = tmp_path / "c.db"
    async with Store(path, signer=signer, embedding_dim=4, ttl_sweep_s=0) as store:
        await store.append_blocks([])
        for i in range(300):
            await store.outbox_append("events", [(f"r{i}", b"x" * 200)])
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'outbox_stream'").fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(path, "r+b") as f:  # noqa: ASYNC230 - setup of a corrupt file before the store opens
        f.seek((root - 1) * page_size + 8)
        f.write(b"\xff" * 64)
    with pytest.raises(CorruptDatabaseError):
        async with Store(path, signer=signer, embedding_dim=4, ttl_sweep_s=0):
            pass


async def test_concurrent_writes_share_commits(store: Store) -> None:
    before = store.db.commits
    await asyncio.gather(*[store.outbox_append("events", [(f"r{i}", b"x")]) for i in range(200)])
    assert store.db.commits - before < 200
    assert (await store.outbox_stats())["events"].count == 200


async def test_one_failing_write_does_not_fail_its_group(store: Store) -> None:
    def bad(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO outbox(stream) VALUES ('events')")  # violates NOT NULL

    results = await asyncio.gather(
        store.outbox_append("events", [("ok1", b"1")]), store.db.write(bad),
        store.outbox_append("events", [("ok2", b"2")]), return_exceptions=True,
    )
    assert results[0] is None and results[2] is None and isinstance(results[1], Exception)
    assert [r.record_id for r in await store.outbox_peek("events", limit=5, max_bytes=99)] == ["ok1", "ok2"]


async def test_sqlite_runs_off_the_event_loop_thread(store: Store) -> None:
    loop_thread = threading.get_ident()
    write_thread = await store.db.write(lambda c: threading.get_ident())
    read_thread = await store.db.read(lambda c: threading.get_ident())
    assert loop_thread not in (write_thread, read_thread)


async def test_closed_store_refuses_work(tmp_path: Path, signer: Ed25519Signer) -> None:
    store = Store(tmp_path / "x.db", signer=signer, embedding_dim=4, ttl_sweep_s=0)
    async with store:
        pass
    with pytest.raises(StoreClosedError):
        await store.outbox_stats()


# -- WAL checkpoints: on their own thread, with the writer as a fallback ---------------------------------


async def _fill(db: Database, rows: int, per_commit: int = 100) -> None:
    body = b"\x5a" * 1024
    for _ in range(0, rows, per_commit):
        await db.write(lambda c: c.executemany("INSERT INTO t(body) VALUES (?)", [(body,)] * per_commit))


async def _wait(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_commits_leave_the_checkpoint_to_the_background_thread(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    db = Database(path, checkpoint_interval=3600.0)  # the thread waits: only its own checkpoint may copy
    await db.open()
    try:
        await db.write(lambda c: c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB)"))
        await _fill(db, 4000)  # ~1,400 WAL pages: SQLite's own checkpoint would have run in a COMMIT
        assert path.stat().st_size < 1_000_000, "a commit copied the WAL into the database"
        assert db.writer_checkpoints == 0
    finally:
        await db.close()
    assert path.stat().st_size > 4_000_000  # the writer's checkpoint at close copied everything


async def test_background_thread_copies_the_wal_into_the_database(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    db = Database(path, checkpoint_interval=0.01)
    await db.open()
    try:
        await db.write(lambda c: c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB)"))
        await _fill(db, 4000)
        await _wait(lambda: path.stat().st_size > 4_000_000)
        assert db.writer_checkpoints == 0
        assert await db.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 4000
    finally:
        await db.close()


async def test_writer_checkpoints_when_the_wal_outgrows_its_limit(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    limit = 400_000
    db = Database(path, checkpoint_interval=3600.0, wal_limit_bytes=limit)  # the thread never gets to it
    await db.open()
    wal = path.with_name("l.db-wal")
    sizes = []
    try:
        await db.write(lambda c: c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB)"))
        for _ in range(30):
            await _fill(db, 100)  # ~110 pages a commit
            sizes.append(wal.stat().st_size)
        assert db.writer_checkpoints >= 3
        # Cut back when the WAL starts over: never more than the limit plus one commit's pages.
        assert max(sizes) < limit + 150 * 4096 and min(sizes[5:]) <= limit
    finally:
        await db.close()


async def test_writer_checkpoints_when_the_thread_does_not_answer(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    db = Database(path, checkpoint_interval=3600.0, checkpoint_stall_s=0.0)
    await db.open()
    try:
        await db.write(lambda c: c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB)"))
        await _fill(db, 3000)
        assert db.writer_checkpoints >= 1
        assert path.stat().st_size > 2_000_000  # copied by the writer while the thread sat waiting
    finally:
        await db.close()
