"""Routes declared once, with their OpenAPI 3.1 operation, so the document cannot drift from the server.

A feature module makes a ``Routes`` table and decorates its handlers::

    routes = Routes(tag="devices")

    @routes.get("/v1/devices", summary="List devices", auth="agent", responses={200: LIST_SCHEMA})
    async def list_devices(request: web.Request) -> web.Response: ...

``daemon.api`` adds every table to the aiohttp application and builds ``/openapi.json`` from the same
declarations; request bodies are validated against the declared schema before the handler runs.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema
from aiohttp import web

from daemon.problems import PROBLEM_SCHEMA, PROBLEM_TYPE, Problem

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Auth = Literal["none", "agent", "admin"]
MAX_BODY_BYTES = 1024 * 1024

_STATUS_TEXT = {
    200: "OK", 201: "Created", 202: "Accepted", 204: "No content", 400: "Malformed request",
    401: "Missing or invalid credentials", 403: "Not allowed", 404: "Not found", 409: "Conflict",
    413: "Body too large", 415: "Body must be JSON", 422: "Body does not match the schema",
    429: "Rate limited", 503: "Not available", 504: "Device did not answer in time",
}


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    auth: Auth
    tag: str
    request: Mapping[str, Any] | None
    responses: Mapping[int, Mapping[str, Any] | None]
    content_type: str = "application/json"
    query: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


class Routes:
    """A table of documented routes for one feature."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.operations: list[Operation] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        auth: Auth = "admin",
        request: Mapping[str, Any] | None = None,
        responses: Mapping[int, Mapping[str, Any] | None] | None = None,
        content_type: str = "application/json",
        query: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.operations.append(
                Operation(
                    method=method.upper(),
                    path=path,
                    handler=handler,
                    summary=summary,
                    auth=auth,
                    tag=self.tag,
                    request=request,
                    responses=responses or {200: None},
                    content_type=content_type,
                    query=query or {},
                )
            )
            return handler

        return register

    def get(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **kwargs)


OPERATION_KEY: web.RequestKey[Operation] = web.RequestKey("operation", Operation)


async def read_json(request: web.Request) -> Any:
    """The request body, parsed and checked against the operation's declared schema.

    Garbage gets a problem document (415, 400, 413 or 422) naming what was wrong; nothing else runs.
    """
    operation = request.get(OPERATION_KEY)
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise Problem(413, f"body exceeds {MAX_BODY_BYTES} bytes")
    if request.content_type not in ("application/json", ""):
        raise Problem(415, f"expected application/json, got {request.content_type}")
    raw = await request.read()
    if len(raw) > MAX_BODY_BYTES:
        raise Problem(413, f"body exceeds {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Problem(400, f"body is not valid JSON: {exc}", kind="malformed-json") from None
    if operation is not None and operation.request is not None:
        validator = jsonschema.Draft202012Validator(operation.request)
        error = jsonschema.exceptions.best_match(validator.iter_errors(body))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(body)"
            raise Problem(422, f"{where}: {error.message}", kind="schema-violation", pointer=where)
    return body


def int_query(request: web.Request, name: str, default: int, *, minimum: int = 0, maximum: int = 10_000) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise Problem(400, f"query parameter {name} must be an integer", kind="bad-query") from None
    if not minimum <= value <= maximum:
        raise Problem(400, f"query parameter {name} must be in {minimum}..{maximum}", kind="bad-query")
    return value


def document(operations: Iterable[Operation], *, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document for the given operations."""
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        parameters: list[dict[str, Any]] = []
        for segment in op.path.split("/"):
            if segment.startswith("{") and segment.endswith("}"):
                name = segment[1:-1].split(":")[0]
                parameters.append({"name": name, "in": "path", "required": True, "schema": {"type": "string"}})
        for name, schema in op.query.items():
            parameters.append({"name": name, "in": "query", "required": False, "schema": dict(schema)})
        responses: dict[str, Any] = {}
        for status, response_schema in op.responses.items():
            entry: dict[str, Any] = {"description": _STATUS_TEXT.get(status, str(status))}
            if response_schema is not None:
                ctype = op.content_type if 200 <= status < 300 else PROBLEM_TYPE
                entry["content"] = {ctype: {"schema": dict(response_schema)}}
            responses[str(status)] = entry
        for status in _implicit_errors(op):
            responses.setdefault(str(status), {
                "description": _STATUS_TEXT.get(status, str(status)),
                "content": {PROBLEM_TYPE: {"schema": PROBLEM_SCHEMA}},
            })
        operation: dict[str, Any] = {
            "summary": op.summary,
            "operationId": f"{op.method.lower()}_{op.handler.__name__}",
            "tags": [op.tag],
            "responses": responses,
        }
        if parameters:
            operation["parameters"] = parameters
        if op.request is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": dict(op.request)}},
            }
        if op.auth != "none":
            operation["security"] = [{"bearer": []}]
        paths.setdefault(op.path, {})[op.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Problem": PROBLEM_SCHEMA},
        },
    }


def _implicit_errors(op: Operation) -> list[int]:
    statuses: list[int] = []
    if op.auth != "none":
        statuses += [401, 403]
    if op.request is not None:
        statuses += [400, 413, 415, 422]
    if op.query:
        statuses.append(400)
    if "{" in op.path:
        statuses.append(404)
    return statuses
