"""Reading a query string into a Query, an index and a wait: pure, no HTTP objects."""

from __future__ import annotations

from collections.abc import Iterable

from waypost.durations import parse_duration
from waypost.errors import InvalidInput
from waypost.model import Kind, Query, Status, parse_status
from waypost.versions import parse_constraint

# As Consul: a blocking query waits 5 minutes unless told, and never more than 10.
DEFAULT_WAIT_S = 300.0
MAX_WAIT_S = 600.0

_FILTERS = ("service", "version", "tag", "any_tag", "status", "node", "kind")
_CONTROL = ("index", "wait")


def parse_query(
    items: Iterable[tuple[str, str]], *, service: str | None = None
) -> tuple[Query, int | None, float]:
    """Turn ``(name, value)`` pairs into ``(query, index, wait_s)``; unknown names are 400.

    ``tag`` and ``any_tag`` repeat; ``status`` repeats or takes a comma list; filters on
    meta are written ``meta.KEY=VALUE``.
    """
    tags: list[str] = []
    any_tags: list[str] = []
    statuses: list[Status] = []
    meta: list[tuple[str, str]] = []
    single: dict[str, str] = {}
    index: int | None = None
    wait_s = DEFAULT_WAIT_S
    for name, value in items:
        if name == "tag":
            tags.append(value)
        elif name == "any_tag":
            any_tags.extend(v for v in value.split(",") if v)
        elif name == "status":
            statuses.extend(parse_status(v) for v in value.split(",") if v.strip())
        elif name.startswith("meta."):
            key = name[5:]
            if not key:
                raise InvalidInput("meta: write meta filters as meta.KEY=VALUE", field="meta")
            meta.append((key, value))
        elif name == "index":
            try:
                index = int(value)
            except ValueError:
                raise InvalidInput(
                    f"index: {value!r} is not a whole number", field="index"
                ) from None
            if index < 0:
                raise InvalidInput("index: must not be negative", field="index")
        elif name == "wait":
            wait_s = min(parse_duration(value, field="wait"), MAX_WAIT_S)
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
