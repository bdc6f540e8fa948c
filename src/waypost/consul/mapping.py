"""Consul's shapes over Waypost's model, both ways; pure (no I/O, no server).

A Consul *service* is a Waypost instance, a Consul *check* a check (its state one of the
instance's check states), a Consul *node* a node. What Consul has and the model does not
rides in the instance's meta under ``consul.`` keys, hidden from Consul's own answers:

- ``consul.id``: the service ID when it is not a DNS label (Consul allows ``foo:1``); the
  instance's id is then a label made from it (``local_id``), the same on every server;
- ``consul.name``: likewise for a service name;
- ``consul.weights``: ``PASSING,WARNING`` as registered (the instance's weight is
  ``PASSING * 100``, so Consul's default of 1 balances as Waypost's default of 100);
- ``consul.no-address``: the registration gave no address (answered ``""`` as Consul
  does; the instance holds its node's address);
- ``consul.check.<digest of the CheckID>``: a check's Consul ``Name`` and ``Notes``
  (JSON), when not the defaults.

A check's name in Waypost is its Consul ``CheckID`` (``service:<id>``, or
``service:<id>:N`` for several, as Consul numbers them).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from waypost.durations import MAX_DURATION_S, format_duration, parse_duration
from waypost.errors import InvalidInput
from waypost.model import (
    DEFAULT_WEIGHT,
    LABEL_RE,
    CheckState,
    Instance,
    Kind,
    Node,
    NodeStatus,
    Status,
    convert_instance,
)

DATACENTER = "dc1"
META_PREFIX = "consul."
META_ID = "consul.id"
META_NAME = "consul.name"
META_WEIGHTS = "consul.weights"
META_NO_ADDRESS = "consul.no-address"
META_TAGGED = "consul.tagged-addresses"
META_TAG_OVERRIDE = "consul.enable-tag-override"
META_CHECK = "consul.check."
# Consul keeps a critical service until its DeregisterCriticalServiceAfter, if any: a TTL
# service registered through this API without one stays (a year, the longest lease).
NEVER = "8760h"
SERF_CHECK = "serfHealth"
META_NODE_MAINT = "consul.maintenance"  # on a node: Consul's node maintenance, its reason
NODE_MAINT_REASON = "node maintenance: "  # the reason given to its services
MAINT_PREFIX = "_service_maintenance:"
_NOT_LABEL = re.compile(r"[^A-Za-z0-9-]+")
WEIGHT_UNIT = DEFAULT_WEIGHT  # Consul's weight 1 is Waypost's default weight


class ConsulInputError(InvalidInput):
    """A request Consul would refuse with 400 and a plain-text message."""


# --- identifiers -------------------------------------------------------------------------


def local_label(text: str) -> str:
    """The DNS label Waypost keeps for a Consul ID or name: itself when it is one, else a
    readable part and a digest of the whole (the same on every server)."""
    if LABEL_RE.match(text):
        return text
    base = _NOT_LABEL.sub("-", text).strip("-")[:40].strip("-") or "consul"
    digest = hashlib.blake2b(text.encode(), digest_size=5).hexdigest()
    return f"{base}-{digest}"


def consul_id(inst: Instance) -> str:
    """The service ID Consul clients know an instance by."""
    return inst.meta.get(META_ID, inst.id)


def consul_name(inst: Instance) -> str:
    return inst.meta.get(META_NAME, inst.service)


def user_meta(meta: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in meta.items() if not k.startswith(META_PREFIX)}


# --- requests ----------------------------------------------------------------------------


def _fold(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


def folded(obj: object, where: str) -> dict[str, Any]:
    """A JSON object's keys as Consul reads them: any case, with or without underscores
    (py-consul sends ``name``, the Node client ``Name``, others ``tagged_addresses``)."""
    if not isinstance(obj, dict):
        raise ConsulInputError(f"Request decode failed: {where}: expected a JSON object")
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out[_fold(str(key))] = value
    return out


def _str(d: Mapping[str, Any], key: str, where: str, default: str = "") -> str:
    value = d.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ConsulInputError(f"Request decode failed: {where}: expected a string")
    return value


def _int(d: Mapping[str, Any], key: str, where: str, default: int = 0) -> int:
    value = d.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConsulInputError(f"Request decode failed: {where}: expected an integer")
    return value


_GO_DURATION = re.compile(r"\A(?:[0-9]+(?:\.[0-9]*)?(?:ns|us|µs|ms|s|m|h))+\Z")
_GO_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?)(ns|us|µs|ms|s|m|h)")
_GO_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration_s(text: str, where: str) -> float:
    """Seconds of a duration as Go's ``time.ParseDuration`` reads it (``120000ms``,
    ``1h30m``, ``1.5s``), as Consul's clients send them; ConsulInputError otherwise."""
    if text == "0":
        return 0.0
    if len(text) > 64 or _GO_DURATION.match(text) is None:
        raise ConsulInputError(f"{where}: {text!r} is not a duration (like 10s, 1m30s, 500ms)")
    seconds = sum(float(n) * _GO_UNIT_S[u] for n, u in _GO_PART.findall(text))
    if seconds > MAX_DURATION_S:
        raise ConsulInputError(f"{where}: {text!r} is too long")
    return seconds


def _duration(d: Mapping[str, Any], key: str, where: str) -> str | None:
    value = d.get(key)
    if value in (None, ""):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        # Go's time.Duration in JSON is nanoseconds.
        seconds = float(value) / 1e9
    elif isinstance(value, str):
        seconds = go_duration_s(value, where)
    else:
        raise ConsulInputError(f"Request decode failed: {where}: expected a duration")
    if seconds < 0 or seconds > MAX_DURATION_S:
        raise ConsulInputError(f"{where}: out of range")
    spelled = format_duration(seconds)
    parse_duration(spelled, field=where)  # our own spelling reads back
    return spelled


def check_ids(service_id: str, count: int) -> list[str]:
    """The CheckIDs Consul gives a service's checks when the registration names none."""
    if count == 1:
        return [f"service:{service_id}"]
    return [f"service:{service_id}:{n}" for n in range(1, count + 1)]


def _check(
    raw: object, where: str, check_id: str, service_name: str
) -> tuple[dict[str, Any], str, str, str | None]:
    """A Consul check definition as a Waypost check (a dict for ``convert_instance``),
    its Consul status, and its Consul name and notes when not the defaults."""
    c = folded(raw, where)
    out: dict[str, Any] = {"name": _str(c, "checkid", where) or _str(c, "id", where) or check_id}
    interval = _duration(c, "interval", f"{where}.Interval")
    timeout = _duration(c, "timeout", f"{where}.Timeout")
    ttl = _duration(c, "ttl", f"{where}.TTL")
    deregister = _duration(
        c, "deregistercriticalserviceafter", f"{where}.DeregisterCriticalServiceAfter"
    )
    if ttl is not None:
        out["ttl"] = ttl
    elif c.get("http"):
        url = _str(c, "http", f"{where}.HTTP")
        out["https" if url.startswith("https://") else "http"] = url
        method = _str(c, "method", f"{where}.Method")
        if method:
            out["method"] = method.upper()
        header = c.get("header") or {}
        if not isinstance(header, dict):
            raise ConsulInputError(f"Request decode failed: {where}.Header: expected an object")
        out["headers"] = {
            str(k): ", ".join(v) if isinstance(v, list) else str(v) for k, v in header.items()
        }
        body = _str(c, "body", f"{where}.Body")
        if body:
            out["body"] = body
        if url.startswith("https://") and c.get("tlsskipverify"):
            out["tls_verify"] = False
    elif c.get("tcp"):
        out["tcp"] = _str(c, "tcp", f"{where}.TCP")
    elif c.get("grpc"):
        target = _str(c, "grpc", f"{where}.GRPC")
        hostport, _, svc = target.partition("/")
        out["grpc"] = hostport
        if svc:
            out["grpc_service"] = svc
    elif c.get("args") or c.get("script"):
        args = c.get("args") or ["/bin/sh", "-c", _str(c, "script", f"{where}.Script")]
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ConsulInputError(f"Request decode failed: {where}.Args: expected strings")
        out["command"] = args
    else:
        kinds = [k for k in ("dockercontainerid", "h2ping", "udp", "aliasservice", "aliasnode")]
        given = [k for k in kinds if c.get(k)]
        if given:
            raise ConsulInputError(
                f"{where}: {given[0]} checks are not supported by Waypost (supported: "
                "TTL, HTTP, TCP, GRPC, Args)"
            )
        raise ConsulInputError(
            f"Invalid check: TTL must be > 0 for TTL checks, or one of Args, HTTP, TCP, "
            f"GRPC given with an Interval ({where})"
        )
    if ttl is None:
        if interval is None:
            raise ConsulInputError(f"Invalid check: {where}: Interval must be > 0")
        out["interval"] = interval
        if timeout is not None:
            out["timeout"] = timeout
        # Consul moves a check's status at once unless told to wait for more results.
        out["healthy_threshold"] = max(1, _int(c, "successbeforepassing", where))
        out["unhealthy_threshold"] = max(1, _int(c, "failuresbeforecritical", where))
    if deregister is not None:
        out["deregister_critical_after"] = deregister
    status = _str(c, "status", f"{where}.Status") or "critical"
    if status not in ("passing", "warning", "critical"):
        raise ConsulInputError(f"Invalid check status: {status!r}")
    if ttl is None:
        out["initial_status"] = status
    name = _str(c, "name", f"{where}.Name")
    notes = _str(c, "notes", f"{where}.Notes")
    extra = None
    if (name and name != f"Service '{service_name}' check") or notes:
        extra = msgspec.json.encode({"Name": name, "Notes": notes}).decode()
    return out, status, out["name"], extra


def _body(body: bytes) -> dict[str, Any]:
    """A request's JSON object, keys folded; an empty body is an empty object."""
    try:
        raw = msgspec.json.decode(body) if body.strip() else {}
    except msgspec.DecodeError as exc:
        raise ConsulInputError(f"Request decode failed: {exc}") from None
    return folded(raw, "body")


def check_registration(body: bytes) -> tuple[str, dict[str, Any], str, str | None]:
    """``PUT /v1/agent/check/register``'s body: the ServiceID it is for, the check (its
    name is the CheckID, which defaults to the Name as in Consul), its Consul status, and
    its name and notes for the meta."""
    c = _body(body)
    name = _str(c, "name", "Name")
    if not name:
        raise ConsulInputError("Missing check name")
    service_id = _str(c, "serviceid", "ServiceID")
    if not service_id:
        raise ConsulInputError(
            "ServiceID: Waypost keeps checks on services; register node checks through "
            "`waypost agent` definitions"
        )
    check_id = _str(c, "checkid", "CheckID") or _str(c, "id", "ID") or name
    check, status, _, extra = _check(c, "Check", check_id, "")
    if extra is None and name != check_id:
        extra = msgspec.json.encode({"Name": name, "Notes": ""}).decode()
    return service_id, check, status, extra


def registration(body: bytes, *, node: str, node_address: str) -> Instance:
    """``PUT /v1/agent/service/register``'s body as the instance it registers on ``node``."""
    r = _body(body)
    name = _str(r, "name", "Name")
    if not name:
        raise ConsulInputError("Missing service name")
    sid = _str(r, "id", "ID") or name
    if r.get("kind") not in (None, "", "typical"):
        raise ConsulInputError(
            f"service kind {r.get('kind')!r}: Connect proxies and gateways are not supported"
        )
    if r.get("connect"):
        raise ConsulInputError("Connect is not supported by Waypost")
    meta_raw = r.get("meta") or {}
    if not isinstance(meta_raw, dict) or not all(isinstance(v, str) for v in meta_raw.values()):
        raise ConsulInputError("Request decode failed: Meta: expected an object of strings")
    meta: dict[str, str] = {str(k): v for k, v in meta_raw.items()}
    if any(k.startswith(META_PREFIX) for k in meta):
        raise ConsulInputError(f"Meta: keys starting {META_PREFIX!r} are reserved")
    iid = local_label(sid)
    service = local_label(name)
    if iid != sid:
        meta[META_ID] = sid
    if service != name:
        meta[META_NAME] = name
    address = _str(r, "address", "Address")
    if not address:
        meta[META_NO_ADDRESS] = "1"
    port = _int(r, "port", "Port")
    if not 0 <= port <= 65535:
        raise ConsulInputError(f"Invalid port {port}")
    weight = DEFAULT_WEIGHT
    if r.get("weights") is not None:
        w = folded(r["weights"], "Weights")
        passing = _int(w, "passing", "Weights.Passing", 1)
        warning = _int(w, "warning", "Weights.Warning", 1)
        if passing < 1 or warning < 0:
            raise ConsulInputError("Passing must be greater than 0")
        meta[META_WEIGHTS] = f"{passing},{warning}"
        weight = min(passing * WEIGHT_UNIT, 1000)
    if r.get("enabletagoverride"):
        meta[META_TAG_OVERRIDE] = "1"
    if r.get("taggedaddresses"):
        meta[META_TAGGED] = _tagged(r["taggedaddresses"])
    tags = r.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ConsulInputError("Request decode failed: Tags: expected a list of strings")
    defs: list[object] = []
    if r.get("check"):
        defs.append(r["check"])
    checks_raw = r.get("checks") or []
    if not isinstance(checks_raw, list):
        raise ConsulInputError("Request decode failed: Checks: expected a list")
    defs.extend(c for c in checks_raw if c)
    ids = check_ids(sid, len(defs))
    checks: list[dict[str, Any]] = []
    ttl_status = "passing"
    deregister_after = NEVER
    for n, (d, cid) in enumerate(zip(defs, ids, strict=True)):
        where = "Check" if r.get("check") and n == 0 else f"Checks[{n}]"
        check, status, _, extra = _check(d, where, cid, name)
        if "ttl" in check:
            ttl_status = status
            if "deregister_critical_after" in check:
                deregister_after = check.pop("deregister_critical_after")
        checks.append(check)
        if extra is not None:
            meta[check_meta_key(check["name"])] = extra
    body_dict: dict[str, Any] = {
        "id": iid,
        "service": service,
        "address": address or node_address,
        "port": port or 1,  # 0 (no port, as Consul allows) is set after validation
        "tags": tags,
        "meta": meta,
        "weight": weight,
        "node": node,
        "checks": checks,
        "deregister_after": deregister_after,
    }
    if any("ttl" in c for c in checks):
        body_dict["status"] = ttl_status
    try:
        inst = convert_instance(body_dict)
    except InvalidInput as exc:
        raise ConsulInputError(f"Invalid service: {exc}") from None
    if port == 0:
        inst = msgspec.structs.replace(inst, port=0)
    return inst


def _tagged(raw: object) -> str:
    """A service's TaggedAddresses (``{"lan": {"Address", "Port"}}``) as kept in meta."""
    if not isinstance(raw, dict):
        raise ConsulInputError("Request decode failed: TaggedAddresses: expected an object")
    out: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        v = folded(value, f"TaggedAddresses.{name}")
        port = _int(v, "port", f"TaggedAddresses.{name}.Port")
        if not 0 <= port <= 65535:
            raise ConsulInputError(f"TaggedAddresses.{name}.Port: invalid port {port}")
        out[str(name)] = {"Address": _str(v, "address", f"TaggedAddresses.{name}"), "Port": port}
    text = msgspec.json.encode(out).decode()
    if len(text) > 512:
        raise ConsulInputError("TaggedAddresses: too many or too long (512 bytes at most)")
    return text


# --- answers -----------------------------------------------------------------------------


def node_address(inst: Instance, nodes: Mapping[str, Node]) -> str:
    node = nodes.get(inst.node or "")
    if node is not None and node.address:
        return node.address
    return inst.address


def _weights(inst: Instance) -> dict[str, int]:
    given = inst.meta.get(META_WEIGHTS)
    if given:
        passing, _, warning = given.partition(",")
        try:
            return {"Passing": int(passing), "Warning": int(warning)}
        except ValueError:
            pass
    return {"Passing": max(1, round(inst.weight / WEIGHT_UNIT)), "Warning": 1}


def service_address(inst: Instance) -> str:
    return "" if inst.meta.get(META_NO_ADDRESS) else inst.address


def agent_service(inst: Instance, datacenter: str = DATACENTER) -> dict[str, Any]:
    """An instance as ``/v1/agent/services`` and ``Service`` in health answers show it."""
    address = service_address(inst)
    tagged: dict[str, Any] = {}
    kept = inst.meta.get(META_TAGGED)
    if kept:
        try:
            tagged = msgspec.json.decode(kept)
        except msgspec.DecodeError:
            tagged = {}
    elif address:
        family = "lan_ipv6" if ":" in address else "lan_ipv4"
        tagged = {
            family: {"Address": address, "Port": inst.port},
            family.replace("lan", "wan"): {"Address": address, "Port": inst.port},
        }
    return {
        "ID": consul_id(inst),
        "Service": consul_name(inst),
        "Tags": list(inst.tags),
        "Address": address,
        "TaggedAddresses": tagged,
        "Meta": user_meta(inst.meta),
        "Port": inst.port,
        "Weights": _weights(inst),
        "EnableTagOverride": META_TAG_OVERRIDE in inst.meta,
        "Datacenter": datacenter,
    }


def check_meta_key(check_id: str) -> str:
    """The meta key of a check's Consul name and notes (a digest: CheckIDs are free text)."""
    return META_CHECK + hashlib.blake2b(check_id.encode(), digest_size=5).hexdigest()


def _check_extra(inst: Instance, check_id: str) -> tuple[str, str]:
    raw = inst.meta.get(check_meta_key(check_id))
    if raw:
        try:
            got = msgspec.json.decode(raw)
            if isinstance(got, dict):
                return str(got.get("Name", "")), str(got.get("Notes", ""))
        except msgspec.DecodeError:
            pass
    return "", ""


def _status(status: Status) -> str:
    return "critical" if status is Status.UNKNOWN else status.value


def service_checks(inst: Instance, node: str) -> list[dict[str, Any]]:
    """The Consul checks of one instance: one per check state; one for its status when
    it has no checks but is not passing; Consul's maintenance check while in
    maintenance."""
    sid = consul_id(inst)
    name = consul_name(inst)
    base = {
        "Node": node,
        "ServiceID": sid,
        "ServiceName": name,
        "ServiceTags": list(inst.tags),
        "Definition": {},
        "CreateIndex": 0,
        "ModifyIndex": 0,
    }
    out: list[dict[str, Any]] = []
    if inst.maintenance:
        out.append(
            {
                **base,
                "CheckID": MAINT_PREFIX + sid,
                "Name": "Service Maintenance Mode",
                "Status": "critical",
                "Notes": inst.maintenance_reason,
                "Output": "",
                "Type": "maintenance",
            }
        )
    states: Iterable[CheckState] = inst.health
    if not inst.health and inst.status is not Status.PASSING:
        states = [CheckState(name=f"service:{sid}", status=inst.status, output=inst.output)]
    for state in states:
        given_name, notes = _check_extra(inst, state.name)
        out.append(
            {
                **base,
                "CheckID": state.name,
                "Name": given_name or f"Service '{name}' check",
                "Status": _status(state.status),
                "Notes": notes,
                "Output": state.output,
                "Type": state.kind if state.kind != "command" else "script",
            }
        )
    return out


def serf_check(node: str, status: NodeStatus) -> dict[str, Any]:
    """Consul's node check: passing while the node is alive."""
    alive = status is NodeStatus.ALIVE
    return {
        "Node": node,
        "CheckID": SERF_CHECK,
        "Name": "Serf Health Status",
        "Status": "passing" if alive else "critical",
        "Notes": "",
        "Output": "Agent alive and reachable" if alive else "Agent not live or unreachable",
        "ServiceID": "",
        "ServiceName": "",
        "ServiceTags": [],
        "Type": "",
        "Definition": {},
        "CreateIndex": 0,
        "ModifyIndex": 0,
    }


def node_maintenance_check(node: str, reason: str) -> dict[str, Any]:
    return {
        "Node": node,
        "CheckID": "_node_maintenance",
        "Name": "Node Maintenance Mode",
        "Status": "critical",
        "Notes": reason,
        "Output": "",
        "ServiceID": "",
        "ServiceName": "",
        "ServiceTags": [],
        "Type": "maintenance",
        "Definition": {},
        "CreateIndex": 0,
        "ModifyIndex": 0,
    }


def consul_node(
    name: str, address: str, meta: Mapping[str, str], datacenter: str = DATACENTER
) -> dict[str, Any]:
    return {
        "ID": "",
        "Node": name,
        "Address": address,
        "Datacenter": datacenter,
        "TaggedAddresses": {"lan": address, "lan_ipv4": address, "wan": address,
                            "wan_ipv4": address},
        "Meta": dict(meta),
        "CreateIndex": 0,
        "ModifyIndex": 0,
    }  # fmt: skip


def catalog_row(
    inst: Instance, node: dict[str, Any], datacenter: str = DATACENTER
) -> dict[str, Any]:
    """A row of ``/v1/catalog/service/{name}``."""
    svc = agent_service(inst, datacenter)
    return {
        "ID": node["ID"],
        "Node": node["Node"],
        "Address": node["Address"],
        "Datacenter": datacenter,
        "TaggedAddresses": node["TaggedAddresses"],
        "NodeMeta": node["Meta"],
        "ServiceKind": "",
        "ServiceID": svc["ID"],
        "ServiceName": svc["Service"],
        "ServiceTags": svc["Tags"],
        "ServiceAddress": svc["Address"],
        "ServiceTaggedAddresses": svc["TaggedAddresses"],
        "ServiceWeights": svc["Weights"],
        "ServiceMeta": svc["Meta"],
        "ServicePort": svc["Port"],
        "ServiceEnableTagOverride": svc["EnableTagOverride"],
        "ServiceProxy": {"MeshGateway": {}, "Expose": {}},
        "ServiceConnect": {},
        "CreateIndex": 0,
        "ModifyIndex": 0,
    }


def is_consul_service(inst: Instance) -> bool:
    """Whether Consul's view lists an instance (actor networks and actors are Waypost's)."""
    return inst.kind is Kind.SERVICE
