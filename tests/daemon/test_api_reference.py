"""docs/http-api.md is rendered from the OpenAPI document a node serves; it must be current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_http_api_reference_is_current() -> None:
    result = subprocess.run([sys.executable, str(REPO / "docs" / "gen_api_reference.py"), "--check"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
