"""The HTTP API surface: OpenAPI matches the real routes, errors are problem documents, auth is enforced."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon import app as app_mod
from daemon.mosquitto import free_port
from tests.harness import RunningNode, node_config, running_node


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[RunningNode]:
    raw = node_config(tmp_path, node={"id": "api-test"}, discovery={"mdns": True, "mdns_interfaces": "127.0.0.1"})
    async with running_node(raw) as running:
        yield running


async def _json(resp: aiohttp.ClientResponse) -> Any:
    return await resp.json(content_type=None)


async def test_openapi_documents_exactly_the_served_routes(node: RunningNode) -> None:
    async with aiohttp.ClientSession() as session, session.get(node.url + "/openapi.json") as resp:
        doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    # The routes the running daemon's aiohttp router actually serves.
    served = set()
    assert node.node.api is not None
    for route in node.node.api.app.router.routes():
        if route.method == "HEAD":
            continue
        canonical = route.resource.canonical if route.resource else ""
        served.add((route.method, re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", canonical)))
    assert documented == served
    for path, ops in doc["paths"].items():
        for op in ops.values():
            assert op["responses"], path


async def test_unknown_route_is_a_problem_document(node: RunningNode) -> None:
    async with aiohttp.ClientSession() as session, session.get(node.url + "/nope") as resp:
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"
        body = await _json(resp)
    assert body["status"] == 404 and body["title"] and body["type"].endswith("not-found")


async def test_metrics_are_prometheus_text(node: RunningNode) -> None:
    async with aiohttp.ClientSession() as session, session.get(node.url + "/metrics") as resp:
        text = await resp.text()
    assert resp.status == 200
    assert "mycoedge_build_info{" in text
    assert "# TYPE mycoedge_http_requests_total counter" in text


async def test_readyz_over_the_unix_socket(node: RunningNode) -> None:
    connector = aiohttp.UnixConnector(path=str(node.config.socket_path))
    async with aiohttp.ClientSession(connector=connector) as session, session.get("http://node/readyz") as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ready"
    assert node.config.socket_path.stat().st_mode & 0o777 == 0o660


async def test_readyz_names_the_component_that_is_not_ready(tmp_path: Path) -> None:
    app_mod.READY_WAIT_FOR_BROKER_S = 0.1
    raw = node_config(tmp_path, mqtt={"enabled": True, "port": free_port(), "reconnect_max_s": 0.2})
    async with running_node(raw) as node, aiohttp.ClientSession() as session, \
            session.get(node.url + "/readyz") as resp:
        body = await _json(resp)
        assert resp.status == 503
    assert "mqtt" in body["components"]
    assert "mqtt" in body["detail"]


async def test_the_node_is_announced_over_mdns_with_its_txt(node: RunningNode) -> None:
    from zeroconf import ServiceStateChange
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

    port = int(node.url.rsplit(":", 1)[1])
    found: asyncio.Queue[str] = asyncio.Queue()

    def on_change(zeroconf: object, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Added:
            found.put_nowait(name)

    zc = AsyncZeroconf(interfaces=["127.0.0.1"])
    browser = AsyncServiceBrowser(zc.zeroconf, "_mycoedge._tcp.local.", handlers=[on_change])
    try:
        async with asyncio.timeout(15):
            while True:
                name = await found.get()
                info = AsyncServiceInfo("_mycoedge._tcp.local.", name)
                if await info.async_request(zc.zeroconf, 3000) and info.port == port:
                    break
        txt = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
        assert txt["node_id"] == "api-test"
        assert txt["api_port"] == str(port)
        assert txt["trust"] and txt["version"]
    finally:
        await browser.async_cancel()
        await zc.async_close()
