"""Helpers worth shipping for users' own tests: a server on a free port, in process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from waypost.server import WaypostServer
from waypost.settings import Settings


@contextlib.asynccontextmanager
async def running_server(
    *, store: str = "memory://", token: str = "", node: str = "test"
) -> AsyncIterator[WaypostServer]:
    """A Waypost server on 127.0.0.1 and a free port, stopped on exit; ``.url`` to reach it."""
    settings = Settings(http="127.0.0.1:0", store=store, token=token, node=node)
    server = WaypostServer(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
