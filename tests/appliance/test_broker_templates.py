"""The role's broker setup, made by Ansible and served by a real Mosquitto: dynamic security, TLS, agents.

The full role is applied in test_ansible_role.py with TLS off (the node's real /etc is not switched to a
test CA). Here the role's broker template and its dynamic-security module (library/mycoedge_dynsec.py)
run through ansible-playbook itself into a scratch directory, with TLS on; a broker runs that configuration
as a direct child; real clients connect, and a real hub logged in as the role's admin account provisions
agents whose rights the broker enforces.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import tests.hub.conftest as hub_conftest
from daemon.hub.dynsec import DynsecProvisioner
from tests.appliance.conftest import REPO, VENV_BIN
from tests.hub.conftest import BASE, Clock, HubNode
from tests.hub.test_broker_and_messages import _publish_reason

ROLE = REPO / "ansible" / "roles" / "mycoedge"
PASSWORD = "s3cret-for-the-test"
PLUGIN = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")
NOT_AUTHORISED = 0x87  # MQTT 5.0 section 3.4.2.1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_test_ca(directory: Path) -> None:
    """A CA and a server certificate for 127.0.0.1 (RFC 5280 basic constraints, SAN with the IP)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mycoedge test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "server.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


@dataclass(frozen=True, slots=True)
class RenderedBroker:
    directory: Path
    plain_port: int
    tls_port: int


PLAYBOOK = """
- name: The role's broker configuration and its dynamic-security accounts
  hosts: localhost
  connection: local
  gather_facts: false
  vars_files:
    - {role}/defaults/main.yml
    - {role}/vars/main.yml
  tasks:
    - name: Render
      ansible.builtin.template:
        src: "{role}/templates/mosquitto.conf.j2"
        dest: "{out}/mosquitto.conf"
        mode: "0600"
    - name: Accounts
      mycoedge_dynsec:
        path: "{{{{ mycoedge_mosquitto_dynsec_file }}}}"
        owner: root
        group: root
        default_acl_access: "{{{{ mycoedge_dynsec_default_acl_access }}}}"
        admin_username: "{{{{ mycoedge_mqtt_username }}}}"
        admin_password: "{{{{ mycoedge_mqtt_password | trim }}}}"
        site_users: "{{{{ mycoedge_mqtt_extra_users }}}}"
"""


def _play(directory: Path, **overrides: object) -> subprocess.CompletedProcess[str]:
    """Run the role's broker tasks with TLS on into ``directory``; ``overrides`` replace the test's vars."""
    playbook = directory / "broker.yml"
    playbook.write_text(PLAYBOOK.format(role=ROLE, out=directory))
    extra: dict[str, object] = {
        "mycoedge_node_id": "tlsnode",
        "mycoedge_mqtt_password": PASSWORD,
        "mycoedge_mosquitto_tls_enabled": True,
        "mycoedge_mosquitto_tls_listen_address": "127.0.0.1",
        "mycoedge_mosquitto_tls_dir": str(directory / "tls"),
        "mycoedge_mosquitto_dynsec_plugin_path": str(PLUGIN),
        "mycoedge_mosquitto_dynsec_file": str(directory / "dynamic-security.json"),
        "mycoedge_mqtt_extra_users": [
            {"username": "dashboard", "password": "dash-pw", "acl": ["read mycoedge/+/devices/#"]}
        ],
        **overrides,
    }
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}",
               ANSIBLE_LIBRARY=str(ROLE / "library"))
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", str(playbook), "-e",
         "ansible_python_interpreter=/usr/bin/python3", "-e", json.dumps(extra), "-e", f"role_path={ROLE}",
         "-e", f"playbook_dir={directory}"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )


def _changed(result: subprocess.CompletedProcess[str]) -> int:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    recap = [line for line in result.stdout.splitlines() if line.startswith("localhost") and "changed=" in line]
    return int(recap[-1].split("changed=")[1].split()[0])


@pytest.fixture
def rendered(tmp_path: Path) -> RenderedBroker:
    if not (VENV_BIN / "ansible-playbook").exists():
        pytest.skip("ansible-core is not installed in the venv")
    if shutil.which("mosquitto") is None or not PLUGIN.exists():
        pytest.skip("mosquitto 2 with its dynamic-security plugin is not installed")
    (tmp_path / "tls").mkdir()
    _write_test_ca(tmp_path / "tls")
    plain_port, tls_port = _free_port(), _free_port()
    ports = {"mycoedge_mqtt_port": plain_port, "mycoedge_mosquitto_tls_port": tls_port}
    assert _changed(_play(tmp_path, **ports)) == 2  # the configuration and the new dynamic-security file
    assert _changed(_play(tmp_path, **ports)) == 0  # the second run finds everything in place
    (tmp_path / "ports.json").write_text(json.dumps(ports))
    return RenderedBroker(tmp_path, plain_port, tls_port)


class Broker:
    """The rendered configuration run by a real mosquitto, a direct child; ``restart`` re-reads its files."""

    def __init__(self, rendered: RenderedBroker) -> None:
        self.rendered = rendered
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        conf = self.rendered.directory / "run.conf"
        # The files live in a root-only temp dir: keep the broker root instead of dropping to `mosquitto`
        # (ENVIRONMENT.md, "Mosquitto"); on a node the plugin's file is mosquitto's, 0600.
        conf.write_text((self.rendered.directory / "mosquitto.conf").read_text() + "\nuser root\n")
        log = (self.rendered.directory / "mosquitto.log").open("ab")
        self.process = subprocess.Popen(
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.rendered.tls_port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError((self.rendered.directory / "mosquitto.log").read_text())

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def broker(rendered: RenderedBroker) -> Iterator[Broker]:
    running = Broker(rendered)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def _mosquitto(tool: str, broker: RenderedBroker, *, tls: bool, user: str | None, password: str | None,
               args: list[str]) -> subprocess.CompletedProcess[str]:
    port = broker.tls_port if tls else broker.plain_port
    cmd = [tool, "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5", *args]
    if user is not None:
        cmd += ["-u", user, "-P", password or ""]
    if tls:
        cmd += ["--cafile", str(broker.directory / "tls" / "ca.crt")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)


def _publish(broker: RenderedBroker, *, tls: bool, user: str | None, password: str | None,
             topic: str = "mycoedge/tlsnode/status") -> subprocess.CompletedProcess[str]:
    return _mosquitto("mosquitto_pub", broker, tls=tls, user=user, password=password,
                      args=["-t", topic, "-m", "online", "-q", "1"])


def test_the_daemons_account_connects_over_tls_and_on_loopback(broker: Broker) -> None:
    assert _publish(broker.rendered, tls=True, user="mycoedge", password=PASSWORD).returncode == 0
    assert _publish(broker.rendered, tls=False, user="mycoedge", password=PASSWORD).returncode == 0


def test_wrong_password_and_anonymous_clients_are_refused(broker: Broker) -> None:
    wrong = _publish(broker.rendered, tls=True, user="mycoedge", password="wrong")
    assert wrong.returncode != 0
    said = (wrong.stderr + wrong.stdout).lower()
    assert "not authorised" in said or "not authorized" in said
    assert _publish(broker.rendered, tls=False, user=None, password=None).returncode != 0


def test_the_plugin_file_holds_hashes_not_passwords(rendered: RenderedBroker) -> None:
    path = rendered.directory / "dynamic-security.json"
    text = path.read_text()
    assert PASSWORD not in text and "dash-pw" not in text
    assert path.stat().st_mode & 0o777 == 0o600
    data = json.loads(text)
    assert data["defaultACLAccess"] == {"publishClientSend": False, "publishClientReceive": False,
                                        "subscribe": False, "unsubscribe": True}
    roles = {c["username"]: {r["rolename"] for r in c["roles"]} for c in data["clients"]}
    assert roles == {"mycoedge": {"mycoedge-dynsec-admin", "mycoedge-service"},
                     "dashboard": {"mycoedge-site-dashboard"}}


def test_a_site_user_reads_what_its_acl_allows_and_nothing_else(broker: Broker) -> None:
    rendered = broker.rendered
    sub = subprocess.Popen(  # mosquitto_sub -C 1: exits after the first message it receives
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(rendered.plain_port), "-V", "mqttv5", "-u", "dashboard",
         "-P", "dash-pw", "-t", "mycoedge/+/devices/#", "-t", "mycoedge/tlsnode/agents/#", "-C", "1", "-v",
         "-W", "10"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # mosquitto_sub has subscribed
        # A message the dashboard may not read first, then one it may: only the second reaches it.
        assert _publish(rendered, tls=False, user="mycoedge", password=PASSWORD,
                        topic="mycoedge/tlsnode/agents/a1/inbox").returncode == 0
        assert _publish(rendered, tls=False, user="mycoedge", password=PASSWORD,
                        topic="mycoedge/tlsnode/devices/b1/state").returncode == 0
        out, err = sub.communicate(timeout=15)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    assert out.split() == ["mycoedge/tlsnode/devices/b1/state", "online"], err


def test_a_changed_password_or_removed_user_applies_and_leaves_the_daemons_entries(broker: Broker) -> None:
    rendered = broker.rendered
    ports = json.loads((rendered.directory / "ports.json").read_text())
    path = rendered.directory / "dynamic-security.json"
    # What the daemon adds at run time (an agent's client and role) must survive the role's runs.
    data = json.loads(path.read_text())
    data["clients"].append({"username": "agent-1", "textName": "mycoedge agent-agent-1", "roles": [
        {"rolename": "agent-agent-1"}], "password": "x", "salt": "eA==", "iterations": 101})
    data["roles"].append({"rolename": "agent-agent-1", "acls": []})
    path.write_text(json.dumps(data))
    broker.stop()
    assert _changed(_play(rendered.directory, **ports, mycoedge_mqtt_password="new-" + PASSWORD,
                          mycoedge_mqtt_extra_users=[])) == 1
    broker.start()
    assert _publish(rendered, tls=False, user="mycoedge", password="new-" + PASSWORD).returncode == 0
    assert _publish(rendered, tls=False, user="mycoedge", password=PASSWORD).returncode != 0
    assert _publish(rendered, tls=False, user="dashboard", password="dash-pw").returncode != 0
    after = json.loads(path.read_text())
    assert "agent-1" in {c["username"] for c in after["clients"]}
    assert "agent-agent-1" in {r["rolename"] for r in after["roles"]}
    assert "mycoedge-site-dashboard" not in {r["rolename"] for r in after["roles"]}


@pytest.fixture
async def hub_on_role_broker(broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                             ) -> AsyncIterator[HubNode]:
    """The hub in dynsec mode, logged in with the account the role made (a dynsec admin)."""

    class OnPort:  # HubNode reads the broker's port from ``broker_proc.port``
        port = broker.rendered.plain_port

    # HubNode logs its link in as tests.hub.conftest's service user: here, the role's daemon account.
    monkeypatch.setattr(hub_conftest, "SERVICE_USER", "mycoedge")
    monkeypatch.setattr(hub_conftest, "SERVICE_PASSWORD", PASSWORD)
    (tmp_path / "hub").mkdir()
    node = HubNode(tmp_path / "hub", OnPort(), None, Clock())  # type: ignore[arg-type]
    node.hub_kwargs = {"broker_dynsec": True, "broker_service_user": "mycoedge"}
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


async def test_the_hub_provisions_agents_through_the_roles_admin_account(hub_on_role_broker: HubNode) -> None:
    node = hub_on_role_broker
    assert isinstance(node.hub.provisioner, DynsecProvisioner)
    async with asyncio.timeout(10):
        await node.hub.provisioner.reconciled.wait()
    op = await node.register("op-1", type="HUMAN")
    reader = await node.register("reader-1", type="CLAUDE_CODE")  # DEVICE_READ, no DEVICE_COMMAND
    port = node.broker_proc.port
    dev = f"{BASE}/devices/b1"
    assert await asyncio.to_thread(_publish_reason, port, op, f"{dev}/cmd/op-1") < 0x80
    for topic in (f"{dev}/cmd", f"{dev}/cmd/reader-1", f"{BASE}/agents/reader-1/outbox"):
        assert await asyncio.to_thread(_publish_reason, port, op, topic) == NOT_AUTHORISED, topic
    for topic in (f"{dev}/cmd", f"{dev}/cmd/reader-1"):
        assert await asyncio.to_thread(_publish_reason, port, reader, topic) == NOT_AUTHORISED, topic
    assert await asyncio.to_thread(_publish_reason, port, reader, f"{BASE}/agents/reader-1/outbox") < 0x80
