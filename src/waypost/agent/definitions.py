"""Service definition files of an agent: YAML, JSON or TOML, one or many per file.

A file holds one definition (a mapping), a list of them, or a mapping with a
``services`` (or ``instances``) list; TOML writes the last as ``[[services]]``. Each
definition is an instance as the API takes it, with its ``checks``; the agent fills in
what it knows: ``node``, ``address`` (the agent's), ``id`` (``SERVICE-NODE``) and
``agent``. Every file is read before any is used: one bad file (bad syntax, a bad field,
an id defined twice) fails the whole load with its path and the problem, and the
definitions in force stay as they were.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import yaml

from waypost.errors import InvalidInput, WaypostError
from waypost.model import Instance, convert_instance, is_label

SUFFIXES = (".yaml", ".yml", ".json", ".toml")
# A definition directory larger than this is a mistake (a wrong path), not a config.
MAX_FILES = 1000
MAX_FILE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Loaded:
    """What a load found: the instances by id and the files they came from."""

    instances: dict[str, Instance]
    files: tuple[str, ...]


def definition_files(directory: Path) -> list[Path]:
    """The definition files of a directory, in name order (hidden files skipped)."""
    try:
        found = sorted(
            p
            for p in directory.iterdir()
            if p.suffix in SUFFIXES and not p.name.startswith(".") and p.is_file()
        )
    except FileNotFoundError:
        raise InvalidInput(f"config-dir: {directory} does not exist", field="config_dir") from None
    except OSError as exc:
        raise InvalidInput(
            f"config-dir: cannot read {directory}: {exc.strerror}", field="config_dir"
        ) from None
    if len(found) > MAX_FILES:
        raise InvalidInput(
            f"config-dir: {directory} holds {len(found)} definition files (at most {MAX_FILES})",
            field="config_dir",
        )
    return found


def signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a definition file does (names, sizes, modification times)."""
    out = []
    try:
        for p in definition_files(directory):
            try:
                st = p.stat()
            except OSError:
                continue
            out.append((p.name, st.st_size, st.st_mtime_ns))
    except InvalidInput:
        return ()
    return tuple(out)


def _parse(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InvalidInput(f"{path}: larger than {MAX_FILE_BYTES} bytes", field="file")
        text = path.read_text()
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read: {exc.strerror}", field="file") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: not UTF-8 text", field="file") from None
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        if path.suffix == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = {".toml": "TOML", ".json": "JSON"}.get(path.suffix, "YAML")
        problem = str(exc).replace("\n", " ")
        raise InvalidInput(f"{path}: not valid {kind}: {problem}", field="file") from None


def _items(path: Path, data: Any) -> list[Any]:
    if isinstance(data, dict) and ("services" in data or "instances" in data):
        key = "services" if "services" in data else "instances"
        if set(data) != {key}:
            extra = ", ".join(sorted(set(data) - {key}))
            raise InvalidInput(f"{path}: unknown top-level keys beside {key}: {extra}")
        data = data[key]
    items = data if isinstance(data, list) else [data]
    if data is None or not items:
        return []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidInput(f"{path}: definition {n + 1} is not a mapping", field="file")
    return items


def definition(item: dict[str, Any], *, node: str, address: str) -> Instance:
    """One definition made an instance of this agent's node."""
    data = dict(item)
    data.setdefault("address", address)
    if data.get("node") not in (None, node):
        raise InvalidInput(f"node: the agent's node is {node!r}, not {data['node']!r}")
    data["node"] = node
    if data.get("agent") is False:
        raise InvalidInput("agent: an agent's definitions are its own (leave it out)")
    data["agent"] = True
    for owned in ("health", "status", "lease", "registered_at", "updated_at", "last_check"):
        if owned in data:
            raise InvalidInput(f"{owned}: the agent and the registry set it, not a definition")
    if not data.get("id"):
        service = data.get("service")
        made = f"{service}-{node}"
        if not isinstance(service, str) or not is_label(made):
            raise InvalidInput(
                f"id: {made!r} (SERVICE-NODE) is not a DNS-safe label; give an id", field="id"
            )
        data["id"] = made
    return convert_instance(data)


def load(directory: Path, *, node: str, address: str) -> Loaded:
    """Every definition in ``directory``; InvalidInput naming the file and the problem."""
    found: dict[str, Instance] = {}
    where: dict[str, str] = {}
    files = definition_files(directory)
    for path in files:
        for n, item in enumerate(_items(path, _parse(path))):
            label = f"definition {n + 1}" + (f" ({item['id']})" if item.get("id") else "")
            try:
                inst = definition(item, node=node, address=address)
            except WaypostError as exc:
                raise InvalidInput(f"{path}: {label}: {exc.message}", field=exc.field) from None
            if inst.id in found:
                raise InvalidInput(
                    f"{path}: {label}: id {inst.id!r} is also defined in {where[inst.id]}",
                    field="id",
                )
            found[inst.id] = inst
            where[inst.id] = str(path)
    return Loaded(instances=found, files=tuple(str(p) for p in files))


def as_documents(instances: Iterable[Instance]) -> list[dict[str, Any]]:
    """Instances as definition documents (for ``--json`` and tests)."""
    return [msgspec.to_builtins(i) for i in instances]
