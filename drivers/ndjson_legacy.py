"""The MycoBrain's legacy newline-delimited JSON mode, read-only: a pure line parser.

Two shapes are seen on the wire. The legacy firmware (PROTOCOLS.md section 1) sends one object per line
with ``type`` (``ack``, ``err``, ``telemetry``, ``periph_list``, ``status``), ``ts`` and ``board_id``.
The current Side A firmware, after the text commands ``fmt json`` and ``live on``, prints per-sensor
lines ``{"ts_ms", "sensor": "AMB"|"ENV", "tC", "rh", "p_hPa", "gas", ...}`` (main.cpp
``printOneSensorNdjson``) with no board id. Both become ``LegacyLine``; telemetry maps onto the same
sensor groups and quantity names as MDP telemetry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from drivers.errors import CodecError

MAX_LINE = 2048  # longest line we buffer; the firmware's JSON documents are at most 768 bytes

LEGACY_TYPES = frozenset({"ack", "err", "telemetry", "periph_list", "status"})

# Legacy and live-line field names -> (sensor group, quantity name). BME688 "AMB" (0x77) is the
# firmware's slot A and "ENV" (0x76) slot B (main.cpp ``initSensors``).
_FIELD_ALIASES: dict[str, str] = {
    "temperature_c": "temperature_c", "temp_c": "temperature_c", "tC": "temperature_c",
    "humidity_pct": "humidity_pct", "rh": "humidity_pct", "humidity": "humidity_pct",
    "pressure_hpa": "pressure_hpa", "p_hPa": "pressure_hpa", "pressure": "pressure_hpa",
    "gas_ohm": "gas_ohm", "gas": "gas_ohm",
    "iaq": "iaq", "co2eq": "co2_equivalent", "co2_equivalent": "co2_equivalent",
    "voc": "voc_equivalent", "voc_equivalent": "voc_equivalent",
}
_SLOT = {"AMB": "bme688_a", "ENV": "bme688_b", "a": "bme688_a", "b": "bme688_b"}
_ANALOG = ("ai1", "ai2", "ai3", "ai4", "soil_moisture")


class LegacyLineError(CodecError):
    """A line that is not a legacy NDJSON object."""

    kind = "ndjson"


@dataclass(frozen=True, slots=True)
class LegacyLine:
    kind: str  # one of LEGACY_TYPES, or "live" for the per-sensor live lines
    board_id: str | None
    ts_ms: float | None
    data: Mapping[str, Any] = field(default_factory=dict)


def parse_line(line: bytes) -> LegacyLine:
    """Parse one line (without its newline); raises ``LegacyLineError``."""
    text = line.strip()
    if not text.startswith(b"{") or len(text) > MAX_LINE:
        raise LegacyLineError("not a JSON object line")
    try:
        obj = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise LegacyLineError(f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise LegacyLineError("not a JSON object")
    kind = obj.get("type")
    board = obj.get("board_id")
    board_id = board if isinstance(board, str) and board else None
    if isinstance(kind, str) and kind in LEGACY_TYPES and ("ts" in obj or board_id is not None):
        return LegacyLine(kind, board_id, _number(obj.get("ts")), obj)
    if isinstance(obj.get("sensor"), str) and "ts_ms" in obj:
        return LegacyLine("live", board_id, _number(obj.get("ts_ms")), obj)
    raise LegacyLineError("JSON line without the legacy fields (type+ts/board_id, or sensor+ts_ms)")


def telemetry_groups(line: LegacyLine) -> dict[str, dict[str, float]]:
    """Numeric telemetry of a ``telemetry`` or ``live`` line, grouped like MDP readings."""
    groups: dict[str, dict[str, float]] = {}
    data = line.data
    if line.kind == "live":
        slot = _SLOT.get(str(data.get("sensor")), f"bme688_{str(data.get('sensor')).lower()}")
        _collect(groups, slot, data)
        return groups
    if line.kind != "telemetry":
        return groups
    bme = data.get("bme688")
    if isinstance(bme, dict):
        for key, obj in bme.items():
            if isinstance(obj, dict):
                _collect(groups, _SLOT.get(str(key), f"bme688_{key}"), obj)
    _collect(groups, "bme688_a", data)
    analog_src = data.get("analog") if isinstance(data.get("analog"), dict) else data
    assert isinstance(analog_src, dict)
    analog = {k: v for k in _ANALOG if (v := _number(analog_src.get(k))) is not None}
    if analog:
        groups["analog"] = analog
    return groups


def _collect(groups: dict[str, dict[str, float]], sensor: str, obj: Mapping[str, Any]) -> None:
    for key, value in obj.items():
        name = _FIELD_ALIASES.get(key)
        number = _number(value)
        if name is not None and number is not None:
            groups.setdefault(sensor, {})[name] = number


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None
