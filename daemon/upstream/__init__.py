"""The reference upstream (``mycoedge upstream``): an aiohttp + SQLite ingest server with fault injection."""

from daemon.upstream.faults import Faults, Outcome
from daemon.upstream.server import UpstreamServer, main

__all__ = ["Faults", "Outcome", "UpstreamServer", "main"]
