"""Structured logging to stderr: ``key=value`` text for the journal, or one JSON object per line."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class KeyValueFormatter(logging.Formatter):
    """``level=INFO logger=daemon.app msg="ready" extra=...``; the journal adds the timestamp itself."""

    def __init__(self, *, with_time: bool) -> None:
        super().__init__()
        self._with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self._with_time:
            parts.append("ts=" + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                         + f".{int(record.msecs):03d}Z")
        parts += [f"level={record.levelname}", f"logger={record.name}", f"msg={json.dumps(record.getMessage())}"]
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                parts.append(f"{key}={json.dumps(value, default=str)}")
        if record.exc_info:
            parts.append("exc=" + json.dumps(self.formatException(record.exc_info)))
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, object] = {
            "ts": record.created,
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                body[key] = value
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


def setup(level: str = "INFO", *, as_json: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    # Under systemd the journal stamps each line; elsewhere we do.
    under_journal = "JOURNAL_STREAM" in os.environ
    handler.setFormatter(JsonFormatter() if as_json else KeyValueFormatter(with_time=not under_journal))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party chatter stays out of INFO.
    for noisy in ("aiohttp.access", "aiomqtt", "zeroconf", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # aiomqtt's client logger ("mqtt") warns about queued publishes during telemetry bursts; that is flow
    # control working, not a fault.
    logging.getLogger("mqtt").setLevel(logging.ERROR)
