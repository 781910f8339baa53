"""The node's mDNS announcement on loopback: seen by a real zeroconf browser, updated, withdrawn."""

from __future__ import annotations

import pytest
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from drivers.announce import SERVICE_TYPE, AnnounceError, NodeAnnouncer


async def lookup(zc: AsyncZeroconf, name: str, timeout_ms: int = 3000) -> dict[str, str] | None:
    info = AsyncServiceInfo(SERVICE_TYPE, name)
    if not await info.async_request(zc.zeroconf, timeout_ms):
        return None
    return {k.decode(): (v or b"").decode() for k, v in info.properties.items()} | {"port": str(info.port)}


async def test_announced_updated_and_withdrawn_on_loopback() -> None:
    browser = AsyncZeroconf(interfaces=["127.0.0.1"])
    try:
        announcer = NodeAnnouncer(node_id="edge-test-01", version="0.1.0", api_port=18787, trust="software",
                                  interfaces=["127.0.0.1"])
        async with announcer:
            seen = await lookup(browser, announcer.name)
            assert seen == {"node_id": "edge-test-01", "version": "0.1.0", "api_port": "18787",
                            "trust": "software", "port": "18787"}
            assert await announcer.update(trust="hardware") is True
            assert await announcer.update(trust="hardware") is False  # unchanged: no re-announce
            browser.zeroconf.cache.async_remove_records(  # forget, so the next lookup asks the network
                list(browser.zeroconf.cache.async_all_by_details(announcer.name, 16, 1))
            )
            seen = await lookup(browser, announcer.name)
            assert seen is not None and seen["trust"] == "hardware"
            with pytest.raises(AnnounceError):
                await announcer.update(colour="blue")
        assert await lookup(browser, announcer.name, timeout_ms=800) is None
    finally:
        await browser.async_close()
