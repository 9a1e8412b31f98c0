"""One test per clause of the oracle docstring (coscale.policies.allocation.oracle)."""

from __future__ import annotations

import pytest

from coscale.catalog.nodes import NodeType
from coscale.errors import CoscaleError
from coscale.policies.allocation.capacity import DemandCurve
from coscale.policies.allocation.oracle import OraclePolicy
from coscale.policies.base import AllocationContext, ModelTarget, Pool, VariantOption
from coscale.types import (
    LatencyTable,
    ModelView,
    ReplicaState,
    ReplicaTarget,
    ReplicaView,
    Snapshot,
)


def node(name: str = "a", od: float = 1.0, startup: float = 60.0) -> NodeType:
    return NodeType(
        name, "test", 4, 16.0, None, 0, 0.0, od, od * 0.3, 10.0, 20.0, 0.0, 0.0, startup, 1.0, 1,
        "test", "2025-01",
    )  # fmt: skip


def context(
    nodes: tuple[tuple[NodeType, int], ...] = ((node(), 1000),), spot_share: float = 0.0
) -> AllocationContext:
    """10 requests/s per replica (batches of 2 in 0.2 s: planned at capacity); decisions every
    15 s; start-up 60 s."""
    table = LatencyTable((1, 2), (0,), ((0.15, 0.2),))
    opts = tuple(VariantOption("m", "v", n, table, 1.0) for n, _ in nodes)
    pools = tuple(Pool(n, k) for n, k in nodes)
    return AllocationContext((ModelTarget("m", 1.0, opts),), pools, spot_share, 15.0)


def step(before: float, after: float, at: float) -> DemandCurve:
    """1-s bins: ``before`` until ``at``, then ``after`` (up to 1,000 s)."""
    return DemandCurve(tuple(before if i < at else after for i in range(1000)), 1.0)


def ready(n: int, node_type: str = "a") -> tuple[ReplicaView, ...]:
    return tuple(ReplicaView(f"r{i}", "m", "v", node_type, ReplicaState.READY) for i in range(n))


def count(policy: OraclePolicy, t: float, replicas: tuple[ReplicaView, ...] = ()) -> int:
    plan, state = policy.decide(Snapshot(t, (), replicas), None)
    assert state is None
    return plan.count("m")


# ------------------------------------------------------------------ 1. future


def test_starts_replicas_one_start_up_ahead_of_need() -> None:
    policy = OraclePolicy(context(), demand={"m": step(10.0, 100.0, 100)})
    assert count(policy, 20.0, ready(1)) == 1  # [80, 95] still 10 rps
    assert count(policy, 30.0, ready(1)) == 10  # [90, 105] holds the step to 100 rps


# ------------------------------------------------------------------ 2. keep


def test_keeps_existing_capacity_the_demand_needs_until_replacements_could_serve() -> None:
    policy = OraclePolicy(context(), demand={"m": step(100.0, 0.0, 50)})
    assert count(policy, 0.0, ready(10)) == 10  # [0, 75] peaks at 100: keep all ten
    assert count(policy, 0.0, ready(4)) == 4  # keeps what exists; more could not be ready
    assert count(policy, 60.0, ready(10)) == 0  # demand ended: nothing to keep


def test_cold_start_provisions_only_the_future() -> None:
    policy = OraclePolicy(context(), demand={"m": step(100.0, 30.0, 50)})
    assert count(policy, 0.0) == 3  # [60, 75] needs 30 rps; 100 now cannot be served


def test_unknown_replicas_count_their_own_capacity() -> None:
    policy = OraclePolicy(context(), demand={"m": step(100.0, 0.0, 50)})
    other = tuple(
        ReplicaView(f"x{i}", "m", "other-variant", "a", ReplicaState.READY, capacity_rps=50.0)
        for i in range(2)
    )
    plan, _ = policy.decide(Snapshot(0.0, (), other), None)
    # need = min(100 existing, 100 wanted): ten of its own option, and the two others kept
    # ready until those ten are
    assert plan.targets == (
        ReplicaTarget("m", "v", "a", 10),
        ReplicaTarget("m", "other-variant", "a", 2),
    )


# ------------------------------------------------------------------ 4. backlog


def test_keeps_capacity_while_a_queue_remains_after_the_demand_ends() -> None:
    policy = OraclePolicy(context(), demand={"m": step(100.0, 0.0, 50)})
    queued = Snapshot(900.0, (ModelView("m", 0.0, queue_length=300),), ready(10))
    plan, _ = policy.decide(queued, None)
    assert plan.count("m") == 2  # 300 queued / 15 s = 20 rps = two replicas of 10
    empty = Snapshot(900.0, (ModelView("m", 0.0, queue_length=0),), ready(10))
    assert policy.decide(empty, None)[0].count("m") == 0
    cold = Snapshot(900.0, (ModelView("m", 0.0, queue_length=5),), ())
    assert policy.decide(cold, None)[0].count("m") == 1  # a stranded queue starts one


# ------------------------------------------------------------------ 3. placement


def test_exact_capacity_no_margin_no_minimum() -> None:
    policy = OraclePolicy(context(), demand={"m": step(45.0, 45.0, 0)})
    assert count(policy, 0.0) == 5  # ceil(45 / 10)
    assert count(OraclePolicy(context(), demand={"m": step(0.0, 0.0, 0)}), 0.0) == 0


def test_spot_share_and_pool_limits() -> None:
    policy = OraclePolicy(context(spot_share=0.5), demand={"m": step(100.0, 100.0, 0)})
    plan, _ = policy.decide(Snapshot(0.0), None)
    assert set(plan.targets) == {
        ReplicaTarget("m", "v", "a", 5, spot=True),
        ReplicaTarget("m", "v", "a", 5, spot=False),
    }
    small = OraclePolicy(context(((node(), 3),)), demand={"m": step(100.0, 100.0, 0)})
    plan, _ = small.decide(Snapshot(0.0), None)
    assert plan.count("m") == 3 and "pools exhausted" in plan.reason


def test_a_change_of_mix_keeps_ready_replicas_until_replaced() -> None:
    ctx = context(((node("a", od=1.0), 100), (node("b", od=2.0), 100)))
    policy = OraclePolicy(ctx, demand={"m": step(100.0, 100.0, 0)})
    plan, _ = policy.decide(Snapshot(0.0, (), ready(10, "b")), None)
    assert plan.targets == (ReplicaTarget("m", "v", "a", 10), ReplicaTarget("m", "v", "b", 10))


# ------------------------------------------------------------------ 4. peaks


def test_curve_peak_is_the_largest_overlapping_bin() -> None:
    curve = DemandCurve((0.0, 0.0, 0.0, 0.0, 70.0), bin_s=20.0)  # 70 rps in [80, 100)
    policy = OraclePolicy(context(), demand={"m": curve})
    assert count(policy, 5.0) == 7  # [65, 80] touches the bin starting at 80
    assert count(policy, 4.0) == 0  # [64, 79]


def test_function_is_sampled_every_step_and_at_both_ends() -> None:
    def spike(t: float) -> float:
        return 90.0 if 70.2 <= t <= 70.7 else 0.0

    coarse = OraclePolicy(context(), demand={"m": spike})
    fine = OraclePolicy(context(), demand={"m": spike}, sample_step_s=0.5)
    assert count(coarse, 0.0) == 0  # 60, 61, …, 75: the spike falls between samples
    assert count(fine, 0.0) == 9  # 70.5 is sampled
    assert count(OraclePolicy(context(), demand={"m": lambda t: t}), 0.0) == 8  # ends: 75 rps


# ------------------------------------------------------------------ 5. models


def test_models_without_demand_get_nothing_and_unknown_names_fail() -> None:
    assert count(OraclePolicy(context(), demand={}), 0.0) == 0
    with pytest.raises(CoscaleError):
        OraclePolicy(context(), demand={"typo": step(1.0, 1.0, 0)})
    with pytest.raises(CoscaleError):
        OraclePolicy(context(), demand={}, sample_step_s=0.0)


def test_starting_replicas_are_not_existing_capacity() -> None:
    policy = OraclePolicy(context(), demand={"m": step(100.0, 0.0, 50)})
    starting = tuple(ReplicaView(f"s{i}", "m", "v", "a", ReplicaState.STARTING) for i in range(10))
    assert count(policy, 0.0, starting) == 0  # none serves now; none is needed at 60 s
