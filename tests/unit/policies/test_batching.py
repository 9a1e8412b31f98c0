"""One test per clause of the batching policies' docstrings (coscale/policies/batching.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coscale.errors import CoscaleError
from coscale.policies.batching import (
    EMPTY,
    AimdState,
    ArrivalEstimate,
    ClipperAimd,
    FixedBatching,
    NoBatching,
    RayServeBatch,
    SloAware,
    TritonDynamic,
    observe_arrivals,
    prefix_within,
)
from coscale.types import BatchDecision, LatencyTable, ReplicaState, ReplicaView, Request


def rep(rid: str = "r1", **kw: Any) -> ReplicaView:
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
    i: int, arrival: float = 0.0, deadline: float = 1.0, items: int = 1, seq_len: int = 0
) -> Request:
    return Request(i, "m", arrival, deadline, items=items, seq_len=seq_len)


def queue(n: int, arrival: float = 0.0, deadline: float = 1.0, items: int = 1) -> list[Request]:
    return [req(i, arrival, deadline, items) for i in range(n)]


ALL = [
    NoBatching(),
    FixedBatching(),
    RayServeBatch(),
    TritonDynamic(),
    ClipperAimd(),
    SloAware(),
]


# --------------------------------------------------------------------------- common rules


@pytest.mark.parametrize("policy", ALL, ids=lambda p: p.name)
def test_empty_queue_dispatches_nothing_and_keeps_state(policy: Any) -> None:
    state = AimdState((("r1", 3.0),)) if isinstance(policy, ClipperAimd) else None
    decision, after = policy.decide(5.0, [], rep(), state)
    assert decision == EMPTY == BatchDecision(0, None)
    assert after == state


def test_prefix_counts_items_and_takes_at_least_one_request() -> None:
    assert prefix_within(queue(5), 3) == 3  # one item each: min(m, len)
    assert prefix_within(queue(2), 8) == 2
    assert prefix_within([req(0, items=3), req(1, items=3), req(2, items=3)], 8) == 2
    assert prefix_within([req(0, items=20), req(1)], 8) == 1  # too large: goes alone
    assert prefix_within([], 8) == 0


# ---------------------------------------------------------------------------------- none


def test_none_dispatches_the_oldest_alone() -> None:
    d, s = NoBatching().decide(0.0, queue(7), rep(), None)
    assert d == BatchDecision(1) and s is None


# --------------------------------------------------------------------------------- fixed


def test_fixed_full_batch_goes_at_once() -> None:
    d, _ = FixedBatching(max_batch=4).decide(0.0, queue(9), rep(), None)
    assert d == BatchDecision(4)
    d, _ = FixedBatching(max_batch=4).decide(0.0, queue(4), rep(), None)
    assert d == BatchDecision(4)


def test_fixed_more_requests_than_fit_counts_as_full() -> None:
    q = [req(0, items=3), req(1, items=3), req(2, items=3)]
    d, _ = FixedBatching(max_batch=8).decide(0.0, q, rep(), None)
    assert d == BatchDecision(2)


def test_fixed_timeout_dispatches_everything_queued() -> None:
    d, _ = FixedBatching(max_batch=8, timeout_s=0.02).decide(0.02, queue(3), rep(), None)
    assert d == BatchDecision(3)


def test_fixed_otherwise_waits_until_oldest_arrival_plus_timeout() -> None:
    q = [req(0, arrival=1.0), req(1, arrival=1.005)]
    d, _ = FixedBatching(max_batch=8, timeout_s=0.02).decide(1.01, q, rep(), None)
    assert d == BatchDecision(0, pytest.approx(1.02))


def test_fixed_validates_parameters() -> None:
    with pytest.raises(CoscaleError, match="max_batch"):
        FixedBatching(max_batch=0)
    with pytest.raises(CoscaleError, match="timeout_s"):
        FixedBatching(timeout_s=-1)


# ----------------------------------------------------------------------- ray serve batch


def test_rayserve_defaults_are_ten_and_ten_ms() -> None:
    p = RayServeBatch()
    assert (p.max_batch_size, p.batch_wait_timeout_s) == (10, 0.01)


def test_rayserve_full_batch_goes_at_once() -> None:
    d, _ = RayServeBatch().decide(0.0, queue(12), rep(), None)
    assert d == BatchDecision(10)


def test_rayserve_waits_for_timeout_then_sends_what_it_has() -> None:
    q = queue(3, arrival=2.0)
    d, _ = RayServeBatch().decide(2.005, q, rep(), None)
    assert d == BatchDecision(0, pytest.approx(2.01))
    d, _ = RayServeBatch().decide(2.01, q, rep(), None)
    assert d == BatchDecision(3)


# -------------------------------------------------------------------------------- triton


def test_triton_full_batch_goes_at_once() -> None:
    d, _ = TritonDynamic(max_batch_size=8, max_queue_delay_us=1e6).decide(0, queue(9), rep(), None)
    assert d == BatchDecision(8)


def test_triton_sends_largest_formable_preferred_size() -> None:
    p = TritonDynamic(max_batch_size=8, preferred_batch_sizes=(2, 4), max_queue_delay_us=1e6)
    d, _ = p.decide(0.0, queue(5), rep(), None)
    assert d == BatchDecision(4)
    d, _ = p.decide(0.0, queue(3), rep(), None)
    assert d == BatchDecision(2)


def test_triton_preferred_size_must_be_an_exact_prefix_total() -> None:
    p = TritonDynamic(max_batch_size=8, preferred_batch_sizes=(4,), max_queue_delay_us=100.0)
    q = [req(0, items=3), req(1, items=3)]  # prefixes total 3, 6: no 4
    d, _ = p.decide(0.0, q, rep(), None)
    assert d == BatchDecision(0, pytest.approx(1e-4))
    q = [req(0, items=1), req(1, items=3), req(2, items=3)]  # 1, 4, 7
    d, _ = p.decide(0.0, q, rep(), None)
    assert d == BatchDecision(2)


def test_triton_default_delay_zero_sends_at_once() -> None:
    d, _ = TritonDynamic().decide(0.0, queue(3), rep(), None)
    assert d == BatchDecision(3)


def test_triton_waits_max_queue_delay_from_oldest_arrival() -> None:
    p = TritonDynamic(max_queue_delay_us=500.0)
    q = queue(3, arrival=1.0)
    d, _ = p.decide(1.0002, q, rep(), None)
    assert d == BatchDecision(0, pytest.approx(1.0005))
    d, _ = p.decide(1.0005, q, rep(), None)
    assert d == BatchDecision(3)


def test_triton_validates_preferred_sizes() -> None:
    with pytest.raises(CoscaleError, match="preferred_batch_sizes"):
        TritonDynamic(max_batch_size=8, preferred_batch_sizes=(16,))


# ------------------------------------------------------------------------------- clipper


def _clipper_round(
    p: ClipperAimd, latency: float, state: AimdState | None, n: int = 100, rid: str = "r1"
) -> tuple[int, AimdState]:
    d, state = p.decide(0.0, queue(n, deadline=0.1), rep(rid, latency_s=latency), state)
    return d.dispatch, state


def test_clipper_starts_at_initial_batch_and_dispatches_at_once() -> None:
    k, state = _clipper_round(ClipperAimd(), 0.0, None)
    assert k == 1 and state == AimdState((("r1", 1.0),), frozenset({"r1"}))
    k, _ = _clipper_round(ClipperAimd(initial_batch=4), 0.0, None)
    assert k == 4


def test_clipper_additive_increase_while_under_slo() -> None:
    p = ClipperAimd(step=2.0)
    sizes = []
    state = None
    for _ in range(4):
        k, state = _clipper_round(p, 0.05, state)  # SLO from requests: 0.1 s
        sizes.append(k)
    assert sizes == [1, 3, 5, 7]


def test_clipper_multiplicative_decrease_on_miss() -> None:
    p = ClipperAimd(initial_batch=10.0)
    k, state = _clipper_round(p, 0.0, None)
    assert k == 10
    k, state = _clipper_round(p, 0.2, state)  # miss: 10 × 0.9 = 9
    assert k == 9
    k, state = _clipper_round(p, 0.2, state)  # 8.1 → floor 8
    assert k == 8 and dict(state.sizes)["r1"] == pytest.approx(8.1)


def test_clipper_never_below_one() -> None:
    k, state = _clipper_round(ClipperAimd(), 0.0, None)
    k, state = _clipper_round(ClipperAimd(), 5.0, state)
    assert k == 1 and dict(state.sizes)["r1"] == 1.0


def test_clipper_unreported_latency_leaves_size_unchanged() -> None:
    p = ClipperAimd(initial_batch=5.0)
    _, state = _clipper_round(p, 0.0, None)
    k, state = _clipper_round(p, 0.0, state)
    assert k == 5


def test_clipper_capped_at_max_batch() -> None:
    p = ClipperAimd(initial_batch=7.0, step=5.0, max_batch=8)
    _, state = _clipper_round(p, 0.0, None)
    k, _ = _clipper_round(p, 0.01, state)
    assert k == 8


def test_clipper_judges_each_batch_once() -> None:
    p = ClipperAimd()
    _, state = _clipper_round(p, 0.0, None)
    _, state = p.decide(0.0, [], rep(latency_s=0.05), state)  # empty queue: no judgement
    k, state = _clipper_round(p, 0.05, state)
    assert k == 2


def test_clipper_explicit_slo_overrides_request_slo() -> None:
    p = ClipperAimd(initial_batch=4.0, slo_s=0.03)
    _, state = _clipper_round(p, 0.0, None)
    k, _ = _clipper_round(p, 0.05, state)  # 0.05 ≤ request SLO 0.1 but > 0.03
    assert k == 3


def test_clipper_sizes_are_per_replica() -> None:
    p = ClipperAimd()
    _, state = _clipper_round(p, 0.0, None, rid="a")
    _, state = _clipper_round(p, 0.0, state, rid="b")
    k_a, state = _clipper_round(p, 0.05, state, rid="a")
    k_b, state = _clipper_round(p, 0.5, state, rid="b")
    k_a2, _ = _clipper_round(p, 0.05, state, rid="a")
    assert (k_a, k_b, k_a2) == (2, 1, 3)


def test_clipper_validates_parameters() -> None:
    with pytest.raises(CoscaleError, match="decrease"):
        ClipperAimd(decrease=1.5)
    with pytest.raises(CoscaleError, match="slo_s"):
        ClipperAimd(slo_s=0.0)


# ------------------------------------------------------------------------------ slo-aware

# latency(k items) = 0.015 + 0.005 × (k − 1) s
LINEAR = LatencyTable((1, 33), (0,), ((0.015, 0.175),))
TABLES = {("fp32-eager", "cpu"): LINEAR}


def lat(k: int) -> float:
    return 0.015 + 0.005 * (k - 1)


def slo(**kw: Any) -> SloAware:
    return SloAware(latencies=TABLES, **kw)


def test_slo_aware_late_requests_go_at_once_together() -> None:
    q = [req(0, deadline=0.010), req(1, deadline=0.012), req(2, deadline=1.0)]
    d, _ = slo().decide(0.0, q, rep(), None)
    assert d == BatchDecision(2)


def test_slo_aware_late_run_is_capped_at_max_batch() -> None:
    q = [req(i, deadline=0.001) for i in range(5)]
    d, _ = slo(max_batch=3).decide(0.0, q, rep(), None)
    assert d == BatchDecision(3)


def test_slo_aware_unknown_latency_dispatches_prefix_at_once() -> None:
    d, _ = SloAware(max_batch=4).decide(0.0, queue(6, deadline=9.0), rep(), None)
    assert d == BatchDecision(4)


def test_slo_aware_dispatches_largest_feasible_when_queue_exceeds_it() -> None:
    # lat(k) ≤ 0.05 ⇔ k ≤ 8
    d, _ = slo().decide(0.0, queue(10, deadline=0.05), rep(), None)
    assert d == BatchDecision(8)


def test_slo_aware_feasibility_uses_earliest_deadline_of_the_batch() -> None:
    q = [*queue(3, deadline=1.0), req(3, deadline=0.025), req(4, deadline=1.0)]
    d, _ = slo().decide(0.0, q, rep(), None)  # k=4 needs 0.03 > 0.025
    assert d == BatchDecision(3)


def test_slo_aware_pads_to_longest_seq_len() -> None:
    table = LatencyTable((1, 8), (16, 128), ((0.01, 0.03), (0.05, 0.2)))
    p = SloAware(latencies={("fp32-eager", "cpu"): table})
    q = [req(0, deadline=0.04, seq_len=16), req(1, deadline=0.04, seq_len=128)]
    d, _ = p.decide(0.0, q, rep(), None)  # 2 items padded to 128 tokens > 0.04 s
    assert d == BatchDecision(1)


def test_slo_aware_counts_items_not_requests() -> None:
    q = [req(0, items=4, deadline=0.05), req(1, items=4, deadline=0.05)]
    d, _ = slo().decide(0.0, q, rep(), None)  # 8 items fit (0.05), a third would not
    assert d.dispatch == 2 and d.wake_at is None
    q.append(req(2, items=4, deadline=0.05))
    d, _ = slo().decide(0.0, q, rep(), None)
    assert d == BatchDecision(2)


def test_slo_aware_full_batch_goes_at_once() -> None:
    d, _ = slo(max_batch=4).decide(0.0, queue(6, deadline=9.0), rep(), None)
    assert d == BatchDecision(4)


def test_slo_aware_dispatches_when_batch_cannot_grow_in_time() -> None:
    # 8 requests due at 0.054: lat(8) = 0.05 fits, lat(9) = 0.055 does not, so B = 8 and the
    # queue already holds it; there is 4 ms of slack, but waiting could not grow the batch
    # (min_batch_gain 0: 7 → 8 items buys only 3 % per item, which the default would not
    # wait for — see the test below)
    p = slo(margin_s=0.0, margin_ratio=0.0, min_batch_gain=0.0)
    d, _ = p.decide(0.0, queue(8, deadline=0.054), rep(), None)
    assert d == BatchDecision(8)
    d, _ = p.decide(0.0, queue(7, deadline=0.054), rep(), None)  # 7 < B: it waits
    assert d == BatchDecision(0, pytest.approx(0.054 - lat(7)))


def test_slo_aware_waits_only_when_a_fuller_batch_is_cheaper_per_item() -> None:
    # LINEAR: 3 items 25 ms (8.3 ms an item), 32 items 170 ms (5.3) — worth waiting for
    d, _ = slo().decide(0.0, queue(3, deadline=0.2), rep(), None)
    assert d.dispatch == 0 and d.wake_at is not None
    # 7 items queued, 8 fit by the deadline: 6.43 → 6.25 ms an item, under 10 % → go now
    d, _ = slo(margin_s=0.0, margin_ratio=0.0).decide(0.0, queue(7, deadline=0.054), rep(), None)
    assert d == BatchDecision(7)
    # no batching gain at all (20 ms an item at every size): never wait, however loaded
    flat = {("fp32-eager", "cpu"): LatencyTable((1, 32), (0,), ((0.02, 0.64),))}
    busy, often = rep(utilization=1.0, rate=50.0), ArrivalEstimate(-1.0, 0.001)
    d, _ = SloAware(latencies=flat).decide(0.0, queue(2, deadline=1.0), busy, often)
    assert d == BatchDecision(2)
    # the same load and table with the gain not required: it waits to fill
    p = SloAware(latencies=flat, min_batch_gain=0.0)
    d, _ = p.decide(0.0, queue(2, deadline=1.0), busy, often)
    assert d.dispatch == 0
    with pytest.raises(CoscaleError, match="min_batch_gain"):
        SloAware(min_batch_gain=-0.1)


def test_slo_aware_waits_with_margin_to_fill() -> None:
    d, _ = slo(max_wait_ratio=None).decide(0.0, queue(3, deadline=0.2), rep(), None)
    margin = 0.002 + 0.1 * lat(3)
    assert d == BatchDecision(0, pytest.approx(0.2 - lat(3) - margin))
    d, _ = slo(margin_s=0.0, margin_ratio=0.0, max_wait_ratio=None).decide(
        0.0, queue(3, deadline=0.2), rep(), None
    )
    assert d == BatchDecision(0, pytest.approx(0.2 - lat(3)))


def test_slo_aware_does_not_wait_when_no_arrival_is_expected_before_the_wake_up() -> None:
    lone = [req(0, 0.0, 0.2)]
    d, est = slo().decide(0.0, lone, rep(), None)  # one arrival seen: gap unknown
    assert d == BatchDecision(1)
    assert est == ArrivalEstimate(0.0, None)
    d, _ = slo().decide(0.0, lone, rep(), ArrivalEstimate(-1.0, 1.0))  # gap 1 s > wait 0.05
    assert d == BatchDecision(1)
    d, _ = slo().decide(0.0, lone, rep(), ArrivalEstimate(-0.01, 0.01))  # gap 10 ms < wait
    assert d == BatchDecision(0, pytest.approx(0.05))


def test_slo_aware_does_not_wait_when_one_at_a_time_keeps_up() -> None:
    lone = [req(0, 0.0, 0.2)]
    light = ArrivalEstimate(-0.04, 0.04)  # gap 40 ms < wait 50 ms, but lat(1)/gap = 0.375
    d, _ = slo().decide(0.0, lone, rep(), light)
    assert d == BatchDecision(1)
    d, _ = slo(busy_threshold=0.3).decide(0.0, lone, rep(), light)
    assert d == BatchDecision(0, pytest.approx(0.05))


def test_slo_aware_judges_the_load_per_replica_once_measured() -> None:
    lone = [req(0, 0.0, 0.2)]
    busy_model = ArrivalEstimate(-0.01, 0.01)  # the model: lat(1)/gap = 1.5, it would wait
    # this replica: busy 20 % of the time at 100 items/s → 20 items/s × lat(1) 15 ms = 0.3
    light = rep(utilization=0.2, rate=100.0)
    assert slo().decide(0.0, lone, light, busy_model)[0] == BatchDecision(1)
    # busy 40 % → 40 items/s × 15 ms = 0.6 ≥ 0.5: it waits
    loaded = rep(utilization=0.4, rate=100.0)
    assert slo().decide(0.0, lone, loaded, busy_model)[0] == BatchDecision(0, pytest.approx(0.05))
    # a loaded replica still needs an arrival expected within the wait (gap 1 s > 50 ms)
    assert slo().decide(0.0, lone, loaded, ArrivalEstimate(-1.0, 1.0))[0] == BatchDecision(1)
    # not measured yet (no rate): the model's gap decides
    unmeasured = rep(utilization=0.2)
    assert slo().decide(0.0, lone, unmeasured, busy_model)[0] == BatchDecision(
        0, pytest.approx(0.05)
    )
    # … spread over the model's READY replicas: 1.5 / 2 = 0.75 still waits, 1.5 / 4 does not
    two = rep(utilization=0.2, model_ready=2)
    assert slo().decide(0.0, lone, two, busy_model)[0] == BatchDecision(0, pytest.approx(0.05))
    four = rep(utilization=0.2, model_ready=4)
    assert slo().decide(0.0, lone, four, busy_model)[0] == BatchDecision(1)


def test_observe_arrivals_folds_only_new_requests_into_the_gap_average() -> None:
    est = observe_arrivals(None, [req(0, 1.0, 9.0), req(1, 1.1, 9.0)])
    assert est == ArrivalEstimate(1.1, pytest.approx(0.1))
    again = observe_arrivals(est, [req(0, 1.0, 9.0), req(1, 1.1, 9.0)])
    assert again == est  # nothing new
    later = observe_arrivals(est, [req(1, 1.1, 9.0), req(2, 1.6, 9.0)])
    assert later == ArrivalEstimate(1.6, pytest.approx(0.2 * 0.5 + 0.8 * 0.1))


def test_slo_aware_waits_at_most_a_quarter_of_the_oldest_budget_by_default() -> None:
    d, _ = slo().decide(0.0, queue(3, arrival=0.0, deadline=0.2), rep(), None)
    assert d == BatchDecision(0, pytest.approx(0.05))  # 0 + 0.25 × (0.2 − 0)
    d, _ = slo(max_wait_ratio=0.5).decide(0.0, queue(3, arrival=0.0, deadline=0.2), rep(), None)
    assert d == BatchDecision(0, pytest.approx(0.1))
    d, _ = slo().decide(0.05, queue(3, arrival=0.0, deadline=0.2), rep(), None)
    assert d == BatchDecision(3)


def test_slo_aware_max_wait_caps_the_wait() -> None:
    p = slo(max_wait_s=0.05, max_wait_ratio=None)
    d, _ = p.decide(0.01, queue(3, arrival=0.0, deadline=0.2), rep(), None)
    assert d == BatchDecision(0, pytest.approx(0.05))
    d, _ = p.decide(0.05, queue(3, arrival=0.0, deadline=0.2), rep(), None)
    assert d == BatchDecision(3)


def test_slo_aware_dispatches_when_wake_time_has_come() -> None:
    d, _ = slo(max_wait_ratio=None).decide(0.172, queue(3, deadline=0.2), rep(), None)
    assert d == BatchDecision(3)


def test_slo_aware_arrivals_rerun_the_rule_and_dispatch_grown_batch_without_slack() -> None:
    p = slo(max_wait_ratio=None)
    d, _ = p.decide(0.155, queue(3, deadline=0.2), rep(), None)
    assert d == BatchDecision(0, pytest.approx(0.1705))
    d, _ = p.decide(0.155, queue(6, deadline=0.2), rep(), None)  # wake 0.154 ≤ now
    assert d == BatchDecision(6)


def test_slo_aware_rate_fallback_without_table() -> None:
    p = SloAware()
    d, _ = p.decide(0.0, queue(10, deadline=0.05), rep(rate=100.0), None)  # k/100 ≤ 0.05
    assert d == BatchDecision(5)


def test_slo_aware_validates_parameters() -> None:
    with pytest.raises(CoscaleError, match="max_batch"):
        SloAware(max_batch=0)
    with pytest.raises(CoscaleError, match="max_wait_s"):
        SloAware(max_wait_s=-0.1)
    with pytest.raises(CoscaleError, match="max_wait_ratio"):
        SloAware(max_wait_ratio=1.5)


@settings(max_examples=300, deadline=None)
@given(
    now=st.floats(0.0, 1.0),
    deadlines=st.lists(st.floats(0.0, 1.5), min_size=1, max_size=40),
    items=st.lists(st.integers(1, 4), min_size=40, max_size=40),
    max_batch=st.integers(1, 40),
)
def test_slo_aware_never_dispatches_zero_nor_knowingly_misses(
    now: float, deadlines: list[float], items: list[int], max_batch: int
) -> None:
    q = [req(i, deadline=d, items=items[i]) for i, d in enumerate(deadlines)]
    d, _ = slo(max_batch=max_batch).decide(now, q, rep(), None)
    if d.dispatch == 0:
        assert d.wake_at is not None and d.wake_at > now
        return
    assert 1 <= d.dispatch <= len(q)
    sent = q[: d.dispatch]
    total = sum(r.items for r in sent)
    assert total <= max_batch or d.dispatch == 1
    all_late = all(now + lat(r.items) > r.deadline for r in sent)
    feasible = now + lat(total) <= min(r.deadline for r in sent) + 1e-12
    assert all_late or feasible
