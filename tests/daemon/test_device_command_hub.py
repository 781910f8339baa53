"""The daemon as wired by ``app.run``: an agent's MQTT device command passes the hub's capability, trust gate
and policy, exactly like ``POST /v1/devices/{id}/commands``, and every refusal is audited.

The broker here is open, so the test client plays each agent by publishing on ``devices/<id>/cmd/<agent>``
(the topic the broker reserves to that agent when the hub manages its credentials; see tests/hub).
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

from daemon.mosquitto import MosquittoProcess
from tests.drivers.test_mycobrain import SpecBoard
from tests.harness import RunningNode, node_config, running_node
from tests.recording import wait_for

BOARD = "mycobrain-5c0ffe"
CMD = {"cmd": "output_control", "params": {"id": "mosfet1", "value": 1}}


@pytest.fixture
async def node(tmp_path: Path, mosquitto: MosquittoProcess) -> AsyncIterator[tuple[RunningNode, SpecBoard]]:
    async with SpecBoard(device_id=BOARD) as board:
        raw = node_config(tmp_path, node={"id": "hubgate"}, mqtt={"enabled": True, "port": mosquitto.port},
                          devices=[{"kind": "mycobrain", "port": board.path, "stream_rate_hz": 2.0}])
        async with running_node(raw) as running:
            yield running, board


async def _http(running: RunningNode, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession(headers=running.headers) as session, \
            session.request(method, running.url + path, json=body) as resp:
        return resp.status, await resp.json(content_type=None)


async def _ask(client: aiomqtt.Client, topic: str, correlation: bytes, reply_to: str | None = None) -> dict[str, Any]:
    """Publish as the agent the topic names; the answer goes to its inbox unless ``reply_to`` says otherwise."""
    agent = topic.rsplit("/", 1)[1]
    base = topic.split("/devices/", 1)[0]
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ResponseTopic = reply_to or f"{base}/agents/{agent}/inbox"
    props.CorrelationData = correlation
    await client.publish(topic, json.dumps(CMD).encode(), qos=1, properties=props)
    async with asyncio.timeout(20):
        async for message in client.messages:
            if getattr(message.properties, "CorrelationData", None) == correlation:
                assert isinstance(message.payload, bytes)
                answer: dict[str, Any] = json.loads(message.payload)
                return answer
    raise AssertionError("unreachable")


def _frames(board: SpecBoard) -> int:
    return sum(1 for c in board.commands if c["payload"].get("cmd") == "output_control")


async def test_mqtt_commands_pass_capability_trust_gate_and_policy(
    node: tuple[RunningNode, SpecBoard], mosquitto: MosquittoProcess
) -> None:
    running, board = node
    hub = running.node.hub
    assert hub is not None
    for agent_id, kind in (("op-1", "HUMAN"), ("pipe-1", "CUSTOM_PIPELINE")):
        status, body = await _http(running, "POST", "/v1/agents", {"id": agent_id, "type": kind, "owner": "alice"})
        assert status == 201, body
    base = f"{running.node.topic_base}/devices/{BOARD}/cmd"
    fleet = running.node.fleet
    assert fleet is not None

    def streaming() -> bool:
        entry = fleet.find(BOARD)
        return entry is not None and bool(entry.last_readings)

    await wait_for(streaming, timeout=20)

    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="agents",
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(f"{running.node.topic_base}/agents/+/inbox", qos=1)
        await client.subscribe(f"{base}/result", qos=1)

        # The node publishes with full rights, so an agent cannot send the answer into another's inbox.
        hijack = await _ask(client, f"{base}/op-1", b"0", reply_to=f"{running.node.topic_base}/agents/pipe-1/inbox")
        assert (hijack["ok"], hijack["error"], hijack["status"]) == (False, "bad_response_topic", 403)

        # A token alone is level 1; device.command needs 2 (ARCHITECTURE.md defaults).
        low = await _ask(client, f"{base}/op-1", b"1")
        assert (low["ok"], low["error"], low["status"]) == (False, "forbidden", 403)
        assert "trust" in low["message"]
        no_cap = await _ask(client, f"{base}/pipe-1", b"2")
        assert (no_cap["ok"], no_cap["status"]) == (False, 403) and "DEVICE_COMMAND" in no_cap["message"]
        ghost = await _ask(client, f"{base}/ghost", b"3")
        assert (ghost["ok"], ghost["status"]) == (False, 403)
        assert _frames(board) == 0

        hub.trust.grant("op-1", 2, basis="jwt")  # what a verified JWT gives
        allowed = await _ask(client, f"{base}/op-1", b"4")
        assert allowed["ok"] is True and _frames(board) == 1

        rule = {"id": "no-mosfets", "effect": "deny", "scope": "device", "priority": 10,
                "conditions": [{"field": "device.cmd", "operator": "equals", "value": "output_control"}]}
        status, body = await _http(running, "POST", "/v1/policies", rule)
        assert status == 201, body
        denied = await _ask(client, f"{base}/op-1", b"5")
        assert (denied["ok"], denied["status"]) == (False, 403) and _frames(board) == 1

    status, audit = await _http(running, "GET", "/v1/audit?limit=1000")
    assert status == 200
    seen = [(r["kind"], r["actor"], r["subject"]) for r in audit["records"] if r["subject"] == "device.command"]
    assert seen == [("permission_denied", "op-1", "device.command"), ("permission_denied", "pipe-1", "device.command"),
                    ("permission_denied", "ghost", "device.command"), ("policy_decision", "op-1", "device.command"),
                    ("policy_decision", "op-1", "device.command")]
    decisions = [r["data"] for r in audit["records"] if r["kind"] == "policy_decision"]
    assert [(d["allowed"], d["rule_id"]) for d in decisions] == [(True, None), (False, "no-mosfets")]
