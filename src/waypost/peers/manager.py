"""The discovery manager: reads every source, merges their entries, checks signatures, and
keeps a health-checked list of servers to send to.

Sources come in order (``--join`` flags, then ``WAYPOST_NODE_REGISTRIES``, then
``{data_dir}/discovery-peers.json``: local first, then regional, then global, as the
operator lists them). Entries are deduplicated by node id, the first source's winning.
An entry that does not verify (see ``signing.py``) is ``rejected`` and never used. With
auto-connect (the default) each server is probed (``GET /health``); one that fails is
put in ``backoff``: its breaker opens for an exponentially growing, jittered delay (1 s,
2 s, 4 s... at most 60 s), after which one probe (half-open) decides whether it closes
again. A dead server so costs one probe per backoff step, never one per request.
``urls()`` gives the servers to try: reachable ones in source order first.

A source that fails is logged and retried at the next refresh; the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from .base import PROVISIONAL, Context, Source, SourceError, parse_source
from .entry import EntryError, NodeEntry, entry_of
from .signing import verify

log = logging.getLogger("waypost.peers")

DEFAULT_REFRESH_S = 60.0
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
TICK_S = 0.5  # how often a running manager looks for probes that are due
MAX_PEERS = 10_000


@dataclass
class Peer:
    """One server discovery knows of, and what it knows of it."""

    node_id: str
    api: str
    source: str
    entry: NodeEntry | None = None
    state: str = "unknown"  # reachable, unreachable, backoff, rejected (or unknown)
    last_error: str = ""
    latency_ms: float | None = None
    failures: int = 0
    breaker: str = "closed"  # closed, open, half_open
    next_probe: float = 0.0
    verified: bool = True  # False: a provisional entry where a signed one is required

    @property
    def usable(self) -> bool:
        return self.state != "rejected" and self.verified

    def as_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "api": self.api,
            "source": self.source,
            "state": self.state,
            "last_error": self.last_error or None,
            "latency_ms": round(self.latency_ms, 3) if self.latency_ms is not None else None,
            "failures": self.failures,
            "breaker": self.breaker,
            "role": self.entry.role if self.entry else None,
        }


def backoff_s(failures: int, rng: random.Random, base: float, most: float) -> float:
    """The wait after ``failures`` failed probes in a row: exponential, capped, with
    jitter (between half and all of it, so servers that died together are not probed
    in step)."""
    delay: float = min(most, base * 2.0 ** max(0, failures - 1))
    return delay * (0.5 + rng.random() / 2)


class Discovery:
    """Keeps the servers every source names, probed; ``refresh()`` once or ``run()``."""

    def __init__(
        self,
        sources: Sequence[Source | str],
        *,
        trust: Iterable[str] = (),
        refresh_s: float = DEFAULT_REFRESH_S,
        auto_connect: bool = True,
        timeout_s: float = 2.0,
        dns_resolver: tuple[str, int] | None = None,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        mdns_browse_s: float = 1.5,
        token: str = "",
    ) -> None:
        # Sent when asking servers for their entries (a server under default deny
        # answers its node-registry entry only to a token that may read its node).
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.sources = [parse_source(s) if isinstance(s, str) else s for s in sources]
        self.trust = set(trust)
        self.refresh_s = refresh_s
        self.auto_connect = auto_connect
        self.timeout_s = timeout_s
        self.dns_resolver = dns_resolver
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.mdns_browse_s = mdns_browse_s
        self._clock = clock
        self._rng = rng or random.Random()
        self.peers: dict[str, Peer] = {}
        self.source_errors: dict[str, str] = {}
        self.refreshed_at: float | None = None
        self.refreshes = 0
        self._wake = asyncio.Event()
        self._lock: asyncio.Lock | None = None
        self.on_change: Callable[[list[str]], None] | None = None

    # --- reading the sources ---------------------------------------------------------------

    async def refresh(self) -> list[Peer]:
        """Read every source now, merge, and (with auto-connect) probe every server."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            async with aiohttp.ClientSession() as session:
                ctx = Context(
                    session,
                    api_headers=self._headers,
                    timeout_s=self.timeout_s,
                    dns_resolver=self.dns_resolver,
                    mdns_browse_s=self.mdns_browse_s,
                )
                results = await asyncio.gather(*(self._read(s, ctx) for s in self.sources))
                merged: dict[str, Peer] = {}
                for source, raws in zip(self.sources, results, strict=True):
                    for raw in raws:
                        self._merge(merged, source.name, raw)
                self.peers = merged
                self.refreshed_at = self._clock()
                self.refreshes += 1
                if self.auto_connect:
                    await self._probe(session, [p for p in merged.values() if p.usable])
            self._changed()
            return list(self.peers.values())

    async def _read(self, source: Source, ctx: Context) -> list[dict[str, Any]]:
        try:
            raws = await source.discover(ctx)
        except SourceError as exc:
            if self.source_errors.get(source.name) != str(exc):
                log.warning("discovery source %s failed: %s", source.name, exc)
            self.source_errors[source.name] = str(exc)
            return []
        except Exception as exc:  # a source's bug must not stop the others
            log.exception("discovery source %s failed", source.name)
            self.source_errors[source.name] = f"{type(exc).__name__}: {exc}"
            return []
        self.source_errors.pop(source.name, None)
        log.info("discovery source %s: %d peer(s)", source.name, len(raws))
        return raws

    def _merge(self, merged: dict[str, Peer], source: str, raw: dict[str, Any]) -> None:
        if len(merged) >= MAX_PEERS:
            return
        provisional = bool(raw.pop(PROVISIONAL, False))
        try:
            entry = entry_of(raw)
        except EntryError as exc:
            log.warning("discovery: %s: refusing an entry: %s", source, exc)
            key = f"{source}#{len(merged)}"
            merged[key] = Peer(key, "", source, state="rejected", last_error=str(exc))
            return
        if entry.node_id in merged:
            return  # an earlier source named it: that one wins
        peer = Peer(entry.node_id, entry.api, source, entry)
        old = self.peers.get(entry.node_id)
        if old is not None and old.api == entry.api and old.state != "rejected":
            # The same server as before: keep what probing learned.
            for name in ("state", "last_error", "latency_ms", "failures", "breaker", "next_probe"):
                setattr(peer, name, getattr(old, name))
        if provisional:
            if self.trust:
                peer.verified = False
                peer.state = "unreachable"
                peer.last_error = "did not answer with its entry, and a signed one is required"
        else:
            try:
                verify(raw, self.trust)
            except EntryError as exc:
                peer.state = "rejected"
                peer.last_error = f"{source}: {exc}"
                log.warning("discovery: refusing node %s from %s: %s", entry.node_id, source, exc)
        merged[entry.node_id] = peer

    # --- probing ---------------------------------------------------------------------------

    async def _probe(self, session: aiohttp.ClientSession, peers: list[Peer]) -> None:
        await asyncio.gather(*(self._probe_one(session, p) for p in peers))

    async def _probe_one(self, session: aiohttp.ClientSession, peer: Peer) -> None:
        start = time.perf_counter()
        try:
            async with session.get(
                f"{peer.api}/health", timeout=aiohttp.ClientTimeout(total=self.timeout_s)
            ) as r:
                await r.read()
                if r.status != 200:
                    raise SourceError(f"/health answered {r.status}")
        except (aiohttp.ClientError, TimeoutError, SourceError) as exc:
            self.failed(peer, str(exc) or type(exc).__name__)
            return
        self.worked(peer, (time.perf_counter() - start) * 1000)

    def worked(self, peer: Peer, latency_ms: float | None = None) -> None:
        if peer.state != "reachable":
            log.info("discovery: %s (%s) is reachable", peer.node_id, peer.api)
        peer.state = "reachable"
        peer.breaker = "closed"
        peer.failures = 0
        peer.last_error = ""
        if latency_ms is not None:
            peer.latency_ms = latency_ms
        self._changed()

    def failed(self, peer: Peer, error: str) -> None:
        peer.failures += 1
        peer.breaker = "open"
        peer.state = "backoff"
        peer.last_error = error
        wait = backoff_s(peer.failures, self._rng, self.backoff_base_s, self.backoff_max_s)
        peer.next_probe = self._clock() + wait
        log.info(
            "discovery: %s (%s) failed (%s); next try in %.1f s",
            peer.node_id,
            peer.api,
            error,
            wait,
        )
        self._changed()

    def report(self, url: str, ok: bool, error: str = "") -> None:
        """What a client saw when it sent to ``url``: the peer's breaker learns from it."""
        for peer in self.peers.values():
            if peer.api == url:
                if ok and peer.state != "reachable":
                    self.worked(peer)
                elif not ok and peer.breaker != "open":
                    self.failed(peer, error or "a request failed")
                return

    async def probe_due(self) -> None:
        """Probe the servers whose backoff has run out (one probe each: half-open)."""
        now = self._clock()
        due = [
            p
            for p in self.peers.values()
            if p.usable and p.breaker == "open" and now >= p.next_probe
        ]
        if not due:
            return
        for p in due:
            p.breaker = "half_open"
            p.state = "unreachable"
        async with aiohttp.ClientSession() as session:
            await self._probe(session, due)

    # --- what clients use ----------------------------------------------------------------------

    def urls(self) -> list[str]:
        """Servers to send to, in source order: reachable ones first, then those not
        known to be down, then the ones in backoff (a client with nothing else tries them)."""
        usable = [p for p in self.peers.values() if p.usable and p.api]
        first = [p.api for p in usable if p.state == "reachable"]
        then = [p.api for p in usable if p.state in ("unknown", "unreachable")]
        last = [p.api for p in usable if p.state == "backoff"]
        return list(dict.fromkeys(first + then + last))

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.urls())

    def status(self) -> dict[str, Any]:
        return {
            "peers": [p.as_dict() for p in self.peers.values()],
            "source_errors": dict(self.source_errors),
            "sources": [s.name for s in self.sources],
            "refreshes": self.refreshes,
        }

    # --- running ---------------------------------------------------------------------------

    def request_refresh(self) -> None:
        """Read the sources again now (SIGHUP to an agent does this)."""
        self._wake.set()

    async def run(self) -> None:
        """Refresh every ``refresh_s`` (or when asked), probing due servers in between.
        Ends only when cancelled; a failing round is logged and retried."""
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("discovery refresh failed")
            deadline = self._clock() + self.refresh_s
            self._wake.clear()
            while self._clock() < deadline and not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), TICK_S)
                if self.auto_connect and not self._wake.is_set():
                    try:
                        await self.probe_due()
                    except Exception:
                        log.exception("discovery probe failed")


def gather_sources(
    join: Sequence[str] = (),
    *,
    env: str | None = None,
    data_dir: str | None = None,
) -> list[str]:
    """Every source, in the order they are merged: ``join``, then the comma-separated
    ``env`` (``WAYPOST_NODE_REGISTRIES``), then ``{data_dir}/discovery-peers.json`` when
    it exists."""
    from pathlib import Path

    from .entry import PEERS_FILE

    out = [s.strip() for s in join if s.strip()]
    out += [s.strip() for s in (env or "").split(",") if s.strip()]
    if data_dir:
        peers = Path(data_dir) / PEERS_FILE
        if peers.exists():
            out.append(str(peers))
    return list(dict.fromkeys(out))


def from_environment(
    join: Sequence[str] | None,
    trust_keys: Sequence[str] = (),
    *,
    data_dir: str | None = None,
    dns_resolver: tuple[str, int] | None = None,
    refresh_s: float = DEFAULT_REFRESH_S,
    token: str = "",
) -> Discovery | None:
    """A Discovery for a client or agent: ``join`` plus ``WAYPOST_NODE_REGISTRIES`` plus
    ``{data_dir}/discovery-peers.json``; trust keys plus ``WAYPOST_TRUST_KEYS``. None when
    there is no source at all."""
    import os

    from .signing import trusted_key

    sources = gather_sources(
        join or (), env=os.environ.get("WAYPOST_NODE_REGISTRIES"), data_dir=data_dir
    )
    if not sources:
        return None
    keys = list(trust_keys) + [
        k for k in os.environ.get("WAYPOST_TRUST_KEYS", "").split(",") if k.strip()
    ]
    return Discovery(
        sources,
        trust=[trusted_key(k) for k in keys],
        dns_resolver=dns_resolver,
        refresh_s=refresh_s,
        token=token,
    )
