"""MAIF export, import and verification for the CLI (``mycoedge maif export|import|verify``).

Export first verifies the stored chain (we never sign over data that no longer matches its checkpoints),
then writes a file in the reference layout, each block signed by the store's signer. Import verifies the
whole file before appending anything, skips blocks whose id the log already has, and records an audit
entry. File I/O runs on a worker thread; the codec itself is pure (``maif_file``).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from daemon.store.blocklog import (
    FILE_TYPE_KEY,
    FLAG_ENCRYPTED,
    MAX_PAYLOAD_BYTES,
    Block,
    BlockInput,
    VerifyReport,
    canonical_metadata,
    check_fourcc,
)
from daemon.store.errors import InvalidInputError, MaifFormatError, StoreError, VerificationError
from daemon.store.maif_file import (
    BLOCK_HEADER_SIZE,
    REFERENCE_TYPE_NAMES,
    BlockSpec,
    FileIdentity,
    FileVerification,
    MaifBlock,
    MaifWriter,
    ScannedFile,
    scan_file,
    verify_file,
    verify_scanned,
)
from daemon.store.signing import ED25519, Signer

# Blocks read from the log per step of an export, and appended per transaction by an import.
EXPORT_PAGE = 2000
IMPORT_PAGE = 2000
# Upper bound on a MAIF file we read (import and file verification), which is held in memory whole.
MAX_FILE_BYTES = 2 * 1024 * 1024 * 1024

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class ExportResult:
    path: Path
    blocks: int
    bytes: int


@dataclass(frozen=True, slots=True)
class ImportResult:
    blocks_in_file: int
    imported: int
    skipped_existing: int


def _read_bounded(path: Path) -> bytes:
    """The whole file, read once. Not mapped: a file truncated by another writer while mapped would
    kill the process with SIGBUS on the next read, where a read file can only fail to decode."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_FILE_BYTES:
            raise MaifFormatError(0, f"file of {size} bytes exceeds the {MAX_FILE_BYTES}-byte limit")
        return f.read(MAX_FILE_BYTES + 1)


def _verify_path(path: Path, progress: Progress | None) -> FileVerification:
    return verify_file(_read_bounded(path), progress)


def _scan_and_verify(path: Path) -> tuple[ScannedFile, FileVerification]:
    data = _read_bounded(path)
    scanned = scan_file(data)  # MaifFormatError(offset) when malformed
    return scanned, verify_scanned(scanned)


async def export(
    store: object, out_path: str | Path, since: float | None = None, *, progress: Progress | None = None,
    signer: Signer | None = None,
) -> ExportResult:
    """Write the block log (blocks with ``ts >= since`` when given) as a signed MAIF file.

    The file is signed by ``signer`` (default: the store's), which must be an Ed25519 key: the
    reference reader loads no other kind and would verify nothing. A block whose type the reference
    does not know (``LIFE``, ``SENS``, ``AUDT``, ``OUTB``, …) is written as ``BINA`` with its FourCC
    under ``FILE_TYPE_KEY`` in its metadata, since the reference's manifest helpers reject unknown
    types; ``import_file`` puts it back.
    """
    from daemon.store import Store  # noqa: PLC0415 - avoid a cycle: the package imports this module

    if not isinstance(store, Store):
        raise TypeError("export needs a Store")
    signer = store.signer if signer is None else signer
    if signer.algorithm != ED25519:
        raise InvalidInputError(
            f"MAIF files are signed with Ed25519, the only key the reference reader loads; this signer is"
            f" {signer.algorithm} (export with the node's Ed25519 key file, as `mycoedge maif export` does)"
        )
    report = await store.blocks.verify(progress)
    if not report.ok:
        raise VerificationError(report.first_bad or 0, f"store chain does not verify: {report.reason}")
    since_us = None if since is None else int(since * 1_000_000)
    # Only what was just verified: the chain is contiguous from seq 1, so that is seqs 1..checked.
    verified_to = report.checked

    async def page_after(after: int) -> list[Block]:
        page = await store.blocks.list_blocks(after_seq=after, limit=EXPORT_PAGE, since_us=since_us)
        return [b for b in page if b.seq <= verified_to]

    page = await page_after(0)
    now_us = int(store.clock() * 1_000_000)
    identity = FileIdentity(
        agent_id=f"mycoedge-{signer.key_id}", agent_did=f"did:maif:mycoedge-{signer.key_id}",
        file_id=uuid.uuid4().bytes, creator_id=uuid.UUID(int=int(signer.key_id, 16)).bytes,
        created_us=page[0].ts_us if page else now_us, modified_us=now_us,
        algorithm=signer.algorithm, public_key=signer.public_key,
    )
    path = Path(out_path)
    tmp = path.with_name(path.name + ".tmp")
    # Written a page at a time: memory stays at a page of blocks plus 56 bytes a block (see MaifWriter),
    # where building the file in memory took ~4.5 times its size.
    out = await asyncio.to_thread(open, tmp, "w+b")
    writer: MaifWriter | None = None
    try:
        writer = await asyncio.to_thread(MaifWriter, out, identity=identity, sign=signer.sign)
        count = 0
        while page:
            await asyncio.to_thread(_write_page, writer, page)
            count += len(page)
            page = await page_after(page[-1].seq)
        size = await asyncio.to_thread(_finish_file, writer, out, tmp, path)
    except BaseException:
        if writer is not None:
            writer.close()
        out.close()
        tmp.unlink(missing_ok=True)
        raise
    return ExportResult(path, count, size)


def _write_page(writer: MaifWriter, page: list[Block]) -> None:
    for b in page:
        known = b.fourcc in REFERENCE_TYPE_NAMES
        writer.add(BlockSpec(
            fourcc=b.fourcc if known else "BINA", flags=b.flags, ts_us=b.ts_us, block_id=b.block_id, data=b.payload,
            metadata=(b.metadata_dict if known else {**b.metadata_dict, FILE_TYPE_KEY: b.fourcc}) or None,
            provenance={"seq": b.seq, "chain_hash": b.chain_hash.hex()},
        ))


def _finish_file(writer: MaifWriter, out: BinaryIO, tmp: Path, path: Path) -> int:
    """Complete the temporary file, make it durable and move it into place (on a worker thread)."""
    size = writer.finish()
    out.flush()
    os.fsync(out.fileno())
    out.close()
    os.replace(tmp, path)
    return size


async def verify_maif_file(path: str | Path, progress: Progress | None = None) -> FileVerification:
    """Verify a MAIF file on disk; the report names the first bad block by index and id."""
    return await asyncio.to_thread(_verify_path, Path(path), progress)


async def verify(target: object, progress: Progress | None = None) -> VerifyReport | FileVerification:
    """Verify a ``Store`` (its block log) or a MAIF file given by path."""
    from daemon.store import Store  # noqa: PLC0415 - avoid a cycle

    if isinstance(target, Store):
        return await target.blocks.verify(progress)
    if isinstance(target, str | Path):
        return await verify_maif_file(target, progress)
    raise TypeError("verify needs a Store or a path")


def _import_item(index: int, block: MaifBlock, signed_here: bool) -> BlockInput:
    """A verified file block as the log will hold it; a ``MaifFormatError`` at its offset if it cannot be."""
    fourcc, metadata = block.fourcc, block.metadata
    meta_offset = block.offset + BLOCK_HEADER_SIZE + len(block.data)
    if fourcc == "BINA" and metadata is not None and FILE_TYPE_KEY in metadata:
        metadata = dict(metadata)
        fourcc = metadata.pop(FILE_TYPE_KEY)
        if not isinstance(fourcc, str) or fourcc in REFERENCE_TYPE_NAMES:
            raise MaifFormatError(meta_offset, f"block {index}: {FILE_TYPE_KEY!r} must name a non-reference FourCC")
        metadata = metadata or None
    try:
        fourcc = check_fourcc(fourcc)
    except InvalidInputError as exc:
        raise MaifFormatError(block.offset + 4, f"block {index}: {exc}") from exc
    try:
        canonical_metadata(metadata)
    except InvalidInputError as exc:  # e.g. NaN, which the reference writes and our log refuses
        raise MaifFormatError(meta_offset, f"block {index}: {exc}") from exc
    if len(block.data) > MAX_PAYLOAD_BYTES:
        raise MaifFormatError(block.offset, f"block {index}: payload exceeds {MAX_PAYLOAD_BYTES} bytes")
    if block.header.flags & FLAG_ENCRYPTED and not signed_here:
        # Our ciphertext format under a key we hold is the only encryption this log can read back.
        raise MaifFormatError(
            block.offset + 8, f"block {index} is marked encrypted by a signer this node has never used"
        )
    return BlockInput(fourcc, block.data, metadata, block.header.block_id, block.header.timestamp, encrypt=False)


def _check_items(scanned: ScannedFile, signed_here: bool) -> int:
    """Every block of a verified file as the log would take it, before any is appended: a refusal
    (``MaifFormatError`` at its offset) leaves the log untouched. Also refuses an id the file holds
    twice, which would otherwise be taken once or fail a page depending on where the copies fall."""
    seen: set[bytes] = set()
    for i, block in enumerate(scanned.blocks()):
        _import_item(i, block, signed_here)
        if block.header.block_id in seen:
            raise MaifFormatError(block.offset + 24, f"block {i} repeats block id {block.header.block_id.hex()}")
        seen.add(block.header.block_id)
    return len(seen)


def _pages(scanned: ScannedFile, signed_here: bool) -> Iterator[tuple[list[BlockInput], dict[bytes, int]]]:
    page: list[BlockInput] = []
    flags: dict[bytes, int] = {}
    for i, block in enumerate(scanned.blocks()):
        page.append(_import_item(i, block, signed_here))
        flags[block.header.block_id] = block.header.flags
        if len(page) == IMPORT_PAGE:
            yield page, flags
            page, flags = [], {}
    if page:
        yield page, flags


async def import_file(store: object, path: str | Path) -> ImportResult:
    """Append a verified MAIF file's blocks to the log (keeping ids, types, times, metadata, payloads).

    The whole file is verified and every block checked before the first is appended; blocks are then
    appended ``IMPORT_PAGE`` at a time, so memory holds the file and one page, not its decoded blocks.
    An import that stops halfway (crash, full disk) is completed by running it again: blocks whose id
    the log already has are skipped.
    """
    from daemon.store import Store  # noqa: PLC0415 - avoid a cycle

    if not isinstance(store, Store):
        raise TypeError("import_file needs a Store")
    scanned, checked = await asyncio.to_thread(_scan_and_verify, Path(path))
    if not checked.ok:
        raise VerificationError(checked.first_bad if checked.first_bad is not None else -1,
                                f"{path}: {checked.reason}")
    ours = await store.db.read(lambda c: {bytes(k).hex() for (k,) in c.execute("SELECT public_key FROM signers")})
    signed_here = str(scanned.security.get("public_key", "")).lower() in ours
    total = await asyncio.to_thread(_check_items, scanned, signed_here)
    imported = 0
    pages = _pages(scanned, signed_here)
    while (item := await asyncio.to_thread(next, pages, None)) is not None:
        page, flags = item
        known = await store.blocks.known_ids([b.block_id for b in page if b.block_id is not None])
        fresh = [b for b in page if b.block_id not in known]
        if fresh:
            await store.blocks.append_raw(fresh, flags)
        imported += len(fresh)
    await store.audit.audit_append(
        "maif_import", "node", str(path),
        {"file_id": scanned.header.file_id.hex(), "signer": str(scanned.security.get("public_key", "")),
         "blocks": total, "imported": imported},
    )
    return ImportResult(total, imported, total - imported)


__all__ = ["ExportResult", "ImportResult", "StoreError", "export", "import_file", "verify", "verify_maif_file"]
