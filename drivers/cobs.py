"""COBS framing (Cheshire & Baker, IEEE/ACM ToN 1999) over the well-kept ``cobs`` package.

The library's encoder is the minimal one: a final run of 254 non-zero bytes ends without an empty block.
MycoBrain's firmware (``firmware/common/mdp_framing.cpp``, ``cobsEncode``) closes a block every 254
non-zero bytes and always writes the code of the block it is in, so when the last run of non-zero bytes
is a positive multiple of 254 long it emits one extra ``0x01``. Both forms decode to the same bytes (the
firmware's decoder and the library's accept either); ``encode_firmware`` reproduces the firmware's bytes
so the stubs emit exactly what a board emits.
"""

from __future__ import annotations

from cobs import cobs as _cobs  # type: ignore[import-untyped]  # the package ships no type hints

from drivers.errors import CodecError

# A COBS block holds at most 254 data bytes; its code byte is then 0xFF (Cheshire & Baker, section 3).
_MAX_RUN = 254


class CobsError(CodecError):
    """Bytes that are not a valid COBS encoding (a zero byte inside, or a code past the end)."""

    kind = "cobs"


def encode(data: bytes) -> bytes:
    """COBS-encode ``data`` (no trailing delimiter); the result never contains 0x00."""
    return bytes(_cobs.encode(data))


def encode_firmware(data: bytes) -> bytes:
    """COBS-encode exactly as MycoBrain's firmware does (see the module docstring)."""
    out = _cobs.encode(data)
    tail = len(data) - (data.rfind(b"\x00") + 1)
    if tail and tail % _MAX_RUN == 0:
        return bytes(out) + b"\x01"
    return bytes(out)


def decode(data: bytes) -> bytes:
    """Decode one COBS block sequence (without its 0x00 delimiter); raises ``CobsError``."""
    try:
        return bytes(_cobs.decode(data))
    except _cobs.DecodeError as exc:
        raise CobsError(f"invalid COBS encoding: {exc}") from None
