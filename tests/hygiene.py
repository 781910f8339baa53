"""Test hygiene: fail a test that leaks tasks, threads or child processes, or blocks the event loop.

Installed for every test by ``tests/conftest.py``. The checks run after all of a test's fixtures have
been torn down, so a fixture that owns a broker or a daemon must stop it in its own teardown.
"""

from __future__ import annotations

import asyncio
import asyncio.runners
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Callbacks slower than this fail the test. asyncio's debug mode reports anything over 0.1 s; we allow
# more because CI shares two cores with helper processes (mosquitto, swtpm, stubs, the upstream): a
# descheduled but innocent callback must not fail a test, and a real blocking call still shows.
BLOCKING_LIMIT_S = 0.5

_leaked_tasks: list[str] = []
_slow_callbacks: list[str] = []
_original_cancel_all: Callable[[asyncio.AbstractEventLoop], None] = asyncio.runners._cancel_all_tasks  # type: ignore[attr-defined]


def _recording_cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    """Record tasks still pending when the test's loop is torn down, then cancel them as asyncio does."""
    for task in asyncio.all_tasks(loop):
        if not task.done():
            _leaked_tasks.append(repr(task)[:300])
    _original_cancel_all(loop)


class _SlowCallbackHandler(logging.Handler):
    _pattern = re.compile(r"took (\d+\.\d+) seconds")

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        match = self._pattern.search(message)
        if match and float(match.group(1)) > BLOCKING_LIMIT_S:
            _slow_callbacks.append(message[:300])


def install() -> None:
    asyncio.runners._cancel_all_tasks = _recording_cancel_all  # type: ignore[attr-defined]
    logging.getLogger("asyncio").addHandler(_SlowCallbackHandler())


def child_pids() -> set[int]:
    """Direct children of this process that are still alive (not zombies), from /proc."""
    pids: set[int] = set()
    for task_dir in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            text = (task_dir / "children").read_text()
        except OSError:
            continue
        for pid in text.split():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[0] != "Z":
                pids.add(int(pid))
    return pids


def live_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


def snapshot() -> dict[str, Any]:
    _leaked_tasks.clear()
    _slow_callbacks.clear()
    return {"threads": live_threads(), "children": child_pids()}


def problems(before: dict[str, Any], grace_s: float = 2.0) -> list[str]:
    """What the test left behind, after giving threads and children a short grace period to finish."""
    deadline = time.monotonic() + grace_s
    while True:
        threads = live_threads() - before["threads"]
        children = child_pids() - before["children"]
        if (not threads and not children) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    found: list[str] = []
    found += [f"leaked asyncio task: {t}" for t in _leaked_tasks]
    found += [f"blocked the event loop: {m}" for m in _slow_callbacks]
    found += [f"leaked thread: {t.name}" for t in threads]
    for pid in children:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = "?"
        found.append(f"leaked child process {pid}: {cmd[:200]}")
    return found
