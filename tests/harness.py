"""The whole daemon in the test's own event loop, on its real components, with its config from a mapping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon import app as app_mod
from daemon import config as config_mod
from daemon.mosquitto import free_port
from daemon.sdnotify import Notifier


@dataclass
class RunningNode:
    url: str
    headers: dict[str, str]  # the admin token
    config: config_mod.Config
    node: app_mod.Node


def node_config(tmp: Path, **sections: Any) -> dict[str, Any]:
    """A config mapping for a test node under ``tmp``: no broker, no mDNS, no TPM unless a section says so."""
    raw: dict[str, Any] = {
        "node": {"id": "test-node", "state_dir": str(tmp / "state"), "runtime_dir": str(tmp / "run")},
        "api": {"listen": f"127.0.0.1:{free_port()}"},
        "mqtt": {"enabled": False},
        "discovery": {"mdns": False},
        "trust": {"tcti": "none"},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values} if isinstance(values, dict) else values
    return raw


@asynccontextmanager
async def running_node(raw: dict[str, Any], **run_kwargs: Any) -> AsyncIterator[RunningNode]:
    """Start ``app.run`` and yield once READY=1 would have been sent; stop it in order on exit."""
    config = config_mod.from_mapping(raw)
    stop = asyncio.Event()
    ready: asyncio.Queue[app_mod.Node] = asyncio.Queue()
    task = asyncio.create_task(app_mod.run(config, stop=stop, notifier=Notifier(environ={}),
                                           on_ready=ready.put_nowait, **run_kwargs))
    getter = asyncio.ensure_future(ready.get())
    await asyncio.wait([getter, task], return_when=asyncio.FIRST_COMPLETED)
    if not getter.done():
        getter.cancel()
        task.result()  # raises what stopped the start
        raise AssertionError("the daemon stopped before it was ready")
    node = getter.result()
    token = config.admin_token_path.read_text().strip()
    host, port = config_mod.parse_listen(config.api.listen)
    try:
        yield RunningNode(f"http://{host}:{port}", {"Authorization": f"Bearer {token}"}, config, node)
    finally:
        stop.set()
        assert await task == 0
