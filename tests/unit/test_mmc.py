"""The M/M/c mode: agreement with Erlang C, determinism, input checks and the CLI."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from coscale.errors import CoscaleError
from coscale.sim.mmc import (
    MMCParams,
    erlang_c_mean_latency,
    erlang_c_wait_probability,
    run_mmc,
    simulate_mmc,
)

# (servers, utilisation, seeds, requests per seed). The server count grows with the
# utilisation so that one run mixes fast enough for a 2 % check: at ρ = 0.95 with
# c = 100 the wait is still 11 % of the latency and P(wait) ≈ 0.77. Measured spread of
# the pooled relative error over 4 seed sets: ≤ 0.72 % (σ ≈ 0.35 %) at every ρ.
CASES = [(2, 0.5, 2, 300_000), (10, 0.8, 4, 300_000), (100, 0.95, 6, 500_000)]
WARMUP = 20_000


@pytest.mark.parametrize(("servers", "rho", "seeds", "n"), CASES)
def test_mean_latency_matches_erlang_c_within_2_percent(
    servers: int, rho: float, seeds: int, n: int
) -> None:
    mu = 2.0  # 500 ms mean service
    lam = rho * servers * mu
    runs = [simulate_mmc(lam, mu, servers, n, seed=s, warmup=WARMUP) for s in range(seeds)]
    simulated_ms = float(np.mean([r.latency_ms.mean for r in runs]))
    theory_ms = erlang_c_mean_latency(lam, mu, servers) * 1000.0
    assert simulated_ms == pytest.approx(theory_ms, rel=0.02)
    waited = float(np.mean([r.extra["wait_probability"] for r in runs]))
    assert waited == pytest.approx(erlang_c_wait_probability(lam, mu, servers), abs=0.02)
    assert runs[0].extra["erlang_c_mean_latency_ms"] == pytest.approx(theory_ms)
    assert runs[0].requests == n - WARMUP and runs[0].completed == n - WARMUP
    assert runs[0].lost == 0 and runs[0].reliability == 1.0
    assert runs[0].throughput_rps == pytest.approx(lam, rel=0.02)
    assert runs[0].extra["events"] == 2 * n  # one arrival + one departure each


def test_same_seed_gives_identical_summary() -> None:
    a = simulate_mmc(8.0, 1.0, 10, 20_000, seed=3, warmup=100)
    b = simulate_mmc(8.0, 1.0, 10, 20_000, seed=3, warmup=100)
    c = simulate_mmc(8.0, 1.0, 10, 20_000, seed=4, warmup=100)
    assert a.to_dict() == b.to_dict()
    assert a.latency_ms != c.latency_ms


def test_trace_obeys_fifo_queue_invariants() -> None:
    params = MMCParams(arrival_rate=3.6, service_rate=1.0, servers=4, requests=5_000)
    tr = run_mmc(params, np.random.default_rng(1))
    assert (tr.start >= tr.arrival).all() and (tr.finish > tr.start).all()
    assert (np.diff(tr.start) >= 0).all()  # FIFO: service starts in arrival order
    # at every service start at most c requests are in service
    starts = np.sort(tr.start)
    finishes = np.sort(tr.finish)
    in_service = np.arange(1, len(starts) + 1) - np.searchsorted(finishes, starts, "right")
    assert in_service.max() <= params.servers
    # a request waits only when all c servers are busy at its arrival
    waited = tr.start > tr.arrival
    busy = np.searchsorted(np.sort(tr.start), tr.arrival, "right") - np.searchsorted(
        finishes, tr.arrival, "right"
    )
    assert (busy[waited] >= params.servers).all()


def test_erlang_c_closed_forms() -> None:
    # M/M/1: P_wait = ρ, W = 1/(μ − λ)
    assert erlang_c_wait_probability(0.7, 1.0, 1) == pytest.approx(0.7)
    assert erlang_c_mean_latency(0.7, 1.0, 1) == pytest.approx(1 / 0.3)
    # M/M/2: P_wait = 2ρ²/(1 + ρ)
    rho = 0.6
    assert erlang_c_wait_probability(2 * rho, 1.0, 2) == pytest.approx(2 * rho**2 / (1 + rho))


def _erlang_c_log_space(lam: float, mu: float, c: int) -> float:
    """Independent reference: Erlang C from the textbook sum, computed in log space."""
    a = lam / mu
    log_terms = [k * math.log(a) - math.lgamma(k + 1) for k in range(c)]
    log_last = c * math.log(a) - math.lgamma(c + 1) - math.log(1 - a / c)
    top = max([*log_terms, log_last])
    denom = sum(math.exp(t - top) for t in log_terms) + math.exp(log_last - top)
    return math.exp(log_last - top) / denom


@pytest.mark.parametrize(("c", "rho"), [(5, 0.5), (1_000, 0.8), (10_000, 0.99), (50_000, 0.999)])
def test_erlang_c_is_stable_for_large_c(c: int, rho: float) -> None:
    lam = rho * c * 1.0
    p = erlang_c_wait_probability(lam, 1.0, c)
    assert 0.0 < p < 1.0
    assert p == pytest.approx(_erlang_c_log_space(lam, 1.0, c), rel=1e-9)
    w = erlang_c_mean_latency(lam, 1.0, c)
    assert math.isfinite(w) and w > 1.0


@pytest.mark.parametrize(
    ("lam", "mu", "c", "n", "match"),
    [
        (10.0, 1.0, 10, 100, "unstable"),
        (12.0, 1.0, 10, 100, "unstable"),
        (0.0, 1.0, 1, 100, "arrival rate"),
        (-1.0, 1.0, 1, 100, "arrival rate"),
        (1.0, 0.0, 1, 100, "service rate"),
        (1.0, -2.0, 1, 100, "service rate"),
        (0.5, 1.0, 0, 100, "servers"),
        (0.5, 1.0, 1, 0, "requests"),
        (math.nan, 1.0, 1, 10, "arrival rate"),
    ],
)
def test_invalid_inputs_raise_coscale_errors(
    lam: float, mu: float, c: int, n: int, match: str
) -> None:
    with pytest.raises(CoscaleError, match=match) as info:
        simulate_mmc(lam, mu, c, n)
    assert info.value.fix
    with pytest.raises(CoscaleError, match="warm-up"):
        simulate_mmc(0.5, 1.0, 1, 10, warmup=10)


def _cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    from coscale.cli import main

    monkeypatch.setattr(sys, "argv", ["coscale", *args])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_simulate_mmc_writes_the_summary(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = tmp_path / "mmc.json"
    code = _cli(
        monkeypatch,
        "simulate", "--queue-model", "mmc", "--arrival-rate", "8", "--service-rate", "1",
        "--servers", "10", "--requests", "20000", "--warmup", "1000", "--seed", "5",
        "--json", str(out),
    )  # fmt: skip
    assert code == 0
    data = json.loads(out.read_text())
    direct = simulate_mmc(8.0, 1.0, 10, 20_000, seed=5, warmup=1_000).to_dict()
    assert data["latency_ms"] == direct["latency_ms"]
    assert data["requests"] == 19_000 and data["lost"] == 0
    assert data["erlang_c_mean_latency_ms"] == pytest.approx(1204.59, abs=0.01)


@pytest.mark.parametrize(
    "args",
    [
        ("simulate",),  # nothing to simulate
        ("simulate", "--queue-model", "mmc", "--arrival-rate", "20", "--service-rate", "1",
         "--servers", "10"),  # unstable
        ("simulate", "--queue-model", "mmc", "--arrival-rate", "2"),  # missing flags
        ("simulate", "--queue-model", "mg1", "--arrival-rate", "2"),  # unknown model
    ],
)  # fmt: skip
def test_cli_simulate_errors_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    assert _cli(monkeypatch, *args) == 2
    assert "error" in capsys.readouterr().err
