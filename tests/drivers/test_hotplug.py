"""Hot-plug: the queue source drives the same watcher path as udev; ports matched; unknown ports probed
read-only; a re-plugged board is reopened at once and keeps its device_id."""

from __future__ import annotations

import asyncio

from drivers.device import LinkState
from drivers.hotplug import (
    KNOWN_BOARDS,
    HotplugEvent,
    HotplugSource,
    PortRule,
    PortWatcher,
    ProbeResult,
    PyudevSource,
    QueueSource,
    event_from_properties,
    match_event,
    probe_port,
)
from drivers.link import Backoff
from drivers.mycobrain import IdentityRegistry, MycoBrain
from firmware_stubs.mycobrain import MycoBrainStub
from tests.drivers.test_mycobrain import Listener
from tests.recording import wait_for as until

UDEV_PROPS = {  # as 60-serial.rules and usb_id set them for an ESP32-S3 on its native USB port
    "ID_BUS": "usb",
    "ID_VENDOR_ID": "303a",
    "ID_MODEL_ID": "1001",
    "ID_SERIAL_SHORT": "34:85:18:A1:B2:C3",
    "ID_VENDOR": "Espressif",
    "ID_MODEL": "USB_JTAG_serial_debug_unit",
    "DEVLINKS": "/dev/serial/by-path/pci-0000:00:14.0-usb-0:2:1.0 "
    "/dev/serial/by-id/usb-Espressif_USB_JTAG_serial_debug_unit_34:85:18:A1:B2:C3-if00",
}


def test_udev_properties_become_an_event_and_match_known_boards() -> None:
    event = event_from_properties("add", "/dev/ttyACM0", UDEV_PROPS)
    assert event.vid == 0x303A and event.pid == 0x1001 and event.serial == "34:85:18:A1:B2:C3"
    assert event.by_id == ("/dev/serial/by-id/usb-Espressif_USB_JTAG_serial_debug_unit_34:85:18:A1:B2:C3-if00",)
    assert match_event(event) == ("mycobrain",)
    ch340 = HotplugEvent("add", "/dev/ttyUSB0", vid=0x1A86, pid=0x7523)
    assert len(match_event(ch340)) > 1  # a bridge chip: the firmware behind it must be probed
    rule = PortRule("bme688", by_id_glob="/dev/serial/by-id/usb-1a86*")
    assert match_event(HotplugEvent("add", "/dev/ttyUSB1", by_id=("/dev/serial/by-id/usb-1a86_x",)), [rule]) == (
        "bme688",
    )
    assert match_event(HotplugEvent("add", "/dev/ttyS0")) == ()
    assert {(m.vid, m.pid) for m in KNOWN_BOARDS} >= {(0x303A, 0x1001), (0x10C4, 0xEA60), (0x1A86, 0x7523)}


async def test_pyudev_source_starts_without_blocking_and_closes() -> None:
    source = PyudevSource(coldplug=True)
    assert isinstance(source, HotplugSource)
    async with source:
        await asyncio.sleep(0.05)  # no udevd here: the monitor is real but nothing arrives
    events = [e async for e in source]  # closed: iteration ends after what was queued
    assert all(e.action == "add" and e.devnode.startswith("/dev/") for e in events)
    assert [e async for e in source] == []


async def test_hotplug_add_reopens_a_backing_off_board_at_once_with_the_same_id() -> None:
    listener = Listener()
    source = QueueSource()
    async with MycoBrainStub(boot_delay_s=0.05, seed=11) as stub:
        board = MycoBrain(port=stub.path, listener=listener, stream_rate_hz=10, registry=IdentityRegistry(),
                          backoff=Backoff(base_s=30.0, cap_s=30.0))
        async with board, PortWatcher(source) as watcher:
            watcher.watch(stub.path, board.wake)
            await until(lambda: board.state is LinkState.STREAMING)
            first_id = board.device_id
            stub.unplug(mid_frame=True)
            await until(lambda: board.state is LinkState.BACKOFF)
            stub.replug()
            devnode = stub.port.tty_name
            assert devnode is not None
            count = len(listener.readings)
            source.add(devnode, by_id=(stub.path,), vid=0x303A, pid=0x1001)  # what udev would report
            await until(lambda: len(listener.readings) > count, timeout=2.0)  # not 30 s
            assert board.device_id == first_id and watcher.stats["woken"] == 1
            assert board.stats()["disconnects"] == 1


async def test_unknown_port_is_probed_read_only_and_identified() -> None:
    source = QueueSource()
    found: list[tuple[HotplugEvent, ProbeResult]] = []
    async with MycoBrainStub(boot_delay_s=0.4, seed=12) as stub:
        async with PortWatcher(source, on_unknown=lambda e, r: found.append((e, r)), probe_s=2.0):
            source.add(stub.path)  # no VID/PID: nothing claims it
            await until(lambda: len(found) == 1)
        assert found[0][1].kind == "mycobrain"
        hello = found[0][1].detail["hello"]
        assert isinstance(hello, dict) and hello["device_id"] == "mycobrain-188534"
        assert stub.port.stats["bytes_in"] == 0  # not one byte was written to the unknown port


async def test_probe_of_a_silent_port_reports_nothing_and_known_ids_are_matched() -> None:
    async with MycoBrainStub(boot_hello=False, rate_hz=0.1, boot_delay_s=0.0, seed=13) as stub:
        result = await probe_port(stub.path, duration_s=0.3)
        assert result.kind is None
        assert stub.port.stats["bytes_in"] == 0
    matched: list[tuple[str, ...]] = []
    source = QueueSource()
    async with PortWatcher(source, on_match=lambda e, kinds: matched.append(kinds)) as watcher:
        source.add("/dev/ttyACM7", vid=0x303A, pid=0x1001)
        source.remove("/dev/ttyACM7")
        await until(lambda: watcher.stats["events"] == 2)
    assert matched == [("mycobrain",)]
