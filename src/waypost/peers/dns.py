"""DNS SRV and TXT records: ``srv:_waypost._tcp.example.com``.

SRV records name the servers (ordered by priority, then weight, as RFC 2782 says); each
target's address is looked up with the same resolver and the server at that address and
port is asked for its registry entry. TXT records at the same name may list nodes too,
one per record, as ``key=value`` strings (``node_id=srv-1``, ``api=http://10.0.0.5:8500``),
as DNS-SD does. The system resolver is used unless the source was given one
(``--dns-resolver IP:PORT``)."""

from __future__ import annotations

import asyncio
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from .api import fetch_entry
from .base import Context, SourceError


def _resolver(ctx: Context) -> dns.asyncresolver.Resolver:
    if ctx.dns_resolver is None:
        r = dns.asyncresolver.Resolver()
    else:
        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers = [ctx.dns_resolver[0]]
        r.port = ctx.dns_resolver[1]
    r.lifetime = ctx.timeout_s
    return r


def txt_entry(strings: list[str]) -> dict[str, Any] | None:
    """A node from one TXT record's ``key=value`` strings (None: it names none)."""
    fields: dict[str, Any] = {}
    for s in strings:
        key, sep, value = s.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    if "api" not in fields:
        return None
    fields.setdefault("node_id", fields["api"].split("://", 1)[-1])
    return fields


class SrvSource:
    def __init__(self, name: str) -> None:
        self.qname = name.rstrip(".") + "."
        self.name = f"srv:{name}"

    async def _addresses(self, r: dns.asyncresolver.Resolver, target: str) -> list[str]:
        out: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                ans = await r.resolve(target, rdtype)
            except dns.exception.DNSException:  # no such record, or refused: try the next
                continue
            out += [rd.to_text() for rd in ans]
        return out

    async def discover(self, ctx: Context) -> list[dict[str, Any]]:
        r = _resolver(ctx)
        found: list[dict[str, Any]] = []
        errors: list[str] = []
        try:
            srv = await r.resolve(self.qname, "SRV")
            records = sorted(srv, key=lambda rd: (rd.priority, -rd.weight))
            apis: list[str] = []
            for rd in records:
                target = rd.target.to_text()
                addrs = await self._addresses(r, target)
                host = addrs[0] if addrs else target.rstrip(".")
                shown = f"[{host}]" if ":" in host else host
                apis.append(f"http://{shown}:{rd.port}")
            found += await asyncio.gather(*(fetch_entry(ctx, a) for a in apis))
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            pass
        except dns.exception.DNSException as exc:
            errors.append(f"SRV {self.qname}: {exc}")
        try:
            txt = await r.resolve(self.qname, "TXT")
            for rd in txt:
                entry = txt_entry([b.decode("utf-8", "replace") for b in rd.strings])
                if entry is not None:
                    found.append(entry)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            pass
        except dns.exception.DNSException as exc:
            errors.append(f"TXT {self.qname}: {exc}")
        if not found and errors:
            raise SourceError("; ".join(errors))
        return found
