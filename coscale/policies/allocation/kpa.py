"""Knative Pod Autoscaler (KPA) on the concurrency metric, per model.

The algorithm of Knative Serving's autoscaler (``pkg/autoscaler/scaling/autoscaler.go``)
and the KPA reconciler's bounds and scale-to-zero grace, with each model standing for
one Revision.

**Samples.** Every call records the model's concurrency ``c = Σ outstanding`` of its
replicas (any state) ``+`` its admission queue length (0 when the model is missing from
the snapshot) at the snapshot time. Samples older than the stable window are dropped
and at most ``max_samples`` (default 4,096) are kept, so the state is bounded.

**Ticks.** Every ``tick_s`` = 2 s — a call sooner than that after the last tick only
records its sample and returns the last decision — with ``ready = max(1, ready
replicas)`` (Knative uses 1 when no pod is ready):

1. **Target** concurrency per replica: ``base × target_utilization`` (0.7), with ``base``
   = the ``target`` parameter (Knative's per-revision ``autoscaling.knative.dev/target``
   annotation) when given, else ``container_concurrency`` when > 0, else 100: Knative's
   default ``100 × 0.7 = 70``. ``target="slo"`` sets each model's annotation from its
   profile, as an operator would after a load test: the concurrency one replica of the
   option the plan fills first (the first ranked) holds at the utilisation every
   allocation policy plans it for (``u`` = planning / saturation capacity, see
   :mod:`.capacity`; it keeps the SLO's wait tail). One item at a time (M/M/1) that is
   ``base = max(1, u / (1 − u))``; a batching option (``u = 1``) holds about its
   capacity times half the SLO in flight, ``base = max(1, μ × S / 2)``. For a
   millisecond model this keeps the SLO; 100 is tuned for web services, not for it.
2. **Averages**: ``stable_avg`` / ``panic_avg`` = mean of the samples of the last
   ``stable_window_s`` = 60 s / ``panic_window_s`` = 6 s (10 % of stable), the current
   one included; ``stable_pods = ceil(stable_avg / target)``, ``panic_pods =
   ceil(panic_avg / target)``.
3. **Rate bounds**: both clamped to ``[floor(ready / max_scale_down_rate),
   ceil(ready × max_scale_up_rate)]`` (Knative defaults 2.0 and 1000).
4. **Panic**: a tick is *over* when ``ceil(panic_avg / target) / ready ≥
   panic_threshold`` (2.0, i.e. 200 %). The first over tick starts panic; each over tick
   refreshes the panic time; panic ends on a tick that is not over once the last panic
   time is more than ``stable_window_s`` ago.
5. **Desired**: in panic ``max(stable_pods, panic_pods)``, never below the largest count
   desired since panic began (no scale-down in panic); otherwise ``stable_pods``.
6. **Bounds**: clamped to ``[min_replicas, max_replicas]`` (defaults 0 and the replicas
   the model's pools hold, S_t).
7. **Scale to zero**: a desired 0 (no traffic for a whole stable window) after a non-zero
   decision keeps 1 replica until the desired count has been 0 for
   ``scale_to_zero_grace_s`` = 30 s; a model already at 0 stays at 0 with no grace.
   Traffic at zero replicas (queued requests) gives ``stable_pods ≥ 1``: cold start.
8. **Placement** on the cheapest on-demand option per unit capacity first, spilling over
   full pools; a count at S_t, or fewer placed because every pool is full, is said in
   the reason.

Complexity per call: O(N + M × (S + P)) for N replicas, M models, S samples, P pools.
"""

from __future__ import annotations

from dataclasses import dataclass

from coscale.policies.allocation.capacity import (
    ACTIVE_STATES,
    DEFAULT_TYPICAL_SEQ_LEN,
    EPS,
    LATENCY_BUDGET_FRACTION,
    ModelOptions,
    PoolLedger,
    best_effort_rps,
    capacity_rps,
    ceil_int,
    floor_int,
    plan_counts,
    pool_limit,
    rank_context,
    require,
    validate_common,
    validate_context,
)
from coscale.policies.base import AllocationContext, ModelTarget
from coscale.types import Plan, ReplicaState, Snapshot


@dataclass(frozen=True, slots=True)
class KpaModel:
    """Per model: concurrency samples (time, value), the last desired count, panic and
    scale-to-zero bookkeeping."""

    samples: tuple[tuple[float, float], ...]
    desired: int
    panic_time: float | None = None
    max_panic_pods: int = 0
    zero_since: float | None = None


@dataclass(frozen=True, slots=True)
class KpaState:
    last_tick: float
    models: tuple[tuple[str, KpaModel], ...]

    def get(self, model: str) -> KpaModel | None:
        return next((m for name, m in self.models if name == model), None)


class KpaPolicy:
    """Knative KPA (see the module docstring for the algorithm)."""

    name = "kpa"

    def __init__(
        self,
        context: AllocationContext,
        *,
        container_concurrency: int = 0,
        target: float | str | None = None,
        target_utilization: float = 0.7,
        default_target: float = 100.0,
        tick_s: float = 2.0,
        stable_window_s: float = 60.0,
        panic_window_s: float = 6.0,
        panic_threshold: float = 2.0,
        max_scale_up_rate: float = 1000.0,
        max_scale_down_rate: float = 2.0,
        scale_to_zero_grace_s: float = 30.0,
        min_replicas: int = 0,
        max_replicas: int | None = None,
        max_samples: int = 4096,
        seq_len: int = DEFAULT_TYPICAL_SEQ_LEN,
        budget_fraction: float = LATENCY_BUDGET_FRACTION,
    ) -> None:
        validate_context(context)
        validate_common(seq_len, budget_fraction)
        require(
            container_concurrency >= 0 and 0 < target_utilization <= 1 and default_target > 0,
            "need container_concurrency >= 0, 0 < target_utilization <= 1, default_target > 0",
            "use Knative's defaults: 0 (unlimited), 0.7 and 100",
        )
        require(
            tick_s > 0 and 0 < panic_window_s <= stable_window_s and scale_to_zero_grace_s >= 0,
            "need tick_s > 0, 0 < panic_window_s <= stable_window_s, grace >= 0",
            "use Knative's defaults: 2 s, 6 s, 60 s and 30 s",
        )
        require(
            panic_threshold > 0 and max_scale_up_rate >= 1 and max_scale_down_rate >= 1,
            "need panic_threshold > 0 and scale rates >= 1",
            "use Knative's defaults: 2.0, 1000 and 2.0",
        )
        require(
            min_replicas >= 0 and (max_replicas is None or max_replicas >= min_replicas),
            f"need 0 <= min_replicas <= max_replicas, got {min_replicas}, {max_replicas}",
            "fix the replica bounds",
        )
        require(max_samples >= 1, "max_samples must be >= 1", "keep at least one sample")
        require(
            target is None or target == "slo" or (not isinstance(target, str) and target > 0),
            f"target must be a number > 0 or 'slo', got {target!r}",
            "give the concurrency per replica, or 'slo' to derive it from the profile",
        )
        self.context = context
        base = container_concurrency if container_concurrency > 0 else default_target
        if target is not None and not isinstance(target, str):
            base = float(target)
        self.target = base * target_utilization
        self.tick_s = tick_s
        self.stable_window_s = stable_window_s
        self.panic_window_s = panic_window_s
        self.panic_threshold = panic_threshold
        self.max_scale_up_rate = max_scale_up_rate
        self.max_scale_down_rate = max_scale_down_rate
        self.scale_to_zero_grace_s = scale_to_zero_grace_s
        self.min_replicas = min_replicas
        self.max_samples = max_samples
        self._options = rank_context(
            context, allow_spot=False, seq_len=seq_len, budget_fraction=budget_fraction
        )
        self._targets = {m: self.target for m in self._options}
        if target == "slo":
            self._targets = {
                m.model: target_utilization
                * slo_concurrency(
                    self._options[m.model].candidates[0].capacity_rps
                    if self._options[m.model].candidates
                    else 0.0,
                    _first_saturation(m, self._options[m.model], seq_len, budget_fraction),
                    m.slo_s,
                )
                for m in context.models
            }
        self._s_t = {m: pool_limit(o, context.pools) for m, o in self._options.items()}
        self._max = {
            m: max_replicas if max_replicas is not None else n for m, n in self._s_t.items()
        }
        self._ledger = PoolLedger.template(context.pools, 0.0)

    def decide(self, snapshot: Snapshot, state: KpaState | None) -> tuple[Plan, KpaState]:
        now = snapshot.time
        concurrency, ready, active = self._observe(snapshot)
        tick = state is None or now - state.last_tick >= self.tick_s - EPS
        models: list[tuple[str, KpaModel]] = []
        for m in self.context.models:
            prev = state.get(m.model) if state is not None else None
            samples = self._record(prev, now, concurrency.get(m.model, 0.0))
            if prev is None:
                prev = KpaModel(samples, active.get(m.model, 0))
            if tick:
                models.append((m.model, self._tick(m.model, now, samples, ready, prev)))
            else:
                models.append((m.model, _with_samples(prev, samples)))
        last_tick = now if tick or state is None else state.last_tick
        counts = {name: km.desired for name, km in models}
        head = "kpa" if tick else "kpa: between ticks"
        plan = plan_counts(now, counts, self._options, self._ledger.copy(), head, self._s_t)
        return plan, KpaState(last_tick, tuple(models))

    def _observe(
        self, snapshot: Snapshot
    ) -> tuple[dict[str, float], dict[str, int], dict[str, int]]:
        """Concurrency, ready and active (starting + ready) replicas per model: O(N)."""
        concurrency: dict[str, float] = {v.name: float(v.queue_length) for v in snapshot.models}
        ready: dict[str, int] = {}
        active: dict[str, int] = {}
        for r in snapshot.replicas:
            concurrency[r.model] = concurrency.get(r.model, 0.0) + r.outstanding
            if r.state is ReplicaState.READY:
                ready[r.model] = ready.get(r.model, 0) + 1
            if r.state in ACTIVE_STATES:
                active[r.model] = active.get(r.model, 0) + 1
        return concurrency, ready, active

    def _record(
        self, prev: KpaModel | None, now: float, value: float
    ) -> tuple[tuple[float, float], ...]:
        old = prev.samples if prev is not None else ()
        cutoff = now - self.stable_window_s
        kept = tuple(s for s in old if s[0] > cutoff and s[0] < now)
        return (*kept, (now, value))[-self.max_samples :]

    def _tick(
        self,
        model: str,
        now: float,
        samples: tuple[tuple[float, float], ...],
        ready_by_model: dict[str, int],
        prev: KpaModel,
    ) -> KpaModel:
        ready = max(1, ready_by_model.get(model, 0))
        stable = _mean(samples, now - self.stable_window_s)
        panic = _mean(samples, now - self.panic_window_s)
        target = self._targets[model]
        stable_raw = ceil_int(stable / target)
        panic_raw = ceil_int(panic / target)
        lo = floor_int(ready / self.max_scale_down_rate)
        hi = ceil_int(ready * self.max_scale_up_rate)
        stable_pods = min(max(stable_raw, lo), hi)
        panic_pods = min(max(panic_raw, lo), hi)
        over = panic_raw / ready >= self.panic_threshold
        panic_time, max_panic = prev.panic_time, prev.max_panic_pods
        if over:
            panic_time = now
        elif panic_time is not None and panic_time + self.stable_window_s < now:
            panic_time, max_panic = None, 0
        desired = stable_pods
        if panic_time is not None:
            desired = max(desired, panic_pods, max_panic)
            max_panic = desired
        desired = min(max(desired, self.min_replicas), self._max[model])
        zero_since = prev.zero_since
        if desired > 0:
            zero_since = None
        elif prev.desired > 0:
            zero_since = now if zero_since is None else zero_since
            if now - zero_since < self.scale_to_zero_grace_s - EPS:
                desired = 1
        return KpaModel(samples, desired, panic_time, max_panic, zero_since)


def slo_concurrency(planning_rps: float, saturation_rps: float, slo_s: float) -> float:
    """Rule 1's ``base`` for ``target="slo"``: ``max(1, u / (1 − u))`` with ``u`` =
    planning / saturation capacity, or ``max(1, μ × S / 2)`` when ``u ≥ 1``."""
    if saturation_rps <= 0:
        return 1.0
    u = planning_rps / saturation_rps
    if u >= 1.0 - 1e-9:
        return max(1.0, saturation_rps * slo_s / 2.0)
    return max(1.0, u / (1.0 - u))


def _first_saturation(
    target: ModelTarget, options: ModelOptions, seq_len: int, budget_fraction: float
) -> float:
    """Saturation capacity of the model's first-ranked candidate (0 with none)."""
    if not options.candidates:
        return 0.0
    first = options.candidates[0]
    for o in target.options:
        if (o.variant, o.node.name) == (first.variant, first.node_type):
            cap = capacity_rps(o, target.slo_s, seq_len=seq_len, budget_fraction=budget_fraction)
            return cap if cap > 0 else best_effort_rps(o, seq_len=seq_len)
    return first.capacity_rps


def _with_samples(prev: KpaModel, samples: tuple[tuple[float, float], ...]) -> KpaModel:
    return KpaModel(samples, prev.desired, prev.panic_time, prev.max_panic_pods, prev.zero_since)


def _mean(samples: tuple[tuple[float, float], ...], cutoff: float) -> float:
    values = [v for t, v in samples if t > cutoff]
    return sum(values) / len(values) if values else 0.0
