"""Record real swtpm evidence for the pure tests: ``.venv/bin/python -m tests.attestation.record``.

Writes ``tests/attestation/data/recorded.json``: a CA bundle, a challenge answered by a freshly
manufactured swtpm (credential activation, quote over sha256:0-7,16 after extending PCR 16), a
level-4 write signature by the AK, and the deterministic "random" bytes the verifier drew, so a
``Verifier`` with the same ``random_bytes`` reproduces the exact challenge offline.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
from pathlib import Path

from attestation.agent import answer_challenge
from attestation.challenge import Verifier, VerifierPolicy, write_message
from attestation.pcr import PcrSelection
from attestation.swtpm import Swtpm, provision
from attestation.tpm import Tpm

OUT = Path(__file__).parent / "data" / "recorded.json"
ISSUED_AT = 1_800_000_000.0
WRITE_TS = ISSUED_AT + 5


def seeded_random(seed: bytes):  # type: ignore[no-untyped-def]
    """Deterministic 'random' bytes: SHA-256 in counter mode over a seed (tests only)."""
    counter = 0

    def draw(n: int) -> bytes:
        nonlocal counter
        out = b""
        while len(out) < n:
            out += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
            counter += 1
        return out[:n]

    return draw


def main() -> None:
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        state = provision(Path(tmp) / "state", Path(tmp) / "ca")
        selection = PcrSelection.parse("sha256:0-7,16")
        verifier = Verifier(
            VerifierPolicy(ca_bundle=state.ca_bundle.read_bytes(), pcr_selection=selection),
            clock=lambda: ISSUED_AT,
            random_bytes=seeded_random(b"recorded"),
        )
        with Swtpm(state) as sw, Tpm.open(sw.tcti, state_dir=Path(tmp) / "keys") as tpm:
            tpm.pcr_extend(16, hashlib.sha256(b"mycoedge recorded measurement").digest())
            identity = tpm.identity()
            challenge = verifier.issue_challenge("agent-1", identity)
            evidence = answer_challenge(tpm, challenge)
            verifier.verify("agent-1", evidence)  # the recording itself must verify
            write_sig = tpm.ak_sign(write_message("POST", "/v1/memory", b'{"x":1}', WRITE_TS))
        doc = {
            "seed": "recorded",
            "issued_at": ISSUED_AT,
            "subject": "agent-1",
            "ca_bundle": state.ca_bundle.read_text(),
            "challenge": challenge.to_json(),
            "evidence": evidence.to_json(),
            "write": {"method": "POST", "path": "/v1/memory", "body": b64(b'{"x":1}'), "timestamp": WRITE_TS,
                      "signature": b64(write_sig)},
        }  # fmt: skip
        OUT.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
