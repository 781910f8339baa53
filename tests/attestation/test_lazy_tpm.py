"""A node without a TPM never loads tpm2-pytss (about 20 MB of RSS), and the first TPM structure it reads does.

Runs in a fresh interpreter: this test process has long since imported tpm2-pytss for the swtpm tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import asyncio, json, sys
from pathlib import Path

import daemon.app, daemon.cli  # everything the daemon imports at start
from attestation import AttestationError, NodeAttestationConfig, NodeAttestor, Verifier, VerifierPolicy
from attestation.verify import read_public

async def main(state: Path) -> dict[str, object]:
    seen = {"after_import": "tpm2_pytss" in sys.modules}
    async with NodeAttestor(NodeAttestationConfig(state_dir=state, tcti=None, node_id="n")) as node:
        verifier = Verifier(VerifierPolicy(), verifier_id="n")
        challenge = verifier.issue_challenge("agent-1")
        signature = await node.sign(b"checkpoint")
        seen["mode"] = node.trust.mode
        seen["challenge"] = len(challenge.nonce)
        seen["signature"] = len(signature)
    seen["after_software_node"] = "tpm2_pytss" in sys.modules
    try:
        read_public(b"\x00\x02\xff\xff", "EK public")
    except AttestationError as exc:
        seen["garbage"] = type(exc).__name__
    seen["after_first_tpm_structure"] = "tpm2_pytss" in sys.modules
    return seen

print(json.dumps(asyncio.run(main(Path(sys.argv[1])))))
"""


def test_no_tpm_node_does_not_load_tpm2_pytss(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["after_import"] is False
    assert seen["mode"] == "software"
    assert seen["challenge"] == 32
    assert seen["signature"] == 64  # Ed25519
    assert seen["after_software_node"] is False
    assert seen["garbage"] == "EvidenceFormatError"
    assert seen["after_first_tpm_structure"] is True
