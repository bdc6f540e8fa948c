"""Consul's own Python client (py-consul, unchanged) against a real ``waypost server``:
register with a TTL check, pass it, find the instance with ``passing``, list the catalog,
watch with a blocking query, deregister; and the native API and DNS see the same."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import consul
import dns.message
import dns.query
import dns.rcode
import httpx
import pytest

from tests.conftest import ServerProcess, instance, wait_until
from waypost.testing import EtcdCluster

TOKEN = "consul-compat-token"


def client(server: ServerProcess, token: str | None = None) -> consul.Consul:
    host, _, port = server.url.removeprefix("http://").rpartition(":")
    return consul.Consul(host=host, port=int(port), token=token)


def ids(entries: list[dict[str, object]]) -> list[object]:
    return [e["Service"]["ID"] for e in entries]  # type: ignore[index]


def test_py_consul_registers_passes_finds_watches_and_deregisters(server: ServerProcess) -> None:
    c = client(server)
    node = c.agent.self()["Config"]["NodeName"]
    assert node == "test-node"
    assert c.health.service("foo")[1] == []

    # Service IDs that are not DNS labels, TTL checks that start critical.
    c.agent.service.register(
        "foo", service_id="foo:1", address="10.0.0.1", port=8080, tags=["Prod"],
        check=consul.Check.ttl("10s"),
    )  # fmt: skip
    c.agent.service.register("foo", service_id="foo:2", check=consul.Check.ttl("1s"))
    index, entries = c.health.service("foo")
    assert ids(entries) == ["foo:1", "foo:2"]
    assert int(index) > 0
    assert c.health.service("foo", passing=True)[1] == []
    checks = entries[0]["Checks"]
    assert [ch["CheckID"] for ch in checks] == ["serfHealth", "service:foo:1"]
    assert checks[0]["Status"] == "passing"
    assert checks[1]["Status"] == "critical"

    c.agent.check.ttl_pass("service:foo:1", notes="all good")
    c.agent.check.ttl_pass("service:foo:2")
    index, entries = c.health.service("foo", passing=True)
    assert ids(entries) == ["foo:1", "foo:2"]
    svc = entries[0]["Service"]
    assert svc["Address"] == "10.0.0.1"
    assert svc["Port"] == 8080
    assert svc["Weights"] == {"Passing": 1, "Warning": 1}
    assert svc["TaggedAddresses"]["lan_ipv4"] == {"Address": "10.0.0.1", "Port": 8080}
    assert entries[0]["Checks"][1]["Output"] == "all good"
    assert entries[0]["Node"]["Node"] == node
    # foo:2's 1 s TTL lapses: it drops out of passing; tags match in any case.
    wait_until(lambda: ids(c.health.service("foo", passing=True)[1]) == ["foo:1"], 5, "expiry")
    assert ids(c.health.service("foo", tag="prod")[1]) == ["foo:1"]

    # The catalog.
    index, services = c.catalog.services()
    assert services == {"foo": ["Prod"]}
    _, rows = c.catalog.service("foo")
    assert [r["ServiceID"] for r in rows] == ["foo:1", "foo:2"]
    assert rows[0]["ServiceAddress"] == "10.0.0.1"
    assert rows[1]["ServiceAddress"] == ""  # registered with no address, as Consul shows
    assert rows[1]["ServicePort"] == 0
    assert node in [n["Node"] for n in c.catalog.nodes()[1]]
    assert set(c.agent.services()) == {"foo:1", "foo:2"}
    assert c.agent.checks()["service:foo:2"]["Status"] == "critical"

    # A blocking query returns within a second of a change (here after 0.3 s).
    index, _ = c.health.service("foo")
    timer = threading.Timer(0.3, lambda: c.agent.check.ttl_fail("service:foo:1", notes="down"))
    timer.start()
    try:
        start = time.monotonic()
        new_index, entries = c.health.service("foo", index=index, wait="10s")
        took = time.monotonic() - start
    finally:
        timer.join()
    assert 0.25 <= took < 1.3
    assert int(new_index) > int(index)
    assert entries[0]["Checks"][1]["Status"] == "critical"
    assert entries[0]["Checks"][1]["Output"] == "down"
    # Nothing changes: the query waits its whole wait and answers the same index.
    start = time.monotonic()
    same, _ = c.health.service("foo", index=new_index, wait="300ms")
    assert time.monotonic() - start >= 0.3
    assert same == new_index

    assert c.agent.service.deregister("foo:1") is True
    assert c.agent.service.deregister("foo:2") is True
    index, entries = c.health.service("foo")
    assert entries == []
    assert c.health.checks("foo")[1] == []


def test_the_native_api_consul_api_and_dns_see_the_same(server: ServerProcess) -> None:
    c = client(server)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        # Through Consul: seen natively and in DNS.
        c.agent.service.register("api", service_id="api-1", address="10.1.0.1", port=9000)
        native = http.get("/api/v1/services/api").json()
        assert [(i["id"], i["address"], i["port"]) for i in native] == [("api-1", "10.1.0.1", 9000)]
        assert server.dns is not None
        q = dns.message.make_query("api.service.waypost.", "A")
        answer = dns.query.udp(q, server.dns[0], port=server.dns[1], timeout=5)
        assert answer.rcode() == dns.rcode.NOERROR
        assert [r.address for rr in answer.answer for r in rr] == ["10.1.0.1"]
        # Natively: seen through Consul, critical ones left out of passing.
        web = instance("web-1", version="1.2.0", tags=["prod"], meta={"zone": "eu"})
        assert http.put("/api/v1/instances/web-1", json=web).status_code == 200
        _, entries = c.health.service("web", passing=True)
        assert ids(entries) == ["web-1"]
        assert entries[0]["Service"]["Meta"] == {"zone": "eu"}
        down = {"status": "critical", "output": "disk"}
        assert http.put("/api/v1/instances/web-1/status", json=down).status_code == 200
        assert c.health.service("web", passing=True)[1] == []
        assert c.health.service("web")[1][0]["Checks"][1]["Output"] == "disk"
        # Maintenance through Consul shows as Consul's maintenance check, and natively.
        assert c.agent.service.maintenance("api-1", "true", reason="upgrade") is True
        assert http.get("/api/v1/instances/api-1").json()["maintenance"] is True
        checks = c.health.service("api")[1][0]["Checks"]
        assert ("_service_maintenance:api-1", "critical", "upgrade") in [
            (ch["CheckID"], ch["Status"], ch["Notes"]) for ch in checks
        ]


def test_bad_requests_get_consuls_plain_text_errors(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        got = http.put("/v1/agent/service/register", json={"Port": 80})
        assert got.status_code == 400
        assert got.text == "Missing service name"
        assert got.headers["content-type"].startswith("text/plain")
        got = http.put("/v1/agent/service/register", json={"Name": "x", "Check": {"HTTP": "x"}})
        assert got.status_code == 400
        assert "Interval" in got.text
        got = http.put("/v1/agent/check/pass/service:nope")
        assert got.status_code == 404
        assert "nope" in got.text
        got = http.get("/v1/health/service/web", params={"dc": "elsewhere"})
        assert got.status_code == 500
        assert "No path to datacenter" in got.text
        got = http.get("/v1/health/service/web", params={"wait": "soon", "index": "1"})
        assert got.status_code == 400
        got = http.get("/v1/catalog/service/none")
        assert got.status_code == 200
        assert got.json() == []
        assert int(got.headers["X-Consul-Index"]) >= 1
        assert http.put("/v1/session/create").status_code == 501
        # Nothing was stored by any of these.
        assert http.get("/api/v1/instances").json() == []


@pytest.mark.parametrize("how", ["header", "query"])
def test_writes_need_the_token_as_consul_clients_send_it(
    start_server: Callable[..., ServerProcess], how: str
) -> None:
    server = start_server("--token", TOKEN)
    c = client(server)
    with pytest.raises(consul.ACLPermissionDenied):
        c.agent.service.register("api", service_id="api-1", port=9000)
    if how == "header":
        assert client(server, TOKEN).agent.service.register("api", service_id="api-1", port=9000)
    else:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            got = http.put(
                "/v1/agent/service/register", params={"token": TOKEN}, json={"Name": "api"}
            )
            assert got.status_code == 200, got.text
    assert c.catalog.services()[1] == {"api": []}  # reads need no token


def test_checks_registered_apart_filters_and_node_meta(server: ServerProcess) -> None:
    c = client(server)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        c.agent.service.register("db", service_id="db-1", port=5432, tags=["primary"],
                                 meta={"zone": "eu"})  # fmt: skip
        c.agent.service.register("db", service_id="db-2", port=5433, tags=["replica"])
        # A check added to a service on its own, its id defaulting to its name.
        assert c.agent.check.register(
            "db-1 ttl", check=consul.Check.ttl("30s"), service_id="db-1", notes="from cron"
        )
        checks = c.agent.checks()
        assert checks["db-1 ttl"]["ServiceID"] == "db-1"
        assert checks["db-1 ttl"]["Status"] == "critical"
        assert checks["db-1 ttl"]["Notes"] == "from cron"
        assert ids(c.health.service("db", passing=True)[1]) == ["db-2"]
        c.agent.check.ttl_pass("db-1 ttl")
        assert ids(c.health.service("db", passing=True)[1]) == ["db-1", "db-2"]
        # Registering the service again keeps that check, unless told to replace them.
        c.agent.service.register("db", service_id="db-1", port=5432, tags=["primary"])
        assert "db-1 ttl" in c.agent.checks()
        c.agent.service.register(
            "db", service_id="db-1", port=5432, tags=["primary"], replace_existing_checks=True
        )
        assert "db-1 ttl" not in c.agent.checks()
        assert c.agent.check.register("gone", check=consul.Check.ttl("30s"), service_id="db-1")
        assert c.agent.check.deregister("gone")
        assert "gone" not in c.agent.checks()
        missing = http.put("/v1/agent/check/deregister/nope")
        assert missing.status_code == 404

        # filter expressions over the answer, as Consul's (py-consul 1.8 has no filter
        # argument on these: its users pass it as a query parameter).
        def ask(path: str, expr: str) -> Any:
            got = http.get(path, params={"filter": expr})
            assert got.status_code == 200, got.text
            return got.json()

        entries = ask("/v1/health/service/db", 'Service.Tags contains "replica"')
        assert ids(entries) == ["db-2"]
        rows = ask("/v1/catalog/service/db", "ServicePort == 5432 and ServiceMeta is empty")
        assert [r["ServiceID"] for r in rows] == ["db-1"]
        assert set(ask("/v1/agent/services", '"primary" in Tags')) == {"db-1"}
        bad = http.get("/v1/health/service/db", params={"filter": "Service.Tags contains"})
        assert bad.status_code == 400
        assert bad.text.startswith("Failed to create boolean expression evaluator")

        # node-meta selects by the node's meta.
        node = {"address": "10.5.0.1", "meta": {"rack": "r1"}}
        assert http.put("/api/v1/nodes/n-r1", json=node).status_code == 200
        body = instance("db-3", "db", node="n-r1")
        assert http.put("/api/v1/instances/db-3", json=body).status_code == 200
        _, rows = c.catalog.service("db", node_meta={"rack": "r1"})
        assert [(r["ServiceID"], r["Address"]) for r in rows] == [("db-3", "10.5.0.1")]
        _, nodes = c.catalog.nodes(node_meta={"rack": "r1"})
        assert [n["Node"] for n in nodes] == ["n-r1"]


def test_py_consul_kv(server: ServerProcess) -> None:
    c = client(server)
    index, missing = c.kv.get("app/config")
    assert missing is None
    assert int(index) >= 1
    assert c.kv.put("app/config", "v1", flags=7) is True
    assert c.kv.put("app/db/url", b"postgres://x") is True
    assert c.kv.put("app/db/pool", "10") is True
    assert c.kv.put("other", "x") is True
    index, got = c.kv.get("app/config")
    assert (got["Key"], got["Value"], got["Flags"]) == ("app/config", b"v1", 7)
    assert got["CreateIndex"] == got["ModifyIndex"]
    # cas: 0 creates only; N updates only at ModifyIndex N.
    assert c.kv.put("app/config", "v2", cas=0) is False
    assert c.kv.put("app/config", "v2", cas=got["ModifyIndex"] + 1000) is False
    assert c.kv.put("app/config", "v2", cas=got["ModifyIndex"]) is True
    _, again = c.kv.get("app/config")
    assert again["Value"] == b"v2"
    assert again["CreateIndex"] == got["CreateIndex"] < again["ModifyIndex"]
    _, all_app = c.kv.get("app/", recurse=True)
    assert [p["Key"] for p in all_app] == ["app/config", "app/db/pool", "app/db/url"]
    _, keys = c.kv.get("app/", keys=True, separator="/")
    assert keys == ["app/config", "app/db/"]
    # An empty value is null, as Consul answers.
    assert c.kv.put("app/empty", "") is True
    assert c.kv.get("app/empty")[1]["Value"] is None

    # A blocking read returns once a key changes.
    index, _ = c.kv.get("app/config")
    timer = threading.Timer(0.3, lambda: c.kv.put("app/config", "v3"))
    timer.start()
    try:
        start = time.monotonic()
        new_index, got = c.kv.get("app/config", index=index, wait="10s")
    finally:
        timer.join()
    assert time.monotonic() - start < 1.3
    assert int(new_index) > int(index)
    assert got["Value"] == b"v3"

    assert c.kv.delete("app/db", recurse=True) is True
    assert c.kv.get("app/", keys=True)[1] == ["app/config", "app/empty"]
    assert c.kv.delete("app/config", cas=1) is False
    assert c.kv.delete("app/config") is True
    assert c.kv.get("app/config")[1] is None
    assert c.kv.get("other")[1]["Value"] == b"x"
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/v1/kv/other", params={"raw": ""}).content == b"x"
        too_big = http.put("/v1/kv/big", content=b"x" * (512 * 1024 + 1))
        assert too_big.status_code == 413
        # Over the server's 1 MiB body limit: still Consul's plain text, not native JSON.
        huge = http.put("/v1/kv/big", content=b"x" * (2 * 1024 * 1024))
        assert huge.status_code == 413
        assert huge.headers["Content-Type"].startswith("text/plain")
        huge_register = http.put("/v1/agent/service/register", content=b" " * (2 << 20))
        assert huge_register.status_code == 413
        assert huge_register.headers["Content-Type"].startswith("text/plain")
        assert huge_register.text.startswith("Request body too large")
        assert http.put("/v1/kv/a%01b", content=b"x").status_code == 400
        assert http.put("/v1/kv/lock", params={"acquire": "s1"}).status_code == 501
        # KV changes are registry changes: on the native event stream too.
        params = {"kind": "kv", "index": "0"}
        with http.stream("GET", "/api/v1/events", params=params) as stream:
            assert stream.status_code == 200
            for line in stream.iter_lines():
                if line == "event: kv.put":
                    break


def test_node_maintenance_takes_the_nodes_services_out_everywhere(server: ServerProcess) -> None:
    c = client(server)
    c.agent.service.register("api", service_id="api-1", port=9000)
    c.agent.service.register("api", service_id="api-2", port=9001)
    assert c.agent.service.maintenance("api-2", "true", reason="own reason") is True
    assert c.agent.maintenance("true", "rack move") is True
    assert c.agent.checks()["_node_maintenance"]["Notes"] == "rack move"
    assert c.health.service("api", passing=True)[1] == []
    with httpx.Client(base_url=server.url, timeout=10) as http:
        native = http.get("/api/v1/services/api", params={"status": "passing"}).json()
        assert native == []  # the native API leaves them out too
        assert c.agent.maintenance("false") is True
        assert "_node_maintenance" not in c.agent.checks()
        # Only what node maintenance put in comes out: api-2 keeps its own.
        got = {i["id"]: i["maintenance"] for i in http.get("/api/v1/services/api").json()}
        assert got == {"api-1": False, "api-2": True}
    # Tagged addresses and tag override are answered as registered.
    c.agent.service.register(
        "tagged", service_id="t-1", enable_tag_override=True,
        tagged_addresses={"lan": {"address": "10.9.0.1", "port": 80}},
    )  # fmt: skip
    svc = c.agent.services()["t-1"]
    assert svc["EnableTagOverride"] is True
    assert svc["TaggedAddresses"] == {"lan": {"Address": "10.9.0.1", "Port": 80}}


def test_on_etcd_two_servers_answer_alike_and_the_index_never_goes_back(
    start_server: Callable[..., ServerProcess], etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    """Two servers on one etcd cluster: a Consul registration and a key written through one
    are answered by the other; a blocking query on the other wakes; after a restart the
    index is where it was, not lower."""
    store = etcd_cluster.url(f"/consul/{tmp_path.name}/")
    a = start_server("--store", store, name="a", node="node-a")
    b = start_server("--store", store, name="b", node="node-b")
    ca, cb = client(a), client(b)
    ca.agent.service.register("api", service_id="api-1", port=9000, check=consul.Check.ttl("30s"))
    ca.agent.check.ttl_pass("service:api-1")
    assert ca.kv.put("cfg/x", "1") is True
    wait_until(lambda: ids(cb.health.service("api", passing=True)[1]) == ["api-1"], 5, "on b")
    entry = cb.health.service("api")[1][0]
    assert entry["Node"]["Node"] == "node-a"  # registered through a's agent
    # b follows the store: the key (written after the registration) arrives in its turn.
    wait_until(lambda: (cb.kv.get("cfg/x")[1] or {}).get("Value") == b"1", 5, "the key on b")
    index, _ = cb.health.service("api")
    timer = threading.Timer(0.3, lambda: ca.agent.check.ttl_warn("service:api-1", notes="x"))
    timer.start()
    try:
        start = time.monotonic()
        new_index, entries = cb.health.service("api", index=index, wait="10s")
    finally:
        timer.join()
    # Woken by the change, not by the 10 s wait running out.
    assert time.monotonic() - start < 8
    assert entries[0]["Checks"][1]["Status"] == "warning"
    b.restart()
    again, _ = client(b).health.service("api")
    assert int(again) >= int(new_index)
    kv_index, _ = client(b).kv.get("cfg/x")
    assert int(kv_index) >= 1


def test_kept_service_answers_follow_every_change_they_read(server: ServerProcess) -> None:
    """Consul's service answers are encoded once and shared until what they read
    changes (issue 29: they were rebuilt per request, 40x the native cost). Each change
    they read shows at once: an instance's health, another instance, the node's
    maintenance; and each parameter set has its own answer."""
    c = client(server)
    c.agent.service.register("api", service_id="api-1", port=9000, check=consul.Check.ttl("30s"))
    c.agent.check.ttl_pass("service:api-1")
    assert ids(c.health.service("api", passing=True)[1]) == ["api-1"]
    assert ids(c.health.service("api", passing=True)[1]) == ["api-1"]  # the kept answer
    c.agent.check.ttl_fail("service:api-1")
    assert ids(c.health.service("api", passing=True)[1]) == []
    assert ids(c.health.service("api")[1]) == ["api-1"]
    c.agent.service.register("api", service_id="api-2", port=9001)
    assert [r["ServiceID"] for r in c.catalog.service("api")[1]] == ["api-1", "api-2"]
    assert c.catalog.service("api", tag="nope")[1] == []
    c.agent.maintenance(True, "patching")
    checks = [ch["CheckID"] for ch in c.health.service("api")[1][0]["Checks"]]
    assert "_node_maintenance" in checks
    c.agent.maintenance(False)
    checks = [ch["CheckID"] for ch in c.health.service("api")[1][0]["Checks"]]
    assert "_node_maintenance" not in checks
