"""Fixtures for the appliance tests: the repository's unit, sysusers, tmpfiles and udev files."""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = REPO / "systemd"
UNIT = SYSTEMD_DIR / "mycoedge.service"
VENV_BIN = REPO / ".venv" / "bin"

_EXEC_START = re.compile(r"^ExecStart=(\S+)(.*)$", re.MULTILINE)


def require_tool(name: str) -> str:
    """The absolute path of a system tool, or skip: these tests check files with the real systemd tools."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an executable that exists here (systemd-analyze checks it).

    The venv's own `mycoedge` console script when it is installed, else a one-line shell script: the unit
    under test is otherwise byte-for-byte the repository's.
    """
    text = UNIT.read_text()
    match = _EXEC_START.search(text)
    assert match, "the unit has no ExecStart="
    exe = VENV_BIN / "mycoedge"
    if not exe.exists():
        exe = tmp_path / "mycoedge"
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    target = tmp_path / "unit" / "mycoedge.service"
    target.parent.mkdir()
    target.write_text(text[: match.start(1)] + str(exe) + text[match.end(1) :])
    return target


def quiet_env() -> dict[str, str]:
    """Environment for systemd tools: no pager, no colours, no locale-dependent output."""
    env = dict(os.environ)
    env.update({"SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "LC_ALL": "C.UTF-8"})
    return env
