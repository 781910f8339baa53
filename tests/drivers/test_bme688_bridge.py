"""The BME688 bridge driver against the bridge stub over a real pty: round trips, invalid readings,
line faults, stall and unplug."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from drivers import bme688 as b
from drivers.bme688_bridge import Bme688Bridge, BridgeLineError, parse_cal, parse_fld, parse_hello
from drivers.device import Device, LinkState
from drivers.link import Backoff
from firmware_stubs.bme688 import DEFAULT_CALIBRATION, Bme688BridgeStub
from tests.recording import Recorder, wait_for


@dataclass
class Rig:
    stub: Bme688BridgeStub
    bridge: Bme688Bridge
    rec: Recorder


def _rig(variant: int, **kwargs: object) -> Callable[[], AsyncIterator[Rig]]:
    async def make() -> AsyncIterator[Rig]:
        rec = Recorder()
        async with Bme688BridgeStub(variant_id=variant, rate_ms=20, boot_hello=False) as stub:
            bridge = Bme688Bridge(
                stub.path, rec, rate_ms=20, iaq_burn_in=3, backoff=Backoff(base_s=0.05, cap_s=0.2),
                response_timeout_s=1.0, **kwargs,  # type: ignore[arg-type]
            )  # fmt: skip
            async with bridge:
                await wait_for(lambda: bridge.state is LinkState.STREAMING)
                yield Rig(stub, bridge, rec)

    return make


rig = pytest.fixture(_rig(b.VARIANT_GAS_HIGH))


@pytest.fixture(params=[b.VARIANT_GAS_HIGH, b.VARIANT_GAS_LOW], ids=["bme688-high", "bme680-low"])
async def any_rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    async for r in _rig(request.param)():
        yield r


rig_parallel = pytest.fixture(
    _rig(b.VARIANT_GAS_HIGH, mode="parallel", profile=[b.HeaterStep(320, 5), b.HeaterStep(200, 10)])
)


def test_line_parsers_reject_malformed_messages() -> None:
    assert parse_hello("HELLO bme688-bridge 0001A3 1.0.2 61 01") == ("0001A3", "1.0.2", 0x61, 1)
    assert parse_cal("CAL " + DEFAULT_CALIBRATION.to_bytes().hex()) == DEFAULT_CALIBRATION
    for bad in ("HELLO x", "HELLO bme688-bridge s f zz 01", "CAL 00", "CAL " + "zz" * 42, "FLD 3 " + "00" * 17,
                "FLD 0 " + "00" * 16, "FLD 0 " + "gg" * 17):  # fmt: skip
        with pytest.raises(BridgeLineError):
            (parse_hello if bad.startswith("HELLO") else parse_cal if bad.startswith("CAL") else parse_fld)(bad)


async def test_identity_and_configuration(rig: Rig) -> None:
    assert isinstance(rig.bridge, Device)
    assert rig.bridge.device_id == "bme688-0001a3"
    assert rig.bridge.variant_id == 1
    assert rig.bridge.calibration == DEFAULT_CALIBRATION
    assert rig.stub.mode == "forced"
    assert rig.stub.heater == (320, 150)
    regs = rig.bridge.heater_registers()
    assert regs is not None
    assert regs.res_heat == (b.res_heat_float(DEFAULT_CALIBRATION, 320),)
    assert regs.gas_wait == (b.gas_wait(150),)


async def test_physical_values_round_trip(any_rig: Rig) -> None:
    r = any_rig
    r.stub.environment.temperature_c = 27.25
    r.stub.environment.pressure_pa = 98_765.0
    r.stub.environment.humidity_pct = 61.5
    r.stub.environment.gas_ohm = [123_000.0]
    start = len(r.rec.readings)
    await wait_for(lambda: len(r.rec.readings) >= start + 5)
    last = r.rec.readings[-1]
    assert last.valid
    q = last.quantities
    assert q["temperature_c"].value == pytest.approx(27.25, abs=0.01)
    assert q["pressure_pa"].value == pytest.approx(98_765.0, abs=0.5)
    assert q["humidity_pct"].value == pytest.approx(61.5, abs=0.01)
    assert q["gas_ohm"].value == pytest.approx(123_000.0, rel=0.01)
    assert "iaq" in q  # burn-in of 3 samples is over
    assert last.meta["variant_id"] == r.bridge.variant_id
    ints = last.meta["bosch_int"]
    assert isinstance(ints, dict)
    assert ints["temperature_c100"] == pytest.approx(2725, abs=1)
    assert ints["pressure_pa"] == pytest.approx(98_765, abs=10)  # the integer path is coarser
    assert ints["humidity_milli"] == pytest.approx(61_500, abs=50)


async def test_parallel_mode_uses_the_profile(rig_parallel: Rig) -> None:
    r = rig_parallel
    assert r.stub.profile == [(320, 5), (200, 10)]
    r.stub.environment.gas_ohm = [40_000.0, 90_000.0]
    start = len(r.rec.readings) + 1  # a line may be in flight with the old values
    await wait_for(lambda: {x.meta["gas_index"] for x in r.rec.readings[start:]} == {0, 1})
    by_step = {x.meta["gas_index"]: x for x in r.rec.readings[start:]}
    assert by_step[0].quantities["gas_ohm"].value == pytest.approx(40_000.0, rel=0.01)
    assert by_step[1].quantities["gas_ohm"].value == pytest.approx(90_000.0, rel=0.01)
    regs = r.bridge.heater_registers()
    assert regs is not None
    assert regs.gas_wait == (5, 10)
    assert regs.shared_dur == b.heater_dur_shared(140)


async def test_readings_without_status_bits_are_invalid(rig: Rig) -> None:
    rig.stub.faults.heater_unstable = 1
    await wait_for(lambda: rig.bridge.stats()["invalid_readings"] >= 1)
    rig.stub.faults.gas_invalid = 1
    await wait_for(lambda: rig.bridge.stats()["invalid_readings"] >= 2)
    bad = [x for x in rig.rec.readings if not x.valid]
    assert {x.meta["invalid_reason"] for x in bad} >= {"heater_not_stable", "gas_not_valid"}
    for x in bad:
        assert "gas_ohm" not in x.quantities and "iaq" not in x.quantities
        assert isinstance(x.meta["gas_ohm_unverified"], float)
        assert x.meta["gas_ohm_unverified"] > 0
    rig.stub.faults.no_new_data = 1
    await wait_for(lambda: rig.bridge.stats()["no_new_data"] == 1)
    before = len(rig.rec.readings)
    await wait_for(lambda: len(rig.rec.readings) > before)
    assert rig.rec.readings[-1].valid


async def test_line_faults_are_counted_and_survived(rig: Rig) -> None:
    rig.stub.faults.garbage = 2
    rig.stub.faults.bad_checksum = 2
    rig.stub.faults.truncate = 2
    await wait_for(lambda: rig.stub.faults.truncate == 0)
    n = len(rig.rec.readings)
    await wait_for(lambda: len(rig.rec.readings) >= n + 3)
    s = rig.bridge.stats()
    assert s["checksum_errors"] + s["format_errors"] >= 4
    assert rig.bridge.state is LinkState.STREAMING


async def test_commands_are_acknowledged(rig: Rig) -> None:
    res = await rig.bridge.command("set_heater", {"temp_c": 300, "dur_ms": 100})
    assert res.ok
    assert rig.stub.heater == (300, 100)
    assert (await rig.bridge.command("set_rate", {"ms": 25})).ok
    assert rig.stub.rate_ms == 25
    assert not (await rig.bridge.command("set_mode", {"mode": "turbo"})).ok
    assert (await rig.bridge.command("bogus", {})).message == "unknown_command"
    assert (await rig.bridge.command("read", {})).ok


async def test_stall_and_unplug_are_recovered() -> None:
    rec = Recorder()
    async with Bme688BridgeStub(rate_ms=20) as stub:
        bridge = Bme688Bridge(stub.path, rec, rate_ms=20, stall_timeout_s=0.3, backoff=Backoff(base_s=0.05, cap_s=0.1))
        async with bridge:
            await wait_for(lambda: len(rec.readings) >= 2)
            stub.port.stall(True)
            await wait_for(lambda: bridge.stats()["stalls"] == 1)
            stub.port.stall(False)
            await wait_for(lambda: bridge.state is LinkState.STREAMING)
            n = len(rec.readings)
            await wait_for(lambda: len(rec.readings) > n)
            stub.port.unplug()
            await wait_for(lambda: bridge.state is not LinkState.STREAMING)
            stub.port.plug()
            bridge.wake()
            await wait_for(lambda: bridge.state is LinkState.STREAMING)
            n = len(rec.readings)
            await wait_for(lambda: len(rec.readings) > n)
            assert any(e.name == "stalled" for e in rec.events)


async def test_bridge_reboot_is_reconfigured(rig: Rig) -> None:
    await rig.bridge.command("set_heater", {"temp_c": 280, "dur_ms": 120})
    rig.stub.reboot()
    assert rig.stub.mode == "sleep"
    await wait_for(lambda: any(e.name == "bridge_rebooted" for e in rig.rec.events))
    await wait_for(lambda: rig.stub.mode == "forced" and rig.bridge.state is LinkState.STREAMING)
    assert rig.stub.heater == (280, 120)
    n = len(rig.rec.readings)
    await wait_for(lambda: len(rig.rec.readings) > n)
