"""Prometheus metrics of the uplink, read from the worker's status snapshot at scrape time.

A custom collector (not module-level gauges) so that several workers, e.g. in tests, never collide in
one registry, and a scrape never touches SQLite: it reports the stats of the last pass or spool check.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from daemon.sync.worker import SyncWorker

PREFIX = "mycoedge_sync"


class SyncCollector(Collector):
    """Exposes fill level, lag, drops, throughput and last success of one ``SyncWorker``."""

    def __init__(self, worker: SyncWorker) -> None:
        self._worker = worker

    def describe(self) -> Iterator[Metric]:
        # An empty describe() would make the registry call collect() at register time; naming the
        # families once keeps duplicate-name detection working without reading the worker early.
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        status = self._worker.status()
        fams = self._families()
        (records, nbytes, lag, sent, dupes, failures, dropped, fill, cap, kept_over, last_ok,
         consecutive, retry_after) = fams
        for name, s in status.streams.items():
            records.add_metric([name], s.pending)
            nbytes.add_metric([name], s.bytes)
            lag.add_metric([name], s.lag_s)
            sent.add_metric([name], s.sent)
            dupes.add_metric([name], s.duplicates)
            failures.add_metric([name], s.failures)
            for reason in ("age", "stream_cap", "spool_cap"):
                dropped.add_metric([name, reason], s.dropped.get(reason, 0))
        fill.add_metric([], status.spool.fill_ratio)
        cap.add_metric([], status.spool.max_bytes)
        kept_over.add_metric([], 1.0 if status.spool.protected_over_cap else 0.0)
        last_ok.add_metric([], status.last_success or 0.0)
        consecutive.add_metric([], status.consecutive_failures)
        retry_after.add_metric([], status.retry_after_until or 0.0)
        yield from fams

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily, CounterMetricFamily,
        CounterMetricFamily, CounterMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily,
        GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily,
    ]:
        return (
            GaugeMetricFamily(f"{PREFIX}_spool_records", "Records waiting in the outbox", labels=["stream"]),
            GaugeMetricFamily(f"{PREFIX}_spool_bytes", "Bytes waiting in the outbox", labels=["stream"]),
            GaugeMetricFamily(f"{PREFIX}_lag_seconds", "Age of the oldest unsent record", labels=["stream"]),
            CounterMetricFamily(f"{PREFIX}_sent_records", "Records the upstream stored new",
                                labels=["stream"]),
            CounterMetricFamily(f"{PREFIX}_duplicate_records", "Records the upstream already had",
                                labels=["stream"]),
            CounterMetricFamily(f"{PREFIX}_failed_batches", "Batches the upstream did not accept",
                                labels=["stream"]),
            CounterMetricFamily(f"{PREFIX}_dropped_records", "Records dropped by the spool policy",
                                labels=["stream", "reason"]),
            GaugeMetricFamily(f"{PREFIX}_spool_fill_ratio", "Spool bytes over the spool cap"),
            GaugeMetricFamily(f"{PREFIX}_spool_max_bytes", "The spool cap"),
            GaugeMetricFamily(f"{PREFIX}_spool_protected_over_cap",
                              "1 when never-dropped streams alone exceed the cap"),
            GaugeMetricFamily(f"{PREFIX}_last_success_timestamp_seconds",
                              "Unix time of the last pass that drained every stream"),
            GaugeMetricFamily(f"{PREFIX}_consecutive_failures", "Passes in a row with an upstream error"),
            GaugeMetricFamily(f"{PREFIX}_retry_after_until_timestamp_seconds",
                              "Unix time before which a Retry-After forbids sending (0 if none)"),
        )
