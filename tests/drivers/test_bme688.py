"""BME688 codec: calibration and field images, status bits, heater registers and the IAQ estimate."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers import bme688 as b
from drivers.errors import CodecError

# A typical BME688 calibration (coefficients of the order Bosch's datasheet lists for the BME680 family).
TYPICAL = b.Bme688Calibration(
    par_t1=26182, par_t2=26360, par_t3=3, par_p1=36327, par_p2=-10397, par_p3=88, par_p4=7154,
    par_p5=-81, par_p6=30, par_p7=48, par_p8=-2560, par_p9=-2667, par_p10=30, par_h1=777,
    par_h2=1005, par_h3=0, par_h4=45, par_h5=20, par_h6=120, par_h7=-100, par_gh1=-36,
    par_gh2=-11786, par_gh3=18, res_heat_range=1, res_heat_val=39, range_sw_err=-1,
)  # fmt: skip

calibrations = st.builds(
    b.Bme688Calibration,
    par_t1=st.integers(0, 0xFFFF), par_t2=st.integers(-0x8000, 0x7FFF), par_t3=st.integers(-128, 127),
    par_p1=st.integers(0, 0xFFFF), par_p2=st.integers(-0x8000, 0x7FFF), par_p3=st.integers(-128, 127),
    par_p4=st.integers(-0x8000, 0x7FFF), par_p5=st.integers(-0x8000, 0x7FFF), par_p6=st.integers(-128, 127),
    par_p7=st.integers(-128, 127), par_p8=st.integers(-0x8000, 0x7FFF), par_p9=st.integers(-0x8000, 0x7FFF),
    par_p10=st.integers(0, 255), par_h1=st.integers(0, 0xFFF), par_h2=st.integers(0, 0xFFF),
    par_h3=st.integers(-128, 127), par_h4=st.integers(-128, 127), par_h5=st.integers(-128, 127),
    par_h6=st.integers(0, 255), par_h7=st.integers(-128, 127), par_gh1=st.integers(-128, 127),
    par_gh2=st.integers(-0x8000, 0x7FFF), par_gh3=st.integers(-128, 127), res_heat_range=st.integers(0, 3),
    res_heat_val=st.integers(-128, 127), range_sw_err=st.integers(-8, 7),
)  # fmt: skip

fields = st.builds(
    b.FieldData,
    new_data=st.booleans(), gas_index=st.integers(0, 15), meas_index=st.integers(0, 255),
    adc_pres=st.integers(0, 0xFFFFF), adc_temp=st.integers(0, 0xFFFFF), adc_hum=st.integers(0, 0xFFFF),
    adc_gas_low=st.integers(0, 1023), gas_range_low=st.integers(0, 15),
    flags_low=st.sampled_from([0, 0x10, 0x20, 0x30]),
    adc_gas_high=st.integers(0, 1023), gas_range_high=st.integers(0, 15),
    flags_high=st.sampled_from([0, 0x10, 0x20, 0x30]),
)  # fmt: skip


@given(calibrations)
def test_calibration_round_trips(cal: b.Bme688Calibration) -> None:
    assert b.Bme688Calibration.from_bytes(cal.to_bytes()) == cal


@given(fields)
def test_field_block_round_trips(fld: b.FieldData) -> None:
    assert b.FieldData.from_bytes(fld.to_bytes()) == fld


@given(st.binary(max_size=64))
def test_arbitrary_bytes_raise_only_codec_errors(data: bytes) -> None:
    for parse in (b.Bme688Calibration.from_bytes, b.FieldData.from_bytes):
        with contextlib.suppress(CodecError):
            parse(data)


def test_calibration_offsets_follow_bosch_layout() -> None:
    raw = bytearray(42)
    raw[31], raw[32] = 0x46, 0x66  # par_t1 = 0x6646 (LSB at 0xE9, MSB at 0xEA)
    raw[24], raw[25], raw[23] = 0x3A, 0x30, 0x3E  # h1 = 0x30<<4 | 0xA, h2 = 0x3E<<4 | 0x3
    raw[39] = 0x1F  # res_heat_range = bits 5:4 = 1
    raw[41] = 0xF5  # range_sw_err = (int8)(0xF0) / 16 = -1
    raw[37] = 0xFE  # res_heat_val = -2
    cal = b.Bme688Calibration.from_bytes(bytes(raw))
    assert (cal.par_t1, cal.par_h1, cal.par_h2) == (0x6646, 0x30A, 0x3E3)
    assert (cal.res_heat_range, cal.range_sw_err, cal.res_heat_val) == (1, -1, -2)
    with pytest.raises(b.Bme688Error):
        b.Bme688Calibration.from_bytes(bytes(41))


def _block(*, new: bool, low_flags: int, high_flags: int) -> b.FieldData:
    return b.FieldData(
        new_data=new, gas_index=0, meas_index=0, adc_pres=400000, adc_temp=500000, adc_hum=25000,
        adc_gas_low=500, gas_range_low=5, flags_low=low_flags, adc_gas_high=600, gas_range_high=6,
        flags_high=high_flags,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("new", "flags", "reason"),
    [
        (True, 0x30, None),
        (False, 0x30, "no_new_data"),
        (True, 0x10, "gas_not_valid"),
        (True, 0x20, "heater_not_stable"),
    ],
)
@pytest.mark.parametrize("variant", [b.VARIANT_GAS_LOW, b.VARIANT_GAS_HIGH])
def test_status_bits_decide_validity(new: bool, flags: int, reason: str | None, variant: int) -> None:
    """gas_valid/heat_stab are read from byte 16 on the BME688 and byte 14 on the BME680 (Bosch)."""
    own = {"low_flags": flags, "high_flags": 0} if variant == 0 else {"low_flags": 0, "high_flags": flags}
    m = b.measure(TYPICAL, _block(new=new, **own), variant)
    assert m.reason == reason
    assert m.valid is (reason is None)
    # the other channel's bits must not count
    other = {"low_flags": 0x30, "high_flags": 0} if variant == 1 else {"low_flags": 0, "high_flags": 0x30}
    assert not b.measure(TYPICAL, _block(new=new, **other), variant).valid


def test_variant_chooses_gas_formula_and_channel() -> None:
    fld = _block(new=True, low_flags=0x30, high_flags=0x30)
    low = b.compensate_float(TYPICAL, fld, b.VARIANT_GAS_LOW).gas_ohm
    high = b.compensate_float(TYPICAL, fld, b.VARIANT_GAS_HIGH).gas_ohm
    assert low == b.gas_resistance_low_float(TYPICAL, 500, 5)
    assert high == b.gas_resistance_high_float(600, 6)
    assert low != high


def test_gas_wait_encoding_matches_datasheet() -> None:
    # datasheet 5.3.3.3: 100 ms = 25 x 4 -> 0x59; 0xFF caps at 4032 ms; counts under 64 ms are 1:1
    assert b.gas_wait(100) == 0x59
    assert b.gas_wait(63) == 63
    assert b.gas_wait(4032) == 0xFF
    assert b.gas_wait(150) == (150 // 4) + 64  # 37 x 4 = 148 ms, rounded down like Bosch


def test_heater_registers_forced_and_parallel() -> None:
    forced = b.heater_registers(TYPICAL, [b.HeaterStep(320, 150)], mode="forced")
    assert forced.res_heat == (b.res_heat_float(TYPICAL, 320),)
    assert forced.gas_wait == (b.gas_wait(150),)
    assert (forced.nb_conv, forced.shared_dur) == (0, None)
    steps = [b.HeaterStep(t, d) for t, d in [(320, 5), (100, 2), (100, 10), (200, 30), (200, 5)]]
    par = b.heater_registers(TYPICAL, steps, mode="parallel", shared_dur_ms=140, use_float=False)
    assert par.res_heat == tuple(b.res_heat_int(TYPICAL, s.temp_c) for s in steps)
    assert par.gas_wait == (5, 2, 10, 30, 5)  # parallel mode writes multipliers as they are
    assert par.nb_conv == 5
    assert par.shared_dur == b.heater_dur_shared(140)
    with pytest.raises(b.Bme688Error):
        b.heater_registers(TYPICAL, steps * 3, mode="parallel", shared_dur_ms=140)
    with pytest.raises(b.Bme688Error):
        b.heater_registers(TYPICAL, steps, mode="parallel")


def test_heater_target_is_capped_at_400() -> None:
    assert b.res_heat_int(TYPICAL, 450) == b.res_heat_int(TYPICAL, 400)
    assert b.res_heat_float(TYPICAL, 1000) == b.res_heat_float(TYPICAL, 400)
    assert b.res_heat_int(TYPICAL, 200) < b.res_heat_int(TYPICAL, 300)


def test_parallel_fields_are_ordered_oldest_first() -> None:
    def f(idx: int, new: bool = True) -> b.FieldData:
        return b.FieldData(new, 0, idx, 0, 0, 0, 0, 0, 0, 0, 0, 0)

    assert [x.meas_index for x in b.order_fields([f(6), f(4), f(5)])] == [4, 5, 6]
    assert [x.meas_index for x in b.order_fields([f(0), f(254), f(255)])] == [254, 255, 0]
    assert [x.meas_index for x in b.order_fields([f(3, False), f(4), f(5)])] == [4, 5]


def test_iaq_burns_in_then_tracks_the_clean_air_baseline() -> None:
    est = b.IaqEstimator(burn_in=5, window=20)
    assert all(est.update(50_000.0, 40.0) is None for _ in range(5))
    clean = est.update(50_000.0, 40.0)
    assert clean is not None
    assert clean.iaq == 0.0
    polluted = est.update(10_000.0, 40.0)
    assert polluted is not None
    assert polluted.iaq > 250
    assert polluted.gas_baseline_ohm == 50_000.0
    assert est.update(float("nan"), 40.0) is None


def test_iaq_score_bounds() -> None:
    assert b.iaq_score(1.0, 0.0, 1e6) == pytest.approx(500.0, abs=0.1)
    assert b.iaq_score(2e6, 40.0, 1e6) == 0.0
    assert 0 < b.iaq_score(1e6, 80.0, 1e6) < 500
