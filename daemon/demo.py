"""``mycoedge demo``: a complete node on embedded defaults, for a first look and for development.

It starts, as its own children, a Mosquitto broker on a free loopback port (or runs with MQTT off and
says how to install it), the firmware stubs as separate processes (exactly as real boards appear: a
serial port each), and the daemon itself with its state in a user-writable directory. Ctrl-C stops all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from daemon import app, logs
from daemon import config as config_mod
from daemon.mosquitto import BrokerProcessError, MosquittoProcess, free_port, stop_child, wait_for_port

log = logging.getLogger(__name__)


def default_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "mycoedge-demo"


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _start_boards(children: ExitStack, devdir: Path, count: int) -> list[dict[str, Any]]:
    """Simulated MycoBrain boards as separate processes, each on its own pty, as real boards would appear."""
    devdir.mkdir(parents=True, exist_ok=True)
    stubs: list[tuple[list[str], dict[str, Any]]] = []
    for index in range(count):
        path = devdir / f"mycobrain-{index}"
        stubs.append((["mycobrain", "--side", "a", "--seed", str(index + 1), "--path", str(path)],
                      {"kind": "mycobrain", "port": str(path), "name": f"demo-board-{index}"}))
    # One BME688 bridge and one RUI3 modem that hears a remote MycoBrain over a simulated radio.
    stubs.append((["bme688", "--path", str(devdir / "bme688-0")],
                  {"kind": "bme688", "port": str(devdir / "bme688-0"), "name": "demo-bme688"}))
    stubs.append((["rui3", "--path", str(devdir / "rui3-0"), "--telemetry-every", "5",
                   "--device-id", "mycobrain-5a1e07"],
                  {"kind": "rui3", "port": str(devdir / "rui3-0"), "name": "demo-lora"}))
    devices: list[dict[str, Any]] = []
    for argv, device in stubs:
        proc = subprocess.Popen(
            [sys.executable, "-m", "firmware_stubs", *argv],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops the children after the daemon
        )
        children.callback(stop_child, proc)
        devices.append(device)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(Path(d["port"]).exists() for d in devices):
        time.sleep(0.05)
    return devices


def _start_upstream(children: ExitStack, updir: Path, raw: dict[str, Any]) -> str:
    """The reference upstream as a child process; the node syncs to it every 10 s."""
    updir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "upstream", "--listen", f"127.0.0.1:{port}", "--db",
         str(updir / "upstream.db")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=(updir / "upstream.log").open("ab"),
        start_new_session=True,
    )
    children.callback(stop_child, proc)
    if not wait_for_port("127.0.0.1", port, 15):
        return "off (the reference upstream did not start; see upstream.log)"
    raw["sync"] = {"url": f"http://127.0.0.1:{port}", "interval_s": 10.0}
    return f"http://127.0.0.1:{port} (reference upstream; try: mycoedge sync status)"


def _start_swtpm(children: ExitStack, tpmdir: Path, raw: dict[str, Any]) -> str:
    """A software TPM (swtpm) with EK certificates from its own local CA, if swtpm is installed."""
    if shutil.which("swtpm") is None or shutil.which("swtpm_setup") is None:
        raw["trust"] = {"tcti": "none"}
        return "software key, level 2 (install swtpm swtpm-tools for a simulated TPM)"
    from attestation.swtpm import Swtpm, ensure_provisioned

    try:
        state = ensure_provisioned(tpmdir / "state", tpmdir / "ca")
        tpm = Swtpm(state).start()
    except Exception as exc:  # the demo still runs, on the software key
        raw["trust"] = {"tcti": "none"}
        return f"software key, level 2 (swtpm did not start: {exc})"
    children.callback(tpm.stop)
    raw["trust"] = {"tcti": tpm.tcti, "ek_ca_bundle": str(tpm.ca_bundle)}
    return f"swtpm {tpm.tcti} (EK certificates from {tpm.ca_bundle})"


def main(args: argparse.Namespace) -> int:
    logs.setup("INFO")
    workdir: Path = args.dir or default_dir()
    workdir.mkdir(parents=True, exist_ok=True)
    api_port: int = args.api_port
    if api_port == 0 or not _port_free(api_port):
        chosen = free_port()
        if api_port:
            print(f"port {api_port} is busy; the API uses {chosen} instead")
        api_port = chosen
    raw: dict[str, Any] = {
        "node": {"id": "demo-node", "state_dir": str(workdir / "state"), "runtime_dir": str(workdir / "run")},
        "api": {"listen": f"127.0.0.1:{api_port}"},
        "mqtt": {"enabled": False},
        # The demo is a local look at the product: announce on loopback, not to the whole LAN.
        "discovery": {"mdns_interfaces": "127.0.0.1"},
    }
    with ExitStack() as children:
        devices = _start_boards(children, workdir / "dev", args.boards)
        raw["devices"] = devices
        try:
            broker = MosquittoProcess(workdir / "mosquitto")
            broker.start()
            children.callback(broker.stop)
            raw["mqtt"] = {"enabled": True, "host": broker.host, "port": broker.port}
            broker_line = f"mqtt://{broker.host}:{broker.port}  (try: mosquitto_sub -p {broker.port} -t '#' -v)"
        except BrokerProcessError as exc:
            broker_line = f"off ({exc})"
        trust_line = _start_swtpm(children, workdir / "tpm", raw)
        upstream_line = _start_upstream(children, workdir / "upstream", raw)
        config = config_mod.from_mapping(raw)
        token = app.ensure_admin_token(config.admin_token_path)
        print("mycoedge demo")
        print(f"  API     http://127.0.0.1:{api_port}  (try: curl http://127.0.0.1:{api_port}/readyz)")
        print(f"  socket  {config.socket_path}")
        print(f"  broker  {broker_line}")
        print(f"  token   {config.admin_token_path}  (Authorization: Bearer {token[:6]}...)")
        print(f"  state   {config.node.state_dir}")
        print(f"  trust   {trust_line}")
        print(f"  uplink  {upstream_line}")
        for device in devices:
            print(f"  device  {device['kind']} on {device['port']} (simulated)")
        print("  Ctrl-C stops everything the demo started.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(app.run(config))
    return 0
