"""One test per clause of the routing policies' docstrings (coscale/policies/routing.py)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from coscale.errors import CoscaleError
from coscale.policies.base import splitmix64
from coscale.policies.routing import (
    NO_REPLICA_RETRY_S,
    EarliestCompletion,
    LastPickState,
    LatencyInverse,
    LeastOutstanding,
    PowerOfTwo,
    PowerOfTwoState,
    Prequal,
    PrequalState,
    Probe,
    RandomRouting,
    ReadyViews,
    RoundRobin,
    SeedState,
    SwrrState,
    WeightedRoundRobin,
    _draw_index,
    _sample_distinct,
    candidates,
    nearest_rank_quantile,
)
from coscale.types import Batch, LatencyTable, ReplicaState, ReplicaView, Request


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


def batch(n: int = 1, items: int = 1, seq_len: int = 0, model: str = "m") -> Batch:
    reqs = tuple(
        Request(id=i, model=model, arrival=0.0, deadline=1.0, items=items, seq_len=seq_len)
        for i in range(n)
    )
    return Batch(model, reqs)


def flat(latency_per_item: float) -> LatencyTable:
    """A one-point table: latency(items) = latency_per_item × items."""
    return LatencyTable((1,), (0,), ((latency_per_item,),))


def run(policy: Any, replicas: list[ReplicaView], calls: int, b: Batch | None = None) -> list[str]:
    state = None
    out: list[str] = []
    for _ in range(calls):
        decision, state = policy.route(b or batch(), replicas, state)
        assert decision.replica_id is not None
        out.append(decision.replica_id)
    return out


ALL_POLICIES = [
    RoundRobin(),
    RandomRouting(),
    LeastOutstanding(),
    WeightedRoundRobin(),
    LatencyInverse(),
    PowerOfTwo(),
    Prequal(),
    EarliestCompletion(),
]


# ------------------------------------------------------------------------ common rules


@pytest.mark.parametrize("policy", ALL_POLICIES, ids=lambda p: p.name)
def test_only_ready_replicas_of_the_batch_model_are_candidates(policy: Any) -> None:
    replicas = [
        rep("a", model="other"),
        rep("b", state=ReplicaState.STARTING),
        rep("c", state=ReplicaState.DRAINING),
        rep("d", state=ReplicaState.STOPPED),
        rep("e", outstanding=3, queued_work_s=1.0, latency_s=0.5, rate=2.0),
    ]
    assert set(run(policy, replicas, 20)) == {"e"}


@pytest.mark.parametrize("policy", ALL_POLICIES, ids=lambda p: p.name)
def test_no_candidate_returns_none_with_retry_and_unchanged_state(policy: Any) -> None:
    replicas = [rep("a", state=ReplicaState.STARTING), rep("b", model="other")]
    _, state = policy.route(batch(model="other"), replicas, None)
    decision, after = policy.route(batch(), replicas, state)
    assert decision.replica_id is None
    assert decision.retry_after_s == NO_REPLICA_RETRY_S
    assert after == state


@pytest.mark.parametrize("policy", ALL_POLICIES, ids=lambda p: p.name)
def test_custom_retry_after(policy: Any) -> None:
    decision, _ = replace(policy, retry_after_s=0.7).route(batch(), [], None)
    assert decision == decision.__class__(None, 0.7)


@pytest.mark.parametrize("policy", ALL_POLICIES, ids=lambda p: p.name)
def test_decisions_are_deterministic_and_inputs_untouched(policy: Any) -> None:
    replicas = [rep(f"r{i}", outstanding=i % 3, latency_s=0.01 * (i + 1)) for i in range(6)]
    snapshot = list(replicas)
    assert run(policy, replicas, 30) == run(policy, replicas, 30)
    assert replicas == snapshot


@pytest.mark.parametrize("policy", ALL_POLICIES, ids=lambda p: p.name)
def test_negative_retry_rejected(policy: Any) -> None:
    with pytest.raises(CoscaleError, match="retry_after_s"):
        replace(policy, retry_after_s=-1.0)


# --------------------------------------------------------------------------- round robin


def test_round_robin_first_pick_is_smallest_id() -> None:
    d, s = RoundRobin().route(batch(), [rep("c"), rep("a"), rep("b")], None)
    assert d.replica_id == "a" and s == LastPickState("a")


def test_round_robin_follows_id_order_and_wraps() -> None:
    assert run(RoundRobin(), [rep("c"), rep("a"), rep("b")], 5) == ["a", "b", "c", "a", "b"]


def test_round_robin_new_replica_joins_at_its_place_and_removed_is_skipped() -> None:
    rr = RoundRobin()
    d, _ = rr.route(batch(), [rep("a"), rep("b"), rep("b2"), rep("c")], LastPickState("b"))
    assert d.replica_id == "b2"
    d, _ = rr.route(batch(), [rep("a"), rep("c")], LastPickState("b"))
    assert d.replica_id == "c"


# -------------------------------------------------------------------------------- random


def test_random_index_is_floor_u_times_n_from_the_seed() -> None:
    replicas = [rep("x"), rep("y"), rep("z")]
    nxt, u = splitmix64(7)
    d, s = RandomRouting(seed=7).route(batch(), replicas, None)
    assert d.replica_id == replicas[math.floor(u * 3)].id
    assert s == SeedState(nxt)
    # the state's seed, not the constructor's, drives later calls
    nxt2, u2 = splitmix64(nxt)
    d2, s2 = RandomRouting(seed=7).route(batch(), replicas, s)
    assert d2.replica_id == replicas[math.floor(u2 * 3)].id and s2 == SeedState(nxt2)


def test_random_is_uniform() -> None:
    counts = Counter(run(RandomRouting(seed=3), [rep("a"), rep("b"), rep("c")], 3000))
    assert all(900 <= counts[k] <= 1100 for k in "abc"), counts


# --------------------------------------------------------------------- least outstanding


def test_least_outstanding_picks_fewest() -> None:
    replicas = [rep("a", outstanding=4), rep("b", outstanding=1), rep("c", outstanding=2)]
    assert run(LeastOutstanding(), replicas, 3) == ["b", "b", "b"]


def test_least_outstanding_ties_rotate_after_last_pick() -> None:
    replicas = [rep("a", outstanding=2), rep("b", outstanding=2), rep("c", outstanding=2)]
    assert run(LeastOutstanding(), replicas, 4) == ["a", "b", "c", "a"]
    replicas[0] = rep("a", outstanding=5)
    d, _ = LeastOutstanding().route(batch(), replicas, LastPickState("c"))
    assert d.replica_id == "b"


# ------------------------------------------------------------------- weighted round robin


def test_weighted_round_robin_three_to_one_sequence() -> None:
    wrr = WeightedRoundRobin(weights={"gpu": 3.0, "cpu": 1.0})
    replicas = [rep("a", node_type="gpu"), rep("b", node_type="cpu")]
    assert run(wrr, replicas, 8) == ["a", "a", "b", "a"] * 2


def test_weighted_round_robin_unlisted_node_type_gets_default_weight() -> None:
    wrr = WeightedRoundRobin(weights={"gpu": 2.0}, default_weight=1.0)
    replicas = [rep("a", node_type="gpu"), rep("b", node_type="arm")]
    assert Counter(run(wrr, replicas, 300)) == {"a": 200, "b": 100}
    wrr4 = WeightedRoundRobin(weights={"gpu": 2.0}, default_weight=4.0)
    assert Counter(run(wrr4, replicas, 300)) == {"a": 100, "b": 200}


def test_weighted_round_robin_drops_counters_of_gone_replicas_and_starts_new_at_zero() -> None:
    wrr = WeightedRoundRobin()
    state = SwrrState((("a", 0.4), ("gone", -0.9)))
    d, s = wrr.route(batch(), [rep("a"), rep("new")], state)
    # a: 0.4 + 0.5 = 0.9 beats new: 0 + 0.5; the chosen counter loses the total (1.0)
    assert d.replica_id == "a"
    assert s == SwrrState((("a", pytest.approx(-0.1)), ("new", 0.5)))


def test_weighted_round_robin_rejects_non_positive_weights() -> None:
    with pytest.raises(CoscaleError, match="weights must be > 0"):
        WeightedRoundRobin(weights={"gpu": 0.0})
    with pytest.raises(CoscaleError, match="default_weight"):
        WeightedRoundRobin(default_weight=-1.0)


# ----------------------------------------------------------------------- latency-inverse


def test_latency_inverse_shares_proportional_to_inverse_latency() -> None:
    replicas = [rep("fast", latency_s=0.01), rep("slow", latency_s=0.03)]
    picks = run(LatencyInverse(), replicas, 400)
    assert Counter(picks) == {"fast": 300, "slow": 100}
    assert picks[:4].count("fast") == 3  # interleaved, not bunched


def test_latency_inverse_unknown_latency_gets_mean_of_known() -> None:
    replicas = [rep("a", latency_s=0.01), rep("b", latency_s=0.03), rep("c", latency_s=0.0)]
    # c counts as 0.02 → shares 1/0.01 : 1/0.03 : 1/0.02 = 6 : 2 : 3
    assert Counter(run(LatencyInverse(), replicas, 1100)) == {"a": 600, "b": 200, "c": 300}


def test_latency_inverse_all_unknown_is_equal_share_round_robin() -> None:
    replicas = [rep("a"), rep("b"), rep("c")]
    assert run(LatencyInverse(), replicas, 6) == ["a", "b", "c", "a", "b", "c"]


def test_latency_inverse_recomputes_shares_every_call() -> None:
    li = LatencyInverse()
    state = None
    replicas = [rep("a", latency_s=0.01), rep("b", latency_s=0.03)]
    for _ in range(40):
        _, state = li.route(batch(), replicas, state)
    swapped = [rep("a", latency_s=0.03), rep("b", latency_s=0.01)]
    picks = []
    for _ in range(400):
        d, state = li.route(batch(), swapped, state)
        picks.append(d.replica_id)
    assert 299 <= picks.count("b") <= 301


# -------------------------------------------------------------------------- power of two


def test_power_of_two_sends_to_the_sample_with_fewer_outstanding() -> None:
    replicas = [rep("a", outstanding=3), rep("b", outstanding=1)]
    assert set(run(PowerOfTwo(), replicas, 20)) == {"b"}


def test_power_of_two_samples_are_distinct() -> None:
    # if both samples could be the full replica, some calls would fail
    replicas = [rep("a", outstanding=4), rep("b", outstanding=5)]
    assert set(run(PowerOfTwo(), replicas, 50)) == {"a"}


def test_power_of_two_samples_uniformly() -> None:
    replicas = [rep(k) for k in "abcd"]
    counts = Counter(run(PowerOfTwo(seed=11), replicas, 4000))
    assert all(900 <= counts[k] <= 1100 for k in "abcd"), counts


def test_power_of_two_cap_excludes_replicas_at_max_ongoing() -> None:
    replicas = [rep("a", outstanding=4), rep("b", outstanding=5)]
    d, _ = PowerOfTwo(max_ongoing=5).route(batch(), replicas, None)
    assert d.replica_id == "a"
    d, _ = PowerOfTwo(max_ongoing=6).route(batch(), replicas, None)
    assert d.replica_id == "a"  # both accept; a has fewer
    d, _ = PowerOfTwo(max_ongoing=5).route(batch(), [rep("b", outstanding=5)], None)
    assert d.replica_id is None


def test_power_of_two_without_cap_always_accepts() -> None:
    replicas = [rep("a", outstanding=100), rep("b", outstanding=90)]
    assert set(run(PowerOfTwo(max_ongoing=None), replicas, 10)) == {"b"}


def test_power_of_two_single_candidate_is_the_sample() -> None:
    assert run(PowerOfTwo(), [rep("only", outstanding=4)], 3) == ["only"] * 3


def test_power_of_two_ties_go_to_the_first_sampled() -> None:
    replicas = [rep("a", outstanding=1), rep("b", outstanding=1)]
    for seed in range(20):
        _, u = splitmix64(seed)
        d, _ = PowerOfTwo(seed=seed).route(batch(), replicas, None)
        assert d.replica_id == replicas[math.floor(u * 2)].id


def test_power_of_two_sampling_is_a_partial_fisher_yates_in_constant_space() -> None:
    # the sparse sampler picks exactly what a partial Fisher–Yates over range(n) picks
    for n in (1, 2, 3, 10, 1000):
        for seed in range(30):
            pool, s = list(range(n)), seed
            for i in range(min(2, n)):
                s, j = _draw_index(s, n - i)
                pool[i], pool[i + j] = pool[i + j], pool[i]
            assert _sample_distinct(seed, n, min(2, n)) == (s, pool[: min(2, n)])


def test_ready_views_are_candidates_as_they_are() -> None:
    views = ReadyViews([rep("a"), rep("b")])
    assert candidates(batch(), views) is views
    mixed = [rep("a"), rep("x", model="other"), rep("s", state=ReplicaState.STARTING)]
    assert [r.id for r in candidates(batch(), mixed)] == ["a"]


def test_power_of_two_backoff_grows_by_step_up_to_max() -> None:
    p2c = PowerOfTwo()
    full = [rep("a", outstanding=5), rep("b", outstanding=7)]
    state = None
    waits = []
    for _ in range(25):
        d, state = p2c.route(batch(), full, state)
        assert d.replica_id is None
        waits.append(d.retry_after_s)
    assert waits == [pytest.approx(min(i * 0.025, 0.5)) for i in range(25)]
    assert state is not None and state.attempt == 25


def test_power_of_two_success_resets_attempts() -> None:
    p2c = PowerOfTwo()
    state = PowerOfTwoState(seed=0, attempt=9)
    d, state = p2c.route(batch(), [rep("a", outstanding=0)], state)
    assert d.replica_id == "a" and state.attempt == 0
    d, state = p2c.route(batch(), [rep("a", outstanding=5)], state)
    assert d.retry_after_s == 0.0 and state.attempt == 1


def test_power_of_two_validates_parameters() -> None:
    with pytest.raises(CoscaleError, match="max_ongoing"):
        PowerOfTwo(max_ongoing=0)
    with pytest.raises(CoscaleError, match="backoff_step_s"):
        PowerOfTwo(backoff_step_s=1.0, max_backoff_s=0.5)


# ------------------------------------------------------------------------------- prequal


def test_nearest_rank_quantile() -> None:
    assert nearest_rank_quantile(list(range(16)), 0.84) == 13  # ceil(13.44) − 1
    assert nearest_rank_quantile([5], 0.84) == 5
    assert nearest_rank_quantile([3, 1, 2, 4], 0.5) == 2


def test_prequal_probes_read_rif_and_latency_and_pool_keeps_most_recent() -> None:
    replicas = [rep(f"r{i:02d}", outstanding=i, latency_s=0.01 * (i + 1)) for i in range(20)]
    by_id = {r.id: r for r in replicas}
    pq = Prequal(pool_size=16, probes_per_query=3)
    state: PrequalState | None = None
    order: list[str] = []  # probe order, most recent last
    sent: dict[str, int] = {}  # requests sent since each replica's last probe
    for _ in range(10):
        d, state = pq.route(batch(), replicas, state)
        fresh = [p.replica_id for p in state.pool[-3:]]
        assert len(set(fresh)) == 3  # distinct probes per query
        for rid in fresh:
            order = [x for x in order if x != rid] + [rid]
            sent[rid] = 0
        assert d.replica_id is not None
        sent[d.replica_id] += 1
    assert state is not None
    assert [p.replica_id for p in state.pool] == order[-16:]
    for p in state.pool:
        assert p.rif == by_id[p.replica_id].outstanding + sent[p.replica_id]
        assert p.latency_s == by_id[p.replica_id].latency_s


def test_prequal_fresh_probe_replaces_older_probe_of_same_replica() -> None:
    views = [rep("a", outstanding=2, latency_s=0.2), rep("b", outstanding=1, latency_s=0.1)]
    old = (Probe("a", 9, 0.5), Probe("b", 1, 0.1))
    for seed in range(6):
        _, u = splitmix64(seed)
        probed = views[math.floor(u * 2)].id
        _, s = Prequal(probes_per_query=1).route(batch(), views, PrequalState(seed, old))
        # b is chosen either way (cold, lowest latency) and carries the request just sent
        if probed == "a":
            assert s.pool == (Probe("b", 2, 0.1), Probe("a", 2, 0.2))
        else:
            assert s.pool == (Probe("a", 9, 0.5), Probe("b", 2, 0.1))


def test_prequal_drops_probes_of_replicas_no_longer_candidates() -> None:
    old = PrequalState(seed=0, pool=(Probe("gone", 0, 0.0), Probe("a", 0, 0.1)))
    d, s = Prequal(probes_per_query=1).route(batch(), [rep("a", latency_s=0.1)], old)
    assert d.replica_id == "a"
    assert [p.replica_id for p in s.pool] == ["a"]


def _pool_replicas(latencies: dict[int, float]) -> tuple[list[ReplicaView], PrequalState]:
    replicas = [
        rep(f"r{i:02d}", outstanding=i, latency_s=latencies.get(i, 0.05 + i * 0.001))
        for i in range(16)
    ]
    pool = tuple(Probe(r.id, r.outstanding, r.latency_s) for r in replicas)
    return replicas, PrequalState(seed=1, pool=pool)


def test_prequal_hot_replicas_are_avoided_and_cold_lowest_latency_wins() -> None:
    # RIFs 0..15 → θ = 13; r14 and r15 are hot even though they are the fastest
    replicas, state = _pool_replicas({15: 0.001, 14: 0.002, 13: 0.003, 5: 0.004})
    d, s = Prequal(probes_per_query=1).route(batch(n=2), replicas, state)
    assert d.replica_id == "r13"  # RIF 13 is not above θ: cold
    assert {p.replica_id: p.rif for p in s.pool}["r13"] == 15  # + the batch's 2 requests


def test_prequal_hot_quantile_is_configurable() -> None:
    replicas, state = _pool_replicas({15: 0.001, 14: 0.002, 13: 0.003, 5: 0.004})
    d, _ = Prequal(probes_per_query=1, hot_quantile=0.5).route(batch(), replicas, state)
    assert d.replica_id == "r05"  # θ = 7: r13..r15 are hot


def test_prequal_latency_ties_go_to_lower_rif_then_id() -> None:
    replicas, state = _pool_replicas({3: 0.002, 2: 0.002})
    d, _ = Prequal(probes_per_query=1).route(batch(), replicas, state)
    assert d.replica_id == "r02"
    same = [rep("b", outstanding=1, latency_s=0.01), rep("a", outstanding=1, latency_s=0.01)]
    d, _ = Prequal(probes_per_query=2).route(batch(), same, None)
    assert d.replica_id == "a"


def test_prequal_unknown_latency_sorts_first() -> None:
    replicas = [rep("old", outstanding=0, latency_s=0.01), rep("new", outstanding=0)]
    d, _ = Prequal(probes_per_query=2).route(batch(), replicas, None)
    assert d.replica_id == "new"


def test_prequal_chosen_probe_rif_grows_by_the_batch_request_count() -> None:
    replicas = [rep("a", latency_s=0.01), rep("b", latency_s=0.02), rep("c", latency_s=0.03)]
    state = PrequalState(seed=5, pool=tuple(Probe(r.id, 0, r.latency_s) for r in replicas))
    d, state = Prequal(probes_per_query=1, pool_size=3).route(batch(n=3), replicas, state)
    assert d.replica_id == "a"
    assert {p.replica_id: p.rif for p in state.pool} == {"a": 3, "b": 0, "c": 0}


def test_prequal_validates_parameters() -> None:
    with pytest.raises(CoscaleError, match="probes_per_query"):
        Prequal(probes_per_query=17)
    with pytest.raises(CoscaleError, match="hot_quantile"):
        Prequal(hot_quantile=0.0)
    with pytest.raises(CoscaleError, match="pool_size"):
        Prequal(pool_size=0)


# ------------------------------------------------------------------- earliest completion


def test_earliest_completion_is_queued_work_plus_table_service() -> None:
    ec = EarliestCompletion(
        latencies={("fp32-eager", "cpu"): flat(0.1), ("fp32-eager", "gpu"): flat(0.01)}
    )
    cpu = rep("cpu1", node_type="cpu", queued_work_s=0.0)
    gpu = rep("gpu1", node_type="gpu", queued_work_s=0.25)
    b = batch(n=2)  # 2 items → cpu 0.2 s, gpu 0.02 s
    assert ec.completion_s(b, cpu) == pytest.approx(0.2)
    assert ec.completion_s(b, gpu) == pytest.approx(0.27)
    d, state = ec.route(b, [gpu, cpu], None)
    assert d.replica_id == "cpu1" and state is None
    d, _ = ec.route(batch(n=4), [gpu, cpu], None)  # cpu 0.4 vs gpu 0.29
    assert d.replica_id == "gpu1"


def test_earliest_completion_uses_batch_items_and_padded_seq_len() -> None:
    table = LatencyTable((1, 8), (16, 128), ((0.01, 0.04), (0.05, 0.2)))
    ec = EarliestCompletion(latencies={("fp32-eager", "cpu"): table})
    r = rep("a")
    reqs = (
        Request(1, "m", 0.0, 1.0, items=3, seq_len=16),
        Request(2, "m", 0.0, 1.0, items=5, seq_len=128),
    )
    assert ec.completion_s(Batch("m", reqs), r) == pytest.approx(0.2)


def test_earliest_completion_falls_back_to_rate_then_capacity() -> None:
    ec = EarliestCompletion()
    assert ec.completion_s(batch(n=4), rep("a", rate=8.0, queued_work_s=0.1)) == pytest.approx(0.6)
    assert ec.completion_s(batch(n=4), rep("b", capacity_rps=40.0)) == pytest.approx(0.1)
    d, _ = ec.route(batch(n=4), [rep("a", rate=8.0), rep("b", capacity_rps=40.0)], None)
    assert d.replica_id == "b"


def test_earliest_completion_ties_fewer_outstanding_then_id() -> None:
    ec = EarliestCompletion(latencies={("fp32-eager", "cpu"): flat(0.1)})
    d, _ = ec.route(batch(), [rep("a", outstanding=3), rep("b", outstanding=1)], None)
    assert d.replica_id == "b"
    d, _ = ec.route(batch(), [rep("b", outstanding=1), rep("a", outstanding=1)], None)
    assert d.replica_id == "a"


def test_earliest_completion_unknown_service_is_infinite_and_loses() -> None:
    ec = EarliestCompletion(latencies={("fp32-eager", "gpu"): flat(0.5)})
    unknown = rep("u", node_type="tpu")
    assert ec.completion_s(batch(), unknown) == math.inf
    d, _ = ec.route(batch(), [unknown, rep("k", node_type="gpu", queued_work_s=9.0)], None)
    assert d.replica_id == "k"


def test_earliest_completion_all_unknown_falls_to_fewest_outstanding_then_id() -> None:
    ec = EarliestCompletion()
    replicas = [rep("c", outstanding=2), rep("b", outstanding=1), rep("a", outstanding=1)]
    d, _ = ec.route(batch(), replicas, None)
    assert d.replica_id == "a"


def _dispatch_burst(policy: Any, n: int) -> list[float]:
    """Route n single-item batches arriving together to a fast replica that already has a
    0.2 s backlog and an idle slow one; return each batch's completion time."""
    service = {"fast": 0.01, "slow": 0.05}
    views = {
        "fast": rep("fast", node_type="gpu", queued_work_s=0.2, outstanding=20, latency_s=0.01),
        "slow": rep("slow", node_type="cpu", queued_work_s=0.0, outstanding=0, latency_s=0.05),
    }
    state = None
    completions = []
    for _ in range(n):
        d, state = policy.route(batch(), list(views.values()), state)
        assert d.replica_id is not None
        v = views[d.replica_id]
        done = v.queued_work_s + service[v.id]
        views[v.id] = replace(v, queued_work_s=done, outstanding=v.outstanding + 1)
        completions.append(done)
    return completions


def test_earliest_completion_beats_latency_inverse_and_round_robin_on_heterogeneous() -> None:
    ec = EarliestCompletion(
        latencies={("fp32-eager", "gpu"): flat(0.01), ("fp32-eager", "cpu"): flat(0.05)}
    )
    results = {p.name: _dispatch_burst(p, 12) for p in (ec, LatencyInverse(), RoundRobin())}
    ec_done = results["earliest-completion"]
    for other in ("latency-inverse", "round-robin"):
        assert max(ec_done) < max(results[other]) - 0.02, results
        assert sum(ec_done) < sum(results[other]), results
    # the optimum: the slow replica does 5 (done at 0.25), the fast one 7 (0.2 + 7 × 0.01)
    assert max(ec_done) == pytest.approx(0.27)
