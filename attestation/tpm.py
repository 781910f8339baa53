"""A TPM 2.0 reached through tpm2-pytss: EK, a persisted AK, credential activation, quotes, PCRs, a
TPM-resident signing key and sealing.

Every method blocks on the TPM. ``Tpm`` is not thread-safe: one instance (one ESAPI context) belongs to
one thread; ``attestation.runner.TpmThread`` gives the event loop an async façade over it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tpm2_pytss import (
    ESAPI,
    TPM2B_DIGEST,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPML_DIGEST,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMS_SENSITIVE_CREATE,
    TPMT_HA,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF,
    TPMT_TK_HASHCHECK,
    TSS2_Exception,
)
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_RH, TPM2_SE, TPM2_ST, TPMA_OBJECT
from tpm2_pytss.utils import NoSuchIndex, NVReadEK, create_ek_template

from attestation.errors import AttestationError, TpmError, TpmUnavailableError
from attestation.model import AttesterIdentity, Quote
from attestation.pcr import BANKS, PcrSelection

_log = logging.getLogger(__name__)

# EK kinds: (tpm2-pytss template name from the TCG EK Credential Profile 2.0 section 2.2.1, the
# certificate's NV index, the persistent handle where provisioning tools leave that EK). 0x81010001 and
# 0x81010002 are from TCG's Provisioning Guidance 1.0, 7.8; 0x81010016 is where swtpm_setup puts its P-384 EK.
EK_KINDS: dict[str, tuple[str, int, int]] = {
    "rsa2048": ("EK-RSA2048", 0x01C00002, 0x81010001),
    "ecc256": ("EK-ECC256", 0x01C0000A, 0x81010002),
    "ecc384": ("EK-HIGH-ECC384", 0x01C00016, 0x81010016),
}

_AK_ATTRIBUTES = (
    TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    # Empty-auth keys gain nothing from dictionary-attack protection, and without NODA every unclean
    # shutdown (swtpm killed, power cut) counts as a failed try until the TPM locks out (TPM 2.0 Part 1, 19.8.6).
    | TPMA_OBJECT.NODA
)
_SIGNER_ATTRIBUTES = _AK_ATTRIBUTES & ~TPMA_OBJECT.RESTRICTED
_SEAL_ATTRIBUTES = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.NODA
# TPM 2.0 Part 2, 10.4.4: TPM2B_MAX_BUFFER, the most one TPM2_SequenceUpdate takes (1024 on PC TPMs).
_SEQUENCE_CHUNK = 1024
# TPM 2.0 Part 2, 11.1.16 (MAX_SYM_DATA): the most a sealed data object holds.
MAX_SEALED_BYTES = 128


def _ecc_p256_signing_template(attributes: int) -> TPM2B_PUBLIC:
    template = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256", objectAttributes=attributes)
    # A signing key has no symmetric algorithm (TPM 2.0 Part 2, 12.2.3.6).
    template.publicArea.parameters.eccDetail.symmetric.algorithm = TPM2_ALG.NULL
    return template


@contextlib.contextmanager
def _tpm_errors(what: str) -> Iterator[None]:
    """Translate tpm2-pytss errors at the package border."""
    try:
        yield
    except AttestationError:
        raise
    except TSS2_Exception as exc:
        raise TpmError(f"{what}: TPM returned 0x{int(exc.rc):x}") from None


@dataclass(frozen=True, slots=True)
class _KeyBlob:
    public: TPM2B_PUBLIC
    private: TPM2B_PRIVATE

    def to_bytes(self) -> bytes:
        return bytes(self.public.marshal()) + bytes(self.private.marshal())

    @classmethod
    def from_bytes(cls, data: bytes) -> _KeyBlob:
        blob, rest = cls.from_prefix(data)
        if rest:
            raise TpmError("stored key blob has trailing bytes")
        return blob

    @classmethod
    def from_prefix(cls, data: bytes) -> tuple[_KeyBlob, bytes]:
        try:
            public, used = TPM2B_PUBLIC.unmarshal(data)
            private, used2 = TPM2B_PRIVATE.unmarshal(data[used:])
        except (TSS2_Exception, ValueError) as exc:
            raise TpmError(f"stored key blob does not unmarshal ({type(exc).__name__})") from None
        return cls(public, private), data[used + used2 :]


class Tpm:
    """One open TPM with this node's EK and AK. Open it with ``Tpm.open`` (or as a context manager)."""

    def __init__(self, ectx: ESAPI, state_dir: Path | None, ek_kind: str) -> None:
        if ek_kind not in EK_KINDS:
            raise AttestationError(f"unknown EK kind {ek_kind!r}; expected one of {sorted(EK_KINDS)}")
        self._ectx = ectx
        self._state_dir = state_dir
        self._ek_kind = ek_kind
        self._ek_context: Any = None  # saved context (TPMS_CONTEXT): loaded only while in use
        self._ek_persistent: Any = None  # or the ESYS_TR of a provisioned persistent EK
        self._ek_public: TPM2B_PUBLIC | None = None
        self._ek_cert: bytes | None = None
        self._ak_handle: Any = None
        self._ak_public: TPM2B_PUBLIC | None = None
        self._srk_context: Any = None
        self._signer_context: Any = None
        self._signer_public: TPM2B_PUBLIC | None = None

    @classmethod
    def open(cls, tcti: str, *, state_dir: Path | None = None, ek_kind: str = "rsa2048") -> Tpm:
        """Open the TPM by TCTI string (``device:/dev/tpmrm0``, ``swtpm:host=…,port=…``, ``tabrmd``).

        ``state_dir`` keeps the AK and signing-key blobs (wrapped by the TPM, useless elsewhere) so the AK
        survives restarts; without it the AK lives for this process only.
        """
        os.environ.setdefault("TSS2_LOG", "all+NONE")
        try:
            ectx = ESAPI(tcti)
        except (TSS2_Exception, RuntimeError, OSError) as exc:
            raise TpmUnavailableError(f"cannot open TPM via {tcti!r}: {type(exc).__name__}") from None
        tpm = cls(ectx, state_dir, ek_kind)
        try:
            tpm._load_identity()
        except BaseException:
            tpm.close()
            raise
        return tpm

    def close(self) -> None:
        """Flush transient objects and close the ESAPI context (and its TCTI); idempotent."""
        ectx, self._ectx = self._ectx, None
        if ectx is None:
            return
        if self._ak_handle is not None:
            with contextlib.suppress(TSS2_Exception):
                ectx.flush_context(self._ak_handle)
        ectx.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def ectx(self) -> ESAPI:
        if self._ectx is None:
            raise TpmError("TPM is closed")
        return self._ectx

    # --- EK --------------------------------------------------------------------------------------------

    def _load_identity(self) -> None:
        template_name, _, persistent = EK_KINDS[self._ek_kind]
        with _tpm_errors("reading the EK certificate"):
            reader = NVReadEK(self.ectx)
            try:
                cert, template = create_ek_template(template_name, reader)
            except ValueError as exc:  # high-range EK without certificate: no template to recreate it
                raise TpmError(f"EK {self._ek_kind}: {exc}") from None
        self._ek_cert = _strip_der(cert) if cert else None
        self._ek_persistent = self._persistent_ek(persistent, template)
        if self._ek_persistent is not None:
            with _tpm_errors("reading the EK"):
                self._ek_public, _, _ = self.ectx.read_public(self._ek_persistent)
            _log.debug("EK %s at persistent handle 0x%08x", self._ek_kind, persistent)
        else:
            with _tpm_errors("creating the EK"):
                # The EK is derived from the endorsement seed: recreating it from the template yields the
                # key the certificate certifies (slow on some hardware TPMs, hence the persistent handle first).
                handle, public, _, _, _ = self.ectx.create_primary(None, template, ESYS_TR.ENDORSEMENT)
                self._ek_public = public
                self._ek_context = self._park(handle)
        self._load_or_create_ak()

    def _persistent_ek(self, handle: int, template: TPM2B_PUBLIC) -> Any:
        """The EK a provisioning tool left at ``handle``, if it is exactly the TCG template's key; else None."""
        try:
            tr = self.ectx.tr_from_tpmpublic(handle)
            public, _, _ = self.ectx.read_public(tr)
        except TSS2_Exception:
            return None  # no object there (TPM_RC_HANDLE): recreate the EK from its template
        expected = TPM2B_PUBLIC.unmarshal(bytes(template.marshal()))[0]
        expected.publicArea.unique = public.publicArea.unique
        if bytes(expected.marshal()) != bytes(public.marshal()):
            _log.warning("object at 0x%08x is not a default-template EK; recreating the EK instead", handle)
            with contextlib.suppress(TSS2_Exception):
                self.ectx.tr_close(tr)
            return None
        return tr

    def ek_public(self) -> bytes:
        """The EK public area, marshalled TPM2B_PUBLIC."""
        assert self._ek_public is not None
        return bytes(self._ek_public.marshal())

    def ek_certificate(self) -> bytes | None:
        """The EK certificate (DER) from the TCG NV index for this EK kind, or None when absent."""
        return self._ek_cert

    def ek_certificates(self) -> dict[str, bytes]:
        """Every EK certificate provisioned in NV, by EK kind (RSA-2048 0x01c00002, P-256 0x01c0000a, ...)."""
        found: dict[str, bytes] = {}
        reader = NVReadEK(self.ectx)
        for kind, (_, index, _) in EK_KINDS.items():
            try:
                found[kind] = _strip_der(reader(index))
            except NoSuchIndex:
                continue
            except TSS2_Exception:  # present but unreadable (locked): skip, as tpm2_getekcertificate does
                continue
        return found

    def identity(self) -> AttesterIdentity:
        """What this TPM presents to a verifier: AK and EK public areas and the EK certificate."""
        return AttesterIdentity(ak_public=self.ak_public(), ek_public=self.ek_public(), ek_certificate=self._ek_cert)

    def _ek_session(self) -> Any:
        """A policy session satisfying the EK's authPolicy, so the EK can parent the AK and activate credentials.

        TCG EK Credential Profile 2.0, B.3.3/B.6: low-range EKs use PolicyA = PolicySecret(TPM_RH_ENDORSEMENT);
        high-range EKs use PolicyB = PolicyOR(PolicyA, PolicyC) in their nameAlg, satisfied through branch A.
        """
        assert self._ek_public is not None
        area = self._ek_public.publicArea
        hash_name = {TPM2_ALG.SHA256: "sha256", TPM2_ALG.SHA384: "sha384"}.get(int(area.nameAlg))
        if hash_name is None:
            raise TpmError(f"EK nameAlg 0x{int(area.nameAlg):04x} is not supported")
        policy_a = _policy_secret_endorsement(hash_name)
        auth_policy = bytes(area.authPolicy)
        policy_c = _POLICY_C.get(hash_name, b"")
        if auth_policy not in (policy_a, _policy_or(hash_name, policy_a, policy_c)):
            raise TpmError("the EK's authPolicy is not one of the TCG default EK policies")
        session = self.ectx.start_auth_session(
            ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), area.nameAlg
        )
        try:
            self.ectx.policy_secret(ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
            if auth_policy != policy_a:
                self.ectx.policy_or(session, TPML_DIGEST([policy_a, policy_c]))
        except BaseException:
            with contextlib.suppress(TSS2_Exception):
                self.ectx.flush_context(session)
            raise
        return session

    def _under_ek(self, call: Any) -> Any:
        """Run ``call(ek_handle, session)`` with the EK loaded and its policy satisfied; flush both after."""
        with contextlib.ExitStack() as stack:
            ek = self._ek_persistent or stack.enter_context(self._loaded(self._ek_context))
            session = self._ek_session()
            try:
                return call(ek, session)
            finally:
                with contextlib.suppress(TSS2_Exception):
                    self.ectx.flush_context(session)

    def _park(self, handle: Any) -> Any:
        """Save a transient object's context and flush it: swtpm (libtpms) has only 3 object slots and
        the direct ``swtpm:``/``device:/dev/tpm0`` TCTIs have no resource manager to swap for us."""
        try:
            return self.ectx.context_save(handle)
        finally:
            self.ectx.flush_context(handle)

    @contextlib.contextmanager
    def _loaded(self, context: Any) -> Iterator[Any]:
        handle = self.ectx.context_load(context)
        try:
            yield handle
        finally:
            with contextlib.suppress(TSS2_Exception):
                self.ectx.flush_context(handle)

    # --- AK --------------------------------------------------------------------------------------------

    def _state_file(self, name: str) -> Path | None:
        if self._state_dir is None:
            return None
        return self._state_dir / f"{name}-{self._ek_kind}.blob"

    def _load_or_create_ak(self) -> None:
        path = self._state_file("ak")
        blob: _KeyBlob | None = None
        if path is not None and path.exists():
            blob = _KeyBlob.from_bytes(path.read_bytes())
            try:
                with _tpm_errors("loading the AK"):
                    self._ak_handle = self._under_ek(
                        lambda ek, session: self.ectx.load(ek, blob.private, blob.public, session1=session)
                    )
                self._ak_public = blob.public
                _log.debug("loaded persisted AK from %s", path)
                return
            except TpmError:
                # Another TPM (or a cleared one) cannot load this blob: make a fresh AK and say so.
                _log.warning("persisted AK in %s does not load on this TPM; creating a new AK", path)
        template = _ecc_p256_signing_template(_AK_ATTRIBUTES)
        with _tpm_errors("creating the AK"):
            private, public, _, _, _ = self._under_ek(
                lambda ek, session: self.ectx.create(ek, None, template, session1=session)
            )
            self._ak_handle = self._under_ek(lambda ek, session: self.ectx.load(ek, private, public, session1=session))
        self._ak_public = public
        if path is not None:
            _write_private(path, _KeyBlob(public, private).to_bytes())
            _log.info("created a new AK and persisted it in %s", path)

    def ak_public(self) -> bytes:
        """The AK public area, marshalled TPM2B_PUBLIC (what ``tpm2_createak -u`` writes)."""
        assert self._ak_public is not None
        return bytes(self._ak_public.marshal())

    def ak_name(self) -> bytes:
        assert self._ak_public is not None
        return bytes(self._ak_public.get_name())

    def activate_credential(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """TPM2_ActivateCredential with the AK and EK: the secret a verifier encrypted for this AK and EK."""
        try:
            blob, _ = TPM2B_ID_OBJECT.unmarshal(credential_blob)
            secret, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(encrypted_secret)
        except (TSS2_Exception, ValueError) as exc:
            raise TpmError(f"credential does not unmarshal ({type(exc).__name__})") from None
        with _tpm_errors("activating the credential"):
            result = self._under_ek(
                lambda ek, session: self.ectx.activate_credential(
                    self._ak_handle, ek, blob, secret, session1=ESYS_TR.PASSWORD, session2=session
                )
            )
        return bytes(result)

    # --- PCRs and quotes ---------------------------------------------------------------------------------

    def pcr_read(self, selection: PcrSelection) -> dict[str, dict[int, bytes]]:
        """Read PCR values; TPM2_PCR_Read returns at most 8 digests per call, so read in chunks."""
        values: dict[str, dict[int, bytes]] = {}
        for chunk in selection.chunks(8):
            with _tpm_errors("reading PCRs"):
                _, selected, digests = self.ectx.pcr_read(chunk.to_tpml())
            got = PcrSelection.from_tpml(selected)
            flat = [(bank, i) for bank, idx in got.banks for i in idx]
            for (bank, i), digest in zip(flat, digests, strict=True):
                values.setdefault(bank, {})[i] = bytes(digest)
            if got != chunk:
                raise TpmError(f"TPM did not return all of {chunk} (bank not active?)")
        return values

    def pcr_extend(self, index: int, digest: bytes, bank: str = "sha256") -> None:
        """Extend one PCR bank with a digest (TPM2_PCR_Extend); ``digest`` must be the bank's size."""
        alg, size = BANKS[bank]
        if len(digest) != size:
            raise AttestationError(f"a {bank} PCR extends with {size}-byte digests")
        value = TPMT_HA(hashAlg=TPM2_ALG(alg))
        value.digest.sha512 = digest + bytes(64 - size)  # union member of the largest size, TPM 2.0 Part 2 10.3.1
        with _tpm_errors("extending a PCR"):
            self.ectx.pcr_extend(ESYS_TR.PCR0 + index, TPML_DIGEST_VALUES([value]))

    def quote(self, nonce: bytes, selection: PcrSelection) -> Quote:
        """TPM2_Quote over ``selection`` with the verifier's nonce, plus the PCR values it covers.

        PCRs are read after the quote; if they changed in between, the digest check fails and the
        caller quotes again (as Keylime does) rather than trusting values the TPM did not sign.
        """
        with _tpm_errors("quoting"):
            attest, signature = self.ectx.quote(self._ak_handle, selection.to_tpml(), nonce)
        values = self.pcr_read(selection)
        return Quote(
            attest=bytes(attest),
            signature=bytes(signature.marshal()),
            pcr_selection=selection,
            pcr_values=values,
        )

    def ak_sign(self, data: bytes) -> bytes:
        """Sign arbitrary data with the restricted AK (a marshalled TPMT_SIGNATURE, ECDSA P-256/SHA-256).

        A restricted key signs only digests the TPM hashed itself and found not to start with
        TPM_GENERATED_VALUE (TPM 2.0 Part 1, 25.2.3.2), so the data goes through a hash sequence whose
        ticket authorises TPM2_Sign; data that mimics a TPM attestation is refused by the TPM.
        """
        with _tpm_errors("signing with the AK"):
            sequence = self.ectx.hash_sequence_start(b"", TPM2_ALG.SHA256)
            view = memoryview(data)
            while len(view) > _SEQUENCE_CHUNK:
                self.ectx.sequence_update(sequence, bytes(view[:_SEQUENCE_CHUNK]))
                view = view[_SEQUENCE_CHUNK:]
            digest, ticket = self.ectx.sequence_complete(sequence, bytes(view), ESYS_TR.OWNER)
            scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)
            signature = self.ectx.sign(self._ak_handle, digest, scheme, ticket)
        return bytes(signature.marshal())

    # --- storage root, TPM-resident signing key, sealing ------------------------------------------------

    @contextlib.contextmanager
    def _storage_root(self) -> Iterator[Any]:
        """The owner-hierarchy storage root key, loaded for the duration of the ``with``."""
        if self._srk_context is None:
            # An ECC P-256 storage primary (TCG TPM v2.0 Provisioning Guidance, 7.5.1 SRK template):
            # derived from the owner seed, so the same key every time, nothing stored.
            template = TPM2B_PUBLIC.parse(
                "ecc256:aes128cfb",
                objectAttributes=TPMA_OBJECT.DEFAULT_TPM2_TOOLS_CREATEPRIMARY_ATTRS | TPMA_OBJECT.NODA,
            )
            with _tpm_errors("creating the storage root key"):
                handle, _, _, _, _ = self.ectx.create_primary(None, template, ESYS_TR.OWNER)
                self._srk_context = self._park(handle)
        with _tpm_errors("loading the storage root key"), self._loaded(self._srk_context) as srk:
            yield srk

    @contextlib.contextmanager
    def _signing_key(self) -> Iterator[Any]:
        """The TPM-resident signing key (created once, blob kept in the state dir), loaded for the ``with``."""
        if self._signer_context is None:
            path = self._state_file("signer")
            with self._storage_root() as srk:
                if path is not None and path.exists():
                    blob = _KeyBlob.from_bytes(path.read_bytes())
                else:
                    template = _ecc_p256_signing_template(_SIGNER_ATTRIBUTES)
                    with _tpm_errors("creating the signing key"):
                        private, public, _, _, _ = self.ectx.create(srk, None, template)
                    blob = _KeyBlob(public, private)
                    if path is not None:
                        _write_private(path, blob.to_bytes())
                with _tpm_errors("loading the signing key"):
                    handle = self.ectx.load(srk, blob.private, blob.public)
            with _tpm_errors("parking the signing key"):
                self._signer_context = self._park(handle)
            self._signer_public = blob.public
        with _tpm_errors("loading the signing key"), self._loaded(self._signer_context) as key:
            yield key

    def signer_public_pem(self) -> bytes:
        """PEM public key of the TPM-resident ECDSA P-256 key that signs the MAIF block log."""
        with self._signing_key():
            pass
        assert self._signer_public is not None
        pem: bytes = self._signer_public.to_pem()
        return pem

    def sign(self, data: bytes) -> bytes:
        """A DER ECDSA-SHA-256 signature over ``data`` by the TPM-resident signing key (verifiable anywhere)."""
        digest = hashlib.sha256(data).digest()
        scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
        scheme.details.ecdsa.hashAlg = TPM2_ALG.SHA256
        # An unrestricted key signs an external digest with a NULL ticket (TPM 2.0 Part 3, 20.2).
        ticket = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)
        with self._signing_key() as key, _tpm_errors("signing"):
            signature = self.ectx.sign(key, TPM2B_DIGEST(digest), scheme, ticket)
        return bytes(signature)

    def seal(self, secret: bytes, *, pcrs: PcrSelection | None = None) -> bytes:
        """Seal up to 128 bytes (e.g. a data-encryption key) to this TPM; the blob is useless elsewhere.

        With ``pcrs``, the secret also opens only while those PCRs hold their current values
        (TPM2_PolicyPCR): a changed boot chain cannot unseal it.
        """
        if not 0 < len(secret) <= MAX_SEALED_BYTES:
            raise AttestationError(f"a sealed secret holds 1..{MAX_SEALED_BYTES} bytes")
        attributes = _SEAL_ATTRIBUTES
        policy = b""
        if pcrs is not None:
            attributes &= ~TPMA_OBJECT.USERWITHAUTH  # policy only (TPM 2.0 Part 1, 19.7.2)
            with _tpm_errors("computing the PCR policy"):
                session = self.ectx.start_auth_session(
                    ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256
                )
                try:
                    self.ectx.policy_pcr(session, b"", pcrs.to_tpml())  # empty digest: the PCRs' current values
                    policy = bytes(self.ectx.policy_get_digest(session))
                finally:
                    self.ectx.flush_context(session)
        template = TPM2B_PUBLIC.parse("keyedhash", objectAttributes=attributes)
        template.publicArea.authPolicy = policy
        sensitive = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(data=secret))
        with self._storage_root() as srk, _tpm_errors("sealing"):
            private, public, _, _, _ = self.ectx.create(srk, sensitive, template)
        blob = _KeyBlob(public, private).to_bytes()
        return blob + (bytes(pcrs.to_tpml().marshal()) if pcrs is not None else b"")

    def unseal(self, blob: bytes) -> bytes:
        """Recover a secret sealed by ``seal`` on this same TPM (and, if PCR-bound, in the same PCR state)."""
        key, rest = _KeyBlob.from_prefix(blob)
        pcrs = None
        if rest:
            try:
                pcrs, used = TPML_PCR_SELECTION.unmarshal(rest)
            except (TSS2_Exception, ValueError) as exc:
                raise TpmError(f"sealed blob's PCR selection does not unmarshal ({type(exc).__name__})") from None
            if used != len(rest):
                raise TpmError("sealed blob has trailing bytes")
        with self._storage_root() as srk, _tpm_errors("unsealing"):
            handle = self.ectx.load(srk, key.private, key.public)
            session = ESYS_TR.PASSWORD
            try:
                if pcrs is not None:
                    session = self.ectx.start_auth_session(
                        ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                        TPM2_ALG.SHA256,
                    )  # fmt: skip
                    self.ectx.policy_pcr(session, b"", pcrs)
                return bytes(self.ectx.unseal(handle, session1=session))
            finally:
                if session != ESYS_TR.PASSWORD:
                    with contextlib.suppress(TSS2_Exception):
                        self.ectx.flush_context(session)
                self.ectx.flush_context(handle)


# TCG EK Credential Profile 2.0 (v2.5), table 21: PolicyC (PolicyAuthorizeNV on index 0x01C07F01) in SHA-384;
# checked at run time by recomputing the template's PolicyB from it.
_POLICY_C = {
    "sha384": bytes.fromhex(
        "d6032ce61f2fb3c240eb3cf6a33237ef2b6a16f4293c22b455e261cffd217ad5b4947c2d73e63005eed2dc2b3593d165"
    ),
}
_TPM_CC_POLICY_SECRET = 0x00000151  # TPM 2.0 Part 2, 6.5.2
_TPM_CC_POLICY_OR = 0x00000171
_TPM_RH_ENDORSEMENT = 0x4000000B  # TPM 2.0 Part 2, 7.4


def _policy_secret_endorsement(hash_name: str) -> bytes:
    """PolicyA: PolicySecret(TPM_RH_ENDORSEMENT) with empty policyRef (TPM 2.0 Part 3, 23.4)."""
    size = hashlib.new(hash_name).digest_size
    first = hashlib.new(
        hash_name, bytes(size) + _TPM_CC_POLICY_SECRET.to_bytes(4, "big") + _TPM_RH_ENDORSEMENT.to_bytes(4, "big")
    ).digest()
    return hashlib.new(hash_name, first).digest()


def _policy_or(hash_name: str, *branches: bytes) -> bytes:
    """PolicyOR from a reset digest (TPM 2.0 Part 3, 23.6)."""
    size = hashlib.new(hash_name).digest_size
    return hashlib.new(hash_name, bytes(size) + _TPM_CC_POLICY_OR.to_bytes(4, "big") + b"".join(branches)).digest()


def _strip_der(data: bytes) -> bytes:
    """NV indices may be larger than the certificate: keep the DER SEQUENCE's own length (X.690 8.1.3)."""
    if len(data) >= 4 and data[0] == 0x30 and data[1] == 0x82:
        return data[: 4 + int.from_bytes(data[2:4], "big")]
    return data


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
