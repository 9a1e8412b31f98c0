"""Soak, short form (issue 7): a real ``coscale serve`` (one digits-cnn worker process)
at 50 % of the capacity measured in the same run for 60 s; the resident memory of the
server process and of its worker, sampled every second after a 10-s warm-up, must not
trend upward: growth (mean of the last third / mean of the first third − 1) < 5 % for
each, and nothing is lost (counted at the client).

The long form (20 minutes, growth < 5 %) is ``benchmarks/bench_reliability.py soak``;
both run :func:`bench_reliability.run_soak`.
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

DURATION_S = 60.0


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rel.ensure_profile("digits-cnn", tmp_path_factory.mktemp("profile"))


def test_a_minute_at_half_load_does_not_grow_memory(profile: Path, tmp_path: Path) -> None:
    r = asyncio.run(rel.run_soak(tmp_path, profile=profile, duration_s=DURATION_S))
    print(json.dumps(r, indent=1, default=rel._default))
    acc = r["accounting"]
    rel.assert_all_answered(r)
    assert acc["statuses"].get("200", 0) >= 0.99 * acc["sent"], acc
    rss = r["rss"]
    assert rss["samples"] >= 30 and len(rss["worker_processes"]) == 1, rss
    problems = rel.soak_passed(r, rel.SOAK_SHORT_GROWTH)
    assert not problems, problems
