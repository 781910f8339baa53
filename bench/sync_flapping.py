"""The acceptance run at full size: 100k records, a flapping upstream, the node SIGKILLed 10 times.

Run: .venv/bin/python -m bench.sync_flapping [--per-stream 20000] [--kills 10]
The upstream injects 50 % errors (25 % before commit, 20 % after commit, 5 % connection resets), latency
spikes and an occasional 429 with Retry-After for the whole run. At the end it must hold every record
exactly once, in the node's order per stream. Baseline: the same production drained with no faults and
no kills, so the cost of the hostility is visible.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from tests.sync.child_node import PLAIN_STREAMS, block_ids, run_child
from tests.sync.conftest import UpstreamProcess, start_upstream, stop_process

FLAPPING = (
    "--error-rate", "0.25", "--after-commit-rate", "0.2", "--reset-rate", "0.05",
    "--throttle-rate", "0.005", "--retry-after", "1", "--latency", "0.5", "--latency-rate", "0.05",
)


def check(up: UpstreamProcess, db: Path, per_stream: int) -> list[str]:
    problems = []
    for stream in PLAIN_STREAMS:
        held = list(up.get_blocking(f"/v1/streams/{stream}/ids")["ids"])
        if held != [f"{stream}-{i:06d}" for i in range(per_stream)]:
            problems.append(f"{stream}: {len(held)} held, {len(set(held))} distinct, not the produced sequence")
    held = list(up.get_blocking("/v1/streams/maif/ids")["ids"])
    if held != block_ids(db):
        problems.append(f"maif: {len(held)} held vs {len(block_ids(db))} blocks")
    return problems


def one_run(
    tmp: Path, per_stream: int, kills: int, *, flapping: bool, seed: int
) -> tuple[float, dict[str, int], list[str]]:
    up = start_upstream(tmp / "upstream.db", "--seed", str(seed), *(FLAPPING if flapping else ()))
    try:
        db, key = tmp / "node.db", tmp / "node.key"
        rnd = random.Random(seed)
        start = time.perf_counter()
        for _ in range(kills):
            run_child(db, key, up.url, per_stream, kill_after=rnd.uniform(0.5, 3.0))
        run_child(db, key, up.url, per_stream, kill_after=None, timeout=1800)
        elapsed = time.perf_counter() - start
        return elapsed, dict(up.get_blocking("/v1/stats")), check(up, db, per_stream)
    finally:
        stop_process(up.proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-stream", type=int, default=20_000, help="records per stream (5 streams)")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    total = args.per_stream * 5
    with tempfile.TemporaryDirectory(prefix="bench-flap-") as d:
        base_dir, flap_dir = Path(d) / "calm", Path(d) / "flapping"
        base_dir.mkdir()
        flap_dir.mkdir()
        calm_s, _, calm_problems = one_run(base_dir, args.per_stream, 0, flapping=False, seed=args.seed)
        flap_s, stats, problems = one_run(flap_dir, args.per_stream, args.kills, flapping=True, seed=args.seed)
    print(f"records              {total:,} (5 streams x {args.per_stream:,})")
    print(f"calm, no kills       {calm_s:8.1f} s  {total / calm_s:8,.0f} records/s   (baseline)  "
          f"{calm_problems or 'OK'}")
    print(f"flapping, {args.kills} kills    {flap_s:8.1f} s  {total / flap_s:8,.0f} records/s")
    print(f"upstream saw         {stats}")
    if problems:
        print("FAILED: " + "; ".join(problems))
        return 1
    print("every record exactly once, in order per stream: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
