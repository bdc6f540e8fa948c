"""The hot path (``api/hot.py``) answers exactly as the application would.

A request target with a percent-encoded letter means the same path, but the hot path
leaves it to the application's router: so each request below is sent both ways, and the
two answers must be the same, byte for byte (bar what moves by itself: the Date header,
write indexes, uptime). Plain reads, answered on the connection itself, are held to
what aiohttp sends for the same request with one more header field (which it takes),
over raw sockets, status line and header fields included."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

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


# --- plain reads, on raw sockets --------------------------------------------------------

PLAIN = "GET {target} HTTP/1.1\r\nHost: test\r\nUser-Agent: raw/1\r\n\r\n"
# The same request with one header field the plain path leaves to aiohttp.
NOT_PLAIN = "GET {target} HTTP/1.1\r\nHost: test\r\nUser-Agent: raw/1\r\nX-Other: 1\r\n\r\n"


class Raw:
    """One client connection, written and read by hand."""

    def __init__(self, url: str, rcvbuf: int = 0) -> None:
        parts = urlsplit(url)
        self.sock = socket.socket()
        self.sock.settimeout(10)
        if rcvbuf:  # (before connecting: the window is agreed then)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((parts.hostname, parts.port))
        self.buf = b""

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: str | bytes) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def response(self) -> bytes:
        """The next whole response (by its Content-Length), Date line taken out."""
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), f"closed before a response: {self.buf!r}"
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            assert self._fill(), "closed inside a body"
            rest = self.buf.partition(b"\r\n\r\n")[2]
        self.buf = rest[length:]
        kept = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"date:")]
        return b"\r\n".join(kept) + b"\r\n\r\n" + rest[:length]

    def closed(self) -> bool:
        """Whether the server closes the connection (nothing more arrives)."""
        return self.buf == b"" and not self._fill()


def ask(url: str, request: str) -> bytes:
    with Raw(url) as conn:
        conn.send(request)
        return conn.response()


def test_plain_reads_answer_byte_for_byte_as_aiohttp(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for i in range(3):
            body = instance(f"web-{i}", node=f"n{i % 2}", tags=["prod"], meta={"k": "é"})
            assert http.put(f"/api/v1/instances/web-{i}", json=body).status_code == 200
        targets = [
            "/api/v1/services/web", "/api/v1/services", "/api/v1/nodes", "/api/v1/instances",
            "/api/v1/services/nosuch", "/api/v1/services/web?tag=prod", "/api/v1/services/WEB",
            "/api/v1/services/a%2Fb", "/api/v1/services/web/", "/api/v1/nodes/n1", "/health",
        ]  # fmt: skip
        # As httpx and aiohttp's client ask: keep-alive named, compression offered.
        named = "Connection: keep-alive\r\nAccept-Encoding: gzip, deflate\r\n\r\n"
        for target in targets:
            plain = ask(server.url, PLAIN.format(target=target))
            assert plain == ask(server.url, NOT_PLAIN.format(target=target)), target
            assert plain == ask(server.url, PLAIN.format(target=target)[:-2] + named), target
        first = ask(server.url, PLAIN.format(target="/api/v1/services/web"))
        assert first.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b'"id":"web-2"' in first
        # A change shows at once, its revision in the header fields.
        assert http.put("/api/v1/instances/web-9", json=instance("web-9")).status_code == 200
        after = ask(server.url, PLAIN.format(target="/api/v1/services/web"))
        assert b'"id":"web-9"' in after
        assert after != first
        assert after == ask(server.url, NOT_PLAIN.format(target="/api/v1/services/web"))
        listing = ask(server.url, PLAIN.format(target="/api/v1/services"))
        assert b'"name":"web"' in listing


def test_a_connection_answers_in_order_across_the_hand_over(server: ServerProcess) -> None:
    read = PLAIN.format(target="/api/v1/services/web")
    with Raw(server.url) as conn:
        conn.send(read)
        assert conn.response().startswith(b"HTTP/1.1 200 OK\r\n")
        # Two requests in one write: aiohttp's from here on, answered in order.
        conn.send(read + PLAIN.format(target="/api/v1/services/nosuch"))
        one, two = conn.response(), conn.response()
        assert b"X-Waypost-Index" in one
        assert two.endswith(b"\r\n\r\n[]")
        body = json.dumps(instance("web-1")).encode()
        conn.send(
            # (a write names the server by an address or localhost: the DNS rebinding guard)
            b"PUT /api/v1/instances/web-1 HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
            b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        assert conn.response().startswith(b"HTTP/1.1 200 OK\r\n")
        conn.send(read)
        assert b'"id":"web-1"' in conn.response()
    # A request cut in two writes (read as one or two), on a fresh connection.
    with Raw(server.url) as conn:
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.send(read[:20])
        conn.send(read[20:])
        assert b'"id":"web-1"' in conn.response()
    # Asked to close, or over HTTP/1.0: answered, then closed.
    for request in [
        "GET /api/v1/services/web HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        "GET /api/v1/services/web HTTP/1.0\r\nHost: test\r\n\r\n",
    ]:
        with Raw(server.url) as conn:
            conn.send(request)
            assert b'"id":"web-1"' in conn.response()
            assert conn.closed()
    # What aiohttp refuses stays refused: no Host, two Hosts, a lower-case method.
    for request in [
        "GET /api/v1/services/web HTTP/1.1\r\n\r\n",
        "GET /api/v1/services/web HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "get /api/v1/services/web HTTP/1.1\r\nHost: test\r\n\r\n",
    ]:
        assert ask(server.url, request).split(b"\r\n")[0].endswith(b" 400 Bad Request"), request


def test_plain_reads_show_the_anonymous_token_only_what_it_may_read(
    start_server: Callable[..., ServerProcess],
) -> None:
    srv = start_server("--token", TOKEN, "--acl-default-policy", "deny")
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        assert http.put("/api/v1/instances/web-1", json=instance("web-1"), headers=AUTH).is_success
        assert b"web-1" in http.get("/api/v1/services/web", headers=AUTH).content
    target = "/api/v1/services/web"
    hidden = ask(srv.url, PLAIN.format(target=target))
    assert hidden == ask(srv.url, NOT_PLAIN.format(target=target))
    assert b"web-1" not in hidden
    with_token = f"GET {target} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    assert b'"id":"web-1"' in ask(srv.url, with_token)


def test_big_answers_and_a_client_that_does_not_read_get_every_byte_in_order(
    server: ServerProcess,
) -> None:
    """An answer over 256 KiB goes out as two buffers; a client that sends many requests
    before reading any fills the server's send buffer (the connection pauses, and hands
    over to aiohttp, which waits for it): every answer still arrives whole, in order."""
    regs = [instance(f"big-{i}", service="big", meta={"pad": "x" * 300}) for i in range(700)]
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.post("/api/v1/batch", json={"register": regs}).status_code == 200
    target = "/api/v1/services/big"
    expected = ask(server.url, NOT_PLAIN.format(target=target))
    assert len(expected) > 256 * 1024
    assert ask(server.url, PLAIN.format(target=target)) == expected
    # A small receive window: the first answer already fills what the kernel holds, the
    # rest waits in the server (which pauses writing) until this client reads.
    with Raw(server.url, rcvbuf=4096) as conn:
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.send(PLAIN.format(target=target))
        conn.buf = conn.sock.recv(1)  # the first answer is being written
        for _ in range(20):
            conn.send(PLAIN.format(target=target))
        for n in range(21):
            assert conn.response() == expected, n


def test_plain_reads_can_be_turned_off(start_server: Callable[..., ServerProcess]) -> None:
    """``--no-plain-reads`` (and ``WAYPOST_PLAIN_READS=false``): every connection is
    aiohttp's; the answers are the same."""
    for srv in [
        start_server("--no-plain-reads", name="flag"),
        start_server(env={"WAYPOST_PLAIN_READS": "false"}, name="env"),
    ]:
        with httpx.Client(base_url=srv.url, timeout=10) as http:
            assert http.put("/api/v1/instances/web-1", json=instance("web-1")).is_success
            assert str(http.get("/status").json()["config"]["plain_reads"]) == "False"
        target = "/api/v1/services/web"
        answer = ask(srv.url, PLAIN.format(target=target))
        assert b'"id":"web-1"' in answer
        assert answer == ask(srv.url, NOT_PLAIN.format(target=target))
