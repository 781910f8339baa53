"""Property tests for the pure codecs: PCR selections, the TCG event log, and the JSON wire model."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import errors
from attestation.eventlog import encode_event_log, events_for, parse_event_log
from attestation.model import AttesterIdentity, Challenge, Evidence, Quote
from attestation.pcr import (
    MeasuredEvent,
    PcrPolicy,
    PcrSelection,
    check_replay,
    extend,
    pcr_composite_digest,
    replay,
)

BANK_NAMES = ["sha1", "sha256", "sha384", "sha512"]
SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}

selections = st.lists(
    st.tuples(st.sampled_from(BANK_NAMES), st.sets(st.integers(0, 23), min_size=1)),
    min_size=1, max_size=4, unique_by=lambda t: t[0],
).map(lambda banks: PcrSelection(tuple((b, tuple(sorted(i))) for b, i in banks)))  # fmt: skip


@given(selections)
def test_pcr_selection_round_trips_through_text_and_tpml(selection: PcrSelection) -> None:
    assert PcrSelection.parse(str(selection)) == selection
    assert PcrSelection.from_tpml(selection.to_tpml()) == selection
    assert sum(c.count() for c in selection.chunks(8)) == selection.count()
    assert all(c.count() <= 8 for c in selection.chunks(8))


def test_pcr_selection_accepts_ranges_and_all() -> None:
    assert PcrSelection.parse("sha256:0-3,16") == PcrSelection((("sha256", (0, 1, 2, 3, 16)),))
    assert PcrSelection.parse("sha1:all").count() == 24


@pytest.mark.parametrize("text", ["", "sha256", "md5:0", "sha256:24", "sha256:3-1", "sha256:x", "sha256:0+sha256:1"])
def test_bad_pcr_selections_are_typed_errors(text: str) -> None:
    with pytest.raises(errors.PcrSelectionError):
        PcrSelection.parse(text)


@given(st.text(max_size=40))
def test_arbitrary_selection_text_raises_only_selection_errors(text: str) -> None:
    with contextlib.suppress(errors.PcrSelectionError):
        PcrSelection.parse(text)


def test_composite_digest_is_the_hash_of_values_in_selection_order() -> None:
    selection = PcrSelection.parse("sha256:1,0")
    values = {"sha256": {0: b"\x00" * 32, 1: b"\x01" * 32}}
    assert pcr_composite_digest(selection, values, "sha256") == hashlib.sha256(b"\x00" * 32 + b"\x01" * 32).digest()


# --- event log -------------------------------------------------------------------------------------------

events = st.lists(
    st.builds(
        MeasuredEvent,
        pcr=st.integers(0, 23),
        event_type=st.integers(4, 0xFFFF),  # not EV_NO_ACTION
        digests=st.fixed_dictionaries({"sha256": st.binary(min_size=32, max_size=32),
                                       "sha1": st.binary(min_size=20, max_size=20)}),
        data=st.binary(max_size=64),
    ),
    max_size=20,
)  # fmt: skip


@given(events)
def test_event_log_round_trips(log: list[MeasuredEvent]) -> None:
    parsed = parse_event_log(encode_event_log(log, banks=("sha1", "sha256")))
    assert parsed[1:] == log  # the first record is the Spec ID header


@settings(max_examples=400)
@given(st.binary(max_size=400))
def test_arbitrary_event_log_bytes_raise_only_format_errors(data: bytes) -> None:
    with contextlib.suppress(errors.EventLogFormatError):
        parse_event_log(data)


@given(events, st.data())
def test_a_truncated_event_log_is_a_format_error(log: list[MeasuredEvent], data: Any) -> None:
    encoded = encode_event_log(log, banks=("sha1", "sha256"))
    cut = data.draw(st.integers(1, len(encoded) - 1))
    try:
        parse_event_log(encoded[:cut])
    except errors.EventLogFormatError:
        return
    # A cut on a record boundary is a shorter valid log.


def test_replay_extends_from_zero_and_skips_no_action_events() -> None:
    a, b = hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()
    log = [*events_for({0: [a, b]}), MeasuredEvent(0, 3, {"sha256": a})]
    expected = extend(extend(bytes(32), "sha256", a), "sha256", b)
    assert replay(log) == {"sha256": {0: expected}}
    check_replay({"sha256": {0: expected}}, log)
    with pytest.raises(errors.PcrMismatchError):
        check_replay({"sha256": {0: bytes(32)}}, log)
    PcrPolicy(replay_event_log=True).check({"sha256": {0: expected}}, parse_event_log(encode_event_log(log)))


# --- JSON wire model -------------------------------------------------------------------------------------

blobs = st.binary(min_size=1, max_size=64)
values_for = st.dictionaries(st.integers(0, 23), st.binary(min_size=32, max_size=32), max_size=5).map(
    lambda d: {"sha256": d}
)


@given(st.binary(min_size=16, max_size=64), selections, st.floats(0, 4e9), st.one_of(st.none(), blobs))
def test_challenge_json_round_trips(nonce: bytes, selection: PcrSelection, expires: float, cred: bytes | None) -> None:
    challenge = Challenge("c1", nonce, selection, expires, cred, cred)
    assert Challenge.from_json(challenge.to_json()) == challenge


@given(blobs, blobs, values_for, st.one_of(st.none(), blobs), st.one_of(st.none(), blobs))
def test_evidence_json_round_trips(
    attest: bytes, sig: bytes, values: dict[str, dict[int, bytes]], cert: bytes | None, proof: bytes | None
) -> None:
    evidence = Evidence(
        challenge_id="c1",
        quote=Quote(attest, sig, PcrSelection.parse("sha256:0"), values),
        identity=AttesterIdentity(ak_public=attest, ek_public=sig, ek_certificate=cert),
        activation_proof=proof,
        ek_id="sha256:ab",
        event_log=proof,
    )
    assert Evidence.from_json(evidence.to_json()) == evidence


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=20,
)


@settings(max_examples=300)
@given(json_values, st.sampled_from(["quote", "signature", "pcr_values", "nonce", "challenge_id", "ak_public"]))
def test_arbitrary_json_raises_only_format_errors(value: Any, key: str) -> None:
    sample = {
        "challenge_id": "c", "quote": "AA==", "signature": "AA==", "pcr_selection": "sha256:0",
        "pcr_values": {}, "ak_public": "AA==", "ek_public": "AA==", "nonce": "A" * 24, "expires_at": 1,
    }  # fmt: skip
    for doc in (value, {**sample, key: value}):
        for cls in (Evidence, Challenge, AttesterIdentity):
            with contextlib.suppress(errors.EvidenceFormatError):
                cls.from_json(doc)
