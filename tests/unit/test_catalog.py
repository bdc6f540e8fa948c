from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waypost.catalog import Catalog
from waypost.errors import InvalidInput
from waypost.model import Event, Instance, Kind, Query, Status, convert_instance
from waypost.query import parse_query
from waypost.versions import matches


def inst(iid: str, service: str = "web", **f: Any) -> Instance:
    return convert_instance({"id": iid, "service": service, "address": "10.0.0.1", "port": 80, **f})


@pytest.fixture
def catalog() -> Catalog:
    c = Catalog()
    rows = [
        inst("web-3", version="1.4.0", tags=["prod", "eu"], node="n1", meta={"zone": "a"}),
        inst("web-1", version="1.2.0", tags=["prod"], node="n2", meta={"zone": "b"}),
        inst("web-2", version="2.0.0", tags=["canary"], node="n1", status="warning"),
        inst("web-4", version="0.9.0", tags=["eu"], node="n2", maintenance=True),
        inst("db-1", "db", tags=["prod"], node="n1", status="critical"),
        inst("net-1", "mesh", kind="network", node="n3"),
    ]
    c.load([(r, i + 1) for i, r in enumerate(rows)], len(rows))
    return c


def ids(c: Catalog, qs: str, service: str | None = None) -> list[str]:
    pairs = [tuple(p.split("=", 1)) for p in qs.split("&") if p]
    q, _, _ = parse_query(pairs, service=service)  # type: ignore[arg-type]
    return [i.id for i in c.query(q)]


@pytest.mark.parametrize(
    ("qs", "expected"),
    [
        ("", ["db-1", "net-1", "web-1", "web-2", "web-3", "web-4"]),
        ("service=web", ["web-1", "web-2", "web-3", "web-4"]),
        ("service=web&version=>=1.2,<2", ["web-1", "web-3"]),
        ("service=web&version=^1.3", ["web-3"]),
        ("tag=prod", ["db-1", "web-1", "web-3"]),
        ("tag=prod&tag=eu", ["web-3"]),
        ("any_tag=canary&any_tag=eu", ["web-2", "web-3", "web-4"]),
        ("any_tag=canary,eu", ["web-2", "web-3", "web-4"]),
        ("status=passing", ["net-1", "web-1", "web-3"]),
        ("status=healthy&service=web", ["web-1", "web-3"]),
        ("status=degraded", ["web-2"]),
        ("status=unhealthy", ["db-1", "web-4"]),
        ("status=passing,warning&service=web", ["web-1", "web-2", "web-3"]),
        ("node=n1", ["db-1", "web-2", "web-3"]),
        ("node=n1&tag=prod", ["db-1", "web-3"]),
        ("meta.zone=a", ["web-3"]),
        ("kind=network", ["net-1"]),
        ("service=nope", []),
        ("tag=nope", []),
    ],
)
def test_every_filter_returns_exactly_the_matching_instances(
    catalog: Catalog, qs: str, expected: list[str]
) -> None:
    assert ids(catalog, qs) == expected


def test_maintenance_counts_as_critical_but_keeps_its_status(catalog: Catalog) -> None:
    web4 = catalog.get("web-4")
    assert web4 is not None
    assert web4.status is Status.PASSING
    assert web4.effective_status is Status.CRITICAL


def test_services_summarise_counts_tags_and_versions(catalog: Catalog) -> None:
    web = next(s for s in catalog.services() if s.name == "web")
    assert (web.instances, web.passing, web.warning, web.critical, web.maintenance) == (
        4,
        2,
        1,
        1,
        1,
    )
    assert web.versions == ["0.9.0", "1.2.0", "1.4.0", "2.0.0"]
    assert web.tags == ["canary", "eu", "prod"]
    assert [s.name for s in catalog.services()] == ["db", "mesh", "web"]


def test_events_move_the_index_and_the_service_revision(catalog: Catalog) -> None:
    seen: list[int] = []
    catalog.add_listener(seen.append)
    catalog.apply([Event(revision=7, type="put", entry=inst("web-9", tags=["prod"]))])
    catalog.apply([Event(revision=8, type="delete", entry=inst("db-1", "db"))])
    assert seen == [7, 8]
    assert catalog.service_revision("web") == 7
    assert catalog.service_revision("db") == 8
    assert catalog.get("db-1") is None
    assert ids(catalog, "tag=prod") == ["web-1", "web-3", "web-9"]


def test_moving_an_instance_to_another_service_reindexes_both(catalog: Catalog) -> None:
    catalog.apply([Event(revision=7, type="put", entry=inst("web-1", "api"))])
    assert "web-1" not in ids(catalog, "service=web")
    assert ids(catalog, "service=api") == ["web-1"]
    assert catalog.service_revision("web") == 7


def test_stale_events_are_ignored(catalog: Catalog) -> None:
    catalog.apply([Event(revision=3, type="delete", entry=inst("web-1"))])
    assert catalog.get("web-1") is not None


def test_recent_events_are_served_from_memory_until_the_ring_ends() -> None:
    c = Catalog(recent_events=3)
    c.load([], 0)
    c.apply([Event(revision=r, type="put", entry=inst(f"w{r}")) for r in range(1, 6)])
    assert [e.revision for e in c.events_since(3) or []] == [4, 5]
    assert c.events_since(5) == []
    assert c.events_since(1) is None  # 2 has left the ring: read the store instead


@pytest.mark.parametrize(
    "qs",
    [
        "tags=prod",
        "status=sideways",
        "kind=robot",
        "index=-1",
        "index=x",
        "wait=soon",
        "version=>=x",
        "meta.=1",
    ],
)
def test_bad_query_parameters_are_refused(qs: str) -> None:
    with pytest.raises(InvalidInput):
        parse_query([tuple(qs.split("=", 1))])  # type: ignore[list-item]


def test_kind_and_status_parse_to_enums() -> None:
    q, index, wait = parse_query(
        [("kind", "actor"), ("status", "healthy"), ("index", "4"), ("wait", "2s")]
    )
    assert (q.kind, q.status, index, wait) == (Kind.ACTOR, (Status.PASSING,), 4, 2.0)


# --- property: the indexed query equals a brute-force filter -------------------------------


TAGS = ["prod", "eu", "us", "canary"]
instances_st = st.lists(
    st.fixed_dictionaries(
        {
            "service": st.sampled_from(["web", "db", "api"]),
            "node": st.sampled_from(["n1", "n2", "n3"]),
            "tags": st.lists(st.sampled_from(TAGS), unique=True, max_size=3),
            "version": st.sampled_from(["0.9.0", "1.2.0", "1.9.3", "2.0.0"]),
            "status": st.sampled_from(["passing", "warning", "critical", "unknown"]),
            "maintenance": st.booleans(),
            "meta": st.dictionaries(
                st.sampled_from(["zone", "rack"]), st.sampled_from(["a", "b"]), max_size=2
            ),
            "kind": st.sampled_from(["service", "network", "actor"]),
        }
    ),
    max_size=25,
)
queries_st = st.builds(
    Query,
    service=st.none() | st.sampled_from(["web", "db", "nope"]),
    version=st.none() | st.sampled_from([">=1.2,<2", "^1", "~1.9", "!=2.0.0"]),
    tags=st.lists(st.sampled_from(TAGS), unique=True, max_size=2).map(tuple),
    any_tags=st.lists(st.sampled_from(TAGS), unique=True, max_size=2).map(tuple),
    status=st.lists(st.sampled_from(list(Status)), unique=True, max_size=2).map(tuple),
    node=st.none() | st.sampled_from(["n1", "n2"]),
    meta=st.lists(
        st.tuples(st.sampled_from(["zone", "rack"]), st.sampled_from(["a", "b"])), max_size=1
    ).map(tuple),
    kind=st.none() | st.sampled_from(list(Kind)),
)


def brute(q: Query, i: Instance) -> bool:
    return (
        (q.service is None or i.service == q.service)
        and (q.version is None or matches(i.version, q.version))
        and all(t in i.tags for t in q.tags)
        and (not q.any_tags or any(t in i.tags for t in q.any_tags))
        and (not q.status or (Status.CRITICAL if i.maintenance else i.status) in q.status)
        and (q.node is None or i.node == q.node)
        and all(i.meta.get(k) == v for k, v in q.meta)
        and (q.kind is None or i.kind == q.kind)
    )


@settings(max_examples=200)
@given(instances_st, queries_st, st.integers(min_value=0, max_value=24))
def test_indexed_queries_equal_a_brute_force_filter(
    rows: list[dict[str, Any]], q: Query, removed: int
) -> None:
    c = Catalog()
    insts = [inst(f"i{n}", **row) for n, row in enumerate(rows)]
    c.load([(i, n + 1) for n, i in enumerate(insts)], len(insts))
    if insts:  # exercise the incremental index too: delete one, re-add another changed
        gone = insts[removed % len(insts)]
        c.apply([Event(revision=c.revision + 1, type="delete", entry=gone)])
        insts.remove(gone)
    if insts:  # and one changed in place: its status, maintenance and kind move indexes
        was = insts[(removed * 7) % len(insts)]
        now = msgspec.structs.replace(
            was,
            status=Status.CRITICAL if was.status is Status.PASSING else Status.PASSING,
            maintenance=not was.maintenance,
            kind=Kind.SERVICE if was.kind is not Kind.SERVICE else Kind.NETWORK,
        )
        c.apply([Event(revision=c.revision + 1, type="put", entry=now)])
        insts[insts.index(was)] = now
    expected = sorted((i for i in insts if brute(q, i)), key=lambda i: (i.service, i.id))
    assert [i.id for i in c.query(q)] == [i.id for i in expected]


def test_a_revision_applied_an_event_at_a_time_is_applied_once() -> None:
    """A follower (a DNS worker) gets a revision's events one by one from the stream."""
    from waypost.catalog import Catalog
    from waypost.model import Event, Instance

    def inst(i: str) -> Instance:
        return Instance(id=i, service="s", address="10.0.0.1", port=80)

    cat = Catalog()
    batch = [Event(revision=3, type="put", entry=inst(f"i{n}"), index=n) for n in range(3)]
    for ev in batch:
        cat.apply([ev])
    assert [i.id for i in cat.all()] == ["i0", "i1", "i2"]
    cat.apply(batch)  # again, whole: nothing changes, nothing doubles
    assert len(cat.all()) == 3
    assert cat.revision == 3
    cat.apply([Event(revision=4, type="delete", entry=inst("i1"), index=0)])
    cat.apply([batch[1]])  # an old event: skipped
    assert [i.id for i in cat.all()] == ["i0", "i2"]


def test_a_relist_after_a_gap_goes_out_as_the_difference_in_events() -> None:
    """etcd-io/etcd#9386: after a watch gap the store's log cannot fill, what changed
    meanwhile reaches streams and blocking queries as events, each once."""
    from waypost.model import Node

    def at(iid: str, port: int = 80) -> Instance:
        return convert_instance({"id": iid, "service": "web", "address": "10.0.0.1", "port": port})

    cat = Catalog()
    cat.load([(at("a"), 1), (at("b"), 2), (at("c"), 3), (Node(id="n1"), 3)], 3)
    woken: list[int] = []
    cat.add_listener(woken.append)
    # Meanwhile (not seen): b changed at 5, c went at 6, d came at 7, n1 went, n2 came.
    rows = [(at("a"), 1), (at("b", 81), 5), (at("d"), 7), (Node(id="n2"), 8)]
    events = cat.relist(rows, 9)
    assert [(e.revision, e.index, e.type, e.kind, e.entry.key) for e in events] == [
        (9, 0, "put", "instance", "b"),
        (9, 1, "put", "instance", "d"),
        (9, 2, "put", "node", "n2"),
        (9, 3, "delete", "instance", "c"),
        (9, 4, "delete", "node", "n1"),
    ]
    assert cat.revision == 9
    assert woken  # blocking queries woke
    assert sorted(i.id for i in cat.all()) == ["a", "b", "d"]
    assert [i.port for i in cat.all() if i.id == "b"] == [81]
    # Streams resuming from before the gap get exactly the difference, once.
    assert [(e.type, e.entry.key) for e in cat.events_since(3) or []] == [
        ("put", "b"),
        ("put", "d"),
        ("put", "n2"),
        ("delete", "c"),
        ("delete", "n1"),
    ]
    # Each entry keeps the revision of its own last change, for compare-and-swap.
    assert (cat.mod_revision("a"), cat.mod_revision("b"), cat.mod_revision("d")) == (1, 5, 7)
    assert cat.mod_revision("n2", kind="node") == 8
    # Nothing changed: nothing goes out.
    assert cat.relist(rows, 10) == []


CHANGES = st.lists(
    st.tuples(
        st.sampled_from(["put", "delete", "node-put", "node-delete"]),
        st.sampled_from(["i1", "i2", "i3", "i4", "i5"]),
        st.sampled_from(["web", "db", "cache"]),
        st.sampled_from(["n1", "n2", ""]),
        st.sampled_from(["passing", "warning", "critical"]),
        st.booleans(),
        st.sampled_from([(), ("a",), ("a", "b")]),
    ),
    max_size=40,
)


def _scan_summaries(c: Catalog) -> list[Any]:
    """The services summary computed by visiting every instance (the reference)."""
    from waypost.model import ServiceSummary

    out = []
    for name in sorted({i.service for i in c.all()}):
        members = [i for i in c.all() if i.service == name]
        by = [i.effective_status for i in members]
        out.append(
            ServiceSummary(
                name=name,
                instances=len(members),
                passing=by.count(Status.PASSING),
                warning=by.count(Status.WARNING),
                critical=by.count(Status.CRITICAL),
                unknown=by.count(Status.UNKNOWN),
                maintenance=sum(i.maintenance for i in members),
                tags=sorted({t for i in members for t in i.tags}),
                versions=sorted({i.version for i in members if i.version}),
                kinds=sorted({i.kind for i in members}, key=lambda k: k.value),
            )
        )
    return out


def _scan_nodes(c: Catalog) -> list[Any]:
    """The node list computed by visiting every instance (the reference)."""
    from waypost.model import Node, NodeStatus

    registered = {n.key: n for n in c.entries("node")}
    out = []
    for nid in sorted(set(registered) | {i.node for i in c.all() if i.node}):
        members = [i for i in c.all() if i.node == nid]  # in query order
        seen = max((m.updated_at for m in members), default=0.0)
        reg = registered.get(nid)
        if isinstance(reg, Node):
            view = Node(
                id=nid, address=reg.address, meta=reg.meta, lease=reg.lease, status=reg.status,
                registered=True, instances=len(members), registered_at=reg.registered_at,
                updated_at=reg.updated_at, last_seen=max(reg.last_seen, seen),
            )  # fmt: skip
        else:
            view = Node(
                id=nid, address=members[0].address, status=NodeStatus.ALIVE, registered=False,
                instances=len(members), last_seen=seen,
            )  # fmt: skip
        out.append(view)
    return out


@settings(max_examples=200, deadline=None)
@given(CHANGES, st.integers(0, 4), st.lists(st.integers(0, 50), min_size=40, max_size=40))
def test_kept_summaries_equal_a_recompute_after_any_changes(
    changes: list[tuple[str, str, str, str, str, bool, tuple[str, ...]]],
    reload_at: int,
    times: list[int],
) -> None:
    """services() and nodes() are kept from counts updated as instances change, each
    answer until its service (node) changes: after any sequence of changes (and a full
    reload) they equal answers computed by visiting every instance."""
    from waypost.model import Node

    c = Catalog()
    rev = 0
    for n, (op, iid, service, node, status, maint, tags) in enumerate(changes):
        rev = n + 1
        entry: Instance | Node
        if op.startswith("node"):
            entry = Node(id=node or "n3", address="10.0.0.9")
            kind = "put" if op == "node-put" else "delete"
        else:
            entry = inst(
                iid,
                service,
                node=node or None,
                status=status,
                maintenance=maint,
                tags=list(tags),
                version=f"1.{n % 3}.0" if n % 2 else None,
                address=f"10.0.0.{n % 7 + 1}",
                updated_at=float(times[n]),
                domain=f"{service}.local" if service != "cache" else None,
            )
            if n % 3 == 0:  # ids in capitals are found by DNS in any case
                entry = msgspec.structs.replace(entry, id=iid.upper())
            kind = op
        c.apply([Event(revision=rev, type=kind, entry=entry)])  # type: ignore[arg-type]
        c.services()
        c.nodes()  # keep answers, so later changes must drop them
        if n == reload_at:
            rows = [(i, c._mod[i.id]) for i in c._by_id.values()]
            rows += [(e, rev) for e in c._others["node"].values()]
            c.load(rows, rev)
    assert c.services() == _scan_summaries(c)
    assert c.nodes() == _scan_nodes(c)
    # The DNS indexes (address, custom domain, ids in any case) equal a scan too.
    everything = c.all()
    for address in {f"10.0.0.{k}" for k in range(1, 9)}:
        assert c.at_address(address.upper()) == {i.id for i in everything if i.address == address}
    for domain in ("web.local", "db.local"):
        expected = {i.id for i in everything if i.domain == domain}
        assert c.with_domain(domain.upper() + ".") == expected
    for iid in ("i1", "i2", "i3", "i4", "i5"):
        for asked in (iid, iid.upper()):
            exact = [i for i in everything if i.id == asked]
            other = [i for i in everything if i.id.lower() == iid]
            assert c.folded(asked) == (exact or other or [None])[0]
    assert c.service_count() == len(c.services())
    assert c.node_count() == len(c.nodes())
    for view in c.nodes():
        assert c.node(view.id) == view
