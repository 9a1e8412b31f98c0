"""Overload, short form (issue 7): a real ``coscale serve`` (one MiniLM worker process;
the model, not HTTP, is the bottleneck) offered 3× the capacity measured in the same
run, for 20 s. The requests shed get 429 quickly (p99 from the send within 2 × SLO),
nothing else is answered, nothing is lost (counted at the client), and the resident
memory of the server and its worker grows < 10 % between the first and the last third
of the run.

Not checked here: the issue's "admitted requests keep p99 within the SLO". Deadline
admission scales its margin with each request's predicted time (a learned stretch,
bounded by the learned additive error), holds the peaks of both for a minute and trusts
them only as its reports age (:class:`~coscale.policies.admission.DeadlineAdmission`),
and the server freezes its start-up heap out of the garbage collector
(:mod:`coscale.runtime.heap`). On a quiet machine the 60-s form met it in the three runs
since (30 Nov, docs/benchmarks.md: 455–474 ms at 446–471 req/s offered; 498–559 ms
before); in 20 s on a shared CI machine the flood's first seconds, where no feedback has
arrived yet, weigh three times as much. The benchmark checks it and reports the figure.

The long form is ``benchmarks/bench_reliability.py overload``; both run
:func:`bench_reliability.run_overload`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_reliability as rel  # noqa: E402

pytestmark = pytest.mark.integration

DURATION_S = 20.0


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rel.ensure_profile("minilm", tmp_path_factory.mktemp("profile"))


def test_three_times_capacity_sheds_fast_and_keeps_the_slo(profile: Path, tmp_path: Path) -> None:
    r = asyncio.run(rel.run_overload(tmp_path, profile=profile, duration_s=DURATION_S))
    print(json.dumps(r, indent=1, default=rel._default))
    acc = r["accounting"]
    rel.assert_all_answered(r)
    # 3x capacity: a large share must be shed, and what is admitted is served
    assert acc["statuses"].get("429", 0) >= 0.3 * acc["sent"], acc
    assert acc["statuses"].get("200", 0) > 0, acc
    assert r["rss"]["samples"] >= 10
    # 429s within 2 × the SLO: before the workers ran at a lower priority than the
    # server they took 1.4 s (p99); quiet runs now take 0.1–0.25 s
    problems = rel.overload_passed(r, admitted_slo=False, fast_429_ms=2 * r["slo_ms"])
    assert not problems, problems
