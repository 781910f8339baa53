"""The retention policy: pure planning checked by properties, and a simulated day offline on the real Store."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from daemon.store import Store
from daemon.store.blocklog import BlockInput
from daemon.sync import SpoolPolicy, SyncWorker
from daemon.sync.spool import DropReason, Retention, StreamPolicy, plan
from daemon.upstream import UpstreamServer
from tests.sync.conftest import FakeClock


@dataclass(frozen=True)
class _Stats:
    count: int
    bytes: int
    oldest_created: float | None


def _stats(queues: dict[str, list[tuple[float, int]]]) -> dict[str, _Stats]:
    return {
        name: _Stats(len(q), sum(size for _, size in q), q[0][0] if q else None) for name, q in queues.items()
    }


def _apply(policy: SpoolPolicy, queues: dict[str, list[tuple[float, int]]], now: float) -> list[str]:
    """Run the planner to a fixed point on in-memory queues of (created, size), as ``enforce`` does."""
    touched: list[str] = []
    for _ in range(32):
        drops = plan(policy, _stats(queues), now)
        if not drops:
            break
        for d in drops:
            touched.append(d.stream)
            q = queues[d.stream]
            if d.created_before is not None:
                queues[d.stream] = [r for r in q if r[0] >= d.created_before]
            else:
                del q[: d.count]
    return touched


queue = st.lists(st.tuples(st.floats(0, 1000), st.integers(1, 2000)), max_size=120).map(sorted)


@settings(max_examples=300, deadline=None)
@given(streams=st.fixed_dictionaries({"telemetry": queue, "events": queue, "maif": queue, "audit": queue}),
       cap=st.integers(1000, 200_000), now=st.floats(0, 2000))
def test_plan_never_touches_kept_streams_and_brings_the_spool_under_its_cap(
    streams: dict[str, list[tuple[float, int]]], cap: int, now: float,
) -> None:
    telemetry, events, maif, audit = streams["telemetry"], streams["events"], streams["maif"], streams["audit"]
    policy = SpoolPolicy(max_bytes=cap, streams={
        "telemetry": StreamPolicy(Retention.SHED, max_age_s=500.0, shed_rank=0),
        "events": StreamPolicy(Retention.SHED, max_age_s=900.0, shed_rank=1),
        "maif": StreamPolicy(Retention.KEEP),
        "audit": StreamPolicy(Retention.KEEP),
    })
    queues = {"telemetry": list(telemetry), "events": list(events), "maif": list(maif), "audit": list(audit)}
    kept_before = (list(maif), list(audit))
    touched = _apply(policy, queues, now)
    assert (queues["maif"], queues["audit"]) == kept_before
    assert set(touched) <= {"telemetry", "events"}
    total = sum(size for q in queues.values() for _, size in q)
    sheddable_left = len(queues["telemetry"]) + len(queues["events"])
    assert total <= policy.high_water * cap or sheddable_left == 0
    # Age limits hold, and drops are prefixes: what is left is the newest of each stream.
    assert all(c >= now - 500.0 for c, _ in queues["telemetry"])
    assert queues["telemetry"] == telemetry[len(telemetry) - len(queues["telemetry"]):]
    # Events shed only once telemetry is gone (or events are over their own age).
    if len(queues["events"]) < len([r for r in events if r[0] >= now - 900.0]):
        assert queues["telemetry"] == []


def test_unknown_streams_are_kept_and_bad_settings_are_refused() -> None:
    assert SpoolPolicy().policy_for("something_new").retention is Retention.KEEP
    for bad in ({"max_bytes": 0}, {"low_water": 0.99, "high_water": 0.9}):
        try:
            SpoolPolicy(**bad)
        except ValueError as exc:
            assert "spool" in str(exc)
        else:
            raise AssertionError(f"{bad} accepted")


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


STEP_S = 300.0
DAY_S = 86_400.0
CAP = 1024 * 1024


async def _offline_day(store: Store, clock: FakeClock, worker: SyncWorker) -> tuple[int, int, int]:
    """Produce a day of telemetry, blocks and audit with the upstream down; return what was produced."""
    telemetry = blocks = audits = 0
    steps = int(DAY_S / STEP_S)
    for step in range(steps):
        clock.advance(STEP_S)
        records = [(f"t-{telemetry + i:07d}", json.dumps({"i": telemetry + i, "v": "x" * 150}).encode())
                   for i in range(50)]
        await store.outbox_append("telemetry", records)
        telemetry += len(records)
        await store.append_blocks([BlockInput("TEXT", b"m" * 200, {"step": step})])
        blocks += 1
        await store.audit_append("device.command", "agent-1", f"dev-{step}", {"pad": "a" * 150})
        audits += 1
        if step % 6 == 0:
            result = await worker.run_once()  # a pass: fails (upstream down), enforces the spool
            assert not result.ok
        else:
            await worker.enforce_spool()
        status = worker.status()
        assert status.spool.total_bytes <= CAP, (step, status.spool)
    return telemetry, blocks, audits


async def test_a_day_offline_drops_only_counted_telemetry_and_keeps_every_block_and_audit_record(
    clocked_store: Store, clock: FakeClock, tmp_path: object,
) -> None:
    store = clocked_store
    registry = CollectorRegistry()
    policy = SpoolPolicy(max_bytes=CAP)  # the default per-stream policy, a small cap
    async with SyncWorker(store, url=_closed_port_url(), spool=policy, clock=clock, periodic=False,
                          request_timeout_s=2, registry=registry) as worker:
        telemetry, blocks, audits = await _offline_day(store, clock, worker)
        stats = await store.outbox_stats()
        status = worker.status()
        metrics = generate_latest(registry).decode()

    assert stats["maif"].count == blocks
    assert stats["audit"].count == audits
    dropped = status.streams["telemetry"].dropped
    assert set(dropped) == {DropReason.SPOOL_CAP.value}
    assert dropped["spool_cap"] > 0
    assert stats["telemetry"].count + dropped["spool_cap"] == telemetry
    assert all(not s.dropped for name, s in status.streams.items() if name != "telemetry")
    assert not status.spool.protected_over_cap
    assert sum(s.bytes for s in stats.values()) <= CAP
    counter = 'mycoedge_sync_dropped_records_total{reason="spool_cap",stream="telemetry"}'
    assert f"{counter} {float(dropped['spool_cap'])}" in metrics

    # Back online: everything kept arrives; telemetry is exactly the newest records, in order.
    async with UpstreamServer(tmp_path / "up.db") as up:  # type: ignore[operator]
        async with SyncWorker(store, url=up.url, spool=policy, clock=clock, periodic=False) as worker:
            result = await worker.run_once()
        assert result.ok, result.errors
        counts = await up.state.db.counts()
        ids = await up.state.db.ids("telemetry")
    assert counts["maif"] == blocks
    assert counts["audit"] == audits
    assert ids == [f"t-{i:07d}" for i in range(telemetry - len(ids), telemetry)]


async def test_when_only_never_dropped_streams_fill_the_cap_telemetry_goes_and_the_state_says_so(
    clocked_store: Store, clock: FakeClock,
) -> None:
    store = clocked_store
    small = 16 * 1024
    async with SyncWorker(store, url=_closed_port_url(), spool=SpoolPolicy(max_bytes=small), clock=clock,
                          periodic=False) as worker:
        await store.outbox_append("telemetry", [(f"t{i}", b'{"v":1}') for i in range(100)])
        await store.append_blocks([BlockInput("TEXT", b"z" * 1000) for _ in range(20)])
        result = await worker.enforce_spool()
        status = worker.status()
    assert result.state.protected_over_cap and status.spool.protected_over_cap
    assert result.stats["telemetry"].count == 0
    assert result.dropped[("telemetry", DropReason.SPOOL_CAP)] == 100
    assert result.stats["maif"].count == 20  # past the cap: kept, and flagged instead
    assert status.to_json()["spool"]["protected_over_cap"] is True


async def test_telemetry_older_than_its_age_limit_is_dropped_and_counted(
    clocked_store: Store, clock: FakeClock
) -> None:
    store = clocked_store
    policy = SpoolPolicy(streams={"telemetry": StreamPolicy(Retention.SHED, max_age_s=3600.0)})
    async with SyncWorker(store, url=_closed_port_url(), spool=policy, clock=clock, periodic=False) as worker:
        await store.outbox_append("telemetry", [(f"old{i}", b"{}") for i in range(10)])
        clock.advance(1800)
        await store.outbox_append("telemetry", [(f"new{i}", b"{}") for i in range(5)])
        clock.advance(1900)
        result = await worker.enforce_spool()
    assert result.dropped == {("telemetry", DropReason.AGE): 10}
    assert result.stats["telemetry"].count == 5


def test_flat_config_overrides_apply_to_sheddable_streams_only() -> None:
    from daemon.sync.spool import with_overrides

    policy = with_overrides(SpoolPolicy(), max_bytes=1000, max_age_s={"telemetry": 60.0},
                            stream_max_bytes={"events": 500})
    assert policy.max_bytes == 1000
    assert policy.policy_for("telemetry").max_age_s == 60.0
    assert policy.policy_for("events").max_bytes == 500
    assert policy.policy_for("events").max_age_s == SpoolPolicy().policy_for("events").max_age_s
    try:
        with_overrides(SpoolPolicy(), max_age_s={"audit": 60.0})
    except ValueError as exc:
        assert "never dropped" in str(exc)
    else:
        raise AssertionError("an age limit on audit was accepted")


def test_a_sheddable_stream_of_empty_records_is_not_shed_for_bytes_it_does_not_hold() -> None:
    """Empty payloads free nothing: the byte planner passes over them (it divided by their zero mean)."""
    policy = SpoolPolicy(max_bytes=1000, streams={"telemetry": StreamPolicy(Retention.SHED, shed_rank=0),
                                                  "events": StreamPolicy(Retention.SHED, shed_rank=1),
                                                  "maif": StreamPolicy(Retention.KEEP)})
    stats = {"telemetry": _Stats(5, 0, 0.0), "events": _Stats(4, 4000, 0.0), "maif": _Stats(1, 500, 0.0)}
    drops = plan(policy, stats, now=0.0)
    assert [(d.stream, d.reason) for d in drops] == [("events", DropReason.SPOOL_CAP)]
