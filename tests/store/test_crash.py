"""SIGKILL a writer under sustained load, 50 times: nothing acknowledged may be lost or altered."""

from __future__ import annotations

import asyncio
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from daemon.store import Ed25519Signer, Store

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 50


def _run_and_kill(db: Path, key: Path, seed: int, rnd: random.Random) -> list[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.store.crash_writer", str(db), str(key), str(seed)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        # Wait for "ready" (bounded), then let it write for a random while before killing it.
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready, "writer did not start"
        time.sleep(rnd.uniform(0.0, 0.1))
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err.decode(errors="replace")[-2000:]
    text = out.decode()
    assert text.startswith("ready\n"), err.decode(errors="replace")[-2000:]
    # Only complete lines were acknowledged; a line cut by the kill proves nothing.
    return text.split("\n")[1:-1]


async def _check(db: Path, key: Path, acked: list[str]) -> None:
    async with Store(db, signer=Ed25519Signer.from_file(key), embedding_dim=8, integrity_check="full") as store:
        assert await store.integrity_check() == ["ok"]
        report = await store.verify_blocks()
        assert report.ok, report
        audit = await store.audit_verify()
        assert audit.ok, audit

        def present(conn: sqlite3.Connection) -> tuple[set[str], set[int], set[str], set[str]]:
            blocks = {bytes(r[0]).hex() for r in conn.execute("SELECT block_id FROM blocks")}
            audits = {int(r[0]) for r in conn.execute("SELECT seq FROM audit")}
            mems = {str(r[0]) for r in conn.execute("SELECT id FROM memories")}
            events = {str(r[0]) for r in conn.execute("SELECT record_id FROM outbox WHERE stream = 'events'")}
            # Atomicity: every block, audit record and memory write has its outbox record, and back.
            # The maif stream is the block log read after a cursor: every block is its own outbox record.
            assert conn.execute("SELECT count(*) FROM settings WHERE key = 'outbox_cursor.maif'").fetchone()[0] == 0
            audit_refs = {str(r[0]) for r in conn.execute("SELECT record_id FROM outbox WHERE stream = 'audit'")}
            assert audit_refs == {f"audit-{s}" for s in audits}
            mem_rows = conn.execute("SELECT record_id FROM outbox WHERE stream = 'memory'")
            mem_refs = {str(r[0]).split(":")[0] for r in mem_rows}
            assert mem_refs == mems
            return blocks, audits, mems, events

        blocks, audits, mems, events = await store.db.read(present)
    for line in acked:
        kind, value = line.split(" ", 1)
        if kind == "B":
            assert value in blocks, f"acknowledged block {value} lost"
        elif kind == "A":
            assert int(value) in audits, f"acknowledged audit record {value} lost"
        elif kind == "M":
            assert value in mems, f"acknowledged memory {value} lost"
        elif kind == "O":
            assert value in events, f"acknowledged outbox record {value} lost"
        else:
            raise AssertionError(f"unexpected line {line!r}")


async def test_sigkill_under_load_loses_no_acknowledged_write(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    key = tmp_path / "node.key"
    Ed25519Signer.from_file(key, create=True)
    rnd = random.Random(20261122)
    total = 0
    for round_no in range(ROUNDS):
        acked = await _in_thread(_run_and_kill, db, key, round_no, rnd)
        total += len(acked)
        await _check(db, key, acked)
    assert total > ROUNDS, f"only {total} writes acknowledged over {ROUNDS} rounds: the load was not sustained"


async def _in_thread(fn: Callable[..., list[str]], *args: object) -> list[str]:
    return await asyncio.to_thread(fn, *args)
