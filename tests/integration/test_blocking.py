"""Blocking queries against a real server: answered right after a change, or after wait."""

from __future__ import annotations

import threading
import time

import httpx

from tests.conftest import ServerProcess, instance, wait_until


def test_a_blocking_query_returns_within_50ms_of_a_change(
    server: ServerProcess, http: httpx.Client
) -> None:
    http.put("/api/v1/instances/web-1", json=instance("web-1"))
    index = int(http.get("/api/v1/services/web").headers["X-Waypost-Index"])
    result: dict[str, object] = {}

    def block() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            r = c.get("/api/v1/services/web", params={"index": index, "wait": "20s"})
            result["at"] = time.monotonic()
            result["response"] = r

    waiter = threading.Thread(target=block)
    waiter.start()
    # The waiter is parked once the server counts it (a condition, not a sleep).
    deadline = time.monotonic() + 10
    while http.get("/status").json()["blocking_waiters"] < 1:
        assert time.monotonic() < deadline, "the blocking query never parked"
    # A change to another service must not wake it.
    http.put("/api/v1/instances/db-1", json=instance("db-1", "db"))
    assert waiter.is_alive()
    changed_at = time.monotonic()
    http.put("/api/v1/instances/web-2", json=instance("web-2"))
    waiter.join(5)
    assert not waiter.is_alive(), "the blocking query did not return after the change"
    latency = float(result["at"]) - changed_at  # type: ignore[arg-type]
    assert latency < 0.050, f"answered {latency * 1000:.1f} ms after the change"
    r = result["response"]
    assert isinstance(r, httpx.Response)
    assert int(r.headers["X-Waypost-Index"]) > index
    assert [i["id"] for i in r.json()] == ["web-1", "web-2"]


def test_a_blocking_query_returns_after_wait_with_the_same_index(http: httpx.Client) -> None:
    http.put("/api/v1/instances/web-1", json=instance("web-1"))
    index = int(http.get("/api/v1/instances?service=web").headers["X-Waypost-Index"])
    started = time.monotonic()
    r = http.get("/api/v1/instances", params={"service": "web", "index": index, "wait": "300ms"})
    took = time.monotonic() - started
    assert r.status_code == 200
    assert int(r.headers["X-Waypost-Index"]) == index
    assert 0.3 <= took < 5
    assert [i["id"] for i in r.json()] == ["web-1"]


def test_an_index_behind_the_answer_returns_at_once(http: httpx.Client) -> None:
    http.put("/api/v1/instances/web-1", json=instance("web-1"))
    http.put("/api/v1/instances/web-2", json=instance("web-2"))
    started = time.monotonic()
    r = http.get("/api/v1/services/web", params={"index": 1, "wait": "20s"})
    assert time.monotonic() - started < 5
    assert int(r.headers["X-Waypost-Index"]) == 2


def test_services_list_blocks_on_any_change(server: ServerProcess, http: httpx.Client) -> None:
    http.put("/api/v1/instances/web-1", json=instance("web-1"))
    index = int(http.get("/api/v1/services").headers["X-Waypost-Index"])
    out: list[httpx.Response] = []
    t = threading.Thread(
        target=lambda: out.append(
            httpx.get(
                f"{server.url}/api/v1/services", params={"index": index, "wait": "20s"}, timeout=30
            )
        )
    )
    t.start()
    deadline = time.monotonic() + 10
    while http.get("/status").json()["blocking_waiters"] < 1:
        assert time.monotonic() < deadline
    http.put("/api/v1/instances/db-1", json=instance("db-1", "db"))
    t.join(5)
    assert out
    assert [s["name"] for s in out[0].json()] == ["db", "web"]


def test_a_client_that_hangs_up_frees_its_parked_query(
    server: ServerProcess, http: httpx.Client
) -> None:
    http.put("/api/v1/instances/web-1", json=instance("web-1"))
    index = int(http.get("/api/v1/services/web").headers["X-Waypost-Index"])
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(5, read=0.3)) as impatient:
        try:
            impatient.get("/api/v1/services/web", params={"index": index, "wait": "60s"})
        except httpx.ReadTimeout:
            pass
        else:
            raise AssertionError("the blocking query returned before its wait")
    wait_until(
        lambda: http.get("/status").json()["blocking_waiters"] == 0,
        what="the abandoned query to be released",
    )
