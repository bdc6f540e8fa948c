"""The hot path: the routes that carry load, dispatched in constant time, in front of the
application.

aiohttp's application resolves a path by trying its resources in turn and wraps every
handler in the middleware; for a read served from cached bytes that machinery costs more
than the read (a 100-instance service answer: 18k requests/s through the application,
32k+ from the same bytes with a bare handler, ``bench/registry.py``). The hot path is the
low-level server's request handler: it splits the request target itself, looks the route
up in a dict, checks the token of writes, calls the same ``Api`` handler the application
would, and maps errors in its one ``try``. Anything it does not know exactly (another
route or method, a percent-encoded or odd path, ``Expect: 100-continue``) goes to the
application unchanged, so every answer stays the same, byte for byte.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

try:  # what aiohttp's own responses use (not in its public API: a fallback if it goes)
    from aiohttp.helpers import rfc822_formatted_time
    from aiohttp.tcp_helpers import tcp_keepalive
except ImportError:  # pragma: no cover
    import email.utils
    import socket

    def rfc822_formatted_time() -> str:
        return email.utils.formatdate(usegmt=True)

    def tcp_keepalive(transport: asyncio.Transport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


from waypost.api.app import READ_METHODS, Api, Routed, failure_response
from waypost.api.blocking import Answer, Key
from waypost.api.conns import IDLE_TIMEOUT_S, ConnectionLimits
from waypost.model import LABEL_RE, Query
from waypost.query import parse_query
from waypost.telemetry import SAMPLE_EVERY, TELEMETRY, RouteStats

Fallback = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
PREFIX = "/api/v1/"
# Request targets whose route is remembered; forgotten all at once when full.
MAX_MEMO = 4096


class HotPath:
    """The request handler of the server: ``api``'s hot routes, else ``fallback`` (the
    application's own handler)."""

    def __init__(self, api: Api, fallback: Fallback) -> None:
        self._fallback = fallback
        self._gate = api.gate
        self._memo: dict[tuple[str, str], tuple[Routed, str, RouteStats] | None] = {}
        # Whole paths: (method, path) -> handler (its route is the path).
        self._static: dict[tuple[str, str], Routed] = {
            ("GET", "/api/v1/instances"): api.list_instances,
            ("GET", "/api/v1/services"): api.list_services,
            ("GET", "/api/v1/nodes"): api.list_nodes,
            ("GET", "/health"): api.health,
            ("GET", "/status"): api.status,
            ("POST", "/api/v1/batch"): api.post_batch,
        }
        # /api/v1/{collection}/{id}: (method, collection) -> handler, route.
        self._one: dict[tuple[str, str], tuple[Routed, str]] = {
            ("GET", "services"): (api.service_instances, "/api/v1/services/{name}"),
            ("GET", "instances"): (api.get_instance, "/api/v1/instances/{id}"),
            ("PUT", "instances"): (api.put_instance, "/api/v1/instances/{id}"),
            ("DELETE", "instances"): (api.delete_instance, "/api/v1/instances/{id}"),
        }
        # /api/v1/{collection}/{id}/{action}: (method, collection, action) -> handler, route.
        self._two: dict[tuple[str, str, str], tuple[Routed, str]] = {
            ("PUT", "instances", "heartbeat"): (
                api.heartbeat, "/api/v1/instances/{id}/heartbeat"
            ),
            ("PUT", "instances", "status"): (api.put_status, "/api/v1/instances/{id}/status"),
            ("PUT", "instances", "health"): (api.put_health, "/api/v1/instances/{id}/health"),
            ("PUT", "leases", "keepalive"): (
                api.keepalive_lease, "/api/v1/leases/{id}/keepalive"
            ),
        }  # fmt: skip

    def resolve(self, method: str, target: str) -> tuple[Routed, str, str] | None:
        """The hot handler of a request target, the identifier its path names and its
        route (for metrics), or None for whatever the application should answer."""
        found = self._found(method, target)
        return None if found is None else (found[0], found[1], found[2].route)

    def _found(self, method: str, target: str) -> tuple[Routed, str, RouteStats] | None:
        """``resolve`` with the route's stats, remembered per target (the same few
        targets carry the load)."""
        key = (method, target)
        if key in self._memo:
            return self._memo[key]
        found = self._resolve(method, target)
        if found is not None:
            stats = TELEMETRY.route(found[2], method)
            hit: tuple[Routed, str, RouteStats] | None = (found[0], found[1], stats)
        else:
            hit = None
        if len(self._memo) >= MAX_MEMO:
            self._memo.clear()
        self._memo[key] = hit
        return hit

    def _resolve(self, method: str, target: str) -> tuple[Routed, str, str] | None:
        path = target.partition("?")[0]
        handler = self._static.get((method, path))
        if handler is not None:
            return handler, "", path
        if not path.startswith(PREFIX):
            return None
        parts = path[len(PREFIX) :].split("/")
        found: tuple[Routed, str] | None = None
        if len(parts) == 2:
            found = self._one.get((method, parts[0]))
        elif len(parts) == 3:
            found = self._two.get((method, parts[0], parts[2]))
        # An identifier that is not a plain label (empty, "..", percent-encoded) is the
        # router's to decode and refuse.
        if found is None or LABEL_RE.match(parts[1]) is None:
            return None
        return found[0], parts[1], found[1]

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        method = request.method
        found = self._found(method, request.raw_path)
        write = method not in READ_METHODS
        if found is None or (write and "Expect" in request.headers):
            return await self._fallback(request)
        handler, ident, stats = found
        # Every request counted, one in SAMPLE_EVERY timed (each costs on this path).
        stats.n += 1
        start = time.perf_counter() if not stats.n % SAMPLE_EVERY else 0.0
        response: web.StreamResponse
        try:
            if write:
                self._gate.check_write(request)
            response = await handler(request, ident)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = failure_response(request, exc)
        except Exception as exc:  # CancelledError is not an Exception: it goes through
            response = failure_response(request, exc)
        code = response.status
        if code != 200:
            stats.codes[code] = stats.codes.get(code, 0) + 1
        # A blocking query's wait is its client's choice: counted, not timed.
        if start and "index=" not in request.raw_path:
            stats.seconds.observe(time.perf_counter() - start)
        return response


# --- Plain reads, answered on the connection itself -----------------------------------
#
# Even the hot path above costs aiohttp's per-request machinery: parsing into a message,
# the request and response objects, the task that serves the connection. For the reads
# that carry load (a service's instances, the listings), asked with no query, no token
# and nothing unusual, a connection answers by itself: one match of what it received
# against the one shape such a request has, one dict lookup, one write of bytes built
# once per answer, revision and second. The first request a connection cannot answer so
# hands the connection to aiohttp's handler for good (from the bytes that request
# brought), so no connection ever has two parsers and every other answer is aiohttp's.

# One whole request, alone in what was received: a GET of an origin-form target over
# HTTP/1.1 whose header fields are only these common ones (any other, a token, a body, an
# upgrade, an odd byte: aiohttp's). Header names are case-insensitive, the method and
# version are not.
_ALLOWED_FIELDS = (
    "host|user-agent|accept|accept-encoding|accept-language|accept-charset|cache-control"
    "|pragma|referer|origin|dnt|x-request-id|x-forwarded-for|x-forwarded-proto"
    "|x-forwarded-host|x-real-ip|traceparent|tracestate|via"
)
PLAIN_GET = re.compile(
    rb"GET (/[!-~]*) HTTP/1\.1\r\n"
    rb"(?:(?:(?i:" + _ALLOWED_FIELDS.encode() + rb"):[\t\x20-\x7e\x80-\xff]*"
    rb"|(?i:connection):[\t ]*(?i:keep-alive)[\t ]*)\r\n)*\r\n"
)
# What aiohttp's parser refuses that the pattern lets through: more than this many header
# lines (its limit is 128), no Host or two, two User-Agents (singletons, RFC 9110).
MAX_PLAIN_LINES = 64
MAX_PLAIN_BYTES = 4096
# An idle connection is closed after this long.
IDLE_CLOSE_S = IDLE_TIMEOUT_S
# Answers up to this size are sent as one buffer (head and body joined once per revision
# and second, kept with the answer); bigger ones as two, so a listing of a million
# instances is never copied.
MAX_JOINED = 256 * 1024
log = logging.getLogger(__name__)


def plain_target(data: bytes) -> bytes | None:
    """The request target of ``data`` if it is one whole plain GET (see ``PLAIN_GET``)
    that aiohttp's parser would accept as it is, else None."""
    if len(data) > MAX_PLAIN_BYTES:
        return None
    match = PLAIN_GET.fullmatch(data)
    if match is None or data.count(b"\n") > MAX_PLAIN_LINES:
        return None
    low = data.lower()
    if low.count(b"\nhost:") != 1 or low.count(b"\nuser-agent:") > 1:
        return None
    return match.group(1)


class PlainReads:
    """The whole HTTP response to a plain read, from a request's bytes (None: not one)."""

    def __init__(self, api: Api) -> None:
        self._gate = api.gate
        self._cache = api.cache
        # request target -> (answer key, route stats), None for a target that is not one
        self._targets: dict[bytes, tuple[Key, RouteStats] | None] = {}
        self._listings: dict[str, Key] = {
            "/api/v1/services": ("services", None),
            "/api/v1/nodes": ("nodes", None),
            "/api/v1/instances": ("instances", parse_query([])[0]),
        }

    def __call__(self, data: bytes) -> bytes | tuple[bytes, bytes] | None:
        target = plain_target(data)
        if target is None:
            return None
        found = self._targets.get(target)
        if found is None and target not in self._targets:
            found = self._learn(target)
        if found is None:
            return None
        # With ACLs in use, only while the anonymous token reads everything (a request
        # with a token, or over mutual TLS, is never a plain read).
        if self._gate.active() and not self._gate.state.anonymous().sees_everything:
            return None
        key, stats = found
        stats.n += 1
        start = time.perf_counter() if not stats.n % SAMPLE_EVERY else 0.0
        ans = self._cache.get(key)
        date = rfc822_formatted_time()
        wire = ans.wire
        out: bytes | tuple[bytes, bytes]
        if wire is not None and wire[0] == ans.checked and wire[1] == date:
            out = wire[2]
        elif len(ans.body) > MAX_JOINED:
            out = (_head(ans, date), ans.body)  # written as two buffers, never copied
        else:
            out = _head(ans, date) + ans.body
            ans.wire = (ans.checked, date, out)
        if start:
            stats.seconds.observe(time.perf_counter() - start)
        return out

    def _learn(self, target: bytes) -> tuple[Key, RouteStats] | None:
        path = target.decode("ascii")
        key = self._listings.get(path)
        route = path
        if key is None and path.startswith("/api/v1/services/"):
            name = path[len("/api/v1/services/") :]
            if LABEL_RE.match(name) is not None:
                key = ("instances", Query(service=name))
                route = "/api/v1/services/{name}"
        found = None if key is None else (key, TELEMETRY.route(route, "GET"))
        if len(self._targets) >= MAX_MEMO:
            self._targets.clear()
        self._targets[target] = found
        return found


def _head(ans: Answer, date: str) -> bytes:
    """Status line and the header fields aiohttp sends for this answer (same names, same
    order)."""
    return (
        "HTTP/1.1 200 OK\r\n"
        "Content-Type: application/json\r\n"
        f"X-Waypost-Index: {ans.index}\r\n"
        f"X-Waypost-Revision: {ans.checked}\r\n"
        f"Content-Length: {len(ans.body)}\r\n"
        f"Date: {date}\r\n"
        f"Server: {SERVER_SOFTWARE}\r\n\r\n"
    ).encode("latin-1")


class PlainConnection(asyncio.Protocol):
    """One client connection: plain reads answered here until the first request that is
    not one, then aiohttp's ``RequestHandler`` for the rest of the connection. It stays
    the connection's protocol either way, so the listener's limits hold for every
    connection: ``ConnectionLimits`` admits it, and one that has not sent a whole first
    request head within ``FIRST_HEAD_TIMEOUT_S`` is closed."""

    __slots__ = (
        "_client",
        "_head_timer",
        "_inner",
        "_paused",
        "_site",
        "_tail",
        "_timer",
        "_transport",
        "_used",
    )

    def __init__(self, site: FastSite) -> None:
        self._site = site
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self._used = False
        self._timer: asyncio.TimerHandle | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._client: str | None = None  # set once admitted
        self._tail = b""  # the last bytes seen, while the first head is not whole

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = tcp.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not self._site.limits.admit(client):
            tcp.abort()
            return
        self._client = client
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(self._site.limits.first_head_timeout_s, self._slow_head)
        self._transport = tcp
        if transport.get_extra_info("peercert"):
            # Mutual TLS: the certificate may stand for a token; aiohttp's from the start.
            self._hand_over()
            return
        tcp_keepalive(self._transport)  # as aiohttp's handler does
        self._site.plain.add(self)
        self._timer = asyncio.get_running_loop().call_later(IDLE_CLOSE_S, self._idle)

    def data_received(self, data: bytes) -> None:
        if self._head_timer is not None:
            seen = self._tail + data
            if b"\r\n\r\n" in seen:  # a whole head: this client is not a slow one
                self._head_timer.cancel()
                self._head_timer = None
                self._tail = b""
            else:
                self._tail = seen[-3:]
        inner = self._inner
        if inner is None:
            if not self._paused:
                try:
                    out = self._site.reads(data)
                except Exception:  # a bug here must not cost the request: aiohttp answers
                    log.exception("plain read of %r failed", data[:200])
                    out = None
                if out is not None:
                    assert self._transport is not None
                    if isinstance(out, bytes):
                        self._transport.write(out)
                    else:
                        self._transport.writelines(out)
                    self._used = True
                    return
            inner = self._hand_over()
        inner.data_received(data)

    def _hand_over(self) -> asyncio.Protocol:
        inner = self._site.handler()
        self._inner = inner
        self._site.plain.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        assert self._transport is not None
        inner.connection_made(self._transport)
        if self._paused:
            inner.pause_writing()
        return inner

    def _slow_head(self) -> None:
        self._head_timer = None
        if self._transport is not None:
            self._site.limits.slow_heads += 1
            self._transport.abort()

    def _idle(self) -> None:
        if self._used:
            self._used = False
            self._timer = asyncio.get_running_loop().call_later(IDLE_CLOSE_S, self._idle)
        elif self._transport is not None:
            self._timer = None
            self._transport.close()

    def close(self) -> None:
        """Close a connection that never needed aiohttp (the server is stopping)."""
        if self._inner is None and self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._site.plain.discard(self)
        if self._client is not None:
            self._site.limits.release(self._client)
            self._client = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return None if self._inner is None else self._inner.eof_received()

    def pause_writing(self) -> None:
        self._paused = True
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._paused = False
        if self._inner is not None:
            self._inner.resume_writing()


def _none(data: bytes) -> None:
    return None


class FastSite(web.TCPSite):
    """aiohttp's TCP site with ``PlainConnection`` as the protocol: the application's
    handler serves every connection once it asks for more than plain reads. Without
    ``reads`` (``--no-plain-reads``) every connection goes to it at its first bytes; the
    ``limits`` hold either way."""

    def __init__(
        self,
        runner: web.BaseRunner,
        reads: PlainReads | None,
        limits: ConnectionLimits | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(runner, **kw)
        self.reads: Callable[[bytes], bytes | tuple[bytes, bytes] | None] = reads or _none
        self.limits = limits or ConnectionLimits()
        self.plain: set[PlainConnection] = set()
        server = runner.server
        assert server is not None
        self.handler: Callable[[], asyncio.Protocol] = server

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers with the runner
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: PlainConnection(self),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        await super().stop()
        for conn in list(self.plain):
            conn.close()
        self.plain.clear()
