"""The TCG measured-boot event log (``/sys/kernel/security/tpm0/binary_bios_measurements``): pure codec.

Format: TCG PC Client Platform Firmware Profile 1.05, section 10.2. The log is little-endian (unlike TPM
marshalling, so tpm2-pytss's unmarshallers do not apply and it has no parser of its own). The first
record is a SHA-1-format TCG_PCClientPCREvent; when it is the "Spec ID Event03" EV_NO_ACTION the rest are
crypto-agile TCG_PCR_EVENT2 records whose digest sizes that header declares; otherwise the whole log is
SHA-1 format.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

from attestation.errors import EventLogFormatError, PcrSelectionError
from attestation.pcr import BANKS, EV_NO_ACTION, PCR_COUNT, MeasuredEvent, bank_of_alg

_SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"  # PFP 1.05, 10.4.5.1 TCG_EfiSpecIdEvent.signature
_MAX_EVENT_DATA = 1 << 20  # a bound on untrusted sizes; real events are at most a few KiB
_MAX_EVENTS = 100_000
_HEADER = struct.Struct("<II")  # pcrIndex, eventType


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise EventLogFormatError(f"event log truncated at offset {self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "little")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)


def _pcr(reader: _Reader) -> tuple[int, int]:
    pcr, event_type = _HEADER.unpack(reader.take(_HEADER.size))
    if pcr >= PCR_COUNT:
        raise EventLogFormatError(f"event for PCR {pcr} at offset {reader.pos - 8}")
    return pcr, event_type


def _event_data(reader: _Reader) -> bytes:
    size = reader.u32()
    if size > _MAX_EVENT_DATA:
        raise EventLogFormatError(f"event data of {size} bytes at offset {reader.pos - 4}")
    return reader.take(size)


def _spec_id_sizes(data: bytes) -> dict[int, int]:
    """Digest sizes by TPM_ALG_ID from a TCG_EfiSpecIdEvent (PFP 1.05, table 22)."""
    reader = _Reader(data)
    reader.take(16 + 4 + 4)  # signature, platformClass, version minor/major, errata, uintnSize
    count = reader.u32()
    if count == 0 or count > 16:
        raise EventLogFormatError(f"Spec ID event declares {count} algorithms")
    sizes: dict[int, int] = {}
    for _ in range(count):
        alg, size = reader.u16(), reader.u16()
        if size == 0 or size > 64:
            raise EventLogFormatError(f"Spec ID event: digest size {size} for algorithm 0x{alg:04x}")
        sizes[alg] = size
    return sizes


def parse_event_log(data: bytes) -> list[MeasuredEvent]:
    """Parse a binary event log into measurements; banks we do not know are skipped by size, not kept."""
    if not isinstance(data, bytes | bytearray):
        raise EventLogFormatError("event log must be bytes")
    reader = _Reader(bytes(data))
    events: list[MeasuredEvent] = []
    pcr, event_type = _pcr(reader)
    first_digest = reader.take(20)
    first_data = _event_data(reader)
    agile = event_type == EV_NO_ACTION and first_data.startswith(_SPEC_ID_SIGNATURE)
    events.append(MeasuredEvent(pcr, event_type, {} if agile else {"sha1": first_digest}, first_data))
    sizes = _spec_id_sizes(first_data) if agile else {}
    while not reader.done:
        if len(events) >= _MAX_EVENTS:
            raise EventLogFormatError("event log has too many events")
        pcr, event_type = _pcr(reader)
        digests: dict[str, bytes] = {}
        if agile:
            count = reader.u32()
            if count > len(sizes):
                raise EventLogFormatError(f"event declares {count} digests, header {len(sizes)} algorithms")
            for _ in range(count):
                alg = reader.u16()
                if alg not in sizes:
                    raise EventLogFormatError(f"digest of undeclared algorithm 0x{alg:04x}")
                digest = reader.take(sizes[alg])
                try:
                    bank = bank_of_alg(alg)
                except PcrSelectionError:  # a hash we do not verify (e.g. SM3): skipped by its size
                    continue
                if len(digest) != BANKS[bank][1]:
                    raise EventLogFormatError(f"{bank} digest of {len(digest)} bytes")
                digests[bank] = digest
        else:
            digests["sha1"] = reader.take(20)
        events.append(MeasuredEvent(pcr, event_type, digests, _event_data(reader)))
    return events


def encode_event_log(events: Sequence[MeasuredEvent], banks: Sequence[str] = ("sha256",)) -> bytes:
    """Encode measurements as a crypto-agile log with a Spec ID header (for tests and recorded fixtures).

    Every event must carry a digest for each of ``banks``; EV_NO_ACTION events may carry none.
    """
    algs = [(int(BANKS[b][0]), BANKS[b][1]) for b in banks]
    spec = bytearray(_SPEC_ID_SIGNATURE)
    spec += struct.pack("<IBBBB", 0, 0, 2, 0, 2)  # platformClass 0, spec 2.0 errata 0, uintnSize 2 (64-bit)
    spec += struct.pack("<I", len(algs))
    for alg, size in algs:
        spec += struct.pack("<HH", alg, size)
    spec += b"\x00"  # vendorInfoSize
    out = bytearray(_HEADER.pack(0, EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(spec)) + spec)
    for event in events:
        out += _HEADER.pack(event.pcr, event.event_type)
        present = [(alg, b) for (alg, _), b in zip(algs, banks, strict=True) if b in event.digests]
        out += struct.pack("<I", len(present))
        for alg, bank in present:
            out += struct.pack("<H", alg) + event.digests[bank]
        out += struct.pack("<I", len(event.data)) + event.data
    return bytes(out)


def events_for(
    digests: Mapping[int, Sequence[bytes]], bank: str = "sha256", event_type: int = 0x0D
) -> list[MeasuredEvent]:
    """Measurements from ``{pcr: [digest, ...]}`` (default type EV_IPL, 0x0D in PFP 1.05 table 9)."""
    return [MeasuredEvent(pcr, event_type, {bank: d}) for pcr, items in sorted(digests.items()) for d in items]
