"""The node's own trust: attest itself at start and on a schedule, and hold its signing and sealing keys.

``NodeAttestor`` is the daemon's one entry point (an async context manager with one named task). With a
TPM it proves itself through the same challenge/verify path remote agents use (credential activation,
quote, EK certificate or enrolled EK, PCR policy) and holds level 3 until the quote ages out. Without a
TPM it runs on a software key, says so loudly, and its level is capped at 2.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from attestation.agent import answer_challenge
from attestation.challenge import Clock, TrustGrant, Verifier, VerifierPolicy
from attestation.errors import (
    AttestationError,
    NotAttestedError,
    QuoteTooOldError,
    TpmError,
    TpmUnavailableError,
)
from attestation.levels import SOFTWARE_TRUST_CAP, TrustLevel
from attestation.model import AttesterIdentity, Challenge, Evidence
from attestation.pcr import PcrPolicy, PcrSelection
from attestation.runner import ResourceThread
from attestation.software import SoftwareKey
from attestation.verify import ek_id, load_certificate, read_public, verify_ek_certificate

if TYPE_CHECKING:
    from attestation.tpm import Tpm

_log = logging.getLogger(__name__)

TPM_SIGNATURE_ALGORITHM = "ecdsa-p256-sha256"


@dataclass(frozen=True, slots=True)
class NodeAttestationConfig:
    """The ``[attestation]`` section of mycoedge.toml, validated by the daemon's config loader."""

    state_dir: Path
    tcti: str | None = "device:/dev/tpmrm0"  # None: no TPM, software key (trust capped at 2)
    ek_kind: str = "rsa2048"  # "rsa2048" | "ecc256" | "ecc384"
    ca_bundle: Path | None = None  # PEM roots/intermediates of the TPM vendor(s)
    enrolled_ek_ids: frozenset[str] = frozenset()  # for TPMs without an EK certificate
    pcr_selection: str = "sha256:0-7"
    pcr_policy: PcrPolicy | None = None
    event_log: Path | None = None  # e.g. /sys/kernel/security/tpm0/binary_bios_measurements
    interval_s: float = 300.0  # re-attest this often
    max_quote_age_s: float = 900.0  # level 3 lapses this long after the last good quote
    require_tpm: bool = False  # refuse to start instead of falling back to the software key
    node_id: str = "node"
    trusted_verifiers: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodeTrust:
    """The node's trust as status, zeroconf TXT and /metrics show it."""

    mode: str  # "tpm" | "software"
    level: TrustLevel
    attested_at: float | None = None
    expires_at: float | None = None
    reason: str | None = None  # why the last attestation failed, a stable reason code
    ek_id: str | None = None
    ak_name: str | None = None
    ek_basis: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "trust": self.mode,
            "level": int(self.level),
            "level_name": self.level.name,
            "attested_at": self.attested_at,
            "expires_at": self.expires_at,
            "reason": self.reason,
            "ek_id": self.ek_id,
            "ak_name": self.ak_name,
            "ek_basis": self.ek_basis,
        }


@dataclass(slots=True)
class _Backend:
    tpm: Tpm | None
    software: SoftwareKey | None
    ca_bundle: bytes | None
    signer_pem: bytes
    event_log_path: Path | None

    def close(self) -> None:
        if self.tpm is not None:
            self.tpm.close()

    def read_event_log(self) -> bytes | None:
        if self.event_log_path is None:
            return None
        try:
            return self.event_log_path.read_bytes()
        except OSError as exc:
            raise AttestationError(f"cannot read event log {self.event_log_path}: {exc}") from None


def _open_backend(config: NodeAttestationConfig) -> _Backend:
    """Blocking, in the TPM thread: open the TPM, or fall back to the software key."""
    ca_bundle = config.ca_bundle.read_bytes() if config.ca_bundle is not None else None
    config.state_dir.mkdir(parents=True, exist_ok=True)
    if config.tcti is not None:
        from attestation.tpm import Tpm  # tpm2-pytss only when there is a TPM to talk to

        try:
            tpm = Tpm.open(config.tcti, state_dir=config.state_dir, ek_kind=config.ek_kind)
        except TpmUnavailableError:
            if config.require_tpm:
                raise
            _log.warning("TPM at %r is unavailable", config.tcti)
        except TpmError as exc:  # a TPM answered but cannot give us an EK/AK (e.g. no EK certificate)
            if config.require_tpm:
                raise
            _log.error("TPM at %r is present but unusable: %s", config.tcti, exc)
        else:
            try:
                return _Backend(tpm, None, ca_bundle, tpm.signer_public_pem(), config.event_log)
            except BaseException:
                tpm.close()
                raise
    software = SoftwareKey(config.state_dir)
    _log.warning(
        "NO TPM: node %s runs with a SOFTWARE KEY (%s); its trust is capped at level %d (%s) and nothing it "
        "signs is hardware-backed",
        config.node_id, config.state_dir / "node-ed25519.pem", SOFTWARE_TRUST_CAP, SOFTWARE_TRUST_CAP.name,
    )  # fmt: skip
    return _Backend(None, software, ca_bundle, software.public_key_pem(), None)


class NodeAttestor:
    """The node's attestation: ``async with NodeAttestor(config) as node: node.trust.level``.

    Runs one task (``attestation.node.schedule``) that re-attests every ``interval_s``; TPM calls run in
    one dedicated thread. ``verifier`` is the node's own verifier (same policy) and may be used for peers.
    """

    def __init__(
        self,
        config: NodeAttestationConfig,
        *,
        clock: Clock = time.time,
        on_change: Callable[[NodeTrust], None] | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._on_change = on_change
        self._thread: ResourceThread[_Backend] = ResourceThread(
            lambda: _open_backend(config), _Backend.close, name="attestation.tpm"
        )
        self._backend: _Backend | None = None
        self._task: asyncio.Task[None] | None = None
        self._grant: TrustGrant | None = None
        self._reason: str | None = None
        self._successes = 0
        self._failures = 0
        self._last_duration_s = 0.0
        self._warned: set[str] = set()
        self._stale_connection = False
        self.verifier: Verifier | None = None

    # --- lifecycle --------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._thread.__aenter__()
        try:
            self._backend = await self._thread.call(lambda backend: backend)
            if self._backend.tpm is not None:
                self.verifier = Verifier(
                    VerifierPolicy(
                        pcr_selection=PcrSelection.parse(self.config.pcr_selection),
                        pcr_policy=self.config.pcr_policy,
                        ca_bundle=self._backend.ca_bundle,
                        enrolled_ek_ids=self.config.enrolled_ek_ids,
                        grant_ttl_s=self.config.max_quote_age_s,
                        trusted_verifiers=self.config.trusted_verifiers,
                    ),
                    verifier_id=self.config.node_id,
                    clock=self._clock,
                )
                await self.attest()
                self._task = asyncio.create_task(self._schedule(), name="attestation.node.schedule")
        except BaseException:
            await self._thread.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._thread.__aexit__(exc_type, exc, tb)

    async def _schedule(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_s)
            try:
                await self.attest()
            except Exception:  # a bug must not stop re-attestation for good; the level lapses meanwhile
                _log.exception("scheduled node attestation crashed")

    # --- attestation ------------------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return "software" if self._backend is None or self._backend.tpm is None else "tpm"

    @property
    def trust(self) -> NodeTrust:
        """The current trust; level 3 lapses to 0 once the last good quote is older than ``max_quote_age_s``."""
        if self.mode == "software":
            return NodeTrust(mode="software", level=SOFTWARE_TRUST_CAP, reason="no_tpm")
        grant = self.verifier.grant(self.config.node_id) if self.verifier is not None else None
        if grant is None:
            lapsed = QuoteTooOldError.reason if self._successes else NotAttestedError.reason
            return NodeTrust(mode="tpm", level=TrustLevel.UNTRUSTED, reason=self._reason or lapsed)
        return NodeTrust(
            mode="tpm",
            level=grant.level,
            attested_at=grant.attested_at,
            expires_at=grant.expires_at,
            reason=self._reason,
            ek_id=grant.ek_id,
            ak_name=grant.ak_name.hex(),
            ek_basis=grant.ek_basis,
        )

    @property
    def level(self) -> TrustLevel:
        return self.trust.level

    async def attest(self) -> NodeTrust:
        """Attest the node now (challenge, credential activation, quote, verify); never raises for refusals."""
        if self.mode == "software" or self.verifier is None:
            return self.trust
        before = self.trust.level
        started = time.perf_counter()
        if self._stale_connection:
            await self._reconnect()
        try:
            challenge = self.verifier.issue_challenge(self.config.node_id, await self.identity())
            evidence = await self.respond(challenge)
            self._grant = self.verifier.verify(self.config.node_id, evidence)
        except AttestationError as exc:
            self._failures += 1
            self._reason = exc.reason
            self.verifier.revoke(self.config.node_id)
            level = logging.DEBUG if exc.reason in self._warned else logging.WARNING
            self._warned.add(exc.reason)
            _log.log(level, "node self-attestation failed: %s (%s)", exc.reason, exc)
            if isinstance(exc, TpmError):
                self._stale_connection = True
                await self._reconnect()
        else:
            self._successes += 1
            self._reason = None
        self._last_duration_s = time.perf_counter() - started
        trust = self.trust
        if trust.level != before:
            _log.info("node trust level %d -> %d (%s)", before, trust.level, trust.level.name)
            if self._on_change is not None:
                self._on_change(trust)
        return trust

    async def _reconnect(self) -> None:
        """After a TPM command failed, reopen the TCTI (a restarted swtpm or tabrmd); the next attestation
        uses the new connection. The AK and signing key come back from the state directory."""
        config = self.config

        def reopen(backend: _Backend) -> None:
            from attestation.tpm import Tpm

            assert config.tcti is not None
            fresh = Tpm.open(config.tcti, state_dir=config.state_dir, ek_kind=config.ek_kind)
            if backend.tpm is not None:
                with contextlib.suppress(AttestationError):
                    backend.tpm.close()
            backend.tpm = fresh

        try:
            await self._thread.call(reopen)
        except AttestationError as exc:
            _log.debug("TPM reconnect failed: %s", exc.reason)
        else:
            self._stale_connection = False
            _log.info("reconnected to the TPM at %r", config.tcti)

    @staticmethod
    def _tpm(backend: _Backend) -> Tpm:
        if backend.tpm is None:
            raise TpmUnavailableError("no TPM")
        return backend.tpm

    # --- keys: MAIF signing and payload sealing ---------------------------------------------------------

    @property
    def signature_algorithm(self) -> str:
        """``ecdsa-p256-sha256`` (TPM-resident key, DER signatures) or ``ed25519`` (software key)."""
        return TPM_SIGNATURE_ALGORITHM if self.mode == "tpm" else SoftwareKey.signature_algorithm

    @property
    def signer_public_pem(self) -> bytes:
        assert self._backend is not None, "enter the NodeAttestor first"
        return self._backend.signer_pem

    @property
    def ca_bundle(self) -> bytes | None:
        """The EK CA bundle as read once on the TPM thread at start, for a verifier of peers built elsewhere."""
        assert self._backend is not None, "enter the NodeAttestor first"
        return self._backend.ca_bundle

    async def sign(self, data: bytes) -> bytes:
        """Sign (e.g. a MAIF block) with the TPM-resident key, or the software key without a TPM."""
        return await self._thread.call(lambda b: b.tpm.sign(data) if b.tpm is not None else _software(b).sign(data))

    async def seal(self, secret: bytes, *, pcrs: PcrSelection | None = None) -> bytes:
        """Protect a data-encryption key: TPM-sealed (only this TPM opens it; with ``pcrs`` only in this PCR
        state), or software-wrapped without a TPM (``pcrs`` cannot be honoured there and is refused)."""
        if pcrs is not None and self.mode == "software":
            raise TpmUnavailableError("PCR-bound sealing needs a TPM")
        return await self._thread.call(
            lambda b: b.tpm.seal(secret, pcrs=pcrs) if b.tpm is not None else _software(b).seal(secret)
        )

    async def unseal(self, blob: bytes) -> bytes:
        return await self._thread.call(lambda b: b.tpm.unseal(blob) if b.tpm is not None else _software(b).unseal(blob))

    # --- the node as an attester (to a peer node's verifier) -----------------------------------------------

    async def identity(self) -> AttesterIdentity:
        """The node's AK, EK and EK certificate, for a peer's ``POST /v1/attestation/challenge``."""
        return await self._thread.call(lambda b: self._tpm(b).identity())

    async def respond(self, challenge: Challenge) -> Evidence:
        """Answer a peer verifier's challenge (credential activation + quote), for its ``/verify``."""
        return await self._thread.call(
            lambda b: answer_challenge(self._tpm(b), challenge, event_log=b.read_event_log())
        )

    # --- presentation -----------------------------------------------------------------------------------

    def txt_record(self) -> dict[str, str]:
        """Zeroconf TXT properties: ``trust`` (tpm|software) and ``trust_level`` (0..5)."""
        trust = self.trust
        return {"trust": trust.mode, "trust_level": str(int(trust.level))}

    def metrics(self) -> dict[str, float]:
        """Gauges and counters for /metrics (Prometheus names; the daemon registers them)."""
        trust = self.trust
        out = {
            "mycoedge_trust_level": float(trust.level),
            "mycoedge_trust_software": 1.0 if trust.mode == "software" else 0.0,
            "mycoedge_attestation_success_total": float(self._successes),
            "mycoedge_attestation_failure_total": float(self._failures),
            "mycoedge_attestation_duration_seconds": self._last_duration_s,
        }
        if trust.attested_at is not None:
            out["mycoedge_attestation_last_success_timestamp_seconds"] = trust.attested_at
            out["mycoedge_attestation_quote_age_seconds"] = max(0.0, self._clock() - trust.attested_at)
        return out

    async def describe(self) -> dict[str, Any]:
        """What ``mycoedge attest`` prints: EK certificate chain, AK, PCRs and a fresh quote verified locally."""
        trust = await self.attest()
        out: dict[str, Any] = {"node": self.config.node_id, **trust.to_json()}
        if self.mode == "software":
            out["software_key"] = {"algorithm": self.signature_algorithm, "public_pem": self.signer_public_pem.decode()}
            return out
        assert self._backend is not None
        ca_bundle = self._backend.ca_bundle
        identity = await self.identity()
        ek = read_public(identity.ek_public, "EK public")
        ak = read_public(identity.ak_public, "AK public")
        chain: list[dict[str, Any]] = []
        chain_error = None
        if identity.ek_certificate is not None:
            certs: list[x509.Certificate] = []
            try:
                certs = [load_certificate(identity.ek_certificate)]
                if ca_bundle is None:
                    chain_error = "no CA bundle configured"
                else:
                    certs = verify_ek_certificate(identity.ek_certificate, ca_bundle)
            except AttestationError as exc:
                chain_error = exc.reason
            chain = [_describe_cert(c) for c in certs]
        grant = self._grant
        quote = grant.quote if grant is not None and self._reason is None else None
        selection = PcrSelection.parse(self.config.pcr_selection)
        pcrs = await self._thread.call(lambda b: self._tpm(b).pcr_read(selection))
        out.update(
            {
                "tcti": self.config.tcti,
                "ek": {
                    "kind": self.config.ek_kind,
                    "id": ek_id(ek),
                    "public_pem": ek.pem.decode(),
                    "certificate_chain": chain,
                    "chain_error": chain_error,
                },
                "ak": {"name": ak.name.hex(), "public_pem": ak.pem.decode(), "algorithm": TPM_SIGNATURE_ALGORITHM},
                "pcrs": {bank: {str(i): v.hex() for i, v in sorted(vals.items())} for bank, vals in pcrs.items()},
                "quote": None
                if quote is None
                else {
                    "verified": True,
                    "nonce": base64.b64encode(quote.nonce).decode(),
                    "pcr_selection": str(quote.pcr_selection),
                    "pcr_digest": quote.pcr_digest.hex(),
                    "clock_ms": quote.clock_ms,
                    "reset_count": quote.reset_count,
                    "restart_count": quote.restart_count,
                },
                "signer": {"algorithm": self.signature_algorithm, "public_pem": self.signer_public_pem.decode()},
            }
        )
        return out


def _software(backend: _Backend) -> SoftwareKey:
    assert backend.software is not None
    return backend.software


def _describe_cert(cert: x509.Certificate) -> dict[str, Any]:
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "pem": cert.public_bytes(serialization.Encoding.PEM).decode(),
    }
