"""``mycoedge maif export|import|verify``: the block log as MAIF files, for operators and auditors.

The store is opened directly (SQLite in WAL mode lets this run beside the daemon); progress goes to stderr
as a bar, results to stdout, and a verification names the first bad block and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import TextIO

from daemon import app
from daemon.config import Config
from daemon.store import StoreError
from daemon.store.blocklog import VerifyReport
from daemon.store.maif_file import FileVerification
from daemon.store.maif_io import export, import_file, verify, verify_maif_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="maif_verb", required=True)
    ex = verbs.add_parser("export", help="write the block log as a signed MAIF file")
    ex.add_argument("--out", type=Path, required=True, help="file to write (replaced atomically)")
    ex.add_argument("--since", type=float, default=None, help="only blocks with ts >= this Unix time")
    im = verbs.add_parser("import", help="verify a MAIF file, then append its blocks not already here")
    im.add_argument("file", type=Path)
    ve = verbs.add_parser("verify", help="verify the store's chain, or a MAIF file; names the first bad block")
    ve.add_argument("file", type=Path, nargs="?", default=None)


class ProgressBar:
    """A one-line bar on a terminal; a line per tenth elsewhere (journal, CI logs)."""

    def __init__(self, label: str, out: TextIO = sys.stderr) -> None:
        self._label = label
        self._out = out
        self._tty = out.isatty()
        self._last = -1
        self._started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        if total <= 0:
            return
        fraction = min(1.0, done / total)
        step = int(fraction * (100 if self._tty else 10))
        if step == self._last:
            return
        self._last = step
        bar = "#" * int(fraction * 30)
        rate = done / max(1e-9, time.monotonic() - self._started)
        line = f"{self._label} [{bar:<30}] {fraction * 100:5.1f}% {done}/{total} blocks, {rate:,.0f}/s"
        self._out.write(("\r" + line) if self._tty else (line + "\n"))
        if self._tty and done >= total:
            self._out.write("\n")
        self._out.flush()


async def _run(config: Config, args: argparse.Namespace) -> int:
    if args.maif_verb == "verify" and args.file is not None:
        report = await verify_maif_file(args.file, ProgressBar("verify"))
        return _report(f"file {args.file}", report, index_word="index")
    async with await asyncio.to_thread(app.open_store, config) as store:
        if args.maif_verb == "export":
            result = await export(store, args.out, args.since, progress=ProgressBar("export"))
            print(f"exported {result.blocks} blocks ({result.bytes} bytes) to {result.path}")
            return 0
        if args.maif_verb == "import":
            imported = await import_file(store, args.file)
            print(f"{args.file}: {imported.blocks_in_file} blocks, {imported.imported} imported, "
                  f"{imported.skipped_existing} already here")
            return 0
        stored = await verify(store, ProgressBar("verify"))
        return _report("store", stored, index_word="seq")


def _report(what: str, report: VerifyReport | FileVerification, *, index_word: str) -> int:
    if report.ok:
        print(f"{what}: {report.checked} blocks verified, chain and signatures intact")
        return 0
    print(f"{what}: FIRST BAD BLOCK at {index_word} {report.first_bad} (block {report.block_id}): {report.reason}",
          file=sys.stderr)
    return 1


def main(config: Config, args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(config, args))
    except StoreError as exc:
        print(f"mycoedge maif: {exc}", file=sys.stderr)
        return 1
