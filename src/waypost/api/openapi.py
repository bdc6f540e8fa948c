"""``/openapi.json``: an OpenAPI 3.1 document whose schemas come from the msgspec model.

It says exactly what the server accepts: every pattern, bound and enum the server checks
is in it (a schemathesis run with every check on holds the two together). The model's
patterns are Python's (anchored with ``\\A`` and ``\\Z``); here they are spelled for
ECMA-262, which JSON Schema uses, where ``$`` is the end of the string.
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec

from waypost.durations import DURATION_PATTERN
from waypost.model import (
    ACCESSOR_PATTERN,
    ACL_NAME_PATTERN,
    CHECK_KINDS,
    LABEL_PATTERN,
    MAX_LEASE_ID,
    AclPolicy,
    AclTokenRequest,
    AclTokenView,
    Batch,
    BatchOutcome,
    BatchResult,
    CheckRow,
    DnsStatus,
    ErrorBody,
    HealthReport,
    Instance,
    ItemResult,
    Lease,
    LeaseGrant,
    MaintenanceUpdate,
    Node,
    Route,
    ServerStatus,
    ServiceConfig,
    ServiceSummary,
    StatusUpdate,
    TargetGroup,
    WriteResult,
)
from waypost.peers.entry import NodeEntry
from waypost.query import STATUS_LIST_PATTERN
from waypost.versions import CONSTRAINT_PATTERN

_REF = "#/components/schemas/{name}"
MAX_INDEX = 10**18 - 1


def ecma_pattern(pattern: str) -> str:
    """A Python pattern anchored with ``\\A``/``\\Z`` spelled for ECMA-262 (``^``/``$``)."""
    return pattern.replace(r"\A", "^").replace(r"\Z", "$")


def _ecma(node: Any) -> Any:
    """Every ``pattern`` in a schema, spelled for ECMA-262."""
    if isinstance(node, dict):
        return {
            k: ecma_pattern(v) if k == "pattern" and isinstance(v, str) else _ecma(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_ecma(v) for v in node]
    return node


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Invalid input; `field` names the offending field",
        401: "A write without the server's token, or a token that names no ACL token "
        "(unknown, malformed, revoked, expired)",
        403: "What the token's ACL rules refuse (the message names the rule), or what this "
        "server is configured not to do (command checks through the API)",
        404: "Unknown entry (or a lease that has ended)",
        409: "The entry changed meanwhile, or the request contradicts itself or its path",
        410: "An index older than the kept event log (re-list), or ahead of the registry",
        413: "Body over 1 MiB",
        429: "The token is over its write rate or its open watches (see Retry-After)",
        503: "The store is failing",
    }
    return {
        str(code): {"description": text[code], "content": _json_content(_ref("ErrorBody"))}
        for code in codes
    }


_READ_ERRORS = (400, 401, 503)
_WRITE_ERRORS = (400, 401, 403, 404, 409, 413, 429, 503)
_ACL_READ_ERRORS = (400, 401, 403, 404, 503)

_LABEL = {"type": "string", "pattern": ecma_pattern(LABEL_PATTERN), "maxLength": 63}
_DURATION = {"type": "string", "pattern": ecma_pattern(DURATION_PATTERN), "maxLength": 32}
_FILTER_PARAMS: list[dict[str, Any]] = [
    {
        "name": "version",
        "in": "query",
        "schema": {"type": "string", "pattern": ecma_pattern(CONSTRAINT_PATTERN)},
        "description": "Version constraint such as `>=1.2,<2` or `^1.2`",
    },
    # Repeatable (tag=a&tag=b); declared as strings, since a query string carries text
    # only and schema-typed arrays invite fuzzers to send values that no wire can tell
    # apart from text (false, 5).
    {
        "name": "tag",
        "in": "query",
        "schema": {"type": "string"},
        "description": "Has this tag; repeat the parameter for every one of several",
    },
    {
        "name": "any_tag",
        "in": "query",
        "schema": {"type": "string"},
        "description": "Has at least one of these tags: a comma list, or repeat the parameter",
    },
    {
        "name": "status",
        "in": "query",
        "schema": {"type": "string", "pattern": ecma_pattern(STATUS_LIST_PATTERN)},
        "description": "passing|warning|critical|unknown (or healthy|degraded|unhealthy); "
        "comma list for several",
    },
    {"name": "node", "in": "query", "schema": {"type": "string"}},
    {
        "name": "kind",
        "in": "query",
        "schema": {"type": "string", "enum": ["service", "network", "actor"]},
    },
]
# Meta filters are parameters named by a pattern (meta.KEY=VALUE, or meta[KEY]=VALUE),
# which OpenAPI cannot declare; the operations say so in their description.
_META_FILTERS = (
    " Filter on meta with `meta.KEY=VALUE` (or `meta[KEY]=VALUE`), repeated for several keys;"
    " a key uses letters, digits and `_ . - /` (else 400), and each key at most once."
)
_BLOCKING_PARAMS: list[dict[str, Any]] = [
    {
        "name": "index",
        "in": "query",
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_INDEX},
        "description": "Block until the answer's index passes this one",
    },
    {
        "name": "wait",
        "in": "query",
        "schema": _DURATION,
        "description": "How long to block (default 5m, at most 10m or the server's max_wait)",
    },
]


_CHECK_PARAMS: list[dict[str, Any]] = [
    {"name": "service", "in": "query", "schema": _LABEL, "description": "Of this service"},
    {"name": "node", "in": "query", "schema": _LABEL, "description": "On this node"},
]


_ACL_NAME = {"type": "string", "pattern": ecma_pattern(ACL_NAME_PATTERN)}
_ACCESSOR = {"type": "string", "pattern": ecma_pattern(ACCESSOR_PATTERN)}
_DELETED = {"type": "object", "properties": {"index": {"type": "integer"}}}


def _path(name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema or _LABEL}


_INDEX_HEADER = {
    "X-Waypost-Index": {
        "schema": {"type": "integer"},
        "description": "Revision at which this answer last changed",
    },
    "X-Waypost-Revision": {
        "schema": {"type": "integer"},
        "description": "Registry revision this answer is current at",
    },
}


def _ok(schema: dict[str, Any], description: str = "OK", blocking: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": _json_content(schema)}
    if blocking:
        out["headers"] = _INDEX_HEADER
    return out


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    body: str | None = None,
    params: list[dict[str, Any]] | None = None,
    errors: tuple[int, ...] = _WRITE_ERRORS,
    description: str | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, **_errors(*errors)}}
    if description is not None:
        op["description"] = description
    if body is not None:
        op["requestBody"] = {"required": True, "content": _json_content(_ref(body))}
    if params:
        op["parameters"] = params
    return op


def _components() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [
            Instance,
            Node,
            ServiceConfig,
            Route,
            WriteResult,
            BatchResult,
            BatchOutcome,
            ItemResult,
            Batch,
            StatusUpdate,
            MaintenanceUpdate,
            ServiceSummary,
            TargetGroup,
            ServerStatus,
            DnsStatus,
            ErrorBody,
            LeaseGrant,
            Lease,
            HealthReport,
            CheckRow,
            NodeEntry,
            AclPolicy,
            AclTokenRequest,
            AclTokenView,
        ],
        ref_template=_REF,
    )
    components = _ecma(components)
    # Exactly one kind names what a check runs.
    components["Check"]["oneOf"] = [{"required": [kind]} for kind in CHECK_KINDS]
    # A batch has no path to name an instance: there every registration names its id.
    named = copy.deepcopy(components["Instance"])
    named["properties"]["id"] = dict(_LABEL, minLength=1)
    named["required"] = sorted({*named.get("required", []), "id"})
    named["title"] = "NamedInstance"
    components["NamedInstance"] = named
    components["Batch"]["properties"]["register"]["items"] = _ref("NamedInstance")
    # Two bodies: all or nothing (no heartbeats), or calls answered one by one.
    calls = copy.deepcopy(components["Batch"])
    calls["properties"]["atomic"] = {"const": False}
    calls["required"] = ["atomic"]
    calls["title"] = "BatchCalls"
    components["BatchCalls"] = calls
    atomic = components["Batch"]
    del atomic["properties"]["heartbeat"]
    atomic["properties"]["atomic"] = {"const": True, "default": True}
    components["BatchBody"] = {"oneOf": [_ref("Batch"), _ref("BatchCalls")]}
    return dict(components)


def openapi_spec(version: str) -> dict[str, Any]:
    """The whole document; built once at start-up."""
    instances = {"type": "array", "items": _ref("Instance")}
    write = {"200": _ok(_ref("WriteResult"))}
    lease = {"200": _ok(_ref("Lease"))}
    lease_id = _path("id", {"type": "integer", "minimum": 1, "maximum": MAX_LEASE_ID})
    reads = _READ_ERRORS
    paths: dict[str, Any] = {
        "/api/v1/instances/{id}": {
            "parameters": [_path("id")],
            "put": _op("Register or replace an instance", write, body="Instance"),
            "get": _op("One instance", {"200": _ok(_ref("Instance"))}, errors=(400, 404, 503)),
            "delete": _op("Deregister an instance", write),
        },
        "/api/v1/instances/{id}/heartbeat": {
            "parameters": [_path("id")],
            "put": _op("Renew a TTL instance", write),
        },
        "/api/v1/instances/{id}/status": {
            "parameters": [_path("id")],
            "put": _op("Set status and output", write, body="StatusUpdate"),
        },
        "/api/v1/instances/{id}/maintenance": {
            "parameters": [_path("id")],
            "put": _op("Enter or leave maintenance", write, body="MaintenanceUpdate"),
        },
        "/api/v1/instances/{id}/health": {
            "parameters": [_path("id")],
            "put": _op(
                "Report the states of an instance's checks (its agent does)",
                write,
                body="HealthReport",
            ),
        },
        "/api/v1/instances/{id}/check": {
            "parameters": [_path("id")],
            "post": _op(
                "Run an instance's checks now; the instance as they leave it",
                {"200": _ok(_ref("Instance"))},
                errors=(400, 401, 404, 409, 503),
            ),
        },
        "/api/v1/check": {
            "post": _op(
                "Run now the checks this server runs, of a service and/or a node",
                {"200": _ok(instances)},
                params=_CHECK_PARAMS,
                errors=(400, 401, 409, 503),
            ),
        },
        "/api/v1/checks": {
            "get": _op(
                "Every check of the matching instances, with status, output and counts",
                {"200": _ok({"type": "array", "items": _ref("CheckRow")})},
                params=_CHECK_PARAMS,
                errors=(400, 409, 503),
            ),
        },
        "/api/v1/batch": {
            "post": _op(
                "Register and deregister, all or nothing, at one revision; or, with "
                "atomic false, many calls in one request, each answered on its own",
                {"200": _ok({"anyOf": [_ref("BatchResult"), _ref("BatchOutcome")]})},
                body="BatchBody",
            ),
        },
        "/api/v1/instances": {
            "get": _op(
                "Query instances",
                {"200": _ok(instances, blocking=True)},
                params=[
                    {"name": "service", "in": "query", "schema": {"type": "string"}},
                    *_FILTER_PARAMS,
                    *_BLOCKING_PARAMS,
                ],
                errors=reads,
                description=_META_FILTERS.strip(),
            ),
        },
        "/api/v1/services": {
            "get": _op(
                "Services with counts by status",
                {"200": _ok({"type": "array", "items": _ref("ServiceSummary")}, blocking=True)},
                params=_BLOCKING_PARAMS,
                errors=reads,
            ),
        },
        "/api/v1/services/{name}": {
            "get": _op(
                "Instances of one service",
                {"200": _ok(instances, blocking=True)},
                params=[_path("name"), *_FILTER_PARAMS, *_BLOCKING_PARAMS],
                errors=reads,
                description=_META_FILTERS.strip(),
            ),
        },
        "/api/v1/services/{name}/config": {
            "parameters": [_path("name")],
            "get": _op(
                "A service's config", {"200": _ok(_ref("ServiceConfig"))}, errors=(400, 404, 503)
            ),
            "put": _op("Set a service's config", write, body="ServiceConfig"),
            "delete": _op("Remove a service's config", write),
        },
        "/api/v1/configs": {
            "get": _op(
                "Every service's config entry, also of services with no instances",
                {"200": _ok({"type": "array", "items": _ref("ServiceConfig")}, blocking=True)},
                params=_BLOCKING_PARAMS,
                errors=reads,
            ),
        },
        "/api/v1/prometheus/targets": {
            "get": _op(
                "Prometheus http_sd_configs: the matching instances as target groups "
                "(__meta_waypost_* labels); only passing ones unless status is given",
                {"200": _ok({"type": "array", "items": _ref("TargetGroup")}, blocking=True)},
                params=[
                    {"name": "service", "in": "query", "schema": {"type": "string"}},
                    *_FILTER_PARAMS,
                    *_BLOCKING_PARAMS,
                ],
                errors=reads,
                description=_META_FILTERS.strip(),
            ),
        },
        "/api/v1/nodes": {
            "get": _op(
                "Registered nodes, and nodes named by instances",
                {"200": _ok({"type": "array", "items": _ref("Node")}, blocking=True)},
                params=_BLOCKING_PARAMS,
                errors=reads,
            ),
        },
        "/api/v1/nodes/{id}": {
            "parameters": [_path("id")],
            "put": _op("Register or replace a node", write, body="Node"),
            "get": _op("One node", {"200": _ok(_ref("Node"))}, errors=(400, 404, 503)),
            "delete": _op("Deregister a node", write),
        },
        "/api/v1/routes": {
            "get": _op(
                "Routing rules",
                {"200": _ok({"type": "array", "items": _ref("Route")}, blocking=True)},
                params=_BLOCKING_PARAMS,
                errors=reads,
            ),
        },
        "/api/v1/routes/{name}": {
            "parameters": [_path("name")],
            "put": _op("Set a routing rule", write, body="Route"),
            "get": _op("One routing rule", {"200": _ok(_ref("Route"))}, errors=(400, 404, 503)),
            "delete": _op("Remove a routing rule", write),
        },
        "/api/v1/leases": {
            "post": _op("Grant a lease", lease, body="LeaseGrant"),
            "get": _op(
                "Live leases",
                {"200": _ok({"type": "array", "items": _ref("Lease")})},
                errors=reads,
            ),
        },
        "/api/v1/leases/{id}": {
            "parameters": [lease_id],
            "get": _op("A lease: TTL, time left, entries", lease, errors=(400, 404, 503)),
            "delete": _op("Revoke a lease: what it holds is deleted", write),
        },
        "/api/v1/leases/{id}/keepalive": {
            "parameters": [lease_id],
            "put": _op("Restart a lease's clock", lease),
        },
        "/api/v1/events": {
            "get": _op(
                "Server-Sent Events: one per change (id = revision, or revision.index "
                "inside a revision of several events; event = put|delete for instances, "
                "KIND.put|KIND.delete for the other kinds)",
                {
                    "200": {
                        "description": "An event stream; data is the entry",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                },
                params=[
                    {
                        "name": "index",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_INDEX},
                    },
                    {"name": "service", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "kind",
                        "in": "query",
                        "schema": {
                            "type": "string",
                            "pattern": "^(instance|node|service_config|route)"
                            "(,(instance|node|service_config|route))*$",
                        },
                    },
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "schema": {"type": "string", "pattern": r"^[0-9]{1,18}(\.[0-9]{1,9})?$"},
                    },
                ],
                errors=(400, 410, 503),
            ),
        },
        "/health": {
            "get": {
                "summary": "200 while serving, 503 when the store fails or the catalog is "
                "not following it",
                "responses": {
                    "200": {
                        "description": "serving",
                        "content": _json_content(
                            {"type": "object", "properties": {"status": {"type": "string"}}}
                        ),
                    },
                    "503": {
                        "description": "failing, with the reason",
                        "content": _json_content(
                            {
                                "type": "object",
                                "properties": {
                                    "status": {"type": "string"},
                                    "message": {"type": "string"},
                                },
                            }
                        ),
                    },
                },
            },
        },
        "/status": {"get": _op("Server status", {"200": _ok(_ref("ServerStatus"))}, errors=())},
        "/metrics": {
            "get": _op(
                "The server's metrics in Prometheus' text format (docs/metrics.md)",
                {
                    "200": {
                        "description": "Prometheus text exposition format 0.0.4",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                errors=(),
            )
        },
        "/api/v1/acl/bootstrap": {
            "post": _op(
                "Create the first management token (once; later calls 403)",
                {"200": _ok(_ref("AclTokenView"))},
                errors=(403, 503),
            )
        },
        "/api/v1/acl/policies": {
            "post": _op("Create a policy", {"200": _ok(_ref("AclPolicy"))}, body="AclPolicy"),
            "get": _op(
                "Every policy",
                {"200": _ok({"type": "array", "items": _ref("AclPolicy")})},
                errors=_ACL_READ_ERRORS,
            ),
        },
        "/api/v1/acl/policies/{name}": {
            "parameters": [_path("name", _ACL_NAME)],
            "get": _op("One policy", {"200": _ok(_ref("AclPolicy"))}, errors=_ACL_READ_ERRORS),
            "put": _op("Change a policy", {"200": _ok(_ref("AclPolicy"))}, body="AclPolicy"),
            "delete": _op("Delete a policy", {"200": _ok(_DELETED)}),
        },
        "/api/v1/acl/tokens": {
            "post": _op(
                "Create a token: its secret is shown this once",
                {"200": _ok(_ref("AclTokenView"))},
                body="AclTokenRequest",
            ),
            "get": _op(
                "Every token (accessors, never secrets)",
                {"200": _ok({"type": "array", "items": _ref("AclTokenView")})},
                errors=_ACL_READ_ERRORS,
            ),
        },
        "/api/v1/acl/token/self": {
            "get": _op(
                "The token this request presents",
                {"200": _ok(_ref("AclTokenView"))},
                errors=_ACL_READ_ERRORS,
            )
        },
        "/api/v1/acl/tokens/{accessor}": {
            "parameters": [_path("accessor", _ACCESSOR)],
            "get": _op("One token", {"200": _ok(_ref("AclTokenView"))}, errors=_ACL_READ_ERRORS),
            "put": _op(
                "Change a token's description, policies or identity",
                {"200": _ok(_ref("AclTokenView"))},
                body="AclTokenRequest",
            ),
            "delete": _op("Revoke a token", {"200": _ok(_DELETED)}),
        },
        "/api/v1/node-registry": {
            "get": _op(
                "This server's node registry entry (what node discovery reads)",
                {"200": _ok(_ref("NodeEntry"))},
                errors=(404,),
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Waypost",
            "version": version,
            "description": "Service discovery and registration.",
        },
        "paths": paths,
        "components": {"schemas": _components()},
    }
