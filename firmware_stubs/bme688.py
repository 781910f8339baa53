"""A BME688 serial bridge on a pseudo-terminal: raw register images from physical values.

The bridge MCU of PROTOCOLS.md section 2 forwards the sensor's registers as checksummed ASCII lines; this
stub builds those registers from a simulated environment by inverting Bosch's float compensation
(``raw_for``): for temperature, pressure and humidity a bisection over the ADC code (each compensation is
monotonic in its code), for gas resistance a search over the 16 gas ranges for the code that comes closest.
The host's compensation of the emitted registers therefore returns the physical values to within one ADC
step, which is what the round-trip tests check.

Lines sent: ``HELLO`` at power-up and in answer to ``CAL?`` (the protocol has no other way to ask for
identity), ``CAL``, ``FLD n`` (forced mode: field 0 per measurement; parallel mode: fields 0..2 in turn, one
heater step each), ``OK``/``ERR``. Faults: garbage, bad checksum, truncated lines, heater not stable, gas not
valid, no new data, plus the pty's stall and unplug.

Run by hand: ``python -m firmware_stubs.bme688 --path /tmp/bme --variant 1``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self

from drivers import bme688 as b
from drivers.nmea import LineError, LineSplitter, decode_line, encode_line
from firmware_stubs.pty import PtyPort

# A typical BME688 trimming set (the order of magnitude Bosch's parts carry).
DEFAULT_CALIBRATION = b.Bme688Calibration(
    par_t1=26182, par_t2=26360, par_t3=3, par_p1=36327, par_p2=-10397, par_p3=88, par_p4=7154,
    par_p5=-81, par_p6=30, par_p7=48, par_p8=-2560, par_p9=-2667, par_p10=30, par_h1=777,
    par_h2=1005, par_h3=0, par_h4=45, par_h5=20, par_h6=120, par_h7=-100, par_gh1=-36,
    par_gh2=-11786, par_gh3=18, res_heat_range=1, res_heat_val=39, range_sw_err=-1,
)  # fmt: skip


@dataclass
class Environment:
    """What the simulated sensor is exposed to; ``gas_ohm`` per heater step (the last repeats)."""

    temperature_c: float = 23.5
    pressure_pa: float = 100_850.0
    humidity_pct: float = 45.0
    gas_ohm: list[float] = field(default_factory=lambda: [85_000.0])


@dataclass
class BridgeFaults:
    """Faults applied to upcoming field lines (counts are consumed one line at a time)."""

    garbage: int = 0  # random bytes before the next N lines
    bad_checksum: int = 0
    truncate: int = 0
    heater_unstable: int = 0
    gas_invalid: int = 0
    no_new_data: int = 0


def _bisect(fn: Callable[[int], float], target: float, lo: int, hi: int, *, increasing: bool) -> int:
    """The code in [lo, hi] whose value is closest to ``target`` for a monotonic ``fn``."""
    a, z = lo, hi
    while z - a > 1:
        mid = (a + z) // 2
        value = fn(mid)
        if (value < target) == increasing:
            a = mid
        else:
            z = mid
    return a if abs(fn(a) - target) <= abs(fn(z) - target) else z


def raw_for(
    cal: b.Bme688Calibration,
    variant_id: int,
    env: Environment,
    *,
    gas_ohm: float,
    gas_index: int = 0,
    meas_index: int = 0,
    new_data: bool = True,
    gas_valid: bool = True,
    heat_stab: bool = True,
) -> b.FieldData:
    """The field block a sensor with ``cal`` would hold in ``env`` (inverse of Bosch's float maths)."""
    adc_temp = _bisect(lambda c: b.temperature_float(cal, c)[0], env.temperature_c, 0, 0xFFFFF, increasing=True)
    t_fine = b.temperature_float(cal, adc_temp)[1]
    adc_pres = _bisect(lambda c: b.pressure_float(cal, c, t_fine), env.pressure_pa, 0, 0xFFFFF, increasing=False)
    adc_hum = _bisect(lambda c: b.humidity_float(cal, c, t_fine), env.humidity_pct, 0, 0xFFFF, increasing=True)
    best: tuple[float, int, int] | None = None
    for rng in range(16):
        if variant_id == b.VARIANT_GAS_HIGH:

            def gas(c: int, r: int = rng) -> float:
                return b.gas_resistance_high_float(c, r)
        else:

            def gas(c: int, r: int = rng) -> float:
                return b.gas_resistance_low_float(cal, c, r)

        code = _bisect(gas, gas_ohm, 0, 1023, increasing=False)
        err = abs(gas(code) - gas_ohm) / gas_ohm
        if best is None or err < best[0]:
            best = (err, rng, code)
    assert best is not None
    _, gas_range, adc_gas = best
    flags = (b.GASM_VALID_MSK if gas_valid else 0) | (b.HEAT_STAB_MSK if heat_stab else 0)
    high = variant_id == b.VARIANT_GAS_HIGH
    return b.FieldData(
        new_data=new_data, gas_index=gas_index, meas_index=meas_index & 0xFF, adc_pres=adc_pres,
        adc_temp=adc_temp, adc_hum=adc_hum,
        adc_gas_low=0 if high else adc_gas, gas_range_low=0 if high else gas_range, flags_low=0 if high else flags,
        adc_gas_high=adc_gas if high else 0, gas_range_high=gas_range if high else 0,
        flags_high=flags if high else 0,
    )  # fmt: skip


class Bme688BridgeStub:
    """See the module docstring. ``environment`` and ``faults`` may be changed at any time."""

    def __init__(
        self,
        *,
        path: str | None = None,
        calibration: b.Bme688Calibration = DEFAULT_CALIBRATION,
        variant_id: int = b.VARIANT_GAS_HIGH,
        serial: str = "0001A3",
        fw_version: str = "1.0.2",
        rate_ms: int = 1000,
        time_scale: float = 1.0,
        boot_hello: bool = True,
        seed: int = 0,
    ) -> None:
        # The seed drives the port's line noise (``BridgeFaults.garbage``), the stub's only randomness.
        self.port = PtyPort(path, on_data=self._on_host_data,
                            rng=random.Random(seed))  # noqa: S311 - simulated faults, not cryptography
        self.calibration = calibration
        self.variant_id = variant_id
        self.serial = serial
        self.fw_version = fw_version
        self.environment = Environment()
        self.faults = BridgeFaults()
        self.mode = "sleep"
        self.heater: tuple[int, int] = (320, 150)
        self.profile: list[tuple[int, int]] = [(320, 150)]
        self.rate_ms = rate_ms
        self.time_scale = time_scale
        self.commands: list[str] = []
        self._boot_hello = boot_hello
        self._splitter = LineSplitter()
        self._meas_index = 0
        self._step = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def path(self) -> str:
        return self.port.path

    async def __aenter__(self) -> Self:
        self.port.plug()
        if self._boot_hello:
            self.send_hello()
            self._send("CAL " + self.calibration.to_bytes().hex().upper())
        self._task = asyncio.get_running_loop().create_task(self._stream(), name="bme688-bridge")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.port.close()

    def reboot(self) -> None:
        """Power-cycle the bridge MCU: back to sleep mode with default settings, HELLO and CAL printed."""
        self.mode = "sleep"
        self.heater = (320, 150)
        self.profile = [(320, 150)]
        self._splitter = LineSplitter()
        self.send_hello()
        self._send("CAL " + self.calibration.to_bytes().hex().upper())

    # --- lines --------------------------------------------------------------------------------------
    def send_hello(self) -> None:
        self._send(f"HELLO bme688-bridge {self.serial} {self.fw_version} {b.CHIP_ID:02x} {self.variant_id:02x}")

    def _send(self, body: str, *, faulty: bool = False) -> None:
        line = encode_line(body)
        if faulty:
            f = self.faults
            if f.garbage > 0:
                f.garbage -= 1
                self.port.write_garbage(12)
            if f.bad_checksum > 0:
                f.bad_checksum -= 1
                line = line[:-4] + (b"00" if line[-4:-2] != b"00" else b"01") + b"\r\n"
            elif f.truncate > 0:
                f.truncate -= 1
                line = line[: len(line) // 2] + b"\r\n"
        self.port.write(line)

    def _on_host_data(self, data: bytes) -> None:
        for raw in self._splitter.feed(data):
            try:
                body = decode_line(raw)
            except LineError as exc:
                self._send(f"ERR {exc.kind}")
                continue
            self.commands.append(body)
            self._handle(body)

    def _handle(self, body: str) -> None:
        word, _, arg = body.partition(" ")
        if word == "MODE" and arg in ("sleep", "forced", "parallel"):
            self.mode = arg
            self._step = 0
            self._send("OK")
        elif word == "HEATER":
            try:
                temp, dur = (int(x) for x in arg.split())
            except ValueError:
                self._send("ERR heater")
                return
            self.heater = (temp, dur)
            self._send("OK")
        elif word == "HEATPROF":
            try:
                steps = [tuple(int(x) for x in step.split(":")) for step in arg.split(",")]
            except ValueError:
                self._send("ERR heatprof")
                return
            if not 1 <= len(steps) <= b.MAX_HEATER_STEPS or any(len(s) != 2 for s in steps):
                self._send("ERR heatprof")
                return
            self.profile = [(s[0], s[1]) for s in steps]
            self._step = 0
            self._send("OK")
        elif word == "RATE" and arg.isdigit() and int(arg) > 0:
            self.rate_ms = int(arg)
            self._send("OK")
        elif word == "READ" and not arg:
            self.measure()
            self._send("OK")
        elif word == "CAL?" and not arg:
            self.send_hello()
            self._send("CAL " + self.calibration.to_bytes().hex().upper())
            self._send("OK")
        else:
            self._send("ERR unknown")

    # --- measuring ------------------------------------------------------------------------------------
    def field_for(self, gas_index: int) -> b.FieldData:
        """The next field block for heater step ``gas_index`` with the current faults applied."""
        f = self.faults
        heat_stab = gas_valid = new_data = True
        if f.heater_unstable > 0:
            f.heater_unstable -= 1
            heat_stab = False
        if f.gas_invalid > 0:
            f.gas_invalid -= 1
            gas_valid = False
        if f.no_new_data > 0:
            f.no_new_data -= 1
            new_data = False
        gases = self.environment.gas_ohm
        gas = gases[min(gas_index, len(gases) - 1)]
        fld = raw_for(
            self.calibration, self.variant_id, self.environment, gas_ohm=gas, gas_index=gas_index,
            meas_index=self._meas_index, new_data=new_data, gas_valid=gas_valid, heat_stab=heat_stab,
        )  # fmt: skip
        self._meas_index = (self._meas_index + 1) & 0xFF
        return fld

    def measure(self) -> None:
        """One measurement: field 0 in forced mode, the next field/heater step in parallel mode."""
        if self.mode == "parallel":
            index = self._step % len(self.profile)
            field_no = self._meas_index % b.FIELD_COUNT
            self._step += 1
        else:
            index, field_no = 0, 0
        fld = self.field_for(index)
        self._send(f"FLD {field_no} {fld.to_bytes().hex().upper()}", faulty=True)

    async def _stream(self) -> None:
        while True:
            await asyncio.sleep(self.rate_ms / 1000.0 * self.time_scale)
            if self.mode != "sleep":
                self.measure()


async def run(argv: list[str] | None = None) -> None:
    """Run one bridge until signalled; prints its port path."""
    parser = argparse.ArgumentParser(prog="python -m firmware_stubs bme688", description=__doc__.split("\n")[0])
    parser.add_argument("--path", help="symlink to create for the port")
    parser.add_argument("--variant", type=int, choices=[0, 1], default=1, help="0 BME680 (low), 1 BME688 (high)")
    parser.add_argument("--serial", default="0001A3")
    parser.add_argument("--rate-ms", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds")
    args = parser.parse_args(argv)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Bme688BridgeStub(path=args.path, variant_id=args.variant, serial=args.serial, rate_ms=args.rate_ms) as s:
        print(s.path, flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.duration or None)


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m firmware_stubs bme688`` (the coordinator wires the subcommand)."""
    asyncio.run(run(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
