"""Admission and fairness: which arriving requests enter the queue, and in what order.

Admission policies implement :class:`~coscale.policies.base.AdmissionPolicy`:
``decide(request, snapshot, state) -> (AdmissionDecision, state)``; they keep no state
(``None``). :class:`WeightedFairQueue` orders admitted requests between tenants.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from coscale.errors import CoscaleError
from coscale.policies.variant import LatencyMap, predicted_service_s
from coscale.types import AdmissionDecision, ReplicaState, Request, Snapshot

#: Retry hint, in seconds, when a model has no replica serving or starting.
NO_CAPACITY_RETRY_S = 1.0

ADMIT = AdmissionDecision(True)


@dataclass(frozen=True, kw_only=True)
class AdmitAll:
    """Admit every request (no admission control). State: none. O(1)."""

    name = "none"

    def decide(
        self, request: Request, snapshot: Snapshot, state: None
    ) -> tuple[AdmissionDecision, None]:
        return ADMIT, None


@dataclass(frozen=True, kw_only=True)
class DeadlineAdmission:
    """Reject at once a request that cannot finish by its deadline.

    With ``now = max(snapshot.time, request.arrival)`` and R the model's READY replicas:

    * ``capacity = Σ_{i∈R} c_i`` items/s, ``c_i`` = ``capacity_rps`` if > 0 else the
      measured ``rate``;
    * ``ahead`` = requests waiting in the model's queue (``ModelView.queue_length``, 0 if
      the model is absent from the snapshot) + ``Σ_{i∈R} outstanding_i``, each counted as
      one item (the snapshot counts requests, not items);
    * ``service`` = the fastest predicted time for this request alone on a replica in R
      (``latencies[(variant, node_type)]`` at the request's items and ``seq_len``, else
      items / rate, else items / capacity_rps — see
      :func:`~coscale.policies.variant.predicted_service_s`);
    * ``predicted = now + ahead / capacity + service``.

    Admit iff ``predicted ≤ request.deadline``; otherwise reject with a reason giving
    the predicted lateness and ``retry_after_s = predicted − deadline`` (how much the
    backlog must drain for a request with the same SLO to fit).

    Edge cases: no READY replica but one STARTING → admit (capacity is on its way and
    the queue holds the request); no replica READY or STARTING → reject with reason
    ``"no capacity"`` and ``retry_after_s = no_capacity_retry_s`` (default 1 s);
    capacity or service unknown (all c_i = 0, or no prediction for any replica) →
    admit (no evidence the deadline will be missed). State: none. O(replicas).
    """

    name = "deadline"
    latencies: LatencyMap = field(default_factory=dict)
    no_capacity_retry_s: float = NO_CAPACITY_RETRY_S

    def __post_init__(self) -> None:
        if self.no_capacity_retry_s < 0:
            raise CoscaleError(
                f"deadline: no_capacity_retry_s={self.no_capacity_retry_s} < 0",
                fix="use 1.0",
                code="invalid_policy_params",
            )

    def decide(
        self, request: Request, snapshot: Snapshot, state: None
    ) -> tuple[AdmissionDecision, None]:
        replicas = snapshot.replicas_of(request.model)
        ready = [r for r in replicas if r.serving]
        if not ready:
            if any(r.state is ReplicaState.STARTING for r in replicas):
                return ADMIT, None
            return AdmissionDecision(False, "no capacity", self.no_capacity_retry_s), None
        capacity = sum(r.capacity_rps if r.capacity_rps > 0 else r.rate for r in ready)
        services = [
            s
            for r in ready
            if (s := predicted_service_s(self.latencies, r, request.items, request.seq_len))
            is not None
        ]
        if capacity <= 0 or not services:
            return ADMIT, None
        view = snapshot.model(request.model)
        ahead = (view.queue_length if view else 0) + sum(r.outstanding for r in ready)
        now = max(snapshot.time, request.arrival)
        predicted = now + ahead / capacity + min(services)
        if predicted <= request.deadline:
            return ADMIT, None
        late = predicted - request.deadline
        reason = (
            f"predicted completion in {predicted - now:.3f} s ({ahead} requests ahead at "
            f"{capacity:.1f} items/s) misses the deadline by {late:.3f} s"
        )
        return AdmissionDecision(False, reason, late), None


# ----------------------------------------------------------------- weighted fair queueing


@dataclass(frozen=True, slots=True)
class _Tagged:
    start: float
    finish: float
    seq: int
    request: Request


@dataclass(frozen=True, slots=True)
class _Cons:
    """A persistent singly linked list cell."""

    head: _Tagged
    tail: _Cons | None


def _reverse(cell: _Cons | None) -> _Cons | None:
    out: _Cons | None = None
    while cell is not None:
        out, cell = _Cons(cell.head, out), cell.tail
    return out


@dataclass(frozen=True, slots=True)
class TenantQueue:
    """One tenant's FIFO as a persistent two-list queue (amortized O(1) push and pop).

    ``front`` holds the oldest entries oldest first, ``back`` the newest newest first;
    ``front`` is empty only when the whole queue is. ``last_finish``: the finish tag of
    the tenant's most recently pushed request.
    """

    front: _Cons | None = None
    back: _Cons | None = None
    size: int = 0
    last_finish: float = 0.0

    def push(self, entry: _Tagged) -> TenantQueue:
        if self.front is None:
            return TenantQueue(_Cons(entry, None), None, 1, entry.finish)
        return TenantQueue(self.front, _Cons(entry, self.back), self.size + 1, entry.finish)

    def peek(self) -> _Tagged | None:
        return None if self.front is None else self.front.head

    def pop(self) -> TenantQueue:
        assert self.front is not None
        front, back = self.front.tail, self.back
        if front is None:
            front, back = _reverse(back), None
        return TenantQueue(front, back, self.size - 1, self.last_finish)


@dataclass(frozen=True, slots=True)
class FairQueueState:
    """Virtual time, the push counter, the largest finish tag served, per-tenant queues
    (sorted by tenant)."""

    virtual_time: float = 0.0
    seq: int = 0
    max_finish: float = 0.0
    tenants: tuple[tuple[str, TenantQueue], ...] = ()

    def __len__(self) -> int:
        return sum(q.size for _, q in self.tenants)


@dataclass(frozen=True, kw_only=True)
class WeightedFairQueue:
    """Start-time fair queueing (Goyal et al., SIGCOMM 1996) between tenants.

    Tenant t has weight ``w_t`` (``weights``, default ``default_weight`` = 1.0, > 0).
    A request's cost is its item count. On **push** at virtual time ``v``:
    ``start = max(v, F_t)`` and ``finish = start + items / w_t``, where ``F_t`` is the
    finish tag of tenant t's previous request (0 for a new tenant). **Pop** removes the
    request with the smallest start tag (ties → pushed first) and sets ``v`` to its start
    tag; when the queue becomes empty, ``v`` jumps to the largest finish tag served, so
    an idle tenant cannot bank credit. **Pop on an empty queue** → ``(None, state)``.

    Guarantee: while tenants are backlogged, each receives service in proportion to
    its weight, whatever the others push — a tenant flooding at 5× its share delays
    another by at most about one request of each other tenant per request of its own.
    O(T) per operation for T tenants (amortized O(1) in the queue length); pure: every
    call returns a new state and leaves the old one valid.
    """

    weights: Mapping[str, float] = field(default_factory=dict)
    default_weight: float = 1.0

    def __post_init__(self) -> None:
        bad = {t: w for t, w in self.weights.items() if not w > 0}
        if bad or not self.default_weight > 0:
            raise CoscaleError(
                f"fair queue weights must be > 0, got {bad or self.default_weight}",
                fix="give every tenant a positive weight",
                code="invalid_policy_params",
            )

    def weight(self, tenant: str) -> float:
        return self.weights.get(tenant, self.default_weight)

    def push(self, state: FairQueueState | None, request: Request) -> FairQueueState:
        state = FairQueueState() if state is None else state
        queues = dict(state.tenants)
        tq = queues.get(request.tenant, TenantQueue())
        start = max(state.virtual_time, tq.last_finish)
        entry = _Tagged(
            start, start + request.items / self.weight(request.tenant), state.seq, request
        )
        queues[request.tenant] = tq.push(entry)
        return FairQueueState(
            state.virtual_time, state.seq + 1, state.max_finish, tuple(sorted(queues.items()))
        )

    def pop(self, state: FairQueueState | None) -> tuple[Request | None, FairQueueState]:
        state = FairQueueState() if state is None else state
        heads = [(e.start, e.seq, t) for t, q in state.tenants if (e := q.peek()) is not None]
        if not heads:
            return None, state
        _, _, tenant = min(heads)
        queues = dict(state.tenants)
        tq = queues[tenant]
        entry = tq.peek()
        assert entry is not None
        queues[tenant] = tq.pop()
        max_finish = max(state.max_finish, entry.finish)
        remaining = sum(q.size for q in queues.values())
        virtual = entry.start if remaining else max_finish
        return entry.request, FairQueueState(
            virtual, state.seq, max_finish, tuple(sorted(queues.items()))
        )
