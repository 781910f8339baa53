"""A simulated LoRa channel and a remote MycoBrain that talks over it.

``RadioChannel`` joins every ``RadioNode`` on one frequency: a packet sent by one node reaches every other
node after its time on air plus a configurable delay, unless it is lost; it may arrive corrupted (one
random byte flipped, which the receiving radio does not notice because P2P modems hand up CRC-valid
packets only when the CRC is on; corruption here stands for a CRC collision or a buggy sender and tests
that the MDP CRC catches it). Each receiving node gets its own RSSI/SNR.

``RemoteMycoBrain`` plays a MycoBrain whose Side B forwards Side A's frames over LoRa, framed as the
firmware's ``mdp_build_frame`` does: ``COBS(header || JSON || crc16) || 0x00``. It announces itself with a
HELLO, sends TELEMETRY periodically, and answers a ``hello`` command with a HELLO.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from drivers import mdp
from drivers.lora_airtime import LoRaSettings, time_on_air_s

MAX_PACKET = 255  # bytes: the SX126x/SX127x FIFO and the longest explicit-header payload


@dataclass
class LinkQuality:
    """What a receiver measures for packets from the channel."""

    rssi_dbm: int = -72
    snr_db: int = 8


class RadioNode:
    """One radio on the channel; ``on_packet(payload, quality)`` is called for every packet heard."""

    def __init__(self, channel: RadioChannel, name: str, *, quality: LinkQuality | None = None) -> None:
        self.channel = channel
        self.name = name
        self.quality = quality or LinkQuality()
        self.listening = True
        self.on_packet: Callable[[bytes, LinkQuality], None] | None = None
        self.sent = 0
        self.heard = 0
        channel.join(self)

    def transmit(self, payload: bytes) -> float:
        """Put a packet on the air; returns its time on air in seconds."""
        self.sent += 1
        return self.channel.transmit(self, payload)


class RadioChannel:
    """The shared medium; see the module docstring. ``time_scale`` shrinks airtime so tests run fast."""

    def __init__(
        self,
        *,
        settings: LoRaSettings | None = None,
        loss: float = 0.0,
        corruption: float = 0.0,
        delay_s: float = 0.0,
        time_scale: float = 0.01,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings or LoRaSettings()
        self.loss = loss
        self.corruption = corruption
        self.delay_s = delay_s
        self.time_scale = time_scale
        self.rng = rng or random.Random(1)  # noqa: S311 - simulated radio noise, not cryptography
        self._nodes: list[RadioNode] = []
        self._handles: set[asyncio.TimerHandle] = set()
        self.stats = {"sent": 0, "lost": 0, "corrupted": 0, "delivered": 0}

    def join(self, node: RadioNode) -> None:
        self._nodes.append(node)

    def transmit(self, sender: RadioNode, payload: bytes) -> float:
        if not 0 < len(payload) <= MAX_PACKET:
            raise ValueError(f"a LoRa packet is 1..{MAX_PACKET} bytes, got {len(payload)}")
        airtime = time_on_air_s(self.settings, len(payload))
        self.stats["sent"] += 1
        loop = asyncio.get_running_loop()
        for node in self._nodes:
            if node is sender:
                continue
            if self.rng.random() < self.loss:
                self.stats["lost"] += 1
                continue
            data = bytearray(payload)
            if data and self.rng.random() < self.corruption:
                i = self.rng.randrange(len(data))
                data[i] ^= 1 << self.rng.randrange(8)
                self.stats["corrupted"] += 1
            handle = loop.call_later(airtime * self.time_scale + self.delay_s, self._deliver, node, bytes(data))
            self._handles.add(handle)
        return airtime

    def _deliver(self, node: RadioNode, data: bytes) -> None:
        self._handles = {h for h in self._handles if not h.cancelled() and h.when() > 0}
        if node.listening and node.on_packet is not None:
            self.stats["delivered"] += 1
            node.heard += 1
            node.on_packet(data, node.quality)

    def close(self) -> None:
        for handle in self._handles:
            handle.cancel()
        self._handles.clear()


def over_the_air(frame: mdp.Frame) -> bytes:
    """A frame as a MycoBrain puts it on the air (``mdp_build_frame``: COBS, CRC, trailing 0x00)."""
    return mdp.encode_firmware(frame)


class RemoteMycoBrain:
    """A remote board on the channel; telemetry values are plain attributes tests may change."""

    def __init__(
        self,
        channel: RadioChannel,
        *,
        device_id: str = "mycobrain-188534",
        src: int = mdp.Endpoint.SIDE_A,
        quality: LinkQuality | None = None,
        firmware_version: str = "1.4.0",
        reply_delay_s: float = 0.05,
    ) -> None:
        self.node = RadioNode(channel, device_id, quality=quality)
        self.node.on_packet = self._on_packet
        self.device_id = device_id
        self.src = src
        self.firmware_version = firmware_version
        self.seq = 1
        self.uptime_s = 0
        self.environment: dict[str, dict[str, float]] = {
            "a": {"temperature_c": 22.5, "humidity_pct": 48.0, "pressure_hpa": 1009.3, "gas_ohm": 52000.0},
            "b": {"temperature_c": 21.9, "humidity_pct": 51.5, "pressure_hpa": 1009.1, "gas_ohm": 61000.0},
        }
        self.analog = {"ai1": 0.512, "ai2": 1.024, "ai3": 0.0, "ai4": 3.3, "soil_moisture": 0.41}
        self.commands: list[dict[str, Any]] = []
        self.acks: list[int] = []  # ``ack`` fields of ACK frames addressed to this board
        # A board needs time to parse a command and turn its radio around; answering within the same
        # instant would race the host modem's own return to receive mode, which no real board does.
        self.reply_delay_s = reply_delay_s

    def _frame(self, msg_type: int, body: Mapping[str, Any], *, ack: int = 0) -> mdp.Frame:
        frame = mdp.Frame(
            msg_type, seq=self.seq, ack=ack, flags=0, src=self.src, dst=mdp.Endpoint.GATEWAY,
            payload=mdp.dump_payload(body),
        )  # fmt: skip
        self.seq += 1
        return frame

    def hello_body(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "firmware_version": self.firmware_version,
            "role": "side_a",
            "sensors": ["bme688_a", "bme688_b"],
            "capabilities": ["telemetry", "lora"],
        }

    def telemetry_body(self) -> dict[str, Any]:
        return {
            "type": "telemetry",
            "uptime_s": self.uptime_s,
            "estop": False,
            "analog": dict(self.analog),
            "bme688": {k: dict(v) for k, v in self.environment.items()},
        }

    def send_hello(self, *, ack: int = 0) -> float:
        return self.node.transmit(over_the_air(self._frame(mdp.MsgType.HELLO, self.hello_body(), ack=ack)))

    def send_event(self, name: str, *, ack_requested: bool = False) -> float:
        """An EVENT frame (e.g. ``estop_activated``), optionally asking the host to acknowledge it."""
        frame = self._frame(mdp.MsgType.EVENT, {"event": name})
        if ack_requested:
            frame = mdp.Frame(
                frame.msg_type, seq=frame.seq, ack=frame.ack, flags=mdp.Flags.ACK_REQUESTED,
                src=frame.src, dst=frame.dst, payload=frame.payload,
            )  # fmt: skip
        return self.node.transmit(over_the_air(frame))

    def send_telemetry(self) -> float:
        """One TELEMETRY frame; parts are left out until it fits a LoRa packet (255 bytes)."""
        self.uptime_s += 10
        body = self.telemetry_body()
        for drop in ((), ("analog",), ("analog", "b")):
            trimmed = {k: v for k, v in body.items() if k not in drop}
            if "b" in drop:
                trimmed["bme688"] = {"a": body["bme688"]["a"]}
            size = len(over_the_air(mdp.Frame(mdp.MsgType.TELEMETRY, payload=mdp.dump_payload(trimmed))))
            if size <= MAX_PACKET:
                break
        return self.node.transmit(over_the_air(self._frame(mdp.MsgType.TELEMETRY, trimmed)))

    def send_raw(self, data: bytes) -> float:
        return self.node.transmit(data)

    def _on_packet(self, data: bytes, _quality: LinkQuality) -> None:
        try:
            frame = mdp.decode(data)  # accepts the trailing 0x00 delimiter
        except mdp.MdpError:
            return
        if frame.dst not in (self.src, mdp.Endpoint.SIDE_B):
            return
        if frame.msg_type == mdp.MsgType.ACK:
            self.acks.append(frame.ack)
            return
        if frame.msg_type != mdp.MsgType.COMMAND:
            return
        try:
            body = frame.json()
        except mdp.MdpError:
            return
        self.commands.append(body)
        if body.get("cmd") == "hello":
            asyncio.get_running_loop().call_later(self.reply_delay_s, lambda: self.send_hello(ack=frame.seq))


async def stream_remote_until_signalled(
    remote: RemoteMycoBrain, *, every_s: float, duration_s: float = 0.0
) -> None:
    """Send the remote board's telemetry every ``every_s`` until SIGINT/SIGTERM (or ``duration_s``, if set).

    The loop the RUI3 and gateway stubs run by hand: the radio peer of whichever host device is under test.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = loop.time()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        if duration_s and loop.time() - started >= duration_s:
            break
        remote.send_telemetry()
