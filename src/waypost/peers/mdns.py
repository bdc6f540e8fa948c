"""mDNS/DNS-SD on the local network (python-zeroconf): servers started with
``--advertise-mdns`` announce ``NODE._waypost._tcp.local.`` with their API's port and
TXT properties (``node_id``, ``api``, ``version``, ``role``); the ``mdns`` source browses
for them for a moment and asks each for its registry entry."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from .api import fetch_entry
from .base import PROVISIONAL, Context, SourceError

SERVICE_TYPE = "_waypost._tcp.local."


class MdnsSource:
    def __init__(self) -> None:
        self.name = "mdns"

    async def discover(self, ctx: Context) -> list[dict[str, Any]]:
        from zeroconf import ServiceStateChange, Zeroconf
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

        names: list[str] = []

        def changed(
            zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
        ) -> None:
            if state_change is not ServiceStateChange.Removed and name not in names:
                names.append(name)

        try:
            azc = AsyncZeroconf()
        except OSError as exc:
            raise SourceError(f"mdns: cannot join the multicast group ({exc})") from None
        try:
            browser = AsyncServiceBrowser(azc.zeroconf, [SERVICE_TYPE], handlers=[changed])
            await asyncio.sleep(ctx.mdns_browse_s)
            found: list[dict[str, Any]] = []
            for name in sorted(names):
                info = AsyncServiceInfo(SERVICE_TYPE, name)
                if not await info.async_request(azc.zeroconf, int(ctx.timeout_s * 1000)):
                    continue
                props = {
                    k.decode(): v.decode()
                    for k, v in info.properties.items()
                    if isinstance(k, bytes) and isinstance(v, bytes)
                }
                addrs = info.parsed_addresses()
                api = props.get("api") or (
                    f"http://{addrs[0]}:{info.port}" if addrs and info.port else ""
                )
                if not api:
                    continue
                entry = await fetch_entry(ctx, api)
                if entry.get(PROVISIONAL) and props.get("node_id"):
                    entry["node_id"] = props["node_id"]
                found.append(entry)
            await browser.async_cancel()
            return found
        finally:
            await azc.async_close()


class MdnsAdvertiser:
    """Announces one server on mDNS until ``stop()``."""

    def __init__(self) -> None:
        self._azc: Any = None
        self._info: Any = None

    async def start(self, node_id: str, host: str, port: int, props: dict[str, str]) -> None:
        from zeroconf import ServiceInfo
        from zeroconf.asyncio import AsyncZeroconf

        if host in ("0.0.0.0", "::", ""):
            from zeroconf._utils.net import get_all_addresses

            addresses = [a for a in get_all_addresses() if a != "0.0.0.0"] or ["127.0.0.1"]
        else:
            addresses = [host]
        packed = [
            socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a) for a in addresses
        ]
        self._info = ServiceInfo(
            SERVICE_TYPE,
            f"{node_id}.{SERVICE_TYPE}",
            addresses=packed,
            port=port,
            properties=props,
            server=f"{node_id}.local.",
        )
        self._azc = AsyncZeroconf()
        await self._azc.async_register_service(self._info, allow_name_change=True)

    async def stop(self) -> None:
        if self._azc is None:
            return
        try:
            await self._azc.async_unregister_service(self._info)
        finally:
            await self._azc.async_close()
            self._azc = None
