"""`coscale simulate SCENARIO` end to end, through a real subprocess.

The hermetic tests give the simulator a profile file with `--profile` (a profile in the
file format `coscale profile` writes, with latencies chosen here); one test runs the
example scenario as a user would, with whatever profile this machine or the package
has — and, when there is none, checks that the command says how to get one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from coscale.accel.hardware import fingerprint, hardware_info
from coscale.catalog.profiles import ProfileFile, save_profile

ROOT = Path(__file__).resolve().parents[2]
BATCHES = (1, 2, 4, 8, 16, 32, 64)


def coscale(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}  # rich wraps a table to 80 columns without a tty
    return subprocess.run(
        [sys.executable, "-c", "from coscale.cli import main; main()", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _variant(name: str, base_ms: float, per_item_ms: float, fidelity: float) -> dict[str, Any]:
    latency = {
        str(b): {"p50": base_ms + per_item_ms * b, "p99": 1.5 * (base_ms + per_item_ms * b)}
        for b in BATCHES
    }
    best = max(BATCHES, key=lambda b: b / latency[str(b)]["p50"])
    base_throughput = 64 / (base_ms + per_item_ms * 64) * 1000
    throughput = best / latency[str(best)]["p50"] * 1000
    return {
        "name": name,
        "runtime": "torch" if name.endswith("eager") else "onnxruntime",
        "fidelity": fidelity,
        "fidelity_metric": "accuracy",
        "fidelity_min": fidelity,
        "throughput": throughput,
        "best_batch": best,
        "latency_ms": latency,
        "latency_ms_by_seq_len": None,
        "size_bytes": 100_000,
        "peak_memory_bytes": 300_000_000,
        "speedup": throughput / base_throughput,
    }


@pytest.fixture(scope="module")
def profile_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    hw = hardware_info()
    data = {
        "schema_version": 1,
        "model": "digits-cnn",
        "task": "image-classification",
        "hardware": {**hw, "fingerprint": fingerprint(hw)},
        "measured_at": "2025-01-01T00:00:00+00:00",
        "threads": 2,
        "baseline": "fp32-eager",
        "variants": [
            _variant("fp32-eager", 4.0, 0.4, 0.97),
            _variant("onnx-int8-static", 1.0, 0.1, 0.965),
        ],
    }
    path = tmp_path_factory.mktemp("profiles") / "digits-cnn.json"
    save_profile(ProfileFile.model_validate(data), path)
    return path


def test_compare_writes_runs_json_and_records(profile_file: Path, tmp_path: Path) -> None:
    out, parquet = tmp_path / "out.json", tmp_path / "records.parquet"
    series = tmp_path / "series.csv"
    proc = coscale(
        "simulate",
        "examples/digits.yaml",
        "--compare",
        "baseline,optimized-b,oracle",
        "--profile",
        f"digits={profile_file}",
        "--duration",
        "45",  # at least two 15 s samples even when the last request finishes early
        "--json",
        str(out),
        "--records",
        str(parquet),
        "--timeseries",
        str(series),
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    runs = data["runs"]
    assert [r["preset"] for r in runs] == ["baseline", "optimized-b", "oracle"]
    contract = ("requests", "completed", "failed", "rejected", "lost", "latency_ms")
    contract += ("throughput_rps", "makespan_s", "cost_usd", "energy_j", "slo_attainment")
    contract += ("reliability", "preset", "scenario")
    for r in runs:
        assert all(k in r for k in contract)
        assert r["lost"] == 0
        assert r["scenario"] == "digits-local"
        assert r["cost_vs_oracle"] == pytest.approx(r["cost_usd"] / runs[2]["cost_usd"])
    assert runs[0]["requests"] == runs[1]["requests"] == runs[2]["requests"] > 4000
    assert "cost/oracle" in proc.stdout and "optimized-b" in proc.stdout
    import pyarrow.parquet as pq

    table = pq.read_table(parquet)
    assert table.num_rows == sum(r["requests"] for r in runs)
    assert set(table.column("preset").to_pylist()) == {"baseline", "optimized-b", "oracle"}
    assert {"latency_ms", "outcome", "slo_met", "replica", "batch_size"} <= set(table.column_names)
    for preset in ("baseline", "optimized-b", "oracle"):
        lines = (tmp_path / f"series-{preset}.csv").read_text().splitlines()
        assert lines[0].startswith("time_s,replicas,") and len(lines) >= 3


def test_one_preset_writes_one_summary(profile_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "one.json"
    proc = coscale(
        "simulate",
        "examples/digits.yaml",
        "--preset",
        "hpa",
        "--profile",
        f"digits={profile_file}",
        "--duration",
        "20",
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.read_text())
    assert summary["preset"] == "hpa" and summary["lost"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--compare", "baseline,fastest"], "unknown preset"),
        (["--preset", "hpa", "--compare", "baseline"], "--preset and --compare"),
        (["--profile", "digits"], "MODEL=PATH"),
        (["--nodes", "0"], "--nodes"),
        (["--trace", "pyproject.toml"], "format"),
        (["--rate-scale", "2"], "ServeGen"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    profile_file: Path, args: list[str], message: str
) -> None:
    extra = [] if "--profile" in args else ["--profile", f"digits={profile_file}"]
    proc = coscale("simulate", "examples/digits.yaml", "--duration", "5", *extra, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_node_type_in_a_scenario_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = (ROOT / "examples/digits.yaml").read_text().replace("local-2vcpu", "local-9vcpu")
    bad.write_text(text)
    proc = coscale("simulate", str(bad))
    assert proc.returncode == 2
    assert "unknown node type 'local-9vcpu'" in proc.stderr


def test_the_example_runs_or_says_how_to_get_a_profile(tmp_path: Path) -> None:
    """As a user runs it: the profile of this machine or the shipped reference one."""
    out = tmp_path / "out.json"
    proc = coscale(
        "simulate",
        "examples/digits.yaml",
        "--compare",
        "baseline,optimized-b",
        "--duration",
        "20",
        "--json",
        str(out),
    )
    if proc.returncode == 2:
        assert "no latency profile" in proc.stderr and "coscale profile digits-cnn" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(out.read_text())["runs"]
    assert [r["preset"] for r in runs] == ["baseline", "optimized-b"]
    assert all(r["lost"] == 0 for r in runs)


def test_queue_model_mode_still_works(tmp_path: Path) -> None:
    out = tmp_path / "mmc.json"
    proc = coscale(
        "simulate",
        "--queue-model",
        "mmc",
        "--arrival-rate",
        "8",
        "--service-rate",
        "1",
        "--servers",
        "10",
        "--requests",
        "5000",
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["preset"] == "mmc"
