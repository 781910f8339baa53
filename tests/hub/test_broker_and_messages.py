"""Broker-enforced isolation with real Mosquitto (no anonymous access), routing, queueing and dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from daemon.hub.broker_auth import password_hash
from tests.hub.conftest import BASE, HubNode, mqtt_agent


async def _next(client: aiomqtt.Client, timeout: float = 5.0) -> Any:
    async with asyncio.timeout(timeout):
        async for message in client.messages:
            return json.loads(message.payload)
    return None


def test_password_hash_matches_mosquitto_format() -> None:
    import base64
    import hashlib

    line = password_hash("secret", salt=b"0123456789ab")
    _, algo, iterations, _salt, digest = line.split("$")
    assert (algo, iterations) == ("7", "101")
    assert base64.b64decode(digest) == hashlib.pbkdf2_hmac("sha512", b"secret", b"0123456789ab", 101)


async def test_agent_cannot_read_another_inbox_or_publish_as_it(node: HubNode) -> None:
    a = await node.register("agent-a")
    b = await node.register("agent-b")
    async with mqtt_agent(node, a) as ca, mqtt_agent(node, b) as cb:
        await cb.subscribe(f"{BASE}/agents/agent-b/inbox", qos=1)
        await cb.publish(f"{BASE}/agents/agent-b/status", "online", qos=1, retain=True)
        # Mosquitto 2.0.11 grants the SUBACK but checks the ACL on every delivery (mosquitto.conf(5)
        # "acl_file"): A's subscriptions to B's inbox and to everything receive none of B's messages.
        await ca.subscribe(f"{BASE}/agents/agent-b/inbox", qos=1)
        await ca.subscribe(f"{BASE}/#", qos=1)
        # A publishes "as B" on B's outbox: the broker drops it, so the hub never routes it.
        forged = {"id": "forged-1", "from": "agent-b", "to": "agent-a", "type": "EVENT", "ts": 1.0, "body": "x"}
        await ca.publish(f"{BASE}/agents/agent-b/outbox", json.dumps(forged), qos=1)
        # A legitimate message from A to B arrives in B's inbox stamped from A.
        real = {"id": "m-1", "from": "agent-a", "to": "agent-b", "type": "REQUEST", "ts": 1.0, "body": {"q": 1}}
        for _ in range(50):
            if node.hub.registry.mqtt_online("agent-b"):
                break
            await asyncio.sleep(0.02)
        await ca.publish(f"{BASE}/agents/agent-a/outbox", json.dumps(real), qos=1)
        got = await _next(cb)
        assert got["id"] == "m-1" and got["from"] == "agent-a"
        # A saw nothing of B's inbox through its wildcard (only its own outbox/status echo is readable: none).
        leaked = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                async for message in ca.messages:
                    if str(message.topic).startswith(f"{BASE}/agents/agent-b/"):
                        leaked.append(message.topic)
        assert leaked == []
        assert node.hub.router.delivered == 1


def _publish_reason(port: int, creds: dict[str, Any], topic: str) -> int:
    """The PUBACK reason code the broker gives this agent for a QoS 1 publish (paho, own thread, joined)."""
    mq = creds["credentials"]["mqtt"]
    done = threading.Event()
    codes: list[int] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=mq["username"], protocol=mqtt.MQTTv5)
    client.username_pw_set(mq["username"], mq["password"])

    def on_publish(_c: mqtt.Client, _u: Any, _mid: int, rc: Any, _p: Any) -> None:
        codes.append(rc.value)
        done.set()

    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, b"{}", qos=1)
        assert done.wait(5), "no PUBACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return codes[0]


async def test_broker_refuses_publishing_on_another_agents_topics(node: HubNode) -> None:
    a = await node.register("agent-a")
    await node.register("agent-b")
    async with mqtt_agent(node, a):
        pass  # the credentials are live once a connect succeeds
    # MQTT 5 PUBACK 0x87 "Not authorized" (MQTT 5.0 section 3.4.2.1) for B's outbox, status and inbox.
    for leaf in ("outbox", "status", "inbox"):
        assert await asyncio.to_thread(_publish_reason, node.broker_proc.port, a,
                                       f"{BASE}/agents/agent-b/{leaf}") == 0x87
    # Its own outbox is accepted (0x10 "No matching subscribers" is a success code, 0x00 too).
    assert await asyncio.to_thread(_publish_reason, node.broker_proc.port, a, f"{BASE}/agents/agent-a/outbox") < 0x80


async def test_wrong_password_is_refused_by_the_broker(node: HubNode) -> None:
    a = await node.register("agent-a")
    a["credentials"]["mqtt"]["password"] = "wrong"
    client = node.mqtt(a)
    with pytest.raises(aiomqtt.MqttError):
        async with client:
            pass


async def test_offline_agent_gets_queued_messages_on_reconnect(node: HubNode) -> None:
    a = await node.register("agent-a")
    b = await node.register("agent-b")
    for i in range(3):
        status, body, _ = await node.call("POST", "/v1/messages", token=a["credentials"]["api_token"],
                                          json={"to": "agent-b", "type": "EVENT", "body": {"n": i}})
        assert status == 202 and body["outcomes"] == {"agent-b": "queued"}
    assert await node.hub.router.pending_count("agent-b") == 3
    async with mqtt_agent(node, b) as cb:
        await cb.subscribe(f"{BASE}/agents/agent-b/inbox", qos=1)
        await cb.publish(f"{BASE}/agents/agent-b/status", "online", qos=1, retain=True)
        got = [await _next(cb) for _ in range(3)]
    assert [g["body"]["n"] for g in got] == [0, 1, 2]
    assert all(g["from"] == "agent-a" for g in got)
    assert await node.hub.router.pending_count("agent-b") == 0


async def test_expired_messages_are_dead_lettered_and_counted(node: HubNode) -> None:
    a = await node.register("agent-a")
    await node.register("agent-c")
    tok = a["credentials"]["api_token"]
    await node.call("POST", "/v1/messages", token=tok, json={"to": "agent-c", "type": "EVENT", "ttl_s": 1, "body": 1})
    await node.call("POST", "/v1/messages", token=tok, json={"to": "agent-c", "type": "EVENT", "ttl_s": 600, "body": 2})
    node.clock.advance(5)
    await node.hub.sweep()
    status, dead, _ = await node.call("GET", "/v1/messages/dead-letters")
    assert status == 200 and dead["count"] == 1 and dead["items"][0]["envelope"]["body"] == 1
    # The live one is still there for the HTTP-only agent.
    c_tok = (await node.call("GET", "/v1/agents/agent-c"))[1]
    assert c_tok["id"] == "agent-c"


async def test_http_agent_fetches_its_inbox_and_no_one_else_can(node: HubNode) -> None:
    a = await node.register("agent-a")
    c = await node.register("agent-c")
    await node.call("POST", "/v1/messages", token=a["credentials"]["api_token"],
                    json={"to": "agent-c", "type": "COMMAND", "body": {"do": "x"}})
    status, _, _ = await node.call("GET", "/v1/agents/agent-c/inbox", token=a["credentials"]["api_token"])
    assert status == 403
    status, body, _ = await node.call("GET", "/v1/agents/agent-c/inbox", token=c["credentials"]["api_token"])
    assert status == 200 and [m["body"] for m in body["messages"]] == [{"do": "x"}]
    status, body, _ = await node.call("GET", "/v1/agents/agent-c/inbox", token=c["credentials"]["api_token"])
    assert body["messages"] == []


async def test_request_response_correlation_over_http_and_mqtt(node: HubNode) -> None:
    a = await node.register("agent-a")
    b = await node.register("agent-b")
    m = await node.register("agent-m")
    async with mqtt_agent(node, b) as cb:
        await cb.subscribe(f"{BASE}/agents/agent-b/inbox", qos=1)
        await cb.publish(f"{BASE}/agents/agent-b/status", "online", qos=1, retain=True)
        for _ in range(500):
            if node.hub.registry.mqtt_online("agent-b"):
                break
            await asyncio.sleep(0.01)
        ask = asyncio.create_task(node.call("POST", "/v1/messages", token=a["credentials"]["api_token"], json={
            "id": "req-1", "to": "agent-b", "type": "REQUEST", "body": "ping", "wait_s": 5}))
        request = await _next(cb)
        assert request["id"] == "req-1"
        # A third agent cannot forge the answer.
        status, _, _ = await node.call("POST", "/v1/messages", token=m["credentials"]["api_token"], json={
            "to": "agent-a", "type": "RESPONSE", "correlation_id": "req-1", "body": "forged"})
        assert status == 403
        answer = {"id": "resp-1", "from": "agent-b", "to": "agent-a", "type": "RESPONSE", "ts": 2.0,
                  "correlation_id": "req-1", "body": "pong"}
        await cb.publish(f"{BASE}/agents/agent-b/outbox", json.dumps(answer), qos=1)
        status, body, _ = await ask
    assert status == 200 and body["response"]["body"] == "pong"


async def test_broadcast_reaches_every_other_agent(node: HubNode) -> None:
    h = await node.register("human-1", type="HUMAN")
    await node.register("agent-x")
    p = await node.register("pipe-1", type="CUSTOM_PIPELINE")
    status, body, _ = await node.call("POST", "/v1/messages", token=h["credentials"]["api_token"],
                                      json={"to": "*", "type": "BROADCAST", "body": "hello"})
    assert status == 202 and set(body["outcomes"]) == {"agent-x", "pipe-1"}
    status, _, _ = await node.call("POST", "/v1/messages", token=p["credentials"]["api_token"],
                                   json={"to": "*", "type": "BROADCAST", "body": "nope"})
    assert status == 403


async def test_liveness_follows_status_and_last_will(node: HubNode) -> None:
    b = await node.register("agent-b")
    will = aiomqtt.Will(f"{BASE}/agents/agent-b/status", "offline", qos=1, retain=True)
    async with mqtt_agent(node, b, will=will, keepalive=1) as cb:
        await cb.publish(f"{BASE}/agents/agent-b/status", "online", qos=1, retain=True)
        for _ in range(100):
            if node.hub.registry.online("agent-b"):
                break
            await asyncio.sleep(0.02)
        _, body, _ = await node.call("GET", "/v1/agents/agent-b")
        assert body["status"] == "online"
        # Drop the TCP connection without DISCONNECT: the broker publishes the will.
        cb._client._sock_close()
        for _ in range(200):
            if not node.hub.registry.mqtt_online("agent-b"):
                break
            await asyncio.sleep(0.02)
    assert not node.hub.registry.mqtt_online("agent-b")


async def test_queue_and_dead_letter_count_survive_a_restart(node: HubNode) -> None:
    a = await node.register("agent-a")
    b = await node.register("agent-b")
    tok = a["credentials"]["api_token"]
    await node.call("POST", "/v1/messages", token=tok, json={"to": "agent-b", "type": "EVENT", "ttl_s": 1, "body": 0})
    await node.call("POST", "/v1/messages", token=tok, json={"to": "agent-b", "type": "EVENT", "body": "kept"})
    node.clock.advance(5)
    await node.hub.sweep()
    await node.stop()
    await node.start()
    status, dead, _ = await node.call("GET", "/v1/messages/dead-letters")
    assert status == 200 and dead["count"] == 1
    async with mqtt_agent(node, b) as cb:
        await cb.subscribe(f"{BASE}/agents/agent-b/inbox", qos=1)
        await cb.publish(f"{BASE}/agents/agent-b/status", "online", qos=1, retain=True)
        got = await _next(cb)
    assert got["body"] == "kept" and got["from"] == "agent-a"


async def test_mqtt_sender_over_its_rate_gets_an_ack_with_the_refusal(node: HubNode) -> None:
    from daemon.hub.defences import RateLimiter

    a = await node.register("agent-a")
    await node.register("agent-b")
    node.hub.agent_limits = RateLimiter(rate=0.01, burst=1)
    async with mqtt_agent(node, a) as ca:
        await ca.subscribe(f"{BASE}/agents/agent-a/inbox", qos=1)
        for i in range(2):
            await ca.publish(f"{BASE}/agents/agent-a/outbox", json.dumps(
                {"id": f"r{i}", "from": "agent-a", "to": "agent-b", "type": "EVENT", "ts": 1.0, "body": i}), qos=1)
        ack = await _next(ca)
    assert ack["type"] == "ACK" and ack["correlation_id"] == "r1"
    assert ack["body"]["error"] == "rate-limited" and ack["body"]["retry_after_s"] > 0
    assert await node.hub.router.pending_count("agent-b") == 1


async def test_a_flush_cut_short_keeps_the_rest_in_place_with_its_own_ttl(node: HubNode) -> None:
    """A queued message leaves the queue only once the broker has it: the rest keeps its order and expiry."""
    a = await node.register("agent-a")
    await node.register("agent-b")
    for i in range(5):
        status, _, _ = await node.call("POST", "/v1/messages", token=a["credentials"]["api_token"],
                                       json={"to": "agent-b", "type": "EVENT", "ttl_s": 600, "body": {"n": i}})
        assert status == 202

    async def expiries() -> list[tuple[int, float]]:
        return await node.hub.db.write(lambda c: c.execute(
            "SELECT seq, expires FROM message_queue WHERE target = 'agent-b' ORDER BY seq").fetchall())

    before = await expiries()

    router = node.hub.router
    real = router._publish
    assert real is not None
    published: list[bytes] = []

    async def broker_lost_after_two(topic: str, payload: bytes, qos: int) -> bool:
        if len(published) >= 2:
            return False  # what BrokerLink.publish answers once the broker is gone
        published.append(payload)
        return await real(topic, payload, qos)

    router._publish = broker_lost_after_two
    node.clock.advance(30)  # a later flush must not give the rest a fresh TTL
    node.hub.registry.set_mqtt_online("agent-b", True)  # the hub starts a flush itself, as on a reconnect
    await router.flush("agent-b")  # waits for that one, then finds the broker still gone
    assert [json.loads(p)["body"]["n"] for p in published] == [0, 1]
    assert await router.pending_count("agent-b") == 3
    assert await expiries() == before[2:]  # same rows: same seq (place) and same expiry
    assert [e.body["n"] for e in await router.take("agent-b")] == [2, 3, 4]
