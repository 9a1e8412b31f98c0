"""`coscale serve` end to end: a real server process on 127.0.0.1 with real worker processes,
real requests over a real socket, /metrics, and SIGTERM while requests are in flight."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
import yaml
from sklearn.datasets import load_digits

from coscale.accel.cache import cache_dir
from coscale.accel.zoo import get_family
from coscale.catalog.profiles import (
    ProfileFile,
    default_profile_path,
    load_profile,
    save_profile,
)
from coscale.errors import ProfileError
from coscale.telemetry.prometheus import CONTENT_TYPE, parse_text

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "digits.yaml"
STOPPED = re.compile(
    r"stopped: (?P<completed>[\d,]+) completed, (?P<failed>[\d,]+) failed, "
    r"(?P<rejected>[\d,]+) rejected, (?P<lost>[\d,]+) lost"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This machine's digits-cnn profile, or a quick one of three variants."""
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


class Server:
    """``coscale serve`` in a subprocess; stdout/stderr go to files."""

    def __init__(self, args: list[str], tmp: Path, env: dict[str, str] | None = None) -> None:
        self.out = tmp / "serve.out"
        self.err = tmp / "serve.err"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "coscale.cli", "serve", *args],
            stdout=self.out.open("w"),
            stderr=self.err.open("w"),
            env={**os.environ, "COLUMNS": "200", **(env or {})},
            cwd=ROOT,
        )

    def stderr(self) -> str:
        return self.err.read_text()

    def wait_ready(self, base: str, timeout: float = 240.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited {self.proc.returncode}:\n{self.stderr()}")
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"server not ready after {timeout} s:\n{self.stderr()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture
def server(tmp_path: Path, profile_path: Path) -> Iterator[tuple[Server, str]]:
    port = free_port()
    args = [str(EXAMPLE), "--port", str(port), "--profile", str(profile_path)]
    srv = Server([*args, "--records", str(tmp_path / "records.parquet")], tmp_path)
    try:
        yield srv, f"http://127.0.0.1:{port}"
    finally:
        srv.stop()


async def _closed_loop(
    base: str, images: list[list[float]], clients: int, stop_at: float, proc: subprocess.Popen[Any]
) -> tuple[list[int], list[str], int]:
    """``clients`` loops sending 8 images each, until their request fails to connect.

    Returns every status received, every transport error's class name, and how many
    200 responses arrived after SIGTERM (sent at ``stop_at`` on the loop's clock).
    """
    statuses: list[int] = []
    errors: list[str] = []
    after = 0
    loop = asyncio.get_running_loop()

    async def client(k: int, http: httpx.AsyncClient) -> None:
        nonlocal after
        i = k
        while True:
            body = {"inputs": images[(i * 8) % 1000 : (i * 8) % 1000 + 8]}
            try:
                resp = await http.post("/v1/models/digits/infer", json=body)
            except httpx.TransportError as exc:
                errors.append(type(exc).__name__)
                if loop.time() >= stop_at:
                    return
                continue
            statuses.append(resp.status_code)
            if loop.time() >= stop_at and resp.status_code == 200:
                after += 1
            if resp.status_code == 200:
                assert len(resp.json()["outputs"]) == 8
            else:  # an answer all the same: the documented error shape
                assert set(resp.json()) == {"error", "message"}
            i += clients

    async def terminate() -> None:
        await asyncio.sleep(max(0.0, stop_at - loop.time()))
        proc.send_signal(signal.SIGTERM)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
        await asyncio.gather(terminate(), *(client(k, http) for k in range(clients)))
    return statuses, errors, after


def test_serve_answers_exports_metrics_and_drains_on_sigterm(server: tuple[Server, str]) -> None:
    srv, base = server
    srv.wait_ready(base)
    assert httpx.get(base + "/healthz").json() == {"status": "ok"}
    data = load_digits()
    images: list[list[float]] = data.data.tolist()
    ok = 0

    # real requests over a real socket
    with httpx.Client(base_url=base, timeout=30) as http:
        correct = 0
        for start in range(0, 200, 10):
            resp = http.post("/v1/models/digits/infer", json={"inputs": images[start : start + 10]})
            assert resp.status_code == 200, resp.text
            ok += 1
            labels = [o["label"] for o in resp.json()["outputs"]]
            correct += int(np.sum(np.array(labels) == data.target[start : start + 10]))
        assert correct / 200 >= 0.9
        bad = http.post("/v1/models/digits/infer", json={"inputs": [[0] * 63]})
        assert bad.status_code == 422 and bad.json()["error"] == "invalid_input"
        missing = http.post("/v1/models/nope/infer", json={"inputs": [[0] * 64]})
        assert missing.status_code == 404 and missing.json()["error"] == "unknown_model"
        assert "/v1/models/{model}/infer" in http.get("/openapi.json").json()["paths"]
        (model,) = http.get("/v1/models").json()["models"]
        pids = [r["pid"] for r in model["replicas"] if r["state"] == "ready"]
        assert pids and all(isinstance(p, int) and psutil.pid_exists(p) for p in pids)
        time.sleep(0.5)  # a few sampler ticks
        metrics = http.get("/metrics")

    assert metrics.headers["content-type"] == CONTENT_TYPE
    parsed = parse_text(metrics.text)
    assert all(name.startswith("coscale_") for name in parsed)
    done = [v for lab, v in parsed["coscale_requests_total"] if lab["outcome"] == "completed"]
    assert sum(done) == ok
    memory = dict((lab["replica"], v) for lab, v in parsed["coscale_replica_memory_bytes"])
    assert memory and all(v > 10_000_000 for v in memory.values())  # real worker processes
    ((energy_labels, energy),) = parsed["coscale_energy_joules_total"]
    assert energy > 0 and energy_labels["source"] in ("rapl", "model:local-2vcpu")
    assert "coscale_performance_score" in parsed

    # SIGTERM while 16 closed-loop clients keep requests in flight
    async def load() -> tuple[list[int], list[str], int]:
        stop_at = asyncio.get_running_loop().time() + 1.0
        return await _closed_loop(base, images, 16, stop_at, srv.proc)

    statuses, errors, after = asyncio.run(load())
    print(f"closed loop: {Counter(statuses)} ({after} answered after SIGTERM), errors {errors}")
    code = srv.proc.wait(120)
    err = srv.stderr()
    assert code == 0, err
    # every request the server accepted was answered: 200, or 429 when admission control
    # shed it (optimized-b), or 504 if it could not be served in time — and the server's
    # own counts agree with what the clients received, with nothing lost
    assert set(statuses) <= {200, 429, 504}, f"statuses {sorted(set(statuses))}"
    assert after > 0, "no request was in flight when SIGTERM arrived"
    assert set(errors) <= {"ConnectError", "RemoteProtocolError", "ReadError"}, errors
    stopped = STOPPED.search(err)
    assert stopped is not None, err
    counts = {k: int(v.replace(",", "")) for k, v in stopped.groupdict().items()}
    assert counts == {
        "completed": ok + statuses.count(200),
        "failed": statuses.count(504),
        "rejected": statuses.count(429),
        "lost": 0,
    }
    # --records: one row per answered request, the same outcomes as the counts
    table = pq.read_table(srv.err.parent / "records.parquet").to_pydict()
    outcomes = Counter(table["outcome"])
    assert len(table["outcome"]) == counts["completed"] + counts["failed"] + counts["rejected"]
    assert (outcomes["completed"], outcomes["rejected"]) == (
        counts["completed"],
        counts["rejected"],
    ), outcomes
    done = [i for i, o in enumerate(table["outcome"]) if o == "completed"]
    assert all(table["model"][i] == "digits" and table["service_s"][i] > 0 for i in done)
    assert all(table["finish"][i] >= table["arrival"][i] for i in done)
    for pid in pids:  # the worker processes are gone
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(httpx.ConnectError):
        httpx.get(base + "/healthz", timeout=2)


def test_non_loopback_without_tenants_is_refused(tmp_path: Path) -> None:
    srv = Server([str(EXAMPLE), "--host", "0.0.0.0", "--port", str(free_port())], tmp_path)
    assert srv.proc.wait(120) == 2
    err = srv.stderr()
    assert "tenants_required" in err and "tenants:" in err and "key_env" in err


def test_serve_profiles_first_when_there_is_no_profile(tmp_path: Path) -> None:
    """A fresh cache: serve measures a quick profile (progress on stderr), saves it, serves."""
    home = tmp_path / "home"
    weights = cache_dir("models", "digits-cnn")
    get_family("digits-cnn").model  # noqa: B018 - trains or loads the shared weights
    shutil.copytree(weights, home / "models" / "digits-cnn")
    scenario = yaml.safe_load(EXAMPLE.read_text())
    scenario["models"][0]["variants"] = ["fp32-eager", "onnx-fp32"]
    path = tmp_path / "digits-two.yaml"
    path.write_text(yaml.safe_dump(scenario))
    port = free_port()
    srv = Server([str(path), "--port", str(port)], tmp_path, env={"COSCALE_HOME": str(home)})
    try:
        srv.wait_ready(f"http://127.0.0.1:{port}", timeout=300)
        resp = httpx.post(
            f"http://127.0.0.1:{port}/v1/models/digits/infer", json={"inputs": [[0] * 64]}
        )
        assert resp.status_code == 200
        srv.proc.send_signal(signal.SIGINT)
        assert srv.proc.wait(120) == 0
    finally:
        srv.stop()
    err = srv.stderr()
    assert "quick mode" in err and "profile written to" in err
    (written,) = (home / "profiles").glob("digits-cnn-*.json")
    names = {v["name"] for v in json.loads(written.read_text())["variants"]}
    assert names == {"fp32-eager", "onnx-fp32"}
