"""The broker link against a real Mosquitto: reconnect after a broker restart, last will on SIGKILL."""

from __future__ import annotations

import asyncio
import signal

import aiomqtt

from daemon.mosquitto import MosquittoProcess

STATUS = "mycoedge/test-node/status"


async def _retained_status(port: int, timeout: float = 10.0) -> str:
    """What a new subscriber sees first on the status topic (the retained message)."""
    async with aiomqtt.Client("127.0.0.1", port, identifier="probe") as client:
        await client.subscribe(STATUS, qos=1)
        async with asyncio.timeout(timeout):
            async for message in client.messages:
                return bytes(message.payload).decode()  # type: ignore[arg-type]
    raise AssertionError("no message")


async def _wait_status(port: int, expected: str, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    last = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            last = await _retained_status(port, timeout=2)
            if last == expected:
                return
        except (aiomqtt.MqttError, TimeoutError):
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"status stayed {last!r}, expected {expected!r}")


async def test_reconnects_after_broker_restart_and_republishes_online(
    mosquitto: MosquittoProcess, daemon_factory: type
) -> None:
    daemon = daemon_factory.make(mqtt_port=mosquitto.port)
    daemon.start()
    await _wait_status(mosquitto.port, "online")
    # persistence is off: the restarted broker has forgotten the retained status; only a reconnect
    # that republishes it can make it "online" again.
    await asyncio.to_thread(mosquitto.stop, kill=True)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(mosquitto.start)
    await _wait_status(mosquitto.port, "online")
    await asyncio.to_thread(daemon.stop)
    assert "Traceback" not in daemon.log()


async def test_sigkill_leaves_the_last_will_and_sigterm_says_offline(
    mosquitto: MosquittoProcess, daemon_factory: type
) -> None:
    daemon = daemon_factory.make(mqtt_port=mosquitto.port)
    daemon.start()
    await _wait_status(mosquitto.port, "online")
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="watcher") as watcher:
        await watcher.subscribe(STATUS, qos=1)
        daemon.signal(signal.SIGKILL)
        await asyncio.to_thread(daemon.wait, 5)
        async with asyncio.timeout(10):
            async for message in watcher.messages:
                if bytes(message.payload) == b"offline":  # type: ignore[arg-type]
                    break
    # An orderly stop publishes "offline" itself (retained), with no will needed.
    second = daemon_factory.make(mqtt_port=mosquitto.port)
    second.start()
    await _wait_status(mosquitto.port, "online")
    await asyncio.to_thread(second.stop)
    assert await _retained_status(mosquitto.port) == "offline"
