"""The ceiling for bench/registry.py's reads: a bare aiohttp application on uvloop with one
handler that returns the bytes given on stdin, pre-encoded, nothing else.

Waypost's answer to the same query can be held to it: whatever Waypost serves below this
is spent in its own layers. Prints ``serving http://HOST:PORT`` once listening.
"""

from __future__ import annotations

import asyncio
import socket
import sys

import uvloop
from aiohttp import web

BODY = sys.stdin.buffer.read()


async def answer(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


async def main() -> None:
    app = web.Application()
    app.router.add_get("/api/v1/services/{name}", answer)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock, backlog=4096)
    await site.start()
    print(f"serving http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main())
