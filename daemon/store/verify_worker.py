"""Worker process for parallel block-log verification: ``python -m daemon.store.verify_worker``.

Reads one JSON job on stdin (database path, seq range, the range's checkpoints and the signers' public
keys), walks that range read-only, and prints one JSON result line. Started and awaited by
``BlockLog.verify``; a plain child process rather than ``multiprocessing`` so no helper process (the
resource tracker) outlives the verification.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from daemon.store.blocklog import verify_range


def decode_job(job: dict[str, Any]) -> tuple[str, int, int, dict[int, list[tuple[bytes, str, bytes]]],
                                            dict[str, tuple[str, bytes]]]:
    checkpoints = {
        int(seq): [(bytes.fromhex(h), str(k), bytes.fromhex(s)) for h, k, s in entries]
        for seq, entries in job["checkpoints"].items()
    }
    signers = {str(k): (str(a), bytes.fromhex(p)) for k, (a, p) in job["signers"].items()}
    return str(job["path"]), int(job["lo"]), int(job["hi"]), checkpoints, signers


def main() -> None:
    path, lo, hi, checkpoints, signers = decode_job(json.loads(sys.stdin.read()))
    report, first_prev, last_chain = verify_range(path, lo, hi, checkpoints, signers)
    sys.stdout.write(json.dumps({
        "ok": report.ok, "checked": report.checked, "first_bad": report.first_bad, "block_id": report.block_id,
        "reason": report.reason, "first_prev": None if first_prev is None else first_prev.hex(),
        "last_chain": last_chain.hex(),
    }) + "\n")


if __name__ == "__main__":
    main()
