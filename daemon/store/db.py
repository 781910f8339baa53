"""The threads that own the SQLite connections: WAL, migrations, integrity check and group commit.

Every write runs on one writer thread. Writes queued while a transaction is being committed are taken
together into the next transaction (group commit), so one ``fsync`` makes many writes durable at once;
each write still runs in its own SAVEPOINT, so one failing write never takes its neighbours down with it.
A write's future resolves only after ``COMMIT`` has returned with ``synchronous=FULL`` (the WAL is
fsynced on commit, https://www.sqlite.org/pragma.html#pragma_synchronous), i.e. only once it is durable.
Reads run on a second thread with its own connection, so a long search never delays a commit.

Copying the WAL back into the database (a checkpoint) runs on a third thread with its own connection:
SQLite's automatic checkpoint would run inside the COMMIT that crosses 1,000 WAL pages, so every few
thousand writes one commit would also copy 4 MB and fsync the database file while the writes behind it
wait. The writer only checkpoints itself if the WAL file grows past ``WAL_LIMIT_BYTES`` (the thread
cannot keep up, or a reader holds it back) or the thread stops answering. ``journal_size_limit`` cuts
the file back to that size whenever the WAL starts over, so a file larger than it always means that
much uncopied WAL: one ``stat`` per commit tells the writer, whatever the thread is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import sqlite_vec

from daemon.store.errors import CorruptDatabaseError, SchemaError, StoreClosedError, StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")
IntegrityMode = Literal["full", "quick", "off"]

# Largest number of queued writes taken into one transaction: bounds the latency a single commit adds
# to the writes behind it while still amortising the fsync over many writes.
DEFAULT_MAX_GROUP = 2048

# How often, at most, the background thread checkpoints while writes keep coming: it coalesces the
# commits of this interval into one copy and one database fsync.
CHECKPOINT_INTERVAL_S = 0.25
# WAL file size past which the writer checkpoints after its own COMMIT (SQLite's automatic checkpoint
# does at 1,000 pages, ~4 MB), and to which the file is cut back when the WAL starts over.
WAL_LIMIT_BYTES = 32 * 1024 * 1024


def latest_schema_version() -> int:
    """Highest N for which a ``schema_vN.sql`` ships with the package."""
    version = 0
    for entry in resources.files("daemon.store").iterdir():
        name = entry.name
        if name.startswith("schema_v") and name.endswith(".sql"):
            version = max(version, int(name[len("schema_v") : -len(".sql")]))
    return version


def _schema_sql(version: int) -> str:
    return resources.files("daemon.store").joinpath(f"schema_v{version}.sql").read_text(encoding="utf-8")


def open_connection(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN/COMMIT ourselves) with sqlite-vec loaded."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a COMMIT returns only after the WAL is fsynced, which is what "durable on return" means.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        if read_only:
            conn.execute("PRAGMA query_only=ON")
    except (sqlite3.Error, AttributeError) as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from exc
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every ``schema_vN.sql`` above ``PRAGMA user_version``, each in its own transaction."""
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    latest = latest_schema_version()
    if current > latest:
        raise SchemaError(f"database schema v{current} is newer than this code (v{latest})")
    for version in range(current + 1, latest + 1):
        script = _schema_sql(version)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in split_sql(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={version}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise SchemaError(f"migration to schema v{version} failed: {exc}") from exc
        log.info("store schema migrated", extra={"schema_version": version})
    return latest


def split_sql(script: str) -> list[str]:
    """Statements of a schema script (``executescript`` would commit our transaction behind our back)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements


def check_integrity(conn: sqlite3.Connection, mode: IntegrityMode) -> None:
    """Raise ``CorruptDatabaseError`` unless the integrity check answers exactly ``ok``."""
    if mode == "off":
        return
    pragma = "integrity_check" if mode == "full" else "quick_check"
    try:
        rows = [str(r[0]) for r in conn.execute(f"PRAGMA {pragma}").fetchall()]
    except sqlite3.DatabaseError as exc:
        raise CorruptDatabaseError([str(exc)]) from exc
    if rows != ["ok"]:
        raise CorruptDatabaseError(rows)


@dataclass(slots=True)
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    savepoint: bool = True
    result: Any = None
    error: BaseException | None = None


@dataclass(slots=True)
class _Hooks:
    before_commit: list[Callable[[sqlite3.Connection], None]] = field(default_factory=list)
    after_rollback: list[Callable[[sqlite3.Connection], None]] = field(default_factory=list)


_STOP = object()


class _WalCheckpointer:
    """A thread that copies committed WAL frames into the database, off the writer's path.

    The writer ``poke``s it after each COMMIT; it then waits ``interval`` (so a burst of commits costs
    one checkpoint) and runs ``PRAGMA wal_checkpoint(PASSIVE)``, which never blocks the writer or the
    readers and copies only frames no open read transaction still needs. ``stalled`` tells the writer
    a poke has gone unanswered for too long (the thread could not open the database, or is stuck in
    I/O), which makes the writer checkpoint itself.
    """

    def __init__(self, path: Path, interval: float, stall_s: float) -> None:
        self._path = path
        self._interval = interval
        self._stall_s = stall_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending_since: float | None = None

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._main, name=f"store-checkpoint:{self._path.name}", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        if self._pending_since is None:
            self._pending_since = time.monotonic()
        self._wake.set()

    def stalled(self) -> bool:
        since = self._pending_since
        return since is not None and time.monotonic() - since > self._stall_s

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _main(self) -> None:
        try:
            conn = open_connection(self._path)
        except StoreError as exc:
            log.warning("store checkpoint thread cannot open the database; the writer checkpoints instead",
                        extra={"error": str(exc)})
            return
        try:
            while not self._stopping.is_set():
                self._wake.wait()
                if self._stopping.wait(self._interval):
                    return
                self._wake.clear()
                self._pending_since = None
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    log.warning("store checkpoint failed", extra={"error": str(exc)})
        finally:
            conn.close()


class Database:
    """One SQLite file: a writer thread with group commit and a reader thread, both off the event loop."""

    def __init__(
        self,
        path: str | Path,
        *,
        integrity: IntegrityMode = "full",
        max_group: int = DEFAULT_MAX_GROUP,
        checkpoint_interval: float = CHECKPOINT_INTERVAL_S,
        wal_limit_bytes: int = WAL_LIMIT_BYTES,
        checkpoint_stall_s: float = 5.0,
    ) -> None:
        self.path = Path(path)
        self._integrity: IntegrityMode = integrity
        self._max_group = max_group
        self._writes: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._reads: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._reader: threading.Thread | None = None
        self._hooks = _Hooks()
        self._wal = _WalCheckpointer(self.path, checkpoint_interval, checkpoint_stall_s)
        self._wal_limit = wal_limit_bytes
        self._wal_path = self.path.with_name(self.path.name + "-wal")
        self._open = False
        self.commits = 0
        self.grouped_writes = 0
        self.writer_checkpoints = 0

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        """Start both threads; migrations and the integrity check run on the writer before any write."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._writer = threading.Thread(
            target=self._writer_main, args=(loop, ready), name=f"store-writer:{self.path.name}", daemon=True
        )
        self._writer.start()
        try:
            await ready
        except BaseException:
            self._writer.join(timeout=5)
            self._writer = None
            raise
        reader_ready: asyncio.Future[None] = loop.create_future()
        self._reader = threading.Thread(
            target=self._reader_main, args=(loop, reader_ready), name=f"store-reader:{self.path.name}",
            daemon=True,
        )
        self._reader.start()
        try:
            await reader_ready
        except BaseException:
            self._reader.join(timeout=5)
            self._reader = None
            await self.close()
            raise
        self._wal.start()
        self._open = True

    async def close(self) -> None:
        """Finish queued writes, then stop both threads and close their connections."""
        self._open = False
        loop = asyncio.get_running_loop()
        # Stopped first so the writer's final checkpoint, after the last queued write, has the WAL alone.
        await asyncio.to_thread(self._wal.stop)
        for thread, jobs in ((self._reader, self._reads), (self._writer, self._writes)):
            if thread is None:
                continue
            done: asyncio.Future[None] = loop.create_future()
            jobs.put((_STOP, done, loop))
            await done
            # The thread has resolved ``done`` as its very last action, so this join is immediate.
            thread.join(timeout=5)
        self._reader = None
        self._writer = None

    def add_hooks(
        self,
        *,
        before_commit: Callable[[sqlite3.Connection], None] | None = None,
        after_rollback: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """Register writer-thread callbacks: run before each COMMIT, or after a failed transaction."""
        if before_commit is not None:
            self._hooks.before_commit.append(before_commit)
        if after_rollback is not None:
            self._hooks.after_rollback.append(after_rollback)

    # -- public API ------------------------------------------------------------------------------

    async def write(self, fn: Callable[[sqlite3.Connection], T], *, savepoint: bool = True) -> T:
        """Run ``fn`` in the next group transaction; return its result once the COMMIT is durable.

        ``savepoint=False`` is for jobs that write nothing themselves (they stage rows that a
        ``before_commit`` hook inserts), so there is nothing to roll back if they raise.
        """
        return await self.submit(fn, savepoint=savepoint)

    def submit(self, fn: Callable[[sqlite3.Connection], T], *, savepoint: bool = True) -> asyncio.Future[T]:
        """Queue ``fn`` for the next group and return the future of its durable result (loop thread)."""
        if not self._open:
            raise StoreClosedError("store is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._writes.put(_Job(fn, future, savepoint))
        return future

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the reader connection (a consistent WAL snapshot for the duration of ``fn``)."""
        if not self._open:
            raise StoreClosedError("store is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._reads.put(_Job(fn, future))
        return await future

    # -- threads ---------------------------------------------------------------------------------

    def _writer_main(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        try:
            conn = open_connection(self.path)
            try:
                # Check before migrating: a migration must never write into a damaged file.
                check_integrity(conn, self._integrity)
                migrate(conn)
            except sqlite3.DatabaseError as exc:
                conn.close()
                raise CorruptDatabaseError([str(exc)]) from exc
            except BaseException:
                conn.close()
                raise
        except BaseException as exc:
            loop.call_soon_threadsafe(_set_exception, ready, exc)
            return
        loop.call_soon_threadsafe(_set_result, ready, None)
        try:
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpoint thread does it, see the module doc
            conn.execute(f"PRAGMA journal_size_limit={int(self._wal_limit)}")
            self._write_loop(conn)
        finally:
            conn.close()

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        while True:
            first = self._writes.get()
            batch: list[_Job] = []
            stop: tuple[Any, asyncio.Future[None], asyncio.AbstractEventLoop] | None = None
            item = first
            while True:
                if isinstance(item, tuple) and item[0] is _STOP:
                    stop = item
                    break
                batch.append(item)
                if len(batch) >= self._max_group:
                    break
                try:
                    item = self._writes.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._commit_group(conn, batch)
            if stop is not None:
                # Drain what was queued behind the stop marker so no caller waits forever.
                rest: list[_Job] = []
                while True:
                    try:
                        item = self._writes.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(item, _Job):
                        rest.append(item)
                if rest:
                    self._commit_group(conn, rest)
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                _, done, loop = stop
                loop.call_soon_threadsafe(_set_result, done, None)
                return

    def _commit_group(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._fail_all(batch, StoreError(f"cannot begin transaction: {exc}"))
            return
        ok = 0
        for job in batch:
            try:
                conn.execute("SAVEPOINT job")
            except sqlite3.Error as exc:
                job.error = StoreError(str(exc))
                continue
            try:
                job.result = job.fn(conn)
                conn.execute("RELEASE job")
                ok += 1
            except BaseException as exc:
                job.error = _translate(exc)
                try:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                except sqlite3.Error:
                    pass
        try:
            if ok:
                for hook in self._hooks.before_commit:
                    hook(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            for hook in self._hooks.after_rollback:
                with contextlib.suppress(Exception):
                    hook(conn)
            log.warning("store commit failed", extra={"error": str(exc), "writes": len(batch)})
            self._fail_all(batch, _translate(exc))
            return
        self.commits += 1
        self.grouped_writes += len(batch)
        _resolve_batch(batch)
        self._wal.poke()
        if self._wal.stalled() or self._wal_size() > self._wal_limit:
            self._writer_checkpoint(conn)

    def _wal_size(self) -> int:
        try:
            return self._wal_path.stat().st_size
        except OSError:
            return 0

    def _writer_checkpoint(self, conn: sqlite3.Connection) -> None:
        """The WAL outgrew the background thread: copy it now, after the group's callers were answered."""
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            log.warning("store checkpoint failed", extra={"error": str(exc)})
            return
        self.writer_checkpoints += 1

    def _fail_all(self, batch: list[_Job], error: BaseException) -> None:
        for job in batch:
            job.error = error
        _resolve_batch(batch)

    def _reader_main(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        try:
            conn = open_connection(self.path, read_only=True)
        except BaseException as exc:
            loop.call_soon_threadsafe(_set_exception, ready, exc)
            return
        loop.call_soon_threadsafe(_set_result, ready, None)
        try:
            while True:
                item = self._reads.get()
                if isinstance(item, tuple) and item[0] is _STOP:
                    _, done, stop_loop = item
                    stop_loop.call_soon_threadsafe(_set_result, done, None)
                    return
                job: _Job = item
                try:
                    conn.execute("BEGIN")
                    try:
                        job.result = job.fn(conn)
                    finally:
                        conn.execute("COMMIT")
                except BaseException as exc:
                    job.error = _translate(exc)
                _resolve_batch([job])
        finally:
            conn.close()


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, sqlite3.Error):
        return StoreError(f"sqlite: {exc}")
    return exc


def _resolve_batch(batch: list[_Job]) -> None:
    """Hand results back to each job's loop with one wake-up per loop, not one per write."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
    for job in batch:
        by_loop.setdefault(job.future.get_loop(), []).append(job)
    for loop, jobs in by_loop.items():
        with contextlib.suppress(RuntimeError):  # loop already closed: nobody is waiting any more
            loop.call_soon_threadsafe(_deliver, jobs)


def _deliver(jobs: list[_Job]) -> None:
    for job in jobs:
        if job.future.done():
            continue
        if job.error is not None:
            job.future.set_exception(job.error)
        else:
            job.future.set_result(job.result)


def _set_result(future: asyncio.Future[None], value: None) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[None], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
