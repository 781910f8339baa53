"""The daemon's link to the local Mosquitto broker.

Reconnection is an explicit state machine (as aioesphomeapi's ``ReconnectLogic``): CONNECTING → CONNECTED
→ BACKOFF (capped, jittered) → CONNECTING. On every connect the node's retained ``status`` goes to
``online``, subscriptions are renewed and the connect hooks republish retained availability; the broker
publishes ``offline`` (the last will) if the daemon dies without a clean disconnect, and the daemon
publishes it itself when it stops in order.

Two ways to publish. ``publish`` awaits paho's hand-off of each message (QoS 1 replies, retained state).
``publish_nowait`` is for the high-rate live view (device telemetry, thousands of small QoS 0 messages a
second): messages are queued and handed to paho together every ``NOWAIT_FLUSH_S``, written straight from
the loop with the socket corked (``TCP_CORK``, tcp(7)) so a batch leaves in a few TCP segments instead of
one syscall, one epoll registration and one loopback wake-up per message. paho still encodes every packet.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from enum import StrEnum
from types import TracebackType
from typing import Self

import aiomqtt
from paho.mqtt.properties import Properties
from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger(__name__)

NOWAIT_FLUSH_S = 0.01  # added latency of the live view, for batches of ~30 messages at 64 boards x 10 Hz
NOWAIT_RETRY_SOON_S = 0.001  # a ``soon`` batch behind paho's own writes: wait for its writer, not a full period
NOWAIT_MAX = 10_000  # messages waiting for the socket; beyond it the live view drops (counted)
_TCP_CORK = getattr(socket, "TCP_CORK", None)  # Linux only; elsewhere a batch is written uncorked

MessageHandler = Callable[[aiomqtt.Message], Awaitable[None]]
ConnectHook = Callable[[], Awaitable[None]]


class BrokerState(StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    STOPPED = "stopped"


def backoff_delay(attempt: int, *, cap_s: float, rand: Callable[[], float], base_s: float = 0.2) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, never above ``cap_s``."""
    ceiling = min(cap_s, base_s * (2 ** min(attempt, 30)))
    return float(ceiling / 2 + rand() * ceiling / 2)


class BrokerLink:
    """One supervised MQTT connection; an async context manager that owns its task."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        status_topic: str,
        username: str | None = None,
        password: str | None = None,
        keepalive_s: int = 30,
        reconnect_max_s: float = 30.0,
        registry: CollectorRegistry | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._host = host
        self._port = port
        self._client_id = client_id
        self.status_topic = status_topic
        self._username = username or None
        self._password = password or None
        self._keepalive_s = keepalive_s
        self._reconnect_max_s = reconnect_max_s
        self._rand = rand
        self._handlers: list[tuple[str, MessageHandler]] = []
        self._hooks: list[ConnectHook] = []
        self._state_listeners: list[Callable[[BrokerState], None]] = []
        self._pending_subscriptions: set[asyncio.Task[None]] = set()
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.connected = asyncio.Event()
        self.state = BrokerState.DISCONNECTED
        self.last_error = ""
        self._connects = Counter("mycoedge_mqtt_connects", "Successful broker connections", registry=registry)
        self._dropped = Counter(
            "mycoedge_mqtt_publish_dropped", "Publishes dropped while the broker was unreachable",
            registry=registry,
        )
        self._backlog_dropped = Counter(
            "mycoedge_mqtt_backlog_dropped",
            "Live (publish_nowait) messages dropped because the socket could not keep up", registry=registry,
        )
        self._nowait: collections.deque[tuple[str, bytes, bool]] = collections.deque()
        self._flush_handle: asyncio.Handle | None = None
        self._flush_soon = False  # the pending flush runs at the end of this loop iteration
        self._bad_topic_logged = False
        self._state_gauge = Gauge(
            "mycoedge_mqtt_connected", "1 while connected to the broker", registry=registry
        )

    def subscribe(self, topic_filter: str, handler: MessageHandler) -> None:
        """Register a handler; the subscription is made now if connected, and again on every reconnect."""
        self._handlers.append((topic_filter, handler))
        client = self._client
        if client is not None and self.connected.is_set():
            task = asyncio.get_running_loop().create_task(self._subscribe_live(client, topic_filter),
                                                          name=f"mqtt-subscribe {topic_filter}")
            self._pending_subscriptions.add(task)
            task.add_done_callback(self._pending_subscriptions.discard)

    async def _subscribe_live(self, client: aiomqtt.Client, topic_filter: str) -> None:
        with contextlib.suppress(aiomqtt.MqttError):  # a lost connection resubscribes everything on reconnect
            await client.subscribe(topic_filter, qos=1)

    def on_state(self, listener: Callable[[BrokerState], None]) -> None:
        """Called on every state change, on the loop; must not block."""
        self._state_listeners.append(listener)

    def on_connect(self, hook: ConnectHook) -> None:
        """Run after every (re)connect, e.g. to republish retained device availability."""
        self._hooks.append(hook)

    async def publish(
        self,
        topic: str,
        payload: str | bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> bool:
        """Publish if connected; returns False (and counts it) when the broker is unreachable.

        Live MQTT traffic is not spooled: the store and the uplink keep what must not be lost.
        """
        client = self._client
        if client is None or not self.connected.is_set():
            self._dropped.inc()
            return False
        try:
            await client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        except aiomqtt.MqttError as exc:
            log.debug("publish to %s failed: %s", topic, exc)
            self._dropped.inc()
            return False
        return True

    def publish_nowait(self, topic: str, payload: str | bytes, *, retain: bool = False, soon: bool = False) -> bool:
        """Queue a QoS 0 message for the next batch; False (counted) when disconnected or the backlog is full.

        Messages keep their order among themselves; they may leave up to ``NOWAIT_FLUSH_S`` after an awaited
        ``publish`` made later. For telemetry, not for anything that must arrive. ``soon`` sends the batch at
        the end of this loop iteration instead (the hub's QoS 0 deliveries, where latency is the point):
        everything queued until then still leaves in one corked burst.
        """
        if self._client is None or not self.connected.is_set():
            self._dropped.inc()
            return False
        if len(self._nowait) >= NOWAIT_MAX:
            self._backlog_dropped.inc()
            return False
        self._nowait.append((topic, payload.encode() if isinstance(payload, str) else payload, retain))
        if soon and not self._flush_soon:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush_nowait)
            self._flush_soon = True
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(NOWAIT_FLUSH_S, self._flush_nowait)
        return True

    def _flush_nowait(self) -> None:
        """Hand the queued live messages to paho in one corked burst (see the module docstring)."""
        # A latency-bound (``soon``) batch that must wait for paho retries within a millisecond, not 10.
        retry_s = NOWAIT_RETRY_SOON_S if self._flush_soon else NOWAIT_FLUSH_S
        self._flush_handle = None
        self._flush_soon = False
        queue = self._nowait
        if not queue:
            return
        client = self._client
        if client is None or not self.connected.is_set():
            self._dropped.inc(len(queue))
            queue.clear()
            return
        paho = client._client  # aiomqtt exposes no publish that skips its per-message await
        sock = paho.socket()
        if sock is None:
            self._dropped.inc(len(queue))
            queue.clear()
            return
        if paho.want_write():
            # paho is still draining (the kernel buffer was full, or an awaited publish is in flight):
            # keep the order and try again once its writer has had a turn.
            self._flush_handle = asyncio.get_running_loop().call_later(retry_s, self._flush_nowait)
            return
        register, unregister = paho.on_socket_register_write, paho.on_socket_unregister_write
        on_publish = paho.on_publish
        # Without the register-write callback paho writes each packet at once from publish() (it does so
        # when no external loop is attached); corked, each write is a copy into the socket buffer. paho's
        # queue was empty, so every packet written here is one of ours: aiomqtt's on_publish, which only
        # wakes awaited publishes (and would build PUBACK properties per packet), has nothing to do; it
        # also must not see these message ids, which may equal one of its QoS 1 publishes in flight.
        paho.on_socket_register_write = None
        paho.on_socket_unregister_write = None
        paho.on_publish = None
        corked = _set_cork(sock, 1)
        try:
            while queue:
                topic, payload, retain = queue.popleft()
                try:
                    rc = paho.publish(topic, payload, 0, retain).rc
                except ValueError as exc:  # a wildcard in a topic built from a board's own id: untrusted
                    self._dropped.inc()
                    log.log(logging.DEBUG if self._bad_topic_logged else logging.WARNING,
                            "live message to %r not published: %s", topic, exc)
                    self._bad_topic_logged = True
                    continue
                if rc != 0:  # MQTT_ERR_NO_CONN: the connection is going; the supervisor reconnects
                    self._dropped.inc(1 + len(queue))
                    queue.clear()
                    break
                if paho.want_write():
                    break  # the socket buffer is full: the rest waits for paho's writer
        finally:
            paho.on_socket_register_write = register
            paho.on_socket_unregister_write = unregister
            paho.on_publish = on_publish
            if corked:
                _set_cork(sock, 0)  # uncorking sends what is held at once (tcp(7))
            if paho.want_write() and register is not None:
                register(paho, paho.user_data_get(), sock)
        if queue and self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(retry_s, self._flush_nowait)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._supervise(), name="mqtt-link")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._flush_handle is not None:
            # What was queued for the live view still goes out before the clean DISCONNECT.
            self._flush_handle.cancel()
            self._flush_nowait()
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            # The connection leaves its ``async with`` normally (a clean DISCONNECT, so no will); the
            # timeout only guards against a broker that stopped answering.
            try:
                async with asyncio.timeout(3):
                    await asyncio.shield(self._task)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        for task in list(self._pending_subscriptions):
            task.cancel()
        await asyncio.gather(*self._pending_subscriptions, return_exceptions=True)
        self._set_state(BrokerState.STOPPED)

    def wake(self) -> None:
        """Cut a backoff short (e.g. the operator restarted the broker)."""
        self._wake.set()

    def _set_state(self, state: BrokerState) -> None:
        if state == self.state:
            return
        log.debug("mqtt link %s -> %s", self.state, state)
        self.state = state
        self._state_gauge.set(1 if state == BrokerState.CONNECTED else 0)
        for listener in self._state_listeners:
            listener(state)

    async def _supervise(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            self._set_state(BrokerState.CONNECTING)
            try:
                await self._connect_once()
            except aiomqtt.MqttError as exc:
                if str(exc) != self.last_error:
                    log.warning("broker %s:%d unreachable: %s", self._host, self._port, exc)
                self.last_error = str(exc)
            finally:
                self._client = None
                self.connected.clear()
                if self._nowait:
                    self._dropped.inc(len(self._nowait))
                    self._nowait.clear()
            if self._stopping.is_set():
                return
            if self.state == BrokerState.CONNECTED:
                attempt = 0
            self._set_state(BrokerState.BACKOFF)
            delay = backoff_delay(attempt, cap_s=self._reconnect_max_s, rand=self._rand)
            attempt += 1
            if not self._stopping.is_set():
                self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _connect_once(self) -> None:
        will = aiomqtt.Will(self.status_topic, "offline", qos=1, retain=True)
        async with aiomqtt.Client(
            self._host,
            self._port,
            identifier=self._client_id,
            username=self._username,
            password=self._password,
            will=will,
            keepalive=self._keepalive_s,
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=5,
            # Small messages forwarded one by one: without TCP_NODELAY, Nagle's algorithm holds each behind
            # the broker's delayed ACK (~40 ms per hop, RFC 1122 §4.2.3.2).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        ) as client:
            self._client = client
            await client.publish(self.status_topic, "online", qos=1, retain=True)
            for topic_filter, _ in self._handlers:
                await client.subscribe(topic_filter, qos=1)
            self._set_state(BrokerState.CONNECTED)
            self.connected.set()
            self._connects.inc()
            if self.last_error:
                log.info("broker %s:%d connected again", self._host, self._port)
            self.last_error = ""
            for hook in self._hooks:
                await hook()
            receiver = asyncio.create_task(self._receive(client), name="mqtt-receive")
            stopping = asyncio.create_task(self._stopping.wait(), name="mqtt-stop")
            try:
                await asyncio.wait([receiver, stopping], return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                receiver.cancel()
                await asyncio.gather(receiver, stopping, return_exceptions=True)
            if self._stopping.is_set():
                # A clean stop says "offline" itself; the broker sends the will only on an unclean loss.
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                    async with asyncio.timeout(2):
                        await client.publish(self.status_topic, "offline", qos=1, retain=True)
            elif not receiver.cancelled() and receiver.exception() is not None:
                raise receiver.exception()  # type: ignore[misc]  # the MqttError that ended the connection

    async def _receive(self, client: aiomqtt.Client) -> None:
        # Handlers run concurrently (a device command waits seconds for its ACK) but die with the connection.
        pending: set[asyncio.Task[None]] = set()
        try:
            async for message in client.messages:
                task = asyncio.create_task(self._dispatch(message), name=f"mqtt-handler {message.topic}")
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _dispatch(self, message: aiomqtt.Message) -> None:
        for topic_filter, handler in self._handlers:
            if message.topic.matches(topic_filter):
                try:
                    await handler(message)
                except Exception:
                    # One bad message (or handler bug) must not take the broker link down.
                    log.exception("handler for %s failed on %s", topic_filter, message.topic)


def _set_cork(sock: object, value: int) -> bool:
    setsockopt = getattr(sock, "setsockopt", None)
    if setsockopt is None or _TCP_CORK is None:  # websockets, or not Linux: write uncorked
        return False
    try:
        setsockopt(socket.IPPROTO_TCP, _TCP_CORK, value)
    except OSError:  # not TCP (a unix-domain broker socket)
        return False
    return True
