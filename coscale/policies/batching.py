"""Batching policies: how many queued requests a free replica takes now.

Every policy implements :class:`~coscale.policies.base.BatchingPolicy`:
``decide(now, queue, replica, state) -> (BatchDecision, state)``. The executor calls it
when ``replica`` is free, on every arrival while it stays free, and at the ``wake_at``
the last decision asked for. ``BatchDecision(k, wake_at)`` dispatches the oldest ``k``
requests (``k = 0``: none) and/or asks to be called again at ``wake_at``.

Common rules (all policies):

* ``queue`` is the model's queue, oldest first. **Empty queue** →
  ``BatchDecision(0, None)``, state unchanged.
* **Batch size is counted in items** (a request may carry several): a limit of ``m``
  items takes the longest prefix of the queue whose items total ≤ ``m``, but always at
  least one request (a request larger than the limit goes alone). With one item per
  request (the common case) this is simply ``min(m, len(queue))`` requests.
* Waiting time of a request is measured from its ``arrival``.
* Decisions are pure: no clock (``now`` is an argument), no I/O, inputs untouched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from coscale.errors import CoscaleError
from coscale.policies.variant import LatencyMap, predicted_service_s
from coscale.types import BatchDecision, ReplicaView, Request

EMPTY = BatchDecision(0, None)


def prefix_within(queue: Sequence[Request], max_items: int) -> int:
    """Number of leading requests whose items total ≤ ``max_items`` (≥ 1 if the queue is
    non-empty). O(k)."""
    total, k = 0, 0
    for r in queue:
        if k > 0 and total + r.items > max_items:
            break
        total += r.items
        k += 1
    return k


def _items(queue: Sequence[Request], k: int) -> int:
    return sum(r.items for r in queue[:k])


def _check(policy: str, ok: bool, message: str, fix: str) -> None:
    if not ok:
        raise CoscaleError(f"{policy}: {message}", fix=fix, code="invalid_policy_params")


def _full_or_timeout(
    now: float, queue: Sequence[Request], max_items: int, timeout_s: float
) -> BatchDecision:
    """Dispatch a full batch, or everything once the oldest has waited ``timeout_s``."""
    k = prefix_within(queue, max_items)
    full = k < len(queue) or _items(queue, k) >= max_items
    deadline = queue[0].arrival + timeout_s
    if full or now >= deadline:
        return BatchDecision(k)
    return BatchDecision(0, deadline)


@dataclass(frozen=True, kw_only=True)
class NoBatching:
    """No batching: dispatch the oldest request alone, at once (the paper's Baseline).

    Non-empty queue → ``BatchDecision(1)``. State: none. O(1).
    """

    name = "none"

    def decide(
        self, now: float, queue: Sequence[Request], replica: ReplicaView, state: None
    ) -> tuple[BatchDecision, None]:
        return (BatchDecision(1) if queue else EMPTY), None


@dataclass(frozen=True, kw_only=True)
class FixedBatching:
    """Fixed-size batches with a timeout.

    * The queue holds a full batch (``max_batch`` items, default 8, or more requests
      than fit in one) → dispatch ``max_batch`` items at once.
    * Otherwise, the oldest request has waited ≥ ``timeout_s`` (default 0.02 s) →
      dispatch everything queued.
    * Otherwise wait: ``BatchDecision(0, wake_at = oldest.arrival + timeout_s)``.

    State: none. O(max_batch).
    """

    name = "fixed"
    max_batch: int = 8
    timeout_s: float = 0.02

    def __post_init__(self) -> None:
        _check(self.name, self.max_batch >= 1, f"max_batch={self.max_batch} < 1", "use 8")
        _check(self.name, self.timeout_s >= 0, f"timeout_s={self.timeout_s} < 0", "use 0.02")

    def decide(
        self, now: float, queue: Sequence[Request], replica: ReplicaView, state: None
    ) -> tuple[BatchDecision, None]:
        if not queue:
            return EMPTY, None
        return _full_or_timeout(now, queue, self.max_batch, self.timeout_s), None


@dataclass(frozen=True, kw_only=True)
class RayServeBatch:
    """Ray Serve ``@serve.batch``: dispatch when full or when the wait timeout expires.

    Same rule as :class:`FixedBatching` with Ray Serve's defaults: ``max_batch_size``
    = 10 items, ``batch_wait_timeout_s`` = 0.01 s, measured from the oldest request's
    arrival. No tuning. State: none. O(max_batch_size).
    """

    name = "rayserve-batch"
    max_batch_size: int = 10
    batch_wait_timeout_s: float = 0.01

    def __post_init__(self) -> None:
        _check(self.name, self.max_batch_size >= 1, "max_batch_size < 1", "use 10")
        _check(self.name, self.batch_wait_timeout_s >= 0, "batch_wait_timeout_s < 0", "use 0.01")

    def decide(
        self, now: float, queue: Sequence[Request], replica: ReplicaView, state: None
    ) -> tuple[BatchDecision, None]:
        if not queue:
            return EMPTY, None
        return _full_or_timeout(now, queue, self.max_batch_size, self.batch_wait_timeout_s), None


@dataclass(frozen=True, kw_only=True)
class TritonDynamic:
    """Triton's dynamic batcher, when a model instance is free:

    1. The queue holds a full batch (``max_batch_size`` items, default 8, or more
       requests than fit) → dispatch ``max_batch_size`` items at once.
    2. Else, if a size in ``preferred_batch_sizes`` (default none) can be formed — some
       prefix of the queue totals exactly that many items — dispatch the largest such.
    3. Else, if the oldest request has waited ≥ ``max_queue_delay_us`` (default 0 =
       send at once) → dispatch everything queued.
    4. Else wait: ``wake_at = oldest.arrival + max_queue_delay_us × 1e-6``.

    State: none. O(max_batch_size).
    """

    name = "triton"
    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: float = 0.0

    def __post_init__(self) -> None:
        _check(self.name, self.max_batch_size >= 1, "max_batch_size < 1", "use 8")
        _check(
            self.name,
            all(1 <= p <= self.max_batch_size for p in self.preferred_batch_sizes),
            f"preferred_batch_sizes {self.preferred_batch_sizes} outside [1, max_batch_size]",
            "list sizes between 1 and max_batch_size",
        )
        _check(self.name, self.max_queue_delay_us >= 0, "max_queue_delay_us < 0", "use 0")

    def decide(
        self, now: float, queue: Sequence[Request], replica: ReplicaView, state: None
    ) -> tuple[BatchDecision, None]:
        if not queue:
            return EMPTY, None
        k = prefix_within(queue, self.max_batch_size)
        if k < len(queue) or _items(queue, k) >= self.max_batch_size:
            return BatchDecision(k), None
        cumulative: dict[int, int] = {}
        total = 0
        for j, r in enumerate(queue[:k], start=1):
            total += r.items
            cumulative[total] = j
        formable = [p for p in self.preferred_batch_sizes if p in cumulative]
        if formable:
            return BatchDecision(cumulative[max(formable)]), None
        deadline = queue[0].arrival + self.max_queue_delay_us * 1e-6
        if now >= deadline:
            return BatchDecision(k), None
        return BatchDecision(0, deadline), None


# ------------------------------------------------------------------------------ clipper


@dataclass(frozen=True, slots=True)
class AimdState:
    """Per-replica batch-size targets and the replicas whose last batch is not yet judged."""

    sizes: tuple[tuple[str, float], ...] = ()
    awaiting: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True, kw_only=True)
class ClipperAimd:
    """Clipper's adaptive batching: additive increase, multiplicative decrease, per replica.

    Each replica has a batch-size target ``s`` (float, starts at ``initial_batch`` = 1).
    When the replica is free again after a batch this policy dispatched to it, the
    executor has reported that batch's latency in ``replica.latency_s``; then

    * ``latency_s ≤ slo`` → ``s = min(s + step, max_batch)`` (``step`` = 1,
      ``max_batch`` = 64);
    * ``latency_s > slo`` → ``s = max(1, s × (1 − decrease))`` (``decrease`` = 0.1: cut
      by 10 %);
    * ``latency_s ≤ 0`` (not reported) → ``s`` unchanged.

    Each batch is judged once. ``slo`` is the constructor's ``slo_s``, or when that is
    ``None`` (default) the oldest queued request's ``deadline − arrival`` (its SLO).
    Then dispatch ``floor(s)`` items at once (Clipper does not wait for a batch to fill).
    State: :class:`AimdState`. O(replicas seen + floor(s)).
    """

    name = "clipper-aimd"
    initial_batch: float = 1.0
    step: float = 1.0
    decrease: float = 0.1
    max_batch: int = 64
    slo_s: float | None = None

    def __post_init__(self) -> None:
        _check(self.name, self.max_batch >= 1, f"max_batch={self.max_batch} < 1", "use 64")
        _check(
            self.name,
            1 <= self.initial_batch <= self.max_batch,
            f"initial_batch={self.initial_batch} not in [1, max_batch]",
            "use 1",
        )
        _check(self.name, self.step > 0, f"step={self.step} must be > 0", "use 1")
        _check(self.name, 0 < self.decrease < 1, f"decrease={self.decrease} not in (0, 1)", "0.1")
        _check(
            self.name,
            self.slo_s is None or self.slo_s > 0,
            f"slo_s={self.slo_s} must be > 0",
            "omit it to use the requests' SLO",
        )

    def decide(
        self, now: float, queue: Sequence[Request], replica: ReplicaView, state: AimdState | None
    ) -> tuple[BatchDecision, AimdState]:
        state = AimdState() if state is None else state
        if not queue:
            return EMPTY, state
        sizes = dict(state.sizes)
        size = sizes.get(replica.id, self.initial_batch)
        if replica.id in state.awaiting and replica.latency_s > 0:
            slo = self.slo_s if self.slo_s is not None else queue[0].deadline - queue[0].arrival
            if replica.latency_s <= slo:
                size = min(size + self.step, float(self.max_batch))
            else:
                size = max(1.0, size * (1.0 - self.decrease))
        sizes[replica.id] = size
        k = prefix_within(queue, math.floor(size))
        return BatchDecision(k), AimdState(
            tuple(sorted(sizes.items())), state.awaiting | {replica.id}
        )


# ----------------------------------------------------------------------------- slo-aware


@dataclass(frozen=True, slots=True)
class ArrivalEstimate:
    """SLO-aware batching state: the newest arrival seen and the EWMA of the gaps
    between arrivals (None until two arrivals have been seen)."""

    last_arrival: float = -math.inf
    gap_s: float | None = None


#: Weight of the newest inter-arrival gap in :class:`ArrivalEstimate`'s average.
GAP_EWMA_ALPHA = 0.2


def observe_arrivals(state: ArrivalEstimate | None, queue: Sequence[Request]) -> ArrivalEstimate:
    """Fold the queue's requests newer than ``state.last_arrival`` into the gap EWMA.

    The queue is oldest first, so the new requests are its tail; each gap between
    consecutive new arrivals (and from the previous newest) updates
    ``gap ← α·gap_new + (1 − α)·gap`` with α = :data:`GAP_EWMA_ALPHA`; the first gap
    seeds it. O(new requests).
    """
    est = state or ArrivalEstimate()
    start = len(queue)
    while start > 0 and queue[start - 1].arrival > est.last_arrival:
        start -= 1
    last, gap = est.last_arrival, est.gap_s
    for r in queue[start:]:
        if math.isfinite(last):
            new = max(r.arrival - last, 0.0)
            gap = new if gap is None else GAP_EWMA_ALPHA * new + (1 - GAP_EWMA_ALPHA) * gap
        last = r.arrival
    return ArrivalEstimate(last, gap)


@dataclass(frozen=True, kw_only=True)
class SloAware:
    """coscale: the largest batch that still meets its deadlines, waiting to fill it.

    Let ``P`` = the longest queue prefix within ``max_batch`` items (default 32),
    ``lat(k)`` = predicted latency on this replica of the first ``k`` requests (their
    items summed, padded to their longest ``seq_len``; from ``latencies[(variant,
    node_type)]``, else items / measured rate, else items / capacity_rps) and ``d(k)`` =
    the earliest deadline among the first ``k``. Batch ``k`` is *feasible* iff
    ``now + lat(k) ≤ d(k)``. In order:

    1. **Late requests go at once.** If the oldest request cannot meet its deadline even
       alone (``now + lat(that request) > its deadline``), dispatch the leading run
       of such requests (at most ``P``) together, so they do not hold up the others.
    2. **Unknown latency** (no table, rate and capacity 0) → dispatch ``P`` at once.
    3. ``k* = max{k ≤ P : feasible}`` (≥ 1 by rule 1). If ``k* < P`` — the queue
       already holds more than can finish in time — dispatch ``k*``.
    4. If the queue holds more than ``P`` requests (the batch is full), dispatch ``P``.
    5. ``B`` = the largest batch (items ≤ ``max_batch``) that the replica could still
       finish by ``d(P)`` if it started now (padded to the same ``seq_len``). If ``P``
       already holds ``B`` items, dispatch ``P``: waiting cannot grow it.
    6. Otherwise wait for the batch to fill: ``wake_at = d(P) − lat(P) − margin`` with
       ``margin = margin_s + margin_ratio × lat(P)`` (defaults 0.002 s and 0.1: a
       10 % allowance for prediction error), capped at ``oldest.arrival +
       max_wait_ratio × (oldest.deadline − oldest.arrival)`` (default 0.25: waiting may
       spend at most a quarter of the oldest request's latency budget, the rest is left
       for what the profile does not see — transport, HTTP, queueing behind a busy
       replica; ``None``: no cap) and at ``oldest.arrival + max_wait_s`` when
       ``max_wait_s`` is set (default ``None``: no cap). If ``wake_at ≤ now``,
       dispatch ``P`` now instead. New arrivals re-run this rule, which dispatches as
       soon as the grown batch has no slack left.
    7. **Wait only when batching is needed and arrivals are likely.** With ``g`` the mean
       gap between arrivals (EWMA) and ``lat(1)`` the oldest request's latency alone,
       wait only if ``g`` is known (two arrivals seen), ``g ≤ wake_at − now`` (another
       request is expected before the wake-up) and the *replica's* load served one at
       a time is at least ``busy_threshold`` (default 0.5: it would be busy at least
       half the time, so batching buys throughput). That load is ``utilization × rate
       × lat(1)`` — the replica's measured busy share times its items per busy second
       is the items it serves per second, each costing ``lat(1)`` alone — when the
       replica has measured both (``utilization`` and ``rate`` > 0, after its first
       control interval); before that, the model's ``lat(1) / (g · n)`` with ``n`` the
       model's READY replicas (``replica.model_ready``, at least 1): its arrivals spread
       evenly over them (``g ≤ 0`` counts as loaded). Per replica, because the model's
       arrivals spread over all its replicas: judged by ``lat(1) / g`` alone, a model
       with many lightly loaded replicas kept making each of them wait (the simulated
       Figure 3's 10-task reference, on 1,840 READY MiniLM replicas, waited for batches
       that 50+ tasks did not, and its efficiency figure came out at 13).
       Otherwise dispatch ``P`` now: at low load waiting would only add latency — and
       in a closed loop it would feed itself, the wait stretching the gaps it was
       meant to fill.
       And wait only if a fuller batch is cheaper per item: with ``B`` of rule 5,
       ``lat(P) / items(P) ≥ (1 + min_batch_gain) × lat(B) / B`` (default 0.1: growing
       the batch must buy at least 10 % more items per busy second). Where batching
       buys nothing — MiniLM at 256 tokens on one core costs 19.2 ms an item alone and
       18.9–21 ms an item in batches of 2–32 — waiting only adds latency. (Measured:
       neutral in the simulated presets, 3–9 % more simulated throughput at 200–1,000
       closed-loop tasks; docs/benchmarks.md.)

    So ``k ≥ 1`` whenever the decision is to dispatch, a batch is never sent knowing it
    misses a deadline it could have met, and batches grow only on slack and on traffic.
    State: :class:`ArrivalEstimate` (the EWMA of inter-arrival gaps, updated from the
    queue on every call by :func:`observe_arrivals`). O(max_batch × log T).
    """

    name = "slo-aware"
    latencies: LatencyMap = field(default_factory=dict)
    max_batch: int = 32
    margin_s: float = 0.002
    margin_ratio: float = 0.1
    max_wait_ratio: float | None = 0.25
    busy_threshold: float = 0.5
    max_wait_s: float | None = None
    min_batch_gain: float = 0.1

    def __post_init__(self) -> None:
        _check(self.name, self.max_batch >= 1, f"max_batch={self.max_batch} < 1", "use 32")
        _check(self.name, self.margin_s >= 0, f"margin_s={self.margin_s} < 0", "use 0.002")
        _check(
            self.name, self.margin_ratio >= 0, f"margin_ratio={self.margin_ratio} < 0", "use 0.1"
        )
        _check(
            self.name,
            self.busy_threshold >= 0,
            f"busy_threshold={self.busy_threshold} < 0",
            "omit it (0.5) or give a utilization ≥ 0",
        )
        _check(
            self.name,
            self.max_wait_ratio is None or 0 <= self.max_wait_ratio <= 1,
            f"max_wait_ratio={self.max_wait_ratio} outside [0, 1]",
            "omit it (0.25) or give a fraction of the SLO budget",
        )
        _check(
            self.name,
            self.max_wait_s is None or self.max_wait_s >= 0,
            f"max_wait_s={self.max_wait_s} < 0",
            "omit it or give seconds ≥ 0",
        )
        _check(
            self.name,
            self.min_batch_gain >= 0,
            f"min_batch_gain={self.min_batch_gain} < 0",
            "omit it (0.1) or give a fraction ≥ 0",
        )

    def _lat(self, replica: ReplicaView, items: int, seq_len: int) -> float | None:
        return predicted_service_s(self.latencies, replica, items, seq_len)

    def decide(
        self,
        now: float,
        queue: Sequence[Request],
        replica: ReplicaView,
        state: ArrivalEstimate | None,
    ) -> tuple[BatchDecision, ArrivalEstimate | None]:
        if not queue:
            return EMPTY, state
        est = observe_arrivals(state, queue)
        return self._decide(now, queue, replica, est.gap_s), est

    def _decide(
        self, now: float, queue: Sequence[Request], replica: ReplicaView, gap_s: float | None
    ) -> BatchDecision:
        if not queue:
            return EMPTY
        p = prefix_within(queue, self.max_batch)
        late = self._late_run(now, queue, replica, p)
        if late:
            return BatchDecision(late)
        # per prefix length k = 1..p: (latency, earliest deadline, items, seq_len)
        rows: list[tuple[float, float, int, int]] = []
        items, seq, dl = 0, 0, math.inf
        for r in queue[:p]:
            items, seq, dl = items + r.items, max(seq, r.seq_len), min(dl, r.deadline)
            lat = self._lat(replica, items, seq)
            if lat is None:
                return BatchDecision(p)
            rows.append((lat, dl, items, seq))
        k_star = max(k for k, (lat, d, _, _) in enumerate(rows, start=1) if now + lat <= d)
        if k_star < p or p < len(queue):
            return BatchDecision(k_star)
        lat_p, d_p, items_p, seq_p = rows[-1]
        room = self._capacity_by(now, d_p, seq_p, replica, items_p)
        if items_p >= room or not self._batching_pays(replica, lat_p, items_p, room, seq_p):
            return BatchDecision(p)
        wake = d_p - lat_p - (self.margin_s + self.margin_ratio * lat_p)
        oldest = queue[0]
        if self.max_wait_ratio is not None:
            wake = min(
                wake, oldest.arrival + self.max_wait_ratio * (oldest.deadline - oldest.arrival)
            )
        if self.max_wait_s is not None:
            wake = min(wake, queue[0].arrival + self.max_wait_s)
        if wake <= now or not self._worth_waiting(gap_s, wake - now, rows[0][0], replica):
            return BatchDecision(p)
        return BatchDecision(0, wake)

    def _worth_waiting(
        self, gap_s: float | None, wait_s: float, lat_one: float, replica: ReplicaView
    ) -> bool:
        """Rule 7: an arrival is expected within the wait and the replica's load needs
        batching."""
        if gap_s is None or gap_s > wait_s:
            return False
        if replica.utilization > 0 and replica.rate > 0:
            return replica.utilization * replica.rate * lat_one >= self.busy_threshold
        replicas = max(1, replica.model_ready)
        return gap_s <= 0 or lat_one / (gap_s * replicas) >= self.busy_threshold

    def _batching_pays(
        self, replica: ReplicaView, lat_now: float, items_now: int, room: int, seq_len: int
    ) -> bool:
        """Rule 7, last condition: ``room`` items cost at least ``min_batch_gain`` less
        per item than the ``items_now`` queued (``lat_now``)."""
        lat_room = self._lat(replica, room, seq_len)
        if lat_room is None or lat_room <= 0 or lat_now <= 0:
            return True
        return lat_now / items_now >= (1.0 + self.min_batch_gain) * lat_room / room

    def _late_run(self, now: float, queue: Sequence[Request], replica: ReplicaView, p: int) -> int:
        """Length of the leading run (≤ p) of requests that miss their deadline even alone."""
        n = 0
        for r in queue[:p]:
            lat = self._lat(replica, r.items, r.seq_len)
            if lat is None or now + lat <= r.deadline:
                break
            n += 1
        return n

    def _capacity_by(
        self, now: float, deadline: float, seq_len: int, replica: ReplicaView, start: int
    ) -> int:
        """Largest item count in [start, max_batch] that finishes by ``deadline`` if started now."""
        best = start
        for b in range(start + 1, self.max_batch + 1):
            lat = self._lat(replica, b, seq_len)
            if lat is None or now + lat > deadline:
                break
            best = b
        return best
