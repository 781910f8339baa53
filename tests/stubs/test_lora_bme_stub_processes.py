"""The stubs run as separate processes, exactly as the daemon's demo mode and real boards appear."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from drivers.bme688_bridge import Bme688Bridge
from drivers.device import LinkState
from drivers.link import Backoff
from drivers.rui3 import Rui3Modem
from tests.recording import Recorder, wait_for


@asynccontextmanager
async def stub_process(*args: str) -> AsyncIterator[str]:
    """Start ``python -m firmware_stubs.<module> ...`` as a direct child; yield its port path; stop it by PID."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert line, (await proc.stderr.read()).decode() if proc.stderr else "no output"
        yield line.decode().strip()
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def test_bme688_stub_process_feeds_the_driver() -> None:
    rec = Recorder()
    async with (
        stub_process("firmware_stubs.bme688", "--rate-ms", "50", "--serial", "00BEEF", "--duration", "20") as path,
        Bme688Bridge(path, rec, rate_ms=50, backoff=Backoff(base_s=0.05, cap_s=0.2)) as bridge,
    ):
        await wait_for_long(lambda: len(rec.readings) >= 2)
        assert bridge.device_id == "bme688-00beef"
        assert rec.readings[-1].valid
        assert 20 < rec.readings[-1].quantities["temperature_c"].value < 30


async def test_rui3_stub_process_delivers_remote_telemetry() -> None:
    rec = Recorder()
    async with (
        stub_process(
            "firmware_stubs.rui3", "--telemetry-every", "0.2", "--device-id", "mycobrain-c0ffee", "--duration", "20"
        ) as path,
        Rui3Modem(path, rec, backoff=Backoff(base_s=0.05, cap_s=0.2)) as modem,
    ):
        await wait_for_long(lambda: modem.state is LinkState.STREAMING)
        await wait_for_long(lambda: any(r.sensor == "lora_link" for r in rec.readings))
        assert {r.device_id for r in rec.readings} == {"mycobrain-c0ffee"}


async def wait_for_long(cond: Callable[[], bool], timeout: float = 8.0) -> None:
    await wait_for(cond, timeout)
