"""The store's HTTP routes through the real API stack (auth, problem+json, schema validation)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from daemon import http_store
from daemon.api import AdminTokenResolver, ApiServer, Principal, Readiness, build_app
from daemon.store import Store

CAPS = frozenset({"MEMORY_READ", "MEMORY_WRITE", "MEMORY_DELETE"})


class AgentTokens:
    async def resolve(self, token: str) -> Principal | None:
        return {
            "tok-a": Principal("agent", "agent-a", 2, CAPS),
            "tok-b": Principal("agent", "agent-b", 2, CAPS),
            "tok-ro": Principal("agent", "agent-ro", 2, frozenset({"MEMORY_READ"})),
        }.get(token)


@pytest.fixture
async def api(store: Store) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    app = build_app(
        tables=[http_store.routes], resolvers=[AdminTokenResolver("admin-secret"), AgentTokens()],
        readiness=Readiness(), registry=CollectorRegistry(), state={http_store.STORE_KEY: store},
    )
    async with ApiServer(app, listen=("127.0.0.1", 0), socket_path=None) as server, aiohttp.ClientSession() as s:
        yield f"http://127.0.0.1:{server.tcp_port}", s


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_memory_crud_and_ownership(api: tuple[str, aiohttp.ClientSession], store: Store) -> None:
    base, s = api
    async with s.post(f"{base}/v1/memories", json={"content": "pins forming", "vector": [1, 0, 0, 0]},
                      headers=auth("tok-a")) as r:
        assert r.status == 201
        item = await r.json()
    assert item["owner_id"] == "agent-a" and item["visibility"] == "private"
    async with s.get(f"{base}/v1/memories/{item['id']}", headers=auth("tok-b")) as r:
        assert r.status == 404  # private to agent-a: agent-b may not even learn it exists
        assert r.content_type == "application/problem+json"
    async with s.patch(f"{base}/v1/memories/{item['id']}", json={"visibility": "public"}, headers=auth("tok-a")) as r:
        assert r.status == 200 and (await r.json())["visibility"] == "public"
    async with s.get(f"{base}/v1/memories/{item['id']}", headers=auth("tok-b")) as r:
        assert r.status == 200
    async with s.delete(f"{base}/v1/memories/{item['id']}", headers=auth("tok-b")) as r:
        assert r.status == 404
    async with s.get(f"{base}/v1/memories", headers=auth("tok-b")) as r:
        assert [m["id"] for m in (await r.json())["memories"]] == [item["id"]]
    async with s.delete(f"{base}/v1/memories/{item['id']}", headers=auth("tok-a")) as r:
        assert r.status == 204
    kinds = [rec.kind for rec in await store.audit_list()]
    assert "permission_denied" in kinds and "cross_agent_read" in kinds


async def test_search_applies_access_rules_inside_the_query(api: tuple[str, aiohttp.ClientSession]) -> None:
    base, s = api
    for token, content, vis, vec in [("tok-a", "oyster humidity high", "private", [1, 0, 0, 0]),
                                     ("tok-b", "oyster humidity low", "public", [0.9, 0.1, 0, 0]),
                                     ("tok-b", "oyster secret", "private", [1, 0, 0, 0])]:
        async with s.post(f"{base}/v1/memories", json={"content": content, "visibility": vis, "vector": vec},
                          headers=auth(token)) as r:
            assert r.status == 201
    async with s.post(f"{base}/v1/memories/search", json={"text": "oyster", "vector": [1, 0, 0, 0], "limit": 10},
                      headers=auth("tok-a")) as r:
        assert r.status == 200
        results = (await r.json())["results"]
    assert sorted(h["memory"]["content"] for h in results) == ["oyster humidity high", "oyster humidity low"]
    async with s.post(f"{base}/v1/memories/search", json={"text": "oyster"}, headers=auth("admin-secret")) as r:
        assert len((await r.json())["results"]) == 3
    async with s.post(f"{base}/v1/memories/search", json={"limit": 3}, headers=auth("tok-a")) as r:
        assert r.status == 422


async def test_missing_capability_and_bad_bodies(api: tuple[str, aiohttp.ClientSession]) -> None:
    base, s = api
    async with s.post(f"{base}/v1/memories", json={"content": "x"}, headers=auth("tok-ro")) as r:
        assert r.status == 403
    async with s.post(f"{base}/v1/memories", json={"content": "x", "type": "forever"}, headers=auth("tok-a")) as r:
        assert r.status == 422
    async with s.post(f"{base}/v1/memories", json={"content": "x"}) as r:
        assert r.status == 401
    async with s.post(f"{base}/v1/memories", json={"content": "x", "vector": [1, 2]}, headers=auth("tok-a")) as r:
        assert r.status == 422  # wrong dimension, found by the store


async def test_maif_blocks_verify_and_audit(api: tuple[str, aiohttp.ClientSession]) -> None:
    base, s = api
    async with s.post(f"{base}/v1/maif/blocks", json={"fourcc": "TEXT", "text": "hello", "metadata": {"k": 1}},
                      headers=auth("tok-a")) as r:
        assert r.status == 201
        first = await r.json()
    payload = base64.b64encode(b"\x00\x01").decode()
    async with s.post(f"{base}/v1/maif/blocks", json={"fourcc": "BINA", "payload_b64": payload},
                      headers=auth("tok-a")) as r:
        second = await r.json()
    assert second["prev_hash"] == first["chain_hash"] and second["seq"] == first["seq"] + 1
    async with s.get(f"{base}/v1/maif/blocks?after=0&limit=10", headers=auth("tok-b")) as r:
        listed = await r.json()
    assert [b["block_id"] for b in listed["blocks"]] == [first["block_id"], second["block_id"]]
    assert base64.b64decode(listed["blocks"][0]["payload_b64"]) == b"hello"
    async with s.post(f"{base}/v1/maif/verify", headers=auth("tok-a")) as r:
        assert r.status == 403
    async with s.post(f"{base}/v1/maif/verify", headers=auth("admin-secret")) as r:
        report = await r.json()
    assert report["ok"] and report["checked"] == 2
    async with s.get(f"{base}/v1/audit", headers=auth("admin-secret")) as r:
        assert r.status == 200
        assert "records" in await r.json()
    async with s.get(f"{base}/v1/audit", headers=auth("tok-a")) as r:
        assert r.status == 403
    async with s.get(f"{base}/openapi.json") as r:
        paths = (await r.json())["paths"]
    assert {"/v1/memories", "/v1/memories/{id}", "/v1/memories/search", "/v1/maif/blocks", "/v1/maif/verify",
            "/v1/audit"} <= set(paths)
