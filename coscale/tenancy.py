"""Tenants over HTTP: API keys, who may see what, per-tenant rate limits and quotas.

A scenario with ``tenants`` is served with authentication; one without is served
anonymously (and ``coscale serve`` binds it to loopback only).

Keys
----
Each tenant's key comes from the environment variable ``key_env`` (default
``COSCALE_KEY_<NAME>``, :func:`default_key_env`) or the file ``key_file`` — never from
the scenario file itself. The optional admin key, for the cluster-wide views, comes from
the environment variable :data:`ADMIN_KEY_ENV` (``COSCALE_ADMIN_KEY``). :meth:`KeyRing.
from_scenario` reads them all once when serving starts and raises a
:class:`~coscale.errors.CoscaleError` (code ``missing_key``) naming the tenant and the
variable or file when one is unset, empty, shorter than :data:`MIN_KEY_CHARS`, or holds
whitespace or non-ASCII characters; two principals with the same key are refused too
(the key would not say who is calling). ``coscale keys new TENANT`` makes a key.

Storage and comparison. The key ring keeps, per principal, a random salt of
:data:`SALT_BYTES` bytes (``secrets.token_bytes``) and ``HMAC-SHA256(salt, key)``; the
clear key is dropped once hashed. A presented key is hashed with every entry's salt and
compared to the entry's digest with :func:`hmac.compare_digest` (constant time), and
every entry is compared — no early exit — so the response time says nothing about which
entry, or how much of a digest, matched. Why a salted HMAC and not a slow KDF (scrypt,
PBKDF2): slow hashing protects *low-entropy* secrets (passwords) against offline
guessing. API keys here are machine-made, 256 bits of entropy by default
(:func:`new_key`), and at least :data:`MIN_KEY_CHARS` characters are required;
guessing one is out of reach whatever the hash, while a KDF tuned to ~50 ms would cost
that much CPU on *every request* and make a flood of bad keys a denial of service. The
salt makes equal keys hash differently and a memory dump shows only digests.
Complexity: O(principals) HMACs per request (~1 µs each).

Who may see what
----------------
==========================  ========  =============================  ====================
request                     no key /  tenant key                     admin key
                            bad key
==========================  ========  =============================  ====================
``/healthz``, ``/readyz``   200       200                            200
``POST …/infer``            401       200 (counted as that tenant)   403 (use a tenant
                                                                     key to infer)
``GET /v1/models``          401       200                            200
``GET /v1/stats``           401       its own stats; ``?tenant=`` of  any tenant's, or the
                                      another tenant → 403            whole cluster's
``GET /metrics``            401       403 (cluster-wide)             200
``/openapi.json``, docs,    401       200 / 404                      200 / 404
unknown routes
==========================  ========  =============================  ====================

401 carries ``WWW-Authenticate: Bearer realm="coscale"`` (with ``error="invalid_token"``
for a wrong key). Every refusal is a JSON body ``{"error": code, "message": text}``;
codes: ``unauthorized`` (401), ``forbidden`` (403), ``rate_limited`` and
``quota_exceeded`` (429).

Rate limits and quotas
----------------------
Per tenant (:class:`~coscale.config.TenantSpec`): ``rate_limit_rps`` (+ ``rate_burst``)
is a token bucket over *every* authenticated request of the tenant; ``quota_requests``
(+ ``quota_period_s``) counts *inference* requests (``POST /v1/models/{model}/infer``),
whatever their outcome, in fixed windows from server start. Both are pure state machines
(:mod:`coscale.policies.ratelimit`) on the injected clock; a request refused by one
consumes nothing from the other. Refused → 429 with ``Retry-After`` in whole seconds
(≥ 1, rounded up) from the bucket (time to one whole token) or the quota (time to the
next window); a quota spent for the whole run has no ``Retry-After``. The checks run in
:class:`AuthMiddleware`, before the body is read. The admin key has no limits.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from coscale.clock import Clock
from coscale.config import Scenario, TenantSpec
from coscale.errors import CoscaleError
from coscale.policies.ratelimit import Quota, TokenBucket
from coscale.telemetry.prometheus import Registry

__all__ = [
    "ADMIN",
    "ADMIN_KEY_ENV",
    "MIN_KEY_CHARS",
    "OPEN_PATHS",
    "AuthMiddleware",
    "Forbidden",
    "KeyRing",
    "MissingKey",
    "Principal",
    "Refusal",
    "TenantAuth",
    "TenantLimiter",
    "default_key_env",
    "new_key",
]

#: Environment variable holding the admin key (optional; cluster-wide views need it).
ADMIN_KEY_ENV = "COSCALE_ADMIN_KEY"
#: Random bytes in a key made by :func:`new_key` (256 bits; 43 URL-safe characters).
KEY_BYTES = 32
#: Shortest key accepted, characters.
MIN_KEY_CHARS = 16
#: Random salt per stored key, bytes.
SALT_BYTES = 16
#: Paths served without a key.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
#: The realm named in ``WWW-Authenticate``.
REALM = "coscale"

_KEY_CHARS = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no whitespace
_INFER_PATH = re.compile(r"^/v1/models/(?P<model>[^/]+)/infer$")


class MissingKey(CoscaleError):
    code = "missing_key"


class Forbidden(CoscaleError):
    code = "forbidden"
    http_status = 403


def default_key_env(tenant: str) -> str:
    """``COSCALE_KEY_<NAME>``: the name upper-cased, every other character than A-Z/0-9 → ``_``."""
    return "COSCALE_KEY_" + re.sub(r"[^A-Z0-9]", "_", tenant.upper())


def new_key() -> str:
    """A new random API key: ``secrets.token_urlsafe(KEY_BYTES)`` (43 characters)."""
    return secrets.token_urlsafe(KEY_BYTES)


def key_source(spec: TenantSpec) -> str:
    """Where a tenant's key is read from, in words (``environment variable X``/``file F``)."""
    if spec.key_file is not None:
        return f"key file {str(spec.key_file)!r}"
    return f"environment variable {spec.key_env or default_key_env(spec.name)}"


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a tenant (``tenant`` set) or the admin (``tenant`` None)."""

    tenant: str | None

    @property
    def is_admin(self) -> bool:
        return self.tenant is None

    def describe(self) -> str:
        return "the admin key" if self.tenant is None else f"tenant {self.tenant!r}"


#: The admin principal.
ADMIN = Principal(None)


def _digest(salt: bytes, key: str) -> bytes:
    return hmac.new(salt, key.encode("utf-8"), hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class _Entry:
    principal: Principal
    salt: bytes
    digest: bytes


def _check_key(key: str, owner: str, where: str, name: str) -> None:
    fix = (
        f"make one with `coscale keys new {name}` and put it in the {where} "
        "(the key is never written in the scenario file)."
    )
    if not key:
        raise MissingKey(f"{owner} has no API key: the {where} is unset or empty.", fix=fix)
    if not _KEY_CHARS.match(key):
        raise MissingKey(
            f"the API key of {owner} (from the {where}) holds whitespace or non-ASCII "
            "characters, which an Authorization header cannot carry.",
            fix=fix,
        )
    if len(key) < MIN_KEY_CHARS:
        raise MissingKey(
            f"the API key of {owner} (from the {where}) has {len(key)} characters; at least "
            f"{MIN_KEY_CHARS} are needed so that it cannot be guessed.",
            fix=fix,
        )


def read_tenant_key(spec: TenantSpec, env: Mapping[str, str]) -> str:
    """The tenant's key from its file or environment variable (stripped), checked."""
    owner = f"tenant {spec.name!r}"
    where = key_source(spec)
    if spec.key_file is not None:
        path = Path(spec.key_file)
        try:
            key = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise MissingKey(
                f"{owner} has no API key: its key file {str(path)!r} does not exist.",
                fix=f"create it: `coscale keys new {spec.name} > {path}` (then chmod 600 it).",
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise MissingKey(
                f"{owner}: cannot read its key file {str(path)!r}: {exc}.",
                fix="make the file readable UTF-8 text holding only the key.",
            ) from None
    else:
        key = env.get(spec.key_env or default_key_env(spec.name), "").strip()
    _check_key(key, owner, where, spec.name)
    return key


class KeyRing:
    """Salted HMAC-SHA256 digests of the principals' keys (module docstring)."""

    __slots__ = ("_entries",)

    def __init__(self, keys: Sequence[tuple[Principal, str]]) -> None:
        owners: dict[str, Principal] = {}
        for principal, key in keys:
            if key in owners:
                raise MissingKey(
                    f"{owners[key].describe()} and {principal.describe()} have the same API "
                    "key, so a request could not say who it comes from.",
                    fix="give each its own key (`coscale keys new NAME`).",
                )
            owners[key] = principal
        entries = []
        for principal, key in keys:
            salt = secrets.token_bytes(SALT_BYTES)
            entries.append(_Entry(principal, salt, _digest(salt, key)))
        self._entries: tuple[_Entry, ...] = tuple(entries)

    @classmethod
    def from_scenario(cls, scenario: Scenario, env: Mapping[str, str]) -> KeyRing:
        """Read every tenant's key and the optional admin key; raise :class:`MissingKey`."""
        keys = [(Principal(t.name), read_tenant_key(t, env)) for t in scenario.tenants]
        admin = env.get(ADMIN_KEY_ENV, "").strip()
        if admin:
            _check_key(admin, "the admin", f"environment variable {ADMIN_KEY_ENV}", "--admin")
            keys.append((ADMIN, admin))
        return cls(keys)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def has_admin(self) -> bool:
        return any(e.principal.is_admin for e in self._entries)

    def authenticate(self, key: str) -> Principal | None:
        """The principal whose key this is, or None; every entry compared in constant time."""
        found: Principal | None = None
        for entry in self._entries:
            if hmac.compare_digest(_digest(entry.salt, key), entry.digest):
                found = entry.principal
        return found


# --------------------------------------------------------------------------- limits


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request over a limit: the error code, the message, the wait (inf: none helps)."""

    code: str
    message: str
    retry_after_s: float


@dataclass(slots=True)
class _TenantLimits:
    bucket: TokenBucket | None
    quota: Quota | None


class TenantLimiter:
    """Each tenant's token bucket and quota; the state lives here, the rules in policies."""

    def __init__(self, tenants: Sequence[TenantSpec], now: float) -> None:
        self._limits: dict[str, _TenantLimits] = {}
        for t in tenants:
            bucket = quota = None
            if t.rate_limit_rps is not None:
                bucket = TokenBucket.full(t.rate_limit_rps, t.rate_burst, now)
            if t.quota_requests is not None:
                quota = Quota(limit=t.quota_requests, period_s=t.quota_period_s, origin=now)
            if bucket is not None or quota is not None:
                self._limits[t.name] = _TenantLimits(bucket, quota)

    def check(self, tenant: str, now: float, *, inference: bool) -> Refusal | None:
        """Take one request of ``tenant`` at ``now`` (quota only if ``inference``)."""
        limits = self._limits.get(tenant)
        if limits is None:
            return None
        rate = limits.bucket.take(now) if limits.bucket is not None else None
        quota = limits.quota.take(now) if inference and limits.quota is not None else None
        if rate is not None and not rate.allowed:
            bucket = rate.state
            return Refusal(
                "rate_limited",
                f"tenant {tenant!r} is over its rate limit of {bucket.rate:g} requests/s "
                f"(burst {bucket.burst:g}); retry in {rate.retry_after_s:.2f} s. Slow down, "
                "or raise rate_limit_rps/rate_burst in the scenario.",
                rate.retry_after_s,
            )
        if quota is not None and not quota.allowed:
            q = quota.state
            period = f"per {q.period_s:g} s" if q.period_s is not None else "for this run"
            wait = (
                f"it renews in {quota.retry_after_s:.0f} s"
                if math.isfinite(quota.retry_after_s)
                else "it does not renew"
            )
            return Refusal(
                "quota_exceeded",
                f"tenant {tenant!r} has used its quota of {q.limit:,} inference requests "
                f"{period}; {wait}. Raise quota_requests in the scenario if it is too low.",
                quota.retry_after_s,
            )
        if rate is not None:
            limits.bucket = rate.state
        if quota is not None:
            limits.quota = quota.state
        return None

    def remaining_quota(self, tenant: str, now: float) -> int | None:
        limits = self._limits.get(tenant)
        if limits is None or limits.quota is None:
            return None
        return limits.quota.remaining(now)


# --------------------------------------------------------------------------- the HTTP side


@dataclass(eq=False)
class TenantAuth:
    """What the API needs to authenticate and limit requests (module docstring)."""

    keys: KeyRing
    limiter: TenantLimiter
    clock: Clock
    registry: Registry = field(default_factory=Registry)
    #: called with (model, tenant) for each inference request refused by a rate limit
    #: or quota: demand the model's admission policy counts (``ModelView.refused``)
    on_refused: Callable[[str, str], None] | None = None

    def __post_init__(self) -> None:
        self.refused = self.registry.counter(
            "coscale_auth_refused_total",
            "Requests refused before reaching a handler, by reason (unauthorized, "
            "rate_limited, quota_exceeded) and tenant ('' when unknown).",
            ("reason", "tenant"),
        )

    @classmethod
    def from_scenario(
        cls, scenario: Scenario, *, clock: Clock, env: Mapping[str, str]
    ) -> TenantAuth:
        """Keys read now (a missing one raises :class:`MissingKey`), limits from ``clock``."""
        return cls.with_keys(KeyRing.from_scenario(scenario, env), scenario.tenants, clock)

    @classmethod
    def with_keys(cls, keys: KeyRing, tenants: Sequence[TenantSpec], clock: Clock) -> TenantAuth:
        """Keys read earlier; the tenants' limits start now on ``clock``."""
        return cls(keys, TenantLimiter(tenants, clock.now()), clock)

    def render(self) -> str:
        return self.registry.render()

    def tenant_of(self, request: Request) -> str:
        """The tenant an inference request runs as; the admin key → :class:`Forbidden`."""
        principal = principal_of(request)
        if principal is None or principal.tenant is None:
            raise Forbidden(
                "the admin key is for cluster-wide views, not for inference.",
                fix="send inference requests with a tenant's key.",
            )
        return principal.tenant

    def stats_tenant(self, request: Request, asked: str | None) -> str | None:
        """The tenant whose stats to show (None: the whole cluster, admin only)."""
        principal = principal_of(request)
        if principal is None or principal.is_admin:
            return asked
        if asked is None or asked == principal.tenant:
            return principal.tenant
        raise Forbidden(
            f"tenant {principal.tenant!r} may not read the stats of tenant {asked!r}.",
            fix=f"leave ?tenant= out (or set it to {principal.tenant!r}); the admin key "
            f"(environment variable {ADMIN_KEY_ENV}) sees every tenant.",
        )

    def require_admin(self, request: Request, what: str) -> None:
        """Raise :class:`Forbidden` unless the request carries the admin key."""
        principal = principal_of(request)
        if principal is not None and principal.is_admin:
            return
        who = principal.describe() if principal is not None else "this key"
        raise Forbidden(
            f"{what} is a cluster-wide view; {who} may not read it.",
            fix=f"use the admin key (set {ADMIN_KEY_ENV} where the server runs and send it "
            "as Authorization: Bearer KEY).",
        )


def principal_of(request: Request) -> Principal | None:
    """The principal :class:`AuthMiddleware` stored on the request (None: no auth)."""
    state = request.scope.get("state") or {}
    principal = state.get("principal")
    return principal if isinstance(principal, Principal) else None


def bearer_token(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The token of the first ``Authorization: Bearer TOKEN`` header (scheme any case)."""
    for name, value in headers:
        if name.lower() != b"authorization":
            continue
        scheme, _, token = value.decode("latin-1").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        return token
    return None


async def _send(
    send: Send, status: int, code: str, message: str, headers: Mapping[str, str]
) -> None:
    payload = json.dumps({"error": code, "message": message}).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *((k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class AuthMiddleware:
    """Authenticate every HTTP request but :data:`OPEN_PATHS`, then apply the tenant's
    rate limit and quota; store the :class:`Principal` in ``scope["state"]["principal"]``.

    Refusals (401, 429) are answered here, before the body is read. Sits inside the
    catch-all middleware (so refusals are counted and an error is JSON) and outside the
    body-size limit.
    """

    def __init__(
        self,
        app: ASGIApp,
        auth: TenantAuth,
        retry_after: Callable[[float], int],
    ) -> None:
        self.app = app
        self.auth = auth
        self.retry_after = retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope["headers"])
        principal = self.auth.keys.authenticate(token) if token is not None else None
        if principal is None:
            await self._unauthorized(send, token is not None)
            return
        if principal.tenant is not None:
            match = _INFER_PATH.match(scope["path"]) if scope["method"] == "POST" else None
            now = self.auth.clock.now()
            refusal = self.auth.limiter.check(principal.tenant, now, inference=bool(match))
            if refusal is not None:
                self.auth.refused.inc(reason=refusal.code, tenant=principal.tenant)
                if match is not None and self.auth.on_refused is not None:
                    self.auth.on_refused(match["model"], principal.tenant)
                headers = {}
                if math.isfinite(refusal.retry_after_s):
                    headers["Retry-After"] = str(self.retry_after(refusal.retry_after_s))
                await _send(send, 429, refusal.code, refusal.message, headers)
                return
        state: dict[str, Any] = scope.setdefault("state", {})
        state["principal"] = principal
        await self.app(scope, receive, send)

    async def _unauthorized(self, send: Send, presented: bool) -> None:
        self.auth.refused.inc(reason="unauthorized", tenant="")
        if presented:
            message = "the API key is not valid: no tenant has it."
            challenge = f'Bearer realm="{REALM}", error="invalid_token"'
        else:
            message = (
                "this endpoint needs an API key: send the header Authorization: Bearer KEY "
                "(a tenant's key; the admin key for cluster-wide views)."
            )
            challenge = f'Bearer realm="{REALM}"'
        await _send(send, 401, "unauthorized", message, {"WWW-Authenticate": challenge})
