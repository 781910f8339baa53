"""sysusers.d and tmpfiles.d files, applied by the real systemd tools into a scratch root."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.appliance.conftest import SYSTEMD_DIR, quiet_env, require_tool


@pytest.fixture
def scratch_root(tmp_path: Path) -> Path:
    """A root with only root and dialout, like a fresh Debian before tpm-udev is installed."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc" / "group").write_text("root:x:0:\ndialout:x:20:\n")
    return root


def _passwd(root: Path) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":") for line in (root / "etc" / "passwd").read_text().splitlines()}


def _groups(root: Path) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":") for line in (root / "etc" / "group").read_text().splitlines()}


def _sysusers(root: Path) -> None:
    tool = require_tool("systemd-sysusers")
    subprocess.run(
        [tool, f"--root={root}", str(SYSTEMD_DIR / "mycoedge.sysusers")],
        check=True,
        capture_output=True,
        env=quiet_env(),
    )


def test_sysusers_creates_a_locked_system_user_in_dialout_and_tss(scratch_root: Path) -> None:
    _sysusers(scratch_root)
    user = _passwd(scratch_root)["mycoedge"]
    assert int(user[2]) < 1000, "a system user, not a login user"
    assert user[5] == "/var/lib/mycoedge"
    assert user[6] == "/usr/sbin/nologin"
    groups = _groups(scratch_root)
    assert "mycoedge" in groups["dialout"][3].split(",")
    assert "mycoedge" in groups["tss"][3].split(","), "tss is created when tpm-udev is not there yet"
    assert groups["mycoedge"][2] == user[3]


def test_sysusers_is_idempotent(scratch_root: Path) -> None:
    _sysusers(scratch_root)
    first = (scratch_root / "etc" / "passwd").read_text(), (scratch_root / "etc" / "group").read_text()
    _sysusers(scratch_root)
    assert ((scratch_root / "etc" / "passwd").read_text(), (scratch_root / "etc" / "group").read_text()) == first


def test_tmpfiles_creates_the_directories_with_the_daemons_owner(scratch_root: Path) -> None:
    _sysusers(scratch_root)
    tool = require_tool("systemd-tmpfiles")
    subprocess.run(
        [tool, f"--root={scratch_root}", "--create", str(SYSTEMD_DIR / "mycoedge.tmpfiles")],
        check=True,
        capture_output=True,
        env=quiet_env(),
    )
    uid = int(_passwd(scratch_root)["mycoedge"][2])
    gid = int(_groups(scratch_root)["mycoedge"][2])
    expected = {
        "var/lib/mycoedge": (uid, gid, 0o750),
        "var/lib/mycoedge/backup": (uid, gid, 0o750),
        "run/mycoedge": (uid, gid, 0o750),
        "etc/mycoedge": (0, gid, 0o750),
        "etc/mycoedge/conf.d": (0, gid, 0o750),
    }
    for relative, (owner, group, mode) in expected.items():
        info = os.stat(scratch_root / relative)
        assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (owner, group, mode), relative
