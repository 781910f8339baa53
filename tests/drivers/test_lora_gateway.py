"""The LoRa gateway board driver against the gateway stub over a real pty and a simulated radio."""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers import lora_gateway as gw
from drivers import mdp
from drivers.device import LinkState
from drivers.errors import CodecError
from drivers.link import Backoff
from drivers.lora_airtime import DutyCycleBudget, LoRaSettings
from firmware_stubs.lora_gateway import LoraGatewayStub
from firmware_stubs.radio import RadioChannel, RadioNode, RemoteMycoBrain
from tests.recording import Recorder, wait_for


def test_firmware_lines_are_classified() -> None:
    assert gw.parse_line(b'{"lora_init":"ok"}') == gw.LoraInit(True, None)
    assert gw.parse_line(b'{"lora_init":"fail","err":-2}') == gw.LoraInit(False, -2)
    assert gw.parse_line(b'{"side":"gateway","mdp":1,"status":"ready"}') == gw.Ready()
    assert gw.parse_line(b'{"t_ms":1,"src":161,"dst":192,"seq":7,"ack":0,"type":1,"flags":0}') == gw.FrameHeard(
        1, 161, 192, 7, 0, 1, 0
    )
    assert gw.parse_line(b'{"sent":true,"seq":3}') == gw.Sent(3)
    assert gw.parse_line(b'{"error":"json_parse"}') == gw.JsonParseError()
    assert gw.encode_send(2, 161, b"\x01\x02") == b'{"cmd":2,"dst":161,"data":[1,2]}\n'
    with pytest.raises(CodecError):
        gw.encode_send(70000, 1, b"")


@given(st.binary(max_size=200))
def test_arbitrary_lines_raise_only_codec_errors(data: bytes) -> None:
    with contextlib.suppress(gw.GatewayLineError):
        gw.parse_line(data)


@given(
    st.dictionaries(
        st.sampled_from([*gw.FRAME_KEYS, "sent", "lora_init", "err", "status", "side", "error"]),
        st.one_of(st.integers(-5, 2**33), st.booleans(), st.text(max_size=5), st.none()),
    )
)
def test_arbitrary_objects_raise_only_codec_errors(doc: dict[str, object]) -> None:
    with contextlib.suppress(gw.GatewayLineError):
        gw.parse_line(json.dumps(doc).encode())


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    channel: RadioChannel
    stub: LoraGatewayStub
    remote: RemoteMycoBrain
    dev: gw.LoraGateway
    rec: Recorder
    clock: Clock


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    channel = RadioChannel(settings=LoRaSettings(sf=7), time_scale=0.01)
    remote = RemoteMycoBrain(channel)
    rec, clock = Recorder(), Clock()
    async with LoraGatewayStub(channel) as stub:
        dev = gw.LoraGateway(
            stub.path, rec, device_id="lora-gw-1", budget=DutyCycleBudget(duty_cycle=0.01, window_s=10, clock=clock),
            ready_wait_s=0.2, backoff=Backoff(base_s=0.05, cap_s=0.2),
        )  # fmt: skip
        async with dev:
            await wait_for(lambda: dev.state is LinkState.STREAMING)
            yield Rig(channel, stub, remote, dev, rec, clock)
    channel.close()


async def test_frames_heard_are_events_and_gaps_are_counted(rig: Rig) -> None:
    rig.remote.send_hello()
    rig.remote.seq += 2  # two frames the gateway never hears
    rig.remote.send_telemetry()
    await wait_for(lambda: rig.dev.stats()["frames"] == 2)
    frames = [e for e in rig.rec.events if e.name == "lora_frame"]
    assert [f.data["type"] for f in frames] == ["HELLO", "TELEMETRY"]
    assert frames[0].data["src"] == mdp.Endpoint.SIDE_A
    assert rig.dev.stats()["frames_lost"] == 2


async def test_send_builds_the_firmware_command_frame(rig: Rig) -> None:
    heard: list[bytes] = []
    listener = RadioNode(rig.channel, "sniffer")
    listener.on_packet = lambda data, _q: heard.append(data)
    result = await rig.dev.command("lora_send", {"cmd": 3, "dst": 0xA1, "data": [0xE8, 0x03]})
    assert result.ok, result
    assert result.data["seq"] == rig.stub.sent_frames[-1].seq
    await wait_for(lambda: len(heard) == 1)
    frame = mdp.decode(heard[0][:-1])
    assert (frame.msg_type, frame.dst, frame.src, frame.flags) == (2, 0xA1, 0xC0, mdp.Flags.ACK_REQUESTED)
    assert frame.payload == struct.pack("<HH", 3, 2) + b"\xe8\x03"
    assert result.data["bytes_on_air"] == len(heard[0])


async def test_send_over_budget_is_refused_with_retry_time(rig: Rig) -> None:
    data = list(range(200))  # ~0.33 s on air at SF7; budget is 0.1 s per 10 s
    refused = await rig.dev.command("lora_send", {"cmd": 1, "data": data})
    assert not refused.ok
    assert refused.retry_after_s is None  # can never fit this budget
    small = {"cmd": 1, "data": [1]}
    assert (await rig.dev.command("lora_send", small)).ok
    rig.clock.now += 1.0
    second = await rig.dev.command("lora_send", small)
    assert not second.ok
    assert second.message == "duty_cycle_exceeded"
    assert second.retry_after_s == pytest.approx(9.0)


async def test_boot_lines_lost_before_open_are_replaced_by_the_probe(rig: Rig) -> None:
    # pyserial empties the input buffer on open, so the stub's boot lines never reach the driver
    assert rig.dev.stats()["probes"] == 1
    assert rig.dev.radio_ok is None  # unknown until the board next boots


async def test_gateway_reboot_with_failed_radio_is_reported_and_sends_refused(rig: Rig) -> None:
    rig.stub.init_error = -2
    rig.stub.boot()
    await wait_for(lambda: any(e.name == "gateway_rebooted" for e in rig.rec.events))
    assert rig.dev.radio_ok is False
    assert any(e.name == "lora_init_failed" and e.data["err"] == -2 for e in rig.rec.events)
    result = await rig.dev.command("lora_send", {"cmd": 1, "data": []})
    assert (result.ok, result.message) == (False, "radio_not_ready")


async def test_a_silent_hung_gateway_is_detected_and_reidentified() -> None:
    channel = RadioChannel()
    rec = Recorder()
    async with LoraGatewayStub(channel) as stub:
        dev = gw.LoraGateway(
            stub.path, rec, ready_wait_s=0.05, keepalive_s=0.2, response_timeout_s=0.2,
            backoff=Backoff(base_s=0.05, cap_s=0.1),
        )  # fmt: skip
        async with dev:
            await wait_for(lambda: dev.state is LinkState.STREAMING)
            stub.port.stall(True)
            await wait_for(lambda: dev.stats()["stalls"] == 1)
            stub.port.stall(False)
            await wait_for(lambda: dev.state is LinkState.STREAMING)
            assert any(e.name == "stalled" for e in rec.events)
    channel.close()
