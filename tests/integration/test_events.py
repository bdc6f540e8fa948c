"""The event stream: resumable from any kept revision, exactly once, across restarts."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.conftest import ServerProcess, instance, wait_until
from waypost.sse import SseMessage, SseParser


def read_events(
    url: str,
    n: int,
    *,
    index: int | None = None,
    last_event_id: str | None = None,
    service: str | None = None,
) -> list[SseMessage]:
    params: dict[str, str | int] = {}
    if index is not None:
        params["index"] = index
    if service is not None:
        params["service"] = service
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    got: list[SseMessage] = []
    parser = SseParser()
    with httpx.stream(
        "GET",
        f"{url}/api/v1/events",
        params=params,
        headers=headers,
        timeout=httpx.Timeout(10, read=10),
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for chunk in r.iter_raw():
            got += [m for m in parser.feed(chunk) if m.event in ("put", "delete")]
            if len(got) >= n:
                break
    return got


def test_resume_from_r_gives_every_later_event_once_in_order(
    server: ServerProcess, http: httpx.Client
) -> None:
    for n in range(10):
        http.put(f"/api/v1/instances/w{n}", json=instance(f"w{n}"))
    http.delete("/api/v1/instances/w3")
    events = read_events(server.url, 7, index=4)
    assert [int(e.id or 0) for e in events] == [5, 6, 7, 8, 9, 10, 11]
    assert [e.event for e in events][-1] == "delete"
    assert '"id":"w3"' in events[-1].data
    again = read_events(server.url, 3, last_event_id="8")
    assert [int(e.id or 0) for e in again] == [9, 10, 11]


def test_resume_works_across_a_server_restart(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url) as c:
        for n in range(5):
            c.put(f"/api/v1/instances/w{n}", json=instance(f"w{n}"))
    server.restart()
    with httpx.Client(base_url=server.url) as c:
        for n in range(5, 8):
            c.put(f"/api/v1/instances/w{n}", json=instance(f"w{n}"))
    events = read_events(server.url, 5, index=3)
    assert [int(e.id or 0) for e in events] == [4, 5, 6, 7, 8]


def test_a_live_stream_follows_changes_and_filters_by_service(
    server: ServerProcess, http: httpx.Client
) -> None:
    import threading

    got: list[SseMessage] = []
    t = threading.Thread(target=lambda: got.extend(read_events(server.url, 2, service="web")))
    t.start()
    wait_until(lambda: http.get("/status").json()["event_streams"] >= 1, what="stream open")
    http.put("/api/v1/instances/db-1", json=instance("db-1", "db"))
    http.put("/api/v1/instances/web-1", json=instance("web-1"))
    http.delete("/api/v1/instances/web-1")
    t.join(10)
    assert [(e.event, int(e.id or 0)) for e in got] == [("put", 2), ("delete", 3)]


def test_a_revision_older_than_the_log_is_410(start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server("--event-window", "1ms")
    with httpx.Client(base_url=srv.url) as c:
        c.put("/api/v1/instances/a", json=instance("a"))
        c.put("/api/v1/instances/b", json=instance("b"))

        def gone() -> bool:
            # Each write gives the store a chance to prune (at most once a second).
            c.put("/api/v1/instances/c", json=instance("c"))
            with c.stream("GET", "/api/v1/events", params={"index": 0}) as r:
                return r.status_code == 410

        wait_until(gone, timeout_s=10, what="the log to be pruned")
        r = c.get("/api/v1/events", params={"index": 0})
        assert r.json()["error"] == "gone"
        assert "re-list" in r.json()["message"]


def test_a_revision_ahead_of_the_registry_is_410(http: httpx.Client) -> None:
    http.put("/api/v1/instances/a", json=instance("a"))
    r = http.get("/api/v1/events", params={"index": 99})
    assert r.status_code == 410
    assert "reset" in r.json()["message"]
