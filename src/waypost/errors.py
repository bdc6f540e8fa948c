"""One error hierarchy for Waypost.

Every error carries a message a person can act on. Each class maps once to an HTTP
status (the API, the proxy) and a CLI exit code (the command line). (DNS answers carry
rcodes of their own, decided where the query is read: FORMERR, REFUSED, SERVFAIL; no
error of this tree reaches a DNS client.) Lower-level errors (sqlite3, OSError, aiohttp,
httpx) are translated into these at one boundary each, as httpx's ``map_exceptions``
does; the errors of discovery sources, registry entries, event streams, actor frames and
proxy upstreams are classes of this tree too, so ``except WaypostError`` catches every
error Waypost raises on purpose.
"""

from __future__ import annotations

from typing import ClassVar


class WaypostError(Exception):
    """Base of every error Waypost raises on purpose."""

    code: ClassVar[str] = "error"
    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, str | None]:
        """The JSON body of the error: ``{"error", "message", "field"}``."""
        return {"error": self.code, "message": self.message, "field": self.field}


class InvalidInput(WaypostError):
    """A request or definition is malformed or breaks a limit; ``field`` names what."""

    code = "invalid_input"
    http_status = 400
    exit_code = 3


class Unauthorized(WaypostError):
    """A write came without the server's bearer token, or a request with a token that
    names no ACL token (unknown, malformed, revoked or expired)."""

    code = "unauthorized"
    http_status = 401
    exit_code = 5


class Forbidden(WaypostError):
    """What this server is configured not to do (command checks through the API), or what
    the caller's ACL token may not do (the message names the rule that refused)."""

    code = "forbidden"
    http_status = 403
    exit_code = 5


class NotFound(WaypostError):
    """The named instance, service or route does not exist."""

    code = "not_found"
    http_status = 404
    exit_code = 4


class Conflict(WaypostError):
    """A conditional write lost a race: the stored revision is not the expected one."""

    code = "conflict"
    http_status = 409
    exit_code = 6


class Gone(WaypostError):
    """A watch asked for a revision older than the event log keeps; re-list instead."""

    code = "gone"
    http_status = 410
    exit_code = 7


class PayloadTooLarge(WaypostError):
    """A request body is over the size limit."""

    code = "payload_too_large"
    http_status = 413
    exit_code = 3


class UnsupportedMediaType(InvalidInput):
    """A request body of a type the API does not take (what only a web page sends)."""

    code = "unsupported_media_type"
    http_status = 415


class TooManyRequests(WaypostError):
    """A token went over its write rate or its number of open watches; ``retry_after_s``
    says when to try again (``Retry-After``)."""

    code = "too_many_requests"
    http_status = 429
    exit_code = 8

    def __init__(self, message: str, *, field: str | None = None, retry_after_s: float = 1.0):
        super().__init__(message, field=field)
        self.retry_after_s = retry_after_s


class Unavailable(WaypostError):
    """The server or its store cannot serve right now (unreachable, closed, failing)."""

    code = "unavailable"
    http_status = 503
    exit_code = 8


class StoreError(Unavailable):
    """The store failed underneath (disk, database, cluster); nothing was acknowledged."""

    code = "store_error"


class UpstreamFailed(Unavailable):
    """The proxy's upstream refused, reset or broke the answer (after the retries)."""

    code = "upstream_failed"
    http_status = 502


class UpstreamTimeout(UpstreamFailed):
    """The proxy's upstream did not answer within the per-try timeout or the deadline."""

    code = "upstream_timeout"
    http_status = 504


class StoreFull(StoreError):
    """The store's disk (or its quota) is full: writes wait for space; reads go on."""

    code = "insufficient_storage"
    http_status = 507


BY_CODE: dict[str, type[WaypostError]] = {
    cls.code: cls
    for cls in (
        WaypostError,
        InvalidInput,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        Gone,
        PayloadTooLarge,
        UnsupportedMediaType,
        TooManyRequests,
        Unavailable,
        UpstreamFailed,
        UpstreamTimeout,
        StoreError,
        StoreFull,
    )
}


def from_dict(data: object, *, http_status: int = 500) -> WaypostError:
    """Rebuild an error from its JSON body (the client side of ``to_dict``)."""
    if isinstance(data, dict):
        code = str(data.get("error", ""))
        message = str(data.get("message", "")) or f"HTTP {http_status}"
        field = data.get("field")
        cls = BY_CODE.get(code) or for_status(http_status)
        return cls(message, field=field if isinstance(field, str) else None)
    return for_status(http_status)(f"HTTP {http_status}")


def for_status(status: int) -> type[WaypostError]:
    """The error class an HTTP status stands for (the first of ``BY_CODE`` with it; any
    other 4xx is ``InvalidInput``, 5xx ``Unavailable``)."""
    for cls in BY_CODE.values():
        if cls.http_status == status and cls not in (StoreError,):
            return cls
    if 400 <= status < 500:
        return InvalidInput
    return Unavailable if status >= 500 else WaypostError
