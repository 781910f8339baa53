"""Pure verification of recorded swtpm evidence: every refusal has its own error class and reason code."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from tpm2_pytss import TPM2B_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE
from tpm2_pytss.constants import TPM2_ALG, TPMA_OBJECT

from attestation import errors
from attestation.model import Evidence
from attestation.pcr import PcrSelection
from attestation.verify import (
    AlgorithmPolicy,
    check_ek_matches_certificate,
    ek_id,
    quote_nonce,
    read_public,
    verify_ek_certificate,
    verify_quote,
)

DATA = json.loads((Path(__file__).parent / "data" / "recorded.json").read_text())
EVIDENCE = Evidence.from_json(DATA["evidence"])
NONCE = base64.b64decode(DATA["challenge"]["nonce"])
SELECTION = PcrSelection.parse("sha256:0-7,16")
ATTEST = EVIDENCE.quote.attest
SIGNATURE = EVIDENCE.quote.signature
AK = EVIDENCE.identity.ak_public
VALUES = EVIDENCE.quote.pcr_values
CA = DATA["ca_bundle"].encode()


def verify(**changes: Any) -> Any:
    args = {
        "attest": ATTEST, "signature": SIGNATURE, "ak_public": AK, "nonce": NONCE,
        "pcr_selection": SELECTION, "pcr_values": VALUES,
    }  # fmt: skip
    args.update(changes)
    return verify_quote(**args)


def test_a_recorded_quote_verifies_from_bytes_alone() -> None:
    info = verify()
    assert info.nonce == NONCE
    assert info.pcr_selection == SELECTION
    assert info.hash_name == "sha256"
    assert info.ak_name == read_public(AK).name
    assert quote_nonce(ATTEST) == NONCE


def test_a_signature_by_another_key_is_refused_as_signature_invalid() -> None:
    forger = ec.generate_private_key(ec.SECP256R1())
    r, s = decode_dss_signature(forger.sign(ATTEST, ec.ECDSA(hashes.SHA256())))
    sig, _ = TPMT_SIGNATURE.unmarshal(SIGNATURE)
    sig.signature.ecdsa.signatureR = r.to_bytes(32, "big")
    sig.signature.ecdsa.signatureS = s.to_bytes(32, "big")
    with pytest.raises(errors.SignatureInvalidError) as caught:
        verify(signature=bytes(sig.marshal()))
    assert caught.value.reason == "signature_invalid"


def test_a_genuine_signature_over_other_bytes_is_refused() -> None:
    tampered = bytearray(ATTEST)
    tampered[-1] ^= 0x01  # the PCR digest's last byte: the AK never signed this
    with pytest.raises(errors.SignatureInvalidError):
        verify(attest=bytes(tampered))


def test_a_quote_for_another_nonce_is_refused_as_nonce_mismatch() -> None:
    with pytest.raises(errors.NonceMismatchError) as caught:
        verify(nonce=bytes(32))
    assert caught.value.reason == "nonce_mismatch"
    assert isinstance(caught.value, errors.SignedOtherDataError)  # genuine signature, other data


def test_pcr_values_that_do_not_hash_to_the_quoted_digest_are_refused() -> None:
    values = {"sha256": dict(VALUES["sha256"])}
    values["sha256"][16] = bytes(32)
    with pytest.raises(errors.PcrDigestMismatchError) as caught:
        verify(pcr_values=values)
    assert caught.value.reason == "pcr_digest_mismatch"
    assert isinstance(caught.value, errors.PcrMismatchError)


def test_a_quote_over_another_pcr_selection_is_refused() -> None:
    with pytest.raises(errors.PcrSelectionMismatchError):
        verify(pcr_selection=PcrSelection.parse("sha256:0-7"))


def test_missing_pcr_values_are_a_pcr_mismatch() -> None:
    with pytest.raises(errors.PcrMismatchError):
        verify(pcr_values={"sha256": {0: bytes(32)}})


def _ak_with(**fields: Any) -> bytes:
    public, _ = TPM2B_PUBLIC.unmarshal(AK)
    for path, value in fields.items():
        target = public.publicArea
        *parents, last = path.split("__")
        for p in parents:
            target = getattr(target, p)
        setattr(target, last, value)
    return bytes(public.marshal())


def test_a_sha1_signature_is_refused_as_wrong_algorithm() -> None:
    sig, _ = TPMT_SIGNATURE.unmarshal(SIGNATURE)
    sig.signature.ecdsa.hash = TPM2_ALG.SHA1
    with pytest.raises(errors.AlgorithmError) as caught:
        verify(signature=bytes(sig.marshal()))
    assert caught.value.reason == "wrong_algorithm"


def test_an_rsa_ak_is_refused_as_wrong_algorithm() -> None:
    # The EK is an RSA-2048 key: presenting it as the AK is "wrong algorithm" before anything else.
    with pytest.raises(errors.AlgorithmError):
        verify(ak_public=EVIDENCE.identity.ek_public)


def test_an_hmac_signature_is_refused_as_wrong_algorithm() -> None:
    sig, _ = TPMT_SIGNATURE.unmarshal(SIGNATURE)
    sig.sigAlg = TPM2_ALG.HMAC
    with pytest.raises((errors.AlgorithmError, errors.EvidenceFormatError)):
        verify(signature=bytes(sig.marshal()))


def test_a_p384_ak_is_refused_unless_the_policy_allows_it() -> None:
    policy = AlgorithmPolicy(ecc_curves=frozenset({"p384"}))
    with pytest.raises(errors.AlgorithmError):
        verify(algorithms=policy)


def test_an_unrestricted_ak_is_refused() -> None:
    unrestricted = _ak_with(objectAttributes=int(TPM2B_PUBLIC.unmarshal(AK)[0].publicArea.objectAttributes)
                            & ~TPMA_OBJECT.RESTRICTED)  # fmt: skip
    with pytest.raises(errors.AkAttributesError) as caught:
        verify(ak_public=unrestricted)
    assert caught.value.reason == "ak_not_restricted"


def test_a_signed_structure_that_is_not_a_quote_is_refused() -> None:
    # Re-marshalling with another type changes the bytes, so the signature fails first: the AK can
    # never be made to sign a non-TPM structure, which is exactly what the magic check backs up.
    info, _ = TPMS_ATTEST.unmarshal(ATTEST)
    info.magic = 0x12345678
    with pytest.raises((errors.QuoteStructureError, errors.SignatureInvalidError)):
        verify(attest=bytes(info.marshal()))


def test_reason_codes_are_distinct_for_every_refusal() -> None:
    refusals = [
        errors.NonceReplayedError, errors.ChallengeExpiredError, errors.PcrMismatchError,
        errors.AkNotBoundError, errors.EkCertificateError, errors.SignatureInvalidError,
        errors.NonceMismatchError, errors.AlgorithmError, errors.EkNotEnrolledError,
        errors.UnknownChallengeError, errors.PcrDigestMismatchError, errors.AkAttributesError,
    ]  # fmt: skip
    reasons = [cls.reason for cls in refusals]
    assert len(set(reasons)) == len(reasons)
    assert all(issubclass(cls, errors.EvidenceRefusedError) for cls in refusals)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=120), st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_attestation_errors(attest: bytes, sig: bytes, ak: bytes) -> None:
    for args in ({"attest": attest}, {"signature": sig}, {"ak_public": ak}, {"attest": attest, "signature": sig}):
        with contextlib.suppress(errors.AttestationError):
            verify(**args)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(ATTEST) - 1), st.integers(min_value=1, max_value=255))
def test_any_flipped_byte_of_the_quote_is_refused(offset: int, xor: int) -> None:
    tampered = bytearray(ATTEST)
    tampered[offset] ^= xor
    with pytest.raises(errors.AttestationError):
        verify(attest=bytes(tampered))


# --- EK certificates -------------------------------------------------------------------------------------


def _rogue_ca() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "swtpm-localca")])  # same name, other key
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert.public_bytes(serialization.Encoding.PEM)


def test_the_recorded_ek_certificate_chains_to_the_swtpm_ca() -> None:
    chain = verify_ek_certificate(EVIDENCE.identity.ek_certificate or b"", CA)
    assert len(chain) == 3  # EK cert, swtpm-localca issuer, root
    assert chain[-1].subject == chain[-1].issuer
    check_ek_matches_certificate(read_public(EVIDENCE.identity.ek_public), chain[0])


def test_an_ek_certificate_from_another_ca_is_refused_even_with_the_same_issuer_name() -> None:
    with pytest.raises(errors.EkCertificateError) as caught:
        verify_ek_certificate(EVIDENCE.identity.ek_certificate or b"", _rogue_ca())
    assert caught.value.reason == "ek_certificate_untrusted"


def test_an_ek_certificate_outside_its_validity_period_is_refused() -> None:
    # swtpm's certificates run to 9999-12-31, so check the other end: before they were issued.
    before_issue = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(errors.EkCertificateError):
        verify_ek_certificate(EVIDENCE.identity.ek_certificate or b"", CA, now=before_issue)


def test_a_certificate_for_another_key_is_an_ek_mismatch() -> None:
    chain = verify_ek_certificate(EVIDENCE.identity.ek_certificate or b"", CA)
    with pytest.raises(errors.EkMismatchError):
        check_ek_matches_certificate(read_public(EVIDENCE.identity.ak_public), chain[0])


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_certificates_raise_only_ek_certificate_errors(cert: bytes) -> None:
    with pytest.raises(errors.EkCertificateError):
        verify_ek_certificate(cert, CA)


def test_ek_id_is_the_sha256_of_the_spki() -> None:
    value = ek_id(EVIDENCE.identity.ek_public)
    assert value.startswith("sha256:") and len(value) == 7 + 64
    assert value == ek_id(read_public(EVIDENCE.identity.ek_public))
