"""Concurrent writes sent as one request: ``AsyncClient``'s register, deregister and
heartbeat calls made together travel in one ``POST /api/v1/batch`` with
``atomic: false``, whose per-item results give each caller exactly what its own call
would have returned (the same ``WriteResult``, or the same error).

When no batch is in flight, calls made in the same turn of the event loop go together
at once (a lone call goes alone, as the plain request, with no added wait). While one is
in flight, calls gather for at most ``window_s`` or until ``max_calls`` (or ``MAX_BYTES``
of body) are waiting, as a group commit does: under load the batches grow by themselves.
Measured in bench/registry.py: the client's CPU per registration is what limits a
Python process's writes, and one request for 64 calls costs little more than one.

``ThreadCoalescer`` does the same for the blocking ``Client`` called from many threads:
the first caller sends its own call at once; calls made while a request is in flight
wait for it, and the first of them then sends them all as one batch (a group commit).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from waypost.aio import settle
from waypost.client import _core
from waypost.client._core import Request
from waypost.errors import WaypostError, from_dict
from waypost.model import BatchOutcome, ItemResult, WriteResult

log = logging.getLogger("waypost.client")

# A batch's body stays well under the server's 1 MiB limit.
MAX_BYTES = 256 * 1024
KINDS = ("register", "deregister", "heartbeat")

Call = Callable[[Request], Awaitable[tuple[bytes, object]]]


@dataclass(slots=True)
class _Pending:
    kind: str
    item: bytes  # the item's JSON in the batch
    alone: Request  # the call's own request, used when it goes alone
    fut: asyncio.Future[WriteResult]


class Coalescer:
    """Gathers write calls into batches; ``call`` is the client's request function."""

    def __init__(self, call: Call, *, window_s: float, max_calls: int) -> None:
        self._call = call
        self.window_s = window_s
        self.max_calls = max(1, max_calls)
        self._pending: list[_Pending] = []
        self._bytes = 0
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # Requests sent: batches (two calls or more) and calls that went alone.
        self.batches = 0
        self.alone = 0

    async def submit(self, kind: str, item: bytes, alone: Request) -> WriteResult:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[WriteResult] = loop.create_future()
        self._pending.append(_Pending(kind, item, alone, fut))
        self._bytes += len(item) + 1
        if len(self._pending) >= self.max_calls or self._bytes >= MAX_BYTES:
            self._flush()
        elif self._timer is None:
            if self._in_flight:
                self._timer = loop.call_later(self.window_s, self._flush)
            else:
                self._timer = loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        calls, self._pending, self._bytes = self._pending, [], 0
        calls = [c for c in calls if not c.fut.done()]  # callers that gave up
        if not calls:
            return
        task = asyncio.ensure_future(self._send(calls))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, calls: list[_Pending]) -> None:
        self._in_flight += 1
        try:
            if len(calls) == 1:
                self.alone += 1
                body, _ = await self._call(calls[0].alone)
                settle(calls[0].fut, _core.decode_as(body, WriteResult))
            else:
                self.batches += 1
                await self._send_batch(calls)
        except Exception as exc:  # the whole request failed: every caller hears why
            for c in calls:
                settle(c.fut, exc)
        except BaseException as exc:
            for c in calls:
                settle(c.fut, WaypostError(f"the request was interrupted ({exc!r})"))
            raise
        finally:
            self._in_flight -= 1
            if self._pending and self._timer is None:
                self._timer = asyncio.get_running_loop().call_soon(self._flush)

    async def _send_batch(self, calls: list[_Pending]) -> None:
        by_kind = _by_kind(calls)
        answer, _ = await self._call(Request("POST", "/api/v1/batch", [], _batch_body(by_kind)))
        for c, result in _results(answer, by_kind):
            settle(c.fut, result)

    async def close(self) -> None:
        """Send what waits and let every request in flight finish."""
        if self._pending:
            self._flush()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _by_kind(calls: list[Any]) -> dict[str, list[Any]]:
    by_kind: dict[str, list[Any]] = {k: [] for k in KINDS}
    for c in calls:
        by_kind[c.kind].append(c)
    return by_kind


def _batch_body(by_kind: dict[str, list[Any]]) -> bytes:
    return (
        b'{"atomic":false,'
        + b",".join(
            b'"' + k.encode() + b'":[' + b",".join(c.item for c in by_kind[k]) + b"]" for k in KINDS
        )
        + b"}"
    )


def _results(
    answer: bytes, by_kind: dict[str, list[Any]]
) -> list[tuple[Any, WriteResult | WaypostError]]:
    """Each call with its own result, from a ``BatchOutcome`` (raises if the answer
    does not hold one result per call)."""
    outcome = _core.decode_as(answer, BatchOutcome)
    out: list[tuple[Any, WriteResult | WaypostError]] = []
    for kind in KINDS:
        results = getattr(outcome, kind)
        waiting = by_kind[kind]
        if len(results) != len(waiting):
            raise WaypostError(
                f"the server answered {len(results)} {kind} results for {len(waiting)}"
            )
        out += [(c, _result(r)) for c, r in zip(waiting, results, strict=True)]
    return out


@dataclass(slots=True)
class _Waiting:
    kind: str
    item: bytes
    alone: Request
    done: threading.Event
    result: WriteResult | BaseException | None = None
    # Set when this caller is handed the lead: the calls it sends, itself first.
    group: list[_Waiting] | None = None


class ThreadCoalescer:
    """Gathers the blocking client's write calls from many threads into batches;
    ``call`` sends a request and returns the answer's body (raising on an error)."""

    def __init__(self, call: Callable[[Request], bytes], *, max_calls: int) -> None:
        self._call = call
        self.max_calls = max(1, max_calls)
        self._lock = threading.Lock()
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._busy = False
        self.batches = 0
        self.alone = 0

    def submit(self, kind: str, item: bytes, alone: Request) -> WriteResult:
        me = _Waiting(kind, item, alone, threading.Event())
        with self._lock:
            if self._busy:
                self._waiting.append(me)
                group = None
            else:
                self._busy = True
                group = [me]
        if group is None:
            me.done.wait()  # a result, or the lead (the request in flight ended)
            group = me.group
        if group is not None:
            try:
                self._send(group)
            finally:
                self._hand_off()
        if isinstance(me.result, BaseException):
            raise me.result
        assert me.result is not None
        return me.result

    def _send(self, group: list[_Waiting]) -> None:
        try:
            if len(group) == 1:
                self.alone += 1
                group[0].result = _core.decode_as(self._call(group[0].alone), WriteResult)
            else:
                self.batches += 1
                by_kind = _by_kind(group)
                body = self._call(Request("POST", "/api/v1/batch", [], _batch_body(by_kind)))
                for c, result in _results(body, by_kind):
                    c.result = result
        except Exception as exc:  # the whole request failed: every caller hears why
            for c in group:
                c.result = exc
        except BaseException as exc:
            for c in group:
                c.result = WaypostError(f"the request was interrupted ({exc!r})")
            raise
        finally:
            for c in group[1:]:
                c.done.set()

    def _hand_off(self) -> None:
        """The next calls to the first of their callers, or nobody in flight."""
        with self._lock:
            if not self._waiting:
                self._busy = False
                return
            group: list[_Waiting] = []
            size = 0
            while self._waiting and len(group) < self.max_calls and size < MAX_BYTES:
                c = self._waiting.popleft()
                group.append(c)
                size += len(c.item) + 1
            group[0].group = group
        group[0].done.set()


def _result(item: ItemResult) -> WriteResult | WaypostError:
    if item.status < 400 and item.index is not None:
        return WriteResult(id=item.id, index=item.index)
    body = {"error": item.error, "message": item.message, "field": item.field}
    return from_dict(body, http_status=item.status)


def encode_id(instance_id: str) -> bytes:
    return msgspec.json.encode(instance_id)
