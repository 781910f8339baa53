"""RUI3 P2P modem: the AT line codec, and the driver against the modem stub over a real pty and a
simulated radio carrying a remote MycoBrain's MDP frames."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers import rui3
from drivers.device import Device, LinkState
from drivers.errors import CodecError
from drivers.link import Backoff
from drivers.lora_airtime import DutyCycleBudget, LoRaSettings
from firmware_stubs.radio import LinkQuality, RadioChannel, RemoteMycoBrain
from firmware_stubs.rui3 import Rui3ModemStub
from tests.recording import Recorder, wait_for


# --- codec ------------------------------------------------------------------------------------------
def test_lines_are_classified() -> None:
    assert rui3.parse_line("OK") == rui3.AtOk()
    assert rui3.parse_line("AT_BUSY_ERROR") == rui3.AtFailure("AT_BUSY_ERROR")
    assert rui3.parse_line("AT_BUSY_ERROR").meaning == "the modem is busy"  # type: ignore[union-attr]
    assert rui3.parse_line("+EVT:TXP2P DONE") == rui3.TxDone()
    assert rui3.parse_line("+EVT:RXP2P:-45:6:A15A00") == rui3.RxPacket(-45, 6, b"\xa1\x5a\x00")
    assert rui3.parse_line("RAKwireless RAK3172-E Example") == rui3.Banner("RAKwireless RAK3172-E Example")
    assert rui3.parse_line("AT+DEVEUI=AC1F09FFFE057110") == rui3.AtText("AT+DEVEUI=AC1F09FFFE057110")


def test_commands_are_built_as_rui3_expects() -> None:
    s = LoRaSettings(sf=9, bw_hz=125000, coding_rate=1, preamble=8)
    assert rui3.p2p_command(868100000, s, 14) == "AT+P2P=868100000:9:125:0:8:14"
    assert rui3.psend_command(b"\x01\xab") == "AT+PSEND=01AB"
    assert rui3.encode_command("AT") == b"AT\r\n"
    with pytest.raises(CodecError):
        rui3.psend_command(b"")
    with pytest.raises(CodecError):
        rui3.psend_command(bytes(256))


@given(st.integers(-150, 0), st.integers(-20, 20), st.binary(min_size=1, max_size=255))
def test_rx_event_round_trips(rssi: int, snr: int, payload: bytes) -> None:
    line = f"+EVT:RXP2P:{rssi}:{snr}:{payload.hex().upper()}"
    assert rui3.parse_line(line) == rui3.RxPacket(rssi, snr, payload)


@given(st.text(max_size=120))
def test_any_line_parses_or_raises_a_codec_error(text: str) -> None:
    try:
        rui3.parse_line(text)
    except rui3.AtLineError as exc:
        assert isinstance(exc, CodecError)


@given(st.text(alphabet="0123456789ABCDEFXZ:-+EVTRXP ", max_size=60))
def test_rx_prefixed_garbage_never_escapes(text: str) -> None:
    with contextlib.suppress(rui3.AtLineError):
        rui3.parse_line("+EVT:RXP2P" + text)


# --- end to end -------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    channel: RadioChannel
    stub: Rui3ModemStub
    remote: RemoteMycoBrain
    modem: rui3.Rui3Modem
    rec: Recorder
    clock: Clock


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    channel = RadioChannel(settings=LoRaSettings(sf=7), time_scale=0.01)
    remote = RemoteMycoBrain(channel, device_id="mycobrain-188534", quality=LinkQuality(-97, -3))
    rec = Recorder()
    clock = Clock()
    budget = DutyCycleBudget(duty_cycle=0.01, window_s=60.0, clock=clock)  # 0.6 s of airtime per minute
    async with Rui3ModemStub(channel, path=None, quality=LinkQuality(-97, -3)) as stub:
        modem = rui3.Rui3Modem(
            stub.path, rec, settings=LoRaSettings(sf=7), budget=budget, clock=clock,
            backoff=Backoff(base_s=0.05, cap_s=0.2), response_timeout_s=1.0,
        )  # fmt: skip
        async with modem:
            await wait_for(lambda: modem.state is LinkState.STREAMING)
            yield Rig(channel, stub, remote, modem, rec, clock)
    channel.close()


async def test_modem_is_configured_for_p2p_and_identified(rig: Rig) -> None:
    assert isinstance(rig.modem, Device)
    assert rig.modem.device_id == "rui3-ac1f09fffe057110"
    assert rig.stub.p2p == (868100000, 7, 125, 0, 8, 14)
    assert rig.stub.receiving
    assert "AT+NWM=0" in rig.stub.commands


async def test_remote_telemetry_arrives_under_the_boards_own_id_with_rssi_and_snr(rig: Rig) -> None:
    rig.remote.send_hello()
    await wait_for(lambda: any(e.name == "hello" for e in rig.rec.events))
    rig.remote.environment["a"]["temperature_c"] = 24.25
    rig.remote.send_telemetry()
    await wait_for(lambda: any(r.sensor == "lora_link" for r in rig.rec.readings))
    by_sensor = {r.sensor: r for r in rig.rec.readings}
    assert {r.device_id for r in rig.rec.readings} == {"mycobrain-188534"}
    assert by_sensor["bme688_a"].quantities["temperature_c"].value == 24.25
    assert by_sensor["bme688_a"].quantities["temperature_c"].unit == "°C"
    assert by_sensor["lora_link"].quantities["rssi"].value == -97
    assert by_sensor["lora_link"].quantities["snr"].value == -3
    assert by_sensor["bme688_a"].meta["rssi_dbm"] == -97
    assert by_sensor["board"].quantities["uptime_s"].value == rig.remote.uptime_s
    assert by_sensor["bme688_a"].seq == rig.remote.seq - 1  # the board's own MDP seq: gaps stay visible


async def test_unknown_board_is_asked_for_its_hello(rig: Rig) -> None:
    rig.remote.send_telemetry()  # no HELLO heard yet
    await wait_for(lambda: rig.modem.stats()["unidentified_frames"] == 1)
    # the driver asks over the air; the board answers with HELLO; later telemetry is attributed
    await wait_for(lambda: any(e.name == "hello" for e in rig.rec.events))
    assert rig.remote.commands[-1]["cmd"] == "hello"
    await wait_for(lambda: rig.modem.state is LinkState.STREAMING and rig.stub.receiving)
    rig.remote.send_telemetry()
    await wait_for(lambda: any(r.device_id == "mycobrain-188534" for r in rig.rec.readings))


async def test_modem_reset_mid_stream_is_recovered(rig: Rig) -> None:
    rig.remote.send_hello()
    await wait_for(lambda: any(e.name == "hello" for e in rig.rec.events))
    rig.stub.reset()
    assert not rig.stub.receiving
    await wait_for(lambda: rig.modem.stats()["modem_resets"] == 1)
    await wait_for(lambda: rig.stub.receiving and rig.modem.state is LinkState.STREAMING)
    assert any(e.name == "modem_reset" for e in rig.rec.events)
    rig.remote.send_telemetry()
    await wait_for(lambda: any(r.sensor == "bme688_b" for r in rig.rec.readings))


async def test_send_goes_out_and_receive_resumes(rig: Rig) -> None:
    result = await rig.modem.command("lora_send", {"payload_hex": "0102030405"})
    assert result.ok, result
    assert rig.stub.sent[-1] == bytes.fromhex("0102030405")
    assert rig.stub.receiving
    assert result.data["airtime_s"] == pytest.approx(0.030976)  # SF7, 5 bytes: 18 + 12.25 symbols of 1.024 ms


async def test_send_over_budget_is_refused_with_its_retry_time(rig: Rig) -> None:
    payload = {"payload_hex": "AB" * 200}  # SF7: 0.323 s each, budget 0.6 s per 60 s
    assert (await rig.modem.command("lora_send", payload)).ok
    rig.clock.now += 12.0
    refused = await rig.modem.command("lora_send", payload)
    assert not refused.ok
    assert refused.message == "duty_cycle_exceeded"
    assert refused.retry_after_s == pytest.approx(48.0)
    assert len(rig.stub.sent) == 1
    rig.clock.now += 48.0
    assert (await rig.modem.command("lora_send", payload)).ok


async def test_busy_modem_is_reported_and_receive_restored(rig: Rig) -> None:
    rig.stub.busy_next = 2  # PRECV=0 and PSEND refused
    result = await rig.modem.command("lora_send", {"payload": "hi"})
    assert not result.ok
    assert result.message == "AT_BUSY_ERROR"
    await wait_for(lambda: rig.stub.receiving)


async def test_bad_lines_and_corrupt_packets_are_counted_not_fatal(rig: Rig) -> None:
    rig.stub.garbage(40)
    rig.stub.port.write(b"\r\n")  # noise spoils at most the line it lands in
    rig.stub.bad_line()
    rig.remote.send_raw(b"\x05\x01\x02\x03\x04\x00")  # COBS-valid, not MDP
    await wait_for(lambda: rig.modem.stats()["line_errors"] >= 1 and rig.modem.stats()["rx_packets"] >= 1)
    assert rig.modem.stats().get("mdp_short", 0) + rig.modem.stats().get("mdp_cobs", 0) >= 1
    rig.remote.send_hello()
    await wait_for(lambda: any(e.name == "hello" for e in rig.rec.events))
    assert rig.modem.state is LinkState.STREAMING


async def test_lossy_corrupting_delaying_radio_loses_frames_but_never_lies() -> None:
    """Lost and corrupted packets only cost readings: every reading that arrives is exact."""
    channel = RadioChannel(settings=LoRaSettings(sf=7), loss=0.25, corruption=0.3, delay_s=0.005, time_scale=0.01)
    remote = RemoteMycoBrain(channel, device_id="mycobrain-aa0001")
    rec = Recorder()
    async with Rui3ModemStub(channel) as stub:
        modem = rui3.Rui3Modem(stub.path, rec, backoff=Backoff(base_s=0.05, cap_s=0.2), hello_interval_s=0.0)
        async with modem:
            await wait_for(lambda: modem.state is LinkState.STREAMING)
            for i in range(40):
                remote.environment["a"]["temperature_c"] = 20.0 + i
                remote.send_telemetry()
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            stats = modem.stats()
            temps = [r.quantities["temperature_c"].value for r in rec.readings if r.sensor == "bme688_a"]
            assert 0 < len(temps) < 40
            assert set(temps) <= {20.0 + i for i in range(40)}
            assert all(r.device_id == "mycobrain-aa0001" for r in rec.readings)
            assert sum(v for k, v in stats.items() if k.startswith("mdp_")) > 0
            assert channel.stats["lost"] > 0
            assert modem.state is LinkState.STREAMING
    channel.close()


async def test_events_asking_for_an_ack_are_acknowledged_over_the_air(rig: Rig) -> None:
    rig.remote.send_hello()
    await wait_for(lambda: any(e.name == "hello" for e in rig.rec.events))
    rig.remote.send_event("estop_activated", ack_requested=True)
    await wait_for(lambda: any(e.name == "estop_activated" for e in rig.rec.events))
    event = next(e for e in rig.rec.events if e.name == "estop_activated")
    assert event.device_id == "mycobrain-188534"
    await wait_for(lambda: len(rig.remote.acks) == 1)
    assert rig.remote.acks == [event.data["mdp_seq"]]


async def test_invalid_send_parameters_are_answered_not_raised(rig: Rig) -> None:
    assert (await rig.modem.command("lora_send", {"payload_hex": "zz"})).message.startswith("invalid_params")
    assert (await rig.modem.command("lora_send", {"payload_hex": "00" * 256})).message == "payload_size"
    assert (await rig.modem.command("mdp_command", {"cmd": 5})).message.startswith("invalid_params")
    assert (await rig.modem.command("frobnicate", {})).message == "unknown_command"
    status = await rig.modem.command("status", {})
    assert status.ok
    assert status.data["device_id"] == "rui3-ac1f09fffe057110"


async def test_a_silent_hung_modem_is_detected_and_reinitialised() -> None:
    channel = RadioChannel()
    rec = Recorder()
    async with Rui3ModemStub(channel) as stub:
        modem = rui3.Rui3Modem(
            stub.path, rec, keepalive_s=0.2, response_timeout_s=0.2, backoff=Backoff(base_s=0.05, cap_s=0.1)
        )
        async with modem:
            await wait_for(lambda: modem.state is LinkState.STREAMING)
            stub.port.stall(True)  # the modem stops answering anything
            await wait_for(lambda: modem.stats()["stalls"] == 1)
            assert modem.state is not LinkState.STREAMING
            stub.port.stall(False)
            await wait_for(lambda: modem.state is LinkState.STREAMING and stub.receiving)
            assert any(e.name == "stalled" for e in rec.events)
    channel.close()
