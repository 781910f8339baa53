"""The exception root of the reference upstream."""

from daemon.sync.errors import SyncError


class UpstreamServerError(SyncError):
    """Root of every error the reference upstream raises (a ``SyncError``: it is the uplink's far end)."""


class UpstreamConfigError(UpstreamServerError, ValueError):
    """A server or fault setting is invalid; the message names it."""
