"""The fidelity replay's calibration: what a live run observed, read back and applied."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coscale.bench.settings import from_overrides
from coscale.bench.sim import (
    TWIN_REPLAYS,
    _after_http_path,
    _calibration,
    _run_twin,
    first_plan,
    http_path_ms,
    live_twin_scenario,
    mean_table_latency,
    median_figures,
    replacement_startup_s,
    replay_live,
    scale_up_startup_s,
    server_telemetry,
    service_batches,
    service_factors,
    twin_figures,
)
from coscale.errors import CoscaleError
from coscale.sim.build import build_policies
from coscale.sim.run import SimOptions, prepare
from coscale.telemetry.records import RequestRecord, Telemetry
from coscale.types import LatencyTable, Outcome

DIGITS = Path(__file__).resolve().parents[2] / "coscale" / "data" / "profiles" / "digits-cnn.json"
SETTINGS = from_overrides(True, {"model": "digits-cnn", "segment_s": 20.0})


def _live(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "served_name": "digits",
        "segment": {"start_s": 840.0, "duration_s": 20.0},
        "speedup": 10.0,
        "replicas": 2,
        "node_type": "local-2vcpu",
        "runs": runs,
    }


def _prepared() -> Any:
    scenario = live_twin_scenario(SETTINGS, _live([]), "local-2vcpu")
    return prepare(scenario, SimOptions(profiles={"digits": DIGITS}, fault_scale=0.0))


def _record(i: int, latency_s: float) -> RequestRecord:
    return RequestRecord(
        id=i,
        model="digits",
        tenant="default",
        arrival=float(i),
        deadline=float(i) + 1.0,
        finish=float(i) + latency_s,
        outcome=Outcome.COMPLETED,
        items=1,
    )


def test_server_telemetry_is_the_growth_of_the_servers_own_histograms() -> None:
    t = Telemetry()
    t.observe_batch("digits", 4, 0.010)
    t.record(_record(0, 0.5))
    before = t.prometheus_text()
    for items, service in ((8, 0.020), (2, 0.004)):
        t.observe_batch("digits", items, service)
    t.observe_batch("other", 64, 9.0)  # another model: not counted
    t.record(_record(1, 0.25))
    t.record(_record(2, 0.75))
    got = server_telemetry(before, t.prometheus_text(), "digits")
    assert got["batches"] == 2 and got["batch_items"] == 10
    assert got["batch_service_s"] == pytest.approx(0.024)
    assert got["completed"] == 2 and got["server_latency_s"] == pytest.approx(1.0)


def test_replacement_startup_is_read_from_the_ready_series() -> None:
    run = {
        "killed": {"at_s": 1.0},
        "series": {
            "time_s": [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
            "replicas_ready": [2, 2, 1, 1, 1, 2, 2],
        },
    }
    assert replacement_startup_s(run) == pytest.approx(1.5)  # 1.0 → 2.5
    assert replacement_startup_s({**run, "killed": None}) is None
    never = {**run, "series": {**run["series"], "replicas_ready": [2, 2, 1, 1, 1, 1, 1]}}
    assert replacement_startup_s(never) is None
    # a drop before the kill is the allocation scaling down, not the kill
    scaled = {
        "killed": {"at_s": 2.0},
        "series": {
            "time_s": [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5],
            "replicas_ready": [2, 1, 1, 2, 2, 1, 1, 2],
        },
    }
    assert replacement_startup_s(scaled) == pytest.approx(1.0)  # 2.5 → 3.5


def test_calibration_scales_the_profile_to_the_observed_service() -> None:
    prepared = _prepared()
    option = prepared.options[0][0]
    predicted = option.latency.latency(4, 0)
    run = {
        "server_telemetry": {
            "batches": 10.0,
            "batch_items": 40.0,
            "batch_service_s": 10 * 3.0 * predicted,  # three times slower than profiled
        },
    }
    k, how = _calibration(prepared, run, option.variant)
    assert k == pytest.approx(3.0)
    assert how["calibrated"] and how["service_scale"] == pytest.approx(3.0)
    # nothing observed: the profile as measured
    assert _calibration(prepared, {}, option.variant) == (1.0, {"calibrated": False})


def test_the_mean_table_latency_interpolates_the_batch_and_averages_the_lengths() -> None:
    # 10 ms + 10 ms per extra item at 100 tokens, twice that at 200
    table = LatencyTable((1, 2, 4), (100, 200), ((0.010, 0.020, 0.040), (0.020, 0.040, 0.080)))
    # a mean batch of 1.5 items is halfway between one and two, not rounded to two
    assert mean_table_latency(table, 1.5, [100]) == pytest.approx(0.015)
    # three requests of 200 tokens and one of 100: their mean, not the median length's
    assert mean_table_latency(table, 1.0, [200, 100, 200, 200]) == pytest.approx(0.0175)
    assert mean_table_latency(table, 0.4, []) == pytest.approx(table.latency(1, 0))


def test_calibration_reads_a_fractional_mean_batch_at_the_requests_own_lengths() -> None:
    prepared = _prepared()
    option = prepared.options[0][0]
    between = 0.5 * (option.latency.latency(1, 0) + option.latency.latency(2, 0))
    run = {"server_telemetry": {"batches": 4.0, "batch_items": 6.0, "batch_service_s": 8 * between}}
    k, how = _calibration(prepared, run, option.variant)
    assert k == pytest.approx(2.0)  # 1.5 items: halfway, where rounding would read 2
    assert how["http_path_ms"] == 0.0  # the client's wire time not saved


def test_the_http_path_is_the_clients_wire_time_less_the_servers_latency() -> None:
    telemetry = {"batches": 1.0, "completed": 10.0, "server_latency_s": 0.5}
    assert http_path_ms({"server_telemetry": telemetry, "wire_mean_ms": 56.0}) == pytest.approx(6.0)
    assert http_path_ms({"server_telemetry": telemetry, "wire_mean_ms": 40.0}) == 0.0
    assert http_path_ms({"server_telemetry": telemetry}) == 0.0
    assert http_path_ms({"wire_mean_ms": 56.0}) == 0.0


def test_requests_reach_the_twin_the_http_path_later() -> None:
    prepared = _prepared()
    later = _after_http_path(prepared, 0.25)
    assert np.allclose(later.arrivals.times, prepared.arrivals.times + 0.25)
    assert later.arrivals.duration_s == pytest.approx(prepared.arrivals.duration_s + 0.25)
    assert _after_http_path(prepared, 0.0) is prepared
    sent = prepared.arrivals.times
    now = twin_figures(_run_twin(prepared, "baseline", None), sent)
    then = twin_figures(_run_twin(later, "baseline", None), sent)
    assert then["p50_ms"] == pytest.approx(now["p50_ms"] + 250.0, abs=1.0)


def test_the_twin_world_is_slower_while_its_policies_know_the_profile() -> None:
    prepared = _prepared()
    base = _run_twin(prepared, "baseline", None)
    slow = _run_twin(prepared, "baseline", None, service_scale=3.0, startup_s=7.0)
    done = base.requests.outcome == slow.requests.outcome
    service = (slow.requests.finish - slow.requests.service_start)[done]
    alone = (base.requests.finish - base.requests.service_start)[done]
    both = np.isfinite(service) & np.isfinite(alone) & (base.requests.batch_size[done] == 1)
    both &= slow.requests.batch_size[done] == 1
    assert both.any() and np.allclose(service[both], 3.0 * alone[both])
    # the policies are the profile's: the same static plan, the same initial replicas
    assert slow.summary.extra["replicas_started"] == base.summary.extra["replicas_started"]


def test_a_preset_without_initial_replicas_starts_with_its_first_plan_like_the_server() -> None:
    policies = build_policies(_prepared(), "baseline")
    plan = first_plan(policies)
    assert plan and all(t.model == "digits" and t.count > 0 for t in plan)


def test_twin_figures_are_measured_like_the_live_client() -> None:
    live = _live(
        [
            {
                "preset": "optimized-b",
                "p50_ms": 5.0,
                "p99_ms": 40.0,
                "throughput_rps": 100.0,
                "killed": {"at_s": 1.0},
                "server_telemetry": {
                    "batches": 100.0,
                    "batch_items": 150.0,
                    "batch_service_s": 0.2,
                },
            }
        ]
    )
    out = replay_live(SETTINGS, live, DIGITS)
    pair = out["pairs"][0]
    assert pair["calibration"]["calibrated"] and pair["calibration"]["connections"] >= 4
    assert "calibrated on each live run's own observations" in out["note"]
    sim = pair["sim"]
    assert sim["completed"] + sim["failed"] + sim["rejected"] == sim["requests"]
    assert math.isfinite(sim["p50_ms"]) and sim["p99_ms"] >= sim["p50_ms"]


def test_twin_throughput_is_completed_over_first_send_to_last_answer() -> None:
    prepared = _prepared()
    result = _run_twin(prepared, "baseline", None)
    log = result.requests
    figures = twin_figures(result, prepared.arrivals.times)
    done = int(np.count_nonzero(np.isfinite(log.service_start)))
    span = float(np.nanmax(log.finish) - log.arrival.min())
    assert figures["throughput_rps"] == pytest.approx(done / span)
    earlier = twin_figures(result, prepared.arrivals.times - 0.5)  # sent 0.5 s earlier
    assert earlier["p50_ms"] == pytest.approx(figures["p50_ms"] + 500.0)


def test_the_client_connection_pool_holds_requests_back_in_the_client() -> None:
    prepared = _prepared()
    scheduled = prepared.arrivals.times
    free = _run_twin(prepared, "baseline", None)
    one = _run_twin(prepared, "baseline", None, connections=1)
    assert np.allclose(free.requests.arrival, scheduled)
    # one connection: a request reaches the server only once the previous one is answered
    log = one.requests
    order = np.argsort(log.arrival, kind="stable")
    assert np.all(log.arrival[order][1:] >= log.finish[order][:-1] - 1e-12)
    assert np.all(log.arrival >= scheduled - 1e-12)
    assert twin_figures(one, scheduled)["p50_ms"] >= twin_figures(free, scheduled)["p50_ms"]


def test_scale_up_startup_is_the_median_wait_for_the_added_replicas_to_serve() -> None:
    run = {
        "series": {
            "time_s": [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5],
            "replicas": [1, 2, 2, 1, 2, 2, 3, 3],
            "replicas_ready": [1, 1, 2, 1, 2, 2, 2, 3],
        },
    }
    # 0.5 → 1.0 (0.5 s), 2.0 → 2.0 (within a sample: 0), 3.0 → 3.5 (0.5 s)
    assert scale_up_startup_s(run) == pytest.approx(0.5)
    flat = {"series": {**run["series"], "replicas": [1] * 8, "replicas_ready": [1] * 8}}
    assert scale_up_startup_s(flat) is None
    never = {"series": {**run["series"], "replicas_ready": [1] * 8}}
    assert scale_up_startup_s(never) is None
    assert scale_up_startup_s({}) is None


def test_the_live_baseline_is_static_at_the_replica_budget_live_and_in_its_twin() -> None:
    """Baseline's live scenario (and its twin's) fixes the static allocation at the
    replica budget; sized from the demand, this digits segment needs one replica."""
    from coscale.bench.settings import live_policies

    budget = {"name": "static", "params": {"replicas": SETTINGS.replicas}}
    assert live_policies(SETTINGS, "baseline") == {"preset": "baseline", "allocation": budget}
    assert live_policies(SETTINGS, "optimized-b") == {"preset": "optimized-b"}
    twin = live_twin_scenario(SETTINGS, _live([]), "local-2vcpu", "baseline")
    prepared = prepare(twin, SimOptions(profiles={"digits": DIGITS}, fault_scale=0.0))
    fixed = first_plan(build_policies(prepared, "baseline"))
    sized = first_plan(build_policies(_prepared(), "baseline"))  # optimized-b's scenario
    assert sum(t.count for t in fixed) == SETTINGS.replicas == 2
    assert sum(t.count for t in sized) == 1


def _columns(rows: list[tuple[int, str, str, float, float, int, float, int]]) -> dict[str, list]:
    """Record columns from (id, outcome, replica, arrival, queue_s, batch_size, service_s,
    seq_len) rows, as ``coscale serve --records`` writes them."""
    names = ("id", "outcome", "replica", "arrival", "queue_s", "batch_size", "service_s")
    cols: dict[str, list] = {name: [r[k] for r in rows] for k, name in enumerate(names)}
    cols["seq_len"] = [r[7] for r in rows]
    cols["variant"] = ["onnx-fp32"] * len(rows)
    return cols


def test_service_batches_group_the_cycles_requests_that_started_together() -> None:
    nan = math.nan
    cols = _columns(
        [
            (0, "completed", "r0", 1.00, 0.20, 3, 0.30, 12),  # starts at 1.2 on r0 …
            (1, "completed", "r0", 1.10, 0.10, 3, 0.30, 40),  # … with these two
            (2, "completed", "r0", 1.15, 0.05, 3, 0.30, 25),
            (3, "completed", "r1", 1.15, 0.05, 1, 0.10, 7),  # same time, other replica
            (4, "rejected", "", 1.16, nan, 0, nan, 9),
            (5, "completed", "r0", 0.50, 0.00, 1, 0.20, 30),  # earlier batch
            (6, "completed", "r0", 9.00, 0.00, 1, 0.50, 64),  # a closed loop's, after
        ]
    )
    got = service_batches(cols, first_n=6)
    assert got == {
        "variant": ["onnx-fp32"] * 3,
        "items": [1, 3, 1],
        "seq_len": [30, 40, 7],
        "service_s": [0.20, 0.30, 0.10],
    }
    assert service_batches(cols, first_n=0)["items"] == []


def test_service_factors_are_the_live_service_over_the_table_about_their_mean() -> None:
    table = LatencyTable((1, 2), (0,), ((0.01, 0.02),))
    batches = {
        "variant": ["v"] * 30 + ["unknown"],
        "items": [1, 2] * 15 + [1],
        "seq_len": [0] * 31,
        "service_s": [0.01, 0.06] * 15 + [9.0],  # ratios 1 and 3
    }
    factors = service_factors({"v": table}, batches)
    assert factors is not None and len(factors) == 30  # the unknown variant skipped
    assert factors.mean() == pytest.approx(1.0)
    assert sorted(set(np.round(factors, 9))) == [0.5, 1.5]
    few = {k: v[:10] for k, v in batches.items()}
    assert service_factors({"v": table}, few) is None


def test_the_twin_scatters_each_batch_by_a_drawn_factor_and_replays_differ() -> None:
    prepared = _prepared()
    base = _run_twin(prepared, "baseline", None)
    factors = np.array([0.5, 1.5])
    one = _run_twin(prepared, "baseline", None, service_factors=factors)
    again = _run_twin(prepared, "baseline", None, service_factors=factors)
    other = _run_twin(prepared, "baseline", None, service_factors=factors, replay=1)

    def services(result: Any) -> np.ndarray:
        log = result.requests
        ok = np.isfinite(log.service_start) & (log.batch_size == 1)
        return (log.finish - log.service_start)[ok]

    plain = float(np.median(services(base)))
    ratio = services(one) / plain
    assert np.allclose(np.sort(np.unique(np.round(ratio, 6))), [0.5, 1.5])
    assert 0.3 < np.mean(np.isclose(ratio, 0.5)) < 0.7
    assert np.array_equal(services(one), services(again))  # seeded
    assert not np.array_equal(services(one), services(other))


def test_median_figures_take_each_figures_median() -> None:
    figs = [
        {"p50_ms": 10.0, "p99_ms": 90.0, "completed": 5, "gone": None},
        {"p50_ms": 30.0, "p99_ms": 70.0, "completed": 8, "gone": None},
        {"p50_ms": 20.0, "p99_ms": 80.0, "completed": 6, "gone": None},
    ]
    assert median_figures(figs) == {"p50_ms": 20.0, "p99_ms": 80.0, "completed": 6, "gone": None}
    assert median_figures(figs[:1]) == figs[0]


def test_a_run_with_its_batches_is_replayed_several_times_with_its_factors() -> None:
    rng = np.random.default_rng(4)
    n = 60
    run = {
        "preset": "optimized-b",
        "p50_ms": 5.0,
        "p99_ms": 40.0,
        "throughput_rps": 100.0,
        "killed": None,
        "server_telemetry": {"batches": 100.0, "batch_items": 150.0, "batch_service_s": 0.2},
        "service_batches": {
            "variant": ["onnx-fp32"] * n,
            "items": [1] * n,
            "seq_len": [0] * n,
            "service_s": (0.002 * np.exp(0.3 * rng.standard_normal(n))).tolist(),
        },
    }
    out = replay_live(SETTINGS, _live([run]), DIGITS)
    how = out["pairs"][0]["calibration"]
    assert how["replays"] == TWIN_REPLAYS > 1
    assert 0.2 < how["service_spread"] < 0.4
    assert f"medians of {TWIN_REPLAYS} replays" in out["note"]
    plain = replay_live(SETTINGS, _live([{**run, "service_batches": None}]), DIGITS)
    assert plain["pairs"][0]["calibration"]["replays"] == 1
    assert plain["pairs"][0]["calibration"]["service_spread"] is None


@pytest.mark.parametrize("bad", [[], [1.0, 0.0], [1.0, math.inf]])
def test_service_factors_must_be_positive_and_finite(bad: list[float]) -> None:
    with pytest.raises(CoscaleError, match="service_factors"):
        _run_twin(_prepared(), "baseline", None, service_factors=np.asarray(bad))
