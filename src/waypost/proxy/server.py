"""The reverse proxy: each request is routed to a service, sent to one of its endpoints with
the service's policies (balancer, breakers, retries, timeouts, split), and its answer
streamed back.

Routing: the registry's routes first (Host, path prefix, method, headers; first match
wins); with none matching, a Host that is a service's name (``Host: user-api``) goes to
that service; anything else is 404. Endpoints and policies come from the same watch-fed
cache as the SDK's (``AsyncServiceCache``), so route and policy changes apply to the next
request, and with the registry down the proxy keeps routing to the endpoints it knew
(or, restarted, to those of its snapshot).

On the wire: request and response bodies up to ``BUFFER_MAX`` are read whole (such a
request may be retried on another endpoint); larger or chunked ones are streamed both ways
and not retried. Hop-by-hop headers (RFC 9110 section 7.6.1, and any the Connection
header names) are dropped both ways; X-Forwarded-For, -Proto and -Host are set; a valid
W3C ``traceparent`` is passed on, and one is created when absent. Upstream connections are
kept alive per endpoint. Failures answer JSON ``{"error", "message", "field", "reason"}``
(the API's error shape plus the proxy's reason): 404 ``no_route``,
503 ``no_endpoint``/``overloaded``/``registry_unreachable``, 502 ``upstream_failed``, 504
``upstream_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
import time
from typing import Any

import msgspec
from aiohttp import HttpVersion11, web
from multidict import CIMultiDict

from waypost.client._async import AsyncClient
from waypost.client.cache import AsyncServiceCache
from waypost.durations import parse_duration
from waypost.errors import Unavailable, WaypostError, for_status
from waypost.model import is_label
from waypost.tls import client_context, server_context
from waypost.traffic.exchange import Attempt, Exchange, Policies, endpoint_stats, prune
from waypost.traffic.outlier import Overloaded
from waypost.traffic.routes import host_of, rewrite

from .upstream import UpstreamError, UpstreamPool, UpstreamResponse

log = logging.getLogger("waypost.proxy")

BUFFER_MAX = 1 << 20
UNKNOWN_HOST_S = 5.0  # a Host that names no service is not looked up again this long
MAX_UNKNOWN_HOSTS = 4096
DEFAULT_UPSTREAM_TIMEOUT_S = 15.0
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Request headers the proxy sets itself (X-Real-IP: the peer, whatever the client said).
_SET_BY_US = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-real-ip", "content-length",
     "expect", "forwarded"}
)  # fmt: skip
# Headers meant for every recipient: a client's Connection header cannot make the proxy
# drop them (``Connection: Host, Authorization`` once sent requests on without a Host).
END_TO_END = frozenset(
    {"host", "authorization", "cookie", "content-type", "content-encoding", "traceparent"}
)
_TRACEPARENT = re.compile(
    r"\A[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}\Z"
)


class ProxySettings(msgspec.Struct, kw_only=True, frozen=True):
    """What ``waypost proxy`` runs with."""

    servers: list[str]
    listen: str = "127.0.0.1:8080"
    token: str = ""
    zone: str = ""
    snapshot: str = ""
    upstream_timeout: str = "15s"
    admin: str = ""  # HOST:PORT of /status and /health ("" for none)
    join: list[str] = msgspec.field(default_factory=list)  # node discovery sources
    trust_keys: list[str] = msgspec.field(default_factory=list)
    # TLS on the listener (and mutual TLS with tls_verify_clients); the same certificate
    # is presented to upstreams and registry servers that ask for one. Upstreams whose
    # meta says ``scheme: https`` are dialed over TLS, trusting upstream_tls_ca (or the
    # system's store); registry servers over https:// trust tls_ca.
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    tls_verify_clients: bool = False
    upstream_tls_ca: str = ""
    # A Host that names a service reaches it without a route (off: routes only).
    host_routing: bool = True


def _problem(status: int, reason: str, message: str) -> web.Response:
    """An error in the API's shape (``{"error": code, "message", "field"}``, so the SDK's
    ``errors.from_dict`` reads it), with the proxy's ``reason`` beside it."""
    body = {"error": for_status(status).code, "message": message, "field": None,
            "reason": reason}  # fmt: skip
    return web.Response(
        status=status, body=msgspec.json.encode(body), content_type="application/json"
    )


def _dropped(headers: Any) -> frozenset[str]:
    """The hop-by-hop headers of a message: the standard ones and those its Connection
    header names."""
    named = headers.getall("Connection", ())
    if not named:
        return HOP_BY_HOP
    extra = {t.strip().lower() for v in named for t in v.split(",") if t.strip()}
    return HOP_BY_HOP | (extra - END_TO_END)


def _forwarded_node(value: str) -> str:
    """An address as a ``Forwarded`` node (RFC 7239: IPv6 quoted in brackets)."""
    return f'"[{value}]"' if ":" in value else value


def traceparent(value: str | None) -> str:
    """The ``traceparent`` to send on: the request's when it is valid, else a new one."""
    if value is not None:
        value = value.strip()
        if _TRACEPARENT.match(value) and not value.startswith("ff"):
            return value
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"


class Proxy:
    """The proxy's request handler and its state; ``await start(host, port)``, ``stop()``."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        zone: str = "",
        snapshot: str | None = None,
        upstream_timeout_s: float = DEFAULT_UPSTREAM_TIMEOUT_S,
        host_routing: bool = True,
    ) -> None:
        self.client = client
        # Whether a Host naming a service reaches it with no route (off: routes only).
        self.host_routing = host_routing
        self.cache = AsyncServiceCache(client, snapshot=snapshot or None)
        self.zone = zone
        self.upstream_timeout_s = upstream_timeout_s
        self._policies: dict[str, Policies] = {}
        self._pool: UpstreamPool | None = None
        self._runner: web.ServerRunner | None = None
        self._admin: web.ServerRunner | None = None
        self.address: tuple[str, int] | None = None
        self.requests = 0
        self.failures: dict[str, int] = {}
        self._unknown: dict[str, float] = {}  # Host names that name no service, until when

    # --- running ---------------------------------------------------------------------------

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls: ssl.SSLContext | None = None,
        upstream_tls: ssl.SSLContext | None = None,
    ) -> tuple[str, int]:
        self._pool = UpstreamPool(tls=upstream_tls)
        server = web.Server(self.handle, access_log=None)
        self._runner = web.ServerRunner(server, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True, ssl_context=tls)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        bound = sockets[0].getsockname()[:2] if sockets else (host, port)
        self.address = (str(bound[0]), int(bound[1]))
        return self.address

    async def start_admin(self, host: str, port: int) -> tuple[str, int]:
        """Serve ``GET /status`` (JSON: requests, failures, every endpoint's counters and
        breaker) and ``GET /health`` on a listener of their own, as Envoy's admin port."""

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            if request.method != "GET":
                return _problem(405, "method_not_allowed", "GET only")
            if request.path == "/status":
                return web.Response(
                    body=msgspec.json.encode(self.status()), content_type="application/json"
                )
            if request.path == "/health":
                return web.Response(text="ok")
            return _problem(404, "not_found", f"no {request.path} here: /status, /health")

        self._admin = web.ServerRunner(web.Server(handle, access_log=None), handle_signals=False)
        await self._admin.setup()
        site = web.TCPSite(self._admin, host, port, reuse_address=True)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        bound = sockets[0].getsockname()[:2] if sockets else (host, port)
        return str(bound[0]), int(bound[1])

    async def stop(self) -> None:
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.cache.aclose()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _unknown_host(self, host: str) -> bool:
        until = self._unknown.get(host)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._unknown[host]
        return False

    def policies(self, service: str, config: Any) -> Policies:
        previous = self._policies.get(service)
        p = Policies.build(service, config, zone=self.zone, previous=previous)
        if p is not previous:
            self._policies[service] = p
            prune(self._policies, self.cache._views.__contains__)
        return p

    def status(self) -> dict[str, object]:
        """Requests, failures by reason, and each service's endpoints with their counters
        and breaker state."""
        now = time.monotonic()
        services: dict[str, object] = {}
        for name, view in sorted(self.cache._views.items()):
            services[name] = {
                "stale": view.stale,
                "age_s": round(view.age_s(), 3),
                "endpoints": endpoint_stats(self._policies.get(name), view.endpoints, now),
            }
        return {"requests": self.requests, "failures": dict(self.failures), "services": services}

    def _failed(self, status: int, reason: str, message: str) -> web.Response:
        self.failures[reason] = self.failures.get(reason, 0) + 1
        return _problem(status, reason, message)

    # --- one request -----------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.requests += 1
        raw = request.raw_path
        path, sep, query = raw.partition("?")
        host = host_of(request.headers.get("Host"))
        method = request.method
        try:
            table = await self.cache.routes()
        except WaypostError as exc:
            return self._failed(503, "registry_unreachable", f"routes: {exc}")
        route = table.match(method, path, host=host, headers=request.headers.get)
        if route is not None:
            service = route.service
            path = rewrite(route, path)
        elif self.host_routing and is_label(host) and not self._unknown_host(host):
            service = host
        else:
            return self._failed(404, "no_route", f"no route for {method} {host or '-'}{path}")
        try:
            view = await self.cache.get(service)
        except WaypostError as exc:
            return self._failed(503, "registry_unreachable", f"{service}: {exc}")
        if route is None and not view.instances and view.config is None:
            # The Host names no service: forget it (a stream of made-up Host headers
            # must not hold a view, and its watch, each).
            self._unknown[host] = time.monotonic() + UNKNOWN_HOST_S
            while len(self._unknown) > MAX_UNKNOWN_HOSTS:
                self._unknown.pop(next(iter(self._unknown)))
            await self.cache.forget(service)
            return self._failed(404, "no_route", f"no route for {method} {host}{path}")
        p = self.policies(service, view.config)
        target = path + sep + query
        try:
            ex = Exchange(
                p,
                view.endpoints,
                view.versions(),
                method,
                request.remote,
                now=time.monotonic(),
                subset=route.subset if route is not None else None,
                path=path,
            )
        except Overloaded as exc:
            return self._failed(503, "overloaded", str(exc))
        try:
            return await self._exchange(request, ex, target)
        finally:
            ex.close()

    async def _exchange(
        self, request: web.BaseRequest, ex: Exchange, target: str
    ) -> web.StreamResponse:
        body: bytes | None = None
        streamed = False
        expect = request.headers.get("Expect")
        if expect is not None:
            # The proxy takes the body itself, so it answers the client's Expect (the
            # endpoint never sees it), as aiohttp's router would.
            if expect.lower() != "100-continue" or request.version != HttpVersion11:
                return self._failed(417, "expectation_failed", f"unknown Expect: {expect}")
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        if request.body_exists:
            length = request.content_length
            if length is not None and length <= BUFFER_MAX:
                body = await request.read()
            else:
                streamed = True
        headers = self._upstream_headers(request)
        bad = _not_latin1(headers)
        if bad is not None:
            return self._failed(
                400, "bad_header", f"header {bad}: not Latin-1 text, which HTTP/1.1 carries"
            )
        timed_out = False
        while True:
            try:
                attempt = ex.next(time.monotonic())
            except Unavailable as exc:
                return self._failed(503, "no_endpoint", str(exc))
            resp: UpstreamResponse | None = None
            failure: UpstreamError | None = None
            try:
                resp = await self._send(request, attempt, target, headers, body, streamed)
            except UpstreamError as exc:
                failure = exc
                timed_out = exc.kind == "timeout"
            wait = ex.finished(
                attempt,
                time.monotonic(),
                status=resp.status if resp is not None else None,
                failure=failure.kind if failure is not None else None,
                detail=str(failure) if failure is not None else "",
            )
            if wait is None or streamed:
                break
            if resp is not None:
                resp.release()
            await asyncio.sleep(wait)
        if resp is None:
            if timed_out:
                return self._failed(504, "upstream_timeout", ex.failed().message)
            return self._failed(502, "upstream_failed", ex.failed().message)
        return await self._relay(request, resp)

    def _upstream_headers(self, request: web.BaseRequest) -> list[tuple[str, str]]:
        src = request.headers
        drop = _dropped(src)
        out = [
            (k, v)
            for k, v in src.items()
            if (low := k.lower()) not in drop and low not in _SET_BY_US
        ]
        peer = request.remote or ""
        before = src.get("X-Forwarded-For")
        out.append(("X-Forwarded-For", f"{before}, {peer}" if before else peer))
        out.append(("X-Forwarded-Proto", request.scheme))
        # X-Real-IP is the peer the proxy saw, never what the client claimed; Forwarded
        # keeps the client's elements and adds ours last (as X-Forwarded-For), so the
        # last element is the one an upstream can trust.
        out.append(("X-Real-IP", peer))
        ours = f"for={_forwarded_node(peer) if peer else 'unknown'};proto={request.scheme}"
        if "Host" in src and not set(src["Host"]) & {'"', "\\"}:
            ours += f';host="{src["Host"]}"'
        earlier = ", ".join(src.getall("Forwarded", ()))
        out.append(("Forwarded", f"{earlier}, {ours}" if earlier else ours))
        if "Host" in src:
            out.append(("X-Forwarded-Host", src["Host"]))
        if "traceparent" in src:
            out = [(k, v) for k, v in out if k.lower() != "traceparent"]
        out.append(("traceparent", traceparent(src.get("traceparent"))))
        return out

    async def _send(
        self,
        request: web.BaseRequest,
        attempt: Attempt,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | None,
        streamed: bool,
    ) -> UpstreamResponse:
        assert self._pool is not None
        e = attempt.endpoint
        limit = attempt.timeout_s if attempt.timeout_s is not None else self.upstream_timeout_s
        data = request.content.iter_any() if streamed else body
        return await self._pool.request(
            e.address, e.port, request.method, target, headers, data, timeout_s=limit,
            secure=e.meta.get("scheme") == "https",
        )  # fmt: skip

    async def _relay(self, request: web.BaseRequest, resp: UpstreamResponse) -> web.StreamResponse:
        try:
            raw = resp.headers
            drop = HOP_BY_HOP
            for kb, vb in raw:
                if kb.lower() == b"connection":
                    drop = drop | {t.strip().lower() for t in vb.decode("latin-1").split(",")}
            length = resp.content_length
            small = length is not None and length <= BUFFER_MAX
            out: CIMultiDict[str] = CIMultiDict()
            for kb, vb in raw:
                k = kb.decode("latin-1")
                low = k.lower()
                if low not in drop and not (small and low == "content-length"):
                    out.add(k, vb.decode("latin-1"))
            if small or request.method == "HEAD" or resp.status in (204, 304):
                try:
                    data = await resp.read()
                except UpstreamError as exc:
                    return self._failed(502, "upstream_failed", f"reading the answer: {exc}")
                if request.method == "HEAD" or resp.status in (204, 304):
                    data = b""
                return web.Response(status=resp.status, body=data, headers=out)
            sr = web.StreamResponse(status=resp.status, headers=out)
            await sr.prepare(request)
            try:
                async for chunk in resp.chunks():
                    await sr.write(chunk)
            except (UpstreamError, ConnectionError) as exc:
                # Headers are gone: all that is left is to cut the answer short.
                log.warning("upstream answer cut short: %s", exc)
                self.failures["upstream_cut"] = self.failures.get("upstream_cut", 0) + 1
                if request.transport is not None:
                    request.transport.close()
                return sr
            await sr.write_eof()
            return sr
        finally:
            resp.release()


def _not_latin1(headers: list[tuple[str, str]]) -> str | None:
    """The name of the first header that cannot go upstream as HTTP/1.1 bytes, if any."""
    for k, v in headers:
        try:
            k.encode("latin-1")
            v.encode("latin-1")
        except UnicodeEncodeError:
            return k if k.isascii() else repr(k)
    return None


async def run_proxy(settings: ProxySettings) -> int:
    """Run the proxy until SIGINT or SIGTERM; print its address on stdout once it serves."""
    from waypost.aio import until_signalled
    from waypost.settings import host_port

    host, port = host_port(settings.listen, "listen")
    listener_tls = upstream_tls = registry_tls = None
    if settings.tls_cert:
        listener_tls = server_context(
            settings.tls_cert, settings.tls_key, ca=settings.tls_ca,
            verify_clients=settings.tls_verify_clients,
        )  # fmt: skip
    if settings.tls_cert or settings.tls_ca:
        registry_tls = client_context(settings.tls_ca, settings.tls_cert, settings.tls_key)
    if settings.upstream_tls_ca or settings.tls_cert:
        upstream_tls = client_context(settings.upstream_tls_ca, settings.tls_cert, settings.tls_key)
    client = AsyncClient(
        settings.servers or None,
        token=settings.token or None,
        join=settings.join or None,
        trust_keys=settings.trust_keys,
        tls=registry_tls,
    )
    proxy = Proxy(
        client,
        zone=settings.zone,
        snapshot=settings.snapshot or None,
        upstream_timeout_s=parse_duration(settings.upstream_timeout),
        host_routing=settings.host_routing,
    )
    admin = ""
    try:
        bound = await proxy.start(host, port, tls=listener_tls, upstream_tls=upstream_tls)
        if settings.admin:
            ahost, aport = host_port(settings.admin, "admin")
            abound = await proxy.start_admin(ahost, aport)
            admin = f" (admin {_url(abound)})"
    except OSError as exc:
        await proxy.stop()
        await client.aclose()
        raise Unavailable(f"cannot listen: {exc.strerror or exc}") from None
    h = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    scheme = "https" if listener_tls is not None else "http"
    print(f"waypost proxy serving {scheme}://{h}:{bound[1]}{admin}", flush=True)
    log.info("proxying on %s://%s:%s for %s", scheme, h, bound[1], ", ".join(settings.servers))
    try:
        await until_signalled()
    finally:
        await proxy.stop()
        await client.aclose()
    return 0


def _url(bound: tuple[str, int]) -> str:
    host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    return f"http://{host}:{bound[1]}"
