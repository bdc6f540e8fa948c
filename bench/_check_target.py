"""A bare aiohttp+uvloop server answering 200 to every path: the targets of HTTP checks."""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def main() -> None:
    app = web.Application()
    app.router.add_get("/{tail:.*}", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"serving http://127.0.0.1:{port}", flush=True)
    sys.stdin.read()  # until the harness closes our stdin... or terminates us
    import asyncio

    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main())
