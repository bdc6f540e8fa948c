"""The hot path (``api/hot.py``) answers exactly as the application would.

A request target with a percent-encoded letter means the same path, but the hot path
leaves it to the application's router: so each request below is sent both ways, and the
two answers must be the same, byte for byte (bar what moves by itself: the Date header,
write indexes, uptime)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import ServerProcess, instance

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SAME_HEADERS = ("content-type", "x-waypost-index", "x-waypost-revision", "allow")


@pytest.fixture
def tokened(start_server) -> ServerProcess:  # type: ignore[no-untyped-def]
    return start_server("--token", TOKEN)


def routed(target: str) -> str:
    """The same target, percent-encoding the first letter after the last ``/`` of the path
    (the application decodes it; the hot path declines it)."""
    path, sep, query = target.partition("?")
    cut = path.rindex("/") + 1
    return f"{path[:cut]}%{ord(path[cut]):02X}{path[cut + 1 :]}{sep}{query}"


def both(
    http: httpx.Client, method: str, target: str, body: object = None, **kw: object
) -> tuple[httpx.Response, httpx.Response]:
    content = json.dumps(body).encode() if body is not None else None
    hot = http.request(method, target, content=content, **kw)  # type: ignore[arg-type]
    app = http.request(method, routed(target), content=content, **kw)  # type: ignore[arg-type]
    return hot, app


def assert_same(hot: httpx.Response, app: httpx.Response) -> None:
    assert (hot.status_code, hot.content) == (app.status_code, app.content), (
        hot.request.url,
        hot.text,
        app.text,
    )
    for name in SAME_HEADERS:
        assert hot.headers.get(name) == app.headers.get(name), name


def test_reads_and_their_errors_are_the_same_on_both_paths(tokened: ServerProcess) -> None:
    with httpx.Client(base_url=tokened.url, timeout=10) as http:
        for i in range(3):
            body = instance(f"web-{i}", tags=["prod"] if i else ["dev"], version=f"1.{i}.0")
            assert (
                http.put(f"/api/v1/instances/web-{i}", json=body, headers=AUTH).status_code == 200
            )
        index = http.get("/api/v1/services/web").headers["x-waypost-index"]
        for target in [
            "/api/v1/services/web",
            "/api/v1/services/web?tag=prod",
            "/api/v1/services/web?version=%3E%3D1.1",
            f"/api/v1/services/web?index={index}&wait=10ms",
            "/api/v1/services/web?index=0",
            "/api/v1/services/nosuch",
            "/api/v1/services/web?bogus=1",
            "/api/v1/services/web?index=x",
            "/api/v1/services/web?service=other",
            "/api/v1/instances/web-1",
            "/api/v1/instances/nosuch",
            "/api/v1/instances?service=web&status=passing",
            "/api/v1/instances?status=nonsense",
            "/api/v1/services",
            f"/api/v1/services?index={index}&wait=10ms",
            "/api/v1/services?tag=x",
            "/api/v1/nodes",
            "/api/v1/nodes?x=1",
            "/health",
        ]:
            assert_same(*both(http, "GET", target))
        hot, app = both(http, "GET", "/status")
        assert hot.status_code == app.status_code == 200
        assert hot.json().keys() == app.json().keys()


def test_writes_and_their_errors_are_the_same_on_both_paths(tokened: ServerProcess) -> None:
    with httpx.Client(base_url=tokened.url, timeout=10) as http:
        good = instance("api-1", service="api")
        # Refused: no token, a wrong one, bad bodies, unknown entries, bad lease ids.
        for method, target, body, headers in [
            ("PUT", "/api/v1/instances/api-1", good, {}),
            ("PUT", "/api/v1/instances/api-1", good, {"Authorization": "Bearer nope"}),
            ("PUT", "/api/v1/instances/api-1", {"service": "api"}, AUTH),
            ("PUT", "/api/v1/instances/api-1", instance("api-2", service="api"), AUTH),
            ("PUT", "/api/v1/instances/api-1", None, AUTH),
            ("PUT", "/api/v1/instances/nosuch/heartbeat", None, AUTH),
            ("PUT", "/api/v1/instances/nosuch/status", {"status": "passing"}, AUTH),
            ("PUT", "/api/v1/instances/nosuch/status", {"status": "great"}, AUTH),
            ("PUT", "/api/v1/instances/nosuch/health", {"health": []}, AUTH),
            ("DELETE", "/api/v1/instances/nosuch", None, AUTH),
            ("DELETE", "/api/v1/instances/nosuch", None, {}),
            ("PUT", "/api/v1/leases/12345/keepalive", None, AUTH),
            ("PUT", "/api/v1/leases/abc/keepalive", None, AUTH),
            ("PUT", "/api/v1/leases/0/keepalive", None, AUTH),
        ]:
            hot, app = both(http, method, target, body, headers=headers)
            assert hot.status_code >= 400, (target, hot.text)
            assert_same(hot, app)
        # Accepted: both paths write, each at a revision of its own.
        for method, target, body in [
            ("PUT", "/api/v1/instances/api-1", good),
            ("PUT", "/api/v1/instances/api-1/status", {"status": "warning", "output": "slow"}),
            ("DELETE", "/api/v1/instances/api-1", None),
        ]:
            if method == "DELETE":
                hot = http.request(method, target, headers=AUTH)
                http.put("/api/v1/instances/api-1", json=good, headers=AUTH)
                app = http.request(method, routed(target), headers=AUTH)
            else:
                hot, app = both(http, method, target, body, headers=AUTH)
            assert hot.status_code == app.status_code == 200, (target, hot.text, app.text)
            assert hot.json()["id"] == app.json()["id"] == "api-1"
            assert app.json()["index"] >= hot.json()["index"]
        assert http.get("/api/v1/instances/api-1").status_code == 404
