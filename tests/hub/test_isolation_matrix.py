"""The isolation matrix: reach (agent scope) x pool permission x trust level x operation.

The expected outcome of each cell comes from the documented rules (docs/agents.md), written here
independently of the hub's code; every allowed cell must succeed and every other one be refused (403),
and no response may ever carry a memory the caller may not read.
"""

from __future__ import annotations

from typing import Any

from daemon.hub.registry import SCOPES
from daemon.store.memory import MemoryFilter
from tests.hub.conftest import HubNode

PERMS = (None, "READ", "WRITE", "ADMIN")
LEVELS = (1, 2, 3, 4, 5)
RANK = {s: i for i, s in enumerate(SCOPES)}
PRANK = {None: -1, "READ": 0, "WRITE": 1, "ADMIN": 2}


def expected(op: str, reach: str, perm: str | None, level: int) -> bool:
    member = PRANK[perm]
    if op == "read_private_of_owner":
        return False
    if op == "read_team_memory":
        return member >= 0 and RANK[reach] >= RANK["TEAM"] and level >= 2
    if op == "read_sensitive_memory":
        return member >= 0 and RANK[reach] >= RANK["PROJECT"] and level >= 3
    if op == "query_pool":
        return member >= 0 and level >= 2
    if op == "write_pool":
        return member >= 1 and level >= 3 and RANK[reach] >= RANK["PROJECT"]
    if op == "delete_owner_memory":
        return member >= 2 and level >= 3
    raise AssertionError(op)


async def test_isolation_matrix(node: HubNode) -> None:
    node.hub.agent_limits.rate = node.hub.agent_limits.burst = 1e6
    owner = await node.register("owner", type="HUMAN")
    otok = owner["credentials"]["api_token"]
    node.trust.grant("owner", 5, expires_at=None, basis="test")
    status, pool, _ = await node.call("POST", "/v1/pools", token=otok, json={"name": "shared", "scope": "GLOBAL"})
    assert status == 201, pool

    async def memory(content: str, **kw: Any) -> str:
        status, body, _ = await node.call("POST", "/v1/memories", token=otok, json={"content": content, **kw})
        assert status == 201, body
        return str(body["id"])

    private = await memory("owner private note")
    team = await memory("team memory about fungi", pool=pool["id"], scope="TEAM")
    sensitive = await memory("sensitive profile data", pool=pool["id"], scope="PROJECT", type="profile")
    readers = {}
    for reach in SCOPES:
        reg = await node.register(f"r-{reach.lower().replace('_', '-')}", type="HUMAN", reach=reach)
        readers[reach] = (reg["agent"]["id"], reg["credentials"]["api_token"])

    cells = 0
    allowed_writes = 0
    allowed_deletes = 0
    mismatches: list[tuple[str, str, str | None, int, int]] = []
    for perm in PERMS:
        for rid, _ in readers.values():
            if perm is None:
                await node.call("DELETE", f"/v1/pools/{pool['id']}/members/{rid}", token=otok)
            else:
                st, body, _ = await node.call("POST", f"/v1/pools/{pool['id']}/members", token=otok,
                                              json={"agent_id": rid, "permission": perm})
                assert st == 200, body
        for level in LEVELS:
            for reach, (rid, tok) in readers.items():
                node.trust.grant(rid, level, expires_at=None, basis="matrix")
                victim = await memory(f"victim {perm} {level} {reach}", pool=pool["id"], scope="USER")
                ops = {
                    "read_private_of_owner": ("GET", f"/v1/memories/{private}", None),
                    "read_team_memory": ("GET", f"/v1/memories/{team}", None),
                    "read_sensitive_memory": ("GET", f"/v1/memories/{sensitive}", None),
                    "query_pool": ("POST", f"/v1/pools/{pool['id']}/query", {"up_to_scope": "GLOBAL", "limit": 100}),
                    "write_pool": ("POST", "/v1/memories", {"content": "reader note", "pool": pool["id"],
                                                            "scope": "PROJECT"}),
                    "delete_owner_memory": ("DELETE", f"/v1/memories/{victim}", None),
                }
                for op, (method, path, body) in ops.items():
                    status, answer, _ = await node.call(method, path, token=tok, json=body)
                    allowed = expected(op, reach, perm, level)
                    ok = status in (200, 201, 204)
                    allowed_writes += int(allowed and op == "write_pool")
                    allowed_deletes += int(allowed and op == "delete_owner_memory")
                    cells += 1
                    if ok != allowed or (not ok and status != 403):
                        mismatches.append((op, reach, perm, level, status))
                    if op == "query_pool" and ok:
                        ids = {item["id"] for item in answer["items"]}
                        assert private not in ids
                        assert (team in ids) == (RANK[reach] >= RANK["TEAM"])
                        assert (sensitive in ids) == (RANK[reach] >= RANK["PROJECT"] and level >= 3)
                        for item in answer["items"]:
                            assert RANK[item["scope"]] <= RANK[reach]
    assert cells == len(PERMS) * len(LEVELS) * len(SCOPES) * 6
    assert mismatches == []
    # Zero unauthorised writes or deletes: the store holds exactly what the allowed cells wrote or left.
    written = 0
    for rid, _ in readers.values():
        written += len(await node.hub.store.memory.list_items(MemoryFilter(owner_id=rid), limit=1000))
    assert written == allowed_writes
    victims = await node.hub.store.memory.list_items(MemoryFilter(owner_id="owner", scopes=["USER"]), limit=1000)
    assert len(victims) == len(PERMS) * len(LEVELS) * len(SCOPES) - allowed_deletes
    await node.hub.audit_idle()
    denied = await node.hub.store.audit_list(kind="permission_denied", limit=100000)
    assert denied, "refusals are audited"
