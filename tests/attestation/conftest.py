"""swtpm fixtures: two TPMs manufactured once per session (same CA, different EKs), served per test.

Provisioning (~1.3 s each) runs once and leaves no process behind; each test that needs a TPM gets a
fresh copy of a manufactured state and its own swtpm child, stopped by PID in the fixture's teardown.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from attestation.swtpm import ProvisionedState, Swtpm, copy_state, provision

os.environ.setdefault("TSS2_LOG", "all+NONE")


@pytest.fixture(scope="session")
def manufactured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ProvisionedState]:
    root = tmp_path_factory.mktemp("swtpm")
    ca_dir = root / "ca"
    return {name: provision(root / f"state-{name}", ca_dir) for name in ("a", "b")}


def _serve(state: ProvisionedState, tmp_path: Path, name: str) -> Iterator[Swtpm]:
    copy = copy_state(state, tmp_path / f"tpm-{name}")
    with Swtpm(copy) as tpm:
        yield tpm


@pytest.fixture
def swtpm_a(manufactured: dict[str, ProvisionedState], tmp_path: Path) -> Iterator[Swtpm]:
    """The node's TPM."""
    yield from _serve(manufactured["a"], tmp_path, "a")


@pytest.fixture
def swtpm_b(manufactured: dict[str, ProvisionedState], tmp_path: Path) -> Iterator[Swtpm]:
    """A second, independent TPM (an agent's)."""
    yield from _serve(manufactured["b"], tmp_path, "b")


@pytest.fixture
def ca_bundle(manufactured: dict[str, ProvisionedState]) -> bytes:
    return manufactured["a"].ca_bundle.read_bytes()
