"""TCP checks: passing when a connection to HOST:PORT opens."""

from __future__ import annotations

import asyncio
import contextlib

from waypost.health.context import CheckContext
from waypost.model import Check, Status


def split_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` into its parts (the schema has vetted the text)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


async def run(check: Check, ctx: CheckContext) -> tuple[Status, str]:
    target = str(check.tcp)
    host, port = split_host_port(target)
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return Status.CRITICAL, f"TCP connect {target}: {exc.strerror or exc}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Status.PASSING, f"TCP connect {target}: success"
