"""The DNS interface of a real ``waypost server``, asked with dnspython and dig."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import httpx
import pytest

from tests.conftest import ServerProcess, instance, wait_until


def ask(server: ServerProcess, name: str, rdtype: str, **kw: Any) -> dns.message.Message:
    assert server.dns is not None
    query = dns.message.make_query(name, rdtype, **kw)
    return dns.query.udp(query, server.dns[0], port=server.dns[1], timeout=3)


def ask_tcp(server: ServerProcess, name: str, rdtype: str) -> dns.message.Message:
    assert server.dns is not None
    return dns.query.tcp(
        dns.message.make_query(name, rdtype), server.dns[0], port=server.dns[1], timeout=3
    )


def addresses(msg: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in msg.answer for rd in rrset)


def put(http: httpx.Client, iid: str, service: str = "web", **fields: Any) -> None:
    r = http.put(f"/api/v1/instances/{iid}", json=instance(iid, service, **fields))
    assert r.status_code == 200, r.text


@pytest.fixture
def web(http: httpx.Client) -> None:
    for n in (1, 2, 3):
        put(
            http,
            f"web-{n}",
            address=f"10.0.0.{n}",
            port=8080 + n,
            tags=["prod"] if n < 3 else ["canary"],
            weight=10 * n,
            meta={"zone": "eu-1", "team": "web"},
            node="n1",
        )


def test_service_a_and_tags(server: ServerProcess, web: None) -> None:
    r = ask(server, "web.service.waypost", "A")
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA
    assert addresses(r) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert addresses(ask(server, "prod.web.service.waypost", "A")) == ["10.0.0.1", "10.0.0.2"]
    assert addresses(ask(server, "canary.web.service.waypost", "A")) == ["10.0.0.3"]


def test_names_are_case_insensitive_and_echoed(server: ServerProcess, web: None) -> None:
    r = ask(server, "WeB.SeRvIcE.WayPost", "A")
    assert str(r.question[0].name) == "WeB.SeRvIcE.WayPost."
    assert str(r.answer[0].name) == "WeB.SeRvIcE.WayPost."
    assert addresses(r) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_srv_rfc2782_with_targets_in_additional(server: ServerProcess, web: None) -> None:
    r = ask(server, "_web._tcp.service.waypost", "SRV")
    srv = sorted((rd.priority, rd.weight, rd.port, str(rd.target)) for rd in r.answer[0])
    assert srv == [
        (1, 10, 8081, "web-1.instance.waypost."),
        (1, 20, 8082, "web-2.instance.waypost."),
        (1, 30, 8083, "web-3.instance.waypost."),
    ]
    glue = {str(rrset.name): rrset[0].to_text() for rrset in r.additional if rrset.rdtype == 1}
    assert glue["web-1.instance.waypost."] == "10.0.0.1"
    tagged = ask(server, "_web._prod.service.waypost", "SRV")
    assert sorted(rd.port for rd in tagged.answer[0]) == [8081, 8082]


def test_instance_node_and_txt(server: ServerProcess, web: None) -> None:
    assert addresses(ask(server, "web-2.instance.waypost", "A")) == ["10.0.0.2"]
    txt = ask(server, "web-2.instance.waypost", "TXT")
    assert sorted(rd.to_text() for rd in txt.answer[0]) == ['"team=web"', '"zone=eu-1"']
    srv = ask(server, "web-2.instance.waypost", "SRV")
    assert srv.answer[0][0].port == 8082
    assert addresses(ask(server, "n1.node.waypost", "A")) == ["10.0.0.1"]


def test_ptr(server: ServerProcess, web: None) -> None:
    r = ask(server, "2.0.0.10.in-addr.arpa", "PTR")
    assert [rd.to_text() for rd in r.answer[0]] == ["web-2.instance.waypost."]


def test_aaaa_and_cname(server: ServerProcess, http: httpx.Client) -> None:
    put(http, "v6-1", "v6", address="fd00::1")
    put(http, "ext-1", "ext", address="api.example.org")
    assert addresses(ask(server, "v6.service.waypost", "AAAA")) == ["fd00::1"]
    nodata = ask(server, "v6.service.waypost", "A")
    assert nodata.rcode() == dns.rcode.NOERROR
    assert nodata.answer == []
    cname = ask(server, "ext.service.waypost", "A")
    assert cname.answer[0].rdtype == dns.rdatatype.CNAME
    assert cname.answer[0][0].to_text() == "api.example.org."


def test_custom_domain(server: ServerProcess, http: httpx.Client) -> None:
    put(http, "site-1", "site", address="10.1.0.1", domain="web.local")
    put(http, "site-2", "site", address="10.1.0.2", domain="web.local")
    assert addresses(ask(server, "web.local", "A")) == ["10.1.0.1", "10.1.0.2"]
    assert addresses(ask(server, "WEB.local", "A")) == ["10.1.0.1", "10.1.0.2"]


def test_a_custom_domain_is_claimed_only_inside_the_custom_zones(start_server: Any) -> None:
    """Security review finding 9: an instance with ``"domain": "pypi.org"`` made the
    server answer ``pypi.org`` itself instead of forwarding it. A custom domain must lie
    inside ``--dns-custom-zones`` (default local, internal, home.arpa); a record stored
    before the zones changed is kept but no longer answered."""
    server = start_server(name="zones")
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for name in ("pypi.org", "x.waypost", "local", "a.b.example"):
            body = {"id": "claim", "service": "site", "address": "10.1.0.9", "port": 80,
                    "domain": name}  # fmt: skip
            got = http.put("/api/v1/instances/claim", json=body)
            assert got.status_code == 403, (name, got.text)
            assert "--dns-custom-zones" in got.json()["message"]
        assert http.get("/api/v1/instances/claim").status_code == 404
        put(http, "site-1", "site", address="10.1.0.1", domain="web.local")
        put(http, "site-2", "site", address="10.1.0.2", domain="site.home.arpa")
    assert ask(server, "pypi.org", "A").rcode() == dns.rcode.REFUSED
    assert addresses(ask(server, "web.local", "A")) == ["10.1.0.1"]
    assert addresses(ask(server, "site.home.arpa", "A")) == ["10.1.0.2"]
    server.stop()
    # The same data under other zones: the stored record stays, its name is not answered.
    server = start_server("--dns-custom-zones", "corp.internal", name="zones")
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/api/v1/instances/site-1").json()["domain"] == "web.local"
        assert ask(server, "web.local", "A").rcode() == dns.rcode.REFUSED
        put(http, "site-3", "site", address="10.1.0.3", domain="app.corp.internal")
        assert addresses(ask(server, "app.corp.internal", "A")) == ["10.1.0.3"]
        body = {"id": "site-1", "service": "site", "address": "10.1.0.1", "port": 80,
                "domain": "web.local"}  # fmt: skip
        assert http.put("/api/v1/instances/site-1", json=body).status_code == 403


def test_negative_answers_carry_the_soa(server: ServerProcess, web: None) -> None:
    nx = ask(server, "nope.service.waypost", "A")
    assert nx.rcode() == dns.rcode.NXDOMAIN
    soa = nx.authority[0]
    assert soa.rdtype == dns.rdatatype.SOA
    assert soa.ttl == soa[0].minimum  # RFC 2308: the negative TTL
    nodata = ask(server, "web.service.waypost", "MX")
    assert nodata.rcode() == dns.rcode.NOERROR
    assert nodata.answer == []
    assert nodata.authority[0].rdtype == dns.rdatatype.SOA
    assert ask(server, "what.ever.waypost", "A").rcode() == dns.rcode.NXDOMAIN


def test_apex_soa_and_ns(server: ServerProcess) -> None:
    soa = ask(server, "waypost", "SOA")
    assert soa.answer[0].rdtype == dns.rdatatype.SOA
    ns = ask(server, "waypost", "NS")
    assert ns.answer[0][0].to_text() == "ns.waypost."
    assert addresses(ask(server, "ns.waypost", "A")) == ["127.0.0.1"]


def test_outside_names_are_refused(server: ServerProcess) -> None:
    r = ask(server, "example.com", "A")
    assert r.rcode() == dns.rcode.REFUSED
    assert not r.flags & dns.flags.AA


def test_only_healthy_instances_and_ttl(server: ServerProcess, http: httpx.Client) -> None:
    put(http, "a-1", "api", address="10.2.0.1")
    put(http, "a-2", "api", address="10.2.0.2")
    put(http, "a-3", "api", address="10.2.0.3")
    http.put("/api/v1/instances/a-2/status", json={"status": "critical"})
    http.put("/api/v1/instances/a-3/maintenance", json={"enable": True})
    r = ask(server, "api.service.waypost", "A")
    assert addresses(r) == ["10.2.0.1"]
    assert r.answer[0].ttl == 5
    http.put("/api/v1/services/api/config", json={"dns_ttl": "30s"})
    assert ask(server, "api.service.waypost", "A").answer[0].ttl == 30
    http.put("/api/v1/instances/a-1/status", json={"status": "warning"})
    r = ask(server, "api.service.waypost", "A")
    assert r.rcode() == dns.rcode.NOERROR
    assert r.answer == []


def test_changes_show_within_100ms(server: ServerProcess, http: httpx.Client) -> None:
    put(http, "fast-1", "fast", address="10.3.0.1")
    assert addresses(ask(server, "fast.service.waypost", "A")) == ["10.3.0.1"]  # cached now
    # The answer after an acknowledged change is the new one: no wait at all.
    http.put("/api/v1/instances/fast-1/status", json={"status": "critical"})
    assert ask(server, "fast.service.waypost", "A").answer == []
    put(http, "fast-2", "fast", address="10.3.0.2")
    assert addresses(ask(server, "fast.service.waypost", "A")) == ["10.3.0.2"]
    http.delete("/api/v1/instances/fast-2")
    http.delete("/api/v1/instances/fast-1")
    assert ask(server, "fast.service.waypost", "A").rcode() == dns.rcode.NXDOMAIN


def test_weights_order_a_answers(server: ServerProcess, http: httpx.Client) -> None:
    put(http, "w-1", "wt", address="10.4.0.1", weight=900)
    put(http, "w-2", "wt", address="10.4.0.2", weight=100)
    firsts = [ask(server, "wt.service.waypost", "A").answer[0][0].to_text() for _ in range(64)]
    # 9:1 by weight: of 16 orders served in turn, 14 start with the heavy one, 2 not.
    assert firsts.count("10.4.0.1") == 56
    assert firsts.count("10.4.0.2") == 8


def test_edns_truncation_and_tcp(server: ServerProcess, http: httpx.Client) -> None:
    for n in range(60):
        put(http, f"big-{n}", "big", address=f"10.5.{n // 250}.{n % 250 + 1}")
    plain = ask(server, "big.service.waypost", "A")
    assert plain.flags & dns.flags.TC  # 60 A records do not fit 512 bytes
    assert plain.answer == []
    edns = ask(server, "big.service.waypost", "A", use_edns=0, payload=4096)
    assert not edns.flags & dns.flags.TC
    assert len(addresses(edns)) == 60
    assert edns.edns == 0
    over_tcp = ask_tcp(server, "big.service.waypost", "A")
    assert len(addresses(over_tcp)) == 60


def _raw(server: ServerProcess, payload: bytes) -> bytes | None:
    assert server.dns is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        s.sendto(payload, server.dns)
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def test_formerr_and_notimp(server: ServerProcess, web: None) -> None:
    query = dns.message.make_query("web.service.waypost", "A")
    query.id = 4321
    good = query.to_wire()
    bad = good[:14]  # cut inside the question
    answer = _raw(server, bad)
    assert answer is not None
    assert answer[:2] == good[:2]
    assert answer[3] & 0x0F == dns.rcode.FORMERR
    notify = dns.message.make_query("web.service.waypost", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    reply = _raw(server, notify.to_wire())
    assert reply is not None
    assert reply[3] & 0x0F == dns.rcode.NOTIMP
    assert _raw(server, b"\x00") is None  # no header: nothing to answer
    # And the next good query is answered right.
    assert addresses(ask(server, "web.service.waypost", "A")) == [
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.3",
    ]


def test_dig_reads_every_form(server: ServerProcess, web: None) -> None:
    dig = shutil.which("dig")
    if dig is None:
        pytest.fail("dig is not installed: make test installs dnsutils")
    assert server.dns is not None
    host, port = server.dns

    def run(*args: str) -> str:
        cmd = [dig, f"@{host}", "-p", str(port), "+time=2", "+tries=1", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=15).stdout

    assert sorted(run("+short", "web.service.waypost").split()) == [
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.3",
    ]
    assert "web-1.instance.waypost." in run("+short", "_web._tcp.service.waypost", "SRV")
    assert run("+short", "-x", "10.0.0.3").strip() == "web-3.instance.waypost."
    assert "status: NXDOMAIN" in run("nope.service.waypost")
    assert run("+short", "+tcp", "n1.node.waypost").strip() == "10.0.0.1"


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[tuple[str, int]]:
    exe = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not Path(exe).exists():
        pytest.fail("dnsmasq is not installed: make test installs dnsmasq-base")

    def spawn() -> tuple[subprocess.Popen[bytes], int]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(
            [
                exe,
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                f"--port={port}",
                "--address=/upstream.test/192.0.2.7",
                f"--pid-file={tmp_path / 'dnsmasq.pid'}",
                # As root it would switch to a "dnsmasq" user that dnsmasq-base does not add.
                *(["--user=root"] if os.geteuid() == 0 else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return proc, port

    def up(port: int) -> bool:
        try:
            q = dns.message.make_query("upstream.test", "A")
            return bool(dns.query.udp(q, "127.0.0.1", port=port, timeout=0.5).answer)
        except Exception:
            return False

    # The port is free when picked but may be taken before dnsmasq binds it (the suite
    # starts many servers): then dnsmasq exits at once, and another port is tried.
    for _ in range(3):
        proc, port = spawn()
        wait_until(lambda: up(port) or proc.poll() is not None, 10, "dnsmasq")  # noqa: B023
        if proc.poll() is None:
            break
    else:
        pytest.fail("dnsmasq did not start on any of three ports")
    try:
        yield ("127.0.0.1", port)
    finally:
        proc.terminate()
        proc.wait(10)


def test_recursor_forwarding_with_failover(start_server: Any, dnsmasq: tuple[str, int]) -> None:
    dead = "127.0.0.1:9"  # nothing answers there: the next recursor is asked
    server = start_server(
        "--recursor", dead, "--recursor", f"{dnsmasq[0]}:{dnsmasq[1]}", name="fwd"
    )
    started = time.monotonic()
    r = ask(server, "upstream.test", "A")
    assert addresses(r) == ["192.0.2.7"]
    assert time.monotonic() - started < 5
    assert r.id  # the client's id came back
    r = ask_tcp(server, "upstream.test", "A")
    assert addresses(r) == ["192.0.2.7"]


def test_ipv6_listener_and_allow_warning(start_server: Any) -> None:
    server = start_server("--dns", "127.0.0.1:0,[::1]:0", "--dns-allow-warning", name="v6")
    with httpx.Client(base_url=server.url, timeout=10) as http:
        put(http, "w-1", "warm", address="10.6.0.1")
        put(http, "w-2", "warm", address="10.6.0.2")
        http.put("/api/v1/instances/w-2/status", json={"status": "warning"})
    assert [h for h, _ in server.dns_listeners] == ["127.0.0.1", "::1"]
    query = dns.message.make_query("warm.service.waypost", "A")
    for host, port in server.dns_listeners:
        r = dns.query.udp(query, host, port=port, timeout=3)
        assert addresses(r) == ["10.6.0.1", "10.6.0.2"]  # warning answered when allowed
        r = dns.query.tcp(query, host, port=port, timeout=3)
        assert addresses(r) == ["10.6.0.1", "10.6.0.2"]
    assert addresses(ask(server, "ns.waypost", "AAAA")) == ["::1"]


def test_dns_workers_answer_alike(start_server: Any) -> None:
    """Two processes share the DNS port (SO_REUSEPORT); queries from many source ports
    reach both, and every one of them sees a change soon after it is acknowledged."""
    server = start_server("--dns-workers", "2", name="workers")
    assert server.dns is not None
    host, port = server.dns

    def answers(n: int = 24) -> set[tuple[str, ...]]:
        seen = set()
        query = dns.message.make_query("multi.service.waypost", "A")
        for _ in range(n):  # a fresh socket each: a new source port, maybe a new worker
            r = dns.query.udp(query, host, port=port, timeout=3)
            seen.add(tuple(sorted(rd.to_text() for rrset in r.answer for rd in rrset)))
        return seen

    with httpx.Client(base_url=server.url, timeout=10) as http:
        put(http, "m-1", "multi", address="10.7.0.1")
        put(http, "m-2", "multi", address="10.7.0.2")
        wait_until(lambda: answers() == {("10.7.0.1", "10.7.0.2")}, 10, "both workers")
        http.put("/api/v1/instances/m-2/status", json={"status": "critical"})
        started = time.monotonic()
        wait_until(lambda: answers() == {("10.7.0.1",)}, 10, "the change everywhere")
        took = time.monotonic() - started
    assert took < 5
    out = server.log.read_text()
    assert "Traceback" not in out


def test_dns_workers_know_configs_of_services_with_no_instances(start_server: Any) -> None:
    """A worker's first listing includes the config of a service that had no instances
    then: its TTL applies in every process once an instance registers."""
    first = start_server(name="cfg")
    with httpx.Client(base_url=first.url, timeout=10) as http:
        http.put("/api/v1/services/later/config", json={"dns_ttl": "60s"}).raise_for_status()
        assert [c["service"] for c in http.get("/api/v1/configs").json()] == ["later"]
    first.args += ["--dns-workers", "2"]
    server = first.restart()
    assert server.dns is not None
    host, port = server.dns

    def ttls() -> set[int]:
        seen = set()
        query = dns.message.make_query("later.service.waypost", "A")
        for _ in range(24):  # fresh source ports: both processes answer some
            r = dns.query.udp(query, host, port=port, timeout=3)
            seen |= {rrset.ttl for rrset in r.answer} or {-1}
        return seen

    with httpx.Client(base_url=server.url, timeout=10) as http:
        put(http, "later-1", "later", address="10.8.0.1")
        wait_until(lambda: ttls() == {60}, 10, "the configured TTL from every process")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_second_server_on_the_dns_port_fails_clearly(start_server: Any, workers: str) -> None:
    """Workers bind with SO_REUSEPORT, which would let a second server share the port
    and take half the queries: it must refuse to start instead, and say why."""
    first = start_server("--dns-workers", workers, name="first")
    assert first.dns is not None
    host, port = first.dns
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "waypost",
            "server",
            "--store",
            "memory://",
            "--http",
            "127.0.0.1:0",
            "--dns",
            f"{host}:{port}",
            "--dns-workers",
            workers,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode != 0
    assert f"cannot serve DNS on {host}:{port}: Address already in use" in second.stderr
    assert "Traceback" not in second.stderr
    assert ask(first, "ns.waypost", "A").rcode() == dns.rcode.NOERROR  # the first serves on


def test_dns_keeps_answering_when_the_store_fails(
    server: ServerProcess, http: httpx.Client, web: None
) -> None:
    assert addresses(ask(server, "web.service.waypost", "A"))  # one answer cached
    (server.data_dir / "waypost.db").unlink()
    assert http.get("/health").status_code == 503  # the server says so
    # The catalog it has still answers: the cached name and one never asked before.
    assert addresses(ask(server, "web.service.waypost", "A")) == [
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.3",
    ]
    srv = ask(server, "_web._prod.service.waypost", "SRV")
    assert sorted(rd.port for rd in srv.answer[0]) == [8081, 8082]
    # /status says why, and that DNS answers from the last catalog it had.
    status = http.get("/status").json()
    assert status["problem"]
    assert status["dns"]["stale"] is True


def test_status_shows_the_dns_interface(
    server: ServerProcess, http: httpx.Client, web: None
) -> None:
    before = http.get("/status").json()["dns"]
    assert before["stale"] is False
    assert server.dns is not None
    assert before["listeners"] == [f"{server.dns[0]}:{server.dns[1]}"]
    for _ in range(3):
        ask(server, "web.service.waypost", "A")
    ask(server, "example.com", "A")
    after = http.get("/status").json()["dns"]
    assert after["queries"] == before["queries"] + 4
    assert after["cache_hits"] >= before["cache_hits"] + 2
    assert after["refused"] == before["refused"] + 1
