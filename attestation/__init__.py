"""TPM 2.0 access and pure verification of quotes and certificates from bytes.

Imports nothing of mycoedge's other packages (see shared/design/ARCHITECTURE.md). The daemon's API:

- ``NodeAttestor`` / ``NodeAttestationConfig`` (``attestation.node``): the node's own trust, keys and sealing.
- ``Verifier`` / ``VerifierPolicy`` / ``TrustGrant`` (``attestation.challenge``): remote challenge/verify.
- ``Challenge`` / ``Evidence`` / ``AttesterIdentity`` (``attestation.model``): the JSON wire forms.
- ``Attester`` (``attestation.agent``): the attesting side, for agents, peers, tests and the demo.
- ``TrustLevel`` (``attestation.levels``) and ``AttestationError`` with its ``reason`` codes (``attestation.errors``).
"""

from attestation.agent import Attester
from attestation.challenge import TrustGrant, Verifier, VerifierPolicy, write_message
from attestation.errors import AttestationError, EvidenceRefusedError
from attestation.levels import TrustLevel
from attestation.model import AttesterIdentity, Challenge, Evidence, Quote
from attestation.node import NodeAttestationConfig, NodeAttestor, NodeTrust
from attestation.pcr import PcrPolicy, PcrSelection

__all__ = [
    "AttestationError",
    "Attester",
    "AttesterIdentity",
    "Challenge",
    "Evidence",
    "EvidenceRefusedError",
    "NodeAttestationConfig",
    "NodeAttestor",
    "NodeTrust",
    "PcrPolicy",
    "PcrSelection",
    "Quote",
    "TrustGrant",
    "TrustLevel",
    "Verifier",
    "VerifierPolicy",
    "write_message",
]
