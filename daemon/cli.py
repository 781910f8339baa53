"""The ``mycoedge`` command line: run the daemon, check the config, run the demo, and operator verbs."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from attestation import AttestationError
from daemon import __version__
from daemon import config as config_mod
from daemon.errors import ConfigError, DaemonError

EX_CONFIG = 78  # sysexits.h: configuration error; systemd does not restart on it with RestartPreventExitStatus


def _add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help=f"config file (default {config_mod.DEFAULT_CONFIG_PATH}, env MYCOEDGE_CONFIG)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mycoedge", description="mycoedge edge daemon")
    parser.add_argument("--version", action="version", version=f"mycoedge {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True)

    run = verbs.add_parser("run", help="run the daemon in the foreground (systemd Type=notify)")
    _add_config_arg(run)

    cfg = verbs.add_parser("config", help="configuration tools")
    cfg_verbs = cfg.add_subparsers(dest="config_verb", required=True)
    check = cfg_verbs.add_parser("check", help="print the merged config, or every error with its key")
    _add_config_arg(check)

    demo = verbs.add_parser("demo", help="run a complete node on embedded defaults (broker, stubs, TPM sim)")
    demo.add_argument("--dir", type=Path, default=None, help="state directory (default ~/.local/state/mycoedge-demo)")
    demo.add_argument("--api-port", type=int, default=8787, help="HTTP API port on 127.0.0.1 (0 = any free)")
    demo.add_argument("--boards", type=int, default=2, help="simulated MycoBrain boards to start")
    sync = verbs.add_parser("sync", help="uplink status, or sync now with a progress bar")
    _add_config_arg(sync)
    from daemon.sync import cli as sync_cli

    sync_cli.add_arguments(sync, default_url="")

    upstream = verbs.add_parser("upstream", add_help=False,
                                help="the reference upstream ingest server (see `mycoedge upstream --help`)")
    upstream.add_argument("upstream_args", nargs=argparse.REMAINDER)

    maif = verbs.add_parser("maif", help="export, import or verify the MAIF block log")
    _add_config_arg(maif)
    from daemon import maif_cli

    maif_cli.add_arguments(maif)

    attest = verbs.add_parser("attest", help="EK certificate chain, AK, PCRs and a fresh quote verified locally")
    _add_config_arg(attest)
    return parser


def _load_or_report(path: Path | None) -> config_mod.Config | None:
    try:
        return config_mod.load(path)
    except ConfigError as exc:
        print("invalid configuration:", file=sys.stderr)
        for key, message in exc.problems:
            print(f"  {key}: {message}", file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["upstream"]:
        # The upstream server has its own parser; argparse's REMAINDER would swallow neither --help nor flags.
        from daemon.upstream.server import main as upstream_main

        return upstream_main(argv[1:])
    if argv[:1] in (["sync"], ["maif"]) and "--config" in argv[2:]:
        # Accept `mycoedge sync status --config F` as well as `mycoedge sync --config F status` (and maif).
        at = argv.index("--config", 1)
        argv[1:1] = argv[at:at + 2]
        del argv[at + 2:at + 4]
    args = build_parser().parse_args(argv)
    if args.verb == "config":
        loaded = _load_or_report(args.config)
        if loaded is None:
            return EX_CONFIG
        print(json.dumps(config_mod.to_mapping(loaded), indent=2))
        return 0
    if args.verb == "run":
        loaded = _load_or_report(args.config)
        if loaded is None:
            return EX_CONFIG
        from daemon import app, logs

        logs.setup(loaded.logging.level, as_json=loaded.logging.json)
        try:
            return asyncio.run(app.run(loaded))
        except (DaemonError, AttestationError, OSError) as exc:
            # A component that cannot start (store refused, TPM required but absent, port taken): one line
            # naming it, and a failure exit that systemd's Restart=on-failure retries.
            print(f"mycoedge: cannot start: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    if args.verb == "sync":
        loaded = _load_or_report(args.config)
        if loaded is None:
            return EX_CONFIG
        from daemon.sync import cli as sync_cli

        if not args.url:
            host, port = config_mod.parse_listen(loaded.api.listen) if loaded.api.listen else ("127.0.0.1", 8787)
            args.url = f"http://{host}:{port}"
        if not args.token and args.token_file is None:
            args.token_file = loaded.admin_token_path
        return sync_cli.run_args(args)
    if args.verb == "maif":
        loaded = _load_or_report(args.config)
        if loaded is None:
            return EX_CONFIG
        from daemon import maif_cli

        return maif_cli.main(loaded, args)
    if args.verb == "attest":
        loaded = _load_or_report(args.config)
        if loaded is None:
            return EX_CONFIG
        from daemon import attest_cli

        return attest_cli.main(loaded)
    if args.verb == "demo":
        from daemon import demo

        return demo.main(args)
    return 2  # pragma: no cover - argparse enforces a verb
