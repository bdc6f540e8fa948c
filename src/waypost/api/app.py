"""The HTTP API (aiohttp): native ``/api/v1``, ``/health``, ``/status``, ``/openapi.json``.

Reads are answered from bytes encoded once per revision (``AnswerCache``); blocking
queries park on ``BlockingQueries``; writes go through the ``Registry``. Errors are
translated once, in ``error_middleware``, into ``{"error", "message", "field"}``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from waypost import sse as sse_frames
from waypost._version import __version__
from waypost.api.blocking import Answer, AnswerCache, BlockingQueries, Key
from waypost.api.openapi import openapi_spec
from waypost.api.query import parse_query
from waypost.errors import (
    Gone,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    WaypostError,
)
from waypost.model import (
    Batch,
    BatchResult,
    Event,
    Instance,
    MaintenanceUpdate,
    ServerStatus,
    StatusUpdate,
    WriteResult,
    decode,
    parse_status,
    validate_instance,
)
from waypost.registry import Registry
from waypost.store.base import gone

log = logging.getLogger("waypost.api")

# Bodies over 1 MiB are refused (etcd's default request limit is 1.5 MiB, Consul's KV 512 KiB).
MAX_BODY_BYTES = 1024 * 1024
# An idle event stream gets a comment this often, so proxies keep it open.
SSE_KEEPALIVE_S = 15.0
JSON = "application/json"

_encode = msgspec.json.Encoder().encode
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REGISTRY = web.AppKey("registry", Registry)
CACHE = web.AppKey("cache", AnswerCache)
BLOCKING = web.AppKey("blocking", BlockingQueries)
TOKEN = web.AppKey("token", str)
OPENAPI = web.AppKey("openapi", bytes)
CONFIG = web.AppKey("config", dict[str, str])
STATS = web.AppKey("stats", dict[str, int])
STREAMS = web.AppKey("streams", set[asyncio.Task[object]])


def _json(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=body, status=status, headers=headers, content_type=JSON)


def _error_response(err: WaypostError) -> web.Response:
    return _json(_encode(err.to_dict()), status=err.http_status)


_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_HTTP_ERRORS: dict[int, type[WaypostError]] = {
    404: NotFound,
    405: InvalidInput,
    413: PayloadTooLarge,
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as a JSON error with the right status; nothing else leaks.

    It also checks the token of writes: one middleware, since each costs a wrapper call
    on every request."""
    try:
        if request.method not in _READ_METHODS:
            _check_token(request)
        return await handler(request)
    except WaypostError as err:
        return _error_response(err)
    except web.HTTPRequestEntityTooLarge:
        return _error_response(
            PayloadTooLarge(f"body: larger than the {MAX_BODY_BYTES} byte limit", field="body")
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        cls = _HTTP_ERRORS.get(exc.status, WaypostError)
        message = {
            404: f"no such endpoint: {request.method} {request.path}",
            405: f"method {request.method} is not allowed on {request.path}",
        }.get(exc.status, exc.reason)
        resp = _json(_encode(cls(message).to_dict()), status=exc.status)
        if exc.status == 405 and "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error_response(WaypostError("internal error; see the server log"))


def _check_token(request: web.Request) -> None:
    """With a token configured, every write must carry ``Authorization: Bearer TOKEN``."""
    token = request.app[TOKEN]
    if token:
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip(), token):
            raise Unauthorized(
                "this server takes writes only with its token (Authorization: Bearer TOKEN)"
            )


async def _body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"body: larger than the {MAX_BODY_BYTES} byte limit", field="body")
    data = await request.read()
    if not data.strip():
        raise InvalidInput("body: empty; expected a JSON object", field="body")
    return data


def _instance_from(data: bytes, path_id: str) -> Instance:
    """Decode the instance of ``PUT /instances/{id}``; the body may leave ``id`` out."""
    inst = decode(data, Instance)
    if not inst.id:
        inst = msgspec.structs.replace(inst, id=path_id)
    elif inst.id != path_id:
        raise InvalidInput(
            f"id: the body names {inst.id!r} but the path names {path_id!r}", field="id"
        )
    return validate_instance(inst)


def _registry(request: web.Request) -> Registry:
    return request.app[REGISTRY]


# --- writes ------------------------------------------------------------------------------


async def put_instance(request: web.Request) -> web.Response:
    iid = request.match_info["id"]
    inst = _instance_from(await _body(request), iid)
    index = await _registry(request).register(inst)
    return _json(_encode(WriteResult(id=iid, index=index)))


async def delete_instance(request: web.Request) -> web.Response:
    iid = request.match_info["id"]
    index = await _registry(request).deregister(iid)
    return _json(_encode(WriteResult(id=iid, index=index)))


async def heartbeat(request: web.Request) -> web.Response:
    iid = request.match_info["id"]
    index = await _registry(request).heartbeat(iid)
    return _json(_encode(WriteResult(id=iid, index=index)))


async def put_status(request: web.Request) -> web.Response:
    iid = request.match_info["id"]
    upd = decode(await _body(request), StatusUpdate)
    index = await _registry(request).set_status(iid, parse_status(upd.status), upd.output)
    return _json(_encode(WriteResult(id=iid, index=index)))


async def put_maintenance(request: web.Request) -> web.Response:
    iid = request.match_info["id"]
    upd = decode(await _body(request), MaintenanceUpdate)
    index = await _registry(request).set_maintenance(iid, upd.enable, upd.reason)
    return _json(_encode(WriteResult(id=iid, index=index)))


async def post_batch(request: web.Request) -> web.Response:
    batch = decode(await _body(request), Batch)
    for i, inst in enumerate(batch.register):
        try:
            validate_instance(inst)
        except InvalidInput as exc:
            field = f"register[{i}].{exc.field}" if exc.field else f"register[{i}]"
            raise InvalidInput(f"register[{i}].{exc.message}", field=field) from None
    index = await _registry(request).batch(batch.register, batch.deregister)
    result = BatchResult(
        index=index,
        registered=[i.id for i in batch.register],
        deregistered=list(batch.deregister),
    )
    return _json(_encode(result))


# --- reads -------------------------------------------------------------------------------


async def _answer(request: web.Request, key: Key, index: int | None, wait_s: float) -> web.Response:
    if index is None:
        ans: Answer = request.app[CACHE].get(key)
    else:
        ans = await request.app[BLOCKING].wait(key, index, wait_s)
    return web.Response(body=ans.body, headers=ans.headers(), content_type=JSON)


async def get_instance(request: web.Request) -> web.Response:
    iid = request.match_info["id"]
    inst = _registry(request).catalog.get(iid)
    if inst is None:
        raise NotFound(f"instance {iid!r} is not registered", field="id")
    return _json(
        _encode(inst),
        headers={"X-Waypost-Index": str(_registry(request).catalog.mod_revision(iid))},
    )


async def list_instances(request: web.Request) -> web.Response:
    query, index, wait_s = parse_query(request.query.items())
    return await _answer(request, ("instances", query), index, wait_s)


async def service_instances(request: web.Request) -> web.Response:
    query, index, wait_s = parse_query(request.query.items(), service=request.match_info["name"])
    return await _answer(request, ("instances", query), index, wait_s)


async def list_services(request: web.Request) -> web.Response:
    index, wait_s = _blocking_params(request)
    return await _answer(request, ("services", None), index, wait_s)


async def list_nodes(request: web.Request) -> web.Response:
    index, wait_s = _blocking_params(request)
    return await _answer(request, ("nodes", None), index, wait_s)


def _blocking_params(request: web.Request) -> tuple[int | None, float]:
    """``index`` and ``wait`` of an endpoint that takes no filters."""
    for name in request.query:
        if name not in ("index", "wait"):
            raise InvalidInput(f"{name}: unknown query parameter (known: index, wait)", field=name)
    _, index, wait_s = parse_query(request.query.items())
    return index, wait_s


async def health(request: web.Request) -> web.Response:
    try:
        await _registry(request).store.ping()
    except WaypostError as exc:
        return _json(_encode({"status": "failing", "message": exc.message}), status=503)
    return _json(b'{"status":"serving"}')


async def status(request: web.Request) -> web.Response:
    reg = _registry(request)
    cat = reg.catalog
    body = ServerStatus(
        version=__version__,
        node=reg.node_name,
        uptime_s=round(time.time() - reg.started_at, 3),
        revision=cat.revision,
        instances=len(cat),
        services=cat.service_count(),
        nodes=cat.node_count(),
        store=reg.store.kind,
        blocking_waiters=request.app[BLOCKING].count,
        event_streams=request.app[STATS]["event_streams"],
        config=request.app[CONFIG],
    )
    return _json(_encode(body))


async def openapi(request: web.Request) -> web.Response:
    return _json(request.app[OPENAPI])


# --- event stream ------------------------------------------------------------------------


class FrameCache:
    """SSE frames of recent events, encoded once and shared by every stream of one app."""

    LIMIT = 8192

    def __init__(self) -> None:
        self._frames: dict[int, bytes] = {}

    def frame(self, ev: Event) -> bytes:
        got = self._frames.get(ev.revision)
        if got is None:
            got = sse_frames.frame(_encode(ev.instance), event=ev.type, id=ev.revision)
            if len(self._frames) >= self.LIMIT:
                self._frames.clear()
            self._frames[ev.revision] = got
        return got


FRAMES = web.AppKey("frames", FrameCache)


async def events(request: web.Request) -> web.StreamResponse:
    reg = _registry(request)
    cat = reg.catalog
    service = None
    start: int | None = None
    for name, value in request.query.items():
        if name == "service":
            service = value
        elif name == "index":
            start = _whole(value, "index")
        else:
            raise InvalidInput(
                f"{name}: unknown query parameter (known: index, service)", field=name
            )
    last_id = request.headers.get("Last-Event-ID")
    if last_id:
        start = _whole(last_id, "Last-Event-ID")
    last = cat.revision if start is None else start
    if last < reg.store.compacted:
        raise gone(last, reg.store.compacted)

    async def fetch(after: int) -> list[Event]:
        got = cat.events_since(after)
        if got is None:
            got = await reg.store.changes(after)
            # The store may be ahead of the catalog; never send what we have not applied.
            got = [ev for ev in got if ev.revision <= cat.revision]
        return got

    if last > cat.revision:
        # Only a registry that lost its data (a wiped SQLite file) is behind a client.
        raise Gone(
            f"revision {last} is ahead of this registry (at {cat.revision}): it was reset; "
            "re-list and watch from the listed index",
            field="index",
        )
    backlog = await fetch(last)  # Gone here becomes a 410 before the stream starts
    frames = request.app[FRAMES]
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Waypost-Index": str(cat.revision),
        }
    )
    await resp.prepare(request)
    stats = request.app[STATS]
    stats["event_streams"] += 1
    task = asyncio.current_task()
    assert task is not None
    request.app[STREAMS].add(task)
    try:
        await resp.write(b"retry: 1000\n\n")
        while True:
            while backlog:
                chunk = b"".join(
                    frames.frame(ev)
                    for ev in backlog
                    if service is None or ev.instance.service == service
                )
                last = backlog[-1].revision
                # An id-only frame moves a filtered stream's position past skipped events.
                await resp.write(chunk or sse_frames.id_only(last))
                backlog = await fetch(last)
            if not await cat.wait_for_revision(last + 1, SSE_KEEPALIVE_S):
                await resp.write(sse_frames.comment("keepalive"))
                continue
            try:
                backlog = await fetch(last)
            except Gone as exc:
                await resp.write(sse_frames.frame(_encode(exc.to_dict()), event="gone"))
                break
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        stats["event_streams"] -= 1
        request.app[STREAMS].discard(task)
    return resp


def _whole(value: str, field: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise InvalidInput(f"{field}: {value!r} is not a whole number", field=field) from None
    if n < 0:
        raise InvalidInput(f"{field}: must not be negative", field=field)
    return n


# --- assembly ----------------------------------------------------------------------------


async def _release_long_requests(app: web.Application) -> None:
    """At shutdown: answer parked blocking queries and end event streams, so that
    clients reconnect (to this server restarted, or the next one) without waiting."""
    app[BLOCKING].release_all()
    streams = app[STREAMS]
    for task in [*streams]:
        task.cancel()


def build_app(
    registry: Registry, *, token: str = "", config: dict[str, str] | None = None
) -> web.Application:
    """The aiohttp application serving one registry; ``config`` is shown by /status
    (already redacted)."""
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES)
    cache = AnswerCache(registry.catalog)
    app[REGISTRY] = registry
    app[CACHE] = cache
    app[BLOCKING] = BlockingQueries(registry.catalog, cache)
    app[TOKEN] = token
    app[CONFIG] = dict(config or {})
    app[FRAMES] = FrameCache()
    app[STATS] = {"event_streams": 0}
    app[OPENAPI] = _encode(openapi_spec(__version__))
    streams: set[asyncio.Task[object]] = set()
    app[STREAMS] = streams
    app.on_shutdown.append(_release_long_requests)
    r = app.router
    r.add_put("/api/v1/instances/{id}", put_instance)
    r.add_get("/api/v1/instances/{id}", get_instance)
    r.add_delete("/api/v1/instances/{id}", delete_instance)
    r.add_put("/api/v1/instances/{id}/heartbeat", heartbeat)
    r.add_put("/api/v1/instances/{id}/status", put_status)
    r.add_put("/api/v1/instances/{id}/maintenance", put_maintenance)
    r.add_get("/api/v1/instances", list_instances)
    r.add_post("/api/v1/batch", post_batch)
    r.add_get("/api/v1/services", list_services)
    r.add_get("/api/v1/services/{name}", service_instances)
    r.add_get("/api/v1/nodes", list_nodes)
    r.add_get("/api/v1/events", events)
    r.add_get("/health", health)
    r.add_get("/status", status)
    r.add_get("/openapi.json", openapi)
    return app
