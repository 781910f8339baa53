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
import hashlib
import json
import os
import re
import sqlite3
import struct
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from daemon.store.errors import InvalidInputError, SignatureError, StoreError
from daemon.store.signing import PayloadCipher, Signer, verify_signature

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
_HEADER = struct.Struct(">Q16s4sIQII")
_CKPT_DOMAIN = b"MYCOEDGE-CHECKPOINT-V1\x00"

# Below this many blocks a single thread verifies faster than starting worker processes (~0.2 s each).
PARALLEL_VERIFY_FROM = 100_000

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


def chain_hash(  # noqa: PLR0917 - mirrors the fields of a fixed record layout
    prev_hash: bytes, seq: int, block_id: bytes, fourcc: str, flags: int, ts_us: int, payload: bytes, metadata: bytes
) -> bytes:
    header = _HEADER.pack(seq, block_id, fourcc.encode("ascii"), flags, ts_us, len(payload), len(metadata))
    return hashlib.sha256(prev_hash + header + payload + metadata).digest()


def checkpoint_message(chain: str, upto_seq: int, head_hash: bytes) -> bytes:
    return _CKPT_DOMAIN + chain.encode() + b"\x00" + struct.pack(">Q", upto_seq) + head_hash


def uuid7_bytes(unix_ms: int) -> bytes:
    """A time-ordered UUID (RFC 9562 §5.7, version 7) as 16 bytes.

    The MAIF reference treats block ids as opaque 16-byte UUIDs; version 7 keeps ids of new blocks
    near the end of the block-id index, so inserting them does not touch random index pages.
    """
    return _uuid7(unix_ms.to_bytes(6, "big"), os.urandom(10))


def _uuid7(time48: bytes, random80: bytes) -> bytes:
    raw = bytearray(time48 + random80)
    raw[6] = (raw[6] & 0x0F) | 0x70
    raw[8] = (raw[8] & 0x3F) | 0x80
    return bytes(raw)


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


@dataclass(frozen=True, slots=True)
class BlockInfo:
    """Where an appended block landed in the chain."""

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
        time48 = (now_us // 1000).to_bytes(6, "big")
        entropy = os.urandom(10 * len(checked))
        out = []
        for index, (fourcc, plain, meta, given_id, given_ts, encrypt) in enumerate(checked):
            block_id = given_id if given_id is not None else _uuid7(time48, entropy[10 * index : 10 * index + 10])
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
        Ids given by a caller are looked up first; ``generated_ids`` (all made here by ``uuid7_bytes``,
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
            # chain_hash(), inlined: this loop runs once per appended block on the writer thread.
            chained = sha256(
                prev + pack(seq, block_id, fourcc.encode("ascii"), flags, ts_us, len(payload), len(meta))
                + payload + meta
            ).digest()
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

        Logs of at least ``parallel_from`` blocks are verified by ``workers`` processes (default: one
        less than the CPU count, at most 4; on two cores one thread is faster), each walking one range;
        the ranges are joined by checking that each range's first ``prev_hash`` is the previous range's
        last computed chain hash.
        """
        checkpoints, signers = await self._db.read(_load_checkpoints("maif"))
        total = await self.count()
        workers = min(4, (os.cpu_count() or 1) - 1) if workers is None else workers
        if workers > 1 and total >= parallel_from:
            return await self._verify_parallel(checkpoints, signers, total, workers, progress)
        state = _ChainWalk(checkpoints, signers)
        while True:
            after = state.seq

            def run(conn: sqlite3.Connection, after: int = after) -> VerifyReport | None:
                return state.walk(
                    conn.execute(
                        f"SELECT {BLOCK_COLUMNS} FROM blocks WHERE seq > ? ORDER BY seq LIMIT ?", (after, batch)  # noqa: S608 - only fixed column names and ? placeholders are interpolated
                    )
                )

            report = await self._db.read(run)
            if report is not None:
                return report
            if progress is not None:
                progress(state.checked, total)
            if state.seq == after:
                return state.finish()


    async def _verify_parallel(
        self,
        checkpoints: dict[int, list[tuple[bytes, str, bytes]]],
        signers: dict[str, tuple[str, bytes]],
        total: int,
        workers: int,
        progress: ProgressCallback | None,
    ) -> VerifyReport:
        last = await self._db.read(lambda c: int(c.execute("SELECT coalesce(max(seq), 0) FROM blocks").fetchone()[0]))
        size = -(-max(last, 1) // (workers * 2))
        ranges = [(lo, min(last, lo + size - 1)) for lo in range(1, last + 1, size)]
        signer_keys = {k: [a, p.hex()] for k, (a, p) in signers.items()}
        jobs = [
            json.dumps({
                "path": str(self._db.path), "lo": lo, "hi": hi, "signers": signer_keys,
                "checkpoints": {
                    str(s): [[h.hex(), k, sig.hex()] for h, k, sig in c]
                    for s, c in checkpoints.items() if lo <= s <= hi
                },
            }).encode()
            for lo, hi in ranges
        ]
        semaphore = asyncio.Semaphore(workers)

        async def run_range(job: bytes) -> dict[str, Any]:
            async with semaphore:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "daemon.store.verify_worker",
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )
                try:
                    out, err = await proc.communicate(job)
                finally:
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
                if proc.returncode != 0:
                    raise StoreError(f"verify worker failed: {err.decode(errors='replace')[-500:]}")
                result: dict[str, Any] = json.loads(out)
                return result

        tasks = [asyncio.ensure_future(run_range(job)) for job in jobs]
        checked = 0
        prev_last = ZERO_HASH
        try:
            for task in tasks:
                result = await task
                first_prev = None if result["first_prev"] is None else bytes.fromhex(result["first_prev"])
                ok, reason, bad = bool(result["ok"]), result["reason"], result["first_bad"]
                if ok and first_prev is not None and first_prev != prev_last:
                    ok, reason, bad = False, "previous hash does not match the previous block", None
                if not ok:
                    return VerifyReport(False, checked + int(result["checked"]), bad, result["block_id"], reason)
                checked += int(result["checked"])
                prev_last = bytes.fromhex(result["last_chain"])
                if progress is not None:
                    progress(checked, total)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        state = _ChainWalk(checkpoints, signers)
        state.seq, state.checked = last, checked
        return state.finish()


def verify_range(
    path: str,
    lo: int,
    hi: int,
    checkpoints: dict[int, list[tuple[bytes, str, bytes]]],
    signers: dict[str, tuple[str, bytes]],
) -> tuple[VerifyReport, bytes | None, bytes]:
    """Worker process: walk seqs ``lo..hi``; returns the report, the first stored prev hash, the last hash."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        walk = _ChainWalk(checkpoints, signers)
        walk.seq = lo - 1
        first = conn.execute("SELECT prev_hash FROM blocks WHERE seq = ?", (lo,)).fetchone()
        first_prev = None if first is None else bytes(first[0])
        walk.prev = ZERO_HASH if lo == 1 or first_prev is None else first_prev
        rows = conn.execute(f"SELECT {BLOCK_COLUMNS} FROM blocks WHERE seq BETWEEN ? AND ? ORDER BY seq", (lo, hi))  # noqa: S608 - fixed column names only
        report = walk.walk(rows)
        if report is None and walk.seq != hi:
            report = VerifyReport(False, walk.checked, walk.seq + 1, None,
                                  f"expected seq {walk.seq + 1}: block missing")
        return (report or VerifyReport(True, walk.checked)), (None if lo == 1 else first_prev), walk.prev
    finally:
        conn.close()


def _load_checkpoints(
    chain: str,
) -> Callable[[sqlite3.Connection], tuple[dict[int, list[tuple[bytes, str, bytes]]], dict[str, tuple[str, bytes]]]]:
    def run(
        conn: sqlite3.Connection,
    ) -> tuple[dict[int, list[tuple[bytes, str, bytes]]], dict[str, tuple[str, bytes]]]:
        checkpoints: dict[int, list[tuple[bytes, str, bytes]]] = {}
        for upto, head, key_id, sig in conn.execute(
            "SELECT upto_seq, head_hash, key_id, signature FROM checkpoints WHERE chain = ? ORDER BY id", (chain,)
        ):
            checkpoints.setdefault(int(upto), []).append((bytes(head), str(key_id), bytes(sig)))
        signers = {
            str(k): (str(a), bytes(p)) for k, a, p in conn.execute("SELECT key_id, algorithm, public_key FROM signers")
        }
        return checkpoints, signers

    return run


class _ChainWalk:
    """Incremental verifier state, fed one batch of rows at a time (runs on the reader thread)."""

    def __init__(
        self,
        checkpoints: dict[int, list[tuple[bytes, str, bytes]]],
        signers: dict[str, tuple[str, bytes]],
        chain: str = "maif",
    ) -> None:
        self.checkpoints = checkpoints
        self.signers = signers
        self.chain = chain
        self.seq = 0
        self.prev = ZERO_HASH
        self.checked = 0

    def check_checkpoints(self, seq: int, head: bytes) -> str | None:
        for ckpt_head, key_id, sig in self.checkpoints.get(seq, ()):
            if ckpt_head != head:
                return f"checkpoint at seq {seq} does not match the chain head"
            signer = self.signers.get(key_id)
            if signer is None:
                return f"checkpoint at seq {seq} names unknown signer {key_id}"
            if not verify_signature(signer[0], signer[1], checkpoint_message(self.chain, seq, head), sig):
                return f"checkpoint signature at seq {seq} does not verify"
        return None

    def walk(self, rows: Iterator[Any]) -> VerifyReport | None:
        """Check a batch of rows; a report for the first bad one, None when all are good.

        The loop body is what verification costs per block beyond fetching and hashing it, so the
        common case (hash, link and seq all match) takes one comparison chain and no attribute writes.
        """
        sha256 = hashlib.sha256
        pack = _HEADER.pack
        checkpoints = self.checkpoints
        prev = self.prev
        expected_seq = self.seq + 1
        checked = self.checked
        for row in rows:
            seq, block_id, fourcc, flags, ts_us, meta, payload, prev_hash, chained = row
            try:
                computed = sha256(
                    prev + pack(seq, block_id, fourcc.encode("ascii"), flags, ts_us, len(payload), len(meta))
                    + payload + meta
                ).digest()
            except (struct.error, UnicodeEncodeError, AttributeError, TypeError):
                computed = b""
            if computed == chained and prev_hash == prev and seq == expected_seq:
                if seq in checkpoints:
                    self.checked = checked
                    bad = self.check_checkpoints(seq, chained)
                    if bad is not None:
                        return VerifyReport(False, checked, seq, bytes(block_id).hex(), bad)
                prev = chained
                expected_seq += 1
                checked += 1
                continue
            self.checked = checked
            if computed != chained:
                if seq != expected_seq:
                    bad = f"expected seq {expected_seq}, found {seq} (block missing or reordered)"
                elif prev_hash != prev:
                    bad = "previous hash does not match the previous block"
                else:
                    bad = "chain hash does not match the block's contents"
            elif prev_hash != prev:
                bad = "previous hash does not match the previous block"
            else:
                bad = f"expected seq {expected_seq}, found {seq} (block missing or reordered)"
            bid = bytes(block_id).hex() if isinstance(block_id, bytes | bytearray) else None
            return VerifyReport(False, checked, int(seq) if isinstance(seq, int) else expected_seq, bid, bad)
        self.checked = checked
        self.prev = prev
        self.seq = expected_seq - 1
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
