"""A Mosquitto broker run as a child process: for ``mycoedge demo`` and for the tests.

Debian's service cannot start where PID 1 is not systemd, so the demo and the tests start the binary
themselves in the foreground on a loopback port and stop it by PID (ENVIRONMENT.md, "Mosquitto").
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from daemon.errors import DaemonError


class BrokerProcessError(DaemonError):
    """Mosquitto is not installed, or did not start listening."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def stop_child(proc: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    """Stop a direct child by PID and reap it; one that ignores SIGTERM for 5 s is killed."""
    if proc.poll() is not None:
        return
    if kill:
        proc.kill()
    else:
        proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class MosquittoProcess:
    """``with MosquittoProcess(dir) as broker:`` starts it; leaving stops it. ``restart()`` keeps the port."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        extra_config: str = "",
        allow_anonymous: bool = True,
        binary: str = "mosquitto",
    ) -> None:
        path = shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None)
        if path is None:
            raise BrokerProcessError(
                "mosquitto is not installed; on Debian: apt-get install -y mosquitto mosquitto-clients"
            )
        self.binary = path
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._extra = extra_config
        self._anonymous = allow_anonymous
        self._proc: subprocess.Popen[bytes] | None = None
        self.conf_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Started as root, mosquitto drops to user "mosquitto" unless told to stay who we are.
        lines = [
            f"user {getpass.getuser()}",
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if self._anonymous else 'false'}",
            "persistence false",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            self._extra,
        ]
        self.conf_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout_s: float = 10.0) -> None:
        self.write_config()
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Its own session: a terminal's Ctrl-C then reaches only whoever started the broker (the demo, a
            # bench), which stops it after the clients that use it instead of under them.
            start_new_session=True,
        )
        if not wait_for_port(self.host, self.port, timeout_s):
            err = b""
            if self._proc.poll() is not None and self._proc.stderr is not None:
                err = self._proc.stderr.read()
            self.stop()
            raise BrokerProcessError(f"mosquitto did not listen on {self.port}: {err.decode(errors='replace')}")

    def stop(self, *, kill: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        stop_child(proc, kill=kill)
        if proc.stderr is not None:
            proc.stderr.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
