"""The hygiene harness itself must catch what it claims to catch."""

from __future__ import annotations

import asyncio
import subprocess
import time

from tests import hygiene


def test_detects_a_leaked_child_process() -> None:
    before = hygiene.snapshot()
    proc = subprocess.Popen(["sleep", "5"])
    try:
        found = hygiene.problems(before, grace_s=0.1)
        assert any("leaked child process" in f for f in found)
    finally:
        proc.kill()
        proc.wait()
    assert hygiene.problems(before, grace_s=0.1) == []


def test_detects_a_pending_task_at_loop_teardown() -> None:
    before = hygiene.snapshot()

    async def leave_a_task_behind() -> None:
        asyncio.get_running_loop().create_task(asyncio.sleep(10), name="forgotten")

    asyncio.run(leave_a_task_behind())
    found = hygiene.problems(before, grace_s=0.1)
    assert any("forgotten" in f for f in found)
    hygiene.snapshot()  # clear the record so this test itself passes


def test_detects_a_blocking_callback() -> None:
    before = hygiene.snapshot()

    async def block() -> None:
        time.sleep(hygiene.BLOCKING_LIMIT_S + 0.1)  # noqa: ASYNC251 - blocking is the point

    asyncio.run(block(), debug=True)
    found = hygiene.problems(before, grace_s=0.1)
    assert any("blocked the event loop" in f for f in found)
    hygiene.snapshot()
