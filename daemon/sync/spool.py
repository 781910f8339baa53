"""The spool's retention policy: what may be dropped when the uplink is down, and in which order.

Planning is pure (stats in, drops out) so the policy can be checked exhaustively without a database;
``enforce`` applies a plan to an ``Outbox`` and re-reads the stats until nothing is over its limit.

Policy (see docs/sync.md):
- ``telemetry`` sheds first: older than ``max_age_s`` is dropped, and oldest-first under byte pressure.
- ``events`` sheds second, on the same rules with a longer age.
- ``maif``, ``audit`` and ``memory`` are never dropped. When they alone fill the spool past its cap,
  every sheddable record is already gone, the state says ``protected_over_cap`` and the daemon keeps
  accepting them beyond the cap: losing a hash-chained block or audit entry breaks the chain for good,
  while disk use past a soft cap is an alarm an operator can act on.
Only whole prefixes are dropped (never thinning from the middle): the outbox offers prefix drops only,
and a prefix keeps the upstream's per-stream order a subsequence of the node's.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from daemon.sync.errors import SyncSettingsError
from daemon.sync.outbox import Outbox, OutboxStatsLike

MIB = 1024 * 1024
DAY_S = 86_400.0


class Retention(enum.Enum):
    """Whether a stream's records may be dropped before they reach the upstream."""

    SHED = "shed"
    KEEP = "keep"


class DropReason(enum.Enum):
    """Why records were dropped; a label on the drop counter."""

    AGE = "age"
    STREAM_CAP = "stream_cap"
    SPOOL_CAP = "spool_cap"


@dataclass(frozen=True, slots=True)
class StreamPolicy:
    """How one stream is kept: ``SHED`` streams obey ``max_age_s``/``max_bytes``; lower rank sheds first."""

    retention: Retention
    max_age_s: float | None = None
    max_bytes: int | None = None
    shed_rank: int = 0


def _default_streams() -> dict[str, StreamPolicy]:
    return {
        "telemetry": StreamPolicy(Retention.SHED, max_age_s=7 * DAY_S, max_bytes=None, shed_rank=0),
        "events": StreamPolicy(Retention.SHED, max_age_s=30 * DAY_S, max_bytes=None, shed_rank=1),
        "maif": StreamPolicy(Retention.KEEP),
        "audit": StreamPolicy(Retention.KEEP),
        "memory": StreamPolicy(Retention.KEEP),
    }


@dataclass(frozen=True, slots=True)
class SpoolPolicy:
    """The whole spool: shedding starts above ``high_water * max_bytes`` and goes down to ``low_water``."""

    max_bytes: int = 512 * MIB
    high_water: float = 0.95
    low_water: float = 0.85
    streams: Mapping[str, StreamPolicy] = field(default_factory=_default_streams)

    def __post_init__(self) -> None:
        if self.max_bytes <= 0:
            raise SyncSettingsError("spool.max_bytes must be positive")
        if not 0.0 < self.low_water <= self.high_water <= 1.0:
            raise SyncSettingsError("spool watermarks need 0 < low_water <= high_water <= 1")
        for name, stream in self.streams.items():
            if stream.max_age_s is not None and stream.max_age_s <= 0:
                raise SyncSettingsError(f"spool.{name}.max_age_s must be positive")
            if stream.max_bytes is not None and stream.max_bytes <= 0:
                raise SyncSettingsError(f"spool.{name}.max_bytes must be positive")

    def policy_for(self, stream: str) -> StreamPolicy:
        """Unknown streams are kept: dropping data nobody declared sheddable is never the safe default."""
        return self.streams.get(stream, StreamPolicy(Retention.KEEP))


def with_overrides(
    policy: SpoolPolicy,
    *,
    max_bytes: int | None = None,
    max_age_s: Mapping[str, float] | None = None,
    stream_max_bytes: Mapping[str, int] | None = None,
) -> SpoolPolicy:
    """``policy`` with flat settings from the config file applied (age/bytes only for sheddable streams).

    Asking for an age or byte limit on a never-dropped stream is refused: that would silently change
    the stated policy.
    """
    streams = dict(policy.streams)

    def sheddable(name: str, key: str) -> StreamPolicy:
        current = streams.get(name, policy.policy_for(name))
        if current.retention is Retention.KEEP:
            raise SyncSettingsError(f"spool.{name}.{key}: stream {name!r} is never dropped")
        return current

    for name, age in (max_age_s or {}).items():
        streams[name] = replace(sheddable(name, "max_age_s"), max_age_s=float(age))
    for name, cap in (stream_max_bytes or {}).items():
        streams[name] = replace(sheddable(name, "max_bytes"), max_bytes=int(cap))
    return replace(policy, max_bytes=policy.max_bytes if max_bytes is None else max_bytes, streams=streams)


@dataclass(frozen=True, slots=True)
class Drop:
    """One planned drop: either the ``count`` oldest records or everything created before a time."""

    stream: str
    reason: DropReason
    count: int = 0
    created_before: float | None = None


@dataclass(frozen=True, slots=True)
class SpoolState:
    """The spool's fill as seen at the last check."""

    total_bytes: int
    kept_bytes: int
    max_bytes: int
    protected_over_cap: bool

    @property
    def fill_ratio(self) -> float:
        return self.total_bytes / self.max_bytes


@dataclass(frozen=True, slots=True)
class _Level:
    count: int
    bytes: int


def assess(policy: SpoolPolicy, stats: Mapping[str, OutboxStatsLike]) -> SpoolState:
    """Fill level and whether never-dropped streams alone are past the shedding threshold."""
    total = sum(s.bytes for s in stats.values())
    kept = sum(s.bytes for name, s in stats.items() if policy.policy_for(name).retention is Retention.KEEP)
    return SpoolState(total, kept, policy.max_bytes, kept > policy.high_water * policy.max_bytes)


def plan(policy: SpoolPolicy, stats: Mapping[str, OutboxStatsLike], now: float) -> list[Drop]:
    """The drops that bring the spool within policy, oldest records first.

    Age drops come alone (their effect on bytes is unknown until the stats are read again); byte drops
    estimate counts from each stream's mean record size, so ``enforce`` re-plans until nothing is left.
    """
    age_drops = [
        Drop(name, DropReason.AGE, created_before=now - rule.max_age_s)
        for name, s in stats.items()
        if (rule := policy.policy_for(name)).retention is Retention.SHED
        and rule.max_age_s is not None
        and s.count > 0
        and s.oldest_created is not None
        and s.oldest_created < now - rule.max_age_s
    ]
    if age_drops:
        return age_drops

    levels = {name: _Level(s.count, s.bytes) for name, s in stats.items() if s.count > 0}
    drops: list[Drop] = []

    def take(name: str, nbytes: float, reason: DropReason) -> None:
        level = levels[name]
        mean = level.bytes / level.count
        count = min(level.count, max(1, math.ceil(nbytes / mean)))
        drops.append(Drop(name, reason, count=count))
        left = level.count - count
        levels[name] = _Level(left, 0 if left == 0 else level.bytes - round(count * mean))

    sheddable = sorted(
        (name for name in levels if policy.policy_for(name).retention is Retention.SHED),
        key=lambda n: (policy.policy_for(n).shed_rank, n),
    )
    for name in sheddable:
        cap = policy.policy_for(name).max_bytes
        if cap is not None and levels[name].bytes > policy.high_water * cap:
            take(name, levels[name].bytes - policy.low_water * cap, DropReason.STREAM_CAP)

    total = sum(level.bytes for level in levels.values())
    if total > policy.high_water * policy.max_bytes:
        excess = total - policy.low_water * policy.max_bytes
        for name in sheddable:
            if excess <= 0:
                break
            if levels[name].bytes == 0:
                continue  # nothing left, or only empty records: shedding them frees no bytes
            before = levels[name].bytes
            take(name, min(excess, before), DropReason.SPOOL_CAP)
            excess -= before - levels[name].bytes
    # Two count drops of one stream for different reasons stay apart so each reason is counted; ``take``
    # never plans fewer than one record, so there is no empty drop to filter out.
    return drops


@dataclass(frozen=True, slots=True)
class Enforcement:
    """What one ``enforce`` call did: records dropped per ``(stream, reason)`` and the state after."""

    dropped: Mapping[tuple[str, DropReason], int]
    state: SpoolState
    stats: Mapping[str, OutboxStatsLike]


async def enforce(
    outbox: Outbox, policy: SpoolPolicy, now: float, *, max_rounds: int = 32
) -> Enforcement:
    """Apply ``plan`` until it is empty (or ``max_rounds``), returning the counts actually dropped."""
    dropped: dict[tuple[str, DropReason], int] = {}
    stats = await outbox.outbox_stats()
    for _ in range(max_rounds):
        drops = plan(policy, stats, now)
        if not drops:
            break
        for drop in drops:
            if drop.created_before is not None:
                n = await outbox.outbox_drop_before(drop.stream, created_before=drop.created_before)
            else:
                n = await outbox.outbox_drop_oldest(drop.stream, count=drop.count)
            if n:
                key = (drop.stream, drop.reason)
                dropped[key] = dropped.get(key, 0) + n
        stats = await outbox.outbox_stats()
    return Enforcement(dropped, assess(policy, stats), stats)
