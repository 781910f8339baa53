"""Announce the node on the LAN: ``_mycoedge._tcp.local.`` over mDNS/DNS-SD (RFC 6762/6763), via zeroconf.

Usage::

    async with NodeAnnouncer(node_id="edge-01", version="0.1.0", api_port=8787, trust="software") as ann:
        ...
        await ann.update(trust="hardware")   # re-announced at once
    # withdrawn (goodbye packets, TTL 0) on exit

TXT keys are ``node_id``, ``version``, ``api_port`` and ``trust`` (RFC 6763 section 6: short key=value
strings). ``interfaces`` is passed to zeroconf (tests bind to ``["127.0.0.1"]``); the announced
addresses default to the given interface addresses, else every non-loopback IPv4 address of the host.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Sequence
from typing import Self

import ifaddr
from zeroconf import InterfaceChoice, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

from drivers.errors import DriverError

_LOGGER = logging.getLogger(__name__)

SERVICE_TYPE = "_mycoedge._tcp.local."
TXT_KEYS = ("node_id", "version", "api_port", "trust")


class AnnounceError(DriverError):
    """The announcement could not be made or updated (bad TXT, mDNS failure)."""


def _host_label(node_id: str) -> str:
    """A DNS label for the host name (RFC 1035 section 2.3.1: letters, digits, hyphen; <= 63 octets)."""
    label = re.sub(r"[^A-Za-z0-9-]", "-", node_id).strip("-")[:63]
    return label or "mycoedge"


def _local_ipv4() -> list[str]:
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                found.append(ip.ip)
    return found or ["127.0.0.1"]


class NodeAnnouncer:
    """The node's DNS-SD service; an async context manager (register on enter, withdraw on exit)."""

    def __init__(
        self,
        *,
        node_id: str,
        version: str,
        api_port: int,
        trust: str,
        interfaces: Sequence[str] | None = None,
        addresses: Sequence[str] | None = None,
    ) -> None:
        self._txt = {"node_id": node_id, "version": version, "api_port": str(api_port), "trust": trust}
        self._port = api_port
        self._interfaces = list(interfaces) if interfaces is not None else None
        self._addresses = list(addresses) if addresses is not None else None
        self._zc: AsyncZeroconf | None = None
        self._info: ServiceInfo | None = None
        self.name = f"{_host_label(node_id)}.{SERVICE_TYPE}"
        self.updates = 0

    @property
    def txt(self) -> dict[str, str]:
        return dict(self._txt)

    def _build_info(self) -> ServiceInfo:
        addresses = self._addresses or self._interfaces or _local_ipv4()
        return ServiceInfo(
            SERVICE_TYPE,
            self.name,
            port=self._port,
            properties=dict(self._txt),
            server=f"{_host_label(self._txt['node_id'])}.local.",
            addresses=[socket.inet_aton(a) for a in addresses],
        )

    async def __aenter__(self) -> Self:
        interfaces = self._interfaces if self._interfaces is not None else InterfaceChoice.All
        try:
            self._zc = AsyncZeroconf(interfaces=interfaces)
            self._info = self._build_info()
            await (await self._zc.async_register_service(self._info))
        except (OSError, ValueError) as exc:
            await self._close()
            raise AnnounceError(f"cannot announce {self.name}: {exc}") from exc
        _LOGGER.info("announced %s on port %d", self.name, self._port)
        return self

    async def update(self, **txt: str | int) -> bool:
        """Change TXT values and re-announce if anything changed; returns whether it did."""
        unknown = set(txt) - set(TXT_KEYS) - {"node_id"}
        if unknown:
            raise AnnounceError(f"unknown TXT keys: {sorted(unknown)}")
        if "node_id" in txt and str(txt["node_id"]) != self._txt["node_id"]:
            raise AnnounceError("node_id names the service instance; announce a new NodeAnnouncer instead")
        new = {**self._txt, **{k: str(v) for k, v in txt.items()}}
        if new == self._txt:
            return False
        self._txt = new
        if "api_port" in txt:
            self._port = int(new["api_port"])
        if self._zc is not None:
            self._info = self._build_info()
            await (await self._zc.async_update_service(self._info))
            self.updates += 1
        return True

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close()

    async def _close(self) -> None:
        zc, info = self._zc, self._info
        self._zc = self._info = None
        if zc is None:
            return
        try:
            if info is not None:
                await (await zc.async_unregister_service(info))
        finally:
            await zc.async_close()
