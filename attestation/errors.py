"""The one exception root of ``attestation``; tpm2-pytss and cryptography errors are translated here.

Every refusal of evidence has its own class and a stable ``reason`` code (snake_case) that the daemon
returns to the client, counts in metrics and writes to the audit log. Codes never change meaning.
"""

from __future__ import annotations


class AttestationError(Exception):
    """Root of every error ``attestation`` raises; ``reason`` is a stable machine-readable code."""

    reason = "attestation_error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.reason)


# --- the TPM itself -----------------------------------------------------------------------------------


class TpmError(AttestationError):
    """A TPM command failed (the TPM's response code is in the message)."""

    reason = "tpm_error"


class TpmUnavailableError(TpmError):
    """No TPM could be opened through the configured TCTI (absent device, swtpm not running)."""

    reason = "tpm_unavailable"


# --- malformed input (untrusted bytes) ----------------------------------------------------------------


class EvidenceFormatError(AttestationError):
    """Evidence bytes do not unmarshal into the TPM structure they claim to be."""

    reason = "malformed_evidence"


class PcrSelectionError(EvidenceFormatError):
    """A PCR selection string or structure is invalid (unknown bank, index out of range)."""

    reason = "invalid_pcr_selection"


class EventLogFormatError(EvidenceFormatError):
    """A TCG measured-boot event log does not parse."""

    reason = "malformed_event_log"


# --- refusals: each one a distinct reason ------------------------------------------------------------


class EvidenceRefusedError(AttestationError):
    """Evidence parsed but does not establish trust; subclasses say why."""

    reason = "evidence_refused"


class UnknownChallengeError(EvidenceRefusedError):
    """The evidence names a challenge this verifier never issued (or forgot long ago)."""

    reason = "unknown_challenge"


class NonceReplayedError(EvidenceRefusedError):
    """The challenge's nonce was already consumed by an earlier verification."""

    reason = "nonce_replayed"


class ChallengeExpiredError(EvidenceRefusedError):
    """The evidence arrived after the challenge's expiry."""

    reason = "challenge_expired"


class SignedOtherDataError(EvidenceRefusedError):
    """The AK's signature is genuine but over other data than this challenge asked for (subclasses say what)."""

    reason = "signed_other_data"


class NonceMismatchError(SignedOtherDataError):
    """The quote is signed correctly but over other data: its extraData is not this challenge's nonce."""

    reason = "nonce_mismatch"


class QuoteStructureError(SignedOtherDataError):
    """The signed TPMS_ATTEST is not a TPM-generated quote (wrong magic or attestation type)."""

    reason = "not_a_tpm_quote"


class SignatureInvalidError(EvidenceRefusedError):
    """The signature does not verify over the attestation bytes with the AK (forged or over other data)."""

    reason = "signature_invalid"


class AlgorithmError(EvidenceRefusedError):
    """A key or signature uses an algorithm the policy does not accept (e.g. RSA AK, SHA-1, HMAC)."""

    reason = "wrong_algorithm"


class AkAttributesError(EvidenceRefusedError):
    """The AK is not a restricted, fixedTPM signing key, so it could sign forged TPMS_ATTEST structures."""

    reason = "ak_not_restricted"


class PcrMismatchError(EvidenceRefusedError):
    """PCR values do not satisfy the verifier's policy (expected values or event-log replay)."""

    reason = "pcr_mismatch"


class PcrDigestMismatchError(PcrMismatchError):
    """The PCR values presented do not hash to the digest the TPM signed in the quote."""

    reason = "pcr_digest_mismatch"


class PcrSelectionMismatchError(PcrMismatchError):
    """The quote covers another PCR selection than the challenge asked for."""

    reason = "pcr_selection_mismatch"


class AkNotBoundError(EvidenceRefusedError):
    """No proof that the AK lives in the same TPM as the EK (credential activation failed or missing)."""

    reason = "ak_not_bound"


class EkCertificateError(EvidenceRefusedError):
    """The EK certificate does not chain to the configured CA bundle (or is expired, or malformed)."""

    reason = "ek_certificate_untrusted"


class EkMismatchError(EvidenceRefusedError):
    """The EK certificate certifies another key than the EK public area presented."""

    reason = "ek_certificate_mismatch"


class EkNotEnrolledError(EvidenceRefusedError):
    """No EK certificate was given and the EK's public-key hash is not enrolled."""

    reason = "ek_not_enrolled"


class QuoteTooOldError(EvidenceRefusedError):
    """The last good quote is older than the policy's maximum quote age: level 3 has lapsed."""

    reason = "quote_too_old"


class NotAttestedError(EvidenceRefusedError):
    """A level-4/5 step was asked for a subject without a current level-3 attestation."""

    reason = "not_attested"


class RequestSignatureError(EvidenceRefusedError):
    """A write's signature by the subject's TPM-bound key does not verify (level 4 refused)."""

    reason = "request_signature_invalid"


class CorroborationError(EvidenceRefusedError):
    """A second verifier's statement or an approval is not acceptable for level 5."""

    reason = "corroboration_invalid"
