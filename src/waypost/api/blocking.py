"""Encoded answers shared per (query, revision), and the blocking queries waiting on them.

Every read is served from bytes encoded once per revision of its result: the first
request after a change encodes, every later one (and every waiter) reuses the bytes.
A blocking query parks a future under its query; after each change the catalog applies,
each parked query is evaluated once and all its waiters are answered from one body.
The per-waiter cost is one dict lookup and one ``set_result`` (Consul re-runs the query
for every watcher, and stalls near 10k watches: hashicorp/consul#8995).
"""

from __future__ import annotations

import asyncio
import collections
import random
from dataclasses import dataclass

import msgspec
from multidict import CIMultiDict

from waypost.catalog import Catalog
from waypost.model import Node, Query, ServiceSummary
from waypost.prometheus import target_groups

# Distinct answers kept encoded; least recently used first out.
MAX_CACHED_ANSWERS = 10_000

_encode = msgspec.json.Encoder().encode


@dataclass(slots=True)
class Answer:
    """An encoded result: ``index`` is the revision at which the result last changed."""

    index: int
    body: bytes
    checked: int  # the catalog revision this answer is known to be current at
    _headers: CIMultiDict[str] | None = None
    _headers_at: int = -1
    # The whole HTTP response, as the plain-read path sends it (api/hot.py): kept with
    # the answer, so it goes when the answer does; (checked revision, Date, bytes).
    wire: tuple[int, str, bytes] | None = None

    def headers(self) -> CIMultiDict[str]:
        """``Content-Type``; ``X-Waypost-Index`` to block on; ``X-Waypost-Revision`` to
        watch from.

        Built once per revision and shared, like the body: 10,000 woken waiters reuse it
        (each response copies it, so none can change the shared one).
        """
        if self._headers is None or self._headers_at != self.checked:
            self._headers = CIMultiDict(
                {
                    "Content-Type": "application/json",
                    "X-Waypost-Index": str(self.index),
                    "X-Waypost-Revision": str(self.checked),
                }
            )
            self._headers_at = self.checked
        return self._headers


# What a cache key names: ("instances", query), ("prometheus", query) (the same
# instances as target groups), or (a listing, None): "services", "nodes", "routes",
# "configs".
Key = tuple[str, Query | None]


class AnswerCache:
    """Answers by key, recomputed only when the catalog moved past them."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._answers: collections.OrderedDict[Key, Answer] = collections.OrderedDict()
        # Each listed service's (node's) JSON, kept with the object it encodes: the
        # catalog keeps a summary until its service changes, so a change re-encodes one.
        self._parts: dict[str, dict[str, tuple[object, bytes]]] = {"services": {}, "nodes": {}}

    def _listing(self, kind: str, items: list[ServiceSummary] | list[Node]) -> bytes:
        """``_encode(items)``, byte for byte, encoding only the items not seen before."""
        kept = self._parts[kind]
        fresh: dict[str, tuple[object, bytes]] = {}
        parts = []
        for item in items:
            name = item.name if isinstance(item, ServiceSummary) else item.id
            seen = kept.get(name)
            if seen is None or seen[0] is not item:
                seen = (item, _encode(item))
            fresh[name] = seen
            parts.append(seen[1])
        self._parts[kind] = fresh  # what left the listing is forgotten
        return b"[" + b",".join(parts) + b"]"

    def _compute(self, key: Key) -> bytes:
        kind, query = key
        if kind == "services":
            return self._listing(kind, self._catalog.services())
        if kind == "nodes":
            return self._listing(kind, self._catalog.nodes())
        if kind == "routes":
            return _encode(self._catalog.entries("route"))
        if kind == "configs":
            return _encode(self._catalog.entries("service_config"))
        assert query is not None
        if kind == "prometheus":
            return _encode(target_groups(self._catalog.query(query)))
        return _encode(self._catalog.query(query))

    def _scope_revision(self, key: Key) -> int:
        """The revision of the last change that could alter this answer."""
        kind, query = key
        if query is not None and query.service is not None:
            return self._catalog.service_revision(query.service)
        if kind == "nodes":
            return self._catalog.nodes_revision()
        if kind == "routes":
            return self._catalog.kind_revision("route")
        if kind == "configs":
            return self._catalog.kind_revision("service_config")
        return self._catalog.revision

    def get(self, key: Key) -> Answer:
        """The current answer for ``key``, encoding it only if it may have changed."""
        rev = self._catalog.revision
        ans = self._answers.get(key)
        if ans is not None:
            if ans.checked == rev:
                self._answers.move_to_end(key)
                return ans
            if self._scope_revision(key) <= ans.checked:
                ans.checked = rev
                self._answers.move_to_end(key)
                return ans
        body = self._compute(key)
        if ans is not None and ans.body == body:
            ans.checked = rev
            self._answers.move_to_end(key)
            return ans
        # A service never seen has no revision of its own: the answer is current as of now.
        # As Consul, never answer index 0: a client that blocks on 0 would not block.
        index = max(self._scope_revision(key) or rev, 1)
        ans = Answer(index=index, body=body, checked=rev)
        self._answers[key] = ans
        self._answers.move_to_end(key)
        if len(self._answers) > MAX_CACHED_ANSWERS:
            self._answers.popitem(last=False)
        return ans


class _Waiter:
    __slots__ = ("fut", "index")

    def __init__(self, fut: asyncio.Future[Answer | None], index: int) -> None:
        self.fut = fut
        self.index = index


class BlockingQueries:
    """Parks blocking queries and answers them after the changes that concern them."""

    def __init__(self, catalog: Catalog, cache: AnswerCache) -> None:
        self._catalog = catalog
        self._cache = cache
        # Per key, the parked waiters as an ordered set: removal on timeout is O(1).
        self._parked: dict[Key, dict[_Waiter, None]] = {}
        self.count = 0
        catalog.add_listener(self._on_change)

    def cache_index(self, key: Key) -> int:
        """The revision at which ``key``'s answer last changed (no waiting)."""
        return self._cache.get(key).index

    async def wait(self, key: Key, index: int, wait_s: float) -> Answer:
        """The answer for ``key`` once its index passes ``index``, or after ``wait_s``."""
        ans = self._cache.get(key)
        if ans.index > index or index == 0:
            return ans
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Answer | None] = loop.create_future()
        waiter = _Waiter(fut, index)
        # Jitter as Consul (up to wait/16) so that waiters started together spread out.
        timer = loop.call_later(wait_s + random.uniform(0, wait_s / 16), _timeout, fut)
        self._parked.setdefault(key, {})[waiter] = None
        self.count += 1
        try:
            got = await fut
        finally:
            timer.cancel()
            self._unpark(key, waiter)
        return got if got is not None else self._cache.get(key)

    def _unpark(self, key: Key, waiter: _Waiter) -> None:
        """Forget a waiter that timed out or went away (answered ones are gone already)."""
        waiters = self._parked.get(key)
        if waiters is not None and waiters.pop(waiter, 0) is None:
            self.count -= 1
            if not waiters:
                del self._parked[key]

    def release_all(self) -> None:
        """Answer every parked query now (at shutdown), so clients move on at once."""
        for waiters in self._parked.values():
            for w in waiters:
                _timeout(w.fut)

    def _on_change(self, revision: int) -> None:
        for key in list(self._parked):
            ans = self._cache.get(key)
            waiters = self._parked[key]
            answered = [w for w in waiters if ans.index > w.index]
            for w in answered:
                del waiters[w]
                if not w.fut.done():
                    w.fut.set_result(ans)
            self.count -= len(answered)
            if not waiters:
                del self._parked[key]


def _timeout(fut: asyncio.Future[Answer | None]) -> None:
    if not fut.done():
        fut.set_result(None)
