"""The one exception root of the agent hub; each error carries the HTTP status and problem kind it maps to."""

from __future__ import annotations

from typing import Any

from daemon.errors import DaemonError


class HubError(DaemonError):
    """Root of every error the hub raises; ``status``/``kind`` say how the API reports it."""

    status = 400
    kind = "hub-error"

    def __init__(self, message: str, **extensions: Any) -> None:
        super().__init__(message)
        self.extensions = extensions


class InvalidRequest(HubError):
    status = 400
    kind = "invalid-request"


class NotFound(HubError):
    status = 404
    kind = "not-found"


class Forbidden(HubError):
    """The caller may not do this: capability, membership, ownership, trust gate or policy."""

    status = 403
    kind = "forbidden"


class ApprovalRequired(Forbidden):
    """A policy rule says a human must approve this first."""

    kind = "approval-required"


class Conflict(HubError):
    """The transition is not possible from the current state (e.g. accepting a completed handoff)."""

    status = 409
    kind = "conflict"


class RateLimited(HubError):
    status = 429
    kind = "rate-limited"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message, retry_after_s=round(retry_after_s, 3))
        self.retry_after_s = retry_after_s


class NoResponse(HubError):
    """A REQUEST sent with a wait got no RESPONSE in time."""

    status = 504
    kind = "no-response"


class Rejected(HubError):
    """Input screening found an injection pattern."""

    status = 422
    kind = "input-rejected"


class EnvelopeError(HubError):
    """A message that is not a valid envelope; the codec raises nothing else."""

    status = 422
    kind = "bad-envelope"


class PolicyError(HubError):
    """A policy rule that does not parse."""

    status = 422
    kind = "bad-policy"


class ProvisioningError(HubError):
    """Broker credentials could not be written or the broker could not be told to reload them."""

    status = 503
    kind = "broker-provisioning"
