"""Audit trail: hash-chained records, filtering, tamper detection."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest

from daemon.store import Ed25519Signer, Store
from daemon.store.audit import KNOWN_KINDS
from daemon.store.errors import InvalidInputError


async def test_every_kind_is_recorded_and_chained(store: Store) -> None:
    for kind in KNOWN_KINDS:
        await store.audit_append(kind, "agent-1", "memory/42", {"kind": kind})
    records = await store.audit_list(limit=100)
    assert [r.kind for r in records] == list(KNOWN_KINDS)
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(records))
    assert (await store.audit_verify()).ok
    denied = await store.audit_list(kind="permission_denied")
    assert len(denied) == 1 and denied[0].data == {"kind": "permission_denied"}


async def test_bad_kind_is_rejected(store: Store) -> None:
    with pytest.raises(InvalidInputError):
        await store.audit_append("Not A Kind", "a", "b", {})


async def test_altered_record_is_named(tmp_path: Path, signer: Ed25519Signer) -> None:
    path = tmp_path / "a.db"
    async with Store(path, signer=signer, embedding_dim=4, ttl_sweep_s=0) as store:
        for i in range(4):
            await store.audit_append("auth_failure", f"agent-{i}", "api", {"n": i})
    conn = sqlite3.connect(path)
    conn.execute("UPDATE audit SET actor = 'someone-else' WHERE seq = 3")
    conn.commit()
    conn.close()
    async with Store(path, signer=signer, embedding_dim=4, ttl_sweep_s=0) as store:
        report = await store.audit_verify()
    assert not report.ok and report.first_bad == 3


@pytest.mark.parametrize(
    ("column", "expr"),
    [("actor", "CAST(x'ff00' AS TEXT)"), ("data", "CAST(x'c3' AS TEXT)"), ("kind", "CAST(kind AS BLOB)"),
     ("subject", "x'00'"), ("data", "'not json'")],
)
async def test_undecodable_or_mistyped_values_fail_their_record_without_crashing(
    tmp_path: Path, signer: Ed25519Signer, column: str, expr: str
) -> None:
    path = tmp_path / "a.db"
    async with Store(path, signer=signer, embedding_dim=4, ttl_sweep_s=0) as store:
        for i in range(4):
            await store.audit_append("auth_failure", f"agent-{i}", "api", {"n": i})
    conn = sqlite3.connect(path)
    conn.execute(f"UPDATE audit SET {column} = {expr} WHERE seq = 2")
    conn.commit()
    conn.close()
    async with Store(path, signer=signer, embedding_dim=4, ttl_sweep_s=0, integrity_check="off") as store:
        report = await store.audit_verify()
    assert not report.ok and report.first_bad == 2
