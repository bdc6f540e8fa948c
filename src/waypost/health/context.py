"""What the check kinds share while a scheduler runs: one HTTP session (connections to a
target are reused across runs), TLS contexts by CA file, gRPC channels by target."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import aiohttp

from waypost.health.files import CheckFiles

# The start of a body or a command's output kept as the check's output.
OUTPUT_BYTES = 1024
# TLS contexts kept (by verify flag and CA file); past this many the cache starts over.
MAX_TLS_CONTEXTS = 256


class CheckContext:
    """Shared clients of the check kinds; ``close`` when the scheduler stops."""

    def __init__(self, files: CheckFiles | None = None) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._tls: dict[tuple[bool, str | None], ssl.SSLContext | bool] = {}
        self.grpc_channels: dict[str, Any] = {}
        self.files = files or CheckFiles()

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=10, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": "waypost-health-check"},
                auto_decompress=False,
            )
        return self._session

    async def tls(self, verify: bool, ca_file: str | None) -> ssl.SSLContext | bool:
        """The TLS setting of a check: verified against the system or ``ca_file``, or not.
        A CA file is read in a worker thread, once, and only where ``files`` allows."""
        key = (verify, ca_file)
        found = self._tls.get(key)
        if found is None:
            if not verify:
                found = False
            elif ca_file is None:
                found = await asyncio.to_thread(ssl.create_default_context)
            else:
                found = await asyncio.to_thread(self.files.ca_context, ca_file)
            if len(self._tls) >= MAX_TLS_CONTEXTS:
                self._tls.clear()
            self._tls[key] = found
        return found

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        channels, self.grpc_channels = self.grpc_channels, {}
        for channel in channels.values():
            await channel.close()
