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

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from waypost.api.app import READ_METHODS, Api, Routed, failure_response
from waypost.model import LABEL_RE
from waypost.telemetry import SAMPLE_EVERY, TELEMETRY, RouteStats

Fallback = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
PREFIX = "/api/v1/"
# Request targets whose route is remembered; forgotten all at once when full.
MAX_MEMO = 4096


class HotPath:
    """The request handler of the server: ``api``'s hot routes, else ``fallback`` (the
    application's own handler)."""

    def __init__(self, api: Api, fallback: Fallback) -> None:
        self._api = api
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
