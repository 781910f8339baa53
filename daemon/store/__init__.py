"""The local store: one SQLite file holding memory, the MAIF block log, the audit trail and the outbox.

``Store`` is an async context manager; every setting is a keyword-only constructor argument (the
coordinator maps the config file onto them). All SQLite work runs on the store's own threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from daemon.store.audit import AuditLog, AuditRecord
from daemon.store.blocklog import Block, BlockInfo, BlockInput, BlockLog, Checkpointer, VerifyReport
from daemon.store.db import Database, IntegrityMode
from daemon.store.embedders import Embedder
from daemon.store.errors import StoreClosedError, StoreError
from daemon.store.maif_io import ExportResult, ImportResult, export, import_file, verify, verify_maif_file
from daemon.store.memory import Memory, MemoryFilter, MemoryItem, SearchHit
from daemon.store.outbox import OUTBOX_INSERT, Outbox, OutboxRecord, OutboxStats
from daemon.store.signing import Ed25519Signer, PayloadCipher, Signer, load_encryption_key

if TYPE_CHECKING:
    from drivers.model import Reading

__all__ = [
    "AuditRecord",
    "Block",
    "BlockInfo",
    "BlockInput",
    "Ed25519Signer",
    "Embedder",
    "ExportResult",
    "ImportResult",
    "MemoryFilter",
    "MemoryItem",
    "OutboxRecord",
    "OutboxStats",
    "SearchHit",
    "Signer",
    "Store",
    "StoreError",
    "VerifyReport",
    "export",
    "import_file",
    "verify",
    "verify_maif_file",
]

log = logging.getLogger(__name__)

_COMPACT = (",", ":")
_encode_str = json.encoder.encode_basestring_ascii  # what json.dumps uses for str (ensure_ascii=True)


def telemetry_record(r: Reading) -> tuple[str, str, bytes]:
    """A reading's ``quantities`` and ``meta`` JSON for the readings table, and its ``telemetry`` outbox payload.

    The payload is ``json.dumps({device_id, meta, quantities, sensor, seq, ts, valid}, sort_keys=True,
    separators=(",", ":"))`` byte for byte (a property test holds it to that), but assembled from the two
    encodings the table needs anyway: at 2,500 readings/s, encoding each reading once instead of three
    times (plus a decode) is about a tenth of the daemon's CPU on this path.
    """
    q_json = json.dumps({name: {"value": q.value, "unit": q.unit} for name, q in r.quantities.items()},
                        sort_keys=True, separators=_COMPACT)
    meta_json = json.dumps(dict(r.meta), default=str, sort_keys=True, separators=_COMPACT) if r.meta else "{}"
    ts = r.ts
    # float.__repr__ is what json.dumps writes for a finite float; anything else (NaN, an int) goes through it.
    ts_json = float.__repr__(ts) if type(ts) is float and ts - ts == 0.0 else json.dumps(ts)
    seq_json = int.__repr__(r.seq) if type(r.seq) is int else json.dumps(r.seq)
    payload = (f'{{"device_id":{_encode_str(r.device_id)},"meta":{meta_json},"quantities":{q_json},'
               f'"sensor":{_encode_str(r.sensor)},"seq":{seq_json},"ts":{ts_json},'
               f'"valid":{"true" if r.valid else "false"}}}').encode()
    return q_json, meta_json, payload


class Store:
    """The node's durable state. ``async with Store(path, signer=...) as store:``.

    Settings (all keyword-only, defaults in brackets): ``signer`` (required), ``encryption_key`` [None]
    (32 bytes, or a path to a 0600 key file), ``encrypt_blocks`` [True when a key is given],
    ``embedder`` [None = caller supplies vectors], ``embedding_dim`` [384], ``vector_index`` ["ivf": partitions by
    nearest centroid, exact until ``ivf_train_at`` vectors | "exact" | "binary": sign bits re-ranked],
    ``binary_oversample`` [10], ``ivf_probes`` [8], ``ivf_train_at`` [20000], ``integrity_check``
    ["full" | "quick" | "off"], ``chunk_chars`` [1500], ``chunk_overlap`` [200], ``ttl_sweep_s`` [60],
    ``max_group`` [2048], ``clock`` [time.time].
    """

    def __init__(
        self,
        path: str | Path,
        *,
        signer: Signer,
        encryption_key: bytes | str | Path | None = None,
        encrypt_blocks: bool | None = None,
        embedder: Embedder | None = None,
        embedding_dim: int = 384,
        vector_index: Literal["exact", "binary", "ivf"] = "ivf",
        binary_oversample: int = 10,
        ivf_probes: int = 8,
        ivf_train_at: int = 20_000,
        integrity_check: IntegrityMode = "full",
        chunk_chars: int = 1500,
        chunk_overlap: int = 200,
        ttl_sweep_s: float = 60.0,
        max_group: int = 2048,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.signer = signer
        if isinstance(encryption_key, str | Path):
            encryption_key = load_encryption_key(encryption_key)
        self._cipher = PayloadCipher(encryption_key) if encryption_key is not None else None
        self._clock = clock
        self.clock = clock
        self._ttl_sweep_s = ttl_sweep_s
        self.db = Database(self.path, integrity=integrity_check, max_group=max_group)
        self._ckpt = Checkpointer(signer, clock)
        self.blocks = BlockLog(
            self.db, self._ckpt, cipher=self._cipher,
            encrypt_by_default=self._cipher is not None if encrypt_blocks is None else encrypt_blocks,
            clock=clock,
        )
        # Order matters: staged blocks are inserted before the checkpoint that signs them.
        self.db.add_hooks(before_commit=self.blocks.flush, after_rollback=self.blocks.discard)
        self.db.add_hooks(before_commit=self._ckpt.before_commit, after_rollback=self._ckpt.after_rollback)
        self.audit = AuditLog(self.db, self._ckpt, clock)
        self.outbox = Outbox(self.db, clock, maif_append=self.blocks.append_outbox_records)
        self.memory = Memory(
            self.db, embedder=embedder, dim=embedding_dim, chunk_chars=chunk_chars, chunk_overlap=chunk_overlap,
            clock=clock, vector_index=vector_index, binary_oversample=binary_oversample, ivf_probes=ivf_probes,
            ivf_train_at=ivf_train_at,
        )
        self._tasks: asyncio.TaskGroup | None = None
        self._sweeper: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Store:
        await self.db.open()
        try:
            await self.db.write(self._setup)
        except BaseException:
            await self.db.close()
            raise
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        if self._ttl_sweep_s > 0:
            self._sweeper = self._tasks.create_task(self._sweep_expired(), name="store-ttl-sweeper")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._tasks is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._tasks.__aexit__(None, None, None)
        self._tasks = None
        self._sweeper = None
        await self.memory.aclose()
        await self.db.close()

    def _setup(self, conn: sqlite3.Connection) -> None:
        self._ckpt.register_signer(conn)
        self.blocks.setup(conn)
        self.audit.setup(conn)
        self.memory.setup(conn)

    async def _sweep_expired(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_sweep_s)
            try:
                removed = await self.memory.purge_expired()
                await self.memory.maintain_index()
            except StoreClosedError:
                return
            except StoreError as exc:
                log.warning("ttl sweep failed", extra={"error": str(exc)})
                continue
            if removed:
                log.debug("expired memories removed", extra={"count": removed})

    # -- block log -------------------------------------------------------------------------------

    async def append_block(
        self, fourcc: str, payload: bytes, *, metadata: Mapping[str, Any] | None = None,
        encrypt: bool | None = None,
    ) -> BlockInfo:
        """Append one MAIF block; returns once durable and signed (by the group's checkpoint)."""
        return await self.blocks.append(fourcc, payload, metadata=metadata, encrypt=encrypt)

    async def append_blocks(self, items: Sequence[BlockInput]) -> list[BlockInfo]:
        return await self.blocks.append_many(items)

    async def verify_blocks(self, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
        return await self.blocks.verify(progress)

    # -- audit -----------------------------------------------------------------------------------

    async def audit_append(
        self, kind: str, actor: str, subject: str, data: Mapping[str, Any] | None = None
    ) -> AuditRecord:
        return await self.audit.audit_append(kind, actor, subject, data)

    async def audit_list(self, **filters: Any) -> list[AuditRecord]:
        return await self.audit.audit_list(**filters)

    async def audit_verify(self) -> VerifyReport:
        return await self.audit.audit_verify()

    # -- outbox (the uplink's API) ---------------------------------------------------------------

    async def outbox_append(self, stream: str, records: Sequence[tuple[str, bytes]]) -> None:
        await self.outbox.outbox_append(stream, records)

    async def outbox_peek(self, stream: str, *, limit: int, max_bytes: int) -> list[OutboxRecord]:
        return await self.outbox.outbox_peek(stream, limit=limit, max_bytes=max_bytes)

    async def outbox_ack(self, stream: str, upto_seq: int) -> int:
        return await self.outbox.outbox_ack(stream, upto_seq)

    async def outbox_stats(self) -> dict[str, OutboxStats]:
        return await self.outbox.outbox_stats()

    async def outbox_drop_oldest(self, stream: str, *, count: int) -> int:
        return await self.outbox.outbox_drop_oldest(stream, count=count)

    async def outbox_drop_before(self, stream: str, *, created_before: float) -> int:
        return await self.outbox.outbox_drop_before(stream, created_before=created_before)

    # -- readings sink ---------------------------------------------------------------------------

    async def store_readings(self, readings: Sequence[Reading]) -> None:
        """Store a batch of device readings, each with its ``telemetry`` outbox record, atomically."""
        if not readings:
            return
        created = self._clock()
        rows = []
        outbox_rows = []
        for r in readings:
            q_json, meta_json, payload = telemetry_record(r)
            rows.append((r.device_id, r.sensor, r.ts, r.seq, int(r.valid), q_json, meta_json))
            record_id = f"{r.device_id}:{r.sensor}:{r.seq}:{r.ts!r}"
            outbox_rows.append(("telemetry", record_id, payload, created, len(payload)))

        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO readings(device_id, sensor, ts, seq, valid, quantities, meta)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.executemany(OUTBOX_INSERT, outbox_rows)

        await self.db.write(run)

    async def readings_count(self) -> int:
        return await self.db.read(lambda c: int(c.execute("SELECT count(*) FROM readings").fetchone()[0]))

    # -- integrity -------------------------------------------------------------------------------

    async def integrity_check(self) -> list[str]:
        """``PRAGMA integrity_check`` lines (``["ok"]`` when healthy), run on the reader thread."""
        return await self.db.read(lambda c: [str(r[0]) for r in c.execute("PRAGMA integrity_check")])
