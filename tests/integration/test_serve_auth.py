"""`coscale serve` with tenants, end to end over a real socket: keys read from the
environment at startup, 401/403/200 on the wire, a missing key refused before anything
starts, and `coscale keys new` output used as a key."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coscale.accel.zoo import get_family
from coscale.catalog.profiles import (
    ProfileFile,
    default_profile_path,
    load_profile,
    save_profile,
)
from coscale.errors import ProfileError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = """\
name: digits-tenants
models:
  - {name: digits, source: digits-cnn, slo_ms: 1000, accuracy_floor: 0.9, max_batch: 64}
tenants:
  - {name: alice, key_env: ALICE_KEY, weight: 2}
  - {name: bob, rate_limit_rps: 0.5, rate_burst: 2}
policies: {preset: baseline}
workload: {generator: {kind: poisson, rate_rps: 10, duration_s: 10}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def coscale(*args: str) -> list[str]:
    return [sys.executable, "-m", "coscale.cli", *args]


def new_key(*args: str) -> str:
    done = subprocess.run(
        coscale("keys", "new", *args), capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout.strip()


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    here = default_profile_path("digits-cnn")
    try:
        load_profile(here)
        return here
    except ProfileError:
        from coscale.accel.profiler import profile_family

        result: ProfileFile = profile_family(
            get_family("digits-cnn"), variants=["fp32-eager"], batch_sizes=[1, 8], quick=True
        )
        return save_profile(result, tmp_path_factory.mktemp("profile") / "digits.json")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scenario") / "tenants.yaml"
    path.write_text(SCENARIO)
    return path


def test_a_missing_key_stops_serve_before_it_starts(scenario: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("ALICE_KEY", "COSCALE_KEY_BOB")}
    env["ALICE_KEY"] = new_key("alice")
    started = time.monotonic()
    done = subprocess.run(
        coscale("serve", str(scenario), "--port", str(free_port())),
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "COLUMNS": "300"},
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "missing_key" in done.stderr and "tenant 'bob'" in done.stderr
    assert "COSCALE_KEY_BOB" in done.stderr and "Traceback" not in done.stderr
    assert env["ALICE_KEY"] not in done.stderr
    assert time.monotonic() - started < 60  # refused at once, not after profiling


@pytest.fixture(scope="module")
def served(scenario: Path, profile_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    keys = {"alice": new_key("alice"), "bob": new_key("bob"), "admin": new_key("--admin")}
    env = {
        **os.environ,
        "ALICE_KEY": keys["alice"],
        "COSCALE_KEY_BOB": keys["bob"],
        "COSCALE_ADMIN_KEY": keys["admin"],
        "COLUMNS": "300",
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["--port", str(port), "--backend", "inprocess", "--profile", str(profile_path)]
    proc = subprocess.Popen(
        coscale("serve", str(scenario), *args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        end = time.monotonic() + 240
        while time.monotonic() < end:
            if proc.poll() is not None:
                pytest.fail(f"server exited {proc.returncode}: {proc.stderr.read()}")  # type: ignore[union-attr]
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("server not ready")
        yield base, keys
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def test_keys_on_the_wire(served: tuple[str, dict[str, str]]) -> None:
    base, keys = served

    def call(method: str, path: str, key: str | None = None, **kw: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.request(method, base + path, headers=headers, timeout=30, **kw)  # type: ignore[arg-type]

    image = [0.0] * 64
    # bob: 0.5 request/s, burst 2 — a third request at once is refused with Retry-After
    statuses = [call("GET", "/v1/models", keys["bob"]) for _ in range(3)]
    assert [r.status_code for r in statuses[:2]] == [200, 200]
    assert statuses[2].status_code == 429 and statuses[2].json()["error"] == "rate_limited"
    assert int(statuses[2].headers["retry-after"]) >= 1
    time.sleep(2.1)  # one token back for bob's next request
    assert call("GET", "/healthz").status_code == 200
    no_key = call("POST", "/v1/models/digits/infer", json={"inputs": [image]})
    assert no_key.status_code == 401 and no_key.json()["error"] == "unauthorized"
    assert no_key.headers["www-authenticate"].startswith("Bearer")
    assert call("GET", "/v1/models", "x" * 43).status_code == 401
    ok = call("POST", "/v1/models/digits/infer", keys["alice"], json={"inputs": [image] * 3})
    assert ok.status_code == 200 and len(ok.json()["outputs"]) == 3
    mine = call("GET", "/v1/stats", keys["alice"]).json()
    assert mine["tenant"] == "alice" and mine["requests"] >= 1
    assert call("GET", "/v1/stats?tenant=alice", keys["bob"]).status_code == 403
    assert call("GET", "/metrics", keys["alice"]).status_code == 403
    metrics = call("GET", "/metrics", keys["admin"])
    assert metrics.status_code == 200 and "coscale_auth_refused_total" in metrics.text
