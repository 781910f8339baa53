"""The telemetry outbox payload is assembled from pieces for speed; it must be exactly what json.dumps writes."""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st

from daemon.store import telemetry_record
from drivers.model import Quantity, Reading

names = st.text(min_size=1, max_size=12)
values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**40), 2**40))
meta_values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8),
                        st.lists(st.integers(), max_size=3))
readings = st.builds(
    Reading,
    device_id=st.text(max_size=24),
    sensor=st.text(max_size=16),
    quantities=st.dictionaries(names, st.builds(Quantity, value=values, unit=st.text(max_size=6)), max_size=5),
    ts=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(0, 2**40)),
    seq=st.integers(0, 2**63),
    valid=st.booleans(),
    meta=st.dictionaries(names, meta_values, max_size=4),
)


def _reference(r: Reading) -> bytes:
    """The payload as it was built before: one json.dumps over the whole record."""
    quantities = {name: {"value": q.value, "unit": q.unit} for name, q in r.quantities.items()}
    meta = json.loads(json.dumps(dict(r.meta), sort_keys=True, default=str))
    return json.dumps({"device_id": r.device_id, "sensor": r.sensor, "ts": r.ts, "seq": r.seq, "valid": r.valid,
                       "quantities": quantities, "meta": meta}, sort_keys=True, separators=(",", ":")).encode()


@given(readings)
def test_payload_is_byte_for_byte_json_dumps(r: Reading) -> None:
    q_json, meta_json, payload = telemetry_record(r)
    assert payload == _reference(r)
    decoded = json.loads(payload)
    assert json.loads(q_json) == decoded["quantities"] or any(
        isinstance(q.value, float) and math.isnan(q.value) for q in r.quantities.values())
    assert json.loads(meta_json) == decoded["meta"]


def test_a_plain_reading() -> None:
    r = Reading("mycobrain-1", "bme688_a", {"temperature_c": Quantity(21.5, "°C")}, 1700000000.25, 7)
    q_json, meta_json, payload = telemetry_record(r)
    assert payload == (b'{"device_id":"mycobrain-1","meta":{},"quantities":{"temperature_c":{"unit":"\\u00b0C",'
                       b'"value":21.5}},"sensor":"bme688_a","seq":7,"ts":1700000000.25,"valid":true}')
    assert (q_json, meta_json) == ('{"temperature_c":{"unit":"\\u00b0C","value":21.5}}', "{}")
