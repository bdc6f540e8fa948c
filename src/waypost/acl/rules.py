"""Rule evaluation: which access a token's policies give to one named resource.

As Consul's: an exact rule (``service "web"``) beats every prefix rule; among prefix rules
the longest matching prefix wins (``service_prefix ""`` matches everything); rules for the
same resource and name from several policies merge with ``deny`` over ``write`` over
``read``; ``write`` includes ``read``. What no rule covers falls to the default policy,
but the ``acl`` resource (managing ACLs themselves), which only a rule or the
``global-management`` policy grants.
"""

from __future__ import annotations

from collections.abc import Iterable

from waypost.errors import Forbidden
from waypost.model import (
    ANONYMOUS,
    MANAGEMENT_POLICY,
    AclRule,
    Instance,
    Kind,
)

DENY, READ, WRITE = 0, 1, 2
LEVELS = {"deny": DENY, "read": READ, "write": WRITE}
WORDS = {DENY: "deny", READ: "read", WRITE: "write"}
# Resources named by an exact rule and a prefix rule. ``domain`` (an instance's custom DNS
# name) has a suffix rule instead, matched label by label: ``domain_suffix "corp.internal"``
# covers ``corp.internal`` and ``web.corp.internal``, not ``xcorp.internal``.
FAMILIES = ("service", "node", "key", "network", "domain")
# The families that say what a token may read (a domain is read through its service).
READ_FAMILIES = ("service", "node", "key", "network")
PREFIX_RULES = {f"{f}_prefix": f for f in FAMILIES if f != "domain"} | {"domain_suffix": "domain"}
# Resources with one rule each (their rules' names are not used).
SINGLES = ("agent", "operator", "acl")
# (level, why): why names the rule that decided, for a refusal's message.
Verdict = tuple[int, str]
MAX_MEMO = 4096


def management_rules() -> list[AclRule]:
    """The rules of the ``global-management`` policy: write on everything."""
    rules = [AclRule(resource=r, name="", access="write") for r in PREFIX_RULES]  # type: ignore[arg-type]
    rules += [AclRule(resource=s, access="write") for s in SINGLES]  # type: ignore[arg-type]
    return rules


def _merge(old: Verdict | None, new: Verdict) -> Verdict:
    """Rules for the same resource and name: deny over write over read."""
    if old is None:
        return new
    if old[0] == DENY or (new[0] != DENY and old[0] >= new[0]):
        return old
    return new


def domain_key(name: str) -> str:
    """A DNS name as the ``domain`` family matches it: labels reversed, each followed by a
    dot, so that a string prefix is a zone (``web.corp.internal`` -> ``internal.corp.web.``)."""
    labels = [lab for lab in name.strip().rstrip(".").lower().split(".") if lab]
    return "".join(f"{lab}." for lab in reversed(labels))


def _describe(rule: AclRule, policy: str) -> str:
    if rule.resource in SINGLES:
        return f'{rule.resource} "{rule.access}" in policy "{policy}"'
    return f'{rule.resource} "{rule.name}" {rule.access} in policy "{policy}"'


class Authorizer:
    """What one token may do: built once per token and ACL revision, asked per request.

    ``default`` is the level of what no rule covers: WRITE (default policy allow), DENY
    (deny), or READ (allow with the server's single ``--token``: reads open, writes need
    the token)."""

    def __init__(
        self,
        accessor: str,
        rules: Iterable[tuple[AclRule, str]],
        *,
        default: int,
        default_why: str,
        management: bool = False,
    ) -> None:
        self.accessor = accessor
        self.management = management
        self._default: Verdict = (WRITE if management else default, default_why)
        self._exact: dict[str, dict[str, Verdict]] = {f: {} for f in FAMILIES}
        prefixes: dict[str, dict[str, Verdict]] = {f: {} for f in FAMILIES}
        self._single: dict[str, Verdict] = {}
        for rule, policy in rules:
            verdict = (LEVELS[rule.access], _describe(rule, policy))
            res = rule.resource
            if res in SINGLES:
                self._single[res] = _merge(self._single.get(res), verdict)
            elif res in PREFIX_RULES:
                family = PREFIX_RULES[res]
                name = domain_key(rule.name) if family == "domain" else rule.name
                fam = prefixes[family]
                fam[name] = _merge(fam.get(name), verdict)
            else:
                name = domain_key(rule.name) if res == "domain" else rule.name
                fam = self._exact[res]
                fam[name] = _merge(fam.get(name), verdict)
        # Longest prefix first: the first that matches decides.
        self._prefixes = {
            f: sorted(p.items(), key=lambda kv: -len(kv[0])) for f, p in prefixes.items()
        }
        self._memo: dict[tuple[str, str], Verdict] = {}
        self.reads_all = {f: self._all(f, READ) for f in READ_FAMILIES}
        self.writes_all = {f: self._all(f, WRITE) for f in FAMILIES}
        self.sees_everything = all(self.reads_all.values())
        self.may_write_something = (
            management
            or default == WRITE
            or any(
                v[0] == WRITE
                for v in [
                    *self._single.values(),
                    *(v for f in FAMILIES for v in self._exact[f].values()),
                    *(v for f in FAMILIES for _, v in self._prefixes[f]),
                ]
            )
        )

    def _all(self, family: str, level: int) -> bool:
        """Whether every name of ``family`` gets at least ``level``."""
        if self.management:
            return True
        exact = self._exact[family].values()
        prefixes = self._prefixes[family]
        if any(v[0] < level for v in exact) or any(v[0] < level for _, v in prefixes):
            return False
        catch_all = next((v for p, v in prefixes if p == ""), None)
        base = catch_all if catch_all is not None else self._default
        return base[0] >= level

    def verdict(self, resource: str, name: str = "") -> Verdict:
        """The level ``resource`` ``name`` gets, and the rule (or default) that says so."""
        if self.management:
            return (WRITE, f'policy "{MANAGEMENT_POLICY}"')
        if resource in SINGLES:
            got = self._single.get(resource)
            if got is not None:
                return got
            if resource == "acl":
                return (DENY, "no acl rule (ACLs are managed only with an acl rule)")
            return self._default
        if resource == "domain":
            name = domain_key(name)
        memo_key = (resource, name)
        got = self._memo.get(memo_key)
        if got is not None:
            return got
        got = self._exact[resource].get(name)
        if got is None:
            for prefix, verdict in self._prefixes[resource]:
                if name.startswith(prefix):
                    got = verdict
                    break
            else:
                got = self._default
        if len(self._memo) >= MAX_MEMO:
            self._memo.clear()
        self._memo[memo_key] = got
        return got

    def can(self, level: int, resource: str, name: str = "") -> bool:
        return self.verdict(resource, name)[0] >= level

    def require(self, level: int, resource: str, name: str = "") -> None:
        """Forbidden, naming the rule that refused, unless ``level`` is granted."""
        got, why = self.verdict(resource, name)
        if got < level:
            target = resource if resource in SINGLES else f'{resource} "{name}"'
            raise Forbidden(
                f"Permission denied: token {self.accessor} may not {WORDS[level]} {target} "
                f"(refused by {why})",
                field="token",
            )

    # instances: a service is a service; an actor network (and its actors) is a network

    @staticmethod
    def instance_resource(inst: Instance) -> tuple[str, str]:
        """The resource an instance is read by: ``service`` by its service name; for
        actor networks ``network`` by the network (an actor: its meta ``network``)."""
        if inst.kind is Kind.SERVICE:
            return "service", inst.service
        if inst.kind is Kind.ACTOR:
            return "network", inst.meta.get("network", inst.service)
        return "network", inst.service

    @staticmethod
    def instance_writes(inst: Instance) -> tuple[tuple[str, str], ...]:
        """Every resource a write of the instance touches: its service name whatever its
        kind (an actor or a network entry is served under that name, so a network grant
        alone must not put one into another team's service) and, for actor networks, the
        network."""
        out: tuple[tuple[str, str], ...] = (("service", inst.service),)
        if inst.kind is not Kind.SERVICE:
            out += (Authorizer.instance_resource(inst),)
        if inst.domain:
            out += (("domain", inst.domain),)
        return out

    def reads_instances(self) -> bool:
        return self.reads_all["service"] and self.reads_all["network"]

    def writes_instances(self) -> bool:
        return all(self.writes_all[f] for f in ("service", "network", "domain"))

    def can_read_instance(self, inst: Instance) -> bool:
        if inst.kind is Kind.SERVICE:
            return self.can(READ, "service", inst.service)
        return self.can(READ, *self.instance_resource(inst))

    def require_instance(self, level: int, inst: Instance) -> None:
        for resource, name in self.instance_writes(inst):
            self.require(level, resource, name)

    def can_read_service_name(self, name: str) -> bool:
        """A service listing's name: readable as a service or as a network."""
        return self.can(READ, "service", name) or self.can(READ, "network", name)

    @property
    def anonymous(self) -> bool:
        return self.accessor == ANONYMOUS
