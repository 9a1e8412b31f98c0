"""One test per clause of the predictive policy docstring, and its cost against the oracle."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Callable
from typing import Any

import pytest

from coscale.catalog.nodes import NodeType
from coscale.policies.allocation.capacity import DemandCurve
from coscale.policies.allocation.forecast import ForecastState
from coscale.policies.allocation.oracle import OraclePolicy
from coscale.policies.allocation.predictive import (
    PredictiveModel,
    PredictivePolicy,
    PredictiveState,
)
from coscale.policies.base import (
    AllocationContext,
    AllocationPolicy,
    ModelTarget,
    Pool,
    VariantOption,
)
from coscale.types import (
    LatencyTable,
    ModelView,
    ReplicaState,
    ReplicaTarget,
    ReplicaView,
    Snapshot,
)

T0 = 1000.0


def node(name: str = "a", od: float = 1.0, spot: float = 0.3, startup: float = 60.0) -> NodeType:
    return NodeType(
        name, "test", 4, 16.0, None, 0, 0.0, od, spot, 10.0, 20.0, 0.0, 0.0, startup, 1.0, 1,
        "test", "2025-01",
    )  # fmt: skip


def context(
    nodes: tuple[tuple[NodeType, int], ...] = ((node(), 1000),),
    spot_share: float = 0.0,
    table: LatencyTable | None = None,
) -> AllocationContext:
    """10 requests/s per replica (batches of 2 in 0.2 s: planned at capacity) unless ``table``
    says otherwise."""
    table = table or LatencyTable((1, 2), (0,), ((0.15, 0.2),))
    opts = tuple(VariantOption("m", "v", n, table, 1.0) for n, _ in nodes)
    pools = tuple(Pool(n, k) for n, k in nodes)
    return AllocationContext((ModelTarget("m", 1.0, opts),), pools, spot_share, 15.0)


def snap(
    t: float, rate: float | None, queue: int = 0, replicas: tuple[ReplicaView, ...] = ()
) -> Snapshot:
    models = () if rate is None else (ModelView("m", rate, queue_length=queue),)
    return Snapshot(t, models, replicas)


def with_capacity(capacity: float, wants: tuple[tuple[float, float], ...] = ()) -> PredictiveState:
    return PredictiveState((("m", PredictiveModel(None, wants, capacity)),))


def decide(
    policy: PredictivePolicy, s: Snapshot, state: PredictiveState | None = None
) -> tuple[int, PredictiveModel]:
    plan, new = policy.decide(s, state)
    m = new.get("m")
    assert m is not None
    return plan.count("m"), m


def steady(level: float, trend: float = 0.0, t: float = T0) -> ForecastState:
    """A forecast with 8 zero errors, so the margin is min_margin (0.05)."""
    return ForecastState(t=t, level=level, trend=trend, first_t=t - 100.0, errors=(0.0,) * 8)


# ------------------------------------------------------------------ 1. observe


def test_observation_is_stamped_at_the_middle_of_the_interval() -> None:
    _, m = decide(PredictivePolicy(context()), snap(T0, 50.0))
    assert m.forecast is not None and m.forecast.t == T0 - 7.5 and m.forecast.level == 50.0


def test_a_missing_model_is_not_observed() -> None:
    policy = PredictivePolicy(context())
    fs = steady(40.0, t=T0 - 7.5)
    state = PredictiveState((("m", PredictiveModel(fs, (), 0.0)),))
    count, m = decide(policy, snap(T0, None), state)
    assert m.forecast is fs
    assert count == 5  # 40 × 1.05 = 42 rps → 5 replicas of 10 rps


# ------------------------------------------------------------------ 2–5. need


def test_horizon_is_startup_plus_interval() -> None:
    policy = PredictivePolicy(context())
    opts = policy._options["m"]
    need = policy.need(steady(100.0, trend=1.0), T0, None, opts)
    assert need.peak == pytest.approx(100.0 + 75.0)  # at T0 + 60 + 15
    slow = PredictivePolicy(context(((node(startup=300.0), 100),)))
    need = slow.need(steady(100.0, trend=1.0), T0, None, slow._options["m"])
    assert need.peak == pytest.approx(100.0 + 315.0)


def test_forecast_need_carries_the_margin() -> None:
    policy = PredictivePolicy(context())
    need = policy.need(steady(100.0), T0, None, policy._options["m"])
    assert need.margin == 0.05 and need.want == pytest.approx(105.0)


def test_horizon_errors_are_scored_when_the_window_ends() -> None:
    policy = PredictivePolicy(context())
    # a forecast peak of 100 for a window ending at T0 + 75, and one still open
    prev = PredictiveModel(
        steady(100.0), (), 0.0, ((T0 + 75.0, 100.0, 90.0), (T0 + 90.0, 80.0, 0.0))
    )
    opened, errors = policy._score(prev, T0 + 75.0, ModelView("m", 130.0))
    assert errors == pytest.approx((0.3,))  # (max(90, 130) − 100) / 100
    assert opened == ((T0 + 90.0, 80.0, 130.0),)  # the open one saw 130


def test_each_decision_opens_a_horizon_window_with_its_forecast_peak() -> None:
    _, m = decide(PredictivePolicy(context()), snap(T0, 50.0))
    assert len(m.open) == 1
    end, peak, seen = m.open[0]
    assert end == T0 + 75.0 and peak == pytest.approx(50.0) and seen == 0.0


def test_margin_is_the_larger_of_one_interval_and_horizon_errors() -> None:
    policy = PredictivePolicy(context())
    opts = policy._options["m"]
    assert policy.horizon_margin((0.5,) * 7) == 0.0  # fewer than min_errors
    herr = (0.0,) * 4 + (0.3,) * 4  # 0.95 quantile: 0.3
    assert policy.horizon_margin(herr) == pytest.approx(0.3)
    need = policy.need(steady(100.0), T0, None, opts, herr)
    assert need.margin == pytest.approx(0.3) and need.want == pytest.approx(130.0)
    assert policy.need(steady(100.0), T0, None, opts, (0.0,) * 8).margin == 0.05
    assert policy.horizon_margin((5.0,) * 8) == 1.0  # clamped to max_margin


def test_reactive_floor_is_rate_plus_backlog_over_drain_time() -> None:
    policy = PredictivePolicy(context())
    view = ModelView("m", 300.0, queue_length=150)
    need = policy.need(steady(100.0), T0, view, policy._options["m"])
    assert need.floor == pytest.approx(310.0)  # 300 + 150 / 15
    assert need.want == pytest.approx(310.0)  # max(105, 310)
    drain = PredictivePolicy(context(), backlog_drain_s=150.0)
    assert drain.need(steady(100.0), T0, view, drain._options["m"]).floor == pytest.approx(301.0)


def test_floor_absorbs_a_burst_the_forecast_missed() -> None:
    policy = PredictivePolicy(context())
    fs = steady(100.0, t=T0 - 22.5)
    state = PredictiveState((("m", PredictiveModel(fs, (), 105.0)),))
    count, m = decide(policy, snap(T0, 400.0), state)
    assert m.capacity_rps >= 400.0 and count >= 40


# ------------------------------------------------------------------ 6. hysteresis


def test_a_rise_is_followed_at_once() -> None:
    count, m = decide(PredictivePolicy(context()), snap(T0, 120.0), with_capacity(100.0))
    assert m.capacity_rps == pytest.approx(150.0) and count == 15  # 120 × 1.25 (cold margin)


def test_a_dip_inside_the_dead_band_changes_nothing() -> None:
    # want 78.4 × 1.25 = 98 ≥ 100 × 0.97
    count, m = decide(PredictivePolicy(context()), snap(T0, 78.4), with_capacity(100.0))
    assert m.capacity_rps == 100.0 and count == 10


def test_a_fall_waits_for_the_cool_down() -> None:
    state = with_capacity(100.0, wants=((T0 - 15.0, 100.0),))
    count, m = decide(PredictivePolicy(context()), snap(T0, 40.0), state)
    assert m.capacity_rps == 100.0 and count == 10
    assert m.wants == ((T0 - 15.0, 100.0), (T0, 50.0))


def test_a_lasting_fall_scales_down_by_at_most_20_percent() -> None:
    state = with_capacity(100.0, wants=((T0 - 30.0, 50.0), (T0 - 15.0, 50.0)))
    count, m = decide(PredictivePolicy(context()), snap(T0, 40.0), state)
    assert m.capacity_rps == pytest.approx(80.0) and count == 8


def test_a_small_capacity_falls_by_one_replica() -> None:
    state = with_capacity(30.0, wants=((T0 - 30.0, 0.0), (T0 - 15.0, 0.0)))
    count, m = decide(PredictivePolicy(context(), min_replicas=0), snap(T0, 0.0), state)
    assert m.capacity_rps == pytest.approx(20.0) and count == 2  # 30 − max(6, 10)


def test_no_thrashing_on_noise() -> None:
    """A flat 500 rps with 1.2 % noise: after warm-up the count stays in a ±3 % band,
    changes at most once per 15 decisions, and never falls within the cool-down of a rise."""
    for seed in range(3):
        policy = PredictivePolicy(context())
        rng = random.Random(seed)
        state: PredictiveState | None = None
        counts = []
        for i in range(400):
            plan, state = policy.decide(snap(T0 + 15.0 * i, rng.gauss(500.0, 6.0)), state)
            counts.append(plan.count("m"))
        steady_counts = counts[20:]
        moves = [(i, b - a) for i, (a, b) in enumerate(itertools.pairwise(steady_counts)) if a != b]
        assert len(moves) <= len(steady_counts) / 15
        assert max(steady_counts) <= 1.06 * min(steady_counts)
        for (i, up), (j, down) in itertools.pairwise(moves):
            if up > 0 > down:
                assert j - i >= 2  # cool-down of 2 intervals


# ------------------------------------------------------------------ 7. placement


def test_spot_up_to_its_share_on_demand_for_the_rest() -> None:
    policy = PredictivePolicy(context(spot_share=0.5))
    plan, _ = policy.decide(snap(T0, 80.0), None)  # want 100 rps
    assert set(plan.targets) == {
        ReplicaTarget("m", "v", "a", 5, spot=True),
        ReplicaTarget("m", "v", "a", 5, spot=False),
    }
    plan, _ = PredictivePolicy(context(spot_share=0.5), use_spot=False).decide(snap(T0, 80.0), None)
    assert plan.targets == (ReplicaTarget("m", "v", "a", 10),)


def test_cheapest_node_type_first_and_pool_limits() -> None:
    ctx = context(((node("a", od=1.0), 4), (node("b", od=1.5), 100)))
    plan, _ = PredictivePolicy(ctx).decide(snap(T0, 80.0), None)
    assert plan.targets == (ReplicaTarget("m", "v", "a", 4), ReplicaTarget("m", "v", "b", 6))
    small = context(((node("a"), 4),))
    plan, _ = PredictivePolicy(small).decide(snap(T0, 80.0), None)
    assert plan.count("m") == 4 and "pools exhausted" in plan.reason and "S_t" in plan.reason


def test_ready_replicas_are_kept_while_a_new_mix_starts() -> None:
    ctx = context(((node("a", od=1.0), 100), (node("b", od=1.5), 100)))
    old = tuple(ReplicaView(f"b{i}", "m", "v", "b", ReplicaState.READY) for i in range(10))
    plan, _ = PredictivePolicy(ctx).decide(snap(T0, 80.0, replicas=old), with_capacity(100.0))
    assert plan.targets == (ReplicaTarget("m", "v", "a", 10), ReplicaTarget("m", "v", "b", 10))


def test_min_replicas_are_kept_on_demand() -> None:
    plan, _ = PredictivePolicy(context(spot_share=1.0)).decide(snap(T0, 0.0), None)
    assert plan.targets == (ReplicaTarget("m", "v", "a", 1),)
    plan, _ = PredictivePolicy(context(), min_replicas=0).decide(snap(T0, 0.0), None)
    assert plan.count("m") == 0


def test_models_are_placed_in_context_order() -> None:
    a = node("a")
    table = LatencyTable((1, 2), (0,), ((0.15, 0.2),))
    targets = tuple(
        ModelTarget(m, 1.0, (VariantOption(m, "v", a, table, 1.0),)) for m in ("x", "y")
    )
    ctx = AllocationContext(targets, (Pool(a, 12),), 0.0, 15.0)
    s = Snapshot(T0, (ModelView("x", 80.0), ModelView("y", 80.0)))
    plan, _ = PredictivePolicy(ctx).decide(s, None)
    assert plan.count("x") == 10 and plan.count("y") == 2


# ------------------------------------------------------------------ 8. edge cases


def test_cold_start_uses_the_first_observation_and_the_cold_margin() -> None:
    count, m = decide(PredictivePolicy(context()), snap(T0, 80.0))
    assert m.capacity_rps == pytest.approx(100.0) and count == 10


def test_missing_model_without_history_gets_min_replicas() -> None:
    count, m = decide(PredictivePolicy(context()), snap(T0, None))
    assert m.capacity_rps == 0.0 and count == 1


def test_no_traffic_decays_to_min_replicas() -> None:
    policy = PredictivePolicy(context())
    state: PredictiveState | None = with_capacity(200.0)
    counts = []
    for i in range(30):
        plan, state = policy.decide(snap(T0 + 15.0 * i, 0.0), state)
        counts.append(plan.count("m"))
    assert counts[:3] == [20, 20, 16]  # cool-down, then −20 %
    assert all(b >= a * 0.8 - 1 for a, b in itertools.pairwise(counts))
    assert counts[-1] == 1


# ------------------------------------------------------------------ cost against the oracle


def fluid_run(
    policy: AllocationPolicy[Any], demand: Callable[[float], float], horizon: float, seed: int = 3
) -> tuple[float, float]:
    """A fluid executor: replicas start after their start-up and serve their capacity;
    returns (cost in $, fraction of demand above ready capacity)."""
    ctx = CTX
    startup = {p.node.name: p.node.startup_s for p in ctx.pools}
    rng = random.Random(seed)
    replicas: list[tuple[tuple[str, str, bool], float]] = []  # (key, ready at)
    state: Any = None
    cost = unserved = total = 0.0
    dt = ctx.interval_s
    for step in range(int(horizon / dt)):
        t = step * dt
        mean = sum(demand(t - dt + i) for i in range(int(dt))) / dt
        observed = max(0.0, rng.gauss(mean, math.sqrt(max(mean, 1e-9) / dt)))
        views = tuple(
            ReplicaView(
                str(i),
                "m",
                k[0],
                k[1],
                ReplicaState.READY if r <= t else ReplicaState.STARTING,
                k[2],
            )
            for i, (k, r) in enumerate(replicas)
        )
        plan, state = policy.decide(Snapshot(t, (ModelView("m", observed),), views), state)
        want = {(x.variant, x.node_type, x.spot): x.count for x in plan.targets}
        nxt: list[tuple[tuple[str, str, bool], float]] = []
        for key in set(want) | {k for k, _ in replicas}:
            mine = sorted((r for r in replicas if r[0] == key), key=lambda r: r[1])
            mine = mine[: want.get(key, 0)]  # stop the newest first
            mine += [(key, t + startup[key[1]])] * (want.get(key, 0) - len(mine))
            nxt += mine
        replicas = nxt
        for i in range(int(dt)):
            d = demand(t + i)
            ready = sum(10.0 for _, r in replicas if r <= t + i)
            unserved += max(0.0, d - ready)
            total += d
        cost += sum(0.3 if k[2] else 1.0 for k, _ in replicas) * dt / 3600.0
    return cost, unserved / total


CTX = context(((node("a", startup=60.0), 2000),))


def test_within_15_percent_of_the_oracle_on_a_diurnal_curve() -> None:
    period = 7200.0

    def demand(t: float) -> float:
        return 1000.0 * (1.0 + 0.5 * math.sin(2 * math.pi * t / period))

    horizon = 2 * period
    curve = DemandCurve(tuple(demand(float(i)) for i in range(int(horizon) + 200)), 1.0)
    oracle_cost, oracle_miss = fluid_run(OraclePolicy(CTX, demand={"m": curve}), demand, horizon)
    cost, miss = fluid_run(PredictivePolicy(CTX, period_s=period), demand, horizon)
    assert cost <= 1.15 * oracle_cost
    assert miss <= oracle_miss + 0.005  # the oracle misses only the first start-up


# ----------------------------------------------------------------- step 9: bursts


def ready(i: int, capacity: float = 10.0) -> ReplicaView:
    return ReplicaView(f"r{i}", "m", "v", "a", ReplicaState.READY, capacity_rps=capacity)


def test_react_is_off_without_burst_ratio() -> None:
    p = PredictivePolicy(context())
    assert p.react_interval_s is None
    state = with_capacity(10.0)
    assert p.react(snap(T0, 100.0), state) == (None, state)


#: A node whose replicas start within the reaction's bound (burst_max_startup_s, 10 s).
FAST = context(((node(startup=1.0), 1000),))


def test_react_raises_capacity_at_once_and_only_above_the_ratio() -> None:
    p = PredictivePolicy(FAST, burst_ratio=1.5, burst_window_s=2.0)
    assert p.react_interval_s == 2.0
    state = with_capacity(10.0, ((T0 - 5, 8.0),))
    # 14 req/s + 0 queued ≤ 1.5 × 10: nothing, the state untouched
    plan, same = p.react(snap(T0, 14.0, replicas=(ready(0),)), state)
    assert plan is None and same is state
    # 12 req/s + 60 queued / 15 s = 16 > 15: burst capacity 16 now (2 replicas of 10),
    # held 4 s; the decided capacity and the wants are the decisions' own
    plan, new = p.react(snap(T0, 12.0, queue=60, replicas=(ready(0),)), state)
    assert plan is not None and plan.count("m") == 2
    assert new is not None
    m = new.get("m")
    assert m is not None and m.capacity_rps == 10.0 and m.wants == ((T0 - 5, 8.0),)
    assert m.burst_rps == pytest.approx(16.0) and m.burst_until == T0 + 4.0
    assert m.forecast is None


def test_react_before_the_first_decision_counts_the_replicas_running() -> None:
    p = PredictivePolicy(FAST, burst_ratio=1.5)
    # two READY replicas of 10 req/s: 25 req/s is below 1.5 × 20 — no plan (and no state)
    assert p.react(snap(T0, 25.0, replicas=(ready(0), ready(1))), None) == (None, None)
    plan, new = p.react(snap(T0, 45.0, replicas=(ready(0), ready(1))), None)
    assert plan is not None and plan.count("m") == 5 and new is not None


def test_burst_capacity_is_held_briefly_renewed_and_kept_out_of_the_cooldown() -> None:
    p = PredictivePolicy(FAST, burst_ratio=1.5, burst_hold_s=4.0, cooldown_intervals=2.0)
    _, state = p.react(snap(T0, 40.0, replicas=(ready(0),)), with_capacity(10.0))
    assert state is not None
    # a quiet window 2 s later: the hold (until T0 + 4) stands, nothing to do
    assert p.react(snap(T0 + 2.0, 5.0, replicas=(ready(0),)), state) == (None, state)
    # a decision inside the hold keeps the burst's 4 replicas, but not in its wants
    count, m = decide(p, snap(T0 + 3.0, 5.0), state)
    assert count == 4 and m.capacity_rps < 40.0 and max(w for _, w in m.wants) < 40.0
    # the hold lapses: the next reaction releases the burst (the decided capacity only)
    plan, after = p.react(snap(T0 + 4.0, 5.0), PredictiveState((("m", m),)))
    assert plan is not None and plan.count("m") == 1 and plan.reason.count("burst over")
    assert after is not None and after.get("m").burst_at(T0 + 4.0) == 0.0  # type: ignore[union-attr]
    # a window over the threshold renews the hold from its own time
    _, s1 = p.react(snap(T0, 40.0, replicas=(ready(0),)), with_capacity(10.0))
    _, s2 = p.react(snap(T0 + 3.0, 40.0, replicas=(ready(0),)), s1)
    assert s2 is not None and s2.get("m").burst_until == T0 + 7.0  # type: ignore[union-attr]


def test_only_models_that_start_within_the_bound_react() -> None:
    # the default node starts in 60 s: a burst is over before its replicas serve
    slow = PredictivePolicy(context(), burst_ratio=1.5)
    state = with_capacity(10.0)
    assert slow.react(snap(T0, 400.0, replicas=(ready(0),)), state) == (None, state)
    bounded = PredictivePolicy(context(), burst_ratio=1.5, burst_max_startup_s=60.0)
    plan, _ = bounded.react(snap(T0, 400.0, replicas=(ready(0),)), state)
    assert plan is not None and plan.count("m") == 40


def test_react_judges_demand_against_the_replicas_measured_speed() -> None:
    p = PredictivePolicy(FAST, burst_ratio=1.5)
    # the profile: 2 items in 0.2 s; this replica runs its 2-item batches in 0.4 s
    slow = dataclasses.replace(ready(0), rate=5.0, latency_s=0.4)
    assert p.measured_speed("m", [slow]) == pytest.approx(0.5)
    assert p.measured_speed("m", [ready(0)]) == 1.0  # nothing served yet: the profile
    # 8 req/s ≤ 1.5 × 10 by the profile, but > 1.5 × 0.5 × 10 as measured
    assert p.react(snap(T0, 8.0, replicas=(ready(0),)), with_capacity(10.0))[0] is None
    plan, new = p.react(snap(T0, 8.0, replicas=(slow,)), with_capacity(10.0))
    assert plan is not None and plan.count("m") == 2  # 8 / 0.5 = 16 profile req/s
    assert new is not None and new.get("m").burst_rps == pytest.approx(16.0)  # type: ignore[union-attr]


def test_react_validates_its_parameters() -> None:
    from coscale.errors import CoscaleError

    with pytest.raises(CoscaleError, match="burst_ratio"):
        PredictivePolicy(context(), burst_ratio=0.5)
    with pytest.raises(CoscaleError, match="burst_window_s"):
        PredictivePolicy(context(), burst_ratio=1.5, burst_window_s=0.0)
    with pytest.raises(CoscaleError, match="burst_hold_s"):
        PredictivePolicy(context(), burst_ratio=1.5, burst_hold_s=-1.0)
    with pytest.raises(CoscaleError, match="pressure_gap_s"):
        PredictivePolicy(context(), burst_ratio=1.5, pressure_gap_s=-0.1)
    with pytest.raises(CoscaleError, match="pressure_fraction"):
        PredictivePolicy(context(), burst_ratio=1.5, pressure_fraction=0.0)


def pressed(t: float, pressure: int, replicas: tuple[ReplicaView, ...]) -> Snapshot:
    """A short window with a low rate (under every threshold) and ``pressure``."""
    return Snapshot(t, (ModelView("m", 2.0, pressure=pressure),), replicas)


def test_pressure_adds_one_replica_at_once_and_holds_it() -> None:
    p = PredictivePolicy(FAST, burst_ratio=1.5, burst_hold_s=4.0)
    assert p.pressure_gap_s == 0.25
    state = with_capacity(10.0)
    # the same quiet window without pressure: nothing
    assert p.react(pressed(T0, 0, (ready(0),)), state) == (None, state)
    plan, new = p.react(pressed(T0, 3, (ready(0),)), state)
    assert plan is not None and plan.count("m") == 2  # the READY one + one more
    assert "pressure 3" in plan.reason
    m = new.get("m")  # type: ignore[union-attr]
    assert m is not None and m.burst_rps == pytest.approx(20.0) and m.burst_until == T0 + 4.0
    # pressure again once the second replica serves: a third
    plan, new = p.react(pressed(T0 + 1.0, 1, (ready(0), ready(1))), new)
    assert plan is not None and plan.count("m") == 3
    assert new is not None and new.get("m").burst_until == T0 + 5.0  # type: ignore[union-attr]


def test_pressure_waits_for_a_replica_still_starting() -> None:
    p = PredictivePolicy(FAST, burst_ratio=1.5)
    starting = dataclasses.replace(ready(1), state=ReplicaState.STARTING)
    state = with_capacity(20.0)
    assert p.react(pressed(T0, 5, (ready(0), starting)), state) == (None, state)


def test_pressure_is_ignored_when_off_or_when_replicas_start_slowly() -> None:
    state = with_capacity(10.0)
    off = PredictivePolicy(FAST, burst_ratio=1.5, pressure_gap_s=None)
    assert off.pressure_gap_s is None
    assert off.react(pressed(T0, 5, (ready(0),)), state) == (None, state)
    slow = PredictivePolicy(context(), burst_ratio=1.5)  # 60-s start-ups
    assert slow.react(pressed(T0, 5, (ready(0),)), state) == (None, state)
    # without burst_ratio the policy does not react at all, pressure or not
    assert PredictivePolicy(FAST).pressure_gap_s is None


def test_executors_are_not_asked_to_react_when_no_model_starts_within_the_bound() -> None:
    slow = PredictivePolicy(context(), burst_ratio=1.0)  # 60-s start-ups
    assert slow.react_interval_s is None and slow.pressure_gap_s is None
    bounded = PredictivePolicy(context(), burst_ratio=1.0, burst_max_startup_s=60.0)
    assert bounded.react_interval_s == 2.0 and bounded.pressure_gap_s == 0.25


def test_executors_read_the_reactions_through_one_function() -> None:
    from coscale.policies.base import Reactions, reactions_of

    assert reactions_of(PredictivePolicy(FAST, burst_ratio=1.0)) == Reactions(2.0, 0.25, 0.15)
    assert reactions_of(PredictivePolicy(FAST, burst_ratio=1.0, pressure_gap_s=None)) == Reactions(
        2.0
    )
    assert reactions_of(PredictivePolicy(FAST)) == Reactions()  # no burst_ratio
    assert reactions_of(PredictivePolicy(context(), burst_ratio=1.0)) == Reactions()  # slow
    assert reactions_of(object()) == Reactions()  # a policy without react
