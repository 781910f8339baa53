"""BME688/BME680 register maths, computed exactly as Bosch's BME68x Sensor API computes it.

Everything here is pure: the 42-byte calibration image and 17-byte field blocks the bridge forwards
(PROTOCOLS.md section 2) go in, compensated values come out. Two variants exist, as in Bosch's API
(``boschsensortec/BME68x_SensorAPI``, ``bme68x.c`` v4.4.x):

* the *float* build (``BME68X_USE_FPU``): IEEE single precision, emulated here by rounding every
  intermediate result to binary32 (each ``+ - * /`` of two binary32 values computed in binary64 and then
  rounded is exactly the binary32 result, so this reproduces the C code bit for bit on SSE hardware);
* the *integer* build: ``int32``/``uint32``/``int64`` arithmetic, emulated with explicit wrap-around after
  every operation, C's truncating division and arithmetic right shifts, so Bosch's own overflows (the
  integer pressure path near 1060 hPa, the humidity intermediates) come out exactly as on the MCU.

The gas formula is chosen by the variant id register (0xF0): 0x01 is the BME688 "high" formula, anything
else the BME680 "low" formula with its range look-up tables (Bosch ``read_field_data``).

mycoedge publishes the float variant; the integer one exists to compare with on-board computation.
"""

from __future__ import annotations

import math
import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Self

from drivers.errors import CodecError

CAL_LEN = 42  # bytes: 23 from 0x8A, 14 from 0xE1, 5 from 0x00 (Bosch BME68X_LEN_COEFF_ALL)
FIELD_LEN = 17  # bytes per field block at 0x1D + 17*n (Bosch BME68X_LEN_FIELD)
FIELD_COUNT = 3  # field blocks 0..2 (parallel mode fills all three)
CHIP_ID = 0x61  # register 0xD0 (Bosch BME68X_CHIP_ID)
VARIANT_GAS_LOW = 0x00  # BME680 (Bosch BME68X_VARIANT_GAS_LOW)
VARIANT_GAS_HIGH = 0x01  # BME688 (Bosch BME68X_VARIANT_GAS_HIGH)
MAX_HEATER_STEPS = 10  # res_heat_0..9 / gas_wait_0..9 registers
MAX_HEATER_TEMP_C = 400  # Bosch calc_res_heat caps the target at 400 degC

# Status bits (Bosch bme68x_defs.h): byte 0 of a field block, and the gas LSB bytes 14 (low) / 16 (high).
NEW_DATA_MSK = 0x80
GAS_INDEX_MSK = 0x0F
GAS_RANGE_MSK = 0x0F
GASM_VALID_MSK = 0x20
HEAT_STAB_MSK = 0x10

# BME680 gas range look-up tables (Bosch calc_gas_resistance_low, integer and float builds).
_LOOKUP_TABLE1 = (
    2147483647, 2147483647, 2147483647, 2147483647, 2147483647, 2126008810, 2147483647, 2130303777,
    2147483647, 2147483647, 2143188679, 2136746228, 2147483647, 2126008810, 2147483647, 2147483647,
)  # fmt: skip
_LOOKUP_TABLE2 = (
    4096000000, 2048000000, 1024000000, 512000000, 255744255, 127110228, 64000000, 32258064,
    16016016, 8000000, 4000000, 2000000, 1000000, 500000, 250000, 125000,
)  # fmt: skip
_K1_RANGE = (0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, -0.8, 0.0, 0.0, -0.2, -0.5, 0.0, -1.0, 0.0, 0.0)
_K2_RANGE = (0.0, 0.0, 0.0, 0.0, 0.1, 0.7, 0.0, -0.8, -0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


class Bme688Error(CodecError):
    """A calibration image or field block that cannot be parsed (wrong length, bad index)."""


# ---------------------------------------------------------------------------------------------------
# C arithmetic emulation


def _i32(x: int) -> int:
    return ((x + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def _u32(x: int) -> int:
    return x & 0xFFFFFFFF


def _i16(x: int) -> int:
    return ((x + 0x8000) & 0xFFFF) - 0x8000


def _i8(x: int) -> int:
    return ((x + 0x80) & 0xFF) - 0x80


def _i64(x: int) -> int:
    return ((x + (1 << 63)) & ((1 << 64) - 1)) - (1 << 63)


def _cdiv(a: int, b: int) -> int:
    """C99 integer division: truncates toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


_FLT_MAX_ROUND = 3.4028235677973366e38  # values at or above round to infinity in binary32


def _f(x: float) -> float:
    """Round a binary64 value to the nearest binary32 (what a C ``float`` holds)."""
    if math.isnan(x) or math.isinf(x):
        return x
    if abs(x) >= _FLT_MAX_ROUND:
        return math.copysign(math.inf, x)
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def _fdiv(a: float, b: float) -> float:
    """IEEE division (a zero divisor gives inf or NaN, as in C, instead of raising)."""
    if b == 0.0:
        if a == 0.0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return _f(a / b)


def _c_float_to_int(x: float) -> int:
    """``(int)x`` as gcc does it on x86-64 (cvttss2si): truncation, out-of-range gives INT_MIN."""
    if math.isnan(x) or math.isinf(x) or not (-2147483648.0 <= x < 2147483648.0):
        return -0x80000000
    return int(x)


# float32 constants of Bosch's float build
_F_0_002 = _f(0.002)
_F_0_0005 = _f(0.0005)
_F_0_00235 = _f(0.00235)
_F_3_4 = _f(3.4)
_F_0_000000125 = _f(0.000000125)
_F_K1 = tuple(_f(v) for v in _K1_RANGE)
_F_K2 = tuple(_f(v) for v in _K2_RANGE)


# ---------------------------------------------------------------------------------------------------
# Calibration


@dataclass(frozen=True, slots=True)
class Bme688Calibration:
    """Trimming coefficients, parsed from the 42-byte image as Bosch ``get_calib_data`` does."""

    par_t1: int  # uint16
    par_t2: int  # int16
    par_t3: int  # int8
    par_p1: int  # uint16
    par_p2: int  # int16
    par_p3: int  # int8
    par_p4: int  # int16
    par_p5: int  # int16
    par_p6: int  # int8
    par_p7: int  # int8
    par_p8: int  # int16
    par_p9: int  # int16
    par_p10: int  # uint8
    par_h1: int  # uint16 (12 bits)
    par_h2: int  # uint16 (12 bits)
    par_h3: int  # int8
    par_h4: int  # int8
    par_h5: int  # int8
    par_h6: int  # uint8
    par_h7: int  # int8
    par_gh1: int  # int8
    par_gh2: int  # int16
    par_gh3: int  # int8
    res_heat_range: int  # 0..3
    res_heat_val: int  # int8
    range_sw_err: int  # -8..7

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Parse Bosch's coefficient array (byte offsets from ``bme68x_defs.h`` ``BME68X_IDX_*``)."""
        if len(data) != CAL_LEN:
            raise Bme688Error(f"calibration image is {len(data)} bytes, expected {CAL_LEN}")
        c = bytes(data)

        def u16(msb: int, lsb: int) -> int:
            return (c[msb] << 8) | c[lsb]

        return cls(
            par_t1=u16(32, 31),
            par_t2=_i16(u16(1, 0)),
            par_t3=_i8(c[2]),
            par_p1=u16(5, 4),
            par_p2=_i16(u16(7, 6)),
            par_p3=_i8(c[8]),
            par_p4=_i16(u16(11, 10)),
            par_p5=_i16(u16(13, 12)),
            par_p6=_i8(c[15]),
            par_p7=_i8(c[14]),
            par_p8=_i16(u16(19, 18)),
            par_p9=_i16(u16(21, 20)),
            par_p10=c[22],
            par_h1=((c[25] << 4) | (c[24] & 0x0F)) & 0xFFFF,
            par_h2=((c[23] << 4) | (c[24] >> 4)) & 0xFFFF,
            par_h3=_i8(c[26]),
            par_h4=_i8(c[27]),
            par_h5=_i8(c[28]),
            par_h6=c[29],
            par_h7=_i8(c[30]),
            par_gh1=_i8(c[35]),
            par_gh2=_i16(u16(34, 33)),
            par_gh3=_i8(c[36]),
            res_heat_range=(c[39] & 0x30) // 16,
            res_heat_val=_i8(c[37]),
            range_sw_err=_cdiv(_i8(c[41] & 0xF0), 16),
        )

    def to_bytes(self) -> bytes:
        """The image a sensor with these coefficients would hold (reserved bits zero)."""
        c = bytearray(CAL_LEN)

        def put16(msb: int, lsb: int, value: int) -> None:
            c[msb], c[lsb] = (value >> 8) & 0xFF, value & 0xFF

        put16(32, 31, self.par_t1)
        put16(1, 0, self.par_t2)
        c[2] = self.par_t3 & 0xFF
        put16(5, 4, self.par_p1)
        put16(7, 6, self.par_p2)
        c[8] = self.par_p3 & 0xFF
        put16(11, 10, self.par_p4)
        put16(13, 12, self.par_p5)
        c[15] = self.par_p6 & 0xFF
        c[14] = self.par_p7 & 0xFF
        put16(19, 18, self.par_p8)
        put16(21, 20, self.par_p9)
        c[22] = self.par_p10 & 0xFF
        c[25] = (self.par_h1 >> 4) & 0xFF
        c[24] = (self.par_h1 & 0x0F) | ((self.par_h2 & 0x0F) << 4)
        c[23] = (self.par_h2 >> 4) & 0xFF
        c[26] = self.par_h3 & 0xFF
        c[27] = self.par_h4 & 0xFF
        c[28] = self.par_h5 & 0xFF
        c[29] = self.par_h6 & 0xFF
        c[30] = self.par_h7 & 0xFF
        c[35] = self.par_gh1 & 0xFF
        put16(34, 33, self.par_gh2)
        c[36] = self.par_gh3 & 0xFF
        c[39] = (self.res_heat_range & 0x03) << 4
        c[37] = self.res_heat_val & 0xFF
        c[41] = (self.range_sw_err & 0x0F) << 4
        return bytes(c)


# ---------------------------------------------------------------------------------------------------
# Field data


@dataclass(frozen=True, slots=True)
class FieldData:
    """One raw 17-byte field block, unpacked as Bosch ``read_field_data`` does (both gas channels kept)."""

    new_data: bool
    gas_index: int  # heater profile step that produced this sample
    meas_index: int  # sub-measurement index (orders the three fields in parallel mode)
    adc_pres: int  # 20 bits
    adc_temp: int  # 20 bits
    adc_hum: int  # 16 bits
    adc_gas_low: int  # 10 bits, BME680 channel (bytes 13..14)
    gas_range_low: int
    flags_low: int  # gas_valid/heat_stab bits as found in byte 14
    adc_gas_high: int  # 10 bits, BME688 channel (bytes 15..16)
    gas_range_high: int
    flags_high: int  # gas_valid/heat_stab bits as found in byte 16

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Unpack one field block (register 0x1D + 17*n)."""
        if len(data) != FIELD_LEN:
            raise Bme688Error(f"field block is {len(data)} bytes, expected {FIELD_LEN}")
        b = bytes(data)
        return cls(
            new_data=bool(b[0] & NEW_DATA_MSK),
            gas_index=b[0] & GAS_INDEX_MSK,
            meas_index=b[1],
            adc_pres=(b[2] << 12) | (b[3] << 4) | (b[4] >> 4),
            adc_temp=(b[5] << 12) | (b[6] << 4) | (b[7] >> 4),
            adc_hum=(b[8] << 8) | b[9],
            adc_gas_low=(b[13] << 2) | (b[14] >> 6),
            gas_range_low=b[14] & GAS_RANGE_MSK,
            flags_low=b[14] & (GASM_VALID_MSK | HEAT_STAB_MSK),
            adc_gas_high=(b[15] << 2) | (b[16] >> 6),
            gas_range_high=b[16] & GAS_RANGE_MSK,
            flags_high=b[16] & (GASM_VALID_MSK | HEAT_STAB_MSK),
        )

    def to_bytes(self) -> bytes:
        """The register image that unpacks into this block (unused bits zero)."""
        b = bytearray(FIELD_LEN)
        b[0] = (NEW_DATA_MSK if self.new_data else 0) | (self.gas_index & GAS_INDEX_MSK)
        b[1] = self.meas_index & 0xFF
        b[2], b[3], b[4] = (
            (self.adc_pres >> 12) & 0xFF,
            (self.adc_pres >> 4) & 0xFF,
            (self.adc_pres & 0xF) << 4,
        )
        b[5], b[6], b[7] = (
            (self.adc_temp >> 12) & 0xFF,
            (self.adc_temp >> 4) & 0xFF,
            (self.adc_temp & 0xF) << 4,
        )
        b[8], b[9] = (self.adc_hum >> 8) & 0xFF, self.adc_hum & 0xFF
        b[13] = (self.adc_gas_low >> 2) & 0xFF
        b[14] = ((self.adc_gas_low & 0x3) << 6) | (self.flags_low & 0x30) | (self.gas_range_low & 0x0F)
        b[15] = (self.adc_gas_high >> 2) & 0xFF
        b[16] = ((self.adc_gas_high & 0x3) << 6) | (self.flags_high & 0x30) | (self.gas_range_high & 0x0F)
        return bytes(b)

    def gas_adc(self, variant_id: int) -> tuple[int, int]:
        """(adc, range) of the channel the variant uses."""
        if variant_id == VARIANT_GAS_HIGH:
            return self.adc_gas_high, self.gas_range_high
        return self.adc_gas_low, self.gas_range_low

    def gas_valid(self, variant_id: int) -> bool:
        """``gas_valid_r``: the gas conversion finished (byte 16 on BME688, byte 14 on BME680)."""
        flags = self.flags_high if variant_id == VARIANT_GAS_HIGH else self.flags_low
        return bool(flags & GASM_VALID_MSK)

    def heat_stab(self, variant_id: int) -> bool:
        """``heat_stab_r``: the heater reached its target temperature before the gas conversion."""
        flags = self.flags_high if variant_id == VARIANT_GAS_HIGH else self.flags_low
        return bool(flags & HEAT_STAB_MSK)

    def status(self, variant_id: int) -> int:
        """Bosch's ``bme68x_data.status`` byte (new_data | gasm_valid | heat_stab)."""
        flags = self.flags_high if variant_id == VARIANT_GAS_HIGH else self.flags_low
        return (NEW_DATA_MSK if self.new_data else 0) | flags


# ---------------------------------------------------------------------------------------------------
# Integer build (Bosch bme68x.c without BME68X_USE_FPU)


def temperature_int(cal: Bme688Calibration, adc_temp: int) -> tuple[int, int]:
    """(temperature in 0.01 degC as int16, t_fine as int32), Bosch integer ``calc_temperature``."""
    var1 = _i32((_i32(adc_temp) >> 3) - _i32(cal.par_t1 << 1))  # int32 arithmetic, stored in int64
    var2 = _i64(var1 * cal.par_t2) >> 11
    var3 = _i64((var1 >> 1) * (var1 >> 1)) >> 12
    var3 = _i64(var3 * _i32(cal.par_t3 * 16)) >> 14
    t_fine = _i32(var2 + var3)
    temp = _i16(_i32(_i32(t_fine * 5) + 128) >> 8)
    return temp, t_fine


def pressure_int(cal: Bme688Calibration, adc_pres: int, t_fine: int) -> int:
    """Pressure in Pa as uint32, Bosch integer ``calc_pressure`` including its int32 wrap-around.

    Where Bosch's C code would divide by zero (a calibration with ``par_p1 == 0``) and trap, this returns 0,
    the float build's answer for the same case.
    """
    var1 = _i32((t_fine >> 1) - 64000)
    q = var1 >> 2
    var2 = _i32((_i32(q * q) >> 11) * cal.par_p6) >> 2
    var2 = _i32(var2 + _i32(_i32(var1 * cal.par_p5) << 1))
    var2 = _i32((var2 >> 2) + _i32(cal.par_p4 << 16))
    var1 = _i32((_i32((_i32(q * q) >> 13) * _i32(cal.par_p3 << 5)) >> 3) + (_i32(cal.par_p2 * var1) >> 1))
    var1 = var1 >> 18
    var1 = _i32(_i32(32768 + var1) * cal.par_p1) >> 15
    pc = _i32(_u32(1048576 - adc_pres))
    pc = _i32(_u32(_i32(pc - (var2 >> 12)) * 3125))
    if var1 == 0:
        return 0
    # 0x40000000 = (1 << 31) >> 1: Bosch divides first for large values to stay inside int32
    pc = _i32(_cdiv(pc, var1) << 1) if pc >= 0x40000000 else _i32(_cdiv(_i32(pc << 1), var1))
    var1 = _i32(cal.par_p9 * _i32(_i32((pc >> 3) * (pc >> 3)) >> 13)) >> 12
    var2 = _i32((pc >> 2) * cal.par_p8) >> 13
    c = pc >> 8
    var3 = _i32(_i32(_i32(c * c) * c) * cal.par_p10) >> 17
    pc = _i32(pc + (_i32(_i32(_i32(var1 + var2) + var3) + _i32(cal.par_p7 << 7)) >> 4))
    return _u32(pc)


def humidity_int(cal: Bme688Calibration, adc_hum: int, t_fine: int) -> int:
    """Relative humidity in 0.001 % (0..100000), Bosch integer ``calc_humidity`` with its int32 wraps."""
    ts = _i32(_i32(t_fine * 5) + 128) >> 8
    var1 = _i32(_i32(adc_hum - _i32(cal.par_h1 * 16)) - (_cdiv(_i32(ts * cal.par_h3), 100) >> 1))
    a = _cdiv(_i32(ts * cal.par_h4), 100)
    b = _cdiv(_i32(ts * _cdiv(_i32(ts * cal.par_h5), 100)) >> 6, 100)
    var2 = _i32(cal.par_h2 * _i32(_i32(a + b) + (1 << 14))) >> 10
    var3 = _i32(var1 * var2)
    var4 = _i32(cal.par_h6 << 7)
    var4 = _i32(var4 + _cdiv(_i32(ts * cal.par_h7), 100)) >> 4
    var5 = _i32((var3 >> 14) * (var3 >> 14)) >> 10
    var6 = _i32(var4 * var5) >> 1
    hum = _i32((_i32(var3 + var6) >> 10) * 1000) >> 12
    return max(0, min(100000, hum))


def gas_resistance_low_int(cal: Bme688Calibration, adc_gas: int, gas_range: int) -> int:
    """Gas resistance in ohm (BME680 formula), Bosch integer ``calc_gas_resistance_low``."""
    gas_range &= GAS_RANGE_MSK
    var1 = _i64((1340 + 5 * cal.range_sw_err) * _LOOKUP_TABLE1[gas_range]) >> 16
    var2 = _i64(_i64(adc_gas << 15) - 16777216 + var1)
    var3 = _i64(_LOOKUP_TABLE2[gas_range] * var1) >> 9
    if var2 == 0:
        return 0
    return _u32(_cdiv(_i64(var3 + (var2 >> 1)), var2))


def gas_resistance_high_int(adc_gas: int, gas_range: int) -> int:
    """Gas resistance in ohm (BME688 formula), Bosch integer ``calc_gas_resistance_high``.

    Bosch computes ``10000 * var1 / var2`` and then multiplies by 100, so the result comes in 100-ohm steps.
    """
    var1 = 262144 >> (gas_range & GAS_RANGE_MSK)
    var2 = _i32(4096 + _i32((adc_gas - 512) * 3))
    divisor = _u32(var2)
    if divisor == 0:
        return 0
    return _u32((_u32(10000 * var1) // divisor) * 100)


def res_heat_int(cal: Bme688Calibration, temp_c: int, amb_temp_c: int = 25) -> int:
    """Heater resistance register value for a target temperature, Bosch integer ``calc_res_heat``."""
    temp = min(temp_c & 0xFFFF, MAX_HEATER_TEMP_C)  # Bosch takes a uint16_t and caps it
    amb = _i8(amb_temp_c)
    var1 = _i32(_cdiv(_i32(amb * cal.par_gh3), 1000) * 256)
    inner = _cdiv(_i32(_i32((cal.par_gh2 + 154009) * temp) * 5), 100)
    var2 = _i32((cal.par_gh1 + 784) * _cdiv(_i32(inner + 3276800), 10))
    var3 = _i32(var1 + _cdiv(var2, 2))
    var4 = _cdiv(var3, cal.res_heat_range + 4)
    var5 = _i32(131 * cal.res_heat_val + 65536)
    if var5 == 0:
        return 0
    x100 = _i32((_cdiv(var4, var5) - 250) * 34)
    return _cdiv(_i32(x100 + 50), 100) & 0xFF


# ---------------------------------------------------------------------------------------------------
# Float build (Bosch bme68x.c with BME68X_USE_FPU), binary32 emulated


def temperature_float(cal: Bme688Calibration, adc_temp: int) -> tuple[float, float]:
    """(temperature degC, t_fine), Bosch float ``calc_temperature``."""
    t = float(adc_temp)
    var1 = _f(_f(_f(t / 16384.0) - _f(cal.par_t1 / 1024.0)) * cal.par_t2)
    d = _f(_f(t / 131072.0) - _f(cal.par_t1 / 8192.0))
    var2 = _f(_f(d * d) * _f(cal.par_t3 * 16.0))
    t_fine = _f(var1 + var2)
    return _f(t_fine / 5120.0), t_fine


def pressure_float(cal: Bme688Calibration, adc_pres: int, t_fine: float) -> float:
    """Pressure in Pa, Bosch float ``calc_pressure`` (0 where Bosch avoids a division by zero)."""
    var1 = _f(_f(t_fine / 2.0) - 64000.0)
    var2 = _f(_f(var1 * var1) * _f(cal.par_p6 / 131072.0))
    var2 = _f(var2 + _f(_f(var1 * cal.par_p5) * 2.0))
    var2 = _f(_f(var2 / 4.0) + _f(cal.par_p4 * 65536.0))
    var1 = _f(_f(_f(_f(_f(cal.par_p3 * var1) * var1) / 16384.0) + _f(cal.par_p2 * var1)) / 524288.0)
    var1 = _f(_f(1.0 + _f(var1 / 32768.0)) * cal.par_p1)
    pres = _f(1048576.0 - adc_pres)
    if _c_float_to_int(var1) == 0:
        return 0.0
    pres = _fdiv(_f(_f(pres - _f(var2 / 4096.0)) * 6250.0), var1)
    var1 = _f(_f(_f(cal.par_p9 * pres) * pres) / 2147483648.0)
    var2 = _f(pres * _f(cal.par_p8 / 32768.0))
    c = _f(pres / 256.0)
    var3 = _f(_f(_f(c * c) * c) * _f(cal.par_p10 / 131072.0))
    return _f(pres + _f(_f(_f(_f(var1 + var2) + var3) + _f(cal.par_p7 * 128.0)) / 16.0))


def humidity_float(cal: Bme688Calibration, adc_hum: int, t_fine: float) -> float:
    """Relative humidity in %, Bosch float ``calc_humidity`` (clamped to 0..100)."""
    tc = _f(t_fine / 5120.0)
    var1 = _f(adc_hum - _f(_f(cal.par_h1 * 16.0) + _f(_f(cal.par_h3 / 2.0) * tc)))
    poly = _f(_f(1.0 + _f(_f(cal.par_h4 / 16384.0) * tc)) + _f(_f(_f(cal.par_h5 / 1048576.0) * tc) * tc))
    var2 = _f(var1 * _f(_f(cal.par_h2 / 262144.0) * poly))
    var3 = _f(cal.par_h6 / 16384.0)
    var4 = _f(cal.par_h7 / 2097152.0)
    hum = _f(var2 + _f(_f(_f(var3 + _f(var4 * tc)) * var2) * var2))
    if hum > 100.0:
        return 100.0
    if hum < 0.0:
        return 0.0
    return hum  # NaN falls through, as in C


def gas_resistance_low_float(cal: Bme688Calibration, adc_gas: int, gas_range: int) -> float:
    """Gas resistance in ohm (BME680 formula), Bosch float ``calc_gas_resistance_low``."""
    gas_range &= GAS_RANGE_MSK
    var1 = _f(1340.0 + _f(5.0 * cal.range_sw_err))
    var2 = _f(var1 * _f(1.0 + _f(_F_K1[gas_range] / 100.0)))
    var3 = _f(1.0 + _f(_F_K2[gas_range] / 100.0))
    ratio = _f(_fdiv(_f(adc_gas - 512.0), var2) + 1.0)
    denom = _f(_f(_f(var3 * _F_0_000000125) * float(1 << gas_range)) * ratio)
    return _fdiv(1.0, denom)


def gas_resistance_high_float(adc_gas: int, gas_range: int) -> float:
    """Gas resistance in ohm (BME688 formula), Bosch float ``calc_gas_resistance_high``."""
    var1 = 262144 >> (gas_range & GAS_RANGE_MSK)
    var2 = _i32(4096 + _i32((adc_gas - 512) * 3))
    return _fdiv(_f(1000000.0 * _f(float(var1))), _f(float(var2)))


def res_heat_float(cal: Bme688Calibration, temp_c: int, amb_temp_c: int = 25) -> int:
    """Heater resistance register value, Bosch float ``calc_res_heat`` (truncating cast to uint8)."""
    temp = float(min(temp_c & 0xFFFF, MAX_HEATER_TEMP_C))  # Bosch takes a uint16_t and caps it
    amb = float(_i8(amb_temp_c))
    var1 = _f(_f(cal.par_gh1 / 16.0) + 49.0)
    var2 = _f(_f(_f(cal.par_gh2 / 32768.0) * _F_0_0005) + _F_0_00235)
    var3 = _f(cal.par_gh3 / 1024.0)
    var4 = _f(var1 * _f(1.0 + _f(var2 * temp)))
    var5 = _f(var4 + _f(var3 * amb))
    range_factor = _fdiv(4.0, _f(4.0 + cal.res_heat_range))
    val_factor = _fdiv(1.0, _f(1.0 + _f(cal.res_heat_val * _F_0_002)))
    value = _f(_F_3_4 * _f(_f(_f(var5 * range_factor) * val_factor) - 25.0))
    return _c_float_to_int(value) & 0xFF


# ---------------------------------------------------------------------------------------------------
# Heater timing registers


def gas_wait(dur_ms: int) -> int:
    """``gas_wait_x`` register for a heating duration in ms, Bosch ``calc_gas_wait`` (forced mode).

    Bits 7:6 are a multiplier (1, 4, 16, 64), bits 5:0 the count; 0xFF caps it at 4032 ms (datasheet 5.3.3.3).
    """
    dur = dur_ms & 0xFFFF
    if dur >= 0xFC0:
        return 0xFF
    factor = 0
    while dur > 0x3F:
        dur //= 4
        factor += 1
    return (dur + factor * 64) & 0xFF


def heater_dur_shared(dur_ms: int) -> int:
    """``gas_wait_shared`` register (0x6E) for parallel mode, Bosch ``calc_heatr_dur_shared``.

    The unit is 0.477 ms (one TPH step), so the duration is first converted to steps.
    """
    dur = dur_ms & 0xFFFF
    if dur >= 0x783:
        return 0xFF
    dur = ((dur * 1000) // 477) & 0xFFFF
    factor = 0
    while dur > 0x3F:
        dur >>= 2
        factor += 1
    return (dur + factor * 64) & 0xFF


@dataclass(frozen=True, slots=True)
class HeaterStep:
    """One heater profile step: target temperature (degC) and duration.

    In forced mode ``duration`` is in ms; in parallel mode it is a multiple of the shared heater duration
    (Bosch writes it to ``gas_wait_x`` unchanged).
    """

    temp_c: int
    duration: int


@dataclass(frozen=True, slots=True)
class HeaterRegisters:
    """What Bosch ``set_conf`` writes for a profile: res_heat_x, gas_wait_x, gas_wait_shared, nb_conv."""

    res_heat: tuple[int, ...]
    gas_wait: tuple[int, ...]
    shared_dur: int | None
    nb_conv: int


def heater_registers(
    cal: Bme688Calibration,
    steps: Sequence[HeaterStep],
    *,
    mode: Literal["forced", "parallel"],
    amb_temp_c: int = 25,
    shared_dur_ms: int = 0,
    use_float: bool = True,
) -> HeaterRegisters:
    """Register values for a heater configuration, as Bosch ``set_conf`` computes them.

    Forced mode uses the first step only and ``nb_conv = 0``; parallel mode takes up to 10 steps, writes the
    durations as multipliers and needs ``shared_dur_ms`` (Bosch warns when it is 0).
    """
    res = res_heat_float if use_float else res_heat_int
    if not steps:
        raise Bme688Error("a heater configuration needs at least one step")
    if mode == "forced":
        step = steps[0]
        return HeaterRegisters(
            res_heat=(res(cal, step.temp_c, amb_temp_c),),
            gas_wait=(gas_wait(step.duration),),
            shared_dur=None,
            nb_conv=0,
        )
    if len(steps) > MAX_HEATER_STEPS:
        raise Bme688Error(f"a heater profile has at most {MAX_HEATER_STEPS} steps, got {len(steps)}")
    if shared_dur_ms <= 0:
        raise Bme688Error("parallel mode needs a shared heater duration")
    return HeaterRegisters(
        res_heat=tuple(res(cal, s.temp_c, amb_temp_c) for s in steps),
        gas_wait=tuple(s.duration & 0xFF for s in steps),
        shared_dur=heater_dur_shared(shared_dur_ms),
        nb_conv=len(steps),
    )


# ---------------------------------------------------------------------------------------------------
# Whole readings


@dataclass(frozen=True, slots=True)
class CompensatedFloat:
    """Bosch float-build outputs for one field block."""

    temperature_c: float
    pressure_pa: float
    humidity_pct: float
    gas_ohm: float
    t_fine: float


@dataclass(frozen=True, slots=True)
class CompensatedInt:
    """Bosch integer-build outputs: temperature in 0.01 degC, pressure Pa, humidity 0.001 %, gas ohm."""

    temperature_c100: int
    pressure_pa: int
    humidity_milli: int
    gas_ohm: int
    t_fine: int


def compensate_float(cal: Bme688Calibration, field: FieldData, variant_id: int) -> CompensatedFloat:
    """Every quantity of one block in Bosch's float build (the gas formula chosen by ``variant_id``)."""
    temp, t_fine = temperature_float(cal, field.adc_temp)
    adc_gas, gas_range = field.gas_adc(variant_id)
    gas = (
        gas_resistance_high_float(adc_gas, gas_range)
        if variant_id == VARIANT_GAS_HIGH
        else gas_resistance_low_float(cal, adc_gas, gas_range)
    )
    return CompensatedFloat(
        temperature_c=temp,
        pressure_pa=pressure_float(cal, field.adc_pres, t_fine),
        humidity_pct=humidity_float(cal, field.adc_hum, t_fine),
        gas_ohm=gas,
        t_fine=t_fine,
    )


def compensate_int(cal: Bme688Calibration, field: FieldData, variant_id: int) -> CompensatedInt:
    """Every quantity of one block in Bosch's integer build."""
    temp, t_fine = temperature_int(cal, field.adc_temp)
    adc_gas, gas_range = field.gas_adc(variant_id)
    gas = (
        gas_resistance_high_int(adc_gas, gas_range)
        if variant_id == VARIANT_GAS_HIGH
        else gas_resistance_low_int(cal, adc_gas, gas_range)
    )
    return CompensatedInt(
        temperature_c100=temp,
        pressure_pa=pressure_int(cal, field.adc_pres, t_fine),
        humidity_milli=humidity_int(cal, field.adc_hum, t_fine),
        gas_ohm=gas,
        t_fine=t_fine,
    )


@dataclass(frozen=True, slots=True)
class Measurement:
    """A compensated sample and whether it may be published as real.

    ``valid`` needs ``new_data``, ``gas_valid`` and ``heat_stab`` (Bosch returns no values at all without
    ``new_data``; without the other two it still computes a gas resistance that only the bits disown) and
    finite numbers. ``reason`` names the first missing condition.
    """

    values: CompensatedFloat
    new_data: bool
    gas_valid: bool
    heat_stab: bool
    gas_index: int
    meas_index: int
    reason: str | None

    @property
    def valid(self) -> bool:
        return self.reason is None


def measure(cal: Bme688Calibration, field: FieldData, variant_id: int) -> Measurement:
    """Compensate one block in the float build and judge it by its status bits."""
    values = compensate_float(cal, field, variant_id)
    gas_valid, heat_stab = field.gas_valid(variant_id), field.heat_stab(variant_id)
    reason: str | None = None
    if not field.new_data:
        reason = "no_new_data"
    elif not gas_valid:
        reason = "gas_not_valid"
    elif not heat_stab:
        reason = "heater_not_stable"
    elif not all(
        math.isfinite(v) for v in (values.temperature_c, values.pressure_pa, values.humidity_pct, values.gas_ohm)
    ):
        reason = "not_finite"
    return Measurement(values, field.new_data, gas_valid, heat_stab, field.gas_index, field.meas_index, reason)


def order_fields(fields: Sequence[FieldData]) -> list[FieldData]:
    """The fields with new data, oldest first, as Bosch ``sort_sensor_data`` orders parallel-mode fields."""
    ptr = list(fields)
    for i in range(len(ptr) - 1):
        for j in range(i + 1, len(ptr)):
            lo, hi = ptr[i], ptr[j]
            if lo.new_data and hi.new_data:
                diff = hi.meas_index - lo.meas_index
                if -3 < diff < 0 or diff > 2:
                    ptr[i], ptr[j] = hi, lo
            elif hi.new_data:
                ptr[i], ptr[j] = hi, lo
    return [f for f in ptr if f.new_data]


# ---------------------------------------------------------------------------------------------------
# IAQ estimate (see docs/iaq.md; not Bosch BSEC)


@dataclass(frozen=True, slots=True)
class IaqEstimate:
    """An indoor-air-quality index on BSEC's 0..500 scale (0 best), with how settled its baseline is."""

    iaq: float
    gas_baseline_ohm: float
    accuracy: int  # 0 burn-in, 1 baseline from few samples, 2 settled (mirrors BSEC's 0..3 meaning loosely)


class IaqEstimator:
    """Baseline IAQ from gas resistance and humidity (documented in docs/iaq.md).

    The gas baseline is the mean of the highest quarter of the last ``window`` valid gas readings taken
    after ``burn_in`` samples: clean air gives the highest resistance, so the upper quartile tracks it
    while ignoring pollution events. Humidity contributes 25 % of the score by its distance from 40 % RH.
    """

    HUMIDITY_BASELINE_PCT = 40.0  # comfortable indoor humidity used as the optimum
    HUMIDITY_WEIGHT = 0.25  # share of the 0..100 score given to humidity; gas gets the rest

    def __init__(self, *, burn_in: int = 30, window: int = 300) -> None:
        self._burn_in = burn_in
        self._seen = 0
        self._size = window
        self._window: deque[float] = deque(maxlen=window)

    def update(self, gas_ohm: float, humidity_pct: float) -> IaqEstimate | None:
        """Feed one valid reading; None while still burning in or when the input is not usable."""
        if not (math.isfinite(gas_ohm) and math.isfinite(humidity_pct)) or gas_ohm <= 0:
            return None
        self._seen += 1
        if self._seen <= self._burn_in:
            return None
        self._window.append(gas_ohm)
        ranked = sorted(self._window)
        top = ranked[len(ranked) - max(1, len(ranked) // 4) :]
        baseline = sum(top) / len(top)
        return IaqEstimate(
            iaq=iaq_score(gas_ohm, humidity_pct, baseline),
            gas_baseline_ohm=baseline,
            accuracy=2 if len(self._window) >= self._size // 2 else 1,
        )


def iaq_score(gas_ohm: float, humidity_pct: float, gas_baseline_ohm: float) -> float:
    """IAQ 0..500 from one reading and a gas baseline (0 = gas at baseline and humidity at 40 %)."""
    hb = IaqEstimator.HUMIDITY_BASELINE_PCT
    hw = IaqEstimator.HUMIDITY_WEIGHT
    hum = max(0.0, min(100.0, humidity_pct))
    # distance from the optimum, scaled so 0 % and 100 % RH both score 0
    hum_score = ((100.0 - hum) / (100.0 - hb) if hum >= hb else hum / hb) * hw * 100.0
    ratio = min(1.0, gas_ohm / gas_baseline_ohm) if gas_baseline_ohm > 0 else 0.0
    gas_score = ratio * (1.0 - hw) * 100.0
    quality = hum_score + gas_score  # 0..100, 100 best
    return round((100.0 - quality) * 5.0, 1)
