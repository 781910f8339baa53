"""Time from exec to READY=1 and idle RSS of the daemon, next to a bare interpreter importing the same libraries.

Run: .venv/bin/python -m bench.startup [--runs 5]. Goals (issue 2): READY ≤ 1.5 s, idle RSS ≤ 60 MB.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from daemon.mosquitto import MosquittoProcess, free_port


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def baseline(runs: int) -> tuple[float, float]:
    """A bare interpreter that imports what the daemon imports, then idles: the floor we compare with."""
    times, rss = [], []
    code = "import aiohttp, aiomqtt, prometheus_client, jsonschema, sys; sys.stdout.write('x'); sys.stdout.flush(); " \
           "import time; time.sleep(3)"
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        proc.stdout.read(1)
        times.append(time.perf_counter() - start)
        time.sleep(1)
        rss.append(rss_mb(proc.pid))
        proc.kill()
        proc.wait()
        proc.stdout.close()
    return statistics.median(times), statistics.median(rss)


def daemon(runs: int, mqtt_port: int) -> tuple[float, float]:
    times, rss = [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            sock_path = Path(tmp) / "notify"
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(sock_path))
            cfg = Path(tmp) / "c.toml"
            cfg.write_text(
                f'[node]\nid="bench"\nstate_dir="{tmp}/s"\nruntime_dir="{tmp}/r"\n'
                f'[api]\nlisten="127.0.0.1:{free_port()}"\n[mqtt]\nport={mqtt_port}\n'
            )
            env = {**os.environ, "NOTIFY_SOCKET": str(sock_path)}
            start = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "daemon", "run", "--config", str(cfg)], env=env,
                                    stderr=subprocess.DEVNULL)
            while b"READY=1" not in sock.recv(4096):
                pass
            times.append(time.perf_counter() - start)
            time.sleep(3)  # idle
            rss.append(rss_mb(proc.pid))
            proc.terminate()
            proc.wait()
            sock.close()
    return statistics.median(times), statistics.median(rss)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, MosquittoProcess(Path(tmp)) as broker:
        base_t, base_rss = baseline(args.runs)
        d_t, d_rss = daemon(args.runs, broker.port)
    print(f"{'':28}{'daemon':>10}{'baseline':>10}{'goal':>8}")
    print(f"{'time to READY=1 (s)':28}{d_t:>10.3f}{base_t:>10.3f}{'1.5':>8}")
    print(f"{'idle RSS (MB)':28}{d_rss:>10.1f}{base_rss:>10.1f}{'60':>8}")
    print("baseline: bare interpreter importing aiohttp, aiomqtt, prometheus_client, jsonschema")


if __name__ == "__main__":
    main()
