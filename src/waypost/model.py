"""The data model shared by every part of Waypost: one definition of each shape.

msgspec Structs are the only definition of an instance, check, query, node and event.
The API decodes into them, stores persist them, the catalog indexes them and the SDK
returns them. Field constraints declared here (``Meta``) are enforced on decode and
appear in ``/openapi.json``; the rules a schema cannot say (addresses, durations,
versions) live in ``validate_instance``.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from typing import Annotated, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct, field

from waypost.durations import parse_duration
from waypost.errors import InvalidInput
from waypost.versions import SEMVER_PATTERN, parse_version

# RFC 1123 host name label: letters, digits and hyphens, not starting or ending with a
# hyphen, at most 63 octets (RFC 1035 section 2.3.4).
LABEL_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
LABEL_RE = re.compile(LABEL_PATTERN)
# Meta keys are written in query strings as meta.KEY=VALUE, so they stay URL-plain.
META_KEY_PATTERN = r"^[A-Za-z0-9_.\-/]+$"
MAX_TAGS = 64
MAX_TAG_LEN = 255
MAX_META = 64
MAX_META_KEY_LEN = 128
MAX_META_VALUE_LEN = 512
MAX_HOSTNAME_LEN = 253  # RFC 1035 section 2.3.4, without the trailing dot
MAX_OUTPUT_LEN = 4096  # check output is for people; Consul truncates at 4 KiB too
DEFAULT_WEIGHT = 100
DEFAULT_DEREGISTER_AFTER = "60s"

Label = Annotated[
    str,
    Meta(
        pattern=LABEL_PATTERN,
        max_length=63,
        description="A DNS-safe label (RFC 1123): letters, digits, hyphens; at most 63.",
    ),
]
# An instance id in a body may be left empty: the path of PUT /instances/{id} names it.
OptionalLabel = Annotated[
    str,
    Meta(
        pattern=r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)?$",
        max_length=63,
        description="A DNS-safe label (RFC 1123); may be empty where the URL path names it.",
    ),
]
Tag = Annotated[str, Meta(min_length=1, max_length=MAX_TAG_LEN)]
MetaKey = Annotated[str, Meta(pattern=META_KEY_PATTERN, max_length=MAX_META_KEY_LEN)]
MetaValue = Annotated[str, Meta(max_length=MAX_META_VALUE_LEN)]
Port = Annotated[int, Meta(ge=1, le=65535)]
Weight = Annotated[int, Meta(ge=1, le=1000)]
SemVer = Annotated[str, Meta(pattern=SEMVER_PATTERN, description="A semantic version.")]
Duration = Annotated[str, Meta(max_length=32, description="A duration such as 500ms, 10s, 1m30s.")]
Host = Annotated[
    str,
    Meta(min_length=1, max_length=MAX_HOSTNAME_LEN, description="IPv4/IPv6 literal or host name"),
]


class Status(enum.Enum):
    """Health of an instance, worst last: as Consul's check states."""

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


def parse_status(text: str, *, field: str = "status") -> Status:
    """Read a status or one of its aliases (healthy, degraded, unhealthy)."""
    try:
        return STATUS_ALIASES[text.strip().lower()]
    except KeyError:
        words = ", ".join(STATUS_ALIASES)
        raise InvalidInput(
            f"{field}: unknown status {text!r} (one of {words})", field=field
        ) from None


class Kind(enum.Enum):
    """What an entry stands for: a plain service, an actor network, or one actor."""

    SERVICE = "service"
    NETWORK = "network"
    ACTOR = "actor"


class NodeStatus(enum.Enum):
    """Liveness of a node as its agent's lease and gossip see it."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    FAILED = "failed"


CheckType = Literal["http", "https", "tcp", "command", "ttl", "grpc"]


class Check(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """A health check definition attached to an instance (run by the node agent)."""

    name: Annotated[str, Meta(min_length=1, max_length=128)]
    type: CheckType
    target: Annotated[str, Meta(max_length=2048)] = ""
    interval: Duration = "30s"
    timeout: Duration = "5s"
    healthy_threshold: Annotated[int, Meta(ge=1, le=100)] = 2
    unhealthy_threshold: Annotated[int, Meta(ge=1, le=100)] = 3


class Instance(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """One registered endpoint of a service (or an actor network, or an actor)."""

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
    meta: Annotated[dict[MetaKey, MetaValue], Meta(max_length=MAX_META)] = field(
        default_factory=dict
    )
    weight: Weight = DEFAULT_WEIGHT
    domain: Host | None = None
    kind: Kind = Kind.SERVICE
    checks: Annotated[tuple[Check, ...], Meta(max_length=32)] = ()
    ttl: Duration | None = None
    deregister_after: Duration = DEFAULT_DEREGISTER_AFTER
    status: Status = Status.PASSING
    maintenance: bool = False
    maintenance_reason: Annotated[str, Meta(max_length=512)] = ""
    output: Annotated[str, Meta(max_length=MAX_OUTPUT_LEN)] = ""
    registered_at: float = 0.0
    updated_at: float = 0.0
    last_check: float | None = None

    @property
    def effective_status(self) -> Status:
        """The status queries see: maintenance counts as critical, as Consul's does."""
        return Status.CRITICAL if self.maintenance else self.status


class Event(Struct, frozen=True, kw_only=True, gc=False):
    """One change in the registry at one revision: ``put`` or ``delete`` of an instance."""

    revision: int
    type: Literal["put", "delete"]
    instance: Instance


class Node(Struct, frozen=True, kw_only=True):
    """A machine (or process) that hosts instances."""

    id: str
    address: str = ""
    meta: dict[str, str] = field(default_factory=dict)
    status: NodeStatus = NodeStatus.ALIVE
    last_seen: float = 0.0
    instances: int = 0


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


# --- request and answer bodies of the HTTP API -------------------------------------------


class StatusUpdate(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of ``PUT /api/v1/instances/{id}/status``."""

    status: str
    output: Annotated[str, Meta(max_length=MAX_OUTPUT_LEN)] = ""


class MaintenanceUpdate(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of ``PUT /api/v1/instances/{id}/maintenance``."""

    enable: bool
    reason: Annotated[str, Meta(max_length=512)] = ""


class Batch(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /api/v1/batch``: registrations and deregistrations, all or nothing."""

    register: Annotated[list[Instance], Meta(max_length=1000)] = field(default_factory=list)
    deregister: Annotated[list[Label], Meta(max_length=1000)] = field(default_factory=list)


class WriteResult(Struct, frozen=True, kw_only=True):
    """Answer to a write: the instance id and the revision that holds the change."""

    id: str
    index: int


class BatchResult(Struct, frozen=True, kw_only=True):
    """Answer to a batch: the revision that holds the whole batch, and what it did."""

    index: int
    registered: list[str]
    deregistered: list[str]


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
    blocking_waiters: int
    event_streams: int
    config: dict[str, str] = field(default_factory=dict)


class ErrorBody(Struct, frozen=True, kw_only=True):
    """Every error answer of the API."""

    error: str
    message: str
    field: str | None = None


# --- validation past what the schema says ------------------------------------------------


def is_hostname(text: str) -> bool:
    """Whether ``text`` is an RFC 1123 host name (dot-separated labels, optional final dot)."""
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > MAX_HOSTNAME_LEN:
        return False
    labels = name.split(".")
    # An all-numeric last label reads as a mistyped IP address, not a name (RFC 3696 s2).
    if labels[-1].isdigit():
        return False
    return all(LABEL_RE.match(label) for label in labels)


# Dotted-quad IPv4 without leading zeros: the common case, checked without ipaddress
# (whose parser was a quarter of the registration path's CPU time).
_IPV4_RE = re.compile(
    r"^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$"
)


def is_address(text: str) -> bool:
    """Whether ``text`` is an IPv4 or IPv6 literal or a host name."""
    if _IPV4_RE.match(text):
        return True
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return is_hostname(text)
    return True


def validate_instance(inst: Instance) -> Instance:
    """Check the rules the schema cannot express; return the instance or raise InvalidInput."""
    if not LABEL_RE.match(inst.id):
        raise InvalidInput(
            f"id: {inst.id!r} is not a DNS-safe label (letters, digits, hyphens; at most 63)"
            if inst.id
            else "id: required (a DNS-safe label)",
            field="id",
        )
    if not is_address(inst.address):
        raise InvalidInput(
            f"address: {inst.address!r} is neither an IP address nor a host name",
            field="address",
        )
    if inst.domain is not None and not is_hostname(inst.domain):
        raise InvalidInput(f"domain: {inst.domain!r} is not a DNS name", field="domain")
    if inst.version is not None:
        parse_version(inst.version)
    if inst.ttl is not None and parse_duration(inst.ttl, field="ttl") <= 0:
        raise InvalidInput("ttl: must be longer than zero", field="ttl")
    parse_duration(inst.deregister_after, field="deregister_after")
    for i, check in enumerate(inst.checks):
        parse_duration(check.interval, field=f"checks[{i}].interval")
        parse_duration(check.timeout, field=f"checks[{i}].timeout")
    if len({c.name for c in inst.checks}) != len(inst.checks):
        raise InvalidInput("checks: two checks share a name", field="checks")
    return inst


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
            return InvalidInput(f"body: {text}", field="body")
        return InvalidInput(f"body: malformed JSON ({text})", field="body")
    fld = _field_of(m.group(1))
    problem = text[: m.start()]
    if "`key` in" in text:
        problem = f"key {problem[0].lower()}{problem[1:]}"
    leaf = re.sub(r"\[\d+\]", "", fld).rsplit(".", 1)[-1]
    if "matching regex" in problem and leaf in _FRIENDLY_PATTERN:
        problem = _FRIENDLY_PATTERN[leaf]
    elif "matching regex" in problem and "`key` in" in text:
        problem = "meta keys use letters, digits and _ . - / only"
    return InvalidInput(f"{fld}: {_plain(problem)}", field=fld)


def decode(data: bytes | str, type_: type[T]) -> T:
    """Decode JSON into ``type_``, raising InvalidInput with the failing field named."""
    try:
        return msgspec.json.decode(data, type=type_)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise translate_validation_error(exc) from None


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
