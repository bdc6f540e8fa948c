"""N blocking queries held by one server, one change, and the time until each is answered.

Measured from this process (a separate client process from the servers): Waypost's
``GET /api/v1/services/NAME?index=I&wait=60s`` next to a bare aiohttp long-poll server
that answers every waiter from one shared body (``_longpoll_baseline.py``), both on
uvloop, with the same client. Writes ``results/watch.{json,md}``.

    python bench/watch.py [--waiters 1000 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import announced, percentile, raise_fd_limit, waypost_server, write_results

HERE = Path(__file__).resolve().parent


def baseline_server(body: bytes) -> contextlib.AbstractContextManager[str]:
    """The bare long-poll server, answering with ``body``."""
    return announced([sys.executable, str(HERE / "_longpoll_baseline.py")], stdin=body)


async def fan_out(
    wait_url: str, status_url: str, trigger: tuple[str, str, bytes | None], n: int
) -> dict[str, float]:
    """Park ``n`` waiters, fire ``trigger``, and time every answer from the trigger."""
    arrivals: list[float] = []
    errors = 0
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with (
        aiohttp.ClientSession(connector=conn, timeout=timeout) as s,
        aiohttp.ClientSession() as control,
    ):

        async def waiter() -> None:
            nonlocal errors
            try:
                async with s.get(wait_url) as r:
                    await r.read()
                    if r.status == 200:
                        arrivals.append(time.perf_counter())
                    else:
                        errors += 1
            except (TimeoutError, aiohttp.ClientError):
                errors += 1

        tasks = [asyncio.create_task(waiter()) for _ in range(n)]
        deadline = time.monotonic() + 120
        while True:
            async with control.get(status_url) as r:
                held = (await r.json())["blocking_waiters"]
            if held >= n - errors or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        method, url, data = trigger
        start = time.perf_counter()
        async with control.request(
            method, url, data=data, headers={"Content-Type": "application/json"}
        ) as r:
            await r.read()
        await asyncio.gather(*tasks)
    lat = [(a - start) * 1000 for a in arrivals]
    return {
        "n": n,
        "held": held,
        "answered": len(lat),
        "errors": errors,
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "max_ms": max(lat) if lat else float("nan"),
    }


async def waypost_round(url: str, n: int, k: int) -> tuple[dict[str, float], bytes]:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/api/v1/services/watch") as r:
        index = int(r.headers["X-Waypost-Index"])
        body = await r.read()
    new = (f'{{"service":"watch","address":"10.0.0.2","port":{9000 + k}}}').encode()
    res = await fan_out(
        f"{url}/api/v1/services/watch?index={index}&wait=60s",
        f"{url}/status",
        ("PUT", f"{url}/api/v1/instances/watch-new-{k}", new),
        n,
    )
    return res, body


async def seed(url: str) -> bytes:
    async with aiohttp.ClientSession() as s:
        regs = [
            {
                "id": f"watch-{i}",
                "service": "watch",
                "address": f"10.0.0.{i + 1}",
                "port": 8080,
                "tags": ["prod"],
            }
            for i in range(10)
        ]
        async with s.post(f"{url}/api/v1/batch", json={"register": regs}) as r:
            assert r.status == 200
        async with s.get(f"{url}/api/v1/services/watch") as r:
            return await r.read()


def mean_of(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = ("p50_ms", "p99_ms", "max_ms")
    out = {k: sum(r[k] for r in runs) / len(runs) for k in keys}
    out["answered"] = min(r["answered"] for r in runs)
    out["errors"] = max(r["errors"] for r in runs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--waiters", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--repeats", type=int, default=2, help="A-B-B-A rounds per size")
    args = ap.parse_args()
    limit = raise_fd_limit()
    if max(args.waiters) + 100 > limit:
        sys.exit(f"open-file limit {limit} is too low for {max(args.waiters)} waiters")
    # The client process is the measuring instrument: keep its garbage collector out of
    # the timings, and alternate the servers (A B B A) so that order favours neither.
    gc.disable()
    runs: dict[str, dict[str, list[dict[str, float]]]] = {"waypost": {}, "baseline": {}}
    k = 0
    with waypost_server() as url:
        body = asyncio.run(seed(url))
        with baseline_server(body) as base:
            for n in args.waiters:
                for who in ("baseline", "waypost", "waypost", "baseline") * args.repeats:
                    gc.collect()
                    if who == "baseline":
                        res = asyncio.run(
                            fan_out(
                                f"{base}/wait",
                                f"{base}/status",
                                ("POST", f"{base}/change", None),
                                n,
                            )
                        )
                    else:
                        res, _ = asyncio.run(waypost_round(url, n, k))
                        k += 1
                    runs[who].setdefault(str(n), []).append(res)
    results = {who: {n: mean_of(r) for n, r in by_n.items()} for who, by_n in runs.items()}
    table = []
    for n in args.waiters:
        w, b = results["waypost"][str(n)], results["baseline"][str(n)]
        table.append(
            (
                f"{n:,} waiters: p50 ms",
                f"{w['p50_ms']:.0f}",
                f"{b['p50_ms']:.0f}",
                f"{b['p50_ms'] / w['p50_ms']:.2f}x",
            )
        )
        table.append(
            (
                f"{n:,} waiters: p99 ms",
                f"{w['p99_ms']:.0f}",
                f"{b['p99_ms']:.0f}",
                f"{b['p99_ms'] / w['p99_ms']:.2f}x",
            )
        )
        table.append(
            (
                f"{n:,} waiters: answered / errors (worst run)",
                f"{w['answered']:.0f} / {w['errors']:.0f}",
                f"{b['answered']:.0f} / {b['errors']:.0f}",
                "-",
            )
        )
    notes = (
        "Peer: a bare aiohttp+uvloop long-poll server answering every waiter from one "
        "shared body. Each figure is the mean of 4 runs in A-B-B-A-A-B-B-A order. Ratio = "
        "baseline / Waypost (> 1: Waypost answers sooner). Waypost's time includes "
        "the SQLite commit of the change that wakes them."
    )
    write_results("watch", {"mean": results, "runs": runs}, table, notes)


if __name__ == "__main__":
    main()
