"""The uplink: drains the outbox to the upstream in order, exactly once in the upstream's view.

Exactly-once rests on three rules: (1) one batch in flight per stream, always starting at the oldest
un-acknowledged record, so the upstream first sees records in outbox order; (2) a record leaves the
outbox only after a 2xx, so a crash, reset or timeout at any point means "send again"; (3) the upstream
keeps each record id once, so sending again is harmless. The batch's ``Idempotency-Key`` lets an
upstream answer a replay from its cache without touching its store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import aiohttp

from daemon.sync.errors import (
    SpoolError,
    SyncError,
    SyncSettingsError,
    UpstreamError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from daemon.sync.outbox import STREAMS, Outbox, OutboxStatsLike
from daemon.sync.spool import (
    DropReason,
    Enforcement,
    SpoolPolicy,
    SpoolState,
    assess,
    enforce,
    with_overrides,
)
from daemon.sync.wire import IDEMPOTENCY_HEADER, INGEST_PATH, EncodedBatch, encode_batch, parse_retry_after

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from daemon.sync.metrics import SyncCollector

log = logging.getLogger(__name__)

# Upper bound on a server's Retry-After we obey: a broken upstream must not park the node for days.
MAX_RETRY_AFTER_S = 3600.0
# At most one WARNING per stream in this many seconds while the upstream flaps.
WARN_EVERY_S = 60.0


@dataclass(slots=True)
class StreamCounters:
    """What the worker did with one stream since it started (process-lifetime counters)."""

    sent: int = 0
    duplicates: int = 0
    batches: int = 0
    failures: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    last_acked_seq: int | None = None


@dataclass(frozen=True, slots=True)
class StreamStatus:
    pending: int
    bytes: int
    oldest_created: float | None
    lag_s: float
    sent: int
    duplicates: int
    batches: int
    failures: int
    dropped: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class SyncStatus:
    """A snapshot for ``GET /v1/sync/status`` and the metrics collector; cheap, never touches SQLite."""

    state: str
    upstream: str
    interval_s: float
    running: bool
    runs_started: int
    runs_completed: int
    last_attempt: float | None
    last_success: float | None
    last_error: str | None
    consecutive_failures: int
    next_run_at: float | None
    retry_after_until: float | None
    spool: SpoolState
    streams: Mapping[str, StreamStatus]

    @property
    def pending(self) -> int:
        return sum(s.pending for s in self.streams.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "upstream": self.upstream,
            "interval_s": self.interval_s,
            "running": self.running,
            "runs_started": self.runs_started,
            "runs_completed": self.runs_completed,
            "last_attempt": self.last_attempt,
            "last_success": self.last_success,
            "last_error": self.last_error,
            "consecutive_failures": self.consecutive_failures,
            "next_run_at": self.next_run_at,
            "retry_after_until": self.retry_after_until,
            "pending": self.pending,
            "spool": {
                "bytes": self.spool.total_bytes,
                "kept_bytes": self.spool.kept_bytes,
                "max_bytes": self.spool.max_bytes,
                "fill_ratio": round(self.spool.fill_ratio, 6),
                "protected_over_cap": self.spool.protected_over_cap,
            },
            "streams": {
                name: {
                    "pending": s.pending,
                    "bytes": s.bytes,
                    "oldest_created": s.oldest_created,
                    "lag_s": round(s.lag_s, 3),
                    "sent": s.sent,
                    "duplicates": s.duplicates,
                    "batches": s.batches,
                    "failures": s.failures,
                    "dropped": dict(s.dropped),
                }
                for name, s in self.streams.items()
            },
        }


@dataclass(frozen=True, slots=True)
class RunResult:
    """One pass over every stream: records acknowledged per stream and the errors that stopped a stream."""

    sent: Mapping[str, int]
    errors: Mapping[str, str]
    dropped: Mapping[tuple[str, DropReason], int]
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return not self.errors


def _ssl_context(ca_file: str | Path | None, client_cert: str | Path | None,
                 client_key: str | Path | None) -> ssl.SSLContext | None:
    if ca_file is None and client_cert is None:
        return None
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if client_cert is not None:
        ctx.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
    return ctx


class SyncWorker:
    """Periodic and on-demand store-and-forward of the outbox to one upstream (async context manager).

    Entering starts the named tasks ``sync-loop`` (a pass at once, then every ``interval_s``, or after
    a backoff; skipped with ``periodic=False``, leaving only ``run_once``) and ``sync-spool-check``
    (the retention policy every ``spool_check_interval_s``); leaving cancels and awaits them.
    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        url: str,
        token: str | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
        ca_file: str | Path | None = None,
        source: str = "mycoedge",
        streams: Sequence[str] = STREAMS,
        interval_s: float = 30.0,
        periodic: bool = True,
        batch_max_records: int = 1000,
        batch_max_bytes: int = 1024 * 1024,
        request_timeout_s: float = 30.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 300.0,
        spool: SpoolPolicy | None = None,
        spool_max_bytes: int | None = None,
        spool_max_age_s: Mapping[str, float] | None = None,
        spool_stream_max_bytes: Mapping[str, int] | None = None,
        spool_check_interval_s: float = 5.0,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise SyncSettingsError("sync.url must be an http:// or https:// URL")
        for name, value in (("interval_s", interval_s), ("request_timeout_s", request_timeout_s),
                            ("backoff_initial_s", backoff_initial_s), ("backoff_max_s", backoff_max_s),
                            ("spool_check_interval_s", spool_check_interval_s)):
            if value <= 0:
                raise SyncSettingsError(f"sync.{name} must be positive")
        if batch_max_records < 1 or batch_max_bytes < 1:
            raise SyncSettingsError("sync.batch_max_records and sync.batch_max_bytes must be >= 1")
        if client_key is not None and client_cert is None:
            raise SyncSettingsError("sync.client_key needs sync.client_cert")
        self._outbox = outbox
        self._endpoint = url.rstrip("/") + ("" if url.rstrip("/").endswith(INGEST_PATH) else INGEST_PATH)
        self._url = url
        self._token = token
        self._ssl = _ssl_context(ca_file, client_cert, client_key)
        self._source = source
        self._streams = tuple(streams)
        self._interval_s = interval_s
        self._periodic = periodic
        self._batch_max_records = batch_max_records
        self._batch_max_bytes = batch_max_bytes
        self._request_timeout_s = request_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._policy = with_overrides(spool or SpoolPolicy(), max_bytes=spool_max_bytes,
                                      max_age_s=spool_max_age_s, stream_max_bytes=spool_stream_max_bytes)
        self._spool_check_interval_s = spool_check_interval_s
        self._clock = clock
        self._rand = rand
        self._registry = registry
        self._collector: SyncCollector | None = None

        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._run_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._counters = {s: StreamCounters() for s in self._streams}
        self._stats: Mapping[str, OutboxStatsLike] = {}
        self._spool_state = SpoolState(0, 0, self._policy.max_bytes, protected_over_cap=False)
        self._encoded: dict[str, EncodedBatch] = {}
        self._batch_limit = dict.fromkeys(self._streams, batch_max_records)
        self._running = False
        self._run_queued = False
        self._runs_started = 0
        self._runs_completed = 0
        self._last_attempt: float | None = None
        self._last_success: float | None = None
        self._last_error: str | None = None
        self._failures = 0
        self._next_run_at: float | None = None
        self._retry_after_until: float | None = None
        self._last_warned: dict[str, float] = {}

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._open_session()
        if self._registry is not None:
            from daemon.sync.metrics import SyncCollector  # noqa: PLC0415 - metrics import the worker

            collector = SyncCollector(self)
            try:
                self._registry.register(collector)
            except ValueError:  # the names are taken: a second worker on one registry is a wiring bug
                await self._close_session()
                raise
            self._collector = collector
        try:
            await self.refresh_stats()
        except SpoolError:
            log.warning("sync: outbox stats unavailable at start", exc_info=True)
        self._spawn(self._spool_loop(), "sync-spool-check")
        if self._periodic:
            self._next_run_at = self._clock()
            self._spawn(self._sync_loop(), "sync-loop")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self._collector is not None and self._registry is not None:
            self._registry.unregister(self._collector)
            self._collector = None
        await self._close_session()

    async def _open_session(self) -> None:
        connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True,
                                         limit=len(self._streams) + 2)
        headers = {"User-Agent": "mycoedge-sync/1"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self._request_timeout_s),
        )

    async def _close_session(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- scheduling --------------------------------------------------------------------------------

    def request_run(self) -> int:
        """Ask for a pass now (cuts backoff short, not a server's Retry-After); returns the run to wait for.

        With ``periodic=False`` there is no loop to wake, so a one-off ``sync-run`` task makes the pass.
        """
        target = self._runs_started + 1
        if self._periodic:
            self._wake.set()
        elif not self._run_queued:  # one queued pass serves every request made before it starts
            self._run_queued = True
            self._spawn(self._one_run(), "sync-run")
        return target

    async def _one_run(self) -> None:
        async with self._run_lock:
            self._run_queued = False  # from here on, a new request needs a new pass
        try:
            await self.run_once()
        except SyncError:
            log.warning("sync: on-demand pass failed", exc_info=True)

    async def wait_run(self, run_number: int) -> None:
        """Return once run ``run_number`` (as given by ``request_run``) has completed."""
        async with self._progress:
            await self._progress.wait_for(lambda: self._runs_completed >= run_number)

    async def _sync_loop(self) -> None:
        while True:
            delay = max(0.0, (self._next_run_at or 0.0) - self._clock())
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
            if self._wake.is_set() and self._retry_after_until is not None:
                hold = self._retry_after_until - self._clock()
                if hold > 0:
                    await asyncio.sleep(hold)
            self._wake.clear()
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not end uplink for the daemon's lifetime
                log.exception("sync: pass failed unexpectedly")
                self._failures += 1
                self._next_run_at = self._clock() + self._backoff_delay()

    async def _spool_loop(self) -> None:
        while True:
            await asyncio.sleep(self._spool_check_interval_s)
            try:
                await self.enforce_spool()
            except SpoolError:
                log.warning("sync: spool check failed", exc_info=True)

    def _backoff_delay(self) -> float:
        """Capped exponential backoff with equal jitter (half fixed, half random) after n failures."""
        step = min(self._backoff_max_s, self._backoff_initial_s * 2.0 ** max(0, self._failures - 1))
        return step / 2 + self._rand() * step / 2

    # -- the pass ----------------------------------------------------------------------------------

    async def enforce_spool(self) -> Enforcement:
        """Apply the retention policy now and count what it dropped."""
        try:
            result = await enforce(self._outbox, self._policy, self._clock())
        except SyncError:
            raise
        except Exception as exc:
            raise SpoolError(f"spool enforcement failed: {exc}") from exc
        for (stream, reason), n in result.dropped.items():
            counters = self._counters.setdefault(stream, StreamCounters())
            counters.dropped[reason.value] = counters.dropped.get(reason.value, 0) + n
            log.info("sync: dropped %d %s records (%s)", n, stream, reason.value)
        if result.state.protected_over_cap and not self._spool_state.protected_over_cap:
            log.error("sync: never-dropped streams alone fill the spool past its cap (%d of %d bytes)",
                      result.state.kept_bytes, result.state.max_bytes)
        self._stats = result.stats
        self._spool_state = result.state
        return result

    async def refresh_stats(self) -> None:
        try:
            stats = await self._outbox.outbox_stats()
        except Exception as exc:
            raise SpoolError(f"outbox stats failed: {exc}") from exc
        self._stats = stats
        self._spool_state = assess(self._policy, stats)

    async def run_once(self) -> RunResult:
        """One pass: enforce the spool, then drain every stream until empty or until the upstream fails."""
        async with self._run_lock:
            self._runs_started += 1
            self._running = True
            self._last_attempt = self._clock()
            sent: dict[str, int] = {}
            errors: dict[str, str] = {}
            retry_after: list[float] = []
            try:
                try:
                    dropped = (await self.enforce_spool()).dropped
                except SpoolError as exc:
                    # Sending may still work when trimming does not; the error shows in the status.
                    log.warning("sync: spool policy not applied: %s", exc)
                    errors["spool"] = str(exc)
                    dropped = {}
                results = await asyncio.gather(
                    *(self._drain(stream) for stream in self._streams), return_exceptions=True
                )
                for stream, outcome in zip(self._streams, results, strict=True):
                    if isinstance(outcome, asyncio.CancelledError):
                        raise outcome
                    if isinstance(outcome, int):
                        sent[stream] = outcome
                        continue
                    if isinstance(outcome, tuple):
                        sent[stream], error = outcome
                    else:
                        sent[stream], error = 0, SpoolError(str(outcome))
                        log.error("sync: %s drain failed", stream, exc_info=outcome)
                    errors[stream] = str(error)
                    if isinstance(error, UpstreamError) and error.retry_after_s is not None:
                        retry_after.append(error.retry_after_s)
                with contextlib.suppress(SpoolError):
                    await self.refresh_stats()
            finally:
                self._running = False
            self._finish(errors, retry_after)
            async with self._progress:
                self._runs_completed += 1
                self._progress.notify_all()
            return RunResult(sent, errors, dropped, max(retry_after) if retry_after else None)

    def _finish(self, errors: Mapping[str, str], retry_after: Sequence[float]) -> None:
        now = self._clock()
        if not errors:
            self._failures = 0
            self._last_success = now
            self._last_error = None
            self._retry_after_until = None
            self._next_run_at = now + self._interval_s
            return
        self._failures += 1
        self._last_error = "; ".join(f"{s}: {e}" for s, e in sorted(errors.items()))
        delay = self._backoff_delay()
        self._retry_after_until = None
        if retry_after:
            hold = min(MAX_RETRY_AFTER_S, max(retry_after))
            self._retry_after_until = now + hold
            delay = max(delay, hold)
        self._next_run_at = now + delay

    async def _drain(self, stream: str) -> int | tuple[int, UpstreamError | SpoolError]:
        """Send ``stream`` batch by batch; returns records acked, plus the error that stopped it if any."""
        total = 0
        counters = self._counters[stream]
        while True:
            try:
                records = await self._outbox.outbox_peek(
                    stream, limit=self._batch_limit[stream], max_bytes=self._batch_max_bytes
                )
            except Exception as exc:
                return total, SpoolError(f"peek failed: {exc}")
            if not records:
                return total
            batch = self._encoded.get(stream)
            if batch is None or (batch.first_seq, batch.last_seq, batch.count) != (
                records[0].seq, records[-1].seq, len(records)
            ):
                # A retry of the same records reuses the bytes: an outage costs a peek, not a re-encode.
                batch = await asyncio.to_thread(encode_batch, self._source, stream, records)
                self._encoded[stream] = batch
            try:
                accepted, duplicates = await self._post(batch)
            except UpstreamError as exc:
                counters.failures += 1
                if exc.status == 413 and self._batch_limit[stream] > 1:
                    self._batch_limit[stream] = max(1, self._batch_limit[stream] // 2)
                self._log_failure(stream, exc)
                return total, exc
            try:
                await self._outbox.outbox_ack(stream, batch.last_seq)
            except Exception as exc:
                return total, SpoolError(f"ack failed: {exc}")
            self._encoded.pop(stream, None)
            counters.sent += accepted
            counters.duplicates += duplicates
            counters.batches += 1
            counters.last_acked_seq = batch.last_seq
            total += batch.count

    def _log_failure(self, stream: str, exc: UpstreamError) -> None:
        # Quiet logs for a flapping link: one WARNING (ERROR if rejected) per stream per minute, the rest
        # at DEBUG; the counters and /v1/sync/status carry the full picture.
        now = self._clock()
        last = self._last_warned.get(stream)
        if last is not None and now - last < WARN_EVERY_S:
            log.debug("sync: %s batch not accepted: %s", stream, exc)
            return
        self._last_warned[stream] = now
        level = logging.ERROR if isinstance(exc, UpstreamRejectedError) else logging.WARNING
        log.log(level, "sync: %s batch not accepted: %s", stream, exc)

    async def _post(self, batch: EncodedBatch) -> tuple[int, int]:
        """POST one batch; returns (accepted, duplicates) from the upstream's answer on a 2xx."""
        assert self._session is not None, "SyncWorker used outside its context"
        headers = {
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            IDEMPOTENCY_HEADER: batch.idempotency_key,
        }
        try:
            async with self._session.post(self._endpoint, data=batch.body, headers=headers) as resp:
                body = await resp.read()
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._clock())
        except TimeoutError:
            raise UpstreamTimeoutError(f"no answer within {self._request_timeout_s} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnreachableError(f"{type(exc).__name__}: {exc}") from None
        if 200 <= status < 300:
            return _acceptance(body, batch.count)
        detail = body[:200].decode("utf-8", "replace")
        if status in (408, 429) or status >= 500:
            raise UpstreamError(f"HTTP {status}: {detail}", status=status, retryable=True,
                                retry_after_s=retry_after)
        if status == 413:
            raise UpstreamError(f"HTTP 413: batch of {batch.count} too large", status=413, retryable=True)
        raise UpstreamRejectedError(f"HTTP {status}: {detail}", status=status)

    # -- status ------------------------------------------------------------------------------------

    def status(self) -> SyncStatus:
        now = self._clock()
        streams: dict[str, StreamStatus] = {}
        for name in dict.fromkeys((*self._streams, *self._stats)):
            stats = self._stats.get(name)
            counters = self._counters.get(name, StreamCounters())
            oldest = stats.oldest_created if stats is not None and stats.count else None
            streams[name] = StreamStatus(
                pending=stats.count if stats else 0,
                bytes=stats.bytes if stats else 0,
                oldest_created=oldest,
                lag_s=max(0.0, now - oldest) if oldest is not None else 0.0,
                sent=counters.sent,
                duplicates=counters.duplicates,
                batches=counters.batches,
                failures=counters.failures,
                dropped=dict(counters.dropped),
            )
        if self._running:
            state = "running"
        elif self._failures:
            state = "backing_off"
        else:
            state = "idle"
        return SyncStatus(
            state=state,
            upstream=self._url,
            interval_s=self._interval_s,
            running=self._running,
            runs_started=self._runs_started,
            runs_completed=self._runs_completed,
            last_attempt=self._last_attempt,
            last_success=self._last_success,
            last_error=self._last_error,
            consecutive_failures=self._failures,
            next_run_at=self._next_run_at,
            retry_after_until=self._retry_after_until,
            spool=self._spool_state,
            streams=streams,
        )


def _acceptance(body: bytes, count: int) -> tuple[int, int]:
    """The upstream's counts if it gave them; a bare 2xx means all accepted (the contract is the status)."""
    try:
        doc = json.loads(body or b"{}")
        accepted = int(doc.get("accepted", count))
        duplicates = int(doc.get("duplicates", 0))
    except (ValueError, TypeError, AttributeError):
        return count, 0
    return accepted, duplicates
