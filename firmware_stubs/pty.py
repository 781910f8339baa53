"""A pseudo-terminal that plays a USB serial port, shared by every firmware stub.

The host side opens ``PtyPort.path``, a symlink this harness owns and re-points, so the path stays the
same across an emulated unplug/re-plug exactly as ``/dev/serial/by-id/...`` does for a real board.
Faults a real link shows are injected here: garbage bytes, byte-at-a-time drip, stalls (the board stops
talking), and unplug (the master closes: the host's reads fail with EIO, and the path disappears until
``replug``). The stub's own fault flags (bad CRC, truncated frames) use ``write`` like any other frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import tempfile
import tty
from collections.abc import Callable
from typing import Self

_LOGGER = logging.getLogger(__name__)

# A USB CDC device drops what the host does not read; past this much pending output we do the same.
MAX_PENDING = 256 * 1024


class PtyPort:
    """One emulated serial port; ``on_data`` receives what the host writes."""

    def __init__(
        self,
        path: str | None = None,
        *,
        on_data: Callable[[bytes], None] | None = None,
        drip_delay_s: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._own_dir: str | None = None
        if path is None:
            self._own_dir = tempfile.mkdtemp(prefix="mycoedge-pty-")
            path = os.path.join(self._own_dir, "tty")
        self.path = path
        self.on_data = on_data
        self.drip_delay_s = drip_delay_s
        self.rng = rng or random.Random(0)  # noqa: S311 - line noise for tests, not cryptography
        self.master: int | None = None
        self._slave: int | None = None
        self._pending = bytearray()
        self._writer_on = False
        self._drip_task: asyncio.Task[None] | None = None
        self._stalled = False
        self.plugged = False
        self.stats = {"bytes_out": 0, "bytes_in": 0, "dropped_out": 0, "unplugs": 0}

    async def __aenter__(self) -> Self:
        self.plug()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def tty_name(self) -> str | None:
        return os.ttyname(self._slave) if self._slave is not None else None

    def plug(self) -> None:
        """Create a fresh pty and point ``path`` at it (power-up or re-plug)."""
        if self.plugged:
            return
        master, slave = os.openpty()
        # Raw on the slave side: no echo, no CR/LF translation, as a USB CDC port behaves.
        tty.setraw(slave)
        os.set_blocking(master, False)
        self.master, self._slave = master, slave
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(os.ttyname(slave), tmp)
        os.replace(tmp, self.path)  # atomic: the host never sees a half-made link
        asyncio.get_running_loop().add_reader(master, self._on_readable)
        self.plugged = True

    def unplug(self) -> None:
        """Vanish: the host's next read fails and ``path`` no longer exists."""
        if not self.plugged:
            return
        self.plugged = False
        self.stats["unplugs"] += 1
        if self._drip_task is not None:
            self._drip_task.cancel()
            self._drip_task = None
        loop = asyncio.get_running_loop()
        assert self.master is not None and self._slave is not None
        loop.remove_reader(self.master)
        if self._writer_on:
            loop.remove_writer(self.master)
            self._writer_on = False
        self._pending.clear()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.master)
        os.close(self._slave)
        self.master = self._slave = None

    async def close(self) -> None:
        self.unplug()
        if self._own_dir is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._own_dir)
            self._own_dir = None

    # --- output ---------------------------------------------------------------------------------
    def stall(self, stalled: bool) -> None:
        """While stalled the board produces nothing (what it would have sent is lost)."""
        self._stalled = stalled

    @property
    def stalled(self) -> bool:
        return self._stalled

    def write(self, data: bytes) -> None:
        """Send bytes to the host as the board would; dropped while unplugged or stalled."""
        if not self.plugged or self._stalled or not data:
            return
        if len(self._pending) + len(data) > MAX_PENDING:
            self.stats["dropped_out"] += len(data)
            return
        if self.drip_delay_s is not None:
            self._pending += data
            if self._drip_task is None or self._drip_task.done():
                self._drip_task = asyncio.get_running_loop().create_task(self._drip(), name="pty-drip")
            return
        if self._pending:
            self._pending += data
            return
        self._write_now(data)

    def write_garbage(self, n: int) -> bytes:
        """Line noise: ``n`` random bytes (zero bytes included, as noise has them)."""
        junk = bytes(self.rng.randrange(256) for _ in range(n))
        self.write(junk)
        return junk

    def _write_now(self, data: bytes) -> None:
        assert self.master is not None
        try:
            n = os.write(self.master, data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            _LOGGER.debug("pty write failed: %s", exc)
            return
        self.stats["bytes_out"] += n
        if n < len(data):
            self._pending += data[n:]
            if not self._writer_on:
                asyncio.get_running_loop().add_writer(self.master, self._on_writable)
                self._writer_on = True

    def _on_writable(self) -> None:
        if self.master is None:
            return
        try:
            n = os.write(self.master, self._pending)
        except BlockingIOError:
            return
        except OSError:
            n = len(self._pending)
        self.stats["bytes_out"] += n
        del self._pending[:n]
        if not self._pending:
            asyncio.get_running_loop().remove_writer(self.master)
            self._writer_on = False

    async def _drip(self) -> None:
        while self._pending and self.master is not None:
            byte = bytes(self._pending[:1])
            try:
                os.write(self.master, byte)
            except BlockingIOError:
                await asyncio.sleep(0.001)
                continue
            except OSError:
                return
            self.stats["bytes_out"] += 1
            del self._pending[:1]
            await asyncio.sleep(self.drip_delay_s or 0)

    # --- input ----------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        if self.master is None:
            return
        try:
            data = os.read(self.master, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                _LOGGER.debug("pty read failed: %s", exc)
            return
        self.stats["bytes_in"] += len(data)
        if data and self.on_data is not None and not self._stalled:
            self.on_data(data)
