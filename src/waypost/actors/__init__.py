"""Distributed actor networks: networks of actors that register with a Waypost registry,
find each other by capability and tags, use each other's actors under aliases, and
message them over authenticated WebSocket links (see docs/actors.md)."""

from __future__ import annotations

from waypost.actors.actor import Actor, Context
from waypost.actors.errors import (
    ActorNotFound,
    AuthenticationFailed,
    ConnectionTimeout,
    MessageTooLarge,
    NameConflict,
    NetworkNotFound,
)
from waypost.actors.network import (
    ActorInfo,
    DiscoveryConfig,
    Network,
    NetworkInfo,
    RemoteActor,
)

__all__ = [
    "Actor",
    "ActorInfo",
    "ActorNotFound",
    "AuthenticationFailed",
    "ConnectionTimeout",
    "Context",
    "DiscoveryConfig",
    "MessageTooLarge",
    "NameConflict",
    "Network",
    "NetworkInfo",
    "NetworkNotFound",
    "RemoteActor",
]
