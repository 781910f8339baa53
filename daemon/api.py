"""The local HTTP API: one aiohttp application served on TCP and on a unix socket.

Feature modules declare their routes with ``daemon.openapi.Routes``; this module mounts them, checks
credentials before a handler runs, turns every error into a problem document, and serves the health,
readiness, metrics and OpenAPI endpoints that operators and probes rely on.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from daemon import __version__
from daemon.openapi import OPERATION_KEY, Operation, Routes, document
from daemon.problems import Problem

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. ``trust_level`` follows ARCHITECTURE.md (0..5); the operator's admin token is root."""

    kind: str  # "admin" or "agent"
    id: str
    trust_level: int
    capabilities: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"


class TokenResolver(Protocol):
    """Maps a bearer token to a principal; the agent hub adds one for agent tokens."""

    async def resolve(self, token: str) -> Principal | None: ...


class AdminTokenResolver:
    """The operator's token from ``<state_dir>/admin.token``: whoever can read that 0600 file is root."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def resolve(self, token: str) -> Principal | None:
        if hmac.compare_digest(token.encode(), self._token):
            return Principal(kind="admin", id="admin", trust_level=5)
        return None


@dataclass
class Readiness:
    """What must be up before the node is ready; ``/readyz`` names whatever is not."""

    components: dict[str, str | None] = field(default_factory=dict)

    def require(self, name: str) -> None:
        self.components.setdefault(name, "starting")

    def up(self, name: str) -> None:
        self.components[name] = None

    def down(self, name: str, reason: str) -> None:
        self.components[name] = reason

    def not_ready(self) -> dict[str, str]:
        return {name: reason for name, reason in self.components.items() if reason is not None}


PRINCIPAL_KEY: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
ROUTES_KEY: web.AppKey[list[Operation]] = web.AppKey("routes")
RESOLVERS_KEY: web.AppKey[list[TokenResolver]] = web.AppKey("resolvers")
READINESS_KEY = web.AppKey("readiness", Readiness)
REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
STARTED_KEY = web.AppKey("started", float)


def principal(request: web.Request) -> Principal:
    """The authenticated caller; only valid in handlers whose route requires auth."""
    found: Principal | None = request.get(PRINCIPAL_KEY)
    if found is None:  # pragma: no cover - the middleware guarantees it for authenticated routes
        raise Problem(401, "authentication required")
    return found


def require_admin(request: web.Request) -> Principal:
    who = principal(request)
    if not who.is_admin:
        raise Problem(403, "admin token required", kind="forbidden")
    return who


core = Routes(tag="node")

_HEALTH_SCHEMA = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}


@core.get("/healthz", summary="Liveness: the process answers", auth="none", responses={200: _HEALTH_SCHEMA})
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "uptime_s": round(time.monotonic() - request.app[STARTED_KEY], 3)})


@core.get(
    "/readyz",
    summary="Readiness: store, API and broker link are up",
    auth="none",
    responses={200: _HEALTH_SCHEMA, 503: _HEALTH_SCHEMA},
)
async def readyz(request: web.Request) -> web.Response:
    missing = request.app[READINESS_KEY].not_ready()
    if missing:
        detail = ", ".join(f"{name} ({reason})" for name, reason in sorted(missing.items()))
        raise Problem(503, f"not ready: {detail}", kind="not-ready", components=missing)
    return web.json_response({"status": "ready"})


@core.get("/metrics", summary="Prometheus metrics", auth="none", content_type="text/plain",
          responses={200: {"type": "string"}})
async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@core.get("/openapi.json", summary="This API as OpenAPI 3.1", auth="none", responses={200: {"type": "object"}})
async def openapi(request: web.Request) -> web.Response:
    operations: list[Operation] = request.app[ROUTES_KEY]
    return web.json_response(document(operations, title="mycoedge", version=__version__))


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _allowed_methods(request: web.Request) -> list[str]:
    """The methods of the route that owns this path: a plain path (``/v1/memories/search``) owns it even
    where a dynamic one (``/v1/memories/{id}``) also matches, as aiohttp resolves them; aiohttp's own
    ``Allow`` would list the union of both."""
    operations: list[Operation] = request.app[ROUTES_KEY]
    exact = sorted({op.method for op in operations if op.path == request.path})
    if exact:
        return exact
    parts = request.path.strip("/").split("/")
    found: set[str] = set()
    for op in operations:
        template = op.path.strip("/").split("/")
        if len(template) == len(parts) and all(t == p or (t.startswith("{") and t.endswith("}"))
                                               for t, p in zip(template, parts, strict=True)):
            found.add(op.method)
    return sorted(found)


def _middlewares(registry: CollectorRegistry) -> list[Any]:
    requests_total = Counter(
        "mycoedge_http_requests", "HTTP requests by route and status", ["route", "status"], registry=registry
    )
    auth_failures = Counter("mycoedge_http_auth_failures", "Rejected bearer tokens", registry=registry)

    @web.middleware
    async def problems(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "-"
        try:
            response = await handler(request)
        except Problem as problem:
            response = problem.response(request.path)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            kind = {404: "not-found", 405: "method-not-allowed"}.get(exc.status)
            keep = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
            if exc.status == 405:
                keep["Allow"] = ",".join(_allowed_methods(request))
            response = Problem(exc.status, exc.reason, kind=kind, headers=keep).response(request.path)
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            response = Problem(500, "internal error; see the daemon's log").response(request.path)
        requests_total.labels(route=route, status=str(response.status)).inc()
        return response

    @web.middleware
    async def authenticate(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        operation: Operation | None = getattr(request.match_info.handler, "__mycoedge_operation__", None)
        if operation is None:
            return await handler(request)
        request[OPERATION_KEY] = operation
        if operation.auth == "none":
            return await handler(request)
        token = _bearer(request)
        if token is None:
            raise Problem(401, "bearer token required", kind="unauthorized",
                          headers={"WWW-Authenticate": 'Bearer realm="mycoedge"'})
        for resolver in request.app[RESOLVERS_KEY]:
            who = await resolver.resolve(token)
            if who is not None:
                break
        else:
            auth_failures.inc()
            raise Problem(401, "unknown or revoked token", kind="unauthorized",
                          headers={"WWW-Authenticate": 'Bearer realm="mycoedge", error="invalid_token"'})
        if operation.auth == "admin" and not who.is_admin:
            raise Problem(403, "this operation needs the admin token", kind="forbidden")
        request[PRINCIPAL_KEY] = who
        return await handler(request)

    return [problems, authenticate]


def build_app(
    *,
    tables: Sequence[Routes],
    resolvers: Sequence[TokenResolver],
    readiness: Readiness,
    registry: CollectorRegistry,
    state: dict[web.AppKey[Any], Any] | None = None,
    middlewares: Sequence[Any] = (),
) -> web.Application:
    """The application; extra ``middlewares`` run inside authentication (the principal is known to them)."""
    app = web.Application(middlewares=[*_middlewares(registry), *middlewares], client_max_size=1024 * 1024)
    operations: list[Operation] = []
    mounted: set[tuple[str, str]] = set()
    for table in [core, *tables]:
        for op in table.operations:
            if (op.method, op.path) in mounted:
                # Two features serve the same route (the hub's gated memory routes and the store's plain
                # ones): the table mounted first owns it, and the document lists only what is served.
                log.debug("%s %s from %s is served by an earlier table", op.method, op.path, table.tag)
                continue
            mounted.add((op.method, op.path))
            # aiohttp gives the middleware the handler; the operation rides on a per-route wrapper so the
            # same function may be mounted twice without sharing state.
            async def bound(request: web.Request, _op: Operation = op) -> web.StreamResponse:
                return await _op.handler(request)

            bound.__mycoedge_operation__ = op  # type: ignore[attr-defined]
            app.router.add_route(op.method, op.path, bound)
            operations.append(op)
    app[ROUTES_KEY] = operations
    app[RESOLVERS_KEY] = list(resolvers)
    app[READINESS_KEY] = readiness
    app[REGISTRY_KEY] = registry
    app[STARTED_KEY] = time.monotonic()
    for key, value in (state or {}).items():
        app[key] = value
    return app


class ApiServer:
    """Serves the application on TCP and/or a unix socket; an async context manager."""

    def __init__(self, app: web.Application, *, listen: tuple[str, int] | None, socket_path: Path | None) -> None:
        self._app = app
        self._listen = listen
        self._socket_path = socket_path
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        self.bound: list[str] = []

    async def __aenter__(self) -> Self:
        await self._runner.setup()
        try:
            if self._listen is not None:
                site = web.TCPSite(self._runner, self._listen[0], self._listen[1], reuse_address=True)
                await site.start()
                self.bound.append(site.name)
            if self._socket_path is not None:
                self._socket_path.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    self._socket_path.unlink()
                unix = web.UnixSite(self._runner, str(self._socket_path))
                await unix.start()
                os.chmod(self._socket_path, 0o660)
                self.bound.append(unix.name)
        except OSError:
            await self._runner.cleanup()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._runner.cleanup()
        if self._socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._socket_path.unlink()

    @property
    def app(self) -> web.Application:
        return self._app

    @property
    def tcp_port(self) -> int | None:
        """The TCP port actually bound (useful with port 0)."""
        for site in self._runner.sites:
            if isinstance(site, web.TCPSite):
                # aiohttp exposes no public accessor for the bound socket.
                sockets = getattr(site._server, "sockets", None)
                if sockets:
                    return int(sockets[0].getsockname()[1])
        return None
