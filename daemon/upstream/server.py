"""Running the reference upstream: ``UpstreamServer`` (in-process) and ``main(argv)`` (``mycoedge upstream``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import signal
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from aiohttp import web

from daemon.sync.wire import MAX_INFLATED_BYTES
from daemon.upstream.app import STATE, UpstreamState, make_app
from daemon.upstream.db import UpstreamDb
from daemon.upstream.errors import UpstreamConfigError
from daemon.upstream.faults import Faults
from daemon.upstream.openapi import spec

log = logging.getLogger(__name__)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6); port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UpstreamConfigError(f"--listen must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def server_tls(cert: str | Path, key: str | Path, client_ca: str | Path | None) -> ssl.SSLContext:
    """TLS for the server; with ``client_ca`` a client certificate signed by it is required (mTLS)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        ctx.load_verify_locations(str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class UpstreamServer:
    """The reference upstream on ``host:port`` as an async context manager; ``url`` is its base URL."""

    def __init__(
        self,
        db_path: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        admin_token: str | None = None,
        faults: Faults | None = None,
        seed: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_body_bytes: int = MAX_INFLATED_BYTES,
    ) -> None:
        self._db = UpstreamDb(db_path)
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._max_body_bytes = max_body_bytes
        self._state = UpstreamState(db=self._db, faults=faults or Faults(), rng=random.Random(seed),  # noqa: S311 - fault dice, not crypto
                                    token=token, admin_token=admin_token)
        self._runner: web.AppRunner | None = None
        self.url = ""

    @property
    def state(self) -> UpstreamState:
        return self._state

    async def __aenter__(self) -> Self:
        await self._db.open()
        app = make_app(self._state, max_body_bytes=self._max_body_bytes)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._ssl)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.url = f"{'https' if self._ssl else 'http'}://{host}:{port}"
        assert app[STATE] is self._state
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._db.close()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mycoedge upstream",
                                description="Reference upstream: stores what nodes sync, deduplicated.")
    p.add_argument("--listen", default="127.0.0.1:8788", help="HOST:PORT (port 0 = any free port)")
    p.add_argument("--db", help="SQLite file to store records in (required to serve)")
    p.add_argument("--openapi", action="store_true", help="print the ingest API's OpenAPI document and exit")
    p.add_argument("--token", help="bearer token nodes must send")
    p.add_argument("--admin-token", help="bearer token for /admin (default: none required)")
    p.add_argument("--tls-cert", help="server certificate (PEM); enables HTTPS")
    p.add_argument("--tls-key", help="server private key (PEM)")
    p.add_argument("--client-ca", help="CA (PEM) that client certificates must chain to: requires mTLS")
    p.add_argument("--ready-file", help="write the base URL here once listening")
    p.add_argument("--seed", type=int, help="seed for fault injection dice")
    p.add_argument("--max-body-bytes", type=int, default=MAX_INFLATED_BYTES,
                   help="largest inflated batch accepted; larger ones get 413")
    faults = p.add_argument_group("fault injection (also PUT /admin/faults at run time)")
    faults.add_argument("--error-rate", type=float, default=0.0, help="503 before storing")
    faults.add_argument("--after-commit-rate", type=float, default=0.0, help="store, then answer 500")
    faults.add_argument("--reset-rate", type=float, default=0.0, help="drop the connection (half after store)")
    faults.add_argument("--throttle-rate", type=float, default=0.0, help="429 with Retry-After")
    faults.add_argument("--retry-after", type=int, default=1, help="seconds in Retry-After")
    faults.add_argument("--latency", type=float, default=0.0, help="seconds of a latency spike")
    faults.add_argument("--latency-rate", type=float, default=0.0, help="probability of a latency spike")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


async def serve(args: argparse.Namespace) -> None:
    host, port = parse_listen(args.listen)
    faults = Faults(error_rate=args.error_rate, after_commit_rate=args.after_commit_rate,
                    reset_rate=args.reset_rate, throttle_rate=args.throttle_rate,
                    retry_after_s=args.retry_after, latency_s=args.latency, latency_rate=args.latency_rate)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UpstreamConfigError("--tls-cert and --tls-key go together")
    if args.client_ca and not args.tls_cert:
        raise UpstreamConfigError("--client-ca needs --tls-cert/--tls-key")
    tls = server_tls(args.tls_cert, args.tls_key, args.client_ca) if args.tls_cert else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with UpstreamServer(args.db, host=host, port=port, token=args.token, admin_token=args.admin_token,
                              faults=faults, seed=args.seed, ssl_context=tls,
                              max_body_bytes=args.max_body_bytes) as server:
        print(f"mycoedge upstream listening on {server.url}", flush=True)
        if args.ready_file:
            await asyncio.to_thread(Path(args.ready_file).write_text, server.url + "\n")
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """``mycoedge upstream --listen HOST:PORT --db FILE [faults…]``; runs until SIGINT/SIGTERM."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.openapi:
        sys.stdout.write(json.dumps(spec(), indent=2, sort_keys=True) + "\n")
        return 0
    if not args.db:
        parser.error("--db is required")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Fault-injected resets make aiohttp log every aborted connection; that noise is the point here.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    try:
        asyncio.run(serve(args))
    except (UpstreamConfigError, OSError, ssl.SSLError) as exc:
        print(f"mycoedge upstream: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
