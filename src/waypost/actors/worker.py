"""``waypost network --mode worker``: one network running actors named on the command line."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from waypost.aio import until_signalled
from waypost.errors import InvalidInput

from .actor import Actor
from .network import Network


def load_actors(spec: str) -> dict[str, Actor]:
    """``package.module:Class[,...]`` as actors named after their classes (lower case);
    ``name=package.module:Class`` names one explicitly."""
    out: dict[str, Actor] = {}
    for part in (x.strip() for x in spec.split(",") if x.strip()):
        name, _, target = part.rpartition("=")
        module_name, sep, cls_name = target.partition(":")
        if not sep or not module_name or not cls_name:
            raise InvalidInput(f"--actors: {part!r} is not package.module:Class", field="actors")
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError) as exc:
            raise InvalidInput(f"--actors: cannot load {target}: {exc}", field="actors") from None
        if not (isinstance(cls, type) and issubclass(cls, Actor)):
            raise InvalidInput(f"--actors: {target} is not an Actor class", field="actors")
        out[name or cls_name.lower()] = cls()
    return out


async def run_worker(
    network_id: str,
    actors: dict[str, Actor],
    *,
    instance_id: str | None,
    bind: str,
    discovery: Sequence[str],
    auth_token: str | None,
    registry_token: str | None = None,
    tls: tuple[str, str, str] = ("", "", ""),
    capabilities: Sequence[str],
    tags: Sequence[str],
    heartbeat_interval: str,
) -> None:
    net = Network(
        network_id,
        instance_id=instance_id,
        bind=bind,
        discovery=discovery,
        auth_token=auth_token,
        registry_token=registry_token,
        tls_cert=tls[0],
        tls_key=tls[1],
        tls_ca=tls[2],
        capabilities=capabilities,
        tags=tags,
        heartbeat_interval=heartbeat_interval,
    )
    for name, actor in actors.items():
        net.add_node(name, actor)
    await net.start()
    print(
        f"waypost network: serving {net.endpoint} (network {net.network_id}, "
        f"instance {net.instance_id}, actors {','.join(actors)})",
        flush=True,
    )
    try:
        await until_signalled()
    finally:
        await net.stop()
