"""What the live goals ask of a schedule: the fluid bounds of coscale.bench.bounds."""

from __future__ import annotations

import heapq
import math

import numpy as np
import pytest

from coscale.bench.bounds import (
    goal_needs,
    measured_speed_ratio,
    reliable_capacity,
    slow_capacity,
)


def served_within_slo(times: np.ndarray, capacity: float, slo_s: float) -> float:
    """Share answered within the SLO by one server of ``capacity`` requests/s that admits
    a request iff it can still finish in time (exact predictions), FIFO."""
    free = [float(times[0])]
    served = 0
    for a in times:
        start = max(free[0], float(a))
        if start + 1.0 / capacity <= a + slo_s:
            heapq.heapreplace(free, start + 1.0 / capacity)
            served += 1
    return served / len(times)


def fluid_makespan(times: np.ndarray, capacity: float) -> float:
    """First arrival to last finish of a FIFO server of ``capacity`` that serves all."""
    finish = -math.inf
    for a in times:
        finish = max(finish, float(a)) + 1.0 / capacity
    return finish - float(times[0])


def bursty(seed: int = 3) -> np.ndarray:
    """Poisson arrivals at 4/s for 60 s with two 3-s bursts at 40/s."""
    rng = np.random.default_rng(seed)
    base = np.cumsum(rng.exponential(1 / 4.0, 240))
    bursts = [s + np.sort(rng.uniform(0, 3.0, 120)) for s in (12.0, 41.0)]
    return np.sort(np.concatenate([base, *bursts]))


def test_simultaneous_arrivals_need_all_their_work_within_one_slo() -> None:
    times = [0.0, 0.0, 0.0]
    assert reliable_capacity(times, 1.0, 1.0) == pytest.approx(3.0)
    assert reliable_capacity(times, 0.5, 1.0) == pytest.approx(6.0)
    # one miss allowed of three (reliability 2/3): two must make it
    assert reliable_capacity(times, 1.0, 2 / 3) == pytest.approx(2.0)


def test_the_densest_window_sets_the_reliable_capacity() -> None:
    # 1 request a second for 10 s, then 5 at once at 20 s: the burst needs 5 / SLO
    times = [*range(10), 20, 20, 20, 20, 20]
    assert reliable_capacity(times, 0.5, 1.0) == pytest.approx(10.0)
    # with a long SLO the steady part binds: 10 arrivals in 9 + 10 s
    assert reliable_capacity(times, 10.0, 1.0) == pytest.approx(10 / 19.0)


def test_no_policy_meets_the_reliability_below_the_bound() -> None:
    times = bursty()
    need = reliable_capacity(times, 0.5, 0.999)
    assert served_within_slo(times, 0.97 * need, 0.5) < 0.999
    # and the bound is not far from what exact admission needs on bursty arrivals
    assert served_within_slo(times, 1.25 * need, 0.5) >= 0.999


def test_slow_capacity_is_where_serving_everything_takes_the_target_makespan() -> None:
    times = bursty()
    span = float(times[-1] - times[0])
    slow = slow_capacity(times, 0.5)
    assert fluid_makespan(times, slow) == pytest.approx(2 * span, rel=1e-9)
    assert fluid_makespan(times, 1.02 * slow) < 2 * span
    assert fluid_makespan(times, 0.98 * slow) > 2 * span
    # no cut: anything that serves all ends at the span or later
    assert slow_capacity(times, 0.0) == math.inf


def test_goal_needs_is_the_ratio_of_the_two_bounds() -> None:
    times = bursty()
    needs = goal_needs(times, 0.5, 0.999, 0.5)
    assert needs["ratio_needed"] == pytest.approx(needs["reliable_rps"] / needs["slow_rps"])
    assert needs["ratio_needed"] > 1
    # the same schedule twice as fast: both bounds move, the SLO does not
    fast = goal_needs(times / 2.0, 0.5, 0.999, 0.5)
    assert fast["slow_rps"] == pytest.approx(2 * needs["slow_rps"])
    assert fast["reliable_rps"] > needs["reliable_rps"]


def test_degenerate_schedules() -> None:
    assert reliable_capacity([], 0.5, 0.999) == 0.0
    assert slow_capacity([], 0.5) == math.inf
    assert slow_capacity([3.0, 3.0], 0.5) == math.inf
    needs = goal_needs([1.0], 0.5, 1.0, 0.5)
    assert needs["slow_rps"] is None and needs["ratio_needed"] is None
    with pytest.raises(ValueError, match="slo_s"):
        reliable_capacity([0.0], 0.0, 0.9)
    with pytest.raises(ValueError, match="cut"):
        slow_capacity([0.0, 1.0], 1.0)
    with pytest.raises(ValueError, match="finite"):
        reliable_capacity([0.0, math.nan], 0.5, 0.9)


def test_measured_ratio_reads_each_servers_service_per_item() -> None:
    runs = [
        {"preset": "baseline", "server_telemetry": {"batch_items": 100, "batch_service_s": 8.0}},
        {"preset": "optimized-b", "server_telemetry": {"batch_items": 120, "batch_service_s": 6.0}},
    ]
    got = measured_speed_ratio(runs)
    assert got["baseline_ms_per_item"] == pytest.approx(80.0)
    assert got["optimized_ms_per_item"] == pytest.approx(50.0)
    assert got["ratio"] == pytest.approx(1.6)
    assert measured_speed_ratio(runs[:1])["ratio"] is None
    runs[1]["server_telemetry"] = None
    assert measured_speed_ratio(runs)["ratio"] is None
