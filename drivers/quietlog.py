"""Quiet logging of untrusted input: a noisy device must not flood the journal (python-zeroconf style)."""

from __future__ import annotations

import logging


class QuietLog:
    """First untrusted-input problem of each kind at WARNING, repeats at DEBUG."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._seen: set[str] = set()

    def problem(self, kind: str, msg: str, *args: object) -> None:
        level = logging.DEBUG if kind in self._seen else logging.WARNING
        self._seen.add(kind)
        self._logger.log(level, msg, *args)
