"""The HTTP API (aiohttp): native ``/api/v1``, ``/health``, ``/status``, ``/openapi.json``.

Reads are answered from bytes encoded once per revision (``AnswerCache``); blocking
queries park on ``BlockingQueries``; writes go through the ``Registry``. Errors are
translated once, in ``error_middleware``, into ``{"error", "message", "field"}``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import msgspec
from aiohttp import web

from waypost import sse as sse_frames
from waypost._version import __version__
from waypost.acl import READ, WRITE, AclState, Authorizer
from waypost.aio import LoopMonitor
from waypost.api.acl import AclGate, Limits, retry_after
from waypost.api.blocking import Answer, AnswerCache, BlockingQueries, Key
from waypost.api.browser import BrowserGuard
from waypost.api.conns import ConnectionLimits
from waypost.api.consul import ConsulApi, add_consul_routes, agent_address
from waypost.api.metrics import (
    DnsCounts,
    InstanceGauge,
    WaypostCollector,
    exposition,
    metrics_registry,
)
from waypost.api.openapi import openapi_spec
from waypost.api.ui import add_ui_routes, ui_files
from waypost.catalog import Catalog
from waypost.checking import CheckHost
from waypost.durations import format_duration, parse_duration
from waypost.errors import (
    Conflict,
    Gone,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
    WaypostError,
)
from waypost.model import (
    LABEL_RE,
    MAX_LEASE_ID,
    Batch,
    BatchOutcome,
    BatchResult,
    DnsStatus,
    Entry,
    EntryRef,
    Event,
    HealthReport,
    Instance,
    ItemResult,
    KVPair,
    Lease,
    LeaseGrant,
    LeaseGuardStatus,
    LoopStatus,
    MaintenanceUpdate,
    Node,
    Query,
    Route,
    ServerStatus,
    ServiceConfig,
    Status,
    StatusUpdate,
    WriteResult,
    decode,
    is_label,
    parse_status,
    validate_instance,
)
from waypost.prometheus import target_groups
from waypost.query import MAX_WAIT_S, parse_index, parse_query
from waypost.registry import Registry
from waypost.store.base import LeaseState, gone, missing
from waypost.telemetry import TELEMETRY

log = logging.getLogger("waypost.api")

# Bodies over 1 MiB are refused (etcd's default request limit is 1.5 MiB, Consul's KV 512 KiB).
MAX_BODY_BYTES = 1024 * 1024
# An idle event stream gets a comment this often, so proxies keep it open.
SSE_KEEPALIVE_S = 15.0
JSON = "application/json"
EVENT_KINDS = ("instance", "node", "service_config", "route", "kv")

_encode = msgspec.json.Encoder().encode
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REGISTRY = web.AppKey("registry", Registry)
CACHE = web.AppKey("cache", AnswerCache)
BLOCKING = web.AppKey("blocking", BlockingQueries)
OPENAPI = web.AppKey("openapi", bytes)
NODE_ENTRY = web.AppKey("node_entry", list[bytes])  # the server sets it once it serves
STATS = web.AppKey("stats", dict[str, int])
STREAMS = web.AppKey("streams", set[asyncio.Task[object]])
CHECKS = web.AppKey("checks", CheckHost)
DnsStatusFn = Callable[[], DnsStatus | None]


def _json(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=body, status=status, headers=headers, content_type=JSON)


def _error_response(err: WaypostError) -> web.Response:
    headers = retry_after(err) if isinstance(err, TooManyRequests) else None
    return _json(_encode(err.to_dict()), status=err.http_status, headers=headers)


READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_HTTP_ERRORS: dict[int, type[WaypostError]] = {
    404: NotFound,
    405: InvalidInput,
    413: PayloadTooLarge,
}


def failure_response(request: web.BaseRequest, exc: Exception) -> web.Response:
    """The JSON error a failed request answers: a ``WaypostError`` as itself, aiohttp's own
    HTTP errors in our shape, anything else as a logged internal error."""
    if isinstance(exc, WaypostError):
        return _error_response(exc)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return _error_response(
            PayloadTooLarge(f"body: larger than the {MAX_BODY_BYTES} byte limit", field="body")
        )
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        cls = _HTTP_ERRORS.get(exc.status, WaypostError)
        message = {
            404: f"no such endpoint: {request.method} {request.path}",
            405: f"method {request.method} is not allowed on {request.path}",
        }.get(exc.status, exc.reason)
        resp = _json(_encode(cls(message).to_dict()), status=exc.status)
        if exc.status == 405 and "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return _error_response(WaypostError("internal error; see the server log"))


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as a JSON error with the right status; nothing else leaks.

    It also checks the token of writes: one middleware, since each costs a wrapper call
    on every request."""
    start = time.perf_counter()
    response: web.StreamResponse
    try:
        # Consul's routes (/v1/) check tokens as Consul's clients send them, themselves.
        if request.method not in READ_METHODS and not request.raw_path.startswith("/v1/"):
            request.app[API].gate.check_write(request)
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = failure_response(request, exc)
    except Exception as exc:  # CancelledError is not an Exception: it goes through
        response = failure_response(request, exc)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "other"
    # Streams and blocking queries last as long as their clients want: counted only.
    timed = route != "/api/v1/events" and "index=" not in request.raw_path
    took = time.perf_counter() - start if timed else None
    TELEMETRY.route(route, request.method).record(response.status, took)
    return response


async def _body(request: web.BaseRequest) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"body: larger than the {MAX_BODY_BYTES} byte limit", field="body")
    data = await request.read()
    if not data.strip():
        raise InvalidInput("body: empty; expected a JSON object", field="body")
    return data


def _label(value: str, field: str = "id") -> str:
    """A DNS-safe label from the path, exactly (a stray byte is a 400 naming ``field``)."""
    if LABEL_RE.match(value) is None:
        raise InvalidInput(
            f"{field}: {value!r} is not a DNS-safe label (letters, digits, hyphens; at most 63)",
            field=field,
        )
    return value


def _path_label(request: web.Request, name: str, field: str = "id") -> str:
    return _label(request.match_info[name], field)


def _params(request: web.BaseRequest) -> Iterable[tuple[str, str]]:
    """The query string's ``(name, value)`` pairs; none parsed when there is none."""
    return request.query.items() if "?" in request.raw_path else ()


def _keyed(entry_id: str, path_id: str, what: str) -> None:
    """The body may leave the key out (the path names it); if given it must agree."""
    if entry_id and entry_id != path_id:
        raise Conflict(
            f"{what}: the body names {entry_id!r} but the path names {path_id!r}", field=what
        )


def _instance_from(data: bytes, path_id: str) -> Instance:
    """Decode the instance of ``PUT /instances/{id}``; the body may leave ``id`` out."""
    inst = decode(data, Instance)
    _keyed(inst.id, path_id, "id")
    if not inst.id:
        inst = msgspec.structs.replace(inst, id=path_id)
    return validate_instance(inst)


def _registry(request: web.Request) -> Registry:
    return request.app[REGISTRY]


def _gate(request: web.Request) -> AclGate:
    return request.app[API].gate


def _write(entry_id: str, index: int) -> web.Response:
    return _json(_encode(WriteResult(id=entry_id, index=index)))


# --- instances ---------------------------------------------------------------------------


async def put_maintenance(request: web.Request) -> web.Response:
    iid = _path_label(request, "id")
    _gate(request).may_change_instance(request, iid)
    upd = decode(await _body(request), MaintenanceUpdate)
    return _write(iid, await _registry(request).set_maintenance(iid, upd.enable, upd.reason))


def _checks(request: web.Request) -> CheckHost:
    host = request.app.get(CHECKS)
    if host is None:
        raise Conflict("this server runs no checks", field="id")
    return host


async def run_instance_checks(request: web.Request) -> web.Response:
    iid = _path_label(request, "id")
    _no_params(request)
    _gate(request).may_change_instance(request, iid)
    inst = await _checks(request).run_now(iid)
    return _json(
        _encode(inst), headers={"X-Waypost-Index": str(_registry(request).catalog.revision)}
    )


def _service_node_params(request: web.Request) -> tuple[str | None, str | None]:
    for name in request.query:
        if name not in ("service", "node"):
            raise InvalidInput(
                f"{name}: unknown query parameter (known: service, node)", field=name
            )
    found: dict[str, str | None] = {"service": None, "node": None}
    for name in found:
        values = request.query.getall(name, [])
        if len(values) > 1:
            raise InvalidInput(f"{name}: given more than once", field=name)
        if values:
            if not is_label(values[0]):
                raise InvalidInput(f"{name}: must be a DNS-safe label", field=name)
            found[name] = values[0]
    return found["service"], found["node"]


async def run_checks(request: web.Request) -> web.Response:
    service, node = _service_node_params(request)
    if service is not None:
        _gate(request).require(request, WRITE, "service", service)
    else:
        _gate(request).require(request, WRITE, "operator")
    done = await _checks(request).run_matching(service, node)
    return _json(
        _encode(done), headers={"X-Waypost-Index": str(_registry(request).catalog.revision)}
    )


async def list_checks(request: web.Request) -> web.Response:
    service, node = _service_node_params(request)
    rows = _checks(request).rows(service, node)
    authz = _gate(request).authz(request)
    if not authz.reads_all["service"]:
        rows = [r for r in rows if authz.can(READ, "service", r.service)]
    return _json(
        _encode(rows), headers={"X-Waypost-Index": str(_registry(request).catalog.revision)}
    )


# --- nodes, service configs, routes ------------------------------------------------------


async def put_node(request: web.Request) -> web.Response:
    node_id = _path_label(request, "id")
    _gate(request).require(request, WRITE, "node", node_id)
    node = decode(await _body(request), Node)
    _keyed(node.id, node_id, "id")
    node = msgspec.structs.replace(node, id=node_id)
    return _write(node_id, await _registry(request).register_node(node))


def visible_nodes(cat: Catalog, authz: Authorizer) -> list[Node]:
    """The nodes ``authz`` may read, each as its readable instances show it (a hidden
    instance neither counts nor lends its address to a node)."""
    visible = None if authz.reads_instances() else authz.can_read_instance
    return [n for n in cat.nodes_as_seen(visible) if authz.can(READ, "node", n.id)]


async def get_node(request: web.Request) -> web.Response:
    node_id = _path_label(request, "id")
    cat = _registry(request).catalog
    node = cat.node(node_id)
    authz = _gate(request).authz(request)
    if node is not None and not authz.reads_instances():
        node = cat.node_as_seen(node, authz.can_read_instance)
    if node is None or not authz.can(READ, "node", node_id):
        raise missing("node", node_id)
    rev = _registry(request).catalog.mod_revision(node_id, "node")
    return _json(_encode(node), headers={"X-Waypost-Index": str(rev)})


async def delete_node(request: web.Request) -> web.Response:
    node_id = _path_label(request, "id")
    gate = _gate(request)
    if not gate.authz(request).can(READ, "node", node_id):
        raise missing("node", node_id)
    gate.require(request, WRITE, "node", node_id)
    return _write(node_id, await _registry(request).deregister_node(node_id))


# Service configs and routes: entries kept by the key their path names (the service for a
# config, the name for a route), read, written and deleted alike.
_KEYED: dict[str, tuple[type[ServiceConfig] | type[Route], str]] = {
    "service_config": (ServiceConfig, "service"),
    "route": (Route, "name"),
}


def _keyed_handlers(kind: str) -> tuple[Handler, Handler, Handler]:
    """PUT, GET and DELETE of one keyed entry kind."""
    type_, field = _KEYED[kind]

    async def put(request: web.Request) -> web.Response:
        key = _path_label(request, "name", field)
        _may_write_keyed(request, kind, key)
        entry = decode(await _body(request), type_)
        _keyed(entry.key, key, field)
        entry = msgspec.structs.replace(entry, **{field: key})
        return _write(key, await _registry(request).put_entry(entry))

    async def get(request: web.Request) -> web.Response:
        return _entry_answer(request, kind, _path_label(request, "name", field))

    async def delete(request: web.Request) -> web.Response:
        key = _path_label(request, "name", field)
        if _entry_hidden(request, kind, key):
            raise missing(kind, key)
        _may_write_keyed(request, kind, key)
        return _write(key, await _registry(request).delete_entry(kind, key))

    return put, get, delete


def _may_write_keyed(request: web.Request, kind: str, key: str) -> None:
    """A service's config: its service's writers, or operators; a route: operators."""
    gate = _gate(request)
    if kind == "service_config" and gate.authz(request).can(WRITE, "service", key):
        return
    gate.require(request, WRITE, "operator")


def _entry_hidden(request: web.Request, kind: str, key: str) -> bool:
    """Whether the token may not read this config or route (its service)."""
    entry = _registry(request).catalog.entry(kind, key)
    if not isinstance(entry, ServiceConfig | Route):
        return False
    return not _gate(request).authz(request).can(READ, "service", entry.service)


def _entry_answer(request: web.Request, kind: str, key: str) -> web.Response:
    cat = _registry(request).catalog
    entry = cat.entry(kind, key)
    if entry is None or _entry_hidden(request, kind, key):
        raise missing(kind, key)
    return _json(_encode(entry), headers={"X-Waypost-Index": str(cat.mod_revision(key, kind))})


# --- leases ------------------------------------------------------------------------------


def _lease_body(state: LeaseState) -> bytes:
    return _encode(
        Lease(
            id=state.id,
            ttl=format_duration(state.ttl_s),
            remaining_s=round(state.remaining_s, 3),
            entries=[EntryRef(kind=k, id=key) for k, key in state.entries],
        )
    )


def _lease_id(text: str) -> int:
    lease_id = parse_index(text, "id") if text.isascii() and text.isdigit() else 0
    if not 1 <= lease_id <= MAX_LEASE_ID:
        raise InvalidInput(f"id: {text!r} is not a lease id (a whole number)", field="id")
    return lease_id


def _may_hold_leases(gate: AclGate, request: web.BaseRequest) -> None:
    """Granting and keeping leases alive: any token that may write something."""
    authz = gate.authz(request)
    if not authz.may_write_something:
        gate.require(request, WRITE, "operator")


async def post_lease(request: web.Request) -> web.Response:
    _may_hold_leases(_gate(request), request)
    grant = decode(await _body(request), LeaseGrant)
    ttl_s = parse_duration(grant.ttl, field="ttl")
    if ttl_s <= 0:
        raise InvalidInput("ttl: must be longer than zero", field="ttl")
    ttl_s = min(ttl_s, 366 * 24 * 3600.0)
    lease_id = await _registry(request).grant(max(ttl_s, 0.001))
    return _json(_lease_body(LeaseState(id=lease_id, ttl_s=ttl_s, remaining_s=ttl_s)))


async def get_lease(request: web.Request) -> web.Response:
    _gate(request).require(request, READ, "operator")
    return _json(_lease_body(await _registry(request).lease(_lease_id(request.match_info["id"]))))


async def list_leases(request: web.Request) -> web.Response:
    _no_params(request)
    _gate(request).require(request, READ, "operator")
    states = await _registry(request).store.leases()
    return _json(b"[" + b",".join(_lease_body(s) for s in states) + b"]")


async def require_lease_holdings(
    gate: AclGate, request: web.BaseRequest, registry: Registry, lease_id: int
) -> None:
    """Keeping a lease alive keeps what it holds, and revoking it deletes that: either
    way the token must write everything on it (or be an operator). Lease ids are no
    secret (a TTL instance's is derived from its id): "may write something" once let a
    token that writes only ``web`` keep a ``db`` instance alive past its TTL."""
    authz = gate.authz(request)
    if authz.can(WRITE, "operator"):
        return
    state = await registry.lease(lease_id)
    cat = registry.catalog
    for kind, key in state.entries:
        entry = cat.entry(kind, key)
        if isinstance(entry, Instance):
            gate.require_instance(request, WRITE, entry)
        elif isinstance(entry, Node):
            gate.require(request, WRITE, "node", key)
        else:
            gate.require(request, WRITE, "operator")


async def delete_lease(request: web.Request) -> web.Response:
    lease_id = _lease_id(request.match_info["id"])
    await require_lease_holdings(_gate(request), request, _registry(request), lease_id)
    index = await _registry(request).revoke(lease_id)
    return _write(str(lease_id), index)


# --- reads -------------------------------------------------------------------------------


async def list_configs(request: web.Request) -> web.Response:
    index, wait_s = _blocking_params(request)
    return await request.app[API].answer(("configs", None), index, wait_s, request)


async def list_routes(request: web.Request) -> web.Response:
    index, wait_s = _blocking_params(request)
    return await request.app[API].answer(("routes", None), index, wait_s, request)


def _no_params(request: web.BaseRequest) -> None:
    for name, _ in _params(request):
        raise InvalidInput(
            f"{name}: unknown query parameter (this endpoint takes none)", field=name
        )


def _blocking_params(request: web.BaseRequest) -> tuple[int | None, float]:
    """``index`` and ``wait`` of an endpoint that takes no filters."""
    items = _params(request)
    for name, _ in items:
        if name not in ("index", "wait"):
            raise InvalidInput(f"{name}: unknown query parameter (known: index, wait)", field=name)
    _, index, wait_s = parse_query(items)
    return index, wait_s


async def _problem(reg: Registry) -> str | None:
    """What is wrong with the server, if anything: not following, or a store that does
    not answer."""
    problem = reg.problem
    if problem is None:
        try:
            await reg.store.ping()
        except WaypostError as exc:
            problem = exc.message
    return problem


# --- the routes that carry load ----------------------------------------------------------

# A handler of a route that carries load: the request and the identifier its path names
# ("" for paths that name none).
Routed = Callable[[web.BaseRequest, str], Awaitable[web.StreamResponse]]
# Plain service queries (no query string) by service name; cleared when full.
MAX_PLAIN_KEYS = 10_000
# Answers filtered for a token, by (authorizer, key); cleared when full.
MAX_FILTERED = 10_000


def _failed_item(iid: str, err: WaypostError) -> ItemResult:
    return ItemResult(
        id=iid, status=err.http_status, error=err.code, message=err.message, field=err.field
    )


class Api:
    """What every request reads, and the handlers of the routes that carry load.

    Each handler takes the request and the identifier from its path, so the application
    (through its router and middleware) and the hot path (``api/hot.py``, which splits
    the path itself) run the same code and give the same answers, byte for byte.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        gate: AclGate,
        max_wait_s: float,
        config: dict[str, str],
        dns_status: DnsStatusFn,
        dns_counts: Callable[[], DnsCounts | None] = lambda: None,
    ) -> None:
        self.registry = registry
        self.gate = gate
        self.catalog = registry.catalog
        self.cache = AnswerCache(registry.catalog)
        self.blocking = BlockingQueries(registry.catalog, self.cache)
        self.max_wait_s = max_wait_s
        self.config = config
        self.dns_status = dns_status
        self.stats = {"event_streams": 0}
        self.loop_monitor = LoopMonitor()
        # The HTTP listener's connection limits (set by the server that owns the listener).
        self.connections: ConnectionLimits | None = None
        self.metrics_registry = metrics_registry(
            WaypostCollector(registry, TELEMETRY, self.gauges, dns_status, dns_counts)
        )
        self.instance_gauge = InstanceGauge()
        self._plain: dict[str, Key] = {}
        # Notices for event streams that are not entry changes (the lease guard holding
        # or letting go): (number, SSE frame), the latest few.
        self.notices: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=16)
        self.notice_seq = 0
        add_listener = getattr(registry.store, "add_guard_listener", None)
        if callable(add_listener):
            add_listener(self._guard_changed)
        self._filtered: dict[tuple[Authorizer, Key], tuple[bytes, bytes]] = {}

    def _guard_changed(self, guard: object) -> None:
        """The lease guard started or stopped holding: an ``event: lease_guard`` on every
        event stream, now."""
        status = _guard_status(self.registry)
        if status is None:
            return
        self.notice_seq += 1
        frame = sse_frames.frame(_encode(status), event="lease_guard")
        self.notices.append((self.notice_seq, frame))
        self.catalog.poke()

    async def answer(
        self, key: Key, index: int | None, wait_s: float, request: web.BaseRequest
    ) -> web.Response:
        """A read from the answer cache, or a blocking query parked until ``index`` passes;
        what the request's token may not read is left out."""
        authz = self.gate.authz(request)
        if index is None:
            ans: Answer = self.cache.get(key)
        else:
            limits = self.gate.limits
            holder = self.gate.limit_key(request, authz)
            limits.open_watch(holder)
            try:
                ans = await self.blocking.wait(key, index, min(wait_s, self.max_wait_s))
            finally:
                limits.close_watch(holder)
        if authz.sees_everything:
            return web.Response(body=ans.body, headers=ans.headers())
        return web.Response(body=self._visible(key, authz, ans), headers=ans.headers())

    def _visible(self, key: Key, authz: Authorizer, ans: Answer) -> bytes:
        """The answer for ``key`` with what ``authz`` may not read left out: computed
        once per answer and authorizer (both are new objects after any change)."""
        memo_key = (authz, key)
        got = self._filtered.get(memo_key)
        if got is not None and got[0] is ans.body:
            return got[1]
        body = self._filter(key, authz, ans)
        if len(self._filtered) >= MAX_FILTERED:
            self._filtered.clear()
        self._filtered[memo_key] = (ans.body, body)
        return body

    def _filter(self, key: Key, authz: Authorizer, ans: Answer) -> bytes:
        kind, query = key
        cat = self.catalog
        if kind in ("instances", "prometheus"):
            if authz.reads_instances():
                return ans.body
            assert query is not None
            insts = [i for i in cat.query(query) if authz.can_read_instance(i)]
            return _encode(target_groups(insts) if kind == "prometheus" else insts)
        if kind == "services":
            if authz.reads_instances():
                return ans.body
            return _encode([s for s in cat.services() if authz.can_read_service_name(s.name)])
        if kind == "nodes":
            if authz.reads_all["node"] and authz.reads_instances():
                return ans.body
            return _encode(visible_nodes(cat, authz))
        if authz.reads_all["service"]:
            return ans.body
        entries = cat.entries("route" if kind == "routes" else "service_config")
        return _encode(
            [e for e in entries if isinstance(e, ServiceConfig | Route)
             and authz.can(READ, "service", e.service)]
        )  # fmt: skip

    # instances

    async def put_instance(self, request: web.BaseRequest, iid: str) -> web.Response:
        _label(iid)
        inst = _instance_from(await _body(request), iid)
        gate = self.gate
        if not gate.authz(request).writes_instances():
            gate.require_instance(request, WRITE, inst)
            gate.may_change_instance(request, iid, taking=True)  # a takeover of another's id
        return _write(iid, await self.registry.register(inst))

    async def delete_instance(self, request: web.BaseRequest, iid: str) -> web.Response:
        self.gate.may_change_instance(request, _label(iid))
        return _write(iid, await self.registry.deregister(iid))

    async def heartbeat(self, request: web.BaseRequest, iid: str) -> web.Response:
        self.gate.may_change_instance(request, _label(iid))
        return _write(iid, await self.registry.heartbeat(iid))

    async def put_status(self, request: web.BaseRequest, iid: str) -> web.Response:
        _label(iid)
        self.gate.may_change_instance(request, iid)
        upd = decode(await _body(request), StatusUpdate)
        index = await self.registry.set_status(iid, parse_status(upd.status), upd.output)
        return _write(iid, index)

    async def put_health(self, request: web.BaseRequest, iid: str) -> web.Response:
        _label(iid)
        self.gate.may_change_instance(request, iid)
        report = decode(await _body(request), HealthReport)
        return _write(iid, await self.registry.report_health(iid, report.health, agent=True))

    async def get_instance(self, request: web.BaseRequest, iid: str) -> web.Response:
        inst = self.catalog.get(_label(iid))
        if inst is None or not (
            self.gate.authz(request).sees_everything
            or self.gate.authz(request).can_read_instance(inst)
        ):
            raise missing("instance", iid)
        return _json(
            _encode(inst), headers={"X-Waypost-Index": str(self.catalog.mod_revision(iid))}
        )

    # reads

    async def list_instances(self, request: web.BaseRequest, _: str = "") -> web.Response:
        query, index, wait_s = parse_query(_params(request))
        return await self.answer(("instances", query), index, wait_s, request)

    async def service_instances(self, request: web.BaseRequest, name: str) -> web.Response:
        _label(name, "service")
        if "?" not in request.raw_path:  # the common case: the key is kept by name
            key = self._plain.get(name)
            if key is None:
                if len(self._plain) >= MAX_PLAIN_KEYS:
                    self._plain.clear()
                key = self._plain[name] = ("instances", Query(service=name))
            authz = self.gate.authz(request)
            ans = self.cache.get(key)
            if authz.sees_everything:
                return web.Response(body=ans.body, headers=ans.headers())
            return web.Response(body=self._visible(key, authz, ans), headers=ans.headers())
        query, index, wait_s = parse_query(request.query.items(), service=name)
        return await self.answer(("instances", query), index, wait_s, request)

    async def prometheus_targets(self, request: web.BaseRequest, _: str = "") -> web.Response:
        """Prometheus ``http_sd_configs``: the matching instances as target groups; the
        healthy ones (passing, not in maintenance) unless ``status`` says otherwise."""
        query, index, wait_s = parse_query(_params(request))
        if not query.status:
            query = msgspec.structs.replace(query, status=(Status.PASSING,))
        return await self.answer(("prometheus", query), index, wait_s, request)

    async def list_services(self, request: web.BaseRequest, _: str = "") -> web.Response:
        index, wait_s = _blocking_params(request)
        return await self.answer(("services", None), index, wait_s, request)

    async def list_nodes(self, request: web.BaseRequest, _: str = "") -> web.Response:
        index, wait_s = _blocking_params(request)
        return await self.answer(("nodes", None), index, wait_s, request)

    # leases

    async def keepalive_lease(self, request: web.BaseRequest, text: str) -> web.Response:
        lease_id = _lease_id(text)
        _may_hold_leases(self.gate, request)
        await require_lease_holdings(self.gate, request, self.registry, lease_id)
        ttl_s = await self.registry.keepalive(lease_id)
        return _json(_lease_body(LeaseState(id=lease_id, ttl_s=ttl_s, remaining_s=ttl_s)))

    # batches

    async def post_batch(self, request: web.BaseRequest, _: str = "") -> web.Response:
        batch = decode(await _body(request), Batch)
        if not batch.atomic:
            return await self._loose_batch(batch, request)
        if batch.heartbeat:
            raise InvalidInput(
                "heartbeat: only in a batch with atomic false (heartbeats are not all-or-nothing)",
                field="heartbeat",
            )
        register = []
        for i, inst in enumerate(batch.register):
            try:
                register.append(validate_instance(inst))
            except WaypostError as exc:
                field = f"register[{i}].{exc.field}" if exc.field else f"register[{i}]"
                raise type(exc)(f"register[{i}].{exc.message}", field=field) from None
        if not self.gate.authz(request).writes_instances():
            for inst in register:
                self.gate.require_instance(request, WRITE, inst)
                self.gate.may_change_instance(request, inst.id)
            for iid in batch.deregister:
                self.gate.may_change_instance(request, iid)
        index = await self.registry.batch(register, batch.deregister)
        result = BatchResult(
            index=index,
            registered=[i.id for i in batch.register],
            deregistered=list(batch.deregister),
        )
        return _json(_encode(result))

    async def _loose_batch(self, batch: Batch, request: web.BaseRequest) -> web.Response:
        """Each item as its own call, all at once: the store's group commit still writes
        the registrations that come together in one transaction."""
        gate = self.gate
        check: Callable[[Instance | str], None] | None = None
        if not gate.authz(request).writes_instances():

            def check(item: Instance | str) -> None:
                if isinstance(item, Instance):
                    gate.require_instance(request, WRITE, item)
                    item = item.id
                gate.may_change_instance(request, item)

        registered, others = await asyncio.gather(
            self._registers(batch.register, check),
            asyncio.gather(
                *(self._item("deregister", iid, check) for iid in batch.deregister),
                *(self._item("heartbeat", iid, check) for iid in batch.heartbeat),
            ),
        )
        results = [*registered, *others]
        first_deregister = len(batch.register)
        first_heartbeat = first_deregister + len(batch.deregister)
        indexes = [r.index for r in results if r.index is not None]
        outcome = BatchOutcome(
            index=max([self.catalog.revision, *indexes]),
            register=results[:first_deregister],
            deregister=results[first_deregister:first_heartbeat],
            heartbeat=results[first_heartbeat:],
        )
        return _json(_encode(outcome))

    async def _registers(
        self, insts: list[Instance], check: Callable[[Instance | str], None] | None
    ) -> list[ItemResult]:
        """The registrations of a non-atomic batch, each answered as its own call."""
        valid: list[Instance] = []
        refused: dict[int, ItemResult] = {}
        for n, inst in enumerate(insts):
            try:
                checked = validate_instance(inst)
                if check is not None:
                    check(checked)
                valid.append(checked)
            except WaypostError as err:
                refused[n] = _failed_item(inst.id, err)
        done = iter(await self.registry.register_each(valid))
        out = []
        for n, inst in enumerate(insts):
            if n in refused:
                out.append(refused[n])
                continue
            result = next(done)
            if isinstance(result, int):
                out.append(ItemResult(id=inst.id, status=200, index=result))
            elif isinstance(result, WaypostError):
                out.append(_failed_item(inst.id, result))
            else:  # as the middleware: logged, answered as an internal error
                log.error("unhandled error on a batch item register %r", inst.id, exc_info=result)
                out.append(
                    _failed_item(inst.id, WaypostError("internal error; see the server log"))
                )
        return out

    async def _item(
        self, kind: str, item: Instance | str, check: Callable[[Instance | str], None] | None
    ) -> ItemResult:
        """One item of a non-atomic batch: the answer its own call would have had."""
        iid = item.id if isinstance(item, Instance) else item
        try:
            if check is not None:
                check(item)
            if isinstance(item, Instance):
                index = await self.registry.register(validate_instance(item))
            elif kind == "deregister":
                index = await self.registry.deregister(iid)
            else:
                index = await self.registry.heartbeat(iid)
            return ItemResult(id=iid, status=200, index=index)
        except WaypostError as err:
            return _failed_item(iid, err)
        except Exception as exc:  # as the middleware: logged, answered as an internal error
            log.error("unhandled error on a batch item %s %r", kind, iid, exc_info=exc)
            return _failed_item(iid, WaypostError("internal error; see the server log"))

    # the server

    async def metrics(self, request: web.BaseRequest, _: str = "") -> web.Response:
        """Prometheus' text format (``api/metrics.py``; every metric in docs/metrics.md)."""
        self.gate.require(request, READ, "agent")
        return web.Response(
            body=await exposition(self.metrics_registry, self.instance_gauge, self.catalog),
            headers={"Content-Type": METRICS_TYPE},
        )

    def gauges(self) -> dict[str, int]:
        """The API's and the store's gauges for ``/metrics``."""
        out = {
            "blocking_queries": self.blocking.count,
            "event_streams": self.stats["event_streams"],
        }
        leases = getattr(self.registry.store, "lease_count", None)
        if callable(leases):
            out["leases"] = int(leases())
        return out

    async def health(self, request: web.BaseRequest, _: str = "") -> web.Response:
        problem = await _problem(self.registry)
        if problem is not None:
            return _json(_encode({"status": "failing", "message": problem}), status=503)
        return _json(b'{"status":"serving"}')

    async def status(self, request: web.BaseRequest, _: str = "") -> web.Response:
        # What the server is and holds (settings, counts, connections): as /metrics.
        self.gate.require(request, READ, "agent")
        reg = self.registry
        cat = self.catalog
        problem = await _problem(reg)
        dns = self.dns_status()
        mon = self.loop_monitor
        if dns is not None and problem is not None:
            dns = msgspec.structs.replace(dns, stale=True)
        body = ServerStatus(
            version=__version__,
            node=reg.node_name,
            uptime_s=round(time.time() - reg.started_at, 3),
            revision=cat.revision,
            instances=len(cat),
            services=cat.service_count(),
            nodes=cat.node_count(),
            store=reg.store.kind,
            store_member=getattr(reg.store, "endpoint", None),
            servers=sorted(reg.members.names) if reg.members is not None else [],
            server=reg.members.me if reg.members is not None else "",
            blocking_waiters=self.blocking.count,
            event_streams=self.stats["event_streams"],
            following=reg.problem is None,
            problem=problem,
            skipped_records=reg.store.skipped_records,
            config=self.config,
            dns=dns,
            connections=self.connections.status() if self.connections is not None else None,
            lease_guard=_guard_status(reg),
            event_loop=LoopStatus(
                max_stall_ms=round(mon.max_stall_s * 1000, 3),
                stalls_over_20ms=mon.stalls,
                recent_stalls=[(round(t, 3), round(s * 1000, 3)) for t, s in mon.recent],
            ),
        )
        return _json(_encode(body))


def _guard_status(reg: Registry) -> LeaseGuardStatus | None:
    guard = getattr(reg.store, "lease_guard", None)
    if guard is None:
        return None
    return LeaseGuardStatus(
        holding=guard.holding, held=guard.held, since=guard.since,
        times_triggered=guard.times_triggered,
    )  # fmt: skip


API = web.AppKey("api", Api)
# The text format every Prometheus reads (2.x included).
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def _start_monitor(app: web.Application) -> None:
    app[API].loop_monitor.start()


async def _stop_monitor(app: web.Application) -> None:
    app[API].loop_monitor.stop()


def _routed(handler: Routed, param: str = "") -> Handler:
    """The application's handler for a route the hot path also serves."""

    async def route(request: web.Request) -> web.StreamResponse:
        return await handler(request, request.match_info[param] if param else "")

    return route


async def openapi(request: web.Request) -> web.Response:
    return _json(request.app[OPENAPI])


# --- event stream ------------------------------------------------------------------------


class FrameCache:
    """SSE frames of recent events, encoded once and shared by every stream of one app."""

    LIMIT = 8192

    def __init__(self) -> None:
        self._frames: dict[tuple[int, int, bool], bytes] = {}

    def frame(self, ev: Event, single: bool) -> bytes:
        key = (ev.revision, ev.index, single)
        got = self._frames.get(key)
        if got is None:
            # Instance events keep the names they always had (put, delete); the other
            # kinds are named kind.type, which clients that know only instances ignore.
            name = ev.type if ev.kind == "instance" else f"{ev.kind}.{ev.type}"
            eid = sse_frames.event_id(ev.revision, ev.index, single)
            got = sse_frames.frame(_encode(ev.entry), event=name, id=eid)
            if len(self._frames) >= self.LIMIT:
                self._frames.clear()
            self._frames[key] = got
        return got


FRAMES = web.AppKey("frames", FrameCache)


def _wanted(
    ev: Event, kinds: frozenset[str], service: str | None, authz: Authorizer | None
) -> bool:
    if ev.kind not in kinds:
        return False
    entry = ev.entry
    if authz is not None and not _readable(entry, authz):
        return False
    if service is None:
        return True
    if isinstance(entry, Instance | ServiceConfig | Route):
        return entry.service == service
    return False


def _readable(entry: Entry, authz: Authorizer) -> bool:
    """Whether ``authz`` may read an entry an event carries."""
    if isinstance(entry, Instance):
        return authz.can_read_instance(entry)
    if isinstance(entry, Node):
        return authz.can(READ, "node", entry.id)
    if isinstance(entry, ServiceConfig | Route):
        return authz.can(READ, "service", entry.service)
    if isinstance(entry, KVPair):
        return authz.can(READ, "key", entry.key)
    return authz.can(READ, "acl")


def _event_params(
    request: web.Request,
) -> tuple[frozenset[str], str | None, tuple[int, int] | None]:
    service = None
    kinds = frozenset(EVENT_KINDS)
    start: tuple[int, int] | None = None
    for name, value in request.query.items():
        if name == "service":
            service = value
        elif name == "index":
            start = (parse_index(value), sse_frames.WHOLE)
        elif name == "token":
            pass  # the token (api/acl.py), for EventSource that sends no headers
        elif name == "kind":
            asked = frozenset(value.split(","))
            unknown = asked - kinds
            if unknown or not value:
                raise InvalidInput(
                    f"kind: {value!r} names no event kind (a comma list of "
                    f"{', '.join(EVENT_KINDS)})",
                    field="kind",
                )
            kinds = asked
        else:
            raise InvalidInput(
                f"{name}: unknown query parameter (known: index, kind, service, token)", field=name
            )
    last_id = request.headers.get("Last-Event-ID")
    if last_id:
        start = sse_frames.parse_event_id(last_id)
        if start is None:
            raise InvalidInput(
                f"Last-Event-ID: {last_id!r} is not an event id (N or N.I)", field="Last-Event-ID"
            )
    return kinds, service, start


def _after(ev: Event, pos: tuple[int, int]) -> bool:
    """Whether ``ev`` comes after position ``pos`` (see ``sse.parse_event_id``)."""
    rev, idx = pos
    return ev.revision > rev or (ev.revision == rev and idx != sse_frames.WHOLE and ev.index > idx)


def _render(
    backlog: list[Event],
    sent: tuple[int, int],
    upto: int,
    kinds: frozenset[str],
    service: str | None,
    frames: FrameCache,
    authz: Authorizer | None = None,
) -> tuple[list[bytes], tuple[int, int]]:
    """The frames of ``backlog`` after position ``sent`` that the stream wants, and the
    position after them: past ``upto`` (an id-only frame moves the client there, so a
    resumed stream never replays what was filtered out or had no events)."""
    parts = []
    for n, ev in enumerate(backlog):
        if not _after(ev, sent) or not _wanted(ev, kinds, service, authz):
            continue
        last = n + 1 == len(backlog) or backlog[n + 1].revision != ev.revision
        single = last and ev.index == 0
        parts.append(frames.frame(ev, single))
        sent = (ev.revision, sse_frames.WHOLE if single else ev.index)
        if last and not single:  # the revision is complete: say so (resume from "R")
            parts.append(sse_frames.id_only(ev.revision))
            sent = (ev.revision, sse_frames.WHOLE)
    if upto > sent[0] or (upto == sent[0] and sent[1] != sse_frames.WHOLE):
        parts.append(sse_frames.id_only(upto))
        sent = (upto, sse_frames.WHOLE)
    return parts, sent


async def events(request: web.Request) -> web.StreamResponse:
    reg = _registry(request)
    cat = reg.catalog
    gate = _gate(request)
    authz = gate.authz(request)
    kinds, service, start = _event_params(request)
    rev, idx = start if start is not None else (cat.revision, sse_frames.WHOLE)
    # Resuming inside revision R reads R again: everything after R - 1.
    after = rev if idx == sse_frames.WHOLE else rev - 1
    if after < reg.store.compacted:
        raise gone(after, reg.store.compacted)
    if rev > cat.revision:
        # Only a registry that lost its data (a wiped SQLite file) is behind a client.
        raise Gone(
            f"revision {rev} is ahead of this registry (at {cat.revision}): it was reset; "
            "re-list and watch from the listed index",
            field="index",
        )

    async def fetch(after: int) -> tuple[list[Event], int]:
        """Events after ``after`` that the catalog has applied, and the revision they
        reach (past revisions with no events of ours too, so nothing spins on them)."""
        now = cat.revision
        got = cat.events_since(after)
        if got is not None:
            return got, now
        got = [ev for ev in await reg.store.changes(after) if ev.revision <= now]
        return got, (got[-1].revision if got else now)

    backlog, upto = await fetch(after)  # Gone here becomes a 410 before the stream starts
    holder = gate.limit_key(request, authz)
    gate.limits.open_watch(holder)
    try:
        return await _stream(request, backlog, upto, (rev, idx), fetch, kinds, service, authz)
    finally:
        gate.limits.close_watch(holder)


async def _stream(
    request: web.Request,
    backlog: list[Event],
    upto: int,
    sent: tuple[int, int],
    fetch: Callable[[int], Awaitable[tuple[list[Event], int]]],
    kinds: frozenset[str],
    service: str | None,
    authz: Authorizer,
) -> web.StreamResponse:
    """The event stream from position ``sent`` (the client's), ``backlog`` first."""
    cat = _registry(request).catalog
    gate = _gate(request)
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
    api = request.app[API]
    noticed = api.notice_seq
    try:
        await resp.write(b"retry: 1000\n\n")
        while True:
            if api.notice_seq > noticed:  # notices since the last look (not entries)
                await resp.write(b"".join(f for n, f in api.notices if n > noticed))
                noticed = api.notice_seq
            if not gate.state.alive(authz):  # revoked or expired: the stream ends
                gate.refused(request, authz, Unauthorized("token revoked; event stream closed"))
                body = _encode(Unauthorized("ACL token revoked or expired").to_dict())
                await resp.write(sse_frames.frame(body, event="revoked"))
                break
            authz = gate.state.current(authz)
            view = None if authz.sees_everything else authz
            parts, sent = _render(backlog, sent, upto, kinds, service, frames, view)
            if parts:
                await resp.write(b"".join(parts))
            if sent[0] < cat.revision:
                backlog, upto = await fetch(sent[0])
                continue
            if not await cat.wait_for_revision(sent[0] + 1, SSE_KEEPALIVE_S, wakeable=True):
                if api.notice_seq > noticed:
                    continue  # woken for a notice: sent at the top of the loop
                await resp.write(sse_frames.comment("keepalive"))
                backlog, upto = [], sent[0]
                continue
            try:
                backlog, upto = await fetch(sent[0])
            except Gone as exc:
                await resp.write(sse_frames.frame(_encode(exc.to_dict()), event="gone"))
                break
    except ConnectionResetError:
        pass
    finally:
        stats["event_streams"] -= 1
        request.app[STREAMS].discard(task)
    return resp


# --- assembly ----------------------------------------------------------------------------


async def _release_long_requests(app: web.Application) -> None:
    """At shutdown: answer parked blocking queries and end event streams, so that
    clients reconnect (to this server restarted, or the next one) without waiting."""
    app[BLOCKING].release_all()
    streams = app[STREAMS]
    for task in [*streams]:
        task.cancel()


def build_app(
    registry: Registry,
    *,
    token: str = "",
    config: dict[str, str] | None = None,
    max_wait_s: float = MAX_WAIT_S,
    checks: CheckHost | None = None,
    dns_status: Callable[[], DnsStatus | None] | None = None,
    dns_counts: Callable[[], DnsCounts | None] | None = None,
    acl: AclState | None = None,
    limits: Limits | None = None,
    browser: BrowserGuard | None = None,
) -> web.Application:
    """The aiohttp application serving one registry; ``config`` is shown by /status
    (already redacted); blocking queries wait at most ``max_wait_s``."""
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES)
    api = Api(
        registry,
        max_wait_s=max_wait_s,
        config=dict(config or {}),
        dns_status=dns_status or (lambda: None),
        dns_counts=dns_counts or (lambda: None),
        gate=AclGate(
            registry,
            acl or AclState(registry.catalog, legacy_token=token),
            limits or Limits(),
            browser,
        ),
    )
    app[API] = api
    app[REGISTRY] = registry
    app[CACHE] = api.cache
    app[BLOCKING] = api.blocking
    app[FRAMES] = FrameCache()
    app[STATS] = api.stats
    app[OPENAPI] = _encode(openapi_spec(__version__))
    if checks is not None:
        app[CHECKS] = checks
    streams: set[asyncio.Task[object]] = set()
    app[STREAMS] = streams
    app.on_shutdown.append(_release_long_requests)
    app.on_startup.append(_start_monitor)
    app.on_cleanup.append(_stop_monitor)
    r = app.router
    r.add_put("/api/v1/instances/{id}", _routed(api.put_instance, "id"))
    r.add_get("/api/v1/instances/{id}", _routed(api.get_instance, "id"))
    r.add_delete("/api/v1/instances/{id}", _routed(api.delete_instance, "id"))
    r.add_put("/api/v1/instances/{id}/heartbeat", _routed(api.heartbeat, "id"))
    r.add_put("/api/v1/instances/{id}/status", _routed(api.put_status, "id"))
    r.add_put("/api/v1/instances/{id}/maintenance", put_maintenance)
    r.add_put("/api/v1/instances/{id}/health", _routed(api.put_health, "id"))
    r.add_post("/api/v1/instances/{id}/check", run_instance_checks)
    r.add_post("/api/v1/check", run_checks)
    r.add_get("/api/v1/checks", list_checks)
    r.add_get("/api/v1/instances", _routed(api.list_instances))
    r.add_post("/api/v1/batch", _routed(api.post_batch))
    r.add_get("/api/v1/services", _routed(api.list_services))
    r.add_get("/api/v1/services/{name}", _routed(api.service_instances, "name"))
    put_config, get_config, delete_config = _keyed_handlers("service_config")
    r.add_get("/api/v1/configs", list_configs)
    r.add_get("/api/v1/services/{name}/config", get_config)
    r.add_put("/api/v1/services/{name}/config", put_config)
    r.add_delete("/api/v1/services/{name}/config", delete_config)
    r.add_get("/api/v1/nodes", _routed(api.list_nodes))
    r.add_get("/api/v1/prometheus/targets", _routed(api.prometheus_targets))
    r.add_put("/api/v1/nodes/{id}", put_node)
    r.add_get("/api/v1/nodes/{id}", get_node)
    r.add_delete("/api/v1/nodes/{id}", delete_node)
    r.add_get("/api/v1/routes", list_routes)
    put_route, get_route, delete_route = _keyed_handlers("route")
    r.add_put("/api/v1/routes/{name}", put_route)
    r.add_get("/api/v1/routes/{name}", get_route)
    r.add_delete("/api/v1/routes/{name}", delete_route)
    r.add_post("/api/v1/leases", post_lease)
    r.add_get("/api/v1/leases", list_leases)
    r.add_get("/api/v1/leases/{id}", get_lease)
    r.add_put("/api/v1/leases/{id}/keepalive", _routed(api.keepalive_lease, "id"))
    r.add_delete("/api/v1/leases/{id}", delete_lease)
    r.add_get("/api/v1/events", events)
    api.gate.add_routes(r)
    r.add_get("/health", _routed(api.health))
    r.add_get("/status", _routed(api.status))
    r.add_get("/metrics", _routed(api.metrics))
    r.add_get("/openapi.json", openapi)
    add_ui_routes(r, ui_files())
    consul = ConsulApi(
        registry,
        api.blocking,
        node=(config or {}).get("node") or "waypost",
        address=agent_address((config or {}).get("http", "")),
        gate=api.gate,
        max_wait_s=max_wait_s,
    )
    add_consul_routes(r, consul)
    app[NODE_ENTRY] = []
    r.add_get("/api/v1/node-registry", node_registry)
    return app


async def node_registry(request: web.Request) -> web.Response:
    """This server's node registry entry, as its ``node-registry.json`` holds it."""
    # The server's own node: its name, version and addresses are read as the node's.
    _gate(request).require(request, READ, "node", _registry(request).node_name)
    held = request.app[NODE_ENTRY]
    if not held:
        raise NotFound("node-registry: not written yet", field="node-registry")
    return web.Response(body=held[-1], content_type="application/json")
