"""The HTTP contract against a real ``waypost server`` process."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import httpx
import pytest
from openapi_spec_validator import validate

from tests.conftest import ServerProcess, instance, wait_until


def test_register_with_curl_then_read_it_back(server: ServerProcess, http: httpx.Client) -> None:
    body = json.dumps(instance("web-1", version="1.2.3", tags=["prod"]))
    out = subprocess.run(
        ["curl", "-sS", "-X", "PUT", f"{server.url}/api/v1/instances/web-1", "-d", body],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == {"id": "web-1", "index": 1}
    got = http.get("/api/v1/instances/web-1").json()
    assert (got["service"], got["version"], got["node"], got["status"]) == (
        "web",
        "1.2.3",
        "test-node",
        "passing",
    )


def test_the_body_may_leave_out_the_id_of_the_path(http: httpx.Client) -> None:
    r = http.put("/api/v1/instances/api-1", json={"service": "api", "address": "::1", "port": 9})
    assert r.status_code == 200
    assert http.get("/api/v1/instances/api-1").json()["address"] == "::1"


def test_replacing_keeps_registered_at_and_moves_updated_at(http: httpx.Client) -> None:
    http.put("/api/v1/instances/w", json=instance("w"))
    first = http.get("/api/v1/instances/w").json()
    http.put("/api/v1/instances/w", json=instance("w", port=9090))
    second = http.get("/api/v1/instances/w").json()
    assert second["registered_at"] == first["registered_at"]
    assert second["updated_at"] >= first["updated_at"]
    assert second["port"] == 9090


def seed(http: httpx.Client) -> None:
    rows = [
        instance("web-1", version="1.2.0", tags=["prod"], meta={"zone": "a"}, node="n1"),
        instance("web-2", version="1.9.1", tags=["prod", "eu"], meta={"zone": "b"}, node="n2"),
        instance("web-3", version="2.1.0", tags=["canary"], node="n1", status="warning"),
        instance("db-1", "db", version="15.0.0", tags=["prod"], node="n2", kind="service"),
        instance("mesh-1", "mesh", kind="network", node="n3"),
    ]
    r = http.post("/api/v1/batch", json={"register": rows})
    assert r.status_code == 200, r.text
    http.put("/api/v1/instances/db-1/status", json={"status": "critical", "output": "down"})


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/v1/instances", ["db-1", "mesh-1", "web-1", "web-2", "web-3"]),
        ("/api/v1/instances?service=web", ["web-1", "web-2", "web-3"]),
        ("/api/v1/services/web", ["web-1", "web-2", "web-3"]),
        ("/api/v1/services/web?version=>=1.2,<2", ["web-1", "web-2"]),
        ("/api/v1/services/web?version=^2", ["web-3"]),
        ("/api/v1/instances?tag=prod", ["db-1", "web-1", "web-2"]),
        ("/api/v1/instances?tag=prod&tag=eu", ["web-2"]),
        ("/api/v1/instances?any_tag=eu&any_tag=canary", ["web-2", "web-3"]),
        ("/api/v1/instances?status=passing", ["mesh-1", "web-1", "web-2"]),
        ("/api/v1/instances?status=healthy", ["mesh-1", "web-1", "web-2"]),
        ("/api/v1/instances?status=degraded", ["web-3"]),
        ("/api/v1/instances?status=unhealthy", ["db-1"]),
        ("/api/v1/instances?node=n1", ["web-1", "web-3"]),
        ("/api/v1/instances?kind=network", ["mesh-1"]),
        ("/api/v1/instances?meta.zone=b", ["web-2"]),
        ("/api/v1/services/web?tag=prod&meta.zone=a&node=n1&version=1.2.0", ["web-1"]),
        ("/api/v1/services/nothing", []),
    ],
)
def test_every_filter_returns_exactly_the_matching_instances(
    http: httpx.Client, path: str, expected: list[str]
) -> None:
    seed(http)
    r = http.get(path)
    assert r.status_code == 200, r.text
    assert [i["id"] for i in r.json()] == expected
    assert int(r.headers["X-Waypost-Index"]) >= 1


def test_services_and_nodes_summaries(http: httpx.Client) -> None:
    seed(http)
    services = {s["name"]: s for s in http.get("/api/v1/services").json()}
    assert (
        services["web"]["instances"],
        services["web"]["passing"],
        services["web"]["warning"],
    ) == (3, 2, 1)
    assert services["db"]["critical"] == 1
    assert services["web"]["versions"] == ["1.2.0", "1.9.1", "2.1.0"]
    nodes = {n["id"]: n["instances"] for n in http.get("/api/v1/nodes").json()}
    assert nodes == {"n1": 2, "n2": 2, "n3": 1}


def test_status_maintenance_and_delete(http: httpx.Client) -> None:
    http.put("/api/v1/instances/w", json=instance("w"))
    r = http.put("/api/v1/instances/w/maintenance", json={"enable": True, "reason": "upgrade"})
    assert r.status_code == 200
    assert [i["id"] for i in http.get("/api/v1/instances?status=critical").json()] == ["w"]
    got = http.get("/api/v1/instances/w").json()
    assert (got["maintenance"], got["maintenance_reason"]) == (True, "upgrade")
    http.put("/api/v1/instances/w/maintenance", json={"enable": False})
    assert [i["id"] for i in http.get("/api/v1/instances?status=passing").json()] == ["w"]
    assert http.delete("/api/v1/instances/w").status_code == 200
    r = http.get("/api/v1/instances/w")
    assert r.status_code == 404
    assert "not registered" in r.json()["message"]
    assert http.delete("/api/v1/instances/w").status_code == 404


def test_a_batch_is_all_or_nothing(http: httpx.Client) -> None:
    http.put("/api/v1/instances/keep", json=instance("keep"))
    r = http.post(
        "/api/v1/batch", json={"register": [instance("new-1")], "deregister": ["keep", "missing"]}
    )
    assert r.status_code == 404
    ids = [i["id"] for i in http.get("/api/v1/instances").json()]
    assert ids == ["keep"]


BAD = [
    ("bad name", {"service": "web_app"}, "service"),
    ("port 0", {"port": 0}, "port"),
    ("bad semver", {"version": "1.2"}, "version"),
    ("unknown status", {"status": "sideways"}, "status"),
    ("bad address", {"address": "999.1.1.1"}, "address"),
    ("too many tags", {"tags": [f"t{i}" for i in range(65)]}, "tags"),
    ("unknown field", {"colour": "red"}, "colour"),
]


@pytest.mark.parametrize(("what", "over", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_4xx_naming_it_and_changes_nothing(
    http: httpx.Client, what: str, over: dict[str, object], field: str
) -> None:
    http.put("/api/v1/instances/web-1", json=instance("web-1"))
    before = http.get("/api/v1/instances").content
    r = http.put("/api/v1/instances/web-1", json={**instance("web-1"), **over})
    assert r.status_code == 400
    err = r.json()
    assert (err["error"], err["field"]) == ("invalid_input", field)
    assert field in err["message"]
    assert http.get("/api/v1/instances").content == before


@pytest.mark.parametrize(
    ("method", "path", "content", "status", "word"),
    [
        ("PUT", "/api/v1/instances/w", b'{"service": "web",', 400, "malformed JSON"),
        ("PUT", "/api/v1/instances/w", b"", 400, "empty"),
        ("PUT", "/api/v1/instances/w", b"[1,2]", 400, "object"),
        ("PUT", "/api/v1/instances/w", b"x" * (2 * 1024 * 1024), 413, "limit"),
        ("POST", "/api/v1/batch", b"x" * (2 * 1024 * 1024), 413, "limit"),
        ("PUT", "/api/v1/instances/w/status", b'{"status": "sideways"}', 400, "sideways"),
        ("PUT", "/api/v1/instances/other", json.dumps(instance("w")).encode(), 409, "path"),
        (
            "PUT",
            "/api/v1/instances/bad_id",
            b'{"service":"web","address":"10.0.0.1","port":80}',
            400,
            "DNS-safe",
        ),
        ("GET", "/api/v1/instances?tags=x", b"", 400, "unknown query parameter"),
        ("GET", "/api/v1/instances?index=abc", b"", 400, "whole number"),
        ("GET", "/api/v1/nope", b"", 404, "no such endpoint"),
        ("PATCH", "/api/v1/instances/w", b"{}", 405, "not allowed"),
    ],
)
def test_malformed_requests_get_clear_json_errors(
    http: httpx.Client, method: str, path: str, content: bytes, status: int, word: str
) -> None:
    http.put("/api/v1/instances/w", json=instance("w"))
    before = http.get("/api/v1/instances").content
    r = http.request(method, path, content=content)
    assert r.status_code == status, r.text
    assert word in r.json()["message"]
    assert http.get("/api/v1/instances").content == before


def test_writes_need_the_token_when_one_is_set(start_server: Callable[..., ServerProcess]) -> None:
    srv = start_server("--token", "s3cret")
    with httpx.Client(base_url=srv.url) as c:
        r = c.put("/api/v1/instances/w", json=instance("w"))
        assert r.status_code == 401
        assert r.json()["error"] == "unauthorized"
        r = c.put(
            "/api/v1/instances/w", json=instance("w"), headers={"Authorization": "Bearer wrong"}
        )
        assert r.status_code == 401
        assert c.get("/api/v1/instances").json() == []  # reads stay open
        status = c.get("/status")
        assert status.json()["config"]["token"] == "********"
        assert "s3cret" not in status.text
        r = c.put(
            "/api/v1/instances/w", json=instance("w"), headers={"Authorization": "Bearer s3cret"}
        )
        assert r.status_code == 200


def test_health_status_and_openapi(server: ServerProcess, http: httpx.Client) -> None:
    assert http.get("/health").status_code == 200
    http.put("/api/v1/instances/w", json=instance("w"))
    st = http.get("/status").json()
    assert (st["store"], st["revision"], st["instances"], st["services"]) == ("sqlite", 1, 1, 1)
    spec = http.get("/openapi.json").json()
    validate(spec)
    assert "/api/v1/instances/{id}" in spec["paths"]
    assert spec["components"]["schemas"]["Instance"]["properties"]["port"]["maximum"] == 65535


def test_health_is_503_when_the_store_fails(server: ServerProcess, http: httpx.Client) -> None:
    db = server.data_dir / "waypost.db"
    assert db.exists()
    db.unlink()
    r = http.get("/health")
    assert r.status_code == 503
    assert "disappeared" in r.json()["message"]


def test_ttl_instances_go_critical_then_are_deregistered(http: httpx.Client) -> None:
    http.put("/api/v1/instances/t", json=instance("t", ttl="300ms", deregister_after="400ms"))
    assert http.put("/api/v1/instances/t/heartbeat").status_code == 200
    got = wait_until(
        lambda: (i := http.get("/api/v1/instances/t").json())["status"] == "critical" and i,
        what="TTL expiry",
    )
    assert "TTL expired" in got["output"]
    assert http.put("/api/v1/instances/t/heartbeat").status_code == 200
    assert http.get("/api/v1/instances/t").json()["status"] == "passing"
    wait_until(lambda: http.get("/api/v1/instances/t").status_code == 404, what="deregistration")


def test_heartbeats_keep_a_ttl_instance_passing(http: httpx.Client) -> None:
    import time

    http.put("/api/v1/instances/t", json=instance("t", ttl="1s"))
    registered = time.monotonic()

    def beat() -> bool:  # a heartbeat every 0.1 s, well inside the TTL, for two TTLs
        assert http.put("/api/v1/instances/t/heartbeat").status_code == 200
        assert http.get("/api/v1/instances/t").json()["status"] == "passing"
        return time.monotonic() - registered > 2.0

    wait_until(beat, 10, "two TTLs of heartbeats", interval_s=0.1)


def test_heartbeat_without_ttl_is_refused(http: httpx.Client) -> None:
    http.put("/api/v1/instances/w", json=instance("w"))
    r = http.put("/api/v1/instances/w/heartbeat")
    assert r.status_code == 409
    assert "no ttl" in r.json()["message"]
    assert http.put("/api/v1/instances/none/heartbeat").status_code == 404
