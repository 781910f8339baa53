"""Arbitrary bytes from a port never escape a driver's protocol as an exception.

Each device is fed deterministic pseudo-random chunks mixing noise with fragments of real messages
(valid lines, bad checksums, half packets), as a flaky USB link delivers them, and must only count.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from drivers import mdp
from drivers.bme688 import FIELD_LEN
from drivers.bme688_bridge import Bme688Bridge
from drivers.device import Device
from drivers.lora_gateway import LoraGateway
from drivers.nmea import encode_line
from drivers.rui3 import Rui3Modem
from firmware_stubs.bme688 import DEFAULT_CALIBRATION
from firmware_stubs.radio import over_the_air
from tests.recording import Recorder


def _fragments() -> list[bytes]:
    hello = mdp.Frame(mdp.MsgType.HELLO, src=0xA1, dst=0xC0, payload=b'{"device_id":"mycobrain-1"}')
    telem = mdp.Frame(mdp.MsgType.TELEMETRY, seq=2, src=0xA1, dst=0xC0, payload=b'{"bme688":{"a":{"gas_ohm":1}}}')
    return [
        encode_line("HELLO bme688-bridge 01 1.0 61 01"),
        encode_line("CAL " + DEFAULT_CALIBRATION.to_bytes().hex()),
        encode_line("FLD 0 " + bytes(range(0x80, 0x80 + FIELD_LEN)).hex()),
        encode_line("FLD 2 " + "ff" * FIELD_LEN),
        b"FLD 1 00*00\r\n",
        encode_line("OK"),
        encode_line("ERR x"),
        b"OK\r\n",
        b"AT_BUSY_ERROR\r\n",
        b"+EVT:TXP2P DONE\r\n",
        b"RAKwireless RAK3172-E Example\r\n",
        f"+EVT:RXP2P:-80:5:{over_the_air(hello).hex()}\r\n".encode(),
        f"+EVT:RXP2P:-80:5:{over_the_air(telem).hex()}\r\n".encode(),
        b"+EVT:RXP2P:-80:5:00\r\n",
        b'{"lora_init":"ok"}\r\n',
        b'{"side":"gateway","mdp":1,"status":"ready"}\r\n',
        b'{"t_ms":1,"src":161,"dst":192,"seq":4294967295,"ack":0,"type":9,"flags":255}\r\n',
        b'{"t_ms":-1,"src":1e9,"dst":null,"seq":[],"ack":{},"type":"x","flags":true}\r\n',
        b'{"sent":true,"seq":1}\r\n',
        b'{"error":"json_parse"}\r\n',
        b"[1,2,3]\r\n",
        b"\xff\xfe\x00\r\n",
    ]


def _chunks(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    frags = _fragments()
    out: list[bytes] = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.4:
            out.append(rng.choice(frags))
        elif kind < 0.7:
            f = rng.choice(frags)
            cut = rng.randrange(len(f) + 1)
            out.append(f[:cut] if rng.random() < 0.5 else f[cut:])
        elif kind < 0.85:
            spoilt = bytearray(rng.choice(frags))
            spoilt[rng.randrange(len(spoilt))] = rng.randrange(256)
            out.append(bytes(spoilt))
        else:
            out.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80))))
    return out


@pytest.mark.parametrize(
    "make",
    [
        lambda rec: Bme688Bridge("/nonexistent/bme", rec),
        lambda rec: Rui3Modem("/nonexistent/rak", rec),
        lambda rec: LoraGateway("/nonexistent/gw", rec),
    ],
    ids=["bme688-bridge", "rui3", "lora-gateway"],
)
async def test_arbitrary_input_is_counted_never_raised(make: Callable[[Recorder], Device]) -> None:
    rec = Recorder()
    dev = make(rec)
    for seed in range(3):
        for chunk in _chunks(seed, 700):
            dev.data_received(chunk)  # type: ignore[attr-defined]
    await asyncio.sleep(0)
    stats = dev.stats()
    assert sum(v for k, v in stats.items() if "error" in k or k.startswith("mdp_")) > 0
    await dev.__aexit__(None, None, None)  # cancels any task the input started (re-initialisation)
