"""Pluggable signers, signature verification by algorithm, and AES-256-GCM payload encryption.

The store signs through the ``Signer`` protocol only, so the software Ed25519 key used today can be
replaced by a TPM-resident ECDSA P-256 key without touching the block log. Public keys are recorded in
the database under their ``key_id``, so verification never needs the private key or the TPM.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from daemon.store.errors import DecryptionError, KeyFileError, SignatureError

ED25519 = "Ed25519"
ECDSA_P256 = "ECDSA-P256-SHA256"

# AES-256-GCM (NIST SP 800-38D): 32-byte key, 96-bit random nonce (§8.2.2), 128-bit tag.
AES_KEY_BYTES = 32
GCM_NONCE_BYTES = 12
GCM_TAG_BYTES = 16


@runtime_checkable
class Signer(Protocol):
    """Anything that signs bytes with a key whose public half the store can record.

    ``public_key`` is raw 32 bytes for Ed25519 and a DER SubjectPublicKeyInfo for ECDSA P-256.
    ``sign`` is called on the store's writer thread and may block (a TPM call does).
    """

    @property
    def algorithm(self) -> str: ...

    @property
    def key_id(self) -> str: ...

    @property
    def public_key(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...


def key_id_for(public_key: bytes) -> str:
    """A stable short name for a public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_key).hexdigest()[:16]


class Ed25519Signer:
    """Software Ed25519 key (RFC 8032), as used until a TPM-resident key is enrolled."""

    def __init__(self, private_key: ed25519.Ed25519PrivateKey) -> None:
        self._key = private_key
        self._public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._key_id = key_id_for(self._public)

    @classmethod
    def generate(cls) -> Ed25519Signer:
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_file(cls, path: str | Path, *, create: bool = False) -> Ed25519Signer:
        """Load a 32-byte raw seed from a 0600 file; with ``create``, make one if it does not exist."""
        path = Path(path)
        if create and not path.exists():
            seed = os.urandom(32)
            write_secret_file(path, seed)
        seed = read_secret_file(path)
        if len(seed) != 32:
            raise KeyFileError(f"{path}: an Ed25519 seed is 32 bytes, found {len(seed)}")
        return cls(ed25519.Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def private_key(self) -> ed25519.Ed25519PrivateKey:
        return self._key

    @property
    def algorithm(self) -> str:
        return ED25519

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def public_key(self) -> bytes:
        return self._public

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


def verify_signature(algorithm: str, public_key: bytes, data: bytes, signature: bytes) -> bool:
    """True when ``signature`` is valid for ``data`` under the recorded public key."""
    try:
        if algorithm == ED25519:
            ed25519.Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
            return True
        if algorithm == ECDSA_P256:
            loaded = serialization.load_der_public_key(public_key)
            if not isinstance(loaded, ec.EllipticCurvePublicKey):
                return False
            loaded.verify(signature, data, ec.ECDSA(hashes.SHA256()))
            return True
    except (InvalidSignature, ValueError, TypeError):
        return False
    raise SignatureError(f"unknown signature algorithm {algorithm!r}")


def write_secret_file(path: Path, data: bytes) -> None:
    """Create a file readable by its owner only (0600), refusing to overwrite an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create key file: {exc}") from exc
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_secret_file(path: str | Path) -> bytes:
    """Read a key file, refusing one that group or others can read or write."""
    path = Path(path)
    try:
        info = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc}") from exc
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path}: key file mode is {oct(info.st_mode & 0o777)}, must be 0600")
    return data


def load_encryption_key(path: str | Path) -> bytes:
    """The AES-256 key from a 0600 file holding 32 raw bytes or 64 hex digits."""
    data = read_secret_file(path)
    if len(data) == AES_KEY_BYTES:
        return data
    text = data.strip()
    if len(text) == 2 * AES_KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            pass
    raise KeyFileError(f"{path}: expected 32 raw bytes or 64 hex digits for an AES-256 key")


class PayloadCipher:
    """AES-256-GCM over block payloads; the block id is bound in as associated data.

    Stored form: ``nonce(12) || ciphertext || tag(16)``, so the block log hashes and signs exactly the
    bytes it stores and can be verified without the key.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != AES_KEY_BYTES:
            raise KeyFileError(f"AES-256 key must be {AES_KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)

    def encrypt(self, plaintext: bytes, associated: bytes) -> bytes:
        nonce = os.urandom(GCM_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, associated)

    def decrypt(self, stored: bytes, associated: bytes) -> bytes:
        if len(stored) < GCM_NONCE_BYTES + GCM_TAG_BYTES:
            raise DecryptionError("encrypted payload shorter than nonce and tag")
        try:
            return self._aead.decrypt(stored[:GCM_NONCE_BYTES], stored[GCM_NONCE_BYTES:], associated)
        except InvalidTag as exc:
            raise DecryptionError("payload does not decrypt: wrong key or altered ciphertext") from exc
