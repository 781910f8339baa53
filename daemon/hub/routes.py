"""The hub's HTTP routes, bound to one ``Hub``; every route is declared through ``Routes`` (OpenAPI exact).

Each handler runs inside ``_guarded``: hub errors become problem documents (429 with Retry-After), agent
callers are rate-limited per agent and per session (``X-Session-Id``) and marked as seen.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from daemon.api import principal
from daemon.hub.errors import Forbidden, HubError, NotFound, RateLimited
from daemon.hub.messages import MAX_TTL_S, MESSAGE_TYPES
from daemon.hub.policy import RULE_SCHEMA, Rule, matches
from daemon.hub.pools import Caller
from daemon.hub.registry import AGENT_TYPES, CAPABILITIES, SCOPES
from daemon.openapi import Routes, int_query, read_json
from daemon.problems import PROBLEM_SCHEMA, Problem
from daemon.trust import TrustError

if TYPE_CHECKING:
    from daemon.hub import Hub

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OBJ: dict[str, Any] = {"type": "object"}
SESSION_HEADER = "X-Session-Id"

REGISTER_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["type", "owner"], "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"},
        "type": {"enum": list(AGENT_TYPES)}, "owner": {"type": "string", "minLength": 1, "maxLength": 128},
        "name": {"type": "string", "maxLength": 128},
        "capabilities": {"type": "array", "items": {"enum": list(CAPABILITIES)}, "uniqueItems": True},
        "reach": {"enum": list(SCOPES)}, "metadata": {"type": "object"},
    },
}
MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["to", "type"], "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "minLength": 1, "maxLength": 128}, "to": {"type": "string", "minLength": 1},
        "type": {"enum": list(MESSAGE_TYPES)}, "ts": {"type": "number"},
        "correlation_id": {"type": ["string", "null"], "maxLength": 128},
        "ttl_s": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TTL_S}, "body": {},
        "wait_s": {"type": "number", "minimum": 0, "maximum": 60},
    },
}
HANDOFF_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["target"], "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}, "target": {"type": "string"},
        "expires_in_s": {"type": "number", "exclusiveMinimum": 0},
        "context": {"type": "object", "properties": {
            "task": {"type": "string"}, "state": {}, "memory_ids": {"type": "array", "items": {"type": "string"}},
            "files": {"type": "array"}}},
    },
}
TRANSITION_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "properties": {"result": {"type": "object"}, "reason": {"type": "string", "maxLength": 1000}},
}
POOL_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["name", "scope"], "additionalProperties": False,
    "properties": {"name": {"type": "string"}, "scope": {"enum": list(SCOPES)},
                   "description": {"type": "string", "maxLength": 1000}},
}
MEMBER_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["agent_id", "permission"], "additionalProperties": False,
    "properties": {"agent_id": {"type": "string"}, "permission": {"enum": ["READ", "WRITE", "ADMIN"]}},
}
SHARE_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["memory_id", "scope"], "additionalProperties": False,
    "properties": {"memory_id": {"type": "string"}, "scope": {"enum": list(SCOPES)}},
}
QUERY_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "properties": {"text": {"type": "string", "maxLength": 2000}, "up_to_scope": {"enum": list(SCOPES)},
                   "limit": {"type": "integer", "minimum": 1, "maximum": 1000}},
}
MEMORY_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["content"], "additionalProperties": False,
    "properties": {
        "content": {"type": "string", "minLength": 1}, "pool": {"type": "string"}, "scope": {"enum": list(SCOPES)},
        "type": {"enum": ["short_term", "long_term", "profile"]}, "metadata": {"type": "object"},
        "visibility": {"enum": ["private", "pool", "public"]}, "ttl_s": {"type": "number", "exclusiveMinimum": 0},
    },
}
OAUTH_SCHEMA: dict[str, Any] = {"type": "object", "required": ["token"], "additionalProperties": False,
                                "properties": {"token": {"type": "string", "minLength": 10}}}
POLICY_TEST_SCHEMA: dict[str, Any] = {"type": "object", "required": ["context"], "additionalProperties": False,
                                      "properties": {"context": {"type": "object"}}}
ERRORS = {403: PROBLEM_SCHEMA, 404: PROBLEM_SCHEMA, 409: PROBLEM_SCHEMA, 429: PROBLEM_SCHEMA}


def problem_for(exc: HubError) -> Problem:
    headers = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    return Problem(exc.status, str(exc), kind=exc.kind, headers=headers, **exc.extensions)


def build_routes(hub: Hub) -> list[Routes]:
    agents = Routes(tag="agents")
    messages = Routes(tag="messages")
    handoffs = Routes(tag="handoffs")
    pools = Routes(tag="pools")
    policies = Routes(tag="policies")

    def guarded(register: Callable[[Handler], Handler]) -> Callable[[Handler], Handler]:
        def wrap(fn: Handler) -> Handler:
            @functools.wraps(fn)
            async def handler(request: web.Request) -> web.StreamResponse:
                try:
                    return await fn(request)
                except HubError as exc:
                    raise problem_for(exc) from None
                except TrustError as exc:
                    raise Problem(403, str(exc), kind="forbidden") from None

            return register(handler)

        return wrap

    def caller(request: web.Request) -> Caller:
        who = principal(request)
        session = request.headers.get(SESSION_HEADER)
        c = hub.caller(who, session[:128] if session else None)
        if not c.admin:
            hub.rate_limit(c)
            hub.registry.seen(c.id, session=c.session)
        return c

    def self_or_admin(c: Caller, agent_id: str) -> None:
        if not c.admin and c.id != agent_id:
            raise Forbidden("only the agent itself or the admin may do this")

    # -- agents -----------------------------------------------------------------------------------

    @guarded(agents.post("/v1/agents", summary="Register an agent (admin or enrolment token)", auth="agent",
                         request=REGISTER_SCHEMA, responses={201: OBJ, **ERRORS}))
    async def register_agent(request: web.Request) -> web.Response:
        who = principal(request)
        if not who.is_admin and who.kind != "enrolment":
            raise Forbidden("registering agents needs the admin token or an enrolment token")
        body = await read_json(request)
        out = await hub.register(body, privileged=who.is_admin, actor=who.id)
        return web.json_response(out, status=201)

    @guarded(agents.get("/v1/agents", summary="List agents with their status", auth="agent",
                        responses={200: OBJ, **ERRORS}))
    async def list_agents(request: web.Request) -> web.Response:
        c = caller(request)
        await hub.authorize(c, scope="registry", operation="registry.list", gate="registry.read", capability=None,
                            resource={}, audit_allow=False)
        return web.json_response({"agents": [hub.registry.describe(a) for a in hub.registry.all()]})

    @guarded(agents.get("/v1/agents/{id}", summary="One agent", auth="agent", responses={200: OBJ, **ERRORS}))
    async def get_agent(request: web.Request) -> web.Response:
        c = caller(request)
        await hub.authorize(c, scope="registry", operation="registry.read", gate="registry.read", capability=None,
                            resource={}, audit_allow=False)
        agent = hub.registry.require(request.match_info["id"])
        data = hub.registry.describe(agent)
        data["trust_level"] = hub.trust.level(agent.id)
        return web.json_response(data)

    @guarded(agents.delete("/v1/agents/{id}", summary="Revoke an agent and its broker credentials", auth="admin",
                           responses={204: None, **ERRORS}))
    async def revoke_agent(request: web.Request) -> web.Response:
        await hub.revoke(request.match_info["id"])
        return web.Response(status=204)

    @guarded(agents.get("/v1/users/{id}/agents", summary="Agents owned by a user", auth="agent",
                        responses={200: OBJ, **ERRORS}))
    async def user_agents(request: web.Request) -> web.Response:
        c = caller(request)
        owner = request.match_info["id"]
        await hub.authorize(c, scope="registry", operation="registry.read", gate="registry.read", capability=None,
                            resource={"owner": owner}, audit_allow=False)
        return web.json_response({"owner": owner,
                                  "agents": [hub.registry.describe(a) for a in hub.registry.of_owner(owner)]})

    @guarded(agents.post("/v1/agents/{id}/heartbeat", summary="Heartbeat for an HTTP-only agent", auth="agent",
                         responses={200: OBJ, **ERRORS}))
    async def heartbeat(request: web.Request) -> web.Response:
        c = caller(request)
        self_or_admin(c, request.match_info["id"])
        agent = hub.registry.require(request.match_info["id"])
        hub.registry.seen(agent.id, session=c.session)
        return web.json_response({"status": "online" if hub.registry.online(agent.id) else "offline"})

    @guarded(agents.post("/v1/agents/{id}/oauth", summary="Present an identity-provider JWT (trust level 2)",
                         auth="agent", request=OAUTH_SCHEMA, responses={200: OBJ, **ERRORS}))
    async def oauth(request: web.Request) -> web.Response:
        c = caller(request)
        self_or_admin(c, request.match_info["id"])
        agent = hub.registry.require(request.match_info["id"])
        body = await read_json(request)
        level, exp = await hub.verify_jwt(agent, body["token"])
        return web.json_response({"trust_level": level, "expires_at": exp})

    @guarded(agents.get("/v1/agents/{id}/inbox", summary="Take queued messages (HTTP-only agents)", auth="agent",
                        query={"limit": {"type": "integer"}, "wait_s": {"type": "number"}},
                        responses={200: OBJ, **ERRORS}))
    async def inbox(request: web.Request) -> web.Response:
        c = caller(request)
        agent_id = request.match_info["id"]
        self_or_admin(c, agent_id)
        hub.registry.require(agent_id)
        limit = int_query(request, "limit", 100, minimum=1, maximum=1000)
        wait_s = int_query(request, "wait_s", 0, minimum=0, maximum=60)
        got = await hub.router.take(agent_id, limit=limit)
        if not got and wait_s:
            await hub.router.wait_for(agent_id, wait_s)
            got = await hub.router.take(agent_id, limit=limit)
        return web.json_response({"messages": [e.to_json() for e in got]})

    @guarded(agents.get("/v1/agents/{id}/handoffs", summary="Handoffs of an agent", auth="agent",
                        query={"state": {"type": "string"}, "role": {"type": "string"}},
                        responses={200: OBJ, **ERRORS}))
    async def agent_handoffs(request: web.Request) -> web.Response:
        c = caller(request)
        agent_id = request.match_info["id"]
        self_or_admin(c, agent_id)
        found = await hub.handoffs.list_for(agent_id, state=request.query.get("state"),
                                            role=request.query.get("role", "any"))
        return web.json_response({"handoffs": [h.to_json() for h in found]})

    # -- messages ---------------------------------------------------------------------------------

    @guarded(messages.post("/v1/messages", summary="Send a message through the hub", auth="agent",
                           request=MESSAGE_SCHEMA, responses={200: OBJ, 202: OBJ, **ERRORS, 504: PROBLEM_SCHEMA}))
    async def post_message(request: web.Request) -> web.Response:
        c = caller(request)
        body = await read_json(request)
        envelope, outcomes, response = await hub.send_from(c, body)
        if response is not None:
            return web.json_response({"id": envelope.id, "outcomes": outcomes, "response": response.to_json()})
        return web.json_response({"id": envelope.id, "outcomes": outcomes}, status=202)

    @guarded(messages.get("/v1/messages/dead-letters", summary="Messages dead-lettered after their TTL",
                          auth="admin", query={"limit": {"type": "integer"}}, responses={200: OBJ, **ERRORS}))
    async def dead_letters(request: web.Request) -> web.Response:
        limit = int_query(request, "limit", 100, minimum=1, maximum=1000)
        return web.json_response({"count": hub.router.dead_lettered,
                                  "items": await hub.router.dead_letters(limit=limit)})

    # -- handoffs ---------------------------------------------------------------------------------

    @guarded(handoffs.post("/v1/handoffs", summary="Initiate a handoff to another agent", auth="agent",
                           request=HANDOFF_SCHEMA, responses={200: OBJ, 201: OBJ, **ERRORS}))
    async def initiate_handoff(request: web.Request) -> web.Response:
        c = caller(request)
        body = await read_json(request)
        handoff, created = await hub.initiate_handoff(
            c, target=body["target"], context=body.get("context", {}),
            expires_in_s=float(body.get("expires_in_s", 3600)), handoff_id=body.get("id"))
        return web.json_response(handoff.to_json(), status=201 if created else 200)

    @guarded(handoffs.get("/v1/handoffs/{id}", summary="One handoff", auth="agent", responses={200: OBJ, **ERRORS}))
    async def get_handoff(request: web.Request) -> web.Response:
        c = caller(request)
        handoff = await hub.handoffs.get(request.match_info["id"])
        if not c.admin and c.id not in (handoff.initiator, handoff.target):
            raise NotFound(f"no handoff {handoff.id!r}")
        return web.json_response(handoff.to_json())

    def transition(action: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            c = caller(request)
            raw = await read_json(request) if request.can_read_body else {}
            body = raw if isinstance(raw, dict) else {}
            handoff, changed = await hub.handoff_transition(c, request.match_info["id"], action,
                                                            result=body.get("result"), reason=body.get("reason"))
            return web.json_response({**handoff.to_json(), "changed": changed})

        handler.__name__ = f"{action}_handoff"
        return handler

    for action in ("accept", "complete", "reject", "cancel"):
        guarded(handoffs.post(f"/v1/handoffs/{{id}}/{action}", summary=f"{action.capitalize()} a handoff",
                              auth="agent", request=TRANSITION_SCHEMA, responses={200: OBJ, **ERRORS}))(
            transition(action))

    # -- pools and memories -----------------------------------------------------------------------

    @guarded(pools.post("/v1/pools", summary="Create a pool (the creator becomes its ADMIN)", auth="agent",
                        request=POOL_SCHEMA, responses={201: OBJ, **ERRORS}))
    async def create_pool(request: web.Request) -> web.Response:
        c = caller(request)
        body = await read_json(request)
        pool = await hub.pools.create(c, name=body["name"], scope=body["scope"],
                                      description=body.get("description", ""))
        return web.json_response(pool.to_json(), status=201)

    @guarded(pools.get("/v1/pools", summary="Pools the caller belongs to", auth="agent",
                       responses={200: OBJ, **ERRORS}))
    async def list_pools(request: web.Request) -> web.Response:
        c = caller(request)
        return web.json_response({"pools": [{**p.to_json(), "permission": hub.pools.permission(p.id, c.id)}
                                            for p in hub.pools.visible_pools(c)]})

    @guarded(pools.get("/v1/pools/{id}", summary="One pool and its members", auth="agent",
                       responses={200: OBJ, **ERRORS}))
    async def get_pool(request: web.Request) -> web.Response:
        c = caller(request)
        members = hub.pools.members(c, request.match_info["id"])
        return web.json_response({**hub.pools.pool(request.match_info["id"]).to_json(), "members": members})

    @guarded(pools.post("/v1/pools/{id}/members", summary="Add a member or change its permission (pool ADMIN)",
                        auth="agent", request=MEMBER_SCHEMA, responses={200: OBJ, **ERRORS}))
    async def join_pool(request: web.Request) -> web.Response:
        c = caller(request)
        body = await read_json(request)
        hub.registry.require(body["agent_id"])
        await hub.pools.join(c, request.match_info["id"], agent_id=body["agent_id"], permission=body["permission"])
        return web.json_response({"pool": request.match_info["id"], "agent_id": body["agent_id"],
                                  "permission": body["permission"]})

    @guarded(pools.delete("/v1/pools/{id}/members/{agent_id}", summary="Leave a pool (or remove a member)",
                          auth="agent", responses={204: None, **ERRORS}))
    async def leave_pool(request: web.Request) -> web.Response:
        c = caller(request)
        await hub.pools.leave(c, request.match_info["id"], agent_id=request.match_info["agent_id"])
        return web.Response(status=204)

    @guarded(pools.post("/v1/pools/{id}/share", summary="Share an own memory into the pool at a scope",
                        auth="agent", request=SHARE_SCHEMA, responses={200: OBJ, **ERRORS}))
    async def share_memory(request: web.Request) -> web.Response:
        c = caller(request)
        body = await read_json(request)
        item = await hub.pools.share(c, body["memory_id"], pool_id=request.match_info["id"], scope=body["scope"])
        return web.json_response({"id": item.id, "pool": item.pool, "scope": item.scope})

    @guarded(pools.post("/v1/pools/{id}/query", summary="Query a pool's memories up to a scope", auth="agent",
                        request=QUERY_SCHEMA, responses={200: OBJ, **ERRORS}))
    async def query_pool(request: web.Request) -> web.Response:
        c = caller(request)
        body = await read_json(request)
        items = await hub.pools.query(c, pool_id=request.match_info["id"], text=body.get("text"),
                                      up_to_scope=body.get("up_to_scope", "GLOBAL"), limit=body.get("limit", 20))
        return web.json_response({"items": items})

    @guarded(pools.post("/v1/memories", summary="Write a memory (private, or into a pool)", auth="agent",
                        request=MEMORY_SCHEMA, responses={201: OBJ, **ERRORS, 422: PROBLEM_SCHEMA}))
    async def create_memory(request: web.Request) -> web.Response:
        c = caller(request)
        body = await read_json(request)
        pool = body.get("pool")
        item = await hub.pools.create_memory(
            c, content=body["content"], pool_id=pool, scope=body.get("scope", "AGENT_PRIVATE" if pool is None
                                                                      else hub.pools.pool(pool).scope),
            type=body.get("type", "long_term"), metadata=body.get("metadata", {}), visibility=body.get("visibility"),
            ttl_s=body.get("ttl_s"))
        return web.json_response(item.to_json(), status=201)

    @guarded(pools.post("/v1/memories/query", summary="Query the caller's private memories", auth="agent",
                        request=QUERY_SCHEMA, responses={200: OBJ, **ERRORS}))
    async def query_memories(request: web.Request) -> web.Response:
        c = caller(request)
        body = await read_json(request)
        items = await hub.pools.query(c, pool_id=None, text=body.get("text"),
                                      up_to_scope=body.get("up_to_scope", "GLOBAL"), limit=body.get("limit", 20))
        return web.json_response({"items": items})

    @guarded(pools.get("/v1/memories/{id}", summary="Read one memory", auth="agent", responses={200: OBJ, **ERRORS}))
    async def get_memory(request: web.Request) -> web.Response:
        c = caller(request)
        return web.json_response(await hub.pools.get_memory(c, request.match_info["id"]))

    @guarded(pools.delete("/v1/memories/{id}", summary="Delete a memory", auth="agent",
                          responses={204: None, **ERRORS}))
    async def delete_memory(request: web.Request) -> web.Response:
        c = caller(request)
        await hub.pools.delete_memory(c, request.match_info["id"])
        return web.Response(status=204)

    # -- policies ---------------------------------------------------------------------------------

    @guarded(policies.get("/v1/policies", summary="List policy rules", auth="admin", responses={200: OBJ}))
    async def list_policies(request: web.Request) -> web.Response:
        return web.json_response({"policies": [r.to_json() for r in
                                               sorted(hub.rules.values(), key=lambda r: (-r.priority, r.id))]})

    @guarded(policies.post("/v1/policies", summary="Create a policy rule", auth="admin", request=RULE_SCHEMA,
                           responses={201: OBJ, **ERRORS, 422: PROBLEM_SCHEMA}))
    async def create_policy(request: web.Request) -> web.Response:
        rule = Rule.from_json(await read_json(request))
        if rule.id in hub.rules:
            raise Problem(409, f"policy {rule.id} exists; PUT /v1/policies/{rule.id} replaces it", kind="conflict")
        await hub.put_rule(rule)
        return web.json_response(rule.to_json(), status=201)

    @guarded(policies.get("/v1/policies/{id}", summary="One policy rule", auth="admin",
                          responses={200: OBJ, **ERRORS}))
    async def get_policy(request: web.Request) -> web.Response:
        rule = hub.rules.get(request.match_info["id"])
        if rule is None:
            raise NotFound(f"no policy {request.match_info['id']!r}")
        return web.json_response(rule.to_json())

    @guarded(policies.route("PUT", "/v1/policies/{id}", summary="Replace a policy rule", auth="admin",
                            request=RULE_SCHEMA, responses={200: OBJ, **ERRORS, 422: PROBLEM_SCHEMA}))
    async def put_policy(request: web.Request) -> web.Response:
        rule = Rule.from_json(await read_json(request), rule_id=request.match_info["id"])
        await hub.put_rule(rule)
        return web.json_response(rule.to_json())

    @guarded(policies.delete("/v1/policies/{id}", summary="Delete a policy rule", auth="admin",
                             responses={204: None, **ERRORS}))
    async def delete_policy(request: web.Request) -> web.Response:
        await hub.delete_rule(request.match_info["id"])
        return web.Response(status=204)

    @guarded(policies.post("/v1/policies/{id}/test", summary="Evaluate one rule, and all rules, on a context",
                           auth="admin", request=POLICY_TEST_SCHEMA, responses={200: OBJ, **ERRORS}))
    async def test_policy(request: web.Request) -> web.Response:
        rule = hub.rules.get(request.match_info["id"])
        if rule is None:
            raise NotFound(f"no policy {request.match_info['id']!r}")
        context = (await read_json(request))["context"]
        return web.json_response({"rule": rule.id, "matches": matches(rule, context),
                                  "effect_if_matched": rule.effect, "decision": hub.decide(context).to_json()})

    @guarded(policies.get("/v1/hub/stats", summary="Hub counters", auth="admin", responses={200: OBJ}))
    async def hub_stats(request: web.Request) -> web.Response:
        r = hub.router
        return web.json_response({
            "agents": len(hub.registry.all()),
            "online": sum(1 for a in hub.registry.all() if hub.registry.online(a.id)),
            "messages": {"delivered": r.delivered, "queued": r.queued, "dead_lettered": r.dead_lettered,
                         "refused": r.refused, "pending": await r.pending_count()},
            "handoff_transitions": hub.handoffs.transitions,
            "rate_limited": hub.agent_limits.refused + hub.session_limits.refused,
        })

    tables = [agents, messages, handoffs, pools, policies]
    if hub.mcp_enabled:
        mcp = Routes(tag="mcp")

        async def mcp_endpoint(request: web.Request) -> web.StreamResponse:
            bridge = await hub.mcp_bridge()
            if bridge is None:
                raise Problem(503, "the MCP endpoint is not running", kind="mcp-unavailable")
            return await bridge.handle(request, principal(request))  # type: ignore[no-any-return]

        # No GET: the bridge runs the SDK stateless with JSON answers, so there is no server-initiated SSE
        # stream to open (MCP streamable HTTP lets a server answer GET with 405, which aiohttp then does).
        for method in ("POST", "DELETE"):
            async def handler(request: web.Request) -> web.StreamResponse:
                return await mcp_endpoint(request)

            handler.__name__ = f"mcp_{method.lower()}"
            mcp.route(method, "/mcp", summary="MCP (streamable HTTP): the hub's operations as tools", auth="agent",
                      responses={200: OBJ, 202: None, 400: None, 404: None, 405: None, 406: None})(handler)
        tables.append(mcp)
    return tables
