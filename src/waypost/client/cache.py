"""The watch-fed service cache: a local view of each service a program calls, kept current
by the registry's event stream, that keeps answering when the registry does not.

``get(service)`` lists the service's instances and config once, then follows the event
stream from the listing's revision (``watch``: resumes across reconnects and server
failover; a revision the server no longer keeps means list again). Every later ``get``
is a dict lookup. A service not asked for during ``ttl_s`` is dropped and its watch
stopped, so the cache holds what the program uses, not the registry. ``routes()`` gives
the routing rules, kept current the same way.

When the registry cannot be reached the cache keeps serving the last endpoints it had and
says how old they are (``ServiceView.age_s``, ``stale``), as Eureka's clients do. With
``snapshot=PATH`` it also writes what it holds to a file (atomically, at most once a
second), so a program restarted while the registry is still down starts from it.

One core: ``ServiceView``, ``RouteView`` and ``Snapshot`` hold the state and apply
listings and events without I/O; ``AsyncServiceCache`` drives them with a task per view.
``ServiceCache``, for the blocking ``Client``, runs that same cache on an event loop in a
thread of its own, and reads held views straight from the caller's thread.

Endpoints are ``waypost.traffic.Endpoint`` objects kept per instance id across changes,
so the balancers' counters (requests, in flight, errors, latency) survive updates; the
endpoint tuple is replaced when the set changes (balancers key their tables on it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from waypost.errors import Gone, NotFound, Unavailable, WaypostError
from waypost.model import Event, Instance, Route, ServiceConfig, Status
from waypost.traffic import Endpoint
from waypost.traffic.routes import RouteTable

if TYPE_CHECKING:
    from waypost.client._async import AsyncClient

log = logging.getLogger("waypost.client.cache")

DEFAULT_TTL_S = 60.0
MAX_ENTRIES = 1000  # services held at once; the least recently used goes first
SNAPSHOT_EVERY_S = 1.0
# Services kept in the snapshot beyond those held now (the most recent ones stay).
MAX_SAVED = 1000
RELIST_PAUSE_S = 1.0
_V = TypeVar("_V", "ServiceView", "RouteView")
_T = TypeVar("_T")
ROUTES_KEY = ""  # the snapshot's entry for the routes (no service has an empty name)


class _Saved(msgspec.Struct, kw_only=True):
    instances: list[Instance] = msgspec.field(default_factory=list)
    config: ServiceConfig | None = None
    routes: list[Route] = msgspec.field(default_factory=list)
    revision: int = 0
    saved_at: float = 0.0  # wall-clock time


class _View:
    """What every view has: its revision, freshness and watch."""

    def __init__(self, now: float) -> None:
        self.revision = 0
        self.synced_at = now  # monotonic time of the last listing or event
        self.last_used = now
        self.stale = False  # True while the registry cannot be reached
        self.from_snapshot = False
        self.watch: asyncio.Task[None] | None = None

    def age_s(self, now: float | None = None) -> float:
        """Seconds since the view was last known current."""
        return (time.monotonic() if now is None else now) - self.synced_at

    def connection(self, up: bool, now: float, name: str) -> None:
        """The stream came up (the view is current as of now) or went down (stale)."""
        if up:
            self.stale = False
            self.synced_at = now
        else:
            if not self.stale:
                log.warning("lost the registry's stream for %s; serving what it had", name)
            self.stale = True

    def _current(self, revision: int, now: float) -> None:
        self.revision = max(self.revision, revision)
        self.synced_at = now
        self.stale = self.from_snapshot = False

    def _restored(self, saved: _Saved, now: float) -> None:
        self.revision = saved.revision
        self.synced_at = now - max(0.0, time.time() - saved.saved_at)
        self.stale = self.from_snapshot = True


class ServiceView(_View):
    """What the cache knows of one service."""

    def __init__(self, service: str, now: float) -> None:
        super().__init__(now)
        self.service = service
        self.instances: dict[str, Instance] = {}
        self.config: ServiceConfig | None = None
        self.endpoints: tuple[Endpoint, ...] = ()
        self._by_id: dict[str, Endpoint] = {}

    def rebuild(self) -> None:
        """The endpoint tuple from the instances, keeping each endpoint's counters."""
        by_id: dict[str, Endpoint] = {}
        for iid, inst in sorted(self.instances.items()):
            e = self._by_id.get(iid)
            if e is None or (e.address, e.port, e.weight) != (inst.address, inst.port, inst.weight):
                e = Endpoint(iid, inst.address, inst.port, weight=inst.weight, meta=inst.meta)
            else:
                e.meta = dict(inst.meta)
                e.zone = e.meta.get("zone", "")
            e.healthy = inst.effective_status is Status.PASSING
            by_id[iid] = e
        self._by_id = by_id
        self.endpoints = tuple(by_id.values())

    def versions(self) -> dict[str, str | None]:
        return {iid: inst.version for iid, inst in self.instances.items()}

    def load(
        self, instances: Iterable[Instance], config: ServiceConfig | None, revision: int, now: float
    ) -> None:
        """A listing: the whole service as of ``revision``."""
        self.instances = {i.id: i for i in instances}
        self.config = config
        self.revision = revision
        self._current(revision, now)
        self.rebuild()

    def restore(self, saved: _Saved, now: float) -> None:
        """What a snapshot kept: served (stale) until the registry answers."""
        self.instances = {i.id: i for i in saved.instances}
        self.config = saved.config
        self._restored(saved, now)
        self.rebuild()

    def apply(self, ev: Event, now: float) -> None:
        """One event of the service's watch."""
        entry = ev.entry
        if isinstance(entry, Instance):
            if ev.type == "delete":
                self.instances.pop(entry.id, None)
            else:
                self.instances[entry.id] = entry
            self.rebuild()
        elif isinstance(entry, ServiceConfig):
            self.config = None if ev.type == "delete" else entry
        self._current(ev.revision, now)

    def saved(self) -> _Saved:
        return _Saved(
            instances=list(self.instances.values()),
            config=self.config,
            revision=self.revision,
            saved_at=time.time(),
        )


class RouteView(_View):
    """The routing rules, as one table rebuilt on each change."""

    def __init__(self, now: float) -> None:
        super().__init__(now)
        self.entries: dict[str, Route] = {}
        self.table = RouteTable()

    def load(self, routes: Iterable[Route], revision: int, now: float) -> None:
        self.entries = {r.name: r for r in routes}
        self.revision = revision
        self._current(revision, now)
        self.table = RouteTable(self.entries.values())

    def restore(self, saved: _Saved, now: float) -> None:
        self.entries = {r.name: r for r in saved.routes}
        self._restored(saved, now)
        self.table = RouteTable(self.entries.values())

    def apply(self, ev: Event, now: float) -> None:
        entry = ev.entry
        if isinstance(entry, Route):
            if ev.type == "delete":
                self.entries.pop(entry.name, None)
            else:
                self.entries[entry.name] = entry
            self.table = RouteTable(self.entries.values())
        self._current(ev.revision, now)

    def saved(self) -> _Saved:
        return _Saved(
            routes=list(self.entries.values()), revision=self.revision, saved_at=time.time()
        )


class Snapshot:
    """The file a cache keeps what it holds in, for a restart without the registry."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.saved: dict[str, _Saved] = self._read()
        self.errors = 0
        self.dirty = False
        self.written_at = 0.0

    def remember(self, key: str, saved: _Saved, held: Callable[[str], bool]) -> None:
        if self.path is None:
            return
        self.saved.pop(key, None)  # re-inserted last: the newest
        self.saved[key] = saved
        while len(self.saved) > MAX_SAVED:  # the oldest not held now go first
            oldest = next((k for k in self.saved if not held(k)), None)
            if oldest is None:
                break
            del self.saved[oldest]
        self.dirty = True

    def write(self) -> None:
        self.dirty = False
        self.written_at = time.monotonic()
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_bytes(msgspec.json.encode(self.saved))
            os.replace(tmp, self.path)
        except OSError as exc:
            self.errors += 1
            log.warning("cannot write the cache snapshot %s: %s", self.path, exc)

    def _read(self) -> dict[str, _Saved]:
        """What an earlier run saved; read leniently: a damaged file or entry is skipped
        (logged), never fatal."""
        if self.path is None or not self.path.exists():
            return {}
        try:
            raw = msgspec.json.decode(self.path.read_bytes())
        except (OSError, msgspec.DecodeError) as exc:
            log.warning("ignoring the cache snapshot %s: %s", self.path, exc)
            return {}
        out: dict[str, _Saved] = {}
        if isinstance(raw, dict):
            for name, item in raw.items():
                try:
                    out[str(name)] = msgspec.convert(item, _Saved, strict=False)
                except msgspec.ValidationError as exc:
                    log.warning("skipping %s in the cache snapshot: %s", name or "routes", exc)
        return out


def _stats(
    views: dict[str, ServiceView], hits: int, misses: int, errors: int, now: float
) -> dict[str, object]:
    return {
        "entries": len(views),
        "hits": hits,
        "misses": misses,
        "errors": errors,
        "services": {
            name: {
                "instances": len(v.instances),
                "revision": v.revision,
                "age_s": round(v.age_s(now), 3),
                "stale": v.stale,
                "from_snapshot": v.from_snapshot,
            }
            for name, v in sorted(views.items())
        },
    }


class AsyncServiceCache:
    """Per-service views for one ``AsyncClient``; ``async with`` or ``aclose()``."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        snapshot: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._next_evict = 0.0
        self.snapshot = Path(snapshot) if snapshot is not None else None
        self._clock = clock
        self._views: dict[str, ServiceView] = {}
        self._loading: dict[str, asyncio.Future[_View]] = {}
        self._routes: RouteView | None = None
        self._file = Snapshot(self.snapshot)
        self._save_handle: asyncio.TimerHandle | None = None
        self.hits = 0
        self.misses = 0
        self.errors = 0

    async def __aenter__(self) -> AsyncServiceCache:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- reading ---------------------------------------------------------------------------

    async def get(self, service: str) -> ServiceView:
        """The service's view: from memory when held, else listed (and watched) now; from
        the snapshot when the registry cannot be reached. Unavailable when none of these
        has it."""
        now = self._clock()
        self._evict(now)
        view = self._views.get(service)
        if view is not None:
            self.hits += 1
            view.last_used = now
            return view
        self.misses += 1
        got = await self._once(service, functools.partial(self._load, service, now))
        assert isinstance(got, ServiceView)
        return got

    async def routes(self) -> RouteTable:
        """The routing rules (listed and watched from the first call on)."""
        view = self._routes
        if view is None:
            got = await self._once(ROUTES_KEY, self._load_routes)
            assert isinstance(got, RouteView)
            view = got
        return view.table

    async def _once(self, key: str, load: Callable[[], Awaitable[_View]]) -> _View:
        """``load()``, once for all who ask for ``key`` at the same time."""
        pending = self._loading.get(key)
        if pending is not None:  # another caller is listing it: wait for that
            return await asyncio.shield(pending)
        fut: asyncio.Future[_View] = asyncio.get_running_loop().create_future()
        self._loading[key] = fut
        try:
            view = await load()
            fut.set_result(view)
            return view
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters get it, nobody else must
            raise
        finally:
            del self._loading[key]

    async def endpoints(self, service: str) -> tuple[Endpoint, ...]:
        return (await self.get(service)).endpoints

    def held(self, service: str) -> ServiceView | None:
        """The service's view if the cache holds it now (no listing, no counting)."""
        return self._views.get(service)

    def stats(self) -> dict[str, object]:
        """Entries, hits, misses, errors and each service's age and staleness."""
        return _stats(self._views, self.hits, self.misses, self.errors, self._clock())

    # --- keeping current -------------------------------------------------------------------

    async def _list(self, view: ServiceView) -> None:
        got = await self.client.instances(view.service)
        try:
            config = await self.client.service_config(view.service)
        except NotFound:
            config = None
        view.load(got.instances, config, got.revision, self._clock())
        self._remember(view.service, view)

    async def _list_routes(self, view: RouteView) -> None:
        routes, revision = await self.client.routes_at()
        view.load(routes, revision, self._clock())
        self._remember(ROUTES_KEY, view)

    async def _load(self, service: str, now: float) -> ServiceView:
        view = ServiceView(service, now)
        try:
            await self._list(view)
        except Unavailable:
            self.errors += 1
            saved = self._file.saved.get(service)
            if saved is None:
                raise
            view.restore(saved, now)
            _restored(service, saved)
        self._views[service] = view
        view.watch = asyncio.create_task(
            self._follow(view, service, ("instance", "service_config"), self._list),
            name=f"cache-{service}",
        )
        return view

    async def _load_routes(self) -> RouteView:
        now = self._clock()
        view = RouteView(now)
        try:
            await self._list_routes(view)
        except Unavailable:
            self.errors += 1
            saved = self._file.saved.get(ROUTES_KEY)
            if saved is not None:
                view.restore(saved, now)
                _restored("the routes", saved)
            else:  # no routes known: route nothing until the registry answers
                view.stale = True
        self._routes = view
        view.watch = asyncio.create_task(
            self._follow(view, None, ("route",), self._list_routes), name="cache-routes"
        )
        return view

    async def _follow(
        self,
        view: _V,
        service: str | None,
        kinds: tuple[str, ...],
        relist: Callable[[_V], Awaitable[None]],
    ) -> None:
        """Apply the events as they come; list again when needed. Ends only when
        cancelled (the view evicted or the cache closed)."""
        name = service or "the routes"
        key = service or ROUTES_KEY
        while True:
            try:
                if view.from_snapshot or view.revision == 0:
                    await relist(view)
                async for ev in self.client.watch(
                    service,
                    index=view.revision,
                    kinds=kinds,
                    on_connection=functools.partial(self._connection, view, name),
                ):
                    view.apply(ev, self._clock())
                    self._remember(key, view)
            except asyncio.CancelledError:
                raise
            except Gone:
                view.revision = 0  # the log moved past us: list again
            except WaypostError as exc:
                self.errors += 1
                view.stale = True
                log.warning("keeping %s current failed (%s); retrying", name, exc)
                await asyncio.sleep(RELIST_PAUSE_S)
            except Exception:
                self.errors += 1
                view.stale = True
                log.exception("keeping %s current failed; retrying", name)
                await asyncio.sleep(RELIST_PAUSE_S)

    def _connection(self, view: _View, name: str, up: bool) -> None:
        view.connection(up, self._clock(), name)

    def _evict(self, now: float) -> None:
        if now < self._next_evict and len(self._views) < self.max_entries:
            return  # looked a moment ago, and there is room
        self._next_evict = now + min(1.0, self.ttl_s / 2)
        for name in _expired(self._views, now, self.ttl_s, self.max_entries):
            view = self._views.pop(name)
            if isinstance(view.watch, asyncio.Task):
                view.watch.cancel()

    async def forget(self, service: str) -> None:
        """Drop one service's view (and stop its watch)."""
        view = self._views.pop(service, None)
        if view is not None and isinstance(view.watch, asyncio.Task):
            view.watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await view.watch

    async def sync(self, service: str | None = None) -> None:
        """List now (one service, or every one held), instead of waiting for events."""
        names = [service] if service is not None else list(self._views)
        for name in names:
            view = self._views.get(name)
            if view is None:
                await self.get(name)
            else:
                await self._list(view)
        if service is None and self._routes is not None:
            await self._list_routes(self._routes)

    async def clear(self) -> None:
        """Forget every view (and stop their watches)."""
        views: list[_View] = list(self._views.values())
        if self._routes is not None:
            views.append(self._routes)
        self._views, self._routes = {}, None
        tasks = [v.watch for v in views if isinstance(v.watch, asyncio.Task)]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def aclose(self) -> None:
        if self._save_handle is not None:
            self._save_handle.cancel()
            self._save_handle = None
            self._file.write()
        await self.clear()

    # --- the snapshot ----------------------------------------------------------------------

    def _remember(self, key: str, view: ServiceView | RouteView) -> None:
        if self.snapshot is None:
            return
        self._file.remember(key, view.saved(), self._held)
        if self._save_handle is None:
            loop = asyncio.get_running_loop()
            self._save_handle = loop.call_later(SNAPSHOT_EVERY_S, self._save_now)

    def _held(self, key: str) -> bool:
        return key in self._views or key == ROUTES_KEY

    def _save_now(self) -> None:
        self._save_handle = None
        self._file.write()
        self.errors += self._file.errors
        self._file.errors = 0


class ServiceCache:
    """The service cache for ``Client`` (blocking code): the same ``AsyncServiceCache``,
    run on an event loop in a thread of its own, so blocking programs get the same views
    kept current the same way. A held service is read straight from the caller's thread
    (a dict lookup); only a service not held yet waits for the loop. ``with`` or
    ``close()``; thread-safe."""

    def __init__(
        self,
        servers: Sequence[str],
        *,
        token: str | None = None,
        ttl_s: float = DEFAULT_TTL_S,
        snapshot: str | os.PathLike[str] | None = None,
        max_entries: int = MAX_ENTRIES,
        timeout_s: float = 10.0,
    ) -> None:
        from waypost.client._async import AsyncClient

        self.timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="waypost-service-cache", daemon=True
        )
        self._thread.start()

        async def make() -> AsyncServiceCache:
            return AsyncServiceCache(
                AsyncClient(servers, token=token),
                ttl_s=ttl_s,
                snapshot=snapshot,
                max_entries=max_entries,
            )

        self.inner = self._run(make())
        self._closed = False

    def __enter__(self) -> ServiceCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(self.timeout_s)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise Unavailable(
                f"the registry did not answer within {self.timeout_s:g} s", field="server"
            ) from None

    def get(self, service: str) -> ServiceView:
        """As ``AsyncServiceCache.get``; a held service without waiting for the loop."""
        inner = self.inner
        view = inner._views.get(service)
        now = inner._clock()
        if view is not None and now - view.last_used <= inner.ttl_s:
            inner.hits += 1
            view.last_used = now
            return view
        return self._run(inner.get(service))

    def routes(self) -> RouteTable:
        """As ``AsyncServiceCache.routes``."""
        view = self.inner._routes
        if view is not None:
            return view.table
        return self._run(self.inner.routes())

    def endpoints(self, service: str) -> tuple[Endpoint, ...]:
        return self.get(service).endpoints

    def held(self, service: str) -> ServiceView | None:
        """The service's view if the cache holds it now (no listing, no counting)."""
        return self.inner._views.get(service)

    def stats(self) -> dict[str, object]:
        return self.inner.stats()

    def sync(self, service: str | None = None) -> None:
        self._run(self.inner.sync(service))

    def forget(self, service: str) -> None:
        self._run(self.inner.forget(service))

    def clear(self) -> None:
        self._run(self.inner.clear())

    def close(self) -> None:
        """Stop every watch, write the snapshot, stop the loop's thread."""
        if self._closed:
            return
        self._closed = True

        async def shut() -> None:
            await self.inner.aclose()
            await self.inner.client.aclose()

        try:
            self._run(shut())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()


def _expired(views: dict[str, ServiceView], now: float, ttl_s: float, most: int) -> list[str]:
    """The views to drop: unused for ``ttl_s``, and the least recently used beyond
    ``most - 1`` (room for the one about to be added)."""
    gone = [name for name, v in views.items() if now - v.last_used > ttl_s]
    left = len(views) - len(gone)
    if left >= most:
        kept = sorted((v.last_used, name) for name, v in views.items() if name not in gone)
        gone += [name for _, name in kept[: left - most + 1]]
    return gone


def _restored(what: str, saved: _Saved) -> None:
    log.warning(
        "the registry is unreachable: %s served from the snapshot of %s",
        what,
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(saved.saved_at)),
    )
