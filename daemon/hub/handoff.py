"""Handoffs between agents: initiate -> accept -> complete | reject | expire | cancel, durable in hub.db.

Transitions are idempotent: repeating the transition that produced the current state (same actor) answers
with the handoff as it is; any other transition from a final state is a conflict. Only the named target
may accept, reject or complete; only the initiator may cancel (the admin may cancel anything). A pending
handoff expires at ``expires_at``; the sweeper (and every read) applies that, so an expiry missed while the
daemon was down happens at the next start.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from daemon.hub.db import HubDatabase
from daemon.hub.errors import Conflict, Forbidden, InvalidRequest, NotFound

STATES = ("pending", "accepted", "completed", "rejected", "expired", "cancelled")
FINAL = frozenset({"completed", "rejected", "expired", "cancelled"})
# action -> (states it may start from, state it leads to, who may do it)
TRANSITIONS: Mapping[str, tuple[frozenset[str], str, str]] = {
    "accept": (frozenset({"pending"}), "accepted", "target"),
    "reject": (frozenset({"pending", "accepted"}), "rejected", "target"),
    "complete": (frozenset({"accepted"}), "completed", "target"),
    "cancel": (frozenset({"pending", "accepted"}), "cancelled", "initiator"),
}
DEFAULT_EXPIRY_S = 3600.0
MAX_EXPIRY_S = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class Handoff:
    id: str
    initiator: str
    target: str
    state: str
    context: Mapping[str, Any]
    result: Mapping[str, Any] | None
    reason: str | None
    created: float
    updated: float
    expires_at: float
    history: tuple[Mapping[str, Any], ...]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "initiator": self.initiator, "target": self.target, "state": self.state,
                "context": dict(self.context), "result": None if self.result is None else dict(self.result),
                "reason": self.reason, "created": self.created, "updated": self.updated,
                "expires_at": self.expires_at, "history": [dict(h) for h in self.history]}

    def notice(self) -> dict[str, Any]:
        """What goes on the ``handoffs/<id>`` topic: the state, never the context."""
        return {"id": self.id, "state": self.state, "initiator": self.initiator, "target": self.target,
                "updated": self.updated}


_COLUMNS = "id, initiator, target, state, context, result, reason, created, updated, expires_at, history"


def _row(r: Any) -> Handoff:
    return Handoff(r[0], r[1], r[2], r[3], json.loads(r[4]), None if r[5] is None else json.loads(r[5]), r[6],
                   r[7], r[8], r[9], tuple(json.loads(r[10])))


Notify = Callable[[Handoff], Awaitable[None]]


class Handoffs:
    def __init__(self, db: HubDatabase, *, notify: Notify, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._notify = notify
        self._clock = clock
        self.transitions = 0

    async def initiate(self, *, initiator: str, target: str, context: Mapping[str, Any],
                       expires_in_s: float = DEFAULT_EXPIRY_S, handoff_id: str | None = None) -> tuple[Handoff, bool]:
        """Create a pending handoff; returns (handoff, created). Re-sending the same id is idempotent."""
        if initiator == target:
            raise InvalidRequest("an agent cannot hand off to itself")
        if not 0 < expires_in_s <= MAX_EXPIRY_S:
            raise InvalidRequest(f"expires_in_s must be in (0, {MAX_EXPIRY_S:g}]")
        now = self._clock()
        hid = handoff_id or f"hof-{uuid.uuid4().hex[:20]}"
        history = [{"state": "pending", "by": initiator, "at": now}]
        ctx = json.dumps(dict(context), sort_keys=True)

        def run(conn: sqlite3.Connection) -> tuple[Handoff, bool]:
            existing = conn.execute(f"SELECT {_COLUMNS} FROM handoffs WHERE id = ?", (hid,)).fetchone()  # noqa: S608 - _COLUMNS/where are constants
            if existing is not None:
                found = _row(existing)
                if found.initiator != initiator or found.target != target or existing[4] != ctx:
                    raise Conflict(f"handoff {hid} exists with other parties or context")
                return found, False
            conn.execute(
                f"INSERT INTO handoffs({_COLUMNS}) VALUES (?, ?, ?, 'pending', ?, NULL, NULL, ?, ?, ?, ?)",  # noqa: S608 - _COLUMNS/where are constants
                (hid, initiator, target, ctx, now, now, now + expires_in_s, json.dumps(history)))
            return Handoff(hid, initiator, target, "pending", json.loads(ctx), None, None, now, now,
                           now + expires_in_s, tuple(history)), True

        handoff, created = await self._db.write(run)
        if created:
            self.transitions += 1
            await self._notify(handoff)
        return handoff, created

    async def get(self, handoff_id: str) -> Handoff:
        await self.expire()
        row = await self._db.read(lambda c: c.execute(
            f"SELECT {_COLUMNS} FROM handoffs WHERE id = ?", (handoff_id,)).fetchone())  # noqa: S608 - _COLUMNS/where are constants
        if row is None:
            raise NotFound(f"no handoff {handoff_id!r}")
        return _row(row)

    async def transition(self, handoff_id: str, action: str, *, actor: str, admin: bool = False,
                         result: Mapping[str, Any] | None = None, reason: str | None = None) -> tuple[Handoff, bool]:
        """Apply ``action``; returns (handoff, changed). ``changed`` is False for an idempotent repeat."""
        if action not in TRANSITIONS:
            raise InvalidRequest(f"unknown handoff action {action!r}")
        sources, goal, role = TRANSITIONS[action]
        await self.expire()
        now = self._clock()
        result_json = None if result is None else json.dumps(dict(result), sort_keys=True)

        def run(conn: sqlite3.Connection) -> tuple[Handoff, bool]:
            row = conn.execute(f"SELECT {_COLUMNS} FROM handoffs WHERE id = ?", (handoff_id,)).fetchone()  # noqa: S608 - _COLUMNS/where are constants
            if row is None:
                raise NotFound(f"no handoff {handoff_id!r}")
            current = _row(row)
            allowed = current.target if role == "target" else current.initiator
            if actor != allowed and not (admin and action == "cancel"):
                if actor not in (current.target, current.initiator) and not admin:
                    raise NotFound(f"no handoff {handoff_id!r}")  # do not confirm it exists to outsiders
                raise Forbidden(f"only the {role} may {action} this handoff")
            if current.state == goal:
                return current, False
            if current.state not in sources:
                raise Conflict(f"cannot {action} a handoff that is {current.state}", state=current.state)
            history = [*current.history, {"state": goal, "by": actor, "at": now}]
            conn.execute(
                "UPDATE handoffs SET state = ?, updated = ?, history = ?, result = COALESCE(?, result),"
                " reason = COALESCE(?, reason) WHERE id = ?",
                (goal, now, json.dumps(history), result_json, reason, handoff_id))
            return _row(conn.execute(f"SELECT {_COLUMNS} FROM handoffs WHERE id = ?", (handoff_id,)).fetchone()), True  # noqa: S608 - _COLUMNS/where are constants

        handoff, changed = await self._db.write(run)
        if changed:
            self.transitions += 1
            await self._notify(handoff)
        return handoff, changed

    async def list_for(self, agent_id: str, *, state: str | None = None, role: str = "any",
                       limit: int = 100) -> list[Handoff]:
        if state is not None and state not in STATES:
            raise InvalidRequest(f"state must be one of {', '.join(STATES)}")
        await self.expire()
        where = {"target": "target = ?", "initiator": "initiator = ?",
                 "any": "(target = ? OR initiator = ?)"}.get(role)
        if where is None:
            raise InvalidRequest("role must be target, initiator or any")
        args: list[Any] = [agent_id] if role != "any" else [agent_id, agent_id]
        if state is not None:
            where += " AND state = ?"
            args.append(state)
        args.append(limit)
        rows = await self._db.read(lambda c: c.execute(
            f"SELECT {_COLUMNS} FROM handoffs WHERE {where} ORDER BY created LIMIT ?", args).fetchall())  # noqa: S608 - _COLUMNS/where are constants
        return [_row(r) for r in rows]

    async def expire(self) -> list[Handoff]:
        now = self._clock()

        def run(conn: sqlite3.Connection) -> list[Handoff]:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM handoffs WHERE state = 'pending' AND expires_at <= ?",  # noqa: S608 - _COLUMNS/where are constants
                                (now,)).fetchall()
            out = []
            for r in rows:
                h = _row(r)
                history = [*h.history, {"state": "expired", "by": "hub", "at": now}]
                conn.execute("UPDATE handoffs SET state = 'expired', updated = ?, history = ? WHERE id = ?",
                             (now, json.dumps(history), h.id))
                out.append(Handoff(h.id, h.initiator, h.target, "expired", h.context, h.result, h.reason, h.created,
                                   now, h.expires_at, tuple(history)))
            return out

        expired = await self._db.write(run)
        for h in expired:
            self.transitions += 1
            await self._notify(h)
        return expired

    async def granting_initiators(self, reader: str, memory_id: str) -> set[str]:
        """Initiators of accepted or completed handoffs to ``reader`` that list ``memory_id``."""
        rows = await self._db.read(lambda c: c.execute(
            "SELECT initiator, context FROM handoffs WHERE target = ? AND state IN ('accepted', 'completed')",
            (reader,)).fetchall())
        found: set[str] = set()
        for initiator, ctx in rows:
            ids = json.loads(ctx).get("memory_ids") or []
            if isinstance(ids, list) and memory_id in ids:
                found.add(str(initiator))
        return found
