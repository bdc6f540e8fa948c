"""The bare baseline for bench/watch.py: an aiohttp long-poll server, nothing else.

Every waiter parks on one future; ``POST /change`` answers them all from one shared,
pre-encoded body. This is the floor any registry's blocking queries can be held to.
Prints ``serving http://HOST:PORT`` once listening.
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

BODY = sys.stdin.buffer.read() if not sys.stdin.isatty() else b"[]"


def build() -> web.Application:
    state: dict[str, object] = {"fut": None, "count": 0}

    def fut() -> asyncio.Future[bytes]:
        if state["fut"] is None:
            state["fut"] = asyncio.get_running_loop().create_future()
        return state["fut"]  # type: ignore[return-value]

    async def wait(request: web.Request) -> web.Response:
        state["count"] = int(state["count"]) + 1  # type: ignore[call-overload]
        try:
            body = await fut()
        finally:
            state["count"] = int(state["count"]) - 1  # type: ignore[call-overload]
        return web.Response(body=body, content_type="application/json")

    async def count(request: web.Request) -> web.Response:
        return web.json_response({"blocking_waiters": state["count"]})

    async def change(request: web.Request) -> web.Response:
        f = fut()
        state["fut"] = None
        f.set_result(BODY)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/wait", wait)
    app.router.add_get("/status", count)
    app.router.add_post("/change", change)
    return app


async def serve() -> None:
    runner = web.AppRunner(build(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"serving http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    uvloop.run(serve())
