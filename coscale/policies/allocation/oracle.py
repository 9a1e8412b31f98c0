"""The oracle: the cost lower bound, an allocation that knows the future demand.

Constructed with each model's future demand — a :class:`~.capacity.DemandCurve` (rates
per time bin) or a function of time returning requests/s — it obeys the same start-up
delays, billing, capacities and pools as every other policy. At each call, with
``t`` = the snapshot's time, ``Δ`` = ``context.interval_s`` and ``u`` = the model's
start-up (the longest of its options, as for the predictive policy):

1. **Future**: ``D_future`` = peak demand over ``[t + u, t + u + Δ]``: what replicas
   started now must serve (they are ready at ``t + u``; the next decision's at
   ``t + Δ + u``).
2. **Keep**: replicas that exist serve at once and cannot be replaced before ``t + u``,
   so the oracle keeps as much of them as the demand until then needs:
   ``C = max(D_future, min(existing, D_window))`` with ``D_window`` = peak demand over
   ``[t, t + u + Δ]`` and ``existing`` = expected capacity of the model's READY replicas
   in the snapshot (by the shared capacity model, a replica of an option it does not know
   counting its own ``capacity_rps``). No ready replica (cold start): only ``D_future`` —
   nothing can serve sooner.
   Replicas already STARTING (started earlier for demand that is now inside the window
   but no longer in ``D_future``) serve from ``τ`` = the latest of their ready times
   (``started_at`` + their node type's start-up; the executor stamps ``started_at`` with
   the start decision): ``C`` is also at least ``min(existing + starting, D_after)`` with
   ``D_after`` = peak demand over ``[τ, t + u + Δ]``. A starting replica that would be
   ready only after the demand has passed is not kept.
3. **Placement**: ``C`` covered by :func:`~.capacity.place_capacity` over the same
   candidates as the predictive policy (cheapest effective cost per capacity, spot up to
   ``spot_share``, pools' ``S_t``), with no margin, no hysteresis and no minimum:
   zero demand and an empty queue → zero replicas. Pools exhausted → partial placement,
   said in the reason.
   When the cheapest mix changes (node type, on-demand/spot), ready replicas it would
   stop are kept until their replacements are ready (:func:`~.capacity.keep_ready`):
   start-up delays are obeyed, not skipped.
4. **Backlog**: while the model's queue holds work (``queue_length`` > 0 in the
   snapshot), ``C`` is at least ``queue_length / Δ`` — capacity that drains the queue
   within one interval — even when no demand is left (e.g. after the last arrival):
   queued requests are served, never stranded by a zero plan. The same floor as the
   predictive policy's backlog term.
5. **Peaks**: a curve's peak is its largest bin overlapping the window; a function is
   sampled every ``sample_step_s`` (1 s) and at both ends of the window.
6. **Models**: a model of the context with no demand given has zero demand; a demand
   for a name outside the context is an error.
7. **Spares (N + k)**: the oracle knows the demand, not the faults. With
   ``spare_replicas`` = k > 0 (default 0; the ``oracle`` preset uses 1, as the
   optimized presets do), a model with ``C > 0`` whose start-up exceeds its SLO gets k
   more replicas of its placement's largest candidate (:func:`~.capacity.add_spares`),
   so the bound is the least cost *at the same fault tolerance* as the policies it is
   compared with: a kill leaves ``C`` on the survivors.

It is a lower bound because its capacity is exactly the demand at the SLO's capacity,
started exactly one start-up ahead: never weaken it (no margin, no hysteresis). For the
bound of one run, feed it that run's realised arrivals (e.g. 1-s bins); for the expected
bound, the generating rate. Complexity per call: O(N + M × (W + P)), W = bins or
samples per window.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from coscale.policies.allocation.capacity import (
    DEFAULT_TYPICAL_SEQ_LEN,
    LATENCY_BUDGET_FRACTION,
    DemandCurve,
    ModelOptions,
    PoolLedger,
    RateFunction,
    add_spares,
    group_by_model,
    keep_ready,
    place_capacity,
    plan,
    rank_context,
    require,
    validate_common,
    validate_context,
)
from coscale.policies.base import AllocationContext
from coscale.types import Plan, ReplicaState, ReplicaTarget, ReplicaView, Snapshot

Demand = DemandCurve | RateFunction


class OraclePolicy:
    """Future-knowing allocation: exactly the capacity needed, started ahead of need."""

    name = "oracle"

    def __init__(
        self,
        context: AllocationContext,
        *,
        demand: Mapping[str, Demand],
        sample_step_s: float = 1.0,
        spare_replicas: int = 0,
        use_spot: bool = True,
        seq_len: int = DEFAULT_TYPICAL_SEQ_LEN,
        budget_fraction: float = LATENCY_BUDGET_FRACTION,
    ) -> None:
        validate_context(context)
        validate_common(seq_len, budget_fraction)
        names = {m.model for m in context.models}
        unknown = sorted(set(demand) - names)
        require(
            not unknown,
            f"oracle demand names model(s) {unknown} that are not in the scenario",
            f"use the scenario's model names: {sorted(names)}",
        )
        require(sample_step_s > 0, "sample_step_s must be > 0", "use e.g. 1.0 s")
        require(spare_replicas >= 0, "spare_replicas must be >= 0", "use 0 (none) or 1 (N+1)")
        self.spare_replicas = spare_replicas
        self.context = context
        self.demand = dict(demand)
        self.sample_step_s = sample_step_s
        self._options = rank_context(
            context, allow_spot=use_spot, seq_len=seq_len, budget_fraction=budget_fraction
        )
        self._ledger = PoolLedger.template(context.pools, context.spot_share)

    def peak(self, model: str, t0: float, t1: float) -> float:
        """Step 5: the model's peak demand over ``[t0, t1]``."""
        d = self.demand.get(model)
        if d is None:
            return 0.0
        if isinstance(d, DemandCurve):
            return d.peak(t0, t1)
        steps = max(0, math.ceil((t1 - t0) / self.sample_step_s))
        points = [t0 + i * self.sample_step_s for i in range(steps)] + [t1]
        return max(0.0, *(float(d(t)) for t in points))

    def _starting(
        self, options: ModelOptions, mine: Sequence[ReplicaView], now: float, horizon: float
    ) -> float:
        """Step 2, starting replicas: ``min(existing + starting, peak over [τ, t + u + Δ])``."""
        starting = [r for r in mine if r.state is ReplicaState.STARTING]
        if not starting:
            return 0.0
        startup = {c.node_type: c.startup_s for c in options.candidates}
        tau = max(r.started_at + startup.get(r.node_type, options.startup_s) for r in starting)
        if tau > now + horizon:
            return 0.0
        capacity = sum(options.capacity_of(r) for r in mine)
        return min(capacity, self.peak(options.model, max(tau, now), now + horizon))

    def decide(self, snapshot: Snapshot, state: None) -> tuple[Plan, None]:
        now, dt = snapshot.time, self.context.interval_s
        replicas = group_by_model(snapshot.replicas)
        queued = {v.name: v.queue_length for v in snapshot.models}
        ledger = self._ledger.copy()
        targets: list[ReplicaTarget] = []
        notes = ["oracle"]
        for m in self.context.models:
            options = self._options[m.model]
            u = options.startup_s
            future = self.peak(m.model, now + u, now + u + dt)
            window = self.peak(m.model, now, now + u + dt)
            mine = replicas.get(m.model, [])
            existing = sum(options.capacity_of(r) for r in mine if r.serving)
            backlog = max(0, queued.get(m.model, 0)) / dt
            starting = self._starting(options, mine, now, u + dt)
            need = max(future, min(existing, window), starting, backlog)
            placed = place_capacity(options, need, ledger, self.context.spot_share)
            targets.extend(keep_ready(placed.targets, options, mine, need, ledger))
            spare, spares = add_spares(options, placed.targets, need, self.spare_replicas, ledger)
            targets.extend(spare[len(placed.targets) :])
            note = f"{m.model}: {need:.1f} rps, {placed.count} replicas ({placed.spot_count} spot)"
            if spares:
                note += f" + {spares} spare"
            if placed.expected_rps + 1e-6 < need:
                note += f"; pools exhausted, {placed.expected_rps:.1f} rps placed (S_t reached)"
            notes.append(note)
        return plan(now, targets, notes), None
