"""HTTP errors as RFC 9457 ``application/problem+json`` documents.

Every error the API returns has this one shape, so agent authors parse one thing. Handlers raise
``Problem``; the middleware in ``daemon.api`` turns it (and any aiohttp HTTP error) into a response.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

PROBLEM_TYPE = "application/problem+json"
TYPE_BASE = "https://mycoedge.dev/problems/"

# The schema every error response is documented with in /openapi.json.
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
    "additionalProperties": True,
}


class Problem(Exception):
    """Raise from a handler to answer with a problem document (RFC 9457 §3)."""

    def __init__(
        self,
        status: int,
        detail: str = "",
        *,
        kind: str | None = None,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or str(status))
        self.status = status
        self.detail = detail
        self.kind = kind or HTTPStatus(status).phrase.lower().replace(" ", "-")
        self.title = title or HTTPStatus(status).phrase
        self.headers = dict(headers or {})
        self.extensions = extensions

    def response(self, instance: str = "") -> web.Response:
        body: dict[str, Any] = {
            "type": TYPE_BASE + self.kind,
            "title": self.title,
            "status": self.status,
        }
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        body.update(self.extensions)
        return web.Response(
            status=self.status,
            text=json.dumps(body),
            content_type=PROBLEM_TYPE,
            headers=self.headers,
        )
