"""The watch-fed service cache: a local view of each service a program calls, kept current
by the registry's event stream, that keeps answering when the registry does not.

``AsyncServiceCache.get(service)`` lists the service's instances and config once, then
follows the event stream from the listing's revision (``AsyncClient.watch``: resumes
across reconnects and server failover; a revision the server no longer keeps means list
again). Every later ``get`` is a dict lookup. A service not asked for during ``ttl_s``
is dropped and its watch stopped, so the cache holds what the program uses, not the
registry.

When the registry cannot be reached the cache keeps serving the last endpoints it had and
says how old they are (``ServiceView.age_s``, ``stale``), as Eureka's clients do. With
``snapshot=PATH`` it also writes what it holds to a file (atomically, at most once a
second), so a program restarted while the registry is still down starts from it.

Endpoints are ``waypost.traffic.Endpoint`` objects kept per instance id across changes,
so the balancers' counters (requests, in flight, errors, latency) survive updates; the
endpoint tuple is replaced when the set changes (balancers key their tables on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from waypost.client._async import AsyncClient
from waypost.errors import Gone, NotFound, Unavailable, WaypostError
from waypost.model import Event, Instance, ServiceConfig, Status
from waypost.traffic import Endpoint

log = logging.getLogger("waypost.client.cache")

DEFAULT_TTL_S = 60.0
SNAPSHOT_EVERY_S = 1.0
# Services kept in the snapshot beyond those held now (the most recent ones stay).
MAX_SAVED = 1000
RELIST_PAUSE_S = 1.0


class _Saved(msgspec.Struct, kw_only=True):
    instances: list[Instance]
    config: ServiceConfig | None = None
    revision: int = 0
    saved_at: float = 0.0  # wall-clock time


class ServiceView:
    """What the cache knows of one service."""

    def __init__(self, service: str, now: float) -> None:
        self.service = service
        self.instances: dict[str, Instance] = {}
        self.config: ServiceConfig | None = None
        self.revision = 0
        self.synced_at = now  # monotonic time of the last listing or event
        self.last_used = now
        self.stale = False  # True while the registry cannot be reached
        self.from_snapshot = False
        self.endpoints: tuple[Endpoint, ...] = ()
        self._by_id: dict[str, Endpoint] = {}
        self.watch: asyncio.Task[None] | None = None

    def age_s(self, now: float | None = None) -> float:
        """Seconds since the view was last known current."""
        return (time.monotonic() if now is None else now) - self.synced_at

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


class AsyncServiceCache:
    """Per-service views for one ``AsyncClient``; ``async with`` or ``aclose()``."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        snapshot: str | Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.snapshot = Path(snapshot) if snapshot is not None else None
        self._clock = clock
        self._views: dict[str, ServiceView] = {}
        self._loading: dict[str, asyncio.Future[ServiceView]] = {}
        self._saved: dict[str, _Saved] = self._read_snapshot()
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
        pending = self._loading.get(service)
        if pending is not None:  # another caller is listing it: wait for that
            return await asyncio.shield(pending)
        fut: asyncio.Future[ServiceView] = asyncio.get_running_loop().create_future()
        self._loading[service] = fut
        try:
            view = await self._load(service, now)
            fut.set_result(view)
            return view
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters get it, nobody else must
            raise
        finally:
            del self._loading[service]

    async def endpoints(self, service: str) -> tuple[Endpoint, ...]:
        return (await self.get(service)).endpoints

    def stats(self) -> dict[str, object]:
        """Entries, hits, misses, errors and each service's age and staleness."""
        now = self._clock()
        return {
            "entries": len(self._views),
            "hits": self.hits,
            "misses": self.misses,
            "errors": self.errors,
            "services": {
                name: {
                    "instances": len(v.instances),
                    "revision": v.revision,
                    "age_s": round(v.age_s(now), 3),
                    "stale": v.stale,
                    "from_snapshot": v.from_snapshot,
                }
                for name, v in sorted(self._views.items())
            },
        }

    # --- keeping current -------------------------------------------------------------------

    async def _list(self, view: ServiceView) -> None:
        got = await self.client.instances(view.service)
        try:
            config = await self.client.service_config(view.service)
        except NotFound:
            config = None
        view.instances = {i.id: i for i in got.instances}
        view.config = config
        view.revision = got.revision
        view.synced_at = self._clock()
        view.stale = view.from_snapshot = False
        view.rebuild()
        self._remember(view)

    async def _load(self, service: str, now: float) -> ServiceView:
        view = ServiceView(service, now)
        try:
            await self._list(view)
        except Unavailable:
            self.errors += 1
            saved = self._saved.get(service)
            if saved is None:
                raise
            view.instances = {i.id: i for i in saved.instances}
            view.config = saved.config
            view.revision = saved.revision
            view.synced_at = now - max(0.0, time.time() - saved.saved_at)
            view.stale = view.from_snapshot = True
            view.rebuild()
            log.warning(
                "the registry is unreachable: %s served from the snapshot of %s",
                service,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(saved.saved_at)),
            )
        self._views[service] = view
        view.watch = asyncio.create_task(self._follow(view), name=f"cache-{service}")
        return view

    async def _follow(self, view: ServiceView) -> None:
        """Apply the service's events as they come; list again when needed. Ends only
        when cancelled (the view evicted or the cache closed)."""
        while True:
            try:
                if view.from_snapshot or view.revision == 0:
                    await self._list(view)
                async for ev in self.client.watch(
                    view.service,
                    index=view.revision,
                    kinds=("instance", "service_config"),
                    on_connection=functools.partial(self._connection, view),
                ):
                    self._apply(view, ev)
            except asyncio.CancelledError:
                raise
            except Gone:
                view.revision = 0  # the log moved past us: list again
            except WaypostError as exc:
                self.errors += 1
                view.stale = True
                log.warning("keeping %s current failed (%s); retrying", view.service, exc)
                await asyncio.sleep(RELIST_PAUSE_S)
            except Exception:
                self.errors += 1
                view.stale = True
                log.exception("keeping %s current failed; retrying", view.service)
                await asyncio.sleep(RELIST_PAUSE_S)

    def _connection(self, view: ServiceView, up: bool) -> None:
        """The stream came up (the view is current as of now) or went down (stale)."""
        if up:
            view.stale = False
            view.synced_at = self._clock()
        else:
            if not view.stale:
                log.warning("lost the registry's stream for %s; serving what it had", view.service)
            view.stale = True

    def _apply(self, view: ServiceView, ev: Event) -> None:
        entry = ev.entry
        if isinstance(entry, Instance):
            if ev.type == "delete":
                view.instances.pop(entry.id, None)
            else:
                view.instances[entry.id] = entry
            view.rebuild()
        elif isinstance(entry, ServiceConfig):
            view.config = None if ev.type == "delete" else entry
        view.revision = max(view.revision, ev.revision)
        view.synced_at = self._clock()
        view.stale = False
        self._remember(view)

    def _evict(self, now: float) -> None:
        for name, view in list(self._views.items()):
            if now - view.last_used > self.ttl_s:
                del self._views[name]
                if view.watch is not None:
                    view.watch.cancel()

    async def sync(self, service: str | None = None) -> None:
        """List now (one service, or every one held), instead of waiting for events."""
        names = [service] if service is not None else list(self._views)
        for name in names:
            view = self._views.get(name)
            if view is None:
                await self.get(name)
            else:
                await self._list(view)

    async def clear(self) -> None:
        """Forget every view (and stop their watches)."""
        views, self._views = list(self._views.values()), {}
        for view in views:
            if view.watch is not None:
                view.watch.cancel()
        for view in views:
            if view.watch is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await view.watch

    async def aclose(self) -> None:
        if self._save_handle is not None:
            self._save_handle.cancel()
            self._save_handle = None
            self._write_snapshot()
        await self.clear()

    # --- the snapshot ----------------------------------------------------------------------

    def _remember(self, view: ServiceView) -> None:
        if self.snapshot is None:
            return
        self._saved.pop(view.service, None)  # re-inserted last: the newest
        self._saved[view.service] = _Saved(
            instances=list(view.instances.values()),
            config=view.config,
            revision=view.revision,
            saved_at=time.time(),
        )
        while len(self._saved) > MAX_SAVED:  # the oldest not held now go first
            oldest = next((k for k in self._saved if k not in self._views), None)
            if oldest is None:
                break
            del self._saved[oldest]
        if self._save_handle is None:
            loop = asyncio.get_running_loop()
            self._save_handle = loop.call_later(SNAPSHOT_EVERY_S, self._save_now)

    def _save_now(self) -> None:
        self._save_handle = None
        self._write_snapshot()

    def _write_snapshot(self) -> None:
        if self.snapshot is None:
            return
        tmp = self.snapshot.with_name(self.snapshot.name + ".tmp")
        try:
            tmp.write_bytes(msgspec.json.encode(self._saved))
            os.replace(tmp, self.snapshot)
        except OSError as exc:
            self.errors += 1
            log.warning("cannot write the cache snapshot %s: %s", self.snapshot, exc)

    def _read_snapshot(self) -> dict[str, _Saved]:
        """What an earlier run saved; read leniently: a damaged file or entry is skipped
        (logged), never fatal."""
        if self.snapshot is None or not self.snapshot.exists():
            return {}
        try:
            raw = msgspec.json.decode(self.snapshot.read_bytes())
        except (OSError, msgspec.DecodeError) as exc:
            log.warning("ignoring the cache snapshot %s: %s", self.snapshot, exc)
            return {}
        out: dict[str, _Saved] = {}
        if isinstance(raw, dict):
            for name, item in raw.items():
                try:
                    out[str(name)] = msgspec.convert(item, _Saved, strict=False)
                except msgspec.ValidationError as exc:
                    log.warning("skipping %s in the cache snapshot: %s", name, exc)
        return out
