"""MDP v1, the MycoBrain Device Protocol: a pure codec, ``bytes <-> Frame``, with no I/O.

Wire format (shared/design/PROTOCOLS.md section 1, firmware ``mdp_types.h``/``mdp_framing.cpp``):
``COBS(header(16) || JSON payload || crc16_le) || 0x00``. The header is little-endian and packed:
``magic u16 = 0xA15A, version u8 = 1, msg_type u8, seq u32, ack u32, flags u8, src u8, dst u8, rsv u8``.
The CRC is CRC-16/CCITT-FALSE over header and payload, low byte first.

Every way bytes can fail to be a frame raises (or, from ``FrameDecoder``, yields) an ``MdpError``
whose ``kind`` names a counter (``cobs``, ``short``, ``magic``, ``version``, ``crc``, ``oversize``,
``json``), so drivers count each kind per device without parsing messages.
"""

from __future__ import annotations

import binascii
import json
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any, ClassVar, Final

from drivers import cobs
from drivers.errors import CodecError

MAGIC: Final = 0xA15A  # mdp_types.h MDP_MAGIC
VERSION: Final = 1  # mdp_types.h MDP_VER
HEADER = struct.Struct("<HBBIIBBBB")  # mdp_hdr_v1_t, #pragma pack(1)
HEADER_SIZE: Final = HEADER.size  # 16
CRC_SIZE: Final = 2
MIN_RAW: Final = HEADER_SIZE + CRC_SIZE

# The firmware's receive buffer (main.cpp ``cobs_buffer[1024]``) holds at most 1024 encoded bytes:
# anything longer is dropped by the board. Frames we build for a board must fit.
BOARD_MAX_ENCODED: Final = 1024
# ArduinoJson 6 ``DynamicJsonDocument(512)`` on the ESP32: 16-byte slots, so 32 JSON values at most.
BOARD_MAX_JSON_VALUES: Final = 32
# What the host accepts from a board before it gives up on a frame and waits for the next delimiter.
DEFAULT_MAX_ENCODED: Final = 4096

# CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final XOR. ``binascii.crc_hqx`` is
# that polynomial, unreflected, with a caller-given initial value (check value "123456789" -> 0x29B1).
CRC_INIT: Final = 0xFFFF

# The board's serial loop treats 0x0A/0x0D as the end of a text command (PROTOCOLS.md section 1).
NEWLINE_BYTES: Final = frozenset(b"\n\r")


class MsgType(IntEnum):
    """``msg_type`` values (mdp_types.h ``MdpMsgType``); 0x07..0x09 belong to other products."""

    TELEMETRY = 0x01
    COMMAND = 0x02
    ACK = 0x03
    EVENT = 0x05
    HELLO = 0x06


class Flags(IntFlag):
    """``flags`` bits (mdp_types.h ``MdpFlags``)."""

    NONE = 0
    ACK_REQUESTED = 0x01
    IS_ACK = 0x02
    IS_NACK = 0x04


class Endpoint(IntEnum):
    """``src``/``dst`` endpoints (mdp_types.h ``EP_*``)."""

    SIDE_A = 0xA1
    SIDE_B = 0xB1
    GATEWAY = 0xC0
    BROADCAST = 0xFF


class MdpError(CodecError):
    """Bytes that are not an MDP v1 frame; ``kind`` is the counter name for this failure."""

    kind: ClassVar[str] = "frame"


class MdpCobsError(MdpError):
    kind = "cobs"


class FrameTooShortError(MdpError):
    kind = "short"


class BadMagicError(MdpError):
    kind = "magic"


class BadVersionError(MdpError):
    kind = "version"


class CrcMismatchError(MdpError):
    kind = "crc"


class FrameTooLargeError(MdpError):
    kind = "oversize"


class PayloadError(MdpError):
    """The frame is intact but its payload is not a UTF-8 JSON object."""

    kind = "json"


class UnencodableError(MdpError):
    """A frame the board would drop (too large, too many JSON values, or no newline-free encoding)."""

    kind = "unencodable"


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE of ``data``."""
    return binascii.crc_hqx(data, CRC_INIT)


@dataclass(frozen=True, slots=True)
class Frame:
    """One MDP v1 frame; ``payload`` is kept as the exact bytes sent so encoding round-trips."""

    msg_type: int
    seq: int = 0
    ack: int = 0
    flags: int = 0
    src: int = Endpoint.GATEWAY
    dst: int = Endpoint.SIDE_A
    payload: bytes = b""
    rsv: int = 0
    version: int = VERSION

    def header_bytes(self) -> bytes:
        """The 16-byte header; raises ``MdpError`` if a field does not fit its width."""
        try:
            return HEADER.pack(
                MAGIC, self.version, self.msg_type, self.seq, self.ack,
                self.flags, self.src, self.dst, self.rsv,
            )
        except struct.error as exc:
            raise MdpError(f"header field out of range: {exc}") from None

    def to_bytes(self) -> bytes:
        """``header || payload || crc16_le`` (the raw frame, before COBS)."""
        body = self.header_bytes() + self.payload
        return body + crc16(body).to_bytes(2, "little")

    @classmethod
    def from_bytes(cls, raw: bytes) -> Frame:
        """Parse a raw (COBS-decoded) frame; raises an ``MdpError`` subclass."""
        if len(raw) < MIN_RAW:
            raise FrameTooShortError(f"frame of {len(raw)} bytes is shorter than {MIN_RAW}")
        magic, version, msg_type, seq, ack, flags, src, dst, rsv = HEADER.unpack_from(raw)
        if magic != MAGIC:
            raise BadMagicError(f"magic 0x{magic:04X}, expected 0x{MAGIC:04X}")
        if version != VERSION:
            raise BadVersionError(f"version {version}, expected {VERSION}")
        got = int.from_bytes(raw[-2:], "little")
        want = crc16(raw[:-2])
        if got != want:
            raise CrcMismatchError(f"crc 0x{got:04X}, computed 0x{want:04X}")
        return cls(msg_type, seq, ack, flags, src, dst, bytes(raw[HEADER_SIZE:-2]), rsv, version)

    def json(self) -> dict[str, Any]:
        """The payload as a JSON object; raises ``PayloadError`` for anything else."""
        return parse_payload(self.payload)

    @property
    def type_name(self) -> str:
        return msg_type_name(self.msg_type)


def msg_type_name(msg_type: int) -> str:
    """The ``MsgType`` name, or ``0xNN`` for a type this host does not know (newer firmware)."""
    try:
        return MsgType(msg_type).name
    except ValueError:
        return f"0x{msg_type:02X}"


def parse_payload(payload: bytes) -> dict[str, Any]:
    """Decode a payload as a UTF-8 JSON object; raises ``PayloadError``."""
    try:
        value = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PayloadError(f"payload is not UTF-8 JSON: {exc}") from None
    if not isinstance(value, dict):
        raise PayloadError(f"payload is a JSON {type(value).__name__}, not an object")
    return value


def dump_payload(obj: Mapping[str, Any], *, pad: int = 0) -> bytes:
    """Compact JSON as ArduinoJson's ``serializeJson`` writes it; ``pad`` spaces after the first ``{``.

    The padding is insignificant JSON whitespace, used to steer the CRC and COBS code bytes away from
    0x0A/0x0D without changing meaning (PROTOCOLS.md section 1).
    """
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if pad and text.startswith("{"):
        text = "{" + " " * pad + text[1:]
    return text.encode("utf-8")


def encode(frame: Frame) -> bytes:
    """The frame as sent on the wire: ``COBS(raw) || 0x00``."""
    return cobs.encode(frame.to_bytes()) + b"\x00"


def encode_firmware(frame: Frame) -> bytes:
    """As ``encode``, byte for byte as MycoBrain's firmware encodes (see ``drivers.cobs``)."""
    return cobs.encode_firmware(frame.to_bytes()) + b"\x00"


def decode(encoded: bytes) -> Frame:
    """Decode one COBS-encoded frame; raises an ``MdpError`` subclass.

    One trailing 0x00 delimiter is accepted: a COBS encoding never contains 0x00, so it is unambiguous.
    """
    if encoded.endswith(b"\x00"):
        encoded = encoded[:-1]
    try:
        raw = cobs.decode(encoded)
    except cobs.CobsError as exc:
        raise MdpCobsError(str(exc)) from None
    return Frame.from_bytes(raw)


def count_json_values(value: object) -> int:
    """How many ArduinoJson slots a parsed payload needs: one per object member or array element."""
    if isinstance(value, dict):
        return sum(1 + count_json_values(v) for v in value.values())
    if isinstance(value, list):
        return sum(1 + count_json_values(v) for v in value)
    return 0


def has_newline_byte(data: bytes) -> bool:
    return b"\n" in data or b"\r" in data


def seq_is_wire_safe(seq: int) -> bool:
    """False when the little-endian ``seq`` itself holds 0x0A/0x0D: no padding can hide those bytes."""
    return not has_newline_byte(seq.to_bytes(4, "little"))


def encode_command(
    seq: int, name: str, params: Mapping[str, Any], *, dst: int, flags: int = Flags.ACK_REQUESTED,
    max_pad: int = 24,
) -> tuple[Frame, bytes]:
    """Build a host COMMAND frame the board will accept, and its wire bytes.

    The board drops frames over 1024 encoded bytes, payloads over 32 JSON values, and any frame whose
    encoding contains 0x0A/0x0D (its text-command parser eats it). The caller picks ``seq`` with
    ``seq_is_wire_safe``; here insignificant whitespace is added until the encoding is clean.
    Raises ``UnencodableError`` when no such encoding exists.
    """
    body: dict[str, Any] = {"cmd": name, "params": dict(params)}
    if count_json_values(body) > BOARD_MAX_JSON_VALUES:
        raise UnencodableError(f"command {name!r} has more than {BOARD_MAX_JSON_VALUES} JSON values")
    if not seq_is_wire_safe(seq):
        raise UnencodableError(f"seq {seq} contains a newline byte in its encoding")
    for pad in range(max_pad + 1):
        frame = Frame(MsgType.COMMAND, seq=seq, ack=0, flags=flags, src=Endpoint.GATEWAY, dst=dst,
                      payload=dump_payload(body, pad=pad))
        wire = encode(frame)
        if len(wire) - 1 > BOARD_MAX_ENCODED:
            raise UnencodableError(
                f"command {name!r} encodes to {len(wire) - 1} bytes (> {BOARD_MAX_ENCODED})"
            )
        if not has_newline_byte(wire):
            return frame, wire
    raise UnencodableError(f"no newline-free encoding of {name!r} with seq {seq}")


DecodeResult = Frame | MdpError


class FrameDecoder:
    """Streaming decoder: feed any bytes, get frames and errors; resynchronises at every 0x00.

    Never raises: every malformed chunk is returned as an ``MdpError`` for the caller to count. A chunk
    that fails but ends with a frame after a text line (boards print boot messages before their first
    frame) yields the frame, and the text bytes are counted in ``text_bytes``.
    """

    __slots__ = ("_buf", "_max", "_skipping", "text_bytes")

    def __init__(self, *, max_encoded: int = DEFAULT_MAX_ENCODED) -> None:
        self._buf = bytearray()
        self._max = max_encoded
        self._skipping = False
        self.text_bytes = 0

    def reset(self) -> None:
        """Forget a partial frame (after a reconnect the first bytes belong to a new stream)."""
        self._buf.clear()
        self._skipping = False

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[DecodeResult]:
        return list(self.iter_feed(data))

    def iter_feed(self, data: bytes) -> Iterator[DecodeResult]:
        start = 0
        n = len(data)
        while start < n:
            end = data.find(0, start)
            if end < 0:
                if not self._skipping:
                    self._buf += data[start:]
                    if len(self._buf) > self._max:
                        self._buf.clear()
                        self._skipping = True
                        yield FrameTooLargeError(f"no delimiter within {self._max} bytes")
                return
            if self._skipping:
                self._skipping = False
                self._buf.clear()
            else:
                if self._buf:
                    self._buf += data[start:end]
                    chunk = bytes(self._buf)
                    self._buf.clear()
                else:
                    chunk = data[start:end]
                if chunk:
                    if len(chunk) > self._max:
                        yield FrameTooLargeError(f"frame of {len(chunk)} encoded bytes")
                    else:
                        yield self._decode_chunk(chunk)
            start = end + 1

    def _decode_chunk(self, chunk: bytes) -> DecodeResult:
        try:
            return decode(chunk)
        except MdpError as exc:
            # Retry after each of the first few line ends: the text before a frame is a boot message.
            cut = -1
            for _ in range(8):
                cut = _next_line_end(chunk, cut + 1)
                if cut < 0 or cut + 1 >= len(chunk):
                    break
                try:
                    frame = decode(chunk[cut + 1 :])
                except MdpError:
                    continue
                self.text_bytes += cut + 1
                return frame
            return exc


def _next_line_end(data: bytes, start: int) -> int:
    ends = [i for i in (data.find(b"\n", start), data.find(b"\r", start)) if i >= 0]
    return min(ends) if ends else -1
