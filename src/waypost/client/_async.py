"""``AsyncClient``: the asyncio client on aiohttp (8x httpx's async client under load here)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp

from waypost.client import _core
from waypost.client._coalesce import Coalescer, encode_id
from waypost.client._core import QueryResult, Request, WatchState
from waypost.durations import parse_duration
from waypost.errors import NotFound, Unavailable, WaypostError
from waypost.model import (
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
    from waypost.client.cache import AsyncServiceCache
    from waypost.client.http import ServiceHttp
    from waypost.traffic.exchange import Policies

log = logging.getLogger("waypost.client")

# Concurrent writes gathered into one batch request: at most this many, waiting at most
# this long while another batch is in flight (see _coalesce.py).
BATCH_WINDOW_S = 0.001
BATCH_MAX = 64


class AsyncKeepAlive:
    """A background heartbeat for one TTL instance; ``await stop()`` ends it.

    Unreachable servers are retried; any other error (the instance was deregistered, or
    has no ttl) ends the heartbeats and is kept in ``error``."""

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self.error: WaypostError | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class AsyncKeptLease:
    """A lease kept alive in the background (``await client.lease(ttl)``).

    Put instances and nodes on it with ``lease=kept.id``: while it runs they stay; when
    it stops (or this process dies) they are deleted once the TTL passes. ``error``
    holds what ended it early (the lease was revoked or expired)."""

    def __init__(self, lease_id: int, ttl_s: float) -> None:
        self.id = lease_id
        self.ttl_s = ttl_s
        self._task: asyncio.Task[None] | None = None
        self._revoke: Any = None
        self.error: WaypostError | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self, *, revoke: bool = True) -> None:
        """Stop the keep-alives; with ``revoke`` (the default) end the lease now, so what
        it holds is deleted at once instead of after its TTL."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if revoke and self._revoke is not None and self.error is None:
            with contextlib.suppress(WaypostError):
                await self._revoke()
            self._revoke = None


class AsyncClient:
    """Talks to Waypost servers from asyncio code; ``async with AsyncClient(url) as c:``."""

    def __init__(
        self,
        servers: str | Sequence[str] | None = None,
        *,
        token: str | None = None,
        timeout_s: float = _core.DEFAULT_TIMEOUT_S,
        coalesce: bool = True,
        batch_window_s: float = BATCH_WINDOW_S,
        batch_max: int = BATCH_MAX,
        cache_snapshot: str | os.PathLike[str] | None = None,
        join: Sequence[str] | None = None,
        trust_keys: Sequence[str] = (),
        dns_resolver: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``coalesce``: send concurrent register, deregister and heartbeat calls as one
        request (each caller still gets exactly its own call's answer, see
        ``_coalesce.py``); while a batch is in flight, calls wait at most
        ``batch_window_s`` or until ``batch_max`` are waiting. ``cache_snapshot``: the
        file the service cache (``cache``, ``http()``) keeps what it knows in, so a
        program restarted while the registry is down still reaches its services.
        ``join``: node discovery sources (a registry or peers file, a URL, ``HOST:PORT``,
        ``srv:NAME``, ``mdns``; ``WAYPOST_NODE_REGISTRIES`` adds more) to find the servers
        instead of (or besides) ``servers``; ``trust_keys``: accept only entries signed
        by these keys (``WAYPOST_TRUST_KEYS`` adds more); ``dns_resolver``: IP:PORT for
        ``srv:`` sources. ``tls``: the TLS context for ``https://`` servers (a private
        CA, a client certificate for mutual TLS: ``waypost.tls.client_context``)."""
        self._tls = tls
        self._cache_snapshot = cache_snapshot
        self._servers, self.discovery = _core.discovery_for(
            servers, join, trust_keys, dns_resolver, token=token
        )
        self._discovering: asyncio.Lock | None = None
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self.coalescer: Coalescer | None = None
        self._cache: AsyncServiceCache | None = None
        self._service_pool: aiohttp.ClientSession | None = None
        self._traffic: dict[str, dict[str, Policies]] = {}  # by zone/service called
        if coalesce:
            self.coalescer = Coalescer(self._call, window_s=batch_window_s, max_calls=batch_max)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Send the writes still gathering, then close the connection pools."""
        if self.coalescer is not None:
            await self.coalescer.close()
        if self._cache is not None:
            await self._cache.aclose()
            self._cache = None
        if self._service_pool is not None:
            await self._service_pool.close()
            self._service_pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- calling services -------------------------------------------------------------------

    @property
    def cache(self) -> AsyncServiceCache:
        """The watch-fed service cache ``http()`` reads (made on first use)."""
        if self._cache is None:
            from waypost.client.cache import AsyncServiceCache

            self._cache = AsyncServiceCache(self, snapshot=self._cache_snapshot)
        return self._cache

    def http(self, service: str, *, zone: str = "") -> ServiceHttp:
        """Requests to ``service`` by name, with its traffic policies applied (balancing,
        circuit breaking, retries, splits): ``async with client.http("api") as api:
        await api.get("/users/7")``. ``zone``: this program's zone, for services whose
        load balancer prefers the caller's zone."""
        from waypost.client.http import ServiceHttp

        if self._service_pool is None:
            self._service_pool = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0)
            )
        key = f"{zone}/{service}"
        return ServiceHttp(
            self.cache,
            service,
            zone=zone,
            session=self._service_pool,
            policies=self._traffic.setdefault(key, {}),
        )

    def _pool(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                connector=aiohttp.TCPConnector(
                    limit=0, ttl_dns_cache=300, ssl=self._tls if self._tls else True
                ),
            )
        return self._session

    async def discover(self, *, force: bool = False) -> None:
        """Run node discovery now (``force``), or when it has not run for its refresh
        interval; a no-op without ``join``."""
        d = self.discovery
        if d is None:
            return
        if self._discovering is None:
            self._discovering = asyncio.Lock()
        async with self._discovering:
            stale = d.refreshed_at is None or time.monotonic() - d.refreshed_at > d.refresh_s
            if force or stale:
                await d.refresh()

    async def _send(self, req: Request) -> tuple[int, bytes, Mapping[str, str]]:
        if self.discovery is None:
            return await self._send_once(req)
        await self.discover()
        try:
            return await self._send_once(req)
        except Unavailable:
            await self.discover(force=True)  # every server failed: look again, once
            return await self._send_once(req)

    async def _send_once(self, req: Request) -> tuple[int, bytes, Mapping[str, str]]:
        failures = []
        timeout = aiohttp.ClientTimeout(total=max(req.timeout_s, self._timeout_s))
        for url in self._servers.order():
            try:
                async with self._pool().request(
                    req.method,
                    url + req.path,
                    params=req.params,
                    data=req.body,
                    headers={"Content-Type": "application/json"} if req.body else None,
                    timeout=timeout,
                ) as resp:
                    body = await resp.read()
                    self._servers.worked(url)
                    return resp.status, body, resp.headers
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                failures.append(f"{url} ({type(exc).__name__}: {exc})")
                if self.discovery is not None:
                    self.discovery.report(url, False, str(exc) or type(exc).__name__)
        raise self._servers.unreachable(failures)

    async def _call(self, req: Request) -> tuple[bytes, Mapping[str, str]]:
        status, body, headers = await self._send(req)
        _core.raise_for_answer(status, body)
        return body, headers

    # --- writes --------------------------------------------------------------------------

    async def register(
        self, instance: Instance | Mapping[str, Any] | None = None, /, **fields: Any
    ) -> WriteResult:
        """Register or replace an instance (an Instance, a mapping, or keyword fields)."""
        inst = _core.instance_of(instance, fields)
        req = _core.register_request(inst)
        return await self._write("register", req.body or b"", req, inst.id)

    async def deregister(self, instance_id: str) -> WriteResult:
        """Remove an instance; NotFound when it is not registered."""
        req = _core.deregister_request(instance_id)
        return await self._write("deregister", encode_id(instance_id), req, instance_id)

    async def heartbeat(self, instance_id: str) -> WriteResult:
        """Renew a TTL instance."""
        req = _core.heartbeat_request(instance_id)
        return await self._write("heartbeat", encode_id(instance_id), req, instance_id)

    async def _write(self, kind: str, item: bytes, req: Request, iid: str) -> WriteResult:
        # An id a batch cannot carry (not a DNS label) goes alone, for its own answer.
        if self.coalescer is not None and is_label(iid):
            return await self.coalescer.submit(kind, item, req)
        body, _ = await self._call(req)
        return _core.decode_as(body, WriteResult)

    async def set_status(
        self, instance_id: str, status: Status | str, output: str = ""
    ) -> WriteResult:
        """Set an instance's status and output."""
        body, _ = await self._call(_core.status_request(instance_id, status, output))
        return _core.decode_as(body, WriteResult)

    async def maintenance(
        self, instance_id: str, enable: bool = True, reason: str = ""
    ) -> WriteResult:
        """Put an instance in (or, with ``enable=False``, out of) maintenance."""
        body, _ = await self._call(_core.maintenance_request(instance_id, enable, reason))
        return _core.decode_as(body, WriteResult)

    async def report_health(self, instance_id: str, states: Sequence[CheckState]) -> WriteResult:
        """Report the states of an instance's checks (what an agent does on a change)."""
        body, _ = await self._call(_core.health_request(instance_id, states))
        return _core.decode_as(body, WriteResult)

    async def checks(self, service: str | None = None, node: str | None = None) -> list[CheckRow]:
        """Every check of the instances of a service and/or node, with its state."""
        body, _ = await self._call(_core.checks_request(service, node))
        return _core.decode_as(body, list[CheckRow])

    async def run_checks(
        self, instance_id: str | None = None, *, service: str | None = None, node: str | None = None
    ) -> list[Instance]:
        """Run checks the server runs now: one instance's, or a service's and/or node's."""
        if instance_id is not None:
            body, _ = await self._call(_core.run_instance_checks_request(instance_id))
            return [_core.decode_as(body, Instance)]
        body, _ = await self._call(_core.run_checks_request(service, node))
        return _core.decode_as(body, list[Instance])

    async def batch(
        self,
        register: Iterable[Instance | Mapping[str, Any]] = (),
        deregister: Iterable[str] = (),
    ) -> BatchResult:
        """Register and deregister in one all-or-nothing write."""
        insts = [_core.instance_of(i, {}) for i in register]
        body, _ = await self._call(_core.batch_request(insts, list(deregister)))
        return _core.decode_as(body, BatchResult)

    def keepalive(self, instance_id: str, interval_s: float | None = None) -> AsyncKeepAlive:
        """Heartbeat ``instance_id`` in the background (default: a third of its TTL)."""

        handle = AsyncKeepAlive()

        async def beat() -> None:
            every = interval_s
            try:
                if every is None:
                    inst = await self.get(instance_id)
                    every = parse_duration(inst.ttl) / 3 if inst.ttl else 10.0
                while True:
                    with contextlib.suppress(Unavailable):
                        await self.heartbeat(instance_id)
                    await asyncio.sleep(every)
            except WaypostError as exc:
                handle.error = exc
                log.warning("keep-alive of instance %s ended: %s", instance_id, exc.message)

        handle._task = asyncio.create_task(beat(), name=f"waypost-keepalive-{instance_id}")
        return handle

    # --- nodes and leases ----------------------------------------------------------------

    async def register_node(
        self,
        node_id: str,
        *,
        address: str | None = None,
        meta: Mapping[str, str] | None = None,
        lease: int | None = None,
    ) -> WriteResult:
        """Register (or replace) a node, optionally on a lease."""
        node = _core.node_of(node_id, address, meta, lease)
        body, _ = await self._call(_core.node_request(node))
        return _core.decode_as(body, WriteResult)

    async def deregister_node(self, node_id: str) -> WriteResult:
        """Remove a registered node."""
        body, _ = await self._call(_core.node_delete_request(node_id))
        return _core.decode_as(body, WriteResult)

    async def lease(self, ttl: float | str, interval_s: float | None = None) -> AsyncKeptLease:
        """Grant a lease and keep it alive in the background (every third of its TTL)."""
        body, _ = await self._call(_core.lease_grant_request(ttl))
        granted = _core.decode_as(body, LeaseInfo)
        ttl_s = parse_duration(granted.ttl)
        kept = AsyncKeptLease(granted.id, ttl_s)
        every = interval_s if interval_s is not None else max(ttl_s / 3, 0.01)

        async def beat() -> None:
            try:
                while True:
                    await asyncio.sleep(every)
                    with contextlib.suppress(Unavailable):
                        await self._call(_core.lease_request("PUT", granted.id, "/keepalive"))
            except WaypostError as exc:
                kept.error = exc
                log.warning(
                    "lease %s ended behind this client's back (%s): what it held is gone",
                    granted.id,
                    exc.message,
                )

        async def revoke() -> None:
            await self._call(_core.lease_request("DELETE", granted.id))

        kept._revoke = revoke
        kept._task = asyncio.create_task(beat(), name=f"waypost-lease-{granted.id}")
        return kept

    async def grant_lease(self, ttl: float | str) -> int:
        """Grant a lease (kept alive by the caller with ``keepalive_lease``); its id."""
        body, _ = await self._call(_core.lease_grant_request(ttl))
        return _core.decode_as(body, LeaseInfo).id

    async def keepalive_lease(self, lease_id: int) -> None:
        """Restart a lease's clock; NotFound once it has lapsed."""
        await self._call(_core.lease_request("PUT", lease_id, "/keepalive"))

    async def revoke_lease(self, lease_id: int) -> WriteResult:
        """End a lease now: every entry on it is deleted."""
        body, _ = await self._call(_core.lease_request("DELETE", lease_id))
        return _core.decode_as(body, WriteResult)

    # --- reads ---------------------------------------------------------------------------

    async def get(self, instance_id: str) -> Instance:
        """One instance; NotFound when it is not registered."""
        body, _ = await self._call(_core.get_request(instance_id))
        return _core.decode_as(body, Instance)

    async def instances(
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
        body, headers = await self._call(req)
        return QueryResult(
            index=int(headers.get("X-Waypost-Index", "0")),
            instances=_core.decode_as(body, list[Instance]),
            revision=int(headers.get("X-Waypost-Revision", "0")),
        )

    async def services(self) -> list[ServiceSummary]:
        """Every service with its instance counts by status, tags and versions."""
        body, _ = await self._call(_core.simple_get("/api/v1/services"))
        return _core.decode_as(body, list[ServiceSummary])

    async def service_config(self, service: str) -> ServiceConfig | None:
        """A service's config entry, or None when it has none."""
        try:
            body, _ = await self._call(_core.simple_get(f"/api/v1/services/{service}/config"))
        except NotFound:
            return None
        return _core.decode_as(body, ServiceConfig)

    async def set_service_config(
        self, service: str, config: ServiceConfig | Mapping[str, Any]
    ) -> WriteResult:
        """Write a service's config (policies every client and proxy applies)."""
        cfg = _core.config_of(service, config)
        body, _ = await self._call(_core.put_config_request(service, cfg))
        return _core.decode_as(body, WriteResult)

    async def delete_service_config(self, service: str) -> WriteResult:
        """Remove a service's config (its clients go back to the defaults)."""
        body, _ = await self._call(_core.delete_config_request(service))
        return _core.decode_as(body, WriteResult)

    async def routes(self) -> list[Route]:
        """Every routing rule."""
        return (await self.routes_at())[0]

    async def routes_at(self) -> tuple[list[Route], int]:
        """Every routing rule, and the revision they are current at (to watch from)."""
        body, headers = await self._call(_core.simple_get("/api/v1/routes"))
        return _core.decode_as(body, list[Route]), int(headers.get("X-Waypost-Revision", "0"))

    async def set_route(self, route: Route | Mapping[str, Any]) -> WriteResult:
        """Write a routing rule (by its name)."""
        body, _ = await self._call(_core.put_route_request(_core.route_of(route)))
        return _core.decode_as(body, WriteResult)

    async def delete_route(self, name: str) -> WriteResult:
        body, _ = await self._call(_core.delete_route_request(name))
        return _core.decode_as(body, WriteResult)

    async def service_configs(self) -> list[ServiceConfig]:
        """Every service's config entry, ordered by service."""
        body, _ = await self._call(_core.simple_get("/api/v1/configs"))
        return _core.decode_as(body, list[ServiceConfig])

    async def nodes(self) -> list[Node]:
        """The nodes hosting instances."""
        body, _ = await self._call(_core.simple_get("/api/v1/nodes"))
        return _core.decode_as(body, list[Node])

    async def status(self) -> ServerStatus:
        """The server's version, revision, counts and store."""
        body, _ = await self._call(_core.simple_get("/status"))
        return _core.decode_as(body, ServerStatus)

    async def health(self) -> bool:
        """Whether the server answers /health with 200."""
        try:
            status, _, _ = await self._send(_core.simple_get("/health"))
        except Unavailable:
            return False
        return status == 200

    async def watch(
        self,
        service: str | None = None,
        *,
        index: int | None = None,
        after: Event | None = None,
        kinds: Sequence[str] = ("instance",),
        on_connection: Callable[[bool], None] | None = None,
    ) -> AsyncIterator[Event]:
        """Every change after ``index`` (default: now), in order, exactly once, across
        reconnects and server restarts; of instances unless ``kinds`` names others
        (``node``, ``service_config``, ``route``). ``after=event`` resumes right after an
        event a watch gave (also inside a revision of several). Raises Gone when ``index``
        is older than the log. ``on_connection(True)`` is called each time the stream is
        (re)connected, ``on_connection(False)`` each time it is lost."""
        state = WatchState(service, index, kinds)
        if after is not None:
            state.position = (after.revision, after.index)
        while True:
            if self.discovery is not None:
                await self.discover()
            for url in self._servers.order():
                try:
                    async for event in self._stream(url, *state.request(), state, on_connection):
                        yield event
                    break  # the server ended the stream (shutting down): reconnect
                except (
                    aiohttp.ClientConnectionError,
                    aiohttp.ClientPayloadError,
                    TimeoutError,
                    SseTooLarge,
                ):
                    if on_connection is not None:
                        on_connection(False)
                    continue
            await asyncio.sleep(state.next_delay())

    async def _stream(
        self,
        url: str,
        req: Request,
        headers: dict[str, str],
        state: WatchState,
        on_connection: Callable[[bool], None] | None = None,
    ) -> AsyncIterator[Event]:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout_s)
        async with self._pool().get(
            url + req.path, params=req.params, headers=headers, timeout=timeout
        ) as resp:
            if resp.status >= 400:
                _core.raise_for_answer(resp.status, await resp.read())
            self._servers.worked(url)
            state.connected(resp.headers.get("X-Waypost-Index"))
            if on_connection is not None:
                on_connection(True)
            parser = SseParser()
            async for chunk in resp.content.iter_any():
                for msg in parser.feed(chunk):
                    event = state.seen(msg)
                    if event is not None:
                        yield event
                state.moved(parser.last_id)
