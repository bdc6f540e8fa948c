"""ACLs against real ``waypost server`` processes started with ``--acl-default-policy
deny``: tokens scoped by policies write and read only what their rules allow, through the
native API, the event stream, the Consul API (with Consul's own clients) and DNS; a
revoked token is refused at once and its open event stream ends; 1,000 random tokens and
malformed headers get nowhere; an agent's client certificate stands for a token."""

from __future__ import annotations

import json
import random
import re
import shutil
import statistics
import string
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import consul
import dns.message
import dns.query
import dns.rcode
import httpx
import pytest

from tests.conftest import ServerProcess, instance, make_pki, wait_until
from tests.conftest import waypost_cli as waypost
from waypost import Client
from waypost.testing import EtcdCluster, ProxyProcess

HERE = Path(__file__).resolve().parents[1] / "consul_clients"


def bootstrap(server: ServerProcess) -> str:
    """The management secret, from ``waypost acl bootstrap --json``."""
    done = waypost("acl", "bootstrap", "--server", server.url, "--json")
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    assert view["policies"] == ["global-management"]
    secret: str = view["secret"]
    return secret


def token_with(admin: Client, name: str, rules: list[dict[str, str]]) -> str:
    admin.acl_create_policy(name, rules)
    secret = admin.acl_create_token([name], description=name).secret
    assert secret
    return secret


def as_token(server: ServerProcess, secret: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=10)


def dns_rcode_and_ips(server: ServerProcess, name: str) -> tuple[int, list[str]]:
    assert server.dns is not None
    host, port = server.dns
    reply = dns.query.udp(dns.message.make_query(name, "A"), host, port=port, timeout=5)
    ips = [rr.address for rrset in reply.answer for rr in rrset]
    return reply.rcode(), ips


@pytest.fixture
def deny_server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server("--acl-default-policy", "deny")


def test_default_deny_scopes_writes_and_reads_to_the_tokens_rules(
    deny_server: ServerProcess,
) -> None:
    server = deny_server
    admin_secret = bootstrap(server)
    with Client(server.url, token=admin_secret) as admin:
        writer = token_with(
            admin, "web-writer", [{"resource": "service_prefix", "name": "web-", "access": "write"}]
        )
        reader = token_with(admin, "web-reader", [
            {"resource": "service_prefix", "name": "web-", "access": "read"},
            {"resource": "node_prefix", "name": "", "access": "read"}])  # fmt: skip
        admin.register(instance("db-1", "db", address="10.0.0.9"))
        admin.register(instance("web-x-1", "web-x", address="10.0.0.8"))

    with as_token(server, writer) as w:
        ok = w.put("/api/v1/instances/web-api-1", json=instance("web-api-1", "web-api"))
        assert ok.status_code == 200, ok.text
        refused = w.put("/api/v1/instances/db-2", json=instance("db-2", "db"))
        assert refused.status_code == 403
        message = refused.json()["message"]
        assert 'write service "db"' in message
        assert "default policy deny" in message
        # Its own prefix rule is named when that is what refuses (a read-only one here).
    with as_token(server, reader) as r:
        refused = r.put("/api/v1/instances/web-api-2", json=instance("web-api-2", "web-api"))
        assert refused.status_code == 403
        assert 'service_prefix "web-" read in policy "web-reader"' in refused.json()["message"]

        # Queries: only web-*, and a hidden service looks exactly like a missing one.
        ids = sorted(i["id"] for i in r.get("/api/v1/instances").json())
        assert ids == ["web-api-1", "web-x-1"]
        assert sorted(s["name"] for s in r.get("/api/v1/services").json()) == ["web-api", "web-x"]
        assert r.get("/api/v1/services/db").json() == r.get("/api/v1/services/nope").json() == []
        hidden, missing = r.get("/api/v1/instances/db-1"), r.get("/api/v1/instances/no-1")
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json()["error"] == missing.json()["error"]
        # Deleting what it cannot see: as missing, not "forbidden" (which would tell).
        assert r.delete("/api/v1/instances/db-1").status_code == 404

    # The anonymous token sees nothing.
    with as_token(server, None) as anon:
        assert anon.get("/api/v1/instances").json() == []
        assert anon.get("/api/v1/services").json() == []
        assert anon.get("/v1/catalog/services").json() == {}
        assert anon.put("/api/v1/instances/x-1", json=instance("x-1", "x")).status_code == 403

    # The Consul API, with the token as Consul clients send it.
    host, _, port = server.url.removeprefix("http://").rpartition(":")
    c = consul.Consul(host=host, port=int(port), token=reader)
    assert sorted(c.catalog.services()[1]) == ["web-api", "web-x"]
    assert c.health.service("db")[1] == []
    assert [e["Service"]["ID"] for e in c.health.service("web-api")[1]] == ["web-api-1"]
    with pytest.raises(consul.ACLPermissionDenied):
        c.agent.service.register("db", service_id="db-9", port=1)

    # DNS answers what the anonymous token may read: nothing, then what it is given.
    assert dns_rcode_and_ips(server, "web-api.service.waypost.")[0] == dns.rcode.NXDOMAIN
    with Client(server.url, token=admin_secret) as admin:
        admin.acl_create_policy("dns", [{"resource": "service", "name": "web-api",
                                         "access": "read"}])  # fmt: skip
        admin.acl_update_token("anonymous", ["dns"])
    rcode, ips = dns_rcode_and_ips(server, "web-api.service.waypost.")
    assert (rcode, ips) == (dns.rcode.NOERROR, ["10.0.0.1"])
    # The anonymous token's reads follow its new policy at once (no stale filtered answer).
    with as_token(server, None) as anon:
        assert [s["name"] for s in anon.get("/api/v1/services").json()] == ["web-api"]
        assert [i["id"] for i in anon.get("/api/v1/services/web-api").json()] == ["web-api-1"]
    assert dns_rcode_and_ips(server, "db.service.waypost.")[0] == dns.rcode.NXDOMAIN


def test_a_read_only_token_gets_only_its_events_and_revoking_it_ends_its_stream(
    deny_server: ServerProcess,
) -> None:
    server = deny_server
    admin_secret = bootstrap(server)
    with Client(server.url, token=admin_secret) as admin:
        reader = token_with(admin, "web-reader", [
            {"resource": "service_prefix", "name": "web-", "access": "read"}])  # fmt: skip
        accessor = next(t.accessor for t in admin.acl_tokens() if t.description == "web-reader")
    lines: list[str] = []
    ended = threading.Event()

    def follow() -> None:
        with (
            as_token(server, reader) as r,
            r.stream("GET", "/api/v1/events", timeout=httpx.Timeout(10, read=60)) as resp,
        ):
            assert resp.status_code == 200
            for line in resp.iter_lines():
                lines.append(line)
        ended.set()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    wait_until(lambda: any(line.startswith("retry:") for line in lines), 10, "the stream")
    with Client(server.url, token=admin_secret) as admin:
        admin.register(instance("db-1", "db"))
        admin.register(instance("web-api-1", "web-api"))
        wait_until(lambda: any("web-api-1" in line for line in lines), 10, "web-api's event")
        assert not any("db-1" in line for line in lines)
        # Revoked: the open stream ends at once (a last "revoked" event), the next call 401s.
        admin.acl_delete_token(accessor)
    assert ended.wait(10), "the revoked token's stream stayed open"
    assert "event: revoked" in lines
    with as_token(server, reader) as r:
        assert r.get("/api/v1/instances").status_code == 401


def _random_token(rng: random.Random, accessors: list[str]) -> dict[str, str | bytes]:
    """One of many wrong ways to present a token."""
    pick = rng.randrange(9)
    if pick == 0:
        return {"Authorization": f"Bearer {uuid.uuid4()}"}
    if pick == 1:
        return {"Authorization": f"Bearer {rng.choice(accessors)}"}  # an accessor, not a secret
    if pick == 2:
        text = "".join(rng.choice(string.printable.strip()) for _ in range(rng.randrange(1, 300)))
        return {"X-Waypost-Token": text}
    if pick == 3:
        return {"Authorization": rng.choice(["Bearer", "Basic abc", "bearer", "Token x", "BEARER"])}
    if pick == 4:
        return {"X-Consul-Token": "x" * rng.randrange(257, 5000)}
    if pick == 5:
        raw = "Bearer " + "".join(chr(rng.randrange(0xA0, 0x100)) for _ in range(20))
        return {"Authorization": raw.encode("latin-1")}  # bytes past ASCII
    if pick == 6:
        return {"Authorization": f"Bearer {uuid.uuid4()} {uuid.uuid4()}"}
    if pick == 7:
        return {"X-Waypost-Token": str(uuid.uuid4()).upper()}
    return {"Authorization": "Bearer " + "\t" + str(uuid.uuid4())}


def test_a_thousand_random_tokens_get_no_access_and_no_server_error(
    deny_server: ServerProcess,
) -> None:
    server = deny_server
    admin_secret = bootstrap(server)
    with Client(server.url, token=admin_secret) as admin:
        for n in range(3):
            token_with(
                admin, f"p{n}", [{"resource": "service_prefix", "name": "", "access": "write"}]
            )
        admin.register(instance("web-1", "web"))
        accessors = [t.accessor for t in admin.acl_tokens()]
    rng = random.Random(1234)
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for n in range(1000):
            headers = _random_token(rng, accessors)
            if n % 3 == 0:
                resp = http.put(f"/api/v1/instances/evil-{n}", json=instance(f"evil-{n}"),
                                headers=headers)  # fmt: skip
            elif n % 3 == 1:
                resp = http.get("/api/v1/acl/tokens", headers=headers)
            else:
                resp = http.get("/api/v1/instances", headers=headers)
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
            assert resp.status_code in (401, 403), (headers, resp.status_code, resp.text)
        # Wrong accessor or wrong secret: the same work, the same time (medians).
        secret_like = [uuid.uuid4() for _ in range(300)]
        wrong_accessor, wrong_secret = [], []
        for n in range(300):
            for kind in (0, 1) if n % 2 else (1, 0):
                value = rng.choice(accessors) if kind == 0 else str(secret_like[n])
                start = time.perf_counter()
                resp = http.get("/api/v1/acl/tokens", headers={"X-Waypost-Token": value})
                took = time.perf_counter() - start
                assert resp.status_code == 401
                (wrong_accessor if kind == 0 else wrong_secret).append(took)
    ratio = statistics.median(wrong_accessor) / statistics.median(wrong_secret)
    assert 0.67 < ratio < 1.5, ratio
    with Client(server.url, token=admin_secret) as admin:
        assert [i.id for i in admin.instances().instances] == ["web-1"]
    assert set(statuses) <= {401, 403}


def test_write_rates_and_open_watches_are_limited_per_token(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--token-write-rate", "5", "--token-max-watches", "2")
    with httpx.Client(base_url=server.url, timeout=10) as http:
        codes = [http.put(f"/api/v1/instances/w-{n}", json=instance(f"w-{n}")) for n in range(30)]
        limited = [r for r in codes if r.status_code == 429]
        assert limited, [r.status_code for r in codes]
        assert int(limited[0].headers["Retry-After"]) >= 1
        assert limited[0].json()["error"] == "too_many_requests"
        assert 5 <= sum(r.status_code == 200 for r in codes) < 30
        index = http.get("/api/v1/services/web").headers["X-Waypost-Index"]
    results: list[int] = []

    def block() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as h:
            results.append(h.get(f"/api/v1/services/web?index={index}&wait=20s").status_code)

    threads = [threading.Thread(target=block, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    wait_until(lambda: httpx.get(f"{server.url}/status").json()["blocking_waiters"] == 2, 10,
               "two parked queries")  # fmt: skip
    third = httpx.get(f"{server.url}/api/v1/services/web?index={index}&wait=20s", timeout=30)
    assert third.status_code == 429
    # Security review finding 14: requests without a token share the anonymous token,
    # but not one bucket: another client address (a colleague's dashboard) is not
    # locked out by this one's held watches, nor by its writes.
    elsewhere = httpx.Client(
        base_url=server.url, timeout=5, transport=httpx.HTTPTransport(local_address="127.0.0.2")
    )
    with elsewhere:
        got = elsewhere.get(f"/api/v1/services/web?index={index}&wait=100ms")
        assert got.status_code == 200, got.text
        assert (
            elsewhere.put("/api/v1/instances/w-other", json=instance("w-other")).status_code == 200
        )
    # The bucket refills: writes go through again.
    done = instance("w-done")
    wait_until(
        lambda: httpx.put(f"{server.url}/api/v1/instances/w-done", json=done).status_code == 200,
        10,
        "a write once the bucket refilled",
    )
    for t in threads:
        t.join(10)
    assert results == [200, 200]


def test_consul_clients_work_with_a_token_against_a_default_deny_server(
    deny_server: ServerProcess,
) -> None:
    server = deny_server
    admin_secret = bootstrap(server)
    with Client(server.url, token=admin_secret) as admin:
        app = token_with(admin, "apps", [
            {"resource": "service", "name": "old", "access": "write"},
            {"resource": "service", "name": "node-web", "access": "write"},
            {"resource": "service", "name": "py-web", "access": "write"},
            {"resource": "node_prefix", "name": "", "access": "read"},
            {"resource": "agent", "access": "read"}])  # fmt: skip
    host, _, port = server.url.removeprefix("http://").rpartition(":")

    # py-consul
    c = consul.Consul(host=host, port=int(port), token=app)
    assert c.agent.service.register("py-web", service_id="py-web-1", port=80) is True
    assert c.catalog.services()[1] == {"py-web": []}
    assert c.agent.service.deregister("py-web-1") is True
    with pytest.raises(consul.ACLPermissionDenied):
        consul.Consul(host=host, port=int(port)).agent.service.register("py-web", port=80)

    # Debian's python3-consul
    if Path("/usr/bin/python3").exists():
        done = subprocess.run(
            ["/usr/bin/python3", str(HERE / "python3_consul_flow.py"), host, port, app],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        assert seen["registered"] is True
        assert seen["passed"] is True
        assert seen["catalog"] == {"old": ["v1"]}
        assert seen["deregistered"] is True
        assert seen["after"] == []
        without = subprocess.run(
            ["/usr/bin/python3", str(HERE / "python3_consul_flow.py"), host, port],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert without.returncode != 0
        assert "ACL" in without.stderr

    # npm consul
    node = shutil.which("node")
    assert node, "node: `make test` installs it"
    done = subprocess.run([node, str(HERE / "npm" / "flow.js"), host, port, app],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["passing"] == [["node-web-1", "10.3.0.1", 3000]]
    assert seen["catalog"] == {"node-web": ["js"]}
    assert seen["statuses"] == ["passing", "critical"]


def test_an_agents_client_certificate_stands_for_its_token(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    from tests.integration.agents import AgentProcess

    pki = make_pki(tmp_path / "pki", servers=["server1"], clients=["agent1"])
    server = start_server(
        "--acl-default-policy", "deny", "--tls-cert", str(pki / "server1.pem"),
        "--tls-key", str(pki / "server1-key.pem"), "--tls-ca", str(pki / "ca.pem"),
        "--tls-verify-clients",
    )  # fmt: skip
    env = {"WAYPOST_TLS_CA": str(pki / "ca.pem"), "WAYPOST_TLS_CERT": str(pki / "agent1.pem"),
           "WAYPOST_TLS_KEY": str(pki / "agent1-key.pem")}  # fmt: skip
    done = waypost("acl", "bootstrap", "--server", server.url, "--json", env=env)
    assert done.returncode == 0, done.stderr
    admin = json.loads(done.stdout)["secret"]
    for args in (
        ["acl", "policy", "create", "--name", "agent1", "--rule", "service:db:write",
         "--rule", "node:n1:write", "--rule", "node_prefix::read"],
        ["acl", "token", "create", "--policy", "agent1", "--identity", "agent1",
         "--description", "agent on n1"],
    ):  # fmt: skip
        done = waypost(*args, "--server", server.url, "--token", admin, env=env)
        assert done.returncode == 0, done.stderr
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "db.json").write_text('[{"id": "db-a", "service": "db", "port": 5432}]')
    agent = AgentProcess(
        server.url, "n1", conf, tmp_path / "agent", "--tls-ca", str(pki / "ca.pem"),
        "--tls-cert", str(pki / "agent1.pem"), "--tls-key", str(pki / "agent1-key.pem"),
    ).start()  # fmt: skip
    try:
        with Client(server.url, token=admin, tls=_ctx(pki)) as c:
            wait_until(lambda: [i.id for i in c.instances(service="db").instances] == ["db-a"], 15,
                       "the agent's registration by certificate")  # fmt: skip
    finally:
        agent.stop()


def _ctx(pki: Path) -> Any:
    import ssl

    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(pki / "agent1.pem", pki / "agent1-key.pem")
    return ctx


def test_bootstrap_is_once_and_the_cli_manages_policies_and_tokens(
    deny_server: ServerProcess,
) -> None:
    server = deny_server
    admin = bootstrap(server)
    again = waypost("acl", "bootstrap", "--server", server.url)
    assert again.returncode != 0
    assert "no longer allowed" in again.stderr
    base = ["--server", server.url, "--token", admin]
    done = waypost("acl", "policy", "create", "--name", "ops", "--rule", "operator::write",
                   "--rule", "service_prefix:web-:read", *base)  # fmt: skip
    assert done.returncode == 0, done.stderr
    bad = waypost("acl", "policy", "create", "--name", "bad", "--rule", "service:web", *base)
    assert bad.returncode != 0
    assert "RESOURCE:NAME:ACCESS" in bad.stderr
    bad = waypost("acl", "policy", "create", "--name", "bad", "--rule", "planet:x:write", *base)
    assert bad.returncode != 0
    assert "resource" in bad.stderr
    done = waypost("acl", "token", "create", "--policy", "ops", "--expires-in", "1h",
                   "--json", *base)  # fmt: skip
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    assert made["secret"]
    assert made["expires_at"] > time.time()
    listed = json.loads(waypost("acl", "token", "list", "--json", *base).stdout)
    assert made["accessor"] in [t["accessor"] for t in listed]
    assert all("secret" not in t and "secret_hash" not in t for t in listed)
    read = waypost("acl", "policy", "read", "ops", *base)
    assert "operator" in read.stdout
    assert "web-" in read.stdout
    # Without a token, ACLs cannot be read or changed.
    refused = waypost("acl", "token", "list", "--server", server.url)
    assert refused.returncode != 0
    assert "Permission denied" in refused.stderr
    assert waypost("acl", "token", "delete", made["accessor"], *base).returncode == 0
    with as_token(server, made["secret"]) as h:
        assert h.get("/api/v1/leases").status_code == 401
    assert waypost("acl", "policy", "delete", "global-management", *base).returncode != 0


def test_nothing_changes_for_servers_that_set_nothing(server: ServerProcess) -> None:
    """Default allow, no bootstrap: tokens are not looked at, every call works."""
    with httpx.Client(base_url=server.url, timeout=10,
                      headers={"Authorization": "Bearer whatever"}) as h:  # fmt: skip
        assert h.put("/api/v1/instances/web-1", json=instance("web-1")).status_code == 200
        assert [i["id"] for i in h.get("/api/v1/instances").json()] == ["web-1"]


def test_acls_are_store_entries_shared_by_servers_on_one_etcd(
    start_server: Callable[..., ServerProcess], etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    """Bootstrapped on one server, a token works on the other; revoked on the other, the
    first refuses it: policies and tokens replicate as every entry does."""
    store = etcd_cluster.url(f"/acl/{tmp_path.name}/")
    a = start_server("--store", store, "--no-dns", "--acl-default-policy", "deny", name="a")
    b = start_server("--store", store, "--no-dns", "--acl-default-policy", "deny", name="b")
    admin = bootstrap(a)
    with Client(a.url, token=admin) as ca:
        web = token_with(ca, "web", [{"resource": "service", "name": "web", "access": "write"}])
        accessor = next(t.accessor for t in ca.acl_tokens() if t.description == "web")
    with as_token(b, web) as hb:
        got = wait_until(
            lambda: (
                (r := hb.put("/api/v1/instances/web-1", json=instance("web-1"))).status_code == 200
                and r
            ),
            10,
            "the token to reach server b",
        )
        assert got.json()["id"] == "web-1"
    assert waypost("acl", "bootstrap", "--server", b.url).returncode != 0  # done, on a
    with Client(b.url, token=admin) as cb:
        cb.acl_delete_token(accessor)
    with as_token(a, web) as ha:
        wait_until(lambda: ha.get("/api/v1/instances").status_code == 401, 10, "revoked on a")


def test_a_lease_is_kept_alive_only_by_a_token_that_writes_what_it_holds(
    deny_server: ServerProcess,
) -> None:
    """Security review finding 7: a keep-alive checked only "may write something", and
    lease ids are no secret (a TTL instance's is derived from its id): a token that may
    write only ``web`` kept a ``db`` instance alive past its TTL."""
    from waypost.model import convert_instance
    from waypost.registry import ttl_lease_id

    admin_secret = bootstrap(deny_server)
    with Client(deny_server.url, token=admin_secret) as admin:
        web_writer = token_with(
            admin, "web-writer", [{"resource": "service", "name": "web", "access": "write"}]
        )
    db = instance("db-1", service="db", ttl="2s", deregister_after="1m")
    with as_token(deny_server, admin_secret) as h:
        assert h.put("/api/v1/instances/db-1", json=db).status_code == 200
        assert h.put("/api/v1/instances/db-1/heartbeat").status_code == 200
    lease = ttl_lease_id(convert_instance(db))
    with as_token(deny_server, web_writer) as attacker:
        got = attacker.put(f"/api/v1/leases/{lease}/keepalive")
        assert got.status_code == 403, got.text
        assert 'service "db"' in got.json()["message"]
        # Its own: a lease holding a web instance it writes is kept alive.
        own = attacker.post("/api/v1/leases", json={"ttl": "30s"}).json()["id"]
        body = instance("web-1", lease=own)
        assert attacker.put("/api/v1/instances/web-1", json=body).status_code == 200
        assert attacker.put(f"/api/v1/leases/{own}/keepalive").status_code == 200
    with as_token(deny_server, admin_secret) as h:
        wait_until(
            lambda: h.get("/api/v1/instances/db-1").json()["status"] == "critical",
            10,
            "db-1 to go critical at its TTL, the refused keep-alives notwithstanding",
        )
        assert h.put(f"/api/v1/leases/{lease}/keepalive").status_code == 200  # an operator may


def test_a_recursive_kv_delete_keeps_a_more_specific_deny(deny_server: ServerProcess) -> None:
    """Security review finding 8: with ``key_prefix "" write`` and ``key_prefix
    "secret/" deny``, ``DELETE /v1/kv/secret/dbpass`` was refused but ``DELETE
    /v1/kv/?recurse`` deleted it."""
    admin_secret = bootstrap(deny_server)
    with Client(deny_server.url, token=admin_secret) as admin:
        broad = token_with(
            admin,
            "all-but-secrets",
            [
                {"resource": "key_prefix", "name": "", "access": "write"},
                {"resource": "key_prefix", "name": "secret/", "access": "deny"},
            ],
        )
    with as_token(deny_server, admin_secret) as h:
        for key in ("secret/dbpass", "app/x", "app/y"):
            assert h.put(f"/v1/kv/{key}", content=b"v").json() is True
    with as_token(deny_server, broad) as h:
        assert h.delete("/v1/kv/secret/dbpass").status_code == 403
        for path in ("/v1/kv/?recurse", "/v1/kv/secret?recurse", "/v1/kv/s?recurse"):
            got = h.delete(path)
            assert got.status_code == 403, (path, got.text)
            assert "dbpass" not in got.text  # a key it may not read is not named
        assert h.delete("/v1/kv/app/?recurse").json() is True  # what it may write, it may
    with as_token(deny_server, admin_secret) as h:
        assert h.get("/v1/kv/secret/dbpass").status_code == 200
        assert h.get("/v1/kv/app/x").status_code == 404


def test_an_actor_entry_needs_write_on_the_service_name_it_is_served_under(
    deny_server: ServerProcess,
) -> None:
    """Security review finding 6: a token allowed ``network_prefix webnet write``
    registered ``{"service": "db", "kind": "actor", ...}`` and was served as a member of
    ``db`` (API, SDK cache, proxy, DNS). Every kind is now authorized by its service name
    too; the network's own actors still register with a grant for their names."""
    admin_secret = bootstrap(deny_server)
    with Client(deny_server.url, token=admin_secret) as admin:
        net = token_with(
            admin,
            "webnet",
            [
                {"resource": "network_prefix", "name": "webnet", "access": "write"},
                {"resource": "service", "name": "webnet", "access": "write"},
                {"resource": "service", "name": "render", "access": "write"},
            ],
        )
        admin.register(instance("db-1", service="db", address="127.0.0.1"))
        before = admin.instances(service="db").instances
    meta = {"network": "webnet"}
    sneak = instance("db-sneak", service="db", kind="actor", meta=meta, address="127.0.0.9")
    with as_token(deny_server, net) as h:
        got = h.put("/api/v1/instances/db-sneak", json=sneak)
        assert got.status_code == 403, got.text
        assert 'service "db"' in got.json()["message"]
        batch = h.post("/api/v1/batch", json={"atomic": True, "register": [sneak]})
        assert batch.status_code == 403, batch.text
        # A network entry named after another service is refused the same way.
        net_entry = instance("db-net", service="db", kind="network", address="127.0.0.9")
        assert h.put("/api/v1/instances/db-net", json=net_entry).status_code == 403
        # Its own network and actor register.
        own = instance("render-1", service="render", kind="actor", meta=meta)
        assert h.put("/api/v1/instances/render-1", json=own).status_code == 200
        entry = instance("webnet-1", service="webnet", kind="network")
        assert h.put("/api/v1/instances/webnet-1", json=entry).status_code == 200
    with Client(deny_server.url, token=admin_secret) as admin:
        assert admin.instances(service="db").instances == before
        assert sorted(admin.cache.get("db").instances) == ["db-1"]
    rcode, ips = dns_rcode_and_ips(deny_server, "db.service.waypost.")
    assert "127.0.0.9" not in ips, (rcode, ips)
    # The proxy (reading with the admin's token) knows db-1 alone as db's endpoint.
    proxy = ProxyProcess(deny_server.url, "--token", admin_secret, "--admin", "127.0.0.1:0")
    with proxy:
        httpx.get(proxy.url, headers={"Host": "db"}, timeout=10)  # db's view is loaded
        status = httpx.get(f"{proxy.admin}/status", timeout=10).json()
        endpoints = status["services"]["db"]["endpoints"]
        assert [e["id"] for e in endpoints] == ["db-1"], endpoints


def test_a_dns_name_is_claimed_only_with_a_rule_that_grants_it(deny_server: ServerProcess) -> None:
    """Security review finding 9: a ``web`` writer added itself to ``db.internal``. An
    instance's custom domain needs write on it: ``domain`` (exact) or ``domain_suffix``
    (the zone and every name below it, label by label)."""
    admin_secret = bootstrap(deny_server)
    with Client(deny_server.url, token=admin_secret) as admin:
        admin.register(instance("db-1", service="db", address="10.0.0.5", domain="db.internal"))
        web = token_with(
            admin,
            "web-names",
            [
                {"resource": "service", "name": "web", "access": "write"},
                {"resource": "domain_suffix", "name": "web.internal", "access": "write"},
            ],
        )
    with as_token(deny_server, web) as h:
        for name in ("db.internal", "xweb.internal", "internal.web"):
            got = h.put("/api/v1/instances/web-1", json=instance("web-1", domain=name))
            assert got.status_code == 403, (name, got.text)
            assert f'domain "{name}"' in got.json()["message"]
        for i, name in enumerate(("web.internal", "API.web.internal.")):
            got = h.put(f"/api/v1/instances/web-{i}", json=instance(f"web-{i}", domain=name))
            assert got.status_code == 200, (name, got.text)
    with as_token(deny_server, admin_secret) as h:
        owners = [i["id"] for i in h.get("/api/v1/instances").json() if i.get("domain")]
        assert sorted(owners) == ["db-1", "web-0", "web-1"]


def _names_db(text: str) -> bool:
    """Whether ``text`` names service ``db`` (the id ``aaa-db`` aside; a token's accessor
    is hex and may hold the letters "db" anywhere)."""
    return re.search(r"\bdb\b", text.replace("aaa-db", "")) is not None


def test_default_deny_leaks_nothing_about_hidden_instances_or_the_server(
    start_server: Callable[..., ServerProcess],
) -> None:
    """Security review finding 16: under default deny ``/status``, the node-registry
    entry, ``/v1/status/*`` and ``/v1/agent/members`` answered anyone (members showed a
    hidden instance's address); a node's address and instance count came from hidden
    instances; a Consul register of a hidden id answered ``409 taken``."""
    server = start_server("--acl-default-policy", "deny", node="box")
    admin_secret = bootstrap(server)
    with Client(server.url, token=admin_secret) as admin:
        # The server's own node is known only through instances: db's (hidden) first.
        admin.register(instance("aaa-db", service="db", address="10.9.9.9", node="box"))
        admin.register(instance("web-1", service="web", address="10.0.0.1", node="box"))
        admin.register(instance("db-2", service="db", address="10.9.9.8", node="dbhost"))
        web = token_with(
            admin,
            "web-and-nodes",
            [
                {"resource": "service", "name": "web", "access": "write"},
                {"resource": "node_prefix", "name": "", "access": "read"},
            ],
        )
    with as_token(server, None) as anon:
        assert anon.get("/status").status_code == 403
        assert anon.get("/api/v1/node-registry").status_code == 403
        assert anon.get("/v1/status/leader").json() == ""
        assert anon.get("/v1/status/peers").json() == []
        assert anon.get("/v1/agent/members").json() == []
    with as_token(server, web) as h:
        nodes = {n["id"]: n for n in h.get("/api/v1/nodes").json()}
        assert set(nodes) == {"box"}, "dbhost exists only through a hidden instance"
        assert nodes["box"]["instances"] == 1
        assert nodes["box"]["address"] == "10.0.0.1"
        assert h.get("/api/v1/nodes/box").json()["address"] == "10.0.0.1"
        assert h.get("/api/v1/nodes/dbhost").status_code == 404
        members = h.get("/v1/agent/members").json()
        assert "10.9.9.9" not in json.dumps(members)
        assert "10.9.9.9" not in h.get("/v1/catalog/nodes").text
        assert "10.9.9.8" not in h.get("/v1/catalog/nodes").text
        # Taking a hidden id: refused, without naming what holds it.
        body = {"ID": "aaa-db", "Name": "web", "Port": 80}
        got = h.put("/v1/agent/service/register", json=body)
        assert got.status_code == 403, got.text
        assert not _names_db(got.text), got.text
        native = h.put("/api/v1/instances/aaa-db", json=instance("aaa-db"))
        assert native.status_code == 403, native.text
        assert not _names_db(native.json()["message"]), native.text
    with as_token(server, admin_secret) as h:
        assert h.get("/status").status_code == 200
        assert h.get("/api/v1/node-registry").status_code == 200
        assert h.get("/v1/status/leader").json().endswith(":8300")
        assert h.get("/api/v1/instances/aaa-db").json()["service"] == "db"
