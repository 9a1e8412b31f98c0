"""Routing policies: which replica a batch goes to.

Every policy implements :class:`~coscale.policies.base.RoutingPolicy`:
``route(batch, replicas, state) -> (RouteDecision, state)``.

Common rules (all policies):

* **Candidates** are the replicas whose ``model`` is the batch's model and whose state
  is ``READY``, in the order given (the executor's snapshot order); policies that
  break ties "by id" compare ids as strings.
* **No candidate** → ``RouteDecision(None, retry_after_s)`` with the constructor's
  ``retry_after_s`` (default ``NO_REPLICA_RETRY_S`` = 0.1 s); the state is returned
  unchanged.
* Decisions are pure: no clock, no I/O, inputs untouched; pseudo-random choices come
  from :func:`~coscale.policies.base.splitmix64` on a seed kept in the frozen state
  (the constructor's ``seed`` before the first call).

Complexity is O(n) in the number of replicas unless a policy says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from coscale.errors import CoscaleError
from coscale.policies.base import splitmix64
from coscale.policies.variant import LatencyMap, predicted_service_s
from coscale.types import Batch, ReplicaState, ReplicaView, RouteDecision

#: Seconds a caller waits before retrying when the model has no READY replica.
NO_REPLICA_RETRY_S = 0.1


class ReadyViews(list[ReplicaView]):
    """A list an executor guarantees holds only READY replicas of one model (the model
    of the batches it is passed with): :func:`candidates` returns it as it is, O(1)."""

    __slots__ = ()


def candidates(batch: Batch, replicas: Sequence[ReplicaView]) -> Sequence[ReplicaView]:
    """READY replicas of the batch's model, in the order given. O(n); O(1) for
    :class:`ReadyViews` (already exactly those)."""
    if isinstance(replicas, ReadyViews):
        return replicas
    return [r for r in replicas if r.model == batch.model and r.state is ReplicaState.READY]


def _check(policy: str, ok: bool, message: str, fix: str) -> None:
    if not ok:
        raise CoscaleError(f"{policy}: {message}", fix=fix, code="invalid_policy_params")


def _check_retry(policy: str, retry_after_s: float) -> None:
    _check(policy, retry_after_s >= 0, f"retry_after_s={retry_after_s} < 0", "use 0.1")


def _draw_index(seed: int, n: int) -> tuple[int, int]:
    """One uniform index in [0, n) and the next seed."""
    seed, u = splitmix64(seed)
    return seed, min(int(u * n), n - 1)


def _sample_distinct(seed: int, n: int, m: int) -> tuple[int, list[int]]:
    """``m`` distinct indices of ``range(n)`` (partial Fisher–Yates over a virtual
    identity array: only the swapped positions are stored). O(m)."""
    moved: dict[int, int] = {}
    picks: list[int] = []
    for i in range(m):
        seed, j = _draw_index(seed, n - i)
        k = i + j
        picks.append(moved.get(k, k))
        moved[k] = moved.get(i, i)
    return seed, picks


# --------------------------------------------------------------------------- round robin


@dataclass(frozen=True, slots=True)
class LastPickState:
    """The id of the replica chosen last (None before the first pick)."""

    last_id: str | None = None


def _next_after(cands: Sequence[ReplicaView], last_id: str | None) -> ReplicaView:
    """The candidate with the smallest id greater than ``last_id``, wrapping to the smallest."""
    later = [r for r in cands if last_id is None or r.id > last_id]
    return min(later or cands, key=lambda r: r.id)


@dataclass(frozen=True, kw_only=True)
class RoundRobin:
    """Round robin (a Kubernetes Service, the paper's Baseline).

    Pick the candidate whose id follows the last chosen id in ascending id order,
    wrapping around to the smallest id; the first call picks the smallest id. Keying on
    the id (not a counter) keeps the rotation fair when replicas come and go: a new
    replica joins the rotation at its place, a removed one is skipped.

    State: :class:`LastPickState`. Constants: ``retry_after_s`` = 0.1 s.
    """

    name = "round-robin"
    retry_after_s: float = NO_REPLICA_RETRY_S

    def __post_init__(self) -> None:
        _check_retry(self.name, self.retry_after_s)

    def route(
        self, batch: Batch, replicas: Sequence[ReplicaView], state: LastPickState | None
    ) -> tuple[RouteDecision, LastPickState]:
        state = LastPickState() if state is None else state
        cands = candidates(batch, replicas)
        if not cands:
            return RouteDecision(None, self.retry_after_s), state
        pick = _next_after(cands, state.last_id)
        return RouteDecision(pick.id), LastPickState(pick.id)


@dataclass(frozen=True, slots=True)
class SeedState:
    """A SplitMix64 stream position."""

    seed: int


@dataclass(frozen=True, kw_only=True)
class RandomRouting:
    """Uniform random choice among the candidates.

    ``index = floor(u × n)`` with ``u`` the next SplitMix64 draw from the state's seed
    (constructor ``seed`` = 0 before the first call), over the candidates in the order
    given. State: :class:`SeedState`.
    """

    name = "random"
    seed: int = 0
    retry_after_s: float = NO_REPLICA_RETRY_S

    def __post_init__(self) -> None:
        _check_retry(self.name, self.retry_after_s)

    def route(
        self, batch: Batch, replicas: Sequence[ReplicaView], state: SeedState | None
    ) -> tuple[RouteDecision, SeedState]:
        state = SeedState(self.seed) if state is None else state
        cands = candidates(batch, replicas)
        if not cands:
            return RouteDecision(None, self.retry_after_s), state
        seed, i = _draw_index(state.seed, len(cands))
        return RouteDecision(cands[i].id), SeedState(seed)


@dataclass(frozen=True, kw_only=True)
class LeastOutstanding:
    """Least outstanding requests (join the shortest queue).

    Pick the candidate with the fewest ``outstanding`` requests (queued + running).
    Ties rotate: among the tied candidates, the one whose id follows the last chosen
    id (as in :class:`RoundRobin`), so equal replicas share the load instead of the
    smallest id taking every tie. State: :class:`LastPickState`.
    """

    name = "least-outstanding"
    retry_after_s: float = NO_REPLICA_RETRY_S

    def __post_init__(self) -> None:
        _check_retry(self.name, self.retry_after_s)

    def route(
        self, batch: Batch, replicas: Sequence[ReplicaView], state: LastPickState | None
    ) -> tuple[RouteDecision, LastPickState]:
        state = LastPickState() if state is None else state
        cands = candidates(batch, replicas)
        if not cands:
            return RouteDecision(None, self.retry_after_s), state
        fewest = min(r.outstanding for r in cands)
        pick = _next_after([r for r in cands if r.outstanding == fewest], state.last_id)
        return RouteDecision(pick.id), LastPickState(pick.id)


# ------------------------------------------------------------- smooth weighted round robin


_TIE_DIGITS = 9


@dataclass(frozen=True, slots=True)
class SwrrState:
    """Smooth weighted round robin counters: ``(replica id, current)`` pairs."""

    current: tuple[tuple[str, float], ...] = ()


def _swrr_pick(
    cands: Sequence[ReplicaView], shares: Sequence[float], state: SwrrState
) -> tuple[ReplicaView, SwrrState]:
    """One step of smooth weighted round robin (nginx) over normalized ``shares``.

    ``current_i += share_i`` for every candidate; pick the largest ``current`` (ties →
    smallest id; counters equal to ``_TIE_DIGITS`` = 9 decimals tie, so float rounding
    does not break exact-share ties); ``current_pick −= Σ share``. Counters of replicas
    that are no longer candidates are dropped; a new candidate starts at 0. Over any window the
    pick counts differ from ``share_i × picks`` by less than one pick per replica.
    """
    old = dict(state.current)
    current = {r.id: old.get(r.id, 0.0) + s for r, s in zip(cands, shares, strict=True)}
    pick = min(cands, key=lambda r: (-round(current[r.id], _TIE_DIGITS), r.id))
    current[pick.id] -= sum(shares)
    return pick, SwrrState(tuple(sorted(current.items())))


@dataclass(frozen=True, kw_only=True)
class WeightedRoundRobin:
    """Weighted round robin with static weights per node type.

    ``share_i = w(node_type_i) / Σ_j w(node_type_j)`` with ``w`` from ``weights``
    (node type → weight > 0; a node type not listed gets ``default_weight`` = 1.0),
    dealt by smooth weighted round robin (nginx: add each share to a counter, pick the
    largest counter, subtract the total), so picks interleave instead of bunching.
    With weights 3:1 on replicas ``a`` and ``b`` the picks repeat ``a, a, b, a``: exactly
    3 of every 4 go to the weight-3 replica. State: :class:`SwrrState`.
    """

    name = "weighted-round-robin"
    weights: Mapping[str, float] = field(default_factory=dict)
    default_weight: float = 1.0
    retry_after_s: float = NO_REPLICA_RETRY_S

    def __post_init__(self) -> None:
        _check_retry(self.name, self.retry_after_s)
        bad = {k: v for k, v in self.weights.items() if not v > 0}
        _check(self.name, not bad, f"weights must be > 0, got {bad}", "give positive weights")
        _check(
            self.name,
            self.default_weight > 0,
            f"default_weight={self.default_weight} must be > 0",
            "use 1.0",
        )

    def route(
        self, batch: Batch, replicas: Sequence[ReplicaView], state: SwrrState | None
    ) -> tuple[RouteDecision, SwrrState]:
        state = SwrrState() if state is None else state
        cands = candidates(batch, replicas)
        if not cands:
            return RouteDecision(None, self.retry_after_s), state
        raw = [self.weights.get(r.node_type, self.default_weight) for r in cands]
        total = sum(raw)
        pick, state = _swrr_pick(cands, [w / total for w in raw], state)
        return RouteDecision(pick.id), state


@dataclass(frozen=True, kw_only=True)
class LatencyInverse:
    """Latency-inverse weighting (the seed paper's workload balancer).

    Replica i receives a share of the batches ``share_i = (1/L_i) / Σ_j (1/L_j)`` where
    ``L_i`` is its current processing latency (``ReplicaView.latency_s``), dealt
    deterministically by smooth weighted round robin (see :class:`WeightedRoundRobin`);
    the shares are recomputed at every call from the latest latencies.

    Edge cases: a replica whose latency is unknown (``latency_s ≤ 0``) is given the mean
    of the known latencies; when no latency is known every replica gets an equal share
    (plain round robin). State: :class:`SwrrState`.
    """

    name = "latency-inverse"
    retry_after_s: float = NO_REPLICA_RETRY_S

    def __post_init__(self) -> None:
        _check_retry(self.name, self.retry_after_s)

    def route(
        self, batch: Batch, replicas: Sequence[ReplicaView], state: SwrrState | None
    ) -> tuple[RouteDecision, SwrrState]:
        state = SwrrState() if state is None else state
        cands = candidates(batch, replicas)
        if not cands:
            return RouteDecision(None, self.retry_after_s), state
        known = [r.latency_s for r in cands if r.latency_s > 0]
        fill = sum(known) / len(known) if known else 1.0
        inv = [1.0 / (r.latency_s if r.latency_s > 0 else fill) for r in cands]
        total = sum(inv)
        pick, state = _swrr_pick(cands, [w / total for w in inv], state)
        return RouteDecision(pick.id), state


# ------------------------------------------------------------------- power of two choices


@dataclass(frozen=True, slots=True)
class PowerOfTwoState:
    """SplitMix64 stream position and the number of consecutive failed attempts."""

    seed: int
    attempt: int = 0


@dataclass(frozen=True, kw_only=True)
class PowerOfTwo:
    """Power of two choices (Ray Serve's default router; Knative's activator too).

    Sample two distinct candidates uniformly (SplitMix64; one candidate → just it).
    A candidate *accepts* if ``outstanding < max_ongoing`` (default 5, Ray Serve's
    ``max_ongoing_requests``; ``None`` = no cap, as Knative's activator with
    ``containerConcurrency: 0``). Send to the accepting sample with fewer outstanding
    requests (ties → the first sampled) and reset the attempt counter to 0.

    Neither accepts → ``RouteDecision(None, retry_after_s = min(attempt × backoff_step_s,
    max_backoff_s))`` with ``attempt`` the number of consecutive failures before this
    one (so the back-offs run 0, 25, 50, … ms up to 0.5 s with the defaults
    ``backoff_step_s`` = 0.025, ``max_backoff_s`` = 0.5), and the counter grows by one.
    State: :class:`PowerOfTwoState`. O(1) given :class:`ReadyViews` (the simulator's
    presentation), else O(n) to filter the candidates; sampling is O(1).
    """

    name = "power-of-two"
    max_ongoing: int | None = 5
    backoff_step_s: float = 0.025
    max_backoff_s: float = 0.5
    seed: int = 0
    retry_after_s: float = NO_REPLICA_RETRY_S

    def __post_init__(self) -> None:
        _check_retry(self.name, self.retry_after_s)
        _check(
            self.name,
            self.max_ongoing is None or self.max_ongoing >= 1,
            f"max_ongoing={self.max_ongoing} must be ≥ 1 or None",
            "use 5 (Ray Serve) or None (no cap)",
        )
        _check(
            self.name,
            0 <= self.backoff_step_s <= self.max_backoff_s,
            f"need 0 ≤ backoff_step_s ({self.backoff_step_s}) ≤ max_backoff_s "
            f"({self.max_backoff_s})",
            "use 0.025 and 0.5",
        )

    def route(
        self, batch: Batch, replicas: Sequence[ReplicaView], state: PowerOfTwoState | None
    ) -> tuple[RouteDecision, PowerOfTwoState]:
        state = PowerOfTwoState(self.seed) if state is None else state
        cands = candidates(batch, replicas)
        if not cands:
            return RouteDecision(None, self.retry_after_s), state
        seed, picks = _sample_distinct(state.seed, len(cands), min(2, len(cands)))
        cap = math.inf if self.max_ongoing is None else self.max_ongoing
        accepting = [cands[i] for i in picks if cands[i].outstanding < cap]
        if not accepting:
            backoff = min(state.attempt * self.backoff_step_s, self.max_backoff_s)
            return RouteDecision(None, backoff), PowerOfTwoState(seed, state.attempt + 1)
        pick = min(accepting, key=lambda r: r.outstanding)  # min keeps the first of ties
        return RouteDecision(pick.id), PowerOfTwoState(seed, 0)


# --------------------------------------------------------------------------------- prequal


@dataclass(frozen=True, slots=True)
class Probe:
    """A probe result: the replica's requests in flight (RIF) and its recent latency."""

    replica_id: str
    rif: int
    latency_s: float


@dataclass(frozen=True, slots=True)
class PrequalState:
    """SplitMix64 stream position and the probe pool, oldest probe first."""

    seed: int
    pool: tuple[Probe, ...] = ()


def nearest_rank_quantile(values: Sequence[int], q: float) -> int:
    """The nearest-rank ``q`` quantile: ``sorted(values)[ceil(q × n) − 1]`` (n ≥ 1)."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


@dataclass(frozen=True, kw_only=True)
class Prequal:
    """Prequal (Google, NSDI 2024): probe, keep a pool, hot-cold lexicographic choice.

    Per call:

    1. Drop pool probes of replicas that are no longer candidates.
    2. Probe ``probes_per_query`` (default 3) distinct candidates sampled uniformly
       (SplitMix64; all of them when fewer): a probe reads the replica's RIF
       (``outstanding``) and latency (``latency_s``) from the snapshot. A fresh probe
       replaces the pool's older probe of the same replica and goes to the pool's end.
    3. Keep only the ``pool_size`` (default 16) most recent probes.
    4. Hot threshold ``θ`` = the nearest-rank ``hot_quantile`` (default 0.84) quantile
       of the pool's RIFs; a probe is *hot* if its RIF > θ, otherwise *cold*.
    5. Pick the cold probe with the lowest latency (ties → lower RIF, then smaller id).
       A latency of 0 (not yet measured) sorts first, so an idle new replica gets tried.
       (Prequal's "all hot → lowest RIF" case cannot arise here: the lowest RIF in the
       pool is never above the pool's own quantile, so a cold probe always exists.)
    6. Add the batch's request count to the chosen probe's RIF, so the next calls see
       the load just sent before the replica is probed again.

    State: :class:`PrequalState`. O(n + pool_size log pool_size).
    """

    name = "prequal"
    pool_size: int = 16
    probes_per_query: int = 3
    hot_quantile: float = 0.84
    seed: int = 0
    retry_after_s: float = NO_REPLICA_RETRY_S

    def __post_init__(self) -> None:
        _check_retry(self.name, self.retry_after_s)
        _check(self.name, self.pool_size >= 1, f"pool_size={self.pool_size} < 1", "use 16")
        _check(
            self.name,
            1 <= self.probes_per_query <= self.pool_size,
            f"probes_per_query={self.probes_per_query} not in [1, pool_size]",
            "use 3",
        )
        _check(
            self.name,
            0.0 < self.hot_quantile <= 1.0,
            f"hot_quantile={self.hot_quantile} not in (0, 1]",
            "use 0.84",
        )

    def route(
        self, batch: Batch, replicas: Sequence[ReplicaView], state: PrequalState | None
    ) -> tuple[RouteDecision, PrequalState]:
        state = PrequalState(self.seed) if state is None else state
        cands = candidates(batch, replicas)
        if not cands:
            return RouteDecision(None, self.retry_after_s), state
        ids = {r.id for r in cands}
        pool = [p for p in state.pool if p.replica_id in ids]
        seed, picks = _sample_distinct(
            state.seed, len(cands), min(self.probes_per_query, len(cands))
        )
        for i in picks:
            r = cands[i]
            pool = [p for p in pool if p.replica_id != r.id]
            pool.append(Probe(r.id, r.outstanding, r.latency_s))
        pool = pool[-self.pool_size :]
        theta = nearest_rank_quantile([p.rif for p in pool], self.hot_quantile)
        cold = [p for p in pool if p.rif <= theta]
        best = min(cold, key=lambda p: (p.latency_s, p.rif, p.replica_id))
        sent = len(batch.requests)
        pool = [Probe(p.replica_id, p.rif + sent, p.latency_s) if p is best else p for p in pool]
        return RouteDecision(best.replica_id), PrequalState(seed, tuple(pool))


# ---------------------------------------------------------------------- earliest completion


@dataclass(frozen=True, kw_only=True)
class EarliestCompletion:
    """coscale: send the batch to the replica expected to finish it first.

    ``completion_i = queued_work_s_i + service_i(batch)`` (seconds from now), where
    ``service_i`` is the predicted latency of this batch (``batch.items`` items padded
    to ``batch.seq_len``) on replica i: from ``latencies[(variant, node_type)]`` (the
    measured table, already scaled to the node type — see
    :func:`~coscale.policies.variant.latency_map`), else ``items / rate`` when only the
    measured rate is known, else ``items / capacity_rps``.
    Pick the smallest completion; ties → fewer ``outstanding``, then smaller id.

    Edge case: a replica whose service time is unknown (no table, rate 0, capacity 0)
    has completion ``+inf``; when that holds for all, the choice falls to the fewest
    outstanding, then the smallest id.

    Unlike latency-inverse shares or round robin, this accounts for both the work
    already queued at each replica and how fast each replica runs *this* batch, so on
    heterogeneous replicas it never sends a batch where it will finish later. State:
    none (``None``). O(n log T).
    """

    name = "earliest-completion"
    latencies: LatencyMap = field(default_factory=dict)
    retry_after_s: float = NO_REPLICA_RETRY_S

    def __post_init__(self) -> None:
        _check_retry(self.name, self.retry_after_s)

    def completion_s(self, batch: Batch, replica: ReplicaView) -> float:
        """Predicted seconds from now until ``replica`` finishes ``batch`` (inf if unknown)."""
        service = predicted_service_s(self.latencies, replica, batch.items, batch.seq_len)
        return math.inf if service is None else replica.queued_work_s + service

    def route(
        self, batch: Batch, replicas: Sequence[ReplicaView], state: None
    ) -> tuple[RouteDecision, None]:
        cands = candidates(batch, replicas)
        if not cands:
            return RouteDecision(None, self.retry_after_s), None
        pick = min(cands, key=lambda r: (self.completion_s(batch, r), r.outstanding, r.id))
        return RouteDecision(pick.id), None
