"""Every hub route is declared through Routes, so /openapi.json lists exactly what is served."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry

from daemon.api import Readiness, build_app
from tests.hub.conftest import HubNode


async def test_openapi_documents_exactly_the_hub_routes(node: HubNode) -> None:
    status, doc, _ = await node.call("GET", "/openapi.json", token=None)
    assert status == 200
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    app = build_app(tables=node.hub.routes_tables(), resolvers=[], readiness=Readiness(), registry=CollectorRegistry())
    served = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        canonical = route.resource.canonical if route.resource else ""
        served.add((route.method, re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", canonical)))
    assert documented == served
    for needed in [("POST", "/v1/agents"), ("GET", "/v1/users/{id}/agents"), ("POST", "/v1/handoffs/{id}/accept"),
                   ("GET", "/v1/agents/{id}/handoffs"), ("POST", "/v1/policies/{id}/test"), ("POST", "/mcp"),
                   ("GET", "/v1/agents/{id}/inbox"), ("POST", "/v1/pools/{id}/query")]:
        assert needed in documented
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids)), "operationIds are unique"
