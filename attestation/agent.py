"""The attester's side (an agent or a peer node with its own TPM): present keys, answer challenges, sign writes.

``Attester`` is an async context manager owning one TPM thread; every TPM call runs there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self, TypeVar

from attestation.challenge import write_message
from attestation.model import AttesterIdentity, Challenge, Evidence
from attestation.runner import ResourceThread

if TYPE_CHECKING:
    from attestation.tpm import Tpm

T = TypeVar("T")


def answer_challenge(tpm: Tpm, challenge: Challenge, *, event_log: bytes | None = None) -> Evidence:
    """Blocking: activate the challenge's credential (if any) and quote with its nonce and PCR selection."""
    proof = None
    if challenge.credential_blob is not None and challenge.encrypted_secret is not None:
        proof = tpm.activate_credential(challenge.credential_blob, challenge.encrypted_secret)
    quote = tpm.quote(challenge.nonce, challenge.pcr_selection)
    return Evidence(
        challenge_id=challenge.challenge_id,
        quote=quote,
        identity=tpm.identity(),
        activation_proof=proof,
        event_log=event_log,
    )


class Attester:
    """A TPM-backed attester: ``identity()`` for the challenge request, ``respond()`` for the verify request."""

    def __init__(self, tcti: str, *, state_dir: Path | None = None, ek_kind: str = "rsa2048") -> None:
        from attestation.tpm import Tpm

        self.tcti = tcti
        self._thread: ResourceThread[Tpm] = ResourceThread(
            lambda: Tpm.open(tcti, state_dir=state_dir, ek_kind=ek_kind), Tpm.close, name=f"tpm:{tcti}"
        )

    async def __aenter__(self) -> Self:
        await self._thread.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._thread.__aexit__(exc_type, exc, tb)

    async def run(self, fn: Callable[[Tpm], T]) -> T:
        """Run any blocking ``fn(tpm)`` in the TPM thread (escape hatch for pcr_extend, seal, ...)."""
        return await self._thread.call(fn)

    async def identity(self) -> AttesterIdentity:
        return await self._thread.call(lambda tpm: tpm.identity())

    async def respond(self, challenge: Challenge, *, event_log: bytes | None = None) -> Evidence:
        return await self._thread.call(lambda tpm: answer_challenge(tpm, challenge, event_log=event_log))

    async def sign_write(self, *, method: str, path: str, body: bytes, timestamp: float) -> bytes:
        """Sign a write for level 4 with the AK (a TPMT_SIGNATURE; see ``Verifier.verify_signed_write``)."""
        message = write_message(method, path, body, timestamp)
        return await self._thread.call(lambda tpm: tpm.ak_sign(message))
