"""The Mycosoft LoRa gateway board (NDJSON over USB) as a ``Device``.

What the firmware prints (PROTOCOLS.md section 3a, ``firmware/gateway/src/main.cpp``): ``{"lora_init":"ok"}``
or ``{"lora_init":"fail","err":N}`` and ``{"side":"gateway","mdp":1,"status":"ready"}`` once at boot; one
line per MDP frame heard over the air with its header fields only (``t_ms, src, dst, seq, ack, type,
flags``: the firmware does not forward payloads, so telemetry content cannot reach the host this way;
use an AT modem for that); ``{"sent":true,"seq":N}`` after a host command; ``{"error":"json_parse"}``.

Identification: the ready line is printed once at boot and lost if no host had the port open, and the
firmware has no status command. The one harmless probe is a line that is not JSON, which the firmware
answers with ``{"error":"json_parse"}`` and otherwise ignores (an empty object would be sent over the air as
command 0), so the driver waits ``ready_wait_s`` for the ready line and then probes with ``?``.

Frames are published as ``lora_frame`` events, with per-source sequence gaps counted as lost frames. Sends
(``{"cmd", "dst", "data"}``) pass the duty-cycle budget first; the airtime charged is that of the exact
frame the firmware builds (``mdp_cmd_v1_t`` in ``COBS || 0x00``). The firmware may retransmit an unacknowledged
command up to five times on its own; those repeats are invisible to the host and are not charged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self

from drivers import mdp
from drivers.device import CommandResult, DeviceEvent, DeviceListener, LinkState
from drivers.errors import CodecError, DeviceTimeoutError, LinkError, NotReadyError
from drivers.link import Backoff, SerialLink
from drivers.lora_airtime import DutyCycleBudget, LoRaSettings, time_on_air_s
from drivers.nmea import LineSplitter
from drivers.quietlog import QuietLog

_LOGGER = logging.getLogger(__name__)

CMD_HEADER = struct.Struct("<HH")  # mdp_cmd_v1_t: cmd_id, cmd_len after the MDP header
FRAME_KEYS = ("t_ms", "src", "dst", "seq", "ack", "type", "flags")
MAX_DATA = 900 - mdp.HEADER_SIZE - CMD_HEADER.size  # cfg::MAX_PAYLOAD in the firmware


class GatewayLineError(CodecError):
    """A gateway line that is not one of the firmware's messages."""


@dataclass(frozen=True, slots=True)
class LoraInit:
    ok: bool
    err: int | None


@dataclass(frozen=True, slots=True)
class Ready:
    """``{"side":"gateway","mdp":1,"status":"ready"}``."""


@dataclass(frozen=True, slots=True)
class FrameHeard:
    t_ms: int
    src: int
    dst: int
    seq: int
    ack: int
    type: int
    flags: int


@dataclass(frozen=True, slots=True)
class Sent:
    seq: int


@dataclass(frozen=True, slots=True)
class JsonParseError:
    """``{"error":"json_parse"}``: the firmware could not parse a host line."""


GatewayLine = LoraInit | Ready | FrameHeard | Sent | JsonParseError


def _uint(value: object, bits: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise GatewayLineError(f"{value!r} is not a u{bits}")
    return value


def parse_line(line: bytes) -> GatewayLine:
    """Classify one line (without CR LF); raises ``GatewayLineError``."""
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise GatewayLineError("line is not JSON") from None
    if not isinstance(doc, dict):
        raise GatewayLineError("line is not a JSON object")
    if "lora_init" in doc:
        if doc["lora_init"] == "ok":
            return LoraInit(True, None)
        err = doc.get("err")
        return LoraInit(False, err if isinstance(err, int) and not isinstance(err, bool) else None)
    if doc.get("status") == "ready" and doc.get("side") == "gateway":
        return Ready()
    if all(k in doc for k in FRAME_KEYS):
        return FrameHeard(
            t_ms=_uint(doc["t_ms"], 32), src=_uint(doc["src"], 8), dst=_uint(doc["dst"], 8),
            seq=_uint(doc["seq"], 32), ack=_uint(doc["ack"], 32), type=_uint(doc["type"], 8),
            flags=_uint(doc["flags"], 8),
        )  # fmt: skip
    if doc.get("sent") is True and "seq" in doc:
        return Sent(_uint(doc["seq"], 32))
    if doc.get("error") == "json_parse":
        return JsonParseError()
    raise GatewayLineError(f"unknown gateway message with keys {sorted(doc)[:8]}")


def encode_send(cmd_id: int, dst: int, data: bytes) -> bytes:
    """The host line for one command: ``{"cmd":..,"dst":..,"data":[..]}`` and LF."""
    if not 0 <= cmd_id <= 0xFFFF or not 0 <= dst <= 0xFF or len(data) > MAX_DATA:
        raise CodecError("cmd is u16, dst is u8 and data at most 876 bytes")
    return json.dumps({"cmd": cmd_id, "dst": dst, "data": list(data)}, separators=(",", ":")).encode() + b"\n"


def over_the_air_size(data_len: int) -> int:
    """Bytes on air for a command with ``data_len`` bytes of data (the firmware's exact framing)."""
    frame = mdp.Frame(mdp.MsgType.COMMAND, payload=bytes(CMD_HEADER.size + data_len))
    return len(mdp.encode_firmware(frame))


class LoraGateway:
    """One gateway board; see the module docstring."""

    kind = "lora-gateway"

    def __init__(
        self,
        port: str,
        listener: DeviceListener,
        *,
        device_id: str | None = None,
        settings: LoRaSettings | None = None,
        budget: DutyCycleBudget | None = None,
        ready_wait_s: float = 1.5,
        keepalive_s: float = 60.0,
        response_timeout_s: float = 2.0,
        backoff: Backoff | None = None,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.port = port
        self._listener = listener
        self._device_id = device_id or f"lora-gateway-{os.path.basename(port)}"
        self.settings = settings or LoRaSettings()
        self.budget = budget or DutyCycleBudget(clock=clock)
        self._ready_wait = ready_wait_s
        self._keepalive_s = keepalive_s
        self._last_line_at = time.monotonic()
        self._keepalive: asyncio.Task[None] | None = None
        self._timeout = response_timeout_s
        self._wall = wall_clock
        self._link = SerialLink(port, self, backoff=backoff, on_state=lambda _l: self._listener.on_state(self))
        self._splitter = LineSplitter(2048)
        self._identified = asyncio.Event()
        self._lock = asyncio.Lock()
        self._pending: asyncio.Future[GatewayLine] | None = None
        self._task: asyncio.Task[None] | None = None
        self.radio_ok: bool | None = None
        self.radio_error: int | None = None
        self._last_seq: dict[int, int] = {}
        self._quiet = QuietLog(_LOGGER)
        self._stats: dict[str, int] = {
            "lines": 0, "frames": 0, "frames_lost": 0, "sent": 0, "line_errors": 0, "json_parse_errors": 0,
            "timeouts": 0, "duty_cycle_refusals": 0, "probes": 0, "stalls": 0,
        }  # fmt: skip

    # --- Device protocol ----------------------------------------------------------------------------
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
            "state": self.state.value,
            "radio_ok": self.radio_ok,
            "radio_error": self.radio_error,
            "sf": self.settings.sf,
            "bw_hz": self.settings.bw_hz,
            "duty_cycle": self.budget.duty_cycle,
            "airtime_used_s": round(self.budget.used_s(), 4),
            "remote_endpoints": {f"0x{k:02X}": v for k, v in sorted(self._last_seq.items())},
        }

    def wake(self) -> None:
        self._link.wake()

    async def __aenter__(self) -> Self:
        self._link.start()
        self._keepalive = asyncio.get_running_loop().create_task(self._keep_alive(), name=f"gw-alive:{self.port}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in (self._task, self._keepalive):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = self._keepalive = None
        await self._link.stop()

    async def command(self, name: str, params: Mapping[str, object], *, timeout: float | None = None) -> CommandResult:
        """``lora_send {cmd: u16, dst: u8 = 0xA1, data: [bytes]}``: one binary MDP command over the air."""
        if self.state is not LinkState.STREAMING:
            raise NotReadyError(f"{self.port}: gateway is {self.state.value}")
        if name != "lora_send":
            return CommandResult(False, "unknown_command")
        try:
            cmd_id = _param_int(params.get("cmd"), 0xFFFF)
            dst = _param_int(params.get("dst", mdp.Endpoint.SIDE_A), 0xFF)
            data = _param_bytes(params.get("data", []))
            line = encode_send(cmd_id, dst, data)
        except CodecError as exc:
            return CommandResult(False, f"invalid_params: {exc}")
        if self.radio_ok is False:
            return CommandResult(False, "radio_not_ready", data={"err": self.radio_error})
        size = over_the_air_size(len(data))
        if size > 255:
            return CommandResult(False, "too_long_for_lora", data={"bytes_on_air": size})
        airtime = time_on_air_s(self.settings, size)
        decision = self.budget.check(airtime)
        if not decision.allowed:
            self._stats["duty_cycle_refusals"] += 1
            return CommandResult(
                False,
                "duty_cycle_exceeded" if decision.retry_after_s is not None else "exceeds_duty_cycle_budget",
                data={"airtime_s": airtime, "used_s": decision.used_s, "budget_s": decision.budget_s},
                retry_after_s=decision.retry_after_s,
            )
        async with self._lock:
            answer = await self._exchange(line, timeout)
        if isinstance(answer, Sent):
            self.budget.try_consume(airtime)
            self._stats["sent"] += 1
            return CommandResult(True, "sent", data={"seq": answer.seq, "airtime_s": airtime, "bytes_on_air": size})
        return CommandResult(False, "json_parse")

    async def _exchange(self, line: bytes, timeout: float | None) -> GatewayLine:
        fut: asyncio.Future[GatewayLine] = asyncio.get_running_loop().create_future()
        self._pending = fut
        try:
            self._link.write(line)
            return await asyncio.wait_for(fut, timeout or self._timeout)
        except TimeoutError:
            self._stats["timeouts"] += 1
            raise DeviceTimeoutError(f"{self.port}: gateway did not answer") from None
        finally:
            if self._pending is fut:
                self._pending = None

    async def _keep_alive(self) -> None:
        """After ``keepalive_s`` of silence, probe with a non-JSON line; no ``json_parse`` answer drops the link."""
        while True:
            await asyncio.sleep(min(1.0, self._keepalive_s / 4))
            idle = time.monotonic() - self._last_line_at
            if self.state is not LinkState.STREAMING or idle < self._keepalive_s or self._lock.locked():
                continue
            self._stats["probes"] += 1
            try:
                async with self._lock:
                    await self._exchange(b"?\n", self._timeout)
            except DeviceTimeoutError:
                self._stats["stalls"] += 1
                self._event("stalled", {"idle_s": round(idle, 3)})
                self._link.fail("gateway stopped answering")
            except LinkError:
                continue

    async def _handshake(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._identified.wait(), self._ready_wait)
        if not self._identified.is_set():
            self._stats["probes"] += 1
            try:
                async with self._lock:
                    answer = await self._exchange(b"?\n", self._timeout)
            except (DeviceTimeoutError, LinkError) as exc:
                self._link.fail(f"no gateway answer: {exc}")
                return
            if not isinstance(answer, JsonParseError):
                self._link.fail("unexpected answer to the probe")
                return
        self._link.mark_streaming()

    # --- LinkProtocol -----------------------------------------------------------------------------
    def connection_made(self, link: SerialLink) -> None:
        self._splitter = LineSplitter(2048)
        self._identified.clear()
        self._task = asyncio.get_running_loop().create_task(self._handshake(), name=f"gateway-handshake:{self.port}")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._pending is not None and not self._pending.done():
            self._pending.set_exception(LinkError(f"{self.port}: link lost"))
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        for raw in self._splitter.feed(data):
            if raw.strip():
                self._on_line(raw.strip())

    def _on_line(self, raw: bytes) -> None:
        self._last_line_at = time.monotonic()
        self._stats["lines"] += 1
        try:
            line = parse_line(raw)
        except GatewayLineError as exc:
            self._stats["line_errors"] += 1
            self._quiet.problem("line", "%s: bad gateway line: %s", self.port, exc)
            return
        match line:
            case LoraInit(ok=ok, err=err):
                self.radio_ok, self.radio_error = ok, err
                if not ok:
                    self._event("lora_init_failed", {"err": err})
            case Ready():
                self._identified.set()
                if self.state is LinkState.STREAMING:
                    self._event("gateway_rebooted", {})  # the board reset under us
            case FrameHeard():
                self._on_frame(line)
            case Sent() | JsonParseError():
                if isinstance(line, JsonParseError):
                    self._stats["json_parse_errors"] += 1
                if self._pending is not None and not self._pending.done():
                    self._pending.set_result(line)

    def _on_frame(self, f: FrameHeard) -> None:
        self._stats["frames"] += 1
        last = self._last_seq.get(f.src)
        if last is not None and f.seq > last + 1:
            self._stats["frames_lost"] += f.seq - last - 1
        self._last_seq[f.src] = f.seq
        self._event(
            "lora_frame",
            {"t_ms": f.t_ms, "src": f.src, "dst": f.dst, "seq": f.seq, "ack": f.ack, "type": mdp.msg_type_name(f.type),
             "flags": f.flags},
        )  # fmt: skip

    def _event(self, name: str, data: Mapping[str, Any]) -> None:
        self._listener.on_event(DeviceEvent(self._device_id, name, dict(data), self._wall()))


def _param_bytes(value: object) -> bytes:
    if not isinstance(value, list):
        raise CodecError("data is a list of bytes")
    return bytes(_param_int(v, 0xFF) for v in value)


def _param_int(value: object, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise CodecError(f"{value!r} is not an integer in 0..{maximum}")
    return value
