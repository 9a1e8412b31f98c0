"""The bench's pieces on short cycles: settings, the cycle plan, the simulated parts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from coscale.bench.bounds import goal_needs
from coscale.bench.live import (
    PEAK_BIN_S,
    cycle_needs,
    machine_share,
    peak_rate,
    per_item_s,
    plan_cycle,
)
from coscale.bench.settings import BenchSettings, defaults, from_overrides
from coscale.bench.sim import (
    SCAL_PILOT_S,
    ScheduledKill,
    replay_live,
    run_cluster,
    run_scal_sim,
    thin_series,
)
from coscale.catalog import load_catalog
from coscale.catalog.profiles import latency_table, load_profile
from coscale.errors import InvalidInputError
from coscale.sim.faults import FAILURE
from coscale.sim.profiles import REFERENCE_PROFILES_DIR
from coscale.telemetry.timeseries import TimeSeries

DIGITS = REFERENCE_PROFILES_DIR / "digits-cnn.json"
MINILM = REFERENCE_PROFILES_DIR / "minilm.json"


def _profile(path: Path) -> object:
    return load_profile(path, allow_foreign=True)


def test_quick_defaults_are_smaller_than_the_full_bench() -> None:
    full, quick = defaults(False), defaults(True)
    assert quick.quick and not full.quick
    assert quick.segment_s < full.segment_s
    assert quick.sim_days < full.sim_days == 14
    assert 100 in quick.scal_tasks_sim and 100 in full.scal_tasks_sim
    assert full.live_presets == ("baseline", "optimized-a", "optimized-b")
    assert set(full.sim_presets) >= {"hpa", "kpa", "rayserve", "oracle"}


def test_overrides_are_validated() -> None:
    s = from_overrides(True, {"model": "digits-cnn", "segment_s": 30})
    assert s.model == "digits-cnn" and s.segment_s == 30 and s.quick
    assert s.slo == 50.0 and s.floor == 0.95
    with pytest.raises(InvalidInputError, match="segment_s"):
        from_overrides(False, {"segment_s": -1})
    with pytest.raises(InvalidInputError, match="nonsense"):
        from_overrides(False, {"nonsense": 1})


def test_per_item_time_is_the_fastest_feasible_variant_and_batch() -> None:
    profile = _profile(MINILM)
    best, _ = per_item_s(profile, 0.99, 32, 256)
    expected = min(
        latency_table(v).latency(b, 256) / b
        for v in profile.variants  # type: ignore[attr-defined]
        if v.fidelity >= 0.99
        for b in latency_table(v).batch_sizes
        if b <= 32
    )
    assert best == pytest.approx(expected)
    strict, strict_name = per_item_s(profile, 0.9999, 32, 256)
    assert strict >= best
    variant = next(v for v in profile.variants if v.name == strict_name)  # type: ignore[attr-defined]
    assert variant.fidelity >= 0.9999


def test_plan_speeds_the_segment_up_to_the_load_factor_of_capacity_at_its_peak() -> None:
    from coscale.load import trace_workload

    settings = BenchSettings(segment_s=120.0, max_cycle_s=1e6, min_cycle_s=0.1)
    plan = plan_cycle(settings, _profile(MINILM), cores=2, load_average=4.0)
    assert plan.requests == len(plan.seq_lens) > 0
    assert max(plan.seq_lens) <= 256
    profile = _profile(MINILM)
    cost = {n: per_item_s(profile, 0.99, 32, n)[0] for n in set(plan.seq_lens)}
    mean = float(np.mean([cost[n] for n in plan.seq_lens]))
    assert plan.capacity_rps == pytest.approx(0.5 * settings.replicas / mean)  # 2 of 4 free
    work = trace_workload("azure-code", start_s=settings.segment_start_s, window_s=120.0, seed=7)
    peak = peak_rate(np.asarray(work.times), 120.0)
    assert peak > plan.requests / 120.0  # the trace is bursty
    # the load rule: the peak at load_factor × what the kill's survivors (1 of 2) carry
    assert plan.survivors_rps == pytest.approx(plan.capacity_rps / 2)
    assert plan.peak_rps == pytest.approx(peak)
    assert plan.speedup == pytest.approx(settings.load_factor * plan.survivors_rps / peak)
    assert plan.cycle_s == pytest.approx(120.0 / plan.speedup)
    one = plan_cycle(settings.model_copy(update={"replicas": 1}), profile, cores=2)
    assert one.survivors_rps == pytest.approx(one.capacity_rps)  # no replica to lose
    measured = plan_cycle(settings, profile, measured_rps=10.0)
    assert measured.capacity_rps == 10.0 and measured.survivors_rps == pytest.approx(5.0)
    assert "one replica down" in measured.note


def test_a_cycle_too_long_for_its_bound_replays_the_segment_start_at_the_rules_speed() -> None:
    settings = BenchSettings(segment_s=120.0, max_cycle_s=100.0, min_cycle_s=5.0)
    profile = _profile(MINILM)
    free = plan_cycle(settings.model_copy(update={"max_cycle_s": 1e6}), profile, measured_rps=8.0)
    assert free.cycle_s > 100.0  # 0.8 × 4 req/s at the peak: slower than real time
    plan = plan_cycle(settings, profile, measured_rps=8.0)
    assert plan.speedup == pytest.approx(free.speedup)  # the load rule holds
    assert plan.cycle_s == 100.0 and plan.segment_s == pytest.approx(100.0 * plan.speedup)
    assert 0 < plan.requests < free.requests == len(free.seq_lens)
    assert len(plan.seq_lens) == plan.requests
    assert plan.seq_lens == free.seq_lens[: plan.requests]
    assert plan.times == free.times[: plan.requests] and len(plan.times) == plan.requests
    assert max(plan.times) < plan.segment_s
    assert f"({plan.requests} requests) are replayed" in plan.note


def test_the_cycles_needs_are_the_bounds_on_its_replayed_wall_clock_schedule() -> None:
    settings = BenchSettings(segment_s=120.0, max_cycle_s=100.0, min_cycle_s=5.0)
    plan = plan_cycle(settings, _profile(MINILM), measured_rps=8.0)
    needs = cycle_needs(plan, settings)
    wall = np.asarray(plan.times) / plan.speedup
    assert needs == goal_needs(wall, settings.slo / 1000.0, 0.999, 0.5)
    assert needs["ratio_needed"] is not None and needs["ratio_needed"] > 1


def test_machine_share_and_peak_rate() -> None:
    assert machine_share(2, None) == 1.0
    assert machine_share(2, 1.5) == 1.0
    assert machine_share(2, 8.0) == 0.25
    times = np.array([0.0, 1.0, 2.0, 31.0, 65.0])
    assert peak_rate(times, 90.0) == pytest.approx(3 / PEAK_BIN_S)
    assert peak_rate(times, 20.0) == pytest.approx(5 / 20.0)  # shorter than a bin: the mean
    assert peak_rate(np.array([]), 10.0) == 0.0
    assert peak_rate(times, 90.0, bin_s=1.0) == pytest.approx(1.0)  # one request per second
    fine = BenchSettings(segment_s=120.0, max_cycle_s=1e6, peak_bin_s=1.0)
    coarse = fine.model_copy(update={"peak_bin_s": 30.0})
    profile = _profile(MINILM)
    assert "busiest 1 trace seconds" in plan_cycle(fine, profile, measured_rps=8.0).note
    # the trace's bursts are sharper at 1 s than over 30 s: a slower replay
    fast = plan_cycle(coarse, profile, measured_rps=8.0).speedup
    assert plan_cycle(fine, profile, measured_rps=8.0).speedup < fast


def test_plan_bounds_the_cycle_length() -> None:
    settings = BenchSettings(
        model="digits-cnn", segment_start_s=2040.0, segment_s=60.0, max_cycle_s=4.0
    )
    plan = plan_cycle(settings, _profile(DIGITS))
    assert plan.cycle_s == 4.0  # the digits CNN is fast: the cycle is capped
    assert plan.speedup == pytest.approx(15.0)
    assert "bounded" in plan.note


def test_thin_series_sums_variants_over_node_types_and_keeps_few_rows() -> None:
    series = TimeSeries()
    for t in range(1000):
        series.add(
            float(t),
            {
                "replicas": 3.0,
                "cost_usd_per_hour": 1.5,
                "replicas:fp32-eager@a": 1.0,
                "replicas:fp32-eager@b": 1.0,
                "replicas:int8-dynamic@a": 1.0,
            },
        )
    thin = thin_series(series, keep=100)
    assert len(thin["time_s"]) <= 100 and thin["time_s"][0] == 0.0
    assert set(thin["variants"]) == {"fp32-eager", "int8-dynamic"}
    assert all(v == 2.0 for v in thin["variants"]["fp32-eager"])
    assert all(v == 1.5 for v in thin["cost_usd_per_hour"])


def test_scheduled_kill_kills_the_first_replica_only() -> None:
    node = load_catalog().get("local-2vcpu")
    rng = np.random.default_rng(0)
    kill = ScheduledKill(3.5)
    assert kill.draw(node, False, rng) == (3.5, FAILURE)
    assert kill.draw(node, False, rng) is None
    assert ScheduledKill(None).draw(node, True, rng) is None


def _tiny(**over: object) -> BenchSettings:
    base = {
        "sim_days": 0.02,
        "sim_presets": ("baseline", "optimized-b", "oracle"),
        "scal_tasks_sim": (10, 50, 100),
        "scal_sim_s": 0.2,
    }
    base.update(over)
    return from_overrides(True, base)


def test_cluster_runs_every_preset_on_1000_nodes_with_cost_ratios() -> None:
    cluster = run_cluster(_tiny())
    assert cluster["nodes_initial"] == 1000 and cluster["nodes_max"] == 1710
    assert len(cluster["node_types"]) == 10
    runs = {r["preset"]: r for r in cluster["runs"]}
    assert list(runs) == ["baseline", "optimized-b", "oracle"]
    assert runs["oracle"]["cost_vs_oracle"] == pytest.approx(1.0)
    for r in runs.values():
        assert r["requests"] == cluster["requests"] > 0
        assert r["cost_vs_oracle"] == pytest.approx(r["cost_usd"] / runs["oracle"]["cost_usd"])
        assert r["lost"] == 0
    assert runs["baseline"]["replicas_max"] >= 1000  # the cluster starts with its 1,000 nodes
    series = cluster["series"]["optimized-b"]
    assert len(series["time_s"]) == len(series["cost_usd_per_hour"])


def test_simulated_closed_loops_measure_throughput_per_level() -> None:
    scal = run_scal_sim(_tiny())
    points = scal["points"]
    assert [p["tasks"] for p in points] == [10, 50, 100]
    assert all(p["throughput_rps"] > 0 and p["requests"] > 0 for p in points)
    # more clients, more throughput on a warm 1,000-node cluster
    assert points[2]["throughput_rps"] > points[0]["throughput_rps"]
    # each level lasts the pilot-sized span: about scal_sim_requests (50,000 quick) or
    # scal_sim_s, whichever is shorter
    for p in points:
        assert SCAL_PILOT_S <= p["duration_s"] <= 0.2
        if p["duration_s"] < 0.2:
            assert p["requests"] == pytest.approx(50_000, rel=0.2)
    few = run_scal_sim(_tiny(scal_tasks_sim=(10, 50), scal_sim_requests=1))
    assert [p["duration_s"] for p in few["points"]] == [SCAL_PILOT_S, SCAL_PILOT_S]


def test_replay_of_a_live_run_uses_its_segment_budget_and_kill() -> None:
    settings = from_overrides(True, {"model": "digits-cnn", "segment_s": 20.0})
    live = {
        "served_name": "digits",
        "segment": {"start_s": 840.0, "duration_s": 20.0},
        "speedup": 10.0,
        "replicas": 2,
        "node_type": "local-2vcpu",
        "runs": [
            {
                "preset": p,
                "p50_ms": 5.0,
                "p99_ms": 40.0,
                "throughput_rps": 100.0,
                "killed": {"at_s": 1.0} if p == "optimized-b" else None,
            }
            for p in ("baseline", "optimized-b")
        ],
    }
    out = replay_live(settings, live, DIGITS)
    pairs = {p["preset"]: p for p in out["pairs"]}
    assert set(pairs) == {"baseline", "optimized-b"}
    for pair in pairs.values():
        sim = pair["sim"]
        assert sim["requests"] > 0 and sim["throughput_rps"] > 0
        assert math.isfinite(sim["p50_ms"]) and sim["p99_ms"] >= sim["p50_ms"]
        assert sim["replicas_mean"] <= 2.0 + 1e-9  # the live replica budget
    assert "local-2vcpu × 2" in out["note"]


def test_the_cycle_client_asks_the_server_to_wait_as_long_as_it_does() -> None:
    import asyncio

    import httpx

    from coscale.bench.live import _transport

    seen: list[httpx.URL] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(200, json={})

    async def main(timeout_s: float) -> None:
        transport = _transport(timeout_s)
        transport._inner = httpx.MockTransport(answer)
        async with httpx.AsyncClient(base_url="http://127.0.0.1:9", transport=transport) as c:
            await c.post("/v1/models/minilm/infer", json={"inputs": ["a"]})
            await c.get("/v1/stats")
        await c.aclose()  # a second client's close leaves the shared transport open
        async with httpx.AsyncClient(base_url="http://127.0.0.1:9", transport=transport) as c:
            await c.post("/v1/models/minilm/infer", json={"inputs": ["a"]})
        await transport.close()

    asyncio.run(main(60.0))
    assert [u.params.get("timeout_ms") for u in seen] == ["60000", None, "60000"]
    seen.clear()
    asyncio.run(main(3600.0))
    assert seen[0].params["timeout_ms"] == "600000"  # the API's 10-minute cap
