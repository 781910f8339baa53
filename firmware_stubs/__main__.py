"""Run simulated boards by hand: ``python -m firmware_stubs mycobrain [options]``.

Other stubs: ``python -m firmware_stubs bme688|lora-gateway|rui3 ...`` (their own options).

Prints the path of each board's port (a stable symlink to its pty), one per line, then runs until
SIGINT/SIGTERM or ``--duration``. Example::

    python -m firmware_stubs mycobrain --side a --rate 1 --seed 7 --garbage-every 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import signal
import sys

from firmware_stubs.mycobrain import BOOT_DELAY_S, DEFAULT_RATE_HZ, FaultPlan, MycoBrainStub


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m firmware_stubs", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="device", required=True)
    mb = sub.add_parser("mycobrain", help="MycoBrain Side A / Side B (MDP v1 over a pty)")
    mb.add_argument("--side", choices=["a", "b"], default="a", help="Side A (sensors) or Side B (transport)")
    mb.add_argument("--rate", type=float, default=DEFAULT_RATE_HZ,
                    help="initial stream rate in Hz (firmware default 0.1; the host usually sets it)")
    mb.add_argument("--seed", type=int, default=0, help="seeds telemetry drift, faults and the board's MAC")
    mb.add_argument("--path", help="symlink to create for the port (default: a temporary path)")
    mb.add_argument("--count", type=int, default=1, help="run this many boards (seeds seed..seed+count-1)")
    mb.add_argument("--dir", help="with --count: directory for the boards' symlinks")
    mb.add_argument("--legacy", action="store_true", help="speak the legacy NDJSON mode instead of MDP")
    mb.add_argument("--no-boot-hello", action="store_true", help="lose the boot HELLO (host must ask)")
    mb.add_argument("--boot-delay", type=float, default=BOOT_DELAY_S, help="seconds from power-up to HELLO")
    mb.add_argument("--garbage-every", type=int, default=0, help="random bytes before every Nth frame")
    mb.add_argument("--bad-crc-every", type=int, default=0, help="wrong CRC on every Nth frame")
    mb.add_argument("--truncate-every", type=int, default=0, help="cut every Nth frame short")
    mb.add_argument("--drip", type=float, default=None, metavar="SECONDS", help="send byte by byte")
    mb.add_argument("--stall-every", type=float, default=0.0, help="stall every N seconds")
    mb.add_argument("--stall-for", type=float, default=0.0, help="stall duration in seconds")
    mb.add_argument("--unplug-every", type=float, default=0.0, help="unplug every N seconds")
    mb.add_argument("--unplug-for", type=float, default=0.0, help="stay unplugged this many seconds")
    mb.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = never)")
    return parser


async def _run_mycobrain(args: argparse.Namespace) -> None:
    faults = FaultPlan(
        garbage_every=args.garbage_every, bad_crc_every=args.bad_crc_every,
        truncate_every=args.truncate_every, drip_delay_s=args.drip,
        stall_every_s=args.stall_every, stall_for_s=args.stall_for,
        unplug_every_s=args.unplug_every, unplug_for_s=args.unplug_for,
    )
    stubs = []
    for i in range(args.count):
        path = args.path if args.count == 1 else None
        if args.dir:
            path = os.path.join(args.dir, f"mycobrain-{i}")
        # Each seed gives a distinct vendor prefix, so boards started with different seeds (in one process
        # or, as the demo does, one process each) have distinct device_ids (see device_id_from_mac);
        # seed 0 is the default MAC 34:85:18:... -> mycobrain-188534.
        n = args.seed + i
        mac = bytes([0x34, 0x85, (0x18 + n) & 0xFF, 0xA0, n & 0xFF, 0x01]) if n else None
        stubs.append(MycoBrainStub(side=args.side, path=path, rate_hz=args.rate, seed=args.seed + i, mac=mac,
                                   faults=faults, boot_delay_s=args.boot_delay,
                                   boot_hello=not args.no_boot_hello, legacy=args.legacy))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        for stub in stubs:
            await stack.enter_async_context(stub)
            print(stub.path)
        sys.stdout.flush()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.duration or None):
                await stop.wait()


# Other stubs own their command lines; ``python -m firmware_stubs NAME ...`` hands the rest to them.
OTHER_STUBS = {"bme688": "firmware_stubs.bme688", "lora-gateway": "firmware_stubs.lora_gateway",
               "rui3": "firmware_stubs.rui3"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in OTHER_STUBS:
        module = importlib.import_module(OTHER_STUBS[argv[0]])
        return int(module.main(argv[1:]))
    args = _parser().parse_args(argv)
    if args.device == "mycobrain":
        asyncio.run(_run_mycobrain(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
