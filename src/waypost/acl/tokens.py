"""Tokens: from a presented secret (or a client certificate's identity) to an
``Authorizer``, against the ACL entries the catalog holds.

Secrets are stored only as their SHA-256 (a secret is 122 random bits: a fast hash is
enough, as for API keys). A presented secret is hashed and looked up; the lookup costs the
same whatever the secret is (an accessor presented as a secret is just another unknown
secret), and the stored hash is compared in constant time. The index is rebuilt when an
ACL entry changes (the catalog's revision of the two ACL kinds), so a revoked token is
refused on the very next request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Callable

from waypost.acl.rules import DENY, READ, WRITE, Authorizer, management_rules
from waypost.catalog import Catalog
from waypost.errors import Unauthorized
from waypost.model import ANONYMOUS, MANAGEMENT_POLICY, AclPolicy, AclRule, AclToken

MAX_SECRET_LEN = 256
DEFAULT_POLICIES = ("allow", "deny")
LEGACY_ACCESSOR = "server-token"
MAX_KNOWN_SECRETS = 10_000


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_secret() -> str:
    """A token's secret: a random UUID (as Consul's SecretID)."""
    return str(uuid.UUID(bytes=secrets.token_bytes(16), version=4))


def new_accessor() -> str:
    return str(uuid.uuid4())


class AclState:
    """The ACL view of one server: tokens by secret hash and by identity, an authorizer
    per token, the anonymous one; all rebuilt after an ACL entry changes."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        default_policy: str = "allow",
        legacy_token: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if default_policy not in DEFAULT_POLICIES:
            raise ValueError(f"default policy: {default_policy!r} is not allow or deny")
        self.catalog = catalog
        self.default_policy = default_policy
        self._legacy_hash = hash_secret(legacy_token) if legacy_token else ""
        self._clock = clock
        if default_policy == "deny":
            self._default, self._why = DENY, "default policy deny"
        elif legacy_token:
            # As before ACLs: reads open, writes only with the server's token.
            self._default, self._why = READ, "the server's token (writes need it)"
        else:
            self._default, self._why = WRITE, "default policy allow"
        self._seen = (-1, -1)
        self._by_hash: dict[str, AclToken] = {}
        self._by_identity: dict[str, AclToken] = {}
        self._authz: dict[str, Authorizer] = {}
        # Secrets already resolved to a live token (cleared with every ACL change): a
        # known secret skips the hash. Unknown ones never land here, so every wrong
        # secret, whatever is wrong with it, takes the same path.
        self._known: dict[str, AclToken] = {}
        self._management = Authorizer(
            LEGACY_ACCESSOR,
            [(r, MANAGEMENT_POLICY) for r in management_rules()],
            default=WRITE,
            default_why="",
            management=True,
        )
        self._anonymous = self._build(ANONYMOUS, [])

    @property
    def legacy(self) -> bool:
        """Whether writes need the server's single token (``--token``) when ACLs allow."""
        return bool(self._legacy_hash) and self.default_policy == "allow"

    def _refresh(self) -> None:
        cat = self.catalog
        seen = (cat.kind_revision("acl_policy"), cat.kind_revision("acl_token"))
        if seen == self._seen:
            return
        self._seen = seen
        self._by_hash = {}
        self._by_identity = {}
        self._authz = {}
        self._known = {}
        anonymous_policies: list[str] = []
        for entry in cat.entries("acl_token"):
            if not isinstance(entry, AclToken):
                continue
            if entry.accessor == ANONYMOUS:
                anonymous_policies = entry.policies
                continue
            if entry.secret_hash:
                self._by_hash[entry.secret_hash] = entry
            if entry.identity:
                self._by_identity[entry.identity] = entry
        self._anonymous = self._build(ANONYMOUS, anonymous_policies)

    def _build(self, accessor: str, policy_names: list[str]) -> Authorizer:
        rules: list[tuple[AclRule, str]] = []
        management = False
        for name in policy_names:
            if name == MANAGEMENT_POLICY:
                management = True
            policy = self.catalog.entry("acl_policy", name)
            if isinstance(policy, AclPolicy):  # a deleted policy grants nothing
                rules.extend((rule, name) for rule in policy.rules)
        return Authorizer(
            accessor, rules, default=self._default, default_why=self._why, management=management
        )

    def _authorizer(self, token: AclToken) -> Authorizer:
        got = self._authz.get(token.accessor)
        if got is None:
            got = self._authz[token.accessor] = self._build(token.accessor, token.policies)
        return got

    def anonymous(self) -> Authorizer:
        self._refresh()
        return self._anonymous

    def resolve(self, secret: str) -> Authorizer:
        """The authorizer of a presented secret; Unauthorized for one that names no live
        token (the message is the same whatever was wrong)."""
        self._refresh()
        known = self._known.get(secret)
        if known is not None and (known.expires_at is None or known.expires_at > self._clock()):
            return self._authorizer(known)
        if not secret or len(secret) > MAX_SECRET_LEN or not secret.isprintable():
            raise Unauthorized("ACL token not found (unknown, malformed, revoked or expired)")
        digest = hash_secret(secret)
        token = self._by_hash.get(digest)
        legacy = self._legacy_hash
        if legacy and hmac.compare_digest(digest, legacy):
            return self._management
        if token is None or not hmac.compare_digest(token.secret_hash, digest):
            raise Unauthorized("ACL token not found (unknown, malformed, revoked or expired)")
        if token.expires_at is not None and token.expires_at <= self._clock():
            raise Unauthorized("ACL token not found (unknown, malformed, revoked or expired)")
        if len(self._known) >= MAX_KNOWN_SECRETS:
            self._known.clear()
        self._known[secret] = token
        return self._authorizer(token)

    def for_identity(self, identity: str) -> Authorizer | None:
        """The authorizer of the token a client certificate's identity stands for."""
        self._refresh()
        token = self._by_identity.get(identity)
        if token is None:
            return None
        if token.expires_at is not None and token.expires_at <= self._clock():
            return None
        return self._authorizer(token)

    def alive(self, authz: Authorizer) -> bool:
        """Whether the token ``authz`` was built for still stands (an open event stream
        ends when not); the authorizer may be a new one for the same token."""
        if authz.accessor in (ANONYMOUS, LEGACY_ACCESSOR):
            return True
        self._refresh()
        token = self.catalog.entry("acl_token", authz.accessor)
        if not isinstance(token, AclToken):
            return False
        return token.expires_at is None or token.expires_at > self._clock()

    def current(self, authz: Authorizer) -> Authorizer:
        """The authorizer for ``authz``'s token as of now (policies may have changed)."""
        self._refresh()
        if authz.accessor == ANONYMOUS:
            return self._anonymous
        token = self.catalog.entry("acl_token", authz.accessor)
        if isinstance(token, AclToken):
            return self._authorizer(token)
        return authz
