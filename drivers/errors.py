"""The one exception root of ``drivers``; library errors are translated into these at the border."""


class DriverError(Exception):
    """Root of every error ``drivers`` raises."""


class CodecError(DriverError):
    """Bytes that do not decode into a frame of the protocol; carries what was wrong."""


class LinkError(DriverError):
    """The serial link failed (port gone, write failed, closed)."""


class DeviceTimeoutError(DriverError, TimeoutError):
    """A device did not answer in time; also a ``TimeoutError`` so generic handlers catch it."""


class CommandRejectedError(DriverError):
    """The device answered a command with a NACK; ``reason`` is the device's own message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotReadyError(DriverError):
    """The device has not identified itself yet (no HELLO), so commands cannot be addressed."""
