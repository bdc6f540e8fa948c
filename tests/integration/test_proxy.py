"""``waypost proxy`` as a real process in front of real backend HTTP servers registered in
a real registry: routing by Host, path, headers and subsets; forwarding headers and trace
context; streaming both ways; retries and ejection; JSON failures; live route and policy
changes; and routing on with the registry stopped, also after a restart."""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.conftest import ServerProcess, until
from waypost import AsyncClient, UpstreamFailed
from waypost.errors import from_dict
from waypost.testing import ProxyProcess

TRACEPARENT = re.compile(r"\A00-[0-9a-f]{32}-[0-9a-f]{16}-01\Z")


class Backends:
    """HTTP servers on loopback, each telling what it received: its name, the path, the
    headers and the body's length; ``mode[name]``: ``ok``, ``fail`` (503) or ``hang``."""

    def __init__(self) -> None:
        self.mode: dict[str, str] = {}
        self.hits: Counter[str] = Counter()
        self.ports: dict[str, int] = {}
        self._runners: list[web.AppRunner] = []

    async def start(self, *names: str) -> None:
        for name in names:
            self.mode[name] = "ok"

            async def handle(request: web.Request, name: str = name) -> web.StreamResponse:
                self.hits[name] += 1
                size = 0
                async for chunk in request.content.iter_any():
                    size += len(chunk)
                mode = self.mode[name]
                if mode == "fail":
                    return web.Response(status=503, text=f"{name} down")
                if mode == "hang":
                    await asyncio.sleep(2)  # far beyond the 300 ms timeout under test
                if request.path == "/big":  # 3 MiB, chunked
                    resp = web.StreamResponse(headers={"X-Backend": name})
                    await resp.prepare(request)
                    for _ in range(48):
                        await resp.write(b"x" * 65536)
                    await resp.write_eof()
                    return resp
                return web.json_response(
                    {
                        "backend": name,
                        "path": request.path_qs,
                        "headers": dict(request.headers),
                        "size": size,
                    },
                    headers={"Proxy-Authenticate": "Basic", "X-Backend": name},
                )

            app = web.Application(client_max_size=16 << 20)
            app.router.add_route("*", "/{tail:.*}", handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.ports[name] = runner.addresses[0][1]
            self._runners.append(runner)

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()


@asynccontextmanager
async def setup(
    server: ServerProcess, backends: dict[str, dict[str, Any]], *proxy_args: str
) -> AsyncIterator[tuple[Backends, AsyncClient, ProxyProcess, aiohttp.ClientSession]]:
    """Backends registered as instances (``{name: instance fields}``), a proxy, a
    client session to it."""
    b = Backends()
    await b.start(*backends)
    proxy = await asyncio.to_thread(lambda: ProxyProcess(server.url, *proxy_args).start())
    try:
        async with AsyncClient(server.url) as client, aiohttp.ClientSession() as http:
            for name, fields in backends.items():
                await client.register(id=name, address="127.0.0.1", port=b.ports[name], **fields)
            yield b, client, proxy, http
    finally:
        await asyncio.to_thread(proxy.stop)
        await b.stop()


async def get(
    http: aiohttp.ClientSession, proxy: ProxyProcess, path: str, host: str, **kw: Any
) -> tuple[int, Any]:
    headers = {"Host": host, **kw.pop("headers", {})}
    async with http.request(kw.pop("method", "GET"), proxy.url + path, headers=headers, **kw) as r:
        body = await r.read()
        ctype = r.headers.get("Content-Type", "")
        return r.status, json.loads(body) if ctype.startswith("application/json") else body


def run(coro: Callable[[], Any]) -> None:
    asyncio.run(coro())


def test_routes_by_host_with_forwarding_headers_and_trace_context(server: ServerProcess) -> None:
    async def go() -> None:
        shop = {"service": "shop"}
        async with setup(server, {"a": shop, "b": shop}) as (_b, _, proxy, http):
            seen = Counter()
            for _ in range(10):
                status, body = await get(http, proxy, "/items?page=2", "shop")
                assert status == 200
                seen[body["backend"]] += 1
                assert body["path"] == "/items?page=2"
                h = body["headers"]
                assert h["X-Forwarded-For"] == "127.0.0.1"
                assert h["X-Forwarded-Proto"] == "http"
                assert h["X-Forwarded-Host"] == "shop"
                assert h["Host"] == "shop"
                assert TRACEPARENT.match(h["traceparent"]), h["traceparent"]
            assert seen == {"a": 5, "b": 5}  # round robin by default
            trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            _, body = await get(
                http,
                proxy,
                "/",
                "shop:8080",
                headers={"traceparent": trace, "X-Forwarded-For": "10.1.2.3"},
            )
            assert body["headers"]["traceparent"] == trace
            assert body["headers"]["X-Forwarded-For"] == "10.1.2.3, 127.0.0.1"
            # Hop-by-hop headers go no further, in either direction (raw bytes, so no
            # client library adds or removes any).
            raw = await asyncio.to_thread(
                raw_request,
                proxy.port,
                b"GET /hop HTTP/1.1\r\nHost: shop\r\nConnection: keep-alive, X-Private\r\n"
                b"X-Private: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
                b"Proxy-Authorization: Basic eA==\r\nX-Kept: yes\r\n\r\n",
            )
            head, _, payload = raw.partition(b"\r\n\r\n")
            sent = json.loads(payload)["headers"]
            assert sent["X-Kept"] == "yes"
            for hop in ("X-Private", "Keep-Alive", "TE", "Proxy-Authorization"):
                assert hop not in sent, (hop, sent)
            assert b"X-Backend:" in head
            assert b"Proxy-Authenticate" not in head

    run(go)


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head = buf.split(b"\r\n\r\n", 1)[0]
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
        while len(buf) < len(head) + 4 + length:
            buf += s.recv(65536)
        return buf


def test_routes_by_path_header_and_subset_and_follows_changes_live(
    server: ServerProcess,
) -> None:
    async def go() -> None:
        instances = {
            "stable": {"service": "shop", "version": "1.0.0"},
            "beta": {"service": "shop", "version": "2.0.0", "meta": {"track": "beta"}},
            "admin": {"service": "shop-admin"},
            "api": {"service": "api-svc"},
        }
        async with setup(server, instances) as (_b, client, proxy, http):
            await client.set_route(
                {
                    "name": "admin",
                    "service": "shop-admin",
                    "match": {"hosts": ["shop"], "path_prefix": "/admin/"},
                    "strip_prefix": True,
                    "priority": 10,
                }
            )
            await client.set_route(
                {
                    "name": "beta-users",
                    "service": "shop",
                    "match": {
                        "hosts": ["*.example.com", "shop"],
                        "headers_regex": {"x-user": r".*@beta\.example"},
                    },
                    "subset": {"track": "beta"},
                    "priority": 20,
                }
            )
            await client.set_route(
                {"name": "api", "service": "api-svc", "match": {"path_prefix": "/api/"}}
            )
            status, body = await get(http, proxy, "/admin/users?x=1", "shop")
            assert (status, body["backend"], body["path"]) == (200, "admin", "/users?x=1")
            for _ in range(6):
                _, body = await get(
                    http, proxy, "/", "shop", headers={"X-User": "ann@beta.example"}
                )
                assert body["backend"] == "beta"
            _, body = await get(
                http, proxy, "/", "www.example.com", headers={"X-User": "ann@beta.example"}
            )
            assert body["backend"] == "beta"
            others = {
                (await get(http, proxy, "/", "shop", headers={"X-User": "bob@x.org"}))[1]["backend"]
                for _ in range(6)
            }
            assert others == {"stable", "beta"}
            _, body = await get(http, proxy, "/api/v1/things", "anything.local")
            assert body["backend"] == "api"  # a route without hosts: any Host

            # Changed through the API, applied by the running proxy.
            await client.delete_route("admin")

            async def admin_gone() -> bool:
                _, body = await get(http, proxy, "/admin/users", "shop")
                return body["backend"] != "admin"

            await until(admin_gone, "the deleted route to stop routing")
            await client.set_service_config("shop", {"split": [{"version": "^2", "weight": 100}]})

            async def all_to_v2() -> bool:
                got = {(await get(http, proxy, "/", "shop"))[1]["backend"] for _ in range(6)}
                return got == {"beta"}

            await until(all_to_v2, "the new split to send everything to 2.x")

    run(go)


def test_failures_answer_json_with_a_reason(server: ServerProcess) -> None:
    async def go() -> None:
        async with setup(server, {"slow": {"service": "slow"}}) as (b, client, proxy, http):
            status, body = await get(http, proxy, "/", "nowhere")
            assert status == 404, body
            assert body["reason"] == "no_route"
            status, body = await get(http, proxy, "/", "bad host!")
            assert status == 404
            assert body["reason"] == "no_route"
            # A service with a config but no instance: nothing to send to.
            await client.set_service_config("ghost", {"timeout": "1s"})
            status, body = await get(http, proxy, "/", "ghost")
            assert status == 503, body
            assert body["reason"] == "no_endpoint"
            # An endpoint that refuses connections.
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                closed_port = s.getsockname()[1]
            await client.register(id="gone", service="gone", address="127.0.0.1", port=closed_port)
            status, body = await get(http, proxy, "/", "gone")
            assert status == 502, body
            assert body["reason"] == "upstream_failed"
            # The API's error shape (the SDK reads it back as its class) plus the reason.
            assert "gone" in body["message"]
            assert body["error"] == "upstream_failed"
            assert isinstance(from_dict(body, http_status=status), UpstreamFailed)
            # An endpoint that does not answer within the service's timeout.
            await client.set_service_config("slow", {"timeout": "300ms"})
            b.mode["slow"] = "hang"
            status, body = await get(http, proxy, "/", "slow")
            assert status == 504, body
            assert body["reason"] == "upstream_timeout"

    run(go)


def test_retries_elsewhere_and_ejects_a_failing_endpoint(server: ServerProcess) -> None:
    async def go() -> None:
        api = {"service": "api"}
        backends = {"good": api, "bad": api}
        async with setup(server, backends, "--admin", "127.0.0.1:0") as (b, _, proxy, http):
            b.mode["bad"] = "fail"
            for _ in range(30):
                status, body = await get(http, proxy, "/", "api")
                assert status == 200
                assert body["backend"] == "good"
            # Ejected after 5 consecutive failures: no more traffic while open.
            assert b.hits["bad"] == 5, b.hits
            # What the proxy saw, per endpoint, on its admin listener.
            async with http.get(proxy.admin + "/status") as r:
                status_doc = await r.json()
            eps = {e["id"]: e for e in status_doc["services"]["api"]["endpoints"]}
            assert eps["bad"]["breaker"] == "open"
            assert eps["bad"]["errors"] == 5
            assert eps["good"]["requests"] == 30
            assert eps["good"]["errors"] == 0
            # A POST is not retried: it is not idempotent. With "bad" ejected, it only
            # reaches "good".
            status, _ = await get(http, proxy, "/", "api", method="POST", data=b"x")
            assert status == 200

    run(go)


def test_streams_large_bodies_both_ways(server: ServerProcess) -> None:
    async def go() -> None:
        async with setup(server, {"s": {"service": "files"}}) as (_, _, proxy, http):

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(40):
                    yield b"y" * 65536

            status, body = await get(http, proxy, "/upload", "files", method="POST", data=chunks())
            assert status == 200
            assert body["size"] == 40 * 65536
            big = b"z" * (2 << 20)  # above the proxy's buffer: streamed with its length
            status, body = await get(
                http, proxy, "/upload", "files", method="PUT", data=io.BytesIO(big)
            )
            assert status == 200
            assert body["size"] == len(big)
            async with http.get(proxy.url + "/big", headers={"Host": "files"}) as r:
                assert r.status == 200
                assert r.headers["X-Backend"] == "s"
                got = 0
                async for chunk in r.content.iter_any():
                    got += len(chunk)
            assert got == 48 * 65536

    run(go)


def test_keeps_routing_with_the_registry_stopped_and_after_a_restart(
    server: ServerProcess, tmp_path: Path
) -> None:
    snapshot = tmp_path / "proxy-snapshot.json"

    async def go() -> None:
        web_ = {"service": "web"}
        async with setup(server, {"w1": web_, "w2": web_}, "--snapshot", str(snapshot)) as (
            _,
            _,
            proxy,
            http,
        ):
            assert (await get(http, proxy, "/", "web"))[0] == 200

            def saved() -> bool:
                return snapshot.exists() and "w2" in snapshot.read_text()

            await until(saved, "the proxy's snapshot to hold web")
            await asyncio.to_thread(server.stop)
            for _ in range(6):
                status, body = await get(http, proxy, "/", "web")
                assert status == 200
                assert body["backend"] in ("w1", "w2")
            await asyncio.to_thread(proxy.restart)  # the registry is still down
            got = {(await get(http, proxy, "/", "web"))[1]["backend"] for _ in range(6)}
            assert got == {"w1", "w2"}

    run(go)


def test_bad_proxy_flags_and_a_taken_port_are_one_line_errors(server: ServerProcess) -> None:
    from tests.integration.test_cli import cli

    for args, says in [
        (("--listen", "nowhere"), "--listen: 'nowhere' is not HOST:PORT"),
        (("--admin", "1.2.3.4"), "--admin: '1.2.3.4' is not HOST:PORT"),
        (("--upstream-timeout", "soon"), "--upstream-timeout"),
    ]:
        done = cli("proxy", "--server", server.url, *args)
        assert done.returncode != 0
        assert says in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = cli("proxy", "--server", server.url, "--listen", f"127.0.0.1:{port}")
    assert done.returncode != 0
    assert "cannot listen" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_expect_100_continue_is_answered_by_the_proxy(server: ServerProcess) -> None:
    def exchange(port: int) -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(
                b"PUT /data HTTP/1.1\r\nHost: store\r\nContent-Length: 5\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            interim = b""
            while b"\r\n\r\n" not in interim:  # the client waits for it before the body
                interim += s.recv(4096)
            s.sendall(b"hello")
            rest = b""
            while b"}" not in rest:
                rest += s.recv(65536)
            return interim, rest

    async def go() -> None:
        async with setup(server, {"st": {"service": "store"}}) as (_b, _, proxy, _h):
            interim, rest = await asyncio.to_thread(exchange, proxy.port)
            assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
            assert body["size"] == 5
            assert "Expect" not in body["headers"]

    run(go)


def test_ejection_never_exceeds_the_max_percent(server: ServerProcess) -> None:
    async def go() -> None:
        api = {"service": "api"}
        fleet = {"ok": api, "f1": api, "f2": api, "f3": api}
        async with setup(server, fleet, "--admin", "127.0.0.1:0") as (b, _, proxy, http):
            for name in ("f1", "f2", "f3"):
                b.mode[name] = "fail"
            for _ in range(80):
                await get(http, proxy, "/", "api")
            async with http.get(proxy.admin + "/status") as r:
                eps = (await r.json())["services"]["api"]["endpoints"]
            states = {e["id"]: e["breaker"] for e in eps}
            open_now = [k for k, v in states.items() if v != "closed"]
            # Three of four fail, but at most half of the endpoints are ever out.
            assert len(open_now) == 2, states
            assert states["ok"] == "closed"

    run(go)


def test_a_header_that_is_not_latin_1_gets_a_400_and_leaves_nothing_counted(
    server: ServerProcess,
) -> None:
    """Finding 5 of the security review: ``X-Name: €`` (UTF-8 on the wire) made the proxy
    answer 500 and left the endpoint's in-flight count (and a half-open breaker's probe)
    taken for good; four such requests kept an endpoint out of traffic."""

    async def go() -> None:
        async with setup(server, {"solo": {"service": "solo"}}, "--admin", "127.0.0.1:0") as (
            _,
            _client,
            proxy,
            http,
        ):
            assert (await get(http, proxy, "/", "solo"))[0] == 200
            host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
            for _ in range(4):
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(
                    b"GET / HTTP/1.1\r\nHost: solo\r\nX-Name: \xe2\x82\xac\r\n"
                    b"Connection: close\r\n\r\n"
                )
                head = await reader.read()
                writer.close()
                assert head.startswith(b"HTTP/1.1 400"), head[:200]
                assert b'"reason":"bad_header"' in head
            async with http.get(proxy.admin + "/status") as r:
                endpoints = (await r.json())["services"]["solo"]["endpoints"]
            assert [e["active"] for e in endpoints] == [0]
            for _ in range(5):  # and the endpoint still takes traffic
                assert (await get(http, proxy, "/", "solo"))[0] == 200

    run(go)


def test_a_client_cannot_strip_host_or_forge_its_address_upstream(server: ServerProcess) -> None:
    """Finding 18 of the security review: ``Connection: Host, Authorization`` made the
    proxy send requests on without a Host; X-Real-IP and Forwarded went through as the
    client wrote them."""

    async def go() -> None:
        async with setup(server, {"a": {"service": "shop"}}) as (_b, _, proxy, _http):
            raw = await asyncio.to_thread(
                raw_request,
                proxy.port,
                b"GET /who HTTP/1.1\r\nHost: shop\r\nConnection: Host, Authorization, Cookie\r\n"
                b"Authorization: Bearer t\r\nCookie: c=1\r\nX-Real-IP: 6.6.6.6\r\n"
                b"Forwarded: for=6.6.6.6\r\n\r\n",
            )
            sent = json.loads(raw.partition(b"\r\n\r\n")[2])["headers"]
            assert sent["Host"] == "shop"
            assert sent["Authorization"] == "Bearer t"
            assert sent["Cookie"] == "c=1"
            assert sent["X-Real-IP"] == "127.0.0.1"
            assert sent["Forwarded"] == 'for=6.6.6.6, for=127.0.0.1;proto=http;host="shop"'

    run(go)


def test_no_host_routing_serves_only_routes(server: ServerProcess) -> None:
    """Finding 18: the proxy had no switch to turn off ``Host: <service>`` routing, so
    any service was reachable through it by naming it."""

    async def go() -> None:
        shop = {"service": "shop"}
        async with setup(server, {"a": shop}, "--no-host-routing") as (_b, client, proxy, http):
            status, body = await get(http, proxy, "/", "shop")
            assert status == 404
            assert body["reason"] == "no_route"
            await client.set_route(
                {"name": "shop", "service": "shop", "match": {"hosts": ["shop.example"]}}
            )
            await until(
                lambda: _status(http, proxy, "shop.example"), "the route served", timeout_s=10
            )

    run(go)


async def _status(http: aiohttp.ClientSession, proxy: ProxyProcess, host: str) -> bool:
    return (await get(http, proxy, "/", host))[0] == 200
