"""The part of the local store the uplink uses, as a structural ``Protocol``.

The worker is written against this, not against ``daemon.store``, so it runs with any SQLite-backed
outbox that keeps the same contract (the store's ``Store`` and the test outbox in ``tests/sync``).
Record and stats types are protocols too: the store's frozen dataclasses satisfy them by shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

# The streams the daemon writes to its outbox, in the order a pass visits them.
STREAMS: tuple[str, ...] = ("telemetry", "maif", "audit", "memory", "events")


class OutboxRecordLike(Protocol):
    """One queued record: ``seq`` is the outbox's order, ``record_id`` is stable across retries."""

    @property
    def seq(self) -> int: ...
    @property
    def stream(self) -> str: ...
    @property
    def record_id(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def created(self) -> float: ...


class OutboxStatsLike(Protocol):
    """How much one stream holds: record count, payload bytes and the oldest record's creation time."""

    @property
    def count(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def oldest_created(self) -> float | None: ...


@runtime_checkable
class Outbox(Protocol):
    """Durable per-stream FIFO queues; every method runs its SQLite work off the event loop."""

    async def outbox_append(self, stream: str, records: Sequence[tuple[str, bytes]]) -> None:
        """Append ``(record_id, payload)`` pairs in order; durable when this returns."""
        ...

    async def outbox_peek(self, stream: str, *, limit: int, max_bytes: int) -> Sequence[OutboxRecordLike]:
        """The oldest records of ``stream``, at most ``limit`` and about ``max_bytes`` (at least one)."""
        ...

    async def outbox_ack(self, stream: str, upto_seq: int) -> int:
        """Remove every record of ``stream`` with ``seq <= upto_seq``; returns how many went."""
        ...

    async def outbox_stats(self) -> Mapping[str, OutboxStatsLike]:
        """Count, bytes and oldest creation time per stream that holds records."""
        ...

    async def outbox_drop_oldest(self, stream: str, *, count: int) -> int:
        """Remove the ``count`` oldest records of ``stream``; returns how many went."""
        ...

    async def outbox_drop_before(self, stream: str, *, created_before: float) -> int:
        """Remove the records of ``stream`` created before ``created_before``; returns how many went."""
        ...
