"""HTTP routes of the local store: memories, MAIF blocks, verification and the audit trail.

Mount with ``build_app(tables=[..., http_store.routes], state={http_store.STORE_KEY: store})``.
Access: the admin token sees and changes everything. An agent needs the capability named for the
operation (``MEMORY_READ``, ``MEMORY_WRITE``, ``MEMORY_DELETE``), owns what it writes, and reads its own
items plus ``public`` ones; the owner/visibility rule is part of the SQL query, never a filter applied to
a page afterwards. Denials and cross-agent reads are written to the audit trail.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
from dataclasses import replace
from typing import Any

from aiohttp import web

from daemon.api import Principal, principal
from daemon.openapi import Routes, int_query, read_json
from daemon.problems import Problem
from daemon.store import Store
from daemon.store.blocklog import Block
from daemon.store.errors import (
    DecryptionError,
    EmbedderError,
    InvalidInputError,
    NotFoundError,
    StoreClosedError,
    StoreError,
)
from daemon.store.memory import MEMORY_TYPES, SCOPES, VISIBILITIES, MemoryFilter, MemoryItem

log = logging.getLogger(__name__)

STORE_KEY: web.AppKey[Store] = web.AppKey("store", Store)
_FOURCC = re.compile(r"[A-Z0-9_ ]{4}")
routes = Routes(tag="store")

READ, WRITE, DELETE = "MEMORY_READ", "MEMORY_WRITE", "MEMORY_DELETE"
MAX_BLOCK_BYTES = 512 * 1024  # one block per request; the API body limit is 1 MiB and base64 adds a third

_METADATA = {"type": "object", "maxProperties": 64}
_VECTOR = {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 8192}
MEMORY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "owner_type", "owner_id", "pool", "scope", "type", "content", "metadata", "visibility"],
    "properties": {
        "id": {"type": "string"}, "owner_type": {"type": "string"}, "owner_id": {"type": "string"},
        "pool": {"type": "string"}, "scope": {"enum": list(SCOPES)}, "type": {"enum": list(MEMORY_TYPES)},
        "content": {"type": "string"}, "metadata": {"type": "object"}, "visibility": {"enum": list(VISIBILITIES)},
        "ttl_s": {"type": ["number", "null"]}, "expires_at": {"type": ["number", "null"]},
        "created": {"type": "number"}, "updated": {"type": "number"},
    },
}
CREATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["content"],
    "additionalProperties": False,
    "properties": {
        "content": {"type": "string", "minLength": 1, "maxLength": 1_000_000},
        "pool": {"type": "string", "minLength": 1, "maxLength": 128},
        "scope": {"enum": list(SCOPES)},
        "type": {"enum": list(MEMORY_TYPES)},
        "metadata": _METADATA,
        "visibility": {"enum": list(VISIBILITIES)},
        "ttl_s": {"type": "number", "exclusiveMinimum": 0},
        "vector": _VECTOR,
        "owner_type": {"type": "string", "minLength": 1, "maxLength": 64},
        "owner_id": {"type": "string", "minLength": 1, "maxLength": 128},
    },
}
PATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {k: v for k, v in CREATE_SCHEMA["properties"].items() if k not in ("owner_type", "owner_id")},
}
SEARCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "anyOf": [{"required": ["text"]}, {"required": ["vector"]}],
    "properties": {
        "text": {"type": "string", "minLength": 1, "maxLength": 4096},
        "vector": _VECTOR,
        "limit": {"type": "integer", "minimum": 1, "maximum": 100},
        "threshold": {"type": "number", "minimum": -1, "maximum": 1},
        "filters": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "owner_type": {"type": "string"}, "owner_id": {"type": "string"},
                "pools": {"type": "array", "items": {"type": "string"}, "maxItems": 64},
                "scopes": {"type": "array", "items": {"enum": list(SCOPES)}},
                "visibility": {"type": "array", "items": {"enum": list(VISIBILITIES)}},
                "types": {"type": "array", "items": {"enum": list(MEMORY_TYPES)}},
                "metadata": {"type": "object", "maxProperties": 16,
                             "additionalProperties": {"type": ["string", "number", "boolean"]}},
            },
        },
    },
}
HIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["memory", "score"],
    "properties": {
        "memory": MEMORY_SCHEMA, "score": {"type": "number"}, "similarity": {"type": ["number", "null"]},
        "keyword_rank": {"type": ["integer", "null"]}, "vector_rank": {"type": ["integer", "null"]},
        "chunk": {"type": "string"},
    },
}
BLOCK_IN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["fourcc"],
    "additionalProperties": False,
    "oneOf": [{"required": ["payload_b64"]}, {"required": ["text"]}],
    "properties": {
        "fourcc": {"type": "string", "pattern": "^[A-Z0-9_ ]{4}$"},
        "payload_b64": {"type": "string", "maxLength": 4 * MAX_BLOCK_BYTES // 3 + 4},
        "text": {"type": "string", "maxLength": MAX_BLOCK_BYTES},
        "metadata": _METADATA,
        "encrypt": {"type": "boolean"},
    },
}
BLOCK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["seq", "block_id", "fourcc", "ts_us", "chain_hash"],
    "properties": {
        "seq": {"type": "integer"}, "block_id": {"type": "string"}, "fourcc": {"type": "string"},
        "flags": {"type": "integer"}, "ts_us": {"type": "integer"}, "metadata": {"type": "object"},
        "encrypted": {"type": "boolean"}, "payload_b64": {"type": ["string", "null"]},
        "prev_hash": {"type": "string"}, "chain_hash": {"type": "string"}, "content_hash": {"type": "string"},
    },
}
VERIFY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["ok", "checked"],
    "properties": {
        "ok": {"type": "boolean"}, "checked": {"type": "integer"}, "first_bad": {"type": ["integer", "null"]},
        "block_id": {"type": ["string", "null"]}, "reason": {"type": ["string", "null"]},
        "audit": {"type": "object"},
    },
}
AUDIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["records"],
    "properties": {"records": {"type": "array", "items": {"type": "object"}}, "next_after": {"type": "integer"}},
}


def _store(request: web.Request) -> Store:
    return request.app[STORE_KEY]


def _translate(exc: StoreError) -> Problem:
    if isinstance(exc, NotFoundError):
        return Problem(404, str(exc), kind="not-found")
    if isinstance(exc, InvalidInputError):
        return Problem(422, str(exc), kind="invalid-input")
    if isinstance(exc, EmbedderError):
        return Problem(503, str(exc), kind="embedder-unavailable")
    if isinstance(exc, StoreClosedError):
        return Problem(503, "the store is closed", kind="store-closed")
    log.warning("store error behind the API: %s", exc)
    return Problem(500, "store error; see the daemon's log", kind="store-error")


async def _require(request: web.Request, capability: str) -> Principal:
    who = principal(request)
    if who.is_admin or capability in who.capabilities:
        return who
    await _audit(request, "permission_denied", who, request.path, {"needs": capability, "method": request.method})
    raise Problem(403, f"this operation needs the {capability} capability", kind="forbidden")


async def _audit(request: web.Request, kind: str, who: Principal, subject: str, data: dict[str, Any]) -> None:
    try:
        await _store(request).audit_append(kind, f"{who.kind}:{who.id}", subject, data)
    except StoreError as exc:  # the answer to the caller must not depend on the audit write
        log.warning("audit write failed: %s", exc)


def _reader_filter(who: Principal, base: MemoryFilter) -> MemoryFilter:
    """Agents see their own items and public ones; admins see everything."""
    if who.is_admin:
        return base
    return replace(base, reader=(who.kind, who.id), reader_visibility=("public",))


async def _visible_item(request: web.Request, who: Principal, memory_id: str, *, for_write: bool) -> MemoryItem:
    item = await _store(request).memory.get(memory_id)
    if item is None:
        raise Problem(404, f"no memory {memory_id!r}", kind="not-found")
    own = who.is_admin or (item.owner_type, item.owner_id) == (who.kind, who.id)
    if own:
        return item
    if for_write or item.visibility != "public":
        await _audit(request, "permission_denied", who, f"memory/{memory_id}",
                     {"owner": f"{item.owner_type}:{item.owner_id}", "write": for_write})
        # Not 403: a reader must not learn that someone else's private item exists.
        raise Problem(404, f"no memory {memory_id!r}", kind="not-found")
    await _audit(request, "cross_agent_read", who, f"memory/{memory_id}",
                 {"owner": f"{item.owner_type}:{item.owner_id}"})
    return item


# ---- memories ----------------------------------------------------------------------------------------


@routes.post("/v1/memories", summary="Store a memory item (chunked, indexed, embedded when configured)",
             auth="agent", request=CREATE_SCHEMA, responses={201: MEMORY_SCHEMA})
async def create_memory(request: web.Request) -> web.Response:
    who = await _require(request, WRITE)
    body = await read_json(request)
    owner_type, owner_id = who.kind, who.id
    if who.is_admin:
        owner_type = body.get("owner_type", owner_type)
        owner_id = body.get("owner_id", owner_id)
    elif "owner_type" in body or "owner_id" in body:
        raise Problem(403, "only the admin token may write memories for another owner", kind="forbidden")
    try:
        item = await _store(request).memory.create(
            owner_type=owner_type, owner_id=owner_id, content=body["content"], pool=body.get("pool", "default"),
            scope=body.get("scope", "AGENT_PRIVATE"), type=body.get("type", "long_term"),
            metadata=body.get("metadata"), visibility=body.get("visibility", "private"), ttl_s=body.get("ttl_s"),
            vector=body.get("vector"),
        )
    except StoreError as exc:
        raise _translate(exc) from None
    return web.json_response(item.to_json(), status=201, headers={"Location": f"/v1/memories/{item.id}"})


@routes.get("/v1/memories", summary="List memory items visible to the caller", auth="agent",
            query={"owner_id": {"type": "string"}, "pool": {"type": "string"},
                   "type": {"enum": list(MEMORY_TYPES)}, "limit": {"type": "integer"},
                   "offset": {"type": "integer"}},
            responses={200: {"type": "object", "properties": {"memories": {"type": "array", "items": MEMORY_SCHEMA}}}})
async def list_memories(request: web.Request) -> web.Response:
    who = await _require(request, READ)
    kind = request.query.get("type")
    if kind is not None and kind not in MEMORY_TYPES:
        raise Problem(400, f"query parameter type must be one of {', '.join(MEMORY_TYPES)}", kind="bad-query")
    pool = request.query.get("pool")
    base = MemoryFilter(owner_id=request.query.get("owner_id"), pools=[pool] if pool else None,
                        types=[kind] if kind else None)
    limit = int_query(request, "limit", 50, minimum=1, maximum=1000)
    offset = int_query(request, "offset", 0, minimum=0, maximum=1_000_000)
    try:
        items = await _store(request).memory.list_items(_reader_filter(who, base), limit=limit, offset=offset)
    except StoreError as exc:
        raise _translate(exc) from None
    return web.json_response({"memories": [i.to_json() for i in items]})


@routes.get("/v1/memories/{id}", summary="One memory item", auth="agent", responses={200: MEMORY_SCHEMA})
async def get_memory(request: web.Request) -> web.Response:
    who = await _require(request, READ)
    item = await _visible_item(request, who, request.match_info["id"], for_write=False)
    return web.json_response(item.to_json())


@routes.patch("/v1/memories/{id}", summary="Change a memory item (owner or admin)", auth="agent",
              request=PATCH_SCHEMA, responses={200: MEMORY_SCHEMA})
async def patch_memory(request: web.Request) -> web.Response:
    who = await _require(request, WRITE)
    body = await read_json(request)
    item = await _visible_item(request, who, request.match_info["id"], for_write=True)
    try:
        updated = await _store(request).memory.update(
            item.id, content=body.get("content"), metadata=body.get("metadata"), pool=body.get("pool"),
            scope=body.get("scope"), type=body.get("type"), visibility=body.get("visibility"),
            ttl_s=body.get("ttl_s"), vector=body.get("vector"),
        )
    except StoreError as exc:
        raise _translate(exc) from None
    return web.json_response(updated.to_json())


@routes.delete("/v1/memories/{id}", summary="Delete a memory item (owner or admin)", auth="agent",
               responses={204: None})
async def delete_memory(request: web.Request) -> web.Response:
    who = await _require(request, DELETE)
    item = await _visible_item(request, who, request.match_info["id"], for_write=True)
    try:
        await _store(request).memory.delete(item.id)
    except StoreError as exc:
        raise _translate(exc) from None
    return web.Response(status=204)


@routes.post("/v1/memories/search", summary="Keyword, vector or hybrid (RRF) search with filters",
             auth="agent", request=SEARCH_SCHEMA,
             responses={200: {"type": "object", "properties": {"results": {"type": "array", "items": HIT_SCHEMA}}}})
async def search_memories(request: web.Request) -> web.Response:
    who = await _require(request, READ)
    body = await read_json(request)
    f = body.get("filters", {})
    base = MemoryFilter(
        owner_type=f.get("owner_type"), owner_id=f.get("owner_id"), pools=f.get("pools"), scopes=f.get("scopes"),
        visibility=f.get("visibility"), types=f.get("types"), metadata=f.get("metadata", {}),
    )
    try:
        hits = await _store(request).memory.search(
            text=body.get("text"), vector=body.get("vector"), flt=_reader_filter(who, base),
            limit=body.get("limit", 10), threshold=body.get("threshold"),
        )
    except StoreError as exc:
        raise _translate(exc) from None
    foreign = sorted({h.item.id for h in hits if (h.item.owner_type, h.item.owner_id) != (who.kind, who.id)})
    if foreign and not who.is_admin:
        await _audit(request, "cross_agent_read", who, "memory/search", {"ids": foreign[:50]})
    return web.json_response({"results": [
        {"memory": h.item.to_json(), "score": h.score, "similarity": h.similarity,
         "keyword_rank": h.keyword_rank, "vector_rank": h.vector_rank, "chunk": h.chunk}
        for h in hits
    ]})


# ---- MAIF block log ----------------------------------------------------------------------------------


def _block_json(store: Store, block: Block) -> dict[str, Any]:
    payload: bytes | None = block.payload
    if block.encrypted:
        try:
            payload = store.blocks.decrypt(block)
        except (DecryptionError, StoreError):
            payload = None
    return {
        "seq": block.seq, "block_id": block.block_id.hex(), "fourcc": block.fourcc, "flags": block.flags,
        "ts_us": block.ts_us, "metadata": block.metadata_dict, "encrypted": block.encrypted,
        "payload_b64": None if payload is None else base64.b64encode(payload).decode(),
        "prev_hash": block.prev_hash.hex(), "chain_hash": block.chain_hash.hex(),
        "content_hash": block.content_hash.hex(),
    }


@routes.post("/v1/maif/blocks", summary="Append a MAIF block (durable and signed on return)", auth="agent",
             request=BLOCK_IN_SCHEMA, responses={201: BLOCK_SCHEMA})
async def append_block(request: web.Request) -> web.Response:
    who = await _require(request, WRITE)
    body = await read_json(request)
    if "text" in body:
        payload = body["text"].encode()
    else:
        try:
            payload = base64.b64decode(body["payload_b64"], validate=True)
        except (binascii.Error, ValueError):
            raise Problem(422, "payload_b64 is not valid base64", kind="invalid-input") from None
    metadata = dict(body.get("metadata") or {})
    if not who.is_admin:
        metadata.setdefault("author", f"{who.kind}:{who.id}")
    store = _store(request)
    try:
        info = await store.append_block(body["fourcc"], payload, metadata=metadata, encrypt=body.get("encrypt"))
        block = await store.blocks.get(info.block_id)
    except StoreError as exc:
        raise _translate(exc) from None
    assert block is not None
    return web.json_response(_block_json(store, block), status=201)


@routes.get("/v1/maif/blocks", summary="Blocks in chain order (cursor paging by seq)", auth="agent",
            query={"after": {"type": "integer"}, "limit": {"type": "integer"},
                   "fourcc": {"type": "string", "pattern": "^[A-Z0-9_ ]{4}$"}},
            responses={200: {"type": "object", "properties": {"blocks": {"type": "array", "items": BLOCK_SCHEMA},
                                                              "next_after": {"type": "integer"}}}})
async def list_blocks(request: web.Request) -> web.Response:
    await _require(request, READ)
    after = int_query(request, "after", 0, minimum=0, maximum=2**62)
    limit = int_query(request, "limit", 100, minimum=1, maximum=1000)
    store = _store(request)
    try:
        fourcc = request.query.get("fourcc")
        if fourcc is not None and not _FOURCC.fullmatch(fourcc):
            raise Problem(400, "query parameter fourcc must be 4 characters A-Z, 0-9, '_' or space", kind="bad-query")
        blocks = await store.blocks.list_blocks(after_seq=after, limit=limit, fourcc=fourcc)
    except StoreError as exc:
        raise _translate(exc) from None
    # Up to 1000 blocks, each decrypted and base64-encoded, then one JSON document: megabytes of work that
    # belong off the event loop, like the read that fetched them.
    text = await asyncio.to_thread(lambda: json.dumps({"blocks": [_block_json(store, b) for b in blocks],
                                                       "next_after": blocks[-1].seq if blocks else after}))
    return web.Response(text=text, content_type="application/json")


@routes.post("/v1/maif/verify", summary="Verify the whole block log and audit chain", auth="admin",
             responses={200: VERIFY_SCHEMA})
async def verify_log(request: web.Request) -> web.Response:
    store = _store(request)
    try:
        report = await store.verify_blocks()
        audit = await store.audit_verify()
    except StoreError as exc:
        raise _translate(exc) from None
    return web.json_response({
        "ok": report.ok and audit.ok, "checked": report.checked, "first_bad": report.first_bad,
        "block_id": report.block_id, "reason": report.reason,
        "audit": {"ok": audit.ok, "checked": audit.checked, "first_bad": audit.first_bad, "reason": audit.reason},
    })


# ---- audit -------------------------------------------------------------------------------------------


@routes.get("/v1/audit", summary="Audit records in chain order (admin)", auth="admin",
            query={"kind": {"type": "string"}, "actor": {"type": "string"}, "subject": {"type": "string"},
                   "after": {"type": "integer"}, "limit": {"type": "integer"}},
            responses={200: AUDIT_SCHEMA})
async def list_audit(request: web.Request) -> web.Response:
    after = int_query(request, "after", 0, minimum=0, maximum=2**62)
    limit = int_query(request, "limit", 100, minimum=1, maximum=1000)
    try:
        records = await _store(request).audit_list(
            kind=request.query.get("kind"), actor=request.query.get("actor"), subject=request.query.get("subject"),
            after_seq=after, limit=limit,
        )
    except StoreError as exc:
        raise _translate(exc) from None
    return web.json_response({"records": [r.to_json() for r in records],
                              "next_after": records[-1].seq if records else after})
