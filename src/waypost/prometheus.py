"""Service discovery for Prometheus: instances as ``http_sd_configs`` target groups.

Pure: instances in, groups out. Each group holds the ``HOST:PORT`` of the instances that
share every label: ``__meta_waypost_service``, ``_node``, ``_version``, ``_tags`` (the
tags between commas, ``,a,b,``, so a regex can match ``.*,a,.*`` as with Consul's SD),
``_status`` and ``_meta_<key>`` (the key with every character a label name cannot hold
made ``_``). Groups come in the order of their first instance (service, then id), so the
answer is the same bytes for the same registry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from waypost.model import Instance, TargetGroup

PREFIX = "__meta_waypost_"
_NOT_IN_NAME = re.compile(r"[^a-zA-Z0-9_]")


def label_name(meta_key: str) -> str:
    """The label a meta key becomes: ``__meta_waypost_meta_`` and the key, sanitised."""
    return f"{PREFIX}meta_{_NOT_IN_NAME.sub('_', meta_key)}"


def target(inst: Instance) -> str:
    """``HOST:PORT``, an IPv6 literal in brackets."""
    host = f"[{inst.address}]" if ":" in inst.address else inst.address
    return f"{host}:{inst.port}"


def labels(inst: Instance) -> dict[str, str]:
    """The labels Prometheus sees for one instance (a label left out is empty)."""
    out = {
        f"{PREFIX}service": inst.service,
        f"{PREFIX}status": inst.effective_status.value,
        f"{PREFIX}tags": f",{','.join(inst.tags)}," if inst.tags else "",
    }
    if inst.node:
        out[f"{PREFIX}node"] = inst.node
    if inst.version:
        out[f"{PREFIX}version"] = inst.version
    for key in sorted(inst.meta):
        out.setdefault(label_name(key), inst.meta[key])  # the first of clashing keys
    return {k: v for k, v in out.items() if v}


def target_groups(instances: Iterable[Instance]) -> list[TargetGroup]:
    """The instances as target groups, one per distinct set of labels."""
    groups: dict[tuple[tuple[str, str], ...], list[str]] = {}
    kept: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
    for inst in instances:
        own = labels(inst)
        key = tuple(sorted(own.items()))
        if key not in groups:
            groups[key] = []
            kept[key] = own
        groups[key].append(target(inst))
    return [TargetGroup(targets=targets, labels=kept[key]) for key, targets in groups.items()]
