"""The simulator times queued requests out like the live data plane (10 × the SLO)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from coscale.catalog import load_catalog
from coscale.policies.admission import AdmitAll
from coscale.policies.base import Pool, VariantOption
from coscale.policies.batching import NoBatching
from coscale.policies.routing import RoundRobin
from coscale.sim.cluster import TIMEOUT_FACTOR, Arrivals, ClusterSimulator, ModelSetup, SimResult
from coscale.sim.faults import FaultModel
from coscale.telemetry.summary import OUTCOME_CODES
from coscale.types import LatencyTable, Outcome, Plan, ReplicaTarget, Snapshot

CATALOG = load_catalog()
NODE = CATALOG.get("c7a.large")
SERVICE_S = 0.05  # one request takes 50 ms: a replica serves 20/s
SLO_S = 0.1


class _Fixed:
    name = "fixed-test"

    def __init__(self, n: int) -> None:
        self.n = n

    def decide(self, snapshot: Snapshot, state: None) -> tuple[Any, None]:
        return Plan(snapshot.time, (ReplicaTarget("m", "v", NODE.name, self.n),)), None


class _KillAt:
    """Kills the first replica asked about at ``at_s`` (no other fault)."""

    def __init__(self, at_s: float) -> None:
        self.at_s, self.used = at_s, False

    def rates_per_s(self, node: Any, spot: bool) -> tuple[float, float]:
        return 0.0, 0.0

    def draw(self, node: Any, spot: bool, rng: Any) -> tuple[float, str] | None:
        if self.used:
            return None
        self.used = True
        return self.at_s, "failure"


def _run(
    rate: float, seconds: float, *, factor: float | None, faults: Any = None, replicas: int = 1
) -> SimResult:
    table = LatencyTable((1,), (0,), ((SERVICE_S,),))
    option = VariantOption("m", "v", NODE, table, 0.99)
    setup = ModelSetup("m", SLO_S, (option,), RoundRobin(), NoBatching(), AdmitAll(), batch_limit=1)
    n = int(rate * seconds)
    arrivals = Arrivals(
        np.arange(n, dtype=np.float64) / rate,
        np.zeros(n, np.int32),
        np.zeros(n, np.int32),
        np.zeros(n, np.int32),
        ("default",),
        seconds,
    )
    sim = ClusterSimulator(
        [setup],
        _Fixed(replicas),
        [Pool(NODE, replicas + 1)],
        arrivals,
        interval_s=1000.0,
        rng=np.random.default_rng(0),
        initial=(ReplicaTarget("m", "v", NODE.name, replicas),),
        faults=faults or FaultModel(0.0),
        timeout_factor=factor,
    )
    return sim.run()


def test_a_request_queued_past_ten_slos_times_out_then_and_the_rest_is_served() -> None:
    # 40/s offered to a replica serving 20/s for 20 s: half the requests must time out
    result = _run(40.0, 20.0, factor=TIMEOUT_FACTOR)
    log, s = result.requests, result.summary
    timeout = TIMEOUT_FACTOR * SLO_S
    out = log.outcome == OUTCOME_CODES[Outcome.TIMED_OUT]
    done = log.outcome == OUTCOME_CODES[Outcome.COMPLETED]
    assert out.sum() > 0 and done.sum() + out.sum() == len(log)
    assert s.failed == out.sum() == s.extra["timed_out_in_queue"]
    # answered exactly at the timeout, never served
    assert np.allclose(log.finish[out] - log.arrival[out], timeout)
    assert np.all(log.replica[out] == -1)
    # what was served started within its timeout, so latency ≤ timeout + service
    assert np.all(log.service_start[done] - log.arrival[done] <= timeout + 1e-9)
    assert s.latency_ms.p99 <= (timeout + SERVICE_S) * 1000.0 + 1e-6
    # the replica never idles while requests wait: 20/s until the last backlog is served
    assert done.sum() == pytest.approx(20.0 * (20.0 + timeout), abs=2)
    # the queue is the timeout's worth of arrivals at most: the run ends soon after
    assert s.makespan_s <= 20.0 + timeout + SERVICE_S + 1e-9


def test_without_a_timeout_every_request_waits_for_its_turn() -> None:
    s = _run(40.0, 20.0, factor=None).summary
    assert s.completed == s.requests and s.failed == 0
    assert s.makespan_s == pytest.approx(800 * SERVICE_S, rel=1e-6)


def test_light_load_never_times_out() -> None:
    s = _run(10.0, 20.0, factor=TIMEOUT_FACTOR).summary
    assert s.completed == s.requests and s.extra["timed_out_in_queue"] == 0


def test_requests_put_back_after_a_kill_time_out_if_their_timeout_passed() -> None:
    # one replica, killed at 5 s with a backlog; its replacement is started at once (the
    # live controller's replica_lost) but is READY only after c7a.large's start-up (90 s,
    # past the run), so the whole queue times out and nothing is lost
    assert NODE.startup_s > 10.0 + TIMEOUT_FACTOR * SLO_S
    result = _run(30.0, 10.0, factor=TIMEOUT_FACTOR, faults=_KillAt(5.0))
    log, s = result.requests, result.summary
    assert s.lost == 0 and s.completed + s.failed == s.requests
    out = log.outcome == OUTCOME_CODES[Outcome.TIMED_OUT]
    assert np.all(log.finish[out] - log.arrival[out] <= TIMEOUT_FACTOR * SLO_S + 1e-9)
    assert np.all(log.finish[out] - log.arrival[out] >= 0.0)
    assert out[log.arrival > 5.0].all()  # nobody serves after the kill
    assert s.extra["failures"] == 1 and s.extra["replaced_at_once"] == 1
    assert len(result.replicas) == 2  # the killed one and its replacement, started at 5 s
    assert result.replicas[1][5] == pytest.approx(5.0)


def test_a_bad_timeout_factor_is_refused() -> None:
    from coscale.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="timeout factor"):
        _run(1.0, 1.0, factor=0.0)
