"""A registry file (one node) or a static peers file (a list), on a local or shared disk."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from .base import Context, SourceError
from .entry import EntryError, decode


class FileSource:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)

    async def discover(self, ctx: Context) -> list[dict[str, Any]]:
        try:
            data = await asyncio.to_thread(self.path.read_bytes)
        except OSError as exc:
            raise SourceError(f"{self.path}: {exc.strerror or exc}") from None
        try:
            return decode(data, str(self.path))
        except EntryError as exc:
            raise SourceError(str(exc)) from None
