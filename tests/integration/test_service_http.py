"""``client.http(service)`` against real backend HTTP servers registered in a real
registry: balancing, ejection and probing, retries to other endpoints, the retry
budget, per-try timeouts, and policies changed live."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from aiohttp import web

from tests.conftest import ServerProcess, until
from waypost import AsyncClient
from waypost.testing import ManualClock


class Backends:
    """``n`` HTTP servers on loopback; each answers its own name, or fails, or hangs, as
    ``mode[name]`` says; ``hits`` counts requests per backend."""

    def __init__(self) -> None:
        self.mode: dict[str, str] = {}
        self.hits: Counter[str] = Counter()
        self.ports: dict[str, int] = {}
        self._runners: list[web.AppRunner] = []

    async def start(self, names: list[str]) -> None:
        for name in names:
            self.mode[name] = "ok"

            async def handle(request: web.Request, name: str = name) -> web.Response:
                self.hits[name] += 1
                mode = self.mode[name]
                if mode == "fail":
                    return web.Response(status=503, text=f"{name} down")
                if mode == "hang":
                    await asyncio.sleep(5)
                return web.json_response({"backend": name, "path": request.path})

            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.ports[name] = runner.addresses[0][1]
            self._runners.append(runner)

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()


@asynccontextmanager
async def service(
    server: ServerProcess, names: list[str], versions: dict[str, str] | None = None
) -> AsyncIterator[tuple[Backends, AsyncClient]]:
    backends = Backends()
    await backends.start(names)
    async with AsyncClient(server.url) as client:
        for name in names:
            await client.register(
                id=name,
                service="api",
                address="127.0.0.1",
                port=backends.ports[name],
                version=(versions or {}).get(name, "1.0.0"),
            )
        try:
            yield backends, client
        finally:
            await backends.stop()


def test_round_robin_by_default(server: ServerProcess) -> None:
    async def go() -> None:
        async with service(server, ["a", "b", "c", "d"]) as (backends, client):
            async with client.http("api") as api:
                for _ in range(400):
                    r = await api.get("/x")
                    assert r.ok
            assert dict(backends.hits) == {"a": 100, "b": 100, "c": 100, "d": 100}

    asyncio.run(go())


def test_a_failing_endpoint_is_retried_elsewhere_ejected_probed_and_let_back(
    server: ServerProcess,
) -> None:
    httpx.put(
        f"{server.url}/api/v1/services/api/config",
        json={"circuit_breaker": {"consecutive_errors": 3, "base_ejection_time": "1s"}},
    ).raise_for_status()

    async def go() -> None:
        async with service(server, ["a", "b", "c", "d"]) as (backends, client):
            backends.mode["b"] = "fail"
            async with client.http("api") as api:
                clock = api.clock = ManualClock()  # ejection times pass when told
                got = [await api.get("/x") for _ in range(40)]
                # The caller sees one success each time, from another endpoint.
                assert all(r.status == 200 for r in got)
                assert all(r.json()["backend"] != "b" for r in got)
                assert {r.attempts for r in got} <= {1, 2}
                assert backends.hits["b"] == 3  # three errors, then ejected
                # While open it gets nothing; after 1 s one probe (still failing).
                before = backends.hits["b"]
                for _ in range(20):
                    assert (await api.get("/x")).status == 200
                assert backends.hits["b"] == before
                clock.advance(1.2)
                for _ in range(20):
                    assert (await api.get("/x")).status == 200
                assert backends.hits["b"] == before + 1
                # Fixed: the next probe (after 2 s this time) lets it back.
                backends.mode["b"] = "ok"
                clock.advance(1.5)
                for _ in range(20):
                    await api.get("/x")
                assert backends.hits["b"] == before + 1  # still ejected: 2 s this time
                clock.advance(0.7)
                for _ in range(40):
                    await api.get("/x")
                assert backends.hits["b"] >= before + 1 + 8

    asyncio.run(go())


def test_post_is_not_retried_and_the_caller_sees_the_failure(server: ServerProcess) -> None:
    async def go() -> None:
        async with service(server, ["a", "b"]) as (backends, client):
            backends.mode["a"] = backends.mode["b"] = "fail"
            async with client.http("api") as api:
                r = await api.post("/orders", json={"n": 1})
                assert (r.status, r.attempts) == (503, 1)
                r = await api.get("/orders")
                assert (r.status, r.attempts) == (503, 2)  # GET: retried once elsewhere

    asyncio.run(go())


def test_the_retry_budget_caps_retries_under_a_failure_storm(server: ServerProcess) -> None:
    async def go() -> None:
        names = [f"s{n}" for n in range(6)]
        async with service(server, names) as (backends, client):
            for n in names:
                backends.mode[n] = "fail"
            async with client.http("api") as api:
                got = await asyncio.gather(*(api.get("/x") for _ in range(50)))
            assert all(r.status == 503 for r in got)
            total = sum(backends.hits.values())
            # Without a budget: 50 requests x 3 attempts = 150.
            assert total <= 80, total

    asyncio.run(go())


def test_a_hanging_endpoint_costs_one_per_try_timeout(server: ServerProcess) -> None:
    httpx.put(
        f"{server.url}/api/v1/services/api/config",
        json={"retry": {"per_try_timeout": "200ms"}, "timeout": "3s"},
    ).raise_for_status()

    async def go() -> None:
        async with service(server, ["a", "b"]) as (backends, client):
            backends.mode["a"] = "hang"
            async with client.http("api") as api:
                for _ in range(4):
                    start = time.monotonic()
                    r = await api.get("/x")
                    assert r.json()["backend"] == "b"
                    assert time.monotonic() - start < 2.0

    asyncio.run(go())


def test_a_policy_changed_in_the_registry_applies_without_a_restart(
    server: ServerProcess,
) -> None:
    async def go() -> None:
        versions = {"v1-a": "1.0.0", "v1-b": "1.0.0", "v2-a": "2.0.0"}
        async with (
            service(server, list(versions), versions) as (_, client),
            client.http("api") as api,
        ):
            first = {(await api.get("/x")).json()["backend"] for _ in range(30)}
            assert first == set(versions)
            # Blue/green: everything to ^2, through the API, live.
            await client.set_service_config(
                "api",
                {"split": [{"version": "^1", "weight": 0}, {"version": "^2", "weight": 100}]},
            )

            async def all_on_v2() -> bool:
                got = {(await api.get("/x")).json()["backend"] for _ in range(10)}
                return got == {"v2-a"}

            await until(all_on_v2, "the split to apply", interval_s=0.05)

    asyncio.run(go())


def test_when_a_split_side_is_all_failing_the_last_retry_goes_to_the_other_versions(
    server: ServerProcess,
) -> None:
    httpx.put(
        f"{server.url}/api/v1/services/api/config",
        json={"split": [{"version": "^1", "weight": 0}, {"version": "^2", "weight": 100}]},
    ).raise_for_status()

    async def go() -> None:
        versions = {"v1-a": "1.0.0", "v1-b": "1.0.0", "v2-a": "2.0.0", "v2-b": "2.0.0"}
        async with (
            service(server, list(versions), versions) as (backends, client),
            client.http("api") as api,
        ):
            backends.mode["v2-a"] = backends.mode["v2-b"] = "fail"
            r = await api.get("/x")
            # Both 2.x endpoints tried and failed; the third try goes to a 1.x one.
            assert (r.status, r.attempts) == (200, 3), r
            assert r.json()["backend"].startswith("v1-")

    asyncio.run(go())


def test_routes_for_the_service_apply_in_the_client_and_follow_changes(
    server: ServerProcess,
) -> None:
    async def go() -> None:
        async with service(server, ["a", "b"]) as (backends, client):
            other = Backends()
            await other.start(["v2"])
            try:
                await client.register(
                    id="v2", service="api-v2", address="127.0.0.1", port=other.ports["v2"]
                )
                await client.register(
                    id="b",
                    service="api",
                    address="127.0.0.1",
                    port=backends.ports["b"],
                    meta={"track": "beta"},
                )
                await client.set_route(
                    {
                        "name": "api-v2",
                        "service": "api-v2",
                        "match": {"hosts": ["api"], "path_prefix": "/v2/"},
                        "strip_prefix": True,
                    }
                )
                await client.set_route(
                    {
                        "name": "beta",
                        "service": "api",
                        "match": {"hosts": ["api"], "headers_regex": {"x-user": ".*@beta"}},
                        "subset": {"track": "beta"},
                    }
                )
                # A route for another service's traffic does not touch this one's.
                await client.set_route(
                    {"name": "elsewhere", "service": "api-v2", "match": {"hosts": ["web"]}}
                )
                async with client.http("api") as api:
                    r = await api.get("/v2/users")
                    assert r.json() == {"backend": "v2", "path": "/users"}
                    for _ in range(4):
                        r = await api.get("/x", headers={"X-User": "ann@beta"})
                        assert r.json()["backend"] == "b"
                    got = {(await api.get("/x")).json()["backend"] for _ in range(4)}
                    assert got == {"a", "b"}
                    await client.delete_route("api-v2")

                    async def v2_route_gone() -> bool:
                        return (await api.get("/v2/users")).json()["backend"] != "v2"

                    await until(v2_route_gone, "the deleted route to stop applying")
            finally:
                await other.stop()

    asyncio.run(go())
