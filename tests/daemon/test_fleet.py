"""Fleet logic that needs no serial port: command payload parsing, id collisions, the store sink's retry."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Self

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.config import DeviceConfig
from daemon.devices import CommandPayloadError, DeviceFleet, parse_command
from drivers.device import CommandResult, DeviceListener, LinkState
from drivers.hotplug import QueueSource
from drivers.model import Quantity, Reading


@given(st.binary(max_size=200))
def test_any_bytes_parse_to_a_command_or_a_typed_error(payload: bytes) -> None:
    try:
        name, params = parse_command(payload)
    except CommandPayloadError:
        return
    assert isinstance(name, str) and name and isinstance(params, dict)


@given(st.text(min_size=1, max_size=20), st.dictionaries(st.text(max_size=5), st.integers(), max_size=4))
def test_well_formed_commands_round_trip(name: str, params: dict[str, int]) -> None:
    import json

    assert parse_command(json.dumps({"cmd": name, "params": params}).encode()) == (name, params)


class BoardDevice:
    """Stands in for a serial driver behind the real ``Device`` interface (no port needed for fleet logic)."""

    kind = "mycobrain"

    def __init__(self, config: DeviceConfig, listener: DeviceListener, device_id: str) -> None:
        self.port = config.port
        self.listener = listener
        self._id = device_id
        self.woken = 0

    @property
    def device_id(self) -> str | None:
        return self._id

    @property
    def state(self) -> LinkState:
        return LinkState.STREAMING

    def stats(self) -> Mapping[str, int]:
        return {"frames": 1}

    def describe(self) -> Mapping[str, object]:
        return {"device_id": self._id}

    def wake(self) -> None:
        self.woken += 1

    async def command(self, name: str, params: Mapping[str, object], *, timeout: float | None = None) -> CommandResult:
        return CommandResult(ok=True, message=f"{name}_ok")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


class FlakySink:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.stored: list[Reading] = []

    async def store_readings(self, readings: Sequence[Reading]) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("disk hiccup")
        self.stored.extend(readings)


def _reading(device_id: str, seq: int) -> Reading:
    return Reading(device_id, "bme688_a", {"temperature_c": Quantity(20.0, "°C")}, ts=1.0, seq=seq)


def _fleet(sink: Any, ids: dict[str, str], hotplug: Any = None) -> tuple[DeviceFleet, dict[str, BoardDevice]]:
    made: dict[str, BoardDevice] = {}

    def factory(config: DeviceConfig, listener: DeviceListener) -> BoardDevice:
        made[config.port] = BoardDevice(config, listener, ids[config.port])
        return made[config.port]

    configs = [DeviceConfig(kind="mycobrain", port=p) for p in ids]
    fleet = DeviceFleet(configs, factories={"mycobrain": factory}, topic_base="t/n", node_id="n", broker=None,
                        sink=sink, hotplug=hotplug)
    return fleet, made


async def test_a_remote_board_with_a_local_boards_id_is_kept_apart() -> None:
    sink = FlakySink(0)
    fleet, made = _fleet(sink, {"/dev/usb0": "mycobrain-188534", "/dev/lora0": "rui3-1"})
    async with fleet:
        made["/dev/usb0"].listener.on_reading(_reading("mycobrain-188534", 1))
        made["/dev/lora0"].listener.on_reading(_reading("mycobrain-188534", 1))  # heard over the air
        made["/dev/lora0"].listener.on_reading(_reading("mycobrain-aaaaaa", 1))
    ids = sorted(r.device_id for r in sink.stored)
    assert ids == ["mycobrain-188534", "mycobrain-188534@rui3-1", "mycobrain-aaaaaa"]
    assert set(fleet.remote) == {"mycobrain-188534@rui3-1", "mycobrain-aaaaaa"}


async def test_a_failing_store_loses_no_reading() -> None:
    sink = FlakySink(failures=2)
    fleet, made = _fleet(sink, {"/dev/usb0": "b"})
    async with fleet:
        for seq in range(10):
            made["/dev/usb0"].listener.on_reading(_reading("b", seq))
        for _ in range(100):
            if len(sink.stored) == 10:
                break
            await asyncio.sleep(0.05)
    assert [r.seq for r in sink.stored] == list(range(10))


async def test_devices_are_found_by_id_name_or_port() -> None:
    fleet, _ = _fleet(None, {"/dev/serial/by-id/usb-x-if00": "mycobrain-1"})
    async with fleet:
        entry = fleet.find("mycobrain-1")
        assert entry is not None
        assert fleet.find("usb-x-if00") is entry
        assert fleet.find("nope") is None
        result = await fleet.command(entry, "health", {})
        assert result.ok


@pytest.mark.parametrize("payload", [b"[]", b'{"cmd": 3}', b'{"cmd": "x", "params": []}', b"\x00\xff"])
def test_malformed_commands_name_the_problem(payload: bytes) -> None:
    with pytest.raises(CommandPayloadError):
        parse_command(payload)


async def test_hotplug_add_wakes_the_watched_link_and_reports_unconfigured_boards() -> None:
    source = QueueSource()
    fleet, made = _fleet(None, {"/dev/ttyACM0": "b"}, hotplug=source)
    async with fleet:
        source.add("/dev/ttyACM0", vid=0x303A, pid=0x1001)
        source.add("/dev/ttyACM7", vid=0x303A, pid=0x1001, serial="34:85:18:00:00:07",
                   by_id=("/dev/serial/by-id/usb-Espressif-if00",))
        for _ in range(100):
            if made["/dev/ttyACM0"].woken and fleet.unconfigured:
                break
            await asyncio.sleep(0.01)
    assert made["/dev/ttyACM0"].woken == 1
    assert fleet.unconfigured["/dev/serial/by-id/usb-Espressif-if00"]["kinds"] == ["mycobrain"]
