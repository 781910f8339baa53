"""The interface every device driver offers the daemon, whatever its wire protocol.

The daemon treats a MycoBrain, a BME688 bridge and a LoRa modem alike through ``Device``: it enters the
device as an async context manager (which starts its supervised link), receives readings, events and
state changes through a ``DeviceListener``, and sends commands with ``command``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, Self, runtime_checkable

from drivers.model import Reading


class LinkState(StrEnum):
    """Where a supervised link is in its life; mirrors aioesphomeapi's explicit reconnect states."""

    CLOSED = "closed"  # not started, or stopped for good
    OPENING = "opening"  # trying to open the port
    HANDSHAKE = "handshake"  # port open, waiting for the device to identify itself
    STREAMING = "streaming"  # identified; readings flow and commands are accepted
    BACKOFF = "backoff"  # the link failed; waiting (capped, jittered) before reopening


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """Something a device reported that is not a reading (estop, transport status, id collision...)."""

    device_id: str
    name: str
    data: Mapping[str, object] = field(default_factory=dict)
    ts: float = 0.0


@dataclass(frozen=True, slots=True)
class CommandResult:
    """A device's answer to a command: its ACK (``ok``) or NACK, with the device's own message."""

    ok: bool
    message: str
    data: Mapping[str, object] = field(default_factory=dict)
    retry_after_s: float | None = None  # set when the driver refused to send yet (e.g. LoRa duty cycle)


class DeviceListener(Protocol):
    """What the daemon gives a device so it can report; every method runs on the loop and must not block."""

    def on_reading(self, reading: Reading) -> None: ...

    def on_event(self, event: DeviceEvent) -> None: ...

    def on_state(self, device: Device) -> None: ...


@runtime_checkable
class Device(Protocol):
    """One supervised device link. ``device_id`` is the board's own identity once known, else None."""

    kind: str
    port: str

    @property
    def device_id(self) -> str | None: ...

    @property
    def state(self) -> LinkState: ...

    def stats(self) -> Mapping[str, int]:
        """Counters for /metrics: frames, bytes, and each kind of error (crc, cobs, json, timeout...)."""
        ...

    def describe(self) -> Mapping[str, object]:
        """Identity and status for the HTTP API (firmware, role, sensors, last readings...)."""
        ...

    def wake(self) -> None:
        """Cut a backoff short: a hot-plug ``add`` for this port arrived."""
        ...

    async def command(
        self, name: str, params: Mapping[str, object], *, timeout: float | None = None
    ) -> CommandResult:
        """Send a command and wait for the device's answer.

        Raises ``NotReadyError`` before identification, ``LinkError`` when the link is down and
        ``DeviceTimeoutError`` when no answer came after the driver's retries.
        """
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...
