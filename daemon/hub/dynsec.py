"""Agents' MQTT credentials provisioned through Mosquitto's dynamic-security plugin, at run time.

The file-based ``BrokerProvisioner`` rewrites a password and an ACL file under /etc and SIGHUPs the broker,
which the hardened unit forbids (read-only /etc, no signal to another user's process). With the plugin
(mosquitto 2.0 ``mosquitto_dynamic_security.so``) the daemon, logged in as a dynsec admin, sends JSON
commands to ``$CONTROL/dynamic-security/v1`` over its own broker link and reads the answers on
``$CONTROL/dynamic-security/v1/response``; the plugin keeps clients, roles and ACLs in its own file.

Rights are not restated here: they are parsed from ``render_acl``'s output, so both provisioners grant the
same topics. One role ``agent-<id>`` per agent, a ``mycoedge-service`` role for the daemon's own user and
a ``mycoedge-enrolment`` role for the enrolment user; default access is deny for publish and subscribe.

Passwords: the plugin stores its own salted hash, and its command set has no way to import one (only
``createClient``/``setClientPassword`` with the plain password), so a client can be created only while
the plain password is known: the hub hands it over at registration (``new_password``) and it is kept in
memory until the client exists. An agent in the registry whose client is missing and whose password is
gone (registered under the file-based way, or the daemon restarted before the broker was reachable) cannot
be provisioned; it is counted in ``unprovisioned`` and logged, and needs to be registered again.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import aiomqtt

from daemon.hub.broker_auth import ENROLMENT_USER, BrokerAccount, render_acl
from daemon.hub.errors import ProvisioningError
from daemon.mqtt import BrokerLink

log = logging.getLogger(__name__)

# Topics and ACL type names from the plugin's command reference (mosquitto 2.0, plugins/dynamic-security/README.md).
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = "$CONTROL/dynamic-security/v1/response"
SEND, RECEIVE, SUBSCRIBE = "publishClientSend", "publishClientReceive", "subscribePattern"
AGENT_ROLE_PREFIX = "agent-"
_SERVICE_KEY = "\0service"  # render_acl's name for the service block; no username can contain NUL
SERVICE_ROLE = "mycoedge-service"
ENROLMENT_ROLE = "mycoedge-enrolment"
DEFAULT_DENY = ({"acltype": "publishClientSend", "allow": False},
                {"acltype": "publishClientReceive", "allow": False},
                {"acltype": "subscribe", "allow": False},
                {"acltype": "unsubscribe", "allow": True})

Acl = tuple[str, str]  # (acltype, topic)


class DynsecCommandError(ProvisioningError):
    """The plugin answered a command with an error (``error`` in its response)."""

    def __init__(self, command: str, error: str) -> None:
        super().__init__(f"dynsec {command}: {error}")
        self.command = command
        self.error = error


def rules_by_user(acl_text: str) -> dict[str, frozenset[Acl]]:
    """The ``user`` blocks of a Mosquitto ACL file as dynsec ACLs.

    ``topic write`` is publishing, ``topic read`` is subscribing plus receiving, ``readwrite`` both
    (mosquitto.conf(5), "acl_file").
    """
    rules: dict[str, set[Acl]] = {}
    user: str | None = None
    for raw in acl_text.splitlines():
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "user" and len(words) == 2:
            user = words[1]
            rules.setdefault(user, set())
        elif words[0] == "topic" and user is not None and len(words) == 3:
            access, topic = words[1], words[2]
            if access in ("write", "readwrite"):
                rules[user].add((SEND, topic))
            if access in ("read", "readwrite"):
                rules[user] |= {(SUBSCRIBE, topic), (RECEIVE, topic)}
    return {name: frozenset(acls) for name, acls in rules.items()}


def agent_role(agent_id: str) -> str:
    return AGENT_ROLE_PREFIX + agent_id


class DynsecClient:
    """Request/response over the broker link: every command carries a ``correlationData`` the plugin echoes.

    The plugin answers only the client that asked, on the response topic, one message per request with
    the responses in order; matching by correlation id keeps concurrent requests apart.
    """

    def __init__(self, broker: BrokerLink, *, timeout_s: float = 5.0) -> None:
        self.broker = broker
        self.timeout_s = timeout_s
        self._ids = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        broker.subscribe(RESPONSE_TOPIC, self._on_response)

    async def _on_response(self, message: aiomqtt.Message) -> None:
        raw = message.payload if isinstance(message.payload, bytes | bytearray) else str(message.payload).encode()
        try:
            responses = json.loads(bytes(raw)).get("responses", [])
        except (ValueError, AttributeError):
            log.warning("unreadable dynsec response on %s", message.topic)
            return
        for response in responses if isinstance(responses, list) else []:
            if not isinstance(response, dict):
                continue
            future = self._waiting.pop(str(response.get("correlationData")), None)
            if future is not None and not future.done():
                future.set_result(response)

    async def run(self, commands: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Send the commands in one request; their responses in order. Raises ``ProvisioningError`` when
        the broker is unreachable or silent; a command's own error is in its response's ``error``."""
        if not commands:
            return []
        loop = asyncio.get_running_loop()
        batch: list[dict[str, Any]] = []
        futures: list[asyncio.Future[dict[str, Any]]] = []
        for command in commands:
            cid = f"mycoedge-{next(self._ids)}"
            future: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._waiting[cid] = future
            futures.append(future)
            batch.append({**command, "correlationData": cid})
        try:
            if not await self.broker.publish(CONTROL_TOPIC, json.dumps({"commands": batch}), qos=1):
                raise ProvisioningError("broker unreachable: dynsec commands not sent")
            try:
                async with asyncio.timeout(self.timeout_s):
                    return list(await asyncio.gather(*futures))
            except TimeoutError:
                raise ProvisioningError(f"no dynsec response within {self.timeout_s:g} s (is the plugin "
                                        "loaded and this user a dynsec admin?)") from None
        finally:
            for command in batch:
                self._waiting.pop(command["correlationData"], None)

    async def send(self, commands: Sequence[Mapping[str, Any]]) -> None:
        """Publish without awaiting the answer: for a command that disconnects this very client.

        QoS 0: the plugin drops the connection before its PUBACK, so a QoS 1 publish would wait out the
        client's timeout while holding the provisioner's lock.
        """
        if not await self.broker.publish(CONTROL_TOPIC, json.dumps({"commands": list(commands)}), qos=0):
            raise ProvisioningError("broker unreachable: dynsec commands not sent")

    async def check(self, commands: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``run``, raising ``DynsecCommandError`` for the first command the plugin refused."""
        responses = await self.run(commands)
        for response in responses:
            if response.get("error"):
                raise DynsecCommandError(str(response.get("command")), str(response["error"]))
        return responses


class DynsecProvisioner:
    """Makes the plugin's clients and roles match the registry; ``apply`` is idempotent.

    ``apply`` while the link is down only records the wanted state: every (re)connect reconciles it, so a
    broker restart or an agent registered during an outage converges once the broker is back.
    """

    def __init__(self, broker: BrokerLink, *, topic_base: str, service_users: Iterable[str] = (),
                 enrolment_password: str | None = None, timeout_s: float = 5.0) -> None:
        self.broker = broker
        self.topic_base = topic_base
        self.service_users = sorted(set(service_users))
        self.enrolment_password = enrolment_password
        self.client = DynsecClient(broker, timeout_s=timeout_s)
        self._lock = asyncio.Lock()
        self._accounts: list[BrokerAccount] | None = None
        self._passwords: dict[str, str] = {}
        self._enrolment_synced = False
        self._reconcilers: set[asyncio.Task[None]] = set()
        self.unprovisioned: set[str] = set()
        self.applied = 0  # complete reconciles (nothing left for a later one)
        self.last_changes = 0
        self.reconciled = asyncio.Event()  # set by the first complete reconcile
        broker.on_connect(self._on_connect)

    def new_password(self, username: str, password: str) -> None:
        """The plain password of an account about to be applied; kept only until its client exists."""
        self._passwords[username] = password

    async def apply(self, accounts: Iterable[BrokerAccount]) -> None:
        self._accounts = list(accounts)
        if not self.broker.connected.is_set():
            log.info("broker not connected: dynsec accounts will be applied on connect")
            return
        await self._reconcile()

    async def _on_connect(self) -> None:
        # Connect hooks run before the link reads messages: waiting for responses here would never end.
        if self._accounts is None:
            return
        task = asyncio.create_task(self._reconcile_logged(), name="dynsec-reconcile")
        self._reconcilers.add(task)
        task.add_done_callback(self._reconcilers.discard)

    async def _reconcile_logged(self) -> None:
        try:
            await self._reconcile()
        except ProvisioningError as exc:
            log.warning("dynsec reconcile after connect failed: %s", exc)

    async def aclose(self) -> None:
        """Cancel a reconcile still running (the hub calls this when it stops)."""
        for task in list(self._reconcilers):
            task.cancel()
        await asyncio.gather(*self._reconcilers, return_exceptions=True)

    def wanted_roles(self, accounts: Sequence[BrokerAccount]) -> dict[str, frozenset[Acl]]:
        rules = rules_by_user(render_acl(accounts, topic_base=self.topic_base, service_users=[_SERVICE_KEY]))
        roles = {SERVICE_ROLE: rules[_SERVICE_KEY], ENROLMENT_ROLE: rules[ENROLMENT_USER]}
        for account in accounts:
            roles[agent_role(account.agent_id)] = rules[account.username]
        return roles

    async def _reconcile(self) -> None:
        async with self._lock:
            accounts = list(self._accounts or [])
            roles = self.wanted_roles(accounts)
            listed = await self.client.check([{"command": "listRoles", "verbose": True},
                                              {"command": "listClients", "verbose": True}])
            have_roles = {str(r["rolename"]): {(str(a["acltype"]), str(a["topic"])): bool(a.get("allow"))
                                               for a in r.get("acls", [])}
                          for r in listed[0].get("data", {}).get("roles", [])}
            have_clients = {str(c["username"]): {str(r["rolename"]) for r in c.get("roles", [])}
                            for c in listed[1].get("data", {}).get("clients", [])}
            commands: list[dict[str, Any]] = [{"command": "setDefaultACLAccess", "acls": list(DEFAULT_DENY)}]
            commands += self._role_commands(roles, have_roles)
            commands += self._client_commands(accounts, have_clients)
            grants = [c for c in commands if c["command"] == "addClientRole" and c["rolename"] == SERVICE_ROLE]
            commands = [c for c in commands if c not in grants]
            # Roles of revoked agents go after their clients (deleteRole keeps clients, but leaves no orphan).
            commands += [{"command": "deleteRole", "rolename": name} for name in sorted(have_roles)
                         if name.startswith(AGENT_ROLE_PREFIX) and name not in roles]
            self.last_changes = len(commands) - 1 + len(grants)  # beyond the default-access command
            await self.client.check(commands)
            created = {c["username"] for c in commands if c["command"] == "createClient"}
            for username in created:
                self._passwords.pop(username, None)
            self._enrolment_synced = True
            # The accounts as they are now, not as this reconcile began: an agent registered while it
            # waited for the plugin has its password here, for the next reconcile to create its client.
            known = {a.username for a in self._accounts or []}
            for username in list(self._passwords):
                if username not in known:
                    del self._passwords[username]  # revoked before it was ever created
            if grants:
                # Changing a client's roles makes the plugin disconnect it (mosquitto 2.0 dynsec kicks the
                # user so its ACLs are re-read); when that client is this link, no answer ever arrives. The
                # grant goes last, unanswered; the reconnect reconciles again and finds it in place.
                log.info("granting %s to %s; the broker will disconnect the link once",
                         SERVICE_ROLE, ", ".join(c["username"] for c in grants))
                await self.client.send(grants)
                return
            self.applied += 1
            self.reconciled.set()

    def _role_commands(self, roles: Mapping[str, frozenset[Acl]],
                       have: Mapping[str, Mapping[Acl, bool]]) -> list[dict[str, Any]]:
        """Exactly the wanted ACLs, all ``allow``: extra ones and ``deny`` ones (an ACL is named by its type
        and topic, so a deny must go before the allow can be added) are removed first."""
        commands: list[dict[str, Any]] = []
        for name, acls in sorted(roles.items()):
            if name not in have:
                commands.append({"command": "createRole", "rolename": name, "acls": [
                    {"acltype": t, "topic": topic, "allow": True} for t, topic in sorted(acls)]})
                continue
            right = {acl for acl, allow in have[name].items() if allow and acl in acls}
            commands += [{"command": "removeRoleACL", "rolename": name, "acltype": t, "topic": topic}
                         for t, topic in sorted(set(have[name]) - right)]
            commands += [{"command": "addRoleACL", "rolename": name, "acltype": t, "topic": topic, "allow": True}
                         for t, topic in sorted(acls - right)]
        return commands

    def _client_commands(self, accounts: Sequence[BrokerAccount],
                         have: Mapping[str, set[str]]) -> list[dict[str, Any]]:
        commands: list[dict[str, Any]] = []
        for user in self.service_users:
            if user not in have:
                raise ProvisioningError(f"service user {user!r} is not a dynsec client")
            if SERVICE_ROLE not in have[user]:
                commands.append({"command": "addClientRole", "username": user, "rolename": SERVICE_ROLE})
        wanted: dict[str, tuple[str, str | None]] = {
            a.username: (agent_role(a.agent_id), self._passwords.get(a.username)) for a in accounts}
        if self.enrolment_password:
            wanted[ENROLMENT_USER] = (ENROLMENT_ROLE, self.enrolment_password)
            if ENROLMENT_USER in have and not self._enrolment_synced:
                # Once per run, as the token may have changed in the config: a password change makes the
                # plugin disconnect that user, so it is not repeated on every apply.
                commands.append({"command": "setClientPassword", "username": ENROLMENT_USER,
                                 "password": self.enrolment_password})
        missing: set[str] = set()
        for username, (role, password) in sorted(wanted.items()):
            if username in have:
                commands += [{"command": "addClientRole", "username": username, "rolename": role}
                             ] if role not in have[username] else []
                commands += [{"command": "removeClientRole", "username": username, "rolename": r}
                             for r in sorted(have[username] - {role})]
            elif password is not None:
                commands.append({"command": "createClient", "username": username, "password": password,
                                 "textname": f"mycoedge {role}", "roles": [{"rolename": role}]})
            else:
                missing.add(username)
        for username in sorted(missing - self.unprovisioned):
            log.warning("agent user %s has no dynsec client and its password is not known here: "
                        "it cannot log in until registered again", username)
        self.unprovisioned = missing
        # Only clients this hub made (an agent or enrolment role) are deleted; others are the operator's.
        ours = (AGENT_ROLE_PREFIX, ENROLMENT_ROLE)
        commands += [{"command": "deleteClient", "username": username} for username, client_roles
                     in sorted(have.items()) if username not in wanted and username not in self.service_users
                     and any(r.startswith(ours) for r in client_roles)]
        return commands
