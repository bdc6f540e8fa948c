"""Health checks run by the server against real HTTP, HTTPS, TCP and gRPC servers and
real commands: statuses flip, thresholds are exact, hung checks are cut, command checks
leave no process behind, flapping is damped."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess, instance, wait_until
from tests.integration.targets import GrpcTarget, HttpTarget, TcpTarget, self_signed

FAST = {"interval": "200ms", "timeout": "2s"}


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """A server that runs command checks registered through the API too."""
    return start_server("--enable-command-checks")


@pytest.fixture
def target() -> Iterator[HttpTarget]:
    t = HttpTarget()
    yield t
    t.close()


def get(http: httpx.Client, iid: str) -> dict[str, Any]:
    r = http.get(f"/api/v1/instances/{iid}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def status_of(http: httpx.Client, iid: str) -> str:
    return str(get(http, iid)["status"])


def register(http: httpx.Client, iid: str, checks: list[dict[str, Any]], **fields: Any) -> None:
    body = instance(iid, address="127.0.0.1", checks=checks, **fields)
    r = http.put(f"/api/v1/instances/{iid}", json=body)
    assert r.status_code == 200, r.text


def wait_status(http: httpx.Client, iid: str, status: str, timeout_s: float = 15.0) -> None:
    wait_until(lambda: status_of(http, iid) == status, timeout_s, f"{iid} {status}")


def test_http_thresholds_are_exact(http: httpx.Client, target: HttpTarget) -> None:
    check = {"http": f"http://127.0.0.1:{target.port}/health", **FAST}
    check |= {"healthy_threshold": 2, "unhealthy_threshold": 3}
    register(http, "web-1", [check])
    # A check that has never passed needs one success (Envoy's start-up rule).
    wait_status(http, "web-1", "passing")

    # Failing: the third failing request is held while we look; two failures were judged.
    with target.seen:
        target.code = 500
        target.hold_at = target.requests + 3
    assert target.held.wait(20)
    assert status_of(http, "web-1") == "passing"  # N-1 failures: still passing
    target.release()
    wait_status(http, "web-1", "critical")  # N failures
    inst = get(http, "web-1")
    assert inst["output"].startswith("http: HTTP 500")
    assert inst["health"][0]["failures"] >= 3

    # Recovering: one success is not enough, the second brings it back.
    target.held.clear()
    with target.seen:
        target.code = 200
        target.hold_at = target.requests + 2
    assert target.held.wait(20)
    assert status_of(http, "web-1") == "critical"  # M-1 successes
    target.release()
    wait_status(http, "web-1", "passing")  # M successes
    healthy = [i["id"] for i in http.get("/api/v1/services/web?status=passing").json()]
    assert healthy == ["web-1"]


def test_http_429_is_warning_and_body_is_output(http: httpx.Client, target: HttpTarget) -> None:
    target.code, target.body = 429, b"slow down please"
    check = {"http": f"http://127.0.0.1:{target.port}/", **FAST, "unhealthy_threshold": 1}
    register(http, "web-1", [check])
    wait_status(http, "web-1", "warning")
    assert "slow down please" in get(http, "web-1")["output"]


def test_https_verify_on_off_and_ca_file(
    tmp_path: Path, start_server: Callable[..., ServerProcess]
) -> None:
    cert, key = self_signed(tmp_path)
    target = HttpTarget(tls=(cert, key))
    # The server reads a check's ca_file only under the directory its operator names.
    srv = start_server("--check-files-dir", str(tmp_path))
    http = httpx.Client(base_url=srv.url, timeout=10)
    try:
        url = f"https://127.0.0.1:{target.port}/health"
        base = {"https": url, **FAST, "unhealthy_threshold": 1}
        register(http, "unverified", [base | {"tls_verify": False}])
        register(http, "with-ca", [base | {"ca_file": str(cert)}])
        register(http, "system-ca", [base])
        wait_status(http, "unverified", "passing")
        wait_status(http, "with-ca", "passing")
        wait_until(lambda: get(http, "system-ca")["health"][0]["output"] != "not run yet")
        refused = get(http, "system-ca")
        assert refused["status"] == "critical"
        assert "certificate" in refused["output"].lower() or "TLS" in refused["output"]
        # A relative name is taken under that directory.
        register(http, "relative-ca", [base | {"ca_file": cert.name}])
        wait_status(http, "relative-ca", "passing")
    finally:
        http.close()
        target.close()


def test_tcp_check_follows_the_port(http: httpx.Client) -> None:
    port = TcpTarget()
    try:
        check = {"tcp": f"127.0.0.1:{port.port}", **FAST, "unhealthy_threshold": 1}
        register(http, "db-1", [check], port=port.port)
        wait_status(http, "db-1", "passing")
        port.close()
        wait_status(http, "db-1", "critical")
        assert "TCP connect" in get(http, "db-1")["output"]
        port.open()
        wait_status(http, "db-1", "passing")
    finally:
        port.close()


def test_grpc_check_asks_the_health_service(http: httpx.Client) -> None:
    server = GrpcTarget()
    try:
        server.set("orders", True)
        check = {
            "grpc": f"127.0.0.1:{server.port}",
            "grpc_service": "orders",
            **FAST,
            "unhealthy_threshold": 1,
        }
        register(http, "orders-1", [check])
        wait_status(http, "orders-1", "passing")
        server.set("orders", False)
        wait_status(http, "orders-1", "critical")
        assert "NOT_SERVING" in get(http, "orders-1")["output"]
        # An unknown service name is not serving either.
        other = {**check, "grpc_service": "nope"}
        register(http, "nope-1", [other])
        wait_status(http, "nope-1", "critical")
    finally:
        server.close()


def test_command_exit_codes(http: httpx.Client, tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.write_text("0")
    check = {
        "command": ["sh", "-c", f'echo "said $(cat {code})"; exit $(cat {code})'],
        **FAST,
        "unhealthy_threshold": 1,
    }
    register(http, "job-1", [check])
    wait_status(http, "job-1", "passing")
    code.write_text("1")
    wait_status(http, "job-1", "warning")
    assert get(http, "job-1")["output"] == "command: said 1"
    code.write_text("2")
    wait_status(http, "job-1", "critical")


def test_a_hung_http_check_is_cut_at_its_timeout(http: httpx.Client, target: HttpTarget) -> None:
    target.hang = True
    check = {"http": f"http://127.0.0.1:{target.port}/", "interval": "200ms", "timeout": "300ms"}
    register(http, "web-1", [check | {"unhealthy_threshold": 1, "initial_status": "passing"}])
    wait_status(http, "web-1", "critical")
    assert get(http, "web-1")["output"] == "http: timed out after 300ms"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead, only not yet reaped by its new parent
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:4]
    except OSError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="process groups as on Linux")
def test_a_command_timeout_kills_its_children(http: httpx.Client, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 60 & echo $! >> {pids}; sleep 60"
    check = {"command": ["sh", "-c", script], "interval": "1h", "timeout": "500ms"}
    register(http, "job-1", [check | {"unhealthy_threshold": 1, "initial_status": "passing"}])
    wait_status(http, "job-1", "critical")
    assert get(http, "job-1")["output"] == "command: timed out after 500ms"
    child = int(pids.read_text().split()[0])
    wait_until(lambda: not _alive(child), 10, "the command's child to be gone")


def test_flapping_is_held_then_released(http: httpx.Client, tmp_path: Path) -> None:
    state = tmp_path / "flip"
    state.write_text("0")
    # Alternates pass/fail on every run while "flip" is in the file, passes once "stable".
    script = (
        f"if grep -q stable {state}; then exit 0; fi; n=$(cat {state}); "
        f'echo $((1 - n)) > {state}; [ "$n" = 0 ]'
    )
    check = {
        "command": ["sh", "-c", script],
        "interval": "100ms",
        "timeout": "2s",
        "healthy_threshold": 1,
        "unhealthy_threshold": 1,
        "flap": {"changes": 4, "window": "2s"},
    }
    start = http.get("/api/v1/instances").headers["X-Waypost-Index"]
    register(http, "job-1", [check])
    wait_until(lambda: get(http, "job-1")["health"][0]["flapping"], 15, "flapping")
    held = get(http, "job-1")
    assert held["status"] == "critical"
    assert held["output"].startswith("command: flapping")
    # Still held while it keeps flipping, however often it passes.
    state.write_text("stable")
    wait_until(lambda: not get(http, "job-1")["health"][0]["flapping"], 15, "released")
    assert status_of(http, "job-1") == "passing"
    # The hold and its release are events on the stream.
    seen = []
    with httpx.stream(
        "GET",
        str(http.base_url).rstrip("/") + f"/api/v1/events?service=web&index={start}",
        headers={"Accept": "text/event-stream"},
        timeout=10,
    ) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:") and '"flapping":true' in line:
                seen.append("held")
            elif line.startswith("data:") and seen and '"flapping":false' in line:
                seen.append("released")
                break
    assert seen[0] == "held"
    assert seen[-1] == "released"


def test_run_now_answers_the_result(http: httpx.Client, target: HttpTarget) -> None:
    target.code = 503
    check = {"http": f"http://127.0.0.1:{target.port}/", "interval": "1h", "timeout": "2s"}
    register(http, "web-1", [check])
    wait_until(lambda: target.requests >= 1, 10, "the first run")
    wait_status(http, "web-1", "critical")
    target.code = 200
    r = http.post("/api/v1/instances/web-1/check")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "passing"
    assert status_of(http, "web-1") == "passing"
    # All of a service's at once; an instance without checks has none to run.
    target.code = 500
    done = http.post("/api/v1/check?service=web").json()
    assert [i["id"] for i in done] == ["web-1"]
    http.put("/api/v1/instances/plain", json=instance("plain"))
    r = http.post("/api/v1/instances/plain/check")
    assert r.status_code == 409
    assert http.post("/api/v1/instances/nobody/check").status_code == 404


def test_several_checks_take_the_worst(http: httpx.Client, target: HttpTarget) -> None:
    port = TcpTarget()
    try:
        checks = [
            {"http": f"http://127.0.0.1:{target.port}/", **FAST, "name": "api"},
            {"tcp": f"127.0.0.1:{port.port}", **FAST, "name": "port", "unhealthy_threshold": 1},
        ]
        register(http, "web-1", checks)
        wait_status(http, "web-1", "passing")
        port.close()
        wait_status(http, "web-1", "critical")
        inst = get(http, "web-1")
        assert inst["output"].startswith("port: TCP connect")
        assert {h["name"]: h["status"] for h in inst["health"]} == {
            "api": "passing",
            "port": "critical",
        }
    finally:
        port.close()


def test_service_config_check_template(http: httpx.Client, target: HttpTarget) -> None:
    config = {"check": {"type": "http", "path": "/health", **FAST, "unhealthy_threshold": 1}}
    assert http.put("/api/v1/services/web/config", json=config).status_code == 200
    r = http.put(
        "/api/v1/instances/web-1", json=instance("web-1", address="127.0.0.1", port=target.port)
    )
    assert r.status_code == 200
    wait_until(lambda: target.requests >= 1, 10, "the template's check to run")
    wait_status(http, "web-1", "passing")
    target.code = 500
    wait_status(http, "web-1", "critical")
    assert get(http, "web-1")["output"].startswith("service:http: HTTP 500")
    # tcp by default
    tcp = {"check": {**FAST, "unhealthy_threshold": 1}}
    assert http.put("/api/v1/services/db/config", json=tcp).status_code == 200
    r = http.put(
        "/api/v1/instances/db-1", json=instance("db-1", "db", address="127.0.0.1", port=target.port)
    )
    wait_status(http, "db-1", "passing")


def test_deregister_critical_after(http: httpx.Client, target: HttpTarget) -> None:
    check = {"http": f"http://127.0.0.1:{target.port}/", **FAST, "unhealthy_threshold": 1}
    register(http, "web-1", [check | {"deregister_critical_after": "1s"}])
    wait_status(http, "web-1", "passing")
    target.code = 500
    wait_status(http, "web-1", "critical")
    wait_until(lambda: http.get("/api/v1/instances/web-1").status_code == 404, 15, "deregistration")


def test_check_shapes_are_validated(http: httpx.Client) -> None:
    def put(checks: list[dict[str, Any]]) -> httpx.Response:
        return http.put("/api/v1/instances/x", json=instance("x", checks=checks))

    for bad in (
        [{"interval": "1s"}],  # no kind
        [{"http": "http://a/", "tcp": "a:1"}],  # two kinds
        [{"http": "ftp://a/"}],
        [{"https": "http://a/"}],
        [{"tcp": "a"}],
        [{"tcp": "a:70000"}],
        [{"command": []}],
        [{"tcp": "a:1", "interval": "0s"}],
        [{"tcp": "a:1", "flap": {"changes": 1}}],
        [{"tcp": "a:1", "name": "node"}],
        [{"tcp": "a:1", "bogus": 1}],
    ):
        r = put(bad)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["message"]
    r = put([{"tcp": "a:1", "name": "x"}, {"tcp": "b:1", "name": "x"}])
    assert r.status_code == 409
    assert http.get("/api/v1/instances/x").status_code == 404  # nothing was stored
    # Unnamed checks are named by kind, numbered when a kind repeats. (A check the server
    # runs targets the instance's own address: here loopback, spelt two ways.)
    own = [{"tcp": "127.0.0.1:1"}, {"tcp": "localhost:2"}, {"http": "http://127.0.0.1:1/"}]
    r = http.put("/api/v1/instances/x", json=instance("x", address="127.0.0.1", checks=own))
    assert r.status_code == 200, r.text
    names = [c["name"] for c in http.get("/api/v1/instances/x").json()["checks"]]
    assert names == ["tcp", "tcp-2", "http"]


def test_checks_listing(http: httpx.Client, target: HttpTarget) -> None:
    check = {"http": f"http://127.0.0.1:{target.port}/", **FAST}
    register(http, "web-1", [check])
    wait_status(http, "web-1", "passing")
    rows = http.get("/api/v1/checks?service=web").json()
    assert len(rows) == 1
    row = rows[0]
    assert row["instance"] == "web-1"
    assert row["name"] == "http"
    assert row["runs_on"] == "server"
    assert row["status"] == "passing"
    assert row["last_run"]
    assert row["successes"] >= 1
    assert http.get("/api/v1/checks?service=nope").json() == []
    assert http.get("/api/v1/checks?bogus=1").status_code == 400


def test_ttl_check_beside_an_http_check(http: httpx.Client, target: HttpTarget) -> None:
    checks = [
        {"ttl": "1s", "deregister_critical_after": "30s", "name": "beat"},
        {"http": f"http://127.0.0.1:{target.port}/", **FAST},
    ]
    register(http, "web-1", checks)
    inst = get(http, "web-1")
    assert inst["ttl"] == "1s"
    assert inst["deregister_after"] == "30s"
    wait_status(http, "web-1", "passing")
    # No heartbeat: the TTL state makes it critical though its HTTP check passes, and
    # further HTTP results do not undo that.
    wait_status(http, "web-1", "critical")
    states = {h["name"]: h["status"] for h in get(http, "web-1")["health"]}
    assert states == {"beat": "critical", "http": "passing"}
    assert get(http, "web-1")["output"].startswith("beat: TTL expired")
    assert http.put("/api/v1/instances/web-1/heartbeat").status_code == 200
    assert status_of(http, "web-1") == "passing"


def test_only_an_agent_reports_health(http: httpx.Client, target: HttpTarget) -> None:
    register(http, "web-1", [{"http": f"http://127.0.0.1:{target.port}/", **FAST}])
    report = {"health": [{"name": "http", "kind": "http", "status": "passing"}]}
    r = http.put("/api/v1/instances/web-1/health", json=report)
    assert r.status_code == 409
    assert "checked by the server" in r.json()["message"]
    assert http.put("/api/v1/instances/nobody/health", json=report).status_code == 404


def test_command_checks_through_the_api_are_off_by_default(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    plain = start_server(name="plain")
    marker = tmp_path / "ran"
    body = instance("job-1", checks=[{"command": ["touch", str(marker)], "interval": "100ms"}])
    with httpx.Client(base_url=plain.url, timeout=10) as client:
        r = client.put("/api/v1/instances/job-1", json=body)
        assert r.status_code == 403
        assert "--enable-command-checks" in r.json()["message"]
        r = client.post("/api/v1/batch", json={"register": [body | {"id": "job-2"}]})
        assert r.status_code == 403
        assert client.get("/api/v1/instances").json() == []
        # An agent's own instance may carry one: its agent runs it, never the server.
        r = client.put("/api/v1/instances/job-3", json=body | {"id": "job-3", "agent": True})
        assert r.status_code == 200
        assert client.get("/api/v1/checks").json()[0]["runs_on"] == "agent"
    assert not marker.exists()
