"""``/api/v1/services`` and ``/api/v1/nodes`` are encoded a service (node) at a time,
re-encoding only what changed: the bytes equal encoding the whole list, after any
changes."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from waypost.api.blocking import AnswerCache
from waypost.catalog import Catalog
from waypost.model import Event, Instance, Node, Status

changes = st.lists(
    st.tuples(
        st.sampled_from(["put", "delete", "node"]),
        st.sampled_from(["a", "b", "c", "d"]),
        st.sampled_from(["web", "db", "cache"]),
        st.sampled_from(["n1", "n2", None]),
        st.sampled_from(list(Status)),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(changes)
def test_listings_equal_the_whole_list_encoded(
    steps: list[tuple[str, str, str, str | None, Status]],
) -> None:
    catalog = Catalog()
    cache = AnswerCache(catalog)
    for n, (op, iid, service, node, status) in enumerate(steps, start=1):
        entry: Instance | Node
        if op == "node":
            entry = Node(id=node or "n3", address=f"10.0.1.{n}")
        else:
            entry = Instance(
                id=iid, service=service, address="10.0.0.1", port=80 + n, node=node, status=status
            )
        catalog.apply([Event(revision=n, type="delete" if op == "delete" else "put", entry=entry)])
        assert cache.get(("services", None)).body == msgspec.json.encode(catalog.services())
        assert cache.get(("nodes", None)).body == msgspec.json.encode(catalog.nodes())
