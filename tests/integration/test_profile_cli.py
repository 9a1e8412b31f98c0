"""`coscale profile` end to end, in a real subprocess: a user's ONNX file with no code change,
and the error paths (unknown model, corrupt file, unknown variant) exiting 2 without a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from coscale.accel.hardware import fingerprint, hardware_info
from coscale.accel.onnxrt import export_onnx

pytestmark = pytest.mark.integration

CONTRACT_TOP = {"model", "hardware", "baseline", "variants"}
CONTRACT_VARIANT = {
    "name",
    "fidelity",
    "fidelity_metric",
    "throughput",
    "latency_ms",
    "size_bytes",
    "peak_memory_bytes",
}


def _coscale(*args: str, home: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COSCALE_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "coscale.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real model (two linear layers, seeded weights) exported to ONNX."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    path = tmp_path_factory.mktemp("user") / "my_model.onnx"
    return export_onnx(
        model.eval(),
        (torch.zeros(1, 16),),
        path,
        input_names=["features"],
        output_names=["scores"],
        dynamic_axes={"features": {0: "batch"}, "scores": {0: "batch"}},
    )


def test_profile_a_users_onnx_file(onnx_file: Path, tmp_path: Path) -> None:
    out, prof = tmp_path / "out.json", tmp_path / "profile.json"
    run = _coscale(
        "profile",
        str(onnx_file),
        "--quick",
        "--threads",
        "1",
        "--json",
        str(out),
        "--out",
        str(prof),
        home=tmp_path / "home",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    data = json.loads(out.read_text())
    assert set(data) >= CONTRACT_TOP
    assert data["hardware"]["fingerprint"] == fingerprint(hardware_info())
    names = [v["name"] for v in data["variants"]]
    assert data["baseline"] == names[0]
    for v in data["variants"]:
        assert set(v) >= CONTRACT_VARIANT
        assert set(v["latency_ms"]) == {"1", "8", "64"}
        for point in v["latency_ms"].values():
            assert 0 < point["p50"] <= point["p99"]
        assert v["throughput"] > 0 and v["size_bytes"] > 0 and v["peak_memory_bytes"] > 0
    assert data["variants"][0]["speedup"] == 1.0
    # the profile file holds the same content; the table names every variant
    assert json.loads(prof.read_text()) == data
    for name in names:
        assert name in run.stdout


def test_default_profile_path_is_in_the_cache(onnx_file: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    run = _coscale("profile", str(onnx_file), "--quick", "--threads", "1", home=home)
    assert run.returncode == 0, run.stdout + run.stderr
    written = list((home / "profiles").glob("*.json"))
    assert len(written) == 1
    assert written[0].name.endswith(f"-{fingerprint(hardware_info())}.json")


@pytest.mark.parametrize(
    "args",
    [
        ["no-such-model"],
        ["{corrupt}"],
        ["{onnx}", "--variants", "turbo", "--quick"],
    ],
)
def test_bad_input_exits_2_without_traceback(
    args: list[str], onnx_file: Path, tmp_path: Path
) -> None:
    corrupt = tmp_path / "broken.onnx"
    corrupt.write_bytes(b"this is not an onnx model")
    argv = [a.format(corrupt=corrupt, onnx=onnx_file) for a in args]
    run = _coscale("profile", *argv, home=tmp_path / "home", timeout=120)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert "error" in run.stderr
    shown = {"no-such-model": "no-such-model", "turbo": "turbo"}
    expected = next((shown[a] for a in argv if a in shown), "broken.onnx")
    assert expected in run.stderr
