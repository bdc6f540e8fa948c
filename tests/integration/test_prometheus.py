"""Service discovery for Prometheus: a real Prometheus (Debian's 2.42) with
``http_sd_configs`` pointing at Waypost scrapes exactly the healthy instances of a
service, with Waypost's labels, and follows a deregistration."""

from __future__ import annotations

import http.server
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess, wait_until
from waypost.testing import free_port, terminate


class _Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"# TYPE app_up gauge\napp_up 1\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def exporters() -> Iterator[list[int]]:
    """Three tiny /metrics endpoints, as the instances Prometheus will scrape."""
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metrics) for _ in range(3)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    try:
        yield [s.server_address[1] for s in servers]
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """``start(sd_url, itself)``: a Prometheus on loopback discovering targets from
    ``sd_url`` (and scraping ``itself``'s /metrics); gives its API URL."""
    procs: list[subprocess.Popen[str]] = []

    def start(sd_url: str, itself: str = "") -> str:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        own = (
            f"  - job_name: registry\n    static_configs:\n      - targets: ['{itself}']\n"
            if itself
            else ""
        )
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "scrape_configs:\n" + own + "  - job_name: waypost\n"
            "    http_sd_configs:\n"
            f"      - url: '{sd_url}'\n"
            "        refresh_interval: 1s\n"
            "    relabel_configs:\n"
            "      - source_labels: [__meta_waypost_version]\n"
            "        target_label: version\n"
            "      - source_labels: [__meta_waypost_meta_team]\n"
            "        target_label: team\n"
        )
        exe = shutil.which("prometheus") or "/usr/bin/prometheus"
        log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            [
                exe,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        log.close()
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
                return False

        wait_until(ready, 30, "prometheus to be ready")
        return url

    try:
        yield start
    finally:
        for proc in procs:
            terminate(proc)


def _sd_targets(prom: str) -> dict[str, dict[str, Any]]:
    """The discovered services' targets (not the registry's own job)."""
    return {k: v for k, v in _active(prom).items() if v["labels"]["job"] == "waypost"}


def _active(prom: str) -> dict[str, dict[str, Any]]:
    """Prometheus' active targets by address, once each has been scraped."""
    got = httpx.get(f"{prom}/api/v1/targets", params={"state": "active"}).json()
    return {t["labels"]["instance"]: t for t in got["data"]["activeTargets"]}


def test_prometheus_scrapes_exactly_the_passing_instances_and_follows_changes(
    server: ServerProcess, http: httpx.Client, exporters: list[int], prometheus: Any
) -> None:
    statuses = ["passing", "passing", "critical"]
    for n, (port, status) in enumerate(zip(exporters, statuses, strict=True)):
        body = {
            "service": "app",
            "address": "127.0.0.1",
            "port": port,
            "status": status,
            "version": "1.4.2",
            "tags": ["prod"],
            "meta": {"team": "core"},
        }
        assert http.put(f"/api/v1/instances/app-{n}", json=body).status_code == 200
    other = {"service": "other", "address": "127.0.0.1", "port": exporters[2]}
    assert http.put("/api/v1/instances/other-1", json=other).status_code == 200
    prom = prometheus(
        f"{server.url}/api/v1/prometheus/targets?service=app", server.url.removeprefix("http://")
    )
    healthy = {f"127.0.0.1:{p}" for p in exporters[:2]}

    def scraped(expected: set[str]) -> bool:
        active = _sd_targets(prom)
        return set(active) == expected and all(t["health"] == "up" for t in active.values())

    wait_until(lambda: scraped(healthy), 30, "prometheus to scrape the two passing instances")

    # Waypost's own /metrics, scraped by the same Prometheus.
    def registry_series() -> list[Any]:
        query = 'waypost_instances{service="app"}'
        got = httpx.get(f"{prom}/api/v1/query", params={"query": query}).json()
        return list(got["data"]["result"])

    series = wait_until(registry_series, 30, "prometheus to scrape waypost's /metrics")
    by_status = {r["metric"]["status"]: float(r["value"][1]) for r in series}
    assert (by_status["passing"], by_status["critical"]) == (2.0, 1.0)
    for target in _sd_targets(prom).values():
        # Waypost's labels reach relabelling; the __meta_ ones are dropped after it.
        assert target["labels"]["version"] == "1.4.2"
        assert target["labels"]["team"] == "core"
        found = target["discoveredLabels"]
        assert found["__meta_waypost_service"] == "app"
        assert found["__meta_waypost_status"] == "passing"
        assert found["__meta_waypost_tags"] == ",prod,"
        assert found["__meta_waypost_node"] == "test-node"
    # The scrape itself worked: Prometheus holds the exporters' samples.
    query = httpx.get(f"{prom}/api/v1/query", params={"query": "app_up"}).json()
    assert {r["metric"]["instance"] for r in query["data"]["result"]} <= healthy

    # A deregistration, and an instance going critical, leave the scrape.
    assert http.delete("/api/v1/instances/app-0").status_code == 200
    left = {f"127.0.0.1:{exporters[1]}"}
    wait_until(lambda: set(_sd_targets(prom)) == left, 30, "a drop")
    set_critical = {"status": "critical", "output": "down"}
    assert http.put("/api/v1/instances/app-1/status", json=set_critical).status_code == 200
    # ... and one coming back to passing joins it.
    assert http.put("/api/v1/instances/app-2/status", json={"status": "passing"}).status_code == 200
    wait_until(lambda: scraped({f"127.0.0.1:{exporters[2]}"}), 30, "the swap")


def test_targets_are_filtered_like_instance_queries(http: httpx.Client) -> None:
    rows = [
        ("a-1", "a", "10.0.0.1", "passing", ["x"]),
        ("a-2", "a", "10.0.0.2", "warning", ["y"]),
        ("b-1", "b", "fd00::1", "passing", []),
    ]
    for iid, service, address, status, tags in rows:
        body = {"service": service, "address": address, "port": 80, "status": status, "tags": tags}
        assert http.put(f"/api/v1/instances/{iid}", json=body).status_code == 200

    def targets(**params: str) -> list[list[str]]:
        got = http.get("/api/v1/prometheus/targets", params=params)
        assert got.status_code == 200, got.text
        assert got.headers["content-type"].startswith("application/json")
        return [g["targets"] for g in got.json()]

    assert targets() == [["10.0.0.1:80"], ["[fd00::1]:80"]]  # healthy ones, by service
    assert targets(service="a", status="passing,warning") == [["10.0.0.1:80"], ["10.0.0.2:80"]]
    assert targets(tag="y", status="warning") == [["10.0.0.2:80"]]
    assert targets(service="nope") == []
    bad = http.get("/api/v1/prometheus/targets", params={"status": "sideways"})
    assert bad.status_code == 400
    assert bad.json()["field"] == "status"


def test_the_scrape_config_in_the_docs_is_valid(tmp_path: Path) -> None:
    """docs/metrics.md's configuration, as Prometheus' own promtool reads it."""
    import re

    text = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    configs = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert configs
    for n, config in enumerate(configs):
        path = tmp_path / f"config-{n}.yml"
        path.write_text(config)
        promtool = shutil.which("promtool") or "/usr/bin/promtool"
        done = subprocess.run([promtool, "check", "config", str(path)], capture_output=True)
        assert done.returncode == 0, done.stdout + done.stderr
