"""coscale's predictive allocation: forecast each model's demand, provision ahead of it,
on the cheapest mix of node types and on-demand/spot capacity.

For each model, at every call (``t`` = the snapshot's time; the executor calls every
``interval_s`` = ``context.interval_s``):

1. **Observe**: the model's ``arrival_rate`` ``y`` (measured over the last interval) goes
   to the :class:`~.forecast.Forecaster`, stamped at ``t − interval_s / 2``, the middle of
   the interval it was measured over. A model missing from the snapshot is not observed:
   its forecast carries on from what was learned.
2. **Horizon**: ``H = startup_s + interval_s``, ``startup_s`` being the longest start-up
   of the model's options: replicas started now serve from ``t + startup_s`` and those of
   the next decision from ``t + interval_s + startup_s``.
3. **Forecast need**: ``F = peak forecast over [t, t + H] × (1 + margin)``, with
   ``margin = max(m₁, m_H)``: ``m₁`` the forecaster's margin from its one-interval
   errors (their 0.95 quantile; 0.25 while cold), ``m_H`` the same quantile of the
   *horizon* errors: each decision's forecast peak ``P`` over ``[t, t + H]`` is kept
   until ``t + H`` has passed, while the largest observed rate ``Y`` in that window is
   recorded; then ``(Y − P) / max(P, ε)`` joins the last ``error_window`` horizon
   errors (with fewer than ``min_errors``, ``m_H = 0``). One-interval errors miss how
   far demand moves over a start-up; the horizon errors are the forecast's own misses
   at the lead time it is used at. Both clamped to ``[min_margin, max_margin]``.
4. **Reactive floor**: ``R = y + queue_length / backlog_drain_s`` (default
   ``interval_s``): never below what the observed rate and backlog need, so a burst the
   forecast missed is absorbed as soon as it is seen. 0 for a missing model.
5. **Want** ``W = max(F, R)`` requests/s of expected serving capacity.
6. **Hysteresis** (capacity ``C`` in the state, ``C_prev`` the last one):
   ``held`` = the largest ``W`` of the decisions of the last ``cooldown_intervals ×
   interval_s`` (default 2 intervals, this decision included).

   a. ``held ≥ C_prev × (1 − scale_down_deadband)`` (default 0.03), or the recorded
      wants do not yet span the whole cool-down (too little history, e.g. after a gap):
      ``C = max(held, C_prev)`` — a rise is followed at once; a dip inside the dead band,
      or one not yet known to last, changes nothing.
   b. Otherwise (the fall lasted the whole cool-down and exceeds the dead band):
      ``C = max(held, C_prev − max(max_scale_down_fraction × C_prev, c₁))`` (default
      fraction 0.2; ``c₁`` = one replica of the model's cheapest candidate, so a decay
      to zero ends). At most 20 % (or one replica) per decision: no thrashing on noise.
7. **Placement**: ``C`` is covered by :func:`~.capacity.place_capacity` over the model's
   candidates (option × {on-demand, spot}) ranked by effective cost per unit capacity
   (spot priced with its preemption risk and over-provisioned by ``1 + ρ``, see
   :mod:`.capacity`), spot at most ``context.spot_share`` (``use_spot`` = False: none),
   within the pools' ``S_t``; ready replicas a change of mix would stop are kept until
   their replacements are ready (:func:`~.capacity.keep_ready`); then the plan is topped
   up to ``min_replicas`` (default 1) with the cheapest on-demand option. Models are
   placed in context order; pools exhausted → partial placement and the reason says so.
8. **Spares (N + k)**: while the model has traffic (``C > 0``) and its start-up exceeds
   its SLO (``startup_s > slo_s``: a dead replica's requests would wait a whole
   start-up), ``spare_replicas`` = k (default 0; the ``optimized-a``/``optimized-b``
   presets use 1) more replicas of the placement's largest candidate are added
   (:func:`~.capacity.add_spares`), before the ``min_replicas`` top-up: the load ``C``
   then fits the N − k survivors of a kill, and a model with traffic has ≥ 1 + k
   replicas. No room in the pools → fewer spares, said in the reason. k = 0, no traffic
   or ``startup_s ≤ slo_s`` → no spare.
9. **Bursts between decisions** (:meth:`PredictivePolicy.react`, on when ``burst_ratio``
   is set): a decision every ``interval_s`` (15 s) sees a burst of a few seconds only
   as part of the interval's mean, and only at the next decision. So the executor also
   calls ``react`` every ``burst_window_s`` (default 2 s) with a snapshot of that short
   window (``arrival_rate`` measured over it, the queue now). Only models whose options
   all start within ``burst_max_startup_s`` (default 10 s: a local worker, a warm
   standby) react — a replica that takes minutes arrives after a burst of seconds; with
   no such model ``react_interval_s`` is None and the executors never call ``react``
   (the simulated clusters, whose start-ups are 90 s and more, run as without). For
   each such model, with ``R_b = y_b + queue_length / backlog_drain_s`` (step 4's floor
   on the short window), ``C`` the capacity the decisions provisioned and ``s`` the
   model's *measured speed* (below): if ``R_b > burst_ratio × s × C`` (Knative's "panic"
   threshold is 2 on a target that is itself 70 % of capacity; 1.0 here compares with
   the planning capacity, which has its own headroom; the optimized presets use 1.0,
   see :mod:`~coscale.policies.presets`), the model gets *burst capacity* ``B = R_b / s`` at once,
   held ``burst_hold_s`` (default 4 s) from the last window over the threshold;
   a window over it again renews the hold. **Pressure** triggers the same reaction
   without waiting for the window's mean: a window whose ``pressure`` > 0 (requests
   admission refused, or admitted with a predicted finish beyond ``pressure_fraction``
   (default 0.15) of their budget: the replicas already fall behind; the executors
   react on it at once, at most every ``pressure_gap_s``, default 0.25 s; None turns
   it off) gives ``B = max(B, Σ capacity of the READY replicas + c₁)`` — one
   replica more than serve now (``c₁`` of step 6) — unless a replica of the model is
   STARTING (the capacity coming is given its time). A model's plan covers ``max(C, B)`` while
   its burst is held; once the hold has lapsed the next call returns a plan without it
   (the burst replicas drain and stop). Burst capacity stays out of step 6's wants: a
   burst of seconds must not hold replicas for the whole cool-down (the optimized
   presets' cool-down is 2 minutes).
   Decisions keep an unexpired burst in their plans. No model reacting and none
   released → no plan (``None``). Before the first decision a model's ``C`` is what its
   READY and STARTING replicas' capacity add up to (the executor's initial replicas).
   The forecast is not updated (a short window's rate is not an interval's
   observation).

   **Measured speed** ``s``: the READY replicas that have served (``rate`` and
   ``latency_s`` > 0) ran batches of about ``b = rate × latency_s`` items in
   ``latency_s`` seconds, where the profile predicts ``L(b)`` at the policy's typical
   ``seq_len``; ``s = Σ L(b) / Σ latency_s`` over them (clamped to [0.05, 20]; 1 when
   none has served). The profile was measured on an idle core at one length; a live
   machine shares its cores and serves the trace's lengths — on the bench's live
   cycle ``s`` ≈ 0.6, so the profile's planning capacity overstated what a replica
   serves 1.7× and no reaction ever fired.
10. **Edge cases**: cold start (no history, zero replicas): the first observation is the
   forecast, with the cold margin. No traffic: ``C`` decays by the hysteresis to 0, and
   ``min_replicas`` remain (no spare). A missing model with no history: ``C = 0``.

Complexity: O(N + M × (P + B + H/Δ + K log K)) per call for N replicas (one pass to group
them), M models, P candidates, B seasonal bins, H/Δ open horizon windows and K errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from coscale.policies.admission import DEFAULT_PRESSURE_FRACTION
from coscale.policies.allocation.capacity import (
    DEFAULT_TYPICAL_SEQ_LEN,
    EPS,
    LATENCY_BUDGET_FRACTION,
    ModelOptions,
    PoolLedger,
    add_spares,
    group_by_model,
    keep_ready,
    needs_spare,
    place_capacity,
    place_count,
    plan,
    rank_context,
    require,
    validate_common,
    validate_context,
)
from coscale.policies.allocation.forecast import ForecastConfig, Forecaster, ForecastState
from coscale.policies.base import AllocationContext
from coscale.policies.variant import latency_map
from coscale.types import ModelView, Plan, ReplicaState, ReplicaTarget, ReplicaView, Snapshot

#: Bounds of the measured speed ``s`` (step 9): a wild measurement must not place 20× the
#: capacity, nor none.
MIN_SPEED, MAX_SPEED = 0.05, 20.0


@dataclass(frozen=True, slots=True)
class PredictiveModel:
    """Per model: the forecast, recent wants (time, rps), the provisioned capacity, the
    open horizon forecasts (window end, forecast peak, largest rate seen), the last
    horizon errors (step 3) and the burst capacity with the end of its hold (step 9)."""

    forecast: ForecastState | None = None
    wants: tuple[tuple[float, float], ...] = ()
    capacity_rps: float = 0.0
    open: tuple[tuple[float, float, float], ...] = ()
    horizon_errors: tuple[float, ...] = ()
    burst_rps: float = 0.0
    burst_until: float = -math.inf

    def burst_at(self, now: float) -> float:
        """The burst capacity (step 9) still held at ``now``, else 0."""
        return self.burst_rps if now < self.burst_until else 0.0


@dataclass(frozen=True, slots=True)
class PredictiveState:
    models: tuple[tuple[str, PredictiveModel], ...]

    def get(self, model: str) -> PredictiveModel | None:
        return next((m for name, m in self.models if name == model), None)


@dataclass(frozen=True, slots=True)
class Need:
    """One decision's arithmetic for one model (steps 3–5), in requests/s."""

    peak: float
    margin: float
    floor: float
    want: float


class PredictivePolicy:
    """Forecast-driven allocation on the cheapest on-demand/spot mix (see module docstring)."""

    name = "predictive"

    def __init__(
        self,
        context: AllocationContext,
        *,
        period_s: float = 86_400.0,
        season_bins: int = 24,
        alpha: float = 0.5,
        beta: float = 0.1,
        gamma: float = 0.2,
        error_window: int = 64,
        margin_quantile: float = 0.95,
        min_errors: int = 8,
        min_margin: float = 0.05,
        max_margin: float = 1.0,
        cold_margin: float = 0.25,
        backlog_drain_s: float | None = None,
        cooldown_intervals: float = 2.0,
        max_scale_down_fraction: float = 0.2,
        scale_down_deadband: float = 0.03,
        min_replicas: int = 1,
        spare_replicas: int = 0,
        burst_ratio: float | None = None,
        burst_window_s: float = 2.0,
        burst_hold_s: float = 4.0,
        burst_max_startup_s: float = 10.0,
        pressure_gap_s: float | None = 0.25,
        pressure_fraction: float = DEFAULT_PRESSURE_FRACTION,
        use_spot: bool = True,
        seq_len: int = DEFAULT_TYPICAL_SEQ_LEN,
        budget_fraction: float = LATENCY_BUDGET_FRACTION,
    ) -> None:
        validate_context(context)
        validate_common(seq_len, budget_fraction)
        require(
            backlog_drain_s is None or backlog_drain_s > 0,
            f"backlog_drain_s must be > 0, got {backlog_drain_s}",
            "leave it unset (one interval) or give seconds > 0",
        )
        require(
            cooldown_intervals >= 0 and 0 <= max_scale_down_fraction <= 1,
            "need cooldown_intervals >= 0 and 0 <= max_scale_down_fraction <= 1",
            "use e.g. cooldown_intervals 2 and max_scale_down_fraction 0.2",
        )
        require(
            0 <= scale_down_deadband < 1,
            f"scale_down_deadband must be in [0, 1), got {scale_down_deadband}",
            "use e.g. 0.03",
        )
        require(min_replicas >= 0, "min_replicas must be >= 0", "use a count >= 0")
        require(spare_replicas >= 0, "spare_replicas must be >= 0", "use 0 (none) or 1 (N+1)")
        require(
            (burst_ratio is None or burst_ratio >= 1) and burst_window_s > 0,
            f"need burst_ratio >= 1 (or null: no reaction to bursts) and burst_window_s > 0, "
            f"got {burst_ratio} and {burst_window_s}",
            "use e.g. burst_ratio 1.5 and burst_window_s 2",
        )
        require(
            burst_hold_s >= 0 and burst_max_startup_s >= 0,
            f"need burst_hold_s >= 0 and burst_max_startup_s >= 0, got {burst_hold_s} and "
            f"{burst_max_startup_s}",
            "use e.g. burst_hold_s 4 and burst_max_startup_s 10",
        )
        require(
            pressure_gap_s is None or pressure_gap_s >= 0,
            f"pressure_gap_s must be >= 0 (or null: no reaction on pressure), got {pressure_gap_s}",
            "use e.g. 0.25",
        )
        require(
            0 < pressure_fraction <= 1,
            f"pressure_fraction must be in (0, 1], got {pressure_fraction}",
            f"use e.g. {DEFAULT_PRESSURE_FRACTION}",
        )
        self.burst_ratio = burst_ratio
        self.burst_hold_s = burst_hold_s
        self.burst_max_startup_s = burst_max_startup_s
        #: The share of a request's budget past which admission's predicted finish is
        #: pressure (:func:`~coscale.policies.admission.is_pressure`); the executors read it.
        self.pressure_fraction = pressure_fraction
        self.context = context
        self.forecaster = Forecaster(
            ForecastConfig(
                period_s=period_s,
                season_bins=season_bins,
                alpha=alpha,
                beta=beta,
                gamma=gamma,
                error_window=error_window,
                margin_quantile=margin_quantile,
                min_errors=min_errors,
                min_margin=min_margin,
                max_margin=max_margin,
                cold_margin=cold_margin,
            )
        )
        self.backlog_drain_s = backlog_drain_s or context.interval_s
        self.cooldown_s = cooldown_intervals * context.interval_s
        self.max_scale_down_fraction = max_scale_down_fraction
        self.scale_down_deadband = scale_down_deadband
        self.min_replicas = min_replicas
        self.spare_replicas = spare_replicas
        self._options = rank_context(
            context, allow_spot=use_spot, seq_len=seq_len, budget_fraction=budget_fraction
        )
        self._on_demand = {m: o.on_demand() for m, o in self._options.items()}
        reacts = burst_ratio is not None and any(map(self._starts_in_time, self._options))
        #: Seconds between :meth:`react` calls (None: the executor does not call it —
        #: reactions off, or no model whose replicas start within ``burst_max_startup_s``).
        self.react_interval_s = burst_window_s if reacts else None
        #: The shortest gap between two reactions that pressure triggers (None: the
        #: executors do not react on pressure, and a window's pressure is ignored).
        self.pressure_gap_s = pressure_gap_s if reacts else None
        self.seq_len = seq_len
        self._tables = {m.model: latency_map(m.options) for m in context.models}
        self._ledger = PoolLedger.template(context.pools, context.spot_share)

    def decide(
        self, snapshot: Snapshot, state: PredictiveState | None
    ) -> tuple[Plan, PredictiveState]:
        now = snapshot.time
        views = {v.name: v for v in snapshot.models}
        replicas = group_by_model(snapshot.replicas)
        ledger = self._ledger.copy()
        targets: list[ReplicaTarget] = []
        notes = ["predictive"]
        models: list[tuple[str, PredictiveModel]] = []
        for m in self.context.models:
            prev = (state.get(m.model) if state is not None else None) or PredictiveModel()
            view = views.get(m.model)
            fstate = self._observe(prev.forecast, now, view)
            opened, herrors = self._score(prev, now, view)
            need = self.need(fstate, now, view, self._options[m.model], herrors)
            horizon = self._options[m.model].startup_s + self.context.interval_s
            opened = (*opened, (now + horizon, need.peak, 0.0))
            wants, cap = self._hysteresis(prev, now, need.want, self._options[m.model])
            burst = prev.burst_at(now)
            placed, note = self._place(m.model, max(cap, burst), ledger, replicas.get(m.model, []))
            targets.extend(placed)
            held = f", burst {burst:.1f} rps held" if burst > cap else ""
            notes.append(
                f"{m.model}: forecast {need.peak:.1f} rps +{need.margin:.0%}, "
                f"floor {need.floor:.1f} → {cap:.1f} rps{held}{note}"
            )
            models.append(
                (
                    m.model,
                    PredictiveModel(
                        fstate,
                        wants,
                        cap,
                        opened,
                        herrors,
                        burst,  # a lapsed burst is dropped here, not released again
                        prev.burst_until if burst > 0 else -math.inf,
                    ),
                )
            )
        return plan(now, targets, notes), PredictiveState(tuple(models))

    def react(
        self, snapshot: Snapshot, state: PredictiveState | None
    ) -> tuple[Plan | None, PredictiveState | None]:
        """Step 9: a plan with burst capacity for the models whose short-window demand
        exceeds ``burst_ratio`` × their measured provisioned capacity, or without the
        burst capacity whose hold has lapsed; else None (state unchanged). A model the
        state does not know yet (before the first decision) counts as provisioned with
        its READY and STARTING replicas' capacity. Reactions off → None. O(N + M × P)."""
        if self.burst_ratio is None:
            return None, state
        now = snapshot.time
        views = {v.name: v for v in snapshot.models}
        replicas = group_by_model(snapshot.replicas)
        models: list[tuple[str, PredictiveModel]] = []
        notes = ["predictive: burst"]
        changed = False
        for m in self.context.models:
            mine = replicas.get(m.model, [])
            prev = state.get(m.model) if state is not None else None
            if prev is None:
                prev = PredictiveModel(capacity_rps=self._running_capacity(m.model, mine))
            now_held = prev.burst_at(now)
            if prev.burst_rps > 0 and now_held == 0.0:
                prev = replace(prev, burst_rps=0.0, burst_until=-math.inf)
                notes.append(f"{m.model}: burst over")
                changed = True
            view = views.get(m.model)
            floor, speed = self._burst_floor(m.model, view, mine)
            over = floor > self.burst_ratio * speed * max(prev.capacity_rps, EPS)
            pressed = self._pressed(m.model, view, mine)
            if over or pressed:
                want = max(floor / speed if over else 0.0, now_held)
                if pressed:
                    want = max(want, self._one_more(m.model, mine))
                prev = replace(prev, burst_rps=want, burst_until=now + self.burst_hold_s)
                why = [f"{floor:.1f} rps at speed {speed:.2f}"] if over else []
                if pressed and view is not None:
                    why.append(f"pressure {view.pressure}")
                notes.append(f"{m.model}: burst, {', '.join(why)}")
                changed = True
            models.append((m.model, prev))
        if not changed:
            return None, state
        ledger = self._ledger.copy()
        targets: list[ReplicaTarget] = []
        for name, mstate in models:
            capacity = max(mstate.capacity_rps, mstate.burst_at(now))
            placed, note = self._place(name, capacity, ledger, replicas.get(name, []))
            targets.extend(placed)
            notes.append(f"{name}: {capacity:.1f} rps{note}")
        return plan(now, targets, notes), PredictiveState(tuple(models))

    def _pressed(self, model: str, view: ModelView | None, replicas: list[ReplicaView]) -> bool:
        """Step 9's pressure trigger: the window's ``pressure`` > 0, the model's options
        start within ``burst_max_startup_s`` and none of its replicas is STARTING (the
        capacity already coming is given its time)."""
        if self.pressure_gap_s is None or view is None or view.pressure <= 0:
            return False
        if not self._starts_in_time(model):
            return False
        return not any(r.state is ReplicaState.STARTING for r in replicas)

    def _starts_in_time(self, model: str) -> bool:
        """Whether every option of ``model`` starts within ``burst_max_startup_s``."""
        return self._options[model].startup_s <= self.burst_max_startup_s

    def _one_more(self, model: str, replicas: list[ReplicaView]) -> float:
        """The READY replicas' expected capacity plus one replica of the model's best
        ranked candidate (step 9, pressure)."""
        options = self._options[model]
        ready = sum(options.capacity_of(r) for r in replicas if r.state is ReplicaState.READY)
        one = options.candidates[0].expected_rps if options.candidates else 0.0
        return ready + one

    def _running_capacity(self, model: str, replicas: list[ReplicaView]) -> float:
        """The READY and STARTING replicas' capacity (step 9, before the first decision)."""
        return sum(
            r.capacity_rps
            for r in replicas
            if r.state in (ReplicaState.READY, ReplicaState.STARTING)
        )

    def _burst_floor(
        self, model: str, view: ModelView | None, replicas: list[ReplicaView]
    ) -> tuple[float, float]:
        """(R_b, s) of step 9: the short window's demand floor (0 for a missing model or
        one whose options start slower than ``burst_max_startup_s``) and the model's
        measured speed."""
        if view is None or not self._starts_in_time(model):
            return 0.0, 1.0
        floor = max(0.0, view.arrival_rate) + view.queue_length / self.backlog_drain_s
        return floor, self.measured_speed(model, replicas)

    def measured_speed(self, model: str, replicas: list[ReplicaView]) -> float:
        """``s`` of step 9: Σ profiled latency at each served replica's mean batch / Σ its
        measured latency, over READY replicas with a measured rate and latency and a
        table; clamped to [0.05, 20]; 1 when there are none. O(R log T)."""
        predicted = measured = 0.0
        for r in replicas:
            table = self._tables[model].get((r.variant, r.node_type))
            if r.state is not ReplicaState.READY or table is None:
                continue
            if r.rate <= 0 or r.latency_s <= 0:
                continue
            items = max(1, round(r.rate * r.latency_s))
            predicted += table.latency(items, self.seq_len)
            measured += r.latency_s
        if measured <= 0:
            return 1.0
        return min(max(predicted / measured, MIN_SPEED), MAX_SPEED)

    # ----------------------------------------------------------------- steps

    def _observe(
        self, fstate: ForecastState | None, now: float, view: ModelView | None
    ) -> ForecastState | None:
        if view is None:
            return fstate
        stamp = now - self.context.interval_s / 2
        return self.forecaster.observe(fstate, stamp, view.arrival_rate)

    def _score(
        self, prev: PredictiveModel, now: float, view: ModelView | None
    ) -> tuple[tuple[tuple[float, float, float], ...], tuple[float, ...]]:
        """Step 3, horizon errors: record the observed rate in the open windows, close
        the windows that have ended. O(H / interval + K)."""
        y = max(0.0, view.arrival_rate) if view is not None else 0.0
        still: list[tuple[float, float, float]] = []
        errors = list(prev.horizon_errors)
        for end, peak, seen in prev.open:
            seen = max(seen, y)
            if end <= now + EPS:
                errors.append((seen - peak) / max(peak, self.forecaster.config.error_floor_rps))
            else:
                still.append((end, peak, seen))
        window = self.forecaster.config.error_window
        return tuple(still), tuple(errors[-window:])

    def horizon_margin(self, errors: tuple[float, ...]) -> float:
        """``m_H`` of step 3 (0 with fewer than ``min_errors`` errors)."""
        cfg = self.forecaster.config
        if len(errors) < cfg.min_errors:
            return 0.0
        ranked = sorted(errors)
        k = min(len(ranked) - 1, max(0, math.ceil(cfg.margin_quantile * len(ranked)) - 1))
        return min(max(ranked[k], cfg.min_margin), cfg.max_margin)

    def need(
        self,
        fstate: ForecastState | None,
        now: float,
        view: ModelView | None,
        options: ModelOptions,
        horizon_errors: tuple[float, ...] = (),
    ) -> Need:
        """Steps 2–5: the capacity (requests/s) this decision wants for one model."""
        horizon = options.startup_s + self.context.interval_s
        peak = self.forecaster.peak(fstate, now, now + horizon)
        margin = max(self.forecaster.margin(fstate), self.horizon_margin(horizon_errors))
        floor = 0.0
        if view is not None:
            floor = max(0.0, view.arrival_rate) + view.queue_length / self.backlog_drain_s
        return Need(peak, margin, floor, max(peak * (1 + margin), floor))

    def _hysteresis(
        self, prev: PredictiveModel, now: float, want: float, options: ModelOptions
    ) -> tuple[tuple[tuple[float, float], ...], float]:
        """Step 6: the recent wants kept in the state, and the capacity to provision."""
        cutoff = now - self.cooldown_s - EPS
        wants = (*(w for w in prev.wants if cutoff <= w[0] < now), (now, want))
        held = max(w for _, w in wants)
        lasted = wants[0][0] <= now - self.cooldown_s + EPS
        if not lasted or held >= prev.capacity_rps * (1 - self.scale_down_deadband):
            return wants, max(held, prev.capacity_rps)
        one = options.candidates[0].expected_rps if options.candidates else 0.0
        step = max(prev.capacity_rps * self.max_scale_down_fraction, one)
        return wants, max(held, prev.capacity_rps - step)

    def _place(
        self, model: str, capacity: float, ledger: PoolLedger, replicas: list[ReplicaView]
    ) -> tuple[list[ReplicaTarget], str]:
        """Step 7: cover ``capacity`` on the cheapest mix, keeping ready replicas as needed."""
        options = self._options[model]
        placed = place_capacity(options, capacity, ledger, self.context.spot_share)
        targets = list(keep_ready(placed.targets, options, replicas, capacity, ledger))
        count, spot = placed.count, placed.spot_count
        with_spares, spares = add_spares(
            options, placed.targets, capacity, self.spare_replicas, ledger
        )
        added = with_spares[len(placed.targets) :]
        targets.extend(added)
        count += spares
        spot += sum(t.count for t in added if t.spot)
        if count < self.min_replicas:
            extra = place_count(self._on_demand[model], self.min_replicas - count, ledger)
            targets.extend(extra.targets)
            count += extra.count
        note = f", {count} replicas ({spot} spot)"
        if spares:
            note += f", {spares} of them spare (N+{spares}: start-up > SLO)"
        elif needs_spare(options, capacity, self.spare_replicas) and placed.count:
            note += "; no room for a spare replica (S_t reached)"
        if placed.expected_rps + 1e-6 < capacity:
            note += f"; pools exhausted, {placed.expected_rps:.1f} rps placed (S_t reached)"
        if not options.meets_slo:
            note += "; no option meets the SLO, serving best effort"
        return targets, note
