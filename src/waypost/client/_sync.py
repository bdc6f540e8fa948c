"""``Client``: the blocking client on httpx, same methods as ``AsyncClient``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx
import msgspec

from waypost.client import _core
from waypost.client._coalesce import ThreadCoalescer, encode_id
from waypost.client._core import QueryResult, Request, WatchState
from waypost.durations import parse_duration
from waypost.errors import NotFound, Unavailable, WaypostError
from waypost.model import (
    AclPolicy,
    AclRule,
    AclTokenView,
    BatchResult,
    CheckRow,
    CheckState,
    Event,
    Instance,
    Kind,
    Node,
    Route,
    ServerStatus,
    ServiceConfig,
    ServiceSummary,
    Status,
    WriteResult,
    is_label,
)
from waypost.model import Lease as LeaseInfo
from waypost.sse import SseParser, SseTooLarge

if TYPE_CHECKING:
    from waypost.client.cache import ServiceCache
    from waypost.client.http import SyncServiceHttp
    from waypost.traffic.exchange import Policies

log = logging.getLogger("waypost.client")


class KeepAlive:
    """A background heartbeat thread for one TTL instance; ``stop()`` ends it.

    Unreachable servers are retried; any other error (the instance was deregistered, or
    has no ttl) ends the heartbeats and is kept in ``error``."""

    def __init__(self, thread: threading.Thread, stopped: threading.Event) -> None:
        self._thread = thread
        self._stopped = stopped
        self.error: WaypostError | None = None

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


class KeptLease:
    """A lease kept alive from a background thread (``client.lease(ttl)``).

    Put instances and nodes on it with ``lease=kept.id``: while it runs they stay; when
    it stops (or this process dies) they are deleted once the TTL passes. ``error``
    holds what ended it early (the lease was revoked or expired)."""

    def __init__(self, lease_id: int, ttl_s: float) -> None:
        self.id = lease_id
        self.ttl_s = ttl_s
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._revoke: Any = None
        self.error: WaypostError | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, *, revoke: bool = True) -> None:
        """Stop the keep-alives; with ``revoke`` (the default) end the lease now, so what
        it holds is deleted at once instead of after its TTL."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
        if revoke and self._revoke is not None and self.error is None:
            with contextlib.suppress(WaypostError):
                self._revoke()
            self._revoke = None


class Client:
    """Talks to Waypost servers from plain code; ``with Client(url) as c:``."""

    def __init__(
        self,
        servers: str | Sequence[str] | None = None,
        *,
        token: str | None = None,
        timeout_s: float = _core.DEFAULT_TIMEOUT_S,
        cache_snapshot: str | os.PathLike[str] | None = None,
        join: Sequence[str] | None = None,
        trust_keys: Sequence[str] = (),
        dns_resolver: str | None = None,
        coalesce: bool = True,
        batch_max: int = 64,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``cache_snapshot``, ``join``, ``trust_keys``, ``dns_resolver``, ``tls``: as
        ``AsyncClient``'s. ``coalesce``: register, deregister and heartbeat calls made
        from several threads while one is in flight go together as one request when it
        ends (at most ``batch_max``), each caller still getting exactly its own call's
        answer; a call with none in flight is sent at once, alone."""
        self._servers, self.discovery = _core.discovery_for(
            servers, join, trust_keys, dns_resolver, token=token
        )
        self._discovering = threading.Lock()
        self._token = token
        self._cache_snapshot = cache_snapshot
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout_s = timeout_s
        self._http = httpx.Client(headers=headers, timeout=timeout_s, verify=tls or True)
        self._cache: ServiceCache | None = None
        self._service_pool: httpx.Client | None = None
        self._traffic: dict[str, dict[str, Policies]] = {}  # by zone/service called
        self._traffic_lock = threading.Lock()
        self.coalescer: ThreadCoalescer | None = None
        if coalesce:
            self.coalescer = ThreadCoalescer(
                lambda req: self._call(req).content, max_calls=batch_max
            )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pools (and the service cache, with its watches)."""
        if self._cache is not None:
            self._cache.close()
            self._cache = None
        if self._service_pool is not None:
            self._service_pool.close()
            self._service_pool = None
        self._http.close()

    # --- calling services -------------------------------------------------------------------

    @property
    def cache(self) -> ServiceCache:
        """The watch-fed service cache ``http()`` reads (made on first use; it runs its
        watches on an event loop in a thread of its own)."""
        if self._cache is None:
            from waypost.client.cache import ServiceCache

            self.discover()
            self._cache = ServiceCache(
                self._servers.urls,
                token=self._token,
                timeout_s=self._timeout_s,
                snapshot=self._cache_snapshot,
            )
        return self._cache

    def http(self, service: str, *, zone: str = "") -> SyncServiceHttp:
        """Requests to ``service`` by name, with its routes and traffic policies applied
        (balancing, circuit breaking, retries, splits): ``with client.http("api") as api:
        api.get("/users/7")``. ``zone``: this program's zone, for services whose load
        balancer prefers the caller's zone."""
        from waypost.client.http import SyncServiceHttp

        if self._service_pool is None:
            self._service_pool = httpx.Client(limits=httpx.Limits(max_connections=None))
        return SyncServiceHttp(
            self.cache,
            service,
            zone=zone,
            session=self._service_pool,
            policies=self._traffic.setdefault(f"{zone}/{service}", {}),
            lock=self._traffic_lock,
        )

    def discover(self, *, force: bool = False) -> None:
        """Run node discovery now (``force``), or when it has not run for its refresh
        interval; a no-op without ``join``. It runs on an event loop of its own, in a
        thread (safe to call from code that has a loop running)."""
        d = self.discovery
        if d is None:
            return
        with self._discovering:
            stale = d.refreshed_at is None or time.monotonic() - d.refreshed_at > d.refresh_s
            if force or stale:
                d._lock = None  # a new loop each time: no lock bound to an old one
                with concurrent.futures.ThreadPoolExecutor(1) as pool:
                    pool.submit(asyncio.run, d.refresh()).result()

    def _send(self, req: Request) -> httpx.Response:
        if self.discovery is None:
            return self._send_once(req)
        self.discover()
        try:
            return self._send_once(req)
        except Unavailable:
            self.discover(force=True)  # every server failed: look again, once
            return self._send_once(req)

    def _send_once(self, req: Request) -> httpx.Response:
        failures = []
        for url in self._servers.order():
            try:
                resp = self._http.request(
                    req.method,
                    url + req.path,
                    params=tuple(req.params),
                    content=req.body,
                    headers={"Content-Type": "application/json"} if req.body else None,
                    timeout=max(req.timeout_s, self._timeout_s),
                )
            except httpx.TransportError as exc:
                failures.append(f"{url} ({type(exc).__name__}: {exc})")
                if self.discovery is not None:
                    self.discovery.report(url, False, str(exc) or type(exc).__name__)
                continue
            self._servers.worked(url)
            return resp
        raise self._servers.unreachable(failures)

    def _call(self, req: Request) -> httpx.Response:
        resp = self._send(req)
        _core.raise_for_answer(resp.status_code, resp.content)
        return resp

    # --- writes --------------------------------------------------------------------------

    def register(
        self, instance: Instance | Mapping[str, Any] | None = None, /, **fields: Any
    ) -> WriteResult:
        """Register or replace an instance (an Instance, a mapping, or keyword fields)."""
        inst = _core.instance_of(instance, fields)
        req = _core.register_request(inst)
        return self._write("register", req.body or b"", req, inst.id)

    def deregister(self, instance_id: str) -> WriteResult:
        """Remove an instance; NotFound when it is not registered."""
        req = _core.deregister_request(instance_id)
        return self._write("deregister", encode_id(instance_id), req, instance_id)

    def heartbeat(self, instance_id: str) -> WriteResult:
        """Renew a TTL instance."""
        req = _core.heartbeat_request(instance_id)
        return self._write("heartbeat", encode_id(instance_id), req, instance_id)

    def _write(self, kind: str, item: bytes, req: Request, iid: str) -> WriteResult:
        # An id a batch cannot carry (not a DNS label) goes alone, for its own answer.
        if self.coalescer is not None and is_label(iid):
            return self.coalescer.submit(kind, item, req)
        return _core.decode_as(self._call(req).content, WriteResult)

    def set_status(self, instance_id: str, status: Status | str, output: str = "") -> WriteResult:
        """Set an instance's status and output."""
        resp = self._call(_core.status_request(instance_id, status, output))
        return _core.decode_as(resp.content, WriteResult)

    def report_health(self, instance_id: str, states: Sequence[CheckState]) -> WriteResult:
        """Report the states of an instance's checks (what an agent does on a change)."""
        resp = self._call(_core.health_request(instance_id, states))
        return _core.decode_as(resp.content, WriteResult)

    def checks(self, service: str | None = None, node: str | None = None) -> list[CheckRow]:
        """Every check of the instances of a service and/or node, with its state."""
        resp = self._call(_core.checks_request(service, node))
        return _core.decode_as(resp.content, list[CheckRow])

    def run_checks(
        self, instance_id: str | None = None, *, service: str | None = None, node: str | None = None
    ) -> list[Instance]:
        """Run checks the server runs now: one instance's, or a service's and/or node's."""
        if instance_id is not None:
            resp = self._call(_core.run_instance_checks_request(instance_id))
            return [_core.decode_as(resp.content, Instance)]
        resp = self._call(_core.run_checks_request(service, node))
        return _core.decode_as(resp.content, list[Instance])

    def maintenance(self, instance_id: str, enable: bool = True, reason: str = "") -> WriteResult:
        """Put an instance in (or, with ``enable=False``, out of) maintenance."""
        resp = self._call(_core.maintenance_request(instance_id, enable, reason))
        return _core.decode_as(resp.content, WriteResult)

    def batch(
        self,
        register: Iterable[Instance | Mapping[str, Any]] = (),
        deregister: Iterable[str] = (),
    ) -> BatchResult:
        """Register and deregister in one all-or-nothing write."""
        insts = [_core.instance_of(i, {}) for i in register]
        resp = self._call(_core.batch_request(insts, list(deregister)))
        return _core.decode_as(resp.content, BatchResult)

    def keepalive(self, instance_id: str, interval_s: float | None = None) -> KeepAlive:
        """Heartbeat ``instance_id`` from a background thread (default: a third of its TTL)."""
        every = interval_s
        if every is None:
            inst = self.get(instance_id)
            every = parse_duration(inst.ttl) / 3 if inst.ttl else 10.0
        stopped = threading.Event()

        def beat() -> None:
            try:
                while not stopped.is_set():
                    with contextlib.suppress(Unavailable):
                        self.heartbeat(instance_id)
                    stopped.wait(every)
            except WaypostError as exc:
                handle.error = exc
                log.warning("keep-alive of instance %s ended: %s", instance_id, exc.message)

        thread = threading.Thread(target=beat, name=f"waypost-keepalive-{instance_id}", daemon=True)
        handle = KeepAlive(thread, stopped)
        thread.start()
        return handle

    # --- nodes and leases ----------------------------------------------------------------

    def register_node(
        self,
        node_id: str,
        *,
        address: str | None = None,
        meta: Mapping[str, str] | None = None,
        lease: int | None = None,
    ) -> WriteResult:
        """Register (or replace) a node, optionally on a lease."""
        node = _core.node_of(node_id, address, meta, lease)
        return _core.decode_as(self._call(_core.node_request(node)).content, WriteResult)

    def deregister_node(self, node_id: str) -> WriteResult:
        """Remove a registered node."""
        resp = self._call(_core.node_delete_request(node_id))
        return _core.decode_as(resp.content, WriteResult)

    def lease(self, ttl: float | str, interval_s: float | None = None) -> KeptLease:
        """Grant a lease and keep it alive from a thread (every third of its TTL)."""
        granted = _core.decode_as(self._call(_core.lease_grant_request(ttl)).content, LeaseInfo)
        ttl_s = parse_duration(granted.ttl)
        kept = KeptLease(granted.id, ttl_s)
        every = interval_s if interval_s is not None else max(ttl_s / 3, 0.01)

        def beat() -> None:
            try:
                while not kept._stopped.wait(every):
                    with contextlib.suppress(Unavailable):
                        self._call(_core.lease_request("PUT", granted.id, "/keepalive"))
            except WaypostError as exc:
                kept.error = exc
                log.warning(
                    "lease %s ended behind this client's back (%s): what it held is gone",
                    granted.id,
                    exc.message,
                )

        kept._revoke = lambda: self._call(_core.lease_request("DELETE", granted.id))
        kept._thread = threading.Thread(
            target=beat, name=f"waypost-lease-{granted.id}", daemon=True
        )
        kept._thread.start()
        return kept

    def revoke_lease(self, lease_id: int) -> WriteResult:
        """End a lease now: every entry on it is deleted."""
        resp = self._call(_core.lease_request("DELETE", lease_id))
        return _core.decode_as(resp.content, WriteResult)

    # --- reads ---------------------------------------------------------------------------

    def get(self, instance_id: str) -> Instance:
        """One instance; NotFound when it is not registered."""
        return _core.decode_as(self._call(_core.get_request(instance_id)).content, Instance)

    def instances(
        self,
        service: str | None = None,
        *,
        version: str | None = None,
        tags: Iterable[str] = (),
        any_tags: Iterable[str] = (),
        status: Status | str | Iterable[Status | str] | None = None,
        node: str | None = None,
        kind: Kind | str | None = None,
        meta: Mapping[str, str] | None = None,
        index: int | None = None,
        wait: float | str | None = None,
    ) -> QueryResult:
        """Instances matching every filter; with ``index``, block until the answer changes."""
        req = _core.query_request(
            service,
            version=version,
            tags=tags,
            any_tags=any_tags,
            status=status,
            node=node,
            kind=kind,
            meta=meta,
            index=index,
            wait=wait,
        )
        resp = self._call(req)
        return QueryResult(
            index=int(resp.headers.get("X-Waypost-Index", "0")),
            instances=_core.decode_as(resp.content, list[Instance]),
            revision=int(resp.headers.get("X-Waypost-Revision", "0")),
        )

    def services(self) -> list[ServiceSummary]:
        """Every service with its instance counts by status, tags and versions."""
        resp = self._call(_core.simple_get("/api/v1/services"))
        return _core.decode_as(resp.content, list[ServiceSummary])

    def service_config(self, service: str) -> ServiceConfig | None:
        """A service's config entry, or None when it has none."""
        try:
            resp = self._call(_core.simple_get(f"/api/v1/services/{service}/config"))
        except NotFound:
            return None
        return _core.decode_as(resp.content, ServiceConfig)

    def set_service_config(
        self, service: str, config: ServiceConfig | Mapping[str, Any]
    ) -> WriteResult:
        """Write a service's config (policies every client and proxy applies)."""
        cfg = _core.config_of(service, config)
        resp = self._call(_core.put_config_request(service, cfg))
        return _core.decode_as(resp.content, WriteResult)

    def delete_service_config(self, service: str) -> WriteResult:
        """Remove a service's config (its clients go back to the defaults)."""
        resp = self._call(_core.delete_config_request(service))
        return _core.decode_as(resp.content, WriteResult)

    def routes(self) -> list[Route]:
        """Every routing rule."""
        return self.routes_at()[0]

    def routes_at(self) -> tuple[list[Route], int]:
        """Every routing rule, and the revision they are current at (to watch from)."""
        resp = self._call(_core.simple_get("/api/v1/routes"))
        revision = int(resp.headers.get("X-Waypost-Revision", "0"))
        return _core.decode_as(resp.content, list[Route]), revision

    def set_route(self, route: Route | Mapping[str, Any]) -> WriteResult:
        """Write a routing rule (by its name)."""
        resp = self._call(_core.put_route_request(_core.route_of(route)))
        return _core.decode_as(resp.content, WriteResult)

    def delete_route(self, name: str) -> WriteResult:
        resp = self._call(_core.delete_route_request(name))
        return _core.decode_as(resp.content, WriteResult)

    def service_configs(self) -> list[ServiceConfig]:
        """Every service's config entry, ordered by service."""
        return _core.decode_as(
            self._call(_core.simple_get("/api/v1/configs")).content, list[ServiceConfig]
        )

    # --- ACLs (docs/security.md) ----------------------------------------------------------

    def acl_bootstrap(self) -> AclTokenView:
        """The first management token (its secret shown this once); Forbidden after."""
        resp = self._call(_core.Request("POST", "/api/v1/acl/bootstrap", []))
        return _core.decode_as(resp.content, AclTokenView)

    def acl_policies(self) -> list[AclPolicy]:
        resp = self._call(_core.simple_get(_core.acl_path("policies")))
        return _core.decode_as(resp.content, list[AclPolicy])

    def acl_policy(self, name: str) -> AclPolicy:
        resp = self._call(_core.simple_get(_core.acl_path("policies", name)))
        return _core.decode_as(resp.content, AclPolicy)

    def acl_create_policy(
        self, name: str, rules: Sequence[AclRule | Mapping[str, Any]], description: str = ""
    ) -> AclPolicy:
        """A new policy of ``rules`` (``{"resource", "name", "access"}`` each)."""
        body = msgspec.json.encode(_core.acl_policy_of(name, rules, description))
        resp = self._call(_core.Request("POST", _core.acl_path("policies"), [], body))
        return _core.decode_as(resp.content, AclPolicy)

    def acl_update_policy(
        self, name: str, rules: Sequence[AclRule | Mapping[str, Any]], description: str = ""
    ) -> AclPolicy:
        body = msgspec.json.encode(_core.acl_policy_of(name, rules, description))
        resp = self._call(_core.Request("PUT", _core.acl_path("policies", name), [], body))
        return _core.decode_as(resp.content, AclPolicy)

    def acl_delete_policy(self, name: str) -> None:
        self._call(_core.Request("DELETE", _core.acl_path("policies", name), []))

    def acl_create_token(
        self,
        policies: Sequence[str] = (),
        *,
        description: str = "",
        expires_in: str | None = None,
        identity: str = "",
    ) -> AclTokenView:
        """A new token holding ``policies``; its ``secret`` is shown this once."""
        body = _core.acl_token_body(policies, description, expires_in, identity)
        resp = self._call(_core.Request("POST", _core.acl_path("tokens"), [], body))
        return _core.decode_as(resp.content, AclTokenView)

    def acl_tokens(self) -> list[AclTokenView]:
        resp = self._call(_core.simple_get(_core.acl_path("tokens")))
        return _core.decode_as(resp.content, list[AclTokenView])

    def acl_token(self, accessor: str) -> AclTokenView:
        resp = self._call(_core.simple_get(_core.acl_path("tokens", accessor)))
        return _core.decode_as(resp.content, AclTokenView)

    def acl_update_token(
        self,
        accessor: str,
        policies: Sequence[str] = (),
        *,
        description: str = "",
        identity: str = "",
    ) -> AclTokenView:
        body = _core.acl_token_body(policies, description, None, identity)
        resp = self._call(_core.Request("PUT", _core.acl_path("tokens", accessor), [], body))
        return _core.decode_as(resp.content, AclTokenView)

    def acl_delete_token(self, accessor: str) -> None:
        """Revoke a token: refused from the next request on, its event streams closed."""
        self._call(_core.Request("DELETE", _core.acl_path("tokens", accessor), []))

    def nodes(self) -> list[Node]:
        """The nodes hosting instances."""
        return _core.decode_as(self._call(_core.simple_get("/api/v1/nodes")).content, list[Node])

    def status(self) -> ServerStatus:
        """The server's version, revision, counts and store."""
        return _core.decode_as(self._call(_core.simple_get("/status")).content, ServerStatus)

    def health(self) -> bool:
        """Whether the server answers /health with 200."""
        try:
            return self._send(_core.simple_get("/health")).status_code == 200
        except Unavailable:
            return False

    def watch(
        self,
        service: str | None = None,
        *,
        index: int | None = None,
        after: Event | None = None,
        kinds: Sequence[str] = ("instance",),
        on_connection: Callable[[bool], None] | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[Event]:
        """Every change after ``index`` (default: now), in order, exactly once, across
        reconnects and server restarts; of instances unless ``kinds`` names others
        (``node``, ``service_config``, ``route``). ``after=event`` resumes right after an
        event a watch gave (also inside a revision of several). Raises Gone when ``index``
        is older than the log. ``on_connection(True)`` is called each time the stream is
        (re)connected, ``on_connection(False)`` each time it is lost. The iteration ends
        soon after ``stop`` is set (at the latest at the server's next keep-alive, 15 s)."""
        state = WatchState(service, index, kinds)
        if after is not None:
            state.position = (after.revision, after.index)
        while stop is None or not stop.is_set():
            if self.discovery is not None:
                self.discover()
            for url in self._servers.order():
                try:
                    yield from self._stream(url, *state.request(), state, on_connection, stop)
                    break  # the server ended the stream (shutting down): reconnect
                except (httpx.TransportError, httpx.StreamError, SseTooLarge):
                    if on_connection is not None:
                        on_connection(False)
                    continue
            if stop is None:
                time.sleep(state.next_delay())
            elif stop.wait(state.next_delay()):
                return

    def _stream(
        self,
        url: str,
        req: Request,
        headers: dict[str, str],
        state: WatchState,
        on_connection: Callable[[bool], None] | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[Event]:
        timeout = httpx.Timeout(self._timeout_s, read=None)
        with self._http.stream(
            "GET", url + req.path, params=tuple(req.params), headers=headers, timeout=timeout
        ) as resp:
            if resp.status_code >= 400:
                _core.raise_for_answer(resp.status_code, resp.read())
            self._servers.worked(url)
            state.connected(resp.headers.get("X-Waypost-Index"))
            if on_connection is not None:
                on_connection(True)
            parser = SseParser()
            for chunk in resp.iter_raw():
                if stop is not None and stop.is_set():
                    return
                for msg in parser.feed(chunk):
                    event = state.seen(msg)
                    if event is not None:
                        yield event
                state.moved(parser.last_id)
