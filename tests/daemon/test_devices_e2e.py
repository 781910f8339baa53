"""A MycoBrain written from the spec alone, behind the whole daemon: MQTT, HTTP, the store and metrics."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.mosquitto import MosquittoProcess
from tests.drivers.test_mycobrain import SpecBoard
from tests.harness import RunningNode, node_config, running_node

BASE = "mycoedge/e2e"
BOARD = "mycobrain-abcdef"


class Node:
    def __init__(self, running: RunningNode) -> None:
        self.url = running.url
        self.headers = running.headers
        self.store_path = running.config.node.state_dir / "mycoedge.db"


@pytest.fixture
async def node(tmp_path: Path, mosquitto: MosquittoProcess) -> AsyncIterator[tuple[Node, SpecBoard]]:
    async with SpecBoard(device_id=BOARD) as board:
        raw = node_config(tmp_path, node={"id": "e2e"}, mqtt={"enabled": True, "port": mosquitto.port},
                          devices=[{"kind": "mycobrain", "port": board.path, "stream_rate_hz": 5.0,
                                    "name": "bench-board"}])
        async with running_node(raw) as running:
            yield Node(running), board


async def _collect(client: aiomqtt.Client, predicate: Any, timeout: float = 30.0) -> aiomqtt.Message:
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            if predicate(message):
                return message
    raise AssertionError("unreachable")


async def test_board_telemetry_commands_state_and_discovery(
    node: tuple[Node, SpecBoard], mosquitto: MosquittoProcess
) -> None:
    _daemon, board = node
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="agent",
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(f"{BASE}/devices/{BOARD}/#", qos=1)
        await client.subscribe("homeassistant/sensor/#", qos=1)
        telemetry = await _collect(client, lambda m: str(m.topic).endswith("/telemetry")
                                   and json.loads(m.payload)["sensor"] == "bme688_a")
        body = json.loads(telemetry.payload)  # type: ignore[arg-type]
        assert body["device_id"] == BOARD and isinstance(body["seq"], int) and body["ts"] > 0
        assert body["values"]["temperature_c"] == {"value": 21.5, "unit": "°C"}
        assert body["values"]["gas_ohm"]["unit"] == "Ω"

        # Retained state and HA discovery are there for a late subscriber.
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="late") as late:
            await late.subscribe(f"{BASE}/devices/{BOARD}/state")
            await late.subscribe(f"homeassistant/sensor/e2e_{BOARD.replace('-', '_')}_bme688_a_temperature_c/config")
            seen: dict[str, Any] = {}
            async with asyncio.timeout(30):
                async for message in late.messages:
                    seen[str(message.topic)] = json.loads(message.payload)  # type: ignore[arg-type]
                    if len(seen) == 2:
                        break
        state = seen[f"{BASE}/devices/{BOARD}/state"]
        assert state["status"] == "online" and state["link_state"] == "streaming"
        discovery = next(v for k, v in seen.items() if k.startswith("homeassistant/"))
        assert discovery["device_class"] == "temperature" and discovery["unit_of_measurement"] == "°C"
        assert discovery["state_topic"] == f"{BASE}/devices/{BOARD}/sensors/bme688_a"

        # A command over MQTT 5 with response topic and correlation data.
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = "agent/replies"
        props.CorrelationData = b"corr-42"
        await client.subscribe("agent/replies", qos=1)
        before = len(board.commands)
        await client.publish(f"{BASE}/devices/{BOARD}/cmd",
                             json.dumps({"cmd": "output_control", "params": {"id": "mosfet1", "value": 1}}),
                             qos=1, properties=props)
        reply = await _collect(client, lambda m: str(m.topic) == "agent/replies")
        assert reply.properties is not None and reply.properties.CorrelationData == b"corr-42"
        answer = json.loads(reply.payload)  # type: ignore[arg-type]
        assert answer == {"ok": True, "message": "output_control_ok", "cmd": "output_control"}
        frame = board.commands[before]
        assert (frame["type"], frame["src"], frame["dst"]) == (0x02, 0xC0, 0xA1)
        assert frame["flags"] & 0x01 and frame["crc_ok"] and frame["newline_free"]
        assert frame["payload"] == {"cmd": "output_control", "params": {"id": "mosfet1", "value": 1}}

        # Garbage on the command topic gets a clear refusal, not silence.
        await client.publish(f"{BASE}/devices/{BOARD}/cmd", b"\xff not json", qos=1, properties=props)
        reply = await _collect(client, lambda m: str(m.topic) == "agent/replies")
        assert json.loads(reply.payload)["error"] == "bad_request"  # type: ignore[arg-type]


async def test_http_device_routes_and_metrics(node: tuple[Node, SpecBoard]) -> None:
    daemon, _board = node
    async with aiohttp.ClientSession(headers=daemon.headers) as session:
        for _ in range(200):
            async with session.get(daemon.url + "/v1/devices") as resp:
                listing = await resp.json()
            if listing["devices"][0]["device_id"] == BOARD and listing["devices"][0]["last_readings"]:
                break
            await asyncio.sleep(0.05)
        device = listing["devices"][0]
        assert device["state"] == "streaming" and device["name"] == "bench-board"
        # Addressable by its own id and by its configured name.
        for key in (BOARD, "bench-board"):
            async with session.get(f"{daemon.url}/v1/devices/{key}") as resp:
                assert resp.status == 200
        async with session.post(f"{daemon.url}/v1/devices/{BOARD}/commands",
                                json={"cmd": "output_control", "params": {"id": "buzzer", "value": 1}}) as resp:
            assert resp.status == 200
            assert (await resp.json())["ok"] is True
        async with session.post(f"{daemon.url}/v1/devices/{BOARD}/commands", json={"params": {}}) as resp:
            assert resp.status == 422
            assert resp.content_type == "application/problem+json"
        async with session.get(f"{daemon.url}/v1/devices/nope") as resp:
            assert resp.status == 404
        async with session.get(daemon.url + "/metrics") as resp:
            metrics = await resp.text()
    assert f'mycoedge_device_streaming{{device="{BOARD}"}} 1.0' in metrics
    counters = [line for line in metrics.splitlines() if line.startswith("mycoedge_device_link_total{")
                and f'device="{BOARD}"' in line]
    assert counters, metrics
    # Readings reach the store (and its telemetry outbox) through the sink.
    stored = queued = 0
    for _ in range(100):  # the sink flushes in batches every 0.2 s
        with sqlite3.connect(f"file:{daemon.store_path}?mode=ro", uri=True) as db:
            stored = db.execute("SELECT count(*) FROM readings").fetchone()[0]
            queued = db.execute("SELECT count(*) FROM outbox WHERE stream = 'telemetry'").fetchone()[0]
        if stored:
            break
        await asyncio.sleep(0.05)
    assert stored > 0 and queued == stored
