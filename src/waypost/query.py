"""Queries over instances, shared by every reader: the server's catalog and API, DNS, the
client's cache and the proxy all filter with ``matches`` and read query strings with
``parse_query``, so they can never disagree. Pure: no I/O, no HTTP objects."""

from __future__ import annotations

import re
from collections.abc import Iterable

from waypost.durations import parse_duration
from waypost.errors import InvalidInput
from waypost.model import (
    MAX_META_KEY_LEN,
    META_KEY_PATTERN,
    Instance,
    Kind,
    Query,
    Status,
    parse_status,
)
from waypost.versions import matches as version_matches
from waypost.versions import parse_constraint

# As Consul: a blocking query waits 5 minutes unless told, and never more than 10.
DEFAULT_WAIT_S = 300.0
MAX_WAIT_S = 600.0

_FILTERS = ("service", "version", "tag", "any_tag", "status", "node", "kind")
# The ``status`` parameter: a comma list of status words (empty means any status).
_WORDS = "passing|warning|critical|unknown|healthy|degraded|unhealthy"
STATUS_LIST_PATTERN = rf"\A(?:(?:{_WORDS})(?:,(?:{_WORDS}))*)?\Z"
# ``any_tag``: a comma list; empty items are ignored.
INDEX_PATTERN = r"\A[0-9]{1,18}\Z"
_CONTROL = ("index", "wait")
_META_KEY_RE = re.compile(META_KEY_PATTERN.replace("+", f"{{1,{MAX_META_KEY_LEN}}}"))


def parse_index(value: str, field: str = "index") -> int:
    """A revision as a query parameter: a whole number, at most 18 digits."""
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise InvalidInput(f"{field}: {value!r} is not a whole number", field=field)
    return int(value)


def parse_query(
    items: Iterable[tuple[str, str]],
    *,
    service: str | None = None,
    max_wait_s: float = MAX_WAIT_S,
) -> tuple[Query, int | None, float]:
    """Turn ``(name, value)`` pairs into ``(query, index, wait_s)``; unknown names are 400.

    ``tag`` and ``any_tag`` repeat; ``status`` repeats or takes a comma list; filters on
    meta are written ``meta.KEY=VALUE`` (or ``meta[KEY]=VALUE``, OpenAPI's deepObject).
    Everything is read exactly as written: no trimming, no case folding.
    """
    tags: list[str] = []
    any_tags: list[str] = []
    statuses: list[Status] = []
    meta: list[tuple[str, str]] = []
    single: dict[str, str] = {}
    index: int | None = None
    wait_s = DEFAULT_WAIT_S if max_wait_s >= DEFAULT_WAIT_S else max_wait_s
    for name, value in items:
        if name == "tag":
            tags.append(value)
        elif name == "any_tag":
            any_tags.extend(v for v in value.split(",") if v)
        elif name == "status":
            if value:
                statuses.extend(parse_status(v) for v in value.split(","))
        elif name.startswith("meta.") or (name.startswith("meta[") and name.endswith("]")):
            # A key no instance could have (meta keys use letters, digits and _ . - /),
            # a nested one (meta[a][b]) or one given twice is no filter at all.
            key = name[5:] if name[4] == "." else name[5:-1]
            if _META_KEY_RE.match(key) is None:
                raise InvalidInput(
                    f"{name}: meta keys use letters, digits and _ . - / only "
                    "(write meta filters as meta.KEY=VALUE)",
                    field="meta",
                )
            if any(k == key for k, _ in meta):
                raise InvalidInput(f"{name}: given twice", field="meta")
            meta.append((key, value))
        elif name == "index":
            index = parse_index(value)
        elif name == "wait":
            wait_s = min(parse_duration(value, field="wait"), max_wait_s)
        elif name in _FILTERS:
            if name in single and single[name] != value:
                raise InvalidInput(f"{name}: given twice with different values", field=name)
            single[name] = value
        else:
            known = ", ".join([*_FILTERS, "meta.KEY", *_CONTROL])
            raise InvalidInput(f"{name}: unknown query parameter (known: {known})", field=name)
    if service is not None:
        if "service" in single and single["service"] != service:
            raise InvalidInput("service: differs from the service in the path", field="service")
        single["service"] = service
    kind = None
    if "kind" in single:
        try:
            kind = Kind(single["kind"])
        except ValueError:
            words = ", ".join(k.value for k in Kind)
            raise InvalidInput(
                f"kind: unknown kind {single['kind']!r} (one of {words})", field="kind"
            ) from None
    version = single.get("version")
    if version is not None:
        parse_constraint(version)
    query = Query(
        service=single.get("service"),
        version=version,
        tags=tuple(sorted(set(tags))),
        any_tags=tuple(sorted(set(any_tags))),
        status=tuple(sorted(set(statuses), key=lambda s: s.value)),
        node=single.get("node"),
        meta=tuple(sorted(meta)),
        kind=kind,
    )
    return query, index, wait_s


def matches(q: Query, inst: Instance) -> bool:
    """Whether ``inst`` meets every criterion of ``q`` (the one definition of a match)."""
    if q.id is not None and inst.id != q.id:
        return False
    if q.service is not None and inst.service != q.service:
        return False
    if q.kind is not None and inst.kind is not q.kind:
        return False
    if q.node is not None and inst.node != q.node:
        return False
    if q.status and inst.effective_status not in q.status:
        return False
    if q.tags and not all(t in inst.tags for t in q.tags):
        return False
    if q.any_tags and not any(t in inst.tags for t in q.any_tags):
        return False
    for key, value in q.meta:
        if inst.meta.get(key) != value:
            return False
    return not (q.version is not None and not version_matches(inst.version, q.version))
