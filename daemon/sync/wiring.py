"""Building the uplink from the daemon's ``[sync]`` config section (``daemon.config.SyncConfig``).

Optional keys the config may not carry yet (``ca_file``, ``request_timeout_s``, backoff bounds, the
events age, the spool check period) are read with their worker defaults, so the config can grow
without touching this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from daemon.sync.outbox import Outbox
from daemon.sync.worker import SyncWorker

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


def _opt(cfg: Any, name: str) -> Any:
    value = getattr(cfg, name, None)
    return None if value in (None, "") else value


def worker_from_config(outbox: Outbox, cfg: Any, *, node_id: str,
                       registry: CollectorRegistry | None = None) -> SyncWorker | None:
    """The worker for ``cfg`` (a ``SyncConfig``), or ``None`` when ``cfg.url`` is empty (uplink off)."""
    if not _opt(cfg, "url"):
        return None
    ages = {stream: float(age) for stream, key in (("telemetry", "telemetry_max_age_s"),
                                                    ("events", "events_max_age_s"))
            if (age := _opt(cfg, key)) is not None}
    optional = {key: value for key in ("request_timeout_s", "backoff_initial_s", "backoff_max_s",
                                       "spool_check_interval_s")
                if (value := _opt(cfg, key)) is not None}
    return SyncWorker(
        outbox,
        url=str(cfg.url),
        token=_opt(cfg, "token"),
        client_cert=_opt(cfg, "client_cert"),
        client_key=_opt(cfg, "client_key"),
        ca_file=_opt(cfg, "ca_file"),
        source=node_id,
        interval_s=float(cfg.interval_s),
        batch_max_records=int(cfg.batch_max_records),
        batch_max_bytes=int(cfg.batch_max_bytes),
        spool_max_bytes=_opt(cfg, "spool_max_bytes"),
        spool_max_age_s=ages,
        registry=registry,
        **optional,
    )
