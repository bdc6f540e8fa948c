"""``/openapi.json``: an OpenAPI 3.1 document whose schemas come from the msgspec model."""

from __future__ import annotations

from typing import Any

import msgspec

from waypost.model import (
    Batch,
    BatchResult,
    ErrorBody,
    Event,
    Instance,
    MaintenanceUpdate,
    Node,
    ServerStatus,
    ServiceSummary,
    StatusUpdate,
    WriteResult,
)

_REF = "#/components/schemas/{name}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_ERRORS = {
    str(code): {"description": text, "content": _json_content(_ref("ErrorBody"))}
    for code, text in [
        (400, "Invalid input; `field` names the offending field"),
        (401, "A write without the server's bearer token"),
        (404, "Unknown instance"),
        (409, "The instance changed meanwhile"),
        (413, "Body over 1 MiB"),
        (503, "The store is failing"),
    ]
}

_FILTER_PARAMS: list[dict[str, Any]] = [
    {
        "name": "version",
        "in": "query",
        "schema": {"type": "string"},
        "description": "Version constraint such as `>=1.2,<2` or `^1.2`",
    },
    {
        "name": "tag",
        "in": "query",
        "schema": {"type": "array", "items": {"type": "string"}},
        "style": "form",
        "explode": True,
        "description": "Every one of these tags",
    },
    {
        "name": "any_tag",
        "in": "query",
        "schema": {"type": "array", "items": {"type": "string"}},
        "style": "form",
        "explode": True,
        "description": "At least one of these tags",
    },
    {
        "name": "status",
        "in": "query",
        "schema": {"type": "string"},
        "description": "passing|warning|critical|unknown (or healthy|degraded|unhealthy); "
        "comma list for several",
    },
    {"name": "node", "in": "query", "schema": {"type": "string"}},
    {
        "name": "kind",
        "in": "query",
        "schema": {"type": "string", "enum": ["service", "network", "actor"]},
    },
    {
        "name": "meta",
        "in": "query",
        "style": "deepObject",
        "schema": {"type": "object", "additionalProperties": {"type": "string"}},
        "description": "Written meta.KEY=VALUE; every pair must match",
    },
]
_BLOCKING_PARAMS: list[dict[str, Any]] = [
    {
        "name": "index",
        "in": "query",
        "schema": {"type": "integer", "minimum": 0},
        "description": "Block until the answer's index passes this one",
    },
    {
        "name": "wait",
        "in": "query",
        "schema": {"type": "string"},
        "description": "How long to block (default 5m, at most 10m)",
    },
]
_ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
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
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, **_ERRORS}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": _json_content(_ref(body))}
    if params:
        op["parameters"] = params
    return op


def openapi_spec(version: str) -> dict[str, Any]:
    """The whole document; built once at start-up."""
    _, components = msgspec.json.schema_components(
        [
            Instance,
            WriteResult,
            BatchResult,
            Batch,
            StatusUpdate,
            MaintenanceUpdate,
            ServiceSummary,
            Node,
            ServerStatus,
            ErrorBody,
            Event,
        ],
        ref_template=_REF,
    )
    instances = {"type": "array", "items": _ref("Instance")}
    write = {"200": _ok(_ref("WriteResult"))}
    paths: dict[str, Any] = {
        "/api/v1/instances/{id}": {
            "parameters": [_ID_PARAM],
            "put": _op("Register or replace an instance", write, body="Instance"),
            "get": _op("One instance", {"200": _ok(_ref("Instance"))}),
            "delete": _op("Deregister an instance", write),
        },
        "/api/v1/instances/{id}/heartbeat": {
            "parameters": [_ID_PARAM],
            "put": _op("Renew a TTL instance", write),
        },
        "/api/v1/instances/{id}/status": {
            "parameters": [_ID_PARAM],
            "put": _op("Set status and output", write, body="StatusUpdate"),
        },
        "/api/v1/instances/{id}/maintenance": {
            "parameters": [_ID_PARAM],
            "put": _op("Enter or leave maintenance", write, body="MaintenanceUpdate"),
        },
        "/api/v1/batch": {
            "post": _op(
                "Register and deregister, all or nothing",
                {"200": _ok(_ref("BatchResult"))},
                body="Batch",
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
            ),
        },
        "/api/v1/services": {
            "get": _op(
                "Services with counts by status",
                {"200": _ok({"type": "array", "items": _ref("ServiceSummary")}, blocking=True)},
                params=_BLOCKING_PARAMS,
            ),
        },
        "/api/v1/services/{name}": {
            "get": _op(
                "Instances of one service",
                {"200": _ok(instances, blocking=True)},
                params=[
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                    *_FILTER_PARAMS,
                    *_BLOCKING_PARAMS,
                ],
            ),
        },
        "/api/v1/nodes": {
            "get": _op(
                "Nodes hosting instances",
                {"200": _ok({"type": "array", "items": _ref("Node")}, blocking=True)},
                params=_BLOCKING_PARAMS,
            ),
        },
        "/api/v1/events": {
            "get": _op(
                "Server-Sent Events: one per change (id = revision, event = put|delete)",
                {
                    "200": {
                        "description": "An event stream; data is the instance",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "410": {
                        "description": "index older than the kept log; re-list",
                        "content": _json_content(_ref("ErrorBody")),
                    },
                },
                params=[
                    {"name": "index", "in": "query", "schema": {"type": "integer"}},
                    {"name": "service", "in": "query", "schema": {"type": "string"}},
                    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                ],
            ),
        },
        "/health": {
            "get": {
                "summary": "200 while serving, 503 when the store fails",
                "responses": {"200": {"description": "serving"}, "503": {"description": "failing"}},
            },
        },
        "/status": {"get": _op("Server status", {"200": _ok(_ref("ServerStatus"))})},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Waypost",
            "version": version,
            "description": "Service discovery and registration.",
        },
        "paths": paths,
        "components": {"schemas": components},
    }
