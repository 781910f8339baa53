"""A faulty board behind the whole daemon: errors counted per device in /metrics, telemetry resumes on replug."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import aiohttp

from firmware_stubs.mycobrain import FaultPlan, MycoBrainStub
from tests.harness import node_config, running_node


def _counter(metrics: str, device_prefix: str, counter: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        match = re.match(r'mycoedge_device_link_total\{counter="([^"]+)",device="([^"]+)"\} (\S+)', line)
        if match and match.group(1) == counter and match.group(2).startswith(device_prefix):
            total += float(match.group(3))
    return total


async def test_garbage_bad_crc_truncation_and_unplug_are_counted_and_survived(tmp_path: Path) -> None:
    faults = FaultPlan(garbage_every=3, bad_crc_every=4, truncate_every=5)
    async with MycoBrainStub(side="a", path=str(tmp_path / "board"), rate_hz=10.0, seed=3, faults=faults,
                             boot_delay_s=0.1) as board:
        raw = node_config(tmp_path, node={"id": "faulty"},
                          devices=[{"kind": "mycobrain", "port": board.path, "stream_rate_hz": 10.0}])
        async with running_node(raw) as running:
            url = running.url
            async with aiohttp.ClientSession() as session:
                async def metrics() -> str:
                    async with session.get(url + "/metrics") as resp:
                        return await resp.text()

                deadline = time.monotonic() + 30
                text = ""
                while time.monotonic() < deadline:
                    try:
                        text = await metrics()
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.05)
                        continue
                    if all(_counter(text, "mycobrain-", c) > 0 for c in ("err_crc", "err_cobs", "readings")):
                        break
                    await asyncio.sleep(0.1)
                assert _counter(text, "mycobrain-", "err_crc") > 0, text
                assert _counter(text, "mycobrain-", "readings") > 0

                fleet = running.node.fleet
                assert fleet is not None

                def readings() -> int:
                    return sum(int(e.device.stats().get("readings", 0)) for e in fleet.entries if e.device)

                board.unplug(mid_frame=True)
                await asyncio.sleep(1.0)
                board.replug()
                back = time.monotonic()
                before = readings()
                for _ in range(200):
                    if readings() > before:
                        break
                    await asyncio.sleep(0.01)
                assert readings() > before
                assert time.monotonic() - back < 2.0, "telemetry must resume within 2 s of the board coming back"
                text = await metrics()
                assert _counter(text, "mycobrain-", "disconnects") >= 1
