"""The MycoBrain board (ESP32-S3, Side A sensors / Side B transports) over MDP v1 on USB CDC.

The daemon builds one per port and enters it::

    board = MycoBrain(
        port="/dev/serial/by-id/usb-Espressif_USB_JTAG_serial_debug_unit_34:85:18:A1:B2:C3-if00",
        listener=listener,          # drivers.device.DeviceListener: readings, events, state changes
        stream_rate_hz=1.0,         # asked of the board with stream_sensors after every HELLO
        usb_serial="34:85:18:A1:B2:C3",  # from udev; qualifies the id when two boards share one
    )
    async with board:
        result = await board.command("output_control", {"id": "mosfet1", "value": 1})

Keyword-only settings: ``port``, ``listener``, ``stream_rate_hz`` (default 1.0; the firmware clamps to
>= 0.1), ``ack_timeout_s`` (5.0) and ``retries`` (3) per command, ``hello_wait_s`` (0.3) for a spontaneous
HELLO before asking with ``hello`` (not waited at all when reopening a board already identified),
``hello_timeout_s`` (1.0) for each answer, ``hello_attempts`` (3), ``stall_timeout_s`` (default ``max(2.0, 3 / rate)``),
``usb_serial``/``by_id`` (identity qualifiers), ``baudrate`` (115200), ``backoff`` (``drivers.link``),
``random``, ``clock`` (wall time for reading timestamps) and ``registry`` (``IdentityRegistry``).

What the host must do that the bare spec does not say (PROTOCOLS.md section 1, checked against the
firmware): ask with ``hello`` since the boot HELLO is lost when nobody listened; match the HELLO answer by
``ack``; never emit a frame containing 0x0A/0x0D (``drivers.mdp.encode_command``); send integer output
values; address 0xA1/0xB1, never 0xFF; re-send ``stream_sensors`` after any HELLO (a reboot resets the rate
to 0.1 Hz). Retries re-execute on the board (it does not deduplicate): ``lora_send`` and ``sim_send`` are
therefore never retried.

Readings: one ``Reading`` per sensor group and telemetry frame (``bme688_a``, ``bme688_b``, ``analog``,
``board``), ``seq`` = the board's frame seq. Events: ``DeviceEvent`` for board EVENT frames
(``estop_activated``, ``transport_status``, ...) and for ``identified``, ``board_restarted``,
``id_collision``, ``legacy_mode`` and ``stalled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random as _random
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from drivers import mdp, ndjson_legacy
from drivers.device import CommandResult, DeviceEvent, DeviceListener, LinkState
from drivers.errors import CodecError, DeviceTimeoutError, LinkError, NotReadyError
from drivers.link import Backoff, SerialLink
from drivers.model import Quantity, Reading

_LOGGER = logging.getLogger(__name__)

SIDE_A = int(mdp.Endpoint.SIDE_A)
SIDE_B = int(mdp.Endpoint.SIDE_B)

_LEG_NAMES = {SIDE_A: "side_a", SIDE_B: "side_b"}
# Side B's transport commands (PROTOCOLS.md section 1); everything else goes to Side A.
SIDE_B_COMMANDS = frozenset({"transport_status", "lora_send", "ble_advertise", "wifi_connect", "sim_send"})
# The board executes a retried command again; these are not safe to repeat (a second radio message).
NOT_RETRIED = frozenset({"lora_send", "sim_send"})
# Commands whose ``value``-like parameters the firmware reads as integers (``params["value"] | 0``).
_INTEGER_PARAMS = frozenset({"value", "freq", "duration_ms", "r", "g", "b", "interval_ms"})

UNITS: dict[str, str] = {
    "temperature_c": "°C",
    "humidity_pct": "%",
    "pressure_hpa": "hPa",
    "gas_ohm": "Ω",
    "iaq": "IAQ",  # BSEC index, 0..500
    "co2_equivalent": "ppm",
    "voc_equivalent": "ppm",
    "ai1": "count",  # ESP32-S3 12-bit ADC counts, 0..4095
    "ai2": "count",
    "ai3": "count",
    "ai4": "count",
    "soil_moisture": "count",
    "uptime_s": "s",
    "estop": "bool",
}


class IdentityRegistry:
    """Board ids claimed by live MycoBrain links, so that two boards announcing one id stay apart.

    The firmware derives ``device_id`` from the MAC's vendor prefix, so boards of one vendor can collide
    (PROTOCOLS.md section 1). The first claimant keeps the plain id; later ones get
    ``<id>@<usb serial | by-id name | port name>``. An owner keeps its id across re-plugs.
    """

    def __init__(self) -> None:
        self._owners: dict[str, dict[object, str]] = {}

    def claim(self, board_id: str, qualifier: str, owner: object) -> tuple[str, bool]:
        owners = self._owners.setdefault(board_id, {})
        if owner in owners:
            return owners[owner], False
        device_id = board_id if not owners else f"{board_id}@{qualifier}"
        collision = bool(owners)
        owners[owner] = device_id
        return device_id, collision

    def release(self, owner: object) -> None:
        for board_id in list(self._owners):
            self._owners[board_id].pop(owner, None)
            if not self._owners[board_id]:
                del self._owners[board_id]


DEFAULT_REGISTRY = IdentityRegistry()


@dataclass
class _Pending:
    name: str
    future: asyncio.Future[CommandResult]
    data: dict[str, Any] = field(default_factory=dict)


class MycoBrain:
    """One MycoBrain on one serial port; implements ``drivers.device.Device``."""

    kind = "mycobrain"

    def __init__(
        self,
        *,
        port: str,
        listener: DeviceListener,
        stream_rate_hz: float = 1.0,
        ack_timeout_s: float = 5.0,
        retries: int = 3,
        hello_wait_s: float = 0.3,
        hello_timeout_s: float = 1.0,
        hello_attempts: int = 3,
        stall_timeout_s: float | None = None,
        usb_serial: str | None = None,
        by_id: str | None = None,
        baudrate: int = 115200,
        backoff: Backoff | None = None,
        random: Callable[[], float] = _random.random,
        clock: Callable[[], float] = time.time,
        registry: IdentityRegistry | None = None,
    ) -> None:
        self.port = port
        self._listener = listener
        self.stream_rate_hz = max(0.1, stream_rate_hz)
        self._ack_timeout = ack_timeout_s
        self._retries = retries
        self._hello_wait = hello_wait_s
        self._hello_timeout = hello_timeout_s
        self._hello_attempts = hello_attempts
        self._stall_timeout = stall_timeout_s or max(2.0, 3.0 / self.stream_rate_hz)
        self.usb_serial = usb_serial
        self.by_id = by_id
        self._clock = clock
        self._registry = registry or DEFAULT_REGISTRY
        # Reopening a missing tty costs one failed open(); a 1 s cap keeps "telemetry within 2 s of the
        # board's return" true even without a hot-plug event to wake the link.
        self._link = SerialLink(port, self, baudrate=baudrate,
                                backoff=backoff or Backoff(base_s=0.25, cap_s=1.0), random=random,
                                on_state=self._on_link_state, name=f"mycobrain:{os.path.basename(port)}")
        self._decoder = mdp.FrameDecoder()
        self._line = bytearray()
        self._mode: str | None = None  # "mdp" | "ndjson" once the board's dialect is known
        self._board_id: str | None = None
        self._device_id: str | None = None
        self._hello: dict[str, Any] = {}
        self._side_b: dict[str, Any] = {}
        self._transport: dict[str, Any] = {}
        self._estop: bool | None = None
        self._identified = asyncio.Event()
        self._seq = 1 + int(random() * 0xFFFF)  # a fresh start per host, so stale ACKs do not match
        self._pending: dict[tuple[int, int], _Pending] = {}
        self._done: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._leg_locks = {SIDE_A: asyncio.Lock(), SIDE_B: asyncio.Lock()}
        self._last_seq: dict[int, int] = {}
        self._stats: Counter[str] = Counter()
        self._nack_reasons: Counter[str] = Counter()
        self._last: dict[str, dict[str, float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_rx = 0.0
        self._warned: set[str] = set()
        self._reading_seq = 0
        self._legs_seen: set[int] = set()

    # --- Device protocol ------------------------------------------------------------------------
    @property
    def device_id(self) -> str | None:
        return self._device_id

    @property
    def state(self) -> LinkState:
        return self._link.state

    def stats(self) -> Mapping[str, int]:
        out: dict[str, int] = dict(self._link.stats())
        out.update(self._stats)
        out["decode_text_bytes"] = self._decoder.text_bytes
        return out

    def describe(self) -> Mapping[str, object]:
        return {
            "kind": self.kind,
            "port": self.port,
            "device_id": self._device_id,
            "board_id": self._board_id,
            "usb_serial": self.usb_serial,
            "by_id": self.by_id,
            "state": self.state.value,
            "mode": self._mode,
            "firmware_version": self._hello.get("firmware_version"),
            "role": self._hello.get("role"),
            "sensors": self._hello.get("sensors", []),
            "capabilities": self._hello.get("capabilities", []),
            "legs": sorted(_LEG_NAMES.get(src, f"0x{src:02X}") for src in self._legs_seen),
            "side_b": dict(self._side_b),
            "transport_status": dict(self._transport),
            "estop": self._estop,
            "stream_rate_hz": self.stream_rate_hz,
            "last_readings": {k: dict(v) for k, v in self._last.items()},
            "nack_reasons": dict(self._nack_reasons),
            "last_error": self._link.last_error,
        }

    def wake(self) -> None:
        self._link.wake()

    async def __aenter__(self) -> Self:
        self._link.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._link.stop()
        await self._cancel_tasks()
        self._fail_pending(LinkError("device closed"))
        self._registry.release(self)

    async def command(
        self, name: str, params: Mapping[str, object], *, timeout: float | None = None
    ) -> CommandResult:
        """Send ``name`` to the leg that owns it, ACK_REQUESTED, retrying on ACK timeout; see module doc."""
        if self._mode == "ndjson":
            raise NotReadyError(f"{self.port}: board is in legacy NDJSON mode, which is read-only")
        if self._device_id is None:
            if not self._link.is_open:
                raise LinkError(f"{self.port}: link is {self.state.value}")
            raise NotReadyError(f"{self.port}: board has not identified itself (no HELLO yet)")
        return await self._send_command(name, dict(params), timeout=timeout)

    # --- LinkProtocol ---------------------------------------------------------------------------
    def connection_made(self, link: SerialLink) -> None:
        self._decoder.reset()
        self._line.clear()
        self._last_seq.clear()
        self._identified.clear()
        self._mode = None
        self._last_rx = asyncio.get_running_loop().time()
        self._spawn(self._handshake(), "handshake")
        self._spawn(self._watchdog(), "watchdog")

    def data_received(self, data: bytes) -> None:
        self._last_rx = asyncio.get_running_loop().time()
        self._stats["bytes_decoded"] += len(data)
        if self._mode != "mdp":
            self._scan_lines(data)
        for item in self._decoder.iter_feed(data):
            if isinstance(item, mdp.Frame):
                self._on_frame(item)
            elif self._mode != "ndjson":
                self._count_error(item.kind, str(item))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._decoder.pending:
            self._count_error("truncated", f"link lost mid-frame ({self._decoder.pending} bytes)")
        for task in list(self._tasks):
            task.cancel()
        self._fail_pending(LinkError(f"{self.port}: link lost: {exc}"))

    # --- handshake and supervision --------------------------------------------------------------
    async def _handshake(self) -> None:
        """Wait for a HELLO; ask with ``hello`` if none comes; then set the stream rate."""
        if self._device_id is None:  # a board we already know is asked at once after a reopen
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._hello_wait):
                    await self._identified.wait()
        attempts = 0
        while not self._identified.is_set() and self._mode != "ndjson":
            if attempts >= self._hello_attempts:
                if self._side_b or SIDE_B in self._legs_seen:
                    # A Side B with no Side A behind it: its HELLO (if heard) has no device_id.
                    self._identify(f"mycobrain-sideb-{self._qualifier()}")
                    break
                self._count_error("no_hello", "no HELLO after asking")
                self._link.fail("no HELLO from board")
                return
            attempts += 1
            self._stats["hello_requests"] += 1
            with contextlib.suppress(LinkError, CodecError, DeviceTimeoutError):
                await self._send_command("hello", {}, timeout=self._hello_timeout, retry=False)
            if not self._identified.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await self._identified.wait()
        if self._mode == "ndjson":
            return
        await self._configure()

    async def _configure(self) -> None:
        """Ask for the stream rate. The board is identified, so the link streams after the first try
        whatever its outcome; retries are separate commands, so the Side A leg is never held for long."""
        for _ in range(1 + self._retries):
            try:
                result = await self._send_command("stream_sensors", {"rate_hz": self.stream_rate_hz},
                                                  retry=False)
            except DeviceTimeoutError as exc:
                self._count_error("configure", f"stream_sensors unanswered: {exc}")
                self._link.mark_streaming()
                continue
            except (LinkError, CodecError) as exc:
                self._count_error("configure", f"stream_sensors failed: {exc}")
                return
            if not result.ok:
                self._count_error("configure", f"stream_sensors refused: {result.message}")
            self._link.mark_streaming()
            return

    async def _watchdog(self) -> None:
        """Count stalls; probe with ``hello``; after three silent periods reopen the port."""
        loop = asyncio.get_running_loop()
        silent_periods = 0
        while True:
            await asyncio.sleep(self._stall_timeout / 2)
            if loop.time() - self._last_rx < self._stall_timeout:
                silent_periods = 0
                continue
            silent_periods += 1
            self._last_rx = loop.time()
            self._stats["stall"] += 1
            self._emit_event("stalled", {"silent_s": self._stall_timeout})
            if silent_periods >= 3 and self._mode != "ndjson":
                # A legacy board streams at its own rate, which we cannot set: count, never reopen.
                self._link.fail("board silent")
                return
            if self._mode == "mdp" and self._identified.is_set():
                self._spawn(self._probe(), "probe")

    async def _probe(self) -> None:
        with contextlib.suppress(LinkError, CodecError, DeviceTimeoutError):
            await self._send_command("hello", {}, timeout=self._stall_timeout, retry=False)

    # --- commands -------------------------------------------------------------------------------
    def _next_seq(self) -> int:
        while True:
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            if self._seq and mdp.seq_is_wire_safe(self._seq):
                return self._seq

    async def _send_command(
        self, name: str, params: dict[str, Any], *, timeout: float | None = None, retry: bool = True
    ) -> CommandResult:
        leg = SIDE_B if name in SIDE_B_COMMANDS else SIDE_A
        params = _integer_params(params)
        attempts = 1 + (self._retries if retry and name not in NOT_RETRIED else 0)
        per_try = (timeout / attempts) if timeout else self._ack_timeout
        loop = asyncio.get_running_loop()
        async with self._leg_locks[leg]:
            seq = self._next_seq()
            _frame, wire = mdp.encode_command(seq, name, params, dst=leg)
            key = (leg, seq)
            pending = _Pending(name, loop.create_future())
            self._pending[key] = pending
            try:
                for attempt in range(attempts):
                    if attempt:
                        self._stats["retries"] += 1
                    self._link.write(wire)
                    self._stats["commands_sent"] += 1
                    try:
                        async with asyncio.timeout(per_try):
                            return await asyncio.shield(pending.future)
                    except TimeoutError:
                        self._stats["ack_timeout"] += 1
                raise DeviceTimeoutError(f"{self.port}: no answer to {name!r} (seq {seq}) after {attempts} tries")
            finally:
                self._pending.pop(key, None)
                self._done[key] = None
                while len(self._done) > 256:
                    self._done.popitem(last=False)
                if not pending.future.done():
                    pending.future.cancel()

    def _resolve(self, key: tuple[int, int], result: CommandResult) -> bool:
        pending = self._pending.get(key)
        if pending is None or pending.future.done():
            return False
        pending.future.set_result(result)
        return True

    def _fail_pending(self, exc: Exception) -> None:
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(exc)
                pending.future.exception()  # retrieved here so an abandoned future logs nothing

    # --- frames ---------------------------------------------------------------------------------
    def _on_frame(self, frame: mdp.Frame) -> None:
        self._stats["frames"] += 1
        if self._mode != "mdp":
            self._mode = "mdp"
        self._track_seq(frame)
        try:
            payload = frame.json()
        except mdp.PayloadError as exc:
            self._count_error(exc.kind, str(exc))
            return
        t = frame.msg_type
        if t == mdp.MsgType.HELLO:
            self._on_hello(frame, payload)
        elif t == mdp.MsgType.TELEMETRY:
            self._on_telemetry(frame, payload)
        elif t == mdp.MsgType.ACK:
            self._on_ack(frame, payload)
        elif t == mdp.MsgType.EVENT:
            self._on_event(frame, payload)
        else:
            self._stats["other_types"] += 1

    def _track_seq(self, frame: mdp.Frame) -> None:
        self._legs_seen.add(frame.src)
        last = self._last_seq.get(frame.src)
        self._last_seq[frame.src] = frame.seq
        if last is None or frame.seq == last + 1:
            return
        if frame.seq <= 1 or frame.seq < last:
            self._stats["seq_restarts"] += 1
        else:
            self._stats["seq_gaps"] += 1
            self._stats["frames_missed"] += frame.seq - last - 1

    def _on_hello(self, frame: mdp.Frame, payload: dict[str, Any]) -> None:
        self._stats["hello"] += 1
        if frame.src == SIDE_B:
            self._side_b = {k: payload[k] for k in ("role", "firmware_version", "supports") if k in payload}
            self._emit_event("side_b_hello", payload)
            return
        board_id = payload.get("device_id")
        if not isinstance(board_id, str) or not board_id:
            self._count_error("hello", "HELLO without device_id")
            return
        self._hello = payload
        answered = frame.ack != 0 and self._resolve((SIDE_A, frame.ack), CommandResult(True, "hello", payload))
        was_identified = self._identified.is_set()
        self._identify(board_id)
        if was_identified and not answered:
            # An unsolicited HELLO after identification means the board rebooted: its stream rate is
            # back to 0.1 Hz, so configure it again.
            self._emit_event("board_restarted", {"firmware_version": payload.get("firmware_version")})
            self._spawn(self._configure(), "configure")

    def _identify(self, board_id: str) -> None:
        self._board_id = board_id
        device_id, collision = self._registry.claim(board_id, self._qualifier(), self)
        first = self._device_id is None
        self._device_id = device_id
        if collision:
            self._stats["id_collisions"] += 1
            self._emit_event("id_collision", {"board_id": board_id, "qualified_id": device_id,
                                              "port": self.port, "usb_serial": self.usb_serial})
            _LOGGER.warning("%s: board id %s already in use; this board is %s", self.port, board_id, device_id)
        if not self._identified.is_set():
            self._identified.set()
            if first:
                self._emit_event("identified", {"board_id": board_id, "port": self.port, "mode": self._mode})
            self._listener.on_state(self)

    def _qualifier(self) -> str:
        if self.usb_serial:
            return self.usb_serial
        return os.path.basename(self.by_id or self.port)

    def _on_telemetry(self, frame: mdp.Frame, payload: dict[str, Any]) -> None:
        self._stats["telemetry"] += 1
        if frame.ack:
            pending = self._pending.get((frame.src, frame.ack))
            if pending is not None:
                pending.data.update(payload)
        if payload.get("type", "telemetry") != "telemetry":
            return  # e.g. claw_status answers share the TELEMETRY type
        estop = payload.get("estop")
        if isinstance(estop, bool) and estop != self._estop:
            if self._estop is not None:
                self._emit_event("estop_changed", {"estop": estop})
            self._estop = estop
        groups: dict[str, dict[str, float]] = {}
        bme = payload.get("bme688")
        if isinstance(bme, dict):
            for slot, values in bme.items():
                if isinstance(values, dict):
                    groups[f"bme688_{slot}"] = _numbers(values)
        analog = payload.get("analog")
        if isinstance(analog, dict):
            groups["analog"] = _numbers(analog)
        board = _numbers({"uptime_s": payload.get("uptime_s")})
        if isinstance(estop, bool):
            board["estop"] = float(estop)
        if board:
            groups["board"] = board
        self._publish(groups, frame.seq, {"src": frame.src, "ack": frame.ack})

    def _publish(self, groups: Mapping[str, Mapping[str, float]], seq: int, meta: Mapping[str, object]) -> None:
        if self._device_id is None:
            self._stats["unidentified_frames"] += 1
            return
        ts = self._clock()
        for sensor, values in groups.items():
            if not values:
                continue
            quantities = {name: Quantity(value, UNITS.get(name, "")) for name, value in values.items()}
            self._last[sensor] = dict(values)
            self._stats["readings"] += 1
            self._listener.on_reading(Reading(self._device_id, sensor, quantities, ts, seq, True, meta))

    def _on_ack(self, frame: mdp.Frame, payload: dict[str, Any]) -> None:
        success = payload.get("success") is True and not frame.flags & mdp.Flags.IS_NACK
        message = payload.get("message")
        message = message if isinstance(message, str) else ""
        key = (frame.src, frame.ack)
        pending = self._pending.get(key)
        data = dict(pending.data) if pending is not None else {}
        if pending is not None and pending.future.done():
            self._stats["duplicate_acks"] += 1
        elif self._resolve(key, CommandResult(success, message, data)):
            self._stats["acks" if success else "nacks"] += 1
            if not success:
                self._nack_reasons[message] += 1
                _LOGGER.info("%s: %s refused: %s", self.port, pending.name if pending else "?", message)
        elif key in self._done:
            self._stats["duplicate_acks"] += 1
        elif frame.src == SIDE_B and message == "forwarded_to_side_a":
            self._stats["forwarded_acks"] += 1
        else:
            self._stats["unmatched_acks"] += 1

    def _on_event(self, frame: mdp.Frame, payload: dict[str, Any]) -> None:
        self._stats["events"] += 1
        name = payload.get("event")
        name = name if isinstance(name, str) else "unknown"
        if frame.ack:
            pending = self._pending.get((frame.src, frame.ack))
            if pending is not None:
                pending.data.update(payload)
        if name == "estop_activated":
            self._estop = True
        if name == "transport_status":
            self._transport = dict(payload)
        self._emit_event(name, payload)

    # --- legacy NDJSON --------------------------------------------------------------------------
    def _scan_lines(self, data: bytes) -> None:
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._line += data[start:]
                if len(self._line) > ndjson_legacy.MAX_LINE:
                    self._line.clear()
                return
            self._line += data[start:end]
            line = bytes(self._line)
            self._line.clear()
            start = end + 1
            if b"{" in line:
                self._on_legacy_line(line[line.index(b"{"):])

    def _on_legacy_line(self, line: bytes) -> None:
        try:
            parsed = ndjson_legacy.parse_line(line)
        except ndjson_legacy.LegacyLineError:
            return
        if self._mode is None:
            self._mode = "ndjson"
            self._link.set_read_only(True)
            self._emit_event("legacy_mode", {"port": self.port})
        if self._mode != "ndjson":
            return
        self._stats["ndjson_lines"] += 1
        if parsed.board_id and self._device_id is None:
            self._identify(parsed.board_id)
            self._link.mark_streaming()
        elif self._device_id is None and parsed.kind == "live":
            self._identify(f"mycobrain-{self._qualifier()}")
            self._link.mark_streaming()
        groups = ndjson_legacy.telemetry_groups(parsed)
        if groups:
            self._reading_seq += 1
            self._publish(groups, self._reading_seq, {"mode": "ndjson", "ts_ms": parsed.ts_ms})
        elif parsed.kind in ("err", "status", "ack"):
            self._emit_event(f"legacy_{parsed.kind}", dict(parsed.data))

    # --- helpers --------------------------------------------------------------------------------
    def _on_link_state(self, link: SerialLink) -> None:
        if link.state is LinkState.BACKOFF or link.state is LinkState.OPENING:
            self._link.set_read_only(False)
        self._listener.on_state(self)

    def _emit_event(self, name: str, data: Mapping[str, object]) -> None:
        device_id = self._device_id or f"port:{os.path.basename(self.port)}"
        self._listener.on_event(DeviceEvent(device_id, name, dict(data), self._clock()))

    def _count_error(self, kind: str, message: str) -> None:
        self._stats[f"err_{kind}"] += 1
        if kind not in self._warned:
            self._warned.add(kind)
            _LOGGER.warning("%s: %s (further %s errors at DEBUG)", self.port, message, kind)
        else:
            _LOGGER.debug("%s: %s", self.port, message)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"mycobrain:{name}:{self.port}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._stats["protocol_errors"] += 1
            _LOGGER.error("%s: %s failed", self.port, task.get_name(), exc_info=task.exception())

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _numbers(values: Mapping[str, object]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        number = float(value)
        if math.isfinite(number):
            out[key] = number
    return out


def _integer_params(params: dict[str, Any]) -> dict[str, Any]:
    """The firmware reads these as JSON integers (``true`` or ``1.0`` read as 0): send integers."""
    out = dict(params)
    for key in _INTEGER_PARAMS & out.keys():
        value = out[key]
        if isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, float):
            if not value.is_integer():
                raise CodecError(f"parameter {key!r} must be an integer, got {value!r}")
            out[key] = int(value)
    return out
