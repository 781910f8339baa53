"""MycoBrain Side A and Side B firmware, simulated byte for byte on a pseudo-terminal.

Behaviour follows the public firmware (``MycoBrain_SideA_MDP/src/main.cpp``,
``MycoBrain_SideB_MDP/src/main.cpp``), not only the spec, because the host must survive the real thing:

- Side A: ``tx_seq`` starts at 1 and counts every frame sent; HELLO once after ~1.2 s of boot; ``hello``
  answered by a HELLO with ``ack`` = the command's seq and no ACK; ``read_sensors``/``health`` answered by
  TELEMETRY (``ack`` = seq) then an ACK only if ACK_REQUESTED; every other command ACKed or NACKed
  regardless; ``estop`` sends EVENT ``estop_activated`` then the ACK; default stream 0.1 Hz;
  ``output_control`` reads ``value`` as an integer (``true``/``1.0`` read as 0); commands to 0xFF ignored;
  more than 1024 encoded bytes or 32 JSON values dropped; bytes 0x0A/0x0D end a text command line.
- Side B: HELLO without ``device_id`` (``role: side_b``, ``supports``); ``transport_status`` EVENT every
  5 s; transport commands answered; commands for 0xA1 forwarded verbatim to the Side A behind it (ACK
  ``forwarded_to_side_a`` if requested) and Side A's frames forwarded verbatim to the host; only 0x0A ends
  a line.

Where the firmware and PROTOCOLS.md section 1 disagree (the device wins; the stubs follow the device):

- Side B's HELLO has no ``device_id`` and ``supports`` is a string; Side B NACKs ``hello``
  (``unknown_transport_command``); it sends ``transport_status`` every 5 s unasked; it ACKs a command
  for 0xA1 itself (``forwarded_to_side_a``), so one seq gets two ACKs from two sources.
- Side B ends text lines only at 0x0A (and parses JSON lines as OpenClaw commands; not emulated).
- The firmware's COBS writes an extra 0x01 block after a final run of 254 non-zero bytes.
- An over-long frame is not dropped cleanly: the 1024-byte buffer restarts and the tail is parsed as a
  frame of its own (and fails).
- ``fmt json`` + ``live on`` print per-sensor lines ``{"ts_ms","sensor","tC","rh","p_hPa","gas"}``
  without ``type``/``board_id``; the ``type``/``ts``/``board_id`` legacy shape is emulated by
  ``LegacyBoard`` as the spec describes it. Telemetry BME688 values are floats; only the analog
  inputs are integers.
- Text is printed on the same port before the boot HELLO (e.g. ``Claw: GPIO servo initialized``).
- Newer firmware revisions add a claw (``capabilities: claw``, ``claw_*`` commands); not emulated.

Faults (``FaultPlan``): garbage before a frame, bad CRC, truncated frames, drip, stalls and unplug/replug.
Only ``drivers`` codecs are imported (``drivers.mdp``, ``drivers.cobs``), never the host driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

from drivers import cobs, mdp
from firmware_stubs.pty import PtyPort

_LOGGER = logging.getLogger(__name__)

SIDE_A_FIRMWARE = "side-a-mdp-2.1.0"  # main.cpp FW_VERSION
SIDE_B_FIRMWARE = "side-b-mdp-2.1.0"
BOOT_DELAY_S = 1.2  # setup(): delay(1200) before the first HELLO
DEFAULT_RATE_HZ = 0.1  # stream_interval_ms = 10000
MIN_RATE_HZ = 0.1  # stream_sensors clamps rate_hz below 0.1
RX_BUFFER = 1024  # cobs_buffer[1024]
SIDE_B_HEARTBEAT_S = 5.0  # HEARTBEAT_INTERVAL_MS
SIDE_B_MAX_QUEUE = 32  # MAX_QUEUE_DEPTH

Send = Callable[[bytes], None]


def device_id_from_mac(mac: bytes) -> str:
    """``"mycobrain-" + hex(getEfuseMac() & 0xFFFFFF)``: the efuse MAC is little-endian in a u64, so the
    low 24 bits are the MAC's first three bytes reversed (the vendor prefix), unpadded lowercase hex."""
    value = int.from_bytes(mac[:6], "little") & 0xFFFFFF
    return f"mycobrain-{value:x}"


@dataclass
class FaultPlan:
    """What goes wrong on this board's link, and how often (0 = never)."""

    garbage_every: int = 0  # every Nth frame is preceded by a burst of random bytes
    bad_crc_every: int = 0  # every Nth frame carries a wrong CRC
    truncate_every: int = 0  # every Nth frame is cut short (its tail and delimiter lost)
    drip_delay_s: float | None = None  # send byte by byte with this pause
    stall_every_s: float = 0.0
    stall_for_s: float = 0.0
    unplug_every_s: float = 0.0
    unplug_for_s: float = 0.0


@dataclass
class _Drift:
    """A mean-reverting random walk (Ornstein-Uhlenbeck), so readings move like a real room."""

    mean: float
    sigma: float
    value: float = math.nan
    theta: float = 0.05

    def step(self, rng: random.Random) -> float:
        if math.isnan(self.value):
            self.value = self.mean
        self.value += self.theta * (self.mean - self.value) + rng.gauss(0.0, self.sigma)
        return self.value


@dataclass
class _Bme:
    temperature_c: _Drift
    humidity_pct: _Drift
    pressure_hpa: _Drift
    gas_ohm: _Drift
    iaq: _Drift = field(default_factory=lambda: _Drift(50.0, 2.0))

    def sample(self, rng: random.Random) -> dict[str, float]:
        t = self.temperature_c.step(rng)
        h = min(100.0, max(0.0, self.humidity_pct.step(rng)))
        p = self.pressure_hpa.step(rng)
        g = max(1000.0, self.gas_ohm.step(rng))
        iaq = max(0.0, self.iaq.step(rng))
        # BSEC's CO2/VOC equivalents track IAQ; values as the firmware sends them (floats).
        return {
            "temperature_c": round(t, 2),
            "humidity_pct": round(h, 2),
            "pressure_hpa": round(p, 2),
            "gas_ohm": float(round(g)),
            "iaq": round(iaq, 2),
            "co2_equivalent": round(500.0 + 10.0 * iaq, 2),
            "voc_equivalent": round(0.5 + iaq / 100.0, 3),
        }


class _Firmware:
    """Shared frame building and the byte-receive loop of both sides."""

    src: int = mdp.Endpoint.SIDE_A
    line_ends: bytes = b"\n\r"

    def __init__(self, send: Send, *, clock: Callable[[], float]) -> None:
        self.send = send
        self.clock = clock
        self.tx_seq = 1
        self.booted_at = clock()
        self._rx = bytearray()
        self.frame_hook: Callable[[bytes, bytes], bytes] | None = None
        self.received: list[mdp.Frame] = []  # what the board accepted, for tests
        self.dropped = 0

    def millis(self) -> int:
        return int((self.clock() - self.booted_at) * 1000)

    def send_frame(self, msg_type: int, ack: int, flags: int, payload: dict[str, Any],
                   *, dst: int = mdp.Endpoint.GATEWAY) -> None:
        frame = mdp.Frame(msg_type, seq=self.tx_seq, ack=ack, flags=flags, src=self.src, dst=dst,
                          payload=mdp.dump_payload(payload))
        self.tx_seq = (self.tx_seq + 1) & 0xFFFFFFFF
        raw = frame.to_bytes()
        wire = cobs.encode_firmware(raw) + b"\x00"
        if self.frame_hook is not None:
            wire = self.frame_hook(raw, wire)
        self.send(wire)

    def send_ack(self, ack_seq: int, success: bool, message: str) -> None:
        flags = mdp.Flags.IS_ACK if success else mdp.Flags.IS_NACK
        self.send_frame(mdp.MsgType.ACK, ack_seq, flags, {"success": success, "message": message})

    def receive(self, data: bytes) -> None:
        """The firmware's serial loop, byte by byte."""
        for b in data:
            if b == 0:
                if self._rx:
                    self.on_encoded(bytes(self._rx))
                self._rx.clear()
            elif b in self.line_ends:
                if self._rx and all(0x20 <= c <= 0x7E or c == 0x09 for c in self._rx):
                    self.on_text_line(self._rx.decode("ascii"))
                elif self._rx:
                    self.dropped += 1
                self._rx.clear()
            elif len(self._rx) < RX_BUFFER:
                self._rx.append(b)
            else:
                self.dropped += 1
                self._rx.clear()

    def parse(self, encoded: bytes) -> tuple[mdp.Frame, dict[str, Any]] | None:
        """``parse_frame``: COBS, length, magic/version, CRC, then JSON within ArduinoJson's 32 slots."""
        try:
            frame = mdp.decode(encoded)
            payload = frame.json()
        except mdp.MdpError:
            self.dropped += 1
            return None
        if mdp.count_json_values(payload) > mdp.BOARD_MAX_JSON_VALUES:
            self.dropped += 1
            return None
        return frame, payload

    def on_encoded(self, encoded: bytes) -> None:
        raise NotImplementedError

    def on_text_line(self, line: str) -> None:
        """Text commands are not part of MDP; ignored unless a side overrides this."""


class SideA(_Firmware):
    """Side A (sensor MCU)."""

    src = mdp.Endpoint.SIDE_A

    def __init__(
        self,
        send: Send,
        *,
        mac: bytes = bytes.fromhex("348518a1b2c3"),
        role: str = "mushroom1",
        rate_hz: float = DEFAULT_RATE_HZ,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        boot_delay_s: float = BOOT_DELAY_S,
        boot_hello: bool = True,
    ) -> None:
        super().__init__(send, clock=clock)
        self.device_id = device_id_from_mac(mac)
        self.role = role
        self.initial_rate_hz = rate_hz
        self.rng = random.Random(seed)  # noqa: S311 - simulated sensor noise, not cryptography
        self.boot_delay_s = boot_delay_s
        self.boot_hello = boot_hello
        self.estop = False
        self.mosfets = [0, 0, 0]
        self.live_json = False
        self.live_on = False
        self.live_period_s = 1.0
        self._last_live = 0.0
        self._bme = {
            "a": _Bme(_Drift(22.5, 0.05), _Drift(55.0, 0.2), _Drift(1013.0, 0.05), _Drift(120000.0, 800.0)),
            "b": _Bme(_Drift(24.0, 0.05), _Drift(80.0, 0.2), _Drift(1012.8, 0.05), _Drift(60000.0, 500.0)),
        }
        self._analog = [_Drift(1200.0 + 300 * i, 8.0) for i in range(4)]
        self.boot()

    def boot(self) -> None:
        """Power-up: everything resets, the stream falls back to its default, HELLO follows the delay."""
        self.booted_at = self.clock()
        self.tx_seq = 1
        self.estop = False
        self.mosfets = [0, 0, 0]
        self.interval_s = 1.0 / max(MIN_RATE_HZ, self.initial_rate_hz)
        self.last_stream = self.booted_at
        self.ready = False
        self._early = b""

    def tick(self) -> float:
        """Run the main loop once; returns seconds until something is due."""
        now = self.clock()
        if not self.ready:
            if now - self.booted_at < self.boot_delay_s:
                return self.booted_at + self.boot_delay_s - now
            self.ready = True
            if self.boot_hello:
                self.send_hello(0)
            early, self._early = self._early, b""
            super().receive(early)
        if now - self.last_stream >= self.interval_s:
            self.send_telemetry(0)
            self.last_stream = now
        if self.live_on and now - self._last_live >= self.live_period_s:
            self._last_live = now
            self._live_output()
        due = self.last_stream + self.interval_s - now
        return max(0.001, min(due, self.live_period_s if self.live_on else due))

    def receive(self, data: bytes) -> None:
        # Before setup() ends the USB CDC receive buffer holds what the host sent (TinyUSB's default
        # RX FIFO is 256 bytes); loop() reads it afterwards.
        if self.ready:
            super().receive(data)
        else:
            self._early = (self._early + data)[:256]

    # --- payloads -------------------------------------------------------------------------------
    def hello_payload(self) -> dict[str, Any]:
        sensors = ["bme688_a", "bme688_b", "ai1", "ai2", "ai3", "ai4"]
        if self.role == "hyphae1":
            sensors.append("soil_moisture")
        return {
            "device_id": self.device_id,
            "firmware_version": SIDE_A_FIRMWARE,
            "role": self.role,
            "sensors": sensors,
            "capabilities": ["i2c", "telemetry", "led", "buzzer", "output_control", "estop"],
        }

    def telemetry_payload(self) -> dict[str, Any]:
        analog = {f"ai{i + 1}": max(0, min(4095, round(d.step(self.rng)))) for i, d in enumerate(self._analog)}
        if self.role == "hyphae1":
            analog["soil_moisture"] = max(0, min(4095, round(2000 + self.rng.gauss(0, 20))))
        return {
            "type": "telemetry",
            "uptime_s": self.millis() // 1000,
            "estop": self.estop,
            "analog": analog,
            "bme688": {name: bme.sample(self.rng) for name, bme in self._bme.items()},
        }

    def send_hello(self, ack: int) -> None:
        self.send_frame(mdp.MsgType.HELLO, ack, 0, self.hello_payload())

    def send_telemetry(self, ack: int) -> None:
        self.send_frame(mdp.MsgType.TELEMETRY, ack, 0, self.telemetry_payload())

    # --- commands -------------------------------------------------------------------------------
    def on_encoded(self, encoded: bytes) -> None:
        parsed = self.parse(encoded)
        if parsed is None:
            return
        frame, payload = parsed
        if frame.msg_type != mdp.MsgType.COMMAND or frame.dst != mdp.Endpoint.SIDE_A:
            return
        self.received.append(frame)
        self.handle_command(frame, payload)

    def handle_command(self, hdr: mdp.Frame, payload: dict[str, Any]) -> None:
        cmd = payload.get("cmd")
        cmd = cmd if isinstance(cmd, str) else ""
        params = payload.get("params")
        params = params if isinstance(params, dict) else {}
        seq = hdr.seq
        if cmd == "hello":
            self.send_hello(seq)
            return
        if cmd in ("health", "read_sensors"):
            self.send_telemetry(seq)
            if hdr.flags & mdp.Flags.ACK_REQUESTED:
                self.send_ack(seq, True, "telemetry_sent")
            return
        if cmd == "stream_sensors":
            rate = _json_float(params.get("rate_hz"), DEFAULT_RATE_HZ)
            rate = max(MIN_RATE_HZ, rate)
            self.interval_s = int(1000.0 / rate) / 1000.0
            self.send_ack(seq, True, "stream_interval_updated")
            return
        if cmd == "output_control":
            if self.estop:
                self.send_ack(seq, False, "estop_active")
                return
            out_id = params.get("id") if isinstance(params.get("id"), str) else ""
            value = _json_int(params.get("value"), 0)
            assert isinstance(out_id, str)
            if out_id.startswith("mosfet"):
                idx = _atoi(out_id[6:]) - 1
                if 0 <= idx < 3:
                    self.mosfets[idx] = 1 if value else 0
                    self.send_ack(seq, True, "mosfet_updated")
                    return
            elif out_id == "buzzer":
                self.send_ack(seq, True, "buzzer_played")
                return
            elif out_id == "neopixel":
                self.send_ack(seq, True, "neopixel_updated")
                return
            self.send_ack(seq, False, "invalid_output_id")
            return
        if cmd == "estop":
            self.estop = True
            self.mosfets = [0, 0, 0]
            self.send_frame(mdp.MsgType.EVENT, seq, 0, {"event": "estop_activated"})
            self.send_ack(seq, True, "estop_activated")
            return
        if cmd == "clear_estop":
            self.estop = False
            self.send_ack(seq, True, "estop_cleared")
            return
        if cmd in ("enable_peripheral", "disable_peripheral"):
            self.send_ack(seq, True, "peripheral_state_recorded")
            return
        self.send_ack(seq, False, "unknown_command")

    def on_text_line(self, line: str) -> None:
        """The serial CLI subset that matters to a host: ``fmt json|lines`` and ``live on|off [ms]``."""
        words = line.strip().split()
        if not words:
            return
        cmd = words[0].lower()
        if cmd == "fmt":
            self.live_json = len(words) > 1 and words[1].startswith("json")
            self.send(f"fmt {'json' if self.live_json else 'lines'}\r\n".encode())
        elif cmd == "live":
            if len(words) > 1 and words[1].startswith("on"):
                self.live_on = True
                if len(words) > 2 and _atoi(words[2]) > 0:
                    self.live_period_s = _atoi(words[2]) / 1000.0
                self.send(f"live ON {int(self.live_period_s * 1000)} ms\r\n".encode())
            elif len(words) > 1 and words[1].startswith("off"):
                self.live_on = False
                self.send(b"live OFF\r\n")
        else:
            self.send(b"Unknown command. Type 'help' for list.\r\n")

    def _live_output(self) -> None:
        for name, slot in (("a", "AMB"), ("b", "ENV")):
            s = self._bme[name].sample(self.rng)
            if self.live_json:
                line = json.dumps({"ts_ms": self.millis(), "sensor": slot, "tC": s["temperature_c"],
                                   "rh": s["humidity_pct"], "p_hPa": s["pressure_hpa"], "gas": s["gas_ohm"]},
                                  separators=(",", ":"))
            else:
                line = (f"#live {slot} T={s['temperature_c']:.2f}C RH={s['humidity_pct']:.2f}% "
                        f"P={s['pressure_hpa']:.2f}hPa Gas={s['gas_ohm']:.0f}Ohm")
            self.send(line.encode() + b"\r\n")


class LegacyBoard:
    """The older NDJSON firmware mode (PROTOCOLS.md section 1, "legacy mode"): one JSON object per line
    with ``type``, ``ts`` and ``board_id``; MDP frames are never sent."""

    def __init__(self, send: Send, *, board_id: str = "mycobrain-188534", rate_hz: float = 1.0,
                 seed: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.send = send
        self.board_id = board_id
        self.interval_s = 1.0 / rate_hz
        self.clock = clock
        self.rng = random.Random(seed)  # noqa: S311 - simulated sensor noise
        self.booted_at = clock()
        self.last = self.booted_at
        self._bme = _Bme(_Drift(22.5, 0.05), _Drift(55.0, 0.2), _Drift(1013.0, 0.05), _Drift(120000.0, 800.0))
        self.received: list[mdp.Frame] = []

    def boot(self) -> None:
        self.booted_at = self.clock()
        self._line({"type": "status", "status": "ready", "fw": "mycobrain-legacy-1.4"})

    def _line(self, obj: dict[str, Any]) -> None:
        body = {"type": obj.pop("type"), "ts": int((self.clock() - self.booted_at) * 1000),
                "board_id": self.board_id, **obj}
        self.send(json.dumps(body, separators=(",", ":")).encode() + b"\n")

    def tick(self) -> float:
        now = self.clock()
        if now - self.last >= self.interval_s:
            self.last = now
            s = self._bme.sample(self.rng)
            self._line({"type": "telemetry", "temperature_c": s["temperature_c"],
                        "humidity_pct": s["humidity_pct"], "pressure_hpa": s["pressure_hpa"],
                        "gas_ohm": s["gas_ohm"], "ai1": self.rng.randrange(4096)})
        return max(0.001, self.last + self.interval_s - now)

    def receive(self, data: bytes) -> None:
        """The legacy firmware answers every line with an ``err`` (we never send it text)."""
        if b"\n" in data:
            self._line({"type": "err", "error": "unknown_command"})


class SideB(_Firmware):
    """Side B (transport MCU), optionally with a Side A behind its inter-MCU UART."""

    src = mdp.Endpoint.SIDE_B
    line_ends = b"\n"

    def __init__(self, send: Send, *, side_a: SideA | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 heartbeat_s: float = SIDE_B_HEARTBEAT_S) -> None:
        super().__init__(send, clock=clock)
        self.side_a = side_a
        self.heartbeat_s = heartbeat_s
        self.lora_ready = self.ble_ready = self.wifi_ready = self.sim_ready = False
        self.queued = 0
        self.boot()

    def boot(self) -> None:
        self.booted_at = self.clock()
        self.tx_seq = 1
        self.last_heartbeat = self.booted_at
        self.send_frame(mdp.MsgType.HELLO, 0, 0, {"role": "side_b", "firmware_version": SIDE_B_FIRMWARE,
                                                  "supports": "transport_directives"})
        if self.side_a is not None:
            self.side_a.boot()

    def tick(self) -> float:
        now = self.clock()
        due_a = self.side_a.tick() if self.side_a is not None else self.heartbeat_s
        if now - self.last_heartbeat >= self.heartbeat_s:
            self.send_transport_status(0)
            self.last_heartbeat = now
        return max(0.001, min(due_a, self.last_heartbeat + self.heartbeat_s - now))

    def send_transport_status(self, ack: int) -> None:
        self.send_frame(mdp.MsgType.EVENT, ack, 0, {
            "event": "transport_status", "lora_ready": self.lora_ready, "ble_ready": self.ble_ready,
            "wifi_ready": self.wifi_ready, "sim_ready": self.sim_ready, "queue_depth": self.queued,
            "backpressure": self.queued >= SIDE_B_MAX_QUEUE,
        })

    def on_encoded(self, encoded: bytes) -> None:
        parsed = self.parse(encoded)
        if parsed is None:
            return
        frame, payload = parsed
        if frame.msg_type != mdp.MsgType.COMMAND:
            return
        if frame.dst == mdp.Endpoint.SIDE_B:
            self.received.append(frame)
            self.handle_transport(frame, payload)
        elif frame.dst == mdp.Endpoint.SIDE_A:
            if self.side_a is not None:
                self.side_a.receive(encoded + b"\x00")
            if frame.flags & mdp.Flags.ACK_REQUESTED:
                self.send_ack(frame.seq, True, "forwarded_to_side_a")

    def handle_transport(self, hdr: mdp.Frame, payload: dict[str, Any]) -> None:
        cmd = payload.get("cmd") if isinstance(payload.get("cmd"), str) else ""
        params = payload.get("params") if isinstance(payload.get("params"), dict) else {}
        assert isinstance(params, dict)
        seq = hdr.seq
        if cmd == "transport_status":
            self.send_transport_status(seq)
            if hdr.flags & mdp.Flags.ACK_REQUESTED:
                self.send_ack(seq, True, "status_sent")
        elif cmd == "lora_send":
            if self.queued >= SIDE_B_MAX_QUEUE:
                self.send_ack(seq, False, "backpressure_queue_full")
            elif "payload" not in params:
                self.send_ack(seq, False, "missing_payload")
            else:
                self.lora_ready = True
                self.send_ack(seq, True, "lora_payload_accepted")
        elif cmd == "ble_advertise":
            self.ble_ready = params.get("en") is True
            self.send_ack(seq, True, "ble_advertising_on" if self.ble_ready else "ble_advertising_off")
        elif cmd == "wifi_connect":
            ssid = params.get("ssid")
            self.wifi_ready = isinstance(ssid, str) and len(ssid) > 0
            self.send_ack(seq, self.wifi_ready, "wifi_connect_started" if self.wifi_ready else "missing_ssid")
        elif cmd == "sim_send":
            data = params.get("payload")
            ok = isinstance(data, str) and len(data) > 0
            self.sim_ready = True
            self.send_ack(seq, ok, "sim_payload_accepted" if ok else "missing_payload")
        else:
            self.send_ack(seq, False, "unknown_transport_command")


Board = SideA | SideB | LegacyBoard


class MycoBrainStub:
    """A simulated board on a pty, with its fault plan; an async context manager that runs it."""

    def __init__(
        self,
        *,
        side: str = "a",
        path: str | None = None,
        rate_hz: float = DEFAULT_RATE_HZ,
        seed: int = 0,
        mac: bytes | None = None,
        faults: FaultPlan | None = None,
        boot_delay_s: float = BOOT_DELAY_S,
        boot_hello: bool = True,
        legacy: bool = False,
        side_a_behind: bool = True,
        heartbeat_s: float = SIDE_B_HEARTBEAT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.faults = faults or FaultPlan()
        self.rng = random.Random(seed ^ 0x5EED)  # noqa: S311 - fault timing, not cryptography
        self.port = PtyPort(path, on_data=self._on_host_data, drip_delay_s=self.faults.drip_delay_s,
                            rng=self.rng)
        mac = mac or bytes([0x34, 0x85, 0x18, seed & 0xFF, (seed >> 8) & 0xFF, 0x01])
        self.frames_sent = 0
        self.board: Board
        if legacy:
            self.board = LegacyBoard(self.port.write, board_id=device_id_from_mac(mac), rate_hz=rate_hz,
                                     seed=seed, clock=clock)
        else:
            side_a = SideA(self.port.write, mac=mac, rate_hz=rate_hz, seed=seed, clock=clock,
                           boot_delay_s=boot_delay_s, boot_hello=boot_hello)
            if side == "b":
                side_a.frame_hook = self._fault_hook
                self.board = SideB(self.port.write, side_a=side_a if side_a_behind else None,
                                   clock=clock, heartbeat_s=heartbeat_s)
            else:
                self.board = side_a
            self.board.frame_hook = self._fault_hook
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def path(self) -> str:
        return self.port.path

    @property
    def side_a(self) -> SideA | None:
        if isinstance(self.board, SideA):
            return self.board
        if isinstance(self.board, SideB):
            return self.board.side_a
        return None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self.port.plug()
        if isinstance(self.board, SideB | LegacyBoard):
            self.board.boot()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"stub:{self.path}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.port.close()

    # --- faults ---------------------------------------------------------------------------------
    def _fault_hook(self, raw: bytes, wire: bytes) -> bytes:
        self.frames_sent += 1
        n, f = self.frames_sent, self.faults
        if f.garbage_every and n % f.garbage_every == 0:
            self.port.write_garbage(self.rng.randint(1, 40))
        if f.bad_crc_every and n % f.bad_crc_every == 0:
            broken = raw[:-2] + bytes([raw[-2] ^ 0xFF, raw[-1]])
            return cobs.encode_firmware(broken) + b"\x00"
        if f.truncate_every and n % f.truncate_every == 0:
            return wire[: max(1, len(wire) // 2)]
        return wire

    def unplug(self, *, mid_frame: bool = False) -> None:
        """Pull the cable; with ``mid_frame`` the last frame is cut half-way first."""
        if mid_frame and isinstance(self.board, SideA | SideB):
            hook = self.board.frame_hook
            self.board.frame_hook = lambda raw, wire: wire[: len(wire) // 2]
            if isinstance(self.board, SideA):
                self.board.send_telemetry(0)
            else:
                self.board.send_transport_status(0)
            self.board.frame_hook = hook
        self.port.unplug()

    def replug(self) -> None:
        """Plug back in: a USB board powers up again (seq restarts, HELLO after the boot delay)."""
        self.port.plug()
        self.board.boot()
        self._wake.set()

    def stall(self, stalled: bool) -> None:
        self.port.stall(stalled)

    # --- main loop ------------------------------------------------------------------------------
    def _on_host_data(self, data: bytes) -> None:
        self.board.receive(data)
        self._wake.set()

    async def _run(self) -> None:
        f = self.faults
        now = self.clock()
        next_stall = now + f.stall_every_s if f.stall_every_s else math.inf
        next_unplug = now + f.unplug_every_s if f.unplug_every_s else math.inf
        stall_end = unplug_end = math.inf
        while True:
            now = self.clock()
            if now >= next_stall:
                self.stall(True)
                stall_end, next_stall = now + f.stall_for_s, math.inf
            if now >= stall_end:
                self.stall(False)
                stall_end, next_stall = math.inf, now + f.stall_every_s
            if now >= next_unplug:
                self.unplug(mid_frame=True)
                unplug_end, next_unplug = now + f.unplug_for_s, math.inf
            if now >= unplug_end:
                self.replug()
                unplug_end, next_unplug = math.inf, now + f.unplug_every_s
            delay = 0.05 if not self.port.plugged or self.port.stalled else self.board.tick()
            delay = min(delay, next_stall - now, stall_end - now, next_unplug - now, unplug_end - now)
            self._wake.clear()
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that races a wake.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.001, delay)):
                    await self._wake.wait()


def _json_float(value: object, default: float) -> float:
    """ArduinoJson ``params["x"] | 0.1f``: numbers convert, anything else takes the default."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def _json_int(value: object, default: int) -> int:
    """ArduinoJson 6 ``params["value"] | 0``: only a JSON integer is an int; ``true`` and ``1.0`` are not."""
    if isinstance(value, bool) or not isinstance(value, int):
        return default
    return value


def _atoi(text: str) -> int:
    digits = ""
    for ch in text.strip():
        if ch.isdigit() or (not digits and ch in "+-"):
            digits += ch
        else:
            break
    try:
        return int(digits)
    except ValueError:
        return 0
