"""MAIF file codec: reference layout, round trip, tamper detection, typed errors with offsets, fuzzing."""

from __future__ import annotations

import hashlib
import json
import struct
import uuid
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.store.errors import MaifFormatError
from daemon.store.maif_file import (
    BLOCK_HEADER_SIZE,
    FILE_HEADER_SIZE,
    FOOTER_SIZE,
    BlockSpec,
    FileIdentity,
    _is_json_list,
    decode_file,
    encode_file,
    scan_file,
    verify_file,
)
from daemon.store.signing import Ed25519Signer

SIGNER = Ed25519Signer(ed25519.Ed25519PrivateKey.from_private_bytes(b"\x07" * 32))
IDENTITY = FileIdentity(
    agent_id="node-1", agent_did="did:maif:node-1", file_id=b"\x01" * 16, creator_id=b"\x02" * 16,
    created_us=1_700_000_000_000_000, modified_us=1_700_000_000_500_000, algorithm=SIGNER.algorithm,
    public_key=SIGNER.public_key,
)


def _spec(i: int, data: bytes, meta: dict[str, object] | None = None, fourcc: str = "TEXT") -> BlockSpec:
    return BlockSpec(fourcc, 0, 1_700_000_000_000_000 + i, uuid.UUID(int=i + 1).bytes, data, meta, {"seq": i + 1})


def _file(n: int = 3) -> bytes:
    specs = [_spec(i, f"block {i}".encode() * (i + 1), {"i": i} if i % 2 else None) for i in range(n)]
    return encode_file(specs, identity=IDENTITY, sign=SIGNER.sign)


def reference_style_check(data: bytes) -> list[str]:
    """An independent reading of the reference layout (plain struct unpacking, as its reader does)."""
    errors: list[str] = []
    head = struct.unpack(">4sHHIQQ16s16s64sIQQQ32s256s4s", data[:444])
    assert head[0] == b"MAIF" and (head[1], head[2]) in ((2, 1), (2, 2))
    offset, prev, hashes = 444, b"\x00" * 32, []
    sec_off = head[11]
    (sec_len,) = struct.unpack(">I", data[sec_off : sec_off + 4])
    security = json.loads(data[sec_off + 4 : sec_off + 4 + sec_len])
    public = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(security["public_key"]))
    for i in range(head[9]):
        h = struct.unpack(">IIIIQ16s32s32s256sI8s", data[offset : offset + 372])
        size, btype, flags, version, ts, bid, previous, chash, sig, msize, _ = h
        body = data[offset + 372 : offset + size - msize]
        meta = json.loads(data[offset + size - msize : offset + size]) if msize else None
        meta_bytes = json.dumps(meta or {}, sort_keys=True).encode()
        signable = struct.pack(">IIIIQ16s32s32sI", size, btype, flags & ~0x33, version, ts, bid, previous, chash, msize)
        assert sig.startswith(b"ED25519:")
        public.verify(sig[8:72], signable + body + meta_bytes)
        digest = hashlib.sha256(body).digest()
        if meta:
            digest = hashlib.sha256(digest + meta_bytes).digest()
        if digest != chash:
            errors.append(f"block {i} content hash")
        if previous != prev:
            errors.append(f"block {i} chain")
        prev = chash
        hashes.append(chash)
        offset += size
    level = hashes or [b"\x00" * 32]
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [hashlib.sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
    if level[0] != head[13]:  # an empty file's root is 32 zero bytes, as the reference compares it
        errors.append("merkle")
    magic, total, checksum, _ = struct.unpack(">4sQ32sI", data[-48:])
    assert magic == b"FIAM" and total == len(data)
    assert hashlib.sha256(data[:-48]).digest() == checksum
    return errors


def test_layout_sizes_match_the_reference() -> None:
    assert (FILE_HEADER_SIZE, BLOCK_HEADER_SIZE, FOOTER_SIZE) == (444, 372, 48)


@pytest.mark.parametrize("blocks", [0, 1, 2, 5])
def test_encoded_file_passes_an_independent_reference_style_check(blocks: int) -> None:
    data = _file(blocks)
    assert reference_style_check(data) == []
    assert verify_file(data).ok


def as_version_2_1(data: bytes) -> bytes:
    """The same file as a 2.1 writer (the reference before its 2.2 bump) would sign it: the version
    sits in the signed header, so the header signature and the footer checksum are made again."""
    head = bytearray(data[:444])
    struct.pack_into(">H", head, 6, 1)
    signature = b"ED25519:" + SIGNER.sign(bytes(head[:184]))
    head[184:440] = signature.ljust(256, b"\x00")
    body = bytes(head) + data[444:-48]
    return body + struct.pack(">4sQ32sI", b"FIAM", len(body) + 48, hashlib.sha256(body).digest(), 0)


@pytest.mark.parametrize("blocks", [0, 3])
def test_a_version_2_1_file_decodes_and_verifies(blocks: int) -> None:
    data = as_version_2_1(_file(blocks))
    assert reference_style_check(data) == []
    parsed = decode_file(data)
    assert (parsed.header.version_major, parsed.header.version_minor) == (2, 1)
    assert verify_file(data).ok


def test_round_trip_keeps_every_block_field() -> None:
    specs = [_spec(i, bytes([i]) * 10, {"k": i, "s": "x"}, fourcc="SENS") for i in range(4)]
    parsed = decode_file(encode_file(specs, identity=IDENTITY, sign=SIGNER.sign))
    assert [b.fourcc for b in parsed.blocks] == ["SENS"] * 4
    assert [b.data for b in parsed.blocks] == [s.data for s in specs]
    assert [b.metadata for b in parsed.blocks] == [s.metadata for s in specs]
    assert [b.header.block_id for b in parsed.blocks] == [s.block_id for s in specs]
    assert parsed.security["public_key"] == SIGNER.public_key.hex()


def test_every_single_byte_change_is_detected() -> None:
    data = _file(3)
    for position in range(len(data)):
        for delta in (0x01, 0x80):
            tampered = bytearray(data)
            tampered[position] ^= delta
            assert not verify_file(bytes(tampered)).ok, f"change at offset {position} went unnoticed"


def test_tampered_block_is_named() -> None:
    data = bytearray(_file(4))
    parsed = decode_file(bytes(data))
    target = parsed.blocks[2]
    data[target.offset + BLOCK_HEADER_SIZE] ^= 0xFF  # first payload byte of block 2
    report = verify_file(bytes(data))
    assert not report.ok
    assert report.first_bad == 2
    assert report.block_id == target.header.block_id.hex()


@pytest.mark.parametrize(
    ("mutate", "offset"),
    [
        (lambda d: b"XAIF" + d[4:], 0),
        (lambda d: d[:100], 100),
        (lambda d: d[:4] + b"\x00\x09" + d[6:], 4),
        (lambda d: d[:-48] + b"FIAX" + d[-44:], None),
    ],
)
def test_malformed_files_raise_a_typed_error_with_offset(mutate, offset) -> None:  # type: ignore[no-untyped-def]
    data = _file(2)
    bad = mutate(data)
    with pytest.raises(MaifFormatError) as info:
        decode_file(bad)
    expected = len(bad) - 48 if offset is None else offset
    assert info.value.offset == expected
    assert str(expected) in str(info.value)


def test_oversized_block_length_is_rejected_without_allocation() -> None:
    data = bytearray(_file(1))
    struct.pack_into(">I", data, FILE_HEADER_SIZE, 0xFFFFFFF0)
    with pytest.raises(MaifFormatError) as info:
        decode_file(bytes(data))
    assert info.value.offset == FILE_HEADER_SIZE


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.binary(max_size=300),
            st.none() | st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=3),
            st.sampled_from(["TEXT", "EMBD", "BINA", "META", "LIFE", "SENS", "AUDT"]),
        ),
        max_size=5,
    )
)
def test_round_trip_property(blocks: list[tuple[bytes, dict[str, object] | None, str]]) -> None:
    specs = [_spec(i, data, meta, fourcc) for i, (data, meta, fourcc) in enumerate(blocks)]
    data = encode_file(specs, identity=IDENTITY, sign=SIGNER.sign)
    assert verify_file(data).ok
    parsed = decode_file(data)
    assert [(b.data, b.metadata or None, b.fourcc) for b in parsed.blocks] == [
        (d, m or None, f) for d, m, f in blocks
    ]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_only_raise_the_codec_error(data: bytes) -> None:
    try:  # noqa: SIM105 - the bare try shows the property under test
        decode_file(data)
    except MaifFormatError:
        pass
    assert verify_file(data).ok is False or len(data) >= FILE_HEADER_SIZE + FOOTER_SIZE


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=10_000), st.binary(min_size=1, max_size=8))
def test_mutated_valid_files_only_raise_the_codec_error(position: int, junk: bytes) -> None:
    data = bytearray(_file(2))
    position %= len(data)
    data[position : position + len(junk)] = junk
    try:  # noqa: SIM105 - the bare try shows the property under test
        decode_file(bytes(data))
    except MaifFormatError:
        pass
    verify_file(bytes(data))


def test_header_offsets_in_errors_point_at_the_field() -> None:
    data = bytearray(_file(1))
    struct.pack_into(">Q", data, 128, 999_999)  # provenance_offset
    with pytest.raises(MaifFormatError) as info:
        decode_file(bytes(data))
    assert info.value.offset == 128


def _json_verdict(judge: Callable[[str], object], text: str) -> tuple[str, object]:
    try:
        return "value", judge(text)
    except json.JSONDecodeError as exc:
        return "error", (exc.msg, exc.pos)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(_JSON_VALUES, max_size=4) | _JSON_VALUES,
    st.sampled_from([(", ", ": "), (",", ":"), (" ,\n", " :\t")]),
    st.lists(st.tuples(st.integers(min_value=0), st.sampled_from(list('[]{},:" \t\nx0')), st.booleans()),
             max_size=3),
)
def test_the_streamed_provenance_check_judges_lists_as_json_loads_does(
    value: object, separators: tuple[str, str], edits: list[tuple[int, str, bool]]
) -> None:
    """The provenance section is checked entry by entry (``scan_file`` keeps no provenance); it must
    accept, refuse and place its refusals exactly as ``json.loads`` on the whole text would."""
    text = list(json.dumps(value, separators=separators))
    for at, char, insert in edits:  # damage the text: a character put in, or one replaced
        if insert:
            text.insert(at % (len(text) + 1), char)
        else:
            text[at % len(text)] = char
    joined = "".join(text)
    assert _json_verdict(_is_json_list, joined) == _json_verdict(lambda t: isinstance(json.loads(t), list), joined)


def test_scan_keeps_no_blocks_and_finds_what_decode_finds() -> None:
    data = _file(4)
    scanned = scan_file(data)
    assert [b.data for b in scanned.blocks()] == [b.data for b in decode_file(data).blocks]
    bad = bytearray(data)
    struct.pack_into(">Q", bad, 128, 999_999)  # provenance_offset
    with pytest.raises(MaifFormatError) as info:
        scan_file(bytes(bad))
    assert info.value.offset == 128
