"""Interoperability with tpm2-tools, an independent TSS implementation, both ways, on swtpm.

tpm2-tools talks to swtpm without a resource manager, and libtpms holds only 3 transient objects,
so the tools' transient objects are flushed (``tpm2_flushcontext -t``) between steps.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from tpm2_pytss import TPM2B_ENCRYPTED_SECRET, TPM2B_ID_OBJECT, TPML_DIGEST
from tpm2_pytss._libtpm2_pytss import ffi
from tpm2_pytss.utils import credential_to_tools, unmarshal_tools_pcr_values

from attestation import errors
from attestation.challenge import Verifier, VerifierPolicy
from attestation.levels import TrustLevel
from attestation.model import AttesterIdentity, Evidence, Quote
from attestation.pcr import PcrSelection
from attestation.swtpm import Swtpm
from attestation.tpm import Tpm

SELECTION = PcrSelection.parse("sha256:0-7,16")
TOOLS_SELECTION = "sha256:0,1,2,3,4,5,6,7,16"


class Tools:
    def __init__(self, swtpm: Swtpm, cwd: Path) -> None:
        self.env = dict(os.environ, TPM2TOOLS_TCTI=swtpm.tcti, TSS2_LOG="all+NONE")
        self.cwd = cwd

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            list(args), env=self.env, cwd=self.cwd, capture_output=True, text=True, timeout=30, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {result.stderr[-500:]}")
        return result

    def read(self, name: str) -> bytes:
        return (self.cwd / name).read_bytes()


def test_a_tpm2_tools_agent_reaches_level_3_in_mycoedge(swtpm_b: Swtpm, ca_bundle: bytes, tmp_path: Path) -> None:
    tools = Tools(swtpm_b, tmp_path)
    tools("tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub")
    tools("tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", "ecc", "-g", "sha256", "-s", "ecdsa", "-u", "ak.pub")
    tools("tpm2_flushcontext", "-t")
    tools("tpm2_nvread", "0x01c00002", "-o", "ek.crt")
    identity = AttesterIdentity(tools.read("ak.pub"), tools.read("ek.pub"), tools.read("ek.crt"))

    verifier = Verifier(VerifierPolicy(ca_bundle=ca_bundle, pcr_selection=SELECTION))
    challenge = verifier.issue_challenge("tools-agent", identity)
    assert challenge.credential_blob is not None and challenge.encrypted_secret is not None
    blob, _ = TPM2B_ID_OBJECT.unmarshal(challenge.credential_blob)
    secret, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(challenge.encrypted_secret)
    (tmp_path / "cred.blob").write_bytes(credential_to_tools(blob, secret))
    # The EK's policy (PolicySecret on the endorsement hierarchy) through a tools policy session.
    tools("tpm2_startauthsession", "--policy-session", "-S", "session.ctx")
    tools("tpm2_policysecret", "-S", "session.ctx", "-c", "e")
    tools("tpm2_activatecredential", "-c", "ak.ctx", "-C", "ek.ctx", "-i", "cred.blob", "-o", "proof",
          "-P", "session:session.ctx")  # fmt: skip
    tools("tpm2_flushcontext", "session.ctx")
    tools("tpm2_flushcontext", "-t")
    tools("tpm2_quote", "-c", "ak.ctx", "-l", TOOLS_SELECTION, "-q", challenge.nonce.hex(), "-m", "quote.msg",
          "-s", "quote.sig", "-o", "pcrs.bin", "-F", "values", "-g", "sha256")  # fmt: skip
    _, digests = unmarshal_tools_pcr_values(tools.read("pcrs.bin"), SELECTION.to_tpml())
    values = {"sha256": dict(zip(SELECTION.banks[0][1], digests, strict=True))}
    quote = Quote(tools.read("quote.msg"), tools.read("quote.sig"), SELECTION, values)
    evidence = Evidence(challenge.challenge_id, quote, identity, activation_proof=tools.read("proof"))
    grant = verifier.verify("tools-agent", Evidence.from_json(evidence.to_json()))
    assert grant.level == TrustLevel.HARDWARE_ATTESTED


def tools_serialized_pcrs(selection: PcrSelection, values: dict[int, bytes]) -> bytes:
    """tpm2-tools' "serialized" PCR file: the C structs TPML_PCR_SELECTION, a UINT32 count, then TPML_DIGESTs
    of up to 8 digests, as laid out in host memory (tpm2-tools' lib/pcr.c); taken from tpm2-pytss's cffi
    structs rather than written out by hand."""
    flat = [values[i] for i in selection.banks[0][1]]
    chunks = [flat[k : k + 8] for k in range(0, len(flat), 8)]
    out = bytes(ffi.buffer(selection.to_tpml()._cdata)) + len(chunks).to_bytes(4, "little")
    return out + b"".join(bytes(ffi.buffer(TPML_DIGEST(chunk)._cdata)) for chunk in chunks)


def test_a_mycoedge_quote_verifies_with_tpm2_checkquote(swtpm_a: Swtpm, tmp_path: Path) -> None:
    nonce = bytes(range(32))
    with Tpm.open(swtpm_a.tcti) as tpm:
        quote = tpm.quote(nonce, SELECTION)
        (tmp_path / "ak.pub").write_bytes(tpm.ak_public())
    (tmp_path / "quote.msg").write_bytes(quote.attest)
    (tmp_path / "quote.sig").write_bytes(quote.signature)
    values = dict(quote.pcr_values["sha256"])
    (tmp_path / "pcrs.bin").write_bytes(tools_serialized_pcrs(SELECTION, values))
    tools = Tools(swtpm_a, tmp_path)
    args = ["tpm2_checkquote", "-u", "ak.pub", "-m", "quote.msg", "-s", "quote.sig", "-f", "pcrs.bin", "-g", "sha256"]
    tools(*args, "-q", nonce.hex())
    # The checks are real: tpm2_checkquote refuses another nonce, and PCR values the TPM did not quote.
    assert tools(*args, "-q", bytes(32).hex(), check=False).returncode != 0
    values[16] = bytes(32 * [0xAA])
    (tmp_path / "pcrs.bin").write_bytes(tools_serialized_pcrs(SELECTION, values))
    assert tools(*args, "-q", nonce.hex(), check=False).returncode != 0


def test_a_tpm2_tools_rsa_ak_is_refused_as_wrong_algorithm(swtpm_b: Swtpm, ca_bundle: bytes, tmp_path: Path) -> None:
    tools = Tools(swtpm_b, tmp_path)
    tools("tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub")
    tools("tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", "rsa", "-g", "sha256", "-s", "rsassa", "-u", "ak.pub")
    tools("tpm2_flushcontext", "-t")
    verifier = Verifier(VerifierPolicy(ca_bundle=ca_bundle, pcr_selection=SELECTION))
    with pytest.raises(errors.AlgorithmError) as caught:
        verifier.issue_challenge("rsa-agent", AttesterIdentity(tools.read("ak.pub"), tools.read("ek.pub")))
    assert caught.value.reason == "wrong_algorithm"
