"""Clause-by-clause tests of coscale.policies.allocation.capacity (and the registry)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from coscale.catalog.nodes import NodeType
from coscale.errors import CoscaleError
from coscale.policies.allocation import ALLOCATION, make_allocation
from coscale.policies.allocation.capacity import (
    MAX_UTILISATION,
    WAIT_TAIL,
    DemandCurve,
    PoolLedger,
    batch1_utilisation,
    capacity_rps,
    effective_usd_per_hour,
    keep_ready,
    merge_targets,
    place_capacity,
    place_count,
    plan_counts,
    planning_rps,
    rank_context,
    rank_model,
    replica_usd_per_hour,
    restart_fraction,
    spot_overprovision,
)
from coscale.policies.base import AllocationContext, ModelTarget, Pool, VariantOption
from coscale.types import LatencyTable, ReplicaState, ReplicaTarget, ReplicaView

# ----------------------------------------------------------------------------- factories


def node(
    name: str = "cpu",
    od: float = 1.0,
    spot: float = 0.3,
    startup: float = 60.0,
    pre: float = 0.0,
    rpn: int = 1,
) -> NodeType:
    return NodeType(
        name, "test", 4, 16.0, None, 0, 0.0, od, spot, 10.0, 20.0, pre, 0.0, startup, 1.0, rpn,
        "test", "2025-01",
    )  # fmt: skip


def flat(lat: float = 0.1) -> LatencyTable:
    """One item at a time, ``lat`` seconds: capacity 1/lat whenever lat ≤ SLO/2."""
    return LatencyTable((1,), (0,), ((lat,),))


def paired(lat: float = 0.1) -> LatencyTable:
    """Batches of two in ``2 × lat`` s: capacity 1/lat, best batch 2 (planned at capacity)."""
    return LatencyTable((1, 2), (0,), ((1.5 * lat, 2 * lat),))


def option(n: NodeType, table: LatencyTable | None = None, model: str = "m") -> VariantOption:
    return VariantOption(model, "v", n, table or paired(), 1.0)


def context(
    nodes: list[tuple[NodeType, int]], spot_share: float = 0.0, slo: float = 1.0
) -> AllocationContext:
    opts = tuple(option(n) for n, _ in nodes)
    pools = tuple(Pool(n, k) for n, k in nodes)
    return AllocationContext((ModelTarget("m", slo, opts),), pools, spot_share, 15.0)


def ready(node_type: str, spot: bool = False, i: int = 0) -> ReplicaView:
    return ReplicaView(f"{node_type}-{spot}-{i}", "m", "v", node_type, ReplicaState.READY, spot)


# ----------------------------------------------------------------------------- capacity


def test_capacity_is_best_throughput_within_half_the_slo() -> None:
    # L(b) = 0.1, 0.12, 0.16, 0.24 at b = 1, 2, 4, 8; budget 0.5 × 0.4 = 0.2 s.
    # Inside (4, 8) L crosses 0.2 at b = 6 (L(6) = 0.2): best is 6 / 0.2 = 30 rps.
    table = LatencyTable((1, 2, 4, 8), (0,), ((0.1, 0.12, 0.16, 0.24),))
    assert capacity_rps(option(node(), table), 0.4) == pytest.approx(30.0)


def test_capacity_never_uses_batches_beyond_the_measured_ones() -> None:
    table = LatencyTable((1, 2, 4, 8), (0,), ((0.1, 0.12, 0.16, 0.24),))
    assert capacity_rps(option(node(), table), 100.0) == pytest.approx(8 / 0.24)


def test_capacity_budget_fraction_is_configurable() -> None:
    table = LatencyTable((1, 2, 4, 8), (0,), ((0.1, 0.12, 0.16, 0.24),))
    # budget 0.25 × 0.64 = 0.16 → b = 4: 25 rps
    assert capacity_rps(option(node(), table), 0.64, budget_fraction=0.25) == pytest.approx(25.0)


def test_capacity_is_zero_when_no_batch_fits_the_budget() -> None:
    assert capacity_rps(option(node(), flat(0.3)), 0.5) == 0.0


def test_capacity_reads_the_table_at_the_typical_seq_len() -> None:
    table = LatencyTable((1, 4), (64, 256), ((0.05, 0.1), (0.1, 0.2)))
    o = option(node(), table)
    assert capacity_rps(o, 1.0, seq_len=64) == pytest.approx(40.0)
    assert capacity_rps(o, 1.0, seq_len=256) == pytest.approx(20.0)
    # default 128 tokens: a third of the way, L(4) = 0.1 + 0.1 / 3
    assert capacity_rps(o, 1.0) == pytest.approx(4 / (0.1 + 0.1 / 3))


def test_best_effort_when_no_option_meets_the_slo() -> None:
    target = ModelTarget("m", 0.5, (option(node(), flat(0.4)),))
    opts = rank_model(target, frozenset({"cpu"}), allow_spot=False)
    assert not opts.meets_slo
    assert opts.candidates[0].capacity_rps == pytest.approx(2.5)


# ----------------------------------------------------------------------------- planning


def test_batch1_utilisation_bounds_the_mm1_wait_tail() -> None:
    # L = 0.1 s, SLO 1 s: room (S − L)/L = 9; u e^{−9(1−u)} = 0.01 at u ≈ 0.556
    u = batch1_utilisation(0.1, 1.0)
    assert u * math.exp(-(1 - u) * 9) == pytest.approx(WAIT_TAIL, rel=1e-6)
    assert 0.5 < u < 0.6
    # a larger tail allows more, a smaller one less
    assert batch1_utilisation(0.1, 1.0, tail=0.05) > u > batch1_utilisation(0.1, 1.0, tail=0.001)


def test_batch1_utilisation_is_capped() -> None:
    # a millisecond model under a 200 ms SLO could run near 1: capped at 0.9
    assert batch1_utilisation(0.0003, 0.2) == MAX_UTILISATION
    assert batch1_utilisation(0.0003, 0.2, max_utilisation=0.7) == 0.7


def test_batch1_utilisation_is_zero_without_waiting_room_or_service() -> None:
    assert batch1_utilisation(1.0, 1.0) == 0.0
    assert batch1_utilisation(2.0, 1.0) == 0.0
    assert batch1_utilisation(0.0, 1.0) == 0.0


def test_planning_capacity_of_a_batch1_option_is_its_utilisation_share() -> None:
    o = option(node(), flat(0.1))
    assert capacity_rps(o, 1.0) == pytest.approx(10.0)
    assert planning_rps(o, 1.0) == pytest.approx(10.0 * batch1_utilisation(0.1, 1.0))
    # best batch 1 also when larger batches exist but do not fit the budget
    table = LatencyTable((1, 8), (0,), ((0.1, 0.9),))
    assert planning_rps(option(node(), table), 1.0) == pytest.approx(
        10.0 * batch1_utilisation(0.1, 1.0)
    )


def test_planning_capacity_of_a_batching_option_is_its_capacity() -> None:
    o = option(node(), paired(0.1))
    assert planning_rps(o, 1.0) == pytest.approx(capacity_rps(o, 1.0)) == pytest.approx(10.0)


def test_every_policy_ranks_by_planning_capacity() -> None:
    ctx = context([(node("a"), 5)])
    ctx1 = AllocationContext(
        (ModelTarget("m", 1.0, (option(node("a"), flat(0.1)),)),), ctx.pools, 0.0
    )
    c = rank_context(ctx1, allow_spot=False)["m"].candidates[0]
    assert c.capacity_rps == pytest.approx(planning_rps(option(node("a"), flat(0.1)), 1.0))


# ----------------------------------------------------------------------------- cost


def test_replica_cost_is_node_price_over_replicas_per_node() -> None:
    assert replica_usd_per_hour(node(od=2.0, rpn=4), spot=False) == 0.5
    assert replica_usd_per_hour(node(spot=0.8, rpn=4), spot=True) == 0.2


def test_spot_restart_fraction_and_overprovision() -> None:
    n = node(startup=360.0, pre=0.5)
    assert restart_fraction(n) == pytest.approx(0.05)
    assert spot_overprovision(n) == pytest.approx(1.05)


def test_effective_spot_cost_charges_overprovision_and_lost_work() -> None:
    n = node(od=1.0, spot=0.3, startup=360.0, pre=0.5, rpn=2)
    assert effective_usd_per_hour(n, spot=False) == 0.5
    assert effective_usd_per_hour(n, spot=True) == pytest.approx((1.05 * 0.3 + 0.05 * 1.0) / 2)


# ----------------------------------------------------------------------------- ranking


def test_candidates_rank_by_cost_per_capacity_with_deterministic_ties() -> None:
    fast = option(node("b-fast", od=1.0), flat(0.05))  # 20 rps for $1: 0.05 $/rps
    slow = option(node("a-slow", od=0.6), flat(0.1))  # 10 rps for $0.6: 0.06 $/rps
    tie = option(node("a-tie", od=1.0), flat(0.05))  # ties with b-fast, sorts first
    target = ModelTarget("m", 1.0, (fast, slow, tie))
    opts = rank_model(target, frozenset({"b-fast", "a-slow", "a-tie"}), allow_spot=False)
    assert [c.node_type for c in opts.candidates] == ["a-tie", "b-fast", "a-slow"]


def test_spot_candidates_only_when_allowed_and_priced() -> None:
    ctx = context([(node("a"), 5), (node("b", spot=0.0), 5)], spot_share=0.5)
    spots = [c.node_type for c in rank_context(ctx, allow_spot=True)["m"].candidates if c.spot]
    assert spots == ["a"]
    assert not any(c.spot for c in rank_context(ctx, allow_spot=False)["m"].candidates)
    no_share = context([(node("a"), 5)], spot_share=0.0)
    assert not any(c.spot for c in rank_context(no_share, allow_spot=True)["m"].candidates)


def test_options_without_a_pool_are_not_candidates() -> None:
    target = ModelTarget("m", 1.0, (option(node("a")), option(node("b"))))
    opts = rank_model(target, frozenset({"b"}), allow_spot=False)
    assert [c.node_type for c in opts.candidates] == ["b"]


# ----------------------------------------------------------------------------- pools


def test_ledger_sums_pools_of_a_type_and_caps_spot_by_share() -> None:
    n = node("a")
    ledger = PoolLedger.template([Pool(n, 3), Pool(n, 4)], spot_share=0.5)
    assert ledger.free("a", spot=False) == 7
    assert ledger.free("a", spot=True) == 3  # floor(0.5 × 3) + floor(0.5 × 4)
    assert ledger.take("a", True, 5) == 3
    assert ledger.free("a", spot=False) == 4


def test_place_count_fills_the_cheapest_pool_then_spills_then_falls_short() -> None:
    ctx = context([(node("cheap", od=1.0), 2), (node("dear", od=2.0), 3)])
    opts = rank_context(ctx, allow_spot=False)["m"]
    placed = place_count(opts, 7, PoolLedger.template(ctx.pools, 0.0))
    assert placed.targets == (
        ReplicaTarget("m", "v", "cheap", 2),
        ReplicaTarget("m", "v", "dear", 3),
    )
    assert placed.count == 5


def test_place_capacity_nothing_for_no_need() -> None:
    ctx = context([(node("a"), 5)])
    opts = rank_context(ctx, allow_spot=False)["m"]
    assert place_capacity(opts, 0.0, PoolLedger.template(ctx.pools, 0.0), 0.0).count == 0


def test_place_capacity_on_demand_rounds_up() -> None:
    ctx = context([(node("a"), 10)])
    opts = rank_context(ctx, allow_spot=False)["m"]
    placed = place_capacity(opts, 25.0, PoolLedger.template(ctx.pools, 0.0), 0.0)
    assert placed.targets == (ReplicaTarget("m", "v", "a", 3),)
    assert placed.expected_rps == pytest.approx(30.0)


def test_place_capacity_spot_floors_within_its_share_and_on_demand_covers_the_rest() -> None:
    ctx = context([(node("a", od=1.0, spot=0.3), 100)], spot_share=0.5)
    opts = rank_context(ctx, allow_spot=True)["m"]
    ledger = PoolLedger.template(ctx.pools, 0.5)
    placed = place_capacity(opts, 75.0, ledger, 0.5)  # 10 rps per replica
    # spot budget 37.5 rps → floor(3.75) = 3 spot; on-demand ceil(45 / 10) = 5
    assert set(placed.targets) == {
        ReplicaTarget("m", "v", "a", 3, spot=True),
        ReplicaTarget("m", "v", "a", 5, spot=False),
    }
    assert placed.spot_count == 3


def test_place_capacity_keeps_spot_count_within_share() -> None:
    # spot replicas are small (5 rps) and cheap, on-demand ones big (20 rps): by capacity
    # 50 % spot is 2 spot + 1 on-demand = 67 % of replicas, above the 50 % share.
    small = node("small", od=1.0, spot=0.05)
    big = node("big", od=1.0, spot=0.9)
    opts_t = (option(small, paired(0.2)), option(big, paired(0.05)))
    ctx = AllocationContext((ModelTarget("m", 1.0, opts_t),), (Pool(small, 10), Pool(big, 10)), 0.5)
    opts = rank_context(ctx, allow_spot=True)["m"]
    placed = place_capacity(opts, 20.0, PoolLedger.template(ctx.pools, 0.5), 0.5)
    # greedy: 2 small spot (10 rps budget) + 1 big on-demand → trimmed to 1 spot, and the
    # 5 rps it served re-covered on-demand
    assert set(placed.targets) == {
        ReplicaTarget("m", "v", "small", 1, spot=True),
        ReplicaTarget("m", "v", "big", 2, spot=False),
    }
    assert placed.spot_count <= 0.5 * placed.count


def test_place_capacity_covers_a_small_need_with_the_cheapest_absolute_option() -> None:
    # GPU: 100 rps for $1/h (0.01 $/rps, best ranked); CPU: 5 rps for $0.1/h (0.02 $/rps)
    gpu = option(node("gpu", od=1.0), paired(0.01))
    cpu = option(node("cpu", od=0.1), paired(0.2))
    ctx = AllocationContext(
        (ModelTarget("m", 1.0, (gpu, cpu)),), (Pool(gpu.node, 10), Pool(cpu.node, 100)), 0.0
    )
    opts = rank_context(ctx, allow_spot=False)["m"]
    assert opts.candidates[0].node_type == "gpu"
    ledger = PoolLedger.template(ctx.pools, 0.0)
    # 8 rps: two CPU replicas ($0.2/h), not a GPU ($1/h)
    assert place_capacity(opts, 8.0, ledger.copy(), 0.0).targets == (
        ReplicaTarget("m", "v", "cpu", 2),
    )
    # 260 rps: two whole GPUs, then 60 rps left: 12 CPUs ($1.2/h) cost more than one GPU
    assert place_capacity(opts, 260.0, ledger.copy(), 0.0).targets == (
        ReplicaTarget("m", "v", "gpu", 3),
    )
    # 215 rps: two whole GPUs, then 15 rps: three CPUs ($0.3/h)
    assert set(place_capacity(opts, 215.0, ledger.copy(), 0.0).targets) == {
        ReplicaTarget("m", "v", "gpu", 2),
        ReplicaTarget("m", "v", "cpu", 3),
    }


def test_place_capacity_remainder_ties_go_to_the_better_ranked() -> None:
    # same price, same capacity: "a" ranks first (name order) and takes the remainder
    ctx = context([(node("b"), 10), (node("a"), 10)])
    opts = rank_context(ctx, allow_spot=False)["m"]
    placed = place_capacity(opts, 5.0, PoolLedger.template(ctx.pools, 0.0), 0.0)
    assert placed.targets == (ReplicaTarget("m", "v", "a", 1),)


def test_place_capacity_whole_units_move_on_when_a_pool_is_full() -> None:
    gpu = option(node("gpu", od=1.0), paired(0.01))
    cpu = option(node("cpu", od=0.1), paired(0.2))
    ctx = AllocationContext(
        (ModelTarget("m", 1.0, (gpu, cpu)),), (Pool(gpu.node, 1), Pool(cpu.node, 100)), 0.0
    )
    opts = rank_context(ctx, allow_spot=False)["m"]
    # one GPU (its pool is full), then 50 rps of whole CPU replicas
    assert set(place_capacity(opts, 150.0, PoolLedger.template(ctx.pools, 0.0), 0.0).targets) == {
        ReplicaTarget("m", "v", "gpu", 1),
        ReplicaTarget("m", "v", "cpu", 10),
    }


def test_place_capacity_spills_when_no_single_option_covers_the_remainder() -> None:
    # need 25 at 10 rps: whole units take both "a"; 5 left; "b" has 1 free → covers it
    ctx = context([(node("a", od=1.0), 2), (node("b", od=1.5), 1)])
    opts = rank_context(ctx, allow_spot=False)["m"]
    placed = place_capacity(opts, 25.0, PoolLedger.template(ctx.pools, 0.0), 0.0)
    assert placed.count == 3
    # 45 left after "a" cannot be covered by "b" alone (1 free): spill takes what is free
    placed = place_capacity(opts, 65.0, PoolLedger.template(ctx.pools, 0.0), 0.0)
    assert placed.count == 3 and placed.expected_rps == pytest.approx(30.0)


def test_place_capacity_skips_spot_whose_unit_exceeds_the_spot_budget() -> None:
    # big spot unit (100 rps) > spot budget (0.5 × 150 = 75): skipped (not a stop), so
    # small spot replicas take the budget; the share by count then trims them to one
    # and the rest goes on-demand
    big = option(node("big", od=1.0, spot=0.2), paired(0.01))
    small = option(node("small", od=0.5, spot=0.01), paired(0.2))
    ctx = AllocationContext(
        (ModelTarget("m", 1.0, (big, small)),), (Pool(big.node, 10), Pool(small.node, 100)), 0.5
    )
    opts = rank_context(ctx, allow_spot=True)["m"]
    assert opts.candidates[0].node_type == "big" and opts.candidates[0].spot
    placed = place_capacity(opts, 150.0, PoolLedger.template(ctx.pools, 0.5), 0.5)
    assert set(placed.targets) == {
        ReplicaTarget("m", "v", "small", 1, spot=True),
        ReplicaTarget("m", "v", "big", 2, spot=False),
    }
    assert placed.expected_rps >= 150.0


def test_place_capacity_falls_short_when_pools_are_exhausted() -> None:
    ctx = context([(node("a"), 2)])
    opts = rank_context(ctx, allow_spot=False)["m"]
    placed = place_capacity(opts, 50.0, PoolLedger.template(ctx.pools, 0.0), 0.0)
    assert placed.count == 2
    assert placed.expected_rps == pytest.approx(20.0)


def test_keep_ready_holds_replicas_a_mix_change_would_stop() -> None:
    ctx = context([(node("a", od=1.0), 10), (node("b", od=1.1), 10)])
    opts = rank_context(ctx, allow_spot=False)["m"]
    ledger = PoolLedger.template(ctx.pools, 0.0)
    new = place_capacity(opts, 20.0, ledger, 0.0).targets  # 2 on "a" (none ready yet)
    old = [ready("b", i=i) for i in range(2)]
    kept = keep_ready(new, opts, old, 20.0, ledger)
    assert merge_targets(kept) == (
        ReplicaTarget("m", "v", "a", 2),
        ReplicaTarget("m", "v", "b", 2),
    )
    # once the replacements are ready, the old ones are released
    now_ready = [ready("a", i=i) for i in range(2)] + old
    assert keep_ready(new, opts, now_ready, 20.0, ledger) == new


def test_plan_counts_reports_exhausted_pools() -> None:
    ctx = context([(node("a"), 2)])
    opts = rank_context(ctx, allow_spot=False)
    plan = plan_counts(5.0, {"m": 4}, opts, PoolLedger.template(ctx.pools, 0.0), "x")
    assert plan.count("m") == 2
    assert "pools exhausted" in plan.reason and "S_t" in plan.reason


# ----------------------------------------------------------------------------- demand


def test_demand_curve_rates_and_peaks() -> None:
    curve = DemandCurve((1.0, 5.0, 2.0), bin_s=10.0, start=100.0)
    assert curve.rate_at(99.0) == 0.0 and curve.rate_at(130.0) == 0.0
    assert curve.rate_at(115.0) == 5.0
    assert curve.peak(120.0, 125.0) == 2.0
    assert curve.peak(105.0, 121.0) == 5.0
    assert curve.peak(200.0, 300.0) == 0.0
    assert curve.max() == 5.0 and curve.mean() == pytest.approx(8 / 3)


def test_demand_curve_rejects_bad_input() -> None:
    with pytest.raises(CoscaleError):
        DemandCurve((1.0, -1.0), bin_s=1.0)
    with pytest.raises(CoscaleError):
        DemandCurve((1.0,), bin_s=0.0)


# ----------------------------------------------------------------------------- registry


def test_registry_names() -> None:
    assert set(ALLOCATION) == {"static", "hpa", "kpa", "rayserve", "predictive", "oracle"}


def test_make_allocation_builds_every_policy() -> None:
    ctx = context([(node("a"), 5)])
    extra: dict[str, dict[str, Any]] = {"static": {"replicas": 1}, "oracle": {"demand": {}}}
    for name in ALLOCATION:
        assert make_allocation(name, ctx, **extra.get(name, {})).name == name


def test_make_allocation_rejects_unknown_names_and_params() -> None:
    ctx = context([(node("a"), 5)])
    with pytest.raises(CoscaleError) as e:
        make_allocation("nope", ctx)
    assert e.value.code == "unknown_policy"
    with pytest.raises(CoscaleError) as e:
        make_allocation("hpa", ctx, target_cpu=0.5)
    assert e.value.code == "invalid_policy_params" and "target_cpu" in e.value.message
    with pytest.raises(CoscaleError):
        make_allocation("oracle", ctx)  # demand is required
    with pytest.raises(CoscaleError):
        make_allocation("hpa", ctx, tolerance=-1.0)


def test_bad_context_is_rejected() -> None:
    bad = AllocationContext((), (), spot_share=1.5)
    with pytest.raises(CoscaleError):
        make_allocation("hpa", bad)
