"""MDP v1 codec: byte-exact against an independent construction, round trips, and fuzzing."""

from __future__ import annotations

import binascii
import contextlib
import json
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import cobs, mdp
from drivers.errors import CodecError


def reference_crc(data: bytes) -> int:
    """CRC-16/CCITT-FALSE bit by bit, as the firmware's crc16_ccitt_false computes it."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def reference_cobs_firmware(data: bytes) -> bytes:
    """The firmware's encoder algorithm (block closed every 254 non-zero bytes, code always written)."""
    out = bytearray([0])
    code_index, code = 0, 1
    for byte in data:
        if byte == 0:
            out[code_index] = code
            code, code_index = 1, len(out)
            out.append(0)
        else:
            out.append(byte)
            code += 1
            if code == 0xFF:
                out[code_index] = code
                code, code_index = 1, len(out)
                out.append(0)
    out[code_index] = code
    return bytes(out)


def test_crc_check_value_is_ccitt_false() -> None:
    assert mdp.crc16(b"123456789") == 0x29B1  # the catalogue check value of CRC-16/CCITT-FALSE
    assert reference_crc(b"123456789") == 0x29B1


@given(st.binary(max_size=600))
def test_crc_matches_bitwise_reference(data: bytes) -> None:
    assert mdp.crc16(data) == reference_crc(data) == binascii.crc_hqx(data, 0xFFFF)


@given(st.binary(max_size=1200))
def test_cobs_firmware_encoding_is_byte_exact_and_decodes(data: bytes) -> None:
    encoded = cobs.encode_firmware(data)
    assert encoded == reference_cobs_firmware(data)
    assert 0 not in encoded
    assert cobs.decode(encoded) == data
    assert cobs.decode(cobs.encode(data)) == data


def test_header_layout_is_the_packed_little_endian_struct() -> None:
    frame = mdp.Frame(mdp.MsgType.COMMAND, seq=0x01020304, ack=0x05060708, flags=1, src=0xC0, dst=0xA1,
                      payload=b'{"cmd":"hello","params":{}}')
    raw = frame.to_bytes()
    expected_header = bytes([0x5A, 0xA1, 0x01, 0x02, 0x04, 0x03, 0x02, 0x01, 0x08, 0x07, 0x06, 0x05,
                             0x01, 0xC0, 0xA1, 0x00])
    assert raw[:16] == expected_header
    assert raw[16:-2] == frame.payload
    assert raw[-2:] == struct.pack("<H", reference_crc(raw[:-2]))
    assert mdp.encode(frame) == reference_cobs_firmware(raw) + b"\x00"


frames = st.builds(
    mdp.Frame,
    msg_type=st.integers(0, 255),
    seq=st.integers(0, 2**32 - 1),
    ack=st.integers(0, 2**32 - 1),
    flags=st.integers(0, 255),
    src=st.integers(0, 255),
    dst=st.integers(0, 255),
    payload=st.binary(max_size=700),
    rsv=st.integers(0, 255),
)


@given(frames)
def test_round_trip(frame: mdp.Frame) -> None:
    assert mdp.Frame.from_bytes(frame.to_bytes()) == frame
    wire = mdp.encode(frame)
    assert wire.count(0) == 1 and wire.endswith(b"\x00")
    assert mdp.decode(wire[:-1]) == frame
    assert mdp.decode(mdp.encode_firmware(frame)[:-1]) == frame


@given(st.lists(frames, max_size=5), st.integers(1, 64))
def test_stream_round_trip_in_any_chunking(batch: list[mdp.Frame], chunk: int) -> None:
    stream = b"".join(mdp.encode(f) for f in batch)
    decoder = mdp.FrameDecoder()
    out: list[mdp.DecodeResult] = []
    for i in range(0, len(stream), chunk):
        out += decoder.feed(stream[i : i + chunk])
    assert out == batch


@settings(max_examples=400)
@given(st.binary(max_size=3000), st.integers(16, 4096))
def test_decoder_never_raises_on_arbitrary_bytes(data: bytes, max_encoded: int) -> None:
    decoder = mdp.FrameDecoder(max_encoded=max_encoded)
    for item in decoder.feed(data):
        assert isinstance(item, mdp.Frame | mdp.MdpError)
        assert isinstance(item, mdp.Frame | CodecError)
        if isinstance(item, mdp.Frame):
            with pytest.raises(mdp.PayloadError) if not _is_json_object(item.payload) else _nothing():
                item.json()


@given(st.binary(max_size=600))
def test_decode_raises_only_codec_errors(data: bytes) -> None:
    with contextlib.suppress(mdp.MdpError):
        mdp.decode(data)


@given(st.binary(max_size=300), frames)
def test_resynchronises_at_next_delimiter_after_garbage(garbage: bytes, frame: mdp.Frame) -> None:
    decoder = mdp.FrameDecoder()
    results = decoder.feed(garbage + b"\x00" + mdp.encode(frame))
    assert results[-1] == frame
    assert all(isinstance(r, mdp.MdpError | mdp.Frame) for r in results[:-1])


def test_each_error_kind_is_named() -> None:
    good = mdp.Frame(mdp.MsgType.TELEMETRY, seq=7, src=0xA1, dst=0xC0, payload=b"{}").to_bytes()
    bad_crc = good[:-1] + bytes([good[-1] ^ 1])
    bad_magic = b"\x00" + good[1:]
    bad_version = good[:2] + b"\x02" + good[3:]
    cases = {
        "crc": cobs.encode(bad_crc),
        "magic": cobs.encode(bad_magic),
        "version": cobs.encode(bad_version),
        "short": cobs.encode(good[:10]),
        "cobs": b"\x09\x01",
    }
    for kind, chunk in cases.items():
        with pytest.raises(mdp.MdpError) as info:
            mdp.decode(chunk)
        assert info.value.kind == kind
    decoder = mdp.FrameDecoder(max_encoded=64)
    results = decoder.feed(b"\x01" * 100)
    assert [r.kind for r in results if isinstance(r, mdp.MdpError)] == ["oversize"]
    assert decoder.feed(b"\x00" + mdp.encode(mdp.Frame.from_bytes(good))) == [mdp.Frame.from_bytes(good)]


def test_frame_after_boot_text_is_recovered() -> None:
    frame = mdp.Frame(mdp.MsgType.HELLO, seq=1, src=0xA1, dst=0xC0, payload=b'{"device_id":"mycobrain-1"}')
    decoder = mdp.FrameDecoder()
    assert decoder.feed(b"Claw: GPIO servo initialized\r\n" + mdp.encode_firmware(frame)) == [frame]
    assert decoder.text_bytes == len(b"Claw: GPIO servo initialized\r\n")


def test_payload_must_be_a_json_object() -> None:
    for payload in (b"[1]", b"\xff", b"{", b"3"):
        with pytest.raises(mdp.PayloadError):
            mdp.Frame(mdp.MsgType.EVENT, payload=payload).json()
    assert mdp.Frame(mdp.MsgType.EVENT, payload=b'{"event":"estop_activated"}').json() == {
        "event": "estop_activated"
    }


def test_unknown_message_types_decode() -> None:
    for t in (0x07, 0x08, 0x09):
        frame = mdp.Frame(t, seq=1, payload=b"{}")
        assert mdp.decode(mdp.encode(frame)[:-1]).type_name == f"0x{t:02X}"


@given(st.integers(0, 2**32 - 1), st.text(min_size=1, max_size=20),
       st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=30), max_size=8))
def test_commands_never_encode_a_newline_byte(seq: int, name: str, params: dict[str, object]) -> None:
    if not mdp.seq_is_wire_safe(seq):
        with pytest.raises(mdp.UnencodableError):
            mdp.encode_command(seq, name, params, dst=0xA1)
        return
    try:
        frame, wire = mdp.encode_command(seq, name, params, dst=0xA1)
    except mdp.UnencodableError:
        return  # too large for the board: refused, never sent
    assert b"\n" not in wire and b"\r" not in wire
    assert len(wire) - 1 <= mdp.BOARD_MAX_ENCODED
    assert frame.src == 0xC0 and frame.flags & mdp.Flags.ACK_REQUESTED
    assert json.loads(frame.payload) == {"cmd": name, "params": params}
    assert mdp.decode(wire[:-1]) == frame


def test_command_needing_padding_gets_whitespace() -> None:
    rng = random.Random(3)
    padded = 0
    for seq in range(1, 3000):
        if not mdp.seq_is_wire_safe(seq):
            continue
        name = rng.choice(["read_sensors", "output_control", "stream_sensors"])
        frame, wire = mdp.encode_command(seq, name, {"id": "mosfet1", "value": 1}, dst=0xA1)
        assert b"\n" not in wire and b"\r" not in wire
        padded += frame.payload.startswith(b"{ ")
    assert padded > 0  # some seq/payload combinations do hit 0x0A/0x0D in the CRC or COBS codes


def test_too_many_json_values_are_refused() -> None:
    params = {f"k{i}": i for i in range(40)}
    with pytest.raises(mdp.UnencodableError):
        mdp.encode_command(1, "output_control", params, dst=0xA1)


def _is_json_object(payload: bytes) -> bool:
    try:
        return isinstance(json.loads(payload.decode("utf-8")), dict)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


def test_bounded_fuzz_run_has_no_unexpected_exceptions() -> None:
    from bench.fuzz_mdp import run

    result = run(3000, seed=7)
    assert result.unexpected == 0, result.first_unexpected
    assert sum(result.errors.values()) > 0  # the inputs really were malformed


@given(st.binary(max_size=400))
def test_legacy_line_parser_raises_only_its_own_error(data: bytes) -> None:
    from drivers import ndjson_legacy

    try:
        line = ndjson_legacy.parse_line(data)
    except ndjson_legacy.LegacyLineError:
        return
    groups = ndjson_legacy.telemetry_groups(line)
    assert all(isinstance(v, float) for g in groups.values() for v in g.values())


@given(st.dictionaries(st.sampled_from(["tC", "rh", "p_hPa", "gas", "iaq", "x"]),
                       st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**6), 10**6)))
def test_legacy_live_lines_map_to_sensor_groups(fields: dict[str, float]) -> None:
    from drivers import ndjson_legacy

    line = json.dumps({"ts_ms": 1, "sensor": "ENV", **fields}).encode()
    groups = ndjson_legacy.telemetry_groups(ndjson_legacy.parse_line(line))
    names = {"tC": "temperature_c", "rh": "humidity_pct", "p_hPa": "pressure_hpa", "gas": "gas_ohm", "iaq": "iaq"}
    expected = {names[k]: float(v) for k, v in fields.items() if k in names}
    assert groups == ({"bme688_b": expected} if expected else {})
