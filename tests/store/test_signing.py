"""The signer is pluggable: an ECDSA P-256 key (as a TPM would hold) signs checkpoints and exports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from daemon.store import Ed25519Signer, Signer, Store, export, verify
from daemon.store.errors import InvalidInputError, KeyFileError
from daemon.store.signing import ECDSA_P256, key_id_for, load_encryption_key, verify_signature


class EcdsaSigner:
    """Stands in for the TPM-resident key: same algorithm and encodings, software private key."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._public = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def algorithm(self) -> str:
        return ECDSA_P256

    @property
    def key_id(self) -> str:
        return key_id_for(self._public)

    @property
    def public_key(self) -> bytes:
        return self._public

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))


async def test_ecdsa_signer_plugs_into_the_log_and_files_are_signed_with_ed25519(tmp_path: Path) -> None:
    signer = EcdsaSigner()
    assert isinstance(signer, Signer)
    async with Store(tmp_path / "e.db", signer=signer, embedding_dim=4, ttl_sweep_s=0) as store:
        await store.append_block("LIFE", b"attested boot")
        assert (await store.verify_blocks()).ok
        # The MAIF reference reader loads Ed25519 keys only: a file signed with this key would verify nothing.
        with pytest.raises(InvalidInputError, match="Ed25519"):
            await export(store, tmp_path / "e.maif")
        assert not (tmp_path / "e.maif").exists()
        await export(store, tmp_path / "e.maif", signer=Ed25519Signer.generate())
    assert (await verify(tmp_path / "e.maif")).ok


async def test_key_rotation_keeps_old_checkpoints_verifiable(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    async with Store(path, signer=Ed25519Signer.generate(), embedding_dim=4, ttl_sweep_s=0) as store:
        await store.append_block("TEXT", b"before rotation")
    async with Store(path, signer=EcdsaSigner(), embedding_dim=4, ttl_sweep_s=0) as store:
        await store.append_block("TEXT", b"after rotation")
        report = await store.verify_blocks()
    assert report.ok and report.checked == 2


def test_signature_verification_rejects_wrong_data() -> None:
    signer = Ed25519Signer.generate()
    sig = signer.sign(b"a")
    assert verify_signature(signer.algorithm, signer.public_key, b"a", sig)
    assert not verify_signature(signer.algorithm, signer.public_key, b"b", sig)


def test_signing_key_file_is_created_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "k" / "node.key"
    first = Ed25519Signer.from_file(path, create=True)
    assert path.stat().st_mode & 0o777 == 0o600
    assert Ed25519Signer.from_file(path).public_key == first.public_key


def test_encryption_key_file_accepts_hex_and_rejects_bad_sizes(tmp_path: Path) -> None:
    good = tmp_path / "hex.key"
    key = os.urandom(32)
    good.write_text(key.hex())
    good.chmod(0o600)
    assert load_encryption_key(good) == key
    bad = tmp_path / "short.key"
    bad.write_bytes(b"x" * 7)
    bad.chmod(0o600)
    with pytest.raises(KeyFileError):
        load_encryption_key(bad)
