"""``mycoedge sync status|run``: the operator's view of the uplink, over the daemon's HTTP API.

``run`` asks for a pass and, unless ``--no-wait``, follows the drain with a progress bar on stderr
until the outbox is empty, the timeout passes, or the daemon reports an error it cannot retry.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import aiohttp

DEFAULT_URL = "http://127.0.0.1:8787"
POLL_S = 0.25
BAR_WIDTH = 30


class CliError(Exception):
    """Something the operator must see, printed as one line; exit status 1."""


def add_arguments(parser: argparse.ArgumentParser, *, default_url: str = DEFAULT_URL,
                  default_token_file: Path | None = None) -> None:
    """Add the ``sync`` verbs to ``parser`` (the coordinator's ``mycoedge`` CLI calls this)."""
    parser.add_argument("--url", default=os.environ.get("MYCOEDGE_URL", default_url),
                        help=f"daemon API base URL (default {default_url}, env MYCOEDGE_URL)")
    parser.add_argument("--token", default=os.environ.get("MYCOEDGE_TOKEN"),
                        help="admin bearer token (env MYCOEDGE_TOKEN)")
    parser.add_argument("--token-file", type=Path, default=default_token_file,
                        help="file holding the admin token (used when --token is not given)")
    verbs = parser.add_subparsers(dest="sync_verb", required=True)
    status = verbs.add_parser("status", help="print the uplink status")
    status.add_argument("--json", action="store_true", help="print the raw JSON document")
    run = verbs.add_parser("run", help="sync now and show the drain")
    run.add_argument("--no-wait", action="store_true", help="return once the run is requested")
    run.add_argument("--timeout", type=float, default=600.0, help="give up waiting after this many seconds")


def _token(args: argparse.Namespace) -> str | None:
    if args.token:
        return str(args.token)
    if args.token_file is not None:
        try:
            return Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise CliError(f"cannot read token file {args.token_file}: {exc.strerror}") from None
    return None


async def _call(session: aiohttp.ClientSession, method: str, url: str) -> dict[str, Any]:
    try:
        async with session.request(method, url) as resp:
            body = await resp.read()
            if resp.status >= 400:
                try:
                    detail = json.loads(body).get("detail") or resp.reason
                except (ValueError, AttributeError):
                    detail = resp.reason
                raise CliError(f"{method} {url}: HTTP {resp.status}: {detail}")
            doc = json.loads(body)
    except aiohttp.ClientError as exc:
        raise CliError(f"cannot reach the daemon at {url}: {exc}") from None
    except ValueError:
        raise CliError(f"{method} {url}: the answer is not JSON") from None
    if not isinstance(doc, dict):
        raise CliError(f"{method} {url}: unexpected answer")
    return doc


def _age(ts: float | None) -> str:
    if ts is None:
        return "never"
    return f"{max(0.0, time.time() - ts):.0f} s ago"


def format_status(doc: dict[str, Any]) -> str:
    """The status document as a short table for a terminal."""
    spool = doc.get("spool", {})
    lines = [
        f"upstream   {doc.get('upstream', '?')}",
        f"state      {doc.get('state')}  (failures in a row: {doc.get('consecutive_failures', 0)})",
        f"success    {_age(doc.get('last_success'))}",
        f"spool      {spool.get('bytes', 0)} of {spool.get('max_bytes', 0)} bytes"
        f" ({100 * float(spool.get('fill_ratio', 0)):.1f} %)"
        + ("  NEVER-DROPPED STREAMS OVER CAP" if spool.get("protected_over_cap") else ""),
    ]
    if doc.get("last_error"):
        lines.append(f"last error {doc['last_error']}")
    lines.append(f"{'stream':<10} {'pending':>9} {'lag s':>9} {'sent':>9} {'dropped':>9}")
    for name, s in sorted(doc.get("streams", {}).items()):
        dropped = sum(int(v) for v in s.get("dropped", {}).values())
        lines.append(f"{name:<10} {s.get('pending', 0):>9} {s.get('lag_s', 0):>9.0f} {s.get('sent', 0):>9}"
                     f" {dropped:>9}")
    return "\n".join(lines)


class ProgressBar:
    """A one-line bar redrawn in place on a terminal, or a line every few seconds when piped."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._tty = out.isatty()
        self._total = 0
        self._start = time.monotonic()
        self._last_line = 0.0

    def update(self, pending: int, state: str, *, final: bool = False) -> None:
        self._total = max(self._total, pending)
        done = self._total - pending
        frac = 1.0 if self._total == 0 else done / self._total
        filled = int(BAR_WIDTH * frac)
        rate = done / max(1e-3, time.monotonic() - self._start)
        text = (f"sync [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {100 * frac:5.1f}% "
                f"{done}/{self._total} records, {rate:,.0f}/s, {state}")
        if self._tty:
            self._out.write("\r" + text + ("\n" if final else ""))
            self._out.flush()
        elif final or time.monotonic() - self._last_line > 2.0:
            self._out.write(text + "\n")
            self._out.flush()
            self._last_line = time.monotonic()


async def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    base = str(args.url).rstrip("/")
    token = _token(args)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as session:
        if args.sync_verb == "status":
            doc = await _call(session, "GET", base + "/v1/sync/status")
            out.write((json.dumps(doc, indent=2) if args.json else format_status(doc)) + "\n")
            return 0
        answer = await _call(session, "POST", base + "/v1/sync/run")
        run = int(answer["run"])
        if args.no_wait:
            out.write(f"sync run {run} requested\n")
            return 0
        bar = ProgressBar(err)
        deadline = time.monotonic() + float(args.timeout)
        doc = answer["status"]
        while True:
            bar.update(int(doc.get("pending", 0)), str(doc.get("state")))
            if int(doc.get("runs_completed", 0)) >= run and int(doc.get("pending", 0)) == 0:
                bar.update(0, "done", final=True)
                return 0
            if time.monotonic() > deadline:
                bar.update(int(doc.get("pending", 0)), "timed out", final=True)
                err.write(f"sync: {doc.get('pending')} records still queued; last error: {doc.get('last_error')}\n")
                return 1
            await asyncio.sleep(POLL_S)
            doc = await _call(session, "GET", base + "/v1/sync/status")


def main(argv: Sequence[str] | None = None, *, default_url: str = DEFAULT_URL,
         default_token_file: Path | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``mycoedge sync status|run``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="mycoedge sync", description="Uplink status and on-demand sync.")
    add_arguments(parser, default_url=default_url, default_token_file=default_token_file)
    args = parser.parse_args(argv)
    return run_args(args, out=out, err=err)


def run_args(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run already-parsed ``sync`` arguments (for a parent parser that added ``add_arguments``)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        return asyncio.run(_run(args, out, err))
    except CliError as exc:
        err.write(f"mycoedge sync: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
