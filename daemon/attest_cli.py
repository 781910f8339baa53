"""``mycoedge attest``: show the node's attestation, from the running daemon or straight from the TPM.

A TPM behind ``swtpm`` serves one client at a time, so the running daemon is asked first (its unix
socket, with the admin token); only when no daemon answers is the TPM opened here.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiohttp

from attestation import AttestationError, NodeAttestor
from daemon import attest
from daemon.config import Config


async def _from_daemon(config: Config) -> dict[str, Any] | None:
    try:
        token = config.admin_token_path.read_text().strip()
    except OSError:
        return None
    if not config.socket_path.exists():
        return None
    connector = aiohttp.UnixConnector(path=str(config.socket_path))
    try:
        async with aiohttp.ClientSession(connector=connector) as session, session.get(
            "http://node/v1/attestation/describe", headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=30),
        ) as resp:
            body: dict[str, Any] = await resp.json(content_type=None)
            return body
    except (aiohttp.ClientError, TimeoutError):
        return None


async def _from_tpm(config: Config) -> dict[str, Any]:
    async with NodeAttestor(attest.attestation_config(config)) as node:
        return await node.describe()


async def describe(config: Config) -> dict[str, Any]:
    found = await _from_daemon(config)
    if found is not None:
        return found
    return await _from_tpm(config)


def main(config: Config) -> int:
    try:
        body = asyncio.run(describe(config))
    except AttestationError as exc:
        print(f"attestation failed ({exc.reason}): {exc}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2))
    return 0 if body.get("level", 0) >= 2 else 1
