"""HTTP routes of the uplink: ``GET /v1/sync/status`` and ``POST /v1/sync/run``.

Mount with ``build_app(tables=[..., http_sync.routes], state={http_sync.SYNC_KEY: worker})``. Without a
worker (no upstream configured) both answer 409 ``sync-disabled`` rather than 404, so a client can tell
"not configured" from "wrong daemon": the request conflicts with the node's configuration, and it is not a
server fault (a 5xx would page someone for a deliberate setting).
"""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web

from daemon.openapi import Routes
from daemon.problems import PROBLEM_SCHEMA, Problem
from daemon.sync import SpoolError, SyncWorker

SYNC_KEY: web.AppKey[SyncWorker] = web.AppKey("sync_worker", SyncWorker)
routes = Routes(tag="sync")

_STREAM: dict[str, Any] = {
    "type": "object",
    "properties": {
        "pending": {"type": "integer"}, "bytes": {"type": "integer"},
        "oldest_created": {"type": ["number", "null"]}, "lag_s": {"type": "number"},
        "sent": {"type": "integer"}, "duplicates": {"type": "integer"}, "batches": {"type": "integer"},
        "failures": {"type": "integer"},
        "dropped": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
}
STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["state", "pending", "spool", "streams", "runs_started", "runs_completed"],
    "properties": {
        "state": {"enum": ["idle", "running", "backing_off"]},
        "upstream": {"type": "string"},
        "interval_s": {"type": "number"},
        "running": {"type": "boolean"},
        "runs_started": {"type": "integer"},
        "runs_completed": {"type": "integer"},
        "last_attempt": {"type": ["number", "null"]},
        "last_success": {"type": ["number", "null"]},
        "last_error": {"type": ["string", "null"]},
        "consecutive_failures": {"type": "integer"},
        "next_run_at": {"type": ["number", "null"]},
        "retry_after_until": {"type": ["number", "null"]},
        "pending": {"type": "integer"},
        "spool": {
            "type": "object",
            "properties": {
                "bytes": {"type": "integer"}, "kept_bytes": {"type": "integer"}, "max_bytes": {"type": "integer"},
                "fill_ratio": {"type": "number"}, "protected_over_cap": {"type": "boolean"},
            },
        },
        "streams": {"type": "object", "additionalProperties": _STREAM},
    },
}
RUN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["run", "status"],
    "properties": {
        "run": {"type": "integer", "description": "Wait until status.runs_completed reaches this."},
        "status": STATUS_SCHEMA,
    },
}


def _worker(request: web.Request) -> SyncWorker:
    worker = request.app.get(SYNC_KEY)
    if worker is None:
        raise Problem(409, "no upstream is configured (sync.url)", kind="sync-disabled")
    return worker


@routes.get("/v1/sync/status", summary="Uplink state: spool fill, lag, drops, last success, next run",
            auth="admin", responses={200: STATUS_SCHEMA, 401: PROBLEM_SCHEMA, 403: PROBLEM_SCHEMA,
                                     409: PROBLEM_SCHEMA})
async def sync_status(request: web.Request) -> web.Response:
    worker = _worker(request)
    with contextlib.suppress(SpoolError):  # a closing store: answer with the last known stats
        await worker.refresh_stats()
    return web.json_response(worker.status().to_json())


@routes.post("/v1/sync/run", summary="Start a sync pass now (cuts backoff short; a Retry-After still holds)",
             auth="admin", responses={202: RUN_SCHEMA, 401: PROBLEM_SCHEMA, 403: PROBLEM_SCHEMA,
                                      409: PROBLEM_SCHEMA})
async def sync_run(request: web.Request) -> web.Response:
    worker = _worker(request)
    with contextlib.suppress(SpoolError):  # so the answer counts what this run has to drain
        await worker.refresh_stats()
    run = worker.request_run()
    return web.json_response({"run": run, "status": worker.status().to_json()}, status=202)
