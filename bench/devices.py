"""Many simulated MycoBrains streaming into one driver process: gaps, CPU, and per-frame decode cost.

    .venv/bin/python -m bench.devices --boards 64 --rate 10 --duration 60

The boards run in a child process (``python -m firmware_stubs mycobrain --count N``), each on its own pty,
exactly as USB boards appear; this process runs one ``MycoBrain`` per port, which sets the stream rate
with ``stream_sensors`` as it would on real hardware. After every board streams and a warm-up, it
measures for ``--duration`` seconds: readings, board frames, sequence gaps (frames the board numbered but
we never decoded), and this process's CPU time as a share of one core (the target is <= 25 %).

Decode cost per frame is measured in the same run on telemetry frames of the same shape: the full
codec path (``FrameDecoder.feed`` + ``json``) next to the raw baseline (``cobs.decode`` + ``crc_hqx``
only), and the end-to-end driver cost (CPU seconds / frames) from the live run.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections import Counter

from cobs import cobs as raw_cobs  # type: ignore[import-untyped]

from drivers import mdp
from drivers.device import Device, DeviceEvent, LinkState
from drivers.link import Backoff
from drivers.model import Reading
from drivers.mycobrain import IdentityRegistry, MycoBrain


class CountingListener:
    def __init__(self) -> None:
        self.readings: Counter[str] = Counter()
        self.events: Counter[str] = Counter()

    def on_reading(self, reading: Reading) -> None:
        self.readings[reading.device_id] += 1

    def on_event(self, event: DeviceEvent) -> None:
        self.events[event.name] += 1

    def on_state(self, device: Device) -> None:
        pass


def _proc_cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115 - one short read
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime (proc(5))


def decode_cost(frames: int = 20000) -> tuple[float, float, float]:
    """Microseconds per telemetry frame: full decode + JSON, codec without JSON, raw COBS+CRC."""
    from firmware_stubs.mycobrain import SideA

    wires: list[bytes] = []
    board = SideA(wires.append, seed=1, boot_delay_s=0.0)
    for _ in range(200):
        board.send_telemetry(0)
    stream = b"".join(wires)
    chunks = [w[:-1] for w in wires]
    reps = max(1, frames // len(wires))

    decoder = mdp.FrameDecoder()
    started = time.perf_counter()
    for _ in range(reps):
        for item in decoder.iter_feed(stream):
            assert isinstance(item, mdp.Frame)
            item.json()
    full = (time.perf_counter() - started) / (reps * len(wires)) * 1e6

    started = time.perf_counter()
    for _ in range(reps):
        for item in decoder.iter_feed(stream):
            assert isinstance(item, mdp.Frame)
    codec = (time.perf_counter() - started) / (reps * len(wires)) * 1e6

    started = time.perf_counter()
    for _ in range(reps):
        for chunk in chunks:
            raw = raw_cobs.decode(chunk)
            binascii.crc_hqx(raw[:-2], 0xFFFF)
    raw_us = (time.perf_counter() - started) / (reps * len(wires)) * 1e6
    return full, codec, raw_us


async def run(boards: int, rate: float, duration: float, warmup: float) -> int:
    workdir = tempfile.mkdtemp(prefix="bench-devices-")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "firmware_stubs", "mycobrain", "--count", str(boards), "--dir", workdir,
        "--boot-delay", "0.2", stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    paths = [(await proc.stdout.readline()).decode().strip() for _ in range(boards)]
    listener = CountingListener()
    registry = IdentityRegistry()
    devices = [MycoBrain(port=p, listener=listener, stream_rate_hz=rate, registry=registry,
                         usb_serial=f"bench-{i}", backoff=Backoff(base_s=0.2, cap_s=1.0))
               for i, p in enumerate(paths)]
    status = 0
    try:
        for device in devices:
            await device.__aenter__()
        deadline = time.monotonic() + 30
        while any(d.state is not LinkState.STREAMING for d in devices):
            if time.monotonic() > deadline:
                print("not every board reached STREAMING in 30 s")
                return 1
            await asyncio.sleep(0.1)
        await asyncio.sleep(warmup)

        def snapshot() -> tuple[int, int, int, int]:
            stats = [d.stats() for d in devices]
            return (sum(s.get("frames", 0) for s in stats), sum(s.get("frames_missed", 0) for s in stats),
                    sum(s.get("seq_gaps", 0) for s in stats),
                    sum(v for s in stats for k, v in s.items() if k.startswith("err_")))

        frames0, missed0, gaps0, errors0 = snapshot()
        readings0 = sum(listener.readings.values())
        cpu0, wall0, stub0 = time.process_time(), time.perf_counter(), _proc_cpu_s(proc.pid)
        await asyncio.sleep(duration)
        cpu1, wall1, stub1 = time.process_time(), time.perf_counter(), _proc_cpu_s(proc.pid)
        frames1, missed1, gaps1, errors1 = snapshot()
        readings = sum(listener.readings.values()) - readings0
        wall = wall1 - wall0
        cpu_pct = (cpu1 - cpu0) / wall * 100
        frames = frames1 - frames0
        expected = boards * rate * wall
        print(f"bench.devices: {boards} boards x {rate:g} Hz for {wall:.1f} s")
        print(f"  frames decoded: {frames} (expected ~{expected:.0f}), readings: {readings}")
        print(f"  sequence gaps: {gaps1 - gaps0} (frames missed: {missed1 - missed0}), "
              f"decode errors: {errors1 - errors0}")
        print(f"  driver process CPU: {cpu_pct:.1f} % of one core (target <= 25 %); "
              f"stub process (boards): {(stub1 - stub0) / wall * 100:.1f} %")
        per_frame_us = (cpu1 - cpu0) / max(1, frames) * 1e6
        full, codec, raw_us = decode_cost()
        print(f"  per frame, end to end in the driver (CPU/frames): {per_frame_us:.1f} us")
        print(f"  per frame, codec: FrameDecoder+json {full:.1f} us, FrameDecoder {codec:.1f} us; "
              f"baseline cobs.decode+crc_hqx {raw_us:.1f} us")
        if gaps1 - gaps0 or cpu_pct > 25:
            status = 1
    finally:
        for device in devices:
            await device.__aexit__(None, None, None)
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        with contextlib.suppress(OSError):
            os.rmdir(workdir)  # the stubs removed their links; the directory is empty
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boards", type=int, default=64)
    parser.add_argument("--rate", type=float, default=10.0, help="stream rate asked of each board, Hz")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds (acceptance: 60)")
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args(argv)
    return asyncio.run(run(args.boards, args.rate, args.duration, args.warmup))


if __name__ == "__main__":
    sys.exit(main())
