"""The node's identity without a TPM: an Ed25519 key file and an AES-256-GCM wrapping key, trust capped at 2.

A software key proves possession of a file, not the integrity of the platform, so nothing signed with it
reaches level 3. The node says so in its status (``trust: software``) and logs it at WARNING at start.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from attestation.errors import AttestationError, EvidenceFormatError
from attestation.levels import SOFTWARE_TRUST_CAP, TrustLevel

_log = logging.getLogger(__name__)

SIGNATURE_ALGORITHM = "ed25519"
_SEAL_MAGIC = b"MYCOSW1"  # marks a software-wrapped blob so it is never mistaken for a TPM one
_NONCE_BYTES = 12  # NIST SP 800-38D, 8.2: 96-bit IVs for GCM


def _read_or_create(path: Path, make: bytes) -> bytes:
    """Read a secret file, or create it 0600 with ``make`` atomically (first writer wins)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(make)
        f.flush()
        os.fsync(f.fileno())
    return make


class SoftwareKey:
    """The node's software identity in ``state_dir`` (``node-ed25519.pem``, ``seal-aes256.key``); blocking I/O."""

    level_cap: TrustLevel = SOFTWARE_TRUST_CAP
    signature_algorithm = SIGNATURE_ALGORITHM

    def __init__(self, state_dir: Path) -> None:
        fresh = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        pem = _read_or_create(state_dir / "node-ed25519.pem", fresh)
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except ValueError as exc:
            raise AttestationError(f"software key {state_dir / 'node-ed25519.pem'} is unreadable: {exc}") from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise AttestationError("software key file does not hold an Ed25519 key")
        self._key = key
        self._wrap = AESGCM(_read_or_create(state_dir / "seal-aes256.key", secrets.token_bytes(32)))

    def public_key_pem(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature (RFC 8032)."""
        return self._key.sign(data)

    def seal(self, secret: bytes) -> bytes:
        """Wrap a secret with the software key file (the TPM's ``seal`` stand-in; protects nothing from root)."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return _SEAL_MAGIC + nonce + self._wrap.encrypt(nonce, secret, _SEAL_MAGIC)

    def unseal(self, blob: bytes) -> bytes:
        if not blob.startswith(_SEAL_MAGIC) or len(blob) < len(_SEAL_MAGIC) + _NONCE_BYTES + 16:
            raise EvidenceFormatError("not a software-sealed blob")
        nonce = blob[len(_SEAL_MAGIC) : len(_SEAL_MAGIC) + _NONCE_BYTES]
        try:
            return self._wrap.decrypt(nonce, blob[len(_SEAL_MAGIC) + _NONCE_BYTES :], _SEAL_MAGIC)
        except InvalidTag:
            raise AttestationError("software-sealed blob does not open with this node's key") from None
