"""The Hub entered after the broker link has connected (the daemon's order) still gets its subscriptions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from prometheus_client import CollectorRegistry

from daemon.hub import Hub
from daemon.hub.broker_auth import MosquittoFiles
from daemon.mosquitto import MosquittoProcess
from daemon.mqtt import BrokerLink
from daemon.store import Ed25519Signer, Store
from tests.hub.conftest import BASE, SERVICE_PASSWORD, SERVICE_USER, HubNode, connect_when_provisioned


async def test_hub_entered_after_the_link_connected(
        tmp_path: Path, secured_broker: tuple[MosquittoProcess, MosquittoFiles]) -> None:
    broker, files = secured_broker
    async with Store(tmp_path / "s.db", signer=Ed25519Signer.generate(), embedding_dim=4, ttl_sweep_s=0) as store:
        link = BrokerLink(host="127.0.0.1", port=broker.port, client_id="node", status_topic=f"{BASE}/status",
                          username=SERVICE_USER, password=SERVICE_PASSWORD, registry=CollectorRegistry())
        async with link:
            await asyncio.wait_for(link.connected.wait(), 10)
            async with Hub(store=store, broker=link, state_dir=tmp_path / "state", topic_base=BASE,
                           mosquitto_files=files, mcp=False) as hub:
                regs = {n: await hub.register({"id": n, "type": "GPT_AGENT", "owner": "o"}, privileged=True,
                                              actor="test") for n in ("a", "b")}
                helper = HubNode(tmp_path, broker, files, clock=None)  # type: ignore[arg-type]
                a, b = helper.mqtt(regs["a"]), helper.mqtt(regs["b"])
                await connect_when_provisioned(a)
                await connect_when_provisioned(b)
                try:
                    await b.subscribe(f"{BASE}/agents/b/inbox", qos=1)
                    await b.publish(f"{BASE}/agents/b/status", "online", qos=1, retain=True)
                    for _ in range(200):
                        if hub.registry.mqtt_online("b"):
                            break
                        await asyncio.sleep(0.01)
                    await a.publish(f"{BASE}/agents/a/outbox", json.dumps(
                        {"id": "x1", "from": "a", "to": "b", "type": "EVENT", "ts": 1.0, "body": 7}), qos=1)
                    async with asyncio.timeout(5):
                        async for message in b.messages:
                            assert json.loads(message.payload)["body"] == 7
                            break
                finally:
                    await a.__aexit__(None, None, None)
                    await b.__aexit__(None, None, None)
