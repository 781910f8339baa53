"""Attestation through the whole daemon: the node reaches level 3 on swtpm; an agent earns it over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from attestation import Attester, Challenge
from attestation.swtpm import Swtpm
from tests.harness import node_config, running_node


@pytest.fixture
async def node(tmp_path: Path, swtpm_a: Swtpm) -> AsyncIterator[tuple[str, dict[str, str]]]:
    raw = node_config(tmp_path, node={"id": "trusty"},
                      trust={"tcti": swtpm_a.tcti, "ek_ca_bundle": str(swtpm_a.ca_bundle)})
    async with running_node(raw) as running:
        yield running.url, running.headers


async def test_node_reaches_level_3_and_an_agent_earns_it_over_http(
    node: tuple[str, dict[str, str]], swtpm_b: Swtpm
) -> None:
    url, headers = node
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(url + "/v1/attestation/node") as resp:
            trust = await resp.json()
        assert (trust["trust"], trust["level"]) == ("tpm", 3), trust
        async with session.get(url + "/metrics") as resp:
            metrics = await resp.text()
        assert "mycoedge_trust_level 3.0" in metrics

        async with Attester(swtpm_b.tcti) as agent:
            identity = (await agent.identity()).to_json()
            async with session.post(url + "/v1/attestation/challenge", json=identity) as resp:
                assert resp.status == 200, await resp.text()
                challenge = Challenge.from_json(await resp.json())
            evidence: dict[str, Any] = (await agent.respond(challenge)).to_json()
        async with session.post(url + "/v1/attestation/verify", json=evidence) as resp:
            assert resp.status == 200, await resp.text()
            grant = await resp.json()
        assert grant["level"] == 3 and grant["expires_at"] > 0
        # The same evidence again is a replay, refused with its own reason.
        async with session.post(url + "/v1/attestation/verify", json=evidence) as resp:
            assert resp.status == 403
            problem = await resp.json(content_type=None)
        assert problem["reason"] == "nonce_replayed"
        async with session.get(url + "/metrics") as resp:
            metrics = await resp.text()
        # The node's own self-attestation goes through the same verifier, hence "at least one" accepted.
        assert 'mycoedge_attestation_remote{counter="refused_nonce_replayed"} 1.0' in metrics
        assert 'mycoedge_attestation_remote{counter="accepted"} 0.0' not in metrics


async def test_without_a_tpm_the_node_says_software_at_level_2(tmp_path: Path) -> None:
    async with running_node(node_config(tmp_path, trust={"tcti": "none"})) as running, \
            aiohttp.ClientSession() as session, session.get(running.url + "/metrics") as resp:
        text = await resp.text()
    assert "mycoedge_trust_level 2.0" in text
    assert "mycoedge_trust_software 1.0" in text


async def test_attestation_opens_a_level_3_operation_refused_before(
    node: tuple[str, dict[str, str]], swtpm_b: Swtpm
) -> None:
    url, admin = node
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/v1/agents", headers=admin,
                                json={"id": "field-agent", "type": "HUMAN", "owner": "ops"}) as resp:
            assert resp.status == 201, await resp.text()
            token = (await resp.json())["credentials"]["api_token"]
        agent = {"Authorization": f"Bearer {token}"}
        async with session.post(url + "/v1/pools", headers=admin, json={"name": "shared", "scope": "TEAM"}) as resp:
            assert resp.status == 201, await resp.text()
            pool = (await resp.json())["id"]
        async with session.post(f"{url}/v1/pools/{pool}/members", headers=admin,
                                json={"agent_id": "field-agent", "permission": "WRITE"}) as resp:
            assert resp.status == 200, await resp.text()

        async def write_shared() -> tuple[int, dict[str, Any]]:
            async with session.post(url + "/v1/memories", headers=agent,
                                    json={"content": "mycelium density up 4 %", "pool": pool}) as resp:
                return resp.status, await resp.json(content_type=None)

        status, body = await write_shared()
        assert status == 403 and body["needed_level"] == 3, body  # a bare token is level 1

        async with Attester(swtpm_b.tcti) as tpm:
            identity = (await tpm.identity()).to_json()
            async with session.post(url + "/v1/attestation/challenge", headers=agent, json=identity) as resp:
                challenge = Challenge.from_json(await resp.json())
            evidence = (await tpm.respond(challenge)).to_json()
        async with session.post(url + "/v1/attestation/verify", headers=agent, json=evidence) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["subject"] == "field-agent"

        status, body = await write_shared()
        assert status == 201, body


async def test_the_tpm_key_signs_the_block_log_and_a_sealed_key_encrypts_payloads(
    tmp_path: Path, swtpm_a: Swtpm
) -> None:
    import base64
    import sqlite3

    state = tmp_path / "s"

    async def run_node(body: dict[str, Any] | None) -> dict[str, Any]:
        raw = node_config(tmp_path, node={"id": "sealer", "state_dir": str(state)},
                          trust={"tcti": swtpm_a.tcti, "ek_ca_bundle": str(swtpm_a.ca_bundle)},
                          store={"encrypt_payloads": True})
        out: dict[str, Any] = {}
        async with running_node(raw) as running, aiohttp.ClientSession(headers=running.headers) as session:
            url = running.url
            if body is not None:
                async with session.post(url + "/v1/maif/blocks", json=body) as resp:
                    assert resp.status in (200, 201), await resp.text()
            async with session.get(url + "/v1/maif/blocks") as resp:
                out["blocks"] = (await resp.json())["blocks"]
            async with session.post(url + "/v1/maif/verify") as resp:
                out["verify"] = await resp.json()
        return out

    first = await run_node({"fourcc": "TEXT", "text": "spore count 1.2e6/m3"})
    assert first["verify"]["ok"] is True
    assert first["blocks"][0]["encrypted"] is True
    with sqlite3.connect(state / "mycoedge.db") as db:
        algorithms = {row[0] for row in db.execute("SELECT algorithm FROM signers")}
        stored = db.execute("SELECT payload FROM blocks").fetchone()[0]
    assert "ECDSA-P256-SHA256" in algorithms
    assert b"spore" not in bytes(stored)
    assert (state / "maif.key.sealed").exists() and not (state / "maif.key").exists()
    # A restart unseals the same key from the same TPM and still reads the payload.
    again = await run_node(None)
    assert again["verify"]["ok"] is True
    assert base64.b64decode(again["blocks"][0]["payload_b64"]) == b"spore count 1.2e6/m3"


async def test_a_write_signed_by_the_attested_key_is_level_4_for_that_request_only(
    tmp_path: Path, swtpm_a: Swtpm, swtpm_b: Swtpm
) -> None:
    import base64
    import json
    import time

    raw = node_config(tmp_path, trust={"tcti": swtpm_a.tcti, "ek_ca_bundle": str(swtpm_a.ca_bundle)},
                      hub={"trust_gates": "write_shared=4"})
    async with running_node(raw) as running, aiohttp.ClientSession() as session:
        url, admin = running.url, running.headers
        async with session.post(url + "/v1/agents", headers=admin,
                                json={"id": "signer", "type": "HUMAN", "owner": "ops"}) as resp:
            agent = {"Authorization": f"Bearer {(await resp.json())['credentials']['api_token']}"}
        async with session.post(url + "/v1/pools", headers=admin, json={"name": "p", "scope": "TEAM"}) as resp:
            pool = (await resp.json())["id"]
        async with session.post(f"{url}/v1/pools/{pool}/members", headers=admin,
                                json={"agent_id": "signer", "permission": "WRITE"}) as resp:
            assert resp.status == 200
        body = json.dumps({"content": "hyphal growth 3 mm/day", "pool": pool}).encode()
        async with Attester(swtpm_b.tcti) as tpm:
            async with session.post(url + "/v1/attestation/challenge", headers=agent,
                                    json=(await tpm.identity()).to_json()) as resp:
                challenge = Challenge.from_json(await resp.json())
            async with session.post(url + "/v1/attestation/verify", headers=agent,
                                    json=(await tpm.respond(challenge)).to_json()) as resp:
                assert resp.status == 200
            plain = {**agent, "Content-Type": "application/json"}
            async with session.post(url + "/v1/memories", headers=plain, data=body) as resp:
                refused = await resp.json(content_type=None)
                assert resp.status == 403 and refused["needed_level"] == 4, refused  # level 3 is not enough
            ts = time.time()
            signature = await tpm.sign_write(method="POST", path="/v1/memories", body=body, timestamp=ts)
        signed = {**plain, "X-Mycoedge-Signature": base64.b64encode(signature).decode(),
                  "X-Mycoedge-Timestamp": f"{ts:.3f}"}
        async with session.post(url + "/v1/memories", headers=signed, data=body) as resp:
            assert resp.status == 201, await resp.text()
        async with session.post(url + "/v1/memories", headers=signed, data=body) as resp:
            problem = await resp.json(content_type=None)
            assert resp.status == 403 and problem["reason"] == "nonce_replayed"
        # Level 4 held for that request only.
        async with session.post(url + "/v1/memories", headers=plain, data=body) as resp:
            assert resp.status == 403
