"""One dedicated thread that owns a blocking resource (a ``Tpm``: one ESAPI context per thread).

The event loop never waits on the TPM: ``call`` hands a function to the thread and awaits its result.
Calls run one at a time in order, which is also what a TPM without a resource manager needs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from attestation.errors import AttestationError

R = TypeVar("R")
T = TypeVar("T")

_Job = tuple[Callable[[Any], Any], concurrent.futures.Future[Any]]


class ResourceThread(Generic[R]):
    """An async context manager: opens ``opener()`` in a new thread, runs ``call``s there, closes it on exit."""

    def __init__(self, opener: Callable[[], R], closer: Callable[[R], None], *, name: str) -> None:
        self._opener = opener
        self._closer = closer
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._opened: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._stopped: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        try:
            resource = self._opener()
        except BaseException as exc:  # handed to the awaiting coroutine, not swallowed
            self._opened.set_exception(exc)
            self._stopped.set_result(None)
            return
        self._opened.set_result(None)
        try:
            while (job := self._jobs.get()) is not None:
                fn, future = job
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(fn(resource))
                except BaseException as exc:  # delivered to the caller through its future
                    future.set_exception(exc)
        finally:
            try:
                self._closer(resource)
            finally:
                self._stopped.set_result(None)

    async def __aenter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        try:
            await asyncio.wrap_future(self._opened)
        except BaseException:
            await self._join()
            raise
        return self

    async def call(self, fn: Callable[[R], T]) -> T:
        """Run ``fn(resource)`` in the owning thread and return its result (or raise its exception)."""
        if self._thread is None or self._stopped.done():
            raise AttestationError(f"{self._name} is not running")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, future))
        return await asyncio.wrap_future(future)

    async def _join(self) -> None:
        await asyncio.wrap_future(self._stopped)
        if self._thread is not None:
            self._thread.join()  # the thread has finished its last statement: this returns at once

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._thread is None:
            return
        self._jobs.put(None)
        await asyncio.shield(self._join())
        self._thread = None
