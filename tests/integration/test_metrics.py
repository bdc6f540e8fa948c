"""``GET /metrics``: parses as Prometheus' text format, holds every metric docs/metrics.md
lists, and its values follow what the server does."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.conftest import ServerProcess

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def scrape(http: httpx.Client) -> dict[str, list[Sample]]:
    got = http.get("/metrics")
    assert got.status_code == 200
    assert got.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {f.name: f.samples for f in text_string_to_metric_families(got.text)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert found, (name, labels, samples)
    return found[0]


def test_every_documented_metric_is_served(http: httpx.Client) -> None:
    # Something of each: an instance, a check run needs none, a 404, a DNS query needs
    # none (the counters are there from the start).
    body = {"service": "app", "address": "127.0.0.1", "port": 80}
    assert http.put("/api/v1/instances/app-1", json=body).status_code == 200
    families = scrape(http)
    documented = set()
    for row in DOC.read_text().splitlines():
        if row.startswith("| `"):
            documented |= set(re.findall(r"`((?:waypost|process|python)_[a-z_]+)`", row))
    assert len(documented) > 20
    served = {name.removesuffix("_total") for name in families}
    missing = {d for d in documented if d.removesuffix("_total") not in served}
    assert not missing


def test_metrics_follow_the_registry_and_the_requests(http: httpx.Client) -> None:
    for n, status in enumerate(["passing", "passing", "critical"]):
        body = {"service": "app", "address": "127.0.0.1", "port": 80 + n, "status": status}
        assert http.put(f"/api/v1/instances/app-{n}", json=body).status_code == 200
    maint = {"enable": True, "reason": "upgrade"}
    assert http.put("/api/v1/instances/app-1/maintenance", json=maint).status_code == 200
    assert http.get("/api/v1/instances/nope").status_code == 404
    assert http.get("/api/v1/services/app").status_code == 200
    m = scrape(http)
    inst = m["waypost_instances"]
    assert value(inst, "waypost_instances", service="app", status="passing") == 1
    assert value(inst, "waypost_instances", service="app", status="critical") == 2  # + maint
    assert value(m["waypost_services"], "waypost_services") == 1
    requests = m["waypost_http_requests"]
    route = "/api/v1/instances/{id}"
    count = "waypost_http_requests_total"
    assert value(requests, count, route=route, method="PUT", code="200") == 3
    assert value(requests, count, route=route, method="GET", code="404") == 1
    lat = m["waypost_http_request_duration_seconds"]
    hist = "waypost_http_request_duration_seconds"
    # Other routes: every request timed.
    maint_route = "/api/v1/instances/{id}/maintenance"
    assert value(lat, f"{hist}_count", route=maint_route, method="PUT") == 1
    # The hot routes: one request in 16 timed, every one counted.
    for _ in range(32):
        assert http.get("/api/v1/instances/app-0").status_code == 200
    m = scrape(http)
    gets = value(m["waypost_http_requests"], count, route=route, method="GET", code="200")
    assert gets == 32
    lat = m["waypost_http_request_duration_seconds"]
    timed = value(lat, f"{hist}_count", route=route, method="GET")
    assert timed == (32 + 1) // 16  # the 404 counts among the GETs
    assert value(lat, f"{hist}_bucket", route=route, method="GET", le="+Inf") == timed
    assert value(m["waypost_store_ops"], "waypost_store_ops_total", op="put") >= 4
    writes = value(
        m["waypost_store_write_duration_seconds"], "waypost_store_write_duration_seconds_count"
    )
    assert writes >= 4
    assert value(m["waypost_revision"], "waypost_revision") >= 4
    # A blocking query is counted while parked, then as a request (not timed).
    index = http.get("/api/v1/services/app").headers["X-Waypost-Index"]
    parked = http.get("/api/v1/services/app", params={"index": index, "wait": "50ms"})
    assert parked.status_code == 200
    after = scrape(http)["waypost_http_requests"]
    svc = "/api/v1/services/{name}"
    got = value(after, "waypost_http_requests_total", route=svc, method="GET", code="200")
    assert got == 3


def test_a_scrape_of_a_large_registry_reads_counts_not_instances(http: httpx.Client) -> None:
    """5,000 instances in 50 services: the scrape has one series per service and
    status, not per instance."""
    for b in range(5):
        register = [
            {"id": f"i-{b}-{n}", "service": f"s{n % 50}", "address": "10.0.0.1", "port": 80}
            for n in range(1000)
        ]
        assert http.post("/api/v1/batch", json={"register": register}).status_code == 200
    inst = scrape(http)["waypost_instances"]
    assert len(inst) == 50 * 4
    assert sum(s.value for s in inst) == 5000


def test_dns_answers_are_counted_by_type_and_rcode_with_latency(server: ServerProcess) -> None:
    """Real DNS queries (dnspython over UDP and TCP) to the server's DNS: each shows in
    ``waypost_dns_answers_total`` under its query type and rcode, cached repeats too."""
    assert server.dns is not None
    host, port = server.dns
    with httpx.Client(base_url=server.url, timeout=10) as http:
        body = {"service": "web", "address": "10.0.0.7", "port": 80}
        assert http.put("/api/v1/instances/web-1", json=body).status_code == 200

        def ask(name: str, qtype: str, tcp: bool = False) -> int:
            q = dns.message.make_query(name, qtype)
            send = dns.query.tcp if tcp else dns.query.udp
            return int(send(q, host, port=port, timeout=5).rcode())

        for _ in range(20):  # the first is built, the rest come from the UDP memo
            assert ask("web.service.waypost.", "A") == dns.rcode.NOERROR
        assert ask("web.service.waypost.", "AAAA", tcp=True) == dns.rcode.NOERROR
        assert ask("_web._tcp.service.waypost.", "SRV") == dns.rcode.NOERROR
        assert ask("nope.service.waypost.", "A") == dns.rcode.NXDOMAIN
        assert ask("example.com.", "A") == dns.rcode.REFUSED
        # Garbage with a valid header: FORMERR.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff", (host, port))
            got = s.recv(512)
        assert got[3] & 0x0F == dns.rcode.FORMERR

        def answers() -> dict[tuple[str, str], float]:
            fams = scrape(http)
            return {
                (s.labels["qtype"], s.labels["rcode"]): s.value
                for s in fams["waypost_dns_answers"]
                if s.name == "waypost_dns_answers_total"
            }

        # The UDP thread counts a memo answer before sending it: all 20 are in.
        got = answers()
        assert got[("A", "NOERROR")] == 20
        assert got[("AAAA", "NOERROR")] == 1
        assert got[("SRV", "NOERROR")] == 1
        assert got[("A", "NXDOMAIN")] == 1
        assert got[("A", "REFUSED")] == 1
        assert got[("unknown", "FORMERR")] == 1
        fams = scrape(http)
        lat = fams["waypost_dns_answer_duration_seconds"]
        name = "waypost_dns_answer_duration_seconds"
        timed = value(lat, f"{name}_count")
        # Every answer built on the event loop is timed (A, AAAA, SRV, NXDOMAIN, REFUSED,
        # FORMERR), and one in 16 of the 19 memo answers.
        assert timed == 6 + 19 // 16
        assert value(lat, f"{name}_bucket", le="+Inf") == timed
