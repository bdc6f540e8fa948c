"""The peer of bench/checks.py: what one would write by hand, one asyncio task per check
(sleep the interval, GET, repeat, on a fixed-rate schedule), on uvloop and one shared
aiohttp session. Prints the p99 start delay (ms) over the last ``window`` seconds."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

import aiohttp
import uvloop


async def main(url: str, n: int, seconds: float, window: float) -> None:
    delays: list[tuple[float, float]] = []
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    runs = 0

    async def check(i: int) -> None:
        nonlocal runs
        due = time.monotonic() + random.uniform(0, 1.0)
        while True:
            await asyncio.sleep(max(due - time.monotonic(), 0))
            now = time.monotonic()
            delays.append((now, now - due))
            try:
                async with session.get(f"{url}/health/{i}") as resp:
                    await resp.read()
            except aiohttp.ClientError:
                pass
            runs += 1
            due += 1.0
            while due < time.monotonic():
                due += 1.0

    started = time.monotonic()
    tasks = [asyncio.create_task(check(i)) for i in range(n)]
    await asyncio.sleep(seconds)
    cut = started + seconds - window
    recent = sorted(d for t, d in delays if t >= cut)
    p99 = recent[min(len(recent) - 1, int(len(recent) * 0.99))] * 1000 if recent else 0.0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await session.close()
    print(json.dumps({"p99_ms": p99, "runs_per_s": len(recent) / window}))


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])))
