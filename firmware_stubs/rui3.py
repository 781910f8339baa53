"""A RUI3 LoRa modem (RAK3172 class) in P2P mode on a pseudo-terminal, joined to a simulated radio.

Speaks the AT set the driver uses, answering as RUI3 firmware does: ``OK`` or an ``AT_*_ERROR`` line per
command, ``+EVT:TXP2P DONE`` once a ``AT+PSEND`` packet's airtime has passed, and
``+EVT:RXP2P:<rssi>:<snr>:<HEX>`` for each packet heard while in receive mode. ``AT+PSEND`` during
continuous receive answers ``AT_BUSY_ERROR`` (the driver stops receive first). ``reset()`` reboots the
module: the banner is printed and receive mode is off until the host configures it again.
Faults: ``garbage``, ``bad_line`` (malformed RXP2P), ``busy`` (refuse the next command), plus the pty's
stall and unplug.

Run by hand: ``python -m firmware_stubs.rui3 --path /tmp/rak --telemetry-every 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Self

from drivers.lora_airtime import LoRaSettings
from drivers.nmea import LineSplitter
from firmware_stubs.pty import PtyPort
from firmware_stubs.radio import LinkQuality, RadioChannel, RadioNode, RemoteMycoBrain, stream_remote_until_signalled

BANNER = (
    "RAKwireless RAK3172-E Example",
    "------------------------------------------------------",
    "Version: RUI_4.0.6_RAK3172-E",
    "Current Work Mode: LoRa P2P.",
)
VALID_BW_KHZ = (125, 250, 500)


class Rui3ModemStub:
    """See the module docstring; ``radio`` is this modem's node on a ``RadioChannel``."""

    def __init__(
        self,
        channel: RadioChannel,
        *,
        path: str | None = None,
        deveui: str = "AC1F09FFFE057110",
        quality: LinkQuality | None = None,
        boot_banner: bool = True,
    ) -> None:
        self.port = PtyPort(path, on_data=self._on_host_data)
        self.radio = RadioNode(channel, "rui3", quality=quality)
        self.radio.listening = False
        self.radio.on_packet = self._on_packet
        self.deveui = deveui
        self._boot_banner = boot_banner
        self._splitter = LineSplitter()
        self.nwm = 0
        self.p2p: tuple[int, int, int, int, int, int] = (868000000, 7, 125, 0, 8, 14)
        self.receiving = False
        self.commands: list[str] = []
        self.sent: list[bytes] = []
        self.busy_next = 0
        self.resets = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def path(self) -> str:
        return self.port.path

    async def __aenter__(self) -> Self:
        self.port.plug()
        if self._boot_banner:
            self._print_banner()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.port.close()

    # --- faults -------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Reboot: print the banner; receive mode is lost (P2P settings persist in flash, as in RUI3)."""
        self.resets += 1
        self.receiving = False
        self.radio.listening = False
        self._splitter = LineSplitter()
        self._print_banner()

    def garbage(self, n: int = 16) -> None:
        self.port.write_garbage(n)

    def bad_line(self) -> None:
        self._say("+EVT:RXP2P:-70:x:ZZ")

    # --- host side ----------------------------------------------------------------------------------
    def _print_banner(self) -> None:
        for line in BANNER:
            self._say(line)

    def _say(self, line: str) -> None:
        self.port.write(line.encode("ascii") + b"\r\n")

    def _on_host_data(self, data: bytes) -> None:
        for raw in self._splitter.feed(data):
            text = raw.decode("ascii", errors="replace").strip()
            if text:
                self._handle(text)

    def _handle(self, text: str) -> None:
        self.commands.append(text)
        if self.busy_next > 0:
            self.busy_next -= 1
            self._say("AT_BUSY_ERROR")
            return
        upper = text.upper()
        if upper == "AT":
            self._say("OK")
        elif upper == "AT+DEVEUI=?":
            self._say(f"AT+DEVEUI={self.deveui}")
            self._say("OK")
        elif upper.startswith("AT+NWM="):
            value = text.split("=", 1)[1]
            if value not in ("0", "1", "2"):
                self._say("AT_PARAM_ERROR")
                return
            self.nwm = int(value)
            self._say("OK")
        elif upper.startswith("AT+P2P="):
            self._set_p2p(text.split("=", 1)[1])
        elif upper.startswith("AT+PRECV="):
            self._precv(text.split("=", 1)[1])
        elif upper.startswith("AT+PSEND="):
            self._psend(text.split("=", 1)[1])
        elif upper.startswith("AT+") and upper.endswith("?"):
            self._say("OK")
        else:
            self._say("AT_COMMAND_NOT_FOUND")

    def _set_p2p(self, value: str) -> None:
        try:
            freq, sf, bw, cr, preamble, power = (int(x) for x in value.split(":"))
        except ValueError:
            self._say("AT_PARAM_ERROR")
            return
        ok = (
            150_000_000 <= freq <= 960_000_000
            and 5 <= sf <= 12
            and bw in VALID_BW_KHZ
            and 0 <= cr <= 3
            and 5 <= preamble <= 65535
            and 5 <= power <= 22
        )
        if not ok or self.nwm != 0:
            self._say("AT_PARAM_ERROR" if not ok else "AT_MODE_NO_SUPPORT")
            return
        self.p2p = (freq, sf, bw, cr, preamble, power)
        self._say("OK")

    def _precv(self, value: str) -> None:
        if not value.isdigit() or int(value) > 65535 or self.nwm != 0:
            self._say("AT_PARAM_ERROR")
            return
        self.receiving = int(value) != 0
        self.radio.listening = self.receiving
        self._say("OK")

    def _psend(self, value: str) -> None:
        if self.nwm != 0:
            self._say("AT_MODE_NO_SUPPORT")
            return
        if self.receiving:
            self._say("AT_BUSY_ERROR")
            return
        try:
            payload = bytes.fromhex(value)
        except ValueError:
            self._say("AT_PARAM_ERROR")
            return
        if not 0 < len(payload) <= 255:
            self._say("AT_PARAM_ERROR")
            return
        self._say("OK")
        self.sent.append(payload)
        airtime = self.radio.transmit(payload)
        task = asyncio.get_running_loop().create_task(self._tx_done(airtime * self.radio.channel.time_scale))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tx_done(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._say("+EVT:TXP2P DONE")

    def _on_packet(self, payload: bytes, quality: LinkQuality) -> None:
        if self.receiving:
            self._say(f"+EVT:RXP2P:{quality.rssi_dbm}:{quality.snr_db}:{payload.hex().upper()}")


async def run(argv: list[str] | None = None) -> None:
    """A modem plus a remote MycoBrain sending telemetry over the simulated channel, until signalled."""
    parser = argparse.ArgumentParser(prog="python -m firmware_stubs rui3", description=__doc__.split("\n")[0])
    parser.add_argument("--path", help="symlink to create for the modem's port")
    parser.add_argument("--sf", type=int, default=7)
    parser.add_argument("--loss", type=float, default=0.0, help="probability a packet is lost")
    parser.add_argument("--corruption", type=float, default=0.0, help="probability a packet is corrupted")
    parser.add_argument("--delay", type=float, default=0.0, help="extra propagation delay in seconds")
    parser.add_argument("--telemetry-every", type=float, default=10.0, help="remote telemetry period (s)")
    parser.add_argument("--device-id", default="mycobrain-188534", help="the remote board's device_id")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds")
    args = parser.parse_args(argv)
    channel = RadioChannel(
        settings=LoRaSettings(sf=args.sf), loss=args.loss, corruption=args.corruption, delay_s=args.delay
    )
    remote = RemoteMycoBrain(channel, device_id=args.device_id)
    async with Rui3ModemStub(channel, path=args.path) as modem:
        print(modem.path, flush=True)
        remote.send_hello()
        await stream_remote_until_signalled(remote, every_s=args.telemetry_every, duration_s=args.duration)
    channel.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m firmware_stubs rui3`` (the coordinator wires the subcommand)."""
    asyncio.run(run(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
