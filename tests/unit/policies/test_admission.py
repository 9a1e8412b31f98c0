"""One test per clause of the admission docstrings (coscale/policies/admission.py)."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Any

import pytest

from coscale.errors import CoscaleError
from coscale.policies.admission import (
    AdmissionState,
    AdmitAll,
    DeadlineAdmission,
    FairQueueState,
    MarginState,
    WeightedFairQueue,
    admission_capacity,
    demand_rates,
    fair_ahead,
    fold_demand,
    fold_speeds,
    is_pressure,
    shown_speed,
    within_share,
)
from coscale.types import (
    AdmissionDecision,
    LatencyTable,
    ModelView,
    ReplicaState,
    ReplicaView,
    Request,
    Snapshot,
)


def rep(rid: str, **kw: Any) -> ReplicaView:
    base: dict[str, Any] = {
        "id": rid,
        "model": "m",
        "variant": "fp32-eager",
        "node_type": "cpu",
        "state": ReplicaState.READY,
    }
    base.update(kw)
    return ReplicaView(**base)


def req(
    i: int = 0,
    arrival: float = 10.0,
    deadline: float = 11.0,
    tenant: str = "default",
    items: int = 1,
) -> Request:
    return Request(i, "m", arrival, deadline, tenant=tenant, items=items)


def flat(s: float) -> LatencyTable:
    return LatencyTable((1,), (0,), ((s,),))


def snap(*replicas: ReplicaView, queue: int | None = 0, time: float = 10.0) -> Snapshot:
    models = () if queue is None else (ModelView("m", arrival_rate=0.0, queue_length=queue),)
    return Snapshot(time=time, models=models, replicas=replicas)


ADMIT = AdmissionDecision(True)


# ----------------------------------------------------------------------------- admit all


def test_admit_all_admits_even_without_capacity() -> None:
    assert AdmitAll().decide(req(deadline=0.0), Snapshot(0.0), None) == (ADMIT, None)


# ------------------------------------------------------------------------------ deadline

TABLES = {("fp32-eager", "cpu"): flat(0.01)}


def _capacity_snapshot(queue: int | None = 10, time: float = 10.0) -> Snapshot:
    # capacity 50 + 50 + 20 (rate only) = 120 items/s; ahead = queue + 2 + 2 + 2
    return snap(
        rep("a", capacity_rps=50.0, outstanding=2),
        rep("b", capacity_rps=50.0, outstanding=2),
        rep("c", rate=20.0, outstanding=2),
        queue=queue,
        time=time,
    )


def test_deadline_admits_when_predicted_completion_meets_deadline() -> None:
    p = DeadlineAdmission(min_samples=0, latencies=TABLES)
    predicted = 10.0 + 16 / 120 + 0.01
    d, state = p.decide(req(deadline=predicted + 1e-9), _capacity_snapshot(), None)
    # every replica busy: the wait is capacity's, so the prediction is reported back
    assert d.admit and d.promised_by == pytest.approx(predicted)
    assert state == AdmissionState()


def test_deadline_rejects_with_reason_and_overshoot_retry() -> None:
    p = DeadlineAdmission(min_samples=0, latencies=TABLES)
    predicted = 10.0 + 16 / 120 + 0.01
    d, _ = p.decide(req(deadline=10.14), _capacity_snapshot(), None)
    assert not d.admit
    assert d.retry_after_s == pytest.approx(predicted - 10.14)
    assert "misses the deadline by 0.003 s" in d.reason and "16 requests ahead" in d.reason


def test_deadline_capacity_uses_rate_when_capacity_unknown() -> None:
    p = DeadlineAdmission(min_samples=0, latencies=TABLES)
    snapshot = snap(rep("a", rate=10.0, outstanding=4), queue=0)
    # 4 / 10 + 0.01 = 0.41
    assert p.decide(req(deadline=10.41 + 1e-9), snapshot, None)[0].admit
    assert not p.decide(req(deadline=10.40), snapshot, None)[0].admit


def test_deadline_now_is_the_later_of_snapshot_time_and_arrival() -> None:
    p = DeadlineAdmission(min_samples=0, latencies=TABLES)
    snapshot = snap(rep("a", capacity_rps=100.0), queue=0, time=9.0)
    assert p.decide(req(arrival=10.0, deadline=10.0105), snapshot, None)[0].admit
    assert not p.decide(req(arrival=10.0, deadline=10.0095), snapshot, None)[0].admit
    late = snap(rep("a", capacity_rps=100.0), queue=0, time=12.0)
    assert not p.decide(req(arrival=10.0, deadline=11.0), late, None)[0].admit


def test_deadline_model_missing_from_snapshot_has_empty_queue() -> None:
    p = DeadlineAdmission(min_samples=0, latencies=TABLES)
    d, _ = p.decide(req(deadline=10.0 + 6 / 120 + 0.0101), _capacity_snapshot(queue=None), None)
    assert d.admit


def test_deadline_service_is_fastest_replica_for_this_request() -> None:
    tables = {("fp32-eager", "cpu"): flat(0.1), ("fp32-eager", "gpu"): flat(0.02)}
    p = DeadlineAdmission(min_samples=0, latencies=tables)
    snapshot = snap(
        rep("a", capacity_rps=10.0), rep("g", node_type="gpu", capacity_rps=90.0), queue=0
    )
    # 3 items: gpu 0.06 s beats cpu 0.3 s
    assert p.decide(req(items=3, deadline=10.061), snapshot, None)[0].admit
    assert not p.decide(req(items=3, deadline=10.059), snapshot, None)[0].admit


def test_deadline_service_falls_back_to_rate_then_capacity() -> None:
    p = DeadlineAdmission(min_samples=0)
    by_rate = snap(rep("a", rate=20.0, capacity_rps=40.0), queue=0)
    # capacity 40 items/s, service 2 / rate 20 = 0.1
    assert p.decide(req(items=2, deadline=10.1001), by_rate, None)[0].admit
    assert not p.decide(req(items=2, deadline=10.099), by_rate, None)[0].admit
    by_capacity = snap(rep("a", capacity_rps=40.0), queue=0)
    assert p.decide(req(items=2, deadline=10.0501), by_capacity, None)[0].admit


def test_deadline_ignores_replicas_that_are_not_ready() -> None:
    p = DeadlineAdmission(min_samples=0, latencies=TABLES)
    snapshot = snap(
        rep("a", capacity_rps=10.0, outstanding=1),
        rep("d", state=ReplicaState.DRAINING, capacity_rps=1000.0, outstanding=50),
        rep("o", model="other", capacity_rps=1000.0, outstanding=50),
        queue=0,
    )
    # ahead 1 at 10/s → 0.1 + 0.01
    assert p.decide(req(deadline=10.1101), snapshot, None)[0].admit
    assert not p.decide(req(deadline=10.1099), snapshot, None)[0].admit


def test_deadline_admits_when_capacity_is_starting() -> None:
    p = DeadlineAdmission(min_samples=0, latencies=TABLES)
    snapshot = snap(rep("s", state=ReplicaState.STARTING), queue=100)
    assert p.decide(req(deadline=10.0), snapshot, None)[0] == ADMIT  # no promise


def test_deadline_rejects_no_capacity() -> None:
    p = DeadlineAdmission(min_samples=0, latencies=TABLES)
    snapshot = snap(rep("d", state=ReplicaState.DRAINING), rep("o", model="other"))
    d, _ = p.decide(req(), snapshot, None)
    assert d == AdmissionDecision(False, "no capacity", 1.0)
    d, _ = DeadlineAdmission(no_capacity_retry_s=5.0).decide(req(), Snapshot(10.0), None)
    assert d == AdmissionDecision(False, "no capacity", 5.0)


def test_deadline_admits_when_capacity_or_service_unknown() -> None:
    p = DeadlineAdmission(min_samples=0, latencies=TABLES)
    unknown_capacity = snap(rep("a", outstanding=1000), queue=1000)
    assert p.decide(req(deadline=10.0001), unknown_capacity, None)[0] == ADMIT
    nothing_known = snap(rep("a", node_type="tpu", outstanding=1000), queue=1000)
    assert (
        DeadlineAdmission(min_samples=0).decide(req(deadline=10.0), nothing_known, None)[0] == ADMIT
    )


def test_deadline_validates_parameters() -> None:
    with pytest.raises(CoscaleError, match="no_capacity_retry_s"):
        DeadlineAdmission(no_capacity_retry_s=-1.0)
    for bad in ({"quantile": 0.0}, {"quantile": 1.5}, {"window": -1}):
        with pytest.raises(CoscaleError, match="quantile"):
            DeadlineAdmission(**bad)
    for ratio in (-0.1, 1.0):
        with pytest.raises(CoscaleError, match="max_margin_ratio"):
            DeadlineAdmission(max_margin_ratio=ratio)


# ------------------------------------------------------------------ the learned stretch


def _one_replica(
    queue: int = 0, stretches: tuple[float, ...] = (), tenant: str = "default"
) -> Snapshot:
    # capacity 100 items/s, service 0.01 s: predicted = now + queue / 100 + 0.01
    reports = tuple((tenant, 1.0, s) for s in stretches)  # promised 1 s, taken s
    view = ModelView("m", arrival_rate=0.0, queue_length=queue, promises=reports)
    return Snapshot(10.0, (view,), (rep("a", capacity_rps=100.0),))


def _stretched(rho: float, error: float = 10.0) -> AdmissionState:
    """A learned state, tested long ago: stretch ``rho`` and error quantile ``error``
    (default: so large that the proportional bound decides)."""
    learned = MarginState((rho,), (rho,), rho, (error,), (error,), error, first_at=-math.inf)
    return AdmissionState((("default", learned),))


def test_stretch_is_the_quantile_of_recent_stretches() -> None:
    p = DeadlineAdmission(min_samples=0, latencies=TABLES, quantile=0.9, window=10)
    stretches = tuple(1.0 + i / 10 for i in range(10))  # 1.0 .. 1.9
    _, state = p.decide(req(deadline=100.0), _one_replica(stretches=stretches), None)
    # nearest rank: the ceil(0.9 × 10) = 9th smallest
    assert state.of("default").stretch == pytest.approx(1.8)
    assert state.of("default").stretches == stretches
    # the errors of the same reports (taken − promised, promised 1 s): 0.0 .. 0.9
    assert state.of("default").error == pytest.approx(0.8)
    assert state.of("default").errors == pytest.approx(tuple(s - 1.0 for s in stretches))
    # the window keeps the newest 10: five more of 3.0 → 9th smallest is 3.0
    _, state = p.decide(req(deadline=100.0), _one_replica(stretches=(3.0,) * 5), state)
    mine = state.of("default")
    assert mine.stretches == (*stretches[5:], 3.0, 3.0, 3.0, 3.0, 3.0)
    assert mine.stretch == pytest.approx(3.0)
    assert mine.stretches_ordered == tuple(sorted(mine.stretches))
    # no new reports: the state is returned as it is
    _, same = p.decide(req(deadline=100.0), _one_replica(), state)
    assert same is state
    # a stretch is taken / promised; a report promising no time carries none
    learned = p.learn(None, (("t", 0.2, 0.5), ("t", 0.0, 0.3)), 0.0)
    assert learned.of("t").stretches == pytest.approx((2.5,))
    assert learned.of("t").errors == pytest.approx((0.3,))


def test_stretches_are_per_tenant() -> None:
    p = DeadlineAdmission(min_samples=0, latencies=TABLES)
    flood = _one_replica(queue=30, stretches=(2.0,) * 3, tenant="a")
    d, state = p.decide(req(tenant="b", deadline=10.5), flood, None)
    # predicted 10.31: a's stretch 2 moved a's margin only (0.31 s), b's request fits
    assert d.admit and state.of("b") == MarginState()
    assert state.of("a").stretch == pytest.approx(2.0)
    assert not p.decide(req(tenant="a", deadline=10.5), _one_replica(queue=30), state)[0].admit
    assert [t for t, _ in state.tenants] == ["a"]


def test_stretch_window_stays_sorted_whatever_the_chunks() -> None:
    rng = random.Random(7)
    p = DeadlineAdmission(min_samples=0, window=16, quantile=0.75)
    state: AdmissionState | None = None
    stream: list[float] = []
    for _ in range(200):
        chunk = tuple(round(rng.uniform(0.5, 3), 3) for _ in range(rng.choice((0, 1, 3, 17, 40))))
        stream.extend(chunk)
        state = p.learn(state, tuple(("t", 1.0, s) for s in chunk), 0.0)
        mine, newest = state.of("t"), stream[-16:]
        assert mine.stretches == pytest.approx(tuple(newest))
        assert mine.stretches_ordered == tuple(sorted(mine.stretches))
        assert mine.errors_ordered == tuple(sorted(mine.errors))
        if newest:
            expected = sorted(newest)[math.ceil(0.75 * len(newest)) - 1]
            assert mine.stretch == pytest.approx(max(1.0, expected))
            assert mine.error == pytest.approx(max(0.0, expected - 1.0))


def test_margin_grows_with_the_predicted_time_and_is_reported() -> None:
    p = DeadlineAdmission(min_samples=0, latencies=TABLES)
    state = _stretched(1.5)
    # queue 30: predicted = 10 + 30 / 100 + 0.01 = 10.31, margin (1.5 − 1) × 0.31 = 0.155
    d, _ = p.decide(req(deadline=10.47), _one_replica(queue=30), state)
    assert d.admit and d.promised_by is None  # the replica is free: nothing to learn
    d, _ = p.decide(req(deadline=10.46), _one_replica(queue=30), state)
    assert not d.admit and "0.155 s margin" in d.reason
    assert d.retry_after_s == pytest.approx(10.31 - (10.46 - 0.155))
    # one request queued: predicted 10.02, margin only 0.01 s
    assert p.decide(req(deadline=10.031), _one_replica(queue=1), state)[0].admit
    assert not p.decide(req(deadline=10.029), _one_replica(queue=1), state)[0].admit
    # without the stretch the queue-30 request fits
    assert (
        DeadlineAdmission(min_samples=0, latencies=TABLES)
        .decide(req(deadline=10.46), _one_replica(queue=30), None)[0]
        .admit
    )


def test_margin_is_the_smaller_of_the_proportional_and_the_additive_bound() -> None:
    p = DeadlineAdmission(min_samples=0, latencies=TABLES)
    # stretch 5 but errors of at most 0.1 s (a fixed delay): queue 30 → predicted 10.31,
    # proportional margin 4 × 0.31 = 1.24, additive 0.1 → margin 0.1
    state = _stretched(5.0, error=0.1)
    assert p.decide(req(deadline=10.41), _one_replica(queue=30), state)[0].admit
    d, _ = p.decide(req(deadline=10.40), _one_replica(queue=30), state)
    assert not d.admit and "0.100 s margin" in d.reason
    # one request queued: predicted 10.02, proportional 4 × 0.02 = 0.08 < 0.1
    assert p.decide(req(deadline=10.101), _one_replica(queue=1), state)[0].admit
    assert not p.decide(req(deadline=10.099), _one_replica(queue=1), state)[0].admit


def test_stretch_is_never_below_one() -> None:
    p = DeadlineAdmission(min_samples=0, latencies=TABLES, window=4)
    _, state = p.decide(req(deadline=100.0), _one_replica(stretches=(2.0,) * 4), None)
    assert state.of("default").stretch == pytest.approx(2.0)
    _, state = p.decide(req(deadline=100.0), _one_replica(stretches=(0.4,) * 4), state)
    assert state.of("default").stretch == 1.0  # early finishes: the bare prediction at most


def test_held_peaks_outlast_the_window_and_decay_with_tau() -> None:
    # window 4: a dip (stretch 3, error 2 s) is gone from the window after 4 quiet reports
    p = DeadlineAdmission(min_samples=0, latencies=TABLES, window=4, margin_tau_s=10.0)
    state = p.learn(None, tuple(("t", 1.0, 3.0) for _ in range(4)), 100.0)
    state = p.learn(state, tuple(("t", 1.0, 1.0) for _ in range(4)), 110.0)
    mine = state.of("t")
    assert mine.stretch == 1.0 and mine.error == 0.0  # the window forgot the dip
    d = math.exp(-1.0)  # 10 s later, τ = 10 s
    assert mine.held_stretch == pytest.approx(1.0 + 2.0 * d)
    assert mine.held_error == pytest.approx(2.0 * d)
    assert mine.held_at == 110.0
    # the margin uses the held values: queue 30 → predicted 10.31 s after now = 10
    snap = _one_replica(queue=30)
    held = AdmissionState((("default", replace(mine, first_at=-math.inf)),))
    margin = min(2.0 * d * 0.31, 2.0 * d)  # (ρ_held − 1) · 0.31 < e_held
    assert p.decide(req(deadline=10.31 + margin + 0.001), snap, held)[0].admit
    assert not p.decide(req(deadline=10.31 + margin - 0.001), snap, held)[0].admit
    # a larger quantile replaces the held value at once
    state = p.learn(state, tuple(("t", 1.0, 5.0) for _ in range(4)), 111.0)
    assert state.of("t").held_stretch == pytest.approx(5.0)
    # without held peaks (margin_tau_s None) the window's quantiles are the margin's
    off = DeadlineAdmission(min_samples=0, latencies=TABLES, window=4, margin_tau_s=None)
    s2 = off.learn(None, tuple(("t", 1.0, 3.0) for _ in range(4)), 100.0)
    s2 = off.learn(s2, tuple(("t", 1.0, 1.0) for _ in range(4)), 110.0)
    assert s2.of("t").held_stretch == 1.0 and s2.of("t").held_error == 0.0
    with pytest.raises(CoscaleError, match="margin_tau_s"):
        DeadlineAdmission(margin_tau_s=0.0)


def test_untested_margin_fades_with_the_time_the_reports_cover() -> None:
    p = DeadlineAdmission(latencies=TABLES, min_samples=2, margin_tau_s=60.0)
    # two exact reports at time 10 (the first): ρ = 1, e = 0, but only just tested
    state = p.learn(None, (("default", 1.0, 1.0), ("default", 1.0, 1.0)), 10.0)
    assert state.of("default").first_at == 10.0
    snap = _one_replica(queue=30)  # predicted = now + 0.31 at now = 10

    def admits(deadline: float, at: float) -> bool:
        # the same queue, seen ``at`` seconds after the first report
        later = Snapshot(10.0 + at, snap.models, snap.replicas)
        return p.decide(req(deadline=deadline + at, arrival=10.0 + at), later, state)[0].admit

    # age 0: the untested margin (2 − 1) × 0.31
    assert admits(10.31 + 0.31 + 0.001, 0.0) and not admits(10.31 + 0.31 - 0.001, 0.0)
    # a minute later: (2 − 1) × e^−1 × 0.31
    m = math.exp(-1.0) * 0.31
    assert admits(10.31 + m + 0.001, 60.0) and not admits(10.31 + m - 0.001, 60.0)
    # later reports do not restart the clock
    again = p.learn(state, (("default", 1.0, 1.0),), 50.0)
    assert again.of("default").first_at == 10.0
    # off (margin_tau_s None): the learned margin alone, 0 here
    off = DeadlineAdmission(latencies=TABLES, min_samples=2, margin_tau_s=None)
    assert off.decide(req(deadline=10.311), snap, state)[0].admit


def test_margin_is_capped_so_a_short_queue_still_admits() -> None:
    p = DeadlineAdmission(min_samples=0, latencies=TABLES)  # max_margin_ratio 0.8
    huge = _stretched(10.0)
    # budget 1 s (arrival 10, deadline 11): the margin 9 × (predicted − now) is capped at
    # 0.8 s, so the target is 10.2
    assert p.decide(req(deadline=11.0), _one_replica(queue=0), huge)[0].admit  # 10.01
    assert p.decide(req(deadline=11.0), _one_replica(queue=15), huge)[0].admit  # 10.16
    assert not p.decide(req(deadline=11.0), _one_replica(queue=20), huge)[0].admit  # 10.21
    loose = DeadlineAdmission(min_samples=0, latencies=TABLES, max_margin_ratio=0.5)  # 10.5
    assert loose.decide(req(deadline=11.0), _one_replica(queue=40), huge)[0].admit  # 10.41


def test_only_waits_for_busy_replicas_are_learned_from() -> None:
    p = DeadlineAdmission(latencies=TABLES)
    busy = Snapshot(
        10.0,
        (ModelView("m", 0.0, queue_length=15),),
        (rep("a", capacity_rps=100.0, outstanding=2),),
    )
    d, _ = p.decide(req(deadline=11.0), busy, None)
    # predicted = 10 + 17 / 100 + 0.01: promised_by is the bare prediction, not the target
    assert d.admit and d.promised_by == pytest.approx(10.18)
    one_free = Snapshot(
        10.0,
        (ModelView("m", 0.0, queue_length=15),),
        (rep("a", capacity_rps=100.0, outstanding=2), rep("b", capacity_rps=100.0)),
    )
    d, _ = p.decide(req(deadline=11.0), one_free, None)
    assert d.admit and d.promised_by is None


def test_a_request_with_nothing_ahead_gets_no_margin() -> None:
    # a margin learned under overload (stretch 5) and an untested one (stretch 2) both
    # refuse a 0.3-s service within a 0.5-s budget once anything waits; with every
    # replica idle and nothing queued, the bare service decides
    slow = {("fp32-eager", "cpu"): flat(0.3)}
    learned = DeadlineAdmission(latencies=slow, min_samples=0)
    untested = DeadlineAdmission(latencies=slow)
    idle = Snapshot(10.0, (ModelView("m", 0.0, queue_length=0),), (rep("a", capacity_rps=100.0),))
    for p, state in ((learned, _stretched(5.0, error=1.0)), (untested, None)):
        d, _ = p.decide(req(deadline=10.5), idle, state)
        assert d.admit and d.promised_by is None
        queued = Snapshot(
            10.0, (ModelView("m", 0.0, queue_length=1),), (rep("a", capacity_rps=100.0),)
        )
        assert not p.decide(req(deadline=10.5), queued, state)[0].admit
        busy = Snapshot(10.0, idle.models, (rep("a", capacity_rps=100.0, outstanding=1),))
        assert not p.decide(req(deadline=10.5), busy, state)[0].admit
    # the bare service must still fit
    assert not untested.decide(req(deadline=10.29), idle, None)[0].admit


def test_stretch_is_the_initial_one_until_min_samples_reports() -> None:
    # initial_stretch 2; no fading floor after min_samples (margin_tau_s None)
    p = DeadlineAdmission(latencies=TABLES, min_samples=3, margin_tau_s=None)
    # budget 1 s: 2 × (predicted − now) must fit, so 10 + 45 / 100 + 0.01 = 10.46 fits
    # (margin 0.46), 10.51 does not (margin 0.51 → target 10.49)
    assert p.decide(req(deadline=11.0), _one_replica(queue=45), None)[0].admit
    d, state = p.decide(req(deadline=11.0), _one_replica(queue=50, stretches=(1.0, 1.0)), None)
    assert not d.admit and "0.510 s margin" in d.reason  # 2 reports < 3
    d, state = p.decide(req(deadline=11.0), _one_replica(queue=50, stretches=(1.0,)), state)
    assert d.admit  # 3 stretches of 1: no margin
    with pytest.raises(CoscaleError, match="min_samples"):
        DeadlineAdmission(min_samples=-1)
    with pytest.raises(CoscaleError, match="initial_stretch"):
        DeadlineAdmission(initial_stretch=0.5)


def test_window_zero_turns_the_stretch_off() -> None:
    p = DeadlineAdmission(min_samples=0, latencies=TABLES, window=0)
    d, state = p.decide(req(deadline=10.3101), _one_replica(queue=30, stretches=(5.0,)), None)
    assert d.admit and state == AdmissionState()


# ------------------------------------------------------------------ fair-queue "ahead"


def _tenants(queue: int, *queues: tuple[str, int, float]) -> ModelView:
    return ModelView("m", arrival_rate=0.0, queue_length=queue, tenant_queues=queues)


def test_fair_ahead_counts_weight_proportional_shares_of_other_tenants() -> None:
    # a floods (40 waiting), b has 2 waiting, equal weights
    view = _tenants(42, ("a", 40, 1.0), ("b", 2, 1.0))
    # b: its own 2 + min(40, 2·1/1 + 1) = 5;  a: its own 40 + min(2, 40 + 1) = 42
    assert fair_ahead(view, "b") == 5
    assert fair_ahead(view, "a") == 42
    # a new tenant: nothing of its own, one request of each other tenant (ties go first)
    assert fair_ahead(view, "c") == 2
    # weights: b has weight 4 → per b request, a gets 1/4 of a turn
    heavy = _tenants(42, ("a", 40, 1.0), ("b", 2, 4.0))
    assert fair_ahead(heavy, "b") == pytest.approx(2 + 2 * 1 / 4 + 1)
    # requests put back after a failure (in the queue, no tenant's) go first for everyone
    assert fair_ahead(_tenants(45, ("a", 40, 1.0), ("b", 2, 1.0)), "b") == 8
    # a FIFO queue: the whole queue is ahead
    assert fair_ahead(ModelView("m", arrival_rate=0.0, queue_length=42), "b") == 42


def test_fair_ahead_matches_the_fair_queue_order() -> None:
    """Against the real queue: the number of requests the WFQ pops before a new request
    of b equals the formula (unit items, equal and unequal weights)."""
    for weights in ({"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 3.0}, {"a": 2.0, "b": 1.0}):
        wfq = WeightedFairQueue(weights=weights)
        state = None
        for i in range(30):
            state = wfq.push(state, req(i, tenant="a"))
        for i in range(30, 33):
            state = wfq.push(state, req(i, tenant="b"))
        state = wfq.push(state, req(99, tenant="b"))
        served = 0
        while True:
            got, state = wfq.pop(state)
            assert got is not None
            if got.id == 99:
                break
            served += 1
        view = _tenants(33, ("a", 30, weights["a"]), ("b", 3, weights["b"]))
        assert fair_ahead(view, "b") == pytest.approx(served, abs=1.0), weights


def test_deadline_admits_the_light_tenant_behind_a_flood() -> None:
    p = DeadlineAdmission(min_samples=0, latencies=TABLES, reserve_headroom=None)
    replicas = (rep("a", capacity_rps=100.0, outstanding=2),)
    view = _tenants(102, ("a", 100, 1.0), ("b", 2, 1.0))
    snapshot = Snapshot(10.0, (view,), replicas)
    # b: ahead 2 + 3 + 2 outstanding = 7 → 10.08 ≤ 10.5; a: ahead 104 → 11.05 > 10.5
    assert p.decide(req(tenant="b", deadline=10.5), snapshot, None)[0].admit
    d, _ = p.decide(req(tenant="a", deadline=10.5), snapshot, None)
    assert not d.admit and "104 requests ahead" in d.reason


# ------------------------------------------------------------------- weighted fair queue


def _tags(state: FairQueueState) -> dict[int, tuple[float, float]]:
    """request id → (start, finish) for every queued request (white-box helper)."""
    out: dict[int, tuple[float, float]] = {}
    for _, tq in state.tenants:
        for cell in (tq.front, tq.back):
            while cell is not None:
                out[cell.head.request.id] = (cell.head.start, cell.head.finish)
                cell = cell.tail
    return out


def test_wfq_push_tags_start_max_of_virtual_time_and_tenant_finish() -> None:
    wfq = WeightedFairQueue(weights={"b": 2.0})
    s = wfq.push(None, req(1, tenant="a", items=3))
    s = wfq.push(s, req(2, tenant="a", items=1))
    s = wfq.push(s, req(3, tenant="b", items=1))
    assert _tags(s) == {1: (0.0, 3.0), 2: (3.0, 4.0), 3: (0.0, 0.5)}
    assert len(s) == 3


def test_wfq_pop_smallest_start_ties_to_first_pushed() -> None:
    wfq = WeightedFairQueue()
    s: FairQueueState | None = None
    for i in range(1, 6):
        s = wfq.push(s, req(i, tenant="a"))
    s = wfq.push(s, req(100, tenant="b"))
    for i in range(6, 11):
        s = wfq.push(s, req(i, tenant="a"))
    s = wfq.push(s, req(101, tenant="b"))
    order = []
    while True:
        r, s = wfq.pop(s)
        if r is None:
            break
        order.append(r.id)
    assert order == [1, 100, 2, 101, 3, 4, 5, 6, 7, 8, 9, 10]


def test_wfq_pop_sets_virtual_time_to_start_tag() -> None:
    wfq = WeightedFairQueue()
    s = wfq.push(None, req(1, tenant="a"))
    s = wfq.push(s, req(2, tenant="a"))
    s = wfq.push(s, req(3, tenant="a"))
    _, s = wfq.pop(s)
    _, s = wfq.pop(s)
    assert s.virtual_time == 1.0
    s = wfq.push(s, req(9, tenant="new"))  # a new tenant starts at v, not at 0
    assert _tags(s)[9] == (1.0, 2.0)


def test_wfq_empty_queue_jumps_virtual_time_to_max_finish() -> None:
    wfq = WeightedFairQueue()
    s = wfq.push(None, req(1, tenant="a", items=4))
    _, s = wfq.pop(s)
    assert s.virtual_time == 4.0 and len(s) == 0
    s = wfq.push(s, req(2, tenant="b"))
    assert _tags(s)[2] == (4.0, 5.0)


def test_wfq_pop_on_empty_returns_none() -> None:
    wfq = WeightedFairQueue()
    assert wfq.pop(None) == (None, FairQueueState())
    s = FairQueueState(virtual_time=3.0)
    assert wfq.pop(s) == (None, s)


def test_wfq_weights_give_proportional_service_and_default_weight() -> None:
    wfq = WeightedFairQueue(weights={"b": 2.0}, default_weight=1.0)
    s: FairQueueState | None = None
    for i in range(30):
        s = wfq.push(s, req(i, tenant="a"))
        s = wfq.push(s, req(100 + i, tenant="b"))
    served = []
    for _ in range(30):
        r, s = wfq.pop(s)
        assert r is not None
        served.append(r.tenant)
    assert served.count("b") == 20 and served.count("a") == 10


def test_wfq_rejects_non_positive_weights() -> None:
    with pytest.raises(CoscaleError, match="weights must be > 0"):
        WeightedFairQueue(weights={"a": 0.0})
    with pytest.raises(CoscaleError, match="weights must be > 0"):
        WeightedFairQueue(default_weight=0.0)


def test_wfq_states_are_persistent() -> None:
    wfq = WeightedFairQueue()
    s = wfq.push(None, req(1, tenant="a"))
    s = wfq.push(s, req(2, tenant="a"))
    first, s1 = wfq.pop(s)
    again, _ = wfq.pop(s)
    assert first == again and len(s) == 2 and len(s1) == 1
    s2 = wfq.push(s1, req(3, tenant="a"))
    assert [wfq.pop(s1)[0], wfq.pop(s2)[0]] == [req(2, tenant="a")] * 2


def _serve(fair: bool) -> dict[str, list[float]]:
    """A floods at 5 req/s, B sends 1 req/s, one server does 2 req/s for 20 s.
    Returns each tenant's waiting times."""
    arrivals = sorted(
        [req(i, arrival=i * 0.2, tenant="a") for i in range(100)]
        + [req(1000 + i, arrival=float(i), tenant="b") for i in range(20)],
        key=lambda r: (r.arrival, r.id),
    )
    wfq = WeightedFairQueue()
    state: FairQueueState | None = None
    fifo: list[Request] = []
    waits: dict[str, list[float]] = {"a": [], "b": []}
    nxt = 0
    for slot in range(40):
        t = slot * 0.5
        while nxt < len(arrivals) and arrivals[nxt].arrival <= t:
            if fair:
                state = wfq.push(state, arrivals[nxt])
            else:
                fifo.append(arrivals[nxt])
            nxt += 1
        r: Request | None
        if fair:
            r, state = wfq.pop(state)
        else:
            r = fifo.pop(0) if fifo else None
        if r is not None:
            waits[r.tenant].append(t - r.arrival)
    return waits


def test_wfq_flooding_tenant_does_not_delay_the_other_beyond_its_share() -> None:
    fair, fifo = _serve(True), _serve(False)
    # B's fair share (1/2 of 2 req/s) covers its 1 req/s: all served, none waits > 1 s
    assert len(fair["b"]) == 20 and max(fair["b"]) <= 1.0
    # A gets the rest: 20 of its 100
    assert len(fair["a"]) == 20
    # first-come-first-served lets A's backlog delay B without bound
    assert len(fifo["b"]) < 10 and max(fifo["b"]) > 5.0


# ------------------------------------------------------------------- reserved shares


def test_fold_demand_is_a_decayed_rate_per_tenant() -> None:
    demand: tuple[tuple[str, float, float], ...] = ()
    # 20 items/s for 60 s (one item every 50 ms), τ = 10 s: the rate converges to 20
    for k in range(1200):
        demand = fold_demand(demand, (("a", 1),), k * 0.05, 10.0)
    rates = demand_rates(demand, 60.0, 10.0)
    assert rates["a"] == pytest.approx(20.0, rel=0.01)
    # silent for τ: decayed by e
    assert demand_rates(demand, 70.0, 10.0)["a"] == pytest.approx(rates["a"] / math.e, rel=0.01)
    # several at once, another tenant; sorted by tenant; nothing new → the same tuple
    demand = fold_demand(demand, (("b", 3), ("a", 1), ("b", 1)), 60.0, 10.0)
    assert [t for t, _, _ in demand] == ["a", "b"]
    assert demand_rates(demand, 60.0, 10.0)["b"] == pytest.approx(0.4)
    assert fold_demand(demand, (), 99.0, 10.0) is demand


def test_within_share_is_max_min_fair_with_headroom() -> None:
    # capacity 100, equal weights: b at its share (50), a floods → level 50; b within
    assert within_share({"a": 250.0, "b": 50.0}, {}, 100.0, 0.25) == {"b"}
    # b a little over its share still within the headroom (62.5), beyond it not
    assert within_share({"a": 250.0, "b": 60.0}, {}, 100.0, 0.25) == {"b"}
    assert within_share({"a": 250.0, "b": 70.0}, {}, 100.0, 0.25) == frozenset()
    # no contention (Σ d ≤ capacity): everyone is within
    assert within_share({"a": 60.0, "b": 30.0}, {}, 100.0, 0.0) == {"a", "b"}
    # water-filling: c's small demand leaves its share to the others (level 45)
    assert within_share({"a": 250.0, "b": 45.0, "c": 10.0}, {}, 100.0, 0.0) == {"b", "c"}
    # weights: b (weight 3) is entitled to 75 of 100
    assert within_share({"a": 250.0, "b": 70.0}, {"b": 3.0}, 100.0, 0.0) == {"b"}
    # a weighted tenant without demand is within (and leaves its share)
    assert within_share({"a": 250.0}, {"a": 1.0, "b": 1.0}, 100.0, 0.0) == {"b"}


def test_fair_ahead_counts_each_tenant_in_its_class() -> None:
    view = _tenants(45, ("a", 40, 1.0), ("b", 2, 1.0), ("c", 0, 1.0))
    # b served first: ahead = 3 retries + its own 2 + c's share (0); a's backlog is not
    assert fair_ahead(view, "b", frozenset({"b", "c"})) == 5
    # a behind the first class: 3 + its own 40 + every request of b and c
    assert fair_ahead(view, "a", frozenset({"b", "c"})) == 45
    # nobody first: the plain formula
    assert fair_ahead(view, "b", frozenset()) == fair_ahead(view, "b")


def _flooded(refused: tuple[tuple[str, int], ...] = ()) -> Snapshot:
    view = ModelView(
        "m",
        arrival_rate=0.0,
        queue_length=60,
        tenant_queues=(("a", 58, 1.0), ("b", 2, 1.0)),
        refused=refused,
    )
    return Snapshot(10.0, (view,), (rep("a", capacity_rps=100.0, outstanding=2),))


def _demand(**rates: float) -> AdmissionState:
    return AdmissionState(demand=tuple((t, r, 10.0) for t, r in sorted(rates.items())))


def test_a_tenant_within_its_share_is_admitted_with_priority() -> None:
    p = DeadlineAdmission(min_samples=0, latencies=TABLES)
    state = _demand(a=250.0, b=50.0)
    d, new = p.decide(req(tenant="b", deadline=10.5), _flooded(), state)
    # b first: ahead = its own 2 + 2 outstanding → 10.05 ≤ 10.5
    assert d.admit and d.priority
    d, _ = p.decide(req(tenant="a", deadline=10.5), _flooded(), new)
    # a: over its share, behind everything (58 + 2 + 2), and overtaken by b's arrivals
    # while it waits: served at 100 − b's 50.33 items/s → 10 + 62 / 49.67 > 10.5
    assert not d.admit and "62 requests ahead at 49.7 items/s" in d.reason
    # each decision counts its request as demand (1 item / τ = 3 s)
    assert dict((t, r) for t, r, _ in new.demand)["b"] == pytest.approx(50 + 1 / 3)


def test_requests_refused_before_admission_count_as_demand() -> None:
    p = DeadlineAdmission(min_samples=0, latencies=TABLES)
    # both at 45 items/s: no contention, both first; 700 refused requests of b (70/s
    # over τ = 10 s) put b over its share (level 50 · 1.25)
    state = _demand(a=45.0, b=45.0)
    assert p.decide(req(tenant="b", deadline=20.0), _flooded(), state)[0].priority
    d, _ = p.decide(req(tenant="b", deadline=20.0), _flooded((("b", 1),) * 700), state)
    assert d.admit and not d.priority


def test_fold_speeds_smooths_then_holds_each_replica_peak() -> None:
    def fold(speeds: Any, now: float, **kw: float) -> Any:
        return fold_speeds(speeds, [rep(str(kw.pop("rid", "r1")), **kw)], now, 5.0, 300.0)

    first = fold((), 0.0, capacity_rps=100.0, rate=80.0)
    # first sight: smoothed = max(capacity, rate), no peak held yet
    assert first == (("r1", 100.0, 0.0, 0.0, 0.0),) and shown_speed(first) == 100.0
    young = fold(first, 1.0, capacity_rps=50.0)
    assert young[0][2] == 0.0 and shown_speed(young) == pytest.approx(50 + 50 * math.exp(-0.2))
    steady = young
    for k in range(2, 31):  # 30 s at 100 items/s, one decision a second
        steady = fold(steady, float(k), capacity_rps=100.0)
    assert shown_speed(steady) == pytest.approx(100.0, rel=1e-3)
    # one outlier moves the smoothed value by 1 − exp(−1/5) of the jump, not all of it
    spike = fold(steady, 31.0, capacity_rps=300.0)
    assert spike[0][1] == pytest.approx(100.0 + 200.0 * (1 - math.exp(-0.2)), rel=1e-3)
    # 15 s at 60 (a flood's cost): the peak stays near 100, decayed by exp(−15/300)
    slow = steady
    for k in range(31, 46):
        slow = fold(slow, float(k), capacity_rps=60.0)
    assert slow[0][1] < 65.0
    assert shown_speed(slow) == pytest.approx(shown_speed(steady) * math.exp(-15 / 300), rel=1e-3)
    # a replica no longer READY leaves; a new one starts afresh
    assert fold(slow, 46.0, rid="r2", rate=70.0) == (("r2", 70.0, 0.0, 46.0, 46.0),)


def _flooded_at(time: float, capacity: float) -> Snapshot:
    view = ModelView(
        "m", arrival_rate=0.0, queue_length=60, tenant_queues=(("a", 58, 1.0), ("b", 2, 1.0))
    )
    return Snapshot(time, (view,), (rep("a", capacity_rps=capacity, outstanding=2),))


@pytest.mark.parametrize("tau", [300.0, 1.0])
def test_a_tenant_at_its_share_stays_first_while_the_flood_slows_the_replica(tau: float) -> None:
    p = DeadlineAdmission(min_samples=0, latencies=TABLES, speed_tau_s=tau, demand_tau_s=1e9)
    state = _demand(a=250.0, b=45.0)
    for k in range(31):  # 30 s at capacity 100: the demonstrated speed reaches ~100
        d, state = p.decide(
            req(tenant="b", arrival=k, deadline=k + 30), _flooded_at(k, 100.0), state
        )
    # a floods: level ~50, b at 45 is within (≤ 1.25 · 50)
    assert d.priority
    # then for 15 s the flood's cost cuts the replica's speed to 60: at that speed b's
    # share would be 30 (· 1.25 = 37.5 < 45); the held peak keeps b first
    for k in range(31, 46):
        d, state = p.decide(
            req(tenant="b", arrival=k, deadline=k + 30), _flooded_at(k, 60.0), state
        )
    assert d.priority is (tau == 300.0)


def test_reserve_off_or_fifo_queue_gives_no_priority() -> None:
    state = _demand(a=250.0, b=50.0)
    off = DeadlineAdmission(min_samples=0, latencies=TABLES, reserve_headroom=None)
    d, same = off.decide(req(tenant="b", deadline=20.0), _flooded(), state)
    assert d.admit and not d.priority and same.demand == state.demand
    fifo = _one_replica(queue=0)
    p = DeadlineAdmission(min_samples=0, latencies=TABLES)
    d, st = p.decide(req(tenant="b", deadline=20.0), fifo, None)
    assert d.admit and not d.priority and st.demand == ()
    for bad in (
        {"reserve_headroom": -0.1},
        {"demand_tau_s": 0.0},
        {"speed_smooth_s": 0.0},
        {"speed_tau_s": -1.0},
    ):
        with pytest.raises(CoscaleError, match="reserve_headroom"):
            DeadlineAdmission(**bad)


def test_the_fair_queue_serves_priority_requests_first_each_tenant_in_order() -> None:
    wfq = WeightedFairQueue()
    state = None
    for i in range(4):
        state = wfq.push(state, req(i, tenant="a"))
    state = wfq.push(state, req(10, tenant="b"))  # b's older request, no priority
    state = wfq.push(state, req(11, tenant="b"), priority=True)
    state = wfq.push(state, req(20, tenant="c"), priority=True)
    order = []
    while (got := wfq.pop(state))[0] is not None:
        request, state = got
        assert request is not None
        order.append(request.id)
    # c's priority request first; b's priority request waits behind b's own older one,
    # which competes by start tag with a's (ties to the earlier push)
    assert order[0] == 20
    assert order.index(10) < order.index(11)
    assert sorted(order) == [0, 1, 2, 3, 10, 11, 20]


def test_pressure_is_a_refusal_or_a_prediction_past_a_share_of_the_budget() -> None:
    r = Request(1, "m", arrival=10.0, deadline=10.4)  # budget 0.4 s: a quarter is 0.1
    assert is_pressure(AdmissionDecision(False, reason="late"), r, 0.25)
    assert not is_pressure(AdmissionDecision(True), r)  # no prediction (AdmitAll, a free replica)
    assert not is_pressure(AdmissionDecision(True, promised_by=10.1), r, 0.25)
    assert is_pressure(AdmissionDecision(True, promised_by=10.1001), r, 0.25)
    # the default share, 0.15: 0.06 s of this budget
    assert not is_pressure(AdmissionDecision(True, promised_by=10.06), r)
    assert is_pressure(AdmissionDecision(True, promised_by=10.0601), r)
    assert not is_pressure(AdmitAll().decide(r, Snapshot(10.0), None)[0], r)


def test_admission_capacity_trusts_a_measured_rate_only_below_the_profile_and_when_full() -> None:
    # batches of 6 on a limit of 8 (≥ half): the measured 40 items/s below the profiled 100
    assert admission_capacity(100.0, 40.0, 6.0, 8) == 40.0
    assert admission_capacity(100.0, 40.0, 3.0, 8) == 100.0  # small batches: the profile
    assert admission_capacity(100.0, 140.0, 6.0, 8) == 100.0  # faster than profiled
    assert admission_capacity(100.0, 0.0, 6.0, 8) == 100.0  # nothing measured
