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

from collections.abc import Awaitable, Callable

from aiohttp import web

from waypost.api.app import READ_METHODS, Api, Routed, check_token, failure_response
from waypost.model import LABEL_RE

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
        self._token = api.token
        self._memo: dict[tuple[str, str], tuple[Routed, str] | None] = {}
        # Whole paths: (method, path).
        self._static: dict[tuple[str, str], Routed] = {
            ("GET", "/api/v1/instances"): api.list_instances,
            ("GET", "/api/v1/services"): api.list_services,
            ("GET", "/api/v1/nodes"): api.list_nodes,
            ("GET", "/health"): api.health,
            ("GET", "/status"): api.status,
            ("POST", "/api/v1/batch"): api.post_batch,
        }
        # /api/v1/{collection}/{id}: (method, collection).
        self._one: dict[tuple[str, str], Routed] = {
            ("GET", "services"): api.service_instances,
            ("GET", "instances"): api.get_instance,
            ("PUT", "instances"): api.put_instance,
            ("DELETE", "instances"): api.delete_instance,
        }
        # /api/v1/{collection}/{id}/{action}: (method, collection, action).
        self._two: dict[tuple[str, str, str], Routed] = {
            ("PUT", "instances", "heartbeat"): api.heartbeat,
            ("PUT", "instances", "status"): api.put_status,
            ("PUT", "instances", "health"): api.put_health,
            ("PUT", "leases", "keepalive"): api.keepalive_lease,
        }

    def resolve(self, method: str, target: str) -> tuple[Routed, str] | None:
        """The hot handler of a request target and the identifier its path names, or
        None for whatever the application should answer (remembered per target: the
        same few targets carry the load)."""
        key = (method, target)
        if key in self._memo:
            return self._memo[key]
        found = self._resolve(method, target)
        if len(self._memo) >= MAX_MEMO:
            self._memo.clear()
        self._memo[key] = found
        return found

    def _resolve(self, method: str, target: str) -> tuple[Routed, str] | None:
        path = target.partition("?")[0]
        handler = self._static.get((method, path))
        if handler is not None:
            return handler, ""
        if not path.startswith(PREFIX):
            return None
        parts = path[len(PREFIX) :].split("/")
        if len(parts) == 2:
            handler = self._one.get((method, parts[0]))
        elif len(parts) == 3:
            handler = self._two.get((method, parts[0], parts[2]))
        # An identifier that is not a plain label (empty, "..", percent-encoded) is the
        # router's to decode and refuse.
        if handler is None or LABEL_RE.match(parts[1]) is None:
            return None
        return handler, parts[1]

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        method = request.method
        found = self.resolve(method, request.raw_path)
        write = method not in READ_METHODS
        if found is None or (write and "Expect" in request.headers):
            return await self._fallback(request)
        handler, ident = found
        try:
            if write:
                check_token(request, self._token)
            return await handler(request, ident)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return failure_response(request, exc)
        except Exception as exc:  # CancelledError is not an Exception: it goes through
            return failure_response(request, exc)
