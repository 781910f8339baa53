"""The supervised serial link over real pseudo-terminals: open, stream, lose, back off, wake, reopen."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from drivers.device import LinkState
from drivers.errors import LinkError
from drivers.link import Backoff, SerialLink
from firmware_stubs.pty import PtyPort


class Recorder:
    def __init__(self) -> None:
        self.data = bytearray()
        self.made = 0
        self.lost: list[Exception | None] = []
        self.link: SerialLink | None = None

    def connection_made(self, link: SerialLink) -> None:
        self.made += 1
        self.link = link

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


async def until(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # noqa: ASYNC110 - polling a plain predicate owned by the code under test
            await asyncio.sleep(0.01)


def test_backoff_is_capped_exponential_with_jitter() -> None:
    policy = Backoff(base_s=0.5, cap_s=8.0, factor=2.0, jitter=0.5)
    assert [policy.delay(n, 1.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert [policy.delay(n, 0.0) for n in range(6)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert policy.delay(1000, 0.5) == 6.0  # no overflow however long a board stays away


async def test_bytes_flow_both_ways_and_states_follow() -> None:
    received = bytearray()
    states: list[LinkState] = []
    async with PtyPort(on_data=received.extend) as port:
        rec = Recorder()
        async with SerialLink(port.path, rec, on_state=lambda link: states.append(link.state)) as link:
            await until(lambda: rec.made == 1)
            assert link.state is LinkState.HANDSHAKE
            port.write(b"\x01\x02hello\x00")
            await until(lambda: bytes(rec.data) == b"\x01\x02hello\x00")
            link.write(b"ping\n")
            await until(lambda: bytes(received) == b"ping\n")
            link.mark_streaming()
            assert link.state is LinkState.STREAMING
        assert link.state is LinkState.CLOSED
    assert states[:3] == [LinkState.OPENING, LinkState.HANDSHAKE, LinkState.STREAMING]
    assert link.stats()["bytes_in"] == 8 and link.stats()["bytes_out"] == 5


async def test_unplug_backs_off_and_hotplug_wake_reopens_at_once() -> None:
    async with PtyPort() as port:
        rec = Recorder()
        # A 30 s backoff: only wake() can bring the link back within the test's time.
        link = SerialLink(port.path, rec, backoff=Backoff(base_s=30.0, cap_s=30.0), random=lambda: 0.0)
        async with link:
            await until(lambda: rec.made == 1)
            link.mark_streaming()
            port.unplug()
            await until(lambda: link.state is LinkState.BACKOFF)
            assert isinstance(rec.lost[0], LinkError)
            assert link.stats()["disconnects"] == 1
            assert link.last_delay == 15.0
            port.plug()
            link.wake()
            await until(lambda: rec.made == 2, timeout=2.0)
            port.write(b"again")
            await until(lambda: rec.data.endswith(b"again"))


async def test_missing_port_is_retried_until_it_appears() -> None:
    port = PtyPort()
    rec = Recorder()
    async with SerialLink(port.path, rec, backoff=Backoff(base_s=0.02, cap_s=0.05)) as link:
        await until(lambda: link.stats()["open_failures"] >= 2)
        with pytest.raises(LinkError):
            link.write(b"x")
        port.plug()
        await until(lambda: rec.made == 1)
    await port.close()


async def test_protocol_can_fail_the_link_and_read_only_refuses_writes() -> None:
    async with PtyPort() as port:
        rec = Recorder()
        async with SerialLink(port.path, rec, read_only=True, backoff=Backoff(base_s=0.01)) as link:
            await until(lambda: rec.made == 1)
            with pytest.raises(LinkError):
                link.write(b"AT\r\n")
            link.fail("handshake timeout")
            await until(lambda: rec.made == 2)
            assert str(rec.lost[0]) == "handshake timeout"
