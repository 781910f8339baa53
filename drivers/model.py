"""Immutable models shared by every device driver and consumed by the daemon."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Quantity:
    """One measured value with its unit (SI or the unit the sensor natively reports)."""

    value: float
    unit: str


@dataclass(frozen=True, slots=True)
class Reading:
    """One sample of one sensor of one device; ``seq`` increases per device so gaps are visible.

    ``valid`` is False when the device flagged the sample as not trustworthy (e.g. BME688 heater not
    stable): such readings are kept and forwarded with the flag, never presented as real values.
    """

    device_id: str
    sensor: str
    quantities: Mapping[str, Quantity]
    ts: float
    seq: int
    valid: bool = True
    meta: Mapping[str, object] = field(default_factory=dict)
