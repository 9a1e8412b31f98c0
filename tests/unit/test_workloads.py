"""Workloads: the columnar type, the generators, and real-trace replay (stats from the README)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from coscale.errors import CoscaleError
from coscale.sim import workloads as W
from coscale.sim.traces import (
    TraceError,
    detect_format,
    load_trace,
    read_servegen,
    servegen_rate_curve,
)
from coscale.sim.workloads import Workload

REPO = Path(__file__).resolve().parents[2]
TRACE_ROOTS = (REPO / "coscale" / "data" / "traces", Path("/work/shared/traces"))


def _trace(rel: str) -> Path:
    """A bundled trace: coscale/data/traces first, then the shared copy."""
    for root in TRACE_ROOTS:
        if (root / rel).exists():
            return root / rel
    pytest.skip(f"trace {rel} is not available here")


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- the Workload type ------------------------------------------------------------------


def _small() -> Workload:
    return Workload(
        np.array([0.5, 1.0, 2.5, 4.0]),
        np.array([10, 20, 30, 40]),
        np.array([0, 1, 0, 1]),
        ("a", "b"),
        "small",
        duration_s=5.0,
    )


def test_workload_columns_and_defaults() -> None:
    w = _small()
    assert w.times.dtype == np.float64 and w.seq_lens.dtype == np.int32
    assert w.tenants.dtype == np.int32
    assert len(w) == 4 and w.mean_rate == pytest.approx(0.8)
    assert Workload(np.array([1.0, 3.0]), np.zeros(2), np.zeros(2)).duration_s == 3.0


@pytest.mark.parametrize(
    ("times", "seq", "ten", "names", "duration", "match"),
    [
        ([2.0, 1.0], [0, 0], [0, 0], ("a",), -1.0, "sorted"),
        ([-1.0, 1.0], [0, 0], [0, 0], ("a",), -1.0, ">= 0"),
        ([0.0, 1.0], [0], [0, 0], ("a",), -1.0, "one length"),
        ([0.0, 1.0], [0, -5], [0, 0], ("a",), -1.0, "seq_lens"),
        ([0.0, 1.0], [0, 0], [0, 1], ("a",), -1.0, "tenant index"),
        ([0.0, 1.0], [0, 0], [0, 0], ("a",), 0.5, "before the last"),
    ],
)
def test_workload_validation(times, seq, ten, names, duration, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CoscaleError, match=match):
        Workload(np.array(times), np.array(seq), np.array(ten), names, "bad", duration)


def test_window_selects_half_open_range_and_rebases() -> None:
    w = _small().window(1.0, 3.0)  # [1.0, 4.0)
    assert w.times.tolist() == [0.0, 1.5]
    assert w.seq_lens.tolist() == [20, 30]
    assert w.tenants.tolist() == [1, 0]
    assert w.duration_s == 3.0 and w.tenant_names == ("a", "b")
    with pytest.raises(CoscaleError):
        _small().window(-1.0, 1.0)


def test_scale_time_is_a_speed_up() -> None:
    w = _small().scale_time(2.0)
    assert w.times.tolist() == [0.25, 0.5, 1.25, 2.0]
    assert w.duration_s == 2.5 and w.mean_rate == pytest.approx(1.6)
    assert w.seq_lens.tolist() == [10, 20, 30, 40]
    with pytest.raises(CoscaleError):
        _small().scale_time(0.0)


def test_rate_series() -> None:
    t, rate = _small().rate_series(2.0)  # bins [0,2) [2,4) [4,6)
    assert t.tolist() == [0.0, 2.0, 4.0]
    assert rate.tolist() == [1.0, 0.5, 0.5]
    assert _small().rate_series(10.0)[1].tolist() == [0.4]
    with pytest.raises(CoscaleError):
        _small().rate_series(0.0)


def test_seq_len_helpers_and_clamp() -> None:
    rng = _rng(1)
    lens = W.lognormal_seq_lens(100_000, 300.0, 0.8, rng, max_len=2048)
    assert lens.dtype == np.int32
    assert np.median(lens) == pytest.approx(300.0, rel=0.03)
    assert lens.min() >= 1 and lens.max() == 2048
    pool = np.array([7, 11, 13])
    drawn = W.resample_seq_lens(10_000, pool, rng, max_len=12)
    assert set(drawn.tolist()) == {7, 11, 12}
    assert W.constant_seq_lens(3, 5).tolist() == [5, 5, 5]
    assert _small().clamp_seq_lens(25).seq_lens.tolist() == [10, 20, 25, 25]
    with pytest.raises(CoscaleError):
        W.resample_seq_lens(1, [], rng)


def test_superpose_merges_in_time_order_and_tenants_by_name() -> None:
    a = _small()
    b = Workload(np.array([0.7, 3.0]), np.array([1, 2]), np.array([0, 0]), ("b",), "b", 6.0)
    m = W.superpose([a, b])
    assert m.times.tolist() == [0.5, 0.7, 1.0, 2.5, 3.0, 4.0]
    assert m.tenant_names == ("a", "b")
    assert [m.tenant_names[i] for i in m.tenants] == ["a", "b", "b", "a", "b", "b"]
    assert m.duration_s == 6.0


def test_requests_carry_deadlines_and_tenants() -> None:
    reqs = list(_small().requests("bert", 0.25, first_id=10))
    assert [r.id for r in reqs] == [10, 11, 12, 13]
    assert reqs[1].tenant == "b" and reqs[1].seq_len == 20
    assert reqs[2].deadline == pytest.approx(2.75)
    assert reqs[0].model == "bert"


# -- generators -------------------------------------------------------------------------


def test_poisson_counts_gaps_and_determinism() -> None:
    w = W.poisson(1000.0, 1000.0, _rng(3))
    assert len(w) == pytest.approx(1_000_000, abs=5_000)  # sd 1000
    gaps = np.diff(w.times)
    assert gaps.mean() == pytest.approx(1e-3, rel=0.01)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.01)  # exponential: CV 1
    counts = np.bincount((w.times // 1.0).astype(int))
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.1)  # Poisson counts
    assert w.times[0] >= 0 and w.times[-1] < 1000.0 and w.duration_s == 1000.0
    again = W.poisson(1000.0, 1000.0, _rng(3))
    assert np.array_equal(w.times, again.times)
    assert not np.array_equal(w.times[:100], W.poisson(1000.0, 1000.0, _rng(4)).times[:100])
    assert len(W.poisson(0.0, 10.0, _rng())) == 0


def test_mmpp_mean_rate_and_burstiness() -> None:
    calm, burst, mc, mb = 50.0, 500.0, 40.0, 10.0
    w = W.mmpp(calm, burst, mc, mb, 20_000.0, _rng(5))
    expected = (calm * mc + burst * mb) / (mc + mb)  # 140/s
    assert w.mean_rate == pytest.approx(expected, rel=0.06)
    counts = np.bincount((w.times // 1.0).astype(int))
    assert counts.var() / counts.mean() > 20  # far over-dispersed vs Poisson (1)
    # equal rates make it a plain Poisson process
    flat = W.mmpp(100.0, 100.0, 5.0, 5.0, 5_000.0, _rng(6))
    fc = np.bincount((flat.times // 1.0).astype(int))
    assert fc.var() / fc.mean() == pytest.approx(1.0, abs=0.1)
    assert np.array_equal(w.times, W.mmpp(calm, burst, mc, mb, 20_000.0, _rng(5)).times)
    with pytest.raises(CoscaleError):
        W.mmpp(1.0, 2.0, 0.0, 1.0, 10.0, _rng())


def test_diurnal_follows_the_rate_curve() -> None:
    period = 1000.0
    w = W.diurnal(200.0, 0.8, period, 10 * period, _rng(7))
    assert w.mean_rate == pytest.approx(200.0, rel=0.01)
    phase = np.mod(w.times, period)
    t, rate = Workload(
        np.sort(phase), np.zeros(len(w)), np.zeros(len(w)), duration_s=period
    ).rate_series(period / 20)
    rate = rate / 10  # 10 periods folded
    expected = 200.0 * (1 - 0.8 * np.cos(2 * np.pi * (t + period / 40) / period))
    assert rate == pytest.approx(expected, rel=0.06)
    assert rate[0] < 0.3 * rate[10]  # trough at t = 0, peak at period/2
    with pytest.raises(CoscaleError):
        W.diurnal(1.0, 1.5, 10.0, 10.0, _rng())


def test_generators_make_millions_of_arrivals() -> None:
    w = W.poisson(2_000.0, 1_000.0, _rng(8))
    assert len(w) > 1_900_000
    assert np.all(np.diff(w.times) >= 0)


# -- real traces ------------------------------------------------------------------------


def test_azure_code_trace_matches_readme() -> None:
    path = _trace("azure_llm_2023/AzureLLMInferenceTrace_code.csv")
    assert detect_format(path) == "azure"
    w = load_trace(path, rng=_rng())
    assert len(w) == 8_819
    assert w.mean_rate == pytest.approx(2.6, abs=0.05)
    assert w.rate_series(1.0)[1].max() == 67.0  # 67 req/s peak second
    assert w.times[0] == 0.0 and w.duration_s == pytest.approx(3_436, abs=1)
    assert w.seq_lens[:2].tolist() == [4808, 3180]  # ContextTokens of the first rows
    gaps = np.diff(w.times)
    assert gaps.std() / gaps.mean() > 10  # "inter-arrival CV 13"
    assert int((gaps > 30).sum()) == 25  # "25 silent gaps > 30 s"
    clamped = load_trace(path, rng=_rng(), max_seq_len=512)
    assert clamped.seq_lens.max() == 512


def test_azure_conv_and_mooncake_match_readme() -> None:
    conv = load_trace(_trace("azure_llm_2023/AzureLLMInferenceTrace_conv.csv"), rng=_rng())
    assert len(conv) == 19_366
    assert conv.mean_rate == pytest.approx(5.5, abs=0.1)
    path = _trace("mooncake_fast25/conversation_trace.jsonl")
    assert detect_format(path) == "mooncake"
    moon = load_trace(path, rng=_rng())
    assert len(moon) == 12_031
    assert moon.seq_lens[:2].tolist() == [6758, 7322]
    assert moon.duration_s == pytest.approx(3_537.0)
    assert len(np.unique(moon.times)) == pytest.approx(1_180, abs=20)  # ~3-s quantised
    part = load_trace(path, rng=_rng(), start_s=600.0, duration_s=600.0)
    assert part.duration_s == 600.0 and 0 < len(part) < len(moon)
    assert part.times.min() >= 0 and part.times.max() < 600.0


def test_servegen_rate_curve_matches_readme() -> None:
    path = _trace("servegen_2025/language/m-large")
    assert detect_format(path) == "servegen"
    t, rate = servegen_rate_curve(path)
    assert len(t) == 2_016 and t[1] - t[0] == 600.0  # 14 days of 10-minute windows
    assert rate.mean() == pytest.approx(196.0, abs=1.0)
    assert rate.max() == pytest.approx(583.0, abs=1.0)
    th, hourly = servegen_rate_curve(path, bin_s=3_600)
    assert len(th) == 336 and hourly.mean() == pytest.approx(rate.mean())
    assert hourly[0] == pytest.approx(rate[:6].mean())
    with pytest.raises(TraceError, match="multiple"):
        servegen_rate_curve(path, bin_s=900)
    table = read_servegen(path)
    assert len(table.clients) == 162 and table.tenant_names[0] == "client-0"


def test_servegen_window_draws_the_published_rate_per_client() -> None:
    path = _trace("servegen_2025/language/m-large")
    start, span = 20 * 3600.0, 1800.0
    w = load_trace(path, rng=_rng(11), start_s=start, duration_s=span, rate_scale=0.5)
    t, rate = servegen_rate_curve(path)
    expected = 0.5 * rate[(t >= start) & (t < start + span)].sum() * 600.0
    assert len(w) == pytest.approx(expected, rel=0.08)
    assert w.duration_s == span and w.times.min() >= 0 and w.times.max() < span
    assert len(w.tenant_names) == 162 and w.tenant_names[5] == "client-5"
    assert (w.seq_lens == 0).all()
    # per client: count ≈ rate × span for the busiest clients
    table = read_servegen(path)
    cols = (table.starts >= start) & (table.starts < start + span)
    per_client = 0.5 * table.rate[:, cols].sum(axis=1) * 600.0
    counts = np.bincount(w.tenants, minlength=162)
    top = np.argsort(per_client)[-5:]
    assert counts[top] == pytest.approx(per_client[top], rel=0.25)
    again = load_trace(path, rng=_rng(11), start_s=start, duration_s=span, rate_scale=0.5)
    assert np.array_equal(w.times, again.times) and np.array_equal(w.tenants, again.tenants)


def _write_servegen(folder: Path, rows_by_client: dict[int, list[str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for client, rows in rows_by_client.items():
        (folder / f"chunk-{client}-trace.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_servegen_iat_laws_keep_the_fitted_shape_at_the_published_rate(tmp_path: Path) -> None:
    # one long window per client: Weibull c = 0.5 (CV √5) and Gamma k = 0.25 (CV 2)
    folder = _write_servegen(
        tmp_path / "sg",
        {
            3: ["0,10.0,2.2,Weibull,0.5,0.03", "20000,0,0,,0,0"],
            7: ["0,5.0,2.0,Gamma,0.25,0.8", "20000,0,0,,0,0"],
        },
    )
    w = load_trace(folder, rng=_rng(2))
    assert w.tenant_names == ("client-3", "client-7")
    for idx, rate, cv in ((0, 10.0, math.sqrt(5.0)), (1, 5.0, 2.0)):
        times = w.times[w.tenants == idx]
        gaps = np.diff(times)
        assert len(times) == pytest.approx(rate * 20_000, rel=0.05)
        assert gaps.mean() == pytest.approx(1 / rate, rel=0.05)
        assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.1)


def test_servegen_windows_start_in_the_stationary_state(tmp_path: Path) -> None:
    # Gamma k = 1/9 (CV 3), mean gap 1 s, in 2,000 short windows. In a stationary renewal
    # process the wait from a window's start to its first arrival has mean
    # E[X²]/(2E[X]) = (1 + CV²)/2 = 5 s; restarting the process at each window would give 1 s.
    rows = [f"{60 * i},1.0,3.0,Gamma,{1 / 9},9.0" for i in range(2_000)]
    w = load_trace(_write_servegen(tmp_path / "sg", {0: rows}), rng=_rng(4))
    window = (w.times // 60).astype(int)
    first = np.full(2_000, np.nan)
    np.fmin.at(first, window, w.times - window * 60.0)
    assert np.nanmean(first) == pytest.approx(5.0, rel=0.12)
    assert len(w) == pytest.approx(120_000, rel=0.05)


def test_format_detection_and_errors(tmp_path: Path) -> None:
    rng = _rng()
    with pytest.raises(TraceError, match="does not exist"):
        load_trace(tmp_path / "missing.csv", rng=rng)
    junk = tmp_path / "junk.csv"
    junk.write_text("hello,world\n1,2\n")
    with pytest.raises(TraceError, match="cannot tell the format") as info:
        load_trace(junk, rng=rng)
    assert info.value.fix and info.value.code == "bad_trace"
    with pytest.raises(TraceError, match="not an Azure"):
        load_trace(junk, "azure", rng=rng)
    with pytest.raises(TraceError, match="unknown trace format"):
        load_trace(junk, "parquet", rng=rng)
    bad_ts = tmp_path / "a.csv"
    bad_ts.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,5,5\n")
    with pytest.raises(TraceError, match="TIMESTAMP"):
        load_trace(bad_ts, rng=rng)
    bad_json = tmp_path / "m.jsonl"
    bad_json.write_text('{"timestamp": 0, "input_length": 3}\n{"timestamp": 5}\n')
    with pytest.raises(TraceError, match="line 2"):
        load_trace(bad_json, rng=rng)
    bad_sg = _write_servegen(tmp_path / "sg", {0: ["0,1.0,1.0,Lognormal,1,1"]})
    with pytest.raises(TraceError, match="line 1"):
        load_trace(bad_sg, rng=rng)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(TraceError, match="chunk"):
        load_trace(empty_dir, rng=rng)
    ok = tmp_path / "ok.csv"
    ok.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:01.5,5,1\n")
    with pytest.raises(TraceError, match="rate_scale applies to ServeGen") as info:
        load_trace(ok, rng=rng, rate_scale=2.0)
    assert "scale_time" in info.value.fix
    assert load_trace(ok, rng=rng).seq_lens.tolist() == [5]
