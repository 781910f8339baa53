"""The BME688 serial bridge as a ``Device``: raw registers in, Bosch-compensated readings out.

Wire format (PROTOCOLS.md section 2): NMEA-checksummed ASCII lines (``drivers.nmea``). The bridge says
``HELLO bme688-bridge <serial> <fw> <chip_id> <variant_id>`` and ``CAL <84 hex>`` at power-up; because a
HELLO sent before the host opened the port is lost, the driver asks with ``CAL?``, which the bridge answers
with HELLO and CAL. It then configures the heater (``HEATER`` in forced mode, ``HEATPROF`` in parallel mode),
the rate and the mode, and publishes every ``FLD`` block it receives.

A block is compensated with Bosch's float build (``drivers.bme688``) and judged by its status bits: without
``new_data`` no values are published (Bosch returns none); without ``gas_valid`` or ``heat_stab`` the reading
is published with ``valid=False``, temperature/pressure/humidity kept (they are real) and the gas resistance
moved to ``meta`` as unverified. The IAQ estimate (docs/iaq.md) learns only from valid readings. A bridge
that falls silent for ``stall_timeout_s`` is dropped and reopened by the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Self

from drivers import bme688 as b
from drivers.device import CommandResult, DeviceEvent, DeviceListener, LinkState
from drivers.errors import CodecError, CommandRejectedError, DeviceTimeoutError, LinkError, NotReadyError
from drivers.link import Backoff, SerialLink
from drivers.model import Quantity, Reading
from drivers.nmea import LineError, LineSplitter, decode_line, encode_line
from drivers.quietlog import QuietLog

_LOGGER = logging.getLogger(__name__)

Mode = Literal["sleep", "forced", "parallel"]


class BridgeLineError(CodecError):
    """A checksummed line whose content is not a valid bridge message."""


def parse_hello(body: str) -> tuple[str, str, int, int]:
    """``HELLO bme688-bridge <serial> <fw> <chip_id hex> <variant hex>`` -> (serial, fw, chip, variant)."""
    parts = body.split()
    if len(parts) != 6 or parts[0] != "HELLO" or parts[1] != "bme688-bridge":
        raise BridgeLineError("HELLO is not 'HELLO bme688-bridge <serial> <fw> <chip_id> <variant_id>'")
    try:
        chip, variant = int(parts[4], 16), int(parts[5], 16)
    except ValueError:
        raise BridgeLineError("HELLO chip/variant ids are not hex") from None
    if not (0 <= chip <= 0xFF and 0 <= variant <= 0xFF):
        raise BridgeLineError("HELLO ids out of range")
    return parts[2], parts[3], chip, variant


def parse_cal(body: str) -> b.Bme688Calibration:
    """``CAL <84 hex digits>``."""
    _, _, hexdata = body.partition(" ")
    if len(hexdata) != 2 * b.CAL_LEN:
        raise BridgeLineError(f"CAL has {len(hexdata)} hex digits, expected {2 * b.CAL_LEN}")
    try:
        return b.Bme688Calibration.from_bytes(bytes.fromhex(hexdata))
    except ValueError:
        raise BridgeLineError("CAL is not hex") from None


def parse_fld(body: str) -> tuple[int, b.FieldData]:
    """``FLD <n> <34 hex digits>`` -> (field number, block)."""
    parts = body.split()
    if len(parts) != 3 or parts[1] not in ("0", "1", "2") or len(parts[2]) != 2 * b.FIELD_LEN:
        raise BridgeLineError("FLD is not 'FLD <0..2> <34 hex digits>'")
    try:
        return int(parts[1]), b.FieldData.from_bytes(bytes.fromhex(parts[2]))
    except ValueError:
        raise BridgeLineError("FLD is not hex") from None


class Bme688Bridge:
    """One BME688 bridge; see the module docstring."""

    kind = "bme688-bridge"

    def __init__(
        self,
        port: str,
        listener: DeviceListener,
        *,
        mode: Mode = "forced",
        heater: b.HeaterStep = b.HeaterStep(320, 150),  # noqa: B008 - frozen dataclass, safe default
        profile: Sequence[b.HeaterStep] = (),
        shared_dur_ms: int = 140,
        rate_ms: int = 3000,
        amb_temp_c: int = 25,
        response_timeout_s: float = 2.0,
        stall_timeout_s: float | None = None,
        iaq_burn_in: int = 30,
        backoff: Backoff | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.port = port
        self._listener = listener
        self.mode: Mode = mode
        self.heater = heater
        self.profile = tuple(profile) or (heater,)
        self.shared_dur_ms = shared_dur_ms
        self.rate_ms = rate_ms
        self.amb_temp_c = amb_temp_c
        self._timeout = response_timeout_s
        self._stall_timeout = stall_timeout_s or max(5.0, 3 * rate_ms / 1000.0)
        self._wall = wall_clock
        self._link = SerialLink(port, self, backoff=backoff, on_state=lambda _l: self._listener.on_state(self))
        self._splitter = LineSplitter()
        self._lock = asyncio.Lock()
        self._response: asyncio.Future[str] | None = None
        self._hello_seen: asyncio.Event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._last_field_at = 0.0
        self._serial: str | None = None
        self._fw: str | None = None
        self._chip_id: int | None = None
        self.variant_id: int | None = None
        self.calibration: b.Bme688Calibration | None = None
        self._iaq = b.IaqEstimator(burn_in=iaq_burn_in)
        self._seq = 0
        self._last_raw: dict[int, bytes] = {}
        self._last: Reading | None = None
        self._quiet = QuietLog(_LOGGER)
        self._stats: dict[str, int] = {
            "lines": 0, "fields": 0, "readings": 0, "invalid_readings": 0, "no_new_data": 0,
            "duplicates": 0, "checksum_errors": 0, "format_errors": 0, "length_errors": 0,
            "message_errors": 0, "device_errors": 0, "timeouts": 0, "stalls": 0,
        }  # fmt: skip

    # --- Device protocol --------------------------------------------------------------------------
    @property
    def device_id(self) -> str | None:
        return f"bme688-{self._serial.lower()}" if self._serial else None

    @property
    def state(self) -> LinkState:
        return self._link.state

    def stats(self) -> Mapping[str, int]:
        out = dict(self._stats)
        out["overlong_lines"] = self._splitter.overlong
        out.update({f"link_{k}": v for k, v in self._link.stats().items()})
        return out

    def heater_registers(self) -> b.HeaterRegisters | None:
        """The register values Bosch's API would write for the configured heater (needs calibration)."""
        if self.calibration is None:
            return None
        if self.mode == "parallel":
            return b.heater_registers(
                self.calibration, self.profile, mode="parallel", amb_temp_c=self.amb_temp_c,
                shared_dur_ms=self.shared_dur_ms,
            )  # fmt: skip
        return b.heater_registers(self.calibration, [self.heater], mode="forced", amb_temp_c=self.amb_temp_c)

    def describe(self) -> Mapping[str, object]:
        regs = self.heater_registers()
        return {
            "kind": self.kind,
            "port": self.port,
            "device_id": self.device_id,
            "state": self.state.value,
            "serial": self._serial,
            "firmware_version": self._fw,
            "chip_id": self._chip_id,
            "variant": {0: "BME680 (gas low)", 1: "BME688 (gas high)"}.get(self.variant_id or 0)
            if self.variant_id is not None
            else None,
            "mode": self.mode,
            "rate_ms": self.rate_ms,
            "heater": [(s.temp_c, s.duration) for s in (self.profile if self.mode == "parallel" else [self.heater])],
            "heater_registers": None
            if regs is None
            else {"res_heat": list(regs.res_heat), "gas_wait": list(regs.gas_wait), "shared": regs.shared_dur},
            "last_reading": None
            if self._last is None
            else {k: q.value for k, q in self._last.quantities.items()} | {"valid": self._last.valid},
        }

    def wake(self) -> None:
        self._link.wake()

    async def __aenter__(self) -> Self:
        self._link.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in (self._task, self._watchdog):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = self._watchdog = None
        await self._link.stop()

    async def command(self, name: str, params: Mapping[str, object], *, timeout: float | None = None) -> CommandResult:
        """``read``, ``set_mode {mode}``, ``set_heater {temp_c, dur_ms}``, ``set_profile {steps, shared_dur_ms}``,
        ``set_rate {ms}``; the bridge's ``OK`` or ``ERR <reason>`` is the answer."""
        if self.state is not LinkState.STREAMING:
            raise NotReadyError(f"{self.port}: bridge is {self.state.value}")
        try:
            lines = self._command_lines(name, params)
        except (CodecError, ValueError, TypeError) as exc:
            return CommandResult(False, f"invalid_params: {exc}")
        if lines is None:
            return CommandResult(False, "unknown_command")
        try:
            async with self._lock:
                for line in lines:
                    await self._request(line, timeout)
        except CommandRejectedError as exc:
            return CommandResult(False, exc.reason)
        return CommandResult(True, "ok", data={"sent": lines})

    def _command_lines(self, name: str, params: Mapping[str, object]) -> list[str] | None:
        if name == "read":
            return ["READ"]
        if name == "set_rate":
            ms = _int(params.get("ms"))
            if ms <= 0:
                raise ValueError("ms must be positive")
            self.rate_ms = ms
            self._stall_timeout = max(5.0, 3 * ms / 1000.0)
            return [f"RATE {ms}"]
        if name == "set_mode":
            mode = params.get("mode")
            if mode not in ("sleep", "forced", "parallel"):
                raise ValueError("mode is sleep, forced or parallel")
            self.mode = mode
            return [f"MODE {mode}"]
        if name == "set_heater":
            self.heater = b.HeaterStep(_int(params.get("temp_c")), _int(params.get("dur_ms")))
            return ["MODE sleep", f"HEATER {self.heater.temp_c} {self.heater.duration}", f"MODE {self.mode}"]
        if name == "set_profile":
            raw = params.get("steps")
            if not isinstance(raw, list) or not 1 <= len(raw) <= b.MAX_HEATER_STEPS:
                raise ValueError(f"steps is a list of 1..{b.MAX_HEATER_STEPS} [temp_c, duration] pairs")
            self.profile = tuple(b.HeaterStep(_int(s[0]), _int(s[1])) for s in raw)
            if "shared_dur_ms" in params:
                self.shared_dur_ms = _int(params["shared_dur_ms"])
            return ["MODE sleep", _heatprof(self.profile), f"MODE {self.mode}"]
        return None

    # --- requests -------------------------------------------------------------------------------------
    async def _request(self, body: str, timeout: float | None = None) -> None:
        """Send one line and wait for ``OK`` (``ERR`` raises ``CommandRejectedError``)."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._response = fut
        try:
            self._link.write(encode_line(body))
            result = await asyncio.wait_for(fut, timeout or self._timeout)
        except TimeoutError:
            self._stats["timeouts"] += 1
            raise DeviceTimeoutError(f"{self.port}: no answer to {body.split(maxsplit=1)[0]}") from None
        finally:
            if self._response is fut:
                self._response = None
        if result != "OK":
            raise CommandRejectedError(result.removeprefix("ERR").strip() or "error")

    async def _handshake(self) -> None:
        """Ask for identity and calibration, then configure heater, rate and mode."""
        try:
            async with self._lock:
                if self.calibration is None or not self._hello_seen.is_set():
                    self._hello_seen.clear()
                    await self._request("CAL?")
                    await asyncio.wait_for(self._hello_seen.wait(), self._timeout)
                await self._request("MODE sleep")
                if self.mode == "parallel":
                    await self._request(_heatprof(self.profile))
                else:
                    await self._request(f"HEATER {self.heater.temp_c} {self.heater.duration}")
                await self._request(f"RATE {self.rate_ms}")
                await self._request(f"MODE {self.mode}")
        except (DeviceTimeoutError, CommandRejectedError, LinkError, TimeoutError) as exc:
            self._link.fail(f"handshake failed: {exc}")
            return
        if self.calibration is None or self.variant_id is None:
            self._link.fail("bridge sent no HELLO/CAL")
            return
        self._last_field_at = time.monotonic()
        self._link.mark_streaming()

    async def _watch(self) -> None:
        """Drop a bridge that stops sending fields (a stalled MCU keeps its USB port open)."""
        while True:
            await asyncio.sleep(min(1.0, self._stall_timeout / 4))
            if (
                self.state is LinkState.STREAMING
                and self.mode != "sleep"
                and time.monotonic() - self._last_field_at > self._stall_timeout
            ):
                self._stats["stalls"] += 1
                self._listener.on_event(DeviceEvent(self.device_id or self.port, "stalled", {}, self._wall()))
                self._link.fail("no field data")

    # --- LinkProtocol -----------------------------------------------------------------------------
    def connection_made(self, link: SerialLink) -> None:
        self._splitter = LineSplitter()
        self._hello_seen.clear()
        self._last_raw.clear()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._handshake(), name=f"bme688-handshake:{self.port}")
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = loop.create_task(self._watch(), name=f"bme688-watch:{self.port}")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._response is not None and not self._response.done():
            self._response.set_exception(LinkError(f"{self.port}: link lost"))
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        for raw in self._splitter.feed(data):
            if raw.strip():
                self._on_line(raw)

    def _on_line(self, raw: bytes) -> None:
        self._stats["lines"] += 1
        try:
            body = decode_line(raw)
        except LineError as exc:
            self._stats[f"{exc.kind}_errors"] += 1
            self._quiet.problem(exc.kind, "%s: bad line: %s", self.port, exc)
            return
        word = body.split(" ", 1)[0]
        try:
            if word == "FLD":
                self._on_field(*parse_fld(body))
            elif word == "HELLO":
                self._serial, self._fw, self._chip_id, self.variant_id = parse_hello(body)
                if self.calibration is not None:
                    self._hello_seen.set()
                if self.state is LinkState.STREAMING and (self._task is None or self._task.done()):
                    self._on_reboot()
            elif word == "CAL":
                self.calibration = parse_cal(body)
                if self._serial is not None:
                    self._hello_seen.set()
            elif word in ("OK", "ERR"):
                if word == "ERR":
                    self._stats["device_errors"] += 1
                if self._response is not None and not self._response.done():
                    self._response.set_result(body)
            else:
                raise BridgeLineError(f"unknown message {word!r}")
        except CodecError as exc:
            self._stats["message_errors"] += 1
            self._quiet.problem("message", "%s: bad message: %s", self.port, exc)

    def _on_reboot(self) -> None:
        """An unasked HELLO: the bridge restarted in sleep mode and forgot its configuration; set it again."""
        self._stats["reboots"] = self._stats.get("reboots", 0) + 1
        self._listener.on_event(DeviceEvent(self.device_id or self.port, "bridge_rebooted", {}, self._wall()))
        self._link.mark_handshake()
        self._task = asyncio.get_running_loop().create_task(self._handshake(), name=f"bme688-handshake:{self.port}")

    def _on_field(self, number: int, fld: b.FieldData) -> None:
        if self.calibration is None or self.variant_id is None or self.device_id is None:
            return
        self._stats["fields"] += 1
        self._last_field_at = time.monotonic()
        raw = fld.to_bytes()
        if self._last_raw.get(number) == raw:
            self._stats["duplicates"] += 1  # the same block read twice: not a new measurement
            return
        self._last_raw[number] = raw
        m = b.measure(self.calibration, fld, self.variant_id)
        if not m.new_data:
            self._stats["no_new_data"] += 1
            return  # Bosch returns no values without new_data
        v = m.values
        quantities = {
            "temperature_c": Quantity(v.temperature_c, "°C"),
            "pressure_pa": Quantity(v.pressure_pa, "Pa"),
            "humidity_pct": Quantity(v.humidity_pct, "%"),
        }
        meta: dict[str, Any] = {
            "field": number, "gas_index": m.gas_index, "meas_index": m.meas_index,
            "gas_valid": m.gas_valid, "heat_stab": m.heat_stab, "variant_id": self.variant_id,
        }  # fmt: skip
        # Bosch's integer build on the same registers, as an MCU without an FPU would report them, so the
        # two can be compared with on-board computation (temperature x100, humidity x1000, Pa, ohm).
        iv = b.compensate_int(self.calibration, fld, self.variant_id)
        meta["bosch_int"] = {
            "temperature_c100": iv.temperature_c100, "pressure_pa": iv.pressure_pa,
            "humidity_milli": iv.humidity_milli, "gas_ohm": iv.gas_ohm,
        }  # fmt: skip
        if m.valid:
            quantities["gas_ohm"] = Quantity(v.gas_ohm, "Ω")
            est = self._iaq.update(v.gas_ohm, v.humidity_pct)
            if est is not None:
                quantities["iaq"] = Quantity(est.iaq, "IAQ")
                meta["iaq_accuracy"] = est.accuracy
                meta["iaq_method"] = "gas-baseline-v1 (docs/iaq.md; not BSEC)"
        else:
            meta["invalid_reason"] = m.reason
            meta["gas_ohm_unverified"] = v.gas_ohm
            self._stats["invalid_readings"] += 1
        self._seq += 1
        self._stats["readings"] += 1
        reading = Reading(self.device_id, "bme688", quantities, self._wall(), self._seq, valid=m.valid, meta=meta)
        self._last = reading
        self._listener.on_reading(reading)


def _heatprof(steps: Sequence[b.HeaterStep]) -> str:
    return "HEATPROF " + ",".join(f"{s.temp_c}:{s.duration}" for s in steps)


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not an integer")
    return value
