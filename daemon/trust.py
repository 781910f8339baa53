"""Trust levels and the gates every hub operation passes: one book of each principal's current level.

Levels follow ARCHITECTURE.md "Trust" (``attestation.levels.TrustLevel``). A bearer token proves level 1,
a JWT verified offline against the configured JWKS raises an agent to 2 until the JWT expires, and the
attestation routes raise it to 3..5 with an expiry (``TrustBook.grant``). Gates read the level from the
book only, so a level earned elsewhere applies to the very next request.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from attestation.levels import TrustLevel
from daemon.errors import DaemonError

log = logging.getLogger(__name__)

Clock = Callable[[], float]

# Operation classes and the level each needs by default (issue 6: "read public >= 2, write own >= 2, read
# sensitive >= 3, write shared >= 3, admin >= 5"); the others are this module's choice, all configurable.
DEFAULT_REQUIREMENTS: Mapping[str, int] = {
    "registry.read": 1,
    "message.send": 1,
    "handoff": 1,
    "read_public": 2,
    "write_own": 2,
    "read_sensitive": 3,
    "write_shared": 3,
    "device.read": 1,
    "device.command": 2,
    "admin": 5,
}


class TrustError(DaemonError):
    """A trust claim (e.g. a JWT) was refused, or a gate was asked about an unknown operation."""


class GateRefused(TrustError):
    """The caller's current level is below what the operation needs."""

    def __init__(self, operation: str, needed: int, have: int) -> None:
        super().__init__(f"{operation} needs trust level {needed}, caller has {have}")
        self.operation = operation
        self.needed = needed
        self.have = have


@dataclass(frozen=True, slots=True)
class TrustGrant:
    """A level held until ``expires_at`` (``None``: until revoked); ``basis`` says what earned it."""

    level: int
    expires_at: float | None
    basis: str


# Level 4 holds for one request only (a write signed by the agent's attested TPM key): the attestation
# middleware sets it for the request's task, and TrustBook.level honours it for that subject alone.
REQUEST_LEVEL: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar(
    "mycoedge_request_level", default=None)


class TrustBook:
    """Each agent's current trust level: the floor it authenticates with, raised by grants that expire.

    Thread-safe (MCP or test threads may read it); reads are a dict lookup and a clock call.
    """

    def __init__(self, *, clock: Clock = time.time, floor: int = int(TrustLevel.BASIC_AUTH)) -> None:
        self._clock = clock
        self._floor = floor
        self._grants: dict[str, list[TrustGrant]] = {}
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str, int], None]] = []

    def on_change(self, listener: Callable[[str, int], None]) -> None:
        """Called with (subject, new level) after every grant or revocation (e.g. to audit it)."""
        self._listeners.append(listener)

    def level(self, subject: str) -> int:
        request = REQUEST_LEVEL.get()
        boost = request[1] if request is not None and request[0] == subject else 0
        return max(boost, self._stored_level(subject))

    def _stored_level(self, subject: str) -> int:
        now = self._clock()
        with self._lock:
            grants = self._grants.get(subject)
            if not grants:
                return self._floor
            live = [g for g in grants if g.expires_at is None or g.expires_at > now]
            if len(live) != len(grants):
                self._grants[subject] = live
        return max([self._floor, *(g.level for g in live)])

    def grant(self, subject: str, level: int, expires_at: float | None = None, *, basis: str = "attestation") -> None:
        """Raise ``subject`` to ``level`` until ``expires_at`` (None: until revoked); the attestation routes
        call this for 3..5. A new grant on the same ``basis`` replaces the previous one."""
        if not 0 <= level <= int(TrustLevel.MULTI_PARTY_VERIFIED):
            raise TrustError(f"trust level must be 0..5, got {level}")
        with self._lock:
            kept = [g for g in self._grants.get(subject, []) if g.basis != basis]
            kept.append(TrustGrant(level, expires_at, basis))
            self._grants[subject] = kept
        for listener in self._listeners:
            listener(subject, self.level(subject))

    def revoke(self, subject: str, *, basis: str | None = None) -> None:
        with self._lock:
            if basis is None:
                self._grants.pop(subject, None)
            else:
                self._grants[subject] = [g for g in self._grants.get(subject, []) if g.basis != basis]
        for listener in self._listeners:
            listener(subject, self.level(subject))

    def grants(self, subject: str) -> list[TrustGrant]:
        now = self._clock()
        with self._lock:
            return [g for g in self._grants.get(subject, []) if g.expires_at is None or g.expires_at > now]


class Gates:
    """The level each operation class needs; ``check`` raises ``GateRefused`` below it."""

    def __init__(self, overrides: Mapping[str, int] | None = None) -> None:
        merged = dict(DEFAULT_REQUIREMENTS)
        for name, level in (overrides or {}).items():
            if name not in merged:
                raise TrustError(f"unknown trust gate {name!r}; known: {', '.join(sorted(merged))}")
            if not 0 <= int(level) <= 5:
                raise TrustError(f"trust gate {name} must be 0..5, got {level}")
            merged[name] = int(level)
        self.requirements: Mapping[str, int] = merged

    def needed(self, operation: str) -> int:
        try:
            return self.requirements[operation]
        except KeyError:
            raise TrustError(f"no trust gate named {operation!r}") from None

    def check(self, operation: str, level: int) -> None:
        needed = self.needed(operation)
        if level < needed:
            raise GateRefused(operation, needed, level)


class JwtVerifier:
    """Verifies identity-provider JWTs offline against a configured JWKS (RFC 7517) with PyJWT.

    ``claim`` names the claim that carries the agent id (``sub`` by default).
    """

    ALGORITHMS = ("RS256", "ES256", "EdDSA", "PS256")

    def __init__(
        self,
        jwks: Mapping[str, Any],
        *,
        issuer: str | None = None,
        audience: str | None = None,
        claim: str = "sub",
        leeway_s: float = 30.0,
        clock: Clock = time.time,
    ) -> None:
        try:
            self._keys = jwt.PyJWKSet.from_dict(dict(jwks))
        except jwt.PyJWTError as exc:
            raise TrustError(f"JWKS is unusable: {exc}") from None
        self._issuer = issuer
        self._audience = audience
        self._claim = claim
        self._leeway = leeway_s
        self._clock = clock

    def verify(self, token: str) -> tuple[str, float]:
        """The subject named by a valid token and the token's expiry; ``TrustError`` otherwise."""
        try:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid")
            candidates = [k for k in self._keys.keys if kid is None or k.key_id == kid]
            if not candidates:
                raise TrustError(f"no JWKS key with kid {kid!r}")
            key = candidates[0]
            options: Any = {"require": ["exp", self._claim], "verify_aud": self._audience is not None}
            claims = jwt.decode(
                token, key=key.key, algorithms=list(self.ALGORITHMS), audience=self._audience, issuer=self._issuer,
                options=options, leeway=self._leeway,
            )
        except jwt.PyJWTError as exc:
            raise TrustError(f"JWT refused: {exc}") from None
        # PyJWT checks exp against the wall clock; the injected clock decides too, so tests can move time.
        exp = float(claims["exp"])
        if exp + self._leeway <= self._clock():
            raise TrustError("JWT refused: expired")
        subject = claims.get(self._claim)
        if not isinstance(subject, str) or not subject:
            raise TrustError(f"JWT claim {self._claim!r} must be a non-empty string")
        return subject, exp
