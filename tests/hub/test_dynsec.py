"""Agents' broker credentials through Mosquitto's dynamic-security plugin, against a real broker.

The broker runs with the plugin, a config made by ``mosquitto_ctrl dynsec init`` and no anonymous access;
the daemon's link logs in as the dynsec admin and the hub provisions clients and roles over MQTT.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from daemon.hub.broker_auth import BrokerAccount, render_acl
from daemon.hub.dynsec import (
    AGENT_ROLE_PREFIX,
    RECEIVE,
    SEND,
    SERVICE_ROLE,
    SUBSCRIBE,
    DynsecProvisioner,
    rules_by_user,
)
from daemon.mosquitto import MosquittoProcess
from tests.hub.conftest import BASE, SERVICE_PASSWORD, SERVICE_USER, Clock, HubNode, mqtt_agent
from tests.hub.test_broker_and_messages import _publish_reason

PLUGIN = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")

pytestmark = pytest.mark.skipif(not PLUGIN.exists() or shutil.which("mosquitto_ctrl") is None,
                                reason="mosquitto's dynamic-security plugin is not installed")


@pytest.fixture
def dynsec_broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    config = tmp_path / "mosq" / "dynamic-security.json"
    config.parent.mkdir(parents=True)
    # mosquitto_ctrl dynsec init <new-config-file> <admin-username> [admin-password] (mosquitto_ctrl(1)).
    subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(config), SERVICE_USER, SERVICE_PASSWORD],
                   check=True, capture_output=True, timeout=10)
    broker = MosquittoProcess(
        tmp_path / "mosquitto", allow_anonymous=False,
        extra_config=f"plugin {PLUGIN}\nplugin_opt_config_file {config}\nuse_username_as_clientid true\n"
                     "set_tcp_nodelay true\n")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
async def dnode(tmp_path: Path, dynsec_broker: MosquittoProcess) -> AsyncIterator[HubNode]:
    n = HubNode(tmp_path, dynsec_broker, None, Clock())  # type: ignore[arg-type]  # no files: dynsec mode
    n.hub_kwargs = {"broker_dynsec": True, "broker_service_user": SERVICE_USER}
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


def _provisioner(node: HubNode) -> DynsecProvisioner:
    assert isinstance(node.hub.provisioner, DynsecProvisioner)
    return node.hub.provisioner


async def _settled(node: HubNode) -> None:
    """The first reconcile runs from the link's connect hook; wait until one has completed."""
    prov = _provisioner(node)
    async with asyncio.timeout(5):
        await prov.reconciled.wait()


def test_rules_mirror_the_acl_file() -> None:
    acc = BrokerAccount("a1", "$7$x", "a1", frozenset({"DEVICE_COMMAND", "HANDOFF_RECEIVE"}))
    rules = rules_by_user(render_acl([acc], topic_base="b", service_users=["svc"]))
    assert rules["svc"] == {(SEND, "#"), (RECEIVE, "#"), (SUBSCRIBE, "#")}
    assert rules["a1"] == {(SEND, "b/agents/a1/outbox"), (SEND, "b/agents/a1/status"),
                           (SUBSCRIBE, "b/agents/a1/inbox"), (RECEIVE, "b/agents/a1/inbox"),
                           (SUBSCRIBE, "b/handoffs/+"), (RECEIVE, "b/handoffs/+"), (SEND, "b/devices/+/cmd/a1")}
    assert rules["enrolment"] == {(SEND, "b/agents/register"), (SUBSCRIBE, "b/agents/register/reply/+"),
                                  (RECEIVE, "b/agents/register/reply/+")}


async def test_agents_are_confined_by_their_dynsec_roles(dnode: HubNode) -> None:
    await _settled(dnode)
    a = await dnode.register("agent-a")
    b = await dnode.register("agent-b")
    # MQTT 5 PUBACK 0x87 "Not authorized" (MQTT 5.0 section 3.4.2.1) on B's outbox and status; its own
    # outbox is accepted. (Each probe logs in as A, so it runs before A's long-lived session below.)
    for leaf in ("outbox", "status"):
        assert await asyncio.to_thread(_publish_reason, dnode.broker_proc.port, a,
                                       f"{BASE}/agents/agent-b/{leaf}") == 0x87
    assert await asyncio.to_thread(_publish_reason, dnode.broker_proc.port, a,
                                   f"{BASE}/agents/agent-a/outbox") < 0x80
    seen: list[tuple[str, bytes]] = []

    async def spy(message: aiomqtt.Message) -> None:
        seen.append((str(message.topic), bytes(message.payload)))

    # The hub's link (service role) records what the broker let through; same filters as the hub's own.
    for leaf in ("outbox", "status"):
        dnode.hub.broker.subscribe(f"{BASE}/agents/+/{leaf}", spy)  # type: ignore[union-attr]
    async with mqtt_agent(dnode, a) as ca, mqtt_agent(dnode, b) as cb:
        await cb.subscribe(f"{BASE}/agents/agent-b/inbox", qos=1)
        await cb.publish(f"{BASE}/agents/agent-b/status", "online", qos=1, retain=True)
        await ca.subscribe(f"{BASE}/agents/agent-a/inbox", qos=1)
        await ca.subscribe(f"{BASE}/agents/agent-b/inbox", qos=1)  # refused (SUBACK 0x87): nothing delivered
        await ca.subscribe(f"{BASE}/#", qos=1)
        forged = {"id": "forged-1", "from": "agent-b", "to": "agent-a", "type": "EVENT", "ts": 1.0, "body": "x"}
        await ca.publish(f"{BASE}/agents/agent-b/outbox", json.dumps(forged), qos=1)
        await ca.publish(f"{BASE}/agents/agent-b/status", "forged-offline", qos=1)
        async with asyncio.timeout(5):
            while not dnode.hub.registry.mqtt_online("agent-b"):  # noqa: ASYNC110 - the registry has no event
                await asyncio.sleep(0.02)
        # A's own outbox is accepted, routed by the hub and delivered to B's inbox.
        real = {"id": "m-1", "from": "agent-a", "to": "agent-b", "type": "REQUEST", "ts": 1.0, "body": {"q": 1}}
        await ca.publish(f"{BASE}/agents/agent-a/outbox", json.dumps(real), qos=1)
        async with asyncio.timeout(5):
            async for message in cb.messages:
                got = json.loads(message.payload)
                break
        assert got["id"] == "m-1" and got["from"] == "agent-a"
        # B's inbox got m-1 before the hub writes A's inbox; A receives the latter and nothing of B's.
        await dnode.hub.broker.publish(f"{BASE}/agents/agent-a/inbox", b'{"marker": 1}', qos=1)  # type: ignore[union-attr]
        received: list[str] = []
        async with asyncio.timeout(5):
            async for message in ca.messages:
                received.append(str(message.topic))
                if str(message.topic).endswith("agent-a/inbox"):
                    break
        assert received == [f"{BASE}/agents/agent-a/inbox"]
    # A's forged publishes never reached a subscriber; its own outbox (published after them) did.
    topics = {t for t, _ in seen}
    assert f"{BASE}/agents/agent-a/outbox" in topics
    assert f"{BASE}/agents/agent-b/outbox" not in topics
    assert all(p == b"online" for t, p in seen if t == f"{BASE}/agents/agent-b/status")
    assert dnode.hub.router.delivered == 1


async def test_revoking_an_agent_removes_its_login(dnode: HubNode) -> None:
    await _settled(dnode)
    a = await dnode.register("agent-a")
    b = await dnode.register("agent-b")
    async with mqtt_agent(dnode, a) as ca:
        await ca.subscribe(f"{BASE}/agents/agent-a/inbox", qos=1)
        status, _, _ = await dnode.call("DELETE", "/v1/agents/agent-a")
        assert status == 204
        # deleteClient also disconnects the live session (the plugin kicks the user).
        with pytest.raises(aiomqtt.MqttError):
            async with asyncio.timeout(5):
                async for _ in ca.messages:
                    pass
    with pytest.raises(aiomqtt.MqttError):
        async with dnode.mqtt(a):
            pass
    async with mqtt_agent(dnode, b):  # the other agent keeps its login
        pass
    resp = await _provisioner(dnode).client.check([{"command": "listClients"}, {"command": "listRoles"}])
    clients = set(resp[0]["data"]["clients"])
    roles = {r for r in resp[1]["data"]["roles"] if r.startswith(AGENT_ROLE_PREFIX)}
    assert "agent-a" not in clients and "agent-b" in clients
    assert roles == {"agent-agent-b"}


async def test_apply_is_idempotent_and_corrects_drift(dnode: HubNode) -> None:
    await _settled(dnode)
    await dnode.register("agent-a", capabilities=["DEVICE_READ"])
    prov = _provisioner(dnode)
    # Someone widens agent-a's role, turns one of its rights into a deny and grants it a second role by
    # hand: the next apply undoes all three.
    await prov.client.check([
        {"command": "addRoleACL", "rolename": "agent-agent-a", "acltype": SEND, "topic": "#", "allow": True},
        {"command": "removeRoleACL", "rolename": "agent-agent-a", "acltype": RECEIVE,
         "topic": f"{BASE}/agents/agent-a/inbox"},
        {"command": "addRoleACL", "rolename": "agent-agent-a", "acltype": RECEIVE,
         "topic": f"{BASE}/agents/agent-a/inbox", "allow": False},
        {"command": "addClientRole", "username": "agent-a", "rolename": SERVICE_ROLE}])
    await prov.apply(dnode.hub.registry.accounts())
    assert prov.last_changes == 4  # removeRoleACL x2 (the "#" and the deny), addRoleACL, removeClientRole
    await prov.apply(dnode.hub.registry.accounts())
    assert prov.last_changes == 0  # nothing left to change: the second apply is a no-op
    resp = await prov.client.check([{"command": "getRole", "rolename": "agent-agent-a"},
                                    {"command": "getClient", "username": "agent-a"},
                                    {"command": "getDefaultACLAccess"}])
    assert all(acl["allow"] for acl in resp[0]["data"]["role"]["acls"])
    have = {(acl["acltype"], acl["topic"]) for acl in resp[0]["data"]["role"]["acls"]}
    assert have == prov.wanted_roles(list(dnode.hub.registry.accounts()))["agent-agent-a"]
    assert (SUBSCRIBE, f"{BASE}/devices/+/telemetry") in have and (SEND, "#") not in have
    assert [r["rolename"] for r in resp[1]["data"]["client"]["roles"]] == ["agent-agent-a"]
    defaults = {d["acltype"]: d["allow"] for d in resp[2]["data"]["acls"]}
    assert defaults == {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                        "unsubscribe": True}
    assert prov.unprovisioned == set()


async def test_account_without_known_password_is_reported_not_invented(dnode: HubNode) -> None:
    await _settled(dnode)
    prov = _provisioner(dnode)
    ghost = BrokerAccount("ghost", "$7$unknown", "ghost", frozenset())
    await prov.apply([*dnode.hub.registry.accounts(), ghost])
    assert prov.unprovisioned == {"ghost"}
    resp = await prov.client.check([{"command": "listClients"}])
    assert "ghost" not in resp[0]["data"]["clients"]
    await prov.apply(dnode.hub.registry.accounts())
    assert prov.unprovisioned == set()


async def test_enrolment_user_registers_over_mqtt(dnode: HubNode) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from tests.hub.conftest import ENROL

    await _settled(dnode)
    creds: dict[str, Any] = {"credentials": {"mqtt": {"username": "enrolment", "password": ENROL}}}
    async with mqtt_agent(dnode, creds) as ce:
        reply = f"{BASE}/agents/register/reply/x1"
        await ce.subscribe(reply, qos=1)
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = reply
        await ce.publish(f"{BASE}/agents/register", json.dumps(
            {"enrolment_token": ENROL, "id": "agent-m", "type": "CLAUDE_CODE", "owner": "alice"}),
            qos=1, properties=props)
        async with asyncio.timeout(5):
            async for message in ce.messages:
                body = json.loads(message.payload)
                break
    assert body["ok"] is True
    async with mqtt_agent(dnode, body):  # the new agent logs in with the password it was handed
        pass


async def test_a_restarted_hub_keeps_agents_it_cannot_recreate(tmp_path: Path,
                                                               dynsec_broker: MosquittoProcess) -> None:
    """The plugin keeps clients across a daemon restart: the new hub, which knows no plain password,
    finds them in place and recreates nothing."""
    first = HubNode(tmp_path, dynsec_broker, None, Clock())  # type: ignore[arg-type]
    first.hub_kwargs = {"broker_dynsec": True, "broker_service_user": SERVICE_USER}
    await first.start()
    try:
        await _settled(first)
        a = await first.register("agent-a")
    finally:
        await first.stop()
    second = HubNode(tmp_path, dynsec_broker, None, Clock())  # type: ignore[arg-type]
    second.hub_kwargs = first.hub_kwargs
    await second.start()
    try:
        await _settled(second)
        assert _provisioner(second).unprovisioned == set()
        async with mqtt_agent(second, a) as ca:
            await ca.subscribe(f"{BASE}/agents/agent-a/inbox", qos=1)
    finally:
        await second.stop()


async def test_an_agent_registered_while_a_reconcile_runs_gets_its_client(dnode: HubNode) -> None:
    """A reconcile started before the registration (e.g. the link's connect hook) must not forget the new
    agent's password: the one after it creates the client with it."""
    await _settled(dnode)
    prov = _provisioner(dnode)
    running = asyncio.create_task(prov._reconcile())
    await asyncio.sleep(0)  # it holds the lock and waits for the plugin's answer to its listings
    late = await dnode.register("agent-late")
    await running
    assert prov.unprovisioned == set()
    async with mqtt_agent(dnode, late) as client:
        await client.publish(f"{BASE}/agents/agent-late/status", "online", qos=1)
