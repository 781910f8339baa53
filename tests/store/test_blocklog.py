"""Block log: durable signed chain, every stored byte covered, encryption, export/import through files."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.store import Ed25519Signer, Store, export, import_file, verify
from daemon.store.blocklog import BLOCK_COLUMNS, BlockInput, _uuid7_many
from daemon.store.errors import DecryptionError, InvalidInputError, StoreError, VerificationError
from daemon.store.maif_file import decode_file


async def _fill(store: Store, n: int = 6) -> None:
    await store.append_blocks(
        [BlockInput("TEXT", f"payload {i}".encode(), {"i": i} if i % 2 else None) for i in range(n)]
    )


async def test_appended_blocks_form_a_verifiable_chain(store: Store) -> None:
    await _fill(store)
    info = await store.append_block("SENS", b"\x01\x02", metadata={"device": "mb-1"})
    assert info.seq == 7
    seen: list[tuple[int, int]] = []
    report = await store.verify_blocks(lambda done, total: seen.append((done, total)))
    assert report.ok and report.checked == 7
    assert seen[-1] == (7, 7)


async def test_each_append_is_covered_by_a_signed_checkpoint(store: Store) -> None:
    for i in range(3):
        await store.append_block("LIFE", bytes([i]))

    def count(conn: sqlite3.Connection) -> list[int]:
        return [int(r[0]) for r in conn.execute("SELECT upto_seq FROM checkpoints WHERE chain = 'maif' ORDER BY id")]

    assert await store.db.read(count) == [1, 2, 3]


async def test_every_single_byte_change_to_stored_blocks_is_detected(tmp_path: Path, signer: Ed25519Signer) -> None:
    path = tmp_path / "t.db"
    async with Store(path, signer=signer, embedding_dim=4, ttl_sweep_s=0) as store:
        await _fill(store, 3)
    conn = sqlite3.connect(path)
    rows = conn.execute(f"SELECT {BLOCK_COLUMNS} FROM blocks ORDER BY seq").fetchall()
    columns = [c.strip() for c in BLOCK_COLUMNS.split(",")]
    changes = 0
    for row in rows:
        seq, block_id = row[0], row[1]
        for col_index, column in enumerate(columns):
            value = row[col_index]
            raw = value if isinstance(value, bytes) else str(value).encode()
            key_sql, key = ("seq = ?", seq) if column == "block_id" else ("block_id = ?", block_id)
            for pos in range(len(raw)):
                mutated = bytearray(raw)
                mutated[pos] ^= 0x01
                new: object = bytes(mutated)
                if isinstance(value, int):
                    try:
                        new = int(bytes(mutated).decode())
                    except ValueError:
                        continue
                elif isinstance(value, str):
                    new = bytes(mutated).decode("latin-1")
                try:
                    conn.execute(f"UPDATE blocks SET {column} = ? WHERE {key_sql}", (new, key))
                except sqlite3.IntegrityError:
                    continue  # collides with another block's seq or id: cannot be stored at all
                conn.commit()
                async with Store(path, signer=signer, embedding_dim=4, ttl_sweep_s=0, integrity_check="off") as store:
                    report = await store.verify_blocks()
                assert not report.ok, f"change to {column} byte {pos} of block {seq} went unnoticed"
                changes += 1
                conn.execute(f"UPDATE blocks SET {column} = ? WHERE {key_sql}", (value, key))
                conn.commit()
    conn.close()
    assert changes > 300


async def test_removing_the_last_blocks_is_detected(tmp_path: Path, signer: Ed25519Signer) -> None:
    path = tmp_path / "t.db"
    async with Store(path, signer=signer, embedding_dim=4, ttl_sweep_s=0) as store:
        await _fill(store, 4)
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM blocks WHERE seq = 4")
    conn.commit()
    conn.close()
    async with Store(path, signer=signer, embedding_dim=4, ttl_sweep_s=0) as store:
        report = await store.verify_blocks()
    assert not report.ok and "removed" in (report.reason or "")


async def test_a_foreign_key_cannot_forge_checkpoints(tmp_path: Path, signer: Ed25519Signer) -> None:
    path = tmp_path / "t.db"
    async with Store(path, signer=signer, embedding_dim=4, ttl_sweep_s=0) as store:
        await _fill(store, 2)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE checkpoints SET signature = ? WHERE upto_seq = 2", (os.urandom(64),))
    conn.commit()
    conn.close()
    async with Store(path, signer=signer, embedding_dim=4, ttl_sweep_s=0) as store:
        report = await store.verify_blocks()
    assert not report.ok and report.first_bad == 2


async def test_encrypted_payloads_decrypt_only_with_the_key(tmp_path: Path, signer: Ed25519Signer) -> None:
    key = tmp_path / "aes.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, os.urandom(32))
    os.close(fd)
    async with Store(tmp_path / "e.db", signer=signer, encryption_key=key, embedding_dim=4, ttl_sweep_s=0) as store:
        info = await store.append_block("TEXT", b"secret reading")
        block = await store.blocks.get(info.block_id)
        assert block is not None and block.encrypted and b"secret" not in block.payload
        assert store.blocks.decrypt(block) == b"secret reading"
        assert (await store.verify_blocks()).ok
    async with Store(tmp_path / "e.db", signer=signer, encryption_key=os.urandom(32), embedding_dim=4,
                     ttl_sweep_s=0) as store:
        block = await store.blocks.get(info.block_id)
        assert block is not None
        with pytest.raises(DecryptionError):
            store.blocks.decrypt(block)


async def test_key_file_readable_by_others_is_refused(tmp_path: Path, signer: Ed25519Signer) -> None:
    from daemon.store.errors import KeyFileError

    key = tmp_path / "aes.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o644)
    with pytest.raises(KeyFileError):
        Store(tmp_path / "x.db", signer=signer, encryption_key=key)


async def test_bad_fourcc_is_rejected(store: Store) -> None:
    with pytest.raises(InvalidInputError):
        await store.append_block("toolong", b"x")


async def test_export_import_round_trip_keeps_blocks_and_is_idempotent(
    store: Store, tmp_path: Path, signer: Ed25519Signer
) -> None:
    await _fill(store, 5)
    out = tmp_path / "log.maif"
    result = await export(store, out)
    assert result.blocks == 5
    report = await verify(out)
    assert report.ok
    async with Store(tmp_path / "other.db", signer=Ed25519Signer.generate(), embedding_dim=4, ttl_sweep_s=0) as other:
        first = await import_file(other, out)
        again = await import_file(other, out)
        assert (first.imported, again.imported, again.skipped_existing) == (5, 0, 5)
        mine = await store.blocks.list_blocks()
        theirs = await other.blocks.list_blocks()
        assert [(b.block_id, b.fourcc, b.payload, b.metadata, b.ts_us, b.content_hash) for b in mine] == [
            (b.block_id, b.fourcc, b.payload, b.metadata, b.ts_us, b.content_hash) for b in theirs
        ]
        assert (await other.verify_blocks()).ok
        audits = await other.audit_list(kind="maif_import")
        assert len(audits) == 2


async def test_export_since_selects_recent_blocks(store: Store, tmp_path: Path) -> None:
    await store.append_blocks([BlockInput("TEXT", b"old", ts_us=1_000_000)])
    await store.append_blocks([BlockInput("TEXT", b"new", ts_us=5_000_000)])
    result = await export(store, tmp_path / "since.maif", since=2.0)
    parsed = decode_file((tmp_path / "since.maif").read_bytes())
    assert result.blocks == 1 and parsed.blocks[0].data == b"new"


async def test_import_refuses_a_tampered_file_naming_the_block(store: Store, tmp_path: Path) -> None:
    await _fill(store, 3)
    out = tmp_path / "log.maif"
    await export(store, out)
    data = bytearray(out.read_bytes())
    parsed = decode_file(bytes(data))
    data[parsed.blocks[1].offset + 372] ^= 0x20
    out.write_bytes(bytes(data))
    with pytest.raises(VerificationError) as info:
        await import_file(store, out)
    assert info.value.index == 1


async def test_concurrent_single_appends_share_a_job_and_survive_a_cancelled_caller(store: Store) -> None:
    tasks = [asyncio.create_task(store.append_block("TEXT", bytes([i]))) for i in range(50)]
    await asyncio.sleep(0)
    tasks[7].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    infos = [d for d in done if not isinstance(d, BaseException)]
    assert len(infos) == 49
    assert sorted(i.seq for i in infos) == sorted({i.seq for i in infos})
    assert (await store.verify_blocks()).ok
    assert await store.blocks.count() == 50  # the cancelled caller's block was written all the same


async def test_invalid_block_fails_only_its_caller(store: Store) -> None:
    good = asyncio.create_task(store.append_block("TEXT", b"ok"))
    with pytest.raises(InvalidInputError):
        await store.append_block("bad!", b"x")
    assert (await good).seq == 1


async def test_parallel_verification_joins_ranges_and_names_the_bad_block(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    path = tmp_path / "p.db"
    async with Store(path, signer=signer, embedding_dim=4, ttl_sweep_s=0) as store:
        for part in range(4):
            await store.append_blocks([BlockInput("BINA", bytes([part, i])) for i in range(50)])
        seen: list[tuple[int, int]] = []
        report = await store.blocks.verify(lambda d, t: seen.append((d, t)), workers=2, parallel_from=1)
        assert report.ok and report.checked == 200 and seen[-1] == (200, 200)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE blocks SET payload = x'ff' WHERE seq = 151")
    conn.commit()
    conn.close()
    async with Store(path, signer=signer, embedding_dim=4, ttl_sweep_s=0) as store:
        report = await store.blocks.verify(workers=2, parallel_from=1)
    assert not report.ok and report.first_bad == 151


async def test_parallel_verification_opens_a_store_whose_path_has_uri_characters(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    directory = tmp_path / "node ?#%41 data"
    directory.mkdir()
    async with Store(directory / "s.db", signer=signer, embedding_dim=4, ttl_sweep_s=0) as store:
        await store.append_blocks([BlockInput("BINA", bytes([i])) for i in range(40)])
        report = await store.blocks.verify(workers=3, parallel_from=1)
    assert report.ok and report.checked == 40


async def test_import_of_a_malformed_file_names_the_offset(store: Store, tmp_path: Path) -> None:
    from daemon.store.errors import MaifFormatError

    bad = tmp_path / "bad.maif"
    bad.write_bytes(b"MAIF" + b"\x00" * 600)
    with pytest.raises(MaifFormatError) as info:
        await import_file(store, bad)
    assert info.value.offset == 4  # version field: 0.0 is not a MAIF version


@given(st.integers(min_value=0, max_value=2**48 - 1), st.integers(min_value=1, max_value=300))
def test_generated_block_ids_are_distinct_version_7_uuids_of_their_millisecond(unix_ms: int, count: int) -> None:
    ids = _uuid7_many(unix_ms.to_bytes(6, "big"), count)
    assert len(ids) == count and len(set(ids)) == count
    for raw in ids:
        parsed = uuid.UUID(bytes=raw)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert int.from_bytes(raw[:6], "big") == unix_ms


TAMPERINGS = [
    ("payload in the second half", "UPDATE blocks SET payload = x'ff' WHERE seq = 151"),
    ("prev_hash at a range boundary", "UPDATE blocks SET prev_hash = zeroblob(32) WHERE seq = 101"),
    ("chain_hash of a range's last block", "UPDATE blocks SET chain_hash = zeroblob(32) WHERE seq = 100"),
    ("block at a range boundary deleted", "DELETE FROM blocks WHERE seq = 101"),
    ("lengthened FourCC", "UPDATE blocks SET fourcc = 'BINAX' WHERE seq = 7"),
    ("lengthened block id", "UPDATE blocks SET block_id = block_id || x'00' WHERE seq = 120"),
    ("checkpoint signature", "UPDATE checkpoints SET signature = zeroblob(64) WHERE chain = 'maif' AND upto_seq = 150"),
    ("checkpoint head", "UPDATE checkpoints SET head_hash = zeroblob(32) WHERE chain = 'maif' AND upto_seq = 50"),
    ("last blocks removed", "DELETE FROM blocks WHERE seq > 190"),
]


@pytest.mark.parametrize(("what", "sql"), TAMPERINGS, ids=[t[0] for t in TAMPERINGS])
async def test_worker_processes_and_the_reader_thread_name_the_same_first_bad_block(
    tmp_path: Path, signer: Ed25519Signer, what: str, sql: str
) -> None:
    path = tmp_path / "p.db"
    async with Store(path, signer=signer, embedding_dim=4, ttl_sweep_s=0) as store:
        for part in range(4):
            await store.append_blocks([BlockInput("BINA", bytes([part, i])) for i in range(50)])
    conn = sqlite3.connect(path)
    assert conn.execute(sql).rowcount >= 1
    conn.commit()
    conn.close()
    async with Store(path, signer=signer, embedding_dim=4, ttl_sweep_s=0, integrity_check="off") as store:
        single = await store.blocks.verify(workers=1)
        reports = [await store.blocks.verify(workers=n, parallel_from=1) for n in (2, 3)]
    assert not single.ok, what
    for report in reports:
        assert (report.ok, report.first_bad, report.checked) == (single.ok, single.first_bad, single.checked), what


STORAGE_CLASS_CHANGES = [
    ("block_id", "CAST(block_id AS TEXT)"), ("block_id", "x'ff' || block_id"), ("payload", "CAST(payload AS TEXT)"),
    ("payload", "'\u00e9t\u00e9'"), ("metadata", "CAST(metadata AS TEXT)"), ("prev_hash", "CAST(prev_hash AS TEXT)"),
    ("chain_hash", "CAST(chain_hash AS TEXT)"), ("fourcc", "CAST(fourcc AS BLOB)"), ("flags", "'x'"),
    ("ts_us", "ts_us + 0.5"), ("seq", "seq + 1000"),
]


@pytest.mark.parametrize(("column", "expr"), STORAGE_CLASS_CHANGES)
async def test_a_value_of_another_type_or_length_fails_its_block_without_crashing(
    tmp_path: Path, signer: Ed25519Signer, column: str, expr: str
) -> None:
    path = tmp_path / "t.db"
    async with Store(path, signer=signer, embedding_dim=4, ttl_sweep_s=0) as store:
        await store.append_blocks([BlockInput("BINA", bytes([i]) * 40) for i in range(6)])
    conn = sqlite3.connect(path)
    assert conn.execute(f"UPDATE blocks SET {column} = {expr} WHERE seq = 3").rowcount == 1
    conn.commit()
    conn.close()
    async with Store(path, signer=signer, embedding_dim=4, ttl_sweep_s=0, integrity_check="off") as store:
        reports = [await store.blocks.verify(workers=1), await store.blocks.verify(workers=2, parallel_from=1)]
    for report in reports:
        assert not report.ok and report.first_bad == 3, (column, expr, report)


def _logical_content(path: Path) -> list[object]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.text_factory = bytes
    try:
        return [
            conn.execute(f"SELECT {BLOCK_COLUMNS} FROM blocks ORDER BY seq").fetchall(),
            conn.execute(
                "SELECT chain, upto_seq, head_hash, key_id, signature FROM checkpoints ORDER BY id"
            ).fetchall(),
            conn.execute("SELECT key_id, algorithm, public_key FROM signers ORDER BY key_id").fetchall(),
        ]
    finally:
        conn.close()


async def test_every_byte_flip_in_the_block_page_of_the_file_is_detected_or_changes_nothing(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    """Storage-level tampering: flip each byte of the page that holds the blocks, in the database file
    itself. The store must refuse to open, or its verification must fail, unless the byte was unused
    (the rows read back exactly as before)."""
    original = tmp_path / "orig.db"
    async with Store(original, signer=signer, embedding_dim=4, ttl_sweep_s=0) as store:
        await store.append_blocks(
            [BlockInput(f, bytes([i]) * 300, {"i": i}) for i, f in enumerate(["TEXT", "SENS", "LIFE"])]
        )
    conn = sqlite3.connect(original)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'blocks'").fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    image = original.read_bytes()
    expected = _logical_content(original)
    path = tmp_path / "t.db"
    detected = unused = 0
    for offset in range((root - 1) * page_size, root * page_size):
        for suffix in ("-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        mutated = bytearray(image)
        mutated[offset] ^= 0x01
        path.write_bytes(mutated)
        try:
            async with Store(path, signer=signer, embedding_dim=4, ttl_sweep_s=0, integrity_check="quick") as store:
                ok = (await store.verify_blocks()).ok
        except StoreError:
            ok = False
        if not ok:
            detected += 1
            continue
        assert _logical_content(path) == expected, f"byte {offset} of the file changed a block unnoticed"
        unused += 1
    assert detected > 1000 and detected + unused == page_size


@pytest.mark.parametrize("workers", [1, 2])
async def test_appends_during_verification_do_not_fail_it(store: Store, workers: int) -> None:
    await store.append_blocks([BlockInput("BINA", bytes([i % 256]) * 64) for i in range(3000)])
    stop = asyncio.Event()

    async def keep_appending() -> int:
        n = 0
        while not stop.is_set():
            await store.append_block("SENS", b"live reading")
            n += 1
        return n

    writer = asyncio.create_task(keep_appending())
    try:
        reports = [await store.blocks.verify(batch=500, workers=workers, parallel_from=1) for _ in range(3)]
    finally:
        stop.set()
        appended = await writer
    assert appended > 0
    assert all(r.ok for r in reports), reports
    assert (await store.verify_blocks()).ok


async def test_parallel_verification_of_an_unreadable_file_is_a_store_error(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    path = tmp_path / "moved.db"
    async with Store(path, signer=signer, embedding_dim=4, ttl_sweep_s=0) as store:
        await store.append_blocks([BlockInput("BINA", bytes([i])) for i in range(40)])
        # The open connections keep working; whatever opens the file by name finds nothing there.
        path.rename(tmp_path / "elsewhere.db")
        with pytest.raises(StoreError):
            await store.blocks.verify(workers=2, parallel_from=1)
        (tmp_path / "elsewhere.db").rename(path)
