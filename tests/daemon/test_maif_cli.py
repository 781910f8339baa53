"""``mycoedge maif``: verify the store, export, verify the file, and name the first bad block when tampered."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from daemon import app as app_mod
from daemon import config as config_mod


def _cli(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", "maif", *args, "--config", str(config_path)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_export_verify_and_tamper_detection(tmp_path: Path) -> None:
    config_path = tmp_path / "c.toml"
    config_path.write_text(f'[node]\nid = "m"\nstate_dir = "{tmp_path / "s"}"\nruntime_dir = "{tmp_path / "r"}"\n')
    cfg = config_mod.load(config_path, environ={})

    async def write_blocks() -> None:
        async with app_mod.open_store(cfg) as store:
            for i in range(5):
                await store.append_block("TEXT", f"reading {i}".encode())

    asyncio.run(write_blocks())
    stored = _cli(config_path, "verify")
    assert stored.returncode == 0, stored.stderr
    assert "store: 5 blocks verified" in stored.stdout

    out = tmp_path / "log.maif"
    exported = _cli(config_path, "export", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    assert _cli(config_path, "verify", str(out)).returncode == 0

    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad = tmp_path / "bad.maif"
    bad.write_bytes(bytes(data))
    refused = _cli(config_path, "verify", str(bad))
    assert refused.returncode == 1
    assert "FIRST BAD BLOCK" in refused.stderr or "footer" in refused.stderr

    # Importing our own export adds nothing twice.
    again = _cli(config_path, "import", str(out))
    assert again.returncode == 0, again.stderr
    assert "0 imported, 5 already here" in again.stdout
