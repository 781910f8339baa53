"""The Mycosoft LoRa gateway board (SX1262 + ESP32) on a pseudo-terminal, joined to a simulated radio.

Behaves as the public firmware (``MycosoftLabs/mycobrain`` ``firmware/gateway/src/main.cpp``) does:
at boot it prints ``{"lora_init":"ok"}`` (or ``{"lora_init":"fail","err":N}``) and
``{"side":"gateway","mdp":1,"status":"ready"}``; for every MDP frame heard over the air whose COBS, CRC, magic
and version check out it prints the header as one compact JSON line (``t_ms, src, dst, seq, ack, type,
flags``, in that order) and, when the frame asked for it, answers with a header-only ACK over the air; a
host line ``{"cmd": u16, "dst": u8, "data": [..]}`` becomes a binary ``mdp_cmd_v1_t`` COMMAND frame
(``header || cmd_id u16 || cmd_len u16 || data``, ACK_REQUESTED) sent over the air, answered on USB by
``{"sent":true,"seq":N}``; a line that is not JSON gets ``{"error":"json_parse"}``. The firmware's
retransmission of unacknowledged commands is not simulated.

Run by hand: ``python -m firmware_stubs.lora_gateway --path /tmp/gw --telemetry-every 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
from typing import Any, Self

from drivers import mdp
from drivers.lora_airtime import LoRaSettings
from firmware_stubs.pty import PtyPort
from firmware_stubs.radio import (
    LinkQuality,
    RadioChannel,
    RadioNode,
    RemoteMycoBrain,
    over_the_air,
    stream_remote_until_signalled,
)

CMD_HEADER = struct.Struct("<HH")  # mdp_cmd_v1_t after the header: cmd_id, cmd_len
MAX_PAYLOAD = 900  # cfg::MAX_PAYLOAD in the gateway firmware


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("ascii") + b"\r\n"  # Serial.println ends in CR LF


class LoraGatewayStub:
    """See the module docstring."""

    def __init__(
        self,
        channel: RadioChannel,
        *,
        path: str | None = None,
        init_error: int | None = None,
        quality: LinkQuality | None = None,
    ) -> None:
        self.port = PtyPort(path, on_data=self._on_host_data)
        self.radio = RadioNode(channel, "gateway", quality=quality)
        self.radio.on_packet = self._on_packet
        self.init_error = init_error
        self.tx_seq = 1
        self.last_inorder_b = 0
        self.sent_frames: list[mdp.Frame] = []
        self._line = bytearray()
        self._boot_time = 0.0

    @property
    def path(self) -> str:
        return self.port.path

    async def __aenter__(self) -> Self:
        self.port.plug()
        self.boot()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.port.close()

    def boot(self) -> None:
        """Power-up output (``setup()``)."""
        self._boot_time = asyncio.get_running_loop().time()
        if self.init_error is None:
            self.port.write(_dump({"lora_init": "ok"}))
            self.radio.listening = True
        else:
            self.port.write(_dump({"lora_init": "fail", "err": self.init_error}))
            self.radio.listening = False
        self.port.write(_dump({"side": "gateway", "mdp": 1, "status": "ready"}))

    def _millis(self) -> int:
        return int((asyncio.get_running_loop().time() - self._boot_time) * 1000) & 0xFFFFFFFF

    # --- over the air -----------------------------------------------------------------------------
    def _on_packet(self, data: bytes, _quality: LinkQuality) -> None:
        try:
            frame = mdp.decode(data)  # accepts the trailing 0x00 delimiter
        except mdp.MdpError:
            return  # mdp_decode_frame returned 0: the firmware drops it silently
        if frame.seq == self.last_inorder_b + 1:
            self.last_inorder_b = frame.seq
        if frame.flags & mdp.Flags.ACK_REQUESTED:
            ack = mdp.Frame(
                mdp.MsgType.ACK, seq=self._next_seq(), ack=self.last_inorder_b, flags=mdp.Flags.IS_ACK,
                src=mdp.Endpoint.GATEWAY, dst=mdp.Endpoint.SIDE_B,
            )  # fmt: skip
            self.radio.transmit(over_the_air(ack))
        self.port.write(
            _dump({
                "t_ms": self._millis(), "src": frame.src, "dst": frame.dst, "seq": frame.seq,
                "ack": frame.ack, "type": frame.msg_type, "flags": frame.flags,
            })
        )  # fmt: skip

    def _next_seq(self) -> int:
        seq = self.tx_seq
        self.tx_seq = (self.tx_seq + 1) & 0xFFFFFFFF
        return seq

    # --- USB ------------------------------------------------------------------------------------------
    def _on_host_data(self, data: bytes) -> None:
        for byte in data:
            if byte == 0x0A:
                line = bytes(self._line).strip()
                self._line.clear()
                if line:
                    self._handle(line)
            else:
                self._line.append(byte)

    def _handle(self, line: bytes) -> None:
        try:
            doc = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            self.port.write(_dump({"error": "json_parse"}))
            return
        if not isinstance(doc, dict):
            doc = {}  # ArduinoJson: indexing a non-object yields null, so the defaults apply
        cmd_id = _as_int(doc.get("cmd"), 0) & 0xFFFF
        dst = _as_int(doc.get("dst"), mdp.Endpoint.SIDE_A) & 0xFF
        data = bytearray()
        raw = doc.get("data")
        if isinstance(raw, list):
            for v in raw:
                if mdp.HEADER_SIZE + CMD_HEADER.size + len(data) >= MAX_PAYLOAD:
                    break
                data.append(_as_int(v, 0) & 0xFF)
        seq = self._next_seq()
        frame = mdp.Frame(
            mdp.MsgType.COMMAND, seq=seq, ack=self.last_inorder_b, flags=mdp.Flags.ACK_REQUESTED,
            src=mdp.Endpoint.GATEWAY, dst=dst, payload=CMD_HEADER.pack(cmd_id, len(data)) + bytes(data),
        )  # fmt: skip
        self.sent_frames.append(frame)
        wire = over_the_air(frame)
        if len(wire) <= 255:
            self.radio.transmit(wire)
        self.port.write(b'{"sent":true,"seq":' + str(seq).encode() + b"}\r\n")


def _as_int(value: object, default: int) -> int:
    """ArduinoJson ``doc[k] | default`` for an integer: the default unless the value is a number."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    return default


async def run(argv: list[str] | None = None) -> None:
    """A gateway plus a remote MycoBrain sending telemetry over the simulated channel, until signalled."""
    parser = argparse.ArgumentParser(prog="python -m firmware_stubs lora-gateway", description=__doc__.split("\n")[0])
    parser.add_argument("--path", help="symlink to create for the gateway's port")
    parser.add_argument("--sf", type=int, default=7)
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--corruption", type=float, default=0.0)
    parser.add_argument("--telemetry-every", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=0.0)
    args = parser.parse_args(argv)
    channel = RadioChannel(settings=LoRaSettings(sf=args.sf), loss=args.loss, corruption=args.corruption)
    remote = RemoteMycoBrain(channel)
    async with LoraGatewayStub(channel, path=args.path) as gw:
        print(gw.path, flush=True)
        await stream_remote_until_signalled(remote, every_s=args.telemetry_every, duration_s=args.duration)
    channel.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m firmware_stubs lora-gateway`` (the coordinator wires the subcommand)."""
    asyncio.run(run(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
