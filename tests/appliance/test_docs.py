"""docs/configuration.md is generated from the schema, is current, and names exactly the schema's keys."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import subprocess
import sys
from types import ModuleType

from daemon import config as schema
from tests.appliance.conftest import REPO

DOCS = REPO / "docs"
REFERENCE = DOCS / "configuration.md"
_SECTION_HEADING = re.compile(r"^## `\[{1,2}([a-z_]+)\]{1,2}`$")
_KEY_ROW = re.compile(r"^\| `([a-z_0-9]+)` \|")


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_reference", DOCS / "gen_config_reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _schema_keys() -> set[str]:
    keys = set()
    for name, cls in [*schema.SECTIONS.items(), *schema.LIST_SECTIONS.items()]:
        keys |= {f"{name}.{f.name}" for f in dataclasses.fields(cls)}
    return keys


def _documented_keys(text: str) -> set[str]:
    """`section.key` for every table row under a `## [section]` or `## [[section]]` heading."""
    keys: set[str] = set()
    section = ""
    for line in text.splitlines():
        heading = _SECTION_HEADING.match(line)
        if heading:
            section = heading.group(1)
            continue
        row = _KEY_ROW.match(line)
        if row:
            assert section, f"a key row outside any section: {line}"
            keys.add(f"{section}.{row.group(1)}")
    return keys


def test_checked_in_reference_is_what_the_generator_writes_now() -> None:
    assert REFERENCE.read_text() == _generator().render(), (
        "docs/configuration.md is stale: run .venv/bin/python docs/gen_config_reference.py"
    )


def test_generator_check_mode_agrees() -> None:
    result = subprocess.run(
        [sys.executable, str(DOCS / "gen_config_reference.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_every_documented_key_is_in_the_schema_and_every_schema_key_is_documented() -> None:
    documented = _documented_keys(REFERENCE.read_text())
    expected = _schema_keys()
    assert documented - expected == set(), "documented but not in daemon/config.py"
    assert expected - documented == set(), "in daemon/config.py but not documented"


def test_the_keys_the_issue_fixed_are_there() -> None:
    documented = _documented_keys(REFERENCE.read_text())
    for key in (
        "node.id",
        "node.state_dir",
        "api.listen",
        "mqtt.host",
        "mqtt.port",
        "mqtt.username",
        "mqtt.password",
        "mqtt.topic_root",
        "devices.kind",
        "devices.port",
    ):
        assert key in documented


def test_role_template_writes_only_schema_keys() -> None:
    """The Ansible template's keys must exist in the schema, or the installed daemon would exit 78."""
    template = (REPO / "ansible/roles/mycoedge/templates/mycoedge.toml.j2").read_text()
    section = ""
    keys: set[str] = set()
    for line in template.splitlines():
        header = re.match(r"^\[{1,2}([a-z_]+)\]{1,2}$", line)
        if header:
            section = header.group(1)
        elif (assignment := re.match(r"^([a-z_]+) = ", line)) and section:
            keys.add(f"{section}.{assignment.group(1)}")
    assert keys
    assert keys <= _schema_keys()
