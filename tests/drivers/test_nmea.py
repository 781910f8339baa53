"""NMEA-checksummed line codec (PROTOCOLS.md section 2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers import nmea
from drivers.errors import CodecError

bodies = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="*"), max_size=200)


def test_known_nmea_checksum() -> None:
    # A textbook NMEA 0183 sentence: $GPGLL,5057.970,N,00146.110,E,142451,A*27 (the '$' is not summed)
    assert nmea.checksum(b"GPGLL,5057.970,N,00146.110,E,142451,A") == 0x27
    assert nmea.encode_line("OK") == b"OK*" + f"{ord('O') ^ ord('K'):02X}".encode() + b"\r\n"


@given(bodies)
def test_round_trip(body: str) -> None:
    assert nmea.decode_line(nmea.encode_line(body)) == body


@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_line_errors(data: bytes) -> None:
    try:
        nmea.decode_line(data)
    except nmea.LineError as exc:
        assert isinstance(exc, CodecError)
        assert exc.kind in {"length", "format", "checksum"}


@given(bodies, st.integers(0, 255))
def test_one_flipped_body_byte_is_caught(body: str, index: int) -> None:
    line = bytearray(nmea.encode_line("X" + body))
    i = index % (len(body) + 1)
    line[i] = line[i] ^ 0x01 if line[i] ^ 0x01 != 0x2A else line[i] ^ 0x02
    with pytest.raises(nmea.LineError):
        nmea.decode_line(bytes(line))


def test_errors_name_their_kind() -> None:
    with pytest.raises(nmea.LineError) as e:
        nmea.decode_line(b"HELLO*00\r\n")
    assert e.value.kind == "checksum"
    with pytest.raises(nmea.LineError) as e:
        nmea.decode_line(b"HELLO\r\n")
    assert e.value.kind == "format"
    with pytest.raises(nmea.LineError):
        nmea.decode_line(b"OK*+4\r\n")
    with pytest.raises(nmea.LineError):
        nmea.encode_line("A*B")
    assert nmea.decode_line(nmea.encode_line("ok").lower()) == "ok"  # lower-case hex digits accepted


@given(st.lists(bodies, max_size=10), st.integers(1, 7))
def test_splitter_reassembles_byte_at_a_time(items: list[str], step: int) -> None:
    stream = b"".join(nmea.encode_line(x) for x in items)
    splitter = nmea.LineSplitter()
    out: list[bytes] = []
    for i in range(0, len(stream), step):
        out += splitter.feed(stream[i : i + step])
    assert [nmea.decode_line(x) for x in out] == items


def test_splitter_drops_overlong_lines() -> None:
    s = nmea.LineSplitter(max_line=16)
    assert s.feed(b"A" * 40) == []
    assert s.feed(b"B" * 40 + b"\r\nOK*1C\r\n") == [b"OK*1C"]
    assert s.overlong == 1
    assert s.feed(b"C" * 20 + b"\n") == []
    assert s.overlong == 2
