"""Node discovery's pure parts: reading entries leniently, signing and verifying, source
names, TXT records, backoff, and the merge order of sources."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waypost.client._core import ServerList
from waypost.peers import entry_of, gather_sources, parse_source
from waypost.peers.api import ApiSource
from waypost.peers.dns import SrvSource, txt_entry
from waypost.peers.entry import EntryError, decode
from waypost.peers.files import FileSource
from waypost.peers.http import UrlSource
from waypost.peers.manager import backoff_s
from waypost.peers.mdns import MdnsSource
from waypost.peers.signing import keygen, load_private, sign, trusted_key, verify


def test_entries_are_read_leniently_including_blixards_shape() -> None:
    e = entry_of({"node_id": "a", "api": "http://10.0.0.1:8500/", "extra": [1, 2]})
    assert (e.node_id, e.api, e.role) == ("a", "http://10.0.0.1:8500", "server")
    old = entry_of(
        {
            "cluster_node_id": 1,
            "iroh_node_id": "x",
            "direct_addresses": ["192.168.1.10:7001"],
            "address": "192.168.1.10:7001",
        }
    )
    assert (old.node_id, old.api) == ("1", "http://192.168.1.10:7001")
    with pytest.raises(EntryError, match="node_id"):
        entry_of({"api": "http://x:1"})
    with pytest.raises(EntryError, match="no api"):
        entry_of({"node_id": "a"})
    with pytest.raises(EntryError, match="neither a URL"):
        entry_of({"node_id": "a", "api": "not an address"})
    assert decode(b'{"peers": [{"node_id": "a"}, 3]}', "f") == [{"node_id": "a"}]
    with pytest.raises(EntryError, match="not JSON"):
        decode(b"{", "f")


def test_source_names() -> None:
    assert isinstance(parse_source("mdns"), MdnsSource)
    assert isinstance(parse_source("srv:_waypost._tcp.example.com"), SrvSource)
    assert isinstance(parse_source("https://cfg.example.com/peers.json"), UrlSource)
    assert isinstance(parse_source("10.0.0.5:8500"), ApiSource)
    assert isinstance(parse_source("[::1]:8500"), ApiSource)
    assert isinstance(parse_source("/etc/waypost/peers.json"), FileSource)
    assert isinstance(parse_source("peers.json"), FileSource)
    with pytest.raises(ValueError, match="empty"):
        parse_source(" ")
    with pytest.raises(ValueError, match="SRV name"):
        parse_source("srv:")


def test_txt_records() -> None:
    assert txt_entry(["node_id=a", "api=http://10.0.0.1:8500", "junk"]) == {
        "node_id": "a",
        "api": "http://10.0.0.1:8500",
    }
    assert txt_entry(["api=http://10.0.0.1:8500"]) == {
        "api": "http://10.0.0.1:8500",
        "node_id": "10.0.0.1:8500",
    }
    assert txt_entry(["v=spf1 -all"]) is None


@given(st.text(max_size=40))
def test_txt_parsing_never_fails(text: str) -> None:
    got = txt_entry(text.split(" "))
    assert got is None or "api" in got


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, str]:
    d = tmp_path_factory.mktemp("keys")
    key_path, pub_path = keygen(d)
    assert key_path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(EntryError, match="not overwriting"):
        keygen(d)
    return load_private(key_path), trusted_key(str(pub_path))


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.text(min_size=1, max_size=8), JSONISH, max_size=5),
    st.data(),
)
def test_any_change_after_signing_is_caught(
    key: tuple[object, str], extra: dict[str, object], data: st.DataObject
) -> None:
    private, public = key
    raw = {"node_id": "a", "api": "http://10.0.0.1:8500", **extra}
    signed = sign(raw, private)  # type: ignore[arg-type]
    verify(signed, [public])
    verify(signed)
    field = data.draw(st.sampled_from(sorted(k for k in signed if k != "signature")))
    changed = dict(signed)
    changed[field] = data.draw(JSONISH.filter(lambda v: v != signed[field]))
    with pytest.raises(EntryError):
        verify(changed, [public])


def test_unsigned_untrusted_and_malformed(key: tuple[object, str]) -> None:
    private, public = key
    raw = {"node_id": "a", "api": "http://x:1"}
    verify(raw)  # unsigned, no trust keys: fine
    with pytest.raises(EntryError, match="unsigned"):
        verify(raw, [public])
    signed = sign(raw, private)  # type: ignore[arg-type]
    other = "A" * 43 + "="
    with pytest.raises(EntryError, match="not trusted"):
        verify(signed, [other])
    with pytest.raises(EntryError, match="malformed"):
        verify({**signed, "public_key": "nope"})
    with pytest.raises(EntryError, match="not an Ed25519 public key"):
        trusted_key("nope")


@given(st.integers(1, 40), st.integers(0, 2**32))
def test_backoff_grows_is_capped_and_jittered(failures: int, seed: int) -> None:
    rng = random.Random(seed)
    wait = backoff_s(failures, rng, 1.0, 60.0)
    full = min(60.0, 2.0 ** (failures - 1))
    assert full / 2 <= wait <= full


def test_sources_merge_in_order_join_env_then_data_dir(tmp_path: Path) -> None:
    (tmp_path / "discovery-peers.json").write_text("[]")
    got = gather_sources(
        ["a.json", "10.0.0.1:8500"], env="b.json, mdns,a.json", data_dir=str(tmp_path)
    )
    assert got == [
        "a.json",
        "10.0.0.1:8500",
        "b.json",
        "mdns",
        str(tmp_path / "discovery-peers.json"),
    ]
    assert gather_sources([], env=None, data_dir=str(tmp_path / "none")) == []


def test_a_discovered_server_list_starts_empty_and_is_replaced() -> None:
    servers = ServerList([], discovered=True)
    assert servers.order() == []
    servers.replace(["http://b:1", "http://a:1"])
    servers.worked("http://a:1")
    assert servers.order()[0] == "http://a:1"
    servers.replace(["http://a:1", "http://b:1"])  # discovery's new best first
    assert servers.order() == ["http://a:1", "http://b:1"]
    servers.worked("http://gone:1")  # replaced meanwhile: ignored
    with pytest.raises(Exception, match="at least one"):
        ServerList([])
