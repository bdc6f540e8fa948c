"""What both clients share, with no I/O: requests as data, answers decoded, failover order.

``Client`` (httpx, sync) and ``AsyncClient`` (aiohttp) build the same requests here and
decode the same answers here; they differ only in how bytes move (as httpx's two clients).
The client knows the model and the HTTP contract, nothing of the server's internals.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import msgspec

from waypost.durations import format_duration, parse_duration
from waypost.errors import Gone, InvalidInput, Unavailable, WaypostError, from_dict
from waypost.model import (
    Batch,
    Event,
    Instance,
    Kind,
    MaintenanceUpdate,
    Status,
    StatusUpdate,
    convert_instance,
)
from waypost.sse import SseMessage

DEFAULT_URL = "http://127.0.0.1:8500"
DEFAULT_TIMEOUT_S = 10.0
# After a failover, go back to trying the first (most local) server this often.
PREFER_FIRST_AFTER_S = 30.0
# Reconnect back-off of a watch: first try, growth, ceiling.
WATCH_BACKOFF_S = (0.05, 2.0, 2.0)

_encode = msgspec.json.Encoder().encode
T = TypeVar("T")


class QueryResult(msgspec.Struct, frozen=True):
    """Instances matching a query: ``index`` to block on for the next change of this
    answer, ``revision`` (the registry revision it is current at) to watch from."""

    index: int
    instances: list[Instance]
    revision: int = 0


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request, before any transport sees it."""

    method: str
    path: str
    params: list[tuple[str, str]]
    body: bytes | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S


def instance_of(
    instance: Instance | Mapping[str, Any] | None, fields: Mapping[str, Any]
) -> Instance:
    """An Instance from an Instance, a mapping, or keyword fields (validated here, early)."""
    if isinstance(instance, Instance):
        if fields:
            return convert_instance({**msgspec.structs.asdict(instance), **fields})
        return instance
    data = {**(instance or {}), **fields}
    return convert_instance(data)


def _wait_params(
    index: int | None, wait: float | str | None
) -> tuple[list[tuple[str, str]], float]:
    if index is None:
        return [], DEFAULT_TIMEOUT_S
    wait_s = 300.0 if wait is None else _seconds(wait)
    # The server adds up to wait/16 of jitter; leave room for it and for the answer.
    return [("index", str(index)), ("wait", format_duration(wait_s))], wait_s * 1.07 + 5.0


def _seconds(wait: float | str) -> float:
    return parse_duration(wait, field="wait") if isinstance(wait, str) else float(wait)


def query_request(
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
) -> Request:
    """``GET /api/v1/instances`` with these filters (and blocking, given ``index``)."""
    params: list[tuple[str, str]] = []
    if service is not None:
        params.append(("service", service))
    if version is not None:
        params.append(("version", version))
    params += [("tag", t) for t in tags]
    params += [("any_tag", t) for t in any_tags]
    if status is not None:
        items = [status] if isinstance(status, str | Status) else list(status)
        params.append(("status", ",".join(s.value if isinstance(s, Status) else s for s in items)))
    if node is not None:
        params.append(("node", node))
    if kind is not None:
        params.append(("kind", kind.value if isinstance(kind, Kind) else kind))
    params += [(f"meta.{k}", v) for k, v in (meta or {}).items()]
    extra, timeout_s = _wait_params(index, wait)
    return Request("GET", "/api/v1/instances", params + extra, timeout_s=timeout_s)


def _iid(instance_id: str) -> str:
    if not instance_id:
        raise InvalidInput("id: empty instance id", field="id")
    return quote(instance_id, safe="")


def register_request(inst: Instance) -> Request:
    return Request("PUT", f"/api/v1/instances/{_iid(inst.id)}", [], _encode(inst))


def deregister_request(instance_id: str) -> Request:
    return Request("DELETE", f"/api/v1/instances/{_iid(instance_id)}", [])


def get_request(instance_id: str) -> Request:
    return Request("GET", f"/api/v1/instances/{_iid(instance_id)}", [])


def heartbeat_request(instance_id: str) -> Request:
    return Request("PUT", f"/api/v1/instances/{_iid(instance_id)}/heartbeat", [])


def status_request(instance_id: str, status: Status | str, output: str) -> Request:
    value = status.value if isinstance(status, Status) else status
    body = _encode(StatusUpdate(status=value, output=output))
    return Request("PUT", f"/api/v1/instances/{_iid(instance_id)}/status", [], body)


def maintenance_request(instance_id: str, enable: bool, reason: str) -> Request:
    body = _encode(MaintenanceUpdate(enable=enable, reason=reason))
    return Request("PUT", f"/api/v1/instances/{_iid(instance_id)}/maintenance", [], body)


def batch_request(register: Sequence[Instance], deregister: Sequence[str]) -> Request:
    body = _encode(Batch(register=list(register), deregister=list(deregister)))
    return Request("POST", "/api/v1/batch", [], body)


def simple_get(path: str, index: int | None = None, wait: float | str | None = None) -> Request:
    params, timeout_s = _wait_params(index, wait)
    return Request("GET", path, params, timeout_s=timeout_s)


def events_request(service: str | None, index: int | None) -> Request:
    params: list[tuple[str, str]] = []
    if service is not None:
        params.append(("service", service))
    if index is not None:
        params.append(("index", str(index)))
    return Request("GET", "/api/v1/events", params)


def raise_for_answer(status: int, body: bytes) -> None:
    """Raise the WaypostError an error answer carries; return on 2xx."""
    if status < 400:
        return
    try:
        data: object = msgspec.json.decode(body) if body else None
    except msgspec.DecodeError:
        data = None
    raise from_dict(data, http_status=status)


def decode_as(body: bytes, type_: type[T]) -> T:
    """Decode a 2xx answer into ``type_``."""
    try:
        return msgspec.json.decode(body, type=type_)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise WaypostError(f"the server's answer is not what this client reads: {exc}") from None


class ServerList:
    """The servers to try, most local first; sticks to one that works, returns home later."""

    def __init__(self, urls: str | Sequence[str], *, clock: Any = time.monotonic) -> None:
        items = [urls] if isinstance(urls, str) else list(urls)
        cleaned = [u.rstrip("/") for u in items if u and u.strip()]
        if not cleaned:
            raise InvalidInput("servers: give at least one server URL", field="servers")
        for url in cleaned:
            if not url.startswith(("http://", "https://")):
                raise InvalidInput(f"servers: {url!r} is not an http(s) URL", field="servers")
        self.urls = cleaned
        self._current = 0
        self._since = 0.0
        self._clock = clock

    def order(self) -> list[str]:
        """The URLs in the order to try them now."""
        if self._current and self._clock() - self._since > PREFER_FIRST_AFTER_S:
            self._current = 0
        return self.urls[self._current :] + self.urls[: self._current]

    def worked(self, url: str) -> None:
        """Remember ``url`` as the one to try first."""
        i = self.urls.index(url)
        if i != self._current:
            self._current = i
            self._since = self._clock()

    def unreachable(self, failures: list[str]) -> Unavailable:
        return Unavailable("cannot reach any Waypost server: " + "; ".join(failures))


def event_of(msg: SseMessage) -> Event | None:
    """The Event an SSE message carries (put/delete); raises Gone on a ``gone`` message."""
    if msg.event == "gone":
        try:
            data = msgspec.json.decode(msg.data)
        except msgspec.DecodeError:
            data = {}
        err = from_dict(data, http_status=410)
        raise err if isinstance(err, Gone) else Gone(err.message)
    if msg.event not in ("put", "delete") or msg.id is None:
        return None
    try:
        inst = msgspec.json.decode(msg.data, type=Instance)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise WaypostError(f"the server sent an event this client cannot read: {exc}") from None
    return Event(revision=int(msg.id), type=msg.event, instance=inst)  # type: ignore[arg-type]


class WatchState:
    """Where a watch stands: the revision to resume from and the back-off for reconnects."""

    def __init__(self, service: str | None, index: int | None) -> None:
        self.service = service
        self.last = index
        self.delay_s = 0.0

    def request(self) -> Request:
        return events_request(self.service, self.last)

    def connected(self, header_index: str | None) -> None:
        if self.last is None and header_index and header_index.isdigit():
            self.last = int(header_index)

    def seen(self, msg: SseMessage) -> Event | None:
        """Advance past ``msg`` (also id-only frames) and return its event, if any."""
        event = event_of(msg)
        if event is not None:
            self.last = event.revision
            self.delay_s = 0.0
        return event

    def moved(self, last_id: str | None) -> None:
        if last_id and last_id.isdigit():
            self.last = max(self.last or 0, int(last_id))

    def next_delay(self) -> float:
        first, growth, ceiling = WATCH_BACKOFF_S
        self.delay_s = first if self.delay_s == 0 else min(self.delay_s * growth, ceiling)
        return self.delay_s
