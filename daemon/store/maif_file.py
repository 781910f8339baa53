"""Pure codec for MAIF files in the layout of the public MAIF reference (``maif/core/secure_format.py``).

Layout (all integers big-endian)::

    file header   444 bytes  ">4sHHIQQ16s16s64sIQQQ32s256s4s"  magic "MAIF", version 2.2, ...
    blocks        each: block header 372 bytes ">IIIIQ16s32s32s256sI8s", data, metadata JSON
    provenance    ">I" length + JSON list of signed entries
    security      ">I" length + JSON object with the signer's public key
    block index   per block ">QQII" (offset, size, type, flags)
    footer        48 bytes ">4sQ32sI": magic "FIAM", total size, SHA-256 of everything before the footer

No I/O happens here beyond the file object a caller hands in: ``MaifWriter`` writes to one
(``encode_file`` to memory) and takes a signing callable and explicit times; ``decode_file`` takes
bytes. Every decoding failure is a ``MaifFormatError`` naming the byte offset where it was found; no
length read from the file is used to allocate anything, only to slice the input.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO

from daemon.store.errors import MaifFormatError
from daemon.store.signing import ECDSA_P256, ED25519, verify_signature

MAGIC_HEADER = b"MAIF"
MAGIC_FOOTER = b"FIAM"
VERSION = (2, 2)
SUPPORTED_VERSIONS = ((2, 1), (2, 2))

_FILE_HEADER = struct.Struct(">4sHHIQQ16s16s64sIQQQ32s256s4s")
_FILE_SIGNABLE = struct.Struct(">4sHHIQQ16s16s64sIQQQ32s")
_BLOCK_HEADER = struct.Struct(">IIIIQ16s32s32s256sI8s")
_BLOCK_SIGNABLE = struct.Struct(">IIIIQ16s32s32sI")
_INDEX_ENTRY = struct.Struct(">QQII")
_FOOTER = struct.Struct(">4sQ32sI")
_LENGTH = struct.Struct(">I")
FILE_HEADER_SIZE = _FILE_HEADER.size  # 444
# Byte offsets of file-header fields, named in decoding errors.
_OFF_BLOCK_COUNT, _OFF_PROVENANCE, _OFF_SECURITY, _OFF_INDEX, _OFF_RESERVED = 124, 128, 136, 144, 440
BLOCK_HEADER_SIZE = _BLOCK_HEADER.size  # 372
FOOTER_SIZE = _FOOTER.size  # 48
INDEX_ENTRY_SIZE = _INDEX_ENTRY.size  # 24

# Reference BlockFlags / FileFlags values.
BLOCK_SIGNED = 0x01
BLOCK_IMMUTABLE = 0x02
BLOCK_ENCRYPTED = 0x04
BLOCK_VERIFIED = 0x10
BLOCK_TAMPERED = 0x20
_STATUS_FLAGS = BLOCK_SIGNED | BLOCK_IMMUTABLE | BLOCK_VERIFIED | BLOCK_TAMPERED
FILE_SIGNED = 0x01
FILE_FINALIZED = 0x02
FILE_HAS_PROVENANCE = 0x04
FILE_HAS_ENCRYPTION = 0x08

SIGNATURE_FIELD = 256
_MARKERS = {ED25519: b"ED25519:", ECDSA_P256: b"ECDSAP256:"}


# The reference's SecureBlockType members by FourCC, with the names its writer puts in provenance
# actions (``add_<name>_block``; any other type is ``unknown``, and its manifest helpers reject it).
REFERENCE_TYPE_NAMES = {
    "TEXT": "text", "EMBD": "embeddings", "IMAG": "image", "AUDI": "audio", "VIDE": "video",
    "KNOW": "knowledge", "BINA": "binary", "META": "metadata",
}


def fourcc_to_int(fourcc: str) -> int:
    return int.from_bytes(fourcc.encode("ascii"), "big")


def int_to_fourcc(value: int) -> str:
    return value.to_bytes(4, "big").decode("latin-1")


def pad_signature(algorithm: str, signature: bytes) -> bytes:
    """The reference's 256-byte signature field: an ASCII marker, the raw signature, zero padding."""
    field = _MARKERS[algorithm] + bytes([len(signature)]) + signature if algorithm != ED25519 else (
        _MARKERS[ED25519] + signature
    )
    if len(field) > SIGNATURE_FIELD:
        raise ValueError("signature too long for the 256-byte field")
    return field.ljust(SIGNATURE_FIELD, b"\x00")


def unpad_signature(algorithm: str, field: bytes) -> bytes | None:
    marker = _MARKERS.get(algorithm)
    if marker is None or not field.startswith(marker):
        return None
    if algorithm == ED25519:
        return field[8:72]
    length = field[len(marker)]
    return field[len(marker) + 1 : len(marker) + 1 + length]


def metadata_bytes(metadata: dict[str, Any] | None) -> bytes:
    """The reference's metadata serialisation: ``json.dumps(metadata or {}, sort_keys=True)``."""
    return json.dumps(metadata or {}, sort_keys=True).encode()


def content_hash(data: bytes, metadata: dict[str, Any] | None) -> bytes:
    digest = hashlib.sha256(data).digest()
    if metadata:
        digest = hashlib.sha256(digest + metadata_bytes(metadata)).digest()
    return digest


def merkle_root(hashes: Sequence[bytes]) -> bytes:
    """Binary SHA-256 tree over content hashes, duplicating the last node of odd levels (reference)."""
    if not hashes:
        return b"\x00" * 32
    level = list(hashes)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [hashlib.sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
    return level[0]


@dataclass(frozen=True, slots=True)
class FileHeader:
    version_major: int
    version_minor: int
    flags: int
    created: int
    modified: int
    file_id: bytes
    creator_id: bytes
    agent_did: bytes
    block_count: int
    provenance_offset: int
    security_offset: int
    index_offset: int
    merkle_root: bytes
    file_signature: bytes
    reserved: bytes

    def signable(self) -> bytes:
        return _FILE_SIGNABLE.pack(
            MAGIC_HEADER, self.version_major, self.version_minor, self.flags, self.created, self.modified,
            self.file_id, self.creator_id, self.agent_did, self.block_count, self.provenance_offset,
            self.security_offset, self.index_offset, self.merkle_root,
        )

    def pack(self) -> bytes:
        return self.signable() + self.file_signature + self.reserved


@dataclass(frozen=True, slots=True)
class BlockHeader:
    size: int
    block_type: int
    flags: int
    version: int
    timestamp: int
    block_id: bytes
    previous_hash: bytes
    content_hash: bytes
    signature: bytes
    metadata_size: int
    reserved: bytes

    def signable(self) -> bytes:
        """What the reference signs: the header without signature, status flags cleared."""
        return _BLOCK_SIGNABLE.pack(
            self.size, self.block_type, self.flags & ~_STATUS_FLAGS, self.version, self.timestamp,
            self.block_id, self.previous_hash, self.content_hash, self.metadata_size,
        )

    def pack(self) -> bytes:
        return _BLOCK_HEADER.pack(
            self.size, self.block_type, self.flags, self.version, self.timestamp, self.block_id,
            self.previous_hash, self.content_hash, self.signature, self.metadata_size, self.reserved,
        )


@dataclass(frozen=True, slots=True)
class MaifBlock:
    offset: int
    header: BlockHeader
    data: bytes
    metadata: dict[str, Any] | None
    metadata_raw: bytes

    @property
    def fourcc(self) -> str:
        return int_to_fourcc(self.header.block_type)


@dataclass(frozen=True, slots=True)
class MaifFile:
    header: FileHeader
    blocks: tuple[MaifBlock, ...]
    provenance: list[Any]
    security: dict[str, Any]
    index: tuple[tuple[int, int, int, int], ...]
    checksum: bytes
    size: int


@dataclass(frozen=True, slots=True)
class BlockSpec:
    """One block to write: the stored form of a log block."""

    fourcc: str
    flags: int
    ts_us: int
    block_id: bytes
    data: bytes
    metadata: dict[str, Any] | None
    provenance: dict[str, Any]


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """Who writes the file and when; passed in so the codec stays pure and deterministic."""

    agent_id: str
    agent_did: str
    file_id: bytes
    creator_id: bytes
    created_us: int
    modified_us: int
    algorithm: str
    public_key: bytes


def _provenance_entry(
    sign: Callable[[bytes], bytes], *, timestamp: int, identity: FileIdentity, action: str, block_hash: str,
    previous: str, position: int, metadata: dict[str, Any],
) -> dict[str, Any]:
    hashed = {
        "timestamp": timestamp, "agent_id": identity.agent_id, "agent_did": identity.agent_did, "action": action,
        "block_hash": block_hash, "previous_entry_hash": previous, "chain_position": position, "metadata": metadata,
    }
    entry_hash = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()
    return {
        "timestamp": timestamp, "agent_id": identity.agent_id, "agent_did": identity.agent_did, "action": action,
        "block_hash": block_hash, "entry_hash": entry_hash, "previous_entry_hash": previous,
        "signature": sign(entry_hash.encode()).hex(), "chain_position": position, "metadata": metadata,
    }


class MaifWriter:
    """Writes a MAIF file block by block, so an export never holds the log in memory.

    The header names the block count, the section offsets and the Merkle root, which are known only
    at the end, and the footer's checksum covers that header: ``finish`` writes the header over the
    zeros ``__init__`` left, then reads the file back once to checksum it. What stays in memory is
    32 + 24 bytes a block (content hash and index entry); the provenance entries, ~600 bytes a block,
    are spooled to a temporary file. ``out`` must be readable, writable and seekable, positioned at 0.
    """

    def __init__(self, out: BinaryIO, *, identity: FileIdentity, sign: Callable[[bytes], bytes]) -> None:
        self._out, self._identity, self._sign = out, identity, sign
        self._index: list[bytes] = []
        self._hashes: list[bytes] = []
        self._prev = b"\x00" * 32
        self._offset = FILE_HEADER_SIZE
        self._any_encrypted = False
        self._provenance = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)  # noqa: SIM115 - closed by close()
        self._entries = 0
        self._last_entry = ""
        self._finished = False
        out.write(b"\x00" * FILE_HEADER_SIZE)
        self._add_provenance(
            timestamp=identity.created_us, action="genesis",
            block_hash=hashlib.sha256(f"genesis:{identity.agent_id}:{identity.created_us}".encode()).hexdigest(),
            metadata={"file_id": identity.file_id.hex(), "creator_id": identity.creator_id.hex(),
                      "format_version": f"{VERSION[0]}.{VERSION[1]}", "key_algorithm": identity.algorithm},
        )

    def _add_provenance(self, *, timestamp: int, action: str, block_hash: str, metadata: dict[str, Any]) -> None:
        entry = _provenance_entry(
            self._sign, timestamp=timestamp, identity=self._identity, action=action, block_hash=block_hash,
            previous=self._last_entry, position=self._entries, metadata=metadata,
        )
        # The section is ``json.dumps(list)``: entries joined by ", " inside brackets.
        self._provenance.write((", " if self._entries else "[").encode() + json.dumps(entry).encode())
        self._entries += 1
        self._last_entry = entry["entry_hash"]

    def add(self, spec: BlockSpec) -> None:
        """Sign and write one block, chained to the previous one by content hash."""
        meta_raw = metadata_bytes(spec.metadata)
        chash = content_hash(spec.data, spec.metadata)
        base = BlockHeader(
            size=BLOCK_HEADER_SIZE + len(spec.data) + len(meta_raw), block_type=fourcc_to_int(spec.fourcc),
            flags=spec.flags & ~_STATUS_FLAGS, version=1, timestamp=spec.ts_us, block_id=spec.block_id,
            previous_hash=self._prev, content_hash=chash, signature=b"\x00" * SIGNATURE_FIELD,
            metadata_size=len(meta_raw), reserved=b"\x00" * 8,
        )
        signature = self._sign(base.signable() + spec.data + meta_raw)
        header = replace(
            base, flags=base.flags | BLOCK_SIGNED | BLOCK_IMMUTABLE,
            signature=pad_signature(self._identity.algorithm, signature),
        )
        self._any_encrypted = self._any_encrypted or bool(spec.flags & BLOCK_ENCRYPTED)
        self._out.write(header.pack())
        self._out.write(spec.data)
        self._out.write(meta_raw)
        self._index.append(_INDEX_ENTRY.pack(self._offset, header.size, header.block_type, header.flags))
        self._offset += header.size
        self._hashes.append(chash)
        self._prev = chash
        kind = REFERENCE_TYPE_NAMES.get(spec.fourcc, "unknown")
        self._add_provenance(
            timestamp=spec.ts_us, action=f"add_{kind}_block", block_hash=chash.hex(),
            metadata={"block_id": spec.block_id.hex(), "size": len(spec.data), **spec.provenance},
        )

    def close(self) -> None:
        """Drop the provenance spool of a file that will not be finished (``finish`` closes it too)."""
        self._provenance.close()

    def finish(self) -> int:
        """Write provenance, security, index, header and footer; the file's size."""
        if self._finished:
            raise ValueError("MaifWriter.finish called twice")
        self._finished = True
        identity, out = self._identity, self._out
        root = merkle_root(self._hashes)
        self._add_provenance(
            timestamp=identity.modified_us, action="finalize", block_hash=root.hex(),
            metadata={"block_count": len(self._hashes)},
        )
        self._provenance.write(b"]")
        prov_len = self._provenance.tell()
        self._provenance.seek(0)
        out.write(_LENGTH.pack(prov_len))
        shutil.copyfileobj(self._provenance, out)
        self.close()
        security_raw = json.dumps({
            "signer_id": identity.agent_id, "signer_did": identity.agent_did, "public_key": identity.public_key.hex(),
            "key_algorithm": identity.algorithm, "signature_algorithm": identity.algorithm,
            "signed_at": identity.modified_us,
        }).encode()
        out.write(_LENGTH.pack(len(security_raw)))
        out.write(security_raw)
        out.writelines(self._index)
        provenance_offset = self._offset
        security_offset = provenance_offset + _LENGTH.size + prov_len
        index_offset = security_offset + _LENGTH.size + len(security_raw)
        flags = FILE_SIGNED | FILE_FINALIZED | FILE_HAS_PROVENANCE | (FILE_HAS_ENCRYPTION if self._any_encrypted else 0)
        unsigned = FileHeader(
            VERSION[0], VERSION[1], flags, identity.created_us, identity.modified_us, identity.file_id,
            identity.creator_id, identity.agent_did.encode()[:64].ljust(64, b"\x00"), len(self._hashes),
            provenance_offset, security_offset, index_offset, root, b"\x00" * SIGNATURE_FIELD, b"\x00" * 4,
        )
        header_sig = pad_signature(identity.algorithm, self._sign(unsigned.signable()))
        body_size = out.tell()
        out.seek(0)
        out.write(replace(unsigned, file_signature=header_sig).pack())
        out.seek(0)
        checksum = hashlib.sha256()
        while chunk := out.read(min(1 << 20, body_size - out.tell())):
            checksum.update(chunk)
        out.seek(body_size)
        out.write(_FOOTER.pack(MAGIC_FOOTER, body_size + FOOTER_SIZE, checksum.digest(), 0))
        return body_size + FOOTER_SIZE


def encode_file(blocks: Sequence[BlockSpec], *, identity: FileIdentity, sign: Callable[[bytes], bytes]) -> bytes:
    """A complete MAIF file in memory: every block signed, chained by content hash, provenance and footer."""
    buffer = io.BytesIO()
    writer = MaifWriter(buffer, identity=identity, sign=sign)
    for spec in blocks:
        writer.add(spec)
    writer.finish()
    return buffer.getvalue()


def _section_bounds(data: bytes, offset: int, end: int, name: str) -> tuple[int, int]:
    """Where a ``u32 length || JSON`` section's text starts and ends."""
    if offset < FILE_HEADER_SIZE or offset + _LENGTH.size > end:
        raise MaifFormatError(offset, f"{name} section offset outside the file")
    (length,) = _LENGTH.unpack_from(data, offset)
    start = offset + _LENGTH.size
    if length > end - start:
        raise MaifFormatError(offset, f"{name} section length {length} runs past the end of the file")
    return start, start + length


def _json_section(data: bytes, offset: int, end: int, name: str) -> tuple[Any, int]:
    start, stop = _section_bounds(data, offset, end, name)
    try:
        value = json.loads(data[start:stop].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MaifFormatError(start, f"{name} section is not valid JSON: {exc}") from exc
    return value, stop


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _is_json_list(text: str) -> bool:
    """Whether ``text`` is a JSON list, as ``isinstance(json.loads(text), list)`` would say, but parsing
    one entry at a time: a provenance section holds ~600 bytes of entries per block, which as Python
    objects would cost more than the blocks themselves. Raises ``ValueError`` where ``json.loads`` would."""
    decoder = json.JSONDecoder()
    pos = _JSON_SPACE.match(text, 0).end()  # type: ignore[union-attr]  # matches the empty string
    if not text.startswith("[", pos):
        return isinstance(json.loads(text), list)  # anything else: json itself judges and names it
    pos = _JSON_SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            _, pos = decoder.raw_decode(text, pos)
            pos = _JSON_SPACE.match(text, pos).end()  # type: ignore[union-attr]
            if text.startswith(",", pos):
                pos = _JSON_SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
                continue
            if text.startswith("]", pos):
                pos += 1
                break
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
    end = _JSON_SPACE.match(text, pos).end()  # type: ignore[union-attr]
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return True


def _read_block(data: bytes, offset: int, footer_at: int) -> MaifBlock:
    """The block whose header starts at ``offset``, structurally checked."""
    if offset + BLOCK_HEADER_SIZE > footer_at:
        raise MaifFormatError(offset, "block header runs past the end of the file")
    bh = BlockHeader(*_BLOCK_HEADER.unpack_from(data, offset))
    if bh.size < BLOCK_HEADER_SIZE + bh.metadata_size:
        raise MaifFormatError(offset, f"block size {bh.size} smaller than header plus metadata")
    if bh.size > footer_at - offset:
        raise MaifFormatError(offset, f"block size {bh.size} runs past the end of the file")
    if bh.reserved != b"\x00" * 8:
        raise MaifFormatError(offset + 364, "reserved block header bytes are not zero")
    data_start = offset + BLOCK_HEADER_SIZE
    meta_start = offset + bh.size - bh.metadata_size
    payload = data[data_start:meta_start]
    meta_raw = data[meta_start : offset + bh.size]
    metadata: dict[str, Any] | None = None
    if bh.metadata_size:
        try:
            parsed = json.loads(meta_raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise MaifFormatError(meta_start, f"block metadata is not valid JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise MaifFormatError(meta_start, "block metadata is not a JSON object")
        metadata = parsed
    return MaifBlock(offset, bh, payload, metadata, meta_raw)


@dataclass(frozen=True, slots=True)
class ScannedFile:
    """A file whose structure ``scan_file`` checked, without its blocks or provenance in memory:
    ``blocks()`` decodes them again, one at a time, from the same bytes."""

    data: bytes = field(repr=False)  # the whole file: never printed
    header: FileHeader
    security: dict[str, Any]
    checksum: bytes
    size: int

    def blocks(self) -> Iterator[MaifBlock]:
        offset, footer_at = FILE_HEADER_SIZE, self.size - FOOTER_SIZE
        for _ in range(self.header.block_count):
            block = _read_block(self.data, offset, footer_at)
            yield block
            offset += block.header.size


def _scan(data: bytes, keep: list[MaifBlock] | None) -> ScannedFile:
    """Check everything ``decode_file`` checks, in the same order; blocks go to ``keep`` when given."""
    size = len(data)
    if size < FILE_HEADER_SIZE + FOOTER_SIZE:
        raise MaifFormatError(size, f"file of {size} bytes is shorter than header and footer")
    fields = _FILE_HEADER.unpack_from(data, 0)
    if fields[0] != MAGIC_HEADER:
        raise MaifFormatError(0, f"bad magic {fields[0]!r}, expected b'MAIF'")
    header = FileHeader(*fields[1:])
    if (header.version_major, header.version_minor) not in SUPPORTED_VERSIONS:
        raise MaifFormatError(4, f"unsupported version {header.version_major}.{header.version_minor}")
    if header.reserved != b"\x00" * 4:
        raise MaifFormatError(_OFF_RESERVED, "reserved header bytes are not zero")
    footer_at = size - FOOTER_SIZE
    magic, total, checksum, footer_reserved = _FOOTER.unpack_from(data, footer_at)
    if magic != MAGIC_FOOTER:
        raise MaifFormatError(footer_at, f"bad footer magic {magic!r}, expected b'FIAM'")
    if total != size:
        raise MaifFormatError(footer_at + 4, f"footer says {total} bytes, file has {size}")
    if footer_reserved != 0:
        raise MaifFormatError(footer_at + 44, "reserved footer bytes are not zero")
    if header.block_count > (footer_at - FILE_HEADER_SIZE) // BLOCK_HEADER_SIZE:
        raise MaifFormatError(_OFF_BLOCK_COUNT, f"block count {header.block_count} cannot fit in the file")
    expected_index = bytearray()  # 24 bytes a block: what the index must hold
    scanned = ScannedFile(data, header, {}, checksum, size)
    offset = FILE_HEADER_SIZE  # where the blocks end
    for block in scanned.blocks():
        bh = block.header
        expected_index += _INDEX_ENTRY.pack(block.offset, bh.size, bh.block_type, bh.flags)
        if keep is not None:
            keep.append(block)
        offset = block.offset + bh.size
    if header.provenance_offset != offset:
        raise MaifFormatError(
            _OFF_PROVENANCE, f"provenance offset {header.provenance_offset} is not where blocks end ({offset})"
        )
    prov_start, end = _section_bounds(data, header.provenance_offset, footer_at, "provenance")
    try:
        with memoryview(data) as view:  # decoded in place: the section is ~600 bytes a block
            provenance_is_list = _is_json_list(str(view[prov_start:end], "utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MaifFormatError(prov_start, f"provenance section is not valid JSON: {exc}") from exc
    if header.security_offset != end:
        raise MaifFormatError(
            _OFF_SECURITY, f"security offset {header.security_offset} is not where provenance ends ({end})"
        )
    security, end = _json_section(data, header.security_offset, footer_at, "security")
    if not isinstance(security, dict):
        raise MaifFormatError(header.security_offset, "security section is not a JSON object")
    if not provenance_is_list:
        raise MaifFormatError(header.provenance_offset, "provenance section is not a JSON list")
    if header.index_offset != end:
        raise MaifFormatError(_OFF_INDEX, f"index offset {header.index_offset} is not where security ends ({end})")
    if footer_at - end != INDEX_ENTRY_SIZE * header.block_count:
        raise MaifFormatError(end, f"block index is {footer_at - end} bytes, expected {INDEX_ENTRY_SIZE} per block")
    if data[end:footer_at] != expected_index:
        for i in range(header.block_count):
            at = i * INDEX_ENTRY_SIZE
            if data[end + at : end + at + INDEX_ENTRY_SIZE] != expected_index[at : at + INDEX_ENTRY_SIZE]:
                raise MaifFormatError(end + at, f"index entry {i} does not match block {i}")
    return replace(scanned, security=security)


def scan_file(data: bytes) -> ScannedFile:
    """Structurally check a MAIF file as ``decode_file`` does, keeping neither its blocks nor its
    provenance: what verifying or importing a large file needs, at the cost of decoding blocks twice."""
    return _scan(data, None)


def decode_file(data: bytes) -> MaifFile:
    """Parse and structurally check a MAIF file; raises ``MaifFormatError`` with the failing offset."""
    blocks: list[MaifBlock] = []
    scanned = _scan(data, blocks)
    header = scanned.header
    provenance, _ = _json_section(data, header.provenance_offset, scanned.size - FOOTER_SIZE, "provenance")
    index = tuple(
        _INDEX_ENTRY.unpack_from(data, header.index_offset + i * INDEX_ENTRY_SIZE) for i in range(header.block_count)
    )
    return MaifFile(header, tuple(blocks), provenance, scanned.security, index, scanned.checksum, scanned.size)


@dataclass(frozen=True, slots=True)
class FileVerification:
    ok: bool
    checked: int
    first_bad: int | None = None
    block_id: str | None = None
    reason: str | None = None


def verify_file(
    data: bytes, progress: Callable[[int, int], None] | None = None, *, every: int = 1000
) -> FileVerification:
    """Decode and verify: block signatures, content hashes, chain, Merkle root, header signature, checksum.

    A structural error is reported as a failure at the offset's block (``MaifFormatError`` is caught
    and turned into a report, so callers get one shape of answer).
    """
    try:
        scanned = scan_file(data)
    except MaifFormatError as exc:
        return FileVerification(False, 0, None, None, str(exc))
    return verify_scanned(scanned, progress, every=every)


def verify_scanned(
    scanned: ScannedFile, progress: Callable[[int, int], None] | None = None, *, every: int = 1000
) -> FileVerification:
    """``verify_file`` for a file ``scan_file`` checked: its blocks are decoded and verified one at a
    time, so only their content hashes (for the Merkle root) stay in memory."""
    algorithm = str(scanned.security.get("key_algorithm", ED25519))
    try:
        public_key = bytes.fromhex(str(scanned.security.get("public_key", "")))
    except ValueError:
        public_key = b""
    if algorithm not in _MARKERS or not public_key:
        return FileVerification(False, 0, None, None, "security section has no usable public key")
    prev = b"\x00" * 32
    total = scanned.header.block_count
    hashes: list[bytes] = []
    for i, block in enumerate(scanned.blocks()):
        bad: str | None = None
        raw_sig = unpad_signature(algorithm, block.header.signature)
        signable = block.header.signable() + block.data + metadata_bytes(block.metadata)
        if not block.header.flags & BLOCK_SIGNED or raw_sig is None:
            bad = "block is not signed"
        elif not verify_signature(algorithm, public_key, signable, raw_sig):
            bad = "signature does not verify"
        elif content_hash(block.data, block.metadata) != block.header.content_hash:
            bad = "content hash mismatch"
        elif block.header.previous_hash != prev:
            bad = "chain broken: previous hash mismatch"
        elif block.metadata_raw != metadata_bytes(block.metadata) and block.header.metadata_size:
            bad = "metadata is not in canonical form"
        if bad is not None:
            return FileVerification(False, i, i, block.header.block_id.hex(), bad)
        prev = block.header.content_hash
        hashes.append(prev)
        if progress is not None and (i + 1) % every == 0:
            progress(i + 1, total)
    if merkle_root(hashes) != scanned.header.merkle_root:
        return FileVerification(False, total, None, None, "Merkle root mismatch")
    raw_header_sig = unpad_signature(algorithm, scanned.header.file_signature)
    if raw_header_sig is None or not verify_signature(algorithm, public_key, scanned.header.signable(), raw_header_sig):
        return FileVerification(False, total, None, None, "file header signature does not verify")
    with memoryview(scanned.data) as view:  # hashed in place: a slice would copy the whole file
        body_hash = hashlib.sha256(view[: scanned.size - FOOTER_SIZE]).digest()
    if body_hash != scanned.checksum:
        return FileVerification(False, total, None, None, "footer checksum mismatch")
    if progress is not None:
        progress(total, total)
    return FileVerification(True, total)
