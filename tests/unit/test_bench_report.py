"""The bench report from a saved results object: tables, percentages, goals, files."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from coscale.bench.report import (
    RESULTS_FILE,
    build_report,
    check_goals,
    finalize,
    load_results,
    relative_error_pct,
    scaling_efficiency,
    table2,
)
from coscale.errors import CoscaleError


def _run(preset: str, t: float, cost: float, rel: float, **extra: Any) -> dict[str, Any]:
    row = {
        "preset": preset,
        "processing_time_s": t,
        "cost_usd": cost,
        "replica_seconds": cost / (0.1026 / 3600),
        "reliability": rel,
        "slo_attainment": min(1.0, rel + 0.001),
        "p50_ms": 40.0,
        "p99_ms": 400.0,
        "throughput_rps": 20.0,
        "energy_j": 100.0,
        "energy_per_inference_j": 0.5,
        "requests": 1000,
        "completed": 990,
        "failed": 10,
        "rejected": 0,
        "lost": 0,
        "killed": {"replica": "r00000", "variant": "fp32-eager", "pid": 1, "at_s": 4.0},
        "series": {
            "time_s": [0.0, 1.0, 2.0],
            "replicas": [2, 2, 1],
            "replicas_ready": [2, 1, 1],
            "cost_usd": [0.0, 0.1, 0.2],
            "cost_usd_per_hour": [0.0, 360.0, 360.0],
            "variants": {"fp32-eager": [2, 2, 1]},
        },
    }
    row.update(extra)
    return row


def results(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "schema": 1,
        "created_at": "2026-11-29T23:00:00+00:00",
        "quick": True,
        "machine": {"cpus": 2, "platform": "test", "load_average_start": 1.0},
        "wall_s": 12.0,
        "live": {
            "model": "minilm",
            "trace": "azure-code",
            "segment": {"start_s": 840.0, "duration_s": 180.0},
            "requests": 1000,
            "speedup": 9.0,
            "cycle_s": 20.0,
            "slo_ms": 500.0,
            "replicas": 2,
            "node_type": "local-2vcpu",
            "price_usd_per_hour": 0.1026,
            "runs": [
                _run("baseline", 120.0, 0.5, 0.95),
                _run("optimized-a", 90.0, 0.4, 0.97),
                _run("optimized-b", 50.0, 0.25, 0.9995),
            ],
        },
        "cluster": {
            "nodes_initial": 1000,
            "nodes_max": 1710,
            "node_types": ["c7a.xlarge", "g5.xlarge"],
            "requests": 5000,
            "fault_scale": 24.0,
            "runs": [
                {
                    "preset": p,
                    "cost_usd": c,
                    "cost_vs_oracle": c / 2.0,
                    "slo_attainment": 0.999,
                    "p50_ms": 10.0,
                    "p99_ms": 90.0,
                    "reliability": 1.0,
                    "preemptions": 3,
                    "failures": 1,
                    "replicas_mean": 11.5,
                    "replicas_max": 2300,
                    "energy_per_request_j": 4.0,
                    "wall_s": 1.0,
                }
                for p, c in (("baseline", 3.0), ("optimized-b", 2.1), ("oracle", 2.0))
            ],
            "series": {
                "optimized-b": {
                    "time_s": [0.0, 15.0],
                    "replicas": [2300, 12],
                    "cost_usd_per_hour": [100.0, 2.0],
                    "variants": {"fp32-eager": [2300, 10], "pruned-structured": [0, 2]},
                }
            },
        },
        "scalability": {
            "sim": {
                "points": [
                    {"tasks": 50, "throughput_rps": 450.0},
                    {"tasks": 10, "throughput_rps": 100.0},
                    {"tasks": 100, "throughput_rps": 950.0},
                ]
            },
            "live": {"points": [{"tasks": 10, "throughput_rps": 30.0}]},
        },
        "fidelity": {
            "pairs": [
                {
                    "preset": "optimized-b",
                    "live": {"p50_ms": 40.0, "p99_ms": 400.0, "throughput_rps": 20.0},
                    "sim": {"p50_ms": 42.0, "p99_ms": 380.0, "throughput_rps": 20.5},
                }
            ]
        },
    }
    data.update(over)
    return data


def test_table2_percentages_against_the_baseline() -> None:
    rows = {r["preset"]: r for r in table2(results()["live"]["runs"])}
    assert rows["baseline"]["latency_reduction_pct"] == 0.0
    assert rows["baseline"]["cost_reduction_pct"] == 0.0
    assert rows["optimized-a"]["latency_reduction_pct"] == pytest.approx(25.0)
    assert rows["optimized-a"]["cost_reduction_pct"] == pytest.approx(20.0)
    assert rows["optimized-b"]["latency_reduction_pct"] == pytest.approx(100 * (1 - 50 / 120))
    assert rows["optimized-b"]["cost_reduction_pct"] == pytest.approx(50.0)
    assert set(rows["optimized-b"]) >= {
        "preset",
        "processing_time_s",
        "cost_usd",
        "reliability",
        "latency_reduction_pct",
        "cost_reduction_pct",
        "p50_ms",
        "p99_ms",
        "energy_per_inference_j",
        "slo_attainment",
    }


def test_table2_without_a_baseline_has_no_reductions() -> None:
    runs = [r for r in results()["live"]["runs"] if r["preset"] != "baseline"]
    assert all(r["latency_reduction_pct"] is None for r in table2(runs))


def test_scaling_efficiency_is_per_task_throughput_relative_to_the_smallest_load() -> None:
    points = scaling_efficiency(results()["scalability"]["sim"]["points"])
    assert [p["tasks"] for p in points] == [10, 50, 100]
    assert [p["efficiency"] for p in points] == pytest.approx([1.0, 0.9, 0.95])
    assert scaling_efficiency([{"tasks": 10, "throughput_rps": 0.0}])[0]["efficiency"] is None


def test_relative_error() -> None:
    assert relative_error_pct(110.0, 100.0) == pytest.approx(10.0)
    assert relative_error_pct(90.0, 100.0) == pytest.approx(10.0)
    assert relative_error_pct(1.0, 0.0) is None
    assert relative_error_pct(None, 1.0) is None


def _goal(goals: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return next(g for g in goals if g["key"] == key)


def test_goals_met_with_the_measured_figures_in_the_text() -> None:
    goals = check_goals(results())
    assert [g["met"] for g in goals] == [True, True, True, True, True]
    assert _goal(goals, "processing_time")["text"].startswith("MET")
    assert "58.3 % lower" in _goal(goals, "processing_time")["text"]
    assert "50.0 % lower" in _goal(goals, "cost")["text"]
    assert "99.95 %" in _goal(goals, "reliability")["text"]
    assert "0.950" in _goal(goals, "scaling")["text"]
    assert "worst 5.0 %" in _goal(goals, "fidelity")["text"]


def test_goals_missed_say_so_plainly() -> None:
    data = results()
    data["live"]["runs"][2] = _run("optimized-b", 100.0, 0.45, 0.98)
    data["scalability"]["sim"]["points"][2]["throughput_rps"] = 800.0
    data["fidelity"]["pairs"][0]["sim"]["p99_ms"] = 500.0
    goals = check_goals(data)
    assert [g["met"] for g in goals] == [False, False, False, False, False]
    text = _goal(goals, "processing_time")["text"]
    assert text.startswith("MISSED") and "16.7 % lower" in text
    assert "10.0 % lower" in _goal(goals, "cost")["text"]
    assert "98.00 %" in _goal(goals, "reliability")["text"]
    assert "0.800" in _goal(goals, "scaling")["text"]
    assert "worst 25.0 %" in _goal(goals, "fidelity")["text"]


def test_a_degenerate_scaling_efficiency_is_not_called_met() -> None:
    data = results()
    points = data["scalability"]["sim"]["points"]
    points[2]["throughput_rps"] = 13_100.0  # 131 per task against 10 at 10 tasks: E = 13.1
    goal = _goal(check_goals(data), "scaling")
    assert goal["met"] is None and goal["measured"] is None
    assert goal["text"].startswith("NOT MEASURED") and "13.100 is not a measurement" in goal["text"]


def test_goals_not_measured_when_parts_are_missing() -> None:
    goals = check_goals({"live": {"runs": []}})
    assert all(g["met"] is None and g["text"].startswith("NOT MEASURED") for g in goals)


def test_build_report_writes_agreeing_html_pngs_and_json(tmp_path: Path) -> None:
    out = tmp_path / "run"
    side = tmp_path / "side.json"
    final = build_report(results(), out, side)
    saved = json.loads((out / RESULTS_FILE).read_text())
    assert saved == json.loads(side.read_text()) == final
    assert [r["preset"] for r in saved["table2"]] == ["baseline", "optimized-a", "optimized-b"]
    assert saved["fidelity"]["pairs"][0]["error_pct"]["p50_ms"] == pytest.approx(5.0)
    assert saved["fidelity"]["max_error_pct"]["throughput_rps"] == pytest.approx(2.5)
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page  # self-contained
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(saved["figures"]) >= 6
    for name in saved["figures"].values():
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG")
        assert base64.b64encode(data).decode() in images
    for row in saved["table2"]:
        assert f"{row['processing_time_s']:.2f}" in page
        assert f"{row['cost_usd']:.6f}" in page
    for goal in saved["goals"]:
        assert html.escape(goal["text"]) in page


def test_report_command_rebuilds_from_saved_results(tmp_path: Path) -> None:
    from coscale.cli import app

    build_report(results(), tmp_path)
    (tmp_path / "report.html").unlink()
    for png in tmp_path.glob("*.png"):
        png.unlink()
    outcome = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert outcome.exit_code == 0, outcome.output
    assert (tmp_path / "report.html").is_file()
    assert len(list(tmp_path.glob("*.png"))) >= 6
    assert "MET" in outcome.output


def test_load_results_names_a_folder_without_results(tmp_path: Path) -> None:
    with pytest.raises(CoscaleError, match="not a bench run folder"):
        load_results(tmp_path)
    (tmp_path / RESULTS_FILE).write_text("[1, 2]")
    with pytest.raises(CoscaleError, match="does not hold a results object"):
        load_results(tmp_path)


def test_finalize_turns_non_finite_numbers_into_null() -> None:
    data = results()
    data["live"]["runs"][0]["p99_ms"] = float("inf")
    final = finalize(data)
    assert final["table2"][0]["p99_ms"] is None
    json.dumps(final, allow_nan=False)


def test_the_processing_time_goal_says_what_the_cycle_needs_and_what_was_measured(
    tmp_path: Path,
) -> None:
    data = results()
    data["live"]["needs"] = {
        "reliable_rps": 28.5,
        "slow_rps": 2.79,
        "ratio_needed": 28.5 / 2.79,
        "reliability": 0.999,
        "cut": 0.5,
        "slo_s": 0.5,
    }
    runs = data["live"]["runs"]
    runs[0]["server_telemetry"] = {"batch_items": 528, "batch_service_s": 45.18}
    runs[2]["server_telemetry"] = {"batch_items": 494, "batch_service_s": 28.80}
    text = _goal(check_goals(data), "processing_time")["text"]
    assert "at least 10.2× what baseline serves" in text
    assert "≥ 28.5 req/s against ≤ 2.79 req/s" in text
    assert "served 1.47× (85.6 against 58.3 ms" in text
    final = build_report(data, tmp_path / "run")
    assert final["needs"]["measured_ratio"] == pytest.approx((45.18 / 528) / (28.80 / 494))
    page = (tmp_path / "run" / "report.html").read_text()
    assert "What the goals ask of this cycle" in page
    assert html.escape("optimized-b ≥ 10.2× baseline's speed") in page
    assert html.escape("1.47× (per item: baseline 85.6 ms, optimized-b 58.3 ms") in page


def test_results_without_needs_have_no_bound_in_the_goal() -> None:
    data = results()
    assert "needs optimized-b" not in _goal(check_goals(data), "processing_time")["text"]
    assert finalize(data)["needs"] is None
