"""The client SDK: ``Client`` (sync, httpx) and ``AsyncClient`` (asyncio, aiohttp)."""

from __future__ import annotations

from waypost.client._async import AsyncClient, AsyncKeepAlive, AsyncKeptLease
from waypost.client._core import QueryResult
from waypost.client._sync import Client, KeepAlive, KeptLease

__all__ = [
    "AsyncClient",
    "AsyncKeepAlive",
    "AsyncKeptLease",
    "Client",
    "KeepAlive",
    "KeptLease",
    "QueryResult",
]
