"""The client SDK: ``Client`` (sync, httpx) and ``AsyncClient`` (asyncio, aiohttp)."""

from __future__ import annotations

from waypost.client._async import AsyncClient, AsyncKeepAlive
from waypost.client._core import QueryResult
from waypost.client._sync import Client, KeepAlive

__all__ = ["AsyncClient", "AsyncKeepAlive", "Client", "KeepAlive", "QueryResult"]
