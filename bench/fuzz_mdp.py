"""Bounded fuzz run of the MDP v1 decoder: random and mutated frames, zero unexpected exceptions.

    .venv/bin/python -m bench.fuzz_mdp --count 1000000 --seed 1

Every input goes to ``mdp.decode`` (one chunk) and, delimited, through one long-lived ``FrameDecoder``
(so resynchronisation is exercised across inputs); decoded frames also get ``json()``. Anything raised
that is not an ``MdpError`` is counted as unexpected and printed; the exit status is 1 if there was any.
The baseline printed beside the rate is the bare library work on the same inputs (``cobs.decode`` plus
``binascii.crc_hqx``), measured in the same run.
"""

from __future__ import annotations

import argparse
import binascii
import random
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field

from cobs import cobs as raw_cobs  # type: ignore[import-untyped]

from drivers import mdp


@dataclass
class FuzzResult:
    count: int
    frames: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    unexpected: int = 0
    first_unexpected: str = ""
    seconds: float = 0.0
    baseline_seconds: float = 0.0


def _valid_frame(rng: random.Random) -> bytes:
    kind = rng.choice([1, 2, 3, 5, 6, 7, 8, 9, rng.randrange(256)])
    payload = rng.choice([
        b'{"type":"telemetry","uptime_s":12,"estop":false,"analog":{"ai1":1204,"ai2":1500},'
        b'"bme688":{"a":{"temperature_c":22.5,"humidity_pct":55.1,"pressure_hpa":1013.2,"gas_ohm":120000}}}',
        b'{"success":true,"message":"mosfet_updated"}',
        b'{"device_id":"mycobrain-188534","firmware_version":"side-a-mdp-2.1.0","sensors":["bme688_a"]}',
        b'{"cmd":"output_control","params":{"id":"mosfet1","value":1}}',
        b'{"event":"estop_activated"}',
        rng.randbytes(rng.randrange(40)),
    ])
    frame = mdp.Frame(kind, seq=rng.randrange(1 << 32), ack=rng.randrange(1 << 32), flags=rng.randrange(8),
                      src=rng.choice([0xA1, 0xB1, 0xC0]), dst=rng.choice([0xA1, 0xB1, 0xC0, 0xFF]), payload=payload)
    return mdp.encode(frame)[:-1]


def _mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        if op == 0 and buf:  # flip a bit
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # overwrite a byte (zeros included: they split frames)
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 2:  # insert bytes
            i = rng.randrange(len(buf) + 1)
            buf[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and buf:  # delete a run
            i = rng.randrange(len(buf))
            del buf[i : i + rng.randint(1, 8)]
        elif op == 4:  # truncate
            buf = buf[: rng.randrange(len(buf) + 1)]
        elif op == 5:  # splice with another frame
            other = _valid_frame(rng)
            buf = buf[: rng.randrange(len(buf) + 1)] + other[rng.randrange(len(other) + 1) :]
        else:  # a COBS code byte past the end
            buf.append(rng.randrange(2, 256))
    return bytes(buf)


def make_input(rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return rng.randbytes(rng.randrange(300))
    return _mutate(_valid_frame(rng), rng)


def run(count: int, *, seed: int = 0, batch: int = 10000) -> FuzzResult:
    """Fuzz ``count`` inputs; pure CPU, no I/O. Inputs are generated in batches outside the timing."""
    rng = random.Random(seed)
    result = FuzzResult(count)
    decoder = mdp.FrameDecoder()
    done = 0
    while done < count:
        inputs = [make_input(rng) for _ in range(min(batch, count - done))]
        started = time.perf_counter()
        for i, data in enumerate(inputs, start=done):
            _fuzz_one(data, decoder, result, delimit=i % 3 != 0)
        result.seconds += time.perf_counter() - started
        result.baseline_seconds += _baseline(inputs)
        done += len(inputs)
    return result


def _fuzz_one(data: bytes, decoder: mdp.FrameDecoder, result: FuzzResult, *, delimit: bool) -> None:
    try:
        try:
            frame = mdp.decode(data)
            result.frames += 1
            frame.json()
        except mdp.MdpError as exc:
            result.errors[exc.kind] += 1
        for item in decoder.iter_feed(data + b"\x00" if delimit else data):
            if isinstance(item, mdp.Frame):
                try:
                    item.json()
                except mdp.PayloadError as exc:
                    result.errors["stream_" + exc.kind] += 1
            else:
                result.errors["stream_" + item.kind] += 1
    except Exception:
        result.unexpected += 1
        if not result.first_unexpected:
            result.first_unexpected = f"input {data.hex()}\n{traceback.format_exc()}"


def _baseline(inputs: list[bytes]) -> float:
    """Bare library work on the same inputs: COBS decode and a CRC over what decoded."""
    started = time.perf_counter()
    for data in inputs:
        try:
            raw = raw_cobs.decode(data)
        except raw_cobs.DecodeError:
            continue
        binascii.crc_hqx(raw, 0xFFFF)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="inputs to try (default 10^6)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    result = run(args.count, seed=args.seed)
    per_us = result.seconds / max(1, result.count) * 1e6
    base_us = result.baseline_seconds / max(1, result.count) * 1e6
    print(f"fuzz_mdp: {result.count} inputs (seed {args.seed}), {result.frames} decoded as frames")
    print(f"  errors by kind: {dict(sorted(result.errors.items()))}")
    print(f"  unexpected exceptions: {result.unexpected}")
    print(f"  decoder: {per_us:.2f} us/input (decode + stream feed + json)   "
          f"baseline cobs.decode+crc_hqx: {base_us:.2f} us/input")
    if result.unexpected:
        print(result.first_unexpected)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
