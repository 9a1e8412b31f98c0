"""One test per clause of the HPA docstring (coscale.policies.allocation.hpa)."""

from __future__ import annotations

from typing import Any

from coscale.catalog.nodes import NodeType
from coscale.policies.allocation.hpa import HpaModel, HpaPolicy, HpaState
from coscale.policies.base import AllocationContext, ModelTarget, Pool, VariantOption
from coscale.types import (
    LatencyTable,
    ModelView,
    ReplicaState,
    ReplicaTarget,
    ReplicaView,
    Snapshot,
)

NOW = 1000.0


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


def pod(
    i: int, util: float = 0.6, state: ReplicaState = ReplicaState.READY, started: float = 0.0
) -> ReplicaView:
    return ReplicaView(f"r{i}", "m", "v", "cpu", state, utilization=util, started_at=started)


def pods(n: int, util: float) -> list[ReplicaView]:
    return [pod(i, util) for i in range(n)]


def run(
    replicas: list[ReplicaView],
    spec: int | None = None,
    recs: tuple[tuple[float, int], ...] = (),
    rate: float | None = None,
    t: float = NOW,
    **kw: Any,
) -> tuple[int, HpaState]:
    """One sync at ``t``; ``spec`` given → a state whose last sync was one period ago."""
    policy = HpaPolicy(context(), **kw)
    state = None if spec is None else HpaState(t - 15.0, (("m", HpaModel(spec, recs)),))
    models = () if rate is None else (ModelView("m", rate),)
    plan, new = policy.decide(Snapshot(t, models, tuple(replicas)), state)
    return plan.count("m"), new


# ------------------------------------------------------------------ sync period


def test_calls_between_syncs_return_the_last_decision() -> None:
    policy = HpaPolicy(context())
    state = HpaState(NOW - 5.0, (("m", HpaModel(3)),))
    plan, new = policy.decide(Snapshot(NOW, (), tuple(pods(3, 1.0))), state)
    assert plan.count("m") == 3 and new is state


# ------------------------------------------------------------------ 1. bounds


def test_spec_above_max_goes_to_max() -> None:
    assert run(pods(5, 0.6), spec=5, max_replicas=3)[0] == 3


def test_spec_below_min_goes_to_min() -> None:
    assert run(pods(1, 0.6), spec=1, min_replicas=2)[0] == 2


def test_cold_start_starts_min_replicas() -> None:
    assert run([])[0] == 1
    assert run([], min_replicas=3)[0] == 3


# ------------------------------------------------------------------ 2. utilization


def test_within_tolerance_keeps_spec() -> None:
    assert run(pods(4, 0.65), spec=4)[0] == 4  # ratio 1.083 ≤ 1.1


def test_scale_up_is_ceil_of_ratio_times_pods() -> None:
    assert run(pods(4, 0.9), spec=4)[0] == 6  # ceil(1.5 × 4)


def test_scale_down_is_ceil_of_ratio_times_pods() -> None:
    assert run(pods(4, 0.3), spec=4)[0] == 2  # ceil(0.5 × 4)


def test_missing_metrics_count_as_full_on_scale_down() -> None:
    # 5 measured at 0.12 (ratio 0.2) + 1 ready for under 15 s: (0.6 + 1.0) / 6 / 0.6 = 0.444
    replicas = [*pods(5, 0.12), pod(9, 0.0, started=NOW - 5.0)]
    assert run(replicas, spec=6)[0] == 3  # ceil(0.444 × 6), not ceil(0.2 × 5) = 1


def test_missing_metrics_count_as_zero_on_scale_up() -> None:
    # 5 measured at 1.0 (ratio 1.67 → ceil(1.67 × 5) = 9 < spec) + 5 missing: ratio'
    # = 0.5 / 0.6 < 1 reverses the direction → spec
    replicas = [*pods(5, 1.0), *(pod(10 + i, 0.0, started=NOW) for i in range(5))]
    assert run(replicas, spec=10)[0] == 10


def test_unready_pods_count_as_zero_on_scale_up() -> None:
    # 2 ready at 0.9 (ratio 1.5 → ceil(3) = 3 < spec 4) + 2 starting as 0 %: ratio' 0.75
    # reverses → spec
    replicas = [
        *pods(2, 0.9),
        pod(7, state=ReplicaState.STARTING),
        pod(8, state=ReplicaState.STARTING),
    ]
    assert run(replicas, spec=4)[0] == 4


def test_unready_pods_are_ignored_on_scale_down() -> None:
    replicas = [
        *pods(2, 0.3),
        pod(7, state=ReplicaState.STARTING),
        pod(8, state=ReplicaState.STARTING),
    ]
    assert run(replicas, spec=4)[0] == 1  # ceil(0.5 × 2)


def test_adjusted_count_moving_against_the_ratio_keeps_spec() -> None:
    # spec 2 but 5 pods: 4 at 0.3 + 1 missing → ratio' 0.733 → ceil(3.67) = 4 > spec
    replicas = [*pods(4, 0.3), pod(9, 0.0, started=NOW)]
    assert run(replicas, spec=2)[0] == 2


def test_no_pod_with_a_metric_makes_the_metric_invalid() -> None:
    replicas = [pod(0, state=ReplicaState.STARTING), pod(1, 0.0, started=NOW)]
    count, state = run(replicas, spec=2, recs=((NOW - 15, 2),))
    assert count == 2
    hm = state.get("m")
    assert hm is not None and hm.recommendations == ((NOW - 15, 2),)  # nothing recorded


def test_draining_replicas_are_not_pods() -> None:
    replicas = [*pods(2, 0.9), pod(5, 0.0, state=ReplicaState.DRAINING)]
    assert run(replicas, spec=2)[0] == 3  # ceil(1.5 × 2): the draining one is ignored


# ------------------------------------------------------------------ 3. requests per replica


def test_rps_metric_proposes_usage_over_target() -> None:
    kw: dict[str, Any] = {"target_utilization": None, "target_rps_per_replica": 10.0}
    assert run(pods(2, 0.0), spec=2, rate=50.0, **kw)[0] == 5


def test_rps_metric_within_tolerance_keeps_pods() -> None:
    kw: dict[str, Any] = {"target_utilization": None, "target_rps_per_replica": 10.0}
    assert run(pods(2, 0.0), spec=2, rate=21.0, **kw)[0] == 2


def test_rps_metric_scales_from_zero_pods() -> None:
    kw: dict[str, Any] = {
        "target_utilization": None,
        "target_rps_per_replica": 10.0,
        "min_replicas": 0,
    }
    assert run([], spec=0, rate=35.0, **kw)[0] == 4
    assert run([], spec=0, rate=0.0, **kw)[0] == 0


def test_rps_metric_is_invalid_when_the_model_is_missing() -> None:
    kw: dict[str, Any] = {"target_utilization": None, "target_rps_per_replica": 10.0}
    assert run(pods(3, 0.0), spec=3, rate=None, **kw)[0] == 3


# ------------------------------------------------------------------ 4. several metrics


def test_several_metrics_take_the_largest_proposal() -> None:
    # utilization: ceil(1.5 × 2) = 3; rps: ceil(50 / 10) = 5
    assert run(pods(2, 0.9), spec=2, rate=50.0, target_rps_per_replica=10.0)[0] == 5


def test_an_invalid_metric_blocks_scale_down() -> None:
    assert run(pods(4, 0.3), spec=4, rate=None, target_rps_per_replica=10.0)[0] == 4


def test_an_invalid_metric_does_not_block_scale_up() -> None:
    assert run(pods(4, 0.9), spec=4, rate=None, target_rps_per_replica=10.0)[0] == 6


# ------------------------------------------------------------------ 5. stabilization


def test_scale_down_uses_the_largest_recommendation_in_the_window() -> None:
    count, state = run(pods(6, 0.2), spec=6, recs=((NOW - 100, 5),))
    assert count == 5  # proposal ceil(0.333 × 6) = 2, but 5 was recommended 100 s ago
    hm = state.get("m")
    assert hm is not None and hm.recommendations == ((NOW - 100, 5), (NOW, 2))


def test_recommendations_leave_the_window_after_300_s() -> None:
    assert run(pods(6, 0.2), spec=6, recs=((NOW - 300, 5),))[0] == 2


def test_first_sync_seeds_the_window_with_spec() -> None:
    assert run(pods(4, 0.3))[0] == 4  # a new HPA does not scale down


def test_scale_up_has_no_window() -> None:
    assert run(pods(4, 0.9), spec=4, recs=((NOW - 10, 1),))[0] == 6


# ------------------------------------------------------------------ 6. rate limits


def test_scale_up_limited_to_four_pods_or_double() -> None:
    kw: dict[str, Any] = {"target_utilization": None, "target_rps_per_replica": 1.0}
    assert run(pods(2, 0.0), spec=2, rate=100.0, **kw)[0] == 6  # max(2 × 2, 2 + 4)
    assert run(pods(10, 0.0), spec=10, rate=100.0, **kw)[0] == 20  # max(2 × 10, 10 + 4)


def test_scale_down_unlimited_but_not_below_min() -> None:
    assert run(pods(10, 0.01), spec=10)[0] == 1
    assert run(pods(10, 0.01), spec=10, min_replicas=3)[0] == 3


def test_never_above_max_replicas() -> None:
    assert run(pods(4, 1.0), spec=4, max_replicas=5)[0] == 5


def test_default_max_is_the_pools_limit() -> None:
    policy = HpaPolicy(context((("cpu", 1.0, 7),)))
    state = HpaState(NOW - 15, (("m", HpaModel(7)),))
    plan, new = policy.decide(Snapshot(NOW, (), tuple(pods(7, 1.0))), state)
    assert plan.count("m") == 7 and new.get("m") == HpaModel(7, ((NOW, 12),))


# ------------------------------------------------------------------ 7. placement


def test_placement_spills_over_a_full_pool_and_reports_shortfall() -> None:
    policy = HpaPolicy(context((("cheap", 1.0, 2), ("dear", 2.0, 2))), max_replicas=10)
    state = HpaState(NOW - 15, (("m", HpaModel(4)),))
    plan, new = policy.decide(Snapshot(NOW, (), tuple(pods(4, 0.9))), state)
    assert plan.targets == (
        ReplicaTarget("m", "v", "cheap", 2),
        ReplicaTarget("m", "v", "dear", 2),
    )
    assert "pools exhausted" in plan.reason
    hm = new.get("m")
    assert hm is not None and hm.spec == 6  # the HPA keeps asking (Pending pods)


def test_a_count_at_s_t_is_reported() -> None:
    policy = HpaPolicy(context((("cpu", 1.0, 5),)))
    state = HpaState(NOW - 15, (("m", HpaModel(4)),))
    plan, _ = policy.decide(Snapshot(NOW, (), tuple(pods(4, 1.0))), state)
    assert plan.count("m") == 5 and "capped at S_t = 5" in plan.reason
