"""The MycoBrain stubs behave as the firmware does, seen from a raw pty (no host driver involved)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tty
from typing import Any

from drivers import cobs, mdp
from firmware_stubs.mycobrain import FaultPlan, MycoBrainStub, device_id_from_mac
from tests.recording import wait_for as until


class RawHost:
    """Opens the stub's port like a host, decodes with the codec, and writes arbitrary bytes."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        self.decoder = mdp.FrameDecoder()
        self.frames: list[mdp.Frame] = []
        self.errors: list[mdp.MdpError] = []
        self.raw = bytearray()
        asyncio.get_running_loop().add_reader(self.fd, self._read)

    def _read(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            data = os.read(self.fd, 4096)
            self.raw += data
            for item in self.decoder.feed(data):
                (self.frames if isinstance(item, mdp.Frame) else self.errors).append(item)  # type: ignore[arg-type]

    def command(self, seq: int, name: str, params: dict[str, Any], *, dst: int = 0xA1, flags: int = 1) -> None:
        frame = mdp.Frame(mdp.MsgType.COMMAND, seq=seq, flags=flags, src=0xC0, dst=dst,
                          payload=mdp.dump_payload({"cmd": name, "params": params}))
        os.write(self.fd, mdp.encode(frame))

    def answers(self, seq: int) -> list[mdp.Frame]:
        return [f for f in self.frames if f.ack == seq]

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


def test_device_id_is_the_reversed_vendor_prefix_in_unpadded_hex() -> None:
    assert device_id_from_mac(bytes.fromhex("348518a1b2c3")) == "mycobrain-188534"
    assert device_id_from_mac(bytes.fromhex("0a0b0c000000")) == "mycobrain-c0b0a"


async def test_boot_hello_seq_and_hello_answer_without_ack() -> None:
    async with MycoBrainStub(boot_delay_s=0.3, seed=1) as stub:
        host = RawHost(stub.path)
        try:
            await until(lambda: len(host.frames) >= 1)
            hello = host.frames[0]
            assert (hello.msg_type, hello.seq, hello.ack, hello.src, hello.dst) == (0x06, 1, 0, 0xA1, 0xC0)
            assert hello.json()["device_id"] == "mycobrain-188534"
            assert hello.json()["firmware_version"] == "side-a-mdp-2.1.0"
            host.command(77, "hello", {})
            await until(lambda: len(host.answers(77)) >= 1)
            await asyncio.sleep(0.1)
            answers = host.answers(77)
            assert [f.msg_type for f in answers] == [0x06]  # a HELLO, and no ACK frame
            assert answers[0].seq == 2
        finally:
            host.close()


async def test_read_sensors_health_acks_and_ignored_frames() -> None:
    async with MycoBrainStub(boot_delay_s=0.0, seed=2) as stub:
        host = RawHost(stub.path)
        try:
            host.command(10 + 1, "read_sensors", {}, flags=0)
            host.command(12, "health", {}, flags=1)
            host.command(13, "read_sensors", {}, dst=0xFF)  # broadcast: ignored
            host.command(14, "output_control", {f"k{i}": i for i in range(40)})  # > 32 JSON values: dropped
            host.command(15, "stream_sensors", {"rate_hz": 0.01})  # clamped to 0.1 Hz
            host.command(16, "output_control", {"id": "mosfet1", "value": True})  # bool reads as 0
            await until(lambda: len(host.answers(16)) == 1)
            assert [f.msg_type for f in host.answers(11)] == [0x01]
            assert [(f.msg_type, f.flags) for f in host.answers(12)] == [(0x01, 0), (0x03, 0x02)]
            assert host.answers(13) == [] and host.answers(14) == []
            assert host.answers(15)[0].json() == {"success": True, "message": "stream_interval_updated"}
            assert stub.side_a is not None and stub.side_a.interval_s == 10.0
            assert host.answers(16)[0].json()["message"] == "mosfet_updated" and stub.side_a.mosfets[0] == 0
            telemetry = host.answers(11)[0].json()
            assert set(telemetry) == {"type", "uptime_s", "estop", "analog", "bme688"}
            assert all(isinstance(v, int) for v in telemetry["analog"].values())
            assert set(telemetry["bme688"]["a"]) >= {"temperature_c", "humidity_pct", "pressure_hpa", "gas_ohm"}
            seqs = [f.seq for f in host.frames]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # every frame takes the next seq
        finally:
            host.close()


async def test_a_frame_with_a_newline_byte_is_eaten_by_the_text_parser() -> None:
    async with MycoBrainStub(boot_delay_s=0.0, seed=3) as stub:
        host = RawHost(stub.path)
        try:
            seq = 10  # 0x0A in the header: the board cuts the frame at that byte
            host.command(seq, "clear_estop", {})
            host.command(21, "clear_estop", {})
            await until(lambda: len(host.answers(21)) == 1)
            assert host.answers(seq) == []
            os.write(host.fd, b"fmt json\r\n")
            await until(lambda: b"fmt json" in host.raw)
        finally:
            host.close()


async def test_estop_event_then_ack_and_streaming_drifts() -> None:
    async with MycoBrainStub(boot_delay_s=0.0, seed=4, rate_hz=20) as stub:
        host = RawHost(stub.path)
        try:
            host.command(30, "estop", {})
            await until(lambda: len(host.answers(30)) == 2)
            event, ack = host.answers(30)
            assert event.msg_type == 0x05 and event.json() == {"event": "estop_activated"}
            assert ack.msg_type == 0x03 and ack.json() == {"success": True, "message": "estop_activated"}
            await until(lambda: sum(f.msg_type == 1 for f in host.frames) >= 6)
            temps = [f.json()["bme688"]["a"]["temperature_c"] for f in host.frames if f.msg_type == 1]
            assert len(set(temps)) > 1 and all(15 < t < 30 for t in temps)
            assert all(f.json()["estop"] is True for f in host.frames if f.msg_type == 1)
        finally:
            host.close()


async def test_side_b_answers_transport_commands_and_forwards_to_side_a() -> None:
    async with MycoBrainStub(side="b", boot_delay_s=0.0, seed=5) as stub:
        host = RawHost(stub.path)
        try:
            host.command(40, "transport_status", {}, dst=0xB1)
            host.command(41, "lora_send", {"qos": 1}, dst=0xB1)
            host.command(42, "hello", {}, dst=0xB1)
            host.command(43, "read_sensors", {}, dst=0xA1)
            await until(lambda: len(host.answers(43)) >= 3)
            assert [(f.msg_type, f.src) for f in host.answers(40)] == [(0x05, 0xB1), (0x03, 0xB1)]
            assert host.answers(41)[0].json()["message"] == "missing_payload"
            assert host.answers(42)[0].json()["message"] == "unknown_transport_command"
            kinds = sorted((f.src, f.msg_type) for f in host.answers(43))
            assert kinds == [(0xA1, 0x01), (0xA1, 0x03), (0xB1, 0x03)]  # telemetry, ACK, forwarded ACK
        finally:
            host.close()


async def test_fault_injection_corrupts_frames_as_configured() -> None:
    faults = FaultPlan(bad_crc_every=2, garbage_every=3, truncate_every=5)
    async with MycoBrainStub(boot_delay_s=0.0, seed=6, rate_hz=50, faults=faults) as stub:
        host = RawHost(stub.path)
        try:
            await until(lambda: len(host.errors) >= 8 and len(host.frames) >= 4)
            assert {e.kind for e in host.errors} >= {"crc"}
        finally:
            host.close()
        stub.unplug()
        assert not is_link(stub.path)
        stub.replug()
        assert is_link(stub.path)


def test_firmware_cobs_matches_the_library_decode() -> None:
    data = b"\x01" * 254
    assert cobs.encode_firmware(data) == b"\xff" + data + b"\x01"
    assert cobs.decode(cobs.encode_firmware(data)) == data


async def test_cli_prints_the_port_path_and_runs_until_stopped() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "firmware_stubs", "mycobrain", "--side", "a", "--rate", "5", "--seed", "9",
        "--boot-delay", "0.05", "--truncate-every", "1000", stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        path = (await proc.stdout.readline()).decode().strip()
        assert is_link(path)
        host = RawHost(path)
        try:
            host.command(50, "health", {})
            await until(lambda: len(host.answers(50)) == 2)
        finally:
            host.close()
    finally:
        proc.terminate()
        assert await proc.wait() == 0  # SIGTERM is an orderly stop


def is_link(path: str) -> bool:
    return os.path.islink(path)


async def test_boards_started_with_different_seeds_have_different_device_ids() -> None:
    """The demo starts one stub process per board, each with its own seed: a shared id would make the
    daemon qualify one board's id as a collision on every start."""
    ids: list[str] = []
    for seed in ("0", "1", "2"):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "firmware_stubs", "mycobrain", "--side", "a", "--seed", seed,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            host = RawHost((await proc.stdout.readline()).decode().strip())
            try:
                host.command(5, "hello", {})
                await until(lambda host=host: bool(host.answers(5)))  # type: ignore[misc]
                ids.append(host.answers(5)[0].json()["device_id"])
            finally:
                host.close()
        finally:
            proc.terminate()
            assert await proc.wait() == 0
    assert ids[0] == "mycobrain-188534"
    assert len(set(ids)) == 3
