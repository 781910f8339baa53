"""A node in a child process: produces records into a real Store while its SyncWorker drains them.

Run as ``python -m tests.sync.child_node DB KEY URL PER_STREAM``. The kill test SIGKILLs it at random
and starts it again; it resumes production from its progress file (written after each durable append,
so a kill in between re-appends the same ids, which the upstream must deduplicate) and exits 0 with
"drained" once everything is produced and the outbox is empty.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from daemon.store import Ed25519Signer, Store
from daemon.store.blocklog import BlockInput
from daemon.sync import SyncWorker

ROOT = Path(__file__).resolve().parents[2]
PLAIN_STREAMS = ("telemetry", "audit", "memory", "events")
CHUNK = 25


def _load(progress: Path) -> dict[str, int]:
    try:
        data = json.loads(progress.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in data.items()}


def _save(progress: Path, done: dict[str, int]) -> None:
    tmp = progress.with_suffix(".tmp")
    tmp.write_text(json.dumps(done))
    os.replace(tmp, progress)


async def produce(store: Store, progress: Path, per_stream: int) -> None:
    done = await asyncio.to_thread(_load, progress)
    while any(done.get(s, 0) < per_stream for s in (*PLAIN_STREAMS, "maif")):
        for stream in PLAIN_STREAMS:
            start = done.get(stream, 0)
            if start >= per_stream:
                continue
            end = min(per_stream, start + CHUNK)
            records = [(f"{stream}-{i:06d}", json.dumps({"i": i, "stream": stream}).encode())
                       for i in range(start, end)]
            await store.outbox_append(stream, records)
            done[stream] = end
            await asyncio.to_thread(_save, progress, dict(done))
        start = done.get("maif", 0)
        if start < per_stream:
            end = min(per_stream, start + CHUNK)
            await store.append_blocks([BlockInput("TEXT", f"block {i}".encode(), {"i": i}) for i in range(start, end)])
            done["maif"] = end
            await asyncio.to_thread(_save, progress, dict(done))
        await asyncio.sleep(0.01)


async def main(db: Path, key: Path, url: str, per_stream: int) -> int:
    progress = db.with_suffix(".progress")
    store = Store(db, signer=Ed25519Signer.from_file(key, create=True), embedding_dim=4, ttl_sweep_s=0,
                  integrity_check="quick")
    async with store, SyncWorker(
        store, url=url, source="child", interval_s=0.05, batch_max_records=100, request_timeout_s=3.0,
        backoff_initial_s=0.02, backoff_max_s=0.25,
    ) as worker:
        print("ready", flush=True)
        await produce(store, progress, per_stream)
        # Drain through the worker's own loop so backoff and Retry-After stay in force.
        while True:
            await worker.wait_run(worker.request_run())
            status = worker.status()
            if status.pending == 0 and status.consecutive_failures == 0:
                break
            await asyncio.sleep(0.02)
    print("drained", flush=True)
    return 0


def run_child(db: Path, key: Path, url: str, per_stream: int, *, kill_after: float | None,
              timeout: float = 120.0) -> None:
    """Start a node child; SIGKILL it ``kill_after`` seconds after "ready", or let it drain to the end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.sync.child_node", str(db), str(key), url, str(per_stream)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        if kill_after is None:
            out, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0 or not out.endswith(b"drained\n"):
                raise RuntimeError(f"child failed ({proc.returncode}): {err.decode(errors='replace')[-3000:]}")
            return
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else b""
        if line != b"ready\n":
            raise RuntimeError(f"child did not start: {line!r}")
        time.sleep(kill_after)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def block_ids(db: Path) -> list[str]:
    """The node's MAIF block ids in chain order, read straight from its SQLite file."""
    conn = sqlite3.connect(db)
    try:
        return [bytes(r[0]).hex() for r in conn.execute("SELECT block_id FROM blocks ORDER BY seq")]
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))))
