"""PCR selections, PCR values and PCR policy (expected values or measured-boot event-log replay); pure."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from attestation.errors import PcrMismatchError, PcrSelectionError

# PC Client Platform TPM Profile (PTP) 2.0, section 4.6: a PC client TPM has 24 PCRs per bank.
PCR_COUNT = 24

if TYPE_CHECKING:
    from tpm2_pytss import TPML_PCR_SELECTION

# Banks we accept: name -> (TPM_ALG_ID, digest size). TCG Algorithm Registry 1.32, table 3. Plain integers,
# so that parsing selections and evidence does not load tpm2-pytss (about 20 MB of RSS): a node without a
# TPM never needs it.
BANKS: Mapping[str, tuple[int, int]] = {
    "sha1": (0x0004, 20),  # TPM_ALG_SHA1
    "sha256": (0x000B, 32),  # TPM_ALG_SHA256
    "sha384": (0x000C, 48),  # TPM_ALG_SHA384
    "sha512": (0x000D, 64),  # TPM_ALG_SHA512
}
_BANK_BY_ALG = {int(alg): name for name, (alg, _) in BANKS.items()}
_INDEX = re.compile(r"^(\d{1,2})(?:-(\d{1,2}))?$")

# bank name -> {pcr index -> value}
PcrValues = Mapping[str, Mapping[int, bytes]]


def bank_of_alg(alg: int) -> str:
    """The bank name for a TPM_ALG_ID, or PcrSelectionError for a hash we do not support."""
    try:
        return _BANK_BY_ALG[int(alg)]
    except KeyError:
        raise PcrSelectionError(f"unsupported PCR bank algorithm 0x{int(alg):04x}") from None


def digest_size(bank: str) -> int:
    return BANKS[bank][1]


@dataclass(frozen=True, slots=True)
class PcrSelection:
    """Which PCRs of which banks, in the TPM's canonical order (banks as given, indices ascending)."""

    banks: tuple[tuple[str, tuple[int, ...]], ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for bank, indices in self.banks:
            if bank not in BANKS:
                raise PcrSelectionError(f"unknown PCR bank {bank!r}")
            if bank in seen:
                raise PcrSelectionError(f"PCR bank {bank!r} selected twice")
            seen.add(bank)
            if list(indices) != sorted(set(indices)) or any(not 0 <= i < PCR_COUNT for i in indices):
                raise PcrSelectionError(f"PCR indices for {bank} must be ascending, unique, 0..23")

    @classmethod
    def parse(cls, text: str) -> PcrSelection:
        """Parse ``sha256:0-7,16+sha1:0`` (tpm2-tools syntax, plus ``a-b`` ranges and ``all``)."""
        banks: list[tuple[str, tuple[int, ...]]] = []
        for part in text.strip().split("+"):
            bank, sep, spec = part.strip().partition(":")
            if not sep or not spec:
                raise PcrSelectionError(f"PCR selection {text!r}: expected bank:indices")
            bank = bank.strip().lower()
            indices: set[int] = set()
            if spec.strip() == "all":
                indices.update(range(PCR_COUNT))
            else:
                for item in spec.split(","):
                    match = _INDEX.match(item.strip())
                    if match is None:
                        raise PcrSelectionError(f"PCR selection {text!r}: bad index {item!r}")
                    low = int(match.group(1))
                    high = int(match.group(2)) if match.group(2) is not None else low
                    if low > high or high >= PCR_COUNT:
                        raise PcrSelectionError(f"PCR selection {text!r}: bad range {item!r}")
                    indices.update(range(low, high + 1))
            banks.append((bank, tuple(sorted(indices))))
        return cls(tuple(banks))

    def __str__(self) -> str:
        return "+".join(f"{bank}:{','.join(str(i) for i in idx)}" for bank, idx in self.banks)

    def to_tpml(self) -> TPML_PCR_SELECTION:
        """The TPML_PCR_SELECTION for TPM2_Quote / TPM2_PCR_Read."""
        from tpm2_pytss import TPML_PCR_SELECTION, TPMS_PCR_SELECTION
        from tpm2_pytss.constants import TPM2_ALG

        selections = []
        for bank, indices in self.banks:
            bitmap = bytearray(3)  # TPM 2.0 Part 2, 10.6.1: pcrSelect is a bitmap, PCR n at byte n/8 bit n%8
            for i in indices:
                bitmap[i // 8] |= 1 << (i % 8)
            alg = TPM2_ALG(BANKS[bank][0])
            selections.append(TPMS_PCR_SELECTION(hash=alg, sizeofSelect=3, pcrSelect=bytes(bitmap)))
        return TPML_PCR_SELECTION(selections)

    @classmethod
    def from_tpml(cls, tpml: TPML_PCR_SELECTION) -> PcrSelection:
        """Read a TPML_PCR_SELECTION (e.g. the one inside a quote); empty bank entries are dropped."""
        banks: list[tuple[str, tuple[int, ...]]] = []
        for i in range(int(tpml.count)):
            sel = tpml.pcrSelections[i]
            bitmap = bytes(sel.pcrSelect)[: int(sel.sizeofSelect)]
            indices = tuple(n for n in range(len(bitmap) * 8) if bitmap[n // 8] & (1 << (n % 8)))
            if any(n >= PCR_COUNT for n in indices):
                raise PcrSelectionError("PCR index beyond 23 in selection")
            if indices:
                banks.append((bank_of_alg(int(sel.hash)), indices))
        return cls(tuple(banks))

    def chunks(self, size: int = 8) -> Iterable[PcrSelection]:
        """Sub-selections of at most ``size`` PCRs: TPM2_PCR_Read returns at most 8 digests per call."""
        for bank, indices in self.banks:
            for start in range(0, len(indices), size):
                yield PcrSelection(((bank, indices[start : start + size]),))

    def count(self) -> int:
        return sum(len(idx) for _, idx in self.banks)


def pcr_composite_digest(selection: PcrSelection, values: PcrValues, hash_name: str) -> bytes:
    """The digest a TPM puts in TPMS_QUOTE_INFO.pcrDigest: H(PCR values concatenated in selection order).

    TPM 2.0 Part 3, TPM2_Quote: the hash is the signing scheme's; the order is the selection's.
    Missing or wrongly sized values raise PcrMismatchError (the evidence does not cover the selection).
    """
    h = hashlib.new(hash_name)
    for bank, indices in selection.banks:
        bank_values = values.get(bank, {})
        for i in indices:
            value = bank_values.get(i)
            if value is None or len(value) != digest_size(bank):
                raise PcrMismatchError(f"PCR {bank}:{i} missing or of the wrong size")
            h.update(value)
    return h.digest()


def extend(old: bytes, bank: str, digest: bytes) -> bytes:
    """PCR extend (TPM 2.0 Part 1, 17.2): new = H(old || digest)."""
    return hashlib.new(bank, old + digest).digest()


@dataclass(frozen=True, slots=True)
class PcrPolicy:
    """What PCR values a verifier accepts.

    ``expected`` lists, per bank and PCR, the acceptable values (several, e.g. before and after an update).
    ``replay_event_log`` requires the PCRs the event log covers to equal the log's replay.
    """

    expected: Mapping[str, Mapping[int, tuple[bytes, ...]]] = field(default_factory=dict)
    replay_event_log: bool = False

    def check(self, values: PcrValues, events: Iterable[MeasuredEvent] | None = None) -> None:
        """Raise PcrMismatchError naming the first PCR that breaks the policy."""
        for bank, pcrs in self.expected.items():
            for index, allowed in pcrs.items():
                value = values.get(bank, {}).get(index)
                if value is None:
                    raise PcrMismatchError(f"PCR {bank}:{index} is required by policy but not quoted")
                if not any(hmac.compare_digest(value, a) for a in allowed):
                    raise PcrMismatchError(f"PCR {bank}:{index} = {value.hex()} is not an expected value")
        if self.replay_event_log:
            if events is None:
                raise PcrMismatchError("policy requires a measured-boot event log and none was given")
            check_replay(values, events)


@dataclass(frozen=True, slots=True)
class MeasuredEvent:
    """One measurement: PCR ``pcr`` was extended with ``digests[bank]`` (TCG_PCR_EVENT2 without data)."""

    pcr: int
    event_type: int
    digests: Mapping[str, bytes]
    data: bytes = b""


def replay(events: Iterable[MeasuredEvent], *, initial: PcrValues | None = None) -> dict[str, dict[int, bytes]]:
    """Replay a measurement log from reset values (zeros, or ``initial``): the PCRs the log predicts.

    TCG PC Client PFP 1.05, 10.2.5: EV_NO_ACTION events (type 3) are not extended.
    """
    state: dict[str, dict[int, bytes]] = {b: dict(v) for b, v in (initial or {}).items()}
    for event in events:
        if event.event_type == EV_NO_ACTION:
            continue
        for bank, digest in event.digests.items():
            if bank not in BANKS:
                continue  # a bank we do not verify; the log may carry more than the TPM has active
            current = state.setdefault(bank, {}).get(event.pcr, bytes(digest_size(bank)))
            state[bank][event.pcr] = extend(current, bank, digest)
    return state


def check_replay(values: PcrValues, events: Iterable[MeasuredEvent]) -> None:
    """Every quoted PCR the log touches must equal the replay; else PcrMismatchError naming the PCR."""
    predicted = replay(events)
    touched = 0
    for bank, pcrs in predicted.items():
        for index, expected in pcrs.items():
            value = values.get(bank, {}).get(index)
            if value is None:
                continue
            touched += 1
            if not hmac.compare_digest(value, expected):
                raise PcrMismatchError(f"PCR {bank}:{index} does not match the event log's replay")
    if touched == 0:
        raise PcrMismatchError("the event log covers none of the quoted PCRs")


# TCG PC Client Platform Firmware Profile 1.05, table 9: event types we name.
EV_NO_ACTION = 0x00000003
