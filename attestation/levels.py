"""Graduated trust levels (ARCHITECTURE.md, "Trust"); the daemon's gates compare against these."""

from __future__ import annotations

from enum import IntEnum


class TrustLevel(IntEnum):
    """How much the node trusts a subject; higher levels imply every lower one."""

    UNTRUSTED = 0
    BASIC_AUTH = 1  # a token or password
    OAUTH_VERIFIED = 2  # a JWT from the identity provider, or the node's own software key
    HARDWARE_ATTESTED = 3  # a fresh TPM quote from an AK bound to a trusted EK, PCRs matching policy
    CRYPTOGRAPHICALLY_PROVEN = 4  # level 3, and this write is signed by the TPM-bound key
    MULTI_PARTY_VERIFIED = 5  # level 3 corroborated by a second verifier, or approved by two admins


# Without a TPM nothing is hardware-backed: a software key proves at most what a JWT proves.
SOFTWARE_TRUST_CAP = TrustLevel.OAUTH_VERIFIED
