"""Rule evaluation (``acl/rules.py``) and token resolution (``acl/tokens.py``): Consul's
precedence, the default policies, and secrets that resolve in the same time whatever is
wrong with them."""

from __future__ import annotations

import contextlib
import statistics
import time
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waypost.acl import DENY, READ, WRITE, AclState, Authorizer, hash_secret
from waypost.catalog import Catalog
from waypost.errors import Forbidden, Unauthorized
from waypost.model import AclPolicy, AclRule, AclToken, Event, Instance, Kind


def authz(*rules: tuple[str, str, str], default: int = DENY, policy: str = "p") -> Authorizer:
    return Authorizer(
        "acc",
        [(AclRule(resource=r, name=n, access=a), policy) for r, n, a in rules],  # type: ignore[arg-type]
        default=default,
        default_why="default policy",
    )


def test_an_exact_rule_beats_every_prefix_and_the_longest_prefix_wins() -> None:
    a = authz(
        ("service_prefix", "", "read"),
        ("service_prefix", "web-", "write"),
        ("service_prefix", "web-admin", "deny"),
        ("service", "web-admin-ui", "read"),
    )
    assert a.verdict("service", "db")[0] == READ
    assert a.verdict("service", "web-api")[0] == WRITE
    assert a.verdict("service", "web-admin-x")[0] == DENY
    assert a.verdict("service", "web-admin-ui")[0] == READ
    assert not a.reads_all["service"]
    assert a.reads_all["node"] is False  # default deny, no node rule


def test_rules_from_several_policies_merge_deny_over_write_over_read() -> None:
    rules = [
        (AclRule(resource="service", name="db", access="read"), "a"),
        (AclRule(resource="service", name="db", access="write"), "b"),
        (AclRule(resource="key_prefix", name="app/", access="write"), "a"),
        (AclRule(resource="key_prefix", name="app/", access="deny"), "c"),
    ]
    a = Authorizer("acc", rules, default=WRITE, default_why="default policy allow")
    assert a.verdict("service", "db") == (WRITE, 'service "db" write in policy "b"')
    assert a.verdict("key", "app/x")[0] == DENY
    with pytest.raises(Forbidden) as exc:
        a.require(READ, "key", "app/x")
    assert 'key_prefix "app/" deny in policy "c"' in exc.value.message


def test_acl_management_needs_a_rule_even_when_the_default_allows() -> None:
    a = authz(default=WRITE)
    assert a.can(WRITE, "service", "anything")
    assert a.can(WRITE, "operator")
    assert not a.can(READ, "acl")
    assert authz(("acl", "", "read"), default=WRITE).can(READ, "acl")


def test_instances_of_actor_networks_fall_under_network_rules() -> None:
    a = authz(("network", "lab", "write"))
    net = Instance(id="lab-1", service="lab", address="10.0.0.1", port=1, kind=Kind.NETWORK)
    actor = Instance(id="echo-1", service="echo", address="10.0.0.1", port=1, kind=Kind.ACTOR,
                     meta={"network": "lab"})  # fmt: skip
    other = Instance(id="echo-2", service="echo", address="10.0.0.1", port=1, kind=Kind.ACTOR,
                     meta={"network": "prod"})  # fmt: skip
    assert a.can_read_instance(net)
    assert a.can_read_instance(actor)
    assert not a.can_read_instance(other)
    svc = Instance(id="lab-2", service="lab", address="10.0.0.1", port=1)
    assert not a.can_read_instance(svc)  # a service called "lab" is a service


NAMES = st.text(alphabet="ab-", max_size=4)
RULES = st.lists(
    st.tuples(
        st.sampled_from(["service", "service_prefix", "node", "node_prefix"]),
        NAMES,
        st.sampled_from(["read", "write", "deny"]),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(RULES, st.sampled_from([DENY, READ, WRITE]), st.lists(NAMES, min_size=1, max_size=10))
def test_verdicts_agree_with_the_all_names_summaries_and_deny_only_takes_away(
    rules: list[tuple[str, str, str]], default: int, names: list[str]
) -> None:
    a = authz(*rules, default=default)
    for family in ("service", "node"):
        for name in names:
            level = a.verdict(family, name)[0]
            if a.reads_all[family]:
                assert level >= READ
            if a.writes_all[family]:
                assert level == WRITE
            assert a.can(WRITE, family, name) <= a.can(READ, family, name)
            # A deny on exactly this name always wins; a deny elsewhere changes nothing here.
            denied = authz(*rules, (family, name, "deny"), default=default)
            assert denied.verdict(family, name)[0] == DENY
            other = authz(*rules, (family, name + "zz", "deny"), default=default)
            assert other.verdict(family, name)[0] == level


def _state(
    *tokens: AclToken, policies: tuple[AclPolicy, ...] = (), now: float = 1000.0
) -> AclState:
    cat = Catalog()
    events = [Event(revision=1, type="put", entry=p, index=n) for n, p in enumerate(policies)]
    events += [
        Event(revision=1, type="put", entry=t, index=len(policies) + n)
        for n, t in enumerate(tokens)
    ]
    cat.apply(events, 1)
    return AclState(cat, default_policy="deny", clock=lambda: now)


def test_secrets_resolve_to_their_tokens_and_nothing_else_does() -> None:
    secret = str(uuid.uuid4())
    accessor = str(uuid.uuid4())
    policy = AclPolicy(name="web", rules=[AclRule(resource="service", name="web", access="write")])
    token = AclToken(accessor=accessor, secret_hash=hash_secret(secret), policies=["web"])
    expired = AclToken(accessor=str(uuid.uuid4()), secret_hash=hash_secret("old-secret-123"),
                       expires_at=999.0)  # fmt: skip
    state = _state(token, expired, policies=(policy,))
    assert state.resolve(secret).can(WRITE, "service", "web")
    for wrong in (accessor, secret.upper(), secret[:-1], "old-secret-123", "", "x" * 300, "a\nb"):
        with pytest.raises(Unauthorized):
            state.resolve(wrong)
    anon = state.anonymous()
    assert anon.anonymous
    assert not anon.can(READ, "service", "web")


def test_a_wrong_accessor_and_a_wrong_secret_take_the_same_time() -> None:
    """Secrets are hashed, then looked up: nothing about how close a guess is shows."""
    secrets = [str(uuid.uuid4()) for _ in range(50)]
    tokens = [AclToken(accessor=str(uuid.uuid4()), secret_hash=hash_secret(s)) for s in secrets]
    state = _state(*tokens)
    accessors = [t.accessor for t in tokens]
    near = [s[:-1] + ("0" if s[-1] != "0" else "1") for s in secrets]  # one character off

    def cost(values: list[str]) -> float:
        start = time.perf_counter()
        for v in values:
            with contextlib.suppress(Unauthorized):
                state.resolve(v)
        return time.perf_counter() - start

    samples: dict[str, list[float]] = {"accessor": [], "near": [], "random": []}
    for _ in range(200):  # interleaved, so drift in the machine's speed hits all alike
        samples["accessor"].append(cost(accessors))
        samples["near"].append(cost(near))
        samples["random"].append(cost([str(uuid.uuid4()) for _ in range(50)]))
    medians = {k: statistics.median(v) for k, v in samples.items()}
    base = medians["accessor"]
    for kind, value in medians.items():
        assert 0.75 < value / base < 1.33, (kind, medians)


LABEL = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?\Z")
NAME = st.lists(LABEL, min_size=1, max_size=4).map(".".join)


@given(zone=NAME, name=NAME, upper=st.booleans(), dot=st.booleans())
def test_a_domain_suffix_rule_covers_its_zone_label_by_label(
    zone: str, name: str, upper: bool, dot: bool
) -> None:
    """``domain_suffix "Z"`` covers Z and every name below it, whatever the case or a
    final dot, and nothing that merely ends in the same characters."""
    a = authz(("domain_suffix", zone, "write"))
    asked = (name.upper() if upper else name) + ("." if dot else "")
    below = name == zone or name.endswith("." + zone)
    assert a.can(WRITE, "domain", asked) is below


def test_an_instances_domain_is_part_of_what_its_write_touches() -> None:
    inst = Instance(id="w1", service="web", address="10.0.0.1", port=80, domain="db.internal")
    a = authz(("service", "web", "write"), ("domain", "web.internal", "write"))
    with pytest.raises(Forbidden, match=r'domain "db\.internal"'):
        a.require_instance(WRITE, inst)
    a.require_instance(WRITE, Instance(id="w1", service="web", address="10.0.0.1", port=80,
                                       domain="WEB.internal."))  # fmt: skip
    actor = Instance(id="a1", service="db", address="10.0.0.1", port=80, kind=Kind.ACTOR,
                     meta={"network": "webnet"})  # fmt: skip
    with pytest.raises(Forbidden, match='service "db"'):
        authz(("network", "webnet", "write")).require_instance(WRITE, actor)
