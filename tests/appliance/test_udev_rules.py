"""udev rules for the known boards, run through the real udev rules engine against a fake sysfs."""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.appliance import fake_sysfs
from tests.appliance.conftest import SYSTEMD_DIR, quiet_env, require_tool

RULES = SYSTEMD_DIR / "99-mycoedge.rules"

ESP32_S3 = fake_sysfs.UsbSerialAdapter(
    "303a", "1001", "F4:12:FA:00:11:22", "Espressif", "USB JTAG/serial debug unit", "ttyACM", "cdc_acm"
)
CP210X = fake_sysfs.UsbSerialAdapter(
    "10c4", "ea60", "0001", "Silicon Labs", "CP2102 USB to UART Bridge Controller", "ttyUSB", "cp210x"
)
CH340 = fake_sysfs.UsbSerialAdapter("1a86", "7523", None, "QinHeng", "USB Serial", "ttyUSB", "ch341-uart")
FTDI = fake_sysfs.UsbSerialAdapter("0403", "6001", "A10KZP7X", "FTDI", "FT232R USB UART", "ttyUSB", "ftdi_sio")
CH9102 = fake_sysfs.UsbSerialAdapter("1a86", "55d4", "5434012345", "WCH", "USB Single Serial", "ttyACM", "cdc_acm")
ARDUINO_UNO = fake_sysfs.UsbSerialAdapter(
    "2341", "0043", "85736323838351F0B1C1", "Arduino (www.arduino.cc)", "Uno", "ttyACM", "cdc_acm"
)


@dataclass(frozen=True, slots=True)
class UdevOutcome:
    properties: dict[str, str]
    log: str
    node_group: str
    node_mode: str
    links: dict[str, str]


def _run_udev(tmp_path: Path, adapter: fake_sysfs.UsbSerialAdapter) -> UdevOutcome:
    """`udevadm test` for the adapter's tty in a private mount namespace: fake /sys, empty /dev and /run.

    Only this file is in /etc/udev/rules.d; Debian's own rules (/usr/lib/udev/rules.d) run as on a real
    system. Nothing of it is visible outside the namespace.
    """
    udevadm = require_tool("udevadm")
    unshare = require_tool("unshare")
    if os.geteuid() != 0:
        pytest.skip("a private mount namespace needs root (CI runs these tests as root)")
    sysfs = tmp_path / "sys"
    syspath = fake_sysfs.build(sysfs, adapter)
    rules_dir = tmp_path / "rules.d"
    rules_dir.mkdir()
    (rules_dir / RULES.name).write_text(RULES.read_text())
    node, major, minor = fake_sysfs.node_numbers(adapter)
    log_file = tmp_path / "udev.log"
    script = f"""
set -e
mount --bind {shlex.quote(str(sysfs))} /sys
mount -t tmpfs tmpfs /dev
mount -t tmpfs tmpfs /run
mkdir /run/udev
mount --bind {shlex.quote(str(rules_dir))} /etc/udev/rules.d
mknod /dev/{node} c {major} {minor}
{udevadm} test --action=add {shlex.quote(syspath)} 2>{shlex.quote(str(log_file))} || true
echo "@@NODE $(stat -c '%G %a' /dev/{node})"
for link in $(find /dev/mycoedge -type l 2>/dev/null); do echo "@@LINK $link $(readlink "$link")"; done
echo "@@LOG"
cat {shlex.quote(str(log_file))}
"""
    env = quiet_env()
    env["SYSTEMD_DEVICE_VERIFY_SYSFS"] = "0"
    result = subprocess.run(
        [unshare, "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    if result.returncode != 0 and "unshare failed" in result.stderr:
        pytest.skip(f"no mount namespaces here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    stdout, _, log = result.stdout.partition("@@LOG\n")
    properties: dict[str, str] = {}
    links: dict[str, str] = {}
    node_group = node_mode = ""
    for line in stdout.splitlines():
        if line.startswith("@@NODE "):
            node_group, node_mode = line.split()[1:3]
        elif line.startswith("@@LINK "):
            _, link, target = line.split(" ", 2)
            links[link] = target
        elif "=" in line and not line.startswith(" "):
            key, _, value = line.partition("=")
            properties[key] = value
    return UdevOutcome(properties, log + result.stderr, node_group, node_mode, links)


@pytest.mark.parametrize(
    ("adapter", "board"),
    [(ESP32_S3, "esp32s3"), (CP210X, "cp210x"), (CH9102, "ch9102"), (FTDI, "ftdi")],
    ids=["esp32-s3", "cp210x", "ch9102", "ftdi"],
)
def test_known_board_gets_dialout_a_stable_link_and_a_systemd_tag(
    tmp_path: Path, adapter: fake_sysfs.UsbSerialAdapter, board: str
) -> None:
    outcome = _run_udev(tmp_path, adapter)
    node = fake_sysfs.node_numbers(adapter)[0]
    assert (outcome.node_group, outcome.node_mode) == ("dialout", "660")
    assert outcome.links == {f"/dev/mycoedge/{adapter.serial}": f"../{node}"}
    assert f"/dev/mycoedge/{adapter.serial}" in outcome.properties["DEVLINKS"].split()
    assert ":systemd:" in outcome.properties["TAGS"]
    assert outcome.properties["MYCOEDGE_BOARD"] == board
    # ModemManager would otherwise write AT probes into the board.
    assert outcome.properties["ID_MM_DEVICE_IGNORE"] == "1"


def test_board_without_a_serial_number_is_named_by_its_usb_port(tmp_path: Path) -> None:
    outcome = _run_udev(tmp_path, CH340)
    assert outcome.properties["MYCOEDGE_BOARD"] == "ch340"
    assert (outcome.node_group, outcome.node_mode) == ("dialout", "660")
    path_tag = outcome.properties["ID_PATH_TAG"]
    assert path_tag.startswith("pci-0000_00_14_0-usb-")
    assert outcome.links == {f"/dev/mycoedge/path-{path_tag}": "../ttyUSB0"}


def test_unknown_board_is_left_alone(tmp_path: Path) -> None:
    outcome = _run_udev(tmp_path, ARDUINO_UNO)
    assert outcome.links == {}
    assert "MYCOEDGE_BOARD" not in outcome.properties
    assert "ID_MM_DEVICE_IGNORE" not in outcome.properties
    # Debian's own rules still apply: ttyACM nodes are dialout anyway, only our extras are absent.
    assert outcome.properties["ID_VENDOR_ID"] == "2341"


def test_rules_file_parses_without_diagnostics(tmp_path: Path) -> None:
    outcome = _run_udev(tmp_path, ESP32_S3)
    assert f"Reading rules file: /etc/udev/rules.d/{RULES.name}" in outcome.log
    # Parse-time complaints are logged as "<file>:<line> <message>" without a device prefix.
    complaints = [line for line in outcome.log.splitlines() if line.startswith(f"/etc/udev/rules.d/{RULES.name}:")]
    assert complaints == []


def test_rules_cover_every_board_the_drivers_claim() -> None:
    """A board the drivers recognise on hot-plug must also get dialout, its stable link and the tag."""
    from drivers.hotplug import KNOWN_BOARDS

    text = RULES.read_text()
    for matcher in KNOWN_BOARDS:
        assert f'ATTRS{{idVendor}}=="{matcher.vid:04x}", ATTRS{{idProduct}}=="{matcher.pid:04x}"' in text


def test_rules_cover_every_board_the_issue_names() -> None:
    text = RULES.read_text()
    for vendor, product in [("303a", "1001"), ("10c4", "ea60"), ("1a86", "7523"), ("0403", "6001")]:
        assert f'ATTRS{{idVendor}}=="{vendor}", ATTRS{{idProduct}}=="{product}"' in text
