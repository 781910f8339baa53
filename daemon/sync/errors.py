"""The exception root of ``daemon.sync``; aiohttp and SQLite errors are translated into these here."""

from __future__ import annotations


class SyncError(Exception):
    """Root of every error the uplink raises."""


class UpstreamError(SyncError):
    """The upstream did not accept a batch; ``retryable`` says whether sending it again may succeed."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = True,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s


class UpstreamUnreachableError(UpstreamError):
    """No HTTP answer at all: refused, reset, TLS failure or DNS; always retryable."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=None, retryable=True)


class UpstreamTimeoutError(UpstreamError, TimeoutError):
    """The upstream did not answer within the request deadline; also a ``TimeoutError``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=None, retryable=True)


class UpstreamRejectedError(UpstreamError):
    """A 4xx other than 408/429: the batch or the credentials are wrong, retrying soon will not help."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message, status=status, retryable=False)


class SpoolError(SyncError):
    """The outbox could not be read, acknowledged or trimmed."""


class SyncSettingsError(SyncError, ValueError):
    """A worker setting is out of range; the message names the setting."""
