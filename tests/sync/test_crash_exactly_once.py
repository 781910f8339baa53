"""Acceptance, scaled down: a flapping upstream and a node SIGKILLed again and again while it produces.

The upstream ends with every record exactly once, and its first-seen order per stream is the node's
record order. The full-size run (100k records, 10 kills) is ``bench/sync_flapping.py``.
"""

from __future__ import annotations

import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.sync.child_node import PLAIN_STREAMS
from tests.sync.conftest import ROOT, UpstreamProcess, start_upstream, stop_process

PER_STREAM = 1000
KILLS = 8
FLAPPING = (
    "--error-rate", "0.25", "--after-commit-rate", "0.2", "--reset-rate", "0.05",
    "--throttle-rate", "0.01", "--retry-after", "1", "--latency", "0.3", "--latency-rate", "0.1",
)


def _start_child(db: Path, key: Path, url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.sync.child_node", str(db), str(key), url, str(PER_STREAM)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def _wait_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else b""


def _run_killed(db: Path, key: Path, url: str, rnd: random.Random) -> None:
    proc = _start_child(db, key, url)
    try:
        line = _wait_line(proc, 20)
        assert line == b"ready\n", (line, proc.stderr.read() if proc.stderr else b"")
        time.sleep(rnd.uniform(0.2, 1.2))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _run_to_end(db: Path, key: Path, url: str) -> None:
    proc = _start_child(db, key, url)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    assert out.endswith(b"drained\n"), out


def _block_ids(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [bytes(r[0]).hex() for r in conn.execute("SELECT block_id FROM blocks ORDER BY seq")]
    finally:
        conn.close()


def _upstream_ids(up: UpstreamProcess) -> dict[str, list[str]]:
    return {stream: list(up.get_blocking(f"/v1/streams/{stream}/ids")["ids"]) for stream in (*PLAIN_STREAMS, "maif")}


def test_sigkilled_node_and_flapping_upstream_give_every_record_exactly_once_in_order(tmp_path: Path) -> None:
    up = start_upstream(tmp_path / "upstream.db", "--seed", "11", *FLAPPING)
    try:
        db, key = tmp_path / "node.db", tmp_path / "node.key"
        rnd = random.Random(5)
        for _ in range(KILLS):
            _run_killed(db, key, up.url, rnd)
        _run_to_end(db, key, up.url)
        held = _upstream_ids(up)
        stats = up.get_blocking("/v1/stats")
    finally:
        stop_process(up.proc)

    for stream in PLAIN_STREAMS:
        # Exactly once and in first-seen order: the list itself must be the production order.
        assert held[stream] == [f"{stream}-{i:06d}" for i in range(PER_STREAM)], stream
    blocks = _block_ids(db)
    assert len(blocks) >= PER_STREAM
    assert held["maif"] == blocks
    # The run really was hostile: commits that failed afterwards were retried and deduplicated.
    assert stats.get("fault_after_commit", 0) > 0
    assert stats.get("fault_error", 0) > 0
    assert stats.get("duplicates", 0) + stats.get("replayed", 0) > 0
