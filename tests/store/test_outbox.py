"""Outbox API used by the uplink: order, peek bounds, ack, stats, drops, and atomic enqueueing."""

from __future__ import annotations

import json

import pytest

from daemon.store import Store
from daemon.store.blocklog import BlockInput
from daemon.store.errors import InvalidInputError
from daemon.store.outbox import OutboxRecord, OutboxStats, block_record_size
from drivers.model import Quantity, Reading


async def test_append_peek_ack_in_order(store: Store) -> None:
    await store.outbox_append("events", [(f"r{i}", bytes([i]) * 10) for i in range(5)])
    peeked = await store.outbox_peek("events", limit=3, max_bytes=10_000)
    assert [r.record_id for r in peeked] == ["r0", "r1", "r2"]
    assert all(isinstance(r, OutboxRecord) and r.stream == "events" for r in peeked)
    assert peeked[0].seq < peeked[1].seq < peeked[2].seq
    assert await store.outbox_ack("events", peeked[1].seq) == 2
    rest = await store.outbox_peek("events", limit=10, max_bytes=10_000)
    assert [r.record_id for r in rest] == ["r2", "r3", "r4"]
    with pytest.raises(AttributeError):
        rest[0].seq = 1  # type: ignore[misc]


async def test_peek_respects_max_bytes_but_always_returns_the_first(store: Store) -> None:
    await store.outbox_append("events", [("big", b"x" * 500), ("small", b"y")])
    assert [r.record_id for r in await store.outbox_peek("events", limit=10, max_bytes=100)] == ["big"]
    assert len(await store.outbox_peek("events", limit=10, max_bytes=501)) == 2


async def test_sequence_numbers_are_never_reused_after_ack(store: Store) -> None:
    await store.outbox_append("events", [("a", b"1")])
    first = (await store.outbox_peek("events", limit=1, max_bytes=100))[0]
    await store.outbox_ack("events", first.seq)
    await store.outbox_append("events", [("b", b"2")])
    second = (await store.outbox_peek("events", limit=1, max_bytes=100))[0]
    assert second.seq > first.seq


async def test_stats_and_drops(store: Store) -> None:
    clock = [1000.0]
    store.outbox._clock = lambda: clock[0]
    await store.outbox_append("telemetry", [("t1", b"aa")])
    clock[0] = 2000.0
    await store.outbox_append("telemetry", [("t2", b"bbb"), ("t3", b"c")])
    stats = await store.outbox_stats()
    assert stats["telemetry"] == OutboxStats(3, 6, 1000.0)
    assert stats["audit"] == OutboxStats(0, 0, None)
    assert await store.outbox_drop_before("telemetry", created_before=1500.0) == 1
    assert await store.outbox_drop_oldest("telemetry", count=1) == 1
    assert [r.record_id for r in await store.outbox_peek("telemetry", limit=9, max_bytes=99)] == ["t3"]


async def test_unknown_stream_is_a_typed_error(store: Store) -> None:
    with pytest.raises(InvalidInputError):
        await store.outbox_append("nope", [("a", b"")])


async def test_block_audit_and_reading_writes_enqueue_their_records(store: Store) -> None:
    info = await store.append_block("TEXT", b"hello", metadata={"a": 1})
    await store.audit_append("trust_change", "node", "agent-7", {"from": 1, "to": 3})
    reading = Reading("mb-1", "bme688", {"temperature": Quantity(21.5, "degC")}, 1700000000.0, 42)
    await store.store_readings([reading, reading])
    stats = await store.outbox_stats()
    assert (stats["maif"].count, stats["audit"].count, stats["telemetry"].count) == (1, 1, 2)
    block_rec = (await store.outbox_peek("maif", limit=1, max_bytes=10**6))[0]
    body = json.loads(block_rec.payload)
    assert body["block_id"] == info.block_id.hex() and body["chain_hash"] == info.chain_hash.hex()
    assert stats["maif"].bytes == len(block_rec.payload)
    assert block_rec.seq == info.seq and block_rec.record_id == info.block_id.hex()
    tel = json.loads((await store.outbox_peek("telemetry", limit=1, max_bytes=10**6))[0].payload)
    assert tel["quantities"]["temperature"] == {"value": 21.5, "unit": "degC"} and tel["seq"] == 42
    assert await store.readings_count() == 2


def test_block_record_size_is_exact() -> None:
    from daemon.store.outbox import block_record_payload

    for payload_len in (0, 1, 2, 3, 1024):
        payload = block_record_payload(12345, b"\x01" * 16, "TEXT", 4, 1700000000123456, b'{"a": 1}',
                                       b"z" * payload_len, b"\x03" * 32, b"\x04" * 32)
        assert len(payload) == block_record_size(12345, 4, 1700000000123456, 8, payload_len)


async def test_maif_stream_is_the_block_log_after_a_cursor(store: Store) -> None:
    infos = await store.append_blocks([BlockInput("TEXT", bytes([i]), ts_us=1_000_000 * (i + 1)) for i in range(6)])
    peeked = await store.outbox_peek("maif", limit=10, max_bytes=10**6)
    assert [r.seq for r in peeked] == [i.seq for i in infos]
    assert await store.outbox_ack("maif", infos[1].seq) == 2
    assert await store.outbox_ack("maif", infos[0].seq) == 0  # never moves back
    assert await store.outbox_drop_oldest("maif", count=1) == 1
    assert await store.outbox_drop_before("maif", created_before=5.0) == 1
    stats = await store.outbox_stats()
    assert stats["maif"].count == 2 and stats["maif"].oldest_created == 5.0
    rest = await store.outbox_peek("maif", limit=10, max_bytes=10**6)
    assert [r.seq for r in rest] == [infos[4].seq, infos[5].seq]
    assert stats["maif"].bytes == sum(len(r.payload) for r in rest)
    assert await store.blocks.count() == 6  # acknowledging never deletes blocks
    assert (await store.verify_blocks()).ok


async def test_records_appended_to_the_maif_stream_become_chained_blocks(store: Store) -> None:
    info = await store.append_block("TEXT", b"a block")
    await store.outbox_append("maif", [("rec-1", b"raw one"), ("rec-2", b"raw two")])
    peeked = await store.outbox_peek("maif", limit=10, max_bytes=10**6)
    assert [r.record_id for r in peeked] == [info.block_id.hex(), "rec-1", "rec-2"]
    assert [r.payload for r in peeked[1:]] == [b"raw one", b"raw two"]
    assert (await store.outbox_stats())["maif"].bytes == sum(len(r.payload) for r in peeked)
    assert [b.fourcc for b in await store.blocks.list_blocks()] == ["TEXT", "OUTB", "OUTB"]
    assert (await store.verify_blocks()).ok
