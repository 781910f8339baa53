"""A real hub for the tests: Mosquitto with password/ACL files and no anonymous access, a SQLite store,
the hub, and the HTTP API built the way the daemon builds it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from prometheus_client import CollectorRegistry

from daemon.api import AdminTokenResolver, ApiServer, Readiness, build_app
from daemon.hub import Hub
from daemon.hub.broker_auth import MosquittoFiles, render_acl, render_passwords
from daemon.mosquitto import MosquittoProcess
from daemon.mqtt import BrokerLink
from daemon.store import Ed25519Signer, Store
from daemon.trust import TrustBook

ADMIN = "admin-token-for-tests-0123456789"
ENROL = "enrolment-token-for-tests-0123456789"
SERVICE_USER, SERVICE_PASSWORD = "mycoedge-node", "node-secret-for-tests"
BASE = "mycoedge/test-node"


class Clock:
    """Wall-clock time that a test can push forward."""

    def __init__(self) -> None:
        import time

        self._time = time.time
        self.offset = 0.0

    def __call__(self) -> float:
        return self._time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class HubNode:
    def __init__(self, tmp: Path, broker: MosquittoProcess, files: MosquittoFiles, clock: Clock) -> None:
        self.tmp = tmp
        self.broker_proc = broker
        self.files = files
        self.clock = clock
        self.trust = TrustBook(clock=clock)
        self.stack: AsyncExitStack | None = None
        self.hub: Hub
        self.base = ""
        self.session: aiohttp.ClientSession | None = None
        self.hub_kwargs: dict[str, Any] = {}

    async def start(self) -> None:
        stack = AsyncExitStack()
        await stack.__aenter__()
        self.stack = stack
        signer = Ed25519Signer.from_file(self.tmp / "node.key", create=True)
        store = await stack.enter_async_context(
            Store(self.tmp / "store.db", signer=signer, embedding_dim=4, ttl_sweep_s=0, integrity_check="off"))
        link = BrokerLink(host="127.0.0.1", port=self.broker_proc.port, client_id="mycoedge-test-node",
                          status_topic=f"{BASE}/status", username=SERVICE_USER, password=SERVICE_PASSWORD,
                          reconnect_max_s=0.5, registry=CollectorRegistry())
        self.hub = Hub(store=store, broker=link, state_dir=self.tmp / "state", topic_base=BASE,
                       mosquitto_files=self.files, clock=self.clock, trust=self.trust, enrolment_tokens=[ENROL],
                       sweep_interval_s=3600, **self.hub_kwargs)
        await stack.enter_async_context(link)
        await stack.enter_async_context(self.hub)
        async with asyncio.timeout(10):
            await link.connected.wait()
        app = build_app(tables=self.hub.routes_tables(), resolvers=[AdminTokenResolver(ADMIN), self.hub.token_resolver],
                        readiness=Readiness(), registry=CollectorRegistry())
        server = await stack.enter_async_context(ApiServer(app, listen=("127.0.0.1", 0), socket_path=None))
        self.base = f"http://127.0.0.1:{server.tcp_port}"
        self.session = await stack.enter_async_context(aiohttp.ClientSession())

    async def stop(self) -> None:
        if self.stack is not None:
            stack, self.stack = self.stack, None
            await stack.__aexit__(None, None, None)

    async def call(self, method: str, path: str, token: str | None = ADMIN, json: Any = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        assert self.session is not None
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        async with self.session.request(method, self.base + path, json=json, headers=hdrs) as resp:
            body = await resp.json(content_type=None) if resp.content_length != 0 else None
            return resp.status, body, dict(resp.headers)

    async def register(self, agent_id: str, type: str = "CLAUDE_CODE", **extra: Any) -> dict[str, Any]:
        status, body, _ = await self.call("POST", "/v1/agents", json={"id": agent_id, "type": type,
                                                                       "owner": extra.pop("owner", "alice"), **extra})
        assert status == 201, body
        return body  # type: ignore[no-any-return]

    def mqtt(self, creds: dict[str, Any], **kwargs: Any) -> aiomqtt.Client:
        mq = creds["credentials"]["mqtt"]
        return aiomqtt.Client("127.0.0.1", self.broker_proc.port, identifier=mq["username"], username=mq["username"],
                              password=mq["password"], protocol=aiomqtt.ProtocolVersion.V5, timeout=5, **kwargs)


@pytest.fixture
def secured_broker(tmp_path: Path) -> Iterator[tuple[MosquittoProcess, MosquittoFiles]]:
    holder: dict[str, MosquittoProcess] = {}
    files = MosquittoFiles(password_file=tmp_path / "mosq" / "passwd", acl_file=tmp_path / "mosq" / "acl",
                           pid=lambda: holder["b"].pid, service_users={SERVICE_USER: SERVICE_PASSWORD},
                           enrolment_password=ENROL)
    files.password_file.parent.mkdir(parents=True, exist_ok=True)
    files.password_file.write_text(render_passwords([], files))
    files.acl_file.write_text(render_acl([], topic_base=BASE, service_users=[SERVICE_USER]))
    broker = MosquittoProcess(
        tmp_path / "mosquitto", allow_anonymous=False,
        extra_config=f"password_file {files.password_file}\nacl_file {files.acl_file}\nuse_username_as_clientid true\n"
                     "set_tcp_nodelay true\n")
    holder["b"] = broker
    broker.start()
    try:
        yield broker, files
    finally:
        broker.stop()


@pytest.fixture
async def node(tmp_path: Path, secured_broker: tuple[MosquittoProcess, MosquittoFiles]) -> AsyncIterator[HubNode]:
    broker, files = secured_broker
    n = HubNode(tmp_path, broker, files, Clock())
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


async def connect_when_provisioned(client: aiomqtt.Client, timeout: float = 5.0) -> None:
    """Mosquitto applies a SIGHUP'd password file asynchronously: retry a refused connect briefly."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await client.__aenter__()
            return
        except aiomqtt.MqttError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def mqtt_agent(node: HubNode, creds: dict[str, Any], **kwargs: Any) -> AsyncIterator[aiomqtt.Client]:
    client = node.mqtt(creds, **kwargs)
    await connect_when_provisioned(client)
    try:
        yield client
    finally:
        await client.__aexit__(None, None, None)


# The mcp SDK, pydantic and hypothesis leave a large heap of long-lived objects; a full (gen 2) collection
# over it takes ~0.3 s on a loaded 2-core machine and trips the 0.25 s loop-blocking check. Freezing what
# exists after the imports keeps those objects out of every later collection (gc.freeze, Python 3.7+).
gc.freeze()
