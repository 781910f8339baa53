"""Line codec for ``BODY*CC\\r\\n`` lines, checksummed as NMEA 0183 does (PROTOCOLS.md section 2).

``CC`` is two hexadecimal digits of the XOR of every byte of ``BODY`` (NMEA 0183, section 5.2.1; the
leading ``$`` of a real NMEA sentence is absent here). The codec is pure: bytes in, text out, and every
problem is a ``LineError`` carrying what was wrong, so a caller can count it and go on.
"""

from __future__ import annotations

from drivers.errors import CodecError

CHECKSUM_SEPARATOR = 0x2A  # '*'
TERMINATOR = b"\r\n"
MAX_LINE = 512  # the bridge's longest line (CAL: 4 + 84 digits + checksum) is far below this


class LineError(CodecError):
    """A line that is not ``BODY*CC`` with a matching checksum; ``kind`` names the fault for counters."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def checksum(body: bytes) -> int:
    """XOR of every byte of ``body`` (NMEA 0183 checksum)."""
    value = 0
    for byte in body:
        value ^= byte
    return value


def encode_line(body: str) -> bytes:
    """``BODY*CC\\r\\n`` for an ASCII body that holds neither ``*`` nor a line break."""
    raw = body.encode("ascii")
    if b"*" in raw or b"\r" in raw or b"\n" in raw:
        raise LineError("body", "a body must not contain '*', CR or LF")
    return raw + b"*" + f"{checksum(raw):02X}".encode("ascii") + TERMINATOR


def decode_line(line: bytes) -> str:
    """The body of one line (with or without its CR LF), after checking its checksum.

    Hex digits of the checksum are accepted in either case: NMEA talkers differ and the bridge firmware's
    choice is not documented.
    """
    if len(line) > MAX_LINE:
        raise LineError("length", f"{len(line)} bytes exceeds {MAX_LINE}")
    stripped = line.rstrip(b"\r\n")
    star = stripped.rfind(b"*")
    if star < 0:
        raise LineError("format", "no '*' checksum separator")
    body, tail = stripped[:star], stripped[star + 1 :]
    if len(tail) != 2:
        raise LineError("format", f"checksum field has {len(tail)} characters, expected 2")
    try:
        expected = int(tail.decode("ascii"), 16)
        text = body.decode("ascii")
    except (UnicodeDecodeError, ValueError) as exc:
        raise LineError("format", "checksum or body is not ASCII hex/text") from exc
    if not tail.isalnum():  # int() accepts '+1', ' 1' and '_': a real checksum is two hex digits
        raise LineError("format", "checksum is not two hex digits")
    if any(c < 0x20 or c > 0x7E for c in body):
        raise LineError("format", "body has control characters")
    actual = checksum(body)
    if actual != expected:
        raise LineError("checksum", f"line says {expected:02X}, body gives {actual:02X}")
    return text


class LineSplitter:
    """Cuts a byte stream into lines at LF, dropping (and counting) lines longer than ``MAX_LINE``."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._buffer = bytearray()
        self._max = max_line
        self._discarding = False
        self.overlong = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Every line completed by ``data``, without its CR LF; overlong lines are dropped and counted."""
        lines: list[bytes] = []
        *complete, rest = data.split(b"\n")
        for piece in complete:
            self._buffer += piece
            if self._discarding or len(self._buffer) > self._max:
                if not self._discarding:
                    self.overlong += 1
            else:
                lines.append(bytes(self._buffer).rstrip(b"\r"))
            self._buffer.clear()
            self._discarding = False
        self._buffer += rest
        if len(self._buffer) > self._max:
            if not self._discarding:
                self.overlong += 1
            self._discarding = True
            self._buffer.clear()
        return lines
