"""One test per clause of the N + k spare rule (coscale.policies.allocation.capacity.add_spares)
as the predictive and oracle policies and the presets apply it."""

from __future__ import annotations

import pytest

from coscale.catalog.nodes import NodeType
from coscale.errors import CoscaleError
from coscale.policies.allocation.capacity import (
    DemandCurve,
    PoolLedger,
    add_spares,
    needs_spare,
    rank_context,
)
from coscale.policies.allocation.oracle import OraclePolicy
from coscale.policies.allocation.predictive import (
    PredictiveModel,
    PredictivePolicy,
    PredictiveState,
)
from coscale.policies.base import AllocationContext, ModelTarget, Pool, VariantOption
from coscale.policies.presets import resolve_preset
from coscale.types import LatencyTable, ModelView, ReplicaTarget, Snapshot

T0 = 1000.0
#: 10 requests/s per replica: batches of 2 in 0.2 s, within half the 1-s SLO.
TEN = LatencyTable((1, 2), (0,), ((0.15, 0.2),))
#: 40 requests/s per replica: batches of 2 in 0.05 s.
FORTY = LatencyTable((1, 2), (0,), ((0.04, 0.05),))


def node(name: str = "a", od: float = 1.0, startup: float = 60.0) -> NodeType:
    return NodeType(
        name, "test", 4, 16.0, None, 0, 0.0, od, od * 0.3, 10.0, 20.0, 0.0, 0.0, startup, 1.0, 1,
        "test", "2025-01",
    )  # fmt: skip


def context(
    pools: tuple[tuple[NodeType, int, LatencyTable], ...] = ((node(), 1000, TEN),),
    slo_s: float = 1.0,
) -> AllocationContext:
    opts = tuple(VariantOption("m", "v", n, table, 1.0) for n, _, table in pools)
    return AllocationContext(
        (ModelTarget("m", slo_s, opts),), tuple(Pool(n, k) for n, k, _ in pools), 0.0, 15.0
    )


def predictive_count(
    ctx: AllocationContext, capacity: float, spares: int = 1, rate: float = 0.0
) -> tuple[int, str, tuple[ReplicaTarget, ...]]:
    """One decision holding ``capacity`` rps (the hysteresis keeps it: no history)."""
    policy = PredictivePolicy(ctx, spare_replicas=spares)
    state = PredictiveState((("m", PredictiveModel(None, (), capacity)),))
    plan, _ = policy.decide(Snapshot(T0, (ModelView("m", rate),), ()), state)
    return plan.count("m"), plan.reason, plan.targets


# ------------------------------------------------------------------ when it applies


def test_applies_only_with_traffic_a_slow_start_up_and_k_above_zero() -> None:
    slow = rank_context(context(), allow_spot=False)["m"]  # start-up 60 s > SLO 1 s
    fast = rank_context(context(((node(startup=0.5), 10, TEN),)), allow_spot=False)["m"]
    assert needs_spare(slow, 5.0, 1)
    assert not needs_spare(slow, 0.0, 1)  # no traffic
    assert not needs_spare(slow, 5.0, 0)  # k = 0
    assert not needs_spare(fast, 5.0, 1)  # a replacement is ready within the SLO


def test_one_spare_on_top_of_what_the_load_needs() -> None:
    assert predictive_count(context(), 15.0, spares=0)[0] == 2  # 15 rps → 2 × 10 rps
    count, reason, _ = predictive_count(context(), 15.0, spares=1)
    assert count == 3 and "1 of them spare" in reason
    assert predictive_count(context(), 15.0, spares=2)[0] == 4  # N + k


def test_a_model_with_traffic_keeps_at_least_two_replicas() -> None:
    assert predictive_count(context(), 0.5, spares=0)[0] == 1
    assert predictive_count(context(), 0.5, spares=1)[0] == 2


def test_no_spare_without_traffic_or_when_start_up_is_within_the_slo() -> None:
    assert predictive_count(context(), 0.0)[0] == 1  # min_replicas only
    fast = context(((node(startup=0.5), 1000, TEN),))
    assert predictive_count(fast, 15.0)[0] == 2


# ------------------------------------------------------------------ which replica


def test_the_spare_is_the_largest_placed_candidate_so_any_loss_leaves_the_load() -> None:
    # big replicas (40 rps) cost 3/h, small (10 rps) 1/h: 45 rps → one big + one small
    ctx = context(((node("small", od=1.0), 100, TEN), (node("big", od=3.0), 100, FORTY)))
    options = rank_context(ctx, allow_spot=False)["m"]
    placed = (ReplicaTarget("m", "v", "big", 1), ReplicaTarget("m", "v", "small", 1))
    ledger = PoolLedger.template(ctx.pools, 0.0)
    targets, spares = add_spares(options, placed, 45.0, 1, ledger)
    assert spares == 1 and targets[2:] == (ReplicaTarget("m", "v", "big", 1),)
    caps = {"big": 40.0, "small": 10.0}
    replicas = [t.node_type for t in targets for _ in range(t.count)]
    total = sum(caps[n] for n in replicas)
    assert all(total - caps[lost] >= 45.0 for lost in replicas)  # the load fits N − 1


def test_a_full_pool_moves_the_spare_to_the_next_candidate() -> None:
    ctx = context(((node("a", od=1.0), 2, TEN), (node("b", od=2.0), 5, TEN)))
    count, _, targets = predictive_count(ctx, 15.0)  # 2 on a (its pool is full) + 1 on b
    assert count == 3 and ReplicaTarget("m", "v", "b", 1) in targets


def test_no_room_at_all_places_fewer_spares_and_says_so() -> None:
    ctx = context(((node(), 2, TEN),))
    count, reason, _ = predictive_count(ctx, 15.0)
    assert count == 2 and "no room for a spare replica" in reason


def test_an_empty_placement_gets_no_spare() -> None:
    options = rank_context(context(), allow_spot=False)["m"]
    ledger = PoolLedger.template(context().pools, 0.0)
    assert add_spares(options, (), 10.0, 1, ledger) == ((), 0)


def test_spare_replicas_must_not_be_negative() -> None:
    with pytest.raises(CoscaleError, match="spare_replicas"):
        PredictivePolicy(context(), spare_replicas=-1)
    with pytest.raises(CoscaleError, match="spare_replicas"):
        OraclePolicy(context(), demand={}, spare_replicas=-1)


# ------------------------------------------------------------------ oracle and presets


def test_the_oracle_keeps_the_same_spare() -> None:
    demand = {"m": DemandCurve((15.0,) * 1000, 1.0)}
    plain = OraclePolicy(context(), demand=demand)
    spared = OraclePolicy(context(), demand=demand, spare_replicas=1)
    snapshot = Snapshot(20.0, (), ())
    assert plain.decide(snapshot, None)[0].count("m") == 2
    plan = spared.decide(snapshot, None)[0]
    assert plan.count("m") == 3 and "1 spare" in plan.reason
    idle = OraclePolicy(context(), demand={"m": DemandCurve((0.0,) * 10, 1.0)}, spare_replicas=1)
    assert idle.decide(snapshot, None)[0].count("m") == 0  # no traffic: no spare


@pytest.mark.parametrize("preset", ["optimized-a", "optimized-b", "oracle", "baseline"])
def test_no_preset_buys_a_spare_by_default(preset: str) -> None:
    """Spares are opt-in (the presets' docstring: +40–50 % cost in simulation)."""
    assert not resolve_preset(preset).allocation_params.get("spare_replicas")
