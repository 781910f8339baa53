"""Acceptance, scaled down: a flapping upstream and a node SIGKILLed again and again while it produces.

The upstream ends with every record exactly once, and its first-seen order per stream is the node's
record order. The full-size run (100k records, 10 kills) is ``bench/sync_flapping.py``.
"""

from __future__ import annotations

import random
from pathlib import Path

from tests.sync.child_node import PLAIN_STREAMS, block_ids, run_child
from tests.sync.conftest import UpstreamProcess, start_upstream, stop_process

PER_STREAM = 1000
KILLS = 8
FLAPPING = (
    "--error-rate", "0.25", "--after-commit-rate", "0.2", "--reset-rate", "0.05",
    "--throttle-rate", "0.01", "--retry-after", "1", "--latency", "0.3", "--latency-rate", "0.1",
)


def _upstream_ids(up: UpstreamProcess) -> dict[str, list[str]]:
    return {stream: list(up.get_blocking(f"/v1/streams/{stream}/ids")["ids"]) for stream in (*PLAIN_STREAMS, "maif")}


def test_sigkilled_node_and_flapping_upstream_give_every_record_exactly_once_in_order(tmp_path: Path) -> None:
    up = start_upstream(tmp_path / "upstream.db", "--seed", "11", *FLAPPING)
    try:
        db, key = tmp_path / "node.db", tmp_path / "node.key"
        rnd = random.Random(5)
        for _ in range(KILLS):
            run_child(db, key, up.url, PER_STREAM, kill_after=rnd.uniform(0.2, 1.2))
        run_child(db, key, up.url, PER_STREAM, kill_after=None, timeout=60)
        held = _upstream_ids(up)
        stats = up.get_blocking("/v1/stats")
    finally:
        stop_process(up.proc)

    for stream in PLAIN_STREAMS:
        # Exactly once and in first-seen order: the list itself must be the production order.
        assert held[stream] == [f"{stream}-{i:06d}" for i in range(PER_STREAM)], stream
    blocks = block_ids(db)
    assert len(blocks) >= PER_STREAM
    assert held["maif"] == blocks
    # The run really was hostile: commits that failed afterwards were retried and deduplicated.
    assert stats.get("fault_after_commit", 0) > 0
    assert stats.get("fault_error", 0) > 0
    assert stats.get("duplicates", 0) + stats.get("replayed", 0) > 0
