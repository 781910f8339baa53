"""Agent messages: the envelope codec (pure) and the router (policy, rate limit, queue, correlation).

Envelope (JSON object): ``{id, from, to, type, ts, correlation_id, ttl_s, body}``; ``type`` is one of
REQUEST, RESPONSE, EVENT, COMMAND, HEARTBEAT, BROADCAST, ACK; ``to`` is an agent id, or ``*`` for a
broadcast. The hub is the only publisher on ``agents/<id>/inbox``: an agent publishes on its own
``outbox`` (the broker refuses anything else), the hub checks and stamps the sender, and delivers to the
target's inbox when it is connected, else queues it durably until its TTL, then dead-letters it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from daemon.hub.db import HubDatabase
from daemon.hub.errors import EnvelopeError, Forbidden, HubError, NotFound
from daemon.hub.registry import Registry

log = logging.getLogger(__name__)

MESSAGE_TYPES = ("REQUEST", "RESPONSE", "EVENT", "COMMAND", "HEARTBEAT", "BROADCAST", "ACK")
BROADCAST_TO = "*"
MAX_ENVELOPE_BYTES = 256 * 1024
MAX_TTL_S = 7 * 86400.0
DEFAULT_TTL_S = 3600.0
_FIELDS = ("id", "from", "to", "type", "ts", "correlation_id", "ttl_s", "body")


@dataclass(frozen=True, slots=True)
class Envelope:
    id: str
    sender: str
    to: str
    type: str
    ts: float
    correlation_id: str | None
    ttl_s: float
    body: Any

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "from": self.sender, "to": self.to, "type": self.type, "ts": self.ts,
                "correlation_id": self.correlation_id, "ttl_s": self.ttl_s, "body": self.body}


def _text(data: Mapping[str, Any], name: str, *, optional: bool = False) -> str | None:
    value = data.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 128:
        raise EnvelopeError(f"'{name}' must be a string of 1..128 characters")
    return value


def from_mapping(data: Any, *, default_ts: float | None = None) -> Envelope:
    """Validate a decoded JSON value as an envelope; ``EnvelopeError`` is the only error raised."""
    if not isinstance(data, dict):
        raise EnvelopeError("envelope must be a JSON object")
    extra = set(data) - set(_FIELDS)
    if extra:
        raise EnvelopeError(f"unknown envelope fields: {', '.join(sorted(map(str, extra)))}")
    kind = data.get("type")
    if kind not in MESSAGE_TYPES:
        raise EnvelopeError(f"'type' must be one of {', '.join(MESSAGE_TYPES)}")
    ts = data.get("ts", default_ts)
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise EnvelopeError("'ts' must be a finite number (seconds since the epoch)")
    ttl = data.get("ttl_s", DEFAULT_TTL_S)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL_S:
        raise EnvelopeError(f"'ttl_s' must be a number in (0, {MAX_TTL_S:g}]")
    sender = _text(data, "from")
    to = _text(data, "to")
    msg_id = _text(data, "id")
    assert sender is not None and to is not None and msg_id is not None
    return Envelope(msg_id, sender, to, str(kind), float(ts), _text(data, "correlation_id", optional=True),
                    float(ttl), data.get("body"))


def decode(raw: bytes) -> Envelope:
    """Bytes from MQTT (UTF-8 JSON) to an envelope."""
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError(f"envelope exceeds {MAX_ENVELOPE_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise EnvelopeError(f"not JSON: {exc}") from None
    return from_mapping(data)


def encode(envelope: Envelope) -> bytes:
    try:
        return json.dumps(envelope.to_json(), separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise EnvelopeError(f"body is not JSON-serialisable: {exc}") from None


Publish = Callable[[str, bytes, int], Awaitable[bool]]
Check = Callable[[Envelope], Awaitable[None]]


@dataclass(slots=True)
class _Pending:
    requester: str
    target: str
    expires: float
    future: asyncio.Future[Envelope] | None = None


class MessageRouter:
    """Routes envelopes between agents; ``check`` (policy, rate limit, capability) runs before delivery."""

    def __init__(
        self,
        *,
        db: HubDatabase,
        registry: Registry,
        topic_base: str,
        publish: Publish | None,
        check: Check,
        on_dead_letter: Callable[[Envelope, str, str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._registry = registry
        self._topic_base = topic_base
        self._publish = publish
        self._check = check
        self._on_dead = on_dead_letter
        self._clock = clock
        self._pending: dict[str, _Pending] = {}
        self._arrivals: dict[str, asyncio.Event] = {}
        self._flushing: dict[str, asyncio.Lock] = {}
        self.delivered = 0
        self.queued = 0
        self.dead_lettered = 0
        self.refused = 0

    def inbox_topic(self, agent_id: str) -> str:
        return f"{self._topic_base}/agents/{agent_id}/inbox"

    async def load(self) -> None:
        row = await self._db.read(lambda c: c.execute(
            "SELECT value FROM counters WHERE name = 'dead_letters'").fetchone())
        self.dead_lettered = int(row[0]) if row else 0

    # -- sending ----------------------------------------------------------------------------------

    async def send(self, envelope: Envelope, *, qos: int = 1) -> dict[str, str]:
        """Check and route one envelope from an authenticated sender; returns target -> outcome.

        Live delivery keeps the sender's QoS (at most 1); queued messages are always delivered at QoS 1.
        """
        if envelope.type == "HEARTBEAT":
            self._registry.seen(envelope.sender)
            return {}
        try:
            await self._check(envelope)
            targets = self._targets(envelope)
            self._correlate(envelope)
        except HubError:
            self.refused += 1
            raise
        outcomes: dict[str, str] = {}
        for target in targets:
            outcomes[target] = await self._deliver(target, replace(envelope, to=target)
                                                   if envelope.to == BROADCAST_TO else envelope, qos=qos)
        return outcomes

    def _targets(self, envelope: Envelope) -> list[str]:
        if envelope.to == BROADCAST_TO or envelope.type == "BROADCAST":
            if envelope.to != BROADCAST_TO:
                raise Forbidden("a BROADCAST goes to '*'")
            return sorted(a.id for a in self._registry.all() if a.id != envelope.sender)
        if self._registry.get(envelope.to) is None:
            raise NotFound(f"no agent {envelope.to!r}")
        return [envelope.to]

    def _correlate(self, envelope: Envelope) -> None:
        now = self._clock()
        if len(self._pending) > 10_000:
            for key in [k for k, p in self._pending.items() if p.expires < now and p.future is None]:
                del self._pending[key]
        if envelope.type == "REQUEST":
            self._pending.setdefault(envelope.id, _Pending(envelope.sender, envelope.to, now + envelope.ttl_s))
        elif envelope.type == "RESPONSE" and envelope.correlation_id:
            pending = self._pending.get(envelope.correlation_id)
            if pending is None:
                return
            # Only the agent asked may answer, and only to the one who asked: no forged responses.
            if envelope.sender != pending.target or envelope.to != pending.requester:
                raise Forbidden("this RESPONSE does not answer a request addressed to its sender")
            del self._pending[envelope.correlation_id]
            if pending.future is not None and not pending.future.done():
                pending.future.set_result(envelope)

    def expect_response(self, request_id: str) -> asyncio.Future[Envelope]:
        pending = self._pending.get(request_id)
        if pending is None:
            raise NotFound(f"no pending request {request_id}")
        if pending.future is None:
            pending.future = asyncio.get_running_loop().create_future()
        return pending.future

    def forget(self, request_id: str) -> None:
        self._pending.pop(request_id, None)

    async def _deliver(self, target: str, envelope: Envelope, *, qos: int = 1) -> str:
        online = self._publish is not None and self._registry.mqtt_online(target)
        if online and self._publish is not None and await self._publish(
                self.inbox_topic(target), encode(envelope), min(1, qos)):
            self.delivered += 1
            return "delivered"
        await self._enqueue(target, envelope)
        return "queued"

    async def _enqueue(self, target: str, envelope: Envelope) -> None:
        payload = encode(envelope).decode()
        expires = self._clock() + envelope.ttl_s
        now = self._clock()
        await self._db.write(lambda c: c.execute(
            "INSERT INTO message_queue(target, msg_id, envelope, enqueued, expires) VALUES (?, ?, ?, ?, ?)",
            (target, envelope.id, payload, now, expires)))
        self.queued += 1
        event = self._arrivals.get(target)
        if event is not None:
            event.set()

    # -- queue ------------------------------------------------------------------------------------

    async def take(self, target: str, *, limit: int = 100) -> list[Envelope]:
        """Remove and return up to ``limit`` queued, unexpired messages for ``target``, oldest first."""
        await self.expire()
        now = self._clock()

        def run(conn: sqlite3.Connection) -> list[str]:
            rows = _queued(conn, target, now, limit)
            if rows:
                _unqueue(conn, target, rows[-1][0])
            return [str(r[1]) for r in rows]

        return [from_mapping(json.loads(text)) for text in await self._db.write(run)]

    async def wait_for(self, target: str, timeout_s: float) -> None:
        event = self._arrivals.setdefault(target, asyncio.Event())
        event.clear()
        try:
            async with asyncio.timeout(timeout_s):
                await event.wait()
        except TimeoutError:
            pass
        finally:
            self._arrivals.pop(target, None)

    async def flush(self, target: str) -> int:
        """Publish every queued message of a (re)connected agent to its inbox, in order.

        A message leaves the queue only once the broker has it: a crash or a lost broker mid-flush keeps
        the rest where it was, with its own TTL and place. One flush per agent at a time, so none is sent
        twice.
        """
        if self._publish is None:
            return 0
        lock = self._flushing.setdefault(target, asyncio.Lock())
        sent = 0
        async with lock:
            while self._registry.mqtt_online(target):
                await self.expire()
                rows = await self._db.read(functools.partial(_queued, target=target, now=self._clock(), limit=200))
                published_upto: int | None = None
                for seq, text in rows:
                    if not await self._publish(self.inbox_topic(target), str(text).encode(), 1):
                        break  # broker gone mid-flush: the rest waits for the next connect
                    published_upto = int(seq)
                    sent += 1
                    self.delivered += 1
                if published_upto is not None:
                    await self._db.write(functools.partial(_unqueue, target=target, upto_seq=published_upto))
                if published_upto is None or len(rows) < 200 or int(rows[-1][0]) != published_upto:
                    break
        return sent

    async def pending_count(self, target: str | None = None) -> int:
        sql, args = "SELECT count(*) FROM message_queue", ()
        if target is not None:
            sql, args = sql + " WHERE target = ?", (target,)  # type: ignore[assignment]
        return int((await self._db.read(lambda c: c.execute(sql, args).fetchone()))[0])

    async def expire(self) -> int:
        """Move queued messages past their TTL to the dead letters (counted durably)."""
        now = self._clock()

        def run(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
            rows = conn.execute(
                "SELECT seq, target, msg_id, envelope FROM message_queue WHERE expires <= ? ORDER BY seq LIMIT 5000",
                (now,)).fetchall()
            if not rows:
                return []
            conn.executemany(
                "INSERT INTO dead_letters(target, msg_id, envelope, reason, at) VALUES (?, ?, ?, 'ttl', ?)",
                [(r[1], r[2], r[3], now) for r in rows])
            conn.executemany("DELETE FROM message_queue WHERE seq = ?", [(r[0],) for r in rows])
            conn.execute("INSERT INTO counters(name, value) VALUES ('dead_letters', ?) ON CONFLICT(name)"
                         " DO UPDATE SET value = value + excluded.value", (len(rows),))
            return [(str(r[1]), str(r[2]), str(r[3])) for r in rows]

        moved = await self._db.write(run)
        for target, _msg_id, text in moved:
            self.dead_lettered += 1
            with contextlib.suppress(EnvelopeError):  # only valid envelopes are ever queued
                self._on_dead(from_mapping(json.loads(text)), target, "ttl")
        return len(moved)

    async def dead_letters(self, *, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self._db.read(lambda c: c.execute(
            "SELECT seq, target, msg_id, envelope, reason, at FROM dead_letters ORDER BY seq DESC LIMIT ?",
            (limit,)).fetchall())
        return [{"seq": r[0], "target": r[1], "msg_id": r[2], "envelope": json.loads(r[3]), "reason": r[4],
                 "at": r[5]} for r in rows]


def new_envelope(*, sender: str, to: str, type: str, body: Any, ts: float, ttl_s: float = DEFAULT_TTL_S,
                 correlation_id: str | None = None, msg_id: str | None = None) -> Envelope:
    return Envelope(msg_id or uuid.uuid4().hex, sender, to, type, ts, correlation_id, ttl_s, body)


def envelope_from_post(body: Mapping[str, Any], sender: str, now: float) -> Envelope:
    """An envelope from ``POST /v1/messages``: the sender is the caller, id and ts filled in when absent."""
    data = {k: v for k, v in body.items() if k != "wait_s"}
    data.setdefault("id", uuid.uuid4().hex)
    data["from"] = sender
    data.setdefault("ts", now)
    return from_mapping(data)


def _queued(conn: sqlite3.Connection, target: str, now: float, limit: int) -> list[tuple[int, str]]:
    """The oldest ``limit`` unexpired queued messages of ``target``: (seq, envelope JSON)."""
    return conn.execute(
        "SELECT seq, envelope FROM message_queue WHERE target = ? AND expires > ? ORDER BY seq LIMIT ?",
        (target, now, limit)).fetchall()


def _unqueue(conn: sqlite3.Connection, target: str, upto_seq: int) -> None:
    conn.execute("DELETE FROM message_queue WHERE target = ? AND seq <= ?", (target, upto_seq))
