"""Core types: frozen dataclasses that flow between the parts of coscale.

Policies read a :class:`Snapshot` and return decisions (:class:`Plan`,
:class:`BatchDecision`, :class:`RouteDecision`, :class:`AdmissionDecision`);
executors (the live runtime and the simulator) apply them. Everything here is
immutable and free of I/O so that the same objects can be fed to the simulator
and to the live controller.

Units, everywhere: times in seconds on the run's :class:`~coscale.clock.Clock`,
rates per second, money in US dollars, energy in joules.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

#: Most kept promises (or refusals) an executor holds for the next admission snapshot
#: (the newest are kept).
MAX_FEEDBACK = 256


class ReplicaState(StrEnum):
    """Life cycle of a replica: STARTING → READY → DRAINING → STOPPED."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


class Outcome(StrEnum):
    """How a request ended. ``LOST`` is never a valid final outcome; it is what
    the accounting reports for an accepted request that was never answered."""

    COMPLETED = "completed"
    FAILED = "failed"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True, slots=True)
class Request:
    """One inference request.

    ``items`` is the number of inputs it carries (a request may hold several);
    ``seq_len`` is the token count per item for text models, 0 otherwise.
    ``deadline`` is absolute (arrival + the model's latency SLO unless the
    caller set a tighter one).
    """

    id: int
    model: str
    arrival: float
    deadline: float
    tenant: str = "default"
    items: int = 1
    seq_len: int = 0


@dataclass(frozen=True, slots=True)
class Batch:
    """Requests dispatched together to one replica."""

    model: str
    requests: tuple[Request, ...]

    @property
    def items(self) -> int:
        """Total number of inputs in the batch."""
        return sum(r.items for r in self.requests)

    @property
    def seq_len(self) -> int:
        """Padded sequence length: the longest request (padding to the longest, not the max)."""
        return max((r.seq_len for r in self.requests), default=0)

    @property
    def earliest_deadline(self) -> float:
        return min((r.deadline for r in self.requests), default=math.inf)


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """What a policy may know about one replica at snapshot time.

    ``outstanding``: requests queued at or running on the replica.
    ``queued_work_s``: the replica's own estimate of seconds of work ahead of a new batch.
    ``rate``: measured throughput in items/s (0 when not yet measured).
    ``latency_s``: recent batch latency (exponentially weighted), 0 when unknown.
    ``utilization``: busy fraction of the replica over the last control interval, in [0, 1].
    ``capacity_rps``: items/s the replica can sustain within its model's SLO (from the profile).
    ``model_ready``: READY replicas of the same model when the view was taken, this one
    included (0: not given) — set on the free replica a batching policy is offered, so
    that it can judge the model's load per replica (``SloAware``, rule 7).
    """

    id: str
    model: str
    variant: str
    node_type: str
    state: ReplicaState
    spot: bool = False
    outstanding: int = 0
    queued_work_s: float = 0.0
    rate: float = 0.0
    latency_s: float = 0.0
    utilization: float = 0.0
    capacity_rps: float = 0.0
    started_at: float = 0.0
    model_ready: int = 0

    @property
    def serving(self) -> bool:
        return self.state is ReplicaState.READY


@dataclass(frozen=True, slots=True)
class ModelView:
    """Per-model observations at snapshot time.

    ``arrival_rate``: requests/s observed over the last control interval.
    ``queue_length``: requests waiting in the model's admission queue.
    ``tenant_queues``: ``(tenant, requests waiting, fair-queue weight)`` per tenant, sorted
    by tenant, when the queue is weighted-fair between tenants (every tenant with a weight
    or a waiting request); empty when it is FIFO. Requests put back after a failure are
    in ``queue_length`` but no tenant's count (they go first).
    ``promises``: for admitted requests of this model with a ``promised_by`` that
    completed since the previous admission decision, ``(tenant, promised, taken)``:
    seconds from the admission decision to ``promised_by`` and to the actual finish
    (see :class:`AdmissionDecision`), oldest first; executors keep the newest
    :data:`MAX_FEEDBACK` at most. Empty outside admission snapshots.
    ``refused``: ``(tenant, items)`` of this model's requests refused before admission
    (a tenant's rate limit or quota) since the previous admission decision — demand
    that admission did not see; at most :data:`MAX_FEEDBACK`. Empty outside admission
    snapshots.
    ``pressure``: requests of this model in the window that showed it needs capacity
    now — refused by admission, or admitted with a predicted finish beyond the
    allocation policy's ``pressure_fraction`` of their budget
    (:func:`~coscale.policies.admission.is_pressure`); set in the short windows of burst
    reactions, 0 elsewhere.
    """

    name: str
    arrival_rate: float
    queue_length: int = 0
    slo_s: float = 1.0
    accuracy_floor: float = 0.0
    p99_latency_s: float = 0.0
    tenant_queues: tuple[tuple[str, int, float], ...] = ()
    promises: tuple[tuple[str, float, float], ...] = ()
    refused: tuple[tuple[str, int], ...] = ()
    pressure: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A frozen view of the system that every policy decides from."""

    time: float
    models: tuple[ModelView, ...] = ()
    replicas: tuple[ReplicaView, ...] = ()

    def replicas_of(self, model: str) -> tuple[ReplicaView, ...]:
        return tuple(r for r in self.replicas if r.model == model)

    def model(self, name: str) -> ModelView | None:
        return next((m for m in self.models if m.name == name), None)


@dataclass(frozen=True, slots=True)
class ReplicaTarget:
    """Desired number of replicas of one model variant on one node type."""

    model: str
    variant: str
    node_type: str
    count: int
    spot: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    """An allocation decision: the full desired set of replicas. Executors reconcile to it."""

    time: float
    targets: tuple[ReplicaTarget, ...]
    reason: str = ""

    def count(self, model: str | None = None) -> int:
        return sum(t.count for t in self.targets if model is None or t.model == model)


@dataclass(frozen=True, slots=True)
class BatchDecision:
    """Dispatch the oldest ``dispatch`` queued requests now (0 = none), and/or
    ask to be called again at ``wake_at`` (None = only on the next event)."""

    dispatch: int
    wake_at: float | None = None


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Send the batch to ``replica_id``; None means no replica can take it now
    and the caller should retry after ``retry_after_s``."""

    replica_id: str | None
    retry_after_s: float = 0.0


@dataclass(frozen=True, slots=True)
class AdmissionDecision:
    """Admit the request, or reject it with a reason and a retry hint.

    ``promised_by``: for an admitted request, the completion time (absolute) the policy
    predicted, when it wants to learn from it (None otherwise). Executors report each
    such request back in :attr:`ModelView.promises` when it completes — the promised
    and the actual seconds from the decision to the finish — so the policy can learn
    from its own errors. ``priority``: queue it
    ahead of the requests admitted without (a tenant within its reserved share).
    """

    admit: bool
    reason: str = ""
    retry_after_s: float = 0.0
    promised_by: float | None = None
    priority: bool = False


@dataclass(frozen=True, slots=True)
class LatencySummary:
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    mean: float = 0.0


@dataclass(frozen=True, slots=True)
class RunSummary:
    """The machine-readable run summary that users' scripts rely on (DESIGN.md).

    ``lost`` counts requests that were accepted and never answered: it must be 0.
    ``reliability`` = completed / (requests − rejected), 1.0 when nothing was admitted.
    ``slo_attainment`` = requests completed within their deadline / requests.
    """

    requests: int
    completed: int
    failed: int
    rejected: int
    lost: int
    latency_ms: LatencySummary
    throughput_rps: float
    makespan_s: float
    cost_usd: float
    energy_j: float
    slo_attainment: float
    reliability: float
    preset: str
    scenario: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        data.update(extra)
        return data


@dataclass(frozen=True, slots=True)
class LatencyTable:
    """Measured batch latency of one variant on one node type, as a grid.

    ``latency_s[i][j]`` is the p50 latency in seconds of a batch of ``batch_sizes[j]``
    items whose items are ``seq_lens[i]`` tokens long (``seq_lens == (0,)`` for
    fixed-size inputs). Both axes are strictly increasing.

    :meth:`latency` interpolates linearly in batch size and in sequence length.
    Beyond the largest measured batch it extrapolates with the marginal cost per
    item of the last two points (never below the per-item cost of the largest batch);
    below the smallest it returns the smallest batch's latency (a batch is never
    cheaper than one item). Sequence lengths outside the measured range are clamped
    for the lower side and extrapolated linearly (attention cost grows with length)
    on the upper side. O(log B + log S).
    """

    batch_sizes: tuple[int, ...]
    seq_lens: tuple[int, ...]
    latency_s: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        if not self.batch_sizes or not self.seq_lens:
            raise ValueError("a latency table needs at least one batch size and one seq len")
        if len(self.latency_s) != len(self.seq_lens) or any(
            len(row) != len(self.batch_sizes) for row in self.latency_s
        ):
            raise ValueError("latency_s must have one row per seq len and one column per batch")

    def latency(self, items: int, seq_len: int = 0) -> float:
        """Predicted seconds to run a batch of ``items`` items padded to ``seq_len``."""
        if len(self.seq_lens) == 1:
            return self._row_latency(0, items)
        i = _bracket(self.seq_lens, seq_len)
        lo_s, hi_s = self.seq_lens[i], self.seq_lens[i + 1]
        lo, hi = self._row_latency(i, items), self._row_latency(i + 1, items)
        frac = (max(seq_len, lo_s) - lo_s) / (hi_s - lo_s)
        return max(min(lo, hi), lo + (hi - lo) * frac)

    def _row_latency(self, row: int, items: int) -> float:
        sizes, lat = self.batch_sizes, self.latency_s[row]
        items = max(items, 1)
        if len(sizes) == 1:
            return lat[0] * max(1.0, items / sizes[0])
        if items <= sizes[0]:
            return lat[0]
        j = _bracket(sizes, items)
        frac = (items - sizes[j]) / (sizes[j + 1] - sizes[j])
        value = lat[j] + (lat[j + 1] - lat[j]) * frac
        if items > sizes[-1]:
            value = max(value, lat[-1] * items / sizes[-1])
        return value

    def throughput(self, items: int, seq_len: int = 0) -> float:
        """Items per second at batch size ``items``."""
        return items / self.latency(items, seq_len)


def _bracket(axis: tuple[int, ...], x: int) -> int:
    """Index i such that axis[i] <= x < axis[i+1], clamped to [0, len-2]."""
    i = bisect.bisect_right(axis, x) - 1
    return min(max(i, 0), len(axis) - 2)
