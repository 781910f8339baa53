"""The agent hub: registry, messages, handoffs, pools, policy, defences and trust gates in one component.

``async with Hub(store=..., broker=..., state_dir=..., topic_base=...) as hub:`` opens ``hub.db``, loads
agents, pools and policies, rewrites the broker's password/ACL files from the registry, and runs the
sweeper (message TTLs, handoff expiry) and the audit writer. ``hub.routes_tables()`` are the HTTP routes
and ``hub.token_resolver`` maps agent (and enrolment) tokens to principals whose trust level comes from
``hub.trust`` (a ``TrustBook``). Construct the Hub before the broker link is entered: its MQTT
subscriptions are registered in the constructor so the link makes them on every connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib
import importlib.util
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiomqtt
from aiohttp import web
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import CollectorRegistry, Counter, Gauge

from daemon.api import Principal
from daemon.hub.broker_auth import BrokerProvisioner, MosquittoFiles
from daemon.hub.db import HubDatabase
from daemon.hub.defences import AnomalyScorer, OutputLimits, RateLimiter
from daemon.hub.dynsec import DynsecProvisioner
from daemon.hub.errors import ApprovalRequired, Forbidden, HubError, InvalidRequest, NoResponse, NotFound
from daemon.hub.handoff import Handoff, Handoffs
from daemon.hub.messages import Envelope, MessageRouter, decode, encode, envelope_from_post, new_envelope
from daemon.hub.policy import Decision, Rule, evaluate
from daemon.hub.pools import Caller, Pools
from daemon.hub.registry import Agent, Registry
from daemon.mqtt import BrokerLink
from daemon.openapi import Routes
from daemon.store import Store
from daemon.trust import GateRefused, Gates, JwtVerifier, TrustBook, TrustError

__all__ = ["Caller", "Hub", "HubTokenResolver", "MosquittoFiles"]

log = logging.getLogger(__name__)

AUDIT_BATCH = 256


class HubTokenResolver:
    """Agent API tokens (and enrolment tokens) to principals; the level is read from the TrustBook."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    async def resolve(self, token: str) -> Principal | None:
        agent = self._hub.registry.by_token(token)
        if agent is not None:
            return Principal(kind="agent", id=agent.id, trust_level=self._hub.trust.level(agent.id),
                             capabilities=agent.capabilities)
        for enrol in self._hub.enrolment_tokens:
            if hmac.compare_digest(token.encode(), enrol.encode()):
                return Principal(kind="enrolment", id="enrolment", trust_level=1)
        if self._hub.jwt is not None and token.count(".") == 2:
            # An identity-provider JWT naming a registered agent is a credential of its own (level 2); the
            # level is recorded in the TrustBook, which stays the one place gates read levels from.
            try:
                subject, exp = self._hub.jwt.verify(token)
            except TrustError:
                return None
            found = self._hub.registry.get(subject)
            if found is None:
                return None
            self._hub.trust.grant(found.id, 2, expires_at=exp, basis="oauth")
            return Principal(kind="agent", id=found.id, trust_level=self._hub.trust.level(found.id),
                             capabilities=found.capabilities)
        return None


class Hub:
    """The agent hub component (see the module docstring)."""

    def __init__(
        self,
        *,
        store: Store,
        broker: BrokerLink | None,
        state_dir: Path,
        topic_base: str,
        mosquitto_files: MosquittoFiles | None = None,
        clock: Any = time.time,
        trust: TrustBook | None = None,
        trust_requirements: Mapping[str, int] | None = None,
        enrolment_tokens: Sequence[str] = (),
        jwks: Mapping[str, Any] | None = None,
        jwt_issuer: str | None = None,
        jwt_audience: str | None = None,
        agent_rate_per_s: float = 200.0,
        agent_burst: float = 400.0,
        session_rate_per_s: float = 50.0,
        session_burst: float = 100.0,
        heartbeat_timeout_s: float = 90.0,
        sweep_interval_s: float = 5.0,
        output_limits: OutputLimits | None = None,
        anomaly: AnomalyScorer | None = None,
        audit_messages: bool = False,
        metrics: CollectorRegistry | None = None,
        mcp: bool = True,
        broker_dynsec: bool = False,
        broker_service_user: str | None = None,
    ) -> None:
        self.store = store
        self.broker = broker
        self.state_dir = Path(state_dir)
        self.topic_base = topic_base
        self.clock = clock
        self.trust = trust or TrustBook(clock=clock)
        self.gates = Gates(trust_requirements)
        self.enrolment_tokens = [t for t in enrolment_tokens if t]
        self.jwt = JwtVerifier(jwks, issuer=jwt_issuer, audience=jwt_audience, clock=clock) if jwks else None
        self.db = HubDatabase(self.state_dir / "hub.db")
        self.registry = Registry(self.db, clock=clock, heartbeat_timeout_s=heartbeat_timeout_s)
        self.provisioner: BrokerProvisioner | DynsecProvisioner | None = None
        if broker_dynsec:
            # Credentials through the broker's dynamic-security plugin, as the link's own (dynsec admin) user.
            if broker is None:
                raise ValueError("broker_dynsec needs a broker link")
            self.provisioner = DynsecProvisioner(
                broker, topic_base=topic_base, service_users=[broker_service_user] if broker_service_user else (),
                enrolment_password=self.enrolment_tokens[0] if self.enrolment_tokens else None)
        elif mosquitto_files is not None:
            self.provisioner = BrokerProvisioner(mosquitto_files, topic_base=topic_base)
        self.agent_limits = RateLimiter(rate=agent_rate_per_s, burst=agent_burst, clock=time.monotonic)
        self.session_limits = RateLimiter(rate=session_rate_per_s, burst=session_burst, clock=time.monotonic)
        self.anomaly = anomaly or AnomalyScorer()
        self.audit_messages = audit_messages
        self.rules: dict[str, Rule] = {}
        self._rule_scopes: frozenset[str] = frozenset()
        self._sweep_s = sweep_interval_s
        self._audit_queue: asyncio.Queue[tuple[str, str, str, Mapping[str, Any]]] = asyncio.Queue()
        self._audit_pending = 0
        self._audit_done = asyncio.Event()
        self._audit_done.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._spawned: set[asyncio.Task[Any]] = set()
        self._open = False
        publish = self._publish if broker is not None else None
        self.router = MessageRouter(db=self.db, registry=self.registry, topic_base=topic_base, publish=publish,
                                    check=self._check_message, on_dead_letter=self._dead_letter, clock=clock)
        self.handoffs = Handoffs(self.db, notify=self._notify_handoff, clock=clock)
        self.pools = Pools(self.db, store, authorize=self.authorize,
                           granting_initiators=self.handoffs.granting_initiators, audit=self.audit,
                           anomaly=self.anomaly, limits=output_limits or OutputLimits(), clock=clock)
        self.pools.set_sensitive_level(self.gates.needed("read_sensitive"))
        self.token_resolver = HubTokenResolver(self)
        self.mcp: Any = None  # the McpBridge, built off the loop on the first /mcp request
        self._mcp_lock = asyncio.Lock()
        # The mcp SDK is optional and takes most of a second to import: it is imported off the loop on entry.
        self.mcp_enabled = mcp and importlib.util.find_spec("mcp") is not None
        if mcp and not self.mcp_enabled:
            log.warning("the mcp package is not installed: /mcp is not served")
        metrics = metrics if metrics is not None else CollectorRegistry()
        self._m_messages = Counter("mycoedge_hub_messages", "Messages routed by outcome", ["outcome"],
                                   registry=metrics)
        self._m_outcome = {o: self._m_messages.labels(outcome=o) for o in ("delivered", "queued")}
        self._m_decisions = Counter("mycoedge_hub_policy_decisions", "Authorisation decisions by effect",
                                    ["effect"], registry=metrics)
        # Label children looked up once: ``labels()`` takes a lock and builds a key on every call, and the
        # message path counts one decision per message.
        self._m_effect = {e: self._m_decisions.labels(effect=e) for e in ("allow", "deny", "require_approval",
                                                                          "modify")}
        self._m_refused = self._m_messages.labels(outcome="refused")
        Gauge("mycoedge_hub_dead_letters", "Messages dead-lettered after their TTL",
              registry=metrics).set_function(lambda: self.router.dead_lettered)
        Gauge("mycoedge_hub_agents_online", "Agents online", registry=metrics).set_function(
            lambda: sum(1 for a in self.registry.all() if self.registry.online(a.id)))
        self.trust.on_change(lambda subject, level: self.audit("trust_change", "hub", subject, {"level": level}))
        if broker is not None:
            broker.subscribe(f"{topic_base}/agents/+/outbox", self._on_outbox)
            broker.subscribe(f"{topic_base}/agents/+/status", self._on_status)
            broker.subscribe(f"{topic_base}/agents/register", self._on_register)
            broker.on_connect(self._on_broker_connect)

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.db.open()
        try:
            await self.registry.load()
            await self.pools.load()
            await self.router.load()
            await self._load_rules()
            if self.provisioner is not None:
                await self.provisioner.apply(self.registry.accounts())
        except BaseException:
            await self.db.close()
            raise
        self.registry.on_liveness(self._liveness_changed)
        self._open = True
        self._tasks = [asyncio.create_task(self._sweeper(), name="hub-sweeper"),
                       asyncio.create_task(self._audit_writer(), name="hub-audit")]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._open = False
        for task in [*self._tasks, *self._spawned]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._spawned, return_exceptions=True)
        self._tasks = []
        try:
            if isinstance(self.provisioner, DynsecProvisioner):
                await self.provisioner.aclose()
            if self.mcp is not None:
                mcp_bridge, self.mcp = self.mcp, None
                await mcp_bridge.__aexit__(None, None, None)
            await self._flush_audit()
        finally:
            await self.db.close()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_s)
            try:
                await self.sweep()
            except HubError as exc:
                log.warning("hub sweep failed: %s", exc)

    async def sweep(self) -> None:
        """Dead-letter expired messages and expire overdue handoffs (also run by the sweeper task)."""
        await self.router.expire()
        await self.handoffs.expire()

    # -- audit ------------------------------------------------------------------------------------

    def audit(self, kind: str, actor: str, subject: str, data: Mapping[str, Any]) -> None:
        """Queue an audit record; the writer appends them to the store's hash-chained audit trail."""
        self._audit_queue.put_nowait((kind, actor, subject, dict(data)))
        self._audit_pending += 1
        self._audit_done.clear()

    async def _audit_writer(self) -> None:
        while True:
            first = await self._audit_queue.get()
            await self._append_audit([first, *self._drain_audit()])

    def _drain_audit(self) -> list[tuple[str, str, str, Mapping[str, Any]]]:
        batch: list[tuple[str, str, str, Mapping[str, Any]]] = []
        while len(batch) < AUDIT_BATCH and not self._audit_queue.empty():
            batch.append(self._audit_queue.get_nowait())
        return batch

    async def _append_audit(self, batch: list[tuple[str, str, str, Mapping[str, Any]]]) -> None:
        results = await asyncio.gather(*(self.store.audit_append(*rec) for rec in batch), return_exceptions=True)
        for rec, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("audit record %s lost: %s", rec[0], result)
        self._audit_pending -= len(batch)
        if self._audit_pending <= 0:
            self._audit_done.set()

    async def _flush_audit(self) -> None:
        while not self._audit_queue.empty():
            await self._append_audit(self._drain_audit())

    async def audit_idle(self) -> None:
        """Wait until every queued audit record is written (tests, shutdown)."""
        await self._audit_done.wait()

    # -- authorisation ----------------------------------------------------------------------------

    def caller(self, who: Principal, session: str | None = None) -> Caller:
        if who.is_admin:
            return Caller(who.id, True, who.trust_level, frozenset(), None, session)
        if who.kind != "agent":
            raise Forbidden("an enrolment token may only register agents")
        agent = self.registry.get(who.id)
        if agent is None:
            raise Forbidden("agent revoked")
        return Caller(agent.id, False, self.trust.level(agent.id), agent.capabilities, agent, session)

    def context(self, caller: Caller, *, scope: str, operation: str, resource: Mapping[str, Any]) -> dict[str, Any]:
        agent: dict[str, Any] = {"id": caller.id, "admin": caller.admin, "trust_level": caller.level,
                                 "capabilities": sorted(caller.capabilities), "session": caller.session}
        if caller.agent is not None:
            agent.update({"type": caller.agent.type, "owner": caller.agent.owner, "reach": caller.agent.reach})
        now = self.clock()
        return {"scope": scope, "operation": operation, "agent": agent, **resource,
                "time": {"ts": now, "hour": time.gmtime(now).tm_hour}}

    async def authorize(self, caller: Caller, *, scope: str, operation: str, gate: str, capability: str | None,
                        resource: Mapping[str, Any], audit_allow: bool = True) -> Mapping[str, Any]:
        """Capability, trust gate, then policy; every decision audited. Returns the modifications."""
        if not caller.admin:
            if capability is not None and capability not in caller.capabilities:
                self._deny(caller, operation, f"missing capability {capability}")
                raise Forbidden(f"{operation} needs capability {capability}")
            try:
                self.gates.check(gate, caller.level)
            except GateRefused as exc:
                self._deny(caller, operation, str(exc))
                raise Forbidden(str(exc), needed_level=exc.needed, trust_level=exc.have) from None
        if self._rule_scopes.isdisjoint(("*", scope)):
            decision = Decision("allow", None)  # no rule can match: skip building the context
        else:
            decision = self.decide(self.context(caller, scope=scope, operation=operation, resource=resource))
        self._m_effect[decision.effect].inc()
        if audit_allow or not decision.allowed:
            self.audit("policy_decision", caller.id, operation, {**decision.to_json(), "scope": scope})
        if decision.effect == "deny":
            raise Forbidden(f"{operation} denied by policy {decision.rule_id}", rule=decision.rule_id)
        if decision.effect == "require_approval":
            raise ApprovalRequired(f"{operation} needs approval (policy {decision.rule_id})", rule=decision.rule_id)
        return decision.modifications

    def decide(self, context: Mapping[str, Any]) -> Decision:
        return evaluate(list(self.rules.values()), context)

    def _deny(self, caller: Caller, operation: str, reason: str) -> None:
        self._m_effect["deny"].inc()
        self.audit("permission_denied", caller.id, operation, {"reason": reason, "trust_level": caller.level})

    def rate_limit(self, caller: Caller) -> None:
        if caller.admin:
            return
        self.agent_limits.check(f"agent:{caller.id}")
        if caller.session:
            self.session_limits.check(f"session:{caller.id}:{caller.session}")

    async def authorize_device_command(self, who: Principal, device_id: str, command: str) -> None:
        """For ``POST /v1/devices/{id}/commands``: capability DEVICE_COMMAND, trust gate and policy."""
        caller = self.caller(who)
        self.rate_limit(caller)
        await self._authorize_device(caller, device_id, command, via="http")

    async def authorize_device_command_mqtt(self, agent_id: str, device_id: str, command: str) -> None:
        """For a command an agent published on ``devices/<device_id>/cmd/<agent_id>``.

        The broker lets only that agent publish on a topic ending in its own id, and only with
        DEVICE_COMMAND (``render_acl``), so the topic names the sender; the broker's ACL is not the whole
        gate, though: the same rate limit, trust gate (the agent's level from the TrustBook, as for its
        token), capability, policy and audit as over HTTP apply here. Raises ``Forbidden`` (unknown or
        revoked agent, capability, trust gate, policy deny), ``ApprovalRequired`` (a Forbidden) or
        ``RateLimited``; all are ``HubError``. A misconfigured gate table raises ``TrustError``.
        """
        agent = self.registry.get(agent_id)
        if agent is None:
            self._m_effect["deny"].inc()
            self.audit("permission_denied", agent_id, "device.command",
                       {"reason": "unknown agent", "device": device_id, "via": "mqtt"})
            raise Forbidden(f"no registered agent {agent_id!r}")
        caller = Caller(agent.id, False, self.trust.level(agent.id), agent.capabilities, agent)
        self.registry.seen(agent.id)
        self.rate_limit(caller)
        await self._authorize_device(caller, device_id, command, via="mqtt")

    async def _authorize_device(self, caller: Caller, device_id: str, command: str, *, via: str) -> None:
        await self.authorize(caller, scope="device", operation="device.command", gate="device.command",
                             capability="DEVICE_COMMAND",
                             resource={"device": {"id": device_id, "cmd": command, "via": via}})

    # -- policies ---------------------------------------------------------------------------------

    async def _load_rules(self) -> None:
        rows = await self.db.read(lambda c: c.execute("SELECT id, body FROM policies").fetchall())
        for rule_id, body in rows:
            self.rules[rule_id] = Rule.from_json(json.loads(body), rule_id=rule_id)
        self._rule_scopes = frozenset(r.scope for r in self.rules.values())

    async def put_rule(self, rule: Rule) -> bool:
        now = self.clock()
        body = json.dumps(rule.to_json(), sort_keys=True)
        created = rule.id not in self.rules
        await self.db.write(lambda c: c.execute(
            "INSERT INTO policies(id, body, created, updated) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET body = excluded.body, updated = excluded.updated",
            (rule.id, body, now, now)))
        self.rules[rule.id] = rule
        self._rule_scopes = frozenset(r.scope for r in self.rules.values())
        self.audit("policy_change", "admin", rule.id, {"op": "put", "rule": rule.to_json()})
        return created

    async def delete_rule(self, rule_id: str) -> None:
        if rule_id not in self.rules:
            raise NotFound(f"no policy {rule_id!r}")
        await self.db.write(lambda c: c.execute("DELETE FROM policies WHERE id = ?", (rule_id,)))
        del self.rules[rule_id]
        self._rule_scopes = frozenset(r.scope for r in self.rules.values())
        self.audit("policy_change", "admin", rule_id, {"op": "delete"})

    # -- messages ---------------------------------------------------------------------------------

    async def _publish(self, topic: str, payload: bytes, qos: int) -> bool:
        """A delivery keeps the sender's QoS. At QoS 0 nothing is awaited anyway (fire and forget, as the
        sender asked), so it joins the link's corked batch that leaves at the end of this loop iteration:
        one write for every delivery routed in the same turn, instead of a writer round trip each."""
        assert self.broker is not None
        if qos == 0:
            return self.broker.publish_nowait(topic, payload, soon=True)
        return await self.broker.publish(topic, payload, qos=qos)

    async def _check_message(self, envelope: Envelope) -> None:
        agent = self.registry.get(envelope.sender)
        if agent is None:
            raise Forbidden(f"unknown sender {envelope.sender!r}")
        caller = Caller(agent.id, False, self.trust.level(agent.id), agent.capabilities, agent)
        broadcast = envelope.to == "*" or envelope.type == "BROADCAST"
        await self.authorize(
            caller, scope="message", operation="message.broadcast" if broadcast else "message.send",
            gate="message.send", capability="MESSAGE_BROADCAST" if broadcast else None,
            resource={"message": {"type": envelope.type, "to": envelope.to, "id": envelope.id}},
            audit_allow=self.audit_messages)

    def _dead_letter(self, envelope: Envelope, target: str, reason: str) -> None:
        self._m_messages.labels(outcome="dead_letter").inc()
        self.audit("message_dead_letter", "hub", target, {"id": envelope.id, "from": envelope.sender,
                                                          "reason": reason})

    async def send(self, envelope: Envelope, *, qos: int = 1) -> dict[str, str]:
        outcomes = await self.router.send(envelope, qos=qos)
        for outcome in outcomes.values():
            self._m_outcome[outcome].inc()
        return outcomes

    async def _on_outbox(self, message: aiomqtt.Message) -> None:
        if not self._open:
            return
        agent_id = message.topic.value.rsplit("/", 2)[-2]
        agent = self.registry.get(agent_id)
        if agent is None:
            return
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else str(message.payload).encode()
        try:
            envelope = decode(bytes(payload))
            if envelope.sender != agent_id:
                # The broker let this agent publish only on its own outbox: the topic is who sent it.
                self.audit("permission_denied", agent_id, "message.spoof", {"claimed": envelope.sender})
                raise Forbidden(f"'from' must be {agent_id}")
            self.registry.seen(agent_id)
            # HTTP callers are limited once per request by the routes; MQTT senders here, per message.
            self.agent_limits.check(f"agent:{agent_id}")
            await self.send(envelope, qos=message.qos)
        except HubError as exc:
            self._m_refused.inc()
            ref = None
            with contextlib.suppress(Exception):
                ref = json.loads(payload).get("id")
            await self._nack(agent_id, ref, exc)

    async def _nack(self, agent_id: str, ref: Any, exc: HubError) -> None:
        if self.broker is None:
            return
        body: dict[str, Any] = {"ok": False, "error": exc.kind, "message": str(exc), **exc.extensions}
        ack = new_envelope(sender="hub", to=agent_id, type="ACK", body=body, ts=self.clock(), ttl_s=60.0,
                           correlation_id=ref if isinstance(ref, str) and 0 < len(ref) <= 128 else None)
        await self.broker.publish(self.router.inbox_topic(agent_id), encode(ack), qos=1)

    async def _on_status(self, message: aiomqtt.Message) -> None:
        if not self._open:
            return
        agent_id = str(message.topic).split("/")[-2]
        raw = message.payload if isinstance(message.payload, bytes | bytearray) else str(message.payload).encode()
        text = bytes(raw).decode(errors="replace").strip()
        state = text
        if text.startswith("{"):
            with contextlib.suppress(ValueError, AttributeError):
                state = str(json.loads(text).get("status", ""))
        if state not in ("online", "offline"):
            return
        self.registry.set_mqtt_online(agent_id, state == "online")

    def _liveness_changed(self, agent_id: str, online: bool) -> None:
        if online and self._open:
            self._spawn(self.router.flush(agent_id), name=f"hub-flush {agent_id}")

    async def _on_broker_connect(self) -> None:
        if not self._open:
            return
        for agent in self.registry.all():
            if self.registry.mqtt_online(agent.id):
                self._spawn(self.router.flush(agent.id), name=f"hub-flush {agent.id}")

    async def _on_register(self, message: aiomqtt.Message) -> None:
        """MQTT registration: ``{"enrolment_token", "type", "owner", ...}`` answered on the response topic."""
        if not self._open or self.broker is None:
            return
        props = message.properties
        reply_to = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        if not reply_to or not str(reply_to).startswith(f"{self.topic_base}/agents/register/reply/"):
            return
        try:
            raw = message.payload if isinstance(message.payload, bytes | bytearray) else str(message.payload).encode()
            body = json.loads(bytes(raw))
            if not isinstance(body, dict):
                raise InvalidRequest("registration must be a JSON object")
            token = str(body.pop("enrolment_token", ""))
            if not any(hmac.compare_digest(token.encode(), t.encode()) for t in self.enrolment_tokens):
                self.audit("auth_failure", "mqtt", "agents.register", {"reason": "bad enrolment token"})
                raise Forbidden("a valid enrolment_token is required")
            reply: dict[str, Any] = await self.register(body, privileged=False, actor="enrolment")
        except (HubError, ValueError, UnicodeDecodeError) as exc:
            reply = {"ok": False, "error": getattr(exc, "kind", "invalid-request"), "message": str(exc)}
        props_out = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho ships no annotations
        if correlation is not None:
            props_out.CorrelationData = correlation
        await self.broker.publish(str(reply_to), json.dumps(reply), qos=1, properties=props_out)

    # -- registration -----------------------------------------------------------------------------

    async def register(self, body: Mapping[str, Any], *, privileged: bool, actor: str) -> dict[str, Any]:
        try:
            agent, creds = await self.registry.register(
                type=str(body.get("type", "")), owner=str(body.get("owner", "")), name=body.get("name"),
                capabilities=body.get("capabilities"), reach=str(body.get("reach", "GLOBAL")),
                agent_id=body.get("id"), metadata=body.get("metadata"), privileged=privileged)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(str(exc)) from None
        if isinstance(self.provisioner, DynsecProvisioner):
            self.provisioner.new_password(creds.mqtt_username, creds.mqtt_password)  # dynsec hashes it itself
        if self.provisioner is not None:
            await self.provisioner.apply(self.registry.accounts())
        self.audit("registration", actor, agent.id, {"type": agent.type, "owner": agent.owner,
                                                     "capabilities": sorted(agent.capabilities)})
        base = f"{self.topic_base}/agents/{agent.id}"
        return {
            "ok": True,
            "agent": self.registry.describe(agent),
            "credentials": {"api_token": creds.api_token,
                            "mqtt": {"username": creds.mqtt_username, "password": creds.mqtt_password}},
            "topics": {"inbox": f"{base}/inbox", "outbox": f"{base}/outbox", "status": f"{base}/status",
                       "handoffs": f"{self.topic_base}/handoffs/+"},
        }

    async def revoke(self, agent_id: str) -> None:
        await self.registry.revoke(agent_id)
        self.trust.revoke(agent_id)
        if self.provisioner is not None:
            await self.provisioner.apply(self.registry.accounts())
        self.audit("revocation", "admin", agent_id, {})

    async def verify_jwt(self, agent: Agent, token: str) -> tuple[int, float]:
        if self.jwt is None:
            raise InvalidRequest("no JWKS configured: OAuth verification is off")
        try:
            subject, exp = self.jwt.verify(token)
        except TrustError as exc:
            self.audit("auth_failure", agent.id, "oauth", {"reason": str(exc)})
            raise Forbidden(str(exc)) from None
        if subject not in (agent.id, agent.owner):
            self.audit("auth_failure", agent.id, "oauth", {"reason": "subject mismatch", "subject": subject})
            raise Forbidden(f"token subject {subject!r} is neither this agent nor its owner")
        self.trust.grant(agent.id, 2, expires_at=exp, basis="oauth")
        return self.trust.level(agent.id), exp

    # -- operations shared by the HTTP routes and the MCP tools ------------------------------------

    async def send_from(self, caller: Caller, body: Mapping[str, Any]) -> tuple[Envelope, dict[str, str],
                                                                               Envelope | None]:
        """Send ``body`` (an envelope without ``from``) as ``caller``; a REQUEST with ``wait_s`` waits for
        its RESPONSE. Returns (envelope, outcomes, response)."""
        if caller.admin:
            raise Forbidden("messages are sent by agents; use an agent token")
        wait_s = float(body.get("wait_s", 0) or 0)
        envelope = envelope_from_post(body, caller.id, self.clock())
        outcomes = await self.send(envelope)
        if envelope.type != "REQUEST" or wait_s <= 0:
            return envelope, outcomes, None
        future = self.router.expect_response(envelope.id)
        try:
            async with asyncio.timeout(wait_s):
                response = await future
        except TimeoutError:
            self.router.forget(envelope.id)
            raise NoResponse(f"no RESPONSE to {envelope.id} within {wait_s:g} s") from None
        return envelope, outcomes, response

    async def initiate_handoff(self, caller: Caller, *, target: str, context: Mapping[str, Any],
                               expires_in_s: float = 3600.0, handoff_id: str | None = None) -> tuple[Handoff, bool]:
        if caller.admin:
            raise Forbidden("handoffs are between agents; use an agent token")
        found = self.registry.get(target)
        if found is None:
            raise NotFound(f"no agent {target!r}")
        if "HANDOFF_RECEIVE" not in found.capabilities:
            raise Forbidden(f"agent {found.id} cannot receive handoffs")
        await self.authorize(caller, scope="handoff", operation="handoff.initiate", gate="handoff",
                             capability="HANDOFF_INITIATE",
                             resource={"handoff": {"target": found.id, "context": dict(context)}})
        return await self.handoffs.initiate(initiator=caller.id, target=found.id, context=context,
                                            expires_in_s=expires_in_s, handoff_id=handoff_id)

    async def handoff_transition(self, caller: Caller, handoff_id: str, action: str, *,
                                 result: Mapping[str, Any] | None = None,
                                 reason: str | None = None) -> tuple[Handoff, bool]:
        current = await self.handoffs.get(handoff_id)
        if not caller.admin and caller.id not in (current.initiator, current.target):
            raise NotFound(f"no handoff {handoff_id!r}")
        # Accepting and completing are receiving work: the target needs HANDOFF_RECEIVE.
        receive = action in ("accept", "complete") and caller.id == current.target
        await self.authorize(caller, scope="handoff", operation=f"handoff.{action}", gate="handoff",
                             capability="HANDOFF_RECEIVE" if receive else None,
                             resource={"handoff": {"id": current.id, "initiator": current.initiator,
                                                   "target": current.target, "state": current.state}})
        return await self.handoffs.transition(current.id, action, actor=caller.id, admin=caller.admin,
                                              result=result, reason=reason)

    # -- handoffs ---------------------------------------------------------------------------------

    async def _notify_handoff(self, handoff: Handoff) -> None:
        if self.broker is not None:
            await self.broker.publish(f"{self.topic_base}/handoffs/{handoff.id}", json.dumps(handoff.notice()),
                                      qos=1, retain=True)
        # The parties hear about it in their inboxes too (queued while they are offline).
        party = handoff.target if handoff.state == "pending" else handoff.initiator
        if handoff.state == "expired":
            party = handoff.initiator
        event = new_envelope(sender="hub", to=party, type="EVENT", ts=self.clock(),
                             body={"event": "handoff", "handoff": handoff.to_json()}, ttl_s=86400.0)
        with contextlib.suppress(HubError):
            await self.router._deliver(party, event)

    # -- routes -----------------------------------------------------------------------------------

    async def mcp_bridge(self) -> Any:
        """The MCP server, started on first use.

        The mcp SDK (pydantic, starlette) costs about a second and 30 MB to import: a node whose agents never
        speak MCP should not pay that at every start, so the first /mcp request pays it, off the loop.
        """
        async with self._mcp_lock:
            if self.mcp is None and self._open:
                module = await asyncio.to_thread(importlib.import_module, "daemon.hub.mcp")
                bridge = await asyncio.to_thread(module.McpBridge, self)
                await bridge.__aenter__()
                self.mcp = bridge
            return self.mcp

    def routes_tables(self) -> list[Routes]:
        from daemon.hub.routes import build_routes  # noqa: PLC0415 - routes import this module

        return build_routes(self)


HUB_KEY: web.AppKey[Hub] = web.AppKey("hub", Hub)
