"""Kubernetes Horizontal Pod Autoscaler (autoscaling/v2 with its default behavior), per model.

The algorithm of the Kubernetes HPA controller (``replica_calculator.go`` and
``horizontal.go``) with each model standing for one Deployment. Every
``sync_period_s`` = 15 s — a call sooner than that after the last sync returns the last
decision unchanged — and for each model of the context, with ``spec`` = the replica
count the HPA last asked for (before its first sync: the model's starting + ready
replicas in the snapshot):

1. **Bounds.** ``spec > max_replicas`` → ``max_replicas``; ``spec < min_replicas`` →
   ``min_replicas``, no metric read. This covers the cold start: at 0 replicas
   Kubernetes leaves the workload alone; coscale starts ``min_replicas`` (default 1).
2. **Utilization metric** (target ``u*`` = ``target_utilization``, default 0.6, of
   :attr:`ReplicaView.utilization`). Pods are the model's starting and ready replicas
   (draining ones are pods being deleted: ignored). A ready replica started less than
   ``metric_window_s`` (default 15 s) ago has no full measurement: its metric is
   *missing*; a starting replica is *unready*. ``ratio = mean(utilization of ready
   pods with a metric) / u*``.

   a. No unready pod during a scale-up and no missing metric:
      ``|ratio − 1| ≤ tolerance`` (0.1) → ``spec``; else
      ``ceil(ratio × pods with a metric)``.
   b. Missing metrics count as ``max(100 %, u*)`` when ``ratio < 1`` (scale down) and
      as 0 % when ``ratio > 1`` (scale up).
   c. Unready pods count as 0 % when ``ratio > 1``.
   d. Then ``ratio'`` is recomputed over the pods counted; within the tolerance, or on
      the other side of 1 than ``ratio`` → ``spec``; else ``ceil(ratio' × pods
      counted)``, unless that count moves the other way than ``ratio'`` says → ``spec``.
   e. No ready pod with a metric (no pods at all, or all starting / missing): the
      metric is invalid.
3. **Requests-per-replica metric** (optional, ``target_rps_per_replica`` = ``r*``, an
   External AverageValue metric): ``usage`` = the model's ``arrival_rate``,
   ``ratio = usage / (r* × pods)``; ``|ratio − 1| ≤ tolerance`` → ``pods``; else
   ``ceil(usage / r*)`` (so it scales from 0 pods). No pods and no traffic → 0. The
   model missing from the snapshot → invalid.
4. **Several metrics**: the largest proposal. If every metric is invalid, or one is
   invalid and the others propose less than ``spec``, nothing changes (``spec`` is
   kept and no recommendation is recorded).
5. **Scale-down stabilization**: each proposal is recorded with its time; the
   recommendation is ``min(max(spec, proposal), max(proposals recorded in the last
   stabilization_window_s = 300 s, this one included))``. Scale-up has no window. The
   first sync seeds the window with ``spec``, so a new HPA does not scale down for 300 s.
6. **Rate limits** per sync (15 s): up to ``max(ceil(2 × spec), spec + 4)`` (100 % or
   4 pods, whichever is more); down by 100 % (no limit) but never below
   ``min_replicas``; never above ``max_replicas`` (default: the replicas the model's
   pools can hold, S_t). Syncs are at least one period apart, so no earlier scale event
   falls inside a period and the limits apply to ``spec``.
7. **Placement**: on the cheapest on-demand option per unit capacity first, spilling to
   the next when a pool is full (see :mod:`.capacity`); when all pools are full fewer
   replicas are placed and the reason says so, while the HPA keeps ``spec`` at its
   desired count (as Kubernetes keeps Pending pods in the Deployment's spec). A count
   that reaches S_t is said in the reason too.

Every ceil ignores floating-point noise below 1e-9. Complexity per sync: O(N + M × (W + P))
for N replicas, M models, W recorded proposals (≤ window / sync + 1) and P pools.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from coscale.policies.allocation.capacity import (
    DEFAULT_TYPICAL_SEQ_LEN,
    EPS,
    LATENCY_BUDGET_FRACTION,
    PoolLedger,
    ceil_int,
    group_by_model,
    plan_counts,
    pool_limit,
    rank_context,
    require,
    validate_common,
    validate_context,
)
from coscale.policies.base import AllocationContext
from coscale.types import ModelView, Plan, ReplicaState, ReplicaView, Snapshot


@dataclass(frozen=True, slots=True)
class HpaModel:
    """Per model: ``spec`` (last desired count) and the recorded (time, proposal) pairs."""

    spec: int
    recommendations: tuple[tuple[float, int], ...] = ()


@dataclass(frozen=True, slots=True)
class HpaState:
    last_sync: float
    models: tuple[tuple[str, HpaModel], ...]

    def get(self, model: str) -> HpaModel | None:
        return next((m for name, m in self.models if name == model), None)


class HpaPolicy:
    """Kubernetes HPA (see the module docstring for the algorithm)."""

    name = "hpa"

    def __init__(
        self,
        context: AllocationContext,
        *,
        target_utilization: float | None = 0.6,
        target_rps_per_replica: float | None = None,
        tolerance: float = 0.1,
        sync_period_s: float = 15.0,
        stabilization_window_s: float = 300.0,
        scale_up_percent: float = 100.0,
        scale_up_pods: int = 4,
        metric_window_s: float = 15.0,
        min_replicas: int = 1,
        max_replicas: int | None = None,
        seq_len: int = DEFAULT_TYPICAL_SEQ_LEN,
        budget_fraction: float = LATENCY_BUDGET_FRACTION,
    ) -> None:
        validate_context(context)
        validate_common(seq_len, budget_fraction)
        require(
            target_utilization is not None or target_rps_per_replica is not None,
            "the HPA needs at least one metric",
            "set target_utilization and/or target_rps_per_replica",
        )
        require(
            target_utilization is None or target_utilization > 0,
            f"target_utilization must be > 0, got {target_utilization}",
            "use a busy fraction such as 0.6",
        )
        require(
            target_rps_per_replica is None or target_rps_per_replica > 0,
            f"target_rps_per_replica must be > 0, got {target_rps_per_replica}",
            "use the requests/s one replica should take",
        )
        require(tolerance >= 0, f"tolerance must be >= 0, got {tolerance}", "use e.g. 0.1")
        require(
            sync_period_s > 0 and stabilization_window_s >= 0 and metric_window_s >= 0,
            "sync_period_s must be > 0 and the windows >= 0",
            "use the Kubernetes defaults 15 s, 300 s and 15 s",
        )
        require(
            scale_up_percent >= 0 and scale_up_pods >= 0,
            "scale-up limits must be >= 0",
            "use the Kubernetes defaults 100 % and 4 pods",
        )
        require(
            min_replicas >= 0 and (max_replicas is None or max_replicas >= min_replicas),
            f"need 0 <= min_replicas <= max_replicas, got {min_replicas}, {max_replicas}",
            "fix the replica bounds",
        )
        self.context = context
        self.target_utilization = target_utilization
        self.target_rps_per_replica = target_rps_per_replica
        self.tolerance = tolerance
        self.sync_period_s = sync_period_s
        self.stabilization_window_s = stabilization_window_s
        self.scale_up_percent = scale_up_percent
        self.scale_up_pods = scale_up_pods
        self.metric_window_s = metric_window_s
        self.min_replicas = min_replicas
        ranked = rank_context(
            context, allow_spot=False, seq_len=seq_len, budget_fraction=budget_fraction
        )
        self._options = ranked
        self._s_t = {m: pool_limit(o, context.pools) for m, o in ranked.items()}
        self._max = {
            m: max_replicas if max_replicas is not None else n for m, n in self._s_t.items()
        }
        self._ledger = PoolLedger.template(context.pools, 0.0)

    def decide(self, snapshot: Snapshot, state: HpaState | None) -> tuple[Plan, HpaState]:
        now = snapshot.time
        if state is not None and now - state.last_sync < self.sync_period_s - EPS:
            counts = {m.model: self._spec(state, m.model) for m in self.context.models}
            return self._plan(now, counts, "hpa: between syncs"), state
        pods_by_model = group_by_model(snapshot.replicas)
        views = {v.name: v for v in snapshot.models}
        new_models: list[tuple[str, HpaModel]] = []
        for m in self.context.models:
            pods = pods_by_model.get(m.model, [])
            prev = state.get(m.model) if state is not None else None
            spec = prev.spec if prev is not None else len(pods)
            new_models.append(
                (m.model, self._model(m.model, now, spec, pods, views.get(m.model), prev))
            )
        counts = {name: hm.spec for name, hm in new_models}
        return self._plan(now, counts, "hpa"), HpaState(now, tuple(new_models))

    # ----------------------------------------------------------------- per model

    def _spec(self, state: HpaState, model: str) -> int:
        hm = state.get(model)
        return hm.spec if hm is not None else 0

    def _plan(self, now: float, counts: dict[str, int], head: str) -> Plan:
        return plan_counts(now, counts, self._options, self._ledger.copy(), head, self._s_t)

    def _model(
        self,
        model: str,
        now: float,
        spec: int,
        pods: Sequence[ReplicaView],
        view: ModelView | None,
        prev: HpaModel | None,
    ) -> HpaModel:
        recs = prev.recommendations if prev is not None else ()
        upper = self._max[model]
        if spec > upper:
            return HpaModel(upper, recs)
        if spec < self.min_replicas:
            return HpaModel(self.min_replicas, recs)
        proposal = self._proposal(now, spec, pods, view)
        if proposal is None:
            return HpaModel(spec, recs)
        cutoff = now - self.stabilization_window_s
        if prev is None and self.stabilization_window_s > 0:
            recs = ((now, spec),)
        window = tuple(r for r in recs if r[0] > cutoff)
        stabilized = min(max(spec, proposal), max([proposal, *(n for _, n in window)]))
        window = (*window, (now, proposal))
        return HpaModel(self._rate_limit(spec, stabilized, upper), window)

    def _rate_limit(self, spec: int, desired: int, upper: int) -> int:
        if desired > spec:
            limit = max(
                ceil_int(spec * (1 + self.scale_up_percent / 100)), spec + self.scale_up_pods
            )
            return min(desired, limit, upper)
        if desired < spec:
            return max(desired, self.min_replicas)
        return desired

    def _proposal(
        self, now: float, spec: int, pods: Sequence[ReplicaView], view: ModelView | None
    ) -> int | None:
        proposals: list[int] = []
        invalid = 0
        metrics = 0
        if self.target_utilization is not None:
            metrics += 1
            p = self._utilization(now, spec, pods, self.target_utilization)
            invalid += p is None
            proposals += [p] if p is not None else []
        if self.target_rps_per_replica is not None:
            metrics += 1
            p = self._rps(pods, view, self.target_rps_per_replica)
            invalid += p is None
            proposals += [p] if p is not None else []
        best = max(proposals, default=0)
        if invalid >= metrics or (invalid > 0 and best < spec):
            return None
        return best

    def _utilization(
        self, now: float, spec: int, pods: Sequence[ReplicaView], target: float
    ) -> int | None:
        ready = [p for p in pods if p.state is ReplicaState.READY]
        measured = [p.utilization for p in ready if now - p.started_at >= self.metric_window_s]
        missing = len(ready) - len(measured)
        unready = len(pods) - len(ready)
        if not measured:
            return None
        ratio = sum(measured) / len(measured) / target
        up_with_unready = unready > 0 and ratio > 1
        if not up_with_unready and missing == 0:
            if abs(1 - ratio) <= self.tolerance:
                return spec
            return ceil_int(ratio * len(measured))
        values = list(measured)
        if missing and ratio < 1:
            values += [max(1.0, target)] * missing
        elif missing and ratio > 1:
            values += [0.0] * missing
        if up_with_unready:
            values += [0.0] * unready
        new_ratio = sum(values) / len(values) / target
        if (
            abs(1 - new_ratio) <= self.tolerance
            or (ratio < 1 < new_ratio)
            or (new_ratio < 1 < ratio)
        ):
            return spec
        desired = ceil_int(new_ratio * len(values))
        if (new_ratio < 1 and desired > spec) or (new_ratio > 1 and desired < spec):
            return spec
        return desired

    def _rps(
        self, pods: Sequence[ReplicaView], view: ModelView | None, target: float
    ) -> int | None:
        if view is None:
            return None
        usage, n = view.arrival_rate, len(pods)
        if n == 0:
            return ceil_int(usage / target)
        ratio = usage / (target * n)
        if abs(1 - ratio) <= self.tolerance:
            return n
        return ceil_int(usage / target)
