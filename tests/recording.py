"""A DeviceListener that records what a driver reports, and a bounded wait for pty-driven state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from drivers.device import Device, DeviceEvent, LinkState
from drivers.model import Reading


@dataclass
class Recorder:
    readings: list[Reading] = field(default_factory=list)
    events: list[DeviceEvent] = field(default_factory=list)
    states: list[LinkState] = field(default_factory=list)

    def on_reading(self, reading: Reading) -> None:
        self.readings.append(reading)

    def on_event(self, event: DeviceEvent) -> None:
        self.events.append(event)

    def on_state(self, device: Device) -> None:
        self.states.append(device.state)


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # noqa: ASYNC110 - polls state that pty callbacks change, bounded by the timeout
            await asyncio.sleep(0.01)
