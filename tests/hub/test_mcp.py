"""MCP over streamable HTTP at /mcp with the official SDK client: same auth, gates and isolation."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.hub.conftest import HubNode


async def _call(node: HubNode, token: str, tool: str, args: dict[str, Any]) -> tuple[bool, Any]:
    # Plain HTTP on loopback: no TLS context to build (loading CA bundles would block the loop).
    http = await asyncio.to_thread(httpx2.AsyncClient, headers={"Authorization": f"Bearer {token}"}, timeout=10,
                                   verify=False)
    async with http, streamable_http_client(node.base + "/mcp", http_client=http) as streams, \
            ClientSession(streams[0], streams[1]) as session:
        await session.initialize()
        result = await session.call_tool(tool, args)
        text = result.content[0].text if result.content else ""  # type: ignore[union-attr]
        return bool(result.is_error), (text if result.is_error else json.loads(text))


async def test_mcp_tools_use_the_same_gates(node: HubNode) -> None:
    a = await node.register("agent-a", type="HUMAN")
    b = await node.register("agent-b")
    atok, btok = a["credentials"]["api_token"], b["credentials"]["api_token"]
    err, me = await _call(node, atok, "whoami", {})
    assert not err and me["id"] == "agent-a" and me["trust_level"] == 1
    err, text = await _call(node, atok, "write_memory", {"content": "secret plan"})
    assert err and "403" in text  # level 1 < write_own 2
    node.trust.grant("agent-a", 2, expires_at=None, basis="test")
    err, item = await _call(node, atok, "write_memory", {"content": "secret plan"})
    assert not err
    node.trust.grant("agent-b", 5, expires_at=None, basis="test")
    err, text = await _call(node, btok, "read_memory", {"memory_id": item["id"]})
    assert err and "403" in text
    err, sent = await _call(node, atok, "send_message", {"to": "agent-b", "type": "EVENT", "body": {"x": 1}})
    assert not err and sent["outcomes"] == {"agent-b": "queued"}
    err, inbox = await _call(node, btok, "fetch_inbox", {})
    assert not err and inbox["messages"][0]["from"] == "agent-a"
    err, handoff = await _call(node, atok, "initiate_handoff", {"target": "agent-b", "task": "review"})
    assert not err and handoff["state"] == "pending"
    err, text = await _call(node, atok, "handoff_action", {"handoff_id": handoff["id"], "action": "accept"})
    assert err and "403" in text
    err, done = await _call(node, btok, "handoff_action", {"handoff_id": handoff["id"], "action": "accept"})
    assert not err and done["state"] == "accepted"


async def test_mcp_needs_a_token(node: HubNode) -> None:
    status, body, _ = await node.call("POST", "/mcp", token=None, json={"jsonrpc": "2.0", "id": 1,
                                                                        "method": "tools/list"})
    assert status == 401 and body["status"] == 401
