"""ACLs at the HTTP edge: which token a request presents, what it may do, the
``/api/v1/acl/`` routes, write rate limits and watch caps per token, and the audit log.

A token is presented as ``Authorization: Bearer SECRET``, ``X-Waypost-Token``,
``X-Consul-Token``, or ``?token=`` on the Consul API and the event stream (a browser's
EventSource sends no headers). With none, a client certificate whose CN or SAN URI a
token names (mutual TLS) stands for that token; else the request is anonymous. While no
ACL was ever set up (default policy allow, no ``--token``, no policy or token stored),
tokens are not looked at, as before ACLs.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import OrderedDict

import msgspec
from aiohttp import web

from waypost.acl import READ, WRITE, AclState, Authorizer, hash_secret, new_accessor, new_secret
from waypost.acl.rules import management_rules
from waypost.api.browser import BrowserGuard
from waypost.durations import parse_duration
from waypost.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    TooManyRequests,
    Unauthorized,
    WaypostError,
)
from waypost.model import (
    ACCESSOR_PATTERN,
    ACL_NAME_PATTERN,
    ANONYMOUS,
    MANAGEMENT_POLICY,
    AclPolicy,
    AclToken,
    AclTokenRequest,
    AclTokenView,
    Instance,
    decode,
)
from waypost.registry import Registry

audit = logging.getLogger("waypost.audit")
_encode = msgspec.json.Encoder().encode

# The request's authorizer, resolved once (aiohttp 3.14's typed request storage).
AUTHZ = web.RequestKey("authz", Authorizer)
LEGACY_REFUSAL = "this server takes writes only with its token (Authorization: Bearer TOKEN)"
# Token buckets and watch counts kept for at most this many tokens (least recent out).
MAX_TRACKED_TOKENS = 10_000
MAX_EXPIRY_S = 366 * 24 * 3600.0


def presented_token(request: web.BaseRequest) -> str | None:
    """The secret a request presents, None for none (an empty header is none)."""
    headers = request.headers
    auth = headers.get("Authorization")
    if auth is not None:
        scheme, _, value = auth.partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            raise Unauthorized("Authorization: expected 'Bearer TOKEN'", field="Authorization")
        return value
    given = headers.get("X-Waypost-Token") or headers.get("X-Consul-Token")
    if given:
        return given.strip()
    raw = request.raw_path
    if "token=" in raw and raw.startswith(("/v1/", "/api/v1/events")):
        return request.query.get("token") or None
    return None


def peer_identities(request: web.BaseRequest) -> list[str]:
    """A verified client certificate's CN and SAN URIs (mutual TLS), else none."""
    transport = request.transport
    if transport is None:
        return []
    cert = transport.get_extra_info("peercert")
    if not cert:
        return []
    out: list[str] = []
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                out.append(str(value))
    out.extend(str(v) for k, v in cert.get("subjectAltName", ()) if k == "URI")
    return out


class _Bucket:
    __slots__ = ("level", "stamp")

    def __init__(self, level: float, stamp: float) -> None:
        self.level = level
        self.stamp = stamp


class Limits:
    """Per token: a token bucket on writes (``rate`` a second, bursts of ``rate``) and a
    cap on open watches (blocking queries and event streams). 0 turns either off."""

    def __init__(self, write_rate: float = 0.0, max_watches: int = 0) -> None:
        self.write_rate = write_rate
        self.max_watches = max_watches
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.watches: dict[str, int] = {}

    def write(self, accessor: str) -> None:
        rate = self.write_rate
        if rate <= 0:
            return
        now = time.monotonic()
        bucket = self._buckets.get(accessor)
        if bucket is None:
            bucket = self._buckets[accessor] = _Bucket(rate, now)
            if len(self._buckets) > MAX_TRACKED_TOKENS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(accessor)
            bucket.level = min(rate, bucket.level + (now - bucket.stamp) * rate)
            bucket.stamp = now
        if bucket.level < 1.0:
            wait = (1.0 - bucket.level) / rate
            raise TooManyRequests(
                f"token {accessor}: over its write rate ({rate:g}/s); retry in {wait:.2f}s",
                field="token",
                retry_after_s=wait,
            )
        bucket.level -= 1.0

    def open_watch(self, accessor: str) -> None:
        cap = self.max_watches
        count = self.watches.get(accessor, 0)
        if cap > 0 and count >= cap:
            raise TooManyRequests(
                f"token {accessor}: already holds {count} open watches (the limit is {cap})",
                field="token",
                retry_after_s=1.0,
            )
        self.watches[accessor] = count + 1

    def close_watch(self, accessor: str) -> None:
        count = self.watches.get(accessor, 0) - 1
        if count > 0:
            self.watches[accessor] = count
        else:
            self.watches.pop(accessor, None)


def hidden_id(authz: Authorizer, iid: str) -> Forbidden:
    """A registration under an id held by an instance the token may not read."""
    return Forbidden(
        f"Permission denied: token {authz.accessor} may not register under id {iid!r} "
        "(it is held by an instance this token may not write)",
        field="id",
    )


class AclGate:
    """The ACL checks every route makes, over one server's ``AclState``."""

    def __init__(
        self,
        registry: Registry,
        state: AclState,
        limits: Limits,
        browser: BrowserGuard | None = None,
    ) -> None:
        self.registry = registry
        self.state = state
        self.limits = limits
        # Writes only a web page would make (cross-origin, rebound names): refused.
        self.browser = browser or BrowserGuard(loopback=True)
        self._catalog = registry.catalog
        # Tokens matter from the start with a default deny or a server token; otherwise
        # once an ACL entry exists. Until then every request gets the open authorizer,
        # at the cost of two dict lookups (reads are served in ~30 us: this is on them).
        self._forced = state.default_policy == "deny" or state.legacy
        self._open = state.anonymous()

    # --- who is asking -------------------------------------------------------------------

    def active(self) -> bool:
        """Whether tokens matter: a default deny, a server token, or any ACL entry."""
        if self._forced:
            return True
        cat = self._catalog
        return bool(cat.kind_revision("acl_token") or cat.kind_revision("acl_policy"))

    def authz(self, request: web.BaseRequest) -> Authorizer:
        """The request's authorizer (Unauthorized for a token that names none)."""
        if not self.active():
            return self._open
        got = request.get(AUTHZ)
        if got is None:
            got = self._resolve(request)
            request[AUTHZ] = got
        return got

    def _resolve(self, request: web.BaseRequest) -> Authorizer:
        st = self.state
        try:
            secret = presented_token(request)
            if secret is not None:
                return st.resolve(secret)
        except Unauthorized as exc:
            self.refused(request, None, exc)
            raise
        for identity in peer_identities(request):
            found = st.for_identity(identity)
            if found is not None:
                return found
        return st.anonymous()

    def check_write(self, request: web.BaseRequest) -> Authorizer:
        """Before any write: not a web page's (``BrowserGuard``), the token resolves, a
        server token is present when one is set, and the token is within its write rate."""
        try:
            self.browser.check(request, native=not request.raw_path.startswith("/v1/"))
        except WaypostError as browser_refusal:
            self.refused(request, None, browser_refusal)
            raise
        authz = self.authz(request)
        if authz.anonymous and self.state.legacy:
            exc = Unauthorized(LEGACY_REFUSAL)
            self.refused(request, authz, exc)
            raise exc
        try:
            self.limits.write(self.limit_key(request, authz))
        except TooManyRequests as exc:
            self.refused(request, authz, exc)
            raise
        return authz

    @staticmethod
    def limit_key(request: web.BaseRequest, authz: Authorizer) -> str:
        """Whose write rate and open watches a request counts against: its token's; for
        requests without one, the anonymous token's at that client address (shared by
        every tokenless client, five held streams once locked the dashboard and every
        other anonymous reader out)."""
        if authz.anonymous:
            return f"{authz.accessor}@{request.remote or ''}"
        return authz.accessor

    def refused(
        self, request: web.BaseRequest, authz: Authorizer | None, exc: WaypostError
    ) -> None:
        """The audit line of a refused call: the accessor, never the secret."""
        who = authz.accessor if authz is not None else "(no token matched)"
        audit.warning(
            "refused %s %s token=%s from=%s: %s",
            request.method, request.path, who, request.remote, exc.message,
        )  # fmt: skip

    # --- what it may do ------------------------------------------------------------------

    def require(self, request: web.BaseRequest, level: int, resource: str, name: str = "") -> None:
        authz = self.authz(request)
        try:
            authz.require(level, resource, name)
        except Forbidden as exc:
            self.refused(request, authz, exc)
            raise

    def require_instance(self, request: web.BaseRequest, level: int, inst: Instance) -> None:
        for resource, name in Authorizer.instance_writes(inst):
            self.require(request, level, resource, name)

    def may_change_instance(
        self, request: web.BaseRequest, iid: str, *, taking: bool = False
    ) -> None:
        """A write to a registered instance: allowed if the token writes its service; an
        instance it may not read is answered as missing (its existence stays hidden).
        ``taking``: a registration under ``iid``, which succeeds for a missing id, so an
        id held by what the token may not read is refused without naming what holds it."""
        authz = self.authz(request)
        if authz.writes_instances():
            return
        inst = self.registry.catalog.get(iid)
        if inst is None:
            return  # the handler answers 404 (or registers it)
        if not authz.can_read_instance(inst):
            exc: WaypostError = (
                hidden_id(authz, iid)
                if taking
                else NotFound(f"instance {iid!r} is not registered", field="id")
            )
            self.refused(request, authz, exc)
            raise exc
        self.require_instance(request, WRITE, inst)

    # --- the /api/v1/acl routes ----------------------------------------------------------

    def _policy_body(self, data: bytes, name: str | None = None) -> AclPolicy:
        policy = decode(data, AclPolicy)
        if name is not None:
            if policy.name and policy.name != name:
                raise Conflict(
                    f"name: the body names {policy.name!r} but the path names {name!r}",
                    field="name",
                )
            policy = msgspec.structs.replace(policy, name=name)
        for n, rule in enumerate(policy.rules):
            if rule.resource in ("agent", "operator", "acl") and rule.name:
                raise InvalidInput(
                    f"rules[{n}].name: {rule.resource} rules take no name", field=f"rules[{n}].name"
                )
        return policy

    async def bootstrap(self, request: web.Request) -> web.Response:
        authz = self.authz(request)
        if self.registry.catalog.entry("acl_policy", MANAGEMENT_POLICY) is not None:
            exc = Forbidden("ACL bootstrap no longer allowed (it was done)", field="acl")
            self.refused(request, authz, exc)
            raise exc
        now = time.time()
        policy = AclPolicy(
            name=MANAGEMENT_POLICY,
            description="Builtin: write on everything",
            rules=management_rules(),
            created_at=now,
            updated_at=now,
        )
        secret = new_secret()
        token = AclToken(
            accessor=new_accessor(),
            secret_hash=hash_secret(secret),
            description="Bootstrap token",
            policies=[MANAGEMENT_POLICY],
            created_at=now,
            updated_at=now,
        )
        try:
            await self.registry.acl_bootstrap(policy, token)
        except Conflict:
            raise Forbidden("ACL bootstrap no longer allowed (it was done)", field="acl") from None
        audit.warning("acl bootstrap: management token %s created", token.accessor)
        return _json(_encode(_view(token, secret)))

    async def create_policy(self, request: web.Request) -> web.Response:
        self.require(request, WRITE, "acl")
        policy = self._policy_body(await _read(request))
        if not policy.name:
            raise InvalidInput("name: required", field="name")
        now = time.time()
        policy = msgspec.structs.replace(policy, created_at=now, updated_at=now)
        try:
            await self.registry.put_acl(policy, if_revision=0)
        except Conflict:
            raise Conflict(
                f"policy {policy.name!r} exists (PUT to change it)", field="name"
            ) from None
        self._changed(request, "created policy", policy.name)
        return _json(_encode(policy), status=200)

    async def update_policy(self, request: web.Request) -> web.Response:
        self.require(request, WRITE, "acl")
        name = _policy_name(request)
        if name == MANAGEMENT_POLICY:
            raise Forbidden(f"policy {name!r} is builtin and cannot change", field="name")
        old = self.registry.catalog.entry("acl_policy", name)
        if not isinstance(old, AclPolicy):
            raise NotFound(f"policy {name!r} does not exist", field="name")
        policy = self._policy_body(await _read(request), name)
        policy = msgspec.structs.replace(policy, created_at=old.created_at, updated_at=time.time())
        await self.registry.put_acl(policy)
        self._changed(request, "updated policy", name)
        return _json(_encode(policy))

    async def get_policy(self, request: web.Request) -> web.Response:
        self.require(request, READ, "acl")
        name = _policy_name(request)
        policy = self.registry.catalog.entry("acl_policy", name)
        if policy is None:
            raise NotFound(f"policy {name!r} does not exist", field="name")
        return _json(_encode(policy))

    async def list_policies(self, request: web.Request) -> web.Response:
        self.require(request, READ, "acl")
        return _json(_encode(self.registry.catalog.entries("acl_policy")))

    async def delete_policy(self, request: web.Request) -> web.Response:
        self.require(request, WRITE, "acl")
        name = _policy_name(request)
        if name == MANAGEMENT_POLICY:
            raise Forbidden(f"policy {name!r} is builtin and cannot be deleted", field="name")
        if self.registry.catalog.entry("acl_policy", name) is None:
            raise NotFound(f"policy {name!r} does not exist", field="name")
        index = await self.registry.delete_entry("acl_policy", name)
        self._changed(request, "deleted policy", name)
        return _json(_encode({"name": name, "index": index}))

    def _token_request(self, data: bytes) -> AclTokenRequest:
        req = decode(data, AclTokenRequest)
        cat = self.registry.catalog
        for n, name in enumerate(req.policies):
            if cat.entry("acl_policy", name) is None:
                raise InvalidInput(
                    f"policies[{n}]: no policy named {name!r}", field=f"policies[{n}]"
                )
        return req

    async def create_token(self, request: web.Request) -> web.Response:
        self.require(request, WRITE, "acl")
        req = self._token_request(await _read(request))
        now = time.time()
        ttl_s = 0.0
        if req.expires_in is not None:
            ttl_s = parse_duration(req.expires_in, field="expires_in")
            if not 0 < ttl_s <= MAX_EXPIRY_S:
                raise InvalidInput(
                    "expires_in: must be longer than zero and at most 366 days",
                    field="expires_in",
                )
        self._identity_free(req.identity, None)
        secret = new_secret()
        token = AclToken(
            accessor=new_accessor(),
            secret_hash=hash_secret(secret),
            description=req.description,
            policies=req.policies,
            identity=req.identity,
            expires_at=now + ttl_s if ttl_s else None,
            created_at=now,
            updated_at=now,
        )
        await self.registry.put_acl(token, if_revision=0, ttl_s=ttl_s)
        self._changed(request, "created token", token.accessor)
        return _json(_encode(_view(token, secret)))

    def _identity_free(self, identity: str, accessor: str | None) -> None:
        if not identity:
            return
        for entry in self.registry.catalog.entries("acl_token"):
            taken = isinstance(entry, AclToken) and entry.identity == identity
            if taken and isinstance(entry, AclToken) and entry.accessor != accessor:
                raise Conflict(
                    f"identity: {identity!r} already stands for token {entry.accessor}",
                    field="identity",
                )

    async def update_token(self, request: web.Request) -> web.Response:
        """Change a token's description, policies or identity (the secret and the expiry
        stay); ``anonymous`` takes policies too (what requests without a token may do)."""
        self.require(request, WRITE, "acl")
        accessor = _accessor(request)
        req = self._token_request(await _read(request))
        if req.expires_in is not None:
            raise InvalidInput("expires_in: only when the token is created", field="expires_in")
        old = self.registry.catalog.entry("acl_token", accessor)
        now = time.time()
        if accessor == ANONYMOUS:
            if req.identity:
                raise InvalidInput("identity: the anonymous token has none", field="identity")
            base = (
                old
                if isinstance(old, AclToken)
                else AclToken(accessor=ANONYMOUS, description="Anonymous token", created_at=now)
            )
        elif isinstance(old, AclToken):
            base = old
        else:
            raise NotFound(f"token {accessor} does not exist", field="accessor")
        self._identity_free(req.identity, accessor)
        token = msgspec.structs.replace(
            base,
            description=req.description or base.description,
            policies=req.policies,
            identity=req.identity,
            updated_at=now,
        )
        # A token with an expiry keeps its lease (a put without one would detach it).
        lease_ttl = 0.0
        if token.expires_at is not None:
            lease_ttl = token.expires_at - now
            if lease_ttl <= 0:
                raise NotFound(f"token {accessor} does not exist", field="accessor")
        await self.registry.put_acl(token, ttl_s=lease_ttl)
        self._changed(request, "updated token", accessor)
        return _json(_encode(_view(token, None)))

    async def get_token(self, request: web.Request) -> web.Response:
        self.require(request, READ, "acl")
        accessor = _accessor(request)
        token = self.registry.catalog.entry("acl_token", accessor)
        if not isinstance(token, AclToken):
            if accessor == ANONYMOUS:
                return _json(
                    _encode(AclTokenView(accessor=ANONYMOUS, description="Anonymous token"))
                )
            raise NotFound(f"token {accessor} does not exist", field="accessor")
        return _json(_encode(_view(token, None)))

    async def self_token(self, request: web.Request) -> web.Response:
        """The token the request presents (any token may read itself)."""
        authz = self.authz(request)
        token = self.registry.catalog.entry("acl_token", authz.accessor)
        if isinstance(token, AclToken):
            return _json(_encode(_view(token, None)))
        return _json(_encode(AclTokenView(accessor=authz.accessor)))

    async def list_tokens(self, request: web.Request) -> web.Response:
        self.require(request, READ, "acl")
        views = [_view(t, None) for t in self.registry.catalog.entries("acl_token")
                 if isinstance(t, AclToken)]  # fmt: skip
        return _json(_encode(views))

    async def delete_token(self, request: web.Request) -> web.Response:
        self.require(request, WRITE, "acl")
        accessor = _accessor(request)
        if accessor == self.authz(request).accessor:
            raise Conflict("a token cannot delete itself", field="accessor")
        if self.registry.catalog.entry("acl_token", accessor) is None:
            raise NotFound(f"token {accessor} does not exist", field="accessor")
        index = await self.registry.delete_entry("acl_token", accessor)
        self._changed(request, "deleted token", accessor)
        return _json(_encode({"accessor": accessor, "index": index}))

    def _changed(self, request: web.BaseRequest, what: str, name: str) -> None:
        audit.warning("acl change: %s %s by token=%s", what, name, self.authz(request).accessor)

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_post("/api/v1/acl/bootstrap", self.bootstrap)
        r.add_post("/api/v1/acl/policies", self.create_policy)
        r.add_get("/api/v1/acl/policies", self.list_policies)
        r.add_get("/api/v1/acl/policies/{name}", self.get_policy)
        r.add_put("/api/v1/acl/policies/{name}", self.update_policy)
        r.add_delete("/api/v1/acl/policies/{name}", self.delete_policy)
        r.add_post("/api/v1/acl/tokens", self.create_token)
        r.add_get("/api/v1/acl/tokens", self.list_tokens)
        r.add_get("/api/v1/acl/token/self", self.self_token)
        r.add_get("/api/v1/acl/tokens/{accessor}", self.get_token)
        r.add_put("/api/v1/acl/tokens/{accessor}", self.update_token)
        r.add_delete("/api/v1/acl/tokens/{accessor}", self.delete_token)


def _view(token: AclToken, secret: str | None) -> AclTokenView:
    return AclTokenView(
        accessor=token.accessor,
        description=token.description,
        policies=list(token.policies),
        identity=token.identity,
        expires_at=token.expires_at,
        created_at=token.created_at,
        secret=secret,
    )


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


async def _read(request: web.Request) -> bytes:
    data = await request.read()
    if not data.strip():
        raise InvalidInput("body: empty; expected a JSON object", field="body")
    return data


def _path(request: web.Request, field: str, pattern: str, what: str) -> str:
    """The path's ``field``, if it matches ``pattern`` (else a 400 naming it)."""
    value = request.match_info[field]
    if re.match(pattern, value) is None:
        raise InvalidInput(f"{field}: {value!r} is not {what}", field=field)
    return value


def _policy_name(request: web.Request) -> str:
    return _path(request, "name", ACL_NAME_PATTERN, "a policy name")


def _accessor(request: web.Request) -> str:
    return _path(request, "accessor", ACCESSOR_PATTERN, "a token accessor")


def retry_after(exc: TooManyRequests) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
