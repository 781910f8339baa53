"""The whole daemon with N simulated MycoBrains at R Hz: CPU of the daemon process, gaps, readings stored.

    .venv/bin/python -m bench.daemon_devices --boards 64 --rate 10 --duration 60

Issue 3's acceptance is about the daemon, not the driver alone: every reading also goes to MQTT
(telemetry + retained per-sensor state), to Home Assistant discovery once, and to the store with its
outbox. The boards run in one child process (``python -m firmware_stubs mycobrain --count N``), the daemon
in another (``mycoedge run``) against a real Mosquitto; CPU is read from /proc for both over the same
window, so the stubs' cost is the baseline printed beside the daemon's.

A subscriber (paho on its own thread, in this process) checks that the live view loses nothing: every
telemetry message's ``seq`` must follow the previous one of its device and sensor; after the daemon stops,
the store must hold every reading it counted, with no seq gap per sensor.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from daemon.mosquitto import MosquittoProcess, free_port, wait_for_port

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, proc(5)


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of ``pid`` (proc(5), /proc/<pid>/task/<tid>/stat)."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a worker thread that ended meanwhile
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r'mycoedge_device_link_total\{counter="([^"]+)",device="[^"]+"\} (\S+)', line)
        if match:
            totals[match.group(1)] = totals.get(match.group(1), 0.0) + float(match.group(2))
        match = re.match(r"mycoedge_device_streaming\{[^}]*\} (\S+)", line)
        if match:
            totals["streaming"] = totals.get("streaming", 0.0) + float(match.group(1))
    return totals


class TelemetryWatch:
    """Counts telemetry messages and the seq gaps between consecutive ones of each device and sensor."""

    def __init__(self, port: int) -> None:
        self.messages = 0
        self.gaps = 0
        self.bad = 0
        self._last: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-watch")
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, *_: c.subscribe("mycoedge/bench/devices/+/telemetry")
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(message.payload)
            key, seq = (body["device_id"], body["sensor"]), int(body["seq"])
            assert isinstance(body["values"], dict) and "ts" in body and "valid" in body
        except (ValueError, KeyError, TypeError, AssertionError):
            self.bad += 1
            return
        with self._lock:
            self.messages += 1
            last = self._last.get(key)
            if last is not None and seq > last + 1:
                self.gaps += seq - last - 1
            self._last[key] = seq

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.messages, self.gaps

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def store_check(path: Path) -> tuple[int, int]:
    """Readings in the store after the daemon stopped, and the seq gaps among each sensor's rows."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        stored = db.execute("SELECT count(*) FROM readings").fetchone()[0]
        gaps = db.execute("SELECT coalesce(sum(g), 0) FROM (SELECT max(seq) - min(seq) + 1 - count(DISTINCT seq)"
                          " AS g FROM readings GROUP BY device_id, sensor)").fetchone()[0]
    return int(stored), int(gaps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--boards", type=int, default=64)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds (acceptance: 60)")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--profile", default="", help="write a cProfile of the daemon to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        devdir = tmp / "dev"
        devdir.mkdir()
        with MosquittoProcess(tmp / "mqtt") as broker:
            watch = TelemetryWatch(broker.port)
            stubs = subprocess.Popen(
                [sys.executable, "-m", "firmware_stubs", "mycobrain", "--count", str(args.boards), "--dir",
                 str(devdir), "--rate", str(args.rate), "--boot-delay", "0.2"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            assert stubs.stdout is not None
            ports = [stubs.stdout.readline().strip() for _ in range(args.boards)]
            api = free_port()
            lines = [f'[node]\nid = "bench"\nstate_dir = "{tmp}/state"\nruntime_dir = "{tmp}/run"',
                     f'[api]\nlisten = "127.0.0.1:{api}"', f"[mqtt]\nport = {broker.port}",
                     '[trust]\ntcti = "none"', "[discovery]\nmdns = false\nhotplug = false",
                     '[logging]\nlevel = "WARNING"']
            lines += [f'[[devices]]\nkind = "mycobrain"\nport = "{p}"\nstream_rate_hz = {args.rate}' for p in ports]
            (tmp / "c.toml").write_text("\n".join(lines) + "\n")
            profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
            daemon = subprocess.Popen([sys.executable, *profile, "-m", "daemon", "run", "--config",
                                       str(tmp / "c.toml")], stderr=subprocess.DEVNULL)
            try:
                assert wait_for_port("127.0.0.1", api, 30), "daemon did not start"
                deadline = time.monotonic() + 60
                while scrape(api).get("streaming", 0) < args.boards and time.monotonic() < deadline:
                    time.sleep(0.5)
                time.sleep(args.warmup)
                broker_pid = broker._proc.pid if broker._proc else 0  # the broker's CPU, for context
                before, d0, s0, b0, t0 = (scrape(api), cpu_seconds(daemon.pid), cpu_seconds(stubs.pid),
                                          cpu_seconds(broker_pid), time.monotonic())
                m0, g0 = watch.snapshot()
                threads0 = thread_cpu(daemon.pid)
                time.sleep(args.duration)
                after, d1, s1, b1, t1 = (scrape(api), cpu_seconds(daemon.pid), cpu_seconds(stubs.pid),
                                         cpu_seconds(broker_pid), time.monotonic())
                m1, g1 = watch.snapshot()
                threads1 = thread_cpu(daemon.pid)
            finally:
                watch.close()
                daemon.terminate()
                daemon.wait(timeout=30)
                stubs.terminate()
                stubs.wait(timeout=30)
                stubs.stdout.close()
            stored, store_gaps = store_check(tmp / "state" / "mycoedge.db")
    wall = t1 - t0

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    frames = delta("telemetry")
    print(f"{args.boards} boards at {args.rate} Hz, {wall:.1f} s measured, all streaming: "
          f"{int(after.get('streaming', 0))}/{args.boards}")
    print(f"  telemetry frames {frames:.0f} ({frames / wall:.0f}/s), readings {delta('readings'):.0f}, "
          f"sequence gaps {delta('seq_gaps'):.0f}, frames missed {delta('frames_missed'):.0f}, "
          f"crc errors {delta('err_crc'):.0f}")
    print(f"  MQTT telemetry received {m1 - m0} ({(m1 - m0) / wall:.0f}/s), seq gaps seen on MQTT {g1 - g0}, "
          f"malformed {watch.bad}")
    print(f"  store after stop: {stored} readings (>= {after.get('readings', 0):.0f} counted at the last scrape: "
          f"{'yes' if stored >= after.get('readings', 0) else 'NO'}), seq gaps in the store {store_gaps}")
    print(f"  {'process':28}{'CPU % of one core':>18}")
    print(f"  {'daemon (goal <= 25)':28}{100 * (d1 - d0) / wall:>18.1f}")
    loop_thread = threads1.get(daemon.pid, 0.0) - threads0.get(daemon.pid, 0.0)
    print(f"  {'  of which the event loop':28}{100 * loop_thread / wall:>18.1f}")
    print(f"  {'  of which other threads':28}{100 * (d1 - d0 - loop_thread) / wall:>18.1f}  (SQLite writer, executors)")
    print(f"  {'baseline: firmware stubs':28}{100 * (s1 - s0) / wall:>18.1f}")
    print(f"  {'mosquitto (context)':28}{100 * (b1 - b0) / wall:>18.1f}")


if __name__ == "__main__":
    main()
