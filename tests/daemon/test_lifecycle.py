"""systemd integration: READY only after the API answers, watchdog pings, orderly stop on SIGTERM."""

from __future__ import annotations

import signal
import time
import urllib.request
from pathlib import Path

from tests.daemon.conftest import free_udp_unix_socket, recv_until


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_notify_ready_watchdog_and_stopping(tmp_path: Path, daemon_factory: type) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = free_udp_unix_socket(sock_path)
    try:
        daemon = daemon_factory.make(mqtt_port=None, env={
            "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"})
        daemon.start()
        got = recv_until(sock, "READY=1", timeout=20)
        # READY=1 is sent only once the API is up: it must answer right away.
        status, body = _get(daemon.api_port, "/readyz")
        assert status == 200, body
        ready_at = got[-1][0]
        pings = recv_until(sock, "WATCHDOG=1", timeout=3)
        more = recv_until(sock, "WATCHDOG=1", timeout=3)
        watchdog_times = [t for t, m in pings + more if "WATCHDOG=1" in m]
        assert watchdog_times[0] - ready_at < 1.5
        # WATCHDOG_USEC=1 s: pings at half of it.
        gap = more[-1][0] - pings[-1][0]
        assert 0.3 < gap < 0.9, gap
        daemon.signal(signal.SIGTERM)
        started = time.monotonic()
        recv_until(sock, "STOPPING=1", timeout=5)
        assert daemon.wait(timeout=5) == 0
        assert time.monotonic() - started < 5
    finally:
        sock.close()


def test_runs_without_systemd_and_stops_on_sigint(daemon_factory: type) -> None:
    daemon = daemon_factory.make(mqtt_port=None)
    daemon.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if _get(daemon.api_port, "/readyz")[0] == 200:
                break
        except OSError:
            time.sleep(0.1)
    else:
        raise AssertionError(daemon.log())
    daemon.signal(signal.SIGINT)
    assert daemon.wait(timeout=5) == 0


def test_admin_token_is_created_once_with_mode_0600(tmp_path: Path, daemon_factory: type) -> None:
    daemon = daemon_factory.make(mqtt_port=None)
    daemon.start()
    token_path = tmp_path / "state" / "admin.token"
    deadline = time.monotonic() + 20
    while not token_path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert token_path.stat().st_mode & 0o777 == 0o600
    first = token_path.read_text()
    daemon.stop()
    again = daemon_factory.make(mqtt_port=None)
    again.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if _get(again.api_port, "/readyz")[0] == 200:
                break
        except OSError:
            time.sleep(0.1)
    assert token_path.read_text() == first
