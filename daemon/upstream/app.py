"""The reference upstream's HTTP API: ingest, read-back, fault control (aiohttp).

It stands in for the MAS data platform in tests, benchmarks and the demo; the ingest contract it
implements is documented in ``docs/upstream-openapi.json`` (built from ``daemon.upstream.openapi``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from daemon.sync.wire import (
    IDEMPOTENCY_HEADER,
    INGEST_PATH,
    MAX_INFLATED_BYTES,
    REPLAYED_HEADER,
    STREAM_RE,
    BatchDecodeError,
    decode_batch,
)
from daemon.upstream.db import UpstreamDb, response_body
from daemon.upstream.errors import UpstreamConfigError
from daemon.upstream.faults import Faults, Outcome, decide
from daemon.upstream.openapi import spec

log = logging.getLogger(__name__)

# How long a batch's idempotency key is answered from the cache (the draft suggests at least 24 h).
IDEMPOTENCY_TTL_S = 24 * 3600.0


@dataclass(slots=True)
class UpstreamState:
    """Everything a request handler needs; ``faults`` is replaced whole by the admin endpoint."""

    db: UpstreamDb
    faults: Faults
    rng: random.Random
    token: str | None = None
    admin_token: str | None = None
    counters: Counter[str] = field(default_factory=Counter)
    warned: bool = False


STATE = web.AppKey("upstream_state", UpstreamState)


_TITLES = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 413: "Content Too Large",
           415: "Unsupported Media Type", 422: "Unprocessable Content", 429: "Too Many Requests",
           500: "Internal Server Error", 503: "Service Unavailable"}


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    """An RFC 9457 problem document, the same error shape the daemon's own API uses."""
    body = {"type": "about:blank", "title": _TITLES.get(status, "Error"), "status": status, "detail": detail}
    return web.Response(status=status, text=json.dumps(body), content_type="application/problem+json",
                        headers=headers)


def _authorised(request: web.Request, token: str | None) -> bool:
    if token is None:
        return True
    header = request.headers.get("Authorization", "")
    return header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(), token.encode())


@web.middleware
async def _auth(request: web.Request, handler: Any) -> web.StreamResponse:
    state = request.app[STATE]
    if request.path in ("/healthz", "/openapi.json"):
        return await handler(request)  # type: ignore[no-any-return]
    token = state.admin_token if request.path.startswith("/admin/") else state.token
    if not _authorised(request, token):
        return _problem(401, "missing or wrong bearer token", {"WWW-Authenticate": 'Bearer realm="upstream"'})
    return await handler(request)  # type: ignore[no-any-return]


def _reset(request: web.Request) -> web.Response:
    """Drop the TCP connection without an answer (what a crashing proxy or a flaky link does)."""
    if request.transport is not None:
        request.transport.abort()
    # aiohttp finds the transport closed and drops this response without logging a handler error.
    return web.Response(status=500)


async def ingest(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    outcome, delay = decide(state.faults, state.rng)
    state.counters[f"fault_{outcome.value}"] += 1
    if delay:
        await asyncio.sleep(delay)
    body = await request.read()
    if request.content_type != "application/json":
        return _problem(415, "Content-Type must be application/json")
    if request.headers.get("Content-Encoding", "identity").lower() != "identity":
        state.counters["compressed_batches"] += 1  # aiohttp has already inflated the body
    try:
        batch = await asyncio.to_thread(decode_batch, body)
    except BatchDecodeError as exc:
        state.counters["rejected"] += 1
        # untrusted input: the first bad batch at WARNING, later ones at DEBUG
        log.log(logging.DEBUG if state.warned else logging.WARNING, "upstream: bad batch: %s", exc)
        state.warned = True
        return _problem(400, str(exc))
    if outcome is Outcome.THROTTLE:
        return _problem(429, "fault injection: throttled", {"Retry-After": str(state.faults.retry_after_s)})
    if outcome is Outcome.ERROR:
        return _problem(503, "fault injection: unavailable before commit")
    if outcome is Outcome.RESET:
        return _reset(request)
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None:
        cached = await state.db.replayed(key)
        if cached is not None:
            state.counters["replayed"] += 1
            if outcome is Outcome.ERROR_AFTER_COMMIT:
                return _problem(500, "fault injection: failed after replay")
            if outcome is Outcome.RESET_AFTER_COMMIT:
                return _reset(request)
            return web.Response(text=cached, content_type="application/json", headers={REPLAYED_HEADER: "true"})
    result = await state.db.store(batch, key)
    state.counters["batches"] += 1
    state.counters["accepted"] += result.accepted
    state.counters["duplicates"] += result.duplicates
    if outcome is Outcome.ERROR_AFTER_COMMIT:
        return _problem(500, "fault injection: failed after commit")
    if outcome is Outcome.RESET_AFTER_COMMIT:
        return _reset(request)
    return web.json_response(response_body(batch.stream, result))


def _stream(request: web.Request) -> str:
    stream = request.match_info["stream"]
    if not STREAM_RE.match(stream):
        raise web.HTTPNotFound(text=json.dumps({"detail": "no such stream"}), content_type="application/json")
    return stream


def _int_query(request: web.Request, name: str, default: int, maximum: int) -> int:
    try:
        value = int(request.query.get(name, default))
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer") from None
    return max(0, min(maximum, value))


async def list_streams(request: web.Request) -> web.Response:
    counts = await request.app[STATE].db.counts()
    return web.json_response({"streams": counts, "total": sum(counts.values())})


async def stream_count(request: web.Request) -> web.Response:
    stream = _stream(request)
    counts = await request.app[STATE].db.counts()
    return web.json_response({"stream": stream, "count": counts.get(stream, 0)})


async def stream_records(request: web.Request) -> web.Response:
    stream = _stream(request)
    after = _int_query(request, "after", 0, 2**62)
    limit = _int_query(request, "limit", 1000, 100_000)
    records = await request.app[STATE].db.records(stream, after=after, limit=limit)
    return web.json_response({
        "stream": stream,
        "records": records,
        "next_after": records[-1]["pos"] if records else after,
    })


async def stream_ids(request: web.Request) -> web.Response:
    stream = _stream(request)
    ids = await request.app[STATE].db.ids(stream)
    return web.json_response({"stream": stream, "ids": ids})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(dict(request.app[STATE].counters))


async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].faults.to_json())


async def put_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        changes = await request.json()
        new = (Faults() if request.query.get("replace") == "true" else state.faults).updated(changes)
    except (ValueError, UpstreamConfigError) as exc:
        return _problem(422, str(exc))
    state.faults = new
    log.info("upstream: faults now %s", new.to_json())
    return web.json_response(new.to_json())


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(spec())


async def _prune_idempotency(app: web.Application) -> Any:
    async def loop() -> None:
        while True:
            await asyncio.sleep(3600)
            await app[STATE].db.prune_idempotency(time.time() - IDEMPOTENCY_TTL_S)

    task = asyncio.get_running_loop().create_task(loop(), name="upstream-idempotency-prune")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def make_app(state: UpstreamState, *, max_body_bytes: int = MAX_INFLATED_BYTES) -> web.Application:
    """The aiohttp application; the caller owns ``state.db`` (open before, close after)."""
    # aiohttp inflates gzip/deflate bodies itself and applies client_max_size to the inflated bytes,
    # which is the zip-bomb guard.
    app = web.Application(middlewares=[_auth], client_max_size=max_body_bytes)
    app[STATE] = state
    app.router.add_post(INGEST_PATH, ingest)
    app.router.add_get("/v1/streams", list_streams)
    app.router.add_get("/v1/streams/{stream}/count", stream_count)
    app.router.add_get("/v1/streams/{stream}/records", stream_records)
    app.router.add_get("/v1/streams/{stream}/ids", stream_ids)
    app.router.add_get("/v1/stats", stats)
    app.router.add_get("/admin/faults", get_faults)
    app.router.add_put("/admin/faults", put_faults)
    app.router.add_get("/healthz", health)
    app.router.add_get("/openapi.json", openapi)
    app.cleanup_ctx.append(_prune_idempotency)
    return app
