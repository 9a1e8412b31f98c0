"""Admission and fairness: which arriving requests enter the queue, and in what order.

Admission policies implement :class:`~coscale.policies.base.AdmissionPolicy`:
``decide(request, snapshot, state) -> (AdmissionDecision, state)``; :class:`AdmitAll`
keeps no state (``None``), :class:`DeadlineAdmission` its learned margin.
:class:`WeightedFairQueue` orders admitted requests between tenants.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from coscale.errors import CoscaleError
from coscale.policies.variant import LatencyMap, predicted_service_s
from coscale.types import (
    AdmissionDecision,
    ModelView,
    ReplicaState,
    ReplicaView,
    Request,
    Snapshot,
)

#: The least share of the capacity that admission expects a tenant outside the first
#: class (over its reserved share) to get while it waits.
MIN_LEFT_SHARE = 0.1
#: Retry hint, in seconds, when a model has no replica serving or starting.
NO_CAPACITY_RETRY_S = 1.0

ADMIT = AdmissionDecision(True)

#: Executors show admission a replica's measured cycle rate instead of its profiled
#: capacity only when its recent batches (EWMA of items) fill at least this share of the
#: batch limit (:func:`admission_capacity`).
MEASURED_RATE_MIN_FILL = 0.5
#: EWMA weight of the cycle-rate measure (about the last 50 batches).
CYCLE_ALPHA = 0.02


def admission_capacity(
    profiled: float, cycle_rate: float, items_ewma: float, batch_limit: int
) -> float:
    """The capacity (items/s) an executor shows admission for a replica: its measured
    *cycle rate* (EWMA of items per batch / EWMA of seconds per batch cycle, the cycle
    running from ``max(previous batch's end, the batch's assignment)`` to its end) when
    that is above 0 and below ``profiled`` and the replica's recent batches filled at
    least :data:`MEASURED_RATE_MIN_FILL` of ``batch_limit`` (EWMA of items); else
    ``profiled``. Small batches say nothing about capacity (a batch's fixed cost
    dominates them), so the profile stands then; a replica that runs full batches slower
    than profiled (a busy machine) must not make admission promise deadlines it cannot
    keep. O(1)."""
    full = items_ewma >= MEASURED_RATE_MIN_FILL * max(1, batch_limit)
    if full and 0.0 < cycle_rate < profiled:
        return cycle_rate
    return profiled


#: The default share of a request's budget (``deadline − arrival``) past which an
#: admitted request's predicted finish says that its model needs more capacity now
#: (:func:`is_pressure`; the predictive policy's ``pressure_fraction``).
DEFAULT_PRESSURE_FRACTION = 0.15


def is_pressure(
    decision: AdmissionDecision, request: Request, fraction: float = DEFAULT_PRESSURE_FRACTION
) -> bool:
    """Whether admission's ``decision`` on ``request`` shows that the model needs more
    capacity now: the request was refused, or admitted with a predicted finish
    (``promised_by``) later than ``arrival + fraction × (deadline − arrival)``.
    A decision without a prediction (:class:`AdmitAll`, a free replica) is no pressure.
    Both executors count these per model for the allocation policy's burst reactions
    (``ModelView.pressure``), with the policy's ``pressure_fraction``. O(1)."""
    if not decision.admit:
        return True
    if decision.promised_by is None:
        return False
    budget = request.deadline - request.arrival
    return decision.promised_by > request.arrival + fraction * budget


@dataclass(frozen=True, kw_only=True)
class AdmitAll:
    """Admit every request (no admission control). State: none. O(1)."""

    name = "none"

    def decide(
        self, request: Request, snapshot: Snapshot, state: None
    ) -> tuple[AdmissionDecision, None]:
        return ADMIT, None


@dataclass(frozen=True, slots=True)
class MarginState:
    """:class:`DeadlineAdmission`'s state for one tenant, from its newest ``window``
    kept promises (oldest first): their stretches (actual over promised time to finish),
    the same values sorted, and the stretch factor they give (their quantile, at least
    1); their errors (actual minus promised, seconds), sorted, and the error quantile
    (at least 0); the held peaks of both quantiles, when they were last updated and when
    the tenant's first report came (:class:`DeadlineAdmission`, "Held peaks")."""

    stretches: tuple[float, ...] = ()
    stretches_ordered: tuple[float, ...] = ()
    stretch: float = 1.0
    errors: tuple[float, ...] = ()
    errors_ordered: tuple[float, ...] = ()
    error: float = 0.0
    held_stretch: float = 1.0
    held_error: float = 0.0
    held_at: float = -math.inf
    first_at: float = math.inf


#: Per READY replica ``(replica id, smoothed, peak, at, since)`` (:func:`fold_speeds`).
Speeds = tuple[tuple[str, float, float, float, float], ...]


@dataclass(frozen=True, slots=True)
class AdmissionState:
    """:class:`DeadlineAdmission`'s state: one :class:`MarginState` per tenant that has
    reported kept promises, sorted by tenant; each tenant's demand as ``(tenant, items/s,
    as of time)``, sorted by tenant (:func:`fold_demand`); and each READY replica's
    demonstrated speed as ``(replica id, smoothed, peak, at, since)`` (:func:`fold_speeds`)."""

    tenants: tuple[tuple[str, MarginState], ...] = ()
    demand: tuple[tuple[str, float, float], ...] = ()
    speeds: Speeds = ()

    def of(self, tenant: str) -> MarginState:
        """``tenant``'s window (empty if it has reported none). O(T)."""
        return next((m for t, m in self.tenants if t == tenant), _EMPTY)


_EMPTY = MarginState()


def _rank(n: int, q: float) -> int:
    """Index of the nearest-rank ``q``-quantile among ``n ≥ 1`` sorted values: ⌈q·n⌉ − 1."""
    return min(n, max(1, math.ceil(q * n))) - 1


def _slide(
    values: tuple[float, ...], ordered: tuple[float, ...], new: tuple[float, ...], window: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """A sliding window and its sorted copy after appending ``new``: the newest
    ``window`` values (oldest first) and the same sorted — by evicting the oldest and
    inserting the new into the sorted copy, O(window + k log window) for k new."""
    joined = values + new
    kept = joined[-window:]
    if len(new) >= window:
        return kept, tuple(sorted(kept))
    out = list(ordered)
    for gone in joined[: len(joined) - len(kept)]:
        del out[bisect.bisect_left(out, gone)]
    for value in new:
        bisect.insort(out, value)
    return kept, tuple(out)


def fold_demand(
    demand: tuple[tuple[str, float, float], ...],
    arrivals: tuple[tuple[str, int], ...],
    now: float,
    tau_s: float,
) -> tuple[tuple[str, float, float], ...]:
    """Each tenant's demand, a time-decayed rate: for each ``(tenant, items)`` arrival
    at ``now``, ``rate ← rate · exp(−(now − at) / τ) + items / τ`` and ``at ← now``
    (an exponentially weighted count over the last ``τ`` seconds, whose mean is the
    arrival rate in items/s). Tenants without arrivals keep their entry (decayed when
    read, :func:`demand_rates`). Sorted by tenant; O(T + k)."""
    if not arrivals:
        return demand
    table = {t: (r, at) for t, r, at in demand}
    for tenant, items in arrivals:
        rate, at = table.get(tenant, (0.0, now))
        table[tenant] = (rate * math.exp(-max(0.0, now - at) / tau_s) + items / tau_s, now)
    return tuple((t, r, at) for t, (r, at) in sorted(table.items()))


def demand_rates(
    demand: tuple[tuple[str, float, float], ...], now: float, tau_s: float
) -> dict[str, float]:
    """Each tenant's demand decayed to ``now`` (items/s)."""
    return {t: r * math.exp(-max(0.0, now - at) / tau_s) for t, r, at in demand}


def fold_speeds(
    speeds: Speeds, ready: Sequence[ReplicaView], now: float, smooth_s: float, tau_s: float
) -> Speeds:
    """Each READY replica's demonstrated speed, as ``(replica id, smoothed, peak, at,
    since)``, in the order of ``ready``; O(R).

    The observed gross speed ``v = max(capacity_rps, rate)`` (its speed while busy) is
    noisy — ``rate`` is an EWMA of per-batch ``items / service_s``, which swings by
    ±40 % between batches of MiniLM — so it is first smoothed in time, then its peak is
    held: with ``Δ = now − at``,

    * ``smoothed ← smoothed + (1 − exp(−Δ / smooth_s)) · (v − smoothed)`` (``= v`` on
      first sight, ``since ← now``);
    * ``peak ← max(peak · exp(−Δ / τ), smoothed)`` once the entry is ``smooth_s`` old
      (0 before: a first outlier does not set the peak); the peak decays with ``τ``
      (``tau_s``).

    The replica's speed is ``max(peak, smoothed)`` (:func:`shown_speed`): the smoothed
    value while young, the held peak after. Replicas no longer READY lose their entry
    (one that comes back starts again)."""
    old = {e[0]: e[1:] for e in speeds}
    out = []
    for r in ready:
        v = max(r.capacity_rps, r.rate)
        if r.id not in old:
            out.append((r.id, v, 0.0, now, now))
            continue
        smoothed, peak, at, since = old[r.id]
        gap = max(0.0, now - at)
        smoothed += (1.0 - math.exp(-gap / smooth_s)) * (v - smoothed)
        if now - since >= smooth_s:
            peak = max(peak * math.exp(-gap / tau_s), smoothed)
        out.append((r.id, smoothed, peak, now, since))
    return tuple(out)


def shown_speed(speeds: Speeds) -> float:
    """Σ over ``speeds`` of each replica's ``max(peak, smoothed)`` (items/s), as of its
    last fold (:func:`fold_speeds`)."""
    return sum(max(e[1], e[2]) for e in speeds)


def within_share(
    rates: Mapping[str, float],
    weights: Mapping[str, float],
    capacity: float,
    headroom: float,
) -> frozenset[str]:
    """The tenants whose demand is within their max-min fair share of ``capacity``.

    Water-filling: with ``d_t`` each tenant's demand (``rates``) and ``w_t`` its weight
    (``weights``, default 1), the fair level ``L`` solves ``Σ_t min(d_t, w_t · L) =
    capacity`` (``L = ∞`` when ``Σ d_t ≤ capacity``: no contention, everyone is
    within). Computed by visiting tenants in increasing ``d_t / w_t``: a tenant whose
    demand fits ``w_t · (C_left / W_left)`` is satisfied and leaves its demand and
    weight; the first that does not fixes ``L = C_left / W_left``. A tenant is within
    its share iff ``d_t ≤ (1 + headroom) · w_t · L`` — the headroom keeps a tenant at
    exactly its share within it despite the noise of both estimates. The tenants are
    those of ``rates`` and ``weights``; one without a rate has demand 0 (within).
    O(T log T).
    """
    demand = {t: rates.get(t, 0.0) for t in {*rates, *weights}}
    order = sorted(demand, key=lambda t: (demand[t] / weights.get(t, 1.0), t))
    left_c, left_w = capacity, sum(weights.get(t, 1.0) for t in order)
    level = math.inf
    for t in order:
        w = weights.get(t, 1.0)
        if demand[t] <= w * left_c / left_w:
            left_c, left_w = left_c - demand[t], left_w - w
            continue
        level = left_c / left_w
        break
    return frozenset(t for t in order if demand[t] <= (1 + headroom) * weights.get(t, 1.0) * level)


def fair_ahead(view: ModelView, tenant: str, first: frozenset[str] | None = None) -> float:
    """Requests a weighted fair queue serves before a new request of ``tenant``.

    With ``q_t`` and ``w_t`` each tenant's waiting requests and weight
    (``view.tenant_queues``; a tenant not listed: ``q = 0``, ``w = 1``) and ``u`` =
    ``queue_length − Σ q_t`` (requests put back after a failure, served first):

    ``ahead = u + q_b + Σ_{t≠b} min(q_t, q_b · w_t / w_b + 1)``.

    With ``first`` (the tenants within their share, whose requests the queue serves
    before the others', :class:`DeadlineAdmission`'s reserve), a tenant's waiting
    requests are counted in its class: for ``b`` in ``first`` the sum runs over the
    other tenants in ``first`` only; for ``b`` not in it, every waiting request of a
    tenant in ``first`` is ahead too, and the sum runs over the others not in it.

    Derivation (start-time fair queueing, :class:`WeightedFairQueue`, every request one
    item): tenant t's k-th waiting request has start tag about ``v + (k − 1) / w_t``; the
    new request of tenant b starts at about ``v + q_b / w_b``, behind its own backlog. The
    queue serves by start tag, ties to the earlier push, so of tenant t it serves first
    the requests with ``(k − 1) / w_t ≤ q_b / w_b``: ``min(q_t, q_b·w_t/w_b + 1)``. An
    approximation: tags are in items, and a backlogged tenant's tags may run ahead of
    ``v``. No ``tenant_queues`` (a FIFO queue) → ``queue_length``. O(T).
    """
    if not view.tenant_queues:
        return float(view.queue_length)
    listed = sum(q for _, q, _ in view.tenant_queues)
    q_b, w_b = 0, 1.0
    for t, q, w in view.tenant_queues:
        if t == tenant:
            q_b, w_b = q, w
    mine = first is None or tenant in first
    others = 0.0
    for t, q, w in view.tenant_queues:
        if t == tenant:
            continue
        if first is None or (t in first) == mine:
            others += min(q, q_b * w / w_b + 1.0)
        elif not mine:  # t in first: all its waiting requests go before b's
            others += q
    return max(0, view.queue_length - listed) + q_b + others


@dataclass(frozen=True, kw_only=True)
class DeadlineAdmission:
    """Reject at once a request that cannot finish by its deadline, with a learned margin.

    With ``now = max(snapshot.time, request.arrival)`` and R the model's READY replicas:

    * ``capacity = Σ_{i∈R} c_i`` items/s, ``c_i`` = ``capacity_rps`` if > 0 else the
      measured ``rate``;
    * ``ahead`` = requests the queue serves before this one (each counted as one item;
      the snapshot counts requests, not items) + ``Σ_{i∈R} outstanding_i``. A FIFO
      queue serves all of ``ModelView.queue_length`` first; a weighted fair queue
      (``ModelView.tenant_queues`` given) only the part :func:`fair_ahead` computes —
      a tenant's own backlog plus each other tenant's weight-proportional share of it —
      so a flooding tenant's backlog counts against its own requests, not the others'.
      Model absent from the snapshot → 0;
    * ``service`` = the fastest predicted time for this request alone on a replica in R
      (``latencies[(variant, node_type)]`` at the request's items and ``seq_len``, else
      items / rate, else items / capacity_rps — see
      :func:`~coscale.policies.variant.predicted_service_s`);
    * ``predicted = now + ahead / capacity + service``;
    * ``margin`` = the tenant's learned margin for a request predicted to finish in
      ``predicted − now`` seconds (below), at most ``max_margin_ratio`` (default 0.8) ×
      the request's budget ``deadline − arrival``, and ``target = deadline − margin``.

    Admit iff ``predicted ≤ target``; otherwise reject with a reason giving the
    predicted lateness and ``retry_after_s = predicted − target`` (how much the backlog
    must drain for a request with the same SLO to fit).

    **The learned margin.** The prediction misses what it does not model (a busy
    machine taking CPU from the worker, the event loop's own work between batches,
    noisy service times), and at the admission boundary under overload every admitted
    request is predicted to finish just by its target, so without a margin about half
    of them finish late. Two shapes of error are learned from the same reports, and
    the margin is the smaller of what they call for:

    * *proportional*: a replica that runs at half its estimated speed for a while
      doubles every wait in its queue. Measured under 3× overload of a MiniLM replica
      with the load generator on the same two cores: the 99.5th percentile of ``actual
      − predicted`` was 0.16 s for requests predicted to finish within 0.1 s and 0.46 s
      for those predicted at 0.2–0.3 s, while the ratio ``actual / predicted`` was
      about 2.8 for both. With ρ the quantile of that ratio (the *stretch*), the margin
      is ``(ρ − 1) · (predicted − now)``: a request is admitted only if ``ρ`` times its
      predicted time fits;
    * *additive*: a delay of fixed size (a batch of another tenant in progress, the
      event loop parsing a flood of requests) that is large against a short
      prediction. Read as a ratio it makes ρ large (ρ ≈ 5 to 9 for a tenant at its
      share next to a flood, from waits predicted at 40–100 ms) and would refuse longer
      waits that such a delay does not threaten; as ``e``, the quantile of ``actual −
      predicted``, it is the margin for any prediction.

    So ``margin = min((ρ − 1) · (predicted − now), e)``: under each shape of error the
    other bound is the looser one. (An additive margin alone — an earlier version —
    had to be capped to keep short waits admissible, and at the cap the long waits it
    admitted under overload finished late: admitted p99 518–604 ms for a 500-ms SLO.)

    **Nothing ahead, no margin.** A request that finds every READY replica idle and
    nothing queued before it (``ahead = 0``) is admitted iff its bare ``service`` fits
    its deadline. The margin is learned from waits imposed by capacity (below); such a
    request waits for nothing and teaches nothing, so a margin learned under an overload
    would otherwise outlive it: after one, an idle replica refused every request whose
    service alone exceeded a fifth of its budget (32 MiniLM sentences, about 140 ms,
    against a 500-ms SLO), no promise ever came back, and the held peaks never decayed.

    When every READY replica is busy (``outstanding > 0``) the wait is imposed by
    capacity, and the decision carries ``promised_by = predicted``; the executor
    reports each such request that completed as ``(tenant, promised, taken)``: the
    seconds from the decision to ``promised_by`` and to the actual finish
    (``ModelView.promises``, since the previous decision); its stretch is ``taken /
    promised`` and its error ``taken − promised``. A request admitted while a replica
    was free gets no ``promised_by``: its wait is the batcher's choice (filling a batch
    within the deadline), not an error, and a request admitted far inside its target
    would only teach that "early" is common. The state keeps, per tenant, the newest
    ``window`` (default 2,048: about 20 s of a saturated MiniLM replica, so that bursts
    of slow service every 10–20 s stay remembered) stretches and errors, and the
    tenant's ``ρ = max(1, quantile_q(stretches))`` and ``e = max(0,
    quantile_q(errors))`` with q (default 0.995, nearest rank: the 11th largest of
    2,048): at most a share 1 − q of the admitted requests that waited for capacity
    finish late (above 0.99, so that the admitted p99 stays within the SLO). Until a
    tenant has reported ``min_samples`` (default 64) its margin is ``(initial_stretch −
    1) · (predicted − now)`` (default 2: a request is admitted if twice its predicted
    time fits): an untested prediction is not trusted, which costs a few refusals at
    the start of an overload instead of a burst of late answers. Per tenant, because
    under fair queueing the errors differ by tenant: a light tenant's requests are
    served next, while a flooding tenant's admitted backlog is overtaken by the
    others' later arrivals (which the prediction does not see) — its margin must
    absorb that, the light tenant's must not. The cap ``max_margin_ratio`` (default
    0.8) × the request's budget keeps admission alive after a spike (a request
    predicted within a fifth of its budget always fits) and bounds what a noisy
    machine costs in refusals; at the boundary the proportional margin is ``budget ·
    (1 − 1/ρ)``, so 0.8 leaves ρ up to 5 uncapped. ``window = 0``: no margin (the bare
    prediction, from the first request). ρ and e are recomputed only when promises
    arrive, O(window) then (:meth:`learn`); O(replicas + tenants) otherwise.

    **Held peaks** (``margin_tau_s``, default 60 s; ``None``: the window's quantiles
    alone). The errors come in bursts: under 3× overload of a MiniLM replica on two
    shared cores, the worker ran at half speed for 0.5–1 s every 10–20 s (the server's
    event loop and the load generator taking its CPU), and each such dip made the
    requests admitted in the second before it late. Between dips the window (about 16 s
    of reports) forgets them, the quantiles fall back, the queue grows back to its
    longest admissible wait, and the next dip finds it there. So the margin uses each
    quantile's peak held over the recent reports, decaying with ``margin_tau_s``: at each
    report batch at time ``now``, with ``d = exp(−(now − held_at) / τ)``,
    ``ρ_held ← max(ρ, 1 + (ρ_held − 1) · d)`` and ``e_held ← max(e, e_held · d)``; the
    margin is computed from ``ρ_held`` and ``e_held``. A dip every 20 s is then still
    70 % remembered when the next one comes; a machine that has really become quieter
    admits its longest waits again within a few minutes. The cost is only latency:
    under overload a shorter admitted queue still keeps the replica busy.
    The first dip of a regime has no peak to be held yet: under the same overload, the
    margin learned while the load was lighter let the queue reach its longest wait within
    a second of the jump to 3×, and the first dip, 1–2 s later, made 65 admitted
    requests late (two thirds of the run's). So trust in the learned margin also grows
    with the time a tenant's reports have covered: for ``age = now − first report``, the
    margin is at least ``(initial_stretch − 1) · exp(−age / τ) · (predicted − now)`` —
    the untested margin, fading with the same τ (a request is admitted if 1.8× its
    predicted time fits after 13 s of reports, 1.4× after a minute, 1.05× after three).

    **Reserved shares** (``reserve_headroom``, default 0.25; ``None`` turns it off).
    Under a weighted fair queue (``ModelView.tenant_queues`` given) a tenant that asks
    for exactly its share while another floods is critically loaded *within* that
    share: start-time fair queueing serves it at its share's rate only while it is
    backlogged, and Poisson arrivals at that same rate make its queue a random walk
    (measured: B's p99 711 ms against 204 ms alone, 19 % of B refused). So a tenant
    whose demand is within its max-min fair share of the capacity is served first:
    its requests are admitted with ``priority`` and the queue takes them before the
    others' (:class:`WeightedFairQueue` order within each class); it then sees the
    whole capacity at its own load, and an over-share tenant gets what is left —
    in the long run still at least its share, since the others use no more than
    theirs. Demand: every request that reaches this policy, admitted or not, and every
    request refused before it (a tenant's rate limit or quota, ``ModelView.refused``),
    as a rate per tenant decayed over ``demand_tau_s`` (default 3 s: a flood is
    recognized within a few seconds, and a tenant at 60 req/s is estimated within
    about 7 %, :func:`fold_demand`); within share: :func:`within_share` over those rates, the
    weights of ``tenant_queues`` and the replicas' *demonstrated* speed, with
    ``reserve_headroom``. Demonstrated speed (:func:`fold_speeds`): per READY replica, the
    held peak of its gross speed ``max(c_i, rate_i)`` (its speed while busy, not what it
    nets after the server's overhead) smoothed over ``speed_smooth_s`` (default 5 s; the
    peak of the unsmoothed, noisy rate overstated a MiniLM replica's speed by 60 %, and a
    flooder then stayed "within its share" for 2–3 s), decaying with ``speed_tau_s``
    (default 300 s). Both
    choices keep a flood's cost to the server off the tenants within their shares: a
    flood's parsing and refusing took CPU from the worker and cut a MiniLM replica's net
    rate by a fifth, and its measured speed by up to 40 % for 15 s at a time (measured:
    at the replica's current speed, a tenant at exactly its share was classified over it
    for those 15 s and 7 % of its requests were refused); the decay lets a replica
    that has really become slower (another program on the machine) lower the shares
    within minutes. "Ahead" then counts each tenant's
    waiting requests in its class (:func:`fair_ahead`), and a request outside the
    first class is also overtaken by the first class's *future* arrivals while it
    waits: its wait is predicted at ``capacity − Σ_{t first} d_t`` (at least
    :data:`MIN_LEFT_SHARE` of ``capacity``), not at ``capacity``.
    The headroom bounds what the reserve can cost an over-share tenant: the others
    may take up to ``1 + headroom`` times their shares before it. With a FIFO queue
    (one tenant) there is nothing to reserve: no ``priority``.

    Edge cases: no READY replica but one STARTING → admit (capacity is on its way and
    the queue holds the request); no replica READY or STARTING → reject with reason
    ``"no capacity"`` and ``retry_after_s = no_capacity_retry_s`` (default 1 s);
    capacity or service unknown (all c_i = 0, or no prediction for any replica) →
    admit (no evidence the deadline will be missed). These admissions carry no
    ``promised_by``. State: :class:`AdmissionState` (``None`` = empty).
    """

    name = "deadline"
    latencies: LatencyMap = field(default_factory=dict)
    no_capacity_retry_s: float = NO_CAPACITY_RETRY_S
    quantile: float = 0.995
    window: int = 2048
    min_samples: int = 64
    max_margin_ratio: float = 0.8
    initial_stretch: float = 2.0
    reserve_headroom: float | None = 0.25
    demand_tau_s: float = 3.0
    speed_smooth_s: float = 5.0
    speed_tau_s: float = 300.0
    margin_tau_s: float | None = 60.0

    def __post_init__(self) -> None:
        if self.no_capacity_retry_s < 0:
            raise CoscaleError(
                f"deadline: no_capacity_retry_s={self.no_capacity_retry_s} < 0",
                fix="use 1.0",
                code="invalid_policy_params",
            )
        if not 0.0 < self.quantile <= 1.0 or self.window < 0 or self.min_samples < 0:
            raise CoscaleError(
                f"deadline: quantile={self.quantile} must be in (0, 1], "
                f"window={self.window} >= 0 and min_samples={self.min_samples} >= 0",
                fix="use quantile 0.995, window 2048 (0 turns the learned stretch off) "
                "and min_samples 64",
                code="invalid_policy_params",
            )
        if (self.reserve_headroom is not None and self.reserve_headroom < 0) or not (
            self.demand_tau_s > 0 and self.speed_tau_s > 0 and self.speed_smooth_s > 0
        ):
            raise CoscaleError(
                f"deadline: reserve_headroom={self.reserve_headroom} must be >= 0 (or null), "
                f"demand_tau_s={self.demand_tau_s}, speed_smooth_s={self.speed_smooth_s} and "
                f"speed_tau_s={self.speed_tau_s} > 0",
                fix="use reserve_headroom 0.25 (null: no reserved shares), demand_tau_s 3, "
                "speed_smooth_s 5 and speed_tau_s 300",
                code="invalid_policy_params",
            )
        if self.margin_tau_s is not None and not self.margin_tau_s > 0:
            raise CoscaleError(
                f"deadline: margin_tau_s={self.margin_tau_s} must be > 0 (or null)",
                fix="use margin_tau_s 60 (null: the window's quantiles, no held peaks)",
                code="invalid_policy_params",
            )
        if not 0.0 <= self.max_margin_ratio < 1.0 or not self.initial_stretch >= 1.0:
            raise CoscaleError(
                f"deadline: max_margin_ratio={self.max_margin_ratio} must be in [0, 1) "
                f"and initial_stretch={self.initial_stretch} >= 1",
                fix="use max_margin_ratio 0.8 and initial_stretch 2",
                code="invalid_policy_params",
            )

    def learn(
        self,
        state: AdmissionState | None,
        promises: tuple[tuple[str, float, float], ...],
        now: float,
    ) -> AdmissionState:
        """Fold new ``(tenant, promised, taken)`` reports, received at ``now``, into each
        tenant's windows of stretches ``taken / promised`` and errors ``taken − promised``
        and their held peaks (class docstring, "The learned margin" and "Held peaks"; a
        report with ``promised ≤ 0`` carries no ratio and is skipped).
        O(T + window + k log window) for k new ones."""
        state = AdmissionState() if state is None else state
        if not promises or self.window == 0:
            return state
        new: dict[str, list[tuple[float, float]]] = {}
        for tenant, promised, taken in promises:
            if promised > 0:
                new.setdefault(tenant, []).append((promised, taken))
        tenants = dict(state.tenants)
        for tenant, pairs in new.items():
            tenants[tenant] = self._fold(tenants.get(tenant, _EMPTY), pairs, now)
        return replace(state, tenants=tuple(sorted(tenants.items())))

    def _fold(
        self, state: MarginState, pairs: list[tuple[float, float]], now: float
    ) -> MarginState:
        """One tenant's windows after new ``(promised, taken)`` pairs at ``now``, their
        quantiles and held peaks. O(window + k log window)."""
        stretches, stretches_ordered = _slide(
            state.stretches, state.stretches_ordered, tuple(t / p for p, t in pairs), self.window
        )
        errors, errors_ordered = _slide(
            state.errors, state.errors_ordered, tuple(t - p for p, t in pairs), self.window
        )
        rank = _rank(len(stretches_ordered), self.quantile)
        stretch = max(1.0, stretches_ordered[rank])
        error = max(0.0, errors_ordered[rank])
        held_stretch, held_error = stretch, error
        if self.margin_tau_s is not None:
            decay = math.exp(-max(0.0, now - state.held_at) / self.margin_tau_s)
            held_stretch = max(stretch, 1.0 + (state.held_stretch - 1.0) * decay)
            held_error = max(error, state.held_error * decay)
        first_at = min(state.first_at, now)
        return MarginState(
            stretches,
            stretches_ordered,
            stretch,
            errors,
            errors_ordered,
            error,
            held_stretch,
            held_error,
            now,
            first_at,
        )

    def _within_share(
        self, view: ModelView | None, rates: Mapping[str, float], capacity: float
    ) -> frozenset[str]:
        """The tenants served first (class docstring, "Reserved shares")."""
        assert view is not None and self.reserve_headroom is not None
        weights = {t: w for t, _, w in view.tenant_queues}
        return within_share(rates, weights, capacity, self.reserve_headroom)

    def _margin(self, tenant: MarginState, expected: float, cap: float, now: float) -> float:
        """The margin for a request predicted to finish in ``expected`` seconds (class
        docstring, "The learned margin" and "Held peaks"): ``min(max(min((ρ − 1) ·
        expected, e), untested), cap)`` with ρ and e the held peaks (at least the window's
        quantiles) and ``untested = (initial_stretch − 1) · exp(−age / τ) · expected``;
        ``(initial_stretch − 1) · expected`` before ``min_samples`` reports; 0 with
        ``window = 0``."""
        if self.window == 0:
            return 0.0
        untested = (self.initial_stretch - 1.0) * expected
        if len(tenant.stretches) < self.min_samples:
            return min(untested, cap)
        stretch = max(tenant.stretch, tenant.held_stretch)
        error = max(tenant.error, tenant.held_error)
        learned = min((stretch - 1.0) * expected, error)
        if self.margin_tau_s is not None and tenant.stretches:
            age = max(0.0, now - tenant.first_at)
            learned = max(learned, untested * math.exp(-age / self.margin_tau_s))
        return min(learned, cap)

    def decide(
        self, request: Request, snapshot: Snapshot, state: AdmissionState | None
    ) -> tuple[AdmissionDecision, AdmissionState]:
        view = snapshot.model(request.model)
        now = max(snapshot.time, request.arrival)
        state = self.learn(state, view.promises if view is not None else (), now)
        fair = view is not None and bool(view.tenant_queues) and self.reserve_headroom is not None
        if fair:
            assert view is not None
            arrivals = ((request.tenant, request.items), *view.refused)
            state = replace(
                state, demand=fold_demand(state.demand, arrivals, now, self.demand_tau_s)
            )
        replicas = snapshot.replicas_of(request.model)
        ready = [r for r in replicas if r.serving]
        if not ready:
            if any(r.state is ReplicaState.STARTING for r in replicas):
                return ADMIT, state
            return AdmissionDecision(False, "no capacity", self.no_capacity_retry_s), state
        capacity = sum(r.capacity_rps if r.capacity_rps > 0 else r.rate for r in ready)
        services = [
            s
            for r in ready
            if (s := predicted_service_s(self.latencies, r, request.items, request.seq_len))
            is not None
        ]
        if capacity <= 0 or not services:
            return ADMIT, state
        first: frozenset[str] | None = None
        speed = capacity
        if fair:
            rates = demand_rates(state.demand, now, self.demand_tau_s)
            speeds = fold_speeds(state.speeds, ready, now, self.speed_smooth_s, self.speed_tau_s)
            state = replace(state, speeds=speeds)
            gross = shown_speed(speeds)
            first = self._within_share(view, rates, gross)
            if request.tenant not in first:
                taken = sum(rates.get(t, 0.0) for t in first)
                speed = max(MIN_LEFT_SHARE * capacity, capacity - taken)
        priority = first is not None and request.tenant in first
        queued = fair_ahead(view, request.tenant, first) if view is not None else 0.0
        ahead = queued + sum(r.outstanding for r in ready)
        predicted = now + ahead / speed + min(services)
        cap = self.max_margin_ratio * max(0.0, request.deadline - request.arrival)
        margin = (
            self._margin(state.of(request.tenant), predicted - now, cap, now) if ahead > 0 else 0.0
        )
        target = request.deadline - margin
        if predicted <= target:
            busy = all(r.outstanding > 0 for r in ready)  # the wait is capacity's
            promise = predicted if busy else None
            return AdmissionDecision(True, promised_by=promise, priority=priority), state
        late = predicted - target
        reason = (
            f"predicted completion in {predicted - now:.3f} s ({ahead:.0f} requests ahead at "
            f"{speed:.1f} items/s) misses the deadline by {late:.3f} s"
            + (f" (with a {margin:.3f} s margin)" if margin > 0 else "")
        )
        return AdmissionDecision(False, reason, late), state


# ----------------------------------------------------------------- weighted fair queueing


@dataclass(frozen=True, slots=True)
class _Tagged:
    start: float
    finish: float
    seq: int
    request: Request
    cls: int = 1


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
    finish tag of tenant t's previous request (0 for a new tenant). **Pop** removes,
    among the tenants' oldest requests, the one with the smallest ``(class, start tag)``
    (ties → pushed first; class 0 for a request pushed with ``priority``, else 1: a
    tenant within its reserved share, :class:`DeadlineAdmission`) and sets ``v`` to its
    start tag; when the queue becomes empty, ``v`` jumps to the largest finish tag
    served, so an idle tenant cannot bank credit. Each tenant stays a FIFO: its
    priority requests wait behind its own older ones. **Pop on an empty queue** →
    ``(None, state)``.

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

    def push(
        self, state: FairQueueState | None, request: Request, priority: bool = False
    ) -> FairQueueState:
        state = FairQueueState() if state is None else state
        queues = dict(state.tenants)
        tq = queues.get(request.tenant, TenantQueue())
        start = max(state.virtual_time, tq.last_finish)
        finish = start + request.items / self.weight(request.tenant)
        entry = _Tagged(start, finish, state.seq, request, 0 if priority else 1)
        queues[request.tenant] = tq.push(entry)
        return FairQueueState(
            state.virtual_time, state.seq + 1, state.max_finish, tuple(sorted(queues.items()))
        )

    def pop(self, state: FairQueueState | None) -> tuple[Request | None, FairQueueState]:
        state = FairQueueState() if state is None else state
        heads = [
            (e.cls, e.start, e.seq, t) for t, q in state.tenants if (e := q.peek()) is not None
        ]
        if not heads:
            return None, state
        *_, tenant = min(heads)
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
