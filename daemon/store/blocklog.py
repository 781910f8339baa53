"""The MAIF block log: FourCC-typed blocks in a SHA-256 chain, signed per group commit.

Each block carries a chain hash over everything stored about it::

    chain_hash = SHA-256(prev_hash || seq || block_id || fourcc || flags || ts_us
                         || len(payload) || len(metadata) || payload || metadata)

with ``prev_hash`` the previous block's full 32-byte chain hash (zeros for the first). One SHA-256 pass
per block covers every stored byte, which keeps appends and verification close to hashing speed. The
MAIF reference's content hash (SHA-256 of the payload, folded with the metadata) is derived from the
stored bytes when a block is exported or sent upstream. Before each group
COMMIT the writer signs the chain head (``Checkpointer``), in the same transaction, so every block is
covered by a signature as soon as it is durable, and a signature costs one Ed25519 operation per commit
rather than per block. Verification recomputes every hash and checks every checkpoint, naming the first
block that does not match.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import hashlib
import json
import os
import re
import sqlite3
import struct
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from daemon.store.errors import InvalidInputError, SignatureError, StoreError
from daemon.store.signing import PayloadCipher, Signer, verify_signature
from daemon.store.verify_worker import HEADER as _HEADER
from daemon.store.verify_worker import WALK_COLUMNS, WalkFailure, WalkState, lenient_text, walk_range, walk_rows

if TYPE_CHECKING:
    from daemon.store.db import Database

ZERO_HASH = b"\x00" * 32

# FourCC block types. The first four are the MAIF reference's SecureBlockType codes; the rest are ours.
TEXT = "TEXT"
EMBD = "EMBD"
BINA = "BINA"
META = "META"
LIFE = "LIFE"  # lifecycle events of the node and its agents
SENS = "SENS"  # sensor readings
AUDT = "AUDT"  # audit records
KNOWN_FOURCC = (TEXT, EMBD, BINA, META, LIFE, SENS, AUDT, "IMAG", "AUDI", "VIDE", "KNOW")

# Block flags, numbered as the MAIF reference's BlockFlags so they export unchanged.
FLAG_ENCRYPTED = 0x04
FLAG_COMPRESSED = 0x08
STORED_FLAGS = FLAG_ENCRYPTED | FLAG_COMPRESSED

_FOURCC_RE = re.compile(r"^[A-Z0-9_ ]{4}$")
_WORKER_PATH = str(Path(__file__).with_name("verify_worker.py"))
_CKPT_DOMAIN = b"MYCOEDGE-CHECKPOINT-V1\x00"

# Below this many blocks the reader thread verifies about as fast as starting worker processes.
PARALLEL_VERIFY_FROM = 50_000

# Metadata key that MAIF files use to carry a block type the reference does not know (see
# ``maif_io.export``); a block appended here may not use it, so an imported file is never ambiguous.
FILE_TYPE_KEY = "mycoedge:fourcc"

# Largest payload one block may carry: bounds memory on import and in the outbox rendering.
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024


def canonical_metadata(metadata: Mapping[str, Any] | None) -> bytes:
    """Metadata as the MAIF reference serialises it (``json.dumps(..., sort_keys=True)``).

    Round-tripped once through JSON so that what we hash is exactly what a reader re-serialises.
    """
    if not metadata:
        return b"{}"
    try:
        once = json.dumps(metadata, sort_keys=True, allow_nan=False)
        return json.dumps(json.loads(once), sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"metadata is not JSON-serialisable: {exc}") from exc


def content_hash(payload: bytes, metadata_json: bytes) -> bytes:
    """The MAIF reference's content hash of a block (see ``SecureBlock.get_content_hash``)."""
    digest = hashlib.sha256(payload).digest()
    if metadata_json != b"{}":
        digest = hashlib.sha256(digest + metadata_json).digest()
    return digest


def checkpoint_message(chain: str, upto_seq: int, head_hash: bytes) -> bytes:
    return _CKPT_DOMAIN + chain.encode() + b"\x00" + struct.pack(">Q", upto_seq) + head_hash


_UUID_VERSION = bytes((b & 0x0F) | 0x70 for b in range(256))
_UUID_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))


def _uuid7_many(time48: bytes, count: int) -> list[bytes]:
    """``count`` time-ordered UUIDs (RFC 9562 §5.7, version 7) sharing one millisecond, as 16 bytes each.

    The MAIF reference treats block ids as opaque 16-byte UUIDs; version 7 keeps ids of new blocks
    near the end of the block-id index, so inserting them does not touch random index pages. The
    random parts come from one ``os.urandom`` call.

    The version and variant bits are set for all of them at once with two strided translations, which
    costs a third of building each id on its own (this runs once per appended block)."""
    entropy = bytearray(os.urandom(10 * count))
    entropy[0::10] = entropy[0::10].translate(_UUID_VERSION)
    entropy[2::10] = entropy[2::10].translate(_UUID_VARIANT)
    random80 = bytes(entropy)
    return [time48 + random80[i : i + 10] for i in range(0, 10 * count, 10)]


# FourCCs already checked (a handful in practice; bounded so odd input cannot grow it without limit).
_GOOD_FOURCC: set[str] = set()


def check_fourcc(fourcc: str) -> str:
    if fourcc in _GOOD_FOURCC:
        return fourcc
    if not isinstance(fourcc, str) or not _FOURCC_RE.match(fourcc):
        raise InvalidInputError(f"fourcc must be 4 characters A-Z, 0-9, '_' or space, got {fourcc!r}")
    if len(_GOOD_FOURCC) < 256:
        _GOOD_FOURCC.add(fourcc)
    return fourcc


# A block after caller-side checks: fourcc, payload, canonical metadata, given id, given time, encrypt.
_Checked = tuple[str, bytes, bytes, bytes | None, int | None, bool]


@dataclass(frozen=True, slots=True)
class BlockInput:
    """What a caller appends; ``block_id`` and ``ts_us`` are filled in when not given."""

    fourcc: str
    payload: bytes
    metadata: Mapping[str, Any] | None = None
    block_id: bytes | None = None
    ts_us: int | None = None
    encrypt: bool | None = None


class BlockInfo(NamedTuple):
    """Where an appended block landed in the chain (a named tuple: one is built per appended block)."""

    seq: int
    block_id: bytes
    fourcc: str
    ts_us: int
    chain_hash: bytes


@dataclass(frozen=True, slots=True)
class Block:
    """A stored block exactly as kept in the database (payload still encrypted if flagged)."""

    seq: int
    block_id: bytes
    fourcc: str
    flags: int
    ts_us: int
    metadata: bytes
    payload: bytes
    prev_hash: bytes
    chain_hash: bytes

    @property
    def content_hash(self) -> bytes:
        """The MAIF reference's content hash of the stored payload and metadata."""
        return content_hash(self.payload, self.metadata)

    @property
    def metadata_dict(self) -> dict[str, Any]:
        value = json.loads(self.metadata)
        return value if isinstance(value, dict) else {}

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & FLAG_ENCRYPTED)


BLOCK_COLUMNS = "seq, block_id, fourcc, flags, ts_us, metadata, payload, prev_hash, chain_hash"


def block_from_row(row: Sequence[Any]) -> Block:
    return Block(
        int(row[0]), bytes(row[1]), str(row[2]), int(row[3]), int(row[4]), bytes(row[5]), bytes(row[6]),
        bytes(row[7]), bytes(row[8]),
    )


@dataclass(slots=True)
class ChainHead:
    """Writer-thread view of the end of one chain; ``dirty`` until the next checkpoint is written."""

    seq: int
    hash: bytes
    dirty: bool = False


class Checkpointer:
    """Signs the head of every chain that moved, just before the group COMMIT (writer thread)."""

    def __init__(self, signer: Signer, clock: Callable[[], float]) -> None:
        self.signer = signer
        self._clock = clock
        self.heads: dict[str, ChainHead] = {}
        self._loaders: dict[str, Callable[[sqlite3.Connection], ChainHead]] = {}

    def register(self, chain: str, loader: Callable[[sqlite3.Connection], ChainHead], conn: sqlite3.Connection) -> None:
        self._loaders[chain] = loader
        self.heads[chain] = loader(conn)

    def register_signer(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO signers(key_id, algorithm, public_key, added) VALUES (?, ?, ?, ?)",
            (self.signer.key_id, self.signer.algorithm, self.signer.public_key, self._clock()),
        )

    def before_commit(self, conn: sqlite3.Connection) -> None:
        for chain, head in self.heads.items():
            if not head.dirty:
                continue
            try:
                signature = self.signer.sign(checkpoint_message(chain, head.seq, head.hash))
            except Exception as exc:
                raise SignatureError(f"signer {self.signer.key_id} failed: {exc}") from exc
            conn.execute(
                "INSERT INTO checkpoints(chain, upto_seq, head_hash, key_id, signature, ts) VALUES (?, ?, ?, ?, ?, ?)",
                (chain, head.seq, head.hash, self.signer.key_id, signature, self._clock()),
            )
            head.dirty = False

    def after_rollback(self, conn: sqlite3.Connection) -> None:
        """The group was rolled back: the in-memory heads must forget what was never committed."""
        for chain, loader in self._loaders.items():
            self.heads[chain] = loader(conn)


def _load_block_head(conn: sqlite3.Connection) -> ChainHead:
    row = conn.execute("SELECT seq, chain_hash FROM blocks ORDER BY seq DESC LIMIT 1").fetchone()
    return ChainHead(0, ZERO_HASH) if row is None else ChainHead(int(row[0]), bytes(row[1]))


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Outcome of a verification; ``first_bad`` is the seq (store) or index (file) of the first bad block."""

    ok: bool
    checked: int
    first_bad: int | None = None
    block_id: str | None = None
    reason: str | None = None


ProgressCallback = Callable[[int, int], None]


class BlockLog:
    """Append, read and verify MAIF blocks; every write goes through the store's group commit."""

    def __init__(
        self,
        db: Database,
        checkpointer: Checkpointer,
        *,
        cipher: PayloadCipher | None,
        encrypt_by_default: bool,
        clock: Callable[[], float],
    ) -> None:
        self._db = db
        self._ckpt = checkpointer
        self._cipher = cipher
        self._encrypt_default = encrypt_by_default and cipher is not None
        self._clock = clock
        self._staged: list[tuple[Any, ...]] = []
        self._pending: list[tuple[_Checked, asyncio.Future[BlockInfo]]] = []
        self._staged_ids: set[bytes] = set()

    def setup(self, conn: sqlite3.Connection) -> None:
        """Writer thread, at open: load the chain head."""
        self._ckpt.register("maif", _load_block_head, conn)

    # -- writing -----------------------------------------------------------------------------

    def _check(self, item: BlockInput) -> _Checked:
        """Everything about a block that can be wrong, checked before it joins a group (caller side)."""
        return self._check_fields(item.fourcc, item.payload, item.metadata, item.block_id, item.ts_us, item.encrypt)

    def _check_fields(  # noqa: PLR0917 - the fields of BlockInput, without building one per single append
        self, fourcc: str, payload: bytes, metadata: Mapping[str, Any] | None, block_id: bytes | None,
        ts_us: int | None, encrypt: bool | None,
    ) -> _Checked:
        fourcc = check_fourcc(fourcc)
        payload = bytes(payload)
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise InvalidInputError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
        if block_id is not None and len(block_id) != 16:
            raise InvalidInputError("block_id must be 16 bytes")
        encrypt = self._encrypt_default if encrypt is None else encrypt
        if encrypt and self._cipher is None:
            raise InvalidInputError("encryption requested but the store has no encryption key")
        return fourcc, payload, canonical_metadata(metadata), block_id, ts_us, bool(encrypt)

    def _materialize(self, checked: Sequence[_Checked], now_us: int) -> list[tuple[bytes, str, int, int, bytes, bytes]]:
        """Ids, times and encryption of checked blocks (writer thread; cannot fail on valid input).

        One ``os.urandom`` call draws the random part of every generated id of the group."""
        ids = _uuid7_many((now_us // 1000).to_bytes(6, "big"), len(checked))
        out = []
        for (fourcc, plain, meta, given_id, given_ts, encrypt), new_id in zip(checked, ids, strict=True):
            block_id = given_id if given_id is not None else new_id
            stored, flags = plain, 0
            if encrypt and self._cipher is not None:
                stored, flags = self._cipher.encrypt(plain, block_id), FLAG_ENCRYPTED
            out.append((block_id, fourcc, flags, given_ts if given_ts is not None else now_us, meta, stored))
        return out

    def insert_prepared(
        self,
        conn: sqlite3.Connection,
        prepared: Sequence[tuple[bytes, str, int, int, bytes, bytes]],
        *,
        generated_ids: bool = False,
    ) -> list[BlockInfo]:
        """Chain already-hashed blocks and stage their rows (writer thread, inside a job).

        The rows are inserted by ``flush`` just before the group COMMIT, with one ``executemany`` for
        every block of the group; a job therefore either stages all of its blocks or raises before
        staging any, and the only failures left for ``flush`` are I/O errors, which fail the group.
        Ids given by a caller are looked up first; ``generated_ids`` (all made here by ``_uuid7_many``,
        74 random bits each) skips that lookup, one query per block: a collision would still be refused
        by the UNIQUE constraint at flush and fail its group loudly, never overwrite a block.
        """
        if not generated_ids:
            for block_id, *_ in prepared:
                if block_id in self._staged_ids or conn.execute(
                    "SELECT 1 FROM blocks WHERE block_id = ?", (block_id,)
                ).fetchone():
                    raise InvalidInputError(f"block {block_id.hex()} already exists")
        head = self._ckpt.heads["maif"]
        seq, prev = head.seq, head.hash
        rows = []
        infos = []
        sha256, pack = hashlib.sha256, _HEADER.pack
        for block_id, fourcc, flags, ts_us, meta, payload in prepared:
            seq += 1
            # The chain hash (module docstring), fed in three parts: this runs once per appended block.
            hasher = sha256(prev + pack(seq, block_id, fourcc.encode("ascii"), flags, ts_us, len(payload), len(meta)))
            hasher.update(payload)
            hasher.update(meta)
            chained = hasher.digest()
            rows.append((seq, block_id, fourcc, flags, ts_us, meta, payload, prev, chained))
            infos.append(BlockInfo(seq, block_id, fourcc, ts_us, chained))
            prev = chained
        # Only now, with every check passed, do the staged rows and the in-memory head move.
        self._staged.extend(rows)
        self._staged_ids.update(r[1] for r in rows)
        head.seq, head.hash, head.dirty = seq, prev, True
        return infos

    def flush(self, conn: sqlite3.Connection) -> None:
        """``before_commit`` hook: insert the group's staged blocks in chain order."""
        if self._staged:
            rows, self._staged = self._staged, []
            self._staged_ids.clear()
            conn.executemany(f"INSERT INTO blocks({BLOCK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)  # noqa: S608 - only fixed column names and ? placeholders are interpolated

    def discard(self, conn: sqlite3.Connection) -> None:
        """``after_rollback`` hook: staged rows of a failed group are forgotten with it."""
        self._staged = []
        self._staged_ids.clear()

    async def append(
        self,
        fourcc: str,
        payload: bytes,
        *,
        metadata: Mapping[str, Any] | None = None,
        block_id: bytes | None = None,
        ts_us: int | None = None,
        encrypt: bool | None = None,
    ) -> BlockInfo:
        """Append one block; returns once it, its checkpoint and its outbox record are durable.

        Single appends made in the same turn of the event loop travel to the writer as one job, so
        many concurrent callers cost one queue hand-off and one wake-up instead of one each.
        """
        if block_id is not None:
            # A caller-chosen id may collide; such a block goes alone so a collision fails only itself.
            return (await self.append_many([BlockInput(fourcc, payload, metadata, block_id, ts_us, encrypt)]))[0]
        if metadata and FILE_TYPE_KEY in metadata:
            raise InvalidInputError(f"metadata key {FILE_TYPE_KEY!r} is reserved for MAIF files")
        checked = self._check_fields(fourcc, payload, metadata, None, ts_us, encrypt)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[BlockInfo] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._submit_pending)
        self._pending.append((checked, future))
        return await future

    def _submit_pending(self) -> None:
        pending, self._pending = self._pending, []
        now_us = int(self._clock() * 1_000_000)
        checked = [c for c, _ in pending]

        def run(conn: sqlite3.Connection) -> list[BlockInfo]:
            return self.insert_prepared(conn, self._materialize(checked, now_us), generated_ids=True)

        try:
            job = self._db.submit(run, savepoint=False)
        except StoreError as exc:
            for _, future in pending:
                if not future.done():
                    future.set_exception(exc)
            return

        def distribute(done: asyncio.Future[list[BlockInfo]]) -> None:
            error = done.exception() if not done.cancelled() else StoreError("append cancelled")
            for index, (_, future) in enumerate(pending):
                if future.done():
                    continue  # its caller was cancelled; the block was written all the same
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(done.result()[index])

        job.add_done_callback(distribute)

    async def append_many(self, items: Sequence[BlockInput]) -> list[BlockInfo]:
        """Append blocks in order, all or none; durable on return."""
        if not items:
            return []
        if any(item.metadata and FILE_TYPE_KEY in item.metadata for item in items):
            raise InvalidInputError(f"metadata key {FILE_TYPE_KEY!r} is reserved for MAIF files")
        now_us = int(self._clock() * 1_000_000)
        checked = [self._check(item) for item in items]
        generated = all(c[3] is None for c in checked)

        # Hashing and encryption run on the writer thread, keeping the event loop free.
        def run(conn: sqlite3.Connection) -> list[BlockInfo]:
            return self.insert_prepared(conn, self._materialize(checked, now_us), generated_ids=generated)

        return await self._db.write(run, savepoint=False)

    async def append_outbox_records(self, records: Sequence[tuple[str, bytes]]) -> list[BlockInfo]:
        """Records appended to the ``maif`` outbox stream: stored as ``OUTB`` blocks, unencrypted."""
        return await self.append_many(
            [BlockInput("OUTB", payload, {"record_id": record_id}, encrypt=False) for record_id, payload in records]
        )

    async def append_raw(self, items: Sequence[BlockInput], flags: Mapping[bytes, int]) -> list[BlockInfo]:
        """Append blocks exactly as given (already encrypted payloads keep their flag); used by import."""
        now_us = int(self._clock() * 1_000_000)
        checked = [self._check(replace(item, encrypt=False)) for item in items]

        def run(conn: sqlite3.Connection) -> list[BlockInfo]:
            prepared = []
            for block_id, fourcc, _, ts_us, meta, payload in self._materialize(checked, now_us):
                prepared.append((block_id, fourcc, flags.get(block_id, 0) & STORED_FLAGS, ts_us, meta, payload))
            return self.insert_prepared(conn, prepared)

        return await self._db.write(run, savepoint=False)

    def decrypt(self, block: Block) -> bytes:
        """The plaintext payload of a block (needs the encryption key when the block is encrypted)."""
        if not block.encrypted:
            return block.payload
        if self._cipher is None:
            raise StoreError(f"block {block.block_id.hex()} is encrypted and the store has no key")
        return self._cipher.decrypt(block.payload, block.block_id)

    # -- reading -----------------------------------------------------------------------------

    async def get(self, block_id: bytes) -> Block | None:
        def run(conn: sqlite3.Connection) -> Block | None:
            row = conn.execute(f"SELECT {BLOCK_COLUMNS} FROM blocks WHERE block_id = ?", (block_id,)).fetchone()  # noqa: S608 - only fixed column names and ? placeholders are interpolated
            return None if row is None else block_from_row(row)

        return await self._db.read(run)

    async def list_blocks(
        self, *, after_seq: int = 0, limit: int = 100, fourcc: str | None = None, since_us: int | None = None
    ) -> list[Block]:
        """Blocks in chain order after ``after_seq`` (cursor paging)."""
        clauses = ["seq > ?"]
        args: list[Any] = [after_seq]
        if fourcc is not None:
            clauses.append("fourcc = ?")
            args.append(check_fourcc(fourcc))
        if since_us is not None:
            clauses.append("ts_us >= ?")
            args.append(since_us)
        args.append(max(0, min(limit, 10_000)))

        def run(conn: sqlite3.Connection) -> list[Block]:
            rows = conn.execute(
                f"SELECT {BLOCK_COLUMNS} FROM blocks WHERE {' AND '.join(clauses)} ORDER BY seq LIMIT ?", args  # noqa: S608 - only fixed column names and ? placeholders are interpolated
            ).fetchall()
            return [block_from_row(r) for r in rows]

        return await self._db.read(run)

    async def count(self) -> int:
        return await self._db.read(lambda conn: int(conn.execute("SELECT count(*) FROM blocks").fetchone()[0]))

    async def known_ids(self, ids: Sequence[bytes]) -> set[bytes]:
        def run(conn: sqlite3.Connection) -> set[bytes]:
            found: set[bytes] = set()
            for start in range(0, len(ids), 500):
                part = list(ids[start : start + 500])
                marks = ",".join("?" * len(part))
                found.update(
                    bytes(r[0]) for r in conn.execute(f"SELECT block_id FROM blocks WHERE block_id IN ({marks})", part)  # noqa: S608 - only fixed column names and ? placeholders are interpolated
                )
            return found

        return await self._db.read(run)

    # -- verification ------------------------------------------------------------------------

    async def verify(
        self,
        progress: ProgressCallback | None = None,
        *,
        batch: int = 20_000,
        workers: int | None = None,
        parallel_from: int = PARALLEL_VERIFY_FROM,
    ) -> VerifyReport:
        """Recompute every chain hash and check every checkpoint signature; name the first bad block.

        Logs of at least ``parallel_from`` blocks are split into one range per worker (default: one
        per CPU, at most 4): a thread of this process walks the first, a worker process each other;
        the ranges are joined by checking that each range's first ``prev_hash`` is the previous
        range's last chain hash. Smaller logs are walked by the reader thread in batches.
        """
        checkpoints, signers, last = await self._db.read(_load_verify_start)
        workers = min(4, os.cpu_count() or 1) if workers is None else workers
        if workers > 1 and last >= parallel_from:
            report = await self._verify_parallel(_ChainWalk(checkpoints, signers), last, workers, progress)
        else:
            report = await self._verify_serial(_ChainWalk(checkpoints, signers), last, batch, progress)
        if report.ok or report.block_id is not None or report.first_bad is None:
            return report
        bad_seq = report.first_bad
        found = await self._db.read(
            lambda c: c.execute(
                "SELECT CASE WHEN typeof(block_id) = 'blob' THEN block_id END FROM blocks WHERE seq = ?", (bad_seq,)
            ).fetchone()
        )
        return report if found is None or not isinstance(found[0], bytes) else replace(report, block_id=found[0].hex())

    async def _verify_serial(
        self, state: _ChainWalk, total: int, batch: int, progress: ProgressCallback | None
    ) -> VerifyReport:
        while True:
            after = state.seq

            def run(conn: sqlite3.Connection, after: int = after) -> VerifyReport | None:
                conn.text_factory = lenient_text  # the reader thread runs one job at a time
                try:
                    # Bounded by the last seq read with the checkpoints: blocks appended since are not
                    # this verification's, and their checkpoints were not loaded.
                    return state.walk(
                        conn.execute(
                            f"SELECT {WALK_COLUMNS} FROM blocks WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",  # noqa: S608 - only fixed column names and ? placeholders are interpolated
                            (after, total, batch),
                        )
                    )
                finally:
                    conn.text_factory = str

            report = await self._db.read(run)
            if report is not None:
                return report
            if progress is not None:
                progress(state.checked, total)
            if state.seq == after:
                return state.finish()

    async def _verify_parallel(
        self, state: _ChainWalk, last: int, workers: int, progress: ProgressCallback | None
    ) -> VerifyReport:
        size = -(-max(last, 1) // workers)
        ranges = [(lo, min(last, lo + size - 1)) for lo in range(1, last + 1, size)]
        total = last
        done = [0] * len(ranges)

        def report(index: int, checked: int) -> None:
            done[index] = checked
            if progress is not None:
                progress(sum(done), total)

        loop = asyncio.get_running_loop()

        def report_from_thread(checked: int) -> None:
            loop.call_soon_threadsafe(report, 0, checked)

        # The first range is walked here, in a thread of its own, while the worker processes start:
        # one process start (~16 ms) fewer before the last range is done.
        path, (first_lo, first_hi) = str(self._db.path), ranges[0]
        tasks = [asyncio.ensure_future(asyncio.to_thread(_walk_here, path, first_lo, first_hi, report_from_thread))]
        tasks += [
            asyncio.ensure_future(self._run_worker(lo, hi, functools.partial(report, i)))
            for i, (lo, hi) in enumerate(ranges) if i > 0
        ]
        try:
            for (lo, _), task in zip(ranges, tasks, strict=True):
                result = await task
                first_prev = None if result["first_prev"] is None else bytes.fromhex(result["first_prev"])
                if first_prev is not None and first_prev != state.prev:
                    return VerifyReport(False, lo - 1, lo, None, "previous hash does not match the previous block")
                failure = None if result["failure"] is None else WalkFailure(*result["failure"])
                bad = state.check_stretch(lo, lo + int(result["checked"]) - 1, failure)
                if bad is not None:
                    return bad
                state.checked += int(result["checked"])
                state.seq = state.checked
                state.prev = bytes.fromhex(result["last_chain"])
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return state.finish()

    async def _run_worker(self, lo: int, hi: int, progress: Callable[[int], None]) -> dict[str, Any]:
        """One worker process over ``lo..hi``: its progress lines go to ``progress``; its result is returned."""
        job = json.dumps({"path": str(self._db.path), "lo": lo, "hi": hi}).encode()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", _WORKER_PATH,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        try:
            proc.stdin.write(job)
            await proc.stdin.drain()
            proc.stdin.close()
            result: dict[str, Any] | None = None
            while line := await proc.stdout.readline():
                try:
                    message = json.loads(line)
                except ValueError as exc:
                    raise StoreError(f"verify worker answered garbage: {exc}") from exc
                if "result" in message:
                    result = message["result"]
                elif "checked" in message:
                    progress(int(message["checked"]))
            err = await proc.stderr.read()
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if proc.returncode != 0 or result is None:
            raise StoreError(f"verify worker failed ({proc.returncode}): {err.decode(errors='replace')[-500:]}")
        return result


def _walk_here(path: str, lo: int, hi: int, progress: Callable[[int], None]) -> dict[str, Any]:
    """``walk_range`` in this process, failing as a worker process does: with a ``StoreError``."""
    try:
        return walk_range(path, lo, hi, progress)
    except sqlite3.Error as exc:
        raise StoreError(f"verification could not read {path}: {exc}") from exc


_Checkpoints = dict[int, list[tuple[bytes, str, bytes]]]
_Signers = dict[str, tuple[str, bytes]]


def _read_checkpoints(conn: sqlite3.Connection, chain: str) -> tuple[_Checkpoints, _Signers]:
    """A chain's checkpoints by seq (head, key id, signature) and the signers' public keys."""
    checkpoints: _Checkpoints = {}
    for upto, head, key_id, sig in conn.execute(
        "SELECT upto_seq, head_hash, key_id, signature FROM checkpoints WHERE chain = ? ORDER BY id", (chain,)
    ):
        checkpoints.setdefault(int(upto), []).append((bytes(head), str(key_id), bytes(sig)))
    signers = {
        str(k): (str(a), bytes(p)) for k, a, p in conn.execute("SELECT key_id, algorithm, public_key FROM signers")
    }
    return checkpoints, signers


def _load_checkpoints(chain: str) -> Callable[[sqlite3.Connection], tuple[_Checkpoints, _Signers]]:
    return lambda conn: _read_checkpoints(conn, chain)


def _load_verify_start(conn: sqlite3.Connection) -> tuple[_Checkpoints, _Signers, int]:
    """The block log's checkpoints and its last seq, read in one transaction: every block up to that
    seq has its checkpoints in the result."""
    checkpoints, signers = _read_checkpoints(conn, "maif")
    return checkpoints, signers, int(conn.execute("SELECT coalesce(max(seq), 0) FROM blocks").fetchone()[0])


class _ChainWalk:
    """Verifier state for one chain: the walk so far, and the checkpoints whose signatures it checks."""

    def __init__(self, checkpoints: _Checkpoints, signers: _Signers, chain: str = "maif") -> None:
        self.checkpoints = checkpoints
        self.signers = signers
        self.chain = chain
        self.seq = 0
        self.prev = ZERO_HASH
        self.checked = 0
        # What the walk compares at each checkpointed seq, and those seqs in order for the signature pass.
        self.heads = {seq: [head for head, _, _ in entries] for seq, entries in checkpoints.items()}
        self._ordered = sorted(checkpoints)

    def check_checkpoints(self, seq: int, head: bytes) -> str | None:
        """The checkpoints at ``seq``: each must name ``head`` and carry a good signature over it."""
        for ckpt_head, _, _ in self.checkpoints.get(seq, ()):
            if ckpt_head != head:
                return f"checkpoint at seq {seq} does not match the chain head"
        return self.check_signatures(seq)

    def check_signatures(self, seq: int) -> str | None:
        for head, key_id, sig in self.checkpoints.get(seq, ()):
            signer = self.signers.get(key_id)
            if signer is None:
                return f"checkpoint at seq {seq} names unknown signer {key_id}"
            if not verify_signature(signer[0], signer[1], checkpoint_message(self.chain, seq, head), sig):
                return f"checkpoint signature at seq {seq} does not verify"
        return None

    def check_stretch(self, first: int, last: int, failure: WalkFailure | None) -> VerifyReport | None:
        """After a walk of seqs ``first..last`` (heads already compared): the first bad signature in it,
        or else the walk's own failure, as a report; None when both are clean."""
        for index in range(bisect.bisect_left(self._ordered, first), len(self._ordered)):
            seq = self._ordered[index]
            if seq > last:
                break
            bad = self.check_signatures(seq)
            if bad is not None:
                return VerifyReport(False, seq - 1, seq, None, bad)
        if failure is not None:
            return VerifyReport(False, failure.seq - 1, failure.seq, failure.block_id, failure.reason)
        return None

    def walk(self, rows: Iterator[Any]) -> VerifyReport | None:
        """Check a batch of ``WALK_COLUMNS`` rows; a report for the first bad one, None when all are good."""
        state = WalkState(prev=self.prev, expected_seq=self.seq + 1)
        failure = walk_rows(rows, state, self.heads)
        bad = self.check_stretch(self.seq + 1, state.expected_seq - 1, failure)
        if bad is not None:
            return bad
        self.checked += state.checked
        self.prev = state.prev
        self.seq = state.expected_seq - 1
        return None

    def finish(self) -> VerifyReport:
        last_ckpt = max(self.checkpoints, default=0)
        if last_ckpt > self.seq:
            return VerifyReport(
                False, self.checked, self.seq + 1, None,
                f"a checkpoint covers seq {last_ckpt} but the chain ends at {self.seq} (blocks removed)",
            )
        if self.seq and last_ckpt != self.seq:
            return VerifyReport(
                False, self.checked, self.seq, None, f"blocks after seq {last_ckpt} are not covered by a signature"
            )
        return VerifyReport(True, self.checked)
