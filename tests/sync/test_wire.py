"""The ingest wire format: round trips and fuzzing (pure, no I/O)."""

from __future__ import annotations

import contextlib
import gzip
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.sync.wire import BatchDecodeError, decode_batch, encode_batch, idempotency_key, parse_retry_after


@dataclass(frozen=True)
class Rec:
    seq: int
    stream: str
    record_id: str
    payload: bytes
    created: float


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
records = st.lists(
    st.tuples(st.text(min_size=1, max_size=40), json_values, st.floats(0, 4e9, allow_nan=False)),
    min_size=1, max_size=20,
)


@given(items=records, stream=st.sampled_from(["telemetry", "maif", "audit", "memory", "events"]),
       source=st.text(max_size=30))
def test_a_batch_round_trips_through_gzip_and_json(items: list[tuple[str, object, float]], stream: str,
                                                   source: str) -> None:
    recs = [Rec(i + 1, stream, rid, json.dumps(value).encode(), created)
            for i, (rid, value, created) in enumerate(items)]
    encoded = encode_batch(source, stream, recs)
    batch = decode_batch(gzip.decompress(encoded.body))
    assert batch.source == source and batch.stream == stream
    expected = [(rid, i + 1, value) for i, (rid, value, _) in enumerate(items)]
    assert [(r.id, r.seq, r.payload) for r in batch.records] == expected
    assert [r.created for r in batch.records] == [c for _, _, c in items]
    assert (encoded.first_seq, encoded.last_seq, encoded.count) == (1, len(items), len(items))
    assert encoded.idempotency_key == idempotency_key(source, stream, [rid for rid, _, _ in items])


@given(payload=st.binary(max_size=64))
def test_any_payload_bytes_arrive_intact_as_json_or_base64(payload: bytes) -> None:
    encoded = encode_batch("n", "events", [Rec(1, "events", "r", payload, 1.0)])
    record = decode_batch(gzip.decompress(encoded.body)).records[0]
    if record.payload_is_b64:
        assert record.payload == payload
    else:
        assert record.payload == json.loads(payload)


@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_the_codec_error(raw: bytes) -> None:
    with contextlib.suppress(BatchDecodeError):
        decode_batch(raw)


@given(doc=st.dictionaries(st.sampled_from(["source", "stream", "records", "x"]),
                           json_values | st.lists(st.dictionaries(
                               st.sampled_from(["id", "seq", "created", "payload", "payload_b64"]), json_values),
                               max_size=3)))
def test_arbitrary_json_documents_never_raise_anything_but_the_codec_error(doc: dict[str, object]) -> None:
    with contextlib.suppress(BatchDecodeError):
        decode_batch(json.dumps(doc).encode())


@pytest.mark.parametrize(("body", "needle"), [
    (b"[]", "JSON object"),
    (b'{"source":"n","stream":"Bad!","records":[]}', "stream"),
    (b'{"source":"n","stream":"events","records":[]}', "empty"),
    (b'{"source":"n","stream":"events","records":[{"id":"","seq":1,"created":1,"payload":1}]}', "id"),
    (b'{"source":"n","stream":"events","records":[{"id":"a","seq":true,"created":1,"payload":1}]}', "seq"),
    (b'{"source":"n","stream":"events","records":[{"id":"a","seq":1,"created":1}]}', "payload"),
    (b'{"source":"n","stream":"events","records":[{"id":"a","seq":1,"created":1,"payload_b64":"!!"}]}', "base64"),
])
def test_defects_are_named(body: bytes, needle: str) -> None:
    with pytest.raises(BatchDecodeError, match=needle):
        decode_batch(body)


def test_the_idempotency_key_depends_on_the_records_only() -> None:
    assert idempotency_key("n", "s", ["a", "b"]) == idempotency_key("n", "s", ["a", "b"])
    assert idempotency_key("n", "s", ["a", "b"]) != idempotency_key("n", "s", ["a", "b", "c"])
    assert idempotency_key("n", "s", ["ab"]) != idempotency_key("n", "s", ["a", "b"])


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(format_datetime(datetime.fromtimestamp(now + 30, UTC), usegmt=True), now) == 30.0
    assert parse_retry_after(format_datetime(datetime.fromtimestamp(now - 30, UTC), usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("-5", now) is None
