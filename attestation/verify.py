"""Pure verification of TPM evidence from bytes: quotes, AK and EK public areas, EK certificates.

Nothing here talks to a TPM: every function takes bytes and returns a result or raises a typed
``AttestationError``, so recorded quotes verify the same way as fresh ones (the Keylime shape).
Wire forms are the TPM's own marshalling, which tpm2-tools also writes:
``attest`` = TPMS_ATTEST (``tpm2_quote -m``), ``signature`` = TPMT_SIGNATURE (``tpm2_quote -s``),
AK/EK public = TPM2B_PUBLIC (``tpm2_createak -u``, ``tpm2_createek -u``).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation.errors import (
    AkAttributesError,
    AlgorithmError,
    EkCertificateError,
    EkMismatchError,
    EvidenceFormatError,
    NonceMismatchError,
    PcrDigestMismatchError,
    PcrSelectionMismatchError,
    QuoteStructureError,
    SignatureInvalidError,
)
from attestation.pcr import PcrSelection, PcrValues, pcr_composite_digest

if TYPE_CHECKING:
    from tpm2_pytss import TPM2B_PUBLIC, TPMS_ATTEST

# tpm2-pytss (with its cffi bindings, about 20 MB of RSS) is imported inside the functions that unmarshal
# TPM structures, not at module level: a node without a TPM that never verifies a quote never loads it.


@functools.cache
def _hashes() -> dict[int, tuple[str, Callable[[], hashes.HashAlgorithm]]]:
    from tpm2_pytss.constants import TPM2_ALG

    return {
        int(TPM2_ALG.SHA1): ("sha1", hashes.SHA1),
        int(TPM2_ALG.SHA256): ("sha256", hashes.SHA256),
        int(TPM2_ALG.SHA384): ("sha384", hashes.SHA384),
        int(TPM2_ALG.SHA512): ("sha512", hashes.SHA512),
    }


@functools.cache
def _curves() -> dict[int, tuple[str, Callable[[], ec.EllipticCurve]]]:
    from tpm2_pytss.constants import TPM2_ECC

    return {
        int(TPM2_ECC.NIST_P256): ("p256", ec.SECP256R1),
        int(TPM2_ECC.NIST_P384): ("p384", ec.SECP384R1),
        int(TPM2_ECC.NIST_P521): ("p521", ec.SECP521R1),
    }


@dataclass(frozen=True, slots=True)
class AlgorithmPolicy:
    """Which AK keys and signature schemes a verifier accepts; the default is the issue's: ECDSA P-256/SHA-256."""

    ecc_curves: frozenset[str] = frozenset({"p256"})
    hashes: frozenset[str] = frozenset({"sha256"})
    allow_rsa: bool = False  # RSASSA / RSA-PSS with >= 2048-bit keys, for tpm2-tools' default RSA AKs

    def check_key(self, key: KeyInfo) -> None:
        if key.kind == "ecc" and key.curve not in self.ecc_curves:
            raise AlgorithmError(f"AK curve {key.curve} is not accepted")
        if key.kind == "rsa" and (not self.allow_rsa or key.bits < 2048):
            raise AlgorithmError(f"RSA-{key.bits} AK is not accepted")
        if key.kind not in ("ecc", "rsa"):
            raise AlgorithmError(f"AK type {key.kind} is not accepted")


DEFAULT_ALGORITHMS = AlgorithmPolicy()


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A TPM public area, read: its TPM name, a ``cryptography`` key and the facts policy looks at."""

    name: bytes  # nameAlg id || H(TPMT_PUBLIC), TPM 2.0 Part 1, 16
    kind: str  # "ecc" | "rsa" | other TPM_ALG name
    curve: str  # "p256"... for ecc, "" otherwise
    bits: int
    attributes: int
    scheme_hash: str  # hash of the key's own signing scheme, "" when the scheme is NULL
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
    public: TPM2B_PUBLIC

    @property
    def spki_der(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    @property
    def pem(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True, slots=True)
class QuoteInfo:
    """What a verified quote proves: this nonce, these PCRs, this TPM clock, signed by this AK."""

    nonce: bytes
    pcr_selection: PcrSelection
    pcr_digest: bytes
    clock_ms: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    ak_name: bytes
    hash_name: str


def _unmarshal(cls: Any, data: bytes, what: str) -> Any:
    """Unmarshal a whole TPM structure with tpm2-pytss; trailing bytes or any library error -> format error."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EvidenceFormatError(f"{what}: expected bytes")
    from tpm2_pytss import TSS2_Exception

    data = bytes(data)
    try:
        obj, used = cls.unmarshal(data)
    except (TSS2_Exception, ValueError, TypeError, OverflowError) as exc:
        raise EvidenceFormatError(f"{what}: does not unmarshal ({type(exc).__name__})") from None
    if used != len(data):
        raise EvidenceFormatError(f"{what}: {len(data) - used} trailing bytes")
    return obj


def read_public(public_bytes: bytes, what: str = "public area") -> KeyInfo:
    """Read a marshalled TPM2B_PUBLIC (RSA or ECC) into a KeyInfo; anything else is a typed error."""
    from tpm2_pytss import TPM2B_PUBLIC, TSS2_Exception
    from tpm2_pytss.constants import TPM2_ALG

    public = _unmarshal(TPM2B_PUBLIC, public_bytes, what)
    area = public.publicArea
    try:
        key_type = int(area.type)
        attributes = int(area.objectAttributes)
        name = bytes(area.get_name())
        if key_type == TPM2_ALG.ECC:
            detail = area.parameters.eccDetail
            curve_id = int(detail.curveID)
            point = (int.from_bytes(bytes(area.unique.ecc.x), "big"), int.from_bytes(bytes(area.unique.ecc.y), "big"))
        elif key_type == TPM2_ALG.RSA:
            detail = area.parameters.rsaDetail
            # TPM 2.0 Part 2, 12.2.3.5: an exponent of zero means the default 2^16 + 1.
            rsa_numbers = (int(detail.exponent) or 65537, int.from_bytes(bytes(area.unique.rsa), "big"))
        scheme = detail.scheme if key_type in (TPM2_ALG.ECC, TPM2_ALG.RSA) else None
        scheme_hash_alg = (
            int(scheme.details.anySig.hashAlg) if scheme is not None and int(scheme.scheme) != TPM2_ALG.NULL else 0
        )
    except (ValueError, TypeError, TSS2_Exception, KeyError, AttributeError) as exc:
        raise EvidenceFormatError(f"{what}: not a usable key ({type(exc).__name__})") from None
    key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
    if key_type == TPM2_ALG.ECC:
        curves = _curves()
        if curve_id not in curves:
            raise AlgorithmError(f"{what}: unsupported ECC curve 0x{curve_id:04x}")
        curve, curve_cls = curves[curve_id]
        try:
            ec_key = ec.EllipticCurvePublicNumbers(point[0], point[1], curve_cls()).public_key()
        except ValueError:
            raise EvidenceFormatError(f"{what}: ECC point is not on the curve") from None
        key, bits = ec_key, ec_key.curve.key_size
    elif key_type == TPM2_ALG.RSA:
        try:
            rsa_key = rsa.RSAPublicNumbers(*rsa_numbers).public_key()
        except ValueError:
            raise EvidenceFormatError(f"{what}: RSA modulus or exponent is invalid") from None
        key, bits, curve = rsa_key, rsa_key.key_size, ""
    else:
        raise AlgorithmError(f"{what}: key type 0x{key_type:04x} is not RSA or ECC")
    scheme_hash = _hashes()[scheme_hash_alg][0] if scheme_hash_alg in _hashes() else ""
    return KeyInfo(
        name=name,
        kind="ecc" if key_type == TPM2_ALG.ECC else "rsa",
        curve=curve,
        bits=bits,
        attributes=attributes,
        scheme_hash=scheme_hash,
        public_key=key,
        public=public,
    )


def read_ak_public(ak_public: bytes, algorithms: AlgorithmPolicy = DEFAULT_ALGORITHMS) -> KeyInfo:
    """Read an AK public area and refuse keys that are not acceptable attestation keys."""
    from tpm2_pytss.constants import TPMA_OBJECT

    key = read_public(ak_public, "AK public")
    algorithms.check_key(key)
    # TPM 2.0 Part 2, 12.2.3.2 / 8.3: an AK must be a restricted signing key that never left this TPM.
    required = TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
    if key.attributes & required != required or key.attributes & TPMA_OBJECT.DECRYPT:
        raise AkAttributesError("AK is not a restricted fixedTPM signing-only key")
    if key.scheme_hash and key.scheme_hash not in algorithms.hashes:
        raise AlgorithmError(f"AK signing scheme hash {key.scheme_hash} is not accepted")
    return key


def ek_id(ek_public: bytes | KeyInfo) -> str:
    """The stable identity enrolled for an EK without certificate: ``sha256:`` + hex SHA-256 of its SPKI DER."""
    key = ek_public if isinstance(ek_public, KeyInfo) else read_public(ek_public, "EK public")
    return "sha256:" + hashlib.sha256(key.spki_der).hexdigest()


def _signature_parts(signature: bytes) -> tuple[int, str, bytes | tuple[int, int]]:
    """(sigAlg, hash name, raw RSA signature or ECDSA (r, s)) from a marshalled TPMT_SIGNATURE."""
    from tpm2_pytss import TPMT_SIGNATURE, TSS2_Exception
    from tpm2_pytss.constants import TPM2_ALG

    sig = _unmarshal(TPMT_SIGNATURE, signature, "signature")
    alg = int(sig.sigAlg)
    try:
        if alg == TPM2_ALG.ECDSA:
            hash_alg = int(sig.signature.ecdsa.hash)
            r = int.from_bytes(bytes(sig.signature.ecdsa.signatureR), "big")
            s = int.from_bytes(bytes(sig.signature.ecdsa.signatureS), "big")
            body: bytes | tuple[int, int] = (r, s)
        elif alg in (TPM2_ALG.RSASSA, TPM2_ALG.RSAPSS):
            hash_alg = int(sig.signature.rsassa.hash)
            body = bytes(sig.signature.rsassa.sig)
        else:
            raise AlgorithmError(f"signature algorithm 0x{alg:04x} is not accepted")
    except (TSS2_Exception, ValueError, TypeError) as exc:
        raise EvidenceFormatError(f"signature: unreadable ({type(exc).__name__})") from None
    if hash_alg not in _hashes():
        raise AlgorithmError(f"signature hash 0x{hash_alg:04x} is not accepted")
    return alg, _hashes()[hash_alg][0], body


def verify_tpm_signature(
    key: KeyInfo, message: bytes, signature: bytes, algorithms: AlgorithmPolicy = DEFAULT_ALGORITHMS
) -> str:
    """Verify a TPMT_SIGNATURE over ``message`` with ``key``; returns the hash name used.

    The scheme must match the key's type and the policy; a mismatch is ``wrong_algorithm``, a bad
    signature ``signature_invalid``.
    """
    from tpm2_pytss.constants import TPM2_ALG

    alg, hash_name, body = _signature_parts(signature)
    if hash_name not in algorithms.hashes:
        raise AlgorithmError(f"signature hash {hash_name} is not accepted")
    if key.scheme_hash and key.scheme_hash != hash_name:
        raise AlgorithmError(f"signature hash {hash_name} differs from the key's scheme {key.scheme_hash}")
    hash_cls = dict(_hashes().values())[hash_name]
    try:
        if alg == TPM2_ALG.ECDSA:
            if not isinstance(key.public_key, ec.EllipticCurvePublicKey) or not isinstance(body, tuple):
                raise AlgorithmError("ECDSA signature for a non-ECC key")
            der = encode_dss_signature(*body)
            key.public_key.verify(der, message, ec.ECDSA(hash_cls()))
        else:
            if not isinstance(key.public_key, rsa.RSAPublicKey) or not isinstance(body, bytes):
                raise AlgorithmError("RSA signature for a non-RSA key")
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15()
                if alg == TPM2_ALG.RSASSA
                else padding.PSS(mgf=padding.MGF1(hash_cls()), salt_length=padding.PSS.AUTO)
            )
            key.public_key.verify(body, message, pad, hash_cls())
    except InvalidSignature:
        raise SignatureInvalidError("signature does not verify with the AK") from None
    except ValueError as exc:  # r or s out of range, wrong signature length
        raise SignatureInvalidError(f"signature is malformed ({exc})") from None
    return hash_name


def parse_attest(attest: bytes) -> TPMS_ATTEST:
    """Unmarshal a TPMS_ATTEST (``tpm2_quote -m``); no trust is implied by parsing."""
    from tpm2_pytss import TPMS_ATTEST

    return _unmarshal(TPMS_ATTEST, attest, "attest")


def quote_nonce(attest: bytes) -> bytes:
    """The extraData (verifier nonce) of an unverified TPMS_ATTEST, to find the challenge it answers."""
    return bytes(parse_attest(attest).extraData)


def verify_quote(  # noqa: PLR0917 - the issue's documented positional signature
    attest: bytes,
    signature: bytes,
    ak_public: bytes,
    nonce: bytes,
    pcr_selection: PcrSelection | str,
    pcr_values: PcrValues,
    *,
    algorithms: AlgorithmPolicy = DEFAULT_ALGORITHMS,
) -> QuoteInfo:
    """Verify a TPM2_Quote: AK acceptable, signature over ``attest``, TPM-generated quote, nonce, PCRs.

    Checks, in this order (each refusal its own error): AK algorithm and attributes, signature scheme,
    signature, TPM_GENERATED magic and quote type, nonce, quoted PCR selection, PCR composite digest.
    """
    from tpm2_pytss.constants import TPM2_GENERATED, TPM2_ST

    selection = PcrSelection.parse(pcr_selection) if isinstance(pcr_selection, str) else pcr_selection
    ak = read_ak_public(ak_public, algorithms)
    hash_name = verify_tpm_signature(ak, bytes(attest), signature, algorithms)
    info = parse_attest(attest)
    # TPM 2.0 Part 2, 10.12.8: magic is TPM_GENERATED_VALUE only in structures the TPM itself built.
    if int(info.magic) != TPM2_GENERATED.VALUE or int(info.type) != TPM2_ST.ATTEST_QUOTE:
        raise QuoteStructureError("signed structure is not a TPM-generated quote")
    if not hmac.compare_digest(bytes(info.extraData), bytes(nonce)):
        raise NonceMismatchError("quote was made for another nonce")
    quote = info.attested.quote
    quoted = PcrSelection.from_tpml(quote.pcrSelect)
    if quoted != selection:
        raise PcrSelectionMismatchError(f"quote covers {quoted}, challenge asked for {selection}")
    expected = pcr_composite_digest(selection, pcr_values, hash_name)
    digest = bytes(quote.pcrDigest)
    if not hmac.compare_digest(expected, digest):
        raise PcrDigestMismatchError("PCR values do not match the quoted digest")
    return QuoteInfo(
        nonce=bytes(nonce),
        pcr_selection=selection,
        pcr_digest=digest,
        clock_ms=int(info.clockInfo.clock),
        reset_count=int(info.clockInfo.resetCount),
        restart_count=int(info.clockInfo.restartCount),
        safe=bool(info.clockInfo.safe),
        firmware_version=int(info.firmwareVersion),
        ak_name=ak.name,
        hash_name=hash_name,
    )


# --- EK certificates ----------------------------------------------------------------------------------


def load_ca_bundle(pem: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM bundle (roots and intermediates alike); bad PEM -> EkCertificateError."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise EkCertificateError(f"CA bundle does not parse: {exc}") from None
    return certs


def load_certificate(cert: bytes) -> x509.Certificate:
    """An EK certificate from DER (as stored in NV) or PEM; unreadable -> EkCertificateError."""
    try:
        if cert.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(cert)
        return x509.load_der_x509_certificate(cert)
    except ValueError as exc:
        raise EkCertificateError(f"EK certificate does not parse: {exc}") from None


def _valid_at(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def verify_ek_certificate(
    cert: bytes,
    ca_bundle: bytes | Iterable[x509.Certificate],
    *,
    now: dt.datetime | None = None,
) -> list[x509.Certificate]:
    """Check that an EK certificate chains to a certificate of ``ca_bundle``; returns the chain, leaf first.

    EK certificates carry TCG-specific critical extensions (TCG EK Credential Profile 2.0, 3.2) that
    general web-PKI verifiers refuse, so the chain is built here from signatures, validity periods and
    basicConstraints; every certificate in the bundle is a trust anchor (as with a vendor's bundle).
    """
    now = now or dt.datetime.now(dt.UTC)
    anchors = load_ca_bundle(ca_bundle) if isinstance(ca_bundle, bytes | bytearray) else list(ca_bundle)
    leaf = load_certificate(bytes(cert))
    if not _valid_at(leaf, now):
        raise EkCertificateError(f"EK certificate {leaf.subject.rfc4514_string()} is not valid now")
    issuer = _find_issuer(leaf, anchors)
    if issuer is None:
        raise EkCertificateError(f"no CA in the bundle issued {leaf.subject.rfc4514_string()}")
    if not _is_ca(issuer):
        raise EkCertificateError(f"issuer {issuer.subject.rfc4514_string()} is not a CA")
    if not _valid_at(issuer, now):
        raise EkCertificateError(f"CA {issuer.subject.rfc4514_string()} is not valid now")
    chain = [leaf, issuer]
    # Complete the chain for display up to a self-signed root, when the bundle has it.
    while chain[-1].issuer != chain[-1].subject and len(chain) < 8:
        parent = _find_issuer(chain[-1], anchors)
        if parent is None:
            break
        chain.append(parent)
    return chain


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _find_issuer(cert: x509.Certificate, candidates: Iterable[x509.Certificate]) -> x509.Certificate | None:
    for candidate in candidates:
        if candidate.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return candidate
    return None


def check_ek_matches_certificate(ek: KeyInfo, cert: bytes | x509.Certificate) -> None:
    """The certificate must certify exactly the EK public key used for credential activation."""
    certificate = cert if isinstance(cert, x509.Certificate) else load_certificate(cert)
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if not hmac.compare_digest(spki, ek.spki_der):
        raise EkMismatchError("EK certificate certifies another key than the EK presented")


# --- plain signatures (statements, software keys) -----------------------------------------------------


def verify_plain_signature(public_key_pem: bytes, message: bytes, signature: bytes) -> None:
    """Verify a DER ECDSA-SHA-256 or Ed25519 signature by a PEM public key; failure -> SignatureInvalidError."""
    try:
        key = serialization.load_pem_public_key(public_key_pem)
    except ValueError as exc:
        raise EvidenceFormatError(f"public key does not parse: {exc}") from None
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        else:
            raise AlgorithmError(f"{type(key).__name__} keys are not accepted for statements")
    except InvalidSignature:
        raise SignatureInvalidError("signature does not verify") from None
    except ValueError as exc:
        raise SignatureInvalidError(f"signature is malformed ({exc})") from None
