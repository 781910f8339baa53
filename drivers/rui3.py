"""AT-command LoRa modems in point-to-point mode (RAKwireless RUI3 command set, e.g. RAK3172).

Two halves, as every driver here: a pure line codec (``parse_line`` and the command builders) and
``Rui3Modem``, a ``Device`` on a supervised ``SerialLink``. The modem is configured for P2P
(``AT+NWM=0``, ``AT+P2P=freq:sf:bw:cr:preamble:power``), kept in continuous receive
(``AT+PRECV=65534``), and sends with ``AT+PSEND=<hex>``, answered by ``OK`` and later
``+EVT:TXP2P DONE`` (RUI3 AT Command Manual, "P2P Instructions"; PROTOCOLS.md section 3b).

Received packets (``+EVT:RXP2P:<rssi>:<snr>:<hex>``) carry MDP v1 frames from remote MycoBrain boards,
encoded as the boards' ``mdp_build_frame`` does (``COBS(header || JSON || crc16) || 0x00``); they are
decoded and published under the remote board's own ``device_id`` (learned from its HELLO), with RSSI and
SNR as link quality. A modem that reboots (its banner appears) is configured again. Every send passes a
``DutyCycleBudget`` first; a refused send returns ``CommandResult(ok=False, retry_after_s=...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self

from drivers import mdp
from drivers.device import CommandResult, DeviceEvent, DeviceListener, LinkState
from drivers.errors import CodecError, CommandRejectedError, DeviceTimeoutError, LinkError, NotReadyError
from drivers.link import Backoff, SerialLink
from drivers.lora_airtime import DutyCycleBudget, LoRaSettings, time_on_air_s
from drivers.model import Quantity, Reading
from drivers.nmea import LineSplitter
from drivers.quietlog import QuietLog

_LOGGER = logging.getLogger(__name__)

PRECV_CONTINUOUS = 65534  # RUI3: AT+PRECV=65534 listens until AT+PRECV=0
PRECV_STOP = 0
MAX_PAYLOAD = 255  # bytes per AT+PSEND (SX126x FIFO / RUI3 limit)
MAX_LINE = 600  # "+EVT:RXP2P:-120:-20:" and 510 hex digits fit

# RUI3 status strings (AT Command Manual, "AT Command Output") and what they mean to a caller.
AT_ERRORS: Mapping[str, str] = {
    "AT_ERROR": "generic error",
    "AT_PARAM_ERROR": "a parameter is invalid",
    "AT_BUSY_ERROR": "the modem is busy",
    "AT_TEST_PARAM_OVERFLOW": "a parameter is too long",
    "AT_NO_CLASSB_ENABLE": "class B is not enabled",
    "AT_NO_NETWORK_JOINED": "not joined to a network",
    "AT_RX_ERROR": "receive error",
    "AT_MODE_NO_SUPPORT": "not supported in this work mode",
    "AT_COMMAND_NOT_FOUND": "unknown command",
}
# Lines a RUI3 module prints when it boots; seeing one mid-stream means the modem reset.
BANNER_PREFIXES = ("RAKwireless", "Current Work Mode", "Version: RUI", "LoRa P2P mode")


class AtLineError(CodecError):
    """A modem line that claims to be an event of a known kind but does not parse as one."""


@dataclass(frozen=True, slots=True)
class AtOk:
    """``OK``: the command in flight succeeded."""


@dataclass(frozen=True, slots=True)
class AtFailure:
    """An ``AT_*_ERROR`` status line."""

    code: str

    @property
    def meaning(self) -> str:
        return AT_ERRORS.get(self.code, "error")


@dataclass(frozen=True, slots=True)
class RxPacket:
    """``+EVT:RXP2P:<rssi>:<snr>:<hex>``: one packet heard over the air."""

    rssi_dbm: int
    snr_db: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class TxDone:
    """``+EVT:TXP2P DONE``: the packet of the last ``AT+PSEND`` left the antenna."""


@dataclass(frozen=True, slots=True)
class Banner:
    """A boot message: the modem (re)started."""

    text: str


@dataclass(frozen=True, slots=True)
class AtText:
    """Any other line: a query's value (``AT+DEVEUI=...``), an echo, or an unknown event."""

    text: str


AtLine = AtOk | AtFailure | RxPacket | TxDone | Banner | AtText


def parse_line(line: str) -> AtLine:
    """Classify one modem line (without CR LF); raises ``AtLineError`` for a malformed RXP2P event."""
    text = line.strip()
    if text == "OK":
        return AtOk()
    if text.startswith("AT_") and text.replace("_", "").isalnum() and text.isupper():
        return AtFailure(text)
    if text.startswith("+EVT:TXP2P"):
        if text.replace(" ", ":").split(":")[-1] == "DONE":
            return TxDone()
        return AtText(text)
    if text.startswith("+EVT:RXP2P"):
        return _parse_rx(text)
    if text.startswith(BANNER_PREFIXES):
        return Banner(text)
    return AtText(text)


def _parse_rx(text: str) -> RxPacket:
    parts = text.split(":")
    # ["+EVT", "RXP2P", rssi, snr, hex]
    if len(parts) != 5:
        raise AtLineError(f"RXP2P event has {len(parts)} fields, expected 5")
    try:
        rssi, snr = int(parts[2]), int(parts[3])
    except ValueError:
        raise AtLineError("RXP2P rssi/snr are not integers") from None
    hexdata = parts[4].strip()
    if len(hexdata) % 2 or len(hexdata) > 2 * MAX_PAYLOAD:
        raise AtLineError(f"RXP2P payload has {len(hexdata)} hex digits")
    try:
        payload = bytes.fromhex(hexdata)
    except ValueError:
        raise AtLineError("RXP2P payload is not hex") from None
    if not -200 <= rssi <= 30 or not -50 <= snr <= 50:
        raise AtLineError(f"RXP2P link quality out of range: rssi {rssi}, snr {snr}")
    return RxPacket(rssi, snr, payload)


def p2p_command(frequency_hz: int, settings: LoRaSettings, tx_power_dbm: int) -> str:
    """``AT+P2P=freq:sf:bw:cr:preamble:power`` (bandwidth in kHz, coding rate 0..3 for 4/5..4/8)."""
    bw_khz = settings.bw_hz // 1000
    return f"AT+P2P={frequency_hz}:{settings.sf}:{bw_khz}:{settings.coding_rate - 1}:{settings.preamble}:{tx_power_dbm}"


def psend_command(payload: bytes) -> str:
    """``AT+PSEND=<hex>``; at most 255 bytes."""
    if not 0 < len(payload) <= MAX_PAYLOAD:
        raise CodecError(f"a P2P payload is 1..{MAX_PAYLOAD} bytes, got {len(payload)}")
    return "AT+PSEND=" + payload.hex().upper()


def encode_command(command: str) -> bytes:
    """A command line as the modem expects it (CR LF terminated ASCII)."""
    return command.encode("ascii") + b"\r\n"


# ---------------------------------------------------------------------------------------------------
# MDP telemetry -> readings

_BME_UNITS = {
    "temperature_c": "°C",
    "humidity_pct": "%",
    "pressure_hpa": "hPa",
    "gas_ohm": "Ω",
    "iaq": "IAQ",
    "co2_equivalent": "ppm",
    "voc_equivalent": "ppm",
}


def telemetry_readings(
    device_id: str, body: Mapping[str, Any], *, ts: float, seq: int, meta: Mapping[str, object]
) -> list[Reading]:
    """Readings from a MycoBrain TELEMETRY payload (PROTOCOLS.md section 1); non-numbers are skipped."""
    readings: list[Reading] = []
    analog = body.get("analog")
    if isinstance(analog, Mapping):
        # ESP32-S3 12-bit ADC counts, as the USB MycoBrain driver labels them
        q = {k: Quantity(float(v), "count") for k, v in analog.items() if _is_number(v)}
        if q:
            readings.append(Reading(device_id, "analog", q, ts, seq, meta=meta))
    board: dict[str, Quantity] = {}
    if _is_number(body.get("uptime_s")):
        board["uptime_s"] = Quantity(float(body["uptime_s"]), "s")
    if isinstance(body.get("estop"), bool):
        board["estop"] = Quantity(float(body["estop"]), "bool")
    if board:
        readings.append(Reading(device_id, "board", board, ts, seq, meta=meta))
    bme = body.get("bme688")
    if isinstance(bme, Mapping):
        for name, values in sorted(bme.items()):
            if not isinstance(values, Mapping):
                continue
            q = {k: Quantity(float(v), _BME_UNITS[k]) for k, v in values.items() if k in _BME_UNITS and _is_number(v)}
            if q:
                readings.append(Reading(device_id, f"bme688_{name}", q, ts, seq, meta=meta))
    return readings


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------------
# The device


class Rui3Modem:
    """A RUI3 modem in P2P mode as a ``Device``; see the module docstring."""

    kind = "lora-rui3"

    def __init__(
        self,
        port: str,
        listener: DeviceListener,
        *,
        frequency_hz: int = 868_100_000,
        settings: LoRaSettings | None = None,
        tx_power_dbm: int = 14,
        budget: DutyCycleBudget | None = None,
        response_timeout_s: float = 2.0,
        init_retries: int = 3,
        hello_interval_s: float = 10.0,
        keepalive_s: float = 60.0,
        backoff: Backoff | None = None,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.port = port
        self._listener = listener
        self.frequency_hz = frequency_hz
        self.settings = settings or LoRaSettings()
        self.tx_power_dbm = tx_power_dbm
        self.budget = budget or DutyCycleBudget(clock=clock)
        self._timeout = response_timeout_s
        self._init_retries = init_retries
        self._hello_interval = hello_interval_s
        self._keepalive_s = keepalive_s
        self._last_line_at = time.monotonic()
        self._keepalive: asyncio.Task[None] | None = None
        self._wall = wall_clock
        self._clock = clock
        self._link = SerialLink(port, self, backoff=backoff, on_state=lambda _link: self._state_changed())
        self._splitter = LineSplitter(MAX_LINE)
        self._lock = asyncio.Lock()  # one AT command in flight
        self._response: asyncio.Future[list[str]] | None = None
        self._collected: list[str] = []
        self._tx_done: asyncio.Future[None] | None = None
        self._init_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._device_id: str | None = None
        self._deveui: str | None = None
        self._remote_ids: dict[int, str] = {}  # MDP src endpoint -> board device_id (from HELLO)
        self._last_hello_ask: dict[int, float] = {}
        self._tx_seq = 1
        self._last_rx: dict[str, object] = {}
        self._quiet = QuietLog(_LOGGER)
        self._stats: dict[str, int] = {
            "lines": 0, "rx_packets": 0, "tx_packets": 0, "at_errors": 0, "timeouts": 0,
            "line_errors": 0, "modem_resets": 0, "inits": 0, "duty_cycle_refusals": 0,
            "unidentified_frames": 0, "readings": 0, "stalls": 0,
        }  # fmt: skip

    # --- Device protocol --------------------------------------------------------------------------
    @property
    def device_id(self) -> str | None:
        return self._device_id

    @property
    def state(self) -> LinkState:
        return self._link.state

    def stats(self) -> Mapping[str, int]:
        out = dict(self._stats)
        out.update({f"link_{k}": v for k, v in self._link.stats().items()})
        return out

    def describe(self) -> Mapping[str, object]:
        return {
            "kind": self.kind,
            "port": self.port,
            "device_id": self._device_id,
            "deveui": self._deveui,
            "state": self.state.value,
            "frequency_hz": self.frequency_hz,
            "sf": self.settings.sf,
            "bw_hz": self.settings.bw_hz,
            "coding_rate": f"4/{self.settings.coding_rate + 4}",
            "preamble": self.settings.preamble,
            "tx_power_dbm": self.tx_power_dbm,
            "duty_cycle": self.budget.duty_cycle,
            "airtime_used_s": round(self.budget.used_s(), 4),
            "remote_boards": dict(sorted((f"0x{k:02X}", v) for k, v in self._remote_ids.items())),
            "last_rx": dict(self._last_rx),
        }

    def wake(self) -> None:
        self._link.wake()

    async def __aenter__(self) -> Self:
        self._link.start()
        self._keepalive = asyncio.get_running_loop().create_task(self._keep_alive(), name=f"rui3-alive:{self.port}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in [self._init_task, self._keepalive, *self._tasks]:
            if task is not None:
                task.cancel()
        for task in [self._init_task, self._keepalive, *self._tasks]:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._init_task = self._keepalive = None
        self._tasks.clear()
        await self._link.stop()

    async def command(self, name: str, params: Mapping[str, object], *, timeout: float | None = None) -> CommandResult:
        """``lora_send {payload_hex | payload}``, ``mdp_command {dst, cmd, params}`` or ``status``."""
        if name == "status":
            return CommandResult(True, "ok", data=self.describe())
        if self.state is not LinkState.STREAMING:
            raise NotReadyError(f"{self.port}: modem is {self.state.value}")
        try:
            if name == "lora_send":
                payload = _payload_param(params)
            elif name == "mdp_command":
                payload = self._mdp_command_payload(params)
            else:
                return CommandResult(False, "unknown_command")
        except CodecError as exc:
            return CommandResult(False, f"invalid_params: {exc}")
        return await self.send(payload, timeout=timeout)

    # --- sending ----------------------------------------------------------------------------------
    async def send(self, payload: bytes, *, timeout: float | None = None) -> CommandResult:
        """Transmit one packet if the duty-cycle budget allows; returns when the modem says it is out."""
        if not 0 < len(payload) <= MAX_PAYLOAD:
            return CommandResult(False, "payload_size", data={"bytes": len(payload), "max": MAX_PAYLOAD})
        airtime = time_on_air_s(self.settings, len(payload))
        decision = self.budget.check(airtime)
        if not decision.allowed:
            self._stats["duty_cycle_refusals"] += 1
            message = "duty_cycle_exceeded" if decision.retry_after_s is not None else "exceeds_duty_cycle_budget"
            return CommandResult(
                False,
                message,
                data={"airtime_s": airtime, "used_s": decision.used_s, "budget_s": decision.budget_s},
                retry_after_s=decision.retry_after_s,
            )
        async with self._lock:
            try:
                await self._at(f"AT+PRECV={PRECV_STOP}")
                loop = asyncio.get_running_loop()
                self._tx_done = loop.create_future()
                await self._at(psend_command(payload))
                self.budget.try_consume(airtime)  # the modem accepted it: the airtime is spent
                self._stats["tx_packets"] += 1
                try:
                    await asyncio.wait_for(self._tx_done, (timeout or self._timeout) + airtime)
                except TimeoutError:
                    self._stats["timeouts"] += 1
                    raise DeviceTimeoutError(f"{self.port}: no +EVT:TXP2P DONE") from None
            except CommandRejectedError as exc:
                return CommandResult(False, exc.reason, data={"meaning": AT_ERRORS.get(exc.reason, "error")})
            finally:
                self._tx_done = None
                if self._link.is_open:
                    with contextlib.suppress(CommandRejectedError, DeviceTimeoutError, LinkError):
                        await self._at(f"AT+PRECV={PRECV_CONTINUOUS}")
        return CommandResult(True, "sent", data={"airtime_s": airtime, "bytes": len(payload)})

    def _mdp_command_payload(self, params: Mapping[str, object]) -> bytes:
        dst = params.get("dst", mdp.Endpoint.SIDE_A)
        cmd = params.get("cmd")
        cmd_params = params.get("params", {})
        if not isinstance(dst, int) or not isinstance(cmd, str) or not isinstance(cmd_params, Mapping):
            raise CodecError("mdp_command needs dst (int), cmd (str) and params (object)")
        while not mdp.seq_is_wire_safe(self._tx_seq):
            self._tx_seq += 1
        _frame, wire = mdp.encode_command(self._tx_seq, cmd, dict(cmd_params), dst=dst, flags=0)
        self._tx_seq += 1
        return wire

    # --- AT exchange --------------------------------------------------------------------------------
    async def _at(self, command: str, timeout: float | None = None) -> list[str]:
        """Send one command; the lines before its ``OK``. Raises on ``AT_*`` errors and timeouts."""
        loop = asyncio.get_running_loop()
        self._collected = []
        fut: asyncio.Future[list[str]] = loop.create_future()
        self._response = fut
        try:
            self._link.write(encode_command(command))
            return await asyncio.wait_for(fut, timeout or self._timeout)
        except TimeoutError:
            self._stats["timeouts"] += 1
            raise DeviceTimeoutError(f"{self.port}: no answer to {command.split('=', maxsplit=1)[0]}") from None
        finally:
            if self._response is fut:
                self._response = None

    async def _initialise(self) -> None:
        """Identify and configure the modem, then start continuous receive (also after a modem reset)."""
        self._stats["inits"] += 1
        for attempt in range(self._init_retries):
            try:
                async with self._lock:
                    await self._at("AT")
                    with contextlib.suppress(CommandRejectedError):
                        lines = await self._at("AT+DEVEUI=?")
                        self._deveui = _value_of(lines, "AT+DEVEUI=")
                    await self._at("AT+NWM=0")
                    await self._at(p2p_command(self.frequency_hz, self.settings, self.tx_power_dbm))
                    await self._at(f"AT+PRECV={PRECV_CONTINUOUS}")
            except (DeviceTimeoutError, CommandRejectedError, LinkError) as exc:
                _LOGGER.debug("%s: initialisation attempt %d failed: %s", self.port, attempt + 1, exc)
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            self._device_id = f"rui3-{self._deveui.lower()}" if self._deveui else f"rui3-{os.path.basename(self.port)}"
            self._link.mark_streaming()
            return
        self._link.fail("modem did not accept the P2P configuration")

    async def _keep_alive(self) -> None:
        """A modem that hears nothing prints nothing; after ``keepalive_s`` of silence, ask ``AT``.

        A hung modem (or a USB bridge that stopped forwarding) is only noticed this way: no answer drops the
        link, which reopens and configures the modem again.
        """
        while True:
            await asyncio.sleep(min(1.0, self._keepalive_s / 4))
            idle = time.monotonic() - self._last_line_at
            if self.state is not LinkState.STREAMING or idle < self._keepalive_s or self._lock.locked():
                continue
            try:
                async with self._lock:
                    await self._at("AT")
            except CommandRejectedError:
                continue  # an answer is an answer
            except DeviceTimeoutError:
                self._stats["stalls"] += 1
                self._emit_event(self._device_id or self.port, "stalled", {"idle_s": round(idle, 3)})
                self._link.fail("modem stopped answering")
            except LinkError:
                continue

    def _start_init(self) -> None:
        if self._init_task is not None and not self._init_task.done():
            self._init_task.cancel()
        self._init_task = asyncio.get_running_loop().create_task(self._initialise(), name=f"rui3-init:{self.port}")

    # --- LinkProtocol -----------------------------------------------------------------------------
    def connection_made(self, link: SerialLink) -> None:
        self._splitter = LineSplitter(MAX_LINE)
        self._start_init()

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in (self._response, self._tx_done):
            if fut is not None and not fut.done():
                fut.set_exception(LinkError(f"{self.port}: link lost"))
        if self._init_task is not None and not self._init_task.done():
            self._init_task.cancel()

    def data_received(self, data: bytes) -> None:
        for raw in self._splitter.feed(data):
            self._on_line(raw)

    def _on_line(self, raw: bytes) -> None:
        text = raw.decode("ascii", errors="replace").strip()
        self._last_line_at = time.monotonic()
        if not text:
            return
        self._stats["lines"] += 1
        try:
            line = parse_line(text)
        except AtLineError as exc:
            self._stats["line_errors"] += 1
            self._quiet.problem("line", "%s: bad modem line: %s", self.port, exc)
            return
        fut = self._response
        match line:
            case AtOk():
                if fut is not None and not fut.done():
                    fut.set_result(list(self._collected))
            case AtFailure(code=code):
                self._stats["at_errors"] += 1
                if fut is not None and not fut.done():
                    fut.set_exception(CommandRejectedError(code))
            case TxDone():
                if self._tx_done is not None and not self._tx_done.done():
                    self._tx_done.set_result(None)
            case RxPacket():
                self._on_packet(line)
            case Banner(text=banner):
                self._on_banner(banner)
            case AtText(text=other):
                self._collected.append(other)

    def _on_banner(self, text: str) -> None:
        """The modem rebooted: what was in flight is lost and its receive mode is off; set it up again."""
        if self._init_task is not None and not self._init_task.done() and self.state is not LinkState.STREAMING:
            return  # already (re)initialising after this boot
        if text.startswith(BANNER_PREFIXES[0]) or self.state is LinkState.STREAMING:
            self._stats["modem_resets"] += 1
            _LOGGER.info("%s: modem reset detected (%s); reconfiguring", self.port, text)
            for fut in (self._response, self._tx_done):
                if fut is not None and not fut.done():
                    fut.set_exception(LinkError(f"{self.port}: modem reset"))
            self._link.mark_handshake()
            self._emit_event(self._device_id or self.port, "modem_reset", {"banner": text})
            self._start_init()

    # --- received packets ---------------------------------------------------------------------------
    def _on_packet(self, pkt: RxPacket) -> None:
        self._stats["rx_packets"] += 1
        self._last_rx = {"rssi_dbm": pkt.rssi_dbm, "snr_db": pkt.snr_db, "bytes": len(pkt.payload)}
        try:
            frame = mdp.decode(pkt.payload)  # accepts the frame's trailing 0x00 delimiter, if sent
        except mdp.MdpError as exc:
            kind = exc.kind
            self._stats[f"mdp_{kind}"] = self._stats.get(f"mdp_{kind}", 0) + 1
            self._quiet.problem(f"mdp_{kind}", "%s: undecodable packet over the air: %s", self.port, exc)
            return
        try:
            body = frame.json()
        except mdp.MdpError:
            body = {}
            self._stats["mdp_json"] = self._stats.get("mdp_json", 0) + 1
        if frame.flags & mdp.Flags.ACK_REQUESTED:
            self._send_ack(frame)
        meta: dict[str, object] = {
            "rssi_dbm": pkt.rssi_dbm, "snr_db": pkt.snr_db, "via": "lora-p2p", "gateway": self._device_id,
            "src": frame.src, "mdp_seq": frame.seq,
        }  # fmt: skip
        if frame.msg_type == mdp.MsgType.HELLO:
            board = body.get("device_id")
            if isinstance(board, str) and board:
                self._remote_ids[frame.src] = board
                self._emit_event(board, "hello", {**body, **meta})
            return
        board_id = body.get("device_id") if isinstance(body.get("device_id"), str) else None
        board_id = board_id or self._remote_ids.get(frame.src)
        if board_id is None:
            self._stats["unidentified_frames"] += 1
            self._emit_event(self._device_id or self.port, "lora_unidentified_frame", {"type": frame.type_name, **meta})
            self._ask_hello(frame.src)
            return
        ts = self._wall()
        seq = frame.seq  # the board's own sequence number, so lost packets show as gaps
        if frame.msg_type == mdp.MsgType.TELEMETRY:
            readings = telemetry_readings(board_id, body, ts=ts, seq=seq, meta=meta)
            readings.append(
                Reading(
                    board_id, "lora_link",
                    {"rssi": Quantity(float(pkt.rssi_dbm), "dBm"), "snr": Quantity(float(pkt.snr_db), "dB")},
                    ts, seq, meta=meta,
                )
            )  # fmt: skip
            for reading in readings:
                self._stats["readings"] += 1
                self._listener.on_reading(reading)
        elif frame.msg_type == mdp.MsgType.EVENT:
            name = body.get("event")
            self._emit_event(board_id, str(name) if name else "event", {**body, **meta})
        else:
            self._emit_event(board_id, f"lora_{frame.type_name.lower()}", {**body, **meta})

    def _send_ack(self, frame: mdp.Frame) -> None:
        """Acknowledge a frame that asked for it, as the gateway firmware's ``sendAckToB`` does.

        The ACK costs airtime like any send: when the budget refuses it, it is skipped (and counted) and the
        board's own retry will ask again later.
        """
        ack = mdp.Frame(
            mdp.MsgType.ACK, seq=self._tx_seq, ack=frame.seq, flags=mdp.Flags.IS_ACK,
            src=mdp.Endpoint.GATEWAY, dst=frame.src,
        )  # fmt: skip
        self._tx_seq += 1
        if self.state is not LinkState.STREAMING:
            return
        task = asyncio.get_running_loop().create_task(self._send_counted(mdp.encode_firmware(ack), "acks"))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    async def _send_counted(self, payload: bytes, what: str) -> None:
        result = await self.send(payload)
        key = f"{what}_sent" if result.ok else f"{what}_skipped"
        self._stats[key] = self._stats.get(key, 0) + 1

    def _ask_hello(self, src: int) -> None:
        """Ask an unknown board for its HELLO over the air, at most once per ``hello_interval_s``."""
        now = self._clock()
        if now - self._last_hello_ask.get(src, -1e18) < self._hello_interval or self.state is not LinkState.STREAMING:
            return
        self._last_hello_ask[src] = now
        payload = self._mdp_command_payload({"dst": src, "cmd": "hello", "params": {}})
        task = asyncio.get_running_loop().create_task(self.send(payload), name=f"rui3-hello:{src:02X}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _LOGGER.debug("%s: background send failed: %s", self.port, task.exception())

    def _emit_event(self, device_id: str, name: str, data: Mapping[str, object]) -> None:
        self._listener.on_event(DeviceEvent(device_id, name, dict(data), self._wall()))

    def _state_changed(self) -> None:
        self._listener.on_state(self)


def _payload_param(params: Mapping[str, object]) -> bytes:
    if "payload_hex" in params:
        value = params["payload_hex"]
        if not isinstance(value, str):
            raise CodecError("payload_hex must be a string")
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise CodecError("payload_hex is not hex") from None
    value = params.get("payload")
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, list) and all(isinstance(v, int) and 0 <= v <= 255 for v in value):
        return bytes(value)
    raise CodecError("lora_send needs payload_hex (hex string) or payload (text or byte list)")


def _value_of(lines: list[str], prefix: str) -> str | None:
    for line in lines:
        if line.startswith(prefix):
            return line[len(prefix) :].strip() or None
    return None
