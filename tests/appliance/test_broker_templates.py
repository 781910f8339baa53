"""The role's Mosquitto templates, rendered by Ansible and served by a real Mosquitto: auth, ACL and TLS.

The full role is applied in test_ansible_role.py with TLS off (the node's real /etc is not switched to a
test CA). Here the same templates are rendered with TLS on into a scratch directory by ansible-playbook
itself, then a broker runs that configuration as a direct child and real clients connect to it.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.appliance.conftest import REPO, VENV_BIN

ROLE = REPO / "ansible" / "roles" / "mycoedge"
PASSWORD = "s3cret-for-the-test"


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


@pytest.fixture
def rendered(tmp_path: Path) -> RenderedBroker:
    playbook_bin = VENV_BIN / "ansible-playbook"
    if not playbook_bin.exists():
        pytest.skip("ansible-core is not installed in the venv")
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto is not installed")
    (tmp_path / "tls").mkdir()
    _write_test_ca(tmp_path / "tls")
    plain_port, tls_port = _free_port(), _free_port()
    playbook = tmp_path / "render.yml"
    playbook.write_text(f"""
- name: Render the role's broker templates
  hosts: localhost
  connection: local
  gather_facts: false
  vars_files:
    - {ROLE}/defaults/main.yml
    - {ROLE}/vars/main.yml
  tasks:
    - name: Render
      ansible.builtin.template:
        src: "{ROLE}/templates/{{{{ item.src }}}}"
        dest: "{tmp_path}/{{{{ item.dest }}}}"
        mode: "0600"
      loop:
        - {{src: mosquitto.conf.j2, dest: mosquitto.conf}}
        - {{src: mosquitto.acl.j2, dest: mosquitto.acl}}
        - {{src: mosquitto.passwd.j2, dest: mosquitto.passwd}}
""")
    extra = {
        "mycoedge_node_id": "tlsnode",
        "mycoedge_mqtt_port": plain_port,
        "mycoedge_mqtt_password": PASSWORD,
        "mycoedge_mosquitto_tls_enabled": True,
        "mycoedge_mosquitto_tls_listen_address": "127.0.0.1",
        "mycoedge_mosquitto_tls_port": tls_port,
        "mycoedge_mosquitto_tls_dir": str(tmp_path / "tls"),
        "mycoedge_mosquitto_password_file": str(tmp_path / "mosquitto.passwd"),
        "mycoedge_mosquitto_acl_file": str(tmp_path / "mosquitto.acl"),
        "mycoedge_mqtt_extra_users": [
            {"username": "dashboard", "password": "dash-pw", "acl": ["read mycoedge/+/devices/#"]}
        ],
    }
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
    subprocess.run(["mosquitto_passwd", "-U", str(tmp_path / "mosquitto.passwd")], check=True)
    return RenderedBroker(tmp_path, plain_port, tls_port)


@pytest.fixture
def broker(rendered: RenderedBroker) -> Iterator[RenderedBroker]:
    conf = rendered.directory / "mosquitto.conf"
    # The files live in a root-only temp dir: keep the broker root instead of dropping to `mosquitto`
    # (ENVIRONMENT.md, "Mosquitto"); on a node they are root:mosquitto 0640.
    conf.write_text(conf.read_text() + "\nuser root\n")
    log = (rendered.directory / "mosquitto.log").open("wb")
    process = subprocess.Popen(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", rendered.tls_port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        yield rendered
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _publish(broker: RenderedBroker, *, tls: bool, user: str, password: str) -> subprocess.CompletedProcess[str]:
    port = broker.tls_port if tls else broker.plain_port
    args = [
        "mosquitto_pub",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-u",
        user,
        "-P",
        password,
        "-V",
        "mqttv5",
        "-t",
        "mycoedge/tlsnode/status",
        "-m",
        "online",
        "-q",
        "1",
    ]
    if tls:
        args += ["--cafile", str(broker.directory / "tls" / "ca.crt")]
    return subprocess.run(args, capture_output=True, text=True, timeout=20, check=False)


def test_the_daemons_account_connects_over_tls_and_on_loopback(broker: RenderedBroker) -> None:
    assert _publish(broker, tls=True, user="mycoedge", password=PASSWORD).returncode == 0
    assert _publish(broker, tls=False, user="mycoedge", password=PASSWORD).returncode == 0


def test_wrong_password_and_anonymous_clients_are_refused(broker: RenderedBroker) -> None:
    wrong = _publish(broker, tls=True, user="mycoedge", password="wrong")
    assert wrong.returncode != 0
    assert (
        "not authorised" in (wrong.stderr + wrong.stdout).lower()
        or "not authorized" in (wrong.stderr + wrong.stdout).lower()
    )
    anonymous = subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.plain_port), "-t", "x", "-m", "y"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert anonymous.returncode != 0


def test_extra_users_and_acl_are_rendered(broker: RenderedBroker) -> None:
    acl = (broker.directory / "mosquitto.acl").read_text()
    assert "user mycoedge\ntopic readwrite mycoedge/tlsnode/#" in acl
    assert "user dashboard\ntopic read mycoedge/+/devices/#" in acl
    assert "pattern write mycoedge/tlsnode/agents/%u/outbox" in acl
    passwd = (broker.directory / "mosquitto.passwd").read_text()
    assert "dash-pw" not in passwd and PASSWORD not in passwd
    assert _publish(broker, tls=True, user="dashboard", password="dash-pw").returncode == 0
