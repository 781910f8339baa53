"""A minimal sysfs tree for one USB serial adapter, laid out as the Linux kernel lays it out.

There is no USB here and no udevd, so the udev tests run the real `udevadm test` (the real rules engine
with its usb_id and path_id builtins) against this tree bind-mounted over /sys in a private mount
namespace. The attribute names and uevent keys are the kernel's (Documentation/ABI/stable/sysfs-bus-usb,
drivers/usb/core/sysfs.c); systemd's own udev tests use the same technique
(SYSTEMD_DEVICE_VERIFY_SYSFS=0 lets sd-device accept a directory that is not a real sysfs mount).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PCI_CONTROLLER = "devices/pci0000:00/0000:00:14.0"


@dataclass(frozen=True, slots=True)
class UsbSerialAdapter:
    """One USB device with one serial interface, as its descriptors describe it."""

    vendor_id: str
    product_id: str
    serial: str | None
    manufacturer: str
    product: str
    # "ttyACM" for CDC-ACM devices (cdc_acm driver), "ttyUSB" for USB-UART bridges (usb-serial drivers).
    tty_kind: str
    driver: str
    port: int = 2


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _subsystem(directory: Path, target: str) -> None:
    os.symlink(f"/sys/{target}", directory / "subsystem")


def build(root: Path, adapter: UsbSerialAdapter) -> str:
    """Lay out `adapter` under `root` (mounted at /sys later); return the tty's syspath under /sys."""
    for directory in ("bus/pci", "bus/usb", "bus/usb-serial", "class/tty"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    pci = root / PCI_CONTROLLER
    _write(pci / "uevent", "DRIVER=xhci_hcd\nPCI_CLASS=C0330\nPCI_SLOT_NAME=0000:00:14.0\n")
    _subsystem(pci, "bus/pci")
    hub = pci / "usb1"
    _write(hub / "uevent", "DEVTYPE=usb_device\nDRIVER=usb\n")
    _subsystem(hub, "bus/usb")

    name = f"1-{adapter.port}"
    device = hub / name
    _write(
        device / "uevent",
        f"MAJOR=189\nMINOR={adapter.port - 1}\nDEVNAME=bus/usb/001/{adapter.port:03d}\nDEVTYPE=usb_device\n"
        f"DRIVER=usb\nPRODUCT={adapter.vendor_id}/{adapter.product_id}/100\nBUSNUM=001\n"
        f"DEVNUM={adapter.port:03d}\n",
    )
    _subsystem(device, "bus/usb")
    attributes = {
        "idVendor": adapter.vendor_id,
        "idProduct": adapter.product_id,
        "manufacturer": adapter.manufacturer,
        "product": adapter.product,
        "bcdDevice": "0100",
        "busnum": "1",
        "devnum": str(adapter.port),
    }
    if adapter.serial is not None:
        attributes["serial"] = adapter.serial
    for key, value in attributes.items():
        _write(device / key, value + "\n")

    interface = device / f"{name}:1.0"
    acm = adapter.tty_kind == "ttyACM"
    _write(
        interface / "uevent",
        f"DEVTYPE=usb_interface\nDRIVER={adapter.driver}\n"
        f"PRODUCT={adapter.vendor_id}/{adapter.product_id}/100\nINTERFACE={'2/2/0' if acm else '255/0/0'}\n",
    )
    _subsystem(interface, "bus/usb")
    interface_attributes = {
        "bInterfaceClass": "02" if acm else "ff",
        "bInterfaceSubClass": "02" if acm else "00",
        "bInterfaceProtocol": "00",
        "bInterfaceNumber": "00",
    }
    for key, value in interface_attributes.items():
        _write(interface / key, value + "\n")

    tty_name = f"{adapter.tty_kind}0"
    if acm:
        tty = interface / "tty" / tty_name
        major = 166
    else:
        # usb-serial puts a port device between the interface and the tty (drivers/usb/serial/bus.c).
        port = interface / tty_name
        _write(port / "uevent", f"DRIVER={adapter.driver}\n")
        _subsystem(port, "bus/usb-serial")
        tty = port / "tty" / tty_name
        major = 188
    _write(tty / "uevent", f"MAJOR={major}\nMINOR=0\nDEVNAME={tty_name}\n")
    _write(tty / "dev", f"{major}:0\n")
    _subsystem(tty, "class/tty")
    relative = tty.relative_to(root)
    os.symlink(os.path.relpath(tty, root / "class" / "tty"), root / "class" / "tty" / tty_name)
    return f"/sys/{relative}"


def node_numbers(adapter: UsbSerialAdapter) -> tuple[str, int, int]:
    """The /dev node name and its major/minor (Documentation/admin-guide/devices.txt: 166 ACM, 188 USB)."""
    return (f"{adapter.tty_kind}0", 166 if adapter.tty_kind == "ttyACM" else 188, 0)
