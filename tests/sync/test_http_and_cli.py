"""``GET /v1/sync/status``, ``POST /v1/sync/run`` and ``mycoedge sync status|run`` against a real API server."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import jsonschema
import pytest
from prometheus_client import CollectorRegistry

from daemon import http_sync
from daemon.api import AdminTokenResolver, ApiServer, Readiness, build_app
from daemon.store import Store
from daemon.sync import SyncWorker
from daemon.sync.cli import main as sync_cli
from daemon.upstream import Faults, UpstreamServer

ADMIN = "admin-token-for-tests"


@dataclass
class Node:
    url: str
    worker: SyncWorker


@pytest.fixture
async def node(store: Store, upstream: UpstreamServer) -> AsyncIterator[Node]:
    async with SyncWorker(store, url=upstream.url, interval_s=3600, backoff_initial_s=0.05,
                          backoff_max_s=0.2, batch_max_records=50) as worker:
        app = build_app(tables=[http_sync.routes], resolvers=[AdminTokenResolver(ADMIN)], readiness=Readiness(),
                        registry=CollectorRegistry(), state={http_sync.SYNC_KEY: worker})
        async with ApiServer(app, listen=("127.0.0.1", 0), socket_path=None) as api:
            yield Node(f"http://127.0.0.1:{api.tcp_port}", worker)


async def _get(url: str, token: str | None = ADMIN) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(headers=headers) as s, s.get(url) as r:
        return r.status, await r.json(content_type=None)


async def test_status_reports_pending_records_per_stream_and_needs_the_admin_token(node: Node, store: Store) -> None:
    await node.worker.wait_run(1)
    await store.outbox_append("events", [("e1", b"{}"), ("e2", b"{}")])
    status, doc = await _get(node.url + "/v1/sync/status")
    assert status == 200
    jsonschema.validate(doc, http_sync.STATUS_SCHEMA)
    assert doc["pending"] == 2
    streams = doc["streams"]
    assert isinstance(streams, dict) and streams["events"]["pending"] == 2
    status, problem = await _get(node.url + "/v1/sync/status", token=None)
    assert status == 401 and problem["status"] == 401


async def test_run_endpoint_starts_a_pass_and_returns_the_run_to_wait_for(
    node: Node, store: Store, upstream: UpstreamServer
) -> None:
    await node.worker.wait_run(1)
    await store.outbox_append("audit", [(f"a{i}", b"{}") for i in range(5)])
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"}) as s, \
            s.post(node.url + "/v1/sync/run") as r:
        assert r.status == 202
        doc = await r.json()
    await asyncio.wait_for(node.worker.wait_run(doc["run"]), timeout=10)
    assert (await upstream.state.db.counts()).get("audit") == 5


async def test_cli_run_drains_with_a_progress_bar_through_a_flapping_upstream(
    node: Node, store: Store, upstream: UpstreamServer
) -> None:
    await node.worker.wait_run(1)
    upstream.state.faults = Faults(error_rate=0.3, after_commit_rate=0.2)
    await store.outbox_append("telemetry", [(f"t{i:04d}", b'{"v":1}') for i in range(1000)])
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(sync_cli, ["--url", node.url, "--token", ADMIN, "run", "--timeout", "60"],
                                   out=out, err=err)
    assert code == 0, err.getvalue()
    lines = err.getvalue().splitlines()
    assert lines[-1].startswith("sync [" + "#" * 30 + "] 100.0% 1000/1000 records")
    assert await upstream.state.db.ids("telemetry") == [f"t{i:04d}" for i in range(1000)]

    out = io.StringIO()
    code = await asyncio.to_thread(sync_cli, ["--url", node.url, "--token", ADMIN, "status"], out=out, err=err)
    assert code == 0
    assert "telemetry" in out.getvalue() and "state      idle" in out.getvalue()
    out = io.StringIO()
    await asyncio.to_thread(sync_cli, ["--url", node.url, "--token", ADMIN, "status", "--json"], out=out, err=err)
    assert json.loads(out.getvalue())["streams"]["telemetry"]["sent"] == 1000


async def test_cli_reports_a_wrong_token_in_one_line(node: Node) -> None:
    err = io.StringIO()
    code = await asyncio.to_thread(sync_cli, ["--url", node.url, "--token", "nope", "status"],
                                   out=io.StringIO(), err=err)
    assert code == 1
    assert "HTTP 401" in err.getvalue() and len(err.getvalue().splitlines()) == 1


async def test_routes_answer_409_without_a_worker() -> None:
    app = build_app(tables=[http_sync.routes], resolvers=[AdminTokenResolver(ADMIN)], readiness=Readiness(),
                    registry=CollectorRegistry())
    async with ApiServer(app, listen=("127.0.0.1", 0), socket_path=None) as api:
        status, doc = await _get(f"http://127.0.0.1:{api.tcp_port}/v1/sync/status")
    assert status == 409 and str(doc["type"]).endswith("sync-disabled")
