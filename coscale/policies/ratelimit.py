"""Per-tenant rate limits and quotas: pure state machines over the clock's ``now``.

Both are frozen dataclasses; :meth:`TokenBucket.take` and :meth:`Quota.take` return a
:class:`Take` holding the verdict and the *new* state, and never mutate. The caller
(:class:`coscale.tenancy.TenantLimiter`) keeps the state and commits it only when every
check passes, so a request refused by one check consumes nothing from the other.

Token bucket (rate limit)
-------------------------
Parameters: ``rate`` r > 0 (tokens/s, the sustained requests per second) and ``burst`` b ≥ 1
(the bucket's capacity, the most requests accepted at once after an idle spell). State:
``tokens`` τ and the time ``last`` they were counted. A request at time t:

* ``τ' = min(b, τ + r · max(0, t − last))`` (refill; a clock that steps back refills
  nothing);
* if ``τ' ≥ 1``: accept, state ``(τ' − 1, t)``;
* else refuse, with ``retry_after_s = (1 − τ') / r``: the wait until one whole token is
  back. State ``(τ', t)`` (refill counted, nothing consumed).

A new bucket is full (τ = b). Over any window of length T, at most ``b + r · T``
requests are accepted. :data:`DEFAULT_BURST_S`: when a tenant sets only the rate, the
burst is ``max(1, r × DEFAULT_BURST_S)`` (one second of traffic). O(1).

Quota
-----
Parameters: ``limit`` n ≥ 1 requests per period, ``period_s`` P > 0 or None (the whole
run), ``origin`` t₀ (when serving started). Windows are fixed: window ``w(t) =
⌊(t − t₀) / P⌋`` (always 0 without a period; a time before t₀ counts in window 0). State:
the current window and the requests ``used`` in it. A request at t:

* if ``w(t) ≠ window``: ``used = 0`` (a new window starts fresh);
* if ``used < n``: accept, ``used + 1``;
* else refuse, with ``retry_after_s = t₀ + (w(t) + 1) · P − t`` (until the next window)
  or ``math.inf`` without a period (the quota is spent for the run). O(1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from coscale.errors import CoscaleError

#: Seconds of sustained rate the bucket holds when no burst is given.
DEFAULT_BURST_S = 1.0

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Take(Generic[S]):
    """The verdict on one request and the state to keep if the caller commits it."""

    allowed: bool
    state: S
    retry_after_s: float = 0.0


def default_burst(rate: float) -> float:
    """``max(1, rate × DEFAULT_BURST_S)``: the burst when a tenant sets only a rate."""
    return max(1.0, rate * DEFAULT_BURST_S)


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """A token bucket (module docstring); build a full one with :meth:`full`."""

    rate: float
    burst: float
    tokens: float
    last: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise CoscaleError(
                f"rate limit rate must be a finite number > 0, got {self.rate!r}.",
                fix="set rate_limit_rps to a positive number.",
                code="invalid_input",
            )
        if not (math.isfinite(self.burst) and self.burst >= 1):
            raise CoscaleError(
                f"rate limit burst must be a finite number >= 1, got {self.burst!r}.",
                fix="set rate_burst to 1 or more (or leave it out).",
                code="invalid_input",
            )

    @classmethod
    def full(cls, rate: float, burst: float | None, now: float) -> TokenBucket:
        """A bucket holding ``burst`` tokens (default :func:`default_burst`) at ``now``."""
        size = default_burst(rate) if burst is None else burst
        return cls(rate=rate, burst=size, tokens=size, last=now)

    def take(self, now: float) -> Take[TokenBucket]:
        """Refill to ``now`` and take one token if there is a whole one (module docstring)."""
        tokens = min(self.burst, self.tokens + self.rate * max(0.0, now - self.last))
        last = max(self.last, now)
        if tokens >= 1.0:
            return Take(True, replace(self, tokens=tokens - 1.0, last=last))
        return Take(False, replace(self, tokens=tokens, last=last), (1.0 - tokens) / self.rate)


@dataclass(frozen=True, slots=True)
class Quota:
    """A request quota per fixed window, or for the whole run (module docstring)."""

    limit: int
    period_s: float | None
    origin: float
    window: int = 0
    used: int = 0

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise CoscaleError(
                f"quota must be >= 1 request, got {self.limit!r}.",
                fix="set quota_requests to 1 or more (or leave it out).",
                code="invalid_input",
            )
        if self.period_s is not None and not (math.isfinite(self.period_s) and self.period_s > 0):
            raise CoscaleError(
                f"quota period must be a finite number of seconds > 0, got {self.period_s!r}.",
                fix="set quota_period_s to a positive number (or leave it out).",
                code="invalid_input",
            )

    def window_at(self, now: float) -> int:
        """``⌊(now − origin) / period_s⌋`` (0 without a period or before the origin)."""
        if self.period_s is None or now <= self.origin:
            return 0
        return int((now - self.origin) // self.period_s)

    def take(self, now: float) -> Take[Quota]:
        """Count one request against the current window if it has room (module docstring)."""
        window = self.window_at(now)
        used = self.used if window == self.window else 0
        if used < self.limit:
            return Take(True, replace(self, window=window, used=used + 1))
        if self.period_s is None:
            retry = math.inf
        else:
            retry = self.origin + (window + 1) * self.period_s - now
        return Take(False, replace(self, window=window, used=used), retry)

    def remaining(self, now: float) -> int:
        """Requests left in the window that holds ``now``."""
        used = self.used if self.window_at(now) == self.window else 0
        return self.limit - used
