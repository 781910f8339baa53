"""Shared memory pools and every agent-facing memory operation, with the checks that isolate agents.

A pool has a widest scope (``AGENT_PRIVATE < USER < PROJECT < TEAM < GLOBAL``) and members with a
permission (``READ < WRITE < ADMIN``). An agent reads a memory when it owns it, or when the memory sits in
a pool it is a member of with visibility ``pool``/``public`` and a scope within the agent's reach, or when
an accepted handoff to it names the memory. Sensitive memories (type ``profile`` or ``metadata.sensitive``)
need the higher trust gate. Every check raises ``Forbidden``; nothing here returns partial data silently.
"""

from __future__ import annotations

import re
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from daemon.hub.db import HubDatabase
from daemon.hub.defences import AnomalyScorer, OutputLimits, limit_text, mask_secrets, require_clean
from daemon.hub.errors import Conflict, Forbidden, InvalidRequest, NotFound
from daemon.hub.registry import SCOPES, Agent, scope_rank
from daemon.store import Store, StoreError
from daemon.store.memory import MemoryFilter, MemoryItem

PERMISSIONS = ("READ", "WRITE", "ADMIN")
PRIVATE_POOL = "private"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")


def perm_rank(permission: str) -> int:
    return PERMISSIONS.index(permission)


@dataclass(frozen=True, slots=True)
class Caller:
    """The principal behind one request, as the checks need it; ``agent`` is None for the admin token."""

    id: str
    admin: bool
    level: int
    capabilities: frozenset[str]
    agent: Agent | None
    session: str | None = None

    @property
    def reach(self) -> str:
        return "GLOBAL" if self.agent is None else self.agent.reach


@dataclass(frozen=True, slots=True)
class Pool:
    id: str
    name: str
    scope: str
    owner: str
    description: str
    created: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "scope": self.scope, "owner": self.owner,
                "description": self.description, "created": self.created}


class Authorize(Protocol):
    """The hub's guard: capability, trust gate and policy (audited); raises ``Forbidden``."""

    def __call__(self, caller: Caller, *, scope: str, operation: str, gate: str, capability: str | None,
                 resource: Mapping[str, Any]) -> Awaitable[Mapping[str, Any]]: ...


def sensitive(item: MemoryItem) -> bool:
    return item.type == "profile" or item.metadata.get("sensitive") is True


class Pools:
    def __init__(self, db: HubDatabase, store: Store, *, authorize: Authorize,
                 granting_initiators: Callable[[str, str], Awaitable[set[str]]],
                 audit: Callable[[str, str, str, Mapping[str, Any]], None], anomaly: AnomalyScorer,
                 limits: OutputLimits, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._store = store
        self._authorize = authorize
        self._granting = granting_initiators
        self._audit = audit
        self._anomaly = anomaly
        self._limits = limits
        self._clock = clock
        self._pools: dict[str, Pool] = {}
        self._members: dict[str, dict[str, str]] = {}  # pool id -> agent id -> permission

    async def load(self) -> None:
        rows = await self._db.read(lambda c: c.execute(
            "SELECT id, name, scope, owner, description, created FROM pools").fetchall())
        for r in rows:
            self._pools[r[0]] = Pool(*r)
            self._members[r[0]] = {}
        for pool_id, agent_id, perm in await self._db.read(lambda c: c.execute(
                "SELECT pool_id, agent_id, permission FROM pool_members").fetchall()):
            self._members.setdefault(pool_id, {})[agent_id] = perm

    # -- pools ------------------------------------------------------------------------------------

    def pool(self, pool_id: str) -> Pool:
        found = self._pools.get(pool_id)
        if found is None:
            raise NotFound(f"no pool {pool_id!r}")
        return found

    def permission(self, pool_id: str, agent_id: str) -> str | None:
        return self._members.get(pool_id, {}).get(agent_id)

    def _need(self, caller: Caller, pool: Pool, permission: str) -> None:
        if caller.admin:
            return
        have = self.permission(pool.id, caller.id)
        if have is None or perm_rank(have) < perm_rank(permission):
            raise Forbidden(f"needs {permission} in pool {pool.id}, caller has {have or 'no membership'}")

    def visible_pools(self, caller: Caller) -> list[Pool]:
        if caller.admin:
            return list(self._pools.values())
        return [p for pid, p in self._pools.items() if caller.id in self._members.get(pid, {})]

    def members(self, caller: Caller, pool_id: str) -> dict[str, str]:
        pool = self.pool(pool_id)
        self._need(caller, pool, "READ")
        return dict(self._members.get(pool.id, {}))

    async def create(self, caller: Caller, *, name: str, scope: str, description: str = "") -> Pool:
        if not NAME_RE.match(name):
            raise InvalidRequest(f"pool name must match {NAME_RE.pattern}")
        if scope not in SCOPES or scope == "AGENT_PRIVATE":
            raise InvalidRequest("pool scope must be USER, PROJECT, TEAM or GLOBAL")
        if not caller.admin and scope_rank(scope) > scope_rank(caller.reach):
            raise Forbidden(f"pool scope {scope} is beyond the caller's reach {caller.reach}")
        await self._authorize(caller, scope="pool", operation="pool.create", gate="write_shared",
                              capability="POOL_CREATE", resource={"pool": {"name": name, "scope": scope}})
        pool = Pool(f"pool-{uuid.uuid4().hex[:16]}", name, scope, caller.id, description, self._clock())

        def run(conn: sqlite3.Connection) -> None:
            try:
                conn.execute("INSERT INTO pools(id, name, scope, owner, description, created) VALUES (?,?,?,?,?,?)",
                             (pool.id, pool.name, pool.scope, pool.owner, pool.description, pool.created))
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"a pool named {name!r} exists") from exc
            if not caller.admin:
                conn.execute("INSERT INTO pool_members(pool_id, agent_id, permission, joined) VALUES (?,?,?,?)",
                             (pool.id, caller.id, "ADMIN", pool.created))

        await self._db.write(run)
        self._pools[pool.id] = pool
        self._members[pool.id] = {} if caller.admin else {caller.id: "ADMIN"}
        return pool

    async def join(self, caller: Caller, pool_id: str, *, agent_id: str, permission: str) -> None:
        """Add or change a member; needs ADMIN in the pool, and never grants above the caller's own."""
        if permission not in PERMISSIONS:
            raise InvalidRequest(f"permission must be one of {', '.join(PERMISSIONS)}")
        pool = self.pool(pool_id)
        self._need(caller, pool, "ADMIN")
        await self._authorize(caller, scope="pool", operation="pool.join", gate="write_shared", capability=None,
                              resource={"pool": pool.to_json(), "member": agent_id, "permission": permission})
        now = self._clock()
        await self._db.write(lambda c: c.execute(
            "INSERT INTO pool_members(pool_id, agent_id, permission, joined) VALUES (?,?,?,?)"
            " ON CONFLICT(pool_id, agent_id) DO UPDATE SET permission = excluded.permission",
            (pool.id, agent_id, permission, now)))
        self._members.setdefault(pool.id, {})[agent_id] = permission

    async def leave(self, caller: Caller, pool_id: str, *, agent_id: str) -> bool:
        pool = self.pool(pool_id)
        if agent_id != caller.id:
            self._need(caller, pool, "ADMIN")
        await self._db.write(lambda c: c.execute(
            "DELETE FROM pool_members WHERE pool_id = ? AND agent_id = ?", (pool.id, agent_id)))
        return self._members.get(pool.id, {}).pop(agent_id, None) is not None

    # -- memories ---------------------------------------------------------------------------------

    async def create_memory(self, caller: Caller, *, content: str, pool_id: str | None, scope: str,
                            type: str, metadata: Mapping[str, Any], visibility: str | None,
                            ttl_s: float | None) -> MemoryItem:
        if scope not in SCOPES:
            raise InvalidRequest(f"scope must be one of {', '.join(SCOPES)}")
        require_clean(content)
        if pool_id is None:
            if scope != "AGENT_PRIVATE":
                raise InvalidRequest("a memory with a scope wider than AGENT_PRIVATE belongs in a pool")
            await self._authorize(caller, scope="memory", operation="memory.write", gate="write_own",
                                  capability="MEMORY_WRITE", resource={"memory": {"scope": scope, "type": type}})
            pool_name, vis = PRIVATE_POOL, visibility or "private"
        else:
            pool = self.pool(pool_id)
            self._check_share_scope(caller, pool, scope)
            self._need(caller, pool, "WRITE")
            await self._authorize(caller, scope="memory", operation="memory.write_shared", gate="write_shared",
                                  capability="MEMORY_WRITE",
                                  resource={"memory": {"scope": scope, "type": type}, "pool": pool.to_json()})
            pool_name, vis = pool.id, visibility or "pool"
        try:
            return await self._store.memory.create(
                owner_type="admin" if caller.admin else "agent", owner_id=caller.id, content=content, pool=pool_name,
                scope=scope, type=type, metadata=metadata, visibility=vis, ttl_s=ttl_s)
        except StoreError as exc:
            raise InvalidRequest(str(exc)) from None

    def _check_share_scope(self, caller: Caller, pool: Pool, scope: str) -> None:
        if scope not in SCOPES:
            raise InvalidRequest(f"scope must be one of {', '.join(SCOPES)}")
        if scope_rank(scope) > scope_rank(pool.scope):
            raise Forbidden(f"scope {scope} is wider than pool {pool.id}'s {pool.scope}")
        if not caller.admin and scope_rank(scope) > scope_rank(caller.reach):
            raise Forbidden(f"scope {scope} is beyond the caller's reach {caller.reach}")

    async def share(self, caller: Caller, memory_id: str, *, pool_id: str, scope: str) -> MemoryItem:
        item = await self._item(memory_id)
        if not caller.admin and (item.owner_id != caller.id or item.owner_type != "agent"):
            raise Forbidden("only the owner may share a memory")
        pool = self.pool(pool_id)
        self._check_share_scope(caller, pool, scope)
        self._need(caller, pool, "WRITE")
        require_clean(item.content)
        await self._authorize(caller, scope="memory", operation="memory.share", gate="write_shared",
                              capability="MEMORY_WRITE", resource={"memory": _meta(item), "pool": pool.to_json()})
        return await self._store.memory.update(memory_id, pool=pool.id, scope=scope, visibility="pool")

    async def _item(self, memory_id: str) -> MemoryItem:
        item = await self._store.memory.get(memory_id)
        if item is None:
            raise NotFound(f"no memory {memory_id!r}")
        return item

    async def may_read(self, caller: Caller, item: MemoryItem) -> str:
        """How the caller may read ``item`` (``own``, ``pool``, ``handoff``, ``admin``); Forbidden otherwise."""
        if caller.admin:
            return "admin"
        if item.owner_type == "agent" and item.owner_id == caller.id:
            return "own"
        in_reach = scope_rank(item.scope) <= scope_rank(caller.reach)
        shared = item.visibility != "private" and item.scope != "AGENT_PRIVATE" and in_reach
        if shared and item.pool in self._pools and self.permission(item.pool, caller.id) is not None:
            return "pool"
        if item.owner_id in await self._granting(caller.id, item.id):
            return "handoff"
        raise Forbidden(f"memory {item.id} is not readable by {caller.id}")

    async def get_memory(self, caller: Caller, memory_id: str) -> dict[str, Any]:
        item = await self._item(memory_id)
        how = await self.may_read(caller, item)
        gate = "read_sensitive" if sensitive(item) else "read_public"
        decision = await self._authorize(caller, scope="memory", operation="memory.read", gate=gate,
                                         capability="MEMORY_READ", resource={"memory": _meta(item), "access": how})
        if how in ("pool", "handoff"):
            self._audit("cross_agent_read", caller.id, item.id, {"owner": item.owner_id, "via": how})
        return self._present([item], decision)[0]

    async def delete_memory(self, caller: Caller, memory_id: str) -> None:
        item = await self._item(memory_id)
        own = item.owner_type == "agent" and item.owner_id == caller.id
        if not caller.admin and not own:
            if item.pool not in self._pools:
                raise Forbidden("only the owner may delete this memory")
            self._need(caller, self._pools[item.pool], "ADMIN")
        await self._authorize(caller, scope="memory", operation="memory.delete",
                              gate="write_own" if own else "write_shared", capability="MEMORY_DELETE",
                              resource={"memory": _meta(item)})
        await self._store.memory.delete(memory_id)

    async def query(self, caller: Caller, *, pool_id: str | None, text: str | None, up_to_scope: str,
                    limit: int) -> list[dict[str, Any]]:
        """Memories the caller may read, in one pool (or its own private ones), up to a scope."""
        if up_to_scope not in SCOPES:
            raise InvalidRequest(f"up_to_scope must be one of {', '.join(SCOPES)}")
        reach = up_to_scope if caller.admin else SCOPES[min(scope_rank(up_to_scope), scope_rank(caller.reach))]
        scopes = list(SCOPES[: scope_rank(reach) + 1])
        if pool_id is None:
            flt = MemoryFilter(owner_id=caller.id, pools=[PRIVATE_POOL], scopes=scopes)
            resource: dict[str, Any] = {"pool": None}
        else:
            pool = self.pool(pool_id)
            self._need(caller, pool, "READ")
            flt = MemoryFilter(pools=[pool.id], scopes=[s for s in scopes if s != "AGENT_PRIVATE"],
                               visibility=["pool", "public"])
            resource = {"pool": pool.to_json()}
        level_ok_sensitive = caller.admin or caller.level >= self._sensitive_level
        capability = "KB_SEARCH" if text else "MEMORY_READ"
        decision = await self._authorize(caller, scope="memory", operation="memory.query", gate="read_public",
                                         capability=capability, resource={**resource, "up_to_scope": reach})
        if not caller.admin:
            self._anomaly.check(caller.id, text)
        limit = max(1, min(limit, self._limits.max_items, int(decision.get("limit", 10**9))))
        # Twice as many when sensitive items will be dropped below, so the answer is still ``limit`` long;
        # a top-k search costs more the larger k is, so not when nothing is dropped.
        fetch = limit if level_ok_sensitive else limit * 2
        try:
            if text:
                items = [h.item for h in await self._store.memory.search(text=text, flt=flt, limit=fetch)]
            else:
                items = await self._store.memory.list_items(flt, limit=fetch)
        except StoreError as exc:
            raise InvalidRequest(str(exc)) from None
        if not level_ok_sensitive:
            items = [i for i in items if not sensitive(i)]
        items = items[:limit]
        if not caller.admin:
            self._anomaly.record(caller.id, text, len(items))
            others = [i.id for i in items if i.owner_id != caller.id]
            if others:
                self._audit("cross_agent_read", caller.id, pool_id or PRIVATE_POOL, {"memories": others[:50]})
        return self._present(items, decision)

    _sensitive_level = 3

    def set_sensitive_level(self, level: int) -> None:
        self._sensitive_level = level

    def _present(self, items: list[MemoryItem], decision: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Output defences: secret masking, per-item and total size limits."""
        out: list[dict[str, Any]] = []
        total = 0
        per_item = int(decision.get("max_chars", self._limits.max_chars_per_item))
        for item in items:
            data = item.to_json()
            text, masked = mask_secrets(item.content)
            text, truncated = limit_text(text, per_item)
            if total + len(text) > self._limits.max_total_chars:
                break
            total += len(text)
            data["content"] = text
            data["masked_secrets"] = masked
            data["truncated"] = truncated
            out.append(data)
        return out


def _meta(item: MemoryItem) -> dict[str, Any]:
    return {"id": item.id, "owner_id": item.owner_id, "pool": item.pool, "scope": item.scope, "type": item.type,
            "visibility": item.visibility, "sensitive": sensitive(item)}
