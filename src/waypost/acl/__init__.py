"""ACLs: policies of rules, tokens that hold policies, and the authorizer a request's
token resolves to (pure: no I/O; the API asks, this package answers)."""

from __future__ import annotations

from waypost.acl.rules import DENY, READ, WRITE, Authorizer, management_rules
from waypost.acl.tokens import AclState, hash_secret, new_accessor, new_secret

__all__ = [
    "DENY",
    "READ",
    "WRITE",
    "AclState",
    "Authorizer",
    "hash_secret",
    "management_rules",
    "new_accessor",
    "new_secret",
]
