"""The zones an instance's custom ``domain`` may be in.

An instance may name a DNS name of its own (``"domain": "web.local"``) that the server
answers for its healthy instances. Any name at all would let anyone who may register make
the server answer ``pypi.org`` itself instead of forwarding it, so a custom domain must lie
strictly inside one of the server's custom zones (``--dns-custom-zones``, by default the
private-use suffixes ``local``, ``internal`` and ``home.arpa`` that never resolve on the
public internet), and outside the server's own zone (whose names have forms of their own).
The registry refuses a registration outside them (403: a policy of this server, as for a
command check it does not run; the body is well formed), and the DNS interface answers only
names inside them: a record stored before the zones changed is kept, not answered.
"""

from __future__ import annotations

from collections.abc import Iterable

from waypost.errors import Forbidden

DEFAULT_CUSTOM_ZONES = "local,internal,home.arpa"
# (This module also holds the DNS defaults the settings read without the DNS server.)

# Clients whose out-of-zone queries are forwarded to the recursors by default: loopback
# and private networks (an open resolver on a public address serves floods).
DEFAULT_FORWARD_CLIENTS = (
    "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,"
    "169.254.0.0/16,fc00::/7,fe80::/10"
)


def _labels(name: str) -> tuple[str, ...]:
    """A name's labels, most significant first, lower case (no root label)."""
    return tuple(reversed([lab for lab in name.strip().rstrip(".").lower().split(".") if lab]))


class CustomZones:
    """Which names an instance's ``domain`` may claim: strictly below one of ``zones``
    and not inside ``own`` (the server's zone). An empty zone list allows none."""

    def __init__(self, zones: str | Iterable[str] = DEFAULT_CUSTOM_ZONES, *, own: str = "waypost"):
        parts = zones.split(",") if isinstance(zones, str) else list(zones)
        self.zones = tuple(z for z in (_labels(p) for p in parts) if z)
        self.own = _labels(own)

    def describe(self) -> str:
        return ", ".join(".".join(reversed(z)) for z in self.zones) or "(none)"

    def covers(self, name: str) -> bool:
        labels = _labels(name)
        if self.own and labels[: len(self.own)] == self.own:
            return False
        return any(len(labels) > len(z) and labels[: len(z)] == z for z in self.zones)

    def require(self, name: str, *, iid: str = "") -> None:
        """Forbidden unless ``name`` may be claimed."""
        if self.covers(name):
            return
        who = f"instance {iid!r}: " if iid else ""
        raise Forbidden(
            f"{who}domain {name!r} is not inside a zone this server serves custom domains "
            f"in ({self.describe()}; set with --dns-custom-zones)",
            field="domain",
        )
