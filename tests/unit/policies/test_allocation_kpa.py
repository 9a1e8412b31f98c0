"""One test per clause of the KPA docstring (coscale.policies.allocation.kpa)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from coscale.catalog.nodes import NodeType
from coscale.errors import CoscaleError
from coscale.policies.allocation.capacity import batch1_utilisation
from coscale.policies.allocation.kpa import KpaPolicy, KpaState, slo_concurrency
from coscale.policies.base import AllocationContext, ModelTarget, Pool, VariantOption
from coscale.types import (
    LatencyTable,
    ModelView,
    ReplicaState,
    ReplicaTarget,
    ReplicaView,
    Snapshot,
)


def node(name: str = "cpu", od: float = 1.0) -> NodeType:
    return NodeType(
        name, "test", 4, 16.0, None, 0, 0.0, od, od / 3, 10.0, 20.0, 0.0, 0.0, 60.0, 1.0, 1,
        "test", "2025-01",
    )  # fmt: skip


def context(pools: tuple[tuple[str, float, int], ...] = (("cpu", 1.0, 100),)) -> AllocationContext:
    nodes = [(node(n, od), k) for n, od, k in pools]
    table = LatencyTable((1,), (0,), ((0.1,),))
    opts = tuple(VariantOption("m", "v", n, table, 1.0) for n, _ in nodes)
    return AllocationContext((ModelTarget("m", 1.0, opts),), tuple(Pool(n, k) for n, k in nodes))


def snap(t: float, queue: int = 0, ready: int = 1, outstanding: int = 0) -> Snapshot:
    reps = tuple(
        ReplicaView(f"r{i}", "m", "v", "cpu", ReplicaState.READY, outstanding=outstanding)
        for i in range(ready)
    )
    return Snapshot(t, (ModelView("m", 0.0, queue_length=queue),), reps)


def drive(
    policy: KpaPolicy, points: list[tuple[float, int, int]], state: KpaState | None = None
) -> tuple[list[int], KpaState]:
    """Feed (time, queued concurrency, ready replicas) points; the counts planned each time."""
    counts = []
    for t, queue, ready in points:
        plan, state = policy.decide(snap(t, queue, ready), state)
        counts.append(plan.count("m"))
    assert state is not None
    return counts, state


def every_2s(t0: float, t1: float, queue: int, ready: int = 1) -> list[tuple[float, int, int]]:
    return [(float(t), queue, ready) for t in range(int(t0), int(t1) + 1, 2)]


def kpa(**kw: Any) -> KpaPolicy:
    return KpaPolicy(context(), **kw)


# ------------------------------------------------------------------ samples and ticks


def test_concurrency_is_outstanding_plus_queue() -> None:
    plan, _ = kpa().decide(snap(0.0, queue=30, ready=2, outstanding=35), None)
    assert plan.count("m") == 2  # (2 × 35 + 30) / 70 → 2


def test_samples_leave_after_the_stable_window_and_are_bounded() -> None:
    _, state = drive(
        kpa(stable_window_s=10.0, panic_window_s=1.0), [(0, 1, 1), (5, 1, 1), (20, 1, 1)]
    )
    m = state.get("m")
    assert m is not None and m.samples == ((20.0, 1.0),)
    _, state = drive(kpa(max_samples=3), every_2s(0, 10, 1))
    m = state.get("m")
    assert m is not None and [t for t, _ in m.samples] == [6.0, 8.0, 10.0]


def test_calls_between_ticks_only_record() -> None:
    counts, state = drive(kpa(), [(0, 0, 2), (1, 700, 2), (2, 700, 2)])
    assert counts[0] == counts[1] == 1  # floor(2 / 2) = 1; the 1 s call does not decide
    assert counts[2] == 7  # the tick at 2 s sees all samples: ceil(mean(0, 700, 700) / 70)
    assert state.last_tick == 2.0


# ------------------------------------------------------------------ 1. target


def test_target_is_70_or_container_concurrency_times_0_7() -> None:
    assert drive(kpa(), [(0, 100, 2)])[0] == [2]  # ceil(100 / 70)
    assert drive(kpa(container_concurrency=10), [(0, 100, 2)])[0] == [15]  # ceil(100 / 7)


# ------------------------------------------------------------------ 2. averages


def test_stable_average_is_over_the_last_60_s() -> None:
    # samples at 0 (0), 30 (0), 58 (140), 60 (140); the 0 s one is out of (0, 60]
    counts, _ = drive(kpa(), [(0, 0, 2), (30, 0, 2), (58, 140, 2), (60, 140, 2)])
    assert counts[-1] == 2  # ceil(mean(0, 140, 140) / 70); with the 0 s sample it would be 1


# ------------------------------------------------------------------ 3. rate bounds


def test_scale_down_at_most_halves_per_tick() -> None:
    assert drive(kpa(), [(0, 0, 10)])[0] == [5]


def test_scale_up_bounded_by_the_up_rate() -> None:
    assert drive(kpa(max_scale_up_rate=2.0), [(0, 700, 1)])[0] == [2]


# ------------------------------------------------------------------ 4–5. panic


def _surge() -> tuple[list[int], KpaState, KpaPolicy]:
    policy = kpa(min_replicas=1)
    counts, state = drive(policy, [*every_2s(0, 54, 0), (56, 280, 1)])
    return counts, state, policy


def test_panic_starts_when_panic_pods_reach_twice_ready() -> None:
    counts, state, _ = _surge()
    m = state.get("m")
    # stable: ceil(280 / 29 / 70) = 1; panic: ceil(mean(0, 0, 280) / 70) = 2 ≥ 2 × 1 ready
    assert m is not None and m.panic_time == 56.0
    assert counts[-1] == 2


def test_no_scale_down_in_panic() -> None:
    _, state, policy = _surge()
    counts, state = drive(policy, every_2s(58, 100, 0), state)
    m = state.get("m")
    # the 58 s and 60 s ticks still see the 56 s sample in their 6 s window: over
    assert m is not None and m.panic_time == 60.0
    assert set(counts) == {2}


def test_panic_ends_a_stable_window_after_the_last_over_tick() -> None:
    _, state, policy = _surge()
    counts, state = drive(policy, every_2s(58, 122, 0), state)
    assert counts[-2] == 2  # 120 s: 60 + 60 is not yet past
    assert counts[-1] == 1  # 122 s: out of panic, stable (0) → min_replicas 1
    m = state.get("m")
    assert m is not None and m.panic_time is None and m.max_panic_pods == 0


# ------------------------------------------------------------------ 6. bounds


def test_min_and_max_replicas() -> None:
    assert drive(kpa(max_replicas=3), [(0, 7000, 1)])[0] == [3]
    assert drive(kpa(min_replicas=2), [(0, 0, 1)])[0] == [2]


def test_default_max_is_the_pools_limit() -> None:
    policy = KpaPolicy(context((("cpu", 1.0, 4),)))
    assert drive(policy, [(0, 7000, 1)])[0] == [4]


# ------------------------------------------------------------------ 7. scale to zero


def test_scale_to_zero_after_a_quiet_window_and_the_grace() -> None:
    policy = kpa()
    counts, state = drive(policy, every_2s(0, 58, 50))
    assert set(counts) == {1}
    counts, _ = drive(policy, every_2s(60, 150, 0), state)
    times = list(range(60, 151, 2))
    by_time = dict(zip(times, counts, strict=True))
    assert by_time[116] == 1  # the 58 s sample is still in the stable window (56, 116]
    assert by_time[118] == 1 and by_time[146] == 1  # desired 0 since 118, held by the grace
    assert by_time[148] == 0


def test_a_model_already_at_zero_stays_at_zero() -> None:
    assert drive(kpa(), [(0, 0, 0)])[0] == [0]


def test_cold_start_on_queued_requests() -> None:
    assert drive(kpa(), [(0, 5, 0)])[0] == [1]


def test_missing_model_counts_only_replica_outstanding() -> None:
    reps = tuple(
        ReplicaView(f"r{i}", "m", "v", "cpu", ReplicaState.READY, outstanding=100) for i in range(2)
    )
    plan, _ = kpa().decide(Snapshot(0.0, (), reps), None)
    assert plan.count("m") == 3  # ceil(200 / 70)


# ------------------------------------------------------------------ 8. placement


def test_placement_spills_over_full_pools() -> None:
    policy = KpaPolicy(context((("cheap", 1.0, 1), ("dear", 2.0, 1))))
    plan, _ = policy.decide(snap(0.0, queue=700, ready=0), None)
    assert plan.targets == (
        ReplicaTarget("m", "v", "cheap", 1),
        ReplicaTarget("m", "v", "dear", 1),
    )
    assert "pools exhausted" not in plan.reason  # desired clamped to S_t = 2


def test_a_count_at_s_t_is_reported() -> None:
    plan, _ = KpaPolicy(context((("cpu", 1.0, 4),))).decide(snap(0.0, queue=7000), None)
    assert plan.count("m") == 4 and "capped at S_t = 4" in plan.reason


# ------------------------------------------------------------------ 1. target annotation


def test_target_annotation_replaces_the_default_of_100() -> None:
    # 14 concurrent at target 10 × 0.7 = 7 → 2 replicas; at the default 70 → 1
    assert drive(kpa(target=10.0), [(0.0, 14, 1)])[0] == [2]
    assert drive(kpa(), [(0.0, 14, 1)])[0] == [1]


def test_target_slo_is_the_concurrency_at_the_planning_utilisation() -> None:
    # one item per 0.1 s (μ = 10/s), SLO 1 s: planned at u = batch1_utilisation(0.1, 1)
    u = batch1_utilisation(0.1, 1.0)
    expected = max(1.0, u / (1 - u)) * 0.7
    assert slo_concurrency(10.0 * u, 10.0, 1.0) == pytest.approx(expected / 0.7)
    counts, _ = drive(kpa(target="slo"), [(0.0, 3, 1)])
    assert counts == [math.ceil(3 / expected)]


def test_target_slo_of_a_batching_option_is_capacity_times_half_the_slo() -> None:
    assert slo_concurrency(400.0, 400.0, 0.2) == pytest.approx(40.0)


def test_target_slo_is_at_least_one_request() -> None:
    assert slo_concurrency(0.1, 1.0, 1.0) == 1.0
    assert slo_concurrency(0.0, 0.0, 1.0) == 1.0


def test_bad_target_is_rejected() -> None:
    for bad in (0.0, -1.0, "fast"):
        with pytest.raises(CoscaleError):
            kpa(target=bad)
