"""Each balancer's distribution over real backend HTTP servers, through a real ``waypost
proxy``: shares by weight (a chi-square fit over 10,000 requests), an 80/20 split
within 2.5 %, consistent hashing that moves at most 15 % of keys when one of ten endpoints
leaves, and a latency-aware balancer that sends a 25x slower endpoint under 10 %."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web

from tests.conftest import ServerProcess, until
from waypost import AsyncClient
from waypost.testing import ProxyProcess

REQUESTS = 10_000
CONCURRENCY = 32


# The proxy's random choices are its own (no seed reaches another process), so each
# statistical bound here is set where a correct balancer fails it by chance less than
# once in 10^9 runs, and a wrong one (weights ignored: a statistic in the thousands)
# still fails it every time.
FALSE_FAILURE = 1e-9


def chi2_sf(x: float, df: int) -> float:
    """P(X > x) for a chi-square variable with ``df`` degrees of freedom (exact: the
    regularized upper gamma function's closed forms for whole and half-whole shapes)."""
    h = x / 2
    if df % 2 == 0:
        return math.exp(-h) * sum(h**k / math.factorial(k) for k in range(df // 2))
    tail = math.erfc(math.sqrt(h))
    return tail + math.exp(-h) * sum(
        h ** (k - 0.5) / math.gamma(k + 0.5) for k in range(1, (df - 1) // 2 + 1)
    )


def chi2_critical(df: int, p: float = FALSE_FAILURE) -> float:
    """The chi-square value a correct fit exceeds with probability ``p``."""
    lo, hi = 0.0, 1000.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if chi2_sf(mid, df) > p else (lo, mid)
    return hi


def test_the_chi_square_tail_is_exact() -> None:
    # Known values: P(X > 7.815) = 0.05 at df=3, P(X > 9.210) = 0.01 at df=2.
    assert abs(chi2_sf(7.8147, 3) - 0.05) < 1e-5
    assert abs(chi2_sf(9.2103, 2) - 0.01) < 1e-5
    assert 44.8 < chi2_critical(3) < 44.9


def assert_fits(counts: Counter[str], shares: dict[str, float]) -> None:
    n = sum(counts.values())
    total = sum(shares.values())
    stat = sum((counts[k] - n * s / total) ** 2 / (n * s / total) for k, s in shares.items())
    assert set(counts) <= set(shares), counts
    assert stat < chi2_critical(len(shares) - 1), (stat, counts, shares)


class Fleet:
    """Backends that answer their own name, after ``delay[name]`` seconds."""

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}
        self.delay: dict[str, float] = {}
        self._runners: list[web.AppRunner] = []

    async def start(self, names: Sequence[str]) -> None:
        for name in names:
            self.delay[name] = 0.0

            async def handle(request: web.Request, name: str = name) -> web.Response:
                if self.delay[name]:
                    await asyncio.sleep(self.delay[name])
                return web.Response(text=name)

            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            self.ports[name] = runner.addresses[0][1]
            self._runners.append(runner)

    async def stop(self) -> None:
        for r in self._runners:
            await r.cleanup()


@asynccontextmanager
async def fleet(
    server: ServerProcess, names: Sequence[str]
) -> AsyncIterator[tuple[Fleet, AsyncClient, ProxyProcess, aiohttp.ClientSession]]:
    f = Fleet()
    await f.start(names)
    proxy = await asyncio.to_thread(lambda: ProxyProcess(server.url).start())
    conn = aiohttp.TCPConnector(limit=CONCURRENCY)
    try:
        async with AsyncClient(server.url) as client, aiohttp.ClientSession(connector=conn) as s:
            yield f, client, proxy, s
    finally:
        await asyncio.to_thread(proxy.stop)
        await f.stop()


async def register(
    client: AsyncClient, f: Fleet, service: str, weights: dict[str, int] | None = None, **kw: object
) -> None:
    for name, port in f.ports.items():
        extra = {"weight": weights[name]} if weights else {}
        await client.register(
            id=f"{service}-{name}",
            service=service,
            address="127.0.0.1",
            port=port,
            **extra,
            **kw,
        )


async def send(
    s: aiohttp.ClientSession,
    proxy: ProxyProcess,
    service: str,
    n: int,
    headers: list[dict[str, str]] | None = None,
) -> list[str]:
    """``n`` requests to ``service`` through the proxy, ``CONCURRENCY`` at a time; the
    backend that answered each, in order."""
    out: list[str] = [""] * n
    nxt = 0

    async def worker() -> None:
        nonlocal nxt
        while nxt < n:
            i = nxt
            nxt += 1
            h = {"Host": service, **(headers[i] if headers else {})}
            async with s.get(proxy.url + "/", headers=h) as r:
                assert r.status == 200, await r.text()
                out[i] = await r.text()

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return out


async def configure(
    client: AsyncClient,
    s: aiohttp.ClientSession,
    proxy: ProxyProcess,
    service: str,
    cfg: dict[str, object],
) -> None:
    await client.set_service_config(service, cfg)
    # The proxy follows the config live; wait until it has it (its cache's view).
    await send(s, proxy, service, 1)


WEIGHTS = {"a": 1, "b": 2, "c": 3, "d": 4}


def run_fast(go: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run on uvloop without asyncio's debug mode: this loop only hosts the backends and
    the load (tens of thousands of requests); the code under test is the proxy, another
    process. Debug mode's bookkeeping made it five times slower."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(go())


@pytest.mark.parametrize(
    ("strategy", "weighted"),
    [
        ("round_robin", False),
        ("weighted_round_robin", True),
        ("least_connections", False),
        ("random", False),
        ("weighted_random", True),
    ],
)
def test_each_balancer_spreads_as_defined(
    server: ServerProcess, strategy: str, weighted: bool
) -> None:
    async def go() -> None:
        async with fleet(server, list(WEIGHTS)) as (f, client, proxy, s):
            svc = strategy.replace("_", "-")
            await register(client, f, svc, WEIGHTS if weighted else None)
            await configure(client, s, proxy, svc, {"load_balancer": {"strategy": strategy}})
            got = Counter(await send(s, proxy, svc, REQUESTS))
            assert_fits(got, {k: float(w) if weighted else 1.0 for k, w in WEIGHTS.items()})

    run_fast(go)


def test_an_80_20_split_lands_within_two_percent(server: ServerProcess) -> None:
    async def go() -> None:
        async with fleet(server, ["v1a", "v1b", "v2"]) as (f, client, proxy, s):
            for name, port in f.ports.items():
                await client.register(
                    id=name,
                    service="shop",
                    address="127.0.0.1",
                    port=port,
                    version="2.0.0" if name == "v2" else "1.3.0",
                )
            split = [{"version": "^1", "weight": 80}, {"version": "^2", "weight": 20}]
            await configure(client, s, proxy, "shop", {"split": split})
            got = Counter(await send(s, proxy, "shop", REQUESTS))
            share = got["v2"] / REQUESTS
            # One standard deviation is 0.4 % here; 2.5 % is 6.25 of them, which a fair
            # random split exceeds with probability 4e-10.
            assert abs(share - 0.20) <= 0.025, got

    run_fast(go)


def test_consistent_hashing_moves_few_keys_when_one_of_ten_leaves(server: ServerProcess) -> None:
    async def go() -> None:
        names = [f"e{i}" for i in range(10)]
        async with fleet(server, names) as (f, client, proxy, s):
            await register(client, f, "cart")
            await configure(
                client,
                s,
                proxy,
                "cart",
                {"load_balancer": {"strategy": "consistent_hash", "hash_on": "header:x-session"}},
            )
            keys = [{"X-Session": f"user-{k}"} for k in range(2000)]
            before = await send(s, proxy, "cart", len(keys), keys)
            again = await send(s, proxy, "cart", len(keys), keys)
            assert again == before  # affinity: the same key, the same endpoint
            await client.deregister("cart-e3")

            async def e3_gone() -> bool:
                got = await send(s, proxy, "cart", 200, keys[:200])
                return "e3" not in got

            await until(e3_gone, "the proxy to stop sending to the removed endpoint")
            after = await send(s, proxy, "cart", len(keys), keys)
            moved = sum(b != a for b, a in zip(before, after, strict=True))
            assert moved / len(keys) <= 0.15, moved
            # Only keys that lived on the removed endpoint had to move (Maglev moves a
            # few others; the bound above is the promise).
            assert all(a != "e3" for a in after)

    run_fast(go)


def test_the_latency_aware_balancer_starves_a_much_slower_endpoint(
    server: ServerProcess,
) -> None:
    async def go() -> None:
        async with fleet(server, ["fast1", "fast2", "slow"]) as (f, client, proxy, s):
            # 25x slower. On a loaded machine every answer waits on the scheduler too
            # (a 10x gap gave the slow one 13.9 % with a core busy beside the suite),
            # so the gap is wide enough to stay wide there.
            f.delay.update({"fast1": 0.002, "fast2": 0.002, "slow": 0.05})
            await register(client, f, "search")
            await configure(
                client, s, proxy, "search", {"load_balancer": {"strategy": "peak_ewma"}}
            )
            got = Counter(await send(s, proxy, "search", 3000))
            # Round robin would give it a third; the latency-aware balancer under a tenth.
            assert got["slow"] / 3000 < 0.10, got

    run_fast(go)
