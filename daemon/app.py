"""Lifecycle of the daemon: start components in order, tell systemd, stop them in reverse on SIGTERM.

Every long-lived component is an async context manager entered on one ``AsyncExitStack``; their tasks
run under the event loop until the stop event is set, and leaving the stack stops them in reverse order
(devices, then the API, then the broker link with its "offline" status, then the store).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, Info, disable_created_metrics

from attestation import NodeAttestor, NodeTrust
from daemon import __version__, attest, devices, http_store, http_sync
from daemon.api import AdminTokenResolver, ApiServer, Principal, Readiness, TokenResolver, build_app
from daemon.config import Config, parse_gates, parse_listen
from daemon.devices import COMMAND_GATE_KEY, FLEET_KEY, CommandGate, CommandRefused, DeviceFleet, MqttCommandGate
from daemon.hub import HUB_KEY, Hub
from daemon.hub.broker_auth import MosquittoFiles
from daemon.hub.errors import HubError, RateLimited
from daemon.hub.routes import problem_for
from daemon.mqtt import BrokerLink, BrokerState
from daemon.openapi import Routes
from daemon.problems import Problem
from daemon.sdnotify import Notifier
from daemon.store import Ed25519Signer, Signer, Store
from daemon.store.embedders import make_embedder
from daemon.store.signing import load_encryption_key, write_secret_file
from daemon.sync.wiring import worker_from_config
from daemon.sync.worker import SyncWorker
from daemon.trust import TrustError
from drivers.announce import AnnounceError, NodeAnnouncer
from drivers.hotplug import HotplugSource, PyudevSource

log = logging.getLogger(__name__)

READY_WAIT_FOR_BROKER_S = 5.0


def ensure_admin_token(path: Path) -> str:
    """The operator's bearer token; created once with mode 0600 and never rewritten."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return token


@dataclass
class Node:
    """The running daemon's parts, as the HTTP handlers and tests see them."""

    config: Config
    registry: CollectorRegistry
    readiness: Readiness
    notifier: Notifier
    stop: asyncio.Event
    broker: BrokerLink | None = None
    api: ApiServer | None = None
    store: Store | None = None
    fleet: DeviceFleet | None = None
    hotplug: HotplugSource | None = None
    trust_label: str = "software"
    announcer: NodeAnnouncer | None = None
    attestor: NodeAttestor | None = None
    sync: SyncWorker | None = None
    hub: Hub | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Fire-and-forget work that must not be garbage-collected mid-flight."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
    started_at: float = field(default_factory=time.monotonic)
    status_parts: list[Callable[[], str]] = field(default_factory=list)
    liveness_checks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def topic_base(self) -> str:
        return f"{self.config.mqtt.topic_root}/{self.config.node.id}"

    def status_line(self) -> str:
        return "; ".join(part() for part in self.status_parts)


async def run(
    config: Config,
    *,
    stop: asyncio.Event | None = None,
    notifier: Notifier | None = None,
    hotplug: HotplugSource | None = None,
    on_ready: Callable[[Node], None] | None = None,
) -> int:
    """Run until ``stop`` is set (or SIGTERM/SIGINT); returns the process exit code.

    ``hotplug`` replaces udev as the source of hot-plug events (tests feed a ``QueueSource``); ``on_ready``
    is called with the running node once READY=1 has been sent (tests and embedders look inside).
    """
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    notifier = notifier or Notifier()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(_loop_exception)
    disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series double the scrape for nothing
    registry = CollectorRegistry()
    Info("mycoedge_build", "Version of the running daemon", registry=registry).info(
        {"version": __version__, "node_id": config.node.id}
    )
    node = Node(config=config, registry=registry, readiness=Readiness(), notifier=notifier, stop=stop,
                hotplug=hotplug)
    try:
        async with AsyncExitStack() as stack:
            await _start(node, stack)
            if on_ready is not None:
                on_ready(node)
            await stop.wait()
            log.info("stopping")
            notifier.stopping()
        return 0
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)
        loop.set_exception_handler(previous_handler)
        notifier.close()


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """aiomqtt schedules ``add_writer`` for paho's socket from paho's callback; when the broker drops the
    connection in between, the socket is closed by the time the loop runs it (EBADF). The link notices the
    disconnect and reconnects on its own, so this one race is a warning, not an unhandled-error traceback."""
    exc = context.get("exception")
    if isinstance(exc, OSError) and exc.errno == errno.EBADF and "add_writer" in repr(context.get("handle")):
        log.warning("broker socket closed under a pending write; the link reconnects")
        return
    loop.default_exception_handler(context)


async def _start(node: Node, stack: AsyncExitStack) -> None:
    config = node.config
    config.node.state_dir.mkdir(parents=True, exist_ok=True)
    admin_token = await asyncio.to_thread(ensure_admin_token, config.admin_token_path)
    readiness = node.readiness
    readiness.require("api")
    readiness.require("store")

    def trust_changed(trust: NodeTrust) -> None:
        node.trust_label = attest.trust_label(trust)
        announcer = node.announcer
        if announcer is not None:
            node.spawn(announcer.update(trust=node.trust_label))

    node.attestor = await stack.enter_async_context(
        NodeAttestor(attest.attestation_config(config), on_change=trust_changed)
    )
    attestor = node.attestor
    node.trust_label = attest.trust_label(attestor.trust)  # the attestor itself warns loudly without a TPM
    verifier = attest.remote_verifier(attestor, config)
    node.registry.register(attest.TrustCollector(attestor, verifier))
    node.status_parts.append(lambda: f"trust {node.trust_label}")

    # The node's TPM-resident key signs the MAIF log and a TPM-sealed key protects encrypted payloads; without
    # a TPM, a software key file does both (and the node says it runs at level 2).
    node.store = await stack.enter_async_context(await _open_node_store(config, attestor))
    store = node.store
    readiness.up("store")

    async def store_alive() -> None:
        await store.db.read(lambda conn: conn.execute("SELECT 1").fetchone())

    node.liveness_checks.append(store_alive)

    if config.mqtt.enabled:
        readiness.require("mqtt")
        node.broker = BrokerLink(
            host=config.mqtt.host,
            port=config.mqtt.port,
            client_id=f"mycoedge-{config.node.id}",
            status_topic=f"{node.topic_base}/status",
            username=config.mqtt.username,
            password=config.mqtt.password,
            keepalive_s=config.mqtt.keepalive_s,
            reconnect_max_s=config.mqtt.reconnect_max_s,
            registry=node.registry,
        )
        broker = node.broker
        # The hub and the fleet register their subscriptions before the first connect.
        if config.hub.enabled:
            node.hub = await _build_hub(node, store)
        await stack.enter_async_context(broker)
        node.status_parts.append(lambda: f"mqtt {broker.state}")

        def follow(state: BrokerState) -> None:
            if state == BrokerState.CONNECTED:
                node.readiness.up("mqtt")
            else:
                node.readiness.down("mqtt", f"{state}: {broker.last_error}" if broker.last_error else str(state))

        broker.on_state(follow)

    if config.hub.enabled and node.hub is None:
        node.hub = await _build_hub(node, store)
    if node.hub is not None:
        hub = await stack.enter_async_context(node.hub)
        node.status_parts.append(
            lambda: f"agents {sum(1 for a in hub.registry.all() if hub.registry.online(a.id))}"
            f"/{len(hub.registry.all())} online"
        )

    sync_worker = worker_from_config(store, config.sync, node_id=config.node.id, registry=node.registry)
    if sync_worker is not None:
        node.sync = await stack.enter_async_context(sync_worker)
        node.status_parts.append(lambda: "sync on")

    node.fleet = DeviceFleet(
        config.devices,
        factories=devices.default_factories(),
        topic_base=node.topic_base,
        node_id=config.node.id,
        broker=node.broker,
        sink=store,
        registry=node.registry,
        ha_discovery=config.mqtt.ha_discovery,
        ha_prefix=config.mqtt.ha_prefix,
        hotplug=node.hotplug or await _udev_source(config, stack),
        mqtt_command_gate=_mqtt_device_gate(node.hub) if node.hub is not None else None,
    )
    await stack.enter_async_context(node.fleet)
    fleet = node.fleet
    node.status_parts.append(
        lambda: f"devices {sum(1 for e in fleet.entries if e.device and e.device.state == 'streaming')}"
        f"/{len(fleet.entries)} streaming"
    )

    listen = parse_listen(config.api.listen) if config.api.listen else None
    socket_path = config.socket_path if config.api.unix_socket else None
    state: dict[web.AppKey[Any], Any] = {FLEET_KEY: node.fleet, attest.ATTESTOR_KEY: attestor,
                                         attest.VERIFIER_KEY: verifier, http_store.STORE_KEY: store}
    resolvers: list[TokenResolver] = [AdminTokenResolver(admin_token)]
    tables = route_tables()
    if node.sync is not None:
        state[http_sync.SYNC_KEY] = node.sync
    if node.hub is not None:
        state[HUB_KEY] = node.hub
        state[COMMAND_GATE_KEY] = _device_gate(node.hub)
        state[attest.TRUST_BOOK_KEY] = node.hub.trust
        resolvers.append(node.hub.token_resolver)
        tables = [*node.hub.routes_tables(), *tables]  # the hub's gated memory routes win over the store's
    app = build_app(tables=tables, resolvers=resolvers, readiness=readiness, registry=node.registry, state=state,
                    middlewares=[attest.signed_writes])
    node.api = await stack.enter_async_context(ApiServer(app, listen=listen, socket_path=socket_path))
    readiness.up("api")
    log.info("API on %s", ", ".join(node.api.bound))

    if node.broker is not None:
        # READY waits a moment for the broker so a normal start is "ready" at once; a broker that is
        # down does not hold the node hostage: /readyz names it and the link keeps retrying.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(READY_WAIT_FOR_BROKER_S):
                await node.broker.connected.wait()

    stack.push_async_callback(_cancel, asyncio.create_task(_watchdog(node), name="watchdog"))
    Gauge("mycoedge_uptime_seconds", "Seconds since the daemon started", registry=node.registry).set_function(
        lambda: time.monotonic() - node.started_at
    )
    # What exists now (modules, config, compiled schemas, routes) lives as long as the process: freezing it
    # keeps it out of every later full collection, which otherwise pauses the loop for 20-130 ms under the
    # hub's message load (bench.hub: p99 21 ms without, 1.9 ms with).
    gc.collect()
    gc.freeze()
    node.notifier.ready(node.status_line())
    log.info("ready: %s", node.status_line() or "no components")
    if config.discovery.mdns:
        # Registration takes about a second of mDNS probing (RFC 6762 §8.1): never on the way to READY.
        stack.push_async_callback(_cancel, asyncio.create_task(_announce(node), name="mdns"))


async def _udev_source(config: Config, stack: AsyncExitStack) -> HotplugSource | None:
    if not config.discovery.hotplug or not config.devices:
        return None
    source = PyudevSource(coldplug=False)
    try:
        source.start()
    except (OSError, ImportError) as exc:
        log.warning("udev hot-plug unavailable (%s); devices reconnect on their own backoff", exc)
        return None
    stack.push_async_callback(source.aclose)
    return source


async def _announce(node: Node) -> None:
    config = node.config
    port = node.api.tcp_port if node.api is not None else None
    if port is None:
        return
    interfaces = [i.strip() for i in config.discovery.mdns_interfaces.split(",") if i.strip()] or None
    try:
        async with NodeAnnouncer(node_id=config.node.id, version=__version__, api_port=port,
                                 trust=node.trust_label, interfaces=interfaces) as announcer:
            node.announcer = announcer
            await node.stop.wait()
    except AnnounceError as exc:
        log.warning("mDNS announcement failed: %s", exc)
    finally:
        node.announcer = None


def route_tables() -> list[Routes]:
    """Every feature's routes, in the order they are mounted (the core table is added by build_app)."""
    return [devices.routes, attest.routes, http_sync.routes, http_store.routes]


def _device_gate(hub: Hub) -> CommandGate:
    """An agent's device command passes the hub's capability check, trust gate and policy, or is refused."""

    async def gate(who: Principal, device_id: str, command: str) -> None:
        try:
            await hub.authorize_device_command(who, device_id, command)
        except HubError as exc:
            raise problem_for(exc) from None
        except TrustError as exc:
            raise Problem(403, str(exc), kind="forbidden") from None

    return gate


def _mqtt_device_gate(hub: Hub) -> MqttCommandGate:
    """An agent's command on ``devices/<id>/cmd/<agent_id>`` passes the same gate as over HTTP.

    The broker already let only that agent publish there; the hub adds rate limit, trust gate and policy.
    The refusal's ``error`` is left to the fleet, whose MQTT answers spell kinds with underscores.
    """

    async def gate(agent_id: str, device_id: str, command: str) -> None:
        try:
            await hub.authorize_device_command_mqtt(agent_id, device_id, command)
        except RateLimited as exc:
            raise CommandRefused(exc.status, str(exc), retry_after_s=exc.retry_after_s) from None
        except HubError as exc:
            raise CommandRefused(exc.status, str(exc)) from None
        except TrustError as exc:
            raise CommandRefused(403, str(exc)) from None

    return gate


async def _build_hub(node: Node, store: Store) -> Hub:
    """The agent hub from ``[hub]``; broker credentials are managed only when both files are configured."""
    cfg = node.config.hub
    files: MosquittoFiles | None = None
    tokens = [t.strip() for t in cfg.enrolment_tokens.split(",") if t.strip()]
    if cfg.mosquitto_password_file and cfg.mosquitto_acl_file:
        files = MosquittoFiles(
            password_file=Path(cfg.mosquitto_password_file),
            acl_file=Path(cfg.mosquitto_acl_file),
            pid=MosquittoFiles.pid_from_file(Path(cfg.mosquitto_pid_file)),
            service_users={node.config.mqtt.username: node.config.mqtt.password} if node.config.mqtt.username else {},
            enrolment_password=tokens[0] if tokens else None,
        )
    jwks = json.loads(await asyncio.to_thread(Path(cfg.jwks_path).read_text)) if cfg.jwks_path else None
    return Hub(
        store=store,
        broker=node.broker,
        state_dir=node.config.node.state_dir,
        topic_base=node.topic_base,
        mosquitto_files=files,
        trust_requirements=parse_gates(cfg.trust_gates) or None,
        enrolment_tokens=tokens,
        jwks=jwks,
        jwt_issuer=cfg.jwt_issuer or None,
        jwt_audience=cfg.jwt_audience or None,
        agent_rate_per_s=cfg.agent_rate_per_s,
        agent_burst=cfg.agent_burst,
        session_rate_per_s=cfg.session_rate_per_s,
        session_burst=cfg.session_burst,
        heartbeat_timeout_s=cfg.heartbeat_timeout_s,
        audit_messages=cfg.audit_messages,
        metrics=node.registry,
        mcp=cfg.mcp,
        broker_dynsec=cfg.mosquitto_dynsec,
        broker_service_user=node.config.mqtt.username or None,
    )


async def _open_node_store(config: Config, attestor: NodeAttestor) -> Store:
    """The daemon's store: signed by the TPM-resident key and with a TPM-sealed payload key when there is
    a TPM, else by the software key files (``open_store``)."""
    if attestor.mode != "tpm":
        return await asyncio.to_thread(open_store, config)
    signer = attest.TpmSigner(attestor, asyncio.get_running_loop())
    key: bytes | None = None
    if config.store.encrypt_payloads:
        sealed = config.node.state_dir / "maif.key.sealed"
        if sealed.exists():
            key = await attestor.unseal(await asyncio.to_thread(sealed.read_bytes))
        else:
            key = os.urandom(32)  # AES-256-GCM key (NIST SP 800-38D)
            await asyncio.to_thread(write_secret_file, sealed, await attestor.seal(key))
    return await asyncio.to_thread(open_store, config, signer=signer, encryption_key=key)


def open_store(config: Config, *, signer: Signer | None = None, encryption_key: bytes | None = None) -> Store:
    """Build the store; without ``signer``/``encryption_key`` the software key files are used (created on
    first start). ``mycoedge maif`` opens it this way beside the daemon."""
    state = config.node.state_dir
    signer = signer or Ed25519Signer.from_file(state / "node-signing.key", create=True)
    key = encryption_key
    if key is None and config.store.encrypt_payloads:
        key_path = state / "maif.key"
        if not key_path.exists():
            write_secret_file(key_path, os.urandom(32))  # AES-256-GCM key (NIST SP 800-38D)
        key = load_encryption_key(key_path)
    cfg = config.store
    embedder = make_embedder(cfg.embedder, dim=cfg.embedding_dim, base_url=cfg.embedder_url or None,  # type: ignore[arg-type]
                             model=cfg.embedder_model, api_key=cfg.embedder_api_key or None)
    return Store(state / "mycoedge.db", signer=signer, encryption_key=key, embedder=embedder,
                 embedding_dim=cfg.embedding_dim, vector_index=cfg.vector_index,  # type: ignore[arg-type]
                 integrity_check=cfg.integrity_check)  # type: ignore[arg-type]


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _watchdog(node: Node) -> None:
    """WATCHDOG=1 only while the loop turns and every liveness check (e.g. the store) answers."""
    interval = node.notifier.watchdog_interval_s or 10.0
    while True:
        await asyncio.sleep(interval)
        try:
            async with asyncio.timeout(interval):
                for check in node.liveness_checks:
                    await check()
        except Exception as exc:  # a hung store must let systemd restart us
            log.warning("liveness check failed, withholding the watchdog ping: %s", exc)
            continue
        node.notifier.watchdog()
        node.notifier.status(node.status_line())
