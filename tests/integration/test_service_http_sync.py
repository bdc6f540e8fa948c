"""``Client.http(service)`` from blocking code: the same routes, balancing, retries and
ejection as the async client, served from the same watch-fed cache (run on a loop thread
of its own), stale-on-error with the registry stopped, and a snapshot a restarted program
starts from."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, wait_until
from tests.integration.targets import HttpTarget
from waypost import Client, Unavailable


@contextmanager
def targets(n: int) -> Iterator[list[HttpTarget]]:
    ts = [HttpTarget() for _ in range(n)]
    for i, t in enumerate(ts):
        t.body = f"t{i}".encode()
    try:
        yield ts
    finally:
        for t in ts:
            t.close()


def test_balances_retries_and_ejects_from_blocking_code(server: ServerProcess) -> None:
    with targets(3) as ts, Client(server.url) as c:
        for i, t in enumerate(ts):
            c.register(id=f"t{i}", service="api", address="127.0.0.1", port=t.port)
        with c.http("api") as api:
            got = Counter(api.get("/").body.decode() for _ in range(9))
            assert got == {"t0": 3, "t1": 3, "t2": 3}
            ts[1].code = 500
            before = ts[1].requests
            # Every request still succeeds: the 500s are retried on another endpoint.
            for _ in range(30):
                r = api.get("/")
                assert r.status == 200
                assert r.body != b"t1"
            assert ts[1].requests - before == 5  # then ejected: no more traffic
            eps = {e["id"]: e for e in api.stats()["api"]["endpoints"]}  # type: ignore[index]
            assert eps["t1"]["breaker"] == "open"
            assert eps["t1"]["errors"] == 5
            assert eps["t0"]["errors"] == 0

        # Many threads at once, each with its own http(): the client's breakers are
        # shared, so the ejected endpoint stays out and every request is answered.
        def one(_: int) -> int:
            with c.http("api") as api:
                return api.get("/").status

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(one, range(64)))
        assert codes == [200] * 64
        assert ts[1].requests - before == 5
        stats = c.cache.stats()
        assert stats["entries"] == 1
        assert stats["hits"] >= 64


def test_routes_apply_and_follow_changes(server: ServerProcess) -> None:
    with targets(2) as ts, Client(server.url) as c:
        c.register(id="main", service="web", address="127.0.0.1", port=ts[0].port)
        c.register(id="static", service="web-static", address="127.0.0.1", port=ts[1].port)
        c.set_route(
            {
                "name": "static",
                "service": "web-static",
                "match": {"hosts": ["web"], "path_prefix": "/static/"},
            }
        )
        with c.http("web") as web:
            assert web.get("/static/app.js").body == b"t1"
            assert web.get("/index.html").body == b"t0"
            c.delete_route("static")
            wait_until(lambda: web.get("/static/app.js").body == b"t0", what="route deleted")


def test_serves_stale_with_the_registry_stopped_and_restarts_from_the_snapshot(
    server: ServerProcess, tmp_path: Path
) -> None:
    snapshot = tmp_path / "client-cache.json"
    with targets(2) as ts:
        with Client(server.url, cache_snapshot=snapshot) as c:
            for i, t in enumerate(ts):
                c.register(id=f"t{i}", service="pay", address="127.0.0.1", port=t.port)
            with c.http("pay") as pay:
                assert pay.get("/").status == 200
                server.stop()
                wait_until(lambda: c.cache.get("pay").stale, what="the view to go stale")
                assert {pay.get("/").body for _ in range(4)} == {b"t0", b"t1"}
        assert snapshot.exists()
        # A new program, the registry still down: it routes from the snapshot.
        with Client(server.url, cache_snapshot=snapshot, timeout_s=2) as c2, c2.http("pay") as pay:
            assert {pay.get("/").body for _ in range(4)} == {b"t0", b"t1"}
            assert c2.cache.get("pay").from_snapshot
        # Nothing known and no registry: a clear error, not a hang.
        with Client(server.url, timeout_s=2) as c3, pytest.raises(Unavailable):
            c3.http("pay").get("/")
    assert not [t for t in threading.enumerate() if t.name == "waypost-service-cache"]
