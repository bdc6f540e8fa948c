"""Where the checks a server runs may connect: the instance's own address.

A server runs the checks of instances registered through its API, so whoever may
register chooses what the server connects to. Unbounded, that is a request forgery
with the answer read back (any method, headers and body to any address, the first KiB
of the answer stored in the instance's output for every reader). So a server-run
``http``, ``https``, ``tcp`` or ``grpc`` check must target the address the instance
registers (a loopback name and a loopback address count as one), unless the operator
starts the server with ``--check-any-target``. An agent's checks, from its operator's
own files, are not bound. HTTP redirects are followed only to the same host.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from waypost.errors import Forbidden
from waypost.model import Check, Instance

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def check_host(check: Check) -> str | None:
    """The host a network check connects to (None for command and TTL checks)."""
    kind = check.kind
    if kind in ("http", "https"):
        return (urlsplit(check.target).hostname or "").lower()
    if kind in ("tcp", "grpc"):
        host = check.target.rpartition(":")[0]
        return host.strip("[]").lower()
    return None


def is_loopback_host(host: str) -> bool:
    """Whether a host name or address (lower case, no port, no brackets) is this
    machine's: ``localhost`` and its kin, ``*.localhost``, or a loopback address."""
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_host(a: str, b: str) -> bool:
    """Whether two hosts name the same place: equal (case and IPv6 spelling aside), or
    both loopback."""
    a, b = a.strip("[]").lower(), b.strip("[]").lower()
    if a == b:
        return True
    try:
        if ipaddress.ip_address(a) == ipaddress.ip_address(b):
            return True
    except ValueError:
        pass
    return is_loopback_host(a) and is_loopback_host(b)


def require_own_target(inst: Instance, checks: tuple[Check, ...]) -> None:
    """Forbidden unless every network check of ``inst`` targets its own address."""
    for n, check in enumerate(checks):
        host = check_host(check)
        if host is not None and not same_host(host, inst.address):
            raise Forbidden(
                f"checks[{n}]: a check this server runs must target the instance's own "
                f"address {inst.address!r}, not {host!r} (start the server with "
                "--check-any-target to allow others, or define the check in an agent's "
                "files)",
                field="checks",
            )
