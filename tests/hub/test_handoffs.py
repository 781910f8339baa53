"""Handoffs: every state survives a restart; idempotent transitions; only the named target accepts."""

from __future__ import annotations

import json

import aiomqtt

from tests.hub.conftest import BASE, HubNode, mqtt_agent


async def _initiate(node: HubNode, tok: str, hid: str, target: str = "agent-b", **extra: object) -> dict[str, object]:
    status, body, _ = await node.call("POST", "/v1/handoffs", token=tok,
                                      json={"id": hid, "target": target, "context": {"task": hid}, **extra})
    assert status == 201, body
    return body  # type: ignore[no-any-return]


async def test_each_state_survives_a_restart(node: HubNode) -> None:
    a = (await node.register("agent-a"))["credentials"]["api_token"]
    b = (await node.register("agent-b"))["credentials"]["api_token"]
    for hid in ("h-pending", "h-accepted", "h-completed", "h-rejected", "h-cancelled"):
        await _initiate(node, a, hid)
    await _initiate(node, a, "h-expired", expires_in_s=1)
    assert (await node.call("POST", "/v1/handoffs/h-accepted/accept", token=b, json={}))[0] == 200
    assert (await node.call("POST", "/v1/handoffs/h-completed/accept", token=b, json={}))[0] == 200
    assert (await node.call("POST", "/v1/handoffs/h-completed/complete", token=b, json={"result": {"ok": 1}}))[0] == 200
    assert (await node.call("POST", "/v1/handoffs/h-rejected/reject", token=b, json={"reason": "busy"}))[0] == 200
    assert (await node.call("POST", "/v1/handoffs/h-cancelled/cancel", token=a, json={}))[0] == 200
    node.clock.advance(5)
    await node.hub.sweep()
    await node.stop()
    await node.start()
    expected = {"h-pending": "pending", "h-accepted": "accepted", "h-completed": "completed",
                "h-rejected": "rejected", "h-cancelled": "cancelled", "h-expired": "expired"}
    for hid, state in expected.items():
        status, body, _ = await node.call("GET", f"/v1/handoffs/{hid}", token=b)
        assert status == 200 and body["state"] == state, (hid, body)
    status, body, _ = await node.call("GET", "/v1/agents/agent-b/handoffs?state=pending", token=b)
    assert [h["id"] for h in body["handoffs"]] == ["h-pending"]
    # Transitions still work after the restart, and final states stay final.
    assert (await node.call("POST", "/v1/handoffs/h-accepted/complete", token=b, json={}))[0] == 200
    assert (await node.call("POST", "/v1/handoffs/h-rejected/accept", token=b, json={}))[0] == 409
    assert (await node.call("POST", "/v1/handoffs/h-expired/accept", token=b, json={}))[0] == 409


async def test_transitions_are_idempotent_and_only_the_target_accepts(node: HubNode) -> None:
    a = (await node.register("agent-a"))["credentials"]["api_token"]
    b = (await node.register("agent-b"))["credentials"]["api_token"]
    m = (await node.register("agent-m"))["credentials"]["api_token"]
    await _initiate(node, a, "h-1")
    # Re-initiating the same id with the same content is a no-op (200), with another target a conflict.
    status, _, _ = await node.call("POST", "/v1/handoffs", token=a,
                                   json={"id": "h-1", "target": "agent-b", "context": {"task": "h-1"}})
    assert status == 200
    assert (await node.call("POST", "/v1/handoffs/h-1/accept", token=a, json={}))[0] == 403  # initiator
    assert (await node.call("POST", "/v1/handoffs/h-1/accept", token=m, json={}))[0] == 404  # outsider
    status, first, _ = await node.call("POST", "/v1/handoffs/h-1/accept", token=b, json={})
    status2, again, _ = await node.call("POST", "/v1/handoffs/h-1/accept", token=b, json={})
    assert (status, status2) == (200, 200) and first["changed"] and not again["changed"]
    assert len(again["history"]) == 2
    assert (await node.call("POST", "/v1/handoffs/h-1/cancel", token=b, json={}))[0] == 403


async def test_handoff_notifications_on_mqtt(node: HubNode) -> None:
    a = (await node.register("agent-a"))["credentials"]["api_token"]
    b = await node.register("agent-b")
    async with mqtt_agent(node, b) as cb:
        await cb.subscribe(f"{BASE}/handoffs/+", qos=1)
        await _initiate(node, a, "h-n")
        async for message in cb.messages:
            body = json.loads(message.payload)
            if body["id"] == "h-n":
                assert body["state"] == "pending" and "context" not in body
                break
    assert isinstance(cb, aiomqtt.Client)


async def test_pipeline_cannot_initiate(node: HubNode) -> None:
    p = (await node.register("pipe-1", type="CUSTOM_PIPELINE"))["credentials"]["api_token"]
    await node.register("agent-b")
    status, body, _ = await node.call("POST", "/v1/handoffs", token=p, json={"target": "agent-b"})
    assert status == 403 and "HANDOFF_INITIATE" in body["detail"]
