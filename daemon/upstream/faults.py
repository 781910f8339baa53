"""Fault injection for the reference upstream: what goes wrong with each ingest request, by chance.

The decision is pure (a ``random.Random`` in, an outcome out) so tests can pin a seed; the server
applies it. Rates are per request and exclusive (their sum is at most 1); a latency spike is independent.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from daemon.upstream.errors import UpstreamConfigError


class Outcome(enum.Enum):
    OK = "ok"
    ERROR = "error"                  # 503 before anything is stored
    ERROR_AFTER_COMMIT = "after_commit"  # stored, then 500: the client must retry and be deduplicated
    THROTTLE = "throttle"            # 429 with Retry-After
    RESET = "reset"                  # connection dropped before storing
    RESET_AFTER_COMMIT = "reset_after_commit"  # stored, then connection dropped


@dataclass(frozen=True, slots=True)
class Faults:
    """Per-request fault probabilities; ``latency_s`` is added with probability ``latency_rate``."""

    error_rate: float = 0.0
    after_commit_rate: float = 0.0
    reset_rate: float = 0.0
    throttle_rate: float = 0.0
    retry_after_s: int = 1
    latency_s: float = 0.0
    latency_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("error_rate", "after_commit_rate", "reset_rate", "throttle_rate", "latency_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UpstreamConfigError(f"faults.{name} must be within 0..1, got {value}")
        if self.error_rate + self.after_commit_rate + self.reset_rate + self.throttle_rate > 1.0 + 1e-9:
            raise UpstreamConfigError("faults: error, after_commit, reset and throttle rates sum past 1")
        if self.retry_after_s < 0 or self.latency_s < 0:
            raise UpstreamConfigError("faults.retry_after_s and faults.latency_s must be >= 0")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def updated(self, changes: object) -> Faults:
        """A copy with ``changes`` applied; unknown keys or wrong types raise ``UpstreamConfigError``."""
        if not isinstance(changes, Mapping):
            raise UpstreamConfigError("faults must be a JSON object of settings")
        known = {f.name: f.type for f in fields(self)}
        clean: dict[str, Any] = {}
        for key, value in changes.items():
            if key not in known:
                raise UpstreamConfigError(f"faults: unknown setting {key!r}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UpstreamConfigError(f"faults.{key} must be a number")
            clean[key] = int(value) if key == "retry_after_s" else float(value)
        return replace(self, **clean)


def decide(faults: Faults, rng: random.Random) -> tuple[Outcome, float]:
    """The outcome for one request and the extra latency to add before answering."""
    delay = faults.latency_s if faults.latency_rate and rng.random() < faults.latency_rate else 0.0
    r = rng.random()
    for outcome, rate in (
        (Outcome.ERROR, faults.error_rate),
        (Outcome.ERROR_AFTER_COMMIT, faults.after_commit_rate),
        (Outcome.THROTTLE, faults.throttle_rate),
        (Outcome.RESET, faults.reset_rate / 2),
        (Outcome.RESET_AFTER_COMMIT, faults.reset_rate / 2),
    ):
        if r < rate:
            return outcome, delay
        r -= rate
    return Outcome.OK, delay
