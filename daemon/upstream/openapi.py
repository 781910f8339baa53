"""The upstream ingest API as an OpenAPI 3.1 document, served at ``/openapi.json``.

Kept beside the handlers so a test can check that every route of ``make_app`` is documented and that
``docs/upstream-openapi.json`` equals this; a real upstream (the MAS data platform) implements
``POST /v1/ingest`` from it. The read-back and ``/admin`` routes are for the reference server only.
"""

from __future__ import annotations

from typing import Any

PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
}

RECORD = {
    "type": "object",
    "required": ["id", "seq", "created"],
    "properties": {
        "id": {"type": "string", "minLength": 1, "maxLength": 200,
               "description": "Stable record id; the upstream stores each (stream, id) once."},
        "seq": {"type": "integer", "description": "The node's outbox order; increases within a stream."},
        "created": {"type": "number", "description": "Unix time the record was queued on the node."},
        "payload": {"description": "The record, any JSON value."},
        "payload_b64": {"type": "string", "contentEncoding": "base64",
                        "description": "Used instead of payload when the queued bytes are not JSON."},
    },
    "oneOf": [{"required": ["payload"]}, {"required": ["payload_b64"]}],
}

BATCH = {
    "type": "object",
    "required": ["source", "stream", "records"],
    "properties": {
        "source": {"type": "string", "description": "The sending node's id."},
        "stream": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,31}$",
                   "description": "telemetry, maif, audit, memory or events"},
        "records": {"type": "array", "minItems": 1, "items": RECORD,
                    "description": "In the node's order; store them in this order."},
    },
}

ACCEPTED = {
    "type": "object",
    "required": ["stream", "accepted", "duplicates", "received"],
    "properties": {
        "stream": {"type": "string"},
        "accepted": {"type": "integer", "description": "Records stored new by this batch."},
        "duplicates": {"type": "integer", "description": "Records already held (a retry)."},
        "received": {"type": "integer"},
    },
}

FAULTS = {
    "type": "object",
    "properties": {
        "error_rate": {"type": "number", "minimum": 0, "maximum": 1},
        "after_commit_rate": {"type": "number", "minimum": 0, "maximum": 1},
        "reset_rate": {"type": "number", "minimum": 0, "maximum": 1},
        "throttle_rate": {"type": "number", "minimum": 0, "maximum": 1},
        "retry_after_s": {"type": "integer", "minimum": 0},
        "latency_s": {"type": "number", "minimum": 0},
        "latency_rate": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "additionalProperties": False,
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": PROBLEM}}}


_STREAM_PARAM = {"name": "stream", "in": "path", "required": True, "schema": {"type": "string"}}


def spec() -> dict[str, Any]:
    """The OpenAPI document (a fresh dict each call)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mycoedge upstream ingest API",
            "version": "1.0.0",
            "description": (
                "What a mycoedge node sends upstream. Contract for an implementation: store each record "
                "once per (stream, id) in the order first received; answer 2xx only after the batch is "
                "durable; a repeated Idempotency-Key may be answered from a cache; 429/503 may carry "
                "Retry-After (seconds or HTTP-date), which nodes honour. Any non-2xx means 'not stored' "
                "to the node, which sends the same records again later, so storing and then failing is "
                "safe. Batches arrive gzip-compressed (Content-Encoding: gzip)."
            ),
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "mtls": {"type": "mutualTLS"},
            },
            "schemas": {"Batch": BATCH, "Record": RECORD, "Accepted": ACCEPTED, "Problem": PROBLEM,
                        "Faults": FAULTS},
        },
        "security": [{"bearer": []}, {"mtls": []}],
        "paths": {
            "/v1/ingest": {
                "post": {
                    "operationId": "ingest",
                    "summary": "Store a batch of records of one stream",
                    "parameters": [
                        {"name": "Idempotency-Key", "in": "header", "required": False,
                         "schema": {"type": "string", "maxLength": 200},
                         "description": "Same for every retry of the same records."},
                        {"name": "Content-Encoding", "in": "header", "required": False,
                         "schema": {"type": "string", "enum": ["gzip", "deflate", "identity"]}},
                    ],
                    "requestBody": {"required": True, **_json({"$ref": "#/components/schemas/Batch"})},
                    "responses": {
                        "200": {"description": "Stored (or already held)",
                                "headers": {"Idempotent-Replayed": {"schema": {"type": "string"},
                                            "description": "true when answered from the key cache"}},
                                **_json({"$ref": "#/components/schemas/Accepted"})},
                        "400": _problem("Not a valid batch (not retried by nodes until fixed)"),
                        "401": _problem("Missing or wrong credentials"),
                        "413": _problem("Batch too large: nodes halve their batch size"),
                        "415": _problem("Not application/json"),
                        "429": {**_problem("Throttled; see Retry-After"),
                                "headers": {"Retry-After": {"schema": {"type": "string"}}}},
                        "500": _problem("Failed (possibly after storing)"),
                        "503": {**_problem("Unavailable; may carry Retry-After"),
                                "headers": {"Retry-After": {"schema": {"type": "string"}}}},
                    },
                }
            },
            "/v1/streams": {"get": {
                "operationId": "listStreams", "summary": "Record count per stream",
                "responses": {"200": _json({"type": "object", "properties": {
                    "streams": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "total": {"type": "integer"}}})},
            }},
            "/v1/streams/{stream}/count": {"get": {
                "operationId": "countStream", "summary": "Records held for one stream",
                "parameters": [_STREAM_PARAM],
                "responses": {"200": _json({"type": "object", "properties": {
                    "stream": {"type": "string"}, "count": {"type": "integer"}}})},
            }},
            "/v1/streams/{stream}/records": {"get": {
                "operationId": "listRecords", "summary": "Records of one stream in first-seen order",
                "parameters": [
                    _STREAM_PARAM,
                    {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                "maximum": 100000}},
                ],
                "responses": {"200": _json({"type": "object", "properties": {
                    "stream": {"type": "string"}, "next_after": {"type": "integer"},
                    "records": {"type": "array", "items": {"type": "object"}}}})},
            }},
            "/v1/streams/{stream}/ids": {"get": {
                "operationId": "listIds", "summary": "Every record id of one stream in first-seen order",
                "parameters": [_STREAM_PARAM],
                "responses": {"200": _json({"type": "object", "properties": {
                    "stream": {"type": "string"}, "ids": {"type": "array", "items": {"type": "string"}}}})},
            }},
            "/v1/stats": {"get": {
                "operationId": "stats", "summary": "Reference server counters (batches, replays, faults)",
                "responses": {"200": _json({"type": "object", "additionalProperties": {"type": "integer"}})},
            }},
            "/admin/faults": {
                "get": {"operationId": "getFaults", "summary": "Current fault injection (reference only)",
                        "responses": {"200": _json({"$ref": "#/components/schemas/Faults"})}},
                "put": {"operationId": "setFaults",
                        "summary": "Change fault injection at run time (?replace=true resets the rest)",
                        "requestBody": {"required": True, **_json({"$ref": "#/components/schemas/Faults"})},
                        "responses": {"200": _json({"$ref": "#/components/schemas/Faults"}),
                                      "422": _problem("Invalid fault setting")}},
            },
            "/healthz": {"get": {"operationId": "health", "summary": "Liveness", "security": [],
                                 "responses": {"200": {"description": "Alive"}}}},
            "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document", "security": [],
                                      "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        },
    }

