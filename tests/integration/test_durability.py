"""kill -9 during a stream of concurrent acknowledged registrations loses none of them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import httpx

from tests.conftest import ServerProcess, instance


async def register_until_killed(
    url: str, acked: list[str], stop_after: int, server: ServerProcess, prefix: str = ""
) -> None:
    killed = asyncio.Event()

    async def writer(w: int, session: aiohttp.ClientSession) -> None:
        n = 0
        while not killed.is_set():
            iid = f"{prefix}w{w}-{n}"
            n += 1
            try:
                async with session.put(
                    f"{url}/api/v1/instances/{iid}", json=instance(iid, f"svc{w % 4}")
                ) as r:
                    if r.status == 200:
                        acked.append(iid)
            except (TimeoutError, aiohttp.ClientError):
                return
            if len(acked) >= stop_after and not killed.is_set():
                killed.set()
                server.kill9()  # while the other writers still have requests in flight

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(writer(w, session) for w in range(32)))


def test_kill_9_loses_no_acknowledged_registration(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    acked: list[str] = []
    asyncio.run(register_until_killed(server.url, acked, 600, server))
    assert len(acked) >= 600
    server.start(f"127.0.0.1:{server.port}")
    with httpx.Client(base_url=server.url) as c:
        stored = {i["id"] for i in c.get("/api/v1/instances").json()}
        status = c.get("/status").json()
    missing = set(acked) - stored
    assert not missing, f"{len(missing)} acknowledged registrations lost: {sorted(missing)[:5]}"
    assert status["revision"] >= len(acked)
