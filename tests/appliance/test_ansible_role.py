"""The Ansible role: lint-clean, applied for real to this machine twice, and the installed daemon runs.

CI runs this as root on a throwaway Debian 12 machine, which is what the role is for: it writes to the
real /etc, /opt and /var. Service management is off (PID 1 is not systemd here), so the test then plays
systemd's part itself: it starts the installed broker configuration and the installed unit's ExecStart
line as the unit's user, with the unit's notify socket and watchdog, and checks the daemon's side of
that contract.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.appliance.conftest import REPO, SYSTEMD_DIR, VENV_BIN
from tests.hub.test_broker_and_messages import _publish_reason

# The first test that uses the role pays for two applies (the first one installs the venv): more than the
# suite's default per-test timeout, well under the 3 minutes that would make it a `slow` test.
pytestmark = pytest.mark.timeout(600)

ANSIBLE_DIR = REPO / "ansible"
INSTALLED_UNIT = Path("/etc/systemd/system/mycoedge.service")
INSTALLED_CONFIG = Path("/etc/mycoedge/mycoedge.toml")
INSTALLED_BROKER_CONF = Path("/etc/mosquitto/conf.d/mycoedge.conf")
INSTALLED_DYNSEC = Path("/var/lib/mosquitto/dynamic-security.json")
_RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)
_NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "credentials",
    ".demo",
)


@dataclass(frozen=True, slots=True)
class Apply:
    returncode: int
    output: str
    recap: dict[str, int]


@dataclass(frozen=True, slots=True)
class Applied:
    first: Apply
    second: Apply
    workdir: Path
    source: Path


def _tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env.update({"ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg")})
    env.pop("PYTHONPATH", None)
    return env


def _require_appliance_host() -> None:
    if os.geteuid() != 0:
        pytest.skip("the role is applied for real and needs root (CI runs it on a throwaway machine)")
    for needed in ("/usr/bin/python3", "/usr/bin/apt-get", "/usr/bin/systemd-sysusers"):
        if not Path(needed).exists():
            pytest.skip(f"not a Debian appliance host: {needed} is missing")
    if not (VENV_BIN / "ansible-playbook").exists():
        pytest.skip("ansible-core is not installed in the venv (pip install ansible-core ansible-lint)")


def _apply(workdir: Path, source: Path, *extra: str) -> Apply:
    inventory = workdir / "inventory.ini"
    result = subprocess.run(
        [
            str(VENV_BIN / "ansible-playbook"),
            "-i",
            str(inventory),
            str(ANSIBLE_DIR / "site.yml"),
            "-e",
            "ansible_python_interpreter=/usr/bin/python3",
            "-e",
            "mycoedge_manage_services=false",
            "-e",
            f"mycoedge_source_dir={source}",
            "-e",
            f"mycoedge_credentials_dir={workdir / 'credentials'}",
            "-e",
            f"mycoedge_wheel_build_dir={workdir / 'wheel'}",
            *extra,
        ],
        cwd=ANSIBLE_DIR,
        env=_tool_env(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    output = result.stdout + result.stderr
    match = _RECAP.search(result.stdout)
    # No recap line for localhost means the play matched no host: that is a failure, not "no change".
    assert match and match.group("host") == "localhost", output[-4000:]
    recap = {k: int(v) for k, v in match.groupdict().items() if k != "host"}
    return Apply(result.returncode, output, recap)


@pytest.fixture(scope="module")
def applied() -> Iterator[Applied]:
    """Apply the role twice from one snapshot of the checkout (others may edit the tree meanwhile).

    The work directory is not under pytest's basetemp: concurrent pytest sessions prune old basetemps,
    and losing the inventory or the generated credentials between the two runs would fake a change.
    """
    _require_appliance_host()
    workdir = Path(tempfile.mkdtemp(prefix="mycoedge-ansible-"))
    try:
        source = workdir / "source"
        shutil.copytree(REPO, source, ignore=_NOT_SOURCE, symlinks=True)
        (workdir / "inventory.ini").write_text("[mycoedge]\nlocalhost ansible_connection=local ansible_become=false\n")
        first = _apply(workdir, source)
        second = _apply(workdir, source) if first.returncode == 0 else first
        yield Applied(first, second, workdir, source)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_role_passes_ansible_lint_production_profile() -> None:
    lint = VENV_BIN / "ansible-lint"
    if not lint.exists():
        pytest.skip("ansible-lint is not installed in the venv")
    result = subprocess.run(
        [str(lint), "--offline", "--profile", "production", "--nocolor"],
        cwd=ANSIBLE_DIR,
        env=_tool_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_first_apply_succeeds(applied: Applied) -> None:
    first = applied.first
    assert first.returncode == 0, first.output[-6000:]
    assert first.recap["failed"] == 0
    assert first.recap["unreachable"] == 0


def test_second_apply_changes_nothing(applied: Applied) -> None:
    second = applied.second
    assert second.returncode == 0, second.output[-6000:]
    assert second.recap["changed"] == 0, f"changed on the second run: {_changed_tasks(second.output)}"


def test_a_config_change_notifies_only_the_daemons_restart(applied: Applied) -> None:
    """--check with another API address: one template would change, and only mycoedge's restart is due."""
    assert applied.first.returncode == 0
    dry = _apply(applied.workdir, applied.source, "--check", "-e", "mycoedge_api_listen=127.0.0.1:9999")
    assert dry.returncode == 0, dry.output[-6000:]
    assert _changed_tasks(dry.output) == ["mycoedge : Write the main configuration file"]
    handlers = [line for line in dry.output.splitlines() if line.startswith("RUNNING HANDLER")]
    assert [h.split("[", 1)[1].rsplit("]", 1)[0] for h in handlers] == ["mycoedge : Restart mycoedge"]
    assert 'listen = "127.0.0.1:8787"' in INSTALLED_CONFIG.read_text(), "check mode must not write"


def _changed_tasks(output: str) -> list[str]:
    """The names of the tasks and handlers that reported a change, from ansible-playbook's output."""
    changed: list[str] = []
    task = ""
    for line in output.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed:"):
            changed.append(task)
    return changed


def test_installed_files_match_the_repository_and_keep_secrets_private(applied: Applied) -> None:
    assert applied.first.returncode == 0
    assert INSTALLED_UNIT.read_text() == (SYSTEMD_DIR / "mycoedge.service").read_text()
    assert Path("/etc/udev/rules.d/99-mycoedge.rules").read_text() == (SYSTEMD_DIR / "99-mycoedge.rules").read_text()
    user = pwd.getpwnam("mycoedge")
    groups = {g: set(members) for g, members in _group_members().items()}
    assert "mycoedge" in groups["dialout"]
    assert "mycoedge" in groups["tss"]
    config = INSTALLED_CONFIG.stat()
    # The config holds the broker password: readable by root and the daemon's group only.
    assert (config.st_uid, config.st_gid, config.st_mode & 0o777) == (0, user.pw_gid, 0o640)
    state = Path("/var/lib/mycoedge").stat()
    assert (state.st_uid, state.st_mode & 0o777) == (user.pw_uid, 0o750)
    # Broker accounts are in the dynamic-security plugin's file (the broker's own, 0600), as PBKDF2-SHA512
    # hashes; the password and ACL files of the file-based way are gone, and the daemon provisions agents
    # through the plugin ([hub] mosquitto_dynsec).
    dynsec = INSTALLED_DYNSEC.stat()
    mosquitto = pwd.getpwnam("mosquitto")
    assert (dynsec.st_uid, dynsec.st_mode & 0o777) == (mosquitto.pw_uid, 0o600)
    password = re.search(r'^password = "([^"]+)"$', INSTALLED_CONFIG.read_text(), flags=re.MULTILINE)
    assert password and password.group(1) not in INSTALLED_DYNSEC.read_text()
    daemon_client = {c["username"]: c for c in json.loads(INSTALLED_DYNSEC.read_text())["clients"]}["mycoedge"]
    assert {"mycoedge-dynsec-admin", "mycoedge-service"} <= {r["rolename"] for r in daemon_client["roles"]}
    assert re.search(r"^\[hub\]\nmosquitto_dynsec = true$", INSTALLED_CONFIG.read_text(), flags=re.MULTILINE)
    assert "plugin_opt_config_file /var/lib/mosquitto/dynamic-security.json" in INSTALLED_BROKER_CONF.read_text()
    for gone in ("mycoedge.passwd", "mycoedge.passwd.sha256", "mycoedge.acl"):
        assert not (Path("/etc/mosquitto") / gone).exists()


def _group_members() -> dict[str, list[str]]:
    members: dict[str, list[str]] = {}
    for line in Path("/etc/group").read_text().splitlines():
        name, _, _, users = line.split(":")
        members[name] = [u for u in users.split(",") if u]
    return members


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _stop(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@pytest.fixture
def installed_broker(applied: Applied, tmp_path: Path) -> Iterator[int]:
    """The installed Mosquitto configuration (auth, ACL) on a free loopback port, as a direct child."""
    assert applied.first.returncode == 0
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto is not installed")
    port = _free_port()
    text = INSTALLED_BROKER_CONF.read_text()
    text, count = re.subn(r"^listener \d+ 127\.0\.0\.1$", f"listener {port} 127.0.0.1", text, flags=re.MULTILINE)
    assert count == 1, "the installed broker config has no loopback listener"
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(text)
    conf.chmod(0o644)
    tmp_path.chmod(0o755)
    log = (tmp_path / "mosquitto.log").open("wb")
    broker = subprocess.Popen(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        assert _wait_for_port(port, 10.0), (tmp_path / "mosquitto.log").read_text()
        yield port
    finally:
        _stop(broker)
        log.close()


@dataclass
class NotifySocket:
    """A stand-in for systemd's notify socket: what the daemon sends with sd_notify(3)."""

    path: Path
    sock: socket.socket

    def messages(self, until: str, timeout_s: float) -> list[str]:
        """Every datagram until one contains the line `until` (or the timeout)."""
        received: list[str] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            received.append(data.decode())
            if until in data.decode().splitlines():
                break
        return received


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # Outside the root-only pytest temp tree: the daemon runs as the unprivileged mycoedge user.
    directory = Path(tempfile.mkdtemp(prefix="mycoedge-notify-"))
    directory.chmod(0o755)
    path = directory / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    path.chmod(0o666)
    try:
        yield NotifySocket(path, sock)
    finally:
        sock.close()
        shutil.rmtree(directory)


def _unit_value(key: str) -> str:
    values: list[str] = re.findall(rf"^{key}=(.*)$", INSTALLED_UNIT.read_text(), flags=re.MULTILINE)
    assert len(values) == 1, key
    return values[0].strip()


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|min|ms)?", value)
    assert match, value
    return float(match.group(1)) * {"s": 1.0, None: 1.0, "min": 60.0, "ms": 0.001}[match.group(2)]


def _service_env(user: pwd.struct_passwd, **extra: str) -> dict[str, str]:
    """The environment systemd gives the unit (systemd.exec(5), "Environment variables in spawned processes")."""
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": user.pw_dir,
        "USER": user.pw_name,
        "LOGNAME": user.pw_name,
        "SHELL": user.pw_shell,
        "STATE_DIRECTORY": "/var/lib/mycoedge",
        "RUNTIME_DIRECTORY": "/run/mycoedge",
        "CONFIGURATION_DIRECTORY": "/etc/mycoedge",
        **extra,
    }


def _exec_start() -> list[str]:
    argv = shlex.split(_unit_value("ExecStart"))
    argv[0] = argv[0].lstrip("-@:+!")  # systemd's ExecStart= prefixes, should the unit ever use one
    return argv


def _spawn_as_service_user(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    groups = _unit_value("SupplementaryGroups").split()
    with log.open("wb") as out:
        return subprocess.Popen(
            argv,
            env=env,
            user=_unit_value("User"),
            group=_unit_value("Group"),
            extra_groups=groups,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd="/",
        )


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def fresh_state(applied: Applied) -> Iterator[tuple[Path, Path]]:
    """An empty state and runtime directory owned by the service user.

    The installed layout of /var/lib/mycoedge is checked above; the daemon itself starts on empty
    directories so that a database left by an earlier build on a reused machine cannot decide the test.
    """
    assert applied.first.returncode == 0
    user = pwd.getpwnam(_unit_value("User"))
    base = Path(tempfile.mkdtemp(prefix="mycoedge-state-"))
    base.chmod(0o755)
    state, runtime = base / "state", base / "run"
    for directory in (state, runtime):
        directory.mkdir(mode=0o750)
        os.chown(directory, user.pw_uid, user.pw_gid)
    try:
        yield state, runtime
    finally:
        shutil.rmtree(base)


def test_installed_daemon_runs_the_notify_contract_and_answers_readyz(
    installed_broker: int, notify_socket: NotifySocket, fresh_state: tuple[Path, Path], tmp_path: Path
) -> None:
    user = pwd.getpwnam(_unit_value("User"))
    state, runtime = fresh_state
    api_port = _free_port()
    env = _service_env(
        user,
        NOTIFY_SOCKET=str(notify_socket.path),
        # A short watchdog so the test sees pings; the unit's own WatchdogSec is checked below.
        WATCHDOG_USEC="1000000",
        MYCOEDGE_API_LISTEN=f"127.0.0.1:{api_port}",
        MYCOEDGE_MQTT_PORT=str(installed_broker),
        MYCOEDGE_NODE_STATE_DIR=str(state),
        MYCOEDGE_NODE_RUNTIME_DIR=str(runtime),
        STATE_DIRECTORY=str(state),
        RUNTIME_DIRECTORY=str(runtime),
    )
    assert _seconds(_unit_value("WatchdogSec")) >= 10
    log = tmp_path / "daemon.log"
    daemon = _spawn_as_service_user(_exec_start(), env, log)
    try:
        start_limit = _seconds(_unit_value("TimeoutStartSec"))
        before_ready = notify_socket.messages(until="READY=1", timeout_s=min(start_limit, 60.0))
        assert any("READY=1" in m.splitlines() for m in before_ready), log.read_text()[-4000:]
        status, body = _get(f"http://127.0.0.1:{api_port}/readyz")
        assert status == 200, body
        assert json.loads(body)["status"] == "ready"
        _an_agent_registered_over_http_gets_its_broker_rights(api_port, installed_broker, state)
        pings = notify_socket.messages(until="WATCHDOG=1", timeout_s=3.0)
        assert any("WATCHDOG=1" in m.splitlines() for m in pings)
        daemon.send_signal(signal.SIGTERM)
        stopping = notify_socket.messages(until="STOPPING=1", timeout_s=5.0)
        assert any("STOPPING=1" in m.splitlines() for m in stopping)
        returncode = daemon.wait(timeout=_seconds(_unit_value("TimeoutStopSec")))
        assert returncode == 0, log.read_text()[-4000:]
        # It connected with the installed password (no anonymous access) as the plugin's admin, and its hub
        # provisioned through the plugin without a complaint.
        text = log.read_text()
        assert "mqtt connected" in text
        assert "dynsec reconcile after connect failed" not in text, text[-4000:]
    finally:
        _stop(daemon)


def _an_agent_registered_over_http_gets_its_broker_rights(api_port: int, broker_port: int, state: Path) -> None:
    """The installed daemon, logged in as the role's dynsec admin, provisions an agent in the plugin."""
    token = (state / "admin.token").read_text().strip()
    request = urllib.request.Request(
        f"http://127.0.0.1:{api_port}/v1/agents", method="POST",
        data=json.dumps({"id": "appliance-op", "type": "HUMAN", "owner": "ci"}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        mqtt = json.loads(response.read())["credentials"]["mqtt"]
    node_id = re.search(r'^id = "([^"]+)"$', INSTALLED_CONFIG.read_text(), flags=re.MULTILINE)
    assert node_id
    base, user = f"mycoedge/{node_id.group(1)}", mqtt["username"]
    creds = {"credentials": {"mqtt": mqtt}}
    # PUBACK reason codes (MQTT 5.0 section 3.4.2.1): below 0x80 accepted, 0x87 "Not authorized".
    assert _publish_reason(broker_port, creds, f"{base}/agents/{user}/outbox") < 0x80
    assert _publish_reason(broker_port, creds, f"{base}/devices/b1/cmd/{user}") < 0x80
    assert _publish_reason(broker_port, creds, f"{base}/devices/b1/cmd") == 0x87
    assert _publish_reason(broker_port, creds, f"{base}/agents/someone-else/outbox") == 0x87


def test_installed_daemon_refuses_an_invalid_config_with_the_no_restart_status(
    applied: Applied, tmp_path: Path
) -> None:
    assert applied.first.returncode == 0
    user = pwd.getpwnam(_unit_value("User"))
    bad = Path(tempfile.mkdtemp(prefix="mycoedge-badconf-"))
    try:
        bad.chmod(0o755)
        (bad / "mycoedge.toml").write_text('[mqtt]\nport = "not a port"\n')
        (bad / "mycoedge.toml").chmod(0o644)
        argv = _exec_start()
        argv[argv.index("--config") + 1] = str(bad / "mycoedge.toml")
        log = tmp_path / "daemon.log"
        daemon = _spawn_as_service_user(argv, _service_env(user), log)
        returncode = daemon.wait(timeout=30)
    finally:
        shutil.rmtree(bad)
    assert returncode == int(_unit_value("RestartPreventExitStatus")), log.read_text()
    assert "mqtt.port" in log.read_text()
