"""The data model shared by every part of Waypost: one definition of each shape.

msgspec Structs are the only definition of an instance, check, query, node and event.
The API decodes into them, stores persist them, the catalog indexes them and the SDK
returns them. Field constraints declared here (``Meta``) are enforced on decode and
appear in ``/openapi.json``; the rules a schema cannot say (addresses, durations,
versions) live in ``validate_instance``.
"""

from __future__ import annotations

import enum
import functools
import re
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import msgspec
import msgspec.inspect as mi
from msgspec import UNSET, Meta, Struct, UnsetType, field

from waypost.durations import DURATION_PATTERN, ZERO_DURATION_PATTERN, parse_duration
from waypost.errors import Conflict, InvalidInput
from waypost.versions import CONSTRAINT_PATTERN, SEMVER_PATTERN

# Patterns are anchored with \A and \Z: Python's "$" also matches before a trailing
# newline, which let "web\n" in as a name. Digits are [0-9]: Python's \d takes every
# Unicode digit. /openapi.json spells the same patterns with ^ and $ (ECMA-262, where $ is
# the end of the string), see ``ecma_pattern``.
# RFC 1123 host name label: letters, digits and hyphens, not starting or ending with a
# hyphen, at most 63 octets (RFC 1035 section 2.3.4).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
LABEL_PATTERN = rf"\A{_LABEL}\Z"
LABEL_RE = re.compile(LABEL_PATTERN)
# Meta keys are written in query strings as meta.KEY=VALUE, so they stay URL-plain.
META_KEY_PATTERN = r"\A[A-Za-z0-9_.\-/]+\Z"
# Tags are free text for people, but never control characters (they end up in DNS
# names, log lines and terminal tables).
TAG_PATTERN = r"\A[^\x00-\x1f\x7f]+\Z"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"(?:{_OCTET}\.){{3}}{_OCTET}"
_H16 = r"[0-9A-Fa-f]{1,4}"
# RFC 4291 section 2.2 text forms, with an embedded IPv4 tail (no zone ids).
_IPV6 = (
    rf"(?:(?:{_H16}:){{7}}{_H16}"
    rf"|(?:{_H16}:){{1,7}}:"
    rf"|(?:{_H16}:){{1,6}}:{_H16}"
    rf"|(?:{_H16}:){{1,5}}(?::{_H16}){{1,2}}"
    rf"|(?:{_H16}:){{1,4}}(?::{_H16}){{1,3}}"
    rf"|(?:{_H16}:){{1,3}}(?::{_H16}){{1,4}}"
    rf"|(?:{_H16}:){{1,2}}(?::{_H16}){{1,5}}"
    rf"|{_H16}:(?::{_H16}){{1,6}}"
    rf"|:(?:(?::{_H16}){{1,7}}|:)"
    rf"|(?:{_H16}:){{6}}{_IPV4}"
    rf"|(?:{_H16}:){{1,5}}:{_IPV4}"
    rf"|(?:{_H16}:){{1,4}}(?::{_H16}){{1,2}}:{_IPV4}"
    rf"|::(?:{_H16}:){{0,5}}{_IPV4})"
)
# A host name: dot-separated labels, an optional final dot; an all-numeric last label
# reads as a mistyped IP address, not a name (RFC 3696 section 2).
_HOSTNAME = rf"(?:{_LABEL}\.)*(?![0-9]+\.?\Z){_LABEL}\.?"
HOSTNAME_PATTERN = rf"\A{_HOSTNAME}\Z"
ADDRESS_PATTERN = rf"\A(?:{_IPV4}|{_IPV6}|{_HOSTNAME})\Z"
MAX_TAGS = 64
MAX_TAG_LEN = 255
MAX_META = 64
MAX_META_KEY_LEN = 128
MAX_META_VALUE_LEN = 512
MAX_HOSTNAME_LEN = 253  # RFC 1035 section 2.3.4, without the trailing dot
MAX_OUTPUT_LEN = 4096  # check output is for people; Consul truncates at 4 KiB too
# Lease ids stay below 2**53 so JavaScript (the dashboard, node clients) reads them exactly.
MAX_LEASE_ID = 2**53 - 1
DEFAULT_WEIGHT = 100
DEFAULT_DEREGISTER_AFTER = "60s"
# The version of the record layout this code writes; stores keep it with every record.
SCHEMA_VERSION = 1

Label = Annotated[
    str,
    Meta(
        pattern=LABEL_PATTERN,
        max_length=63,
        description="A DNS-safe label (RFC 1123): letters, digits, hyphens; at most 63.",
    ),
]
# An id in a body may be left empty: the path of PUT /instances/{id} names it.
OptionalLabel = Annotated[
    str,
    Meta(
        pattern=rf"\A(?:{_LABEL})?\Z",
        max_length=63,
        description="A DNS-safe label (RFC 1123); may be empty where the URL path names it.",
    ),
]
Tag = Annotated[str, Meta(min_length=1, max_length=MAX_TAG_LEN, pattern=TAG_PATTERN)]
MetaKey = Annotated[str, Meta(pattern=META_KEY_PATTERN, max_length=MAX_META_KEY_LEN)]
MetaValue = Annotated[str, Meta(max_length=MAX_META_VALUE_LEN)]
MetaMap = Annotated[dict[MetaKey, MetaValue], Meta(max_length=MAX_META)]
Port = Annotated[int, Meta(ge=1, le=65535)]
Weight = Annotated[int, Meta(ge=1, le=1000)]
SemVer = Annotated[str, Meta(pattern=SEMVER_PATTERN, description="A semantic version.")]
Duration = Annotated[
    str,
    Meta(
        pattern=DURATION_PATTERN,
        max_length=32,
        description="A duration such as 500ms, 10s, 1m30s (or a bare number of seconds).",
    ),
]
PositiveDuration = Annotated[
    str,
    Meta(
        pattern=DURATION_PATTERN,
        max_length=32,
        description="A duration longer than zero, such as 500ms, 10s, 1m30s.",
        extra_json_schema={"not": {"pattern": ZERO_DURATION_PATTERN}},
    ),
]
Host = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_HOSTNAME_LEN,
        pattern=ADDRESS_PATTERN,
        description="IPv4/IPv6 literal or host name",
    ),
]
DomainName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_HOSTNAME_LEN,
        pattern=HOSTNAME_PATTERN,
        description="A DNS name such as web.local",
    ),
]
LeaseId = Annotated[int, Meta(ge=1, le=MAX_LEASE_ID, description="A lease id (POST /leases)")]


class Status(enum.Enum):
    """Health of an instance, worst last: as Consul's check states."""

    # Members are singletons compared by identity: hash them so (Enum's own hash is a
    # Python call, and the catalog counts by status and kind on every change).
    __hash__ = object.__hash__

    PASSING = "passing"
    WARNING = "warning"
    CRITICAL = "critical"
    UNKNOWN = "unknown"


# The seeds' words, accepted in queries (homelab and Hivemind call them so).
STATUS_ALIASES: dict[str, Status] = {
    "healthy": Status.PASSING,
    "degraded": Status.WARNING,
    "unhealthy": Status.CRITICAL,
    **{s.value: s for s in Status},
}
StatusWord = Literal[
    "passing", "warning", "critical", "unknown", "healthy", "degraded", "unhealthy"
]


def parse_status(text: str, *, field: str = "status") -> Status:
    """Read a status or one of its aliases (healthy, degraded, unhealthy), exactly as written."""
    try:
        return STATUS_ALIASES[text]
    except KeyError:
        words = ", ".join(STATUS_ALIASES)
        raise InvalidInput(
            f"{field}: unknown status {text!r} (one of {words})", field=field
        ) from None


class Kind(enum.Enum):
    """What an instance stands for: a plain service, an actor network, or one actor."""

    # Members are singletons compared by identity: hash them so (Enum's own hash is a
    # Python call, and the catalog counts by status and kind on every change).
    __hash__ = object.__hash__

    SERVICE = "service"
    NETWORK = "network"
    ACTOR = "actor"


class NodeStatus(enum.Enum):
    """Liveness of a node as its agent's lease sees it."""

    # Members are singletons compared by identity: hash them so (Enum's own hash is a
    # Python call, and the catalog counts by status and kind on every change).
    __hash__ = object.__hash__

    ALIVE = "alive"
    SUSPECT = "suspect"
    FAILED = "failed"


HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


CheckKind = Literal["http", "https", "tcp", "command", "ttl", "grpc"]
CHECK_KINDS: tuple[CheckKind, ...] = ("http", "https", "tcp", "command", "ttl", "grpc")
# The check name the registry gives the state "this instance's node has failed" (as
# Consul's serfHealth): no check of an instance may take it.
NODE_CHECK = "node"
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
_HOST_IN_URL = rf"(?:{_IPV4}|\[{_IPV6}\]|{_HOSTNAME})"
HOST_PORT_PATTERN = rf"\A{_HOST_IN_URL}:{_PORT}\Z"
_URL_TAIL = r"(?:[/?][^\x00-\x20\x7f]*)?"
HTTP_URL_PATTERN = rf"\Ahttps?://{_HOST_IN_URL}(?::{_PORT})?{_URL_TAIL}\Z"
HTTPS_URL_PATTERN = rf"\Ahttps://{_HOST_IN_URL}(?::{_PORT})?{_URL_TAIL}\Z"
CHECK_NAME_PATTERN = r"\A[^\x00-\x1f\x7f]+\Z"

HostPort = Annotated[
    str,
    Meta(
        max_length=MAX_HOSTNAME_LEN + 8,
        pattern=HOST_PORT_PATTERN,
        description="HOST:PORT ([IPv6]:PORT for IPv6 literals)",
    ),
]
HttpUrl = Annotated[
    str,
    Meta(max_length=2048, pattern=HTTP_URL_PATTERN, description="An http:// or https:// URL"),
]
HttpsUrl = Annotated[
    str, Meta(max_length=2048, pattern=HTTPS_URL_PATTERN, description="An https:// URL")
]
CheckName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=128,
        pattern=CHECK_NAME_PATTERN,
        description="Unique within the instance; 'node' is the registry's own.",
        extra_json_schema={"not": {"const": NODE_CHECK}},
    ),
]
Argv = Annotated[
    tuple[Annotated[str, Meta(min_length=1, max_length=4096, pattern=r"\A[^\x00]+\Z")], ...],
    Meta(min_length=1, max_length=64, description="The program and its arguments (no shell)."),
]
Threshold = Annotated[int, Meta(ge=1, le=100)]


def _positive(struct: Struct, *names: str) -> None:
    """Durations that must be longer than zero (the schema says so with ``not``); a
    ValueError here is a validation error naming the struct's place in the body."""
    for name in names:
        value = getattr(struct, name)
        if isinstance(value, str) and parse_duration(value) <= 0:
            raise ValueError(f"{name}: must be longer than zero")


class FlapPolicy(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """Flap damping: ``changes`` status changes within ``window`` hold a check critical
    (reported as flapping) until it has been stable for a whole window."""

    changes: Annotated[int, Meta(ge=2, le=100)] = 5
    window: PositiveDuration = "5m"

    def __post_init__(self) -> None:
        _positive(self, "window")


class CheckTiming(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """How often a check runs and how its results are judged: what a check and a
    service's check template share."""

    interval: PositiveDuration = "30s"
    timeout: PositiveDuration = "5s"
    healthy_threshold: Threshold = 2
    unhealthy_threshold: Threshold = 3
    initial_status: Literal["passing", "warning", "critical"] = "critical"
    deregister_critical_after: Duration | UnsetType = UNSET
    grace: Duration = "0s"
    flap: FlapPolicy | UnsetType = UNSET

    def __post_init__(self) -> None:
        _positive(self, "interval", "timeout")


class Check(CheckTiming, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """A health check: exactly one of ``http``, ``https``, ``tcp``, ``command``, ``ttl``,
    ``grpc`` says what to run; the rest says how often and how to judge it.

    The same shape everywhere: registration bodies, CLI definition files and agent
    definition files."""

    http: HttpUrl | UnsetType = UNSET
    https: HttpsUrl | UnsetType = UNSET
    tcp: HostPort | UnsetType = UNSET
    command: Argv | UnsetType = UNSET
    ttl: PositiveDuration | UnsetType = UNSET
    grpc: HostPort | UnsetType = UNSET
    # Left out, the name is the kind ("http"), numbered when the kind repeats ("http-2").
    name: CheckName | UnsetType = UNSET
    # http/https
    method: HttpMethod = "GET"
    headers: Annotated[
        dict[
            Annotated[str, Meta(pattern=r"\A[A-Za-z0-9!#$%&'*+.^_`|~-]+\Z", max_length=128)],
            MetaValue,
        ],
        Meta(max_length=32),
    ] = field(default_factory=dict)
    body: Annotated[str, Meta(max_length=65536)] = ""
    tls_verify: bool = True
    ca_file: Annotated[str, Meta(min_length=1, max_length=4096)] | UnsetType = UNSET
    # grpc: the service asked about (empty: the server as a whole)
    grpc_service: Annotated[str, Meta(max_length=256)] = ""

    def __post_init__(self) -> None:
        _positive(self, "interval", "timeout", "ttl")

    @property
    def kind(self) -> CheckKind:
        """Which of the kinds this check is (the one field given)."""
        for kind in CHECK_KINDS:
            if getattr(self, kind) is not UNSET:
                return kind
        raise InvalidInput("check: give one of http, https, tcp, command, ttl, grpc")

    @property
    def target(self) -> str:
        """What the check runs against, as text (the URL, HOST:PORT, argv or TTL)."""
        value = getattr(self, self.kind)
        return " ".join(value) if isinstance(value, tuple) else str(value)


class CheckState(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """The last known result of one check of an instance, as stored with the instance.

    Written when its status changes (with the output that changed it); counts and
    ``last_run`` are as of that write (a server shows its own checks live)."""

    name: Annotated[str, Meta(min_length=1, max_length=128)]
    kind: Annotated[str, Meta(max_length=16)] = ""
    status: Status = Status.CRITICAL
    output: Annotated[str, Meta(max_length=MAX_OUTPUT_LEN)] = ""
    flapping: bool = False
    successes: Annotated[int, Meta(ge=0)] = 0
    failures: Annotated[int, Meta(ge=0)] = 0
    last_run: float | None = None
    changed_at: float = 0.0


# --- entries: what the store holds, each kind under one revision space -------------------
#
# Every entry kind names itself (``KIND``) and its key within the kind (``key``); stores
# keep records under (kind, key), as etcd keys ``/waypost/<kind>/<key>``. The kind lives in
# the key, not in the JSON, so an instance reads exactly as it always has.


class Instance(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """One registered endpoint of a service (or an actor network, or an actor)."""

    KIND: ClassVar[str] = "instance"

    # Left empty in a body, it is taken from the path (PUT /api/v1/instances/{id}).
    id: OptionalLabel = ""
    service: Label
    address: Host
    port: Port
    version: SemVer | None = None
    node: Label | None = None
    # Tuples, not lists: a tuple of strings drops out of the garbage collector's view,
    # and full collections over 100k registered instances stalled writes by 100 ms.
    tags: Annotated[tuple[Tag, ...], Meta(max_length=MAX_TAGS)] = ()
    meta: MetaMap = field(default_factory=dict)
    weight: Weight = DEFAULT_WEIGHT
    domain: DomainName | None = None
    kind: Kind = Kind.SERVICE
    checks: Annotated[tuple[Check, ...], Meta(max_length=32)] = ()
    # The last known result of each check (and of the node, once it fails); the status
    # is the worst of them. Server-owned, except from the agent that owns the instance.
    health: Annotated[tuple[CheckState, ...], Meta(max_length=33)] = ()
    # Registered by the agent of ``node``, which runs its checks (the server does not).
    agent: bool = False
    ttl: PositiveDuration | None = None
    deregister_after: Duration = DEFAULT_DEREGISTER_AFTER
    # A lease (POST /api/v1/leases) the instance lives on: when it lapses, the instance
    # is deleted. Agents put a node and all its instances on one lease.
    lease: LeaseId | None = None
    status: Status = Status.PASSING
    maintenance: bool = False
    maintenance_reason: Annotated[str, Meta(max_length=512)] = ""
    output: Annotated[str, Meta(max_length=MAX_OUTPUT_LEN)] = ""
    registered_at: float = 0.0
    updated_at: float = 0.0
    last_check: float | None = None

    @property
    def key(self) -> str:
        """The instance's key within its kind: its id."""
        return self.id

    @property
    def effective_status(self) -> Status:
        """The status queries see: maintenance counts as critical, as Consul's does."""
        return Status.CRITICAL if self.maintenance else self.status


class Node(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """A machine (or process) that hosts instances, registered by its agent.

    ``GET /api/v1/nodes`` also lists nodes that instances name but nobody registered,
    with ``registered`` false; ``instances`` is counted when listed."""

    KIND: ClassVar[str] = "node"

    id: OptionalLabel = ""
    address: Host | None = None
    meta: MetaMap = field(default_factory=dict)
    lease: LeaseId | None = None
    status: NodeStatus = NodeStatus.ALIVE
    registered: bool = True
    instances: Annotated[int, Meta(ge=0)] = 0
    registered_at: float = 0.0
    updated_at: float = 0.0
    last_seen: float = 0.0

    @property
    def key(self) -> str:
        """The node's key within its kind: its id."""
        return self.id


class ServiceCheck(CheckTiming, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """A check template for a whole service: ``tcp`` (connect to the instance's port),
    ``http``/``https`` (GET ``path`` on it) or ``grpc``; timings as a check's."""

    type: Literal["tcp", "http", "https", "grpc"] = "tcp"
    path: Annotated[str, Meta(max_length=1024, pattern=r"\A/[^\x00-\x20\x7f]*\Z")] = "/health"
    tls_verify: bool = True
    grpc_service: Annotated[str, Meta(max_length=256)] = ""

    def for_instance(self, address: str, port: int) -> Check:
        """The check this template gives an instance at ``address:port``."""
        host = f"[{address}]" if ":" in address else address
        where = f"{host}:{port}"
        common: dict[str, Any] = {
            name: getattr(self, name) for name in CheckTiming.__struct_fields__
        }
        common["name"] = f"service:{self.type}"
        if self.type == "tcp":
            return Check(tcp=where, **common)
        if self.type == "grpc":
            return Check(grpc=where, grpc_service=self.grpc_service, **common)
        url = f"{self.type}://{where}{self.path}"
        if self.type == "https":
            return Check(https=url, tls_verify=self.tls_verify, **common)
        return Check(http=url, **common)


VersionConstraint = Annotated[
    str, Meta(pattern=CONSTRAINT_PATTERN, max_length=128, description="e.g. ^1, 1.4.x, >=2,<3")
]
BalancerStrategy = Literal[
    "round_robin",
    "weighted_round_robin",
    "least_connections",
    "random",
    "weighted_random",
    "peak_ewma",
    "consistent_hash",
]
RetryOn = Literal["5xx", "gateway-error", "reset", "connect-failure", "retriable-status-codes"]
Percent = Annotated[float, Meta(ge=0, le=100)]
Limit = Annotated[int, Meta(ge=0, le=1_000_000)]
# What consistent hashing hashes on: the client's address, or a request header, cookie
# or query parameter by name.
HASH_ON_PATTERN = r"\A(?:client_ip|(?:header|cookie|query):[A-Za-z0-9_.-]{1,128})\Z"


class LoadBalancerPolicy(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """How clients and proxies pick an endpoint of the service (``docs/traffic.md``)."""

    strategy: BalancerStrategy = "round_robin"
    # What consistent_hash hashes on: client_ip (the default), header:NAME, cookie:NAME
    # or query:NAME. Other strategies ignore it.
    hash_on: Annotated[str, Meta(pattern=HASH_ON_PATTERN)] = "client_ip"
    # Endpoints in the client's own zone (their meta.zone) first.
    prefer_zone: bool = False
    # Below this share of healthy endpoints, balance over all of them (Envoy's panic).
    panic_threshold: Percent = 50.0


class RetryConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """When a failed request is tried again, on another endpoint (``docs/traffic.md``)."""

    max_retries: Annotated[int, Meta(ge=0, le=10)] = 2
    retry_on: Annotated[list[RetryOn], Meta(max_length=5)] = field(
        default_factory=lambda: ["5xx", "connect-failure"]
    )
    retriable_status_codes: Annotated[
        list[Annotated[int, Meta(ge=100, le=599)]], Meta(max_length=32)
    ] = field(default_factory=list)
    per_try_timeout: PositiveDuration | None = None
    backoff_base: PositiveDuration = "25ms"
    backoff_max: PositiveDuration = "250ms"
    retry_non_idempotent: bool = False
    # Retries in flight at most this share of requests in flight, but at least min.
    budget_percent: Percent = 20.0
    budget_min_concurrency: Annotated[int, Meta(ge=0, le=10_000)] = 3

    def __post_init__(self) -> None:
        _positive(self, "per_try_timeout", "backoff_base", "backoff_max")


class CircuitBreakerConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """Outlier detection per endpoint and limits per service (Hivemind's
    ``CircuitBreakerPolicy``, Envoy's outlier detection; ``docs/traffic.md``)."""

    max_connections: Limit = 1024
    max_pending_requests: Limit = 1024
    max_requests: Limit = 1024
    max_retries: Limit = 3
    consecutive_errors: Annotated[int, Meta(ge=1, le=1000)] = 5
    interval: PositiveDuration = "10s"
    base_ejection_time: PositiveDuration = "30s"
    max_ejection_time: PositiveDuration = "300s"
    max_ejection_percent: Percent = 50.0
    half_open_successes: Annotated[int, Meta(ge=1, le=1000)] = 1

    def __post_init__(self) -> None:
        _positive(self, "interval", "base_ejection_time", "max_ejection_time")


class SplitSide(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """One side of a traffic split: the instances whose version meets ``version``."""

    version: VersionConstraint
    weight: Annotated[int, Meta(ge=0, le=10_000)]


class ServiceConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """Policy for every instance of one service (``/api/v1/services/{name}/config``).

    The check template for instances without checks, the DNS TTL, and the traffic
    policies clients and proxies apply; ``meta`` holds free-form settings."""

    KIND: ClassVar[str] = "service_config"

    service: OptionalLabel = ""
    # The check every instance of the service with no checks of its own gets, against
    # the instance's own address and port.
    check: ServiceCheck | None = None
    # The TTL of this service's DNS answers (default: the server's --dns-ttl).
    dns_ttl: Duration | UnsetType = UNSET
    # Traffic policies every client and proxy applies (None: the SDK's defaults).
    load_balancer: LoadBalancerPolicy | None = None
    retry: RetryConfig | None = None
    circuit_breaker: CircuitBreakerConfig | None = None
    # The whole request's deadline, retries included.
    timeout: PositiveDuration | None = None
    # Shares by version (a canary); empty, or weights that add up to zero: no split.
    split: Annotated[list[SplitSide], Meta(max_length=16)] = field(default_factory=list)
    meta: MetaMap = field(default_factory=dict)
    updated_at: float = 0.0

    def __post_init__(self) -> None:
        _positive(self, "timeout")

    @property
    def key(self) -> str:
        """The config's key within its kind: the service name."""
        return self.service


HeaderName = Annotated[str, Meta(pattern=r"\A[A-Za-z0-9-]+\Z", max_length=128)]
# A regular expression (Python's ``re``), matched against the whole value.
Regex = Annotated[str, Meta(max_length=256, extra_json_schema={"format": "regex"})]
HostPattern = Annotated[
    str,
    Meta(
        pattern=r"\A(?:\*\.)?[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*\Z",
        max_length=253,
    ),
]


class RouteMatch(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """What a request must look like for a route to take it; every given part must hold.

    ``hosts``: the Host the request is addressed to (``api.example.com``, or
    ``*.example.com`` for any name under it; a client's requests to service S are
    addressed to host S); ``path_prefix``; ``methods``; ``headers``: exact values;
    ``headers_regex``: values matching the whole expression. Names are case-insensitive."""

    hosts: Annotated[tuple[HostPattern, ...], Meta(max_length=32)] = ()
    path_prefix: Annotated[str, Meta(max_length=1024, pattern=r"\A/[^\x00-\x20\x7f]*\Z")] | None = (
        None
    )
    methods: Annotated[tuple[HttpMethod, ...], Meta(max_length=7)] = ()
    headers: Annotated[dict[HeaderName, MetaValue], Meta(max_length=32)] = field(
        default_factory=dict
    )
    headers_regex: Annotated[dict[HeaderName, Regex], Meta(max_length=32)] = field(
        default_factory=dict
    )

    def __post_init__(self) -> None:
        for name, expr in self.headers_regex.items():
            try:
                re.compile(expr)
            except (re.error, RecursionError, OverflowError) as exc:
                raise ValueError(
                    f"headers_regex.{name}: not a regular expression ({exc})"
                ) from None


class Route(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """A routing rule: requests that ``match`` go to ``service`` (``/api/v1/routes``).

    Routes are tried by ``priority`` (lowest first), then name; the first that matches
    wins. ``subset``: only the service's endpoints whose meta holds every one of these
    pairs. ``strip_prefix``: the matched ``path_prefix`` is taken off the path sent on."""

    KIND: ClassVar[str] = "route"

    name: OptionalLabel = ""
    service: Label
    match: RouteMatch = field(default_factory=RouteMatch)
    subset: MetaMap = field(default_factory=dict)
    strip_prefix: bool = False
    priority: Annotated[int, Meta(ge=0, le=10_000)] = 100
    updated_at: float = 0.0

    @property
    def key(self) -> str:
        """The route's key within its kind: its name."""
        return self.name


# Consul's KV: keys up to 512 characters with no control characters (and not starting
# with "/", which Consul strips); values up to 512 KiB, kept as base64 as Consul answers.
MAX_KV_KEY_LEN = 512
MAX_KV_VALUE_BYTES = 512 * 1024
KV_KEY_PATTERN = r"\A[^/\x00-\x1f\x7f][^\x00-\x1f\x7f]*\Z"


class KVPair(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """A key and its value (``/v1/kv/`` of the Consul API). ``create_revision`` is the
    revision the key was created at once it has been written again (0 until then: its
    revision then is its creation)."""

    KIND: ClassVar[str] = "kv"

    key: Annotated[str, Meta(min_length=1, max_length=MAX_KV_KEY_LEN, pattern=KV_KEY_PATTERN)]
    value: Annotated[str, Meta(max_length=(MAX_KV_VALUE_BYTES * 4) // 3 + 4)] = ""
    flags: Annotated[int, Meta(ge=0)] = 0  # a uint64, checked by the API
    create_revision: Annotated[int, Meta(ge=0)] = 0
    updated_at: float = 0.0


# --- ACLs: policies of rules, tokens holding policies (``acl/`` evaluates them) ----------

AclResource = Literal[
    "service",
    "service_prefix",
    "node",
    "node_prefix",
    "key",
    "key_prefix",
    "network",
    "network_prefix",
    "domain",
    "domain_suffix",
    "agent",
    "operator",
    "acl",
]
AclAccess = Literal["read", "write", "deny"]
ACL_NAME_PATTERN = r"\A[A-Za-z0-9_-]{1,128}\Z"
AclName = Annotated[str, Meta(pattern=ACL_NAME_PATTERN, description="A policy name.")]
# Accessors are UUIDs; "anonymous" is the token of requests that present none.
ACCESSOR_PATTERN = r"\A(?:anonymous|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\Z"
Accessor = Annotated[str, Meta(pattern=ACCESSOR_PATTERN)]
MAX_ACL_RULES = 256
MAX_TOKEN_POLICIES = 64
ANONYMOUS = "anonymous"
MANAGEMENT_POLICY = "global-management"


class AclRule(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One rule of a policy: ``access`` to the ``resource`` called ``name`` (a prefix for
    the ``*_prefix`` resources, a DNS zone for ``domain_suffix``: the name and every name
    below it; unused for ``agent``, ``operator`` and ``acl``)."""

    resource: AclResource
    name: Annotated[str, Meta(max_length=512, pattern=r"\A[^\x00-\x1f\x7f]*\Z")] = ""
    access: AclAccess


class AclPolicy(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A named set of rules (``/api/v1/acl/policies``)."""

    KIND: ClassVar[str] = "acl_policy"

    name: AclName
    description: Annotated[str, Meta(max_length=1024)] = ""
    rules: Annotated[list[AclRule], Meta(max_length=MAX_ACL_RULES)] = field(default_factory=list)
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def key(self) -> str:
        """The policy's key within its kind: its name."""
        return self.name


class AclToken(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A token as stored: the secret only as its SHA-256 (``secret_hash``); ``identity``
    is a client certificate's CN or SAN URI that stands for this token (mutual TLS)."""

    KIND: ClassVar[str] = "acl_token"

    accessor: Accessor
    secret_hash: Annotated[str, Meta(pattern=r"\A(?:[0-9a-f]{64})?\Z")] = ""
    description: Annotated[str, Meta(max_length=1024)] = ""
    policies: Annotated[list[AclName], Meta(max_length=MAX_TOKEN_POLICIES)] = field(
        default_factory=list
    )
    identity: Annotated[str, Meta(max_length=512)] = ""
    expires_at: float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def key(self) -> str:
        """The token's key within its kind: its accessor."""
        return self.accessor


class AclTokenRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /api/v1/acl/tokens`` (and ``PUT .../{accessor}``, which keeps
    the secret and the expiry)."""

    description: Annotated[str, Meta(max_length=1024)] = ""
    policies: Annotated[list[AclName], Meta(max_length=MAX_TOKEN_POLICIES)] = field(
        default_factory=list
    )
    expires_in: Duration | None = None
    identity: Annotated[str, Meta(max_length=512)] = ""


class AclTokenView(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A token as the API shows it: never its secret, but at creation (and bootstrap)."""

    accessor: str
    description: str = ""
    policies: list[str] = field(default_factory=list)
    identity: str = ""
    expires_at: float | None = None
    created_at: float = 0.0
    secret: str | None = None


Entry = Instance | Node | ServiceConfig | Route | KVPair | AclPolicy | AclToken
"""Whatever a store holds: one of the entry kinds."""
ENTRY_TYPES: dict[str, type[Entry]] = {
    t.KIND: t for t in (Instance, Node, ServiceConfig, Route, KVPair, AclPolicy, AclToken)
}
EntryKind = Literal["instance", "node", "service_config", "route", "kv", "acl_policy", "acl_token"]


class Event(Struct, frozen=True, kw_only=True, gc=False):
    """One change at one revision: ``put`` or ``delete`` of an entry.

    Several events may share a revision (a batch, a lease expiry, an etcd transaction);
    ``index`` is the event's place within its revision, from 0."""

    revision: int
    type: Literal["put", "delete"]
    entry: Entry
    index: int = 0

    @property
    def kind(self) -> str:
        """The kind of entry changed: ``instance``, ``node``, ``service_config``, ``route``."""
        return self.entry.KIND

    @property
    def instance(self) -> Instance:
        """The instance an instance event carries (TypeError for another kind)."""
        if not isinstance(self.entry, Instance):
            raise TypeError(f"a {self.kind} event carries no instance")
        return self.entry


class Query(Struct, frozen=True, kw_only=True):
    """A filter over instances; every given criterion must hold."""

    service: str | None = None
    version: str | None = None
    tags: tuple[str, ...] = ()
    any_tags: tuple[str, ...] = ()
    status: tuple[Status, ...] = ()
    node: str | None = None
    meta: tuple[tuple[str, str], ...] = ()
    kind: Kind | None = None
    id: str | None = None


class ServiceSummary(Struct, frozen=True, kw_only=True):
    """A service as ``GET /api/v1/services`` lists it."""

    name: str
    instances: int
    passing: int
    warning: int
    critical: int
    unknown: int
    maintenance: int
    tags: list[str]
    versions: list[str]
    kinds: list[Kind]


class TargetGroup(Struct, frozen=True, kw_only=True):
    """One group of ``GET /api/v1/prometheus/targets``, as Prometheus' ``http_sd_configs``
    reads it: ``HOST:PORT`` targets and the ``__meta_waypost_*`` labels they share."""

    targets: list[str]
    labels: dict[str, str]


# --- request and answer bodies of the HTTP API -------------------------------------------


class HealthReport(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of ``PUT /api/v1/instances/{id}/health``: the agent that owns an instance
    reports the states of its checks (only when one changed)."""

    health: Annotated[tuple[CheckState, ...], Meta(max_length=33)]


class CheckRow(Struct, frozen=True, kw_only=True):
    """One check of one instance, as ``GET /api/v1/checks`` lists it. ``runs_on`` says
    who runs it: the server (live counts) or the node's agent (as of its last report)."""

    instance: str
    service: str
    node: str | None
    name: str
    kind: str
    target: str
    interval: str
    status: Status
    output: str
    flapping: bool
    successes: int
    failures: int
    last_run: float | None
    changed_at: float
    runs_on: Literal["server", "agent", "registry"]
    # For a server-run check: which of the servers sharing the store runs it.
    server: str | None = None


class StatusUpdate(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of ``PUT /api/v1/instances/{id}/status``."""

    status: StatusWord
    output: Annotated[str, Meta(max_length=MAX_OUTPUT_LEN)] = ""


class MaintenanceUpdate(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of ``PUT /api/v1/instances/{id}/maintenance``."""

    enable: bool
    reason: Annotated[str, Meta(max_length=512)] = ""


class Batch(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /api/v1/batch``: registrations and deregistrations, all or nothing.

    Every registration names its ``id`` (there is no path to take it from). With
    ``atomic: false`` each item (heartbeats too) succeeds or fails on its own, exactly as
    its own call would, and the answer is a ``BatchOutcome`` (clients use it to send
    many concurrent calls as one request)."""

    register: Annotated[list[Instance], Meta(max_length=1000)] = field(default_factory=list)
    deregister: Annotated[list[Label], Meta(max_length=1000)] = field(default_factory=list)
    heartbeat: Annotated[list[Label], Meta(max_length=1000)] = field(default_factory=list)
    atomic: bool = True


class WriteResult(Struct, frozen=True, kw_only=True):
    """Answer to a write: the entry's id and the revision that holds the change."""

    id: str
    index: int


class BatchResult(Struct, frozen=True, kw_only=True):
    """Answer to a batch: the revision that holds the whole batch, and what it did."""

    index: int
    registered: list[str]
    deregistered: list[str]


class ItemResult(Struct, frozen=True, kw_only=True):
    """One item of a batch with ``atomic: false``: what its own call would have answered,
    its HTTP ``status`` and either the ``index`` of its change or the error's
    ``error``/``message``/``field``."""

    id: str
    status: int
    index: int | None = None
    error: str | None = None
    message: str | None = None
    field: str | None = None


class BatchOutcome(Struct, frozen=True, kw_only=True):
    """Answer to a batch with ``atomic: false``: one result per item, in the order given,
    and the revision the registry had reached once every item was done."""

    index: int
    register: list[ItemResult]
    deregister: list[ItemResult]
    heartbeat: list[ItemResult]


class LeaseGrant(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /api/v1/leases``: how long the lease lives without a keep-alive."""

    ttl: PositiveDuration


class EntryRef(Struct, frozen=True, kw_only=True):
    """An entry named by kind and key (the entries a lease holds)."""

    kind: str
    id: str


class Lease(Struct, frozen=True, kw_only=True):
    """A lease as the API shows it: ``ttl`` granted, ``remaining`` before it lapses."""

    id: int
    ttl: str
    remaining_s: float = 0.0
    entries: list[EntryRef] = field(default_factory=list)


class DnsStatus(Struct, frozen=True, kw_only=True):
    """The DNS interface in ``GET /status``: its listeners and this process's counters
    (workers started with ``--dns-workers`` count their own)."""

    listeners: list[str]
    workers: int = 1
    queries: int = 0
    cache_hits: int = 0
    answers_built: int = 0
    cached_answers: int = 0
    formerr: int = 0
    refused: int = 0
    forwarded: int = 0
    forward_failures: int = 0
    # Queries to forward dropped while MAX_FORWARDS were already in flight.
    forward_dropped: int = 0
    truncated: int = 0
    tcp_connections: int = 0
    tcp_rejected: int = 0
    # Idle TCP connections closed to make room for a new one (all places were taken).
    tcp_idle_closed: int = 0
    # Queries to forward from clients outside --dns-forward-clients (answered REFUSED).
    forward_refused: int = 0
    errors: int = 0
    dropped: int = 0  # UDP queries dropped while too many waited for the event loop
    # Answering from the last catalog the server had, because the store is unreachable.
    stale: bool = False


class LoopStatus(Struct, frozen=True, kw_only=True):
    """How late the server's event loop ran a 10 ms timer: the largest stall since
    start, how many were over 20 ms, and the latest over 5 ms as ``[unix time, ms]``."""

    max_stall_ms: float = 0.0
    stalls_over_20ms: int = 0
    recent_stalls: list[tuple[float, float]] = []


class LeaseGuardStatus(Struct, frozen=True, kw_only=True):
    """The mass-expiry guard: whether it holds lapsing leases now (more than half of all
    lapsed within one TTL: this registry lost the network or was paused), how many, since
    when (unix time), and how often it started holding."""

    holding: bool = False
    held: int = 0
    since: float | None = None
    times_triggered: int = 0


class ConnectionStatus(Struct, frozen=True, kw_only=True):
    """The HTTP listener in ``GET /status``: connections open, from how many client
    addresses, the limits (0: none), and the connections refused or closed by them."""

    open: int = 0
    clients: int = 0
    max_per_client: int = 0
    max_total: int = 0
    refused_per_client: int = 0
    refused_total: int = 0
    # Closed for not sending a whole first request head in time (slowloris).
    slow_heads_closed: int = 0


class ServerStatus(Struct, frozen=True, kw_only=True):
    """Answer of ``GET /status``."""

    version: str
    node: str
    uptime_s: float
    revision: int
    instances: int
    services: int
    nodes: int
    store: str
    # The etcd member this server talks to now (cluster mode; None for local stores).
    store_member: str | None = None
    # The servers sharing the store (this one too); they split server-run checks.
    servers: list[str] = []
    # This server's own name among them (node.host.pid): with --http-workers, which of
    # the processes sharing the port answered.
    server: str = ""
    blocking_waiters: int
    event_streams: int
    following: bool = True
    # Why the server is unhealthy (the store unreachable, the event log not followed), as
    # /health says it; None when all is well.
    problem: str | None = None
    skipped_records: int = 0
    dns: DnsStatus | None = None
    # The HTTP listener's connections and the limits that guard it.
    connections: ConnectionStatus | None = None
    event_loop: LoopStatus = LoopStatus()
    # Stores that expire their own leases (SQLite, memory); None on etcd (etcd's own).
    lease_guard: LeaseGuardStatus | None = None
    config: dict[str, str] = field(default_factory=dict)


class ErrorBody(Struct, frozen=True, kw_only=True):
    """Every error answer of the API."""

    error: str
    message: str
    field: str | None = None


# --- validation past what the schema says ------------------------------------------------

_HOSTNAME_RE = re.compile(HOSTNAME_PATTERN)
_ADDRESS_RE = re.compile(ADDRESS_PATTERN)


def is_label(text: str) -> bool:
    """Whether ``text`` is one DNS-safe label (RFC 1123), exactly."""
    return LABEL_RE.match(text) is not None


def is_hostname(text: str) -> bool:
    """Whether ``text`` is an RFC 1123 host name (dot-separated labels, optional final dot)."""
    return len(text) <= MAX_HOSTNAME_LEN + 1 and _HOSTNAME_RE.match(text) is not None


def is_address(text: str) -> bool:
    """Whether ``text`` is an IPv4 or IPv6 literal or a host name (the schema's pattern)."""
    return len(text) <= MAX_HOSTNAME_LEN and _ADDRESS_RE.match(text) is not None


def validate_instance(inst: Instance) -> Instance:
    """Check the rules the schema cannot express; return the instance (checks named,
    a ``ttl`` check folded into ``ttl``) or raise InvalidInput (Conflict for two checks
    of one name).

    The schema says everything else (patterns, bounds); what remains is that an id is
    given, which the schema leaves to the path of ``PUT /instances/{id}``."""
    if not inst.id:
        raise InvalidInput("id: required (a DNS-safe label)", field="id")
    if inst.ttl is not None and parse_duration(inst.ttl, field="ttl") <= 0:
        raise InvalidInput("ttl: must be longer than zero", field="ttl")
    if not inst.checks:
        return inst
    checks = name_checks(inst.checks)
    ttl = inst.ttl
    for i, check in enumerate(checks):
        for name in ("interval", "timeout"):
            if parse_duration(getattr(check, name)) <= 0:
                raise InvalidInput(
                    f"checks[{i}].{name}: must be longer than zero", field=f"checks[{i}].{name}"
                )
        if isinstance(check.ttl, str):
            if parse_duration(check.ttl) <= 0:
                raise InvalidInput(
                    f"checks[{i}].ttl: must be longer than zero", field=f"checks[{i}].ttl"
                )
            if ttl is not None and ttl != inst.ttl:
                raise Conflict(f"checks[{i}]: an instance has one ttl check", field="checks")
            if inst.ttl is not None and inst.ttl != check.ttl:
                raise Conflict(
                    f"checks[{i}].ttl: {check.ttl} differs from the instance's ttl {inst.ttl}",
                    field="checks",
                )
            ttl = check.ttl
    changes: dict[str, Any] = {"checks": checks}
    if ttl != inst.ttl:
        changes["ttl"] = ttl
        # A ttl check's deregister_critical_after is the instance's deregister_after.
        for check in checks:
            if isinstance(check.ttl, str) and isinstance(check.deregister_critical_after, str):
                changes["deregister_after"] = check.deregister_critical_after
    return msgspec.structs.replace(inst, **changes)


def name_checks(checks: tuple[Check, ...]) -> tuple[Check, ...]:
    """Give unnamed checks their kind as name (numbered when a kind repeats); Conflict
    when two checks share a name."""
    seen: set[str] = set()
    out = []
    counts: dict[str, int] = {}
    for i, check in enumerate(checks):
        try:
            kind = check.kind
        except InvalidInput:
            raise InvalidInput(
                f"checks[{i}]: give one of http, https, tcp, command, ttl, grpc",
                field=f"checks[{i}]",
            ) from None
        given = [k for k in CHECK_KINDS if getattr(check, k) is not UNSET]
        if len(given) > 1:
            raise InvalidInput(
                f"checks[{i}]: give only one of {', '.join(given)}", field=f"checks[{i}]"
            )
        if isinstance(check.name, str):
            name = check.name
        else:
            counts[kind] = counts.get(kind, 0) + 1
            name = kind if counts[kind] == 1 else f"{kind}-{counts[kind]}"
            while name in seen or any(c.name == name for c in checks):
                counts[kind] += 1
                name = f"{kind}-{counts[kind]}"
            check = msgspec.structs.replace(check, name=name)
        if name in seen:
            raise Conflict(f"checks[{i}].name: {name!r} names two checks", field="checks")
        if name == NODE_CHECK:
            raise InvalidInput(
                f"checks[{i}].name: {NODE_CHECK!r} is the registry's own", field="checks"
            )
        seen.add(name)
        out.append(check)
    return tuple(out)


# --- decoding with field-named errors ----------------------------------------------------

T = TypeVar("T")

_PATH_RE = re.compile(r" - at (?:`key` in )?`\$(.*)`$")
_UNKNOWN_RE = re.compile(r"^Object contains unknown field `([^`]*)`(?: - at `\$(.*)`)?$")
_MISSING_RE = re.compile(r"^Object missing required field `([^`]*)`(?: - at `\$(.*)`)?$")
_FRIENDLY_PATTERN = {
    "id": "must be a DNS-safe label (letters, digits, hyphens; at most 63 characters)",
    "service": "must be a DNS-safe label (letters, digits, hyphens; at most 63 characters)",
    "node": "must be a DNS-safe label (letters, digits, hyphens; at most 63 characters)",
    "version": "must be a semantic version (MAJOR.MINOR.PATCH, e.g. 1.4.2)",
    "name": "must be a DNS-safe label (letters, digits, hyphens; at most 63 characters)",
    "address": "must be an IPv4 or IPv6 address or a host name",
    "hosts": "must be a host name such as api.example.com, or *.example.com for any under it",
    "domain": "must be a DNS name such as web.local",
    "ttl": "must be a duration such as 500ms, 10s or 1m30s",
    "deregister_after": "must be a duration such as 500ms, 10s or 1m30s",
    "interval": "must be a duration such as 500ms, 10s or 1m30s",
    "timeout": "must be a duration such as 500ms, 10s or 1m30s",
    "tags": "must not be empty or hold control characters",
    "path_prefix": "must start with / and hold no spaces or control characters",
}


def _field_of(path: str) -> str:
    """``.register[0].port`` → ``register[0].port``; ``.meta[...]`` keeps its shape."""
    return path.replace("[...]", "").lstrip(".") or "body"


_PLAIN_WORDS = [
    (re.compile(r"^Expected `(int|float)` (>=|<=|>|<) (\S+)$"), r"must be a number \2 \3"),
    (re.compile(r"^Expected `str` of length <= (\d+)$"), r"must be at most \1 characters"),
    (re.compile(r"^Expected `str` of length >= (\d+)$"), r"must be at least \1 characters"),
    (re.compile(r"^Expected `(array|object)` of length <= (\d+)$"), r"must have at most \2 items"),
    (re.compile(r"^Expected `(\w+)`, got `(\w+)`$"), r"must be of type \1, not \2"),
]


def _plain(problem: str) -> str:
    """msgspec's wording made plain: ``Expected `int` >= 1`` becomes ``must be a number >= 1``."""
    for pattern, repl in _PLAIN_WORDS:
        if pattern.match(problem):
            return pattern.sub(repl, problem)
    return problem


_SUBFIELD_RE = re.compile(r"\A([a-z_]+(?:\.[A-Za-z0-9_-]+)*): (.+)\Z", re.S)


def translate_validation_error(exc: msgspec.ValidationError | msgspec.DecodeError) -> InvalidInput:
    """Turn msgspec's message into ours: the field first, then what is wrong with it."""
    text = str(exc)
    for pattern, problem in ((_UNKNOWN_RE, "unknown field"), (_MISSING_RE, "required")):
        found = pattern.match(text)
        if found is not None:
            parts = (_field_of(found.group(2) or ""), found.group(1))
            fld = ".".join(p for p in parts if p != "body")
            return InvalidInput(f"{fld}: {problem}", field=fld)
    m = _PATH_RE.search(text)
    if m is None:
        if isinstance(exc, msgspec.ValidationError):
            # A struct's own check names its field first ("split: ..."), as ours do.
            sub = _SUBFIELD_RE.match(text)
            if sub is not None:
                return InvalidInput(text, field=sub.group(1))
            return InvalidInput(f"body: {text}", field="body")
        return InvalidInput(f"body: malformed JSON ({text})", field="body")
    fld = _field_of(m.group(1))
    problem = text[: m.start()]
    sub = _SUBFIELD_RE.match(problem)
    if sub is not None:  # a nested struct's own check: "retry.backoff_base: ..."
        fld = sub.group(1) if fld == "body" else f"{fld}.{sub.group(1)}"
        return InvalidInput(f"{fld}: {sub.group(2)}", field=fld)
    if "`key` in" in text:
        problem = f"key {problem[0].lower()}{problem[1:]}"
    leaf = re.sub(r"\[\d+\]", "", fld).rsplit(".", 1)[-1]
    if "matching regex" in problem and fld.startswith("split[") and leaf == "version":
        problem = "must be a version constraint such as ^1, 1.4.x or >=2,<3"
    elif "matching regex" in problem and leaf in _FRIENDLY_PATTERN:
        problem = _FRIENDLY_PATTERN[leaf]
    elif "matching regex" in problem and "`key` in" in text:
        problem = "meta keys use letters, digits and _ . - / only"
    return InvalidInput(f"{fld}: {_plain(problem)}", field=fld)


def _normalised(value: object, info: mi.Type, *, drop_unknown: bool) -> object:
    """``value`` as the type reads it: integral floats (``139.0``, ``1e2``, which JSON
    Schema counts as integers) made ints where an int is expected, and, with
    ``drop_unknown``, every object key the type does not know dropped; recursively."""
    while isinstance(info, mi.Metadata):
        info = info.type
    if isinstance(info, mi.IntType) and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(info, mi.StructType) and isinstance(value, dict):
        fields = {f.encode_name: f.type for f in info.fields}
        return {
            k: _normalised(v, fields[k], drop_unknown=drop_unknown) if k in fields else v
            for k, v in value.items()
            if k in fields or not drop_unknown
        }
    if isinstance(info, mi.ListType | mi.VarTupleType | mi.SetType) and isinstance(value, list):
        return [_normalised(v, info.item_type, drop_unknown=drop_unknown) for v in value]
    if isinstance(info, mi.DictType) and isinstance(value, dict):
        return {
            k: _normalised(v, info.value_type, drop_unknown=drop_unknown) for k, v in value.items()
        }
    if isinstance(info, mi.UnionType):
        for option in info.types:
            while isinstance(option, mi.Metadata):
                option = option.type
            if isinstance(option, mi.IntType) and isinstance(value, float):
                return _normalised(value, option, drop_unknown=drop_unknown)
            if isinstance(option, mi.StructType | mi.DictType) and isinstance(value, dict):
                return _normalised(value, option, drop_unknown=drop_unknown)
    return value


@functools.lru_cache(maxsize=64)
def _type_info(type_: Any) -> mi.Type:
    return mi.type_info(type_)


def decode_lenient(data: bytes | str, type_: type[T]) -> T:
    """Decode what another Waypost wrote (a stored record, a server's answer): fields this
    version does not know are ignored, so a newer writer never breaks an older reader.

    The strict decoder runs first (the common case costs nothing more); only a record
    with unknown fields takes the slower path. Raises InvalidInput when the data is not
    of the type even then."""
    try:
        return msgspec.json.decode(data, type=type_)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        if "unknown field" not in str(exc):
            raise translate_validation_error(exc) from None
    try:
        raw = msgspec.json.decode(data)
        known = _normalised(raw, _type_info(type_), drop_unknown=True)  # type: ignore[arg-type]
        return msgspec.convert(known, type_)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise translate_validation_error(exc) from None


def decode(data: bytes | str, type_: type[T]) -> T:
    """Decode JSON into ``type_`` exactly (unknown fields refused), raising InvalidInput
    with the failing field named. An integral float where an int is expected (``80.0``)
    is an integer, as JSON Schema reads it."""
    try:
        return msgspec.json.decode(data, type=type_)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        if "got `float`" not in str(exc):
            raise translate_validation_error(exc) from None
        first = exc
    try:
        raw = msgspec.json.decode(data)
        fixed = _normalised(raw, _type_info(type_), drop_unknown=False)  # type: ignore[arg-type]
        return msgspec.convert(fixed, type_)
    except (msgspec.ValidationError, msgspec.DecodeError):
        raise translate_validation_error(first) from None


def decode_instance(data: bytes | str) -> Instance:
    """Decode and fully validate one instance from JSON."""
    return validate_instance(decode(data, Instance))


def convert_instance(obj: object) -> Instance:
    """Validate one instance from already-parsed data (YAML, dicts)."""
    try:
        inst = msgspec.convert(obj, Instance)
    except msgspec.ValidationError as exc:
        raise translate_validation_error(exc) from None
    return validate_instance(inst)
