"""A URL serving a registry file or a peers file (a web server, object storage...)."""

from __future__ import annotations

from typing import Any

import aiohttp

from .base import Context, SourceError
from .entry import EntryError, decode

MAX_BYTES = 4 << 20


class UrlSource:
    def __init__(self, url: str) -> None:
        self.url = url
        self.name = url

    async def discover(self, ctx: Context) -> list[dict[str, Any]]:
        try:
            async with ctx.session.get(
                self.url, timeout=aiohttp.ClientTimeout(total=ctx.timeout_s)
            ) as r:
                if r.status != 200:
                    raise SourceError(f"{self.url}: HTTP {r.status}")
                data = await r.content.read(MAX_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SourceError(f"{self.url}: {exc or type(exc).__name__}") from None
        if len(data) > MAX_BYTES:
            raise SourceError(f"{self.url}: larger than {MAX_BYTES} bytes")
        try:
            return decode(data, self.url)
        except EntryError as exc:
            raise SourceError(str(exc)) from None
