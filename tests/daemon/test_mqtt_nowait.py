"""``BrokerLink.publish_nowait`` against a real Mosquitto: order, completeness, back-pressure, retain, drops."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import pytest
from prometheus_client import CollectorRegistry

from daemon import mqtt as mqtt_mod
from daemon.mosquitto import MosquittoProcess
from daemon.mqtt import BrokerLink
from tests.recording import wait_for

BASE = "mycoedge/nowait"


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """A broker that queues without limit for a slow subscriber: the bursts here are megabytes at once, and
    Mosquitto otherwise drops QoS 0 beyond 1000 messages queued per subscriber (mosquitto.conf(5),
    ``max_queued_messages``), which would hide what this link itself loses."""
    broker = MosquittoProcess(tmp_path / "mosquitto", extra_config="max_queued_messages 0")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@asynccontextmanager
async def _link(port: int, registry: CollectorRegistry) -> AsyncIterator[BrokerLink]:
    async with BrokerLink(host="127.0.0.1", port=port, client_id="nowait-node", status_topic=f"{BASE}/status",
                          registry=registry) as link:
        async with asyncio.timeout(10):
            await link.connected.wait()
        yield link


async def _receive(client: aiomqtt.Client, count: int, timeout: float = 30.0) -> list[aiomqtt.Message]:
    got: list[aiomqtt.Message] = []
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            got.append(message)
            if len(got) == count:
                return got
    raise AssertionError("unreachable")


def _counter(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name) or 0.0


async def test_bursts_beyond_the_socket_buffer_arrive_whole_and_in_order(mosquitto: MosquittoProcess) -> None:
    registry = CollectorRegistry()
    payload = b"x" * 1500
    total = 6000  # ~9 MB in bursts of 2000: more than the kernel takes at once, so paho's writer drains the rest
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="watch",
                              protocol=aiomqtt.ProtocolVersion.V5, max_queued_incoming_messages=0) as watch, \
            _link(mosquitto.port, registry) as link:
        await watch.subscribe(f"{BASE}/live/#", qos=0)
        receiving = asyncio.create_task(_receive(watch, total + 15))
        acked = 0
        for burst in range(3):
            for i in range(2000):
                assert link.publish_nowait(f"{BASE}/live/{burst}", b"%06d:" % (burst * 2000 + i) + payload)
            # Awaited QoS 1 publishes in between keep working (their message ids are never confused).
            for j in range(5):
                assert await link.publish(f"{BASE}/live/acked", b"acked %d" % j, qos=1)
                acked += 1
            await asyncio.sleep(0)
        messages = await receiving
    live = [bytes(m.payload) for m in messages if not str(m.topic).endswith("/acked")]
    assert [int(p.split(b":")[0]) for p in live] == list(range(total))
    assert all(p.endswith(payload) for p in live)
    assert sum(1 for m in messages if str(m.topic).endswith("/acked")) == acked == 15
    assert _counter(registry, "mycoedge_mqtt_backlog_dropped_total") == 0
    assert _counter(registry, "mycoedge_mqtt_publish_dropped_total") == 0


async def test_a_stalled_broker_backs_the_batch_up_and_nothing_is_lost(mosquitto: MosquittoProcess) -> None:
    registry = CollectorRegistry()
    payload = b"y" * 2000
    total = 9000  # 18 MB: more than the socket buffers hold while the broker is stopped
    proc = mosquitto._proc
    assert proc is not None
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="watch",
                              max_queued_incoming_messages=0) as watch, _link(mosquitto.port, registry) as link:
        await watch.subscribe(f"{BASE}/stalled", qos=0)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            for i in range(total):
                assert link.publish_nowait(f"{BASE}/stalled", b"%06d:" % i + payload)
            paho = link._client._client  # type: ignore[union-attr]  # the link's own paho client, to look at
            await wait_for(paho.want_write, timeout=10)  # the kernel refused more: paho's writer holds the rest
            assert link.publish_nowait(f"{BASE}/stalled", b"late")  # still accepted, after the others
            total += 1
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        messages = await _receive(watch, total)
    bodies = [bytes(m.payload) for m in messages]
    assert [int(p.split(b":")[0]) for p in bodies[:-1]] == list(range(total - 1)) and bodies[-1] == b"late"
    assert _counter(registry, "mycoedge_mqtt_backlog_dropped_total") == 0


async def test_a_full_backlog_drops_and_counts_the_excess(mosquitto: MosquittoProcess) -> None:
    registry = CollectorRegistry()
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="watch",
                              max_queued_incoming_messages=0) as watch, _link(mosquitto.port, registry) as link:
        await watch.subscribe(f"{BASE}/burst", qos=0)
        receiving = asyncio.create_task(_receive(watch, mqtt_mod.NOWAIT_MAX))
        accepted = [link.publish_nowait(f"{BASE}/burst", b"%d" % i) for i in range(mqtt_mod.NOWAIT_MAX + 3)]
        assert accepted.count(False) == 3 and accepted[: mqtt_mod.NOWAIT_MAX] == [True] * mqtt_mod.NOWAIT_MAX
        messages = await receiving
    assert [int(bytes(m.payload)) for m in messages] == list(range(mqtt_mod.NOWAIT_MAX))
    assert _counter(registry, "mycoedge_mqtt_backlog_dropped_total") == 3


async def test_retained_live_state_and_the_last_batch_before_a_clean_stop(mosquitto: MosquittoProcess) -> None:
    registry = CollectorRegistry()
    async with _link(mosquitto.port, registry) as link:
        assert link.publish_nowait(f"{BASE}/sensors/a", '{"v": 1}', retain=True)
        # A topic no broker takes (a wildcard from a board's id) is dropped and counted, not a traceback.
        assert link.publish_nowait(f"{BASE}/sensors/+", b"never")
        assert link.publish_nowait(f"{BASE}/sensors/b", b'{"v": 2}', retain=True)
        # Leaving at once: the queued batch still goes out before the DISCONNECT.
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="late") as late:
        await late.subscribe(f"{BASE}/sensors/+", qos=0)
        messages = await _receive(late, 2, timeout=10)
    assert sorted((str(m.topic), bytes(m.payload)) for m in messages) == [
        (f"{BASE}/sensors/a", b'{"v": 1}'), (f"{BASE}/sensors/b", b'{"v": 2}')]
    assert _counter(registry, "mycoedge_mqtt_publish_dropped_total") == 1


async def test_without_a_broker_nothing_is_queued_and_the_drop_is_counted(mosquitto: MosquittoProcess) -> None:
    registry = CollectorRegistry()
    port = mosquitto.port
    await asyncio.to_thread(mosquitto.stop)
    async with BrokerLink(host="127.0.0.1", port=port, client_id="nowait-node", status_topic=f"{BASE}/status",
                          registry=registry) as link:
        assert link.publish_nowait(f"{BASE}/live", b"lost") is False
    assert _counter(registry, "mycoedge_mqtt_publish_dropped_total") == 1


async def test_soon_sends_the_whole_queue_this_iteration_in_order(mosquitto: MosquittoProcess) -> None:
    """``soon`` (the hub's QoS 0 deliveries) flushes at the end of the loop turn, with what was queued before."""
    registry = CollectorRegistry()
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="watch-soon",
                              protocol=aiomqtt.ProtocolVersion.V5) as watch, \
            _link(mosquitto.port, registry) as link:
        await watch.subscribe(f"{BASE}/soon/#", qos=0)
        receiving = asyncio.create_task(_receive(watch, 6))
        for i in range(5):
            assert link.publish_nowait(f"{BASE}/soon/t", b"%d" % i)
        timer = link._flush_handle
        assert isinstance(timer, asyncio.TimerHandle)  # telemetry waits for the 10 ms batch
        assert link.publish_nowait(f"{BASE}/soon/t", b"5", soon=True)
        assert timer.cancelled() and not isinstance(link._flush_handle, asyncio.TimerHandle)
        await asyncio.sleep(0)
        assert link._flush_handle is None and not link._nowait  # handed to paho in this turn, no timer left
        messages = await receiving
    assert [bytes(m.payload) for m in messages] == [b"0", b"1", b"2", b"3", b"4", b"5"]
