"""Instances held by the hundred thousand: read fast from the store, with shared strings.

A server holds every instance in memory, and most of their strings repeat: a service
name, a node, its address, a version, a handful of tags are the same across hundreds of
instances. Decoded naively each instance carries its own copies (about 1.1 KB an
instance); with the repeated values shared it takes about 0.4 KB. ``compact`` gives an
instance whose repeated values are shared; ``decode_stored_instance`` reads a stored
record straight into such an instance. Shared maps (``meta``) are never changed in
place: instances are frozen, and every change builds a new one.

Stored records were validated when they were written, so they are decoded into a twin
of ``Instance`` with the same fields and plain types (no pattern checks: those cost
three quarters of the decode) and built into an ``Instance`` from there. Like every
stored read it is lenient: fields this version does not know are ignored. A record the
twin cannot read goes through the strict decoder, whose error names the field.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from waypost.model import Instance

# Distinct strings shared at most; past it the table starts over (strings already
# shared stay shared), so names seen over months of churn never pile up.
MAX_SHARED = 100_000

# Fields whose values repeat across instances; tags are shared one by one, a meta map
# whole (instances of one deployment carry the same), timestamps within one instance.
_SHARED = (
    "service", "address", "node", "version", "deregister_after", "ttl", "domain", "port", "lease",
)  # fmt: skip

_table: dict[Any, Any] = {}
_share = _table.setdefault


def _twin() -> type[msgspec.Struct]:
    """``Instance``'s fields with the same defaults and plain types (constraints off)."""
    hints = typing.get_type_hints(Instance)  # Annotated[...] stripped, at every depth
    fields: list[tuple[str, Any, Any]] = []
    for f in msgspec.structs.fields(Instance):
        if f.default is not msgspec.NODEFAULT:
            fields.append((f.name, hints[f.name], f.default))
        elif f.default_factory is not msgspec.NODEFAULT:
            fields.append((f.name, hints[f.name], msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, hints[f.name], msgspec.NODEFAULT))
    required = [f for f in fields if f[2] is msgspec.NODEFAULT]
    optional = [f for f in fields if f[2] is not msgspec.NODEFAULT]
    spec: list[tuple[str, Any] | tuple[str, Any, Any]] = [(n, t) for n, t, _ in required]
    spec += optional
    return msgspec.defstruct(
        "StoredInstance",
        spec,
        kw_only=True,
        frozen=True,
        gc=False,
    )


def _builders() -> tuple[Callable[[Any], Instance], Callable[[Instance], Instance]]:
    """``build(x)``: an ``Instance`` from anything with its fields (the twin), its
    repeated values shared; ``reshare(inst)``: an instance with its repeated values
    shared. Generated, as dataclasses generate ``__init__``: one call, no loop."""
    special = {
        "tags": "tuple([share(t, t) for t in x.tags]) if x.tags else ()",
        # A map is shared by its items (the key is a tuple, never equal to a string).
        "meta": "share(tuple(x.meta.items()), x.meta)",
        # Registered, updated and checked at once: one float object, not three.
        "updated_at": "x.registered_at if x.updated_at == x.registered_at else x.updated_at",
        "last_check": "x.updated_at if x.last_check == x.updated_at else x.last_check",
    }
    args, shared = [], []
    for name in Instance.__struct_fields__:
        if name in _SHARED:
            shared.append(f"{name}=share(x.{name}, x.{name}) if x.{name} is not None else None")
        elif name in special:
            shared.append(f"{name}={special[name]}")
        else:
            args.append(f"{name}=x.{name}")
    source = (
        "def build(x):\n    return Instance(" + ", ".join(args + shared) + ")\n"
        # An Instance already: only the shared fields change (0.6 µs, not 1.6).
        "def reshare(x):\n    return replace(x, " + ", ".join(shared) + ")\n"
    )
    scope: dict[str, Any] = {
        "Instance": Instance, "share": _share, "replace": msgspec.structs.replace
    }  # fmt: skip
    exec(source, scope)
    return scope["build"], scope["reshare"]


_StoredInstance = _twin()
_decode_twin = msgspec.json.Decoder(_StoredInstance).decode
_build, _reshare = _builders()


def _bound() -> None:
    if len(_table) > MAX_SHARED:
        _table.clear()


def decode_stored_instance(data: bytes) -> Instance:
    """A stored instance record as an ``Instance`` with shared strings. Raises
    ``msgspec.ValidationError``/``DecodeError`` when the record cannot be read."""
    _bound()
    return _build(_decode_twin(data))


def decode_stored_rows(
    rows: Iterable[tuple[str, bytes, int]], fallback: Callable[[str, bytes], Instance | None]
) -> list[tuple[Instance, int]]:
    """Stored instance rows ``(key, data, revision)`` as ``(instance, revision)``: the
    loop of a server's start, kept tight. A row the twin cannot read goes to
    ``fallback(key, data)`` (the lenient decoder, which logs and may give None)."""
    _bound()
    decode, build = _decode_twin, _build
    out: list[tuple[Instance, int]] = []
    append = out.append
    for key, data, revision in rows:
        try:
            append((build(decode(data)), revision))
        except (msgspec.ValidationError, msgspec.DecodeError):
            inst = fallback(key, data)
            if inst is not None:
                append((inst, revision))
    return out


def compact(inst: Instance) -> Instance:
    """``inst`` with its repeated strings shared (itself when they already are)."""
    if _table.get(inst.service) is inst.service and _table.get(inst.address) is inst.address:
        return inst
    _bound()
    return _reshare(inst)
