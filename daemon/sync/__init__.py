"""Store-and-forward uplink: the outbox drained to an upstream ingest API, exactly once, in order."""

from daemon.sync.errors import SpoolError, SyncError, UpstreamError
from daemon.sync.outbox import STREAMS, Outbox
from daemon.sync.spool import Retention, SpoolPolicy, StreamPolicy
from daemon.sync.worker import RunResult, SyncStatus, SyncWorker

__all__ = [
    "STREAMS",
    "Outbox",
    "Retention",
    "RunResult",
    "SpoolError",
    "SpoolPolicy",
    "StreamPolicy",
    "SyncError",
    "SyncStatus",
    "SyncWorker",
    "UpstreamError",
]
