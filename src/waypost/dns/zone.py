"""What the DNS interface answers, from the catalog: names to records, no I/O.

Zone ``<domain>.`` (default ``waypost.``):

- ``<service>.service.<domain>``: A/AAAA of healthy instances (SRV too);
- ``<tag>.<service>.service.<domain>``: the same, with the tag;
- ``_<service>._<tag|tcp>.service.<domain>``: SRV (RFC 2782), targets ``<id>.instance.<domain>``
  with their A/AAAA in the additional section;
- ``<node>.node.<domain>``: the node's address;
- ``<id>.instance.<domain>``: A/AAAA, SRV, and TXT (``key=value`` of its meta);
- the apex: SOA and NS (``ns.<domain>``, which has the listener's address);
- PTR in ``in-addr.arpa``/``ip6.arpa`` for the addresses of registered instances;
- per-service custom domains (an instance with ``domain: web.local`` answers ``web.local``).

Healthy means passing (and warning with ``allow_warning``), not in maintenance. An
address that is a host name answers a CNAME. Unknown names under the zone are NXDOMAIN,
known names without records of the type NODATA, both with the SOA (RFC 2308: its TTL
is the negative TTL). Names outside our zones answer None: the server refuses them or
forwards them to a recursor.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV
import dns.reversename
import dns.rrset

from waypost.acl import READ, AclState, Authorizer
from waypost.catalog import Catalog, domain_key
from waypost.durations import parse_duration
from waypost.model import Instance, ServiceConfig, Status
from waypost.zones import CustomZones

IN = dns.rdataclass.IN
A, AAAA, SRV, TXT, PTR, CNAME, SOA, NS, ANY = (
    dns.rdatatype.A,
    dns.rdatatype.AAAA,
    dns.rdatatype.SRV,
    dns.rdatatype.TXT,
    dns.rdatatype.PTR,
    dns.rdatatype.CNAME,
    dns.rdatatype.SOA,
    dns.rdatatype.NS,
    dns.rdatatype.ANY,
)
REVERSE = (dns.name.from_text("in-addr.arpa."), dns.name.from_text("ip6.arpa."))
# How many weighted orders of a multi-record answer are kept; answers rotate through them.
SHUFFLES = 16


@dataclass(slots=True)
class Reply:
    """One answer before it is made wire bytes. ``scopes`` say what it depends on (a
    service, a node, an instance...) so a change drops exactly the answers it affects.
    ``orders`` > 1 asks for that many weighted shuffles of the answer section."""

    rcode: int = dns.rcode.NOERROR
    answer: list[dns.rrset.RRset] = field(default_factory=list)
    authority: list[dns.rrset.RRset] = field(default_factory=list)
    additional: list[dns.rrset.RRset] = field(default_factory=list)
    scopes: set[str] = field(default_factory=set)
    weights: list[int] = field(default_factory=list)


def weighted_order(weights: list[int], rng: random.Random) -> list[int]:
    """Indexes of ``weights`` in a weighted random order (Efraimidis-Spirakis): the first
    is index i with probability weight[i] / sum(weights)."""
    keys = [(rng.random() ** (1.0 / max(w, 1)), i) for i, w in enumerate(weights)]
    return [i for _, i in sorted(keys, reverse=True)]


def stratified_orders(weights: list[int], count: int, rng: random.Random) -> list[list[int]]:
    """``count`` weighted orders whose first elements follow the weights as closely as
    ``count`` allows (systematic sampling: order k starts with the instance covering the
    point (k + 0.5) / count of the cumulative weights); the rest of each is a weighted
    shuffle. Served in turn, the first answer follows the weights exactly, not by luck."""
    total = sum(max(w, 1) for w in weights)
    orders = []
    for k in range(count):
        point = (k + 0.5) / count * total
        acc = 0.0
        first = len(weights) - 1
        for i, w in enumerate(weights):
            acc += max(w, 1)
            if point < acc:
                first = i
                break
        rest = [i for i in range(len(weights)) if i != first]
        tail = weighted_order([weights[i] for i in rest], rng)
        orders.append([first, *(rest[j] for j in tail)])
    rng.shuffle(orders)
    return orders


def _is_ip(text: str) -> int:
    """4 or 6 for an IP literal, 0 for a host name."""
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return 0


class Zone:
    """Answers for one catalog; ``changed`` keeps its indexes in step."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        domain: str = "waypost",
        custom_zones: CustomZones | None = None,
        ttl_s: float = 5.0,
        allow_warning: bool = False,
        ns_addresses: Iterable[str] = ("127.0.0.1",),
        acl: AclState | None = None,
    ) -> None:
        self.catalog = catalog
        # Where instances' custom domains are answered (a name outside is forwarded).
        self.custom_zones = custom_zones or CustomZones(own=domain)
        # With ACLs: answer only what the anonymous token may read (None: everything).
        self.acl = acl
        self.origin = dns.name.from_text(domain.strip(".") + ".").canonicalize()
        self.ttl = max(int(ttl_s), 0)
        self.allow_warning = allow_warning
        self.ns_name = dns.name.from_text("ns", self.origin)
        self.ns_addresses = [a for a in ns_addresses if _is_ip(a)] or ["127.0.0.1"]
        self.serial = 1

    # --- changes -------------------------------------------------------------------------

    def instance_changed(self, iid: str, old: Instance | None, new: Instance | None) -> set[str]:
        """The scopes whose answers a change of instance ``iid`` from ``old`` to ``new``
        affects (the catalog keeps the indexes by address and domain)."""
        scopes = {f"instance:{iid}"}
        for seen in (old, new):
            if seen is None:
                continue
            scopes.add(f"service:{seen.service}")
            scopes.add(f"address:{seen.address.lower()}")
            if seen.node:
                scopes.add(f"node:{seen.node}")
            if seen.domain:
                scopes.add(f"domain:{domain_key(seen.domain)}")
        return scopes

    # --- helpers -------------------------------------------------------------------------

    def _viewer(self) -> Authorizer | None:
        """The anonymous token's authorizer when it may not read everything, else None."""
        if self.acl is None:
            return None
        authz = self.acl.anonymous()
        return None if authz.sees_everything else authz

    def _visible(self, insts: list[Instance]) -> list[Instance]:
        authz = self._viewer()
        if authz is None:
            return insts
        return [i for i in insts if authz.can_read_instance(i)]

    def healthy(self, inst: Instance) -> bool:
        if inst.maintenance:
            return False
        return inst.status is Status.PASSING or (
            self.allow_warning and inst.status is Status.WARNING
        )

    def service_ttl(self, service: str) -> int:
        config = self.catalog.entry("service_config", service)
        if isinstance(config, ServiceConfig) and isinstance(config.dns_ttl, str):
            return int(parse_duration(config.dns_ttl))
        return self.ttl

    def soa(self, owner: dns.name.Name | None = None) -> dns.rrset.RRset:
        owner = owner or self.origin
        rd = dns.rdtypes.ANY.SOA.SOA(
            IN,
            SOA,
            self.ns_name,
            dns.name.from_text("hostmaster", self.origin),
            self.serial,
            3600,
            600,
            86400,
            self.ttl,
        )
        return dns.rrset.from_rdata(owner, self.ttl, rd)

    def _negative(self, reply: Reply, rcode: int, owner: dns.name.Name | None = None) -> Reply:
        reply.rcode = rcode
        reply.answer.clear()
        reply.additional.clear()
        reply.authority = [self.soa(owner)]
        return reply

    @staticmethod
    def _address_rrsets(
        owner: dns.name.Name, insts: list[Instance], rdtype: int, ttl: int
    ) -> tuple[list[dns.rdata.Rdata], list[int], list[dns.name.Name]]:
        """The A or AAAA rdatas of ``insts`` (one per distinct address, the weights),
        and the host names of those whose address is a name."""
        rdatas: list[dns.rdata.Rdata] = []
        weights: list[int] = []
        names: list[dns.name.Name] = []
        seen: set[str] = set()
        for inst in insts:
            version = _is_ip(inst.address)
            if version == 0:
                names.append(dns.name.from_text(inst.address.rstrip(".") + "."))
                continue
            if inst.address in seen:
                continue
            if version == 4 and rdtype == A:
                rdatas.append(dns.rdtypes.IN.A.A(IN, A, inst.address))
            elif version == 6 and rdtype == AAAA:
                rdatas.append(dns.rdtypes.IN.AAAA.AAAA(IN, AAAA, inst.address))
            else:
                continue
            seen.add(inst.address)
            weights.append(inst.weight)
        return rdatas, weights, names

    def _addresses(
        self, reply: Reply, owner: dns.name.Name, insts: list[Instance], rdtype: int, ttl: int
    ) -> None:
        rdatas, weights, names = self._address_rrsets(owner, insts, rdtype, ttl)
        if rdatas:
            rrset = dns.rrset.RRset(owner, IN, dns.rdatatype.RdataType.make(rdtype))
            for rd in rdatas:
                rrset.add(rd, ttl)
            reply.answer.append(rrset)
            reply.weights = weights
        elif names and rdtype in (A, AAAA, CNAME):
            # Only host names: a CNAME to one of them (weighted), as Consul does.
            hosts = [i for i in insts if _is_ip(i.address) == 0]
            pick = weighted_order([i.weight for i in hosts], random.Random())[0]
            target = dns.name.from_text(hosts[pick].address.rstrip(".") + ".")
            cname = dns.rdtypes.ANY.CNAME.CNAME(IN, CNAME, target)
            reply.answer.append(dns.rrset.from_rdata(owner, ttl, cname))

    def _srv(self, reply: Reply, owner: dns.name.Name, insts: list[Instance], ttl: int) -> None:
        rrset = dns.rrset.RRset(owner, IN, SRV)
        extra: list[dns.rrset.RRset] = []
        for inst in insts:
            if _is_ip(inst.address):
                target = dns.name.from_text(inst.id, dns.name.from_text("instance", self.origin))
                version = _is_ip(inst.address)
                rtype = A if version == 4 else AAAA
                cls = dns.rdtypes.IN.A.A if version == 4 else dns.rdtypes.IN.AAAA.AAAA
                extra.append(dns.rrset.from_rdata(target, ttl, cls(IN, rtype, inst.address)))
            else:
                target = dns.name.from_text(inst.address.rstrip(".") + ".")
            rrset.add(dns.rdtypes.IN.SRV.SRV(IN, SRV, 1, inst.weight, inst.port, target), ttl)
        if rrset:
            reply.answer.append(rrset)
            reply.additional.extend(extra)

    # --- resolution ----------------------------------------------------------------------

    def resolve(self, name: dns.name.Name, rdtype: int) -> Reply | None:
        """The reply for ``name`` (lower case, absolute) and ``rdtype``; None when the
        name is in none of our zones."""
        if name.is_subdomain(self.origin):
            return self._in_zone(name, rdtype)
        if name.is_subdomain(REVERSE[0]) or name.is_subdomain(REVERSE[1]):
            return self._reverse(name, rdtype)
        text = name.to_text()
        ids = self.catalog.with_domain(text)
        if ids and self.custom_zones.covers(text):
            return self._custom(name, ids, rdtype)
        return None

    def _in_zone(self, name: dns.name.Name, rdtype: int) -> Reply:
        # Names no change can alter (the apex, names of no known form) carry no scope:
        # a scope never invalidated would only collect keys.
        reply = Reply()
        labels = [lab.decode("ascii", "replace") for lab in name.relativize(self.origin).labels]
        if name == self.origin:
            if rdtype in (SOA, ANY):
                reply.answer.append(self.soa())
            if rdtype in (NS, ANY):
                ns = dns.rdtypes.ANY.NS.NS(IN, NS, self.ns_name)
                reply.answer.append(dns.rrset.from_rdata(self.origin, self.ttl, ns))
                self._ns_glue(reply.additional)
            if not reply.answer:
                return self._negative(reply, dns.rcode.NOERROR)
            return reply
        if name == self.ns_name:
            glue: list[dns.rrset.RRset] = []
            self._ns_glue(glue, only=rdtype)
            reply.answer = glue
            return reply if glue else self._negative(reply, dns.rcode.NOERROR)
        kind = labels[-1] if labels else ""
        if kind == "service" and 2 <= len(labels) <= 3:
            return self._service(name, labels, rdtype, reply)
        if kind == "node" and len(labels) == 2:
            return self._node(name, labels[0], rdtype, reply)
        if kind == "instance" and len(labels) == 2:
            return self._instance(name, labels[0], rdtype, reply)
        if kind in ("service", "node", "instance") and len(labels) == 1:
            return self._negative(reply, dns.rcode.NOERROR)  # an empty non-terminal
        return self._negative(reply, dns.rcode.NXDOMAIN)

    def _ns_glue(self, out: list[dns.rrset.RRset], only: int = ANY) -> None:
        for address in self.ns_addresses:
            version = _is_ip(address)
            if version == 4 and only in (A, ANY):
                out.append(
                    dns.rrset.from_rdata(self.ns_name, self.ttl, dns.rdtypes.IN.A.A(IN, A, address))
                )
            elif version == 6 and only in (AAAA, ANY):
                rd = dns.rdtypes.IN.AAAA.AAAA(IN, AAAA, address)
                out.append(dns.rrset.from_rdata(self.ns_name, self.ttl, rd))

    def _service(self, name: dns.name.Name, labels: list[str], rdtype: int, reply: Reply) -> Reply:
        tag: str | None = None
        srv_form = False
        if len(labels) == 3 and labels[0].startswith("_") and labels[1].startswith("_"):
            service, proto = labels[0][1:], labels[1][1:]
            tag = None if proto == "tcp" else proto
            srv_form = True
        elif len(labels) == 3:
            tag, service = labels[0], labels[1]
        else:
            service = labels[0]
        reply.scopes.add(f"service:{service}")
        members = self.catalog.service_instances(service)
        if not members:
            # Service names are case-insensitive in DNS: look for one spelled otherwise.
            members = self._service_any_case(service)
        if tag is not None:
            members = [i for i in members if any(t.lower() == tag for t in i.tags)]
        members = self._visible(members)
        if not members:
            return self._negative(reply, dns.rcode.NXDOMAIN)
        healthy = [i for i in members if self.healthy(i)]
        ttl = self.service_ttl(members[0].service)
        if srv_form or rdtype == SRV:
            if rdtype in (SRV, ANY):
                self._srv(reply, name, healthy, ttl)
        elif rdtype in (A, AAAA, CNAME, ANY):
            for t in (A, AAAA) if rdtype == ANY else (rdtype,):
                self._addresses(reply, name, healthy, t, ttl)
        if not reply.answer:
            return self._negative(reply, dns.rcode.NOERROR)
        return reply

    def _service_any_case(self, service: str) -> list[Instance]:
        for summary in self.catalog.services():
            if summary.name.lower() == service:
                return self.catalog.service_instances(summary.name)
        return []

    def _node(self, name: dns.name.Name, node_id: str, rdtype: int, reply: Reply) -> Reply:
        reply.scopes.add(f"node:{node_id}")
        node = self.catalog.node(node_id)
        if node is None:
            for candidate in self.catalog.nodes():
                if candidate.id.lower() == node_id:
                    node = candidate
                    break
        viewer = self._viewer()
        if node is None or (viewer is not None and not viewer.can(READ, "node", node.id)):
            return self._negative(reply, dns.rcode.NXDOMAIN)
        if node.address and rdtype in (A, AAAA, CNAME, ANY):
            fake = Instance(id="n", service="n", address=node.address, port=1)
            for t in (A, AAAA) if rdtype == ANY else (rdtype,):
                self._addresses(reply, name, [fake], t, self.ttl)
        if not reply.answer:
            return self._negative(reply, dns.rcode.NOERROR)
        return reply

    def _instance(self, name: dns.name.Name, iid: str, rdtype: int, reply: Reply) -> Reply:
        reply.scopes.add(f"instance:{iid}")
        # Names are not case-sensitive: an id with capitals is found by its lower case
        # (an index, not a scan: a flood of made-up names costs a lookup each).
        inst = self.catalog.folded(iid)
        if inst is None or not self._visible([inst]):
            return self._negative(reply, dns.rcode.NXDOMAIN)
        reply.scopes.add(f"service:{inst.service}")
        ttl = self.service_ttl(inst.service)
        if not self.healthy(inst):
            return self._negative(reply, dns.rcode.NOERROR)
        if rdtype in (A, AAAA, CNAME, ANY):
            for t in (A, AAAA) if rdtype == ANY else (rdtype,):
                self._addresses(reply, name, [inst], t, ttl)
        if rdtype in (SRV, ANY):
            self._srv(reply, name, [inst], ttl)
        if rdtype in (TXT, ANY) and inst.meta:
            rrset = dns.rrset.RRset(name, IN, TXT)
            for key, value in sorted(inst.meta.items()):
                text = f"{key}={value}".encode()
                chunks = [text[i : i + 255] for i in range(0, len(text), 255)] or [b""]
                rrset.add(dns.rdtypes.ANY.TXT.TXT(IN, TXT, chunks), ttl)
            reply.answer.append(rrset)
        if not reply.answer:
            return self._negative(reply, dns.rcode.NOERROR)
        return reply

    def _reverse(self, name: dns.name.Name, rdtype: int) -> Reply | None:
        try:
            address = dns.reversename.to_address(name)
        except (dns.exception.SyntaxError, ValueError):
            return None
        address = ipaddress.ip_address(address).compressed
        ids = self.catalog.at_address(address)
        viewer = self._viewer()
        if ids and viewer is not None:
            ids = {i for i in ids if (x := self.catalog.get(i)) and viewer.can_read_instance(x)}
        if not ids:
            return None
        reply = Reply(scopes={f"address:{address}"})
        if rdtype in (PTR, ANY):
            rrset = dns.rrset.RRset(name, IN, PTR)
            for iid in sorted(ids):
                target = dns.name.from_text(iid, dns.name.from_text("instance", self.origin))
                rrset.add(dns.rdtypes.ANY.PTR.PTR(IN, PTR, target), self.ttl)
            reply.answer.append(rrset)
            return reply
        return self._negative(reply, dns.rcode.NOERROR)

    def _custom(self, name: dns.name.Name, ids: set[str], rdtype: int) -> Reply:
        reply = Reply(scopes={f"domain:{domain_key(name.to_text())}"})
        insts = [i for i in (self.catalog.get(x) for x in sorted(ids)) if i is not None]
        insts = self._visible(insts)
        for inst in insts:
            reply.scopes.add(f"service:{inst.service}")
        healthy = [i for i in insts if self.healthy(i)]
        ttl = self.service_ttl(insts[0].service) if insts else self.ttl
        if rdtype in (A, AAAA, CNAME, ANY):
            for t in (A, AAAA) if rdtype == ANY else (rdtype,):
                self._addresses(reply, name, healthy, t, ttl)
        elif rdtype == SRV:
            self._srv(reply, name, healthy, ttl)
        if not reply.answer:
            return self._negative(reply, dns.rcode.NOERROR, owner=name)
        return reply
