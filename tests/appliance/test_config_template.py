"""The role's mycoedge.toml template, rendered by Ansible, is accepted by the daemon's own config loader."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from daemon import config as schema
from tests.appliance.conftest import REPO, VENV_BIN

ROLE = REPO / "ansible" / "roles" / "mycoedge"


def _render(tmp_path: Path, extra: dict[str, object]) -> Path:
    playbook_bin = VENV_BIN / "ansible-playbook"
    if not playbook_bin.exists():
        pytest.skip("ansible-core is not installed in the venv")
    (tmp_path / "conf.d").mkdir()
    playbook = tmp_path / "render.yml"
    playbook.write_text(f"""
- name: Render the role's daemon configuration
  hosts: localhost
  connection: local
  gather_facts: false
  vars_files:
    - {ROLE}/defaults/main.yml
    - {ROLE}/vars/main.yml
  tasks:
    - name: Render
      ansible.builtin.template:
        src: {ROLE}/templates/mycoedge.toml.j2
        dest: {tmp_path}/mycoedge.toml
        mode: "0600"
""")
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
    result = subprocess.run(
        [
            str(playbook_bin),
            "-i",
            "localhost,",
            str(playbook),
            "-e",
            "ansible_python_interpreter=/usr/bin/python3",
            "-e",
            json.dumps(extra),
            "-e",
            f"role_path={ROLE}",
            "-e",
            f"playbook_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tmp_path / "mycoedge.toml"


def test_rendered_config_loads_with_every_value_the_inventory_gave(tmp_path: Path) -> None:
    path = _render(
        tmp_path,
        {
            "mycoedge_node_id": "greenhouse-1",
            "mycoedge_api_listen": "127.0.0.1:9000",
            "mycoedge_mqtt_port": 1884,
            # Quotes, a backslash and a non-ASCII letter must survive TOML quoting.
            "mycoedge_mqtt_password": 'pa"ss\\wörd',
            "mycoedge_mqtt_ha_discovery": False,
            "mycoedge_devices": [
                {"kind": "mycobrain", "port": "/dev/mycoedge/F4:12:FA:00:11:22", "name": "bench A"},
                {"kind": "bme688", "port": "/dev/serial/by-id/usb-FTDI_x-if00-port0", "rate_ms": 5000},
                {"kind": "rui3", "port": "/dev/mycoedge/0001", "frequency_hz": 868300000, "duty_cycle_pct": 0.1},
            ],
        },
    )
    loaded = schema.load(path, environ={})
    assert loaded.node.id == "greenhouse-1"
    assert loaded.node.state_dir == Path("/var/lib/mycoedge")
    assert loaded.api.listen == "127.0.0.1:9000"
    assert (loaded.mqtt.host, loaded.mqtt.port, loaded.mqtt.username) == ("127.0.0.1", 1884, "mycoedge")
    assert loaded.mqtt.password == 'pa"ss\\wörd'
    assert loaded.mqtt.topic_root == "mycoedge"
    assert loaded.mqtt.ha_discovery is False
    assert [(d.kind, d.port) for d in loaded.devices] == [
        ("mycobrain", "/dev/mycoedge/F4:12:FA:00:11:22"),
        ("bme688", "/dev/serial/by-id/usb-FTDI_x-if00-port0"),
        ("rui3", "/dev/mycoedge/0001"),
    ]
    assert loaded.devices[0].name == "bench A"
    assert loaded.devices[1].rate_ms == 5000
    assert (loaded.devices[2].frequency_hz, loaded.devices[2].duty_cycle_pct) == (868300000, 0.1)


def test_rendered_defaults_load(tmp_path: Path) -> None:
    loaded = schema.load(_render(tmp_path, {"mycoedge_node_id": "edge-01", "mycoedge_mqtt_password": "x"}), environ={})
    assert loaded.devices == ()
    assert loaded.api.listen == "127.0.0.1:8787"
