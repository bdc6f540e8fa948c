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
    ENTRY_TYPES,
    AclPolicy,
    AclRule,
    AclTokenRequest,
    Batch,
    CheckState,
    Event,
    HealthReport,
    Instance,
    Kind,
    LeaseGrant,
    MaintenanceUpdate,
    Node,
    Route,
    ServiceConfig,
    Status,
    StatusUpdate,
    convert_instance,
    decode_lenient,
    translate_validation_error,
)
from waypost.sse import WHOLE, SseMessage, parse_event_id

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
    if instance_id.isascii() and instance_id.replace("-", "").isalnum():
        return instance_id  # nothing to quote (the usual id: quote costs 2 µs a call)
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
    body = _encode(StatusUpdate(status=value, output=output))  # type: ignore[arg-type]
    return Request("PUT", f"/api/v1/instances/{_iid(instance_id)}/status", [], body)


def maintenance_request(instance_id: str, enable: bool, reason: str) -> Request:
    body = _encode(MaintenanceUpdate(enable=enable, reason=reason))
    return Request("PUT", f"/api/v1/instances/{_iid(instance_id)}/maintenance", [], body)


def health_request(instance_id: str, states: Sequence[CheckState]) -> Request:
    body = _encode(HealthReport(health=tuple(states)))
    return Request("PUT", f"/api/v1/instances/{_iid(instance_id)}/health", [], body)


def _where(service: str | None, node: str | None) -> list[tuple[str, str]]:
    params = []
    if service is not None:
        params.append(("service", service))
    if node is not None:
        params.append(("node", node))
    return params


def checks_request(service: str | None, node: str | None) -> Request:
    return Request("GET", "/api/v1/checks", _where(service, node))


def run_checks_request(service: str | None, node: str | None) -> Request:
    return Request("POST", "/api/v1/check", _where(service, node))


def run_instance_checks_request(instance_id: str) -> Request:
    return Request("POST", f"/api/v1/instances/{_iid(instance_id)}/check", [])


def batch_request(register: Sequence[Instance], deregister: Sequence[str]) -> Request:
    body = _encode(Batch(register=list(register), deregister=list(deregister)))
    return Request("POST", "/api/v1/batch", [], body)


def config_of(service: str, config: ServiceConfig | Mapping[str, Any]) -> ServiceConfig:
    """A service config to write, validated here, early (the server checks it again)."""
    if isinstance(config, ServiceConfig):
        data: object = msgspec.to_builtins(config)
    else:
        data = dict(config)
    try:
        cfg = msgspec.convert(data, ServiceConfig)
    except msgspec.ValidationError as exc:
        raise translate_validation_error(exc) from None
    if cfg.service and cfg.service != service:
        raise InvalidInput(
            f"service: the config names {cfg.service!r}, not {service!r}", field="service"
        )
    return msgspec.structs.replace(cfg, service=service)


def put_config_request(service: str, config: ServiceConfig) -> Request:
    return Request("PUT", f"/api/v1/services/{_iid(service)}/config", [], _encode(config))


def delete_config_request(service: str) -> Request:
    return Request("DELETE", f"/api/v1/services/{_iid(service)}/config", [])


def route_of(route: Route | Mapping[str, Any]) -> Route:
    data: object = msgspec.to_builtins(route) if isinstance(route, Route) else dict(route)
    try:
        got = msgspec.convert(data, Route)
    except msgspec.ValidationError as exc:
        raise translate_validation_error(exc) from None
    if not got.name:
        raise InvalidInput("name: a route needs a name", field="name")
    return got


def put_route_request(route: Route) -> Request:
    return Request("PUT", f"/api/v1/routes/{_iid(route.name)}", [], _encode(route))


def delete_route_request(name: str) -> Request:
    return Request("DELETE", f"/api/v1/routes/{_iid(name)}", [])


def node_of(
    node_id: str, address: str | None, meta: Mapping[str, str] | None, lease: int | None
) -> Node:
    """A Node to register, validated here, early."""
    try:
        return msgspec.convert(
            {"id": node_id, "address": address, "meta": dict(meta or {}), "lease": lease}, Node
        )
    except msgspec.ValidationError as exc:
        raise translate_validation_error(exc) from None


def node_request(node: Node) -> Request:
    return Request("PUT", f"/api/v1/nodes/{_iid(node.id)}", [], _encode(node))


def node_delete_request(node_id: str) -> Request:
    return Request("DELETE", f"/api/v1/nodes/{_iid(node_id)}", [])


def lease_grant_request(ttl: float | str) -> Request:
    text = ttl if isinstance(ttl, str) else format_duration(float(ttl))
    if parse_duration(text, field="ttl") <= 0:
        raise InvalidInput("ttl: must be longer than zero", field="ttl")
    return Request("POST", "/api/v1/leases", [], _encode(LeaseGrant(ttl=text)))


def lease_request(method: str, lease_id: int, suffix: str = "") -> Request:
    return Request(method, f"/api/v1/leases/{int(lease_id)}{suffix}", [])


def simple_get(path: str, index: int | None = None, wait: float | str | None = None) -> Request:
    params, timeout_s = _wait_params(index, wait)
    return Request("GET", path, params, timeout_s=timeout_s)


def events_request(
    service: str | None, position: tuple[int, int] | None, kinds: Sequence[str] = ("instance",)
) -> tuple[Request, dict[str, str]]:
    """The event stream request, resuming after ``position`` (a header when it is inside a
    revision: ``Last-Event-ID: R.i``)."""
    params: list[tuple[str, str]] = [("kind", ",".join(kinds))]
    headers: dict[str, str] = {}
    if service is not None:
        params.append(("service", service))
    if position is not None:
        rev, idx = position
        if idx == WHOLE:
            params.append(("index", str(rev)))
        else:
            headers["Last-Event-ID"] = f"{rev}.{idx}"
    return Request("GET", "/api/v1/events", params), headers


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
    """Decode a 2xx answer into ``type_``; fields a newer server added are ignored."""
    try:
        return decode_lenient(body, type_)
    except InvalidInput as exc:
        raise WaypostError(f"the server's answer is not what this client reads: {exc}") from None


class ServerList:
    """The servers to try, most local first; sticks to one that works, returns home later."""

    def __init__(
        self, urls: str | Sequence[str], *, clock: Any = time.monotonic, discovered: bool = False
    ) -> None:
        """``discovered``: the URLs come from node discovery (``replace``), and may be
        none yet."""
        self.discovered = discovered
        self.urls = self._cleaned(urls)
        self._current = 0
        self._since = 0.0
        self._clock = clock

    def _cleaned(self, urls: str | Sequence[str]) -> list[str]:
        items = [urls] if isinstance(urls, str) else list(urls)
        cleaned = [u.rstrip("/") for u in items if u and u.strip()]
        if not cleaned and not self.discovered:
            raise InvalidInput("servers: give at least one server URL", field="servers")
        for url in cleaned:
            if not url.startswith(("http://", "https://")):
                raise InvalidInput(f"servers: {url!r} is not an http(s) URL", field="servers")
        return cleaned

    def replace(self, urls: Sequence[str]) -> None:
        """New servers from discovery, best first: the first is tried first again."""
        cleaned = self._cleaned(urls)
        if cleaned != self.urls:
            self.urls = cleaned
            self._current = 0

    def order(self) -> list[str]:
        """The URLs in the order to try them now."""
        if self._current and self._clock() - self._since > PREFER_FIRST_AFTER_S:
            self._current = 0
        return self.urls[self._current :] + self.urls[: self._current]

    def worked(self, url: str) -> None:
        """Remember ``url`` as the one to try first."""
        if url not in self.urls:
            return  # replaced by discovery meanwhile
        i = self.urls.index(url)
        if i != self._current:
            self._current = i
            self._since = self._clock()

    def unreachable(self, failures: list[str]) -> Unavailable:
        if not failures and self.discovered:
            return Unavailable("node discovery found no Waypost server (waypost peers shows why)")
        return Unavailable("cannot reach any Waypost server: " + "; ".join(failures))


def event_of(msg: SseMessage) -> Event | None:
    """The Event an SSE message carries; raises Gone on a ``gone`` message. Messages this
    client does not know (a kind added later) are None."""
    if msg.event == "gone":
        try:
            data = msgspec.json.decode(msg.data)
        except msgspec.DecodeError:
            data = {}
        err = from_dict(data, http_status=410)
        raise err if isinstance(err, Gone) else Gone(err.message)
    kind, dot, type_ = msg.event.rpartition(".")
    kind = kind if dot else "instance"
    position = parse_event_id(msg.id) if msg.id is not None else None
    entry_type = ENTRY_TYPES.get(kind)
    if type_ not in ("put", "delete") or position is None or entry_type is None:
        return None
    try:
        entry = decode_lenient(msg.data, entry_type)
    except InvalidInput as exc:
        raise WaypostError(f"the server sent an event this client cannot read: {exc}") from None
    rev, idx = position
    return Event(
        revision=rev,
        type=type_,  # type: ignore[arg-type]
        entry=entry,
        index=0 if idx == WHOLE else idx,
    )


class WatchState:
    """Where a watch stands: the position to resume from and the back-off for reconnects."""

    def __init__(
        self, service: str | None, index: int | None, kinds: Sequence[str] = ("instance",)
    ) -> None:
        self.service = service
        self.position: tuple[int, int] | None = None if index is None else (index, WHOLE)
        self.kinds = tuple(kinds)
        self.delay_s = 0.0

    @property
    def last(self) -> int | None:
        """The revision the watch has reached (whole or in part)."""
        return None if self.position is None else self.position[0]

    def request(self) -> tuple[Request, dict[str, str]]:
        return events_request(self.service, self.position, self.kinds)

    def connected(self, header_index: str | None) -> None:
        if self.position is None and header_index and header_index.isdigit():
            self.position = (int(header_index), WHOLE)

    def seen(self, msg: SseMessage) -> Event | None:
        """Advance past ``msg`` (also id-only frames) and return its event, if any."""
        event = event_of(msg)
        self.moved(msg.id)
        if event is not None:
            self.delay_s = 0.0
        return event

    def moved(self, last_id: str | None) -> None:
        position = parse_event_id(last_id) if last_id else None
        if position is not None and (self.position is None or _later(position, self.position)):
            self.position = position

    def next_delay(self) -> float:
        first, growth, ceiling = WATCH_BACKOFF_S
        self.delay_s = first if self.delay_s == 0 else min(self.delay_s * growth, ceiling)
        return self.delay_s


def _later(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether stream position ``a`` is after ``b`` (WHOLE is past every index)."""
    if a[0] != b[0]:
        return a[0] > b[0]
    return b[1] != WHOLE and (a[1] == WHOLE or a[1] > b[1])


def discovery_for(
    servers: str | Sequence[str] | None,
    join: Sequence[str] | None,
    trust_keys: Sequence[str],
    dns_resolver: str | None,
    *,
    token: str | None = None,
) -> tuple[ServerList, Any]:
    """The server list a client starts with, and its node discovery (None without):
    discovery when ``join`` is given, or when no servers are and
    ``WAYPOST_NODE_REGISTRIES`` is set."""
    import os

    if join is None and (servers is not None or not os.environ.get("WAYPOST_NODE_REGISTRIES")):
        return ServerList(servers if servers is not None else DEFAULT_URL), None
    from waypost.peers.entry import EntryError
    from waypost.peers.manager import from_environment
    from waypost.settings import host_port

    resolver = host_port(dns_resolver, "dns_resolver") if dns_resolver else None
    try:
        discovery = from_environment(
            join or (), trust_keys, dns_resolver=resolver, token=token or ""
        )
    except (EntryError, ValueError) as exc:
        raise InvalidInput(f"join: {exc}", field="join") from None
    listed = ServerList(servers if servers is not None else [], discovered=True)
    if discovery is not None:
        discovery.on_change = listed.replace
    return listed, discovery


# --- ACLs --------------------------------------------------------------------------------


def acl_policy_of(
    name: str, rules: Sequence[AclRule | Mapping[str, Any]], description: str
) -> AclPolicy:
    """A policy to send, validated here, early."""
    try:
        return msgspec.convert(
            {
                "name": name,
                "description": description,
                "rules": [msgspec.structs.asdict(r) if isinstance(r, AclRule) else dict(r)
                          for r in rules],
            },
            AclPolicy,
        )  # fmt: skip
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"policy: {exc}", field="rules") from None


def acl_token_body(
    policies: Sequence[str], description: str, expires_in: str | None, identity: str
) -> bytes:
    try:
        req = msgspec.convert(
            {"policies": list(policies), "description": description,
             "expires_in": expires_in, "identity": identity},
            AclTokenRequest,
        )  # fmt: skip
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"token: {exc}", field="policies") from None
    return _encode(req)


def acl_path(kind: str, key: str = "") -> str:
    """``/api/v1/acl/policies[/NAME]`` or ``/api/v1/acl/tokens[/ACCESSOR]``."""
    base = f"/api/v1/acl/{kind}"
    return f"{base}/{quote(key, safe='')}" if key else base
