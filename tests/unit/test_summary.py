"""Run summaries from per-request records: one test per formula and edge case."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from coscale.errors import CoscaleError
from coscale.telemetry.summary import (
    NO_OUTCOME,
    OUTCOME_CODES,
    RequestRecords,
    outcome_of,
    summarize,
    summary_to_json,
)
from coscale.types import Outcome

C = OUTCOME_CODES[Outcome.COMPLETED]
F = OUTCOME_CODES[Outcome.FAILED]
R = OUTCOME_CODES[Outcome.REJECTED]
T = OUTCOME_CODES[Outcome.TIMED_OUT]
NAN = math.nan
INF = math.inf


def _summary(arrival, finish, outcome, deadline, **kw):  # type: ignore[no-untyped-def]
    records = RequestRecords(
        np.array(arrival, float), np.array(finish, float), np.array(outcome), np.array(deadline)
    )
    args = {"preset": "p", "scenario": "s", "cost_usd": 1.5, "energy_j": 20.0, **kw}
    return summarize(records, **args)


# A run of 8 requests: 4 completed (2 within deadline), 1 failed, 1 timed out,
# 1 rejected, 1 never answered.
MIXED = dict(
    arrival=[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
    finish=[0.1, 1.3, 2.5, 4.0, 4.2, 6.0, 6.0, NAN],
    outcome=[C, C, C, C, F, T, R, NO_OUTCOME],
    deadline=[0.2, 1.2, 3.0, 3.5, INF, 5.5, 6.5, 8.0],
)


def test_counts() -> None:
    s = _summary(**MIXED)
    assert (s.requests, s.completed, s.rejected, s.lost) == (8, 4, 1, 1)
    assert s.failed == 2  # FAILED + TIMED_OUT
    assert s.extra["timed_out"] == 1
    assert s.to_dict()["timed_out"] == 1


def test_latency_percentiles_are_over_completed_requests_in_ms() -> None:
    s = _summary(**MIXED)
    lat_ms = np.array([0.1, 0.3, 0.5, 1.0]) * 1000
    assert s.latency_ms.mean == pytest.approx(lat_ms.mean())
    assert s.latency_ms.p50 == pytest.approx(np.percentile(lat_ms, 50))
    assert s.latency_ms.p90 == pytest.approx(np.percentile(lat_ms, 90))
    assert s.latency_ms.p99 == pytest.approx(np.percentile(lat_ms, 99))
    assert s.latency_ms.p50 == pytest.approx(400.0)  # linear interpolation of 300 and 500


def test_makespan_throughput_slo_and_reliability() -> None:
    s = _summary(**MIXED)
    # latest end is the last arrival (7.0): the unanswered request extends the run.
    assert s.makespan_s == pytest.approx(7.0)
    assert s.throughput_rps == pytest.approx(4 / 7.0)
    assert s.slo_attainment == pytest.approx(2 / 8)  # requests 0 and 2 met their deadline
    assert s.reliability == pytest.approx(4 / (8 - 1))
    assert (s.cost_usd, s.energy_j, s.preset, s.scenario) == (1.5, 20.0, "p", "s")


def test_makespan_is_last_finish_minus_first_arrival() -> None:
    s = _summary([2.0, 3.0], [2.5, 9.0], [C, C], [INF, INF])
    assert s.makespan_s == pytest.approx(7.0)
    assert s.throughput_rps == pytest.approx(2 / 7.0)


def test_given_makespan_overrides_the_records() -> None:
    s = _summary(**MIXED, makespan_s=10.0)
    assert s.makespan_s == 10.0
    assert s.throughput_rps == pytest.approx(0.4)


def test_deadline_met_exactly_counts() -> None:
    s = _summary([0.0], [1.0], [C], [1.0])
    assert s.slo_attainment == 1.0


def test_no_requests() -> None:
    s = summarize(RequestRecords.empty(), preset="p", scenario="s", cost_usd=0.0, energy_j=0.0)
    assert (s.requests, s.completed, s.failed, s.rejected, s.lost) == (0, 0, 0, 0, 0)
    assert (s.latency_ms.p50, s.latency_ms.p99, s.latency_ms.mean) == (0.0, 0.0, 0.0)
    assert s.makespan_s == 0.0 and s.throughput_rps == 0.0
    assert s.slo_attainment == 1.0 and s.reliability == 1.0


def test_all_rejected() -> None:
    s = _summary([0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [R, R, R], [1.0, 2.0, 3.0])
    assert s.rejected == 3 and s.completed == 0
    assert s.reliability == 1.0  # nothing was admitted
    assert s.slo_attainment == 0.0
    assert s.latency_ms.mean == 0.0
    assert s.throughput_rps == 0.0


def test_all_lost_makes_reliability_zero() -> None:
    s = _summary([0.0, 1.0], [NAN, NAN], [NO_OUTCOME, NO_OUTCOME], [INF, INF])
    assert s.lost == 2 and s.reliability == 0.0
    assert s.makespan_s == pytest.approx(1.0)


def test_records_validation() -> None:
    with pytest.raises(CoscaleError, match="shape"):
        RequestRecords(np.zeros(2), np.zeros(3), np.zeros(2), np.zeros(2))
    with pytest.raises(CoscaleError, match="unknown outcome code 9"):
        RequestRecords(np.zeros(1), np.zeros(1), np.array([9]), np.zeros(1))


def test_outcome_codes_round_trip() -> None:
    assert outcome_of(NO_OUTCOME) is None
    for outcome, code in OUTCOME_CODES.items():
        assert outcome_of(code) is outcome
    assert len(set(OUTCOME_CODES.values())) == len(Outcome)
    with pytest.raises(CoscaleError):
        outcome_of(42)


def test_records_slicing_and_latencies() -> None:
    rec = RequestRecords(
        np.array([0.0, 1.0, 2.0]), np.array([0.5, NAN, 2.25]), np.array([C, F, C]), np.full(3, INF)
    )
    assert rec.latencies_s().tolist() == [0.5, 0.25]
    assert len(rec[1:]) == 2
    assert rec[rec.outcome == C].arrival.tolist() == [0.0, 2.0]


def test_summary_to_json_has_the_contract_keys(tmp_path) -> None:  # type: ignore[no-untyped-def]
    s = _summary(**MIXED, extra={"note": "x"})
    path = summary_to_json(s, tmp_path / "deep" / "run.json")
    data = json.loads(path.read_text())
    for key in [
        "requests",
        "completed",
        "failed",
        "rejected",
        "lost",
        "latency_ms",
        "throughput_rps",
        "makespan_s",
        "cost_usd",
        "energy_j",
        "slo_attainment",
        "reliability",
        "preset",
        "scenario",
    ]:
        assert key in data
    assert set(data["latency_ms"]) == {"p50", "p90", "p99", "mean"}
    assert data["note"] == "x"
    assert data["requests"] == 8
