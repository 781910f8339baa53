"""The verifier's side of remote attestation, as a pure state machine with an injected clock.

Flow (``POST /v1/attestation/challenge`` then ``POST /v1/attestation/verify``):

1. ``issue_challenge(subject, identity)`` returns a one-time nonce, the PCR selection and an expiry; when
   the attester presents its AK and EK, also a credential (TPM2_MakeCredential) only that TPM can open.
2. ``verify(subject, evidence)`` consumes the challenge once (a second use is ``nonce_replayed``), checks
   the EK (certificate chaining to the CA bundle, or an enrolled EK id), the AK binding (the recovered
   credential secret), the quote and the PCR policy, and grants level 3 until the quote ages out.
3. Level 4 is per request: ``verify_signed_write`` checks a write signed by the subject's AK.
4. Level 5: ``corroborate`` with a trusted second verifier's signed statement, or ``approve`` twice.

No I/O and no TPM: the verifier runs on the event loop (each call is microseconds to ~1 ms of crypto).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

from attestation.errors import (
    AkNotBoundError,
    AttestationError,
    ChallengeExpiredError,
    CorroborationError,
    EkCertificateError,
    EkNotEnrolledError,
    EvidenceFormatError,
    NonceReplayedError,
    NotAttestedError,
    RequestSignatureError,
    SignatureInvalidError,
    UnknownChallengeError,
)
from attestation.eventlog import parse_event_log
from attestation.levels import TrustLevel
from attestation.model import AttesterIdentity, Challenge, Evidence
from attestation.pcr import PcrPolicy, PcrSelection
from attestation.verify import (
    DEFAULT_ALGORITHMS,
    AlgorithmPolicy,
    KeyInfo,
    QuoteInfo,
    check_ek_matches_certificate,
    ek_id,
    read_ak_public,
    read_public,
    verify_ek_certificate,
    verify_plain_signature,
    verify_quote,
    verify_tpm_signature,
)

_log = logging.getLogger(__name__)

Clock = Callable[[], float]
WRITE_CONTEXT = b"mycoedge-signed-write-v1"
STATEMENT_VERSION = 1


@dataclass(frozen=True, slots=True)
class VerifierPolicy:
    """What a verifier accepts. ``grant_ttl_s`` is the maximum quote age: level 3 lasts that long."""

    pcr_selection: PcrSelection = field(default_factory=lambda: PcrSelection.parse("sha256:0-7"))
    pcr_policy: PcrPolicy | None = None
    ca_bundle: bytes | None = None  # PEM: roots and intermediates that may sign EK certificates
    enrolled_ek_ids: frozenset[str] = frozenset()  # ``ek_id()`` of EKs trusted without a certificate
    algorithms: AlgorithmPolicy = DEFAULT_ALGORITHMS
    challenge_ttl_s: float = 60.0
    grant_ttl_s: float = 600.0
    write_skew_s: float = 60.0
    trusted_verifiers: Mapping[str, bytes] = field(default_factory=dict)  # verifier id -> PEM public key
    required_approvals: int = 2
    max_pending: int = 10_000


@dataclass(frozen=True, slots=True)
class TrustGrant:
    """A subject's current trust: its level, until when, and on what basis (quote, verifiers, approvals)."""

    subject: str
    level: TrustLevel
    attested_at: float
    expires_at: float
    ak_name: bytes
    ek_id: str
    ek_basis: str  # "certificate" | "enrolled"
    verifier_id: str
    quote: QuoteInfo | None = None
    basis: tuple[str, ...] = ("quote",)

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "level": int(self.level),
            "level_name": self.level.name,
            "attested_at": self.attested_at,
            "expires_at": self.expires_at,
            "ak_name": self.ak_name.hex(),
            "ek_id": self.ek_id,
            "ek_basis": self.ek_basis,
            "verifier_id": self.verifier_id,
            "basis": list(self.basis),
        }


@dataclass(slots=True)
class _Pending:
    subject: str
    challenge: Challenge
    issued_at: float
    identity: AttesterIdentity | None
    secret: bytes | None
    consumed: bool = False


@dataclass(slots=True)
class _SubjectState:
    grant: TrustGrant
    ak: KeyInfo
    approvals: set[str] = field(default_factory=set)
    corroborated_by: dict[str, float] = field(default_factory=dict)  # verifier id -> statement expiry


class _QuietLog:
    """First refusal of each reason at WARNING, repeats at DEBUG (untrusted input must not flood logs)."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def refused(self, subject: str, error: AttestationError) -> None:
        level = logging.DEBUG if error.reason in self._seen else logging.WARNING
        self._seen.add(error.reason)
        _log.log(level, "attestation refused for %s: %s (%s)", subject, error.reason, error)


class Verifier:
    """Issues challenges, verifies evidence once, and tracks each subject's trust level and its expiry."""

    def __init__(
        self,
        policy: VerifierPolicy,
        *,
        verifier_id: str = "local",
        clock: Clock = time.time,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.policy = policy
        self.verifier_id = verifier_id
        self._clock = clock
        self._random = random_bytes
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._subjects: dict[str, _SubjectState] = {}
        self._bound: OrderedDict[bytes, str] = OrderedDict()  # AK name -> EK id, proven by activation
        self._seen_writes: OrderedDict[bytes, float] = OrderedDict()
        self.refusals: Counter[str] = Counter()
        self.accepted = 0
        self._quiet = _QuietLog()

    # --- challenge --------------------------------------------------------------------------------------

    def issue_challenge(
        self,
        subject: str,
        identity: AttesterIdentity | None = None,
        *,
        pcr_selection: PcrSelection | None = None,
    ) -> Challenge:
        """A fresh challenge for ``subject``; with ``identity``, a credential bound to that AK and EK.

        Raises EvidenceFormatError / AlgorithmError / AkAttributesError if the presented keys are unusable.
        """
        now = self._clock()
        self._expire(now)
        nonce = self._random(32)
        challenge_id = self._random(16).hex()
        selection = pcr_selection or self.policy.pcr_selection
        blob = encrypted = secret = None
        if identity is not None:
            from tpm2_pytss import TSS2_Exception
            from tpm2_pytss.utils import make_credential

            try:
                ak = read_ak_public(identity.ak_public, self.policy.algorithms)
                ek = read_public(identity.ek_public, "EK public")
                secret = self._random(32)
                blob_obj, secret_obj = make_credential(ek.public, secret, ak.name)
            except AttestationError as exc:
                self._refuse(subject, exc)
            except (TSS2_Exception, ValueError, TypeError) as exc:
                self._refuse(subject, EvidenceFormatError(f"EK cannot receive a credential ({type(exc).__name__})"))
            blob, encrypted = bytes(blob_obj.marshal()), bytes(secret_obj.marshal())
        challenge = Challenge(
            challenge_id=challenge_id,
            nonce=nonce,
            pcr_selection=selection,
            expires_at=now + self.policy.challenge_ttl_s,
            credential_blob=blob,
            encrypted_secret=encrypted,
        )
        self._pending[challenge_id] = _Pending(subject, challenge, now, identity, secret)
        while len(self._pending) > self.policy.max_pending:
            self._pending.popitem(last=False)
        return challenge

    # --- verify -----------------------------------------------------------------------------------------

    def verify(self, subject: str, evidence: Evidence) -> TrustGrant:
        """Verify evidence against its challenge (once) and grant level 3; refusals raise typed errors."""
        try:
            grant = self._verify(subject, evidence)
        except AttestationError as exc:
            self._refuse(subject, exc)
        self.accepted += 1
        return grant

    def _verify(self, subject: str, evidence: Evidence) -> TrustGrant:
        now = self._clock()
        pending = self._pending.get(evidence.challenge_id)
        if pending is None or pending.subject != subject:
            raise UnknownChallengeError("no such challenge for this subject")
        if pending.consumed:
            raise NonceReplayedError("this challenge's nonce was already used")
        pending.consumed = True  # one attempt per challenge, successful or not
        challenge = pending.challenge
        if now > challenge.expires_at:
            raise ChallengeExpiredError(f"challenge expired {now - challenge.expires_at:.1f} s ago")

        identity = evidence.identity
        ak = read_ak_public(identity.ak_public, self.policy.algorithms)
        ek = read_public(identity.ek_public, "EK public")
        this_ek_id = ek_id(ek)
        ek_basis = self._check_ek(ek, this_ek_id, identity, evidence.ek_id)
        self._check_binding(pending, ak, ek, this_ek_id, evidence.activation_proof)
        quote = verify_quote(
            evidence.quote.attest,
            evidence.quote.signature,
            identity.ak_public,
            challenge.nonce,
            challenge.pcr_selection,
            evidence.quote.pcr_values,
            algorithms=self.policy.algorithms,
        )
        if self.policy.pcr_policy is not None:
            events = parse_event_log(evidence.event_log) if evidence.event_log is not None else None
            self.policy.pcr_policy.check(evidence.quote.pcr_values, events)

        self._bound[ak.name] = this_ek_id
        self._bound.move_to_end(ak.name)
        while len(self._bound) > self.policy.max_pending:
            self._bound.popitem(last=False)
        grant = TrustGrant(
            subject=subject,
            level=TrustLevel.HARDWARE_ATTESTED,
            attested_at=now,
            expires_at=now + self.policy.grant_ttl_s,
            ak_name=ak.name,
            ek_id=this_ek_id,
            ek_basis=ek_basis,
            verifier_id=self.verifier_id,
            quote=quote,
        )
        state = self._subjects.get(subject)
        if state is not None and state.ak.name == ak.name:
            state.grant, state.ak = grant, ak  # renewal: approvals for the same AK stand
        else:
            self._subjects[subject] = _SubjectState(grant=grant, ak=ak)
        return self._effective(subject, now) or grant

    def _check_ek(self, ek: KeyInfo, this_ek_id: str, identity: AttesterIdentity, claimed_id: str | None) -> str:
        if identity.ek_certificate is not None:
            if self.policy.ca_bundle is None:
                raise EkCertificateError("no EK CA bundle is configured")
            now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
            verify_ek_certificate(identity.ek_certificate, self.policy.ca_bundle, now=now)
            check_ek_matches_certificate(ek, identity.ek_certificate)
            return "certificate"
        if claimed_id is not None and claimed_id != this_ek_id:
            raise EkNotEnrolledError("the enrolled EK id named is not this EK's")
        if this_ek_id not in self.policy.enrolled_ek_ids:
            raise EkNotEnrolledError(f"EK {this_ek_id} has no certificate and is not enrolled")
        return "enrolled"

    def _check_binding(self, pending: _Pending, ak: KeyInfo, ek: KeyInfo, this_ek_id: str, proof: bytes | None) -> None:
        if pending.secret is not None and pending.identity is not None:
            presented = (bytes(ak.public.marshal()), bytes(ek.public.marshal()))
            if presented != (pending.identity.ak_public, pending.identity.ek_public):
                raise AkNotBoundError("evidence presents other keys than the credential was made for")
            if proof is None or not hmac.compare_digest(proof, pending.secret):
                raise AkNotBoundError("credential activation proof is missing or wrong")
            return
        if self._bound.get(ak.name) != this_ek_id:
            raise AkNotBoundError("AK was never bound to this EK by credential activation")

    # --- current levels ---------------------------------------------------------------------------------

    def grant(self, subject: str) -> TrustGrant | None:
        """The subject's current grant (level 3 or 5), or None once it has expired."""
        return self._effective(subject, self._clock())

    def level(self, subject: str) -> TrustLevel:
        """The subject's current hardware-backed level (0 if none; levels 1-2 are the daemon's business)."""
        grant = self.grant(subject)
        return grant.level if grant is not None else TrustLevel.UNTRUSTED

    def revoke(self, subject: str) -> None:
        self._subjects.pop(subject, None)

    def _effective(self, subject: str, now: float) -> TrustGrant | None:
        state = self._subjects.get(subject)
        if state is None:
            return None
        if now > state.grant.expires_at:
            del self._subjects[subject]
            return None
        grant = state.grant
        peers = sorted(v for v, expiry in state.corroborated_by.items() if expiry >= now)
        if peers:
            expiry = min(grant.expires_at, *(state.corroborated_by[v] for v in peers))
            return replace(
                grant, level=TrustLevel.MULTI_PARTY_VERIFIED, expires_at=expiry,
                basis=("quote", *(f"verifier:{v}" for v in peers)),
            )  # fmt: skip
        if len(state.approvals) >= self.policy.required_approvals:
            return replace(
                grant, level=TrustLevel.MULTI_PARTY_VERIFIED,
                basis=("quote", *(f"approval:{a}" for a in sorted(state.approvals))),
            )  # fmt: skip
        return grant

    def _current(self, subject: str, now: float) -> _SubjectState:
        if self._effective(subject, now) is None:
            raise NotAttestedError(f"{subject} has no current hardware attestation")
        return self._subjects[subject]

    # --- level 4: signed writes -------------------------------------------------------------------------

    def verify_signed_write(
        self, subject: str, *, method: str, path: str, body: bytes, timestamp: float, signature: bytes
    ) -> TrustGrant:
        """Level 4 for this one request: a write signed by the subject's attested AK (``Tpm.ak_sign``).

        The signed message is ``write_message(...)``; the timestamp must be within ``write_skew_s`` and a
        signature is accepted once (replays are ``nonce_replayed``).
        """
        now = self._clock()
        try:
            state = self._current(subject, now)
            if abs(now - timestamp) > self.policy.write_skew_s:
                raise RequestSignatureError("write timestamp is outside the allowed clock skew")
            message = write_message(method, path, body, timestamp)
            try:
                verify_tpm_signature(state.ak, message, signature, self.policy.algorithms)
            except SignatureInvalidError:
                raise RequestSignatureError("write signature does not verify with the attested AK") from None
            key = hashlib.sha256(signature).digest()
            self._forget_writes(now)
            if key in self._seen_writes:
                raise NonceReplayedError("this signed write was already accepted")
            self._seen_writes[key] = now
        except AttestationError as exc:
            self._refuse(subject, exc)
        grant = self._effective(subject, now)
        assert grant is not None
        level = max(grant.level, TrustLevel.CRYPTOGRAPHICALLY_PROVEN)
        return replace(grant, level=level, basis=(*grant.basis, "signed_write"))

    def _forget_writes(self, now: float) -> None:
        horizon = now - 2 * self.policy.write_skew_s
        while self._seen_writes and next(iter(self._seen_writes.values())) < horizon:
            self._seen_writes.popitem(last=False)

    # --- level 5: a second verifier, or approvals -------------------------------------------------------

    def statement(self, subject: str) -> bytes:
        """A canonical statement of this verifier's current grant for ``subject``, for a peer to corroborate.

        The caller signs it with the node's key (``NodeAttestor.sign``) and sends both to the peer.
        """
        state = self._current(subject, self._clock())
        grant = state.grant
        doc = {
            "v": STATEMENT_VERSION,
            "verifier": self.verifier_id,
            "subject": subject,
            "level": int(TrustLevel.HARDWARE_ATTESTED),
            "ak_name": grant.ak_name.hex(),
            "ek_id": grant.ek_id,
            "attested_at": grant.attested_at,
            "expires_at": grant.expires_at,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    def corroborate(self, statement: bytes, signature: bytes) -> TrustGrant:
        """Accept a trusted second verifier's signed statement; both agreeing on the AK and EK gives level 5."""
        subject = "?"
        try:
            doc = _parse_statement(statement)
            subject = doc["subject"]
            verifier = doc["verifier"]
            pem = self.policy.trusted_verifiers.get(verifier)
            if pem is None or verifier == self.verifier_id:
                raise CorroborationError(f"verifier {verifier!r} is not a trusted independent verifier")
            try:
                verify_plain_signature(pem, statement, signature)
            except AttestationError:
                raise CorroborationError(f"statement is not signed by verifier {verifier!r}") from None
            now = self._clock()
            if doc["expires_at"] < now:
                raise CorroborationError("statement has expired")
            state = self._current(subject, now)
            if doc["ak_name"] != state.grant.ak_name.hex() or doc["ek_id"] != state.grant.ek_id:
                raise CorroborationError("the two verifiers attested different keys")
            state.corroborated_by[verifier] = float(doc["expires_at"])
        except AttestationError as exc:
            self._refuse(subject, exc)
        grant = self._effective(subject, now)
        assert grant is not None
        return grant

    def approve(self, subject: str, admin_id: str) -> TrustGrant:
        """Record an admin's approval of the subject's attested AK; ``required_approvals`` distinct admins give 5."""
        try:
            state = self._current(subject, self._clock())
        except AttestationError as exc:
            self._refuse(subject, exc)
        state.approvals.add(admin_id)
        grant = self._effective(subject, self._clock())
        assert grant is not None
        return grant

    # --- housekeeping -----------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counts for /metrics: accepted verifications, pending challenges, refusals by reason."""
        out = {"accepted": self.accepted, "pending_challenges": len(self._pending), "subjects": len(self._subjects)}
        out.update({f"refused_{reason}": n for reason, n in self.refusals.items()})
        return out

    def _expire(self, now: float) -> None:
        # Consumed or expired challenges are kept one more TTL so a late replay is recognised as one, then
        # dropped (a replay after that is an unknown challenge: still refused, and memory stays bounded).
        horizon = now - self.policy.challenge_ttl_s
        while self._pending:
            first = next(iter(self._pending.values()))
            if first.challenge.expires_at >= horizon:
                break
            self._pending.popitem(last=False)

    def _refuse(self, subject: str, error: AttestationError) -> NoReturn:
        self.refusals[error.reason] += 1
        self._quiet.refused(subject, error)
        raise error


def write_message(method: str, path: str, body: bytes, timestamp: float) -> bytes:
    """The canonical bytes an attested agent signs for a level-4 write (bound to method, path, body, time)."""
    return b"\n".join(
        [
            WRITE_CONTEXT,
            method.upper().encode(),
            path.encode(),
            f"{timestamp:.3f}".encode(),
            hashlib.sha256(body).hexdigest().encode(),
        ]
    )


def _parse_statement(statement: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(statement)
    except (ValueError, UnicodeDecodeError):
        raise CorroborationError("statement is not JSON") from None
    if not isinstance(doc, dict) or doc.get("v") != STATEMENT_VERSION:
        raise CorroborationError("statement has an unknown version")
    for key, kind in (("verifier", str), ("subject", str), ("ak_name", str), ("ek_id", str)):
        if not isinstance(doc.get(key), kind):
            raise CorroborationError(f"statement.{key} missing")
    if not isinstance(doc.get("expires_at"), int | float) or doc.get("level", 0) < TrustLevel.HARDWARE_ATTESTED:
        raise CorroborationError("statement does not attest level 3")
    return doc
