"""Agents: identity, capabilities, credentials (hashed), sessions and liveness, cached for fast lookups.

Every registered agent is held in memory (ids, token hashes, owners) so a lookup costs a dict access;
hub.db is the durable copy. API tokens are 256-bit random strings, so a SHA-256 of the token is a safe
stored form (no password stretching needed for secrets that cannot be guessed).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from daemon.hub.broker_auth import RESULT_LEAF, BrokerAccount, password_hash
from daemon.hub.db import HubDatabase
from daemon.hub.errors import Conflict, Forbidden, InvalidRequest, NotFound

AGENT_TYPES = (
    "CLAUDE_CODE", "GPT_AGENT", "GEMINI_AGENT", "LOCAL_LLM", "CUSTOM_PIPELINE", "HUMAN", "DEVICE_AGENT", "SERVICE",
)
CAPABILITIES = (
    "MEMORY_READ", "MEMORY_WRITE", "MEMORY_DELETE", "KB_SEARCH", "HANDOFF_INITIATE", "HANDOFF_RECEIVE",
    "DEVICE_READ", "DEVICE_COMMAND", "MESSAGE_BROADCAST", "POOL_CREATE",
)
SCOPES = ("AGENT_PRIVATE", "USER", "PROJECT", "TEAM", "GLOBAL")
_LLM = frozenset({"MEMORY_READ", "MEMORY_WRITE", "KB_SEARCH", "HANDOFF_INITIATE", "HANDOFF_RECEIVE", "DEVICE_READ",
                  "MESSAGE_BROADCAST", "POOL_CREATE"})
# Issue 6: CUSTOM_PIPELINE is limited to read and search; HUMAN has everything, delete included.
DEFAULT_CAPABILITIES: Mapping[str, frozenset[str]] = {
    "CLAUDE_CODE": _LLM,
    "GPT_AGENT": _LLM,
    "GEMINI_AGENT": _LLM,
    "LOCAL_LLM": _LLM,
    "CUSTOM_PIPELINE": frozenset({"MEMORY_READ", "KB_SEARCH"}),
    "HUMAN": frozenset(CAPABILITIES),
    "DEVICE_AGENT": frozenset({"DEVICE_READ", "DEVICE_COMMAND", "MEMORY_READ", "MEMORY_WRITE", "HANDOFF_RECEIVE"}),
    "SERVICE": frozenset({"MEMORY_READ", "KB_SEARCH", "HANDOFF_RECEIVE"}),
}
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # safe as one MQTT topic level and a username
TOKEN_PREFIX = "myc_"  # noqa: S105 - a prefix, not a secret


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def scope_rank(scope: str) -> int:
    return SCOPES.index(scope)


@dataclass(frozen=True, slots=True)
class Agent:
    id: str
    type: str
    owner: str
    name: str
    capabilities: frozenset[str]
    reach: str
    created: float
    metadata: Mapping[str, Any]
    mqtt_username: str
    mqtt_password_hash: str

    def account(self) -> BrokerAccount:
        return BrokerAccount(self.mqtt_username, self.mqtt_password_hash, self.id, self.capabilities)


@dataclass(slots=True)
class Liveness:
    mqtt_online: bool = False
    last_seen: float | None = None
    sessions: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Credentials:
    """What registration hands out once; only hashes are kept."""

    api_token: str
    mqtt_username: str
    mqtt_password: str


class Registry:
    """Registered agents and their liveness; load() before use."""

    def __init__(self, db: HubDatabase, *, clock: Callable[[], float] = time.time, heartbeat_timeout_s: float = 90.0
                 ) -> None:
        self._db = db
        self._clock = clock
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._by_id: dict[str, Agent] = {}
        self._by_token: dict[str, str] = {}
        self._by_owner: dict[str, set[str]] = {}
        self._live: dict[str, Liveness] = {}
        self._listeners: list[Callable[[str, bool], None]] = []

    async def load(self) -> None:
        def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(
                "SELECT id, type, owner, name, capabilities, reach, created, metadata, mqtt_username,"
                " mqtt_password_hash, token_hash FROM agents WHERE revoked = 0"
            ).fetchall()

        for row in await self._db.read(run):
            agent = Agent(row[0], row[1], row[2], row[3], frozenset(json.loads(row[4])), row[5], row[6],
                          json.loads(row[7]), row[8], row[9])
            self._index(agent, row[10])

    def _index(self, agent: Agent, thash: str) -> None:
        self._by_id[agent.id] = agent
        self._by_token[thash] = agent.id
        self._by_owner.setdefault(agent.owner, set()).add(agent.id)
        self._live.setdefault(agent.id, Liveness())

    def on_liveness(self, listener: Callable[[str, bool], None]) -> None:
        """Called with (agent id, online) whenever an agent's MQTT presence changes."""
        self._listeners.append(listener)

    # -- lookups ----------------------------------------------------------------------------------

    def get(self, agent_id: str) -> Agent | None:
        return self._by_id.get(agent_id)

    def require(self, agent_id: str) -> Agent:
        agent = self._by_id.get(agent_id)
        if agent is None:
            raise NotFound(f"no agent {agent_id!r}")
        return agent

    def by_token(self, token: str) -> Agent | None:
        agent_id = self._by_token.get(token_hash(token))
        return None if agent_id is None else self._by_id.get(agent_id)

    def all(self) -> list[Agent]:
        return list(self._by_id.values())

    def of_owner(self, owner: str) -> list[Agent]:
        return [self._by_id[i] for i in sorted(self._by_owner.get(owner, ())) if i in self._by_id]

    def accounts(self) -> Iterable[BrokerAccount]:
        return [a.account() for a in self._by_id.values()]

    # -- registration -----------------------------------------------------------------------------

    async def register(
        self,
        *,
        type: str,
        owner: str,
        name: str | None = None,
        capabilities: Iterable[str] | None = None,
        reach: str = "GLOBAL",
        agent_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        privileged: bool = False,
    ) -> tuple[Agent, Credentials]:
        """Create an agent; without ``privileged`` (the admin token) it gets at most its type's defaults."""
        if type not in AGENT_TYPES:
            raise InvalidRequest(f"type must be one of {', '.join(AGENT_TYPES)}")
        if reach not in SCOPES:
            raise InvalidRequest(f"reach must be one of {', '.join(SCOPES)}")
        defaults = DEFAULT_CAPABILITIES[type]
        caps = defaults if capabilities is None else frozenset(capabilities)
        unknown = caps - set(CAPABILITIES)
        if unknown:
            raise InvalidRequest(f"unknown capabilities: {', '.join(sorted(unknown))}")
        if not privileged and not caps <= defaults:
            raise Forbidden(f"only the admin may grant {', '.join(sorted(caps - defaults))} to a {type}")
        agent_id = agent_id or f"agt-{uuid.uuid4().hex[:16]}"
        if not ID_RE.match(agent_id):
            raise InvalidRequest(f"agent id must match {ID_RE.pattern}")
        if agent_id == RESULT_LEAF:
            raise InvalidRequest(f"agent id {RESULT_LEAF!r} is reserved (devices/<id>/cmd/{RESULT_LEAF})")
        if agent_id in self._by_id:
            raise Conflict(f"agent {agent_id} already exists")
        if not owner or len(owner) > 128:
            raise InvalidRequest("owner must be 1..128 characters")
        creds = Credentials(TOKEN_PREFIX + secrets.token_urlsafe(32), agent_id, secrets.token_urlsafe(24))
        agent = Agent(agent_id, type, owner, name or agent_id, caps, reach, self._clock(), dict(metadata or {}),
                      creds.mqtt_username, password_hash(creds.mqtt_password))
        thash = token_hash(creds.api_token)

        def run(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO agents(id, type, owner, name, capabilities, reach, token_hash, mqtt_username,"
                    " mqtt_password_hash, metadata, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (agent.id, agent.type, agent.owner, agent.name, json.dumps(sorted(caps)), reach, thash,
                     agent.mqtt_username, agent.mqtt_password_hash, json.dumps(agent.metadata), agent.created),
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"agent {agent_id} already exists") from exc

        await self._db.write(run)
        self._index(agent, thash)
        return agent, creds

    async def revoke(self, agent_id: str) -> None:
        agent = self.require(agent_id)
        await self._db.write(lambda c: c.execute("UPDATE agents SET revoked = 1 WHERE id = ?", (agent_id,)))
        self._by_id.pop(agent_id, None)
        self._by_owner.get(agent.owner, set()).discard(agent_id)
        for thash in [h for h, i in self._by_token.items() if i == agent_id]:
            del self._by_token[thash]
        self._live.pop(agent_id, None)

    # -- liveness ---------------------------------------------------------------------------------

    def seen(self, agent_id: str, *, session: str | None = None) -> None:
        live = self._live.get(agent_id)
        if live is None:
            return
        now = self._clock()
        live.last_seen = now
        if session:
            if session not in live.sessions and len(live.sessions) >= 64:
                oldest = min(live.sessions, key=live.sessions.__getitem__)
                del live.sessions[oldest]
            live.sessions[session] = now

    def set_mqtt_online(self, agent_id: str, online: bool) -> None:
        live = self._live.get(agent_id)
        if live is None:
            return
        changed = live.mqtt_online != online
        live.mqtt_online = online
        if online:
            live.last_seen = self._clock()
        if changed:
            for listener in self._listeners:
                listener(agent_id, online)

    def mqtt_online(self, agent_id: str) -> bool:
        live = self._live.get(agent_id)
        return live is not None and live.mqtt_online

    def online(self, agent_id: str) -> bool:
        live = self._live.get(agent_id)
        if live is None:
            return False
        if live.mqtt_online:
            return True
        return live.last_seen is not None and self._clock() - live.last_seen < self.heartbeat_timeout_s

    def describe(self, agent: Agent) -> dict[str, Any]:
        live = self._live.get(agent.id, Liveness())
        return {
            "id": agent.id, "type": agent.type, "owner": agent.owner, "name": agent.name,
            "capabilities": sorted(agent.capabilities), "reach": agent.reach, "created": agent.created,
            "metadata": dict(agent.metadata), "mqtt_username": agent.mqtt_username,
            "status": "online" if self.online(agent.id) else "offline", "mqtt_connected": live.mqtt_online,
            "last_seen": live.last_seen,
            "sessions": [{"id": s, "last_seen": t} for s, t in sorted(live.sessions.items(), key=lambda kv: -kv[1])],
        }
