"""Build the mycoedge wheel on the Ansible controller, byte-for-byte reproducibly.

Run by the role (delegated to the controller) as: python build_wheel.py SOURCE_DIR OUTPUT_DIR. Prints the
wheel's path. The source is copied first so that setuptools' build/ and *.egg-info never land in the
checkout, and SOURCE_DATE_EPOCH pins the zip timestamps: rebuilding unchanged sources gives the same
bytes, so the copy to the nodes (and the reinstall it triggers) happens only when the code changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# 1980-01-01, the earliest time a zip entry can carry (APPNOTE.TXT 4.4.6, MS-DOS date format).
_ZIP_EPOCH = "315532800"
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache", ".ruff_cache",
    ".pytest_cache", ".hypothesis", "credentials", ".demo",
)


def build(source: Path, output: Path) -> Path:
    """Build the wheel of `source` into `output` (replacing an older one) and return its path."""
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mycoedge-src-") as scratch:
        tree = Path(scratch) / "src"
        shutil.copytree(source, tree, ignore=_NOT_SOURCE, symlinks=True)
        built = Path(scratch) / "wheel"
        env = dict(os.environ, SOURCE_DATE_EPOCH=_ZIP_EPOCH, PIP_DISABLE_PIP_VERSION_CHECK="1")
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(built), str(tree)],
            check=True,
            env=env,
            stdout=sys.stderr,
        )
        (wheel,) = built.glob("mycoedge-*.whl")
        target = output / wheel.name
        if not target.exists() or target.read_bytes() != wheel.read_bytes():
            shutil.copyfile(wheel, target)
    return target


if __name__ == "__main__":
    print(build(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()))
