"""The node's trust in the daemon: its own attestation, and remote challenge/verify for agents and peers.

``attestation`` does the TPM work and the pure verification; this module maps the ``[trust]`` config onto
it, exposes ``/v1/attestation/*``, feeds ``/metrics`` and tells the rest of the daemon (status line, mDNS
TXT) when the node's level changes. Without a TPM the node runs on a software key at level 2 and says so.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from attestation import (
    AttestationError,
    AttesterIdentity,
    EvidenceRefusedError,
    NodeAttestationConfig,
    NodeAttestor,
    NodeTrust,
    PcrSelection,
    Verifier,
    VerifierPolicy,
)
from attestation.model import Evidence
from daemon.api import PRINCIPAL_KEY, principal, require_admin
from daemon.config import Config
from daemon.openapi import Handler, Routes, read_json
from daemon.problems import PROBLEM_SCHEMA, Problem
from daemon.store.signing import ECDSA_P256, key_id_for
from daemon.trust import REQUEST_LEVEL, TrustBook

log = logging.getLogger(__name__)

DEFAULT_TPM_DEVICE = Path("/dev/tpmrm0")


def attestation_config(config: Config) -> NodeAttestationConfig:
    """``[trust]`` → the attestation package's settings; an empty ``tcti`` finds the kernel's TPM if any."""
    trust = config.trust
    tcti: str | None = trust.tcti or None
    if tcti is None and DEFAULT_TPM_DEVICE.exists():
        tcti = f"device:{DEFAULT_TPM_DEVICE}"
    if tcti == "none":
        tcti = None
    return NodeAttestationConfig(
        state_dir=config.node.state_dir / "attestation",
        tcti=tcti,
        ek_kind=trust.ek_kind,
        ca_bundle=Path(trust.ek_ca_bundle) if trust.ek_ca_bundle else None,
        enrolled_ek_ids=frozenset(i.strip() for i in trust.enrolled_ek_ids.split(",") if i.strip()),
        pcr_selection=trust.pcr_selection,
        event_log=Path(trust.event_log) if trust.event_log else None,
        interval_s=trust.attest_interval_s,
        max_quote_age_s=trust.quote_max_age_s,
        require_tpm=trust.require_tpm,
        node_id=config.node.id,
    )


def remote_verifier(node: NodeAttestor, config: Config, clock: Callable[[], float] = time.time) -> Verifier:
    """The verifier for agents and peers: the node's own when it has a TPM, else one from config alone.

    Verifying someone else's quote needs no TPM here, only the CA bundle (or enrolled EK ids): a node on a
    software key still raises an attested agent to level 3.
    """
    if node.verifier is not None:
        return node.verifier
    trust = config.trust
    return Verifier(
        VerifierPolicy(
            pcr_selection=PcrSelection.parse(trust.pcr_selection),
            ca_bundle=node.ca_bundle,  # read by the attestor on its thread from the same ``ek_ca_bundle``
            enrolled_ek_ids=node.config.enrolled_ek_ids,
            grant_ttl_s=trust.quote_max_age_s,
        ),
        verifier_id=config.node.id,
        clock=clock,
    )


class TrustCollector(Collector):
    """The node's trust gauges and the verifier's counters, read at scrape time."""

    def __init__(self, node: NodeAttestor, verifier: Verifier) -> None:
        self._node = node
        self._verifier = verifier

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, value in self._node.metrics().items():
            family = GaugeMetricFamily(name.removesuffix("_total"), f"node attestation: {name}")
            family.add_metric([], value)
            yield family
        refusals = GaugeMetricFamily("mycoedge_attestation_remote",
                                     "Verifier counters: accepted, refused_<reason>, pending challenges, subjects",
                                     labels=["counter"])
        for key, value in sorted(self._verifier.stats().items()):
            refusals.add_metric([key], float(value))
        yield refusals


class TpmSigner:
    """The store's ``Signer`` backed by the node's TPM-resident ECDSA P-256 key.

    The store signs its checkpoints on its own writer thread; the TPM lives on the attestor's thread and is
    driven from the event loop, so a signature is a hop: writer thread → loop → TPM thread and back. The
    loop is never blocked by it (it only schedules), and one signature per group commit keeps the hops rare.
    """

    algorithm = ECDSA_P256

    def __init__(self, node: NodeAttestor, loop: asyncio.AbstractEventLoop, *, timeout_s: float = 30.0) -> None:
        key = serialization.load_pem_public_key(node.signer_public_pem)
        self._public = key.public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
        self._node = node
        self._loop = loop
        self._timeout_s = timeout_s

    @property
    def key_id(self) -> str:
        return key_id_for(self._public)

    @property
    def public_key(self) -> bytes:
        return self._public

    def sign(self, data: bytes) -> bytes:
        future = asyncio.run_coroutine_threadsafe(self._node.sign(data), self._loop)
        return future.result(timeout=self._timeout_s)


def trust_label(trust: NodeTrust) -> str:
    """What status lines and mDNS TXT say: ``tpm:3`` or ``software:2``."""
    return f"{trust.mode}:{int(trust.level)}"


# ---- HTTP ------------------------------------------------------------------------------------------
ATTESTOR_KEY: web.AppKey[NodeAttestor] = web.AppKey("attestor", NodeAttestor)
VERIFIER_KEY: web.AppKey[Verifier] = web.AppKey("verifier", Verifier)
TRUST_BOOK_KEY: web.AppKey[TrustBook] = web.AppKey("trust_book", TrustBook)
routes = Routes(tag="attestation")

_OBJECT: dict[str, Any] = {"type": "object"}
_CHALLENGE_REQUEST: dict[str, Any] = {
    "type": "object",
    "properties": {"ak_public": {"type": "string"}, "ek_public": {"type": "string"},
                   "ek_certificate": {"type": ["string", "null"]}},
}
_GRANT: dict[str, Any] = {
    "type": "object",
    "required": ["subject", "level", "expires_at"],
    "properties": {"subject": {"type": "string"}, "level": {"type": "integer"}, "expires_at": {"type": "number"},
                   "level_name": {"type": "string"}},
}


def _refused(exc: AttestationError) -> Problem:
    status = 403 if isinstance(exc, EvidenceRefusedError) else 422
    return Problem(status, str(exc), kind=f"attestation-{exc.reason.replace('_', '-')}", reason=exc.reason)


@routes.get("/v1/attestation/node", summary="The node's own trust: mode, level, expiry, reason",
            auth="agent", responses={200: _OBJECT})
async def node_trust(request: web.Request) -> web.Response:
    return web.json_response(request.app[ATTESTOR_KEY].trust.to_json())


@routes.get("/v1/attestation/describe", summary="EK certificate chain, AK, PCRs and a fresh quote verified here",
            auth="admin", responses={200: _OBJECT})
async def describe(request: web.Request) -> web.Response:
    require_admin(request)
    try:
        body = await request.app[ATTESTOR_KEY].describe()
    except AttestationError as exc:
        raise Problem(503, f"attestation failed: {exc}", kind="attestation-unavailable", reason=exc.reason) from None
    return web.json_response(body)


@routes.post("/v1/attestation/challenge", summary="A nonce (and a credential for the AK/EK given) to quote over",
             auth="agent", request=_CHALLENGE_REQUEST, responses={200: _OBJECT, 403: PROBLEM_SCHEMA})
async def challenge(request: web.Request) -> web.Response:
    who = principal(request)
    body = await read_json(request)
    verifier = request.app[VERIFIER_KEY]
    try:
        identity = AttesterIdentity.from_json(body) if body.get("ak_public") else None
        issued = verifier.issue_challenge(who.id, identity)
    except AttestationError as exc:
        raise _refused(exc) from None
    return web.json_response(issued.to_json())


@routes.post("/v1/attestation/verify", summary="Quote, signature, PCRs and activation proof → level 3 until expiry",
             auth="agent", request=_OBJECT, responses={200: _GRANT, 403: PROBLEM_SCHEMA})
async def verify(request: web.Request) -> web.Response:
    who = principal(request)
    body = await read_json(request)
    verifier = request.app[VERIFIER_KEY]
    try:
        grant = verifier.verify(who.id, Evidence.from_json(body))
    except AttestationError as exc:
        log.info("attestation of %s refused: %s", who.id, exc.reason)
        raise _refused(exc) from None
    log.info("attestation of %s accepted: level %d until %.0f", who.id, grant.level, grant.expires_at)
    book = request.app.get(TRUST_BOOK_KEY)
    if book is not None:
        # Every gate reads levels from the TrustBook: this is where an attested agent's level 3 takes effect.
        book.grant(who.id, int(grant.level), grant.expires_at, basis="attestation")
    return web.json_response(grant.to_json())


SIGNATURE_HEADER = "X-Mycoedge-Signature"  # base64 of the AK's signature over write_message(...)
TIMESTAMP_HEADER = "X-Mycoedge-Timestamp"  # the Unix time the agent signed with


@web.middleware
async def signed_writes(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Level 4 for one write: the agent signed method, path, body and time with its attested TPM key.

    Runs after authentication (the principal is known). A request without the headers is untouched; one
    with a signature that does not verify is refused outright rather than silently served at a lower level.
    """
    signature = request.headers.get(SIGNATURE_HEADER)
    if signature is None or request.method in ("GET", "HEAD", "OPTIONS"):
        return await handler(request)
    who = request.get(PRINCIPAL_KEY)
    verifier = request.app.get(VERIFIER_KEY)
    if who is None or verifier is None:
        return await handler(request)
    try:
        timestamp = float(request.headers.get(TIMESTAMP_HEADER, ""))
        raw_signature = base64.b64decode(signature, validate=True)
    except (ValueError, binascii.Error):
        raise Problem(400, f"{SIGNATURE_HEADER} must be base64 and {TIMESTAMP_HEADER} a Unix time",
                      kind="bad-signature-headers") from None
    body = await request.read()  # aiohttp keeps it for the handler
    try:
        grant = verifier.verify_signed_write(who.id, method=request.method, path=request.path, body=body,
                                             timestamp=timestamp, signature=raw_signature)
    except AttestationError as exc:
        raise _refused(exc) from None
    token = REQUEST_LEVEL.set((who.id, int(grant.level)))
    try:
        return await handler(request)
    finally:
        REQUEST_LEVEL.reset(token)
