"""Agents' device commands over MQTT pass the same gate as over HTTP: the whole daemon, a real Mosquitto, a board.

The broker's ACL (the hub's side) lets an agent write only ``devices/<id>/cmd/<its own id>``, so the topic
names the sender; here the broker is open and the test plays both agents, which is what the daemon sees.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from daemon.devices import CommandRefused
from daemon.mosquitto import MosquittoProcess
from tests.drivers.test_mycobrain import SpecBoard
from tests.harness import RunningNode, node_config, running_node
from tests.recording import wait_for

BASE = "mycoedge/gate"
BOARD = "mycobrain-9a7e11"
CMD = {"cmd": "output_control", "params": {"id": "mosfet1", "value": 1}}


@pytest.fixture
async def node(tmp_path: Path, mosquitto: MosquittoProcess) -> AsyncIterator[tuple[RunningNode, SpecBoard]]:
    async with SpecBoard(device_id=BOARD) as board:
        raw = node_config(tmp_path, node={"id": "gate"}, mqtt={"enabled": True, "port": mosquitto.port},
                          devices=[{"kind": "mycobrain", "port": board.path, "stream_rate_hz": 2.0}])
        async with running_node(raw) as running:
            assert running.node.fleet is not None
            yield running, board


def _has_readings(running: RunningNode) -> bool:
    entry = running.node.fleet.find(BOARD) if running.node.fleet is not None else None
    return entry is not None and bool(entry.last_readings)


def _commands_named(board: SpecBoard, name: str) -> list[dict[str, Any]]:
    return [c for c in board.commands if c["payload"].get("cmd") == name]


async def _ask(client: aiomqtt.Client, topic: str, payload: bytes, correlation: bytes,
               reply_to: str | None = None) -> dict[str, Any]:
    """Publish a command with a response topic and correlation data; the answer that echoes it."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    # An agent may only have the answer sent to its own inbox or the device's cmd/result; operators anywhere.
    props.ResponseTopic = reply_to or (
        "agents-replies" if topic.endswith("/cmd") else f"{BASE}/devices/{BOARD}/cmd/result")
    props.CorrelationData = correlation
    await client.publish(topic, payload, qos=1, properties=props)
    async with asyncio.timeout(20):
        async for message in client.messages:
            if getattr(message.properties, "CorrelationData", None) == correlation:
                assert isinstance(message.payload, bytes)
                body: dict[str, Any] = json.loads(message.payload)
                return body
    raise AssertionError("unreachable")


async def test_the_gate_refuses_or_lets_through_by_the_agent_the_topic_names(
    node: tuple[RunningNode, SpecBoard], mosquitto: MosquittoProcess
) -> None:
    running, board = node
    fleet = running.node.fleet
    assert fleet is not None
    asked: list[tuple[str, str, str]] = []

    async def gate(agent_id: str, device: str, command: str) -> None:
        asked.append((agent_id, device, command))
        if agent_id == "agent-x":
            raise CommandRefused(403, "policy denies output_control to agent-x")
        if agent_id == "agent-slow":
            raise CommandRefused(429, "rate limit", retry_after_s=2.5)

    fleet.mqtt_command_gate = gate
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="agents",
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe("agents-replies", qos=1)
        await client.subscribe(f"{BASE}/devices/{BOARD}/cmd/result", qos=1)
        await wait_for(lambda: _has_readings(running), timeout=20)

        refused = await _ask(client, f"{BASE}/devices/{BOARD}/cmd/agent-x", json.dumps(CMD).encode(), b"c-1")
        assert refused == {"ok": False, "error": "forbidden", "status": 403, "cmd": "output_control",
                           "message": "policy denies output_control to agent-x"}
        limited = await _ask(client, f"{BASE}/devices/{BOARD}/cmd/agent-slow", json.dumps(CMD).encode(), b"c-2")
        assert (limited["error"], limited["status"], limited["retry_after_s"]) == ("rate_limited", 429, 2.5)
        assert _commands_named(board, "output_control") == []  # no COMMAND frame reached the board

        allowed = await _ask(client, f"{BASE}/devices/{BOARD}/cmd/agent-ok", json.dumps(CMD).encode(), b"c-3")
        assert allowed == {"ok": True, "message": "output_control_ok", "cmd": "output_control"}
        frames = _commands_named(board, "output_control")
        assert len(frames) == 1 and frames[0]["payload"] == CMD
        assert frames[0]["src"] == 0xC0 and frames[0]["flags"] & 0x01 and frames[0]["crc_ok"]

        # The bare topic is the node's operators' (the broker ACL admits only admin-level clients): no gate.
        operator = await _ask(client, f"{BASE}/devices/{BOARD}/cmd", json.dumps(CMD).encode(), b"c-4")
        assert operator["ok"] is True
        assert len(_commands_named(board, "output_control")) == 2

    # The gate saw the agent from the topic, the device by its own id and the command's name; never the operator.
    assert asked == [("agent-x", BOARD, "output_control"), ("agent-slow", BOARD, "output_control"),
                     ("agent-ok", BOARD, "output_control")]
    async with aiohttp.ClientSession(headers=running.headers) as session, \
            session.get(running.url + "/metrics") as resp:
        metrics = await resp.text()
    assert 'mycoedge_device_commands_refused_total{error="forbidden"} 1.0' in metrics
    assert 'mycoedge_device_commands_refused_total{error="rate_limited"} 1.0' in metrics


async def test_a_failing_gate_refuses_and_without_a_gate_the_agent_topic_is_served(
    node: tuple[RunningNode, SpecBoard], mosquitto: MosquittoProcess
) -> None:
    running, board = node
    fleet = running.node.fleet
    assert fleet is not None

    async def broken(agent_id: str, device: str, command: str) -> None:
        raise RuntimeError("policy store unavailable")

    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="agents",
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe("agents-replies", qos=1)
        await client.subscribe(f"{BASE}/devices/{BOARD}/cmd/result", qos=1)
        await wait_for(lambda: _has_readings(running), timeout=20)

        fleet.mqtt_command_gate = broken
        failed = await _ask(client, f"{BASE}/devices/{BOARD}/cmd/agent-a", json.dumps(CMD).encode(), b"f-1")
        assert (failed["ok"], failed["error"], failed["cmd"]) == (False, "gate_error", "output_control")
        assert _commands_named(board, "output_control") == []

        fleet.mqtt_command_gate = None
        served = await _ask(client, f"{BASE}/devices/{BOARD}/cmd/agent-a", json.dumps(CMD).encode(), b"f-2")
        assert served["ok"] is True and len(_commands_named(board, "output_control")) == 1

        # Answers on the default response topic (``cmd/result``) are never taken for a command of agent "result".
        await client.publish(f"{BASE}/devices/{BOARD}/cmd/result", json.dumps(CMD), qos=1)
        garbage = await _ask(client, f"{BASE}/devices/{BOARD}/cmd/agent-a", b"\xff", b"f-3")
        assert garbage["error"] == "bad_request"
        # One command in flight per leg, in arrival order: had the one on cmd/result been taken, it would
        # have reached the board before this one was answered.
        after = await _ask(client, f"{BASE}/devices/{BOARD}/cmd/agent-a", json.dumps(CMD).encode(), b"f-4")
        assert after["ok"] is True and len(_commands_named(board, "output_control")) == 2


async def test_with_the_hub_the_gate_is_capability_trust_gate_and_policy(
    node: tuple[RunningNode, SpecBoard], mosquitto: MosquittoProcess
) -> None:
    """As wired by ``app.run``: the hub's gate, exactly as for ``POST /v1/devices/{id}/commands``, audited."""
    running, board = node
    hub = running.node.hub
    assert hub is not None

    async def http(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with aiohttp.ClientSession(headers=running.headers) as session, \
                session.request(method, running.url + path, json=body) as resp:
            return resp.status, await resp.json(content_type=None)

    for agent_id, kind in (("op-1", "HUMAN"), ("pipe-1", "CUSTOM_PIPELINE")):
        status, body = await http("POST", "/v1/agents", {"id": agent_id, "type": kind, "owner": "alice"})
        assert status == 201, body
    cmd = f"{BASE}/devices/{BOARD}/cmd"
    payload = json.dumps(CMD).encode()
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="agents",
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(f"{BASE}/agents/+/inbox", qos=1)
        await client.subscribe(f"{cmd}/result", qos=1)
        await wait_for(lambda: _has_readings(running), timeout=20)

        # The node publishes with full rights, so an agent cannot have the answer put in another's inbox.
        hijack = await _ask(client, f"{cmd}/op-1", payload, b"h-0", reply_to=f"{BASE}/agents/pipe-1/inbox")
        assert (hijack["ok"], hijack["error"], hijack["status"]) == (False, "bad_response_topic", 403)
        # A token alone is level 1; device.command needs 2 (ARCHITECTURE.md defaults).
        low = await _ask(client, f"{cmd}/op-1", payload, b"h-1", reply_to=f"{BASE}/agents/op-1/inbox")
        assert (low["ok"], low["error"], low["status"]) == (False, "forbidden", 403) and "trust" in low["message"]
        no_cap = await _ask(client, f"{cmd}/pipe-1", payload, b"h-2")
        assert (no_cap["ok"], no_cap["status"]) == (False, 403) and "DEVICE_COMMAND" in no_cap["message"]
        ghost = await _ask(client, f"{cmd}/ghost", payload, b"h-3")
        assert (ghost["ok"], ghost["status"]) == (False, 403)
        assert _commands_named(board, "output_control") == []

        hub.trust.grant("op-1", 2, basis="jwt")  # what a verified JWT gives
        allowed = await _ask(client, f"{cmd}/op-1", payload, b"h-4", reply_to=f"{BASE}/agents/op-1/inbox")
        assert allowed["ok"] is True and len(_commands_named(board, "output_control")) == 1

        rule = {"id": "no-mosfets", "effect": "deny", "scope": "device", "priority": 10,
                "conditions": [{"field": "device.cmd", "operator": "equals", "value": "output_control"}]}
        status, body = await http("POST", "/v1/policies", rule)
        assert status == 201, body
        denied = await _ask(client, f"{cmd}/op-1", payload, b"h-5")
        assert (denied["ok"], denied["status"]) == (False, 403)
        assert len(_commands_named(board, "output_control")) == 1

    status, audit = await http("GET", "/v1/audit?limit=1000")
    assert status == 200
    seen = [(r["kind"], r["actor"]) for r in audit["records"] if r["subject"] == "device.command"]
    assert seen == [("permission_denied", "op-1"), ("permission_denied", "pipe-1"), ("permission_denied", "ghost"),
                    ("policy_decision", "op-1"), ("policy_decision", "op-1")]
    decisions = [r["data"] for r in audit["records"] if r["kind"] == "policy_decision"]
    assert [(d["allowed"], d["rule_id"]) for d in decisions] == [(True, None), (False, "no-mosfets")]
