"""MAIF export and import policy: what the reference reader can take, and what our log can hold."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from daemon.store import BlockInput, Ed25519Signer, Store, export, import_file, maif_io, verify
from daemon.store.blocklog import FILE_TYPE_KEY, FLAG_ENCRYPTED
from daemon.store.errors import InvalidInputError, MaifFormatError
from daemon.store.maif_file import (
    BLOCK_HEADER_SIZE,
    FILE_HEADER_SIZE,
    REFERENCE_TYPE_NAMES,
    BlockSpec,
    FileIdentity,
    MaifWriter,
    decode_file,
    encode_file,
)
from tests.store.test_maif_file import _file as sample_file
from tests.store.test_maif_file import as_version_2_1

BLOCKS = [
    ("LIFE", b"boot", {"stage": "ready"}), ("SENS", b"\x01\x02", None), ("TEXT", b"note", {"lang": "en"}),
    ("OUTB", b"{}", {"record_id": "r1"}), ("BINA", b"\xff", None), ("AUDT", b"x", {}),
]


def _identity(signer: Ed25519Signer) -> FileIdentity:
    return FileIdentity(
        agent_id="other", agent_did="did:maif:other", file_id=uuid.uuid4().bytes, creator_id=uuid.uuid4().bytes,
        created_us=1_700_000_000_000_000, modified_us=1_700_000_000_000_001, algorithm=signer.algorithm,
        public_key=signer.public_key,
    )


def _one_block_file(signer: Ed25519Signer, *, metadata: dict[str, object] | None = None, flags: int = 0,
                    fourcc: str = "TEXT") -> bytes:
    spec = BlockSpec(fourcc, flags, 1_700_000_000_000_000, uuid.uuid4().bytes, b"payload", metadata, {})
    return encode_file([spec], identity=_identity(signer), sign=signer.sign)


async def test_types_the_reference_does_not_know_travel_as_bina_and_come_back(
    store: Store, tmp_path: Path
) -> None:
    await store.append_blocks([BlockInput(f, p, m, encrypt=False) for f, p, m in BLOCKS])
    out = tmp_path / "log.maif"
    await export(store, out)
    parsed = decode_file(out.read_bytes())
    in_file = [(b.fourcc, b.metadata) for b in parsed.blocks]
    assert in_file == [
        ("BINA", {"stage": "ready", FILE_TYPE_KEY: "LIFE"}), ("BINA", {FILE_TYPE_KEY: "SENS"}),
        ("TEXT", {"lang": "en"}), ("BINA", {"record_id": "r1", FILE_TYPE_KEY: "OUTB"}), ("BINA", {}),
        ("BINA", {FILE_TYPE_KEY: "AUDT"}),
    ]
    assert all(b.fourcc in REFERENCE_TYPE_NAMES for b in parsed.blocks)
    actions = [e["action"] for e in parsed.provenance]
    assert actions == ["genesis", *(["add_binary_block"] * 2), "add_text_block", *(["add_binary_block"] * 3),
                       "finalize"]
    async with Store(tmp_path / "other.db", signer=Ed25519Signer.generate(), embedding_dim=4, ttl_sweep_s=0) as other:
        assert (await import_file(other, out)).imported == len(BLOCKS)
        mine = await store.blocks.list_blocks()
        theirs = await other.blocks.list_blocks()
        assert [(b.block_id, b.fourcc, b.metadata, b.content_hash) for b in theirs] == [
            (b.block_id, b.fourcc, b.metadata, b.content_hash) for b in mine
        ]
        again = tmp_path / "again.maif"
        await export(other, again)
    assert (await verify(again)).ok
    assert [(b.fourcc, b.metadata) for b in decode_file(again.read_bytes()).blocks] == in_file


async def test_the_file_type_key_is_reserved_on_append(store: Store) -> None:
    with pytest.raises(InvalidInputError, match="reserved"):
        await store.append_block("BINA", b"x", metadata={FILE_TYPE_KEY: "SENS"})
    with pytest.raises(InvalidInputError, match="reserved"):
        await store.append_blocks([BlockInput("BINA", b"x", {FILE_TYPE_KEY: "SENS"})])
    assert await store.blocks.count() == 0


@pytest.mark.parametrize("carried", ["TEXT", 7, "bad!"])
async def test_a_carried_type_must_be_one_of_ours(store: Store, tmp_path: Path, carried: object) -> None:
    path = tmp_path / "f.maif"
    path.write_bytes(_one_block_file(Ed25519Signer.generate(), metadata={FILE_TYPE_KEY: carried}, fourcc="BINA"))
    with pytest.raises(MaifFormatError) as info:
        await import_file(store, path)
    assert info.value.offset >= FILE_HEADER_SIZE
    assert await store.blocks.count() == 0


async def test_metadata_the_log_cannot_hold_is_a_format_error_at_its_offset(store: Store, tmp_path: Path) -> None:
    # The reference writes NaN (json.dumps allows it) and its reader verifies the file; our log refuses it.
    path = tmp_path / "nan.maif"
    path.write_bytes(_one_block_file(Ed25519Signer.generate(), metadata={"reading": float("nan")}))
    assert (await verify(path)).ok
    with pytest.raises(MaifFormatError) as info:
        await import_file(store, path)
    assert info.value.offset == FILE_HEADER_SIZE + BLOCK_HEADER_SIZE + len(b"payload")
    assert await store.blocks.count() == 0


async def test_encrypted_blocks_are_taken_only_from_a_signer_of_this_node(
    store: Store, tmp_path: Path, signer: Ed25519Signer
) -> None:
    foreign = tmp_path / "foreign.maif"
    foreign.write_bytes(_one_block_file(Ed25519Signer.generate(), flags=FLAG_ENCRYPTED))
    with pytest.raises(MaifFormatError, match="encrypted") as info:
        await import_file(store, foreign)
    assert info.value.offset == FILE_HEADER_SIZE + 8
    own = tmp_path / "own.maif"
    own.write_bytes(_one_block_file(signer, flags=FLAG_ENCRYPTED))
    assert (await import_file(store, own)).imported == 1
    assert (await store.blocks.list_blocks())[0].encrypted


async def test_a_version_2_1_file_from_another_writer_imports(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "v21.maif"
    path.write_bytes(as_version_2_1(sample_file(3)))
    result = await import_file(store, path)
    assert (result.blocks_in_file, result.imported) == (3, 3)
    assert (await store.verify_blocks()).ok


async def test_an_export_written_page_by_page_holds_every_block_once_in_order(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maif_io, "EXPORT_PAGE", 4)
    await store.append_blocks([BlockInput(f, p + bytes([i]), m, encrypt=False) for i, (f, p, m) in
                               enumerate(BLOCKS * 3)])  # 18 blocks: four full pages and a part
    out = tmp_path / "paged.maif"
    result = await export(store, out)
    parsed = decode_file(out.read_bytes())
    mine = await store.blocks.list_blocks()
    assert result.blocks == len(parsed.blocks) == len(mine) == 18
    assert result.bytes == out.stat().st_size
    assert [(b.header.block_id, b.data) for b in parsed.blocks] == [(b.block_id, b.payload) for b in mine]
    assert [e["metadata"].get("seq") for e in parsed.provenance[1:-1]] == list(range(1, 19))
    assert (await verify(out)).ok
    assert sorted(p.name for p in await asyncio.to_thread(tmp_path.iterdir) if "maif" in p.name) == ["paged.maif"]


async def test_an_export_that_fails_midway_leaves_neither_the_file_nor_its_temporary(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maif_io, "EXPORT_PAGE", 2)
    await store.append_blocks([BlockInput("TEXT", bytes([i]), None, encrypt=False) for i in range(6)])
    calls = 0
    real_add = MaifWriter.add

    def failing_add(self: MaifWriter, spec: BlockSpec) -> None:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise OSError(28, "No space left on device")
        real_add(self, spec)

    monkeypatch.setattr(MaifWriter, "add", failing_add)
    (tmp_path / "exports").mkdir()
    out = tmp_path / "exports" / "full.maif"
    with pytest.raises(OSError, match="No space"):
        await export(store, out)
    assert calls == 4
    assert list((tmp_path / "exports").iterdir()) == []


def _file_of(signer: Ed25519Signer, blocks: list[tuple[bytes, bytes, dict[str, object] | None]]) -> bytes:
    specs = [BlockSpec("TEXT", 0, 1_700_000_000_000_000 + i, block_id, data, meta, {})
             for i, (block_id, data, meta) in enumerate(blocks)]
    return encode_file(specs, identity=_identity(signer), sign=signer.sign)


async def test_an_import_appends_page_by_page_and_a_second_run_adds_nothing(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maif_io, "IMPORT_PAGE", 3)
    blocks: list[tuple[bytes, bytes, dict[str, object] | None]] = [
        (uuid.uuid4().bytes, f"reading {i}".encode(), {"i": i}) for i in range(10)
    ]
    path = tmp_path / "paged.maif"
    path.write_bytes(_file_of(Ed25519Signer.generate(), blocks))
    first = await import_file(store, path)
    again = await import_file(store, path)
    assert (first.blocks_in_file, first.imported, first.skipped_existing) == (10, 10, 0)
    assert (again.blocks_in_file, again.imported, again.skipped_existing) == (10, 0, 10)
    stored = await store.blocks.list_blocks()
    assert [(b.block_id, b.payload, b.metadata_dict) for b in stored] == blocks
    assert (await store.verify_blocks()).ok


@pytest.mark.parametrize("fault", ["repeated id", "NaN in the last page"])
async def test_a_refused_block_anywhere_in_the_file_leaves_the_log_untouched(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    monkeypatch.setattr(maif_io, "IMPORT_PAGE", 2)
    blocks: list[tuple[bytes, bytes, dict[str, object] | None]] = [
        (uuid.uuid4().bytes, bytes([i]), None) for i in range(7)
    ]
    if fault == "repeated id":
        blocks[6] = (blocks[1][0], b"another payload", None)
    else:
        blocks[6] = (blocks[6][0], b"x", {"reading": float("nan")})
    data = _file_of(Ed25519Signer.generate(), blocks)
    offset = decode_file(data).blocks[6].offset
    path = tmp_path / "refused.maif"
    path.write_bytes(data)
    with pytest.raises(MaifFormatError) as info:
        await import_file(store, path)
    assert offset <= info.value.offset < offset + BLOCK_HEADER_SIZE + 64
    assert await store.blocks.count() == 0
