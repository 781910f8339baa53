"""The node's devices as the daemon sees them: one supervised driver per configured port.

``DeviceFleet`` builds each driver from ``[[devices]]``, and is the listener every driver reports to:
readings go to MQTT (``devices/<id>/telemetry`` plus a retained per-sensor state for Home Assistant) and
to the store through a ``ReadingSink``; link states go to the retained ``devices/<id>/state``; events to
``devices/<id>/events``. Commands arrive on MQTT (answered on the MQTT 5 response topic with the
correlation data) or on ``POST /v1/devices/{id}/commands``, and are answered with the device's own ACK or
NACK. On MQTT, ``devices/<id>/cmd/<agent_id>`` is an agent's (the broker lets only that agent write it)
and passes ``mqtt_command_gate``, the same checks as the HTTP route; the bare ``devices/<id>/cmd`` is the
node's own operators' (admin-level in the broker ACL).

Readings are the hot path (64 boards at 10 Hz are 2,500 a second): each is encoded once, handed to the
broker link's batched ``publish_nowait`` and appended to the sink's batch, with no task or await per
reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self

import aiomqtt
from aiohttp import web
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from daemon.api import Principal, principal
from daemon.config import DeviceConfig
from daemon.errors import DaemonError
from daemon.mqtt import BrokerLink
from daemon.openapi import Routes, read_json
from daemon.problems import PROBLEM_SCHEMA, Problem
from drivers.bme688 import HeaterStep
from drivers.bme688_bridge import Bme688Bridge
from drivers.device import CommandResult, Device, DeviceEvent, DeviceListener, LinkState
from drivers.errors import DeviceTimeoutError, DriverError, LinkError, NotReadyError
from drivers.hotplug import HotplugEvent, HotplugSource, PortWatcher, ProbeResult
from drivers.lora_airtime import DutyCycleBudget, LoRaSettings
from drivers.lora_gateway import LoraGateway
from drivers.model import Reading
from drivers.mycobrain import MycoBrain
from drivers.rui3 import Rui3Modem

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 20.0  # covers the MycoBrain's 3 retries of 5 s (PROTOCOLS.md §1) with margin
SINK_BATCH = 256
SENSOR_STATE_INTERVAL_S = 1.0
SINK_INTERVAL_S = 0.2


class ReadingSink(Protocol):
    """Where readings are kept durably; the local store implements it."""

    async def store_readings(self, readings: Sequence[Reading]) -> None: ...


DeviceFactory = Callable[[DeviceConfig, DeviceListener], Device]


# The agent id that ends ``devices/<id>/cmd/<agent_id>``; ``result`` is the default response topic's leaf
# (the hub's registry refuses it as an agent id, and the broker ACL never lets an agent write it).
RESULT_LEAF = "result"
_REFUSAL_KINDS = {401: "unauthorized", 403: "forbidden", 404: "not_found", 429: "rate_limited"}


class CommandRefused(DaemonError):
    """An agent's MQTT device command refused by the gate (capability, trust gate, policy, rate limit).

    ``status`` is what ``POST /v1/devices/{id}/commands`` would answer for the same refusal; ``kind`` is the
    ``error`` of the MQTT answer (by default named after the status: ``forbidden``, ``rate_limited``, …).
    """

    def __init__(self, status: int, reason: str, *, kind: str | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.kind = kind or _REFUSAL_KINDS.get(status, "refused")
        self.retry_after_s = retry_after_s


# (agent_id, device handle, command name) -> None, or raises CommandRefused: the same capability, trust
# gate and policy an agent's HTTP device command passes (the hub provides it; app.py wires it).
MqttCommandGate = Callable[[str, str, str], Awaitable[None]]


class CommandPayloadError(ValueError):
    """An MQTT command payload that is not ``{"cmd": str, "params": {...}}``."""


def parse_command(payload: bytes) -> tuple[str, dict[str, Any]]:
    """Decode an MQTT command: ``{"cmd": NAME, "params": {...}}`` (the MDP COMMAND payload shape)."""
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandPayloadError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise CommandPayloadError("must be a JSON object")
    name = body.get("cmd")
    params = body.get("params", {})
    if not isinstance(name, str) or not name:
        raise CommandPayloadError("'cmd' must be a non-empty string")
    if not isinstance(params, dict):
        raise CommandPayloadError("'params' must be an object")
    return name, params


def reading_json(reading: Reading) -> dict[str, Any]:
    return {
        "device_id": reading.device_id,
        "sensor": reading.sensor,
        "ts": reading.ts,
        "seq": reading.seq,
        "valid": reading.valid,
        "values": {name: {"value": q.value, "unit": q.unit} for name, q in reading.quantities.items()},
        **({"meta": dict(reading.meta)} if reading.meta else {}),
    }


# Home Assistant device classes for the quantities our drivers publish (HA "sensor" integration docs).
_HA_CLASSES: dict[str, tuple[str | None, str | None]] = {
    "temperature_c": ("temperature", "°C"),
    "humidity_pct": ("humidity", "%"),
    "pressure_hpa": ("atmospheric_pressure", "hPa"),
    "pressure_pa": ("atmospheric_pressure", "Pa"),
    "gas_ohm": (None, "Ω"),
    "iaq": ("aqi", None),
    "co2_equivalent": ("carbon_dioxide", "ppm"),
    "voc_equivalent": ("volatile_organic_compounds_parts", "ppm"),
    "rssi_dbm": ("signal_strength", "dBm"),
}


@dataclass(slots=True)
class _LiveTopics:
    """One sensor's live topics, built once, and when its retained state is due again."""

    telemetry: str
    sensor_state: str
    state_due: float = -math.inf


@dataclass
class _Entry:
    """One configured device and what the fleet remembers about it."""

    config: DeviceConfig
    device: Device | None = None
    last_readings: dict[str, dict[str, Any]] = field(default_factory=dict)
    announced: set[str] = field(default_factory=set)


class _DeviceStatsCollector(Collector):
    def __init__(self, fleet: DeviceFleet) -> None:
        self._fleet = fleet

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        counters = CounterMetricFamily(
            "mycoedge_device_link", "Per-device link counters (frames, bytes, each kind of error)",
            labels=["device", "counter"],
        )
        up = GaugeMetricFamily("mycoedge_device_streaming", "1 while the device link is streaming",
                               labels=["device"])
        for entry in self._fleet.entries:
            if entry.device is None:
                continue
            name = self._fleet.handle(entry)
            for key, value in sorted(entry.device.stats().items()):
                counters.add_metric([name, key], value)
            up.add_metric([name], 1 if entry.device.state == LinkState.STREAMING else 0)
        yield counters
        yield up


class DeviceFleet:
    """Every configured device, supervised; the listener its drivers report to. An async context manager."""

    def __init__(
        self,
        configs: Sequence[DeviceConfig],
        *,
        factories: Mapping[str, DeviceFactory],
        topic_base: str,
        node_id: str,
        broker: BrokerLink | None,
        sink: ReadingSink | None = None,
        registry: CollectorRegistry | None = None,
        ha_discovery: bool = True,
        ha_prefix: str = "homeassistant",
        hotplug: HotplugSource | None = None,
        clock: Callable[[], float] = time.time,
        mqtt_command_gate: MqttCommandGate | None = None,
    ) -> None:
        self.entries = [_Entry(config=c) for c in configs]
        self._hotplug = hotplug
        self.unconfigured: dict[str, dict[str, Any]] = {}  # ports udev showed us that no [[devices]] names
        self._factories = factories
        self._topic_base = topic_base
        self._node_id = node_id
        self._broker = broker
        self._sink = sink
        self._ha = ha_discovery
        self._ha_prefix = ha_prefix
        self._clock = clock
        # Set (here or later) to gate agents' commands on ``devices/<id>/cmd/<agent_id>``; None lets them
        # through as on the bare ``cmd`` topic, which the broker ACL leaves to the node's own operators.
        self.mqtt_command_gate = mqtt_command_gate
        self._stack = AsyncExitStack()
        self._pending: list[Reading] = []
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sink_task: asyncio.Task[None] | None = None
        self._live: dict[tuple[str, str], _LiveTopics] = {}
        self._sensors_announced: set[tuple[str, str]] = set()
        self.remote: dict[str, dict[str, Any]] = {}  # devices seen only through another (LoRa) with no link
        self._remote_announced: set[str] = set()
        self._readings = Counter("mycoedge_device_readings", "Readings received from devices",
                                 ["valid"], registry=registry)
        self._bad_commands = Counter("mycoedge_device_bad_commands",
                                     "MQTT command payloads refused as malformed", registry=registry)
        self._refused_commands = Counter("mycoedge_device_commands_refused",
                                         "Agents' MQTT device commands the gate refused", ["error"],
                                         registry=registry)
        self._readings_valid = self._readings.labels(valid="true")
        self._readings_invalid = self._readings.labels(valid="false")
        self._id_collisions = Counter("mycoedge_device_remote_id_collisions",
                                      "Remote readings whose board id was already taken by a local board",
                                      registry=registry)
        self._sink_errors = Counter("mycoedge_device_sink_errors", "Reading batches the store refused",
                                    registry=registry)
        if registry is not None:
            registry.register(_DeviceStatsCollector(self))
        if broker is not None:
            broker.subscribe(f"{topic_base}/devices/+/cmd", self._on_mqtt_command)
            broker.subscribe(f"{topic_base}/devices/+/cmd/+", self._on_agent_command)
            broker.on_connect(self._republish)

    # ---- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self._sink_task = asyncio.create_task(self._drain_sink(), name="device-sink")
        for entry in self.entries:
            factory = self._factories.get(entry.config.kind)
            if factory is None:
                log.error("no driver for device kind %r on %s", entry.config.kind, entry.config.port)
                continue
            entry.device = factory(entry.config, _Listener(self, entry))
            await self._stack.enter_async_context(entry.device)
        if self._hotplug is not None:
            watcher = PortWatcher(self._hotplug, on_match=self._on_plugged, on_unknown=self._on_probed)
            for entry in self.entries:
                if entry.device is not None:
                    watcher.watch(entry.config.port, entry.device.wake)
            await self._stack.enter_async_context(watcher)
        return self

    def _on_plugged(self, event: HotplugEvent, kinds: tuple[str, ...]) -> None:
        """A known board appeared on a port no ``[[devices]]`` entry names: tell the operator how to add it."""
        port = event.by_id[0] if event.by_id else event.devnode
        self.unconfigured[port] = {"port": port, "kinds": list(kinds), "serial": event.serial}
        log.info("unconfigured %s appeared on %s; add a [[devices]] entry to use it", "/".join(kinds), port)

    def _on_probed(self, event: HotplugEvent, result: ProbeResult) -> None:
        port = event.by_id[0] if event.by_id else event.devnode
        self.unconfigured[port] = {"port": port, "probe": _jsonable(dataclasses.asdict(result))}
        log.info("unknown serial port %s probed read-only: %s", port, result)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()
        for entry in self.entries:
            if entry.device is not None:
                await self._publish_state(entry, override="offline")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._sink_task is not None:
            self._sink_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sink_task
        await self._flush_sink()

    # ---- lookup ------------------------------------------------------------------------------------
    def handle(self, entry: _Entry) -> str:
        """The name a device is addressed by: its own id once known, else its config name or port."""
        if entry.device is not None and entry.device.device_id:
            return entry.device.device_id
        return entry.config.name or entry.config.port.rsplit("/", 1)[-1]

    def find(self, key: str) -> _Entry | None:
        for entry in self.entries:
            if key in (self.handle(entry), entry.config.name, entry.config.port.rsplit("/", 1)[-1]):
                return entry
        return None

    def describe(self, entry: _Entry) -> dict[str, Any]:
        device = entry.device
        body: dict[str, Any] = {
            "id": self.handle(entry),
            "device_id": device.device_id if device else None,
            "kind": entry.config.kind,
            "port": entry.config.port,
            "name": entry.config.name or None,
            "state": str(device.state) if device else "closed",
            "link": dict(device.stats()) if device else {},
            "last_readings": entry.last_readings,
        }
        if device is not None:
            body["identity"] = _jsonable(device.describe())
        return body

    # ---- commands ----------------------------------------------------------------------------------
    async def command(self, entry: _Entry, name: str, params: Mapping[str, object]) -> CommandResult:
        if entry.device is None:
            raise LinkError("no driver for this device")
        return await entry.device.command(name, params, timeout=COMMAND_TIMEOUT_S)

    async def _on_mqtt_command(self, message: aiomqtt.Message) -> None:
        """``devices/<id>/cmd``: the node's own operators and Home Assistant (admin-level in the broker ACL)."""
        parts = str(message.topic).split("/")
        await self._mqtt_command(message, parts[-2], agent_id=None)

    async def _on_agent_command(self, message: aiomqtt.Message) -> None:
        """``devices/<id>/cmd/<agent_id>``: the broker lets only that agent write it, so the topic names it."""
        parts = str(message.topic).split("/")
        if parts[-1] == RESULT_LEAF:
            return  # an answer on the default response topic (ours, too), not a command
        await self._mqtt_command(message, parts[-3], agent_id=parts[-1])

    async def _mqtt_command(self, message: aiomqtt.Message, key: str, *, agent_id: str | None) -> None:
        props = message.properties
        default_topic = f"{self._topic_base}/devices/{key}/cmd/{RESULT_LEAF}"
        response_topic = getattr(props, "ResponseTopic", None) or default_topic
        correlation = getattr(props, "CorrelationData", None)
        own_inbox = f"{self._topic_base}/agents/{agent_id}/inbox"
        if agent_id is not None and response_topic not in (default_topic, own_inbox):
            # The node publishes with full rights: an agent must not make it write into another agent's
            # inbox or onto any topic it chooses. Its own inbox or the device's result topic only.
            self._refused_commands.labels(error="bad_response_topic").inc()
            await self._reply(default_topic, correlation, {
                "ok": False, "error": "bad_response_topic", "status": 403,
                "message": "an agent's response topic must be its own inbox or the device's cmd/result"})
            return
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else str(message.payload).encode()
        try:
            name, params = parse_command(bytes(payload))
        except CommandPayloadError as exc:
            self._bad_commands.inc()
            await self._reply(response_topic, correlation, {"ok": False, "error": "bad_request", "message": str(exc)})
            return
        entry = self.find(key)
        if entry is None:
            await self._reply(response_topic, correlation,
                              {"ok": False, "error": "unknown_device", "message": key, "cmd": name})
            return
        gate = self.mqtt_command_gate
        if agent_id is not None and gate is not None:
            refusal = await self._gate(gate, agent_id, self.handle(entry), name)
            if refusal is not None:
                refusal["cmd"] = name
                await self._reply(response_topic, correlation, refusal)
                return
        try:
            result = await self.command(entry, name, params)
        except NotReadyError as exc:
            body: dict[str, Any] = {"ok": False, "error": "not_ready", "message": str(exc)}
        except DeviceTimeoutError as exc:
            body = {"ok": False, "error": "timeout", "message": str(exc)}
        except LinkError as exc:
            body = {"ok": False, "error": "link_down", "message": str(exc)}
        except DriverError as exc:
            body = {"ok": False, "error": "driver_error", "message": str(exc)}
        else:
            body = _result_json(result)
        body["cmd"] = name
        await self._reply(response_topic, correlation, body)

    async def _gate(self, gate: MqttCommandGate, agent_id: str, handle: str, name: str) -> dict[str, Any] | None:
        """None when the gate lets the command through, else the refusal to answer with (counted)."""
        try:
            await gate(agent_id, handle, name)
        except CommandRefused as exc:
            body: dict[str, Any] = {"ok": False, "error": exc.kind, "message": exc.reason, "status": exc.status}
            if exc.retry_after_s is not None:
                body["retry_after_s"] = exc.retry_after_s
        except Exception:
            # A gate that fails refuses: an agent's command never reaches a board unchecked.
            log.exception("device command gate failed for agent %s on %s", agent_id, handle)
            body = {"ok": False, "error": "gate_error", "message": "the command could not be authorised",
                    "status": 500}
        else:
            return None
        self._refused_commands.labels(error=body["error"]).inc()
        log.debug("agent %s refused %s on %s: %s", agent_id, name, handle, body["message"])
        return body

    async def _reply(self, topic: str, correlation: bytes | None, body: Mapping[str, Any]) -> None:
        if self._broker is None:
            return
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho ships no annotations here
        if correlation is not None:
            props.CorrelationData = correlation
        await self._broker.publish(topic, json.dumps(body), qos=1, properties=props)

    # ---- what drivers report -------------------------------------------------------------------------
    def reading(self, entry: _Entry | None, reading: Reading) -> None:
        (self._readings_valid if reading.valid else self._readings_invalid).inc()
        if entry is not None and entry.device is not None and reading.device_id != entry.device.device_id and any(
            other is not entry and other.device is not None and other.device.device_id == reading.device_id
            for other in self.entries
        ):
            # A remote board (heard over LoRa) announcing the id of a local board: the ESP32 id is only the
            # vendor prefix (PROTOCOLS.md section 1), so two boards can share it. Never merge their streams.
            self._id_collisions.inc()
            reading = dataclasses.replace(reading, device_id=f"{reading.device_id}@{self.handle(entry)}")
        body = reading_json(reading)
        if entry is not None and (entry.device is None or reading.device_id == entry.device.device_id):
            entry.last_readings[reading.sensor] = body
        else:
            self.remote.setdefault(reading.device_id, {})[reading.sensor] = body
        if self._sink is not None:
            self._pending.append(reading)
            if len(self._pending) >= SINK_BATCH:
                self._wakeup.set()
        if self._broker is not None:
            self._publish_live(self._broker, reading, body)

    def _publish_live(self, broker: BrokerLink, reading: Reading, body: dict[str, Any]) -> None:
        """Telemetry on the live path: queued in arrival order for the broker link's next corked batch."""
        key = (reading.device_id, reading.sensor)
        live = self._live.get(key)
        if live is None:
            base = f"{self._topic_base}/devices/{reading.device_id}"
            live = self._live[key] = _LiveTopics(f"{base}/telemetry", f"{base}/sensors/{reading.sensor}")
        if self._ha and key not in self._sensors_announced:
            self._sensors_announced.add(key)
            self._spawn(self._announce_sensor(reading))
        text = json.dumps(body).encode()
        broker.publish_nowait(live.telemetry, text)
        # Retained per-sensor state: what Home Assistant's discovery configs point at, and what a new
        # subscriber sees at once. A state, not a stream: refreshed at most every SENSOR_STATE_INTERVAL_S.
        now = time.monotonic()
        if now >= live.state_due:
            live.state_due = now + SENSOR_STATE_INTERVAL_S
            broker.publish_nowait(live.sensor_state, text, retain=True)

    def event(self, entry: _Entry, event: DeviceEvent) -> None:
        if self._broker is None:
            return
        body = {"device_id": event.device_id, "event": event.name, "ts": event.ts or self._clock(),
                **_jsonable(event.data)}
        self._spawn(self._broker.publish(f"{self._topic_base}/devices/{event.device_id}/events", json.dumps(body),
                                         qos=1))

    def state_changed(self, entry: _Entry) -> None:
        self._spawn(self._publish_state(entry))

    async def _publish_state(self, entry: _Entry, override: str | None = None) -> None:
        if self._broker is None or entry.device is None or not entry.device.device_id:
            return
        device = entry.device
        if override is not None:
            status = override
        else:
            status = {LinkState.STREAMING: "online", LinkState.BACKOFF: "error"}.get(device.state, "offline")
        body = {"device_id": device.device_id, "status": status, "link_state": str(device.state),
                "port": entry.config.port, "kind": entry.config.kind, "stats": dict(device.stats()),
                "ts": self._clock()}
        await self._broker.publish(f"{self._topic_base}/devices/{device.device_id}/state", json.dumps(body),
                                   qos=1, retain=True)

    async def _republish(self) -> None:
        """On every broker (re)connect: availability and discovery again, as HA expects after a restart."""
        self._sensors_announced.clear()
        for entry in self.entries:
            entry.announced.clear()
            await self._publish_state(entry)

    async def _announce_sensor(self, reading: Reading) -> None:
        entry = next((e for e in self.entries if e.device and e.device.device_id == reading.device_id), None)
        announced = entry.announced if entry is not None else self._remote_announced
        assert self._broker is not None
        for quantity_name, quantity in reading.quantities.items():
            key = f"{reading.device_id}.{reading.sensor}.{quantity_name}"
            if key in announced:
                continue
            announced.add(key)
            unique = f"{self._node_id}_{reading.device_id}_{reading.sensor}_{quantity_name}".replace("-", "_")
            device_class, unit = _HA_CLASSES.get(quantity_name, (None, quantity.unit or None))
            config: dict[str, Any] = {
                "name": f"{reading.sensor} {quantity_name}",
                "unique_id": unique,
                "object_id": unique,
                "state_topic": f"{self._topic_base}/devices/{reading.device_id}/sensors/{reading.sensor}",
                "value_template": f"{{{{ value_json['values']['{quantity_name}']['value'] }}}}",
                "unit_of_measurement": unit or quantity.unit or None,
                "state_class": "measurement",
                "availability": [
                    {"topic": f"{self._topic_base}/status"},
                    {"topic": f"{self._topic_base}/devices/{reading.device_id}/state",
                     "value_template": "{{ value_json.status }}"},
                ],
                "availability_mode": "all",
                "device": {"identifiers": [f"mycoedge_{reading.device_id}"], "name": reading.device_id,
                           "via_device": f"mycoedge_{self._node_id}"},
            }
            if device_class:
                config["device_class"] = device_class
            config = {k: v for k, v in config.items() if v is not None}
            await self._broker.publish(f"{self._ha_prefix}/sensor/{unique}/config", json.dumps(config), qos=1,
                                       retain=True)

    # ---- the store ---------------------------------------------------------------------------------
    async def _drain_sink(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SINK_INTERVAL_S):
                    await self._wakeup.wait()
            self._wakeup.clear()
            await self._flush_sink()

    async def _flush_sink(self) -> None:
        if self._sink is None or not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            await self._sink.store_readings(batch)
        except Exception:
            # Never lose a batch to a transient store error: put it back in front and try again later.
            self._sink_errors.inc()
            log.exception("storing %d readings failed; will retry", len(batch))
            self._pending[:0] = batch

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Listener:
    """The ``DeviceListener`` one driver gets; it only forwards, tagged with the driver's entry."""

    def __init__(self, fleet: DeviceFleet, entry: _Entry) -> None:
        self._fleet = fleet
        self._entry = entry

    def on_reading(self, reading: Reading) -> None:
        self._fleet.reading(self._entry, reading)

    def on_event(self, event: DeviceEvent) -> None:
        self._fleet.event(self._entry, event)

    def on_state(self, device: Device) -> None:
        self._fleet.state_changed(self._entry)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _result_json(result: CommandResult) -> dict[str, Any]:
    body: dict[str, Any] = {"ok": result.ok, "message": result.message}
    if result.data:
        body["data"] = _jsonable(result.data)
    if result.retry_after_s is not None:
        body["retry_after_s"] = result.retry_after_s
    return body


# ---- drivers ---------------------------------------------------------------------------------------
def _mycobrain(config: DeviceConfig, listener: DeviceListener) -> Device:
    return MycoBrain(
        port=config.port,
        listener=listener,
        stream_rate_hz=config.stream_rate_hz,
        baudrate=config.baudrate,
        by_id=config.port if "/by-id/" in config.port else None,
    )


def _rui3(config: DeviceConfig, listener: DeviceListener) -> Device:
    settings = LoRaSettings(sf=config.spreading_factor, bw_hz=config.bandwidth_khz * 1000,
                            coding_rate=config.coding_rate, preamble=config.preamble)
    return Rui3Modem(
        config.port,
        listener,
        frequency_hz=config.frequency_hz,
        settings=settings,
        tx_power_dbm=config.tx_power_dbm,
        budget=DutyCycleBudget(duty_cycle=config.duty_cycle_pct / 100.0),
    )


def _bme688(config: DeviceConfig, listener: DeviceListener) -> Device:
    return Bme688Bridge(config.port, listener, mode="forced",
                        heater=HeaterStep(config.heater_temp_c, config.heater_dur_ms), rate_ms=config.rate_ms)


def _lora_gateway(config: DeviceConfig, listener: DeviceListener) -> Device:
    settings = LoRaSettings(sf=config.spreading_factor, bw_hz=config.bandwidth_khz * 1000,
                            coding_rate=config.coding_rate, preamble=config.preamble)
    return LoraGateway(config.port, listener, device_id=config.name or None, settings=settings,
                       budget=DutyCycleBudget(duty_cycle=config.duty_cycle_pct / 100.0))


def default_factories() -> dict[str, DeviceFactory]:
    """The driver for each ``[[devices]] kind``."""
    return {"mycobrain": _mycobrain, "rui3": _rui3, "bme688": _bme688, "lora-gateway": _lora_gateway}


# ---- HTTP ------------------------------------------------------------------------------------------
FLEET_KEY: web.AppKey[DeviceFleet] = web.AppKey("fleet", DeviceFleet)
# Capability, trust gate and policy for an agent's device command (the hub provides it); raises a Problem.
CommandGate = Callable[[Principal, str, str], Awaitable[None]]
COMMAND_GATE_KEY: web.AppKey[CommandGate] = web.AppKey("command_gate")
routes = Routes(tag="devices")

_DEVICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "kind", "port", "state"],
    "properties": {
        "id": {"type": "string"},
        "device_id": {"type": ["string", "null"]},
        "kind": {"type": "string"},
        "port": {"type": "string"},
        "name": {"type": ["string", "null"]},
        "state": {"type": "string"},
        "link": {"type": "object"},
        "last_readings": {"type": "object"},
        "identity": {"type": "object"},
    },
}
_COMMAND_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["cmd"],
    "properties": {"cmd": {"type": "string", "minLength": 1, "maxLength": 64},
                   "params": {"type": "object"}},
    "additionalProperties": False,
}
_RESULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["ok", "message"],
    "properties": {"ok": {"type": "boolean"}, "message": {"type": "string"}, "data": {"type": "object"},
                   "retry_after_s": {"type": "number"}},
}


def _fleet_entry(request: web.Request) -> tuple[DeviceFleet, _Entry]:
    fleet = request.app[FLEET_KEY]
    entry = fleet.find(request.match_info["id"])
    if entry is None:
        raise Problem(404, f"no device {request.match_info['id']!r}", kind="unknown-device")
    return fleet, entry


@routes.get("/v1/devices", summary="List devices with their state and last readings", auth="agent",
            responses={200: {"type": "object", "properties": {"devices": {"type": "array", "items": _DEVICE_SCHEMA}}}})
async def list_devices(request: web.Request) -> web.Response:
    fleet = request.app[FLEET_KEY]
    return web.json_response({"devices": [fleet.describe(e) for e in fleet.entries],
                              "remote": _jsonable(fleet.remote),
                              "unconfigured": list(fleet.unconfigured.values())})


@routes.get("/v1/devices/{id}", summary="One device: identity, last readings, link statistics", auth="agent",
            responses={200: _DEVICE_SCHEMA})
async def get_device(request: web.Request) -> web.Response:
    fleet, entry = _fleet_entry(request)
    return web.json_response(fleet.describe(entry))


@routes.post(
    "/v1/devices/{id}/commands",
    summary="Send a command and wait for the device's ACK or NACK",
    auth="agent",
    request=_COMMAND_SCHEMA,
    responses={200: _RESULT_SCHEMA, 409: PROBLEM_SCHEMA, 429: PROBLEM_SCHEMA, 503: PROBLEM_SCHEMA,
               504: PROBLEM_SCHEMA},
)
async def post_command(request: web.Request) -> web.Response:
    fleet, entry = _fleet_entry(request)
    body = await read_json(request)
    who = principal(request)
    gate = request.app.get(COMMAND_GATE_KEY)
    if gate is not None and not who.is_admin:
        await gate(who, fleet.handle(entry), body["cmd"])
    try:
        result = await fleet.command(entry, body["cmd"], body.get("params", {}))
    except NotReadyError as exc:
        raise Problem(409, f"device has not identified itself yet: {exc}", kind="not-identified") from None
    except DeviceTimeoutError as exc:
        raise Problem(504, f"no answer from the device: {exc}", kind="device-timeout") from None
    except LinkError as exc:
        raise Problem(503, f"device link is down: {exc}", kind="link-down") from None
    if not result.ok and result.retry_after_s is not None:
        raise Problem(429, result.message, kind="device-budget", retry_after_s=result.retry_after_s,
                      headers={"Retry-After": str(max(1, math.ceil(result.retry_after_s)))})
    return web.json_response(_result_json(result))
