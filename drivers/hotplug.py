"""Serial hot-plug: one event-source interface, port matching, and read-only probing of unknown ports.

``HotplugSource`` is an async iterator of ``HotplugEvent``. ``PyudevSource`` reads udev's netlink monitor
without blocking (its socket on ``loop.add_reader``, ``poll(timeout=0)``); ``QueueSource`` is fed by tests
or by anything else that learns of ports, and drives exactly the same ``PortWatcher`` code path.

``PortWatcher`` consumes a source: an ``add`` for a watched port (matched by its ``/dev/serial/by-id``
link, its device node, or what a configured path resolves to) wakes that port's link at once; an ``add``
matching a known board (``KNOWN_BOARDS``, USB VID:PID matchers, as Home Assistant manifests declare them)
or a configured rule goes to ``on_match``; anything else is probed read-only (``probe_port``) and the
result goes to ``on_unknown``. Unknown ports are never written to (PROTOCOLS.md section 4), so an
AT-command modem, which only speaks when spoken to, is reported as unidentified rather than probed with
``AT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, Self, runtime_checkable

from drivers import mdp, ndjson_legacy
from drivers.link import Backoff, SerialLink

_LOGGER = logging.getLogger(__name__)

BY_ID_DIR = "/dev/serial/by-id"


@dataclass(frozen=True, slots=True)
class HotplugEvent:
    """A tty appeared or vanished; USB identity as udev reported it."""

    action: str  # "add" | "remove" | "change"
    devnode: str
    by_id: tuple[str, ...] = ()
    vid: int | None = None
    pid: int | None = None
    serial: str | None = None
    vendor: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class UsbMatcher:
    """A USB VID:PID a driver claims; ``kinds`` lists the drivers that may sit behind it."""

    vid: int
    pid: int
    kinds: tuple[str, ...]
    description: str

    def matches(self, event: HotplugEvent) -> bool:
        return event.vid == self.vid and event.pid == self.pid


# USB IDs from the vendors' registrations (usb.ids): Espressif's native USB-Serial/JTAG on the ESP32-S3,
# and the two UART bridges found on ESP32 boards and sensor bridges. A bridge chip says nothing about
# the firmware behind it, so those list several kinds and are confirmed by a read-only probe.
KNOWN_BOARDS: tuple[UsbMatcher, ...] = (
    UsbMatcher(0x303A, 0x1001, ("mycobrain",), "Espressif ESP32-S3 USB JTAG/serial (MycoBrain)"),
    UsbMatcher(0x10C4, 0xEA60, ("mycobrain", "bme688", "lora"), "Silicon Labs CP210x UART bridge"),
    UsbMatcher(0x1A86, 0x7523, ("mycobrain", "bme688", "lora"), "QinHeng CH340 UART bridge"),
    UsbMatcher(0x1A86, 0x55D4, ("mycobrain", "bme688", "lora"), "QinHeng CH9102 UART bridge"),
)


@dataclass(frozen=True, slots=True)
class PortRule:
    """A configured port: a by-id glob (``/dev/serial/by-id/usb-Espressif*``) and/or a VID:PID."""

    kind: str
    by_id_glob: str | None = None
    vid: int | None = None
    pid: int | None = None

    def matches(self, event: HotplugEvent) -> bool:
        if self.by_id_glob is not None and not any(fnmatch.fnmatch(p, self.by_id_glob) for p in event.by_id):
            return False
        if self.vid is not None and (event.vid, event.pid) != (self.vid, self.pid):
            return False
        return self.by_id_glob is not None or self.vid is not None


def match_event(event: HotplugEvent, rules: Iterable[PortRule] = (),
                known: Iterable[UsbMatcher] = KNOWN_BOARDS) -> tuple[str, ...]:
    """The driver kinds that may own this port: configured rules first, then known boards."""
    for rule in rules:
        if rule.matches(event):
            return (rule.kind,)
    for matcher in known:
        if matcher.matches(event):
            return matcher.kinds
    return ()


def _hex_id(value: object) -> int | None:
    try:
        return int(str(value), 16)
    except ValueError:
        return None


def event_from_properties(action: str, devnode: str, props: Mapping[str, str]) -> HotplugEvent:
    """Build an event from udev properties (``ID_VENDOR_ID``, ``ID_MODEL_ID``, ``ID_SERIAL_SHORT``,
    ``DEVLINKS``), as ``60-serial.rules`` sets them."""
    links = tuple(p for p in props.get("DEVLINKS", "").split() if p.startswith(BY_ID_DIR + "/"))
    return HotplugEvent(
        action=action,
        devnode=devnode,
        by_id=links,
        vid=_hex_id(props["ID_VENDOR_ID"]) if "ID_VENDOR_ID" in props else None,
        pid=_hex_id(props["ID_MODEL_ID"]) if "ID_MODEL_ID" in props else None,
        serial=props.get("ID_SERIAL_SHORT"),
        vendor=props.get("ID_VENDOR"),
        model=props.get("ID_MODEL"),
    )


@runtime_checkable
class HotplugSource(Protocol):
    """Where hot-plug events come from; iterate it, and close it when done."""

    def __aiter__(self) -> AsyncIterator[HotplugEvent]: ...

    async def aclose(self) -> None: ...


class QueueSource:
    """A source fed by hand: tests (no udevd here) and callers that learn of ports another way."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[HotplugEvent | None] = asyncio.Queue()
        self._closed = False

    def put(self, event: HotplugEvent) -> None:
        self._queue.put_nowait(event)

    def add(self, devnode: str, **identity: Any) -> None:
        self.put(HotplugEvent("add", devnode, **identity))

    def remove(self, devnode: str, **identity: Any) -> None:
        self.put(HotplugEvent("remove", devnode, **identity))

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[HotplugEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[HotplugEvent]:
        while True:
            if self._closed and self._queue.empty():
                return
            event = await self._queue.get()
            if event is None:
                return
            yield event


class PyudevSource(QueueSource):
    """udev's netlink monitor for the ``tty`` subsystem, read on the loop without blocking.

    With ``coldplug=True`` the ttys present at start are reported as ``add`` events first, so a daemon
    started after the boards were plugged in sees them the same way.
    """

    def __init__(self, *, coldplug: bool = True) -> None:
        super().__init__()
        self._coldplug = coldplug
        self._monitor: Any = None
        self._fd: int | None = None

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def start(self) -> None:
        import pyudev  # noqa: PLC0415 - imported where used: only hosts with udev need it

        context = pyudev.Context()
        monitor = pyudev.Monitor.from_netlink(context, source="udev")
        monitor.filter_by("tty")
        monitor.start()
        self._monitor = monitor
        self._fd = monitor.fileno()
        asyncio.get_running_loop().add_reader(self._fd, self._on_readable)
        if self._coldplug:
            for device in context.list_devices(subsystem="tty"):
                props = dict(device.properties)
                if device.device_node and props.get("ID_BUS") == "usb":
                    self.put(event_from_properties("add", device.device_node, props))

    def _on_readable(self) -> None:
        monitor = self._monitor
        if monitor is None:
            return
        while True:
            try:
                device = monitor.poll(timeout=0)
            except OSError as exc:
                _LOGGER.warning("udev monitor read failed: %s", exc)
                return
            if device is None:
                return
            if device.device_node:
                self.put(event_from_properties(device.action or "change", device.device_node,
                                               dict(device.properties)))

    async def aclose(self) -> None:
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            self._fd = None
        self._monitor = None
        await super().aclose()


# --- read-only probing -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What an unknown port turned out to be (``kind`` None: nothing recognisable was heard)."""

    kind: str | None
    detail: Mapping[str, object] = field(default_factory=dict)


class _Sniffer:
    """Listens only: MDP HELLO/frames, the BME688 bridge's HELLO line, the LoRa gateway's ready line,
    legacy NDJSON."""

    def __init__(self) -> None:
        self.decoder = mdp.FrameDecoder()
        self.line = bytearray()
        self.result: asyncio.Future[ProbeResult] = asyncio.get_running_loop().create_future()

    def connection_made(self, link: SerialLink) -> None:
        self.decoder.reset()

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    def _found(self, result: ProbeResult) -> None:
        if not self.result.done():
            self.result.set_result(result)

    def data_received(self, data: bytes) -> None:
        for item in self.decoder.iter_feed(data):
            if not isinstance(item, mdp.Frame):
                continue
            try:
                payload = item.json()
            except mdp.PayloadError:
                continue
            if item.msg_type == mdp.MsgType.HELLO:
                self._found(ProbeResult("mycobrain", {"hello": payload, "src": item.src}))
            elif item.src in (mdp.Endpoint.SIDE_A, mdp.Endpoint.SIDE_B):
                self._found(ProbeResult("mycobrain", {"src": item.src, "msg_type": item.msg_type}))
        for raw in self._lines(data):
            line = raw.strip()
            if line.startswith(b"HELLO bme688-bridge"):
                self._found(ProbeResult("bme688", {"hello": line.split(b"*")[0].decode("ascii", "replace")}))
            elif b'"lora_init"' in line or (b'"side":"gateway"' in line and b'"ready"' in line):
                self._found(ProbeResult("lora_gateway", {"line": line.decode("utf-8", "replace")}))
            elif line.startswith(b"{"):
                with contextlib.suppress(ndjson_legacy.LegacyLineError):
                    parsed = ndjson_legacy.parse_line(line)
                    self._found(ProbeResult("mycobrain_legacy", {"board_id": parsed.board_id}))

    def _lines(self, data: bytes) -> list[bytes]:
        self.line += data
        *lines, rest = bytes(self.line).split(b"\n")
        self.line = bytearray(rest[-ndjson_legacy.MAX_LINE :])
        return lines


async def probe_port(path: str, *, duration_s: float = 3.0, baudrate: int = 115200) -> ProbeResult:
    """Listen to ``path`` for up to ``duration_s`` without writing a byte; say what spoke."""
    sniffer = _Sniffer()
    link = SerialLink(path, sniffer, baudrate=baudrate, read_only=True, backoff=Backoff(base_s=0.2, cap_s=0.5),
                      name=f"probe:{os.path.basename(path)}")
    async with link:
        try:
            async with asyncio.timeout(duration_s):
                return await asyncio.shield(sniffer.result)
        except TimeoutError:
            return ProbeResult(None, {"listened_s": duration_s, "bytes": link.stats()["bytes_in"]})


# --- the watcher ------------------------------------------------------------------------------------
class PortWatcher:
    """Routes hot-plug events: wake watched links, report matches, probe the unknown (read-only)."""

    def __init__(
        self,
        source: HotplugSource,
        *,
        rules: Iterable[PortRule] = (),
        known: Iterable[UsbMatcher] = KNOWN_BOARDS,
        on_match: Callable[[HotplugEvent, tuple[str, ...]], None] | None = None,
        on_unknown: Callable[[HotplugEvent, ProbeResult], None] | None = None,
        on_remove: Callable[[HotplugEvent], None] | None = None,
        probe_s: float = 3.0,
        probe: Callable[[str], Any] | None = None,
    ) -> None:
        self._source = source
        self._rules = tuple(rules)
        self._known = tuple(known)
        self._on_match = on_match
        self._on_unknown = on_unknown
        self._on_remove = on_remove
        self._probe_s = probe_s
        self._probe = probe
        self._watched: dict[str, Callable[[], None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._probes: set[asyncio.Task[None]] = set()
        self.stats = {"events": 0, "woken": 0, "matched": 0, "probed": 0}

    def watch(self, port: str, wake: Callable[[], None]) -> None:
        """Call ``wake`` when ``port`` (a by-id link, device node, or any path to it) is added."""
        self._watched[port] = wake

    async def __aenter__(self) -> Self:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="hotplug-watcher")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._source.aclose()
        tasks = [t for t in (self._task, *self._probes) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        async for event in self._source:
            self.stats["events"] += 1
            try:
                self.handle(event)
            except Exception:
                _LOGGER.exception("hot-plug handler failed for %s", event.devnode)

    def _watched_for(self, event: HotplugEvent) -> list[Callable[[], None]]:
        names = {event.devnode, *event.by_id}
        real = os.path.realpath(event.devnode)
        return [wake for port, wake in self._watched.items()
                if port in names or os.path.realpath(port) == real]

    def handle(self, event: HotplugEvent) -> None:
        if event.action == "remove":
            if self._on_remove is not None:
                self._on_remove(event)
            return
        if event.action != "add":
            return
        wakes = self._watched_for(event)
        if wakes:
            for wake in wakes:
                self.stats["woken"] += 1
                wake()
            return
        kinds = match_event(event, self._rules, self._known)
        if len(kinds) == 1:
            self.stats["matched"] += 1
            if self._on_match is not None:
                self._on_match(event, kinds)
            return
        task = asyncio.get_running_loop().create_task(self._probe_and_report(event),
                                                      name=f"probe:{event.devnode}")
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def _probe_and_report(self, event: HotplugEvent) -> None:
        self.stats["probed"] += 1
        path = event.by_id[0] if event.by_id else event.devnode
        if self._probe is not None:
            result: ProbeResult = await self._probe(path)
        else:
            result = await probe_port(path, duration_s=self._probe_s)
        if self._on_unknown is not None:
            self._on_unknown(event, result)
