"""``GET /metrics``: parses as Prometheus' text format, holds every metric docs/metrics.md
lists, and its values follow what the server does."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

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
