"""The one exception root of ``daemon.store``; sqlite3, cryptography and aiohttp errors are translated here."""

from __future__ import annotations

from daemon.errors import DaemonError


class StoreError(DaemonError):
    """Root of every error the local store raises."""


class StoreClosedError(StoreError):
    """The store is not open (not entered yet, or already closed)."""


class SchemaError(StoreError):
    """The database schema is newer than this code, or a migration failed."""


class CorruptDatabaseError(StoreError):
    """``PRAGMA integrity_check`` did not answer ``ok``; ``details`` holds its first lines."""

    def __init__(self, details: list[str]) -> None:
        super().__init__("database integrity check failed: " + "; ".join(details[:5]))
        self.details = details


class NotFoundError(StoreError):
    """The addressed item does not exist (or is not visible to the caller)."""


class InvalidInputError(StoreError):
    """A caller-supplied value is out of range or of the wrong shape; the message names it."""


class KeyFileError(StoreError):
    """A key file is missing, malformed, or readable by others than its owner."""


class SignatureError(StoreError):
    """A signature could not be made or does not verify."""


class DecryptionError(StoreError):
    """A payload could not be decrypted (wrong key or altered ciphertext)."""


class EmbedderError(StoreError):
    """The configured embedder is unavailable or its endpoint failed."""


class MaifFormatError(StoreError):
    """Bytes that are not a well-formed MAIF file; ``offset`` is where decoding failed."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(f"offset {offset}: {message}")
        self.offset = offset
        self.reason = message


class VerificationError(StoreError):
    """A chain, hash or signature check failed; ``index`` names the first bad block (or record)."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(f"block {index}: {message}")
        self.index = index
        self.reason = message
