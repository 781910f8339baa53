"""How fast the BME688 maths and the LoRa/NMEA codecs run, next to baselines measured in the same run.

Run: ``.venv/bin/python -m bench.bme688_lora``. The baselines are the same work done the naive way
(binary64 arithmetic without C emulation; ``bytes.hex``/``bytes.fromhex`` without checksums), so the figures
say what the exactness costs, not how fast a machine is.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from drivers import bme688 as b
from drivers import nmea, rui3
from drivers.lora_airtime import LoRaSettings, time_on_air_s
from firmware_stubs.bme688 import DEFAULT_CALIBRATION, Environment, raw_for


def rate(fn: Callable[[], object], seconds: float = 0.4) -> float:
    """Calls per second of ``fn`` over about ``seconds``."""
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(50):
            fn()
        n += 50
    return n / (time.perf_counter() - start)


def naive_float(cal: b.Bme688Calibration, f: b.FieldData) -> tuple[float, float, float]:
    """Bosch's float formulas in plain binary64 (what one would write without caring for exactness)."""
    t = f.adc_temp
    var1 = (t / 16384.0 - cal.par_t1 / 1024.0) * cal.par_t2
    var2 = (t / 131072.0 - cal.par_t1 / 8192.0) ** 2 * (cal.par_t3 * 16.0)
    t_fine = var1 + var2
    v1 = t_fine / 2.0 - 64000.0
    v2 = v1 * v1 * (cal.par_p6 / 131072.0) + v1 * cal.par_p5 * 2.0
    v2 = v2 / 4.0 + cal.par_p4 * 65536.0
    v1 = (cal.par_p3 * v1 * v1 / 16384.0 + cal.par_p2 * v1) / 524288.0
    v1 = (1.0 + v1 / 32768.0) * cal.par_p1
    p = (1048576.0 - f.adc_pres - v2 / 4096.0) * 6250.0 / v1
    p += (cal.par_p9 * p * p / 2147483648.0 + p * cal.par_p8 / 32768.0 + (p / 256.0) ** 3 * cal.par_p10 / 131072.0
          + cal.par_p7 * 128.0) / 16.0  # fmt: skip
    return t_fine / 5120.0, p, 0.0


def main() -> None:
    rng = random.Random(5)
    cal = DEFAULT_CALIBRATION
    fields = [
        raw_for(cal, 1, Environment(rng.uniform(0, 40), rng.uniform(9e4, 1.05e5), rng.uniform(10, 90)),
                gas_ohm=rng.uniform(5e3, 5e5))
        for _ in range(64)
    ]  # fmt: skip
    it = iter(range(1 << 62))

    def pick() -> b.FieldData:
        return fields[next(it) % 64]

    rows = [
        ("BME688 float build (binary32 emulated)", rate(lambda: b.compensate_float(cal, pick(), 1)),
         "naive binary64 formulas", rate(lambda: naive_float(cal, pick()))),
        ("BME688 integer build (int32 wraps emulated)", rate(lambda: b.compensate_int(cal, pick(), 1)),
         "naive binary64 formulas", rate(lambda: naive_float(cal, pick()))),
        ("stub inverse model raw_for", rate(lambda: raw_for(cal, 1, Environment(), gas_ohm=5e4), 0.3),
         "one float compensation", rate(lambda: b.compensate_float(cal, pick(), 1))),
    ]  # fmt: skip
    line = nmea.encode_line("FLD 0 " + fields[0].to_bytes().hex().upper())
    rows.append(("NMEA FLD line decode + FieldData parse",
                 rate(lambda: b.FieldData.from_bytes(bytes.fromhex(nmea.decode_line(line).split()[2]))),
                 "bytes.fromhex of the same digits", rate(lambda: bytes.fromhex(line[6:40].decode()))))  # fmt: skip
    rx = "+EVT:RXP2P:-97:-3:" + bytes(range(120)).hex().upper()
    rows.append(("RUI3 RXP2P line parse (120-byte packet)", rate(lambda: rui3.parse_line(rx)),
                 "str.split + bytes.fromhex", rate(lambda: bytes.fromhex(rx.split(":")[4]))))  # fmt: skip
    s = LoRaSettings(sf=9)
    rows.append(("time on air", rate(lambda: time_on_air_s(s, 51)), "one float multiply-add loop",
                 rate(lambda: sum(i * 0.5 for i in range(8)))))  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'ops/s':>12}   baseline (same run)")
    for name, value, base_name, base in rows:
        print(f"{name:<{width}}  {value:>12,.0f}   {base_name}: {base:,.0f} ops/s ({value / base:.2f}x)")


if __name__ == "__main__":
    main()
