"""The reference upstream: ingest contract, read-back, fault control by flags and at run time, OpenAPI."""

from __future__ import annotations

import asyncio
import gzip
import json
import random
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from daemon.sync.wire import encode_batch
from daemon.upstream import Faults, Outcome, UpstreamServer
from daemon.upstream.app import make_app
from daemon.upstream.errors import UpstreamConfigError
from daemon.upstream.faults import decide
from daemon.upstream.openapi import spec
from daemon.upstream.server import main as upstream_main
from tests.sync.conftest import ROOT, start_upstream, stop_process
from tests.sync.test_wire import Rec


def _batch(stream: str, ids: list[str]) -> tuple[bytes, dict[str, str]]:
    encoded = encode_batch("node", stream, [Rec(i, stream, rid, b'{"x":1}', 1.5) for i, rid in enumerate(ids, 1)])
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip",
               "Idempotency-Key": encoded.idempotency_key}
    return encoded.body, headers


async def test_ingest_stores_once_per_id_in_first_seen_order_and_replays_by_key(upstream: UpstreamServer) -> None:
    async with aiohttp.ClientSession() as s:
        body, headers = _batch("events", ["a", "b", "c"])
        async with s.post(upstream.url + "/v1/ingest", data=body, headers=headers) as r:
            assert r.status == 200
            first = await r.json()
        async with s.post(upstream.url + "/v1/ingest", data=body, headers=headers) as r:
            assert r.headers["Idempotent-Replayed"] == "true"
            assert await r.json() == first == {"stream": "events", "accepted": 3, "duplicates": 0, "received": 3}
        body, headers = _batch("events", ["b", "c", "d"])  # overlapping retry with a new tail
        async with s.post(upstream.url + "/v1/ingest", data=body, headers=headers) as r:
            assert await r.json() == {"stream": "events", "accepted": 1, "duplicates": 2, "received": 3}
        async with s.get(upstream.url + "/v1/streams/events/records?after=1&limit=2") as r:
            page = await r.json()
        async with s.get(upstream.url + "/v1/streams") as r:
            assert await r.json() == {"streams": {"events": 4}, "total": 4}
        async with s.get(upstream.url + "/v1/streams/events/count") as r:
            assert (await r.json())["count"] == 4
    assert [rec["id"] for rec in page["records"]] == ["b", "c"]
    assert page["records"][0]["payload"] == {"x": 1} and page["next_after"] == page["records"][-1]["pos"]


async def test_bad_batches_get_problem_documents(upstream: UpstreamServer) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(upstream.url + "/v1/ingest", data=gzip.compress(b"{not json"),
                          headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}) as r:
            assert r.status == 400
            assert r.content_type == "application/problem+json"
            assert "not JSON" in (await r.json())["detail"]
        async with s.post(upstream.url + "/v1/ingest", data=b"x", headers={"Content-Type": "text/plain"}) as r:
            assert r.status == 415
    assert upstream.state.counters["rejected"] == 1


async def test_tokens_guard_ingest_and_admin_separately(tmp_path: Path) -> None:
    async with UpstreamServer(tmp_path / "u.db", token="t", admin_token="adm") as up, aiohttp.ClientSession() as s:
        body, headers = _batch("audit", ["a"])
        async with s.post(up.url + "/v1/ingest", data=body, headers=headers) as r:
            assert r.status == 401 and "Bearer" in r.headers["WWW-Authenticate"]
        async with s.put(up.url + "/admin/faults", json={"error_rate": 1}, headers={"Authorization": "Bearer t"}) as r:
            assert r.status == 401
        async with s.put(up.url + "/admin/faults", json={"error_rate": 1},
                         headers={"Authorization": "Bearer adm"}) as r:
            assert r.status == 200
        async with s.get(up.url + "/healthz") as r:
            assert r.status == 200


async def test_faults_from_flags_can_be_flipped_at_run_time(tmp_path: Path) -> None:
    up = await asyncio.to_thread(start_upstream, tmp_path / "u.db", "--error-rate", "1", "--latency", "0.01",
                                 "--latency-rate", "1")
    try:
        assert await up.get("/admin/faults") == {**Faults().to_json(), "error_rate": 1.0, "latency_s": 0.01,
                                                 "latency_rate": 1.0}
        body, headers = _batch("events", ["a"])
        async with aiohttp.ClientSession() as s:
            async with s.post(up.url + "/v1/ingest", data=body, headers=headers) as r:
                assert r.status == 503
            await up.set_faults(throttle_rate=1.0, retry_after_s=3)
            async with s.post(up.url + "/v1/ingest", data=body, headers=headers) as r:
                assert r.status == 429 and r.headers["Retry-After"] == "3"
            async with s.put(up.url + "/admin/faults", json={"error_rate": 2}) as r:
                assert r.status == 422
            async with s.put(up.url + "/admin/faults", json={"nonsense": 1}) as r:
                assert r.status == 422
            await up.set_faults()
            async with s.post(up.url + "/v1/ingest", data=body, headers=headers) as r:
                assert r.status == 200
        assert await up.ids("events") == ["a"]
    finally:
        await asyncio.to_thread(stop_process, up.proc)


def test_fault_dice_follow_their_rates() -> None:
    faults = Faults(error_rate=0.2, after_commit_rate=0.1, reset_rate=0.1, throttle_rate=0.05,
                    latency_s=1, latency_rate=0.5)
    rng = random.Random(3)
    draws = [decide(faults, rng) for _ in range(20_000)]
    counts = Counter(outcome for outcome, _ in draws)
    share = {k: v / len(draws) for k, v in counts.items()}
    assert share[Outcome.ERROR] == pytest.approx(0.2, abs=0.015)
    assert share[Outcome.ERROR_AFTER_COMMIT] == pytest.approx(0.1, abs=0.015)
    assert share[Outcome.RESET] + share[Outcome.RESET_AFTER_COMMIT] == pytest.approx(0.1, abs=0.015)
    assert share[Outcome.THROTTLE] == pytest.approx(0.05, abs=0.01)
    assert sum(1 for _, d in draws if d) / len(draws) == pytest.approx(0.5, abs=0.02)
    with pytest.raises(UpstreamConfigError):
        Faults(error_rate=0.6, after_commit_rate=0.6)


def test_openapi_document_covers_every_route_and_matches_docs(tmp_path: Path) -> None:
    from daemon.upstream.app import UpstreamState
    from daemon.upstream.db import UpstreamDb

    app = make_app(UpstreamState(db=UpstreamDb(tmp_path / "x.db"), faults=Faults(), rng=random.Random(0)))
    document = spec()
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
              if r.method != "HEAD" and r.resource is not None}
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert routes == documented
    on_disk = json.loads((ROOT / "docs" / "upstream-openapi.json").read_text())
    assert on_disk == document, "regenerate with: python -m daemon.upstream --openapi > docs/upstream-openapi.json"


def test_main_refuses_bad_flags_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert upstream_main(["--db", str(tmp_path / "u.db"), "--listen", "nowhere"]) == 2
    assert "--listen" in capsys.readouterr().err
    assert upstream_main(["--db", str(tmp_path / "u.db"), "--error-rate", "3"]) == 2
    assert "error_rate" in capsys.readouterr().err
