"""End to end on real swtpm processes: the node reaches level 3, an agent with its own swtpm reaches level 3
through challenge/verify (over the JSON wire form), and the refusals that need a real TPM to construct."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from attestation import errors
from attestation.agent import Attester
from attestation.challenge import Verifier, VerifierPolicy
from attestation.eventlog import encode_event_log, events_for
from attestation.levels import TrustLevel
from attestation.model import Challenge, Evidence
from attestation.node import NodeAttestationConfig, NodeAttestor
from attestation.pcr import PcrPolicy, PcrSelection
from attestation.swtpm import ProvisionedState, Swtpm, copy_state

SELECTION = PcrSelection.parse("sha256:0-7,16")


def verifier_for(ca_bundle: bytes, **policy: object) -> Verifier:
    return Verifier(VerifierPolicy(ca_bundle=ca_bundle, pcr_selection=SELECTION, **policy))  # type: ignore[arg-type]


async def attest_over_the_wire(verifier: Verifier, attester: Attester, subject: str, **respond: object) -> object:
    """What the daemon's two HTTP routes do, with every message through its JSON form."""
    identity = await attester.identity()
    challenge = verifier.issue_challenge(subject, identity)
    received = Challenge.from_json(challenge.to_json())
    evidence = await attester.respond(received, **respond)  # type: ignore[arg-type]
    return verifier.verify(subject, Evidence.from_json(evidence.to_json()))


def node_config(swtpm: Swtpm, tmp_path: Path, **changes: object) -> NodeAttestationConfig:
    config = NodeAttestationConfig(
        state_dir=tmp_path / "node-state", tcti=swtpm.tcti, ca_bundle=swtpm.ca_bundle,
        pcr_selection=str(SELECTION), node_id="node-1",
    )  # fmt: skip
    return replace(config, **changes)  # type: ignore[arg-type]


async def test_the_node_reaches_level_3_and_shows_it(swtpm_a: Swtpm, tmp_path: Path) -> None:
    async with NodeAttestor(node_config(swtpm_a, tmp_path)) as node:
        assert node.level == TrustLevel.HARDWARE_ATTESTED
        assert node.trust.ek_basis == "certificate"
        assert node.txt_record() == {"trust": "tpm", "trust_level": "3"}
        assert node.metrics()["mycoedge_trust_level"] == 3.0
        report = await node.describe()
    assert report["quote"]["verified"] is True
    assert [c["subject"] for c in report["ek"]["certificate_chain"]][1:] == [
        "CN=swtpm-localca", "CN=swtpm-localca-rootca"
    ]  # fmt: skip
    assert report["ek"]["chain_error"] is None
    assert set(report["pcrs"]["sha256"]) == {str(i) for i in (*range(8), 16)}


async def test_the_ak_and_sealed_keys_survive_a_restart(swtpm_a: Swtpm, tmp_path: Path) -> None:
    config = node_config(swtpm_a, tmp_path)
    async with NodeAttestor(config) as node:
        first_ak = node.trust.ak_name
        blob = await node.seal(b"k" * 32)
        signature = await node.sign(b"maif block")
        pem = node.signer_public_pem
    async with NodeAttestor(config) as node:
        assert node.trust.ak_name == first_ak
        assert await node.unseal(blob) == b"k" * 32
        assert node.signer_public_pem == pem
    key = serialization.load_pem_public_key(pem)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(signature, b"maif block", ec.ECDSA(hashes.SHA256()))  # a TPM-resident key signed the block


async def test_an_agent_with_its_own_swtpm_reaches_level_3_then_4(swtpm_b: Swtpm, ca_bundle: bytes) -> None:
    verifier = verifier_for(ca_bundle)
    async with Attester(swtpm_b.tcti) as agent:
        grant = await attest_over_the_wire(verifier, agent, "agent-7")
        assert grant.level == TrustLevel.HARDWARE_ATTESTED  # type: ignore[attr-defined]
        now = time.time()
        body = b'{"content": "spores"}'
        signature = await agent.sign_write(method="POST", path="/v1/memory", body=body, timestamp=now)
    proven = verifier.verify_signed_write(
        "agent-7", method="POST", path="/v1/memory", body=body, timestamp=now, signature=signature
    )
    assert proven.level == TrustLevel.CRYPTOGRAPHICALLY_PROVEN


async def test_an_ecc_ek_works_as_well(swtpm_b: Swtpm, ca_bundle: bytes, tmp_path: Path) -> None:
    async with Attester(swtpm_b.tcti, ek_kind="ecc384", state_dir=tmp_path) as agent:
        grant = await attest_over_the_wire(verifier_for(ca_bundle), agent, "agent-ecc")
    assert grant.level == TrustLevel.HARDWARE_ATTESTED  # type: ignore[attr-defined]


async def test_an_ak_from_another_tpm_is_not_bound_to_the_ek(swtpm_a: Swtpm, swtpm_b: Swtpm, ca_bundle: bytes) -> None:
    verifier = verifier_for(ca_bundle)
    async with Attester(swtpm_a.tcti) as honest, Attester(swtpm_b.tcti) as thief:
        # The thief presents TPM A's certified EK with its own AK: only TPM A could open the credential.
        claimed = replace(await honest.identity(), ak_public=(await thief.identity()).ak_public)
        challenge = verifier.issue_challenge("mallory", claimed)
        with pytest.raises(errors.TpmError):
            await thief.respond(challenge)
        quote = (await thief.respond(replace(challenge, credential_blob=None, encrypted_secret=None))).quote
    forged = Evidence(challenge.challenge_id, quote, claimed, activation_proof=bytes(32))
    with pytest.raises(errors.AkNotBoundError):
        verifier.verify("mallory", forged)


async def test_pcrs_off_policy_and_event_log_replay(swtpm_b: Swtpm, ca_bundle: bytes) -> None:
    measured = [hashlib.sha256(b"kernel").digest(), hashlib.sha256(b"initrd").digest()]
    log = encode_event_log(events_for({16: measured}))
    replaying = verifier_for(ca_bundle, pcr_policy=PcrPolicy(replay_event_log=True))
    pinned = verifier_for(ca_bundle, pcr_policy=PcrPolicy(expected={"sha256": {16: (bytes(32),)}}))
    async with Attester(swtpm_b.tcti) as agent:
        for digest in measured:
            await agent.run(lambda tpm, d=digest: tpm.pcr_extend(16, d))  # type: ignore[misc]
        grant = await attest_over_the_wire(replaying, agent, "booted", event_log=log)
        assert grant.level == TrustLevel.HARDWARE_ATTESTED  # type: ignore[attr-defined]
        with pytest.raises(errors.PcrMismatchError):
            await attest_over_the_wire(pinned, agent, "booted")
        await agent.run(lambda tpm: tpm.pcr_extend(16, hashlib.sha256(b"rootkit").digest()))
        with pytest.raises(errors.PcrMismatchError):
            await attest_over_the_wire(replaying, agent, "booted", event_log=log)
    assert pinned.stats()["refused_pcr_mismatch"] == 1


async def test_re_attestation_runs_on_schedule_and_level_lapses_with_quote_age(swtpm_a: Swtpm, tmp_path: Path) -> None:
    now = [time.time()]
    config = node_config(swtpm_a, tmp_path, interval_s=0.05, max_quote_age_s=60.0)
    async with NodeAttestor(config, clock=lambda: now[0]) as node:
        for _ in range(200):
            if node.metrics()["mycoedge_attestation_success_total"] >= 3:
                break
            await asyncio.sleep(0.02)
        assert node.metrics()["mycoedge_attestation_success_total"] >= 3
        now[0] += 61  # the schedule is stalled for a minute (clock jump): the quote ages out
        assert node.level == TrustLevel.UNTRUSTED
        assert node.trust.reason == "quote_too_old"
        assert (await node.attest()).level == TrustLevel.HARDWARE_ATTESTED


async def test_without_a_tpm_the_node_runs_on_a_software_key_capped_at_2(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    config = NodeAttestationConfig(state_dir=tmp_path, tcti=f"swtpm:host=127.0.0.1,port={port}")
    with caplog.at_level(logging.WARNING, logger="attestation.node"):
        async with NodeAttestor(config) as node:
            assert node.trust.mode == "software"
            assert node.level == TrustLevel.OAUTH_VERIFIED
            assert node.txt_record() == {"trust": "software", "trust_level": "2"}
            assert (await node.attest()).level == TrustLevel.OAUTH_VERIFIED
            signature = await node.sign(b"block")
            assert await node.unseal(await node.seal(b"dek")) == b"dek"
            key = serialization.load_pem_public_key(node.signer_public_pem)
    assert isinstance(key, ed25519.Ed25519PublicKey)
    key.verify(signature, b"block")
    assert any("SOFTWARE KEY" in r.getMessage() and "capped at level 2" in r.getMessage() for r in caplog.records)
    with pytest.raises(errors.TpmUnavailableError):
        async with NodeAttestor(replace(config, require_tpm=True)):
            pass


async def test_a_tpm_without_an_ek_certificate_attests_through_its_enrolled_ek_id(swtpm_b: Swtpm) -> None:
    # swtpm provisions no ECC P-256 EK certificate (NV 0x01c0000a): the verifier enrolls the EK's id instead.
    async with Attester(swtpm_b.tcti, ek_kind="ecc256") as agent:
        identity = await agent.identity()
        assert identity.ek_certificate is None
        certs = await agent.run(lambda tpm: tpm.ek_certificates())
        assert set(certs) == {"rsa2048", "ecc384"}
        from attestation.verify import ek_id

        enrolled = Verifier(
            VerifierPolicy(enrolled_ek_ids=frozenset({ek_id(identity.ek_public)}), pcr_selection=SELECTION)
        )
        grant = await attest_over_the_wire(enrolled, agent, "no-cert")
        assert grant.ek_basis == "enrolled"  # type: ignore[attr-defined]
        with pytest.raises(errors.EkNotEnrolledError):
            await attest_over_the_wire(Verifier(VerifierPolicy(pcr_selection=SELECTION)), agent, "no-cert")


async def test_a_pcr_bound_sealed_key_opens_only_in_the_same_pcr_state(swtpm_b: Swtpm) -> None:
    pcr16 = PcrSelection.parse("sha256:16")
    async with Attester(swtpm_b.tcti) as agent:
        blob = await agent.run(lambda tpm: tpm.seal(b"dek" * 8, pcrs=pcr16))
        assert await agent.run(lambda tpm: tpm.unseal(blob)) == b"dek" * 8
        await agent.run(lambda tpm: tpm.pcr_extend(16, hashlib.sha256(b"changed boot").digest()))
        with pytest.raises(errors.TpmError):
            await agent.run(lambda tpm: tpm.unseal(blob))


async def test_a_peer_node_attests_to_another_nodes_verifier(swtpm_a: Swtpm, tmp_path: Path, ca_bundle: bytes) -> None:
    peer_verifier = verifier_for(ca_bundle)
    async with NodeAttestor(node_config(swtpm_a, tmp_path)) as node:
        challenge = peer_verifier.issue_challenge("node-1", await node.identity())
        evidence = await node.respond(Challenge.from_json(challenge.to_json()))
    grant = peer_verifier.verify("node-1", Evidence.from_json(evidence.to_json()))
    assert grant.level == TrustLevel.HARDWARE_ATTESTED


async def test_the_node_reconnects_when_its_tpm_comes_back(
    manufactured: dict[str, ProvisionedState], tmp_path: Path
) -> None:
    state = copy_state(manufactured["a"], tmp_path / "tpm")
    swtpm = Swtpm(state).start()
    try:
        async with NodeAttestor(node_config(swtpm, tmp_path)) as node:
            assert node.level == TrustLevel.HARDWARE_ATTESTED
            swtpm.stop()
            lost = await node.attest()
            assert lost.level == TrustLevel.UNTRUSTED
            assert lost.reason == "tpm_error"
            swtpm = Swtpm(state, port=swtpm.port).start()
            assert (await node.attest()).level == TrustLevel.HARDWARE_ATTESTED
    finally:
        swtpm.stop()
