"""Stored instances read fast and with shared strings (compact.py): the same instance a
strict decode gives, for any instance, and never a different one."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from waypost.compact import compact, decode_stored_instance
from waypost.model import Check, CheckState, Instance, Kind, Status
from waypost.store.base import decode_record

labels = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\Z")
instances = st.builds(
    Instance,
    id=labels,
    service=labels,
    address=st.ip_addresses().map(str) | st.from_regex(r"\A[a-z][a-z0-9-]{0,10}[a-z]\Z"),
    port=st.integers(1, 65535),
    version=st.none() | st.from_regex(r"\A[1-9]\.(0|[1-9][0-9]?)\.[0-9]\Z"),
    node=st.none() | labels,
    tags=st.lists(st.text("abcxyz-=:", min_size=1, max_size=8), max_size=4).map(tuple),
    meta=st.dictionaries(st.from_regex(r"\A[a-z]{1,6}\Z"), st.text(max_size=10), max_size=3),
    weight=st.integers(1, 1000),
    domain=st.none() | st.just("web.local"),
    kind=st.sampled_from(Kind),
    checks=st.sampled_from([(), (Check(name="h", http="http://10.0.0.1:80/health"),)]),
    health=st.sampled_from([(), (CheckState(name="h", status=Status.WARNING, output="o"),)]),
    agent=st.booleans(),
    ttl=st.none() | st.just("10s"),
    lease=st.none() | st.integers(1, 2**53 - 1),
    status=st.sampled_from(Status),
    maintenance=st.booleans(),
    output=st.text(max_size=20),
    registered_at=st.floats(0, 2e9),
    updated_at=st.floats(0, 2e9),
    last_check=st.none() | st.floats(0, 2e9),
)


@settings(max_examples=300)
@given(instances)
def test_a_stored_instance_reads_back_as_the_strict_decoder_reads_it(inst: Instance) -> None:
    data = msgspec.json.encode(inst)
    fast = decode_stored_instance(data)
    assert type(fast) is Instance
    assert fast == msgspec.json.decode(data, type=Instance) == inst
    assert msgspec.json.encode(fast) == data  # answers stay byte for byte
    assert compact(inst) == inst


@given(instances)
def test_repeated_strings_are_shared_between_instances(inst: Instance) -> None:
    data = msgspec.json.encode(inst)
    a, b = decode_stored_instance(data), decode_stored_instance(data)
    assert a.service is b.service
    assert a.address is b.address
    assert all(x is y for x, y in zip(a.tags, b.tags, strict=True))
    # An instance decoded elsewhere (the API) takes the shared strings too.
    c = compact(msgspec.json.decode(data, type=Instance))
    assert c.service is a.service
    assert c.node is a.node
    assert compact(c) is c  # already compact: not rebuilt


def test_stored_records_are_read_leniently_and_bad_ones_skipped() -> None:
    base = {"id": "a", "service": "web", "address": "10.0.0.1", "port": 80}
    # A newer Waypost's fields, at the top and inside a check, are ignored.
    newer = base | {"future": 1, "checks": [{"name": "h", "tcp": "10.0.0.1:80", "later": 2}]}
    got = decode_record("instance", "a", msgspec.json.encode(newer))
    assert isinstance(got, Instance)
    assert (got.id, got.checks[0].tcp) == ("a", "10.0.0.1:80")
    # A record that is not an instance is skipped, not loaded half-read.
    assert decode_record("instance", "a", msgspec.json.encode(base | {"port": "x"})) is None
    assert decode_record("instance", "a", b"{not json") is None
