"""The MycoBrain driver against an independent board emulator and against the firmware stubs, on ptys."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time
import tty
from typing import Any

import pytest

from drivers.device import Device, LinkState
from drivers.errors import CodecError, DeviceTimeoutError, NotReadyError
from drivers.link import Backoff
from drivers.mycobrain import IdentityRegistry, MycoBrain
from firmware_stubs.mycobrain import FaultPlan, MycoBrainStub
from tests.recording import Recorder
from tests.recording import wait_for as until


class Listener(Recorder):
    def names(self) -> list[str]:
        return [e.name for e in self.events]


FAST = Backoff(base_s=0.05, cap_s=0.2)


# --- an independent board, built from PROTOCOLS.md section 1 with struct and a bitwise CRC ---------
def spec_crc(data: bytes) -> int:
    crc = 0xFFFF  # CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final xor
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def spec_cobs_encode(data: bytes) -> bytes:
    out, block = bytearray(), bytearray()
    for byte in data:
        if byte == 0:
            out += bytes([len(block) + 1]) + block
            block.clear()
        else:
            block.append(byte)
            if len(block) == 254:
                out += b"\xff" + block
                block.clear()
    out += bytes([len(block) + 1]) + block
    return bytes(out)


def spec_cobs_decode(data: bytes) -> bytes:
    out, i = bytearray(), 0
    while i < len(data):
        code = data[i]
        assert code != 0 and i + code <= len(data) + 1
        out += data[i + 1 : i + code]
        i += code
        if code != 0xFF and i < len(data):
            out.append(0)
    return bytes(out)


class SpecBoard:
    """A minimal Side A written from the spec alone; records every frame the host sends."""

    def __init__(self, *, device_id: str = "mycobrain-abcdef", ack_delay_s: float = 0.0,
                 duplicate_acks: bool = False, ignore: frozenset[str] = frozenset()) -> None:
        self.ignore = ignore
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.device_id = device_id
        self.ack_delay_s = ack_delay_s
        self.duplicate_acks = duplicate_acks
        self.seq = 1
        self.rx = bytearray()
        self.commands: list[dict[str, Any]] = []
        self.rate_hz = 0.1
        self.acks_sent_at: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None

    def frame(self, msg_type: int, ack: int, flags: int, payload: dict[str, Any]) -> bytes:
        body = struct.pack("<HBBIIBBBB", 0xA15A, 1, msg_type, self.seq, ack, flags, 0xA1, 0xC0, 0)
        body += json.dumps(payload).encode()
        self.seq += 1
        raw = body + struct.pack("<H", spec_crc(body))
        return spec_cobs_encode(raw) + b"\x00"

    def send(self, msg_type: int, ack: int, flags: int, payload: dict[str, Any]) -> None:
        os.write(self.master, self.frame(msg_type, ack, flags, payload))

    def on_readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except OSError:
            return
        self.rx += data
        while 0 in self.rx:
            end = self.rx.index(0)
            encoded, self.rx = bytes(self.rx[:end]), self.rx[end + 1 :]
            self.handle(encoded)

    def handle(self, encoded: bytes) -> None:
        raw = spec_cobs_decode(encoded)
        magic, version, msg_type, seq, ack, flags, src, dst, rsv = struct.unpack_from("<HBBIIBBBB", raw)
        crc_ok = struct.unpack("<H", raw[-2:])[0] == spec_crc(raw[:-2])
        payload = json.loads(raw[16:-2])
        self.commands.append({"magic": magic, "version": version, "type": msg_type, "seq": seq, "ack": ack,
                              "flags": flags, "src": src, "dst": dst, "rsv": rsv, "crc_ok": crc_ok,
                              "newline_free": b"\n" not in encoded and b"\r" not in encoded,
                              "payload": payload, "at": time.monotonic()})
        loop = asyncio.get_running_loop()
        loop.call_later(self.ack_delay_s, self.answer, seq, payload)

    def answer(self, seq: int, payload: dict[str, Any]) -> None:
        cmd = payload["cmd"]
        if cmd in self.ignore:
            return
        if cmd == "hello":
            self.send(0x06, seq, 0, {"device_id": self.device_id, "firmware_version": "spec-1", "role": "x",
                                     "sensors": ["bme688_a"], "capabilities": []})
            return
        if cmd == "stream_sensors":
            self.rate_hz = payload["params"]["rate_hz"]
        self.acks_sent_at[seq] = time.monotonic()
        self.send(0x03, seq, 0x02, {"success": True, "message": f"{cmd}_ok"})
        if self.duplicate_acks:
            self.send(0x03, seq, 0x02, {"success": True, "message": f"{cmd}_ok"})

    async def __aenter__(self) -> SpecBoard:
        asyncio.get_running_loop().add_reader(self.master, self.on_readable)
        self._task = asyncio.get_running_loop().create_task(self._stream())
        return self

    async def _stream(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            if time.monotonic() - last < 1.0 / self.rate_hz:
                continue
            last = time.monotonic()
            self.send(0x01, 0, 0, {"type": "telemetry", "uptime_s": 5, "estop": False,
                                   "analog": {"ai1": 100, "ai2": 200, "ai3": 300, "ai4": 400},
                                   "bme688": {"a": {"temperature_c": 21.5, "humidity_pct": 40.0,
                                                    "pressure_hpa": 1000.5, "gas_ohm": 50000}}})

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with __import__("contextlib").suppress(asyncio.CancelledError):
            await self._task
        asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)
        os.close(self.slave)


async def test_independent_board_is_understood_and_commands_are_valid_frames() -> None:
    listener = Listener()
    async with SpecBoard() as board, MycoBrain(port=board.path, listener=listener, stream_rate_hz=20,
                                               hello_wait_s=0.1, backoff=FAST) as mb:
        await until(lambda: mb.state is LinkState.STREAMING)
        assert isinstance(mb, Device)
        assert mb.device_id == "mycobrain-abcdef"
        result = await mb.command("output_control", {"id": "mosfet2", "value": 1})
        assert result.ok and result.message == "output_control_ok"
        await until(lambda: any(r.sensor == "bme688_a" for r in listener.readings))
    hello, stream, control = board.commands[0], board.commands[1], board.commands[-1]
    assert hello["payload"] == {"cmd": "hello", "params": {}}
    assert stream["payload"] == {"cmd": "stream_sensors", "params": {"rate_hz": 20}}
    for cmd in board.commands:
        assert (cmd["magic"], cmd["version"], cmd["type"], cmd["src"], cmd["rsv"]) == (0xA15A, 1, 0x02, 0xC0, 0)
        assert cmd["dst"] == 0xA1 and cmd["crc_ok"] and cmd["newline_free"]
        assert cmd["flags"] & 0x01  # ACK_REQUESTED
    assert control["payload"] == {"cmd": "output_control", "params": {"id": "mosfet2", "value": 1}}
    bme = next(r for r in listener.readings if r.sensor == "bme688_a")
    assert bme.quantities["temperature_c"].value == 21.5 and bme.quantities["temperature_c"].unit == "°C"
    assert bme.quantities["gas_ohm"].unit == "Ω" and bme.device_id == "mycobrain-abcdef"
    analog = next(r for r in listener.readings if r.sensor == "analog")
    assert analog.quantities["ai4"].value == 400 and analog.quantities["ai4"].unit == "count"


async def test_one_command_in_flight_per_leg_and_duplicate_acks_are_idempotent() -> None:
    listener = Listener()
    async with SpecBoard(ack_delay_s=0.15, duplicate_acks=True) as board, MycoBrain(
        port=board.path, listener=listener, hello_wait_s=0.1, backoff=FAST
    ) as mb:
        await until(lambda: mb.state is LinkState.STREAMING)
        first, second = await asyncio.gather(
            mb.command("output_control", {"id": "mosfet1", "value": 1}),
            mb.command("output_control", {"id": "mosfet1", "value": 0}),
        )
        assert first.ok and second.ok
        stats = mb.stats()
    a, b = board.commands[-2], board.commands[-1]
    assert b["at"] >= board.acks_sent_at[a["seq"]]  # the second left only after the first was answered
    assert stats["duplicate_acks"] >= 2 and stats["acks"] >= 3


async def test_hello_is_asked_when_the_boot_hello_was_lost_and_rate_is_set() -> None:
    listener = Listener()
    async with MycoBrainStub(boot_hello=False, boot_delay_s=0.05, seed=1) as stub, MycoBrain(
        port=stub.path, listener=listener, stream_rate_hz=10, hello_wait_s=0.2, backoff=FAST
    ) as mb:
        await until(lambda: mb.state is LinkState.STREAMING)
        assert mb.device_id == "mycobrain-188534"
        assert mb.stats()["hello_requests"] == 1
        assert stub.side_a is not None and stub.side_a.interval_s == pytest.approx(0.1)
        start = len(listener.readings)
        await asyncio.sleep(0.6)
        frames = {r.seq for r in listener.readings[start:] if r.sensor == "bme688_a"}
        assert len(frames) >= 4  # ~10 Hz
        info = mb.describe()
        assert info["firmware_version"] == "side-a-mdp-2.1.0" and "bme688_b" in info["last_readings"]


async def test_commands_acks_nacks_estop_and_integer_values() -> None:
    listener = Listener()
    async with MycoBrainStub(boot_delay_s=0.05, seed=2) as stub, MycoBrain(
        port=stub.path, listener=listener, stream_rate_hz=5, backoff=FAST
    ) as mb:
        await until(lambda: mb.state is LinkState.STREAMING)
        assert stub.side_a is not None
        ok = await mb.command("output_control", {"id": "mosfet3", "value": 1.0})
        assert ok.ok and ok.message == "mosfet_updated" and stub.side_a.mosfets[2] == 1
        with pytest.raises(CodecError):
            await mb.command("output_control", {"id": "mosfet3", "value": 0.5})
        bad = await mb.command("output_control", {"id": "relay9", "value": 1})
        assert not bad.ok and bad.message == "invalid_output_id"
        unknown = await mb.command("self_destruct", {})
        assert not unknown.ok and unknown.message == "unknown_command"
        reading = await mb.command("read_sensors", {})
        assert reading.ok and reading.data["type"] == "telemetry"
        estop = await mb.command("estop", {})
        assert estop.ok and "estop_activated" in listener.names()
        refused = await mb.command("output_control", {"id": "mosfet1", "value": 1})
        assert not refused.ok and refused.message == "estop_active"
        assert (await mb.command("clear_estop", {})).ok
        assert mb.describe()["nack_reasons"] == {"invalid_output_id": 1, "unknown_command": 1, "estop_active": 1}
        assert mb.stats()["nacks"] == 3


async def test_retries_on_ack_timeout_then_gives_up() -> None:
    listener = Listener()
    async with MycoBrainStub(boot_delay_s=0.05, seed=3) as stub, MycoBrain(
        port=stub.path, listener=listener, ack_timeout_s=0.2, retries=3, stall_timeout_s=30, backoff=FAST
    ) as mb:
        await until(lambda: mb.state is LinkState.STREAMING)
        stub.stall(True)
        asyncio.get_running_loop().call_later(0.3, stub.stall, False)
        result = await mb.command("clear_estop", {})
        assert result.ok and mb.stats()["retries"] >= 1 and mb.stats()["ack_timeout"] >= 1
        stub.stall(True)
        with pytest.raises(DeviceTimeoutError):
            await mb.command("clear_estop", {})
        sent = mb.stats()["commands_sent"]
        with pytest.raises(DeviceTimeoutError):
            await mb.command("lora_send", {"payload": "aa", "qos": 0})
        assert mb.stats()["commands_sent"] == sent + 1  # never repeated: the board would send twice
        stub.stall(False)


async def test_faults_are_counted_and_telemetry_resumes_after_replug() -> None:
    listener = Listener()
    faults = FaultPlan(garbage_every=4, bad_crc_every=5, truncate_every=7)
    async with MycoBrainStub(boot_delay_s=0.05, seed=4, faults=faults) as stub, MycoBrain(
        port=stub.path, listener=listener, stream_rate_hz=20, backoff=Backoff(base_s=5.0, cap_s=5.0),
        ack_timeout_s=0.3
    ) as mb:
        await until(lambda: mb.state is LinkState.STREAMING)
        await until(lambda: mb.stats().get("err_crc", 0) >= 2 and mb.stats().get("err_cobs", 0) >= 1)
        stub.faults.garbage_every = stub.faults.bad_crc_every = stub.faults.truncate_every = 0
        stub.unplug(mid_frame=True)
        await until(lambda: mb.state is LinkState.BACKOFF)
        stub.replug()
        mb.wake()  # what a hot-plug ``add`` does
        replugged = time.monotonic()
        count = len(listener.readings)
        await until(lambda: len(listener.readings) > count + 4, timeout=2.0)
        assert time.monotonic() - replugged < 2.0
        assert mb.device_id == "mycobrain-188534"
        stats = mb.stats()
    assert stats["disconnects"] == 1 and stats["opens"] == 2
    assert stats["err_crc"] >= 2


async def test_byte_at_a_time_drip_and_stall_keep_the_driver_running() -> None:
    listener = Listener()
    async with MycoBrainStub(boot_delay_s=0.05, seed=5, faults=FaultPlan(drip_delay_s=0.0)) as stub, MycoBrain(
        port=stub.path, listener=listener, stream_rate_hz=5, stall_timeout_s=0.4, backoff=FAST
    ) as mb:
        await until(lambda: mb.state is LinkState.STREAMING)
        await until(lambda: len(listener.readings) >= 8)
        stub.stall(True)
        await until(lambda: mb.stats().get("stall", 0) >= 1)
        stub.stall(False)
        count = len(listener.readings)
        await until(lambda: len(listener.readings) > count + 4, timeout=2.0)
        assert "stalled" in listener.names()


async def test_side_b_transport_commands_and_side_a_behind_it() -> None:
    listener = Listener()
    async with MycoBrainStub(side="b", boot_delay_s=0.05, seed=6) as stub, MycoBrain(
        port=stub.path, listener=listener, stream_rate_hz=5, backoff=FAST
    ) as mb:
        await until(lambda: mb.state is LinkState.STREAMING)
        assert mb.device_id == "mycobrain-188534"  # the board's own id, from the Side A behind Side B
        status = await mb.command("transport_status", {})
        assert status.ok and status.data["event"] == "transport_status"
        assert (await mb.command("lora_send", {"payload": "0102", "qos": 1})).message == "lora_payload_accepted"
        missing = await mb.command("lora_send", {"qos": 1})
        assert not missing.ok and missing.message == "missing_payload"
        assert (await mb.command("wifi_connect", {"ssid": "", "pass": ""})).message == "missing_ssid"
        assert (await mb.command("output_control", {"id": "mosfet1", "value": 1})).message == "mosfet_updated"
        assert mb.stats()["forwarded_acks"] >= 1
        # Side B's own HELLO went out at power-up, before the port was opened (pyserial flushes input
        # on open, as a real board's boot HELLO is lost); its frames still show the leg.
        assert mb.describe()["legs"] == ["side_a", "side_b"]
        assert "transport_status" in listener.names()


async def test_legacy_ndjson_mode_is_detected_and_read_only() -> None:
    listener = Listener()
    async with MycoBrainStub(legacy=True, rate_hz=10, seed=7) as stub, MycoBrain(
        port=stub.path, listener=listener, backoff=FAST
    ) as mb:
        await until(lambda: len(listener.readings) >= 3)
        assert mb.describe()["mode"] == "ndjson" and mb.state is LinkState.STREAMING
        assert mb.device_id == "mycobrain-188534"
        assert "legacy_mode" in listener.names()
        bme = next(r for r in listener.readings if r.sensor == "bme688_a")
        assert bme.quantities["pressure_hpa"].unit == "hPa"
        with pytest.raises(NotReadyError):
            await mb.command("read_sensors", {})
        assert stub.port.stats["bytes_in"] == 0  # never written to


async def test_colliding_board_ids_are_qualified_and_kept_across_replug() -> None:
    listener = Listener()
    registry = IdentityRegistry()
    mac = bytes.fromhex("348518000001")
    async with (
        MycoBrainStub(boot_delay_s=0.05, seed=8, mac=mac) as one,
        MycoBrainStub(boot_delay_s=0.05, seed=9, mac=mac) as two,
        MycoBrain(port=one.path, listener=listener, registry=registry, stream_rate_hz=10, backoff=FAST) as a,
    ):
        await until(lambda: a.state is LinkState.STREAMING)
        async with MycoBrain(port=two.path, listener=listener, registry=registry, usb_serial="SN2",
                             stream_rate_hz=10, backoff=Backoff(base_s=5, cap_s=5)) as b:
            await until(lambda: b.state is LinkState.STREAMING)
            assert a.device_id == "mycobrain-188534" and b.device_id == "mycobrain-188534@SN2"
            assert b.stats()["id_collisions"] == 1 and "id_collision" in listener.names()
            two.unplug()
            await until(lambda: b.state is LinkState.BACKOFF)
            two.replug()
            b.wake()
            await until(lambda: b.state is LinkState.STREAMING)
            assert b.device_id == "mycobrain-188534@SN2"
            await until(lambda: len({r.device_id for r in listener.readings}) == 2)
            ids = {r.device_id for r in listener.readings}
            assert ids == {"mycobrain-188534", "mycobrain-188534@SN2"}


async def test_commands_before_identification_are_refused() -> None:
    mb = MycoBrain(port="/nonexistent/tty", listener=Listener(), backoff=Backoff(base_s=5))
    async with mb:
        await until(lambda: mb.state is LinkState.BACKOFF)
        with pytest.raises(Exception) as info:
            await mb.command("read_sensors", {})
        assert info.type.__name__ in {"LinkError", "NotReadyError"}
        assert mb.state in {LinkState.OPENING, LinkState.BACKOFF}


async def test_telemetry_resumes_within_2_s_of_replug_with_default_backoff_and_real_boot_delay() -> None:
    listener = Listener()
    async with MycoBrainStub(seed=14) as stub, MycoBrain(port=stub.path, listener=listener, stream_rate_hz=10) as mb:
        await until(lambda: mb.state is LinkState.STREAMING)
        stub.unplug(mid_frame=True)
        await asyncio.sleep(2.5)  # long enough for the backoff to reach its cap
        assert mb.state in {LinkState.BACKOFF, LinkState.OPENING}
        stub.replug()  # the board powers up: HELLO only after its 1.2 s boot, rate back to 0.1 Hz
        replugged = time.monotonic()
        count = len(listener.readings)
        await until(lambda: len(listener.readings) > count, timeout=3.0)
        assert time.monotonic() - replugged < 2.0
        # The half frame written just before the cut is either read and counted as truncated, or
        # discarded by the tty hang-up; either way the link counts the loss of the device.
        assert mb.stats()["disconnects"] == 1 and mb.stats().get("err_truncated", 0) <= 1


async def test_a_board_that_ignores_stream_sensors_still_streams_and_takes_commands() -> None:
    listener = Listener()
    async with SpecBoard(ignore=frozenset({"stream_sensors"})) as board, MycoBrain(
        port=board.path, listener=listener, hello_wait_s=0.05, ack_timeout_s=0.3, backoff=FAST
    ) as mb:
        await until(lambda: mb.state is LinkState.STREAMING, timeout=2.0)
        started = time.monotonic()
        assert (await mb.command("clear_estop", {})).ok
        assert time.monotonic() - started < 1.0  # the leg is not held by the unanswered configuration
        assert mb.stats()["err_configure"] >= 1


async def test_a_side_b_alone_is_identified_by_its_port_and_takes_transport_commands() -> None:
    listener = Listener()
    async with MycoBrainStub(side="b", side_a_behind=False, heartbeat_s=0.2, seed=15) as stub, MycoBrain(
        port=stub.path, listener=listener, usb_serial="B-ONLY", hello_wait_s=0.05, hello_timeout_s=0.3,
        ack_timeout_s=0.2, retries=0, backoff=FAST
    ) as mb:
        await until(lambda: mb.state is LinkState.STREAMING, timeout=4.0)
        assert mb.device_id == "mycobrain-sideb-B-ONLY"
        assert (await mb.command("ble_advertise", {"en": True, "interval_ms": 100})).message == "ble_advertising_on"
        assert mb.describe()["transport_status"]["ble_ready"] in (True, False)
