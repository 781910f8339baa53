"""The hub's operations as MCP tools over streamable HTTP at ``/mcp``, on the API's own listener.

The official ``mcp`` SDK serves an ASGI (Starlette) app; ``McpBridge`` hands each aiohttp request at
``/mcp`` to it, after the API's own middleware has authenticated the bearer token, and passes the
principal in the ASGI scope. The app runs stateless with JSON responses (one POST, one answer), so no
stream outlives a request. Every tool builds the same ``Caller`` as the HTTP routes and calls the same
hub methods: capabilities, trust gates, policy, rate limits, defences and audit are identical.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings

from daemon.api import Principal
from daemon.hub.errors import HubError
from daemon.hub.pools import Caller

if TYPE_CHECKING:
    from daemon.hub import Hub

PRINCIPAL_SCOPE_KEY = "mycoedge.principal"
SESSION_HEADER = "x-session-id"


def _caller(hub: Hub, ctx: Context[Any, Any]) -> Caller:
    request = ctx.request_context.request
    scope = getattr(request, "scope", None)
    who = scope.get(PRINCIPAL_SCOPE_KEY) if isinstance(scope, Mapping) else None
    if not isinstance(who, Principal):
        raise ToolError("401 unauthorized: no authenticated principal")
    headers = getattr(request, "headers", {}) or {}
    session = headers.get(SESSION_HEADER)
    try:
        caller = hub.caller(who, session[:128] if session else None)
        if not caller.admin:
            hub.rate_limit(caller)
            hub.registry.seen(caller.id, session=caller.session)
    except HubError as exc:
        raise _tool_error(exc) from None
    return caller


def _tool_error(exc: HubError) -> ToolError:
    return ToolError(f"{exc.status} {exc.kind}: {exc}")


def build_server(hub: Hub) -> MCPServer[Any]:
    """An MCP server whose tools are the hub's agent-facing operations."""
    server: MCPServer[Any] = MCPServer(
        name="mycoedge-hub",
        instructions="Agent hub of a mycoedge node: messages, handoffs and shared memory, under the same "
                     "capabilities, trust gates and policies as the HTTP API.",
    )

    async def run(ctx: Context[Any, Any], op: Any) -> Any:
        caller = _caller(hub, ctx)
        try:
            return await op(caller)
        except HubError as exc:
            raise _tool_error(exc) from None

    @server.tool(description="Who the caller is: agent id, trust level, capabilities")
    async def whoami(ctx: Context[Any, Any]) -> dict[str, Any]:
        async def op(c: Caller) -> dict[str, Any]:
            return {"id": c.id, "admin": c.admin, "trust_level": c.level, "capabilities": sorted(c.capabilities),
                    "reach": c.reach}

        result: dict[str, Any] = await run(ctx, op)
        return result

    @server.tool(description="Registered agents with their online status")
    async def list_agents(ctx: Context[Any, Any]) -> dict[str, Any]:
        async def op(c: Caller) -> dict[str, Any]:
            await hub.authorize(c, scope="registry", operation="registry.list", gate="registry.read",
                                capability=None, resource={}, audit_allow=False)
            return {"agents": [hub.registry.describe(a) for a in hub.registry.all()]}

        result: dict[str, Any] = await run(ctx, op)
        return result

    @server.tool(description="Send a message (REQUEST, RESPONSE, EVENT, COMMAND, BROADCAST) through the hub")
    async def send_message(ctx: Context[Any, Any], *, to: str, type: str, body: Any = None,
                           correlation_id: str | None = None, ttl_s: float = 3600.0) -> dict[str, Any]:
        async def op(c: Caller) -> dict[str, Any]:
            data: dict[str, Any] = {"to": to, "type": type, "body": body, "ttl_s": ttl_s}
            if correlation_id:
                data["correlation_id"] = correlation_id
            envelope, outcomes, _ = await hub.send_from(c, data)
            return {"id": envelope.id, "outcomes": outcomes}

        result: dict[str, Any] = await run(ctx, op)
        return result

    @server.tool(description="Take the caller's queued messages")
    async def fetch_inbox(ctx: Context[Any, Any], limit: int = 100) -> dict[str, Any]:
        async def op(c: Caller) -> dict[str, Any]:
            got = await hub.router.take(c.id, limit=max(1, min(limit, 1000)))
            return {"messages": [e.to_json() for e in got]}

        result: dict[str, Any] = await run(ctx, op)
        return result

    @server.tool(description="Hand a task off to another agent")
    async def initiate_handoff(ctx: Context[Any, Any], target: str, task: str, memory_ids: list[str] | None = None,
                               expires_in_s: float = 3600.0) -> dict[str, Any]:
        async def op(c: Caller) -> dict[str, Any]:
            handoff, _ = await hub.initiate_handoff(c, target=target, expires_in_s=expires_in_s,
                                                    context={"task": task, "memory_ids": memory_ids or []})
            return handoff.to_json()

        result: dict[str, Any] = await run(ctx, op)
        return result

    @server.tool(description="accept, complete, reject or cancel a handoff")
    async def handoff_action(ctx: Context[Any, Any], handoff_id: str, action: str,
                             reason: str | None = None) -> dict[str, Any]:
        async def op(c: Caller) -> dict[str, Any]:
            handoff, changed = await hub.handoff_transition(c, handoff_id, action, reason=reason)
            return {**handoff.to_json(), "changed": changed}

        result: dict[str, Any] = await run(ctx, op)
        return result

    @server.tool(description="The caller's handoffs, optionally in one state (e.g. pending)")
    async def list_handoffs(ctx: Context[Any, Any], state: str | None = None) -> dict[str, Any]:
        async def op(c: Caller) -> dict[str, Any]:
            return {"handoffs": [h.to_json() for h in await hub.handoffs.list_for(c.id, state=state)]}

        result: dict[str, Any] = await run(ctx, op)
        return result

    @server.tool(description="Write a memory: private, or into a pool where the caller holds WRITE")
    async def write_memory(ctx: Context[Any, Any], content: str, pool: str | None = None,
                           scope: str = "AGENT_PRIVATE", type: str = "long_term") -> dict[str, Any]:
        async def op(c: Caller) -> dict[str, Any]:
            item = await hub.pools.create_memory(c, content=content, pool_id=pool, scope=scope, type=type,
                                                 metadata={}, visibility=None, ttl_s=None)
            return item.to_json()

        result: dict[str, Any] = await run(ctx, op)
        return result

    @server.tool(description="Read one memory the caller may read")
    async def read_memory(ctx: Context[Any, Any], memory_id: str) -> dict[str, Any]:
        async def op(c: Caller) -> dict[str, Any]:
            return await hub.pools.get_memory(c, memory_id)

        result: dict[str, Any] = await run(ctx, op)
        return result

    @server.tool(description="Search the caller's private memories, or a pool it belongs to, up to a scope")
    async def query_memories(ctx: Context[Any, Any], text: str | None = None, pool: str | None = None,
                             up_to_scope: str = "GLOBAL", limit: int = 10) -> dict[str, Any]:
        async def op(c: Caller) -> dict[str, Any]:
            return {"items": await hub.pools.query(c, pool_id=pool, text=text, up_to_scope=up_to_scope,
                                                   limit=limit)}

        result: dict[str, Any] = await run(ctx, op)
        return result

    return server


class McpBridge:
    """Runs the MCP app's session manager and serves it from aiohttp handlers (an ASGI-in-aiohttp bridge)."""

    def __init__(self, hub: Hub) -> None:
        self.server = build_server(hub)
        # The bearer token is the protection here (checked before the bridge); Host/Origin checks against DNS
        # rebinding would refuse the unix-socket listener, so they are off.
        self.app = self.server.streamable_http_app(
            streamable_http_path="/mcp", stateless_http=True, json_response=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def __aenter__(self) -> McpBridge:
        # The session manager's anyio task group must be entered and left by one task: it gets its own.
        ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(ready), name="hub-mcp")
        await ready
        return self

    async def _run(self, ready: asyncio.Future[None]) -> None:
        try:
            async with self.server.session_manager.run():
                ready.set_result(None)
                await self._stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            task, self._task = self._task, None
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def handle(self, request: web.Request, who: Principal) -> web.StreamResponse:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        scope: dict[str, Any] = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": request.method, "scheme": "http", "path": "/mcp", "raw_path": b"/mcp", "root_path": "",
            "query_string": request.query_string.encode("latin-1"),
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()],
            "client": tuple(peer[:2]) if isinstance(peer, tuple) else None,
            "server": ("127.0.0.1", 0), "state": {}, PRINCIPAL_SCOPE_KEY: who,
        }
        done = asyncio.Event()
        delivered = False
        status = 500
        headers: list[tuple[str, str]] = []
        chunks: list[bytes] = []

        async def receive() -> MutableMapping[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers.extend((k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    done.set()

        try:
            await self.app(scope, receive, send)
        finally:
            done.set()
        keep = [(k, v) for k, v in headers if k.lower() not in ("content-length", "transfer-encoding")]
        response = web.Response(status=status, body=b"".join(chunks))
        for k, v in keep:
            response.headers.add(k, v)
        return response
