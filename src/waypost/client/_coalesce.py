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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

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
        by_kind: dict[str, list[_Pending]] = {k: [] for k in KINDS}
        for c in calls:
            by_kind[c.kind].append(c)
        body = (
            b'{"atomic":false,'
            + b",".join(
                b'"' + k.encode() + b'":[' + b",".join(c.item for c in by_kind[k]) + b"]"
                for k in KINDS
            )
            + b"}"
        )
        answer, _ = await self._call(Request("POST", "/api/v1/batch", [], body))
        outcome = _core.decode_as(answer, BatchOutcome)
        for kind in KINDS:
            results = getattr(outcome, kind)
            waiting = by_kind[kind]
            if len(results) != len(waiting):
                raise WaypostError(
                    f"the server answered {len(results)} {kind} results for {len(waiting)}"
                )
            for c, result in zip(waiting, results, strict=True):
                settle(c.fut, _result(result))

    async def close(self) -> None:
        """Send what waits and let every request in flight finish."""
        if self._pending:
            self._flush()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _result(item: ItemResult) -> WriteResult | WaypostError:
    if item.status < 400 and item.index is not None:
        return WriteResult(id=item.id, index=item.index)
    body = {"error": item.error, "message": item.message, "field": item.field}
    return from_dict(body, http_status=item.status)


def encode_id(instance_id: str) -> bytes:
    return msgspec.json.encode(instance_id)
