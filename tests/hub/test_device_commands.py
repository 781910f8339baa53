"""Device commands over MQTT: the broker confines an agent to ``devices/<id>/cmd/<its own id>`` (file ACLs and
dynsec roles alike), and ``Hub.authorize_device_command_mqtt`` applies the hub's own gate to what passes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from daemon.hub.broker_auth import BrokerAccount, render_acl
from daemon.hub.defences import RateLimiter
from daemon.hub.dynsec import SEND, rules_by_user
from daemon.hub.errors import ApprovalRequired, Forbidden, HubError, InvalidRequest, RateLimited
from tests.hub.conftest import BASE, HubNode, mqtt_agent
from tests.hub.test_broker_and_messages import _publish_reason
from tests.hub.test_dynsec import _settled, dnode, dynsec_broker  # noqa: F401 - fixtures used by name
from tests.hub.test_dynsec import pytestmark as needs_dynsec

NOT_AUTHORISED = 0x87  # MQTT 5.0 section 3.4.2.1, PUBACK reason "Not authorized"


def test_acl_grants_only_the_agents_own_command_topic() -> None:
    cmd = BrokerAccount("op-1", "$7$x", "op-1", frozenset({"DEVICE_COMMAND"}))
    reader = BrokerAccount("ro-1", "$7$x", "ro-1", frozenset({"DEVICE_READ"}))
    rules = rules_by_user(render_acl([cmd, reader], topic_base="b", service_users=["svc"]))
    sends = {topic for kind, topic in rules["op-1"] if kind == SEND}
    assert sends == {"b/agents/op-1/outbox", "b/agents/op-1/status", "b/devices/+/cmd/op-1"}
    assert not {topic for kind, topic in rules["ro-1"] if kind == SEND and "/devices/" in topic}
    assert (SEND, "#") in rules["svc"]  # the node and the admin keep the bare command topic


async def test_the_id_result_is_reserved(node: HubNode) -> None:
    status, body, _ = await node.call("POST", "/v1/agents", json={"id": "result", "type": "HUMAN", "owner": "x"})
    assert status == 400 and "reserved" in body["detail"]
    with pytest.raises(InvalidRequest):
        await node.hub.register({"id": "result", "type": "HUMAN", "owner": "x"}, privileged=True, actor="test")


async def _probe(node: HubNode, creds: dict[str, Any], topic: str) -> int:
    return await asyncio.to_thread(_publish_reason, node.broker_proc.port, creds, topic)


async def _check_broker_confines_commands(node: HubNode) -> None:
    op = await node.register("op-1", type="HUMAN")  # every capability, DEVICE_COMMAND included
    other = await node.register("op-2", type="HUMAN")
    pipe = await node.register("pipe-1", type="CLAUDE_CODE")  # DEVICE_READ, no DEVICE_COMMAND
    for creds in (op, other, pipe):
        async with mqtt_agent(node, creds):
            pass  # the credentials are live once a connect succeeds
    dev = f"{BASE}/devices/brain-1"
    assert await _probe(node, op, f"{dev}/cmd/op-1") < 0x80
    assert await _probe(node, other, f"{dev}/cmd/op-2") < 0x80
    for topic in (f"{dev}/cmd/op-2", f"{dev}/cmd", f"{dev}/cmd/result", f"{dev}/cmd/op-1/x"):
        assert await _probe(node, op, topic) == NOT_AUTHORISED, topic
    for topic in (f"{dev}/cmd/pipe-1", f"{dev}/cmd", f"{dev}/cmd/op-1"):
        assert await _probe(node, pipe, topic) == NOT_AUTHORISED, topic


async def test_file_acl_confines_device_commands_to_the_own_topic(node: HubNode) -> None:
    await _check_broker_confines_commands(node)


@needs_dynsec
async def test_dynsec_confines_device_commands_to_the_own_topic(dnode: HubNode) -> None:  # noqa: F811
    await _settled(dnode)
    await _check_broker_confines_commands(dnode)


async def test_the_service_user_still_commands_on_the_bare_topic(node: HubNode) -> None:
    # The daemon's link logs in as a service user (``readwrite #``); the agent's bare-topic publish is dropped.
    seen: list[str] = []
    got = asyncio.Event()

    async def spy(message: Any) -> None:
        seen.append(str(message.topic))
        got.set()

    op = await node.register("op-1", type="HUMAN")
    assert node.hub.broker is not None
    node.hub.broker.subscribe(f"{BASE}/devices/+/cmd/#", spy)  # "cmd/#" matches "cmd" too (MQTT 5.0 4.7.1.2)
    async with mqtt_agent(node, op) as client:
        await asyncio.sleep(0.2)  # the live subscriptions above are made by the link's own tasks
        await client.publish(f"{BASE}/devices/brain-1/cmd", b"{}", qos=1)  # dropped: not the agent's
        await client.publish(f"{BASE}/devices/brain-1/cmd/op-1", b"{}", qos=1)
        async with asyncio.timeout(5):
            await got.wait()
    assert await node.hub.broker.publish(f"{BASE}/devices/brain-1/cmd", b"{}", qos=1)
    async with asyncio.timeout(5):
        while len(seen) < 2:  # noqa: ASYNC110 - the spy has no per-message event
            await asyncio.sleep(0.02)
    assert seen == [f"{BASE}/devices/brain-1/cmd/op-1", f"{BASE}/devices/brain-1/cmd"]


async def test_mqtt_command_gate_capability_trust_policy_rate_and_audit(node: HubNode) -> None:
    await node.register("op-1", type="HUMAN")
    await node.register("pipe-9", type="CLAUDE_CODE")
    hub = node.hub
    with pytest.raises(Forbidden, match="trust level") as refused:
        await hub.authorize_device_command_mqtt("op-1", "brain-1", "led")  # token level 1 < device.command 2
    assert refused.value.extensions == {"needed_level": 2, "trust_level": 1}
    node.trust.grant("op-1", 2, expires_at=None, basis="test")
    node.trust.grant("pipe-9", 5, expires_at=None, basis="test")
    await hub.authorize_device_command_mqtt("op-1", "brain-1", "led")
    with pytest.raises(Forbidden, match="DEVICE_COMMAND"):
        await hub.authorize_device_command_mqtt("pipe-9", "brain-1", "led")
    with pytest.raises(Forbidden, match="no registered agent"):
        await hub.authorize_device_command_mqtt("ghost", "brain-1", "led")
    for rule in ({"id": "no-buzzer", "effect": "deny", "scope": "device", "priority": 1,
                  "conditions": [{"field": "device.cmd", "operator": "equals", "value": "buzzer"}]},
                 {"id": "mqtt-reboot-needs-a-human", "effect": "require_approval", "scope": "device", "priority": 2,
                  "logic": "AND", "conditions": [{"field": "device.cmd", "operator": "equals", "value": "reboot"},
                                                 {"field": "device.via", "operator": "equals", "value": "mqtt"}]}):
        assert (await node.call("POST", "/v1/policies", json=rule))[0] == 201
    with pytest.raises(Forbidden, match="no-buzzer"):
        await hub.authorize_device_command_mqtt("op-1", "brain-1", "buzzer")
    with pytest.raises(ApprovalRequired):
        await hub.authorize_device_command_mqtt("op-1", "brain-1", "reboot")
    await hub.authorize_device_command_mqtt("op-1", "brain-1", "led")
    await hub.audit_idle()
    trail = [(r.kind, r.actor, r.subject) for r in await node.hub.store.audit_list(limit=1000)]
    assert ("policy_decision", "op-1", "device.command") in trail
    assert ("permission_denied", "pipe-9", "device.command") in trail
    assert ("permission_denied", "ghost", "device.command") in trail
    # The same per-agent bucket as every other request: a flood is refused with a retry time.
    hub.agent_limits = RateLimiter(rate=1.0, burst=3.0)
    errors: list[HubError] = []
    for _ in range(10):
        try:
            await hub.authorize_device_command_mqtt("op-1", "brain-1", "led")
        except HubError as exc:
            errors.append(exc)
    assert errors and all(isinstance(e, RateLimited) for e in errors)
