"""What the check kinds share while a scheduler runs: one HTTP session (connections to a
target are reused across runs), TLS contexts by CA file, gRPC channels by target."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from waypost.health.files import CheckFiles

# The start of a body or a command's output kept as the check's output.
OUTPUT_BYTES = 1024
# TLS contexts kept (by verify flag and CA file); past this many the cache starts over.
MAX_TLS_CONTEXTS = 256
# gRPC channels kept open (one per target some check asks); past this many a run opens a
# channel of its own and closes it after.
MAX_GRPC_CHANNELS = 1024


class CheckContext:
    """Shared clients of the check kinds; ``close`` when the scheduler stops."""

    def __init__(self, files: CheckFiles | None = None) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._tls: dict[tuple[bool, str | None], ssl.SSLContext | bool] = {}
        # One channel per target, kept while a check asks it (``grpc_hold``/``release``).
        self.grpc_channels: dict[str, Any] = {}
        self._grpc_refs: Counter[str] = Counter()
        self._closing: set[asyncio.Task[None]] = set()
        self.files = files or CheckFiles()

    def grpc_hold(self, target: str) -> None:
        """A check of ``target`` is scheduled: its channel may be kept between runs."""
        self._grpc_refs[target] += 1

    def grpc_release(self, target: str) -> None:
        """A check of ``target`` is gone; with the last one, its channel is closed
        (targets churn over months: channels must not pile up)."""
        self._grpc_refs[target] -= 1
        if self._grpc_refs[target] > 0:
            return
        del self._grpc_refs[target]
        channel = self.grpc_channels.pop(target, None)
        if channel is not None:
            task = asyncio.create_task(channel.close(), name="close grpc channel")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    @contextlib.asynccontextmanager
    async def grpc_channel(self, target: str) -> AsyncIterator[Any]:
        """The channel for one run: the kept one, or a new one kept only while a check
        still holds the target (a run that began as its check was removed must not
        leave a channel behind) and the cache has room; otherwise closed after."""
        import grpc

        channel = self.grpc_channels.get(target)
        if channel is not None:
            yield channel
            return
        channel = grpc.aio.insecure_channel(target)
        if self._grpc_refs[target] > 0 and len(self.grpc_channels) < MAX_GRPC_CHANNELS:
            self.grpc_channels[target] = channel
            yield channel
            return
        try:
            yield channel
        finally:
            await channel.close()

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
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
