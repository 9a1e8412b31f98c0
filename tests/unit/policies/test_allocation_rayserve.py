"""One test per clause of the Ray Serve docstring (coscale.policies.allocation.rayserve)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from coscale.catalog.nodes import NodeType
from coscale.policies.allocation.rayserve import RayModel, RayServePolicy, RayState
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


def snap(t: float, ongoing: int, running: int, starting: int = 0) -> Snapshot:
    reps = [ReplicaView(f"r{i}", "m", "v", "cpu", ReplicaState.READY) for i in range(running)]
    reps += [ReplicaView(f"s{i}", "m", "v", "cpu", ReplicaState.STARTING) for i in range(starting)]
    return Snapshot(t, (ModelView("m", 0.0, queue_length=ongoing),), tuple(reps))


def ray(**kw: Any) -> RayServePolicy:
    return RayServePolicy(context(), **kw)


def drive(
    policy: RayServePolicy,
    points: Sequence[tuple[float, int, int]],
    state: RayState | None = None,
) -> tuple[list[int], RayState]:
    counts = []
    for t, ongoing, running in points:
        plan, state = policy.decide(snap(t, ongoing, running), state)
        counts.append(plan.count("m"))
    assert state is not None
    return counts, state


def at(target: int, direction: int = 0, since: float | None = None) -> RayState:
    return RayState((("m", RayModel((), target, direction, since)),))


# ------------------------------------------------------------------ 1. average


def test_ongoing_is_averaged_over_the_look_back_period() -> None:
    policy = ray(downscale_delay_s=0.0, upscale_delay_s=0.0)
    counts, _ = drive(policy, [(0, 20, 10), (29, 0, 10)], at(10))
    assert counts == [10, 5]  # mean(20, 0) = 10 → 10 / 2 = 5
    counts, _ = drive(policy, [(0, 20, 10), (30, 0, 10)], at(10))
    assert counts == [10, 1]  # the 0 s sample is out of (0, 30]: total 0 → min_replicas


def test_initial_target_is_active_replicas_or_initial_replicas() -> None:
    plan, _ = ray().decide(snap(0.0, 4, 3, starting=2), None)
    assert plan.count("m") == 5
    plan, _ = ray(initial_replicas=2).decide(Snapshot(0.0), None)
    assert plan.count("m") == 2


# ------------------------------------------------------------------ 2. cold start


def test_cold_start_scales_up_at_once() -> None:
    assert drive(ray(min_replicas=0), [(0, 5, 0)], at(0))[0] == [1]
    assert drive(ray(min_replicas=0, upscaling_factor=2.5), [(0, 5, 0)], at(0))[0] == [3]


def test_no_running_replicas_and_no_traffic_leaves_target() -> None:
    counts, state = drive(ray(min_replicas=0), [(0, 0, 0)], at(2, 1, -5.0))
    assert counts == [2]
    assert state.get("m") == RayModel(((0.0, 0.0),), 2, 1, -5.0)


# ------------------------------------------------------------------ 3. desired


def test_desired_is_total_over_target_ongoing() -> None:
    assert ray().desired("m", total=10.0, running=2) == 5
    assert ray(target_ongoing_requests=5.0).desired("m", total=10.0, running=2) == 2


def test_scaling_factors_damp_the_move() -> None:
    # error 2.5: 1 + 1.5 × 0.5 = 1.75 → ceil(3.5) = 4
    assert ray(upscaling_factor=0.5).desired("m", total=10.0, running=2) == 4
    # error 0.25: 1 − 0.75 × 0.5 = 0.625 → ceil(2.5) = 3
    assert ray(downscaling_factor=0.5).desired("m", total=4.0, running=4) == 3


def test_a_small_downscaling_factor_still_moves_one_down() -> None:
    # error 0.75, factor 0.1: ceil(4 × 0.975) = 4 == running, ceil(4 × 0.75) = 3 < 4 → 3
    assert ray(downscaling_factor=0.1).desired("m", total=6.0, running=4) == 3


def test_desired_is_clamped() -> None:
    assert ray(max_replicas=3).desired("m", total=100.0, running=2) == 3
    assert ray(min_replicas=2).desired("m", total=0.0, running=4) == 2


def test_default_max_is_the_pools_limit() -> None:
    assert RayServePolicy(context((("cpu", 1.0, 6),))).desired("m", 100.0, 2) == 6


# ------------------------------------------------------------------ 4. delays


def test_upscale_waits_30_s_of_consecutive_decisions() -> None:
    counts, _ = drive(ray(), [(t, 8, 2) for t in range(0, 31, 10)], at(2))
    assert counts == [2, 2, 2, 4]


def test_downscale_waits_600_s() -> None:
    counts, _ = drive(ray(), [(t, 2, 4) for t in range(0, 601, 100)], at(4))
    assert counts == [4] * 6 + [1]


def test_a_tick_the_other_way_restarts_the_count() -> None:
    points = [(0, 8, 2), (20, 0, 2), (25, 8, 2), (50, 8, 2), (55, 8, 2)]
    counts, _ = drive(ray(look_back_period_s=1.0), points, at(2))
    assert counts == [2, 2, 2, 2, 4]  # the up count restarted at 25 s: applied at 55 s


def test_a_tick_at_target_clears_the_pending_decision() -> None:
    points = [(0, 8, 2), (20, 4, 2), (25, 8, 2), (50, 8, 2), (55, 8, 2)]
    counts, state = drive(ray(look_back_period_s=1.0), points, at(2))
    assert counts == [2, 2, 2, 2, 4]
    assert state.get("m") == RayModel(((55.0, 8.0),), 4, 0, None)


def test_missing_model_counts_replica_outstanding_only() -> None:
    reps = tuple(
        ReplicaView(f"r{i}", "m", "v", "cpu", ReplicaState.READY, outstanding=6) for i in range(2)
    )
    plan, _ = ray(upscale_delay_s=0.0).decide(Snapshot(0.0, (), reps), at(2))
    assert plan.count("m") == 6  # 12 / 2


# ------------------------------------------------------------------ 5. placement


def test_placement_spills_over_full_pools() -> None:
    policy = RayServePolicy(context((("cheap", 1.0, 2), ("dear", 2.0, 5))), max_replicas=10)
    plan, _ = policy.decide(snap(0.0, 0, 0), at(4))
    assert plan.targets == (
        ReplicaTarget("m", "v", "cheap", 2),
        ReplicaTarget("m", "v", "dear", 2),
    )


def test_samples_are_bounded() -> None:
    _, state = drive(ray(max_samples=2), [(0, 1, 1), (1, 1, 1), (2, 1, 1)], at(1))
    m = state.get("m")
    assert m is not None and [t for t, _ in m.samples] == [1.0, 2.0]


def test_a_count_at_s_t_is_reported() -> None:
    policy = RayServePolicy(context((("cpu", 1.0, 3),)), upscale_delay_s=0.0)
    plan, _ = policy.decide(snap(0.0, 100, 2), at(2))
    assert plan.count("m") == 3 and "capped at S_t = 3" in plan.reason
