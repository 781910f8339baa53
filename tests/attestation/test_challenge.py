"""The verifier state machine on recorded swtpm evidence, with an injected clock and random source."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import errors
from attestation.challenge import Verifier, VerifierPolicy
from attestation.levels import TrustLevel
from attestation.model import Evidence
from attestation.pcr import PcrPolicy, PcrSelection
from attestation.verify import ek_id
from tests.attestation.record import seeded_random

DATA = json.loads((Path(__file__).parent / "data" / "recorded.json").read_text())
EVIDENCE = Evidence.from_json(DATA["evidence"])
CA = DATA["ca_bundle"].encode()
T0 = DATA["issued_at"]
SUBJECT = DATA["subject"]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_verifier(clock: Clock, verifier_id: str = "local", **policy: Any) -> Verifier:
    settings: dict[str, Any] = {"ca_bundle": CA, "pcr_selection": PcrSelection.parse("sha256:0-7,16")}
    settings.update(policy)
    return Verifier(
        VerifierPolicy(**settings), verifier_id=verifier_id, clock=clock, random_bytes=seeded_random(b"recorded")
    )


def challenged(clock: Clock | None = None, **policy: Any) -> tuple[Verifier, Clock]:
    clock = clock or Clock(T0)
    verifier = make_verifier(clock, **policy)
    challenge = verifier.issue_challenge(SUBJECT, EVIDENCE.identity)
    # The recording is reproduced (the credential itself is encrypted with a fresh seed each time).
    fields = ("challenge_id", "nonce", "pcr_selection")
    assert {k: challenge.to_json()[k] for k in fields} == {k: DATA["challenge"][k] for k in fields}
    return verifier, clock


def test_recorded_evidence_earns_level_3_until_the_quote_ages_out() -> None:
    verifier, clock = challenged(grant_ttl_s=600)
    grant = verifier.verify(SUBJECT, EVIDENCE)
    assert grant.level == TrustLevel.HARDWARE_ATTESTED
    assert grant.ek_basis == "certificate"
    assert grant.expires_at == T0 + 600
    clock.now = T0 + 599
    assert verifier.level(SUBJECT) == TrustLevel.HARDWARE_ATTESTED
    clock.now = T0 + 601
    assert verifier.level(SUBJECT) == TrustLevel.UNTRUSTED
    assert verifier.grant(SUBJECT) is None


def test_a_replayed_nonce_is_refused() -> None:
    verifier, _ = challenged()
    verifier.verify(SUBJECT, EVIDENCE)
    with pytest.raises(errors.NonceReplayedError) as caught:
        verifier.verify(SUBJECT, EVIDENCE)
    assert caught.value.reason == "nonce_replayed"
    assert verifier.stats()["refused_nonce_replayed"] == 1


def test_an_expired_challenge_is_refused() -> None:
    verifier, clock = challenged(challenge_ttl_s=30)
    clock.now = T0 + 31
    with pytest.raises(errors.ChallengeExpiredError) as caught:
        verifier.verify(SUBJECT, EVIDENCE)
    assert caught.value.reason == "challenge_expired"
    assert verifier.level(SUBJECT) == TrustLevel.UNTRUSTED


def test_evidence_for_a_challenge_issued_to_someone_else_is_refused() -> None:
    verifier, _ = challenged()
    with pytest.raises(errors.UnknownChallengeError):
        verifier.verify("agent-2", EVIDENCE)


def test_a_wrong_activation_proof_means_the_ak_is_not_bound_to_the_ek() -> None:
    verifier, _ = challenged()
    with pytest.raises(errors.AkNotBoundError) as caught:
        verifier.verify(SUBJECT, replace(EVIDENCE, activation_proof=bytes(32)))
    assert caught.value.reason == "ak_not_bound"


def test_a_missing_activation_proof_means_the_ak_is_not_bound() -> None:
    verifier, _ = challenged()
    with pytest.raises(errors.AkNotBoundError):
        verifier.verify(SUBJECT, replace(EVIDENCE, activation_proof=None))


def test_a_plain_challenge_needs_an_ak_bound_earlier() -> None:
    clock = Clock(T0)
    verifier = make_verifier(clock)
    plain = verifier.issue_challenge(SUBJECT)
    assert plain.credential_blob is None
    with pytest.raises(errors.AkNotBoundError):
        verifier.verify(SUBJECT, replace(EVIDENCE, challenge_id=plain.challenge_id))


def test_an_ek_certificate_not_chaining_to_the_configured_ca_is_refused() -> None:
    from tests.attestation.test_verify import _rogue_ca

    verifier, _ = challenged(ca_bundle=_rogue_ca())
    with pytest.raises(errors.EkCertificateError) as caught:
        verifier.verify(SUBJECT, EVIDENCE)
    assert caught.value.reason == "ek_certificate_untrusted"


def test_an_enrolled_ek_without_certificate_is_accepted() -> None:
    enrolled = frozenset({ek_id(EVIDENCE.identity.ek_public)})
    verifier, _ = challenged(enrolled_ek_ids=enrolled, ca_bundle=None)
    bare = replace(EVIDENCE, identity=replace(EVIDENCE.identity, ek_certificate=None), ek_id=next(iter(enrolled)))
    assert verifier.verify(SUBJECT, bare).ek_basis == "enrolled"


def test_an_unenrolled_ek_without_certificate_is_refused() -> None:
    verifier, _ = challenged(enrolled_ek_ids=frozenset({"sha256:" + "00" * 32}))
    bare = replace(EVIDENCE, identity=replace(EVIDENCE.identity, ek_certificate=None))
    with pytest.raises(errors.EkNotEnrolledError) as caught:
        verifier.verify(SUBJECT, bare)
    assert caught.value.reason == "ek_not_enrolled"


def test_pcrs_differing_from_the_expected_values_are_a_pcr_mismatch() -> None:
    verifier, _ = challenged(pcr_policy=PcrPolicy(expected={"sha256": {16: (bytes(32),)}}))
    with pytest.raises(errors.PcrMismatchError) as caught:
        verifier.verify(SUBJECT, EVIDENCE)
    assert caught.value.reason == "pcr_mismatch"


def test_pcrs_equal_to_one_of_the_expected_values_pass() -> None:
    pcr16 = EVIDENCE.quote.pcr_values["sha256"][16]
    policy = PcrPolicy(expected={"sha256": {16: (bytes(32), pcr16), 0: (bytes(32),)}})
    verifier, _ = challenged(pcr_policy=policy)
    assert verifier.verify(SUBJECT, EVIDENCE).level == TrustLevel.HARDWARE_ATTESTED


def test_a_policy_requiring_an_event_log_refuses_evidence_without_one() -> None:
    verifier, _ = challenged(pcr_policy=PcrPolicy(replay_event_log=True))
    with pytest.raises(errors.PcrMismatchError):
        verifier.verify(SUBJECT, EVIDENCE)


# --- level 4 ---------------------------------------------------------------------------------------------

WRITE = DATA["write"]


def signed_write(verifier: Verifier, **changes: Any) -> Any:
    args = {
        "method": WRITE["method"], "path": WRITE["path"], "body": base64.b64decode(WRITE["body"]),
        "timestamp": WRITE["timestamp"], "signature": base64.b64decode(WRITE["signature"]),
    }  # fmt: skip
    args.update(changes)
    return verifier.verify_signed_write(SUBJECT, **args)


def test_a_write_signed_by_the_attested_ak_is_level_4_for_that_request() -> None:
    verifier, clock = challenged()
    verifier.verify(SUBJECT, EVIDENCE)
    clock.now = WRITE["timestamp"]
    assert signed_write(verifier).level == TrustLevel.CRYPTOGRAPHICALLY_PROVEN
    assert verifier.level(SUBJECT) == TrustLevel.HARDWARE_ATTESTED  # unsigned requests stay at 3


def test_a_signed_write_is_accepted_once() -> None:
    verifier, clock = challenged()
    verifier.verify(SUBJECT, EVIDENCE)
    clock.now = WRITE["timestamp"]
    signed_write(verifier)
    with pytest.raises(errors.NonceReplayedError):
        signed_write(verifier)


def test_a_write_whose_body_was_changed_is_refused() -> None:
    verifier, clock = challenged()
    verifier.verify(SUBJECT, EVIDENCE)
    clock.now = WRITE["timestamp"]
    with pytest.raises(errors.RequestSignatureError) as caught:
        signed_write(verifier, body=b'{"x":2}')
    assert caught.value.reason == "request_signature_invalid"


def test_a_stale_signed_write_is_refused() -> None:
    verifier, clock = challenged()
    verifier.verify(SUBJECT, EVIDENCE)
    clock.now = WRITE["timestamp"] + 3600
    with pytest.raises((errors.RequestSignatureError, errors.NotAttestedError)):
        signed_write(verifier)


def test_a_signed_write_without_attestation_is_refused() -> None:
    verifier = make_verifier(Clock(WRITE["timestamp"]))
    with pytest.raises(errors.NotAttestedError):
        signed_write(verifier)


# --- level 5 ---------------------------------------------------------------------------------------------


def test_two_distinct_admin_approvals_give_level_5() -> None:
    verifier, _ = challenged()
    verifier.verify(SUBJECT, EVIDENCE)
    assert verifier.approve(SUBJECT, "alice").level == TrustLevel.HARDWARE_ATTESTED
    assert verifier.approve(SUBJECT, "alice").level == TrustLevel.HARDWARE_ATTESTED
    grant = verifier.approve(SUBJECT, "bob")
    assert grant.level == TrustLevel.MULTI_PARTY_VERIFIED
    assert grant.basis == ("quote", "approval:alice", "approval:bob")


def test_approval_without_attestation_is_refused() -> None:
    verifier = make_verifier(Clock(T0))
    with pytest.raises(errors.NotAttestedError):
        verifier.approve(SUBJECT, "alice")


def _peer(clock: Clock) -> tuple[Verifier, ed25519.Ed25519PrivateKey, bytes]:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    peer = make_verifier(clock, verifier_id="peer-node")
    peer.issue_challenge(SUBJECT, EVIDENCE.identity)
    peer.verify(SUBJECT, EVIDENCE)
    return peer, key, pem


def test_two_independent_verifiers_agreeing_give_level_5() -> None:
    clock = Clock(T0)
    peer, key, pem = _peer(clock)
    verifier, _ = challenged(clock, trusted_verifiers={"peer-node": pem})
    verifier.verify(SUBJECT, EVIDENCE)
    statement = peer.statement(SUBJECT)
    grant = verifier.corroborate(statement, key.sign(statement))
    assert grant.level == TrustLevel.MULTI_PARTY_VERIFIED
    assert "verifier:peer-node" in grant.basis


def test_a_statement_from_an_untrusted_verifier_is_refused() -> None:
    clock = Clock(T0)
    peer, key, _ = _peer(clock)
    verifier, _ = challenged(clock)
    verifier.verify(SUBJECT, EVIDENCE)
    statement = peer.statement(SUBJECT)
    with pytest.raises(errors.CorroborationError):
        verifier.corroborate(statement, key.sign(statement))


def test_a_statement_with_a_bad_signature_is_refused() -> None:
    clock = Clock(T0)
    peer, _, pem = _peer(clock)
    verifier, _ = challenged(clock, trusted_verifiers={"peer-node": pem})
    verifier.verify(SUBJECT, EVIDENCE)
    statement = peer.statement(SUBJECT)
    with pytest.raises(errors.CorroborationError):
        verifier.corroborate(statement, ed25519.Ed25519PrivateKey.generate().sign(statement))


def test_a_statement_about_another_ak_is_refused() -> None:
    clock = Clock(T0)
    peer, key, pem = _peer(clock)
    verifier, _ = challenged(clock, trusted_verifiers={"peer-node": pem})
    verifier.verify(SUBJECT, EVIDENCE)
    doc = json.loads(peer.statement(SUBJECT))
    doc["ak_name"] = "00" * 34
    statement = json.dumps(doc, sort_keys=True).encode()
    with pytest.raises(errors.CorroborationError):
        verifier.corroborate(statement, key.sign(statement))


FIELDS = ["quote", "signature", "ak_public", "ek_public", "ek_certificate", "activation_proof"]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(FIELDS), st.binary(max_size=200))
def test_arbitrary_bytes_in_any_evidence_field_are_refused_with_an_attestation_error(field: str, junk: bytes) -> None:
    verifier, _ = challenged()
    doc = dict(DATA["evidence"], **{field: base64.b64encode(junk).decode()})
    with pytest.raises(errors.AttestationError):
        verifier.verify(SUBJECT, Evidence.from_json(doc))
    assert verifier.level(SUBJECT) == TrustLevel.UNTRUSTED
