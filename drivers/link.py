"""A supervised serial link, protocol-agnostic: bytes in, bytes out, reconnect forever.

Every serial driver (MycoBrain MDP, BME688 bridge lines, LoRa modems) owns one ``SerialLink``. The link
opens the tty with pyserial (which sets speed, 8N1 and raw mode), reads it with ``loop.add_reader`` and
hands every chunk to a ``LinkProtocol``; on any error it closes the port, waits a capped, jittered
backoff (cut short by ``wake()``, e.g. from a hot-plug ``add``) and reopens. The protocol moves the link
from ``HANDSHAKE`` to ``STREAMING`` once its device has identified itself (``mark_streaming``), which also
resets the backoff, and may ``fail()`` it (handshake timeout, stall) to force a reopen.

Usage::

    link = SerialLink("/dev/serial/by-id/usb-...", protocol, baudrate=115200)
    async with link:
        link.write(b"...")

State changes are reported through ``on_state(link)``; counters through ``stats()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random as _random
import termios
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, Self

import serial

from drivers.device import LinkState
from drivers.errors import LinkError

_LOGGER = logging.getLogger(__name__)

# A board that stops reading must not make us buffer without bound; 64 KiB is minutes of commands.
MAX_WRITE_BUFFER = 64 * 1024
READ_SIZE = 4096


class LinkProtocol(Protocol):
    """What a driver gives its link; every method runs on the loop and must not block."""

    def connection_made(self, link: SerialLink) -> None: ...

    def data_received(self, data: bytes) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with jitter: attempt n waits ``min(cap, base * factor**n)``, of which
    the fraction ``jitter`` is random, so boards that drop together do not reopen together."""

    base_s: float = 0.5
    cap_s: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5

    def delay(self, attempt: int, rand: float) -> float:
        """The wait before reopening after ``attempt`` consecutive failures; ``rand`` in [0, 1)."""
        ceiling = min(self.cap_s, self.base_s * self.factor ** min(attempt, 64))
        return ceiling * (1.0 - self.jitter) + ceiling * self.jitter * rand


class SerialLink:
    """One port, kept open as long as the link runs; see the module docstring."""

    def __init__(
        self,
        port: str,
        protocol: LinkProtocol,
        *,
        baudrate: int = 115200,
        backoff: Backoff | None = None,
        random: Callable[[], float] = _random.random,
        on_state: Callable[[SerialLink], None] | None = None,
        read_only: bool = False,
        name: str | None = None,
    ) -> None:
        self.port = port
        self.name = name or os.path.basename(port)
        self._protocol = protocol
        self._baudrate = baudrate
        self._backoff = backoff or Backoff()
        self._random = random
        self._on_state = on_state
        self._read_only = read_only
        self._state = LinkState.CLOSED
        self._serial: serial.Serial | None = None
        self._fd: int | None = None
        self._lost: asyncio.Future[Exception | None] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._attempt = 0
        self._wbuf = bytearray()
        self._writer_on = False
        self.last_delay: float | None = None
        self.last_error: str | None = None
        self._stats = {"opens": 0, "open_failures": 0, "disconnects": 0, "bytes_in": 0, "bytes_out": 0,
                       "protocol_errors": 0}

    # --- public surface -------------------------------------------------------------------------
    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name=f"link:{self.name}")

    async def stop(self) -> None:
        """Close the port and end the supervisor; the link can be started again."""
        self._stopping = True
        self._wake.set()
        self._close_port(None)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set_state(LinkState.CLOSED)

    def wake(self) -> None:
        """Cut a backoff short and reopen now (a hot-plug ``add`` for this port arrived)."""
        self._attempt = 0
        self._wake.set()

    def mark_streaming(self) -> None:
        """The device identified itself: the link is healthy, so the next failure backs off from scratch."""
        if self._fd is not None:
            self._attempt = 0
            self._set_state(LinkState.STREAMING)

    def mark_handshake(self) -> None:
        if self._fd is not None:
            self._set_state(LinkState.HANDSHAKE)

    def fail(self, reason: str) -> None:
        """Drop the connection (the protocol gave up on it); the supervisor backs off and reopens."""
        if self._fd is not None:
            self._close_port(LinkError(reason))

    def write(self, data: bytes) -> None:
        """Queue bytes for the port without blocking; raises ``LinkError`` when the port is not open."""
        fd = self._fd
        if fd is None:
            raise LinkError(f"{self.port}: link is {self._state.value}")
        if self._read_only:
            raise LinkError(f"{self.port}: link is read-only until the device is identified")
        if len(self._wbuf) + len(data) > MAX_WRITE_BUFFER:
            raise LinkError(f"{self.port}: write buffer full ({len(self._wbuf)} bytes pending)")
        if self._wbuf:
            self._wbuf += data
            return
        try:
            n = os.write(fd, data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self._close_port(LinkError(f"write failed: {exc}"))
            raise LinkError(f"{self.port}: write failed: {exc}") from None
        self._stats["bytes_out"] += n
        if n < len(data):
            self._wbuf += data[n:]
            self._enable_writer(fd)

    def set_read_only(self, read_only: bool) -> None:
        self._read_only = read_only

    # --- supervisor -----------------------------------------------------------------------------
    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            self._set_state(LinkState.OPENING)
            try:
                self._open(loop)
            except (OSError, serial.SerialException, ValueError) as exc:
                self._stats["open_failures"] += 1
                self.last_error = f"open failed: {exc}"
                _LOGGER.debug("%s: open failed: %s", self.port, exc)
            else:
                lost = self._lost
                assert lost is not None
                self._set_state(LinkState.HANDSHAKE)
                try:
                    self._protocol.connection_made(self)
                except Exception:
                    self._stats["protocol_errors"] += 1
                    _LOGGER.exception("%s: protocol failed in connection_made", self.port)
                exc_lost = await lost
                if not self._stopping:
                    self._stats["disconnects"] += 1
                    self.last_error = str(exc_lost) if exc_lost else "closed"
                    _LOGGER.info("%s: link lost: %s", self.port, self.last_error)
                try:
                    self._protocol.connection_lost(exc_lost)
                except Exception:
                    self._stats["protocol_errors"] += 1
                    _LOGGER.exception("%s: protocol failed in connection_lost", self.port)
            if self._stopping:
                break
            delay = self._backoff.delay(self._attempt, self._random())
            self._attempt += 1
            self.last_delay = delay
            self._set_state(LinkState.BACKOFF)
            self._wake.clear()
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that races a wake.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        # pyserial opens O_NONBLOCK and configures termios (speed, 8N1, raw); opening a tty is a
        # few syscalls, so it stays on the loop rather than paying for a thread per open.
        ser = serial.Serial(self.port, self._baudrate, timeout=0, write_timeout=0)
        fd = ser.fileno()
        os.set_blocking(fd, False)
        self._serial = ser
        self._fd = fd
        self._wbuf.clear()
        self._lost = loop.create_future()
        self._stats["opens"] += 1
        loop.add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            # EIO is how a tty says its device went away (USB unplug, pty master closed).
            reason = "device gone" if exc.errno == errno.EIO else f"read failed: {exc}"
            self._close_port(LinkError(reason))
            return
        if not data:
            self._close_port(LinkError("end of file"))
            return
        self._stats["bytes_in"] += len(data)
        try:
            self._protocol.data_received(data)
        except Exception:
            self._stats["protocol_errors"] += 1
            _LOGGER.exception("%s: protocol failed on received data", self.port)

    def _enable_writer(self, fd: int) -> None:
        if not self._writer_on:
            asyncio.get_running_loop().add_writer(fd, self._on_writable)
            self._writer_on = True

    def _on_writable(self) -> None:
        fd = self._fd
        if fd is None or not self._wbuf:
            self._disable_writer()
            return
        try:
            n = os.write(fd, self._wbuf)
        except BlockingIOError:
            return
        except OSError as exc:
            self._close_port(LinkError(f"write failed: {exc}"))
            return
        self._stats["bytes_out"] += n
        del self._wbuf[:n]
        if not self._wbuf:
            self._disable_writer()

    def _disable_writer(self) -> None:
        if self._writer_on and self._fd is not None:
            asyncio.get_running_loop().remove_writer(self._fd)
        self._writer_on = False

    def _close_port(self, exc: Exception | None) -> None:
        fd, ser = self._fd, self._serial
        if fd is None:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(fd)
        self._disable_writer()
        self._fd = None
        self._serial = None
        self._wbuf.clear()
        # Discard unsent output first: closing a tty otherwise waits for it to drain.
        with contextlib.suppress(OSError, termios.error):
            termios.tcflush(fd, termios.TCOFLUSH)
        if ser is not None:
            with contextlib.suppress(OSError, serial.SerialException):
                ser.close()
        lost = self._lost
        if lost is not None and not lost.done():
            lost.set_result(exc)

    def _set_state(self, state: LinkState) -> None:
        if state is self._state:
            return
        self._state = state
        if self._on_state is not None:
            try:
                self._on_state(self)
            except Exception:
                _LOGGER.exception("%s: state listener failed", self.port)
