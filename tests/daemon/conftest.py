"""Real helper processes for daemon tests: a Mosquitto broker and the daemon itself as a child."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.mosquitto import MosquittoProcess, free_port, wait_for_port


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoProcess]:
    broker = MosquittoProcess(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


class DaemonProcess:
    """``python -m daemon run`` as a direct child, with its own config file and optional NOTIFY_SOCKET."""

    def __init__(self, tmp: Path, config_text: str, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.config_path = tmp / "mycoedge.toml"
        self.config_path.write_text(config_text)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = tmp / "daemon.log"

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "run", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()


def daemon_config(tmp: Path, *, api_port: int, mqtt_port: int | None, extra: str = "") -> str:
    mqtt = f"[mqtt]\nhost = \"127.0.0.1\"\nport = {mqtt_port}\nreconnect_max_s = 0.5\n" if mqtt_port else (
        "[mqtt]\nenabled = false\n")
    return (
        f"[node]\nid = \"test-node\"\nstate_dir = \"{tmp / 'state'}\"\nruntime_dir = \"{tmp / 'run'}\"\n"
        f"[api]\nlisten = \"127.0.0.1:{api_port}\"\n{mqtt}{extra}"
    )


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[type]:
    started: list[DaemonProcess] = []

    class Factory:
        @staticmethod
        def make(*, mqtt_port: int | None, env: dict[str, str] | None = None, extra: str = "") -> DaemonProcess:
            api_port = free_port()
            proc = DaemonProcess(tmp_path, daemon_config(tmp_path, api_port=api_port, mqtt_port=mqtt_port,
                                                         extra=extra), env)
            proc.api_port = api_port  # type: ignore[attr-defined]
            started.append(proc)
            return proc

    try:
        yield Factory
    finally:
        for proc in started:
            proc.stop()


def wait_ready(port: int, timeout: float = 15.0) -> None:
    assert wait_for_port("127.0.0.1", port, timeout), "daemon API did not come up"


def free_udp_unix_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    return sock


def recv_until(sock: socket.socket, predicate: str, timeout: float) -> list[tuple[float, str]]:
    """Collect notify datagrams (with arrival time) until one contains ``predicate``."""
    got: list[tuple[float, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            continue
        got.append((time.monotonic(), data))
        if predicate in data:
            return got
    raise AssertionError(f"no {predicate!r} in {timeout}s; got {got}")
