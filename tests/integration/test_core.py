"""The registry core through the API of a real server: nodes, leases, multi-event revisions,
exact input, lenient stored records."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import ServerProcess, instance, wait_until
from waypost import Client, Node
from waypost.sse import SseMessage, SseParser


def stream(
    url: str,
    stop: Callable[[list[SseMessage]], bool],
    *,
    params: dict[str, str] | None = None,
    last_event_id: str | None = None,
    opened: threading.Event | None = None,
    stamps: list[float] | None = None,
) -> list[SseMessage]:
    """Read events (any kind) until ``stop(events)`` holds; ``stamps`` gets each arrival time."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    got: list[SseMessage] = []
    parser = SseParser()
    with httpx.stream(
        "GET",
        f"{url}/api/v1/events",
        params=params or {},
        headers=headers,
        timeout=httpx.Timeout(10, read=15),
    ) as r:
        assert r.status_code == 200, r.read()
        if opened is not None:
            opened.set()
        for chunk in r.iter_raw():
            for msg in parser.feed(chunk):
                if msg.event.endswith(("put", "delete")):
                    got.append(msg)
                    if stamps is not None:
                        stamps.append(time.monotonic())
            if stop(got):
                break
    return got


def test_a_node_and_its_instances_live_and_die_with_one_lease(
    server: ServerProcess, http: httpx.Client
) -> None:
    lease = http.post("/api/v1/leases", json={"ttl": "2s"}).json()
    assert lease["ttl"] == "2s"
    lid = lease["id"]
    assert (
        http.put("/api/v1/nodes/n1", json={"address": "10.0.0.9", "lease": lid}).status_code == 200
    )
    for n in range(3):
        body = instance(f"w{n}", node="n1", lease=lid)
        assert http.put(f"/api/v1/instances/w{n}", json=body).status_code == 200
    info = http.get(f"/api/v1/leases/{lid}").json()
    assert sorted((e["kind"], e["id"]) for e in info["entries"]) == [
        ("instance", "w0"),
        ("instance", "w1"),
        ("instance", "w2"),
        ("node", "n1"),
    ]
    start_rev = int(http.get("/status").json()["revision"])
    # Kept alive for 2.5 TTLs, a keep-alive every 0.3 s: everything stays.
    kept_from = time.monotonic()

    def keep_alive() -> bool:
        assert http.put(f"/api/v1/leases/{lid}/keepalive").status_code == 200
        return time.monotonic() - kept_from > 2.5 * 2.0

    wait_until(keep_alive, 15, "2.5 TTLs of keep-alives", interval_s=0.3)
    assert len(http.get("/api/v1/instances").json()) == 3
    node = http.get("/api/v1/nodes/n1").json()
    assert (node["registered"], node["instances"], node["lease"]) == (True, 3, lid)
    # Keep-alives stop: all four go, as delete events, within 100 ms of the deadline.
    stamps: list[float] = []
    opened = threading.Event()
    got: list[SseMessage] = []
    t = threading.Thread(
        target=lambda: got.extend(
            stream(
                server.url,
                lambda evs: len(evs) >= 4,
                params={"index": str(start_rev)},
                opened=opened,
                stamps=stamps,
            )
        )
    )
    t.start()
    assert opened.wait(5)
    sent = time.monotonic()
    assert http.put(f"/api/v1/leases/{lid}/keepalive").status_code == 200
    deadline = sent + 2.0  # the server's deadline is at most this (it renewed after `sent`)
    t.join(10)
    assert sorted((m.event, m.data.split('"id":"')[1].split('"')[0]) for m in got) == [
        ("delete", "w0"),
        ("delete", "w1"),
        ("delete", "w2"),
        ("node.delete", "n1"),
    ]
    # Deleted at the lease's own deadline, not at some later sweep. The store's unit tests
    # hold the exact timing on a ManualClock; here, over real sockets and a loaded
    # machine's scheduler, half a second is the margin.
    assert max(stamps) - deadline < 0.5, f"deleted {max(stamps) - deadline:.3f}s late"
    assert http.get("/api/v1/instances").json() == []
    assert http.get(f"/api/v1/leases/{lid}").status_code == 404
    assert http.put(f"/api/v1/leases/{lid}/keepalive").status_code == 404


def test_a_revoked_lease_removes_what_it_holds_at_once(http: httpx.Client) -> None:
    lid = http.post("/api/v1/leases", json={"ttl": "1m"}).json()["id"]
    http.put("/api/v1/nodes/n1", json={"address": "10.0.0.9", "lease": lid})
    http.put("/api/v1/instances/w0", json=instance("w0", node="n1", lease=lid))
    http.put("/api/v1/instances/keep", json=instance("keep", node="n1"))
    r = http.delete(f"/api/v1/leases/{lid}")
    assert r.status_code == 200
    # The write answers once the catalog holds it: no waiting needed.
    assert [i["id"] for i in http.get("/api/v1/instances").json()] == ["keep"]
    nodes = http.get("/api/v1/nodes").json()
    assert [(n["id"], n["registered"], n["instances"]) for n in nodes] == [("n1", False, 1)]
    r = http.put("/api/v1/instances/x", json=instance("x", lease=lid))
    assert r.status_code == 404
    assert r.json()["field"] == "lease"


def test_an_sse_client_resuming_inside_a_multi_event_revision_gets_the_rest_once(
    server: ServerProcess, http: httpx.Client
) -> None:
    http.put("/api/v1/instances/a", json=instance("a"))
    r = http.post("/api/v1/batch", json={"register": [instance("b"), instance("c"), instance("d")]})
    batch_rev = r.json()["index"]
    assert batch_rev == 2
    http.delete("/api/v1/instances/a")
    everything = stream(server.url, lambda evs: len(evs) >= 5, params={"index": "0"})
    assert [m.id for m in everything] == ["1", "2.0", "2.1", "2.2", "3"]
    # Resume from the middle of revision 2: the rest of it, then revision 3, once each.
    rest = stream(server.url, lambda evs: len(evs) >= 3, last_event_id="2.0")
    assert [(m.id, m.data.split('"id":"')[1][0]) for m in rest] == [
        ("2.1", "c"),
        ("2.2", "d"),
        ("3", "a"),
    ]
    assert [m.id for m in stream(server.url, lambda evs: len(evs) >= 1, last_event_id="2")] == ["3"]


def test_the_sdk_watch_resumes_inside_a_revision_exactly_once(server: ServerProcess) -> None:
    with Client(server.url) as c:
        c.batch(
            register=[
                {"id": f"w{n}", "service": "web", "address": "10.0.0.1", "port": 80}
                for n in range(4)
            ]
        )
        seen = []
        for ev in c.watch(index=0):
            seen.append((ev.revision, ev.index, ev.instance.id))
            if len(seen) == 2:
                break
        assert seen == [(1, 0, "w0"), (1, 1, "w1")]
        # A new watch from where that one stood: the two left, then what comes next.
        c.deregister("w0")
        last = None
        for ev in c.watch(index=0):
            last = ev
            if ev.index == 1:
                break
        rest = []
        for ev in c.watch(after=last):
            rest.append((ev.revision, ev.index, ev.type, ev.instance.id))
            if len(rest) == 3:
                break
        assert rest == [(1, 2, "put", "w2"), (1, 3, "put", "w3"), (2, 0, "delete", "w0")]


def test_event_kinds_are_named_and_filtered(server: ServerProcess, http: httpx.Client) -> None:
    http.put("/api/v1/nodes/n1", json={"address": "10.0.0.9"})
    http.put("/api/v1/instances/w", json=instance("w"))
    http.put("/api/v1/services/web/config", json={"meta": {"owner": "a"}})
    http.put("/api/v1/routes/r1", json={"service": "web", "match": {"path_prefix": "/api"}})
    all_kinds = stream(server.url, lambda evs: len(evs) >= 4, params={"index": "0"})
    assert [m.event for m in all_kinds] == [
        "node.put",
        "put",
        "service_config.put",
        "route.put",
    ]
    only = stream(server.url, lambda evs: len(evs) >= 1, params={"index": "0", "kind": "route"})
    assert [m.event for m in only] == ["route.put"]
    r = http.get("/api/v1/events", params={"kind": "robot"})
    assert r.status_code == 400
    with Client(server.url) as c:
        nodes = []
        for ev in c.watch(index=0, kinds=["node"]):
            nodes.append(ev.entry)
            break
        assert isinstance(nodes[0], Node)


def test_nodes_are_registered_listed_and_marked_when_only_named(http: httpx.Client) -> None:
    http.put("/api/v1/nodes/n1", json={"address": "10.0.0.9", "meta": {"rack": "r1"}})
    http.put("/api/v1/instances/w1", json=instance("w1", node="n1"))
    http.put("/api/v1/instances/w2", json=instance("w2", node="n2"))
    nodes = {n["id"]: n for n in http.get("/api/v1/nodes").json()}
    assert (nodes["n1"]["registered"], nodes["n1"]["meta"], nodes["n1"]["instances"]) == (
        True,
        {"rack": "r1"},
        1,
    )
    assert (nodes["n2"]["registered"], nodes["n2"]["instances"]) == (False, 1)
    assert http.get("/api/v1/nodes/n2").json()["registered"] is False
    assert http.delete("/api/v1/nodes/n1").status_code == 200
    assert http.delete("/api/v1/nodes/n1").status_code == 404
    assert http.get("/api/v1/nodes/zz").status_code == 404
    r = http.put("/api/v1/nodes/n3", json={"id": "other", "address": "10.0.0.1"})
    assert (r.status_code, r.json()["field"]) == (409, "id")


def test_service_config_and_routes_are_entries_too(http: httpx.Client) -> None:
    assert http.get("/api/v1/services/web/config").status_code == 404
    assert http.put("/api/v1/services/web/config", json={"meta": {"a": "b"}}).status_code == 200
    assert http.get("/api/v1/services/web/config").json()["meta"] == {"a": "b"}
    # Every config, also of a service with no instances (web has none here).
    assert [c["service"] for c in http.get("/api/v1/configs").json()] == ["web"]
    assert http.get("/api/v1/configs?x=1").status_code == 400
    body = {"service": "web", "match": {"path_prefix": "/v1", "methods": ["GET"]}, "priority": 5}
    assert http.put("/api/v1/routes/r1", json=body).status_code == 200
    assert [r["name"] for r in http.get("/api/v1/routes").json()] == ["r1"]
    bad = http.put("/api/v1/routes/r2", json={"service": "web", "match": {"path_prefix": "v1"}})
    assert (bad.status_code, bad.json()["field"]) == (400, "match.path_prefix")
    assert http.delete("/api/v1/routes/r1").status_code == 200
    assert http.delete("/api/v1/services/web/config").status_code == 200
    assert http.get("/api/v1/routes").json() == []
    assert http.get("/api/v1/configs").json() == []


STRAY = ["\n", "\r", "\x00", " ", "\t", "\u00a0"]


@pytest.mark.parametrize("stray", STRAY, ids=[repr(s) for s in STRAY])
@pytest.mark.parametrize(
    ("field", "body"),
    [
        ("service", lambda s: instance("w", service="web" + s)),
        ("id", lambda s: instance("w" + s)),
        ("node", lambda s: instance("w", node="n1" + s)),
        ("version", lambda s: instance("w", version="1.2.3" + s)),
        ("meta", lambda s: instance("w", meta={"zone" + s: "a"})),
        ("address", lambda s: instance("w", address="10.0.0.1" + s)),
        ("ttl", lambda s: instance("w", ttl="10s" + s)),
    ],
)
def test_a_stray_byte_in_a_name_id_key_or_version_is_a_400_naming_the_field(
    http: httpx.Client, field: str, body: Callable[[str], dict[str, object]], stray: str
) -> None:
    http.put("/api/v1/instances/w", json=instance("w"))
    before = http.get("/api/v1/instances").content
    sent = body(stray)
    path_id = "w"
    r = http.put(f"/api/v1/instances/{path_id}", json=sent)
    assert r.status_code == 400, r.text
    assert r.json()["field"].startswith(field), r.text
    assert http.get("/api/v1/instances").content == before


@pytest.mark.parametrize("stray", ["%0A", "%0D", "%00", "%20"])
def test_a_stray_byte_in_a_path_id_is_a_400(http: httpx.Client, stray: str) -> None:
    body = {"service": "web", "address": "10.0.0.1", "port": 80}
    r = http.put(f"/api/v1/instances/w{stray}", json=body)
    assert (r.status_code, r.json()["field"]) == (400, "id")
    assert http.get("/api/v1/instances").json() == []


def test_a_newer_record_is_served_and_a_corrupt_one_skipped_and_reported(
    server: ServerProcess, http: httpx.Client
) -> None:
    for iid in ("a", "b", "c"):
        http.put(f"/api/v1/instances/{iid}", json=instance(iid))
    server.stop()
    db = sqlite3.connect(server.data_dir / "waypost.db")
    newer = b'{"id":"a","service":"web","address":"10.0.0.1","port":8080,"zone":"eu-9"}'
    db.execute("UPDATE entries SET data = ?, schema = 7 WHERE key = 'a'", (newer,))
    db.execute("UPDATE entries SET data = ? WHERE key = 'b'", (b"\xff not json",))
    db.commit()
    db.close()
    server.restart()
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/api/v1/instances/a").json()["port"] == 8080
        assert [i["id"] for i in c.get("/api/v1/instances").json()] == ["a", "c"]
        assert c.get("/status").json()["skipped_records"] == 1
        assert "instance/b" in server.log.read_text()
        # The registry keeps working around it.
        assert c.put("/api/v1/instances/d", json=instance("d")).status_code == 200


def test_a_wait_longer_than_max_wait_is_cut_to_it(
    start_server: Callable[..., ServerProcess],
) -> None:
    srv = start_server("--max-wait", "300ms")
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        c.put("/api/v1/instances/w", json=instance("w"))
        t0 = time.monotonic()
        r = c.get("/api/v1/services/web", params={"index": "1", "wait": "1m"})
        assert r.status_code == 200
        assert time.monotonic() - t0 < 5
        assert wait_until(lambda: c.get("/status").json()["config"]["max_wait"] == "300ms")
