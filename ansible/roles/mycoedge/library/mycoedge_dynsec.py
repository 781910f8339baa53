#!/usr/bin/python3
"""Ansible module: the role's own accounts in Mosquitto's dynamic-security file, leaving the rest alone.

The plugin (mosquitto 2.0 ``mosquitto_dynamic_security.so``) keeps clients, roles and ACLs in one JSON file
that it rewrites on every change it is told about over ``$CONTROL/dynamic-security/v1``; the daemon adds
and removes agents' clients that way at run time. So the file cannot be a template: this module edits only
what the role owns (the daemon's admin client, the site's extra users and their roles) and keeps every
other client and role (the agents, the enrolment user) as the broker wrote them.

Passwords are stored the way the plugin checks them (plugins/dynamic-security/auth.c in mosquitto 2.0):
``password`` = base64(PBKDF2-HMAC-SHA512(password, salt, iterations)), ``salt`` = base64 of 12 random
bytes, ``iterations`` = 101. A stored hash is recomputed with its own salt to tell whether the password in
the inventory is still the same, so an unchanged account is left byte for byte as it was.

The broker only reads the file when it starts: the role stops it before writing and its handler starts it
again, so a change the plugin makes in between cannot be overwritten by either side.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import tempfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: mycoedge_dynsec
short_description: Manage the role's clients and roles in Mosquitto's dynamic-security JSON file
description:
  - Creates the file when missing, sets the passwords and roles of the listed clients, creates or sets the
    listed roles, and deletes clients and roles this module made earlier that are no longer listed.
  - Clients and roles it did not make are never touched.
options:
  path: {description: The plugin's config file (plugin_opt_config_file)., type: path, required: true}
  owner: {description: Owner of a written file (the broker's user)., type: str, default: mosquitto}
  group: {description: Group of a written file., type: str, default: mosquitto}
  admin_username: {description: The daemon's MQTT user, made a dynsec admin., type: str, required: true}
  admin_password: {description: Its password., type: str, required: true, no_log: true}
  site_users:
    description: Further accounts, each {username, password, acl}; acl entries are "read|write|readwrite <topic>".
    type: list
    elements: dict
    default: []
  managed_text:
    description: The textName marking clients this module made.
    type: str
    default: managed by ansible (mycoedge role)
  managed_role_prefix:
    description: Site users' roles are this prefix and the user name; unlisted ones are deleted.
    type: str
    default: mycoedge-site-
"""

ADMIN_ROLE = "mycoedge-dynsec-admin"
# What ``mosquitto_ctrl dynsec init`` gives its admin: the plugin's command topics, reading $SYS and all.
ADMIN_ACL_LINES = ("readwrite $CONTROL/dynamic-security/#", "read $SYS/#", "read #")
# The role the daemon's hub gives its own user (daemon/hub/dynsec.py SERVICE_ROLE): the hub owns its ACLs
# and sets them on its first connect, so it is only created here, with the same full access, so that the
# daemon can publish from its first connect on without the plugin kicking it for a role change.
SERVICE_ROLE = "mycoedge-service"
SERVICE_ACL_LINES = ("readwrite #",)

ITERATIONS = 101  # mosquitto 2.0 dynsec's PW_DEFAULT_ITERATIONS
SALT_BYTES = 12  # mosquitto 2.0 dynsec's salt length (HASH_LEN / salt in struct dynsec__client)


def _hash(password: str, salt: bytes, iterations: int) -> str:
    return base64.b64encode(hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)).decode()


def _password_matches(client: dict, password: str) -> bool:
    try:
        salt = base64.b64decode(client["salt"], validate=True)
        iterations = int(client["iterations"])
        return hmac.compare_digest(_hash(password, salt, iterations), str(client["password"]))
    except (KeyError, ValueError, TypeError):
        return False


def _acl_key(acl: dict) -> tuple[str, str, bool]:
    return str(acl["acltype"]), str(acl["topic"]), bool(acl.get("allow", False))


def acls_from_lines(lines: list) -> list[dict]:
    """``read|write|readwrite <topic>`` (mosquitto.conf(5) acl_file syntax) as dynsec ACLs: write is
    publishClientSend, read is subscribePattern plus publishClientReceive."""
    acls: list[dict] = []
    for line in lines:
        words = str(line).split()
        if len(words) != 2 or words[0] not in ("read", "write", "readwrite"):
            raise ValueError(f"ACL entry {line!r} is not 'read|write|readwrite <topic>'")
        access, topic = words
        if access in ("write", "readwrite"):
            acls.append({"acltype": "publishClientSend", "topic": topic, "allow": True})
        if access in ("read", "readwrite"):
            acls += [{"acltype": "subscribePattern", "topic": topic, "allow": True},
                     {"acltype": "publishClientReceive", "topic": topic, "allow": True}]
    return acls


def reconcile(data: dict, params: dict) -> list[str]:
    """Edit ``data`` in place; the list of what changed (empty: nothing)."""
    changes: list[str] = []
    clients = data.setdefault("clients", [])
    roles = data.setdefault("roles", [])
    by_role = {str(r.get("rolename")): r for r in roles}
    wanted_roles = {str(r["rolename"]) for r in params["roles"]}
    for want in params["roles"]:
        name = str(want["rolename"])
        acls = [{"acltype": a["acltype"], "topic": a["topic"], "allow": bool(a.get("allow", True))}
                for a in want.get("acls") or []] + acls_from_lines(want.get("acl_lines") or [])
        have = by_role.get(name)
        if have is None:
            role = {"rolename": name, "acls": acls}
            roles.append(role)
            by_role[name] = role
            changes.append(f"role {name} created")
        elif want.get("manage_acls", True) and (
                sorted(map(_acl_key, have.get("acls", []))) != sorted(map(_acl_key, acls))):
            have["acls"] = acls
            changes.append(f"role {name} ACLs set")
    by_user = {str(c.get("username")): c for c in clients}
    wanted_users = set()
    for want in params["clients"]:
        username, password = str(want["username"]), str(want["password"])
        wanted_users.add(username)
        role_names = [str(r) for r in want.get("roles") or []]
        client = by_user.get(username)
        if client is None:
            client = {"username": username, "textName": params["managed_text"], "roles": []}
            clients.append(client)
            by_user[username] = client
            changes.append(f"client {username} created")
        if not _password_matches(client, password):
            salt = secrets.token_bytes(SALT_BYTES)
            client.update(password=_hash(password, salt, ITERATIONS), salt=base64.b64encode(salt).decode(),
                          iterations=ITERATIONS)
            if f"client {username} created" not in changes:
                changes.append(f"client {username} password set")
        have_roles = [str(r.get("rolename")) for r in client.get("roles", [])]
        keep = [] if want.get("exact_roles", True) else [r for r in have_roles if r not in role_names]
        new_roles = role_names + keep
        if sorted(have_roles) != sorted(new_roles):
            client["roles"] = [{"rolename": r} for r in new_roles]
            changes.append(f"client {username} roles set")
    for client in list(clients):
        username = str(client.get("username"))
        if client.get("textName") == params["managed_text"] and username not in wanted_users:
            clients.remove(client)
            changes.append(f"client {username} deleted")
    prefix = params["managed_role_prefix"]
    for role in list(roles):
        name = str(role.get("rolename"))
        if prefix and name.startswith(prefix) and name not in wanted_roles:
            roles.remove(role)
            for client in clients:
                client["roles"] = [r for r in client.get("roles", []) if r.get("rolename") != name]
            changes.append(f"role {name} deleted")
    return changes


def _write(path: str, data: dict, owner: str, group: str) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".dynsec-", dir=directory)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent="\t")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)  # it holds password hashes; the plugin also writes it 0600
        import grp  # noqa: PLC0415 - POSIX only, like the rest of the node
        import pwd  # noqa: PLC0415

        os.chown(tmp, pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "owner": {"type": "str", "default": "mosquitto"},
            "group": {"type": "str", "default": "mosquitto"},
            "admin_username": {"type": "str", "required": True},
            "admin_password": {"type": "str", "required": True, "no_log": True},
            "site_users": {"type": "list", "elements": "dict", "default": [], "no_log": True},
            "default_acl_access": {"type": "dict", "default": {}},
            "managed_text": {"type": "str", "default": "managed by ansible (mycoedge role)"},
            "managed_role_prefix": {"type": "str", "default": "mycoedge-site-"},
        },
        supports_check_mode=True,
    )
    params = module.params
    path = params["path"]
    created = not os.path.exists(path)
    if created:
        data: dict = {"clients": [], "roles": [], "defaultACLAccess": dict(params["default_acl_access"])}
    else:
        try:
            with open(path) as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            module.fail_json(msg=f"cannot read {path}: {exc}")
        if not isinstance(data, dict):
            module.fail_json(msg=f"{path} is not a JSON object")
    prefix = params["managed_role_prefix"]
    wanted = dict(params)
    wanted["clients"] = [{"username": params["admin_username"], "password": params["admin_password"],
                          "roles": [ADMIN_ROLE, SERVICE_ROLE], "exact_roles": False}]
    wanted["roles"] = [{"rolename": ADMIN_ROLE, "acl_lines": list(ADMIN_ACL_LINES)},
                       {"rolename": SERVICE_ROLE, "acl_lines": list(SERVICE_ACL_LINES), "manage_acls": False}]
    for user in params["site_users"]:
        if not user.get("username") or user.get("password") is None:
            module.fail_json(msg="every site user needs a username and a password")
        wanted["clients"].append({"username": str(user["username"]), "password": str(user["password"]),
                                  "roles": [prefix + str(user["username"])], "exact_roles": True})
        wanted["roles"].append({"rolename": prefix + str(user["username"]), "acl_lines": user.get("acl") or []})
    try:
        changes = (["file created"] if created else []) + reconcile(data, wanted)
    except (ValueError, KeyError) as exc:
        module.fail_json(msg=f"bad dynsec account or role: {exc}")
    if changes and not module.check_mode:
        try:
            _write(path, data, params["owner"], params["group"])
        except (OSError, KeyError) as exc:
            module.fail_json(msg=f"cannot write {path}: {exc}")
    module.exit_json(changed=bool(changes), changes=changes, path=path)


if __name__ == "__main__":
    main()
