"""What crosses the wire between an attester and a verifier, with its JSON codec (pure, typed errors).

Binary fields are TPM marshalling (see ``attestation.verify``) carried as standard base64 in JSON;
PCR values are ``{"sha256": {"0": "<hex>", ...}}``. ``from_json`` accepts a parsed JSON object (what
aiohttp's ``request.json()`` returns) and raises ``EvidenceFormatError`` naming the bad key.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from attestation.errors import EvidenceFormatError
from attestation.pcr import BANKS, PCR_COUNT, PcrSelection, PcrValues

# TPM2B_DATA holds at most sizeof(TPMT_HA) = 66 bytes (TPM 2.0 Part 2, 10.4.3): the largest nonce.
MAX_NONCE_BYTES = 64
MIN_NONCE_BYTES = 16
_MAX_FIELD_BYTES = 16384  # far above any TPM structure or EK certificate; bounds untrusted input


@dataclass(frozen=True, slots=True)
class Quote:
    """A TPM2_Quote as the attester sends it: TPMS_ATTEST, TPMT_SIGNATURE and the PCR values quoted."""

    attest: bytes
    signature: bytes
    pcr_selection: PcrSelection
    pcr_values: PcrValues


@dataclass(frozen=True, slots=True)
class AttesterIdentity:
    """The keys an attester presents: AK and EK public areas (TPM2B_PUBLIC) and the EK certificate (DER)."""

    ak_public: bytes
    ek_public: bytes
    ek_certificate: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ak_public": _b64(self.ak_public), "ek_public": _b64(self.ek_public)}
        if self.ek_certificate is not None:
            out["ek_certificate"] = _b64(self.ek_certificate)
        return out

    @classmethod
    def from_json(cls, obj: object) -> AttesterIdentity:
        data = _object(obj, "identity")
        return cls(
            ak_public=_bytes_field(data, "ak_public"),
            ek_public=_bytes_field(data, "ek_public"),
            ek_certificate=_bytes_field(data, "ek_certificate", optional=True),
        )


@dataclass(frozen=True, slots=True)
class Challenge:
    """A verifier's challenge: a one-time nonce, the PCRs to quote, an expiry (epoch seconds).

    When the attester presented its AK and EK, the challenge also carries a credential (TPM2_MakeCredential
    output: TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET) that only that EK's TPM can open, and only for that AK.
    """

    challenge_id: str
    nonce: bytes
    pcr_selection: PcrSelection
    expires_at: float
    credential_blob: bytes | None = None
    encrypted_secret: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "challenge_id": self.challenge_id,
            "nonce": _b64(self.nonce),
            "pcr_selection": str(self.pcr_selection),
            "expires_at": self.expires_at,
        }
        if self.credential_blob is not None and self.encrypted_secret is not None:
            out["credential_blob"] = _b64(self.credential_blob)
            out["encrypted_secret"] = _b64(self.encrypted_secret)
        return out

    @classmethod
    def from_json(cls, obj: object) -> Challenge:
        data = _object(obj, "challenge")
        expires = data.get("expires_at")
        if not isinstance(expires, int | float) or isinstance(expires, bool):
            raise EvidenceFormatError("challenge.expires_at: expected a number")
        return cls(
            challenge_id=_str_field(data, "challenge_id"),
            nonce=_nonce(_bytes_field(data, "nonce")),
            pcr_selection=PcrSelection.parse(_str_field(data, "pcr_selection")),
            expires_at=float(expires),
            credential_blob=_bytes_field(data, "credential_blob", optional=True),
            encrypted_secret=_bytes_field(data, "encrypted_secret", optional=True),
        )


@dataclass(frozen=True, slots=True)
class Evidence:
    """The attester's answer to a challenge (``POST /v1/attestation/verify``).

    ``activation_proof`` is the secret recovered by TPM2_ActivateCredential from the challenge's credential:
    it proves the AK is in the same TPM as the EK. ``ek_id`` names an enrolled EK when there is no certificate.
    """

    challenge_id: str
    quote: Quote
    identity: AttesterIdentity
    activation_proof: bytes | None = None
    ek_id: str | None = None
    event_log: bytes | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "challenge_id": self.challenge_id,
            "quote": _b64(self.quote.attest),
            "signature": _b64(self.quote.signature),
            "pcr_selection": str(self.quote.pcr_selection),
            "pcr_values": {
                bank: {str(i): v.hex() for i, v in sorted(values.items())}
                for bank, values in self.quote.pcr_values.items()
            },
            **self.identity.to_json(),
        }
        if self.activation_proof is not None:
            out["activation_proof"] = _b64(self.activation_proof)
        if self.ek_id is not None:
            out["ek_id"] = self.ek_id
        if self.event_log is not None:
            out["event_log"] = _b64(self.event_log)
        return out

    @classmethod
    def from_json(cls, obj: object) -> Evidence:
        data = _object(obj, "evidence")
        selection = PcrSelection.parse(_str_field(data, "pcr_selection"))
        ek_id = data.get("ek_id")
        if ek_id is not None and not isinstance(ek_id, str):
            raise EvidenceFormatError("evidence.ek_id: expected a string")
        return cls(
            challenge_id=_str_field(data, "challenge_id"),
            quote=Quote(
                attest=_bytes_field(data, "quote"),
                signature=_bytes_field(data, "signature"),
                pcr_selection=selection,
                pcr_values=_pcr_values(data.get("pcr_values")),
            ),
            identity=AttesterIdentity.from_json(data),
            activation_proof=_bytes_field(data, "activation_proof", optional=True),
            ek_id=ek_id,
            event_log=_bytes_field(data, "event_log", optional=True),
        )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _object(obj: object, what: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise EvidenceFormatError(f"{what}: expected a JSON object")
    return obj


def _str_field(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value or len(value) > 256:
        raise EvidenceFormatError(f"{key}: expected a non-empty string")
    return value


def _bytes_field(data: Mapping[str, Any], key: str, *, optional: bool = False) -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > _MAX_FIELD_BYTES * 2:
        raise EvidenceFormatError(f"{key}: expected base64 text")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise EvidenceFormatError(f"{key}: not valid base64") from None


def _nonce(nonce: bytes) -> bytes:
    if not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
        raise EvidenceFormatError(f"nonce: {len(nonce)} bytes, expected {MIN_NONCE_BYTES}..{MAX_NONCE_BYTES}")
    return nonce


def _pcr_values(obj: object) -> dict[str, dict[int, bytes]]:
    data = _object(obj, "pcr_values")
    out: dict[str, dict[int, bytes]] = {}
    for bank, values in data.items():
        if bank not in BANKS:
            raise EvidenceFormatError(f"pcr_values: unknown bank {bank!r}")
        bank_values = _object(values, f"pcr_values.{bank}")
        out[bank] = {}
        for index, value in bank_values.items():
            if not isinstance(index, str) or not index.isdigit() or int(index) >= PCR_COUNT:
                raise EvidenceFormatError(f"pcr_values.{bank}: bad index {index!r}")
            if not isinstance(value, str) or len(value) != 2 * BANKS[bank][1]:
                raise EvidenceFormatError(f"pcr_values.{bank}.{index}: expected {BANKS[bank][1]} hex bytes")
            try:
                out[bank][int(index)] = bytes.fromhex(value)
            except ValueError:
                raise EvidenceFormatError(f"pcr_values.{bank}.{index}: not hex") from None
    return out
