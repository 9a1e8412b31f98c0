"""One test per clause of the static policy docstring (coscale.policies.allocation.static)."""

from __future__ import annotations

import pytest

from coscale.catalog.nodes import NodeType
from coscale.errors import CoscaleError
from coscale.policies.allocation.capacity import DemandCurve
from coscale.policies.allocation.static import StaticPolicy
from coscale.policies.base import AllocationContext, ModelTarget, Pool, VariantOption
from coscale.types import (
    LatencyTable,
    ModelView,
    ReplicaState,
    ReplicaTarget,
    ReplicaView,
    Snapshot,
)


def node(name: str, od: float) -> NodeType:
    return NodeType(
        name, "test", 4, 16.0, None, 0, 0.0, od, od / 3, 10.0, 20.0, 0.0, 0.0, 60.0, 1.0, 1,
        "test", "2025-01",
    )  # fmt: skip


def context(cheap_max: int = 100, models: tuple[str, ...] = ("m",)) -> AllocationContext:
    """Two pools: "cheap" ($1/h) and "dear" ($2/h, 50 replicas); 10 rps per replica (batches
    of 2 in 0.2 s: planned at capacity)."""
    cheap, dear = node("cheap", 1.0), node("dear", 2.0)
    table = LatencyTable((1, 2), (0,), ((0.15, 0.2),))
    targets = tuple(
        ModelTarget(m, 1.0, tuple(VariantOption(m, "v", n, table, 1.0) for n in (cheap, dear)))
        for m in models
    )
    return AllocationContext(targets, (Pool(cheap, cheap_max), Pool(dear, 50)))


def test_replicas_as_one_count_for_every_model() -> None:
    plan, _ = StaticPolicy(context(models=("a", "b")), replicas=3).decide(Snapshot(0.0), None)
    assert plan.targets == (
        ReplicaTarget("a", "v", "cheap", 3),
        ReplicaTarget("b", "v", "cheap", 3),
    )


def test_replicas_per_model() -> None:
    policy = StaticPolicy(context(models=("a", "b")), replicas={"a": 1, "b": 4})
    plan, _ = policy.decide(Snapshot(0.0), None)
    assert plan.count("a") == 1 and plan.count("b") == 4


def test_demand_curve_sized_for_peak_or_mean() -> None:
    curve = DemandCurve((10.0, 50.0, 30.0), bin_s=60.0)
    peak = StaticPolicy(context(), demand={"m": curve}).decide(Snapshot(0.0), None)[0]
    mean = StaticPolicy(context(), demand={"m": curve}, size_for="mean").decide(
        Snapshot(0.0), None
    )[0]
    assert peak.count("m") == 5  # ceil(50 / 10)
    assert mean.count("m") == 3  # ceil(30 / 10)


def test_demand_number_is_the_rate_to_size_for() -> None:
    plan, _ = StaticPolicy(context(), demand={"m": 41.0}).decide(Snapshot(0.0), None)
    assert plan.targets == (ReplicaTarget("m", "v", "cheap", 5),)


def test_demand_sizing_keeps_min_replicas() -> None:
    plan, _ = StaticPolicy(context(), demand={"m": 0.0}).decide(Snapshot(0.0), None)
    assert plan.count("m") == 1
    plan, _ = StaticPolicy(context(), demand={"m": 0.0}, min_replicas=0).decide(Snapshot(0.0), None)
    assert plan.count("m") == 0


def test_every_model_needs_a_size_and_names_must_exist() -> None:
    ctx = context(models=("a", "b"))
    with pytest.raises(CoscaleError):
        StaticPolicy(ctx, replicas={"a": 1})
    with pytest.raises(CoscaleError):
        StaticPolicy(ctx, demand={"a": 1.0, "b": 1.0, "c": 1.0})
    with pytest.raises(CoscaleError):
        StaticPolicy(ctx)
    with pytest.raises(CoscaleError):
        StaticPolicy(ctx, replicas=1, demand={"a": 1.0, "b": 1.0})
    with pytest.raises(CoscaleError):
        StaticPolicy(ctx, replicas=1, size_for="median")
    with pytest.raises(CoscaleError):
        StaticPolicy(ctx, replicas=-1)


def test_pools_fill_in_model_order_and_shortfall_is_reported() -> None:
    ctx = context(cheap_max=3, models=("a", "b"))
    plan, _ = StaticPolicy(ctx, replicas=2).decide(Snapshot(0.0), None)
    assert plan.targets == (
        ReplicaTarget("a", "v", "cheap", 2),
        ReplicaTarget("b", "v", "cheap", 1),
        ReplicaTarget("b", "v", "dear", 1),
    )
    plan, _ = StaticPolicy(context(cheap_max=0), replicas=60).decide(Snapshot(0.0), None)
    assert plan.count("m") == 50 and "pools exhausted" in plan.reason


def test_decisions_ignore_the_snapshot() -> None:
    policy = StaticPolicy(context(), replicas=2)
    busy = Snapshot(
        5.0,
        (ModelView("m", 1e6, queue_length=10**6),),
        (ReplicaView("r", "m", "v", "cheap", ReplicaState.READY, utilization=1.0),),
    )
    first, s1 = policy.decide(Snapshot(0.0), None)
    second, s2 = policy.decide(busy, s1)
    assert s1 is None and s2 is None
    assert second.targets == first.targets and second.time == 5.0
