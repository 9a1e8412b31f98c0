"""`coscale load` end to end: a real `coscale serve` on 127.0.0.1 (worker processes, real
digits-cnn), driven open loop (a replayed trace) and closed loop (4 clients) by the
`coscale load` command; the client's JSON summaries must account for every request and
agree with the server's own /v1/stats."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coscale.accel.zoo import get_family
from coscale.catalog.profiles import ProfileFile, default_profile_path, load_profile, save_profile
from coscale.errors import ProfileError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "digits.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This machine's digits-cnn profile, or a quick one of two variants."""
    here = default_profile_path("digits-cnn")
    try:
        load_profile(here)
        return here
    except ProfileError:
        from coscale.accel.profiler import profile_family

        result: ProfileFile = profile_family(
            get_family("digits-cnn"), variants=["onnx-fp32", "pruned-structured"], quick=True
        )
        return save_profile(result, tmp_path_factory.mktemp("profile") / "digits.json")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, profile_path: Path) -> Iterator[str]:
    """One server for the module; the tests send it no other traffic."""
    port = free_port()
    err = tmp_path_factory.mktemp("serve") / "serve.err"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coscale.cli",
            "serve",
            str(EXAMPLE),
            "--port",
            str(port),
            "--profile",
            str(profile_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=err.open("w"),
        cwd=ROOT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)


def coscale_load(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from coscale.cli import main; main()", "load", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "COLUMNS": "200"},
        cwd=ROOT,
    )


def check_summary(data: dict[str, Any], mode: str) -> None:
    assert data["mode"] == mode
    assert data["requests"] > 0
    assert data["requests"] == data["completed"] + data["failed"] + data["rejected"]
    assert data["lost"] == 0
    assert data["throughput_rps"] > 0 and data["completed"] > 0
    assert sum(data["statuses"].values()) == data["requests"]
    assert data["accuracy"] is not None and data["accuracy"] >= 0.9  # real images, real model
    for key in ("p50", "p90", "p99", "mean"):
        assert data["latency_ms"][key] > 0
    assert data["server"]["completed"] == data["completed"]  # /v1/stats grew by as much
    assert data["preset"] == "optimized-b" and data["scenario"] == "digits-local"


def test_load_open_and_closed_loop_against_a_real_server(server: str, tmp_path: Path) -> None:
    started = time.monotonic()
    open_json, closed_json = tmp_path / "open.json", tmp_path / "closed.json"
    # open loop: 3 s of the Azure conversation trace replayed 20× (~100 req/s)
    run = coscale_load(
        server, "--model", "digits", "--trace", "azure-conv", "--speedup", "20",
        "--duration", "3", "--wait-ready", "240", "--json", str(open_json),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "measured at the client" in run.stdout
    opened = json.loads(open_json.read_text())
    check_summary(opened, "trace")
    assert opened["trace"]["speedup"] == 20
    assert opened["offered_rps"] > 20 and opened["dispatch_lag_ms"]["p50"] < 100

    run = coscale_load(
        server, "--model", "digits", "--concurrency", "4", "--duration", "3",
        "--json", str(closed_json),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    closed = json.loads(closed_json.read_text())
    check_summary(closed, "closed")
    assert closed["concurrency"] == 4 and closed["connections"] == 4

    stats = httpx.get(server + "/v1/stats", timeout=10).json()
    assert stats["completed"] == opened["completed"] + closed["completed"]
    assert stats["lost"] == 0
    assert time.monotonic() - started < 120


def test_load_refuses_unknown_models_with_exit_2(server: str) -> None:
    run = coscale_load(
        server, "--model", "nope", "--rate", "5", "--duration", "1", "--wait-ready", "240"
    )
    assert run.returncode == 2
    assert "unknown_model" in run.stderr and "digits" in run.stderr
