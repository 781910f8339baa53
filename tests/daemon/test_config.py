"""Configuration: layering, validation naming the key, and the exit code systemd relies on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemon import config as config_mod
from daemon.errors import ConfigError

EX_CONFIG = 78


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def _no_system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine may have a real /etc/mycoedge (the Ansible test installs one); these tests must not read it."""
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG_PATH", tmp_path / "etc" / "mycoedge.toml")


def test_embedded_defaults_need_no_file(tmp_path: Path) -> None:
    cfg = config_mod.load(None, environ={})
    assert cfg.api.listen == "127.0.0.1:8787"
    assert cfg.mqtt.topic_root == "mycoedge"
    assert cfg.node.state_dir == Path("/var/lib/mycoedge")
    assert cfg.devices == ()


def test_dropins_override_the_main_file_in_name_order(tmp_path: Path) -> None:
    main = _write(tmp_path / "mycoedge.toml", '[node]\nid = "a"\n[mqtt]\nport = 1884\n')
    _write(tmp_path / "conf.d" / "20-late.toml", '[node]\nid = "c"\n')
    _write(tmp_path / "conf.d" / "10-early.toml", '[node]\nid = "b"\n[mqtt]\ntopic_root = "x"\n')
    cfg = config_mod.load(main, environ={})
    assert cfg.node.id == "c"
    assert cfg.mqtt.port == 1884
    assert cfg.mqtt.topic_root == "x"


def test_environment_overrides_files_with_typed_values(tmp_path: Path) -> None:
    main = _write(tmp_path / "mycoedge.toml", "[mqtt]\nport = 1884\n")
    cfg = config_mod.load(main, environ={
        "MYCOEDGE_MQTT_PORT": "2000", "MYCOEDGE_MQTT_ENABLED": "false", "MYCOEDGE_NODE_STATE_DIR": "/tmp/s",
        "MYCOEDGE_API_LISTEN": "127.0.0.1:9999", "MYCOEDGE_SOMETHINGELSE": "ignored",
    })
    assert cfg.mqtt.port == 2000
    assert cfg.mqtt.enabled is False
    assert cfg.node.state_dir == Path("/tmp/s")
    assert cfg.api.listen == "127.0.0.1:9999"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[mqtt]\nprot = 1883\n", "mqtt.prot"),
        ("[mqtt]\nport = \"1883\"\n", "mqtt.port"),
        ("[mqtt]\nport = 70000\n", "mqtt.port"),
        ("[mqtt]\nport = 0\n", "mqtt.port"),
        ("[api]\nlisten = \"127.0.0.1:99999\"\n", "api.listen"),
        ("[api]\nlisten = \"nonsense\"\n", "api.listen"),
        ("[nodes]\nid = \"x\"\n", "nodes"),
        ("[[devices]]\nkind = \"toaster\"\nport = \"/dev/ttyACM0\"\n", "devices[0].kind"),
        ("[[devices]]\nkind = \"mycobrain\"\n", "devices[0].port"),
        ("[[devices]]\nkind = \"mycobrain\"\nport = \"/dev/x\"\nspeed = 3\n", "devices[0].speed"),
        ("[mqtt]\nenabled = \"yes\"\n", "mqtt.enabled"),
        ("[logging]\nlevel = \"LOUD\"\n", "logging.level"),
    ],
)
def test_invalid_values_are_refused_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = _write(tmp_path / "mycoedge.toml", text)
    with pytest.raises(ConfigError) as caught:
        config_mod.load(path, environ={})
    assert key in [k for k, _ in caught.value.problems]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path / "mycoedge.toml", "[mqtt]\nport = -1\nbogus = 1\n[api]\nlisten = \"x\"\n")
    with pytest.raises(ConfigError) as caught:
        config_mod.load(path, environ={})
    assert {k for k, _ in caught.value.problems} == {"mqtt.port", "mqtt.bogus", "api.listen"}


def test_bad_env_value_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        config_mod.load(None, environ={"MYCOEDGE_MQTT_PORT": "abc"})
    assert caught.value.problems[0][0] == "mqtt.port"


def test_an_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        config_mod.load(tmp_path / "absent.toml", environ={})


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", *args], capture_output=True, text=True, timeout=60,
                          check=False, env={"PATH": "/usr/bin:/bin"})


def test_config_check_prints_the_merged_config_with_secrets_masked(tmp_path: Path) -> None:
    path = _write(tmp_path / "mycoedge.toml", '[mqtt]\npassword = "hunter2"\n[[devices]]\nkind = "mycobrain"\n'
                  'port = "/dev/ttyACM0"\n')
    result = _cli("config", "check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    merged = json.loads(result.stdout)
    assert merged["mqtt"]["password"] == "***"
    assert merged["devices"][0]["kind"] == "mycobrain"
    assert "hunter2" not in result.stdout


@pytest.mark.parametrize("verb", [("config", "check"), ("run",)])
def test_invalid_config_exits_78_naming_the_key(tmp_path: Path, verb: tuple[str, ...]) -> None:
    path = _write(tmp_path / "mycoedge.toml", "[mqtt]\nport = 123456\n")
    result = _cli(*verb, "--config", str(path))
    assert result.returncode == EX_CONFIG
    assert "mqtt.port" in result.stderr
