"""The fluid executor (coscale.sim.fluid): its queueing formulas, loads, accounting,
admission, and agreement with the request-level simulator on the same workload."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from coscale.catalog import load_catalog
from coscale.config import Scenario, scenario_from_dict
from coscale.errors import CoscaleError
from coscale.policies.admission import AdmitAll, DeadlineAdmission
from coscale.policies.base import Pool, VariantOption
from coscale.policies.batching import NoBatching
from coscale.policies.routing import EarliestCompletion, RoundRobin
from coscale.sim.cluster import ModelSetup, SimResult
from coscale.sim.faults import FaultModel
from coscale.sim.fluid import FluidLoad, FluidSimulator, erlang_c
from coscale.sim.profiles import MeasuredVariant
from coscale.sim.run import SimOptions, prepare, run_preset
from coscale.types import LatencyTable, Plan, ReplicaTarget, Snapshot

BATCHES = (1, 2, 4, 8, 16, 32, 64)
CATALOG = load_catalog()


def table(base_s: float, per_item_s: float) -> LatencyTable:
    return LatencyTable(BATCHES, (0,), (tuple(base_s + per_item_s * b for b in BATCHES),))


FP32 = MeasuredVariant("fp32-eager", table(0.020, 0.002), 0.99)
INT8 = MeasuredVariant("onnx-int8-static", table(0.010, 0.001), 0.98)
MEASURED = {"m": [FP32, INT8]}


def scenario(
    *, rate: float = 40.0, duration: float = 600.0, preset: str = "optimized-b", **extra: Any
) -> Scenario:
    data: dict[str, Any] = {
        "name": "unit",
        "seed": 3,
        "models": [{"name": "m", "source": "digits-cnn", "slo_ms": 500, "accuracy_floor": 0.9}],
        "cluster": {"nodes": [{"type": "c7a.large", "count": 1, "max_count": 40}]},
        "policies": {"preset": preset},
        "workload": {"generator": {"kind": "poisson", "rate_rps": rate, "duration_s": duration}},
    }
    data.update(extra)
    return scenario_from_dict(data)


def run(sc: Scenario, preset: str, **options: Any) -> SimResult:
    opts = SimOptions(**{"fault_scale": 0.0, **options})
    return run_preset(prepare(sc, opts, measured=MEASURED), preset)


# ------------------------------------------------------------------ formulas


def test_erlang_c_known_values() -> None:
    assert erlang_c(1, 0.6) == pytest.approx(0.6)  # M/M/1: P(wait) = ρ
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)  # M/M/2 at ρ = 0.5


def test_erlang_c_edges() -> None:
    assert erlang_c(0, 1.0) == 1.0
    assert erlang_c(4, 4.0) == 1.0  # a ≥ c: every request waits
    assert erlang_c(4, 0.0) == 0.0
    assert erlang_c(1000, 10.0) == 0.0  # far below capacity: φ(β) underflows


def test_erlang_c_halfin_whitt_above_the_exact_range() -> None:
    def exact(c: int, a: float) -> float:
        b = 1.0
        for k in range(1, c + 1):
            b = a * b / (k + a * b)
        return c * b / (c - a * (1 - b))

    for c, rho in ((100, 0.9), (400, 0.95)):
        assert erlang_c(c, c * rho) == pytest.approx(exact(c, c * rho), rel=0.25)


# ------------------------------------------------------------------ loads


def test_load_from_times_bins_per_step_and_scales() -> None:
    times = np.array([0.1, 0.2, 1.5, 2.9])
    models = np.array([0, 1, 0, 0], dtype=np.int32)
    load = FluidLoad.from_times(times, models, 2, 3.0, scale=10.0)
    assert load.rates[0].tolist() == [10.0, 10.0, 10.0]
    assert load.rates[1].tolist() == [10.0, 0.0, 0.0]
    assert load.total() == pytest.approx(40.0)
    assert load.binned(2.0)[0].tolist() == [10.0, 5.0]


def test_load_from_rates_speeds_up_and_splits() -> None:
    load = FluidLoad.from_rates(
        np.array([0.0, 600.0]), 600.0, np.array([1.0, 3.0]), (0.75, 0.25), time_scale=60.0
    )
    assert load.steps == 20 and load.duration_s == 20.0  # 1,200 trace s at 60×
    assert load.rates[0][0] == pytest.approx(45.0) and load.rates[0][-1] == pytest.approx(135.0)
    assert load.rates[1][0] == pytest.approx(15.0)


def test_bad_loads_are_rejected() -> None:
    with pytest.raises(CoscaleError):
        FluidLoad((np.ones(3), np.ones(4)))
    with pytest.raises(CoscaleError):
        FluidLoad((np.array([1.0, -1.0]),))


# ------------------------------------------------------------------ executor


class _Fixed:
    name = "fixed-test"

    def __init__(self, n: int) -> None:
        self.n = n

    def decide(self, snapshot: Snapshot, state: None) -> tuple[Plan, None]:
        return Plan(snapshot.time, (ReplicaTarget("m", "fp32-eager", "c7a.large", self.n),)), None


def _fixed_run(
    rate: float,
    n: int,
    *,
    routing: Any = None,
    deadline: bool = False,
    initial: int | None = None,
    seconds: int = 600,
    timeout_factor: float | None = None,
) -> SimResult:
    option = VariantOption("m", "fp32-eager", CATALOG.get("c7a.large"), FP32.table, 0.99)
    admission: Any = DeadlineAdmission(latencies={}) if deadline else AdmitAll()
    setup = ModelSetup(
        "m", 0.5, (option,), routing or EarliestCompletion(latencies={}), NoBatching(), admission,
        batch_limit=1,
    )  # fmt: skip
    start = n if initial is None else initial
    sim = FluidSimulator(
        [setup],
        _Fixed(n),
        [Pool(option.node, 100)],
        FluidLoad((np.full(seconds, rate),)),
        interval_s=15.0,
        rng=np.random.default_rng(0),
        initial=(ReplicaTarget("m", "fp32-eager", "c7a.large", start),) if start else (),
        faults=FaultModel(0.0),
        timeout_factor=timeout_factor,
    )
    return sim.run()


def test_static_cluster_cost_is_exact_and_every_request_is_counted() -> None:
    # L(1) = 22 ms: a replica serves 45.5/s; 4 replicas at 100/s (ρ = 0.55)
    r = _fixed_run(100.0, 4).summary
    node = CATALOG.get("c7a.large")
    per = node.on_demand_usd_per_hour / max(1, node.replicas_per_node)
    assert r.makespan_s == 600.0
    assert r.cost_usd == pytest.approx(4 * per * 600.0 / 3600.0)
    assert r.requests == 60_000 and r.completed == 60_000 and r.lost == 0
    assert r.slo_attainment > 0.999
    assert r.latency_ms.p50 >= 22.0  # never faster than the service time


def test_replicas_serve_only_once_ready() -> None:
    # a cold start: nothing serves for c7a.large's start-up after the first decision
    startup = CATALOG.get("c7a.large").startup_s
    r = _fixed_run(50.0, 4, initial=0).summary
    late = (15.0 + startup) / 600.0  # share of the run before any replica is ready
    assert r.slo_attainment <= 1.0 - late + 0.02
    assert r.completed == r.requests  # the backlog is served afterwards


def test_overload_without_admission_builds_a_backlog_that_drains_after_the_load() -> None:
    r = _fixed_run(100.0, 2).summary  # 91/s of capacity for 100/s
    assert r.makespan_s > 600.0 and r.completed == r.requests
    assert r.slo_attainment < 0.5 and r.latency_ms.p99 > 500.0


def test_queued_requests_time_out_after_ten_slos_like_the_live_data_plane() -> None:
    # 100/s for 91/s of capacity, SLO 0.5 s: the backlog keeps only the last 5 s of
    # arrivals; the excess times out (failed), nothing waits much longer than 5 s
    r = _fixed_run(100.0, 2, timeout_factor=10.0).summary
    capacity = 2 / FP32.table.latency(1)
    assert r.completed + r.failed == r.requests and r.failed > 0
    assert r.extra["timed_out"] == r.failed
    assert r.failed == pytest.approx((100.0 - capacity) * 600.0, rel=0.1)
    assert r.completed == pytest.approx(capacity * 600.0, rel=0.02)
    assert r.latency_ms.p99 <= 5000.0 + 2 * 1000.0  # the timeout + one step either side
    assert r.makespan_s <= 600.0 + 10.0  # the backlog left is at most 5 s of work
    # a cold start: what waited longer than the timeout for the first replica timed out
    cold = _fixed_run(50.0, 4, initial=0, timeout_factor=10.0).summary
    startup = CATALOG.get("c7a.large").startup_s
    assert cold.failed == pytest.approx(50.0 * (15.0 + startup - 5.0), rel=0.1)


def test_deadline_admission_rejects_the_excess_and_keeps_the_rest_in_time() -> None:
    r = _fixed_run(100.0, 2, deadline=True).summary
    excess = (100.0 - 2 / FP32.table.latency(1)) / 100.0
    assert r.rejected / r.requests == pytest.approx(excess, abs=0.02)
    admitted = r.requests - r.rejected
    assert r.slo_attainment * r.requests / admitted > 0.97


def test_per_replica_queues_wait_longer_than_a_pooled_queue() -> None:
    pooled = _fixed_run(150.0, 4).summary
    per_replica = _fixed_run(150.0, 4, routing=RoundRobin()).summary
    assert per_replica.latency_ms.p99 > pooled.latency_ms.p99
    assert per_replica.slo_attainment <= pooled.slo_attainment


def test_same_seed_same_summary() -> None:
    sc = scenario()
    a = run(sc, "optimized-b", fluid=True, fault_scale=20.0).summary.to_dict()
    b = run(sc, "optimized-b", fluid=True, fault_scale=20.0).summary.to_dict()
    for key in ("wall_s",):
        a.pop(key), b.pop(key)
    assert a == b


# ------------------------------------------------------------------ against the discrete mode


@pytest.mark.parametrize("preset", ["baseline", "optimized-b", "oracle"])
def test_fluid_agrees_with_the_request_level_simulator(preset: str) -> None:
    sc = scenario(rate=60.0, duration=900.0)
    discrete = run(sc, preset).summary
    fluid = run(sc, preset, fluid=True).summary
    assert fluid.requests == pytest.approx(discrete.requests, rel=0.05)
    assert fluid.cost_usd == pytest.approx(discrete.cost_usd, rel=0.15)
    assert fluid.slo_attainment == pytest.approx(discrete.slo_attainment, abs=0.02)


def test_fluid_rate_scale_multiplies_any_workload() -> None:
    sc = scenario(rate=10.0, duration=300.0)
    one = prepare(sc, SimOptions(fluid=True), measured=MEASURED)
    ten = prepare(sc, SimOptions(fluid=True, rate_scale=10.0), measured=MEASURED)
    assert one.fluid is not None and ten.fluid is not None
    assert ten.fluid.total() == pytest.approx(10 * one.fluid.total())


def test_a_closed_loop_has_no_fluid_form() -> None:
    gen = {"kind": "closed-loop", "rate_rps": 10, "duration_s": 60, "concurrency": 4}
    sc = scenario(workload={"generator": gen})
    with pytest.raises(CoscaleError):
        prepare(sc, SimOptions(fluid=True), measured=MEASURED)


def test_warm_start_sizes_the_initial_replicas_for_the_first_minutes() -> None:
    sc = scenario(rate=400.0, duration=600.0)
    prepared = prepare(sc, SimOptions(fluid=True, warm_start=True), measured=MEASURED)
    from coscale.sim.build import build_policies

    policies = build_policies(prepared, "baseline")
    assert sum(t.count for t in policies.initial) >= math.ceil(400.0 / 45.5)
    cold = build_policies(prepare(sc, SimOptions(fluid=True), measured=MEASURED), "baseline")
    assert sum(t.count for t in cold.initial) == CATALOG.get("c7a.large").replicas_per_node


@pytest.mark.parametrize("burst_ratio", [None, 1.5])
def test_a_burst_between_decisions_reaches_the_policy_as_in_the_request_level_run(
    burst_ratio: float | None,
) -> None:
    """2 req/s for 4 s then 120 req/s: with reactions on, replicas are started within the
    burst window (2 s), before the first decision at 15 s; off, none before it."""
    import dataclasses

    from coscale.policies.allocation.predictive import PredictivePolicy
    from coscale.policies.base import AllocationContext, ModelTarget

    node = dataclasses.replace(CATALOG.get("c7a.large"), startup_s=1.0)
    option = VariantOption("m", "fp32-eager", node, table(0.0, 0.02), 0.99)  # 50 req/s
    context = AllocationContext((ModelTarget("m", 0.5, (option,)),), (Pool(node, 20),))
    setup = ModelSetup(
        "m", 0.5, (option,), RoundRobin(), NoBatching(), AdmitAll(), batch_limit=1
    )  # fmt: skip
    rates = np.array([2.0] * 4 + [120.0] * 10)
    sim = FluidSimulator(
        [setup],
        PredictivePolicy(context, burst_ratio=burst_ratio),
        [Pool(node, 20)],
        FluidLoad((rates,)),
        interval_s=15.0,
        rng=np.random.default_rng(0),
        initial=(ReplicaTarget("m", "fp32-eager", "c7a.large", 1),),
        faults=FaultModel(0.0),
        drain_limit_s=0.0,
    )
    extra = sim.run().summary.extra
    if burst_ratio is None:
        assert extra["reactions"] == 0 and extra["replicas_started"] == 1
    else:
        assert extra["reactions"] >= 1 and extra["replicas_started"] >= 3  # 120 / 50
