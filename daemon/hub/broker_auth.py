"""Agents' MQTT credentials provisioned into Mosquitto as a password file and an ACL file, then a reload.

Mosquitto 2.0.11 on Debian 12 re-reads ``password_file`` and ``acl_file`` on SIGHUP (mosquitto.conf(5),
"Configuring Authentication"); the ACL is checked on every publish and delivery, so a narrowed ACL applies
to clients already connected. Each agent may publish only its own ``outbox`` and ``status``, read only its
own ``inbox``, and reach the device topics its capabilities allow: with DEVICE_READ it reads device state,
telemetry, events and results; with DEVICE_COMMAND it publishes commands only on
``devices/<id>/cmd/<its own id>``. The broker should also run with
``use_username_as_clientid true`` so one agent cannot take over another's session by client id.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import secrets
import signal
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from daemon.hub.errors import ProvisioningError

# Mosquitto 2.0's "$7$" password format: PBKDF2-SHA512, 101 iterations, 12-byte salt, 64-byte hash
# (mosquitto_passwd.c, PW_DEFAULT_ITERATIONS / SALT_LEN); checked against mosquitto_passwd's output in tests.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12


def password_hash(password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """A password-file hash Mosquitto 2.0 accepts."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


@dataclass(frozen=True, slots=True)
class BrokerAccount:
    """One agent's MQTT identity as the ACL needs it."""

    username: str
    password_hash: str
    agent_id: str
    capabilities: frozenset[str]


@dataclass(frozen=True, slots=True)
class MosquittoFiles:
    """Where the broker reads its password and ACL files, and how to make it reload them.

    ``pid`` returns the broker's PID (e.g. read from its pid file) for SIGHUP; ``reload`` overrides that
    with any other action (a ``systemctl reload``); with neither, files are written and not signalled.
    ``service_users`` maps a username to a password with full access (the daemon's own broker link).
    """

    password_file: Path
    acl_file: Path
    pid: Callable[[], int | None] | None = None
    reload: Callable[[], None] | None = None
    service_users: Mapping[str, str] = field(default_factory=dict)
    enrolment_password: str | None = None

    @staticmethod
    def pid_from_file(path: Path) -> Callable[[], int | None]:
        def read() -> int | None:
            try:
                return int(path.read_text().strip())
            except (OSError, ValueError):
                return None

        return read


ENROLMENT_USER = "enrolment"
# ``devices/<id>/cmd/result`` carries command results; an agent with this id would write them (the registry
# refuses the id, and the ACL never grants it).
RESULT_LEAF = "result"


def render_acl(accounts: Iterable[BrokerAccount], *, topic_base: str, service_users: Iterable[str]) -> str:
    """The ACL file text (mosquitto.conf(5), "acl_file"): deny by default, one ``user`` block each."""
    lines = ["# Written by the mycoedge hub; edits are overwritten.", ""]
    for name in sorted(service_users):
        lines += [f"user {name}", "topic readwrite #", ""]
    lines += [f"user {ENROLMENT_USER}", f"topic write {topic_base}/agents/register",
              f"topic read {topic_base}/agents/register/reply/+", ""]
    for acc in sorted(accounts, key=lambda a: a.username):
        own = f"{topic_base}/agents/{acc.agent_id}"
        lines += [f"user {acc.username}", f"topic write {own}/outbox", f"topic write {own}/status",
                  f"topic read {own}/inbox"]
        if acc.capabilities & {"HANDOFF_INITIATE", "HANDOFF_RECEIVE"}:
            lines.append(f"topic read {topic_base}/handoffs/+")
        if "DEVICE_READ" in acc.capabilities:
            for leaf in ("state", "telemetry", "events", "sensors/+", "cmd/result"):
                lines.append(f"topic read {topic_base}/devices/+/{leaf}")
            lines.append(f"topic read {topic_base}/status")
        if "DEVICE_COMMAND" in acc.capabilities and acc.agent_id != RESULT_LEAF:
            # Only the command topic ending in the agent's own id: the device side reads the sender from
            # the topic, as the hub reads it from the outbox topic. The bare ``devices/<id>/cmd`` is the
            # node's and the admin's (service users).
            lines.append(f"topic write {topic_base}/devices/+/cmd/{acc.agent_id}")
        lines.append("")
    return "\n".join(lines)


def render_passwords(accounts: Iterable[BrokerAccount], files: MosquittoFiles) -> str:
    lines = [f"{name}:{password_hash(pw)}" for name, pw in sorted(files.service_users.items())]
    if files.enrolment_password:
        lines.append(f"{ENROLMENT_USER}:{password_hash(files.enrolment_password)}")
    lines += [f"{a.username}:{a.password_hash}" for a in sorted(accounts, key=lambda a: a.username)]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)  # the broker reads it through its group
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class BrokerProvisioner:
    """Rewrites both files from the full account list and reloads the broker; one rewrite at a time."""

    def __init__(self, files: MosquittoFiles, *, topic_base: str) -> None:
        self.files = files
        self.topic_base = topic_base
        self._lock = asyncio.Lock()
        self.reloads = 0

    async def apply(self, accounts: Iterable[BrokerAccount]) -> None:
        accounts = list(accounts)
        async with self._lock:
            try:
                await asyncio.to_thread(self._write, accounts)
            except OSError as exc:
                raise ProvisioningError(f"cannot write broker credentials: {exc}") from exc
            self._signal()

    def _write(self, accounts: list[BrokerAccount]) -> None:
        _write_atomic(self.files.password_file, render_passwords(accounts, self.files))
        _write_atomic(self.files.acl_file, render_acl(accounts, topic_base=self.topic_base,
                                                      service_users=self.files.service_users))

    def _signal(self) -> None:
        if self.files.reload is not None:
            self.files.reload()
            self.reloads += 1
            return
        if self.files.pid is None:
            return
        pid = self.files.pid()
        if pid is None:
            raise ProvisioningError("broker PID unknown: credentials written but not reloaded")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGHUP)
            self.reloads += 1
