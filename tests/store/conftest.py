"""Fixtures for the store tests: a real SQLite file in a temp dir and a software signer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.store import Ed25519Signer, Store


@pytest.fixture
def signer() -> Ed25519Signer:
    return Ed25519Signer.generate()


@pytest.fixture
async def store(tmp_path: Path, signer: Ed25519Signer) -> AsyncIterator[Store]:
    async with Store(tmp_path / "store.db", signer=signer, embedding_dim=4, ttl_sweep_s=0) as s:
        yield s
