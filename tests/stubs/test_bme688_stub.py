"""The bridge stub's inverse model: physical values -> registers -> Bosch compensation -> same values."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import bme688 as b
from firmware_stubs.bme688 import DEFAULT_CALIBRATION, Environment, raw_for


@settings(max_examples=60, deadline=None)
@given(
    st.floats(-20.0, 60.0),
    st.floats(60_000.0, 105_000.0),
    st.floats(5.0, 95.0),
    st.floats(2_000.0, 2_000_000.0),
    st.sampled_from([b.VARIANT_GAS_LOW, b.VARIANT_GAS_HIGH]),
)
def test_round_trip_through_registers(t: float, p: float, h: float, gas: float, variant: int) -> None:
    env = Environment(temperature_c=t, pressure_pa=p, humidity_pct=h)
    fld = raw_for(DEFAULT_CALIBRATION, variant, env, gas_ohm=gas)
    back = b.FieldData.from_bytes(fld.to_bytes())  # through the wire format
    v = b.compensate_float(DEFAULT_CALIBRATION, back, variant)
    assert v.temperature_c == pytest.approx(t, abs=0.01)  # one ADC step is ~0.0003 degC
    assert v.pressure_pa == pytest.approx(p, abs=0.5)
    assert v.humidity_pct == pytest.approx(h, abs=0.01)
    assert v.gas_ohm == pytest.approx(gas, rel=0.01)  # 10-bit ADC over 16 ranges
    m = b.measure(DEFAULT_CALIBRATION, back, variant)
    assert m.valid


def test_status_bits_land_in_the_variants_byte() -> None:
    env = Environment()
    high = raw_for(DEFAULT_CALIBRATION, 1, env, gas_ohm=5e4, heat_stab=False).to_bytes()
    assert high[16] & b.GASM_VALID_MSK and not high[16] & b.HEAT_STAB_MSK
    assert high[14] == 0
    low = raw_for(DEFAULT_CALIBRATION, 0, env, gas_ohm=5e4, gas_valid=False, gas_index=3).to_bytes()
    assert low[14] & b.HEAT_STAB_MSK and not low[14] & b.GASM_VALID_MSK
    assert low[0] == 0x80 | 3
