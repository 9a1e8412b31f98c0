"""One test per clause of the variant-selection docstrings (coscale/policies/variant.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from coscale.catalog.nodes import NodeType
from coscale.errors import CoscaleError
from coscale.policies.base import VariantOption
from coscale.policies.variant import (
    CheapestFeasible,
    FixedVariant,
    latency_map,
    predicted_service_s,
)
from coscale.types import LatencyTable, ReplicaState, ReplicaView


def node(name: str = "cpu", usd: float = 3.6, spot: float = 1.2, per_node: int = 2) -> NodeType:
    return NodeType(
        name=name,
        provider="test",
        vcpus=4,
        memory_gib=16.0,
        accelerator=None,
        accelerator_count=0,
        accelerator_memory_gib=0.0,
        on_demand_usd_per_hour=usd,
        spot_usd_per_hour=spot,
        idle_watts=10.0,
        peak_watts=50.0,
        preemption_per_hour=0.0,
        failure_per_hour=0.0,
        startup_s=30.0,
        speedup=1.0,
        replicas_per_node=per_node,
        price_source="test",
        price_date="2025-01-01",
    )


def linear(first: float, per_item: float) -> LatencyTable:
    """latency(b) = first + per_item × (b − 1), measured at 1 and 64."""
    return LatencyTable((1, 64), (0,), ((first, first + per_item * 63),))


def opt(
    variant: str = "fp32-eager",
    n: NodeType | None = None,
    table: LatencyTable | None = None,
    fidelity: float = 1.0,
) -> VariantOption:
    return VariantOption(
        model="m",
        variant=variant,
        node=n or node(),
        latency=table or linear(0.01, 0.001),
        fidelity=fidelity,
    )


def rep(**kw: Any) -> ReplicaView:
    base: dict[str, Any] = {
        "id": "r",
        "model": "m",
        "variant": "fp32-eager",
        "node_type": "cpu",
        "state": ReplicaState.READY,
    }
    base.update(kw)
    return ReplicaView(**base)


SLO = 0.101  # batch bound 0.0505 s: linear(0.01, 0.001) fits up to b = 41 (0.05 s)


# -------------------------------------------------------------------------- shared lookups


def test_latency_map_keys_variant_and_node_later_wins() -> None:
    a, b = linear(0.01, 0.001), linear(0.02, 0.001)
    m = latency_map([opt(table=a), opt(variant="int8-dynamic", table=a), opt(table=b)])
    assert m == {("fp32-eager", "cpu"): b, ("int8-dynamic", "cpu"): a}


def test_predicted_service_table_then_rate_then_capacity_then_unknown() -> None:
    tables = {("fp32-eager", "cpu"): linear(0.01, 0.001)}
    assert predicted_service_s(tables, rep(rate=1.0), 3) == pytest.approx(0.012)
    assert predicted_service_s({}, rep(rate=10.0, capacity_rps=100.0), 3) == pytest.approx(0.3)
    assert predicted_service_s({}, rep(capacity_rps=100.0), 3) == pytest.approx(0.03)
    assert predicted_service_s({}, rep(), 3) is None


# ------------------------------------------------------------------------------- scoring


def test_best_throughput_is_largest_b_over_lat_within_half_the_slo() -> None:
    s = CheapestFeasible().score(opt(), SLO, 0.0)
    assert s.batch == 41
    assert s.throughput == pytest.approx(41 / 0.05)


def test_batch_fraction_sets_the_bound() -> None:
    s = CheapestFeasible(batch_fraction=1.0).score(opt(), SLO, 0.0)
    assert s.batch == 64  # 0.073 s ≤ 0.101 s; max_batch 64 caps it
    s = CheapestFeasible(max_batch=10).score(opt(), SLO, 0.0)
    assert s.batch == 10


def test_throughput_ties_go_to_smaller_batch() -> None:
    flat = LatencyTable((1,), (0,), ((0.01,),))  # latency 0.01 × b: 100 items/s at any b
    s = CheapestFeasible().score(opt(table=flat), SLO, 0.0)
    assert (s.batch, s.throughput) == (1, pytest.approx(100.0))


def test_no_batch_within_bound_gives_zero_throughput_and_infinite_cost() -> None:
    s = CheapestFeasible().score(opt(table=linear(0.06, 0.001)), SLO, 0.0)
    assert (s.batch, s.throughput, s.usd_per_item) == (0, 0.0, math.inf)
    assert not s.feasible and "no batch within 0.0505 s" in s.miss


def test_cost_per_item_formula_on_demand_and_spot() -> None:
    s = CheapestFeasible().score(opt(), SLO, 0.0)
    assert s.usd_per_item == pytest.approx(3.6 / 3600 / (2 * 820.0))
    s = CheapestFeasible(spot=True).score(opt(), SLO, 0.0)
    assert s.usd_per_item == pytest.approx(1.2 / 3600 / (2 * 820.0))


def test_seq_len_selects_the_latency_row() -> None:
    table = LatencyTable((1, 64), (16, 256), ((0.01, 0.073), (0.04, 0.4)))
    short = CheapestFeasible(seq_len=16).score(opt(table=table), SLO, 0.0)
    long = CheapestFeasible(seq_len=256).score(opt(table=table), SLO, 0.0)
    assert short.batch == 41 and long.batch == 2  # 256 tokens: 0.04 s + 0.0057 s/item


def test_infeasible_when_batch1_latency_exceeds_slo() -> None:
    # a (noisy) table whose batch of 8 is faster than batch 1: some batch fits, batch-1 does not
    odd = LatencyTable((1, 8), (0,), ((0.2, 0.04),))
    s = CheapestFeasible().score(opt(table=odd), SLO, 0.0)
    assert s.throughput > 0 and not s.feasible
    assert s.miss.startswith("batch-1 latency 0.2 s > SLO 0.101 s")


def test_infeasible_when_fidelity_below_floor() -> None:
    s = CheapestFeasible().score(opt(fidelity=0.97), SLO, 0.99)
    assert not s.feasible and s.miss == "fidelity 0.97 < floor 0.99"
    assert CheapestFeasible().score(opt(fidelity=0.99), SLO, 0.99).feasible


def test_miss_score_sums_relative_shortfalls() -> None:
    s = CheapestFeasible().score(opt(table=linear(0.202, 0.0), fidelity=0.9), SLO, 0.99)
    expected = (0.202 / SLO - 1) + (0.202 / (SLO / 2) - 1) + (0.99 - 0.9) / 0.99
    assert s.miss_score == pytest.approx(expected)
    assert CheapestFeasible().score(opt(), SLO, 0.0).miss_score == 0.0


# ------------------------------------------------------------------------------- ranking


def test_ranking_feasible_cheapest_first_then_fidelity_then_names() -> None:
    cheap = opt("int8-dynamic", node("cpu", usd=1.8), fidelity=0.98)
    cheap_better = opt("onnx-fp32", node("cpu", usd=1.8), fidelity=0.995)
    cheap_same = opt("onnx-int8-dynamic", node("cpu", usd=1.8), fidelity=0.995)
    dear = opt("fp32-eager", node("cpu", usd=3.6), fidelity=1.0)
    slow = opt("pruned-structured", table=linear(0.3, 0.0), fidelity=1.0)
    ranked = CheapestFeasible().rank(SLO, 0.9, [slow, dear, cheap, cheap_same, cheap_better])
    assert [s.option.variant for s in ranked] == [
        "onnx-fp32",  # same cost as the next two: higher fidelity, then name
        "onnx-int8-dynamic",
        "int8-dynamic",
        "fp32-eager",
        "pruned-structured",  # infeasible last
    ]


def test_infeasible_options_rank_by_miss_score() -> None:
    far = opt("a", table=linear(1.0, 0.0))
    near = opt("b", table=linear(0.2, 0.0))
    ranked = CheapestFeasible().rank(SLO, 0.0, [far, near])
    assert [s.option.variant for s in ranked] == ["b", "a"]


def test_by_node_takes_best_ranked_per_node_type() -> None:
    gpu = node("gpu", usd=10.0)
    opts = [opt("fp32-eager"), opt("int8-dynamic", node("cpu", usd=1.0)), opt("fp32-eager", gpu)]
    choice = CheapestFeasible().choose(SLO, 0.0, opts)
    by_node = choice.by_node()
    assert by_node["cpu"].option.variant == "int8-dynamic"
    assert by_node["gpu"].option.node.name == "gpu"


# ----------------------------------------------------------------------- cheapest-feasible


def test_cheapest_feasible_chooses_first_ranked_and_returns_ranking() -> None:
    opts = [opt("fp32-eager"), opt("int8-dynamic", node("cpu", usd=1.0), fidelity=0.99)]
    choice = CheapestFeasible().choose(SLO, 0.98, opts)
    assert choice.best.variant == "int8-dynamic"
    assert [s.option.variant for s in choice.ranked] == ["int8-dynamic", "fp32-eager"]
    choice = CheapestFeasible().choose(SLO, 0.995, opts)  # int8 now below the floor
    assert choice.best.variant == "fp32-eager"


def test_cheapest_feasible_no_options_is_an_error() -> None:
    with pytest.raises(CoscaleError) as err:
        CheapestFeasible().choose(SLO, 0.0, [])
    assert err.value.code == "no_variant_options"


def test_cheapest_feasible_names_three_closest_misses() -> None:
    opts = [
        opt("a", table=linear(0.5, 0.0)),
        opt("b", table=linear(0.11, 0.0)),
        opt("c", fidelity=0.5),
        opt("d", table=linear(0.2, 0.0)),
    ]
    with pytest.raises(CoscaleError) as err:
        CheapestFeasible().choose(SLO, 0.9, opts)
    e = err.value
    assert e.code == "no_feasible_variant"
    # scores: c (0.9 − 0.5) / 0.9 = 0.44; b 0.11/0.101 − 1 + 0.11/0.0505 − 1 = 1.27; d 3.94
    assert "closest: c on cpu (fidelity 0.5 < floor 0.9), b on cpu (batch-1 latency 0.11 s" in (
        e.message
    )
    assert "d on cpu" in e.message
    assert "a on cpu" not in e.message
    assert e.fix


def test_non_positive_slo_is_an_error() -> None:
    with pytest.raises(CoscaleError) as err:
        CheapestFeasible().choose(0.0, 0.0, [opt()])
    assert err.value.code == "invalid_slo"


def test_scorer_validates_parameters() -> None:
    with pytest.raises(CoscaleError, match="batch_fraction"):
        CheapestFeasible(batch_fraction=0.0)
    with pytest.raises(CoscaleError, match="max_batch"):
        FixedVariant(max_batch=0)
    with pytest.raises(CoscaleError, match="seq_len"):
        CheapestFeasible(seq_len=-1)


# ------------------------------------------------------------------------------- fixed


def test_fixed_defaults_to_fp32_eager_and_ranks_its_node_types() -> None:
    gpu = node("gpu", usd=1.0)
    opts = [opt("int8-dynamic", node("cpu", usd=0.1)), opt("fp32-eager"), opt("fp32-eager", gpu)]
    choice = FixedVariant().choose(SLO, 0.0, opts)
    assert choice.best.variant == "fp32-eager" and choice.best.node.name == "gpu"
    assert [s.option.node.name for s in choice.ranked] == ["gpu", "cpu"]


def test_fixed_keeps_infeasible_options_but_ranks_feasible_first() -> None:
    slow_cheap = opt("fp32-eager", node("cpu", usd=0.1), table=linear(0.3, 0.0))
    fast_dear = opt("fp32-eager", node("gpu", usd=9.0))
    choice = FixedVariant().choose(SLO, 0.0, [slow_cheap, fast_dear])
    assert choice.best.node.name == "gpu"
    only_slow = FixedVariant().choose(SLO, 0.0, [slow_cheap])
    assert only_slow.best is slow_cheap and not only_slow.ranked[0].feasible


def test_fixed_named_variant() -> None:
    opts = [opt("fp32-eager"), opt("int8-dynamic")]
    assert FixedVariant(variant="int8-dynamic").choose(SLO, 0.0, opts).best.variant == (
        "int8-dynamic"
    )


def test_fixed_unknown_variant_lists_offered() -> None:
    with pytest.raises(CoscaleError) as err:
        FixedVariant(variant="bf16-eager").choose(SLO, 0.0, [opt("fp32-eager"), opt("onnx-fp32")])
    assert err.value.code == "unknown_variant"
    assert "(fp32-eager, onnx-fp32)" in err.value.message


def test_fixed_no_options_is_an_error() -> None:
    with pytest.raises(CoscaleError) as err:
        FixedVariant().choose(SLO, 0.0, [])
    assert err.value.code == "no_variant_options"
