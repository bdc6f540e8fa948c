"""The actor networks' errors: one tree under ``WaypostError``."""

from __future__ import annotations

from typing import ClassVar

from waypost.errors import Conflict, InvalidInput, NotFound, Unauthorized, Unavailable


class ConnectionTimeout(Unavailable):
    """A network did not answer (connect, handshake or acknowledgement) in time."""

    code: ClassVar[str] = "connection_timeout"


class AuthenticationFailed(Unauthorized):
    """The other network refused our token (or we refused theirs)."""

    code: ClassVar[str] = "authentication_failed"


class ActorNotFound(NotFound):
    """No such actor (local, remote, or alias)."""

    code: ClassVar[str] = "actor_not_found"


class NetworkNotFound(NotFound):
    """No healthy network with that id in the registry."""

    code: ClassVar[str] = "network_not_found"


class NameConflict(Conflict):
    """The name (or alias) is taken and the strategy does not resolve it."""

    code: ClassVar[str] = "name_conflict"


class MessageTooLarge(InvalidInput):
    """A message above the link's size limit."""

    code: ClassVar[str] = "message_too_large"
