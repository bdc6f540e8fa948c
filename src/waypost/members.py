"""The servers sharing one store, and which of them does a piece of work.

With a local store there is one server and it does everything. On etcd every server
joins (a key of its own on a lease of its own, ``EtcdStore.join``); work that must
happen once per cluster (running an instance's checks, acting on a failed node) goes
to one live server by rendezvous hashing on the work's key: each server decides alone,
they all agree, and when a server leaves only its share moves.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections.abc import Callable, Iterable

log = logging.getLogger("waypost.members")


def member_id(node: str) -> str:
    """This process's name among the servers: its node, host and pid (two servers on
    one host are two members)."""
    return f"{node}.{socket.gethostname()}.{os.getpid()}"


def _weight(member: str, key: str) -> bytes:
    return hashlib.blake2b(f"{member}\0{key}".encode(), digest_size=8).digest()


class Members:
    """The live servers (always including this one); ``owns(key)`` says whether this
    one does the work named ``key``; listeners hear of every change of the set."""

    def __init__(self, me: str) -> None:
        self.me = me
        self.names: frozenset[str] = frozenset({me})
        self.listeners: list[Callable[[], None]] = []

    def update(self, names: Iterable[str]) -> None:
        new = frozenset(names) | {self.me}
        if new == self.names:
            return
        log.info("servers sharing the store: %s", ", ".join(sorted(new)))
        self.names = new
        for listener in list(self.listeners):
            try:
                listener()
            except Exception:
                log.exception("a members listener failed")

    def owner(self, key: str) -> str:
        if len(self.names) == 1:
            return self.me
        return max(self.names, key=lambda m: _weight(m, key))

    def owns(self, key: str) -> bool:
        return len(self.names) == 1 or self.owner(key) == self.me
