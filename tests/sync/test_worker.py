"""The SyncWorker against the reference upstream (in-process, real sockets) and the real Store."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from daemon.store import Store
from daemon.store.blocklog import BlockInput
from daemon.sync import Outbox, SyncWorker
from daemon.sync.errors import SyncSettingsError
from daemon.upstream import Faults, UpstreamServer
from daemon.upstream.server import server_tls
from tests.sync.certs import make_tls
from tests.sync.conftest import FakeClock

PLAIN = ("telemetry", "audit", "memory", "events")


async def _fill(store: Store, n: int, start: int = 0) -> None:
    for stream in PLAIN:
        await store.outbox_append(stream, [(f"{stream}-{i:05d}", json.dumps({"i": i}).encode())
                                           for i in range(start, start + n)])


async def _pending(store: Store) -> int:
    return sum(s.count for s in (await store.outbox_stats()).values())


async def test_a_pass_drains_every_stream_in_order_gzip_compressed(store: Store, upstream: UpstreamServer) -> None:
    await _fill(store, 250)
    blocks = await store.append_blocks([BlockInput("TEXT", f"b{i}".encode()) for i in range(30)])
    async with SyncWorker(store, url=upstream.url, periodic=False, batch_max_records=40) as worker:
        result = await worker.run_once()
    assert result.ok, result.errors
    assert result.sent == {"telemetry": 250, "maif": 30, "audit": 250, "memory": 250, "events": 250}
    for stream in PLAIN:
        assert await upstream.state.db.ids(stream) == [f"{stream}-{i:05d}" for i in range(250)]
    assert await upstream.state.db.ids("maif") == [b.block_id.hex() for b in blocks]
    counters = upstream.state.counters
    assert counters["batches"] == counters["compressed_batches"] == 4 * 7 + 1
    assert await _pending(store) == 0


async def test_batches_are_bounded_by_bytes_too(store: Store, upstream: UpstreamServer) -> None:
    await store.outbox_append("events", [(f"e{i}", json.dumps({"pad": "x" * 1000}).encode()) for i in range(20)])
    async with SyncWorker(store, url=upstream.url, periodic=False, batch_max_bytes=5000) as worker:
        assert (await worker.run_once()).ok
        assert worker.status().streams["events"].batches == 5  # 4 records of ~1 KB per 5 KB batch


async def test_records_stay_queued_until_a_2xx_and_retries_are_deduplicated(
    store: Store, upstream: UpstreamServer
) -> None:
    await _fill(store, 30)
    async with SyncWorker(store, url=upstream.url, periodic=False) as worker:
        upstream.state.faults = Faults(error_rate=1.0)
        assert not (await worker.run_once()).ok
        assert await _pending(store) == 120 and await upstream.state.db.counts() == {}

        upstream.state.faults = Faults(after_commit_rate=1.0)  # stored upstream, but the node hears 500
        result = await worker.run_once()
        assert set(result.errors) == set(PLAIN)
        assert await _pending(store) == 120
        assert await upstream.state.db.counts() == dict.fromkeys(PLAIN, 30)

        upstream.state.faults = Faults()
        assert (await worker.run_once()).ok
        status = worker.status()
    assert await _pending(store) == 0
    assert await upstream.state.db.counts() == dict.fromkeys(PLAIN, 30)
    # The retry was answered from the idempotency cache: the same batch, the same key.
    assert upstream.state.counters["replayed"] == 4
    assert status.consecutive_failures == 0 and status.last_success is not None


async def test_connection_resets_before_and_after_commit_lose_and_duplicate_nothing(
    store: Store, upstream: UpstreamServer
) -> None:
    await _fill(store, 200)
    upstream.state.faults = Faults(reset_rate=0.6)
    async with SyncWorker(store, url=upstream.url, periodic=False, batch_max_records=20) as worker:
        for _ in range(200):
            if (await worker.run_once()).ok:
                break
    for stream in PLAIN:
        assert await upstream.state.db.ids(stream) == [f"{stream}-{i:05d}" for i in range(200)]
    assert upstream.state.counters["fault_reset"] > 0 and upstream.state.counters["fault_reset_after_commit"] > 0


async def test_retry_after_is_honoured_even_by_an_on_demand_run(store: Store, upstream: UpstreamServer) -> None:
    clock = FakeClock(time.time())
    await _fill(store, 5)
    upstream.state.faults = Faults(throttle_rate=1.0, retry_after_s=7)
    async with SyncWorker(store, url=upstream.url, interval_s=3600, clock=clock, backoff_initial_s=0.01) as worker:
        await worker.wait_run(1)  # the pass made on entry
        status = worker.status()
        assert status.retry_after_until == clock.now + 7
        assert status.next_run_at is not None and status.next_run_at >= clock.now + 7
        seen = upstream.state.counters["fault_throttle"]
        worker.request_run()
        await asyncio.sleep(0.5)  # the loop holds for the 7 s the server asked for
        assert upstream.state.counters["fault_throttle"] == seen
        assert worker.status().runs_completed == 1


@pytest.mark.parametrize(("rand", "expected"), [(1.0, [1, 2, 4, 8, 8]), (0.0, [0.5, 1, 2, 4, 4])])
async def test_backoff_is_exponential_capped_and_jittered(
    store: Store, upstream: UpstreamServer, rand: float, expected: list[float]
) -> None:
    clock = FakeClock(time.time())
    await _fill(store, 1)
    upstream.state.faults = Faults(error_rate=1.0)
    delays = []
    async with SyncWorker(store, url=upstream.url, clock=clock, rand=lambda: rand, backoff_initial_s=1,
                          backoff_max_s=8, streams=("events",), periodic=False) as worker:
        for _ in expected:
            await worker.run_once()
            status = worker.status()
            assert status.next_run_at is not None
            delays.append(status.next_run_at - clock.now)
    assert delays == expected


async def test_bearer_token_is_sent_and_a_wrong_one_is_rejected(store: Store, tmp_path: Path) -> None:
    await _fill(store, 3)
    async with UpstreamServer(tmp_path / "up.db", token="s3cret") as up:
        async with SyncWorker(store, url=up.url, token="wrong", periodic=False) as worker:
            result = await worker.run_once()
            assert "401" in result.errors["events"]
            assert await _pending(store) == 12
        async with SyncWorker(store, url=up.url, token="s3cret", periodic=False) as worker:
            assert (await worker.run_once()).ok
        assert sum((await up.state.db.counts()).values()) == 12


async def test_mutual_tls_client_certificate(store: Store, tmp_path: Path) -> None:
    tls = await asyncio.to_thread(make_tls, tmp_path)
    ctx = server_tls(tls.server_cert, tls.server_key, tls.ca)
    await _fill(store, 3)
    async with UpstreamServer(tmp_path / "up.db", ssl_context=ctx) as up:
        assert up.url.startswith("https://127.0.0.1:")
        async with SyncWorker(store, url=up.url, ca_file=tls.ca, periodic=False) as worker:
            result = await worker.run_once()  # no client certificate: the handshake fails
            assert not result.ok and await _pending(store) == 12
        async with SyncWorker(store, url=up.url, ca_file=tls.ca, client_cert=tls.client_cert,
                              client_key=tls.client_key, periodic=False) as worker:
            assert (await worker.run_once()).ok
        assert sum((await up.state.db.counts()).values()) == 12


async def test_request_run_wakes_the_periodic_loop(store: Store, upstream: UpstreamServer) -> None:
    async with SyncWorker(store, url=upstream.url, interval_s=3600) as worker:
        await worker.wait_run(1)
        await _fill(store, 7)
        await asyncio.wait_for(worker.wait_run(worker.request_run()), timeout=10)
        assert worker.status().state == "idle"
    assert await _pending(store) == 0
    assert sum((await upstream.state.db.counts()).values()) == 28


async def test_a_payload_that_is_not_json_travels_as_base64_and_does_not_block_the_stream(
    store: Store, upstream: UpstreamServer
) -> None:
    await store.outbox_append("events", [("ok-1", b'{"a":1}'), ("bad", b"\xff{not json"), ("ok-2", b"[2]")])
    async with SyncWorker(store, url=upstream.url, periodic=False) as worker:
        assert (await worker.run_once()).ok
    records = await upstream.state.db.records("events", after=0, limit=10)
    assert [r["id"] for r in records] == ["ok-1", "bad", "ok-2"]
    assert base64.b64decode(records[1]["payload_b64"]) == b"\xff{not json"
    assert records[2]["payload"] == [2]


async def test_metrics_show_fill_lag_drops_and_last_success(store: Store, upstream: UpstreamServer) -> None:
    registry = CollectorRegistry()
    await _fill(store, 4)
    async with SyncWorker(store, url=upstream.url, interval_s=3600, registry=registry) as worker:
        await worker.refresh_stats()
        before = generate_latest(registry).decode()
        await worker.wait_run(1)
        await worker.refresh_stats()
        after = generate_latest(registry).decode()
    assert 'mycoedge_sync_spool_records{stream="events"} 4.0' in before
    assert 'mycoedge_sync_spool_records{stream="events"} 0.0' in after
    assert 'mycoedge_sync_sent_records_total{stream="events"} 4.0' in after
    assert "mycoedge_sync_lag_seconds" in after and "mycoedge_sync_spool_fill_ratio" in after
    assert "mycoedge_sync_last_success_timestamp_seconds 0.0" not in after
    assert list(registry.collect()) == []  # unregistered on exit


def test_invalid_settings_name_the_setting(store: Store) -> None:
    with pytest.raises(SyncSettingsError, match=r"sync\.url"):
        SyncWorker(store, url="ftp://x")
    with pytest.raises(SyncSettingsError, match="interval_s"):
        SyncWorker(store, url="http://127.0.0.1:1", interval_s=0)


async def test_on_demand_only_worker_runs_a_pass_when_asked(store: Store, upstream: UpstreamServer) -> None:
    await _fill(store, 3)
    async with SyncWorker(store, url=upstream.url, periodic=False) as worker:
        await asyncio.sleep(0.1)
        assert worker.status().runs_started == 0  # nothing runs by itself
        await asyncio.wait_for(worker.wait_run(worker.request_run()), timeout=10)
    assert await _pending(store) == 0


async def test_a_413_halves_the_batch_until_it_fits(store: Store, tmp_path: Path) -> None:
    await store.outbox_append("events", [(f"e{i:03d}", json.dumps({"pad": "x" * 100}).encode()) for i in range(64)])
    async with UpstreamServer(tmp_path / "up.db", max_body_bytes=3000) as up, \
            SyncWorker(store, url=up.url, periodic=False, streams=("events",)) as worker:
        for _ in range(10):
            if (await worker.run_once()).ok:
                break
        assert await up.state.db.ids("events") == [f"e{i:03d}" for i in range(64)]
        assert worker.status().streams["events"].failures >= 1
    assert await _pending(store) == 0


def test_the_store_satisfies_the_outbox_protocol(store: Store) -> None:
    outbox: Outbox = store  # checked statically by mypy, and at run time below
    assert isinstance(outbox, Outbox)


async def test_the_worker_is_built_from_the_daemons_sync_config(store: Store, upstream: UpstreamServer) -> None:
    from daemon.config import SyncConfig
    from daemon.sync.wiring import worker_from_config

    assert worker_from_config(store, SyncConfig(), node_id="n1") is None  # no url: uplink off
    worker = worker_from_config(store, SyncConfig(url=upstream.url, interval_s=5.0, telemetry_max_age_s=60.0),
                                node_id="n1")
    assert worker is not None
    await store.outbox_append("events", [("e1", b"{}")])
    async with worker:
        await worker.wait_run(1)
        assert worker.status().interval_s == 5.0
    records = await upstream.state.db.records("events", after=0, limit=5)
    assert records[0]["source"] == "n1"
