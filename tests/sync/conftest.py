"""Fixtures for the uplink tests: a real Store file, a reference upstream (child process or in-process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.store import Ed25519Signer, Store
from daemon.upstream import UpstreamServer

ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    """Wall-clock stand-in the tests move by hand (``advance``)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class UpstreamProcess:
    """A ``mycoedge upstream`` child process on a loopback port."""

    url: str
    db: Path
    proc: subprocess.Popen[bytes]

    async def get(self, path: str) -> object:
        async with aiohttp.ClientSession() as s, s.get(self.url + path) as r:
            r.raise_for_status()
            return await r.json()

    async def set_faults(self, **faults: float) -> object:
        async with aiohttp.ClientSession() as s, s.put(self.url + "/admin/faults?replace=true", json=faults) as r:
            r.raise_for_status()
            return await r.json()

    async def ids(self, stream: str) -> list[str]:
        doc = await self.get(f"/v1/streams/{stream}/ids")
        assert isinstance(doc, dict)
        return list(doc["ids"])

    def get_blocking(self, path: str) -> dict[str, Any]:
        """For synchronous tests (the ones that drive child processes)."""
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            doc = json.loads(r.read())
        assert isinstance(doc, dict)
        return doc


def start_upstream(db: Path, *extra: str) -> UpstreamProcess:
    """Start the reference upstream as a direct child and wait (bounded) for its URL."""
    ready = db.with_suffix(".url")
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon.upstream", "--listen", "127.0.0.1:0", "--db", str(db),
         "--ready-file", str(ready), *extra],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while not (ready.exists() and ready.read_text().endswith("\n")):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"upstream did not start: {err[-2000:]}")
        time.sleep(0.02)
    return UpstreamProcess(ready.read_text().strip(), db, proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[UpstreamServer]:
    async with UpstreamServer(tmp_path / "upstream-inproc.db", seed=7) as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store(tmp_path / "node.db", signer=Ed25519Signer.generate(), embedding_dim=4, ttl_sweep_s=0) as s:
        yield s


@pytest.fixture
async def clocked_store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Store]:
    async with Store(tmp_path / "node-clocked.db", signer=Ed25519Signer.generate(), embedding_dim=4,
                     ttl_sweep_s=0, clock=clock) as s:
        yield s
