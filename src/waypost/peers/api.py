"""``HOST:PORT`` of a server's API: the server is asked for its own registry entry
(``GET /api/v1/node-registry``). The SRV and mDNS sources ask the same of what they find.
A server that does not answer still yields a provisional entry for its address, so it is
probed, and used once it answers (unless trust keys require a signed entry)."""

from __future__ import annotations

from typing import Any

import aiohttp

from .base import PROVISIONAL, Context
from .entry import EntryError, api_of, decode


async def fetch_entry(ctx: Context, api: str) -> dict[str, Any]:
    """The node's own entry from its API, or a provisional one for ``api``."""
    try:
        async with ctx.session.get(
            f"{api}/api/v1/node-registry",
            headers=ctx.api_headers,
            timeout=aiohttp.ClientTimeout(total=ctx.timeout_s),
        ) as r:
            if r.status == 200:
                entries = decode(await r.read(), api)
                if entries:
                    return entries[0]
    except (aiohttp.ClientError, TimeoutError, EntryError):
        pass
    return {"node_id": api.split("://", 1)[-1], "api": api, PROVISIONAL: True}


class ApiSource:
    def __init__(self, host_port: str) -> None:
        self.api = api_of(host_port)
        self.name = host_port

    async def discover(self, ctx: Context) -> list[dict[str, Any]]:
        return [await fetch_entry(ctx, self.api)]
