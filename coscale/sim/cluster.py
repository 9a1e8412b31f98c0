"""The cluster simulator: request-level, on the :class:`~coscale.sim.kernel.Kernel`, running
the same policy objects as the live server.

It is an *executor* (DESIGN.md, "decide, then do"): policies decide from frozen views, the
simulator applies their decisions to simulated replicas and measures what happens.

Pipeline of one request
-----------------------
1. **Arrival** (from :class:`Arrivals`, a trace or generator, or a :class:`ClosedLoop`
   of clients): a :class:`~coscale.types.Request` with ``deadline = arrival + SLO``.
   With ``connections`` = C (open-loop arrivals only: ``coscale load``'s connection
   pool), at most C requests are at the server at once: one scheduled while C are
   unanswered waits in the client (FIFO) and reaches the server — its ``arrival`` and
   deadline in the log — when one of them is answered (any outcome).
2. **Admission**: ``admission.decide(request, snapshot)``. Rejected → outcome REJECTED
   at its arrival time. The snapshot it reads is O(G), not O(R): for
   :class:`~coscale.policies.admission.DeadlineAdmission`, whose rule depends on the
   model's READY replicas only through sums (capacity, outstanding) and the fastest
   service, each (variant, node type) group is one aggregate view (its replicas' summed
   ``outstanding`` and ``capacity_rps``), plus one STARTING view when replicas are
   starting — the same decision, up to floating-point summation order. ``AdmitAll``
   admits without being called (its decision is constant); any other admission policy
   gets a full snapshot of the model's replicas (O(R) per arrival). The model view
   carries, as live, each tenant's waiting requests and weight under fair queueing
   (``tenant_queues``) and, for admitted requests with a ``promised_by`` completed since
   the previous admission decision, ``(tenant, promised_by − decided, finish −
   decided)`` (``promises``). Each replica's ``capacity_rps`` there is, as live, its
   measured cycle rate where that is lower than the profile and its batches are full
   enough (:func:`~coscale.policies.admission.admission_capacity`) — measured per group
   here (EWMAs over the batches of all its replicas, :meth:`Group.observe_cycle`), per
   replica live.
3. **Queue**: the model's :class:`~coscale.sim.queues.ModelQueue` — FIFO, or weighted fair
   queueing between tenants when the model has a fair queue (several tenants).
   **Timeout** (as the live data plane): a request still in the model's queue
   ``timeout_factor`` (default :data:`TIMEOUT_FACTOR`, 10, the live
   ``DEFAULT_TIMEOUT_FACTOR``) × its model's SLO after its arrival is answered TIMED_OUT
   then (the live 504, counted failed); one already handed to a replica completes. It is
   dropped from the queue lazily (skipped when it reaches the head or is taken in a
   batch; until then a batching policy may still see it, as live). A retried request
   whose timeout has passed times out as it is put back. One timer per request that is
   still queued after its arrival's dispatch (none for the others). ``None``: no timeout.
4. **Batching**, whenever the model has a *free* replica (READY, holding no batch): the
   batching policy is asked, for the fastest free replica (smallest batch-1 latency, then
   smallest id) and the queue in dispatch order, how many requests to dispatch; a
   ``wake_at`` is honoured with a timer. A batch is capped at the model's ``max_batch``
   items (at least one request).
5. **Routing**: the routing policy picks the replica among candidates presented by the
   :mod:`~coscale.sim.replicas` presenters (same decision as over all READY replicas, at
   O(G log R) or O(log R) per batch for earliest-completion, round robin and least
   outstanding; O(R) for the others). No replica → the batch goes back to the front of
   the queue and dispatch is retried after ``retry_after_s``. A batch routed to a busy
   replica waits in that replica's FIFO (so the free replica may take the next batch).
6. **Service**: ``latency(items, padded seq_len) / speedup`` from the option's table
   (:mod:`~coscale.sim.profiles`; requests of different lengths: the sum over the
   worker's length-sorted runs, :func:`~coscale.sim.profiles.batch_latency`),
   deterministic. **Completion**: every request of the
   batch is COMPLETED then — also when it is past its deadline (it then misses the SLO).

Control loop
------------
Every ``interval_s`` — the first decision one interval into the run, after one interval
of observations — the controller builds a :class:`~coscale.types.Snapshot` (per model:
``arrival_rate`` = arrivals of the last interval / interval, queue length, p99 latency of
the requests completed in it; per replica not stopped: outstanding, ``queued_work_s``,
EWMA batch latency and rate, ``utilization`` = busy time / READY time within the interval,
``capacity_rps`` from the profile, ``started_at`` = when it became READY, or was decided
while STARTING), calls ``allocation.decide`` and reconciles to the plan:

* per target key (model, variant, node type, spot): READY replicas are kept first (the
  busiest), then STARTING ones (the soonest ready); missing ones are started (READY after
  the node type's ``startup_s``); surplus STARTING ones stop at once;
* surplus READY replicas are drained (no new batch; they finish what they hold, then
  stop) — except that a model never has fewer READY replicas than ``min(plan count,
  READY replicas it had)`` while its new replicas start: the busiest surplus replicas are
  kept as *cover* and drained as replacements become READY (Kubernetes' rolling update
  with ``maxUnavailable: 0``). Plans that keep their own ready replicas (the predictive
  and oracle policies) never need cover;
* a pool never holds more than its ``S_t`` (max nodes × replicas per node) replicas,
  draining ones included: starts beyond it are deferred to the next decision (and cover
  on that node type is drained to make room).

The run starts with ``initial`` replicas READY at time 0 (the scenario's ``count`` nodes,
see :mod:`coscale.sim.run`).

**Reactions to bursts**: when the allocation policy has a ``react`` method and a
``react_interval_s`` (the predictive policy with ``burst_ratio``), every
``react_interval_s`` from the start it is given the short window's snapshot (per model:
arrivals since the previous reaction / the window, the queue now, the window's
``pressure``; every replica's view) and a plan it returns is reconciled as above — the
live controller's loop (:mod:`coscale.runtime.controller`, "Reactions to bursts"). With
the policy's ``pressure_gap_s`` set, an admission decision that shows pressure
(:func:`~coscale.policies.admission.is_pressure`) also posts a reaction at ``max(now,
previous reaction + pressure_gap_s)``, unless one is already due. The fluid simulator
reacts on its steps, without pressure (its admission is a rule on rates, not a
decision per request).

Faults
------
Each replica draws its death time from :class:`~coscale.sim.faults.FaultModel` when its
start is decided. A dying replica stops at once; its running and queued batches' requests
go back to the front of the model queue with one more retry each — a request retried more
than ``max_retries`` times (default 3) FAILS. As the live controller does
(``Controller.replica_lost``), a replacement is started at once (READY after the node
type's ``startup_s``) when the last plan (before the first decision: the initial
replicas) still wants more READY or STARTING replicas of the dead one's key than are left
and its node type has room; otherwise plans see the replica gone at the next decision.

Accounting
----------
* Every request ends COMPLETED, FAILED, REJECTED, or TIMED_OUT (its timeout passed in
  the queue, or it was still unanswered ``drain_limit_s`` after the workload's end);
  ``lost`` is asserted to be 0.
* Cost: each replica is billed from its start decision until it stops (or the end of the
  run) at its node type's $/h (spot or on-demand) / ``replicas_per_node``.
* Energy: each replica draws ``idle_watts / replicas_per_node`` while it exists and
  ``(peak_watts − idle_watts) / replicas_per_node`` more while it runs a batch — the
  linear power model of :meth:`~coscale.catalog.nodes.NodeType.watts`, shared per
  replica, integrated exactly (the draw is piecewise constant between events).
* The run ends at ``max(workload duration, last answer)``.

Determinism: one kernel ordered by (time, sequence), one seeded ``numpy`` generator (fault
draws, closed-loop model choice), policies with their own seeded state, and
insertion-ordered containers only: the same inputs and seed give the same run.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

from coscale.errors import CoscaleError, InvalidInputError
from coscale.policies.admission import (
    AdmitAll,
    DeadlineAdmission,
    WeightedFairQueue,
    is_pressure,
)
from coscale.policies.allocation.capacity import capacity_rps
from coscale.policies.base import (
    AdmissionPolicy,
    AllocationPolicy,
    BatchingPolicy,
    Pool,
    RoutingPolicy,
    VariantOption,
    reactions_of,
)
from coscale.sim.faults import PREEMPTION, FaultModel
from coscale.sim.kernel import Kernel
from coscale.sim.profiles import truncate_table
from coscale.sim.queues import ModelQueue
from coscale.sim.replicas import (
    DRAINING,
    READY,
    STARTING,
    STOPPED,
    Group,
    Presenter,
    SimReplica,
    make_presenter,
)
from coscale.telemetry.summary import NO_OUTCOME, OUTCOME_CODES, RequestRecords, summarize
from coscale.telemetry.timeseries import TimeSeries
from coscale.types import (
    MAX_FEEDBACK,
    Batch,
    ModelView,
    Outcome,
    Plan,
    ReplicaTarget,
    ReplicaView,
    Request,
    RunSummary,
    Snapshot,
)

__all__ = [
    "TIMEOUT_FACTOR",
    "Arrivals",
    "ClosedLoop",
    "ClusterSimulator",
    "ModelSetup",
    "RequestLog",
    "SimResult",
]

F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]

#: Default retries of a request whose replica died before it fails.
MAX_RETRIES = 3
#: Default seconds after the workload's end before unanswered requests time out.
DRAIN_LIMIT_S = 600.0
#: Default queue timeout as a multiple of the model's SLO: the live data plane's
#: ``DEFAULT_TIMEOUT_FACTOR`` (coscale.runtime.dataplane, which imports this module).
TIMEOUT_FACTOR = 10.0
#: Default seconds between time-series samples.
SAMPLE_INTERVAL_S = 15.0
#: Progress callbacks per run (at most).
PROGRESS_STEPS = 200

_COMPLETED = OUTCOME_CODES[Outcome.COMPLETED]
_FAILED = OUTCOME_CODES[Outcome.FAILED]
_REJECTED = OUTCOME_CODES[Outcome.REJECTED]
_TIMED_OUT = OUTCOME_CODES[Outcome.TIMED_OUT]
_NAN = float("nan")


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class ModelSetup:
    """One model as the simulator serves it: SLO, options (the groups allocation may
    place), the typical request length, and its own routing, batching and admission
    policy objects (one per model, so their latency tables and state are the model's).

    ``batch_limit``: the most items the batching policy puts in a batch (1 without
    batching): replicas' ``capacity_rps`` is read from the table up to it.
    ``fair_queue``: orders the model's queue between tenants (None → FIFO).
    """

    name: str
    slo_s: float
    options: tuple[VariantOption, ...]
    routing: RoutingPolicy[Any]
    batching: BatchingPolicy[Any]
    admission: AdmissionPolicy[Any]
    accuracy_floor: float = 0.0
    max_batch: int = 64
    batch_limit: int = 64
    typical_seq_len: int = 0
    fair_queue: WeightedFairQueue | None = None


@dataclass(frozen=True, eq=False)
class Arrivals:
    """Open-loop arrivals: sorted ``times`` (s), the index of each request's model in the
    simulator's model list, its ``seq_len`` and tenant index."""

    times: F64
    models: I32
    seq_lens: I32
    tenants: I32
    tenant_names: tuple[str, ...]
    duration_s: float

    def __post_init__(self) -> None:
        n = self.times.shape[0]
        if not (self.models.shape[0] == self.seq_lens.shape[0] == self.tenants.shape[0] == n):
            raise InvalidInputError(
                "arrivals: times, models, seq_lens and tenants differ in length.",
                fix="give one value per request in every column.",
            )
        if n and (float(self.times[-1]) > self.duration_s or float(self.times[0]) < 0):
            raise InvalidInputError(
                "arrivals: times must lie in [0, duration_s].", fix="check the workload."
            )

    def __len__(self) -> int:
        return int(self.times.shape[0])


@dataclass(frozen=True, slots=True)
class ClosedLoop:
    """``clients`` clients; each sends a request, and its next one when the last is answered
    but no sooner than ``clients / rate_rps`` seconds after its previous send (the clients'
    total rate is capped at ``rate_rps``). Client ``k`` sends first at ``k / rate_rps``.
    Each request's model is drawn with probabilities ``model_weights`` (normalised)."""

    clients: int
    rate_rps: float
    duration_s: float
    model_weights: tuple[float, ...]
    seq_len: int = 0
    tenant: str = "default"

    def __post_init__(self) -> None:
        if self.clients < 1 or not self.rate_rps > 0 or not self.duration_s > 0:
            raise InvalidInputError(
                f"closed loop: need clients >= 1, rate > 0 and duration > 0 (got "
                f"{self.clients}, {self.rate_rps}, {self.duration_s}).",
                fix="fix the generator's concurrency, rate_rps and duration_s.",
            )


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True, eq=False)
class RequestLog:
    """Per-request columns of a run (one row per request, by id).

    ``outcome``: the summary's outcome codes; ``replica``: index of the replica that
    answered (−1 if none); ``service_start``: when its batch started; ``batch_size``:
    requests in that batch; ``retries``: times it was taken back from a dead replica;
    ``model``/``tenant``: indexes into ``model_names``/``tenant_names``.
    """

    arrival: F64
    deadline: F64
    finish: F64
    outcome: npt.NDArray[np.int8]
    model: I32
    tenant: I32
    seq_len: I32
    replica: npt.NDArray[np.int64]
    service_start: F64
    batch_size: I32
    retries: I32
    model_names: tuple[str, ...]
    tenant_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.arrival.shape[0])

    def records(self) -> RequestRecords:
        """The four columns :func:`~coscale.telemetry.summary.summarize` reads."""
        return RequestRecords(self.arrival, self.finish, self.outcome, self.deadline)

    def columns(self) -> dict[str, Any]:
        """Named columns (model and tenant as names, outcome as its name)."""
        names = {code: o.value for o, code in OUTCOME_CODES.items()}
        names[NO_OUTCOME] = "lost"
        models = np.asarray(self.model_names, dtype=object)
        tenants = np.asarray(self.tenant_names, dtype=object)
        outcome = np.asarray([names[int(c)] for c in range(max(names) + 1)], dtype=object)
        return {
            "id": np.arange(len(self), dtype=np.int64),
            "model": models[self.model] if len(self) else np.zeros(0, dtype=object),
            "tenant": tenants[self.tenant] if len(self) else np.zeros(0, dtype=object),
            "arrival_s": self.arrival,
            "deadline_s": self.deadline,
            "finish_s": self.finish,
            "latency_ms": (self.finish - self.arrival) * 1000.0,
            "outcome": outcome[self.outcome] if len(self) else np.zeros(0, dtype=object),
            "slo_met": (self.outcome == _COMPLETED) & (self.finish <= self.deadline),
            "seq_len": self.seq_len,
            "replica": self.replica,
            "service_start_s": self.service_start,
            "batch_size": self.batch_size,
            "retries": self.retries,
        }


@dataclass(frozen=True, eq=False)
class SimResult:
    """A run's summary, its per-request log, its time series and its replicas' history
    (``replicas``: one row per replica ever started: id, model, variant, node type,
    spot, decided, ready, stopped, cause)."""

    summary: RunSummary
    requests: RequestLog
    series: TimeSeries
    replicas: tuple[tuple[Any, ...], ...] = field(default=())


# --------------------------------------------------------------------------- the model runtime


class _Model:
    """Per-model runtime state (internal)."""

    __slots__ = (
        "admission",
        "admit_all",
        "aggregate",
        "arrivals_burst",
        "arrivals_sample",
        "arrivals_tick",
        "astate",
        "batching",
        "bstate",
        "by_key",
        "completed_sample",
        "covers",
        "dead",
        "groups",
        "index",
        "latencies_tick",
        "miss_sample",
        "n_idle",
        "n_starting",
        "name",
        "planned",
        "presenter",
        "pressure_burst",
        "promised",
        "promises",
        "queue",
        "ready",
        "routing",
        "rstate",
        "setup",
        "slo_s",
        "tenants",
        "timeout_s",
        "wake_at",
    )

    def __init__(self, index: int, setup: ModelSetup) -> None:
        self.index = index
        self.setup = setup
        self.name = setup.name
        self.slo_s = setup.slo_s
        groups = [
            Group(
                o,
                capacity_rps(
                    dataclasses.replace(o, latency=truncate_table(o.latency, setup.batch_limit)),
                    setup.slo_s,
                    seq_len=setup.typical_seq_len,
                ),
                setup.typical_seq_len,
            )
            for o in setup.options
        ]
        self.by_key: dict[tuple[str, str], Group] = {}
        for g in groups:
            self.by_key.setdefault((g.variant, g.node.name), g)
        self.groups = sorted(
            self.by_key.values(), key=lambda g: (g.speed_s, g.node.name, g.variant)
        )
        fair = setup.fair_queue
        self.queue = ModelQueue(fair.weight if fair is not None else None)
        self.routing = setup.routing
        self.batching = setup.batching
        self.admission = setup.admission
        self.admit_all = isinstance(setup.admission, AdmitAll)
        self.aggregate = isinstance(setup.admission, DeadlineAdmission)
        self.presenter: Presenter = make_presenter(setup.routing, self.groups)
        self.rstate: Any = None
        self.bstate: Any = None
        self.astate: Any = None
        self.ready: dict[str, SimReplica] = {}
        self.n_starting = 0
        self.n_idle = 0
        self.wake_at: float | None = None
        self.arrivals_tick = 0
        self.arrivals_burst = 0
        self.pressure_burst = 0
        self.arrivals_sample = 0
        self.completed_sample = 0
        self.miss_sample = 0
        self.latencies_tick: list[float] = []
        self.planned = 0
        self.covers: list[SimReplica] = []
        self.dead: set[int] = set()
        self.timeout_s = float("inf")
        # admission feedback (ModelView.promises, tenant_queues): request → (decided at,
        # promised by)
        self.promised: dict[int, tuple[float, float]] = {}
        self.promises: deque[tuple[str, float, float]] = deque(maxlen=MAX_FEEDBACK)
        self.tenants = tuple(fair.weights) if fair is not None else ()

    def waiting(self) -> int:
        """Requests in the queue, the timed-out ones not yet dropped not counted."""
        return len(self.queue) - len(self.dead)

    def free(self) -> SimReplica | None:
        """The fastest idle READY replica (groups by batch-1 latency, then smallest id)."""
        for g in self.groups:
            r = g.best_idle()
            if r is not None:
                return r
        return None


# --------------------------------------------------------------------------- the simulator


class ClusterSimulator:
    """One run of one policy bundle on one workload (module docstring).

    ``models``: the models served (their order is the order of ``Arrivals.models``
    indexes). ``allocation``: the allocation policy object. ``pools``: ``S_t`` per node
    type. ``interval_s``: the control interval. ``initial``: replicas READY at time 0.
    ``rng``: the seeded generator for fault draws and closed-loop choices.
    ``audit``: re-decide every route and admission over all replicas and raise
    ``AssertionError`` if the fast path's decision differs (tests; O(R) per request).
    ``service_scale`` and ``startup_s``: the world where it differs from what the
    policies know (the fidelity replay of a live run, :mod:`coscale.bench.sim`): every
    batch takes its table's latency × ``service_scale`` and a started replica is READY
    after ``startup_s`` (None: its node type's), while the policies, their latency
    tables and the replicas' profiled ``capacity_rps`` stay the profile's and the
    catalog's — as on the live server, whose policies know the profile, not the
    machine's speed that day. ``service_factors``: the world's batch-to-batch
    dispersion around that (a live run's measured service times over the table's, each
    divided by their mean, :func:`coscale.bench.sim.service_factors`): each batch's
    service is also multiplied by one of them drawn uniformly at random, from a
    generator spawned from ``rng`` (so the other draws are unchanged); None: every batch
    takes exactly its table's latency × ``service_scale``.
    """

    def __init__(
        self,
        models: Sequence[ModelSetup],
        allocation: AllocationPolicy[Any],
        pools: Sequence[Pool],
        arrivals: Arrivals | ClosedLoop,
        *,
        interval_s: float,
        rng: np.random.Generator,
        initial: Sequence[ReplicaTarget] = (),
        faults: FaultModel | None = None,
        max_retries: int = MAX_RETRIES,
        drain_limit_s: float = DRAIN_LIMIT_S,
        sample_interval_s: float = SAMPLE_INTERVAL_S,
        timeout_factor: float | None = TIMEOUT_FACTOR,
        connections: int | None = None,
        service_scale: float = 1.0,
        startup_s: float | None = None,
        service_factors: Sequence[float] | None = None,
        preset: str = "",
        scenario: str = "",
        audit: bool = False,
    ) -> None:
        _require(bool(models), "the simulator needs at least one model", "add a model")
        _require(interval_s > 0, f"control interval must be > 0 s, got {interval_s}", "use 15")
        _require(sample_interval_s > 0, "sample interval must be > 0 s", "use 15")
        _require(max_retries >= 0, f"max_retries must be >= 0, got {max_retries}", "use 3")
        _require(drain_limit_s >= 0, "drain limit must be >= 0 s", "use 600")
        _require(
            timeout_factor is None or timeout_factor > 0,
            f"timeout factor must be > 0 or None, got {timeout_factor}",
            "use 10 (the live data plane's) or None for no timeout",
        )
        _require(
            service_scale > 0 and (startup_s is None or startup_s >= 0),
            f"need service_scale > 0 and startup_s >= 0 or None, got {service_scale} and "
            f"{startup_s}",
            "use 1.0 and None (the profile's speed and the catalog's start-up)",
        )
        factors = None if service_factors is None else np.asarray(service_factors, float)
        _require(
            factors is None
            or (factors.size > 0 and bool(np.all(np.isfinite(factors) & (factors > 0)))),
            "service_factors must be a non-empty sequence of finite numbers > 0",
            "give a live run's service times over the table's, or None",
        )
        #: (generator, factors) of the world's batch-to-batch scatter, or None.
        self._scatter = None if factors is None else (rng.spawn(1)[0], factors)
        self._models = [_Model(i, s) for i, s in enumerate(models)]
        for m in self._models:
            for g in m.by_key.values():
                g.scale = float(service_scale)
        self._startup_s = startup_s
        if timeout_factor is not None:
            for m in self._models:
                m.timeout_s = m.slo_s * timeout_factor
        _require(
            connections is None or (connections >= 1 and isinstance(arrivals, Arrivals)),
            f"connections must be >= 1 and only for open-loop arrivals, got {connections}",
            "give the client's connection count, or None",
        )
        self._connections = connections
        self._sent = 0
        self._refilling = False
        self._client_wait: deque[int] = deque()
        self._by_name = {m.name: m for m in self._models}
        _require(
            len(self._by_name) == len(self._models),
            "two models share a name",
            "give every model a distinct name",
        )
        self._allocation = allocation
        self._limit: dict[str, int] = {}
        for p in pools:
            self._limit[p.node.name] = self._limit.get(p.node.name, 0) + p.max_replicas
        self._used = dict.fromkeys(self._limit, 0)
        self._arrivals = arrivals
        self._interval = float(interval_s)
        self._rng = rng
        self._faults = faults or FaultModel()
        self._max_retries = max_retries
        self._drain_limit = float(drain_limit_s)
        self._sample_interval = float(sample_interval_s)
        self._preset = preset
        self._scenario = scenario
        self._initial = tuple(initial)
        self._kernel = Kernel()
        self._now = self._kernel.now
        self._post = self._kernel.post
        self._duration = float(arrivals.duration_s)
        self._horizon = self._duration + self._drain_limit
        self._done_at: float | None = None
        # requests
        self._arrival: list[float] = []
        self._deadline: list[float] = []
        self._finish: list[float] = []
        self._outcome: list[int] = []
        self._model_of: list[int] = []
        self._tenant_of: list[int] = []
        self._seq_of: list[int] = []
        self._replica_of: list[int] = []
        self._start_of: list[float] = []
        self._batch_of: list[int] = []
        self._retries: list[int] = []
        self._queued: list[bool] = []
        self._armed: set[int] = set()
        self._timed_out = 0
        self._tenant_index: dict[str, int] = {}
        self._tenant_names: list[str] = []
        self._open = 0
        self._cursor = 0
        self._sources_left = 0
        # replicas
        self._replicas: list[SimReplica] = []
        self._causes: dict[int, str] = {}
        self._alive: dict[str, SimReplica] = {}
        self._astate: Any = None
        self._last_tick = 0.0
        self._targets: dict[tuple[str, str, str, bool], int] = {}
        self._replaced = 0
        # accounting (piecewise-constant rates, integrated at each change)
        self._t_int = 0.0
        self._busy_n = 0
        self._serving_n = 0
        self._alive_n = 0
        self._cost_rate = 0.0  # $/s of alive replicas
        self._p_idle = 0.0  # W of alive replicas at idle
        self._p_dyn = 0.0  # extra W of busy replicas
        self._busy_int = 0.0
        self._serving_int = 0.0
        self._alive_int = 0.0
        self._energy = 0.0
        self._cost_int = 0.0
        self._state_n = {s: 0 for s in (STARTING, READY, DRAINING)}
        self._kind_n: dict[str, int] = {}
        self._spot_n = 0
        self._max_alive = 0
        # counters
        self._decisions = 0
        self._reactions = 0
        self._last_react = 0.0
        reactions = reactions_of(allocation)
        self._react_interval = reactions.interval_s
        self._pressure_gap = reactions.pressure_gap_s
        self._pressure_fraction = reactions.pressure_fraction
        self._pressure_due = False
        self._deferred = 0
        self._faults_n = {"preemption": 0, "failure": 0}
        self._requeued = 0
        self._covers_n = 0
        self._series = TimeSeries()
        self._last_sample = (0.0, 0.0, 0.0, 0.0)
        self._on_resolve: Callable[[int], None] | None = None
        self._audit = audit
        self.audited = 0

    # ------------------------------------------------------------------ running

    def run(self, progress: Callable[[float, float], None] | None = None) -> SimResult:
        """Simulate to the end; ``progress(simulated_s, total_s)`` is called now and then."""
        wall = time.perf_counter()
        kernel = self._kernel
        for t in self._initial:
            m = self._by_name.get(t.model)
            group = m.by_key.get((t.variant, t.node_type)) if m is not None else None
            if m is None or group is None:
                raise _bad_target(t)
            m.planned += t.count
            key = (t.model, t.variant, t.node_type, t.spot)
            self._targets[key] = self._targets.get(key, 0) + t.count
            for _ in range(t.count):
                self._start_replica(m, group, t.spot, ready_now=True)
        self._start_arrivals()
        self._post(self._interval, self._tick)
        if self._react_interval is not None:
            self._post(self._react_interval, self._react)
        self._post(min(self._sample_interval, max(self._duration, 1e-9)), self._sample)
        self._post(self._duration, self._check_done)
        total = self._duration
        step = max(self._interval, total / PROGRESS_STEPS)
        while self._done_at is None:
            now = kernel.now()
            if kernel.peek() > self._horizon or now >= self._horizon:
                break
            kernel.run(until=min(now + step, self._horizon))
            if progress is not None:
                progress(min(kernel.now(), total), total)
        if self._done_at is None:
            self._expire(self._horizon)
        if progress is not None:
            progress(total, total)
        return self._result(time.perf_counter() - wall, kernel.events)

    def _check_done(self) -> None:
        now = self._now()
        idle = self._done_at is None and self._open == 0
        if idle and now >= self._duration and self._sources_exhausted():
            self._done_at = now

    def _sources_exhausted(self) -> bool:
        if isinstance(self._arrivals, Arrivals):
            return self._cursor >= len(self._arrivals) and not self._client_wait
        return self._sources_left == 0

    # ------------------------------------------------------------------ arrivals

    def _start_arrivals(self) -> None:
        source = self._arrivals
        if isinstance(source, Arrivals):
            n = len(source)
            slo = np.asarray([m.slo_s for m in self._models], dtype=np.float64)
            self._arrival = source.times.tolist()
            self._deadline = (source.times + slo[source.models]).tolist()
            self._model_of = source.models.tolist()
            self._tenant_of = source.tenants.tolist()
            self._seq_of = source.seq_lens.tolist()
            self._finish = [_NAN] * n
            self._outcome = [NO_OUTCOME] * n
            self._replica_of = [-1] * n
            self._start_of = [_NAN] * n
            self._batch_of = [0] * n
            self._retries = [0] * n
            self._queued = [False] * n
            for name in source.tenant_names:
                self._tenant_id(name)
            if self._connections is not None:
                self._on_resolve = self._connection_freed
            if n:
                self._post(self._arrival[0], self._arrive)
            return
        weights = np.asarray(source.model_weights, dtype=np.float64)
        _require(
            weights.shape[0] == len(self._models) and weights.sum() > 0 and weights.min() >= 0,
            "closed loop: model_weights must give one weight >= 0 per model, not all 0",
            "fix the model mix",
        )
        self._mix = np.cumsum(weights / weights.sum())
        self._period = source.clients / source.rate_rps
        self._client_of: dict[int, int] = {}
        self._tenant_id(source.tenant)
        self._on_resolve = self._client_done
        for k in range(source.clients):
            first = k / source.rate_rps
            if first < source.duration_s:
                self._sources_left += 1
                self._post(first, partial(self._client_send, k))

    def _arrive(self) -> None:
        i = self._cursor
        self._cursor = i + 1
        arrival = self._arrival
        if i + 1 < len(arrival):
            self._post(arrival[i + 1], self._arrive)
        if self._connections is not None and self._sent >= self._connections:
            self._client_wait.append(i)  # every connection busy: wait in the client
        else:
            self._send(i)
        if self._cursor >= len(arrival):
            self._check_done()

    def _send(self, i: int) -> None:
        """Request ``i`` reaches the server now (its arrival and deadline from now)."""
        m = self._models[self._model_of[i]]
        if self._connections is not None:
            self._sent += 1
            now = self._now()
            self._arrival[i] = now
            self._deadline[i] = now + m.slo_s
        self._admit(m, i)

    def _connection_freed(self, rid: int) -> None:
        """Request ``rid`` was answered: its connection takes the next waiting request
        (a loop, not recursion: a request rejected at once frees its connection again)."""
        self._sent -= 1
        if self._refilling:
            return
        self._refilling = True
        try:
            while self._client_wait and self._sent < (self._connections or 0):
                self._send(self._client_wait.popleft())
        finally:
            self._refilling = False

    def _client_send(self, client: int) -> None:
        source = self._arrivals
        assert isinstance(source, ClosedLoop)
        u = float(self._rng.random())
        k = min(int(np.searchsorted(self._mix, u, side="right")), len(self._models) - 1)
        m = self._models[k]
        rid = len(self._arrival)
        now = self._now()
        self._client_of[rid] = client
        self._arrival.append(now)
        self._deadline.append(now + m.slo_s)
        self._model_of.append(k)
        self._tenant_of.append(0)
        self._seq_of.append(source.seq_len)
        self._finish.append(_NAN)
        self._outcome.append(NO_OUTCOME)
        self._replica_of.append(-1)
        self._start_of.append(_NAN)
        self._batch_of.append(0)
        self._retries.append(0)
        self._queued.append(False)
        self._admit(m, rid)

    def _client_done(self, rid: int) -> None:
        client = self._client_of.pop(rid, None)
        if client is None:
            return
        source = self._arrivals
        assert isinstance(source, ClosedLoop)
        nxt = max(self._now(), self._arrival[rid] + self._period)
        if nxt < source.duration_s:
            self._post(nxt, partial(self._client_send, client))
        else:
            self._sources_left -= 1

    def _tenant_id(self, name: str) -> int:
        i = self._tenant_index.get(name)
        if i is None:
            i = self._tenant_index[name] = len(self._tenant_names)
            self._tenant_names.append(name)
        return i

    def _admit(self, m: _Model, rid: int) -> None:
        """Admission, then the queue (and a dispatch if a replica is free)."""
        now = self._arrival[rid]
        m.arrivals_tick += 1
        m.arrivals_burst += 1
        m.arrivals_sample += 1
        request = Request(
            rid,
            m.name,
            now,
            self._deadline[rid],
            self._tenant_names[self._tenant_of[rid]],
            1,
            self._seq_of[rid],
        )
        priority = False
        if not m.admit_all:
            view = self._admission_view(m, now)
            if self._audit and m.aggregate:
                self._audit_admission(m, request, view, now)
            decision, m.astate = m.admission.decide(request, view, m.astate)
            m.promises.clear()
            if self._pressure_gap is not None and is_pressure(
                decision, request, self._pressure_fraction
            ):
                self._note_pressure(m, now)
            if decision.admit and decision.promised_by is not None:
                m.promised[rid] = (now, decision.promised_by)
            priority = decision.priority
            if not decision.admit:
                self._finish[rid] = now
                self._outcome[rid] = _REJECTED
                if self._on_resolve is not None:
                    self._on_resolve(rid)
                    self._check_done()
                return
        self._open += 1
        m.queue.push(request, priority)
        self._queued[rid] = True
        if m.n_idle:
            self._dispatch(m)
        if self._queued[rid]:
            self._arm(m, rid)

    # ------------------------------------------------------------------ timeouts

    def _arm(self, m: _Model, i: int) -> None:
        """Post request ``i``'s timeout (once), unless the model has none."""
        if i in self._armed or m.timeout_s == float("inf"):
            return
        self._armed.add(i)
        self._post(self._arrival[i] + m.timeout_s, partial(self._time_out, m, i))

    def _time_out(self, m: _Model, i: int) -> None:
        """Request ``i``'s timeout passed: answer it TIMED_OUT if it is still queued."""
        self._armed.discard(i)
        if not self._queued[i] or self._outcome[i] != NO_OUTCOME:
            return
        m.dead.add(i)
        self._resolve_timeout(m, i)

    def _resolve_timeout(self, m: _Model, i: int) -> None:
        m.promised.pop(i, None)  # never completes: no promise to report
        self._queued[i] = False
        self._finish[i] = self._now()
        self._outcome[i] = _TIMED_OUT
        self._timed_out += 1
        self._open -= 1
        if self._on_resolve is not None:
            self._on_resolve(i)
        if self._open == 0:
            self._check_done()

    def _put_back(self, m: _Model, requests: list[Request]) -> None:
        """Requests back at the front of the queue (a failed route or a dead replica);
        one whose timeout has passed times out now instead."""
        now = self._now()
        back = []
        for req in requests:
            i = req.id
            if self._arrival[i] + m.timeout_s <= now:
                self._resolve_timeout(m, i)
                continue
            back.append(req)
        if back:
            m.queue.push_front(back)
            for req in back:
                self._queued[req.id] = True
                self._arm(m, req.id)

    def _drop_dead_head(self, m: _Model) -> None:
        """Drop timed-out requests at the head of the queue (lazy removal)."""
        m.queue.drop_dead_head(m.dead)

    def _admission_view(self, m: _Model, now: float) -> Snapshot:
        view = ModelView(
            m.name,
            arrival_rate=m.arrivals_tick / max(now - self._last_tick, 1e-9),
            queue_length=m.waiting(),
            slo_s=m.slo_s,
            accuracy_floor=m.setup.accuracy_floor,
            tenant_queues=m.queue.tenant_queues(m.tenants),
            promises=tuple(m.promises),
        )
        limit = m.setup.batch_limit
        if not m.aggregate:
            reps = tuple(
                _with_capacity(r.view(now), r.group.admission_capacity(limit))
                for r in self._alive.values()
                if r.group.model == m.name
            )
            return Snapshot(now, (view,), reps)
        views: list[ReplicaView] = []
        for g in m.groups:
            n = len(g.members)
            if not n:
                continue
            cap = g.admission_capacity(limit)
            rate = 0.0 if cap > 0 else sum(r.rate_ewma for r in g.members.values())
            views.append(
                ReplicaView(
                    id=f"{g.variant}@{g.node.name}",
                    model=m.name,
                    variant=g.variant,
                    node_type=g.node.name,
                    state=READY,
                    outstanding=g.out_ready,
                    rate=rate,
                    capacity_rps=n * cap,
                )
            )
        if m.n_starting:
            g0 = m.groups[0]
            views.append(ReplicaView("starting", m.name, g0.variant, g0.node.name, STARTING))
        return Snapshot(now, (view,), tuple(views))

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, m: _Model) -> None:
        queue = m.queue
        now = self._now()
        self._drop_dead_head(m)
        while queue:
            f = m.free()
            if f is None:
                return
            free = f.view(now, len(m.ready))
            decision, m.bstate = m.batching.decide(now, queue.view(), free, m.bstate)
            k = decision.dispatch
            if k <= 0:
                if decision.wake_at is not None:
                    self._wake(m, decision.wake_at)
                return
            requests = self._take(m, k)
            if not requests:
                self._drop_dead_head(m)
                continue
            batch = Batch(m.name, tuple(requests))
            candidates = m.presenter.candidates(now, batch, m.rstate)
            if self._audit:
                self._audit_route(m, batch, candidates, now)
            route, m.rstate = m.routing.route(batch, candidates, m.rstate)
            rid = route.replica_id
            if rid is None:
                self._put_back(m, requests)
                self._wake(m, now + max(0.0, route.retry_after_s))
                return
            r = m.ready.get(rid)
            if r is None:
                raise RuntimeError(
                    f"routing policy {m.routing.name!r} chose {rid!r}, which is not a READY "
                    f"replica of model {m.name!r}"
                )
            self._assign(r, batch, now)

    def _audit_route(
        self, m: _Model, batch: Batch, candidates: Sequence[ReplicaView], now: float
    ) -> None:
        """Audit mode: the presented candidates must give the decision over every READY
        replica (indexed presenters only: their policies' choices do not depend on order)."""
        if m.presenter.name == "full-list":
            return
        everyone = [r.view(now) for r in m.ready.values()]
        got, _ = m.routing.route(batch, candidates, m.rstate)
        want, _ = m.routing.route(batch, everyone, m.rstate)
        if got.replica_id != want.replica_id:
            raise AssertionError(
                f"{m.presenter.name} presented {[c.id for c in candidates]} and the policy chose "
                f"{got.replica_id}; over all READY replicas it chooses {want.replica_id}"
            )
        self.audited += 1

    def _audit_admission(self, m: _Model, request: Request, view: Snapshot, now: float) -> None:
        """Audit mode: the aggregated admission view must give the full view's decision."""
        m.aggregate = False
        try:
            full = self._admission_view(m, now)
        finally:
            m.aggregate = True
        got, _ = m.admission.decide(request, view, m.astate)
        want, _ = m.admission.decide(request, full, m.astate)
        if got.admit != want.admit:
            raise AssertionError(f"aggregated admission view decided {got}, the full one {want}")
        self.audited += 1

    def _take(self, m: _Model, k: int) -> list[Request]:
        """The next ``k`` queued requests (timed-out ones skipped), capped at the model's
        ``max_batch`` items (at least one request); they leave the queue
        (:meth:`ModelQueue.take_batch`)."""
        requests = m.queue.take_batch(k, m.setup.max_batch, m.dead)
        queued = self._queued
        for r in requests:
            queued[r.id] = False
        return requests

    def _wake(self, m: _Model, when: float) -> None:
        now = self._now()
        when = max(when, now)
        if m.wake_at is not None and m.wake_at <= when and m.wake_at >= now:
            return
        m.wake_at = when
        self._post(when, partial(self._on_wake, m, when))

    def _on_wake(self, m: _Model, when: float) -> None:
        if m.wake_at != when:
            return
        m.wake_at = None
        self._dispatch(m)

    # ------------------------------------------------------------------ replicas at work

    def _touch(self, r: SimReplica, old_outstanding: int, was_ready: bool) -> None:
        r.version += 1
        r.group.index(r)
        self._by_name[r.group.model].presenter.changed(r, old_outstanding, was_ready)

    def _assign(self, r: SimReplica, batch: Batch, now: float) -> None:
        service = r.group.service_s(batch)
        if self._scatter is not None:
            noise, factors = self._scatter
            service *= float(factors[noise.integers(factors.size)])
        n = len(batch.requests)
        old = r.outstanding
        r.outstanding = old + n
        r.group.out_ready += n
        if r.running is None:
            self._by_name[batch.model].n_idle -= 1
            self._integrate(now)
            self._busy_n += 1
            self._p_dyn += _dyn_w(r)
            r.busy_since = now
            r.running = batch
            r.running_start = now
            r.busy_until = now + service
            self._post(r.busy_until, partial(self._complete, r))
        else:
            r.local.append((batch, service))
            r.busy_until += service
        self._touch(r, old, True)

    def _complete(self, r: SimReplica) -> None:
        if r.state is STOPPED:
            return
        now = self._now()
        batch = r.running
        assert batch is not None
        m = self._by_name[batch.model]
        started = r.running_start
        size = len(batch.requests)
        finish, outcome = self._finish, self._outcome
        lat = m.latencies_tick
        late = 0
        for req in batch.requests:
            i = req.id
            finish[i] = now
            outcome[i] = _COMPLETED
            self._replica_of[i] = r.index
            self._start_of[i] = started
            self._batch_of[i] = size
            lat.append(now - req.arrival)
            if now > req.deadline:
                late += 1
            if m.promised:
                promised = m.promised.pop(i, None)
                if promised is not None:
                    decided, by = promised
                    m.promises.append((req.tenant, by - decided, now - decided))
        m.completed_sample += size
        m.miss_sample += late
        self._open -= size
        r.observe_batch(batch.items, now - started)
        r.group.observe_cycle(batch.items, now - started)
        old = r.outstanding
        r.outstanding = old - size
        was_ready = r.state is READY
        if was_ready:
            r.group.out_ready -= size
        if r.local:
            nxt, service = r.local.popleft()
            r.running = nxt
            r.running_start = now
            self._post(now + service, partial(self._complete, r))
        else:
            self._set_idle(r, now)
        if r.state is DRAINING and r.running is None:
            self._stop(r, now)
        else:
            self._touch(r, old, was_ready)
        if self._on_resolve is not None:
            for req in batch.requests:
                self._on_resolve(req.id)
        if was_ready and r.running is None and m.queue:
            self._dispatch(m)
        if self._open == 0:
            self._check_done()

    def _set_idle(self, r: SimReplica, now: float) -> None:
        """End ``r``'s busy period at ``now``."""
        self._integrate(now)
        self._busy_n -= 1
        self._p_dyn -= _dyn_w(r)
        r.busy_acc += now - max(r.busy_since, self._last_tick)
        r.busy_total += now - r.busy_since
        r.running = None
        if r.state is READY:
            self._by_name[r.group.model].n_idle += 1

    # ------------------------------------------------------------------ replica life cycle

    def _start_replica(self, m: _Model, group: Group, spot: bool, *, ready_now: bool) -> None:
        now = self._now()
        node = group.node
        startup = node.startup_s if self._startup_s is None else self._startup_s
        ready_at = now if ready_now else now + startup
        r = SimReplica(len(self._replicas), group, spot, now, ready_at)
        self._replicas.append(r)
        self._alive[r.id] = r
        self._used[node.name] = self._used.get(node.name, 0) + 1
        self._integrate(now)
        self._alive_n += 1
        self._max_alive = max(self._max_alive, self._alive_n)
        self._cost_rate += _usd_per_s(r)
        self._p_idle += node.idle_watts / max(1, node.replicas_per_node)
        self._state_n[STARTING] += 1
        kind = f"{group.variant}@{node.name}"
        self._kind_n[kind] = self._kind_n.get(kind, 0) + 1
        self._spot_n += 1 if spot else 0
        m.n_starting += 1
        death = self._faults.draw(node, spot, self._rng)
        if death is not None and now + death[0] < self._horizon:
            self._post(now + death[0], partial(self._die, r, death[1]))
        if ready_now:
            self._become_ready(r)
        else:
            self._post(ready_at, partial(self._become_ready, r))

    def _become_ready(self, r: SimReplica) -> None:
        if r.state is not STARTING or self._done_at is not None:
            return
        now = self._now()
        m = self._by_name[r.group.model]
        self._integrate(now)
        r.state = READY
        r.was_ready = True
        r.ready_at = now
        r.busy_until = now
        self._state_n[STARTING] -= 1
        self._state_n[READY] += 1
        self._serving_n += 1
        m.n_starting -= 1
        m.n_idle += 1
        r.group.members[r.id] = r
        m.ready[r.id] = r
        self._touch(r, 0, False)
        self._release_covers(m)
        if m.queue:
            self._dispatch(m)

    def _leave_ready(self, r: SimReplica) -> None:
        """Take a READY replica out of the serving indexes (before it drains or stops)."""
        m = self._by_name[r.group.model]
        r.group.members.pop(r.id, None)
        m.ready.pop(r.id, None)
        r.group.out_ready -= r.outstanding
        if r.cover:
            r.cover = False
            if r in m.covers:
                m.covers.remove(r)

    def _drain(self, r: SimReplica, now: float) -> None:
        """READY → DRAINING (it finishes what it holds), or straight to STOPPED if idle."""
        if r.state is not READY:
            return
        if r.running is None:
            self._stop(r, now)
            return
        self._leave_ready(r)
        self._state_n[READY] -= 1
        self._state_n[DRAINING] += 1
        r.state = DRAINING
        self._touch(r, r.outstanding, True)

    def _stop(self, r: SimReplica, now: float) -> None:
        """Stop ``r`` now (it holds no batch, or it died and gave them back)."""
        state = r.state
        if state is STOPPED:
            return
        m = self._by_name[r.group.model]
        was_ready = state is READY
        if was_ready:
            self._leave_ready(r)
            if r.running is None:
                m.n_idle -= 1
        self._integrate(now)
        if state is STARTING:
            m.n_starting -= 1
        else:
            self._serving_n -= 1
        self._state_n[state] -= 1
        r.state = STOPPED
        r.stopped_at = now
        del self._alive[r.id]
        node = r.group.node
        self._used[node.name] -= 1
        self._alive_n -= 1
        self._cost_rate -= _usd_per_s(r)
        self._p_idle -= node.idle_watts / max(1, node.replicas_per_node)
        self._kind_n[f"{r.group.variant}@{node.name}"] -= 1
        self._spot_n -= 1 if r.spot else 0
        self._touch(r, r.outstanding, was_ready)

    def _die(self, r: SimReplica, cause: str) -> None:
        if r.state is STOPPED or self._done_at is not None:
            return
        now = self._now()
        m = self._by_name[r.group.model]
        self._causes[r.index] = cause
        self._faults_n[cause] += 1
        held: list[Request] = []
        if r.running is not None:
            held.extend(r.running.requests)
            for batch, _ in r.local:
                held.extend(batch.requests)
            r.local.clear()
            self._set_idle(r, now)
        self._stop(r, now)
        r.outstanding = 0
        self._replace(m, r)
        again: list[Request] = []
        for req in held:
            i = req.id
            self._retries[i] += 1
            if self._retries[i] > self._max_retries:
                self._finish[i] = now
                self._outcome[i] = _FAILED
                self._open -= 1
                if self._on_resolve is not None:
                    self._on_resolve(i)
            else:
                again.append(req)
        self._requeued += len(again)
        if again:
            self._put_back(m, again)
            self._dispatch(m)
        if self._open == 0:
            self._check_done()

    def _replace(self, m: _Model, dead: SimReplica) -> None:
        """Start a replacement for ``dead`` now if the last plan still wants its key and
        its node type has room (module docstring, "Faults"). O(R)."""
        key = dead.key()
        want = self._targets.get(key, 0)
        if want <= 0:
            return
        active = sum(
            1 for r in self._alive.values() if r.state in (READY, STARTING) and r.key() == key
        )
        node = key[2]
        if active < want and self._used.get(node, 0) < self._limit.get(node, 0):
            self._replaced += 1
            self._start_replica(m, dead.group, dead.spot, ready_now=False)

    def _release_covers(self, m: _Model) -> None:
        """Drain cover replicas no longer needed now that replacements are READY."""
        covers = [r for r in m.covers if r.state is READY]
        if not covers:
            m.covers = []
            return
        ready_in = len(m.ready) - len(covers)
        allowed = max(0, min(m.planned, ready_in + len(covers)) - ready_in)
        if allowed >= len(covers):
            m.covers = covers
            return
        covers.sort(key=lambda r: (-r.outstanding, -r.busy_until, r.id))
        keep, release = covers[:allowed], covers[allowed:]
        m.covers = keep
        now = self._now()
        for r in release:
            r.cover = False
            self._drain(r, now)

    # ------------------------------------------------------------------ control loop

    def _tick(self) -> None:
        now = self._now()
        if self._done_at is not None:
            return
        snapshot = self._snapshot(now)
        plan, self._astate = self._allocation.decide(snapshot, self._astate)
        self._decisions += 1
        self._last_tick = now
        self._reconcile(plan, now)
        if now + self._interval < self._horizon:
            self._post(now + self._interval, self._tick)

    def _react(self) -> None:
        """The periodic reaction to bursts (module docstring, "Reactions to bursts"),
        then the next one posted."""
        if self._done_at is not None:
            return
        now = self._now()
        self._react_once(now)
        assert self._react_interval is not None
        if now + self._react_interval < self._horizon:
            self._post(now + self._react_interval, self._react)

    def _note_pressure(self, m: _Model, now: float) -> None:
        """Admission showed that ``m`` needs capacity now: count it, and post a
        reaction at ``max(now, last reaction + pressure_gap_s)`` unless one is due."""
        m.pressure_burst += 1
        if self._pressure_due:
            return
        assert self._pressure_gap is not None
        self._pressure_due = True
        self._post(max(now, self._last_react + self._pressure_gap), self._react_on_pressure)

    def _react_on_pressure(self) -> None:
        self._pressure_due = False
        if self._done_at is None:
            self._react_once(self._now())

    def _react_once(self, now: float) -> None:
        """One reaction: the short window's snapshot (arrivals, queue and pressure since
        the previous reaction), ``allocation.react``, the plan reconciled."""
        span = now - self._last_react
        models = []
        for m in self._models:
            view = _model_view(m, m.arrivals_burst, span)
            models.append(dataclasses.replace(view, pressure=m.pressure_burst))
            m.arrivals_burst = 0
            m.pressure_burst = 0
        self._last_react = now
        snapshot = Snapshot(now, tuple(models), tuple(r.view(now) for r in self._alive.values()))
        plan, self._astate = self._allocation.react(snapshot, self._astate)  # type: ignore[attr-defined]
        if plan is not None:
            self._reactions += 1
            self._reconcile(plan, now)

    def _snapshot(self, now: float) -> Snapshot:
        span = now - self._last_tick
        last = self._last_tick
        views: list[ReplicaView] = []
        for r in self._alive.values():
            busy = r.busy_acc
            if r.running is not None:
                busy += now - max(r.busy_since, last)
            if r.state is STARTING:
                r.utilization = 0.0
            else:
                served = now - max(r.ready_at, last)
                r.utilization = min(1.0, busy / served) if served > 0 else 0.0
            r.busy_acc = 0.0
            views.append(r.view(now))
        models: list[ModelView] = []
        for m in self._models:
            lat = m.latencies_tick
            p99 = float(np.percentile(lat, 99.0)) if lat else 0.0
            models.append(_model_view(m, m.arrivals_tick, span, p99))
            m.arrivals_tick = 0
            m.latencies_tick = []
        return Snapshot(now, tuple(models), tuple(views))

    def _reconcile(self, plan: Plan, now: float) -> None:
        targets: dict[tuple[str, str, str, bool], int] = {}
        for t in plan.targets:
            m = self._by_name.get(t.model)
            if m is None or (t.variant, t.node_type) not in m.by_key or t.count < 0:
                raise _bad_target(t)
            key = (t.model, t.variant, t.node_type, t.spot)
            targets[key] = targets.get(key, 0) + t.count
        self._targets = targets
        active: dict[tuple[str, str, str, bool], list[SimReplica]] = {}
        for r in self._alive.values():
            if r.state is READY or r.state is STARTING:
                active.setdefault(r.key(), []).append(r)
        starts: list[tuple[_Model, Group, bool, int]] = []
        for m in self._models:
            keys = [k for k in targets if k[0] == m.name]
            keys += sorted(k for k in active if k[0] == m.name and k not in targets)
            planned = ready_in = 0
            surplus: list[SimReplica] = []
            for key in keys:
                want = targets.get(key, 0)
                reps = active.get(key, [])
                ready = sorted(
                    (r for r in reps if r.state is READY),
                    key=lambda r: (-r.outstanding, -r.busy_until, r.id),
                )
                starting = sorted(
                    (r for r in reps if r.state is STARTING), key=lambda r: (r.ready_at, r.id)
                )
                keep_r = min(want, len(ready))
                keep_s = min(want - keep_r, len(starting))
                for r in ready[:keep_r]:
                    r.cover = False
                for r in starting[keep_s:]:
                    self._stop(r, now)
                new = want - keep_r - keep_s
                if new > 0:
                    starts.append((m, m.by_key[(key[1], key[2])], key[3], new))
                surplus.extend(ready[keep_r:])
                planned += want
                ready_in += keep_r
            m.planned = planned
            cover_n = max(0, min(planned, ready_in + len(surplus)) - ready_in)
            surplus.sort(key=lambda r: (-r.outstanding, -r.busy_until, r.id))
            m.covers = surplus[:cover_n]
            for r in m.covers:
                if not r.cover:
                    self._covers_n += 1
                r.cover = True
            for r in surplus[cover_n:]:
                r.cover = False
                self._drain(r, now)
        for m, group, spot, n in starts:
            node = group.node.name
            free = self._limit.get(node, 0) - self._used.get(node, 0)
            if free < n:
                self._make_room(node, n - free, now)
                free = self._limit.get(node, 0) - self._used.get(node, 0)
            k = max(0, min(n, free))
            self._deferred += n - k
            for _ in range(k):
                self._start_replica(m, group, spot, ready_now=False)

    def _make_room(self, node: str, n: int, now: float) -> None:
        """Drain up to ``n`` cover replicas on ``node`` so that their slots free up."""
        for m in self._models:
            for r in sorted(m.covers, key=lambda r: (r.outstanding, r.busy_until, r.id)):
                if n <= 0:
                    return
                if r.group.node.name == node and r.state is READY:
                    self._drain(r, now)
                    n -= 1
            m.covers = [r for r in m.covers if r.state is READY and r.cover]

    # ------------------------------------------------------------------ accounting

    def _integrate(self, now: float) -> None:
        if self._done_at is not None:
            now = min(now, self._done_at)
        dt = now - self._t_int
        if dt <= 0:
            return
        self._busy_int += self._busy_n * dt
        self._serving_int += self._serving_n * dt
        self._alive_int += self._alive_n * dt
        self._energy += (self._p_idle + self._p_dyn) * dt
        self._cost_int += self._cost_rate * dt
        self._t_int = now

    def _sample(self) -> None:
        now = self._now()
        if self._done_at is not None:
            return
        self._integrate(now)
        t0, busy0, serving0, energy0 = self._last_sample
        window = now - t0
        row: dict[str, float] = {
            "replicas": float(self._alive_n),
            "replicas_starting": float(self._state_n[STARTING]),
            "replicas_ready": float(self._state_n[READY]),
            "replicas_draining": float(self._state_n[DRAINING]),
            "replicas_spot": float(self._spot_n),
            "replicas_on_demand": float(self._alive_n - self._spot_n),
            "cost_usd_per_hour": self._cost_rate * 3600.0,
            "power_w": (self._energy - energy0) / window if window > 0 else 0.0,
            "utilization": (
                (self._busy_int - busy0) / (self._serving_int - serving0)
                if self._serving_int > serving0
                else 0.0
            ),
        }
        for kind, n in self._kind_n.items():
            row[f"replicas:{kind}"] = float(n)
        for m in self._models:
            row[f"queue:{m.name}"] = float(m.waiting())
            row[f"arrival_rps:{m.name}"] = m.arrivals_sample / window if window > 0 else 0.0
            row[f"completed_rps:{m.name}"] = m.completed_sample / window if window > 0 else 0.0
            row[f"slo_miss_rps:{m.name}"] = m.miss_sample / window if window > 0 else 0.0
            m.arrivals_sample = m.completed_sample = m.miss_sample = 0
        self._series.add(now, row)
        self._last_sample = (now, self._busy_int, self._serving_int, self._energy)
        if now + self._sample_interval < self._horizon:
            self._post(now + self._sample_interval, self._sample)

    def _expire(self, when: float) -> None:
        """Time out every request still unanswered at ``when`` (the drain limit)."""
        for i, code in enumerate(self._outcome):
            if code == NO_OUTCOME:
                self._finish[i] = when
                self._outcome[i] = _TIMED_OUT
        self._open = 0
        self._done_at = when

    def _result(self, wall_s: float, events: int) -> SimResult:
        end = self._done_at if self._done_at is not None else self._now()
        end = max(end, self._duration)
        self._done_at = end
        self._integrate(end)
        log = RequestLog(
            arrival=np.asarray(self._arrival, dtype=np.float64),
            deadline=np.asarray(self._deadline, dtype=np.float64),
            finish=np.asarray(self._finish, dtype=np.float64),
            outcome=np.asarray(self._outcome, dtype=np.int8),
            model=np.asarray(self._model_of, dtype=np.int32),
            tenant=np.asarray(self._tenant_of, dtype=np.int32),
            seq_len=np.asarray(self._seq_of, dtype=np.int32),
            replica=np.asarray(self._replica_of, dtype=np.int64),
            service_start=np.asarray(self._start_of, dtype=np.float64),
            batch_size=np.asarray(self._batch_of, dtype=np.int32),
            retries=np.asarray(self._retries, dtype=np.int32),
            model_names=tuple(m.name for m in self._models),
            tenant_names=tuple(self._tenant_names),
        )
        cost = spot_cost = 0.0
        rows: list[tuple[Any, ...]] = []
        for r in self._replicas:
            stop = r.stopped_at if r.state is STOPPED else end
            billed = (min(stop, end) - r.decided_at) * _usd_per_s(r)
            cost += billed
            spot_cost += billed if r.spot else 0.0
            rows.append(
                (
                    r.id,
                    r.group.model,
                    r.group.variant,
                    r.group.node.name,
                    r.spot,
                    r.decided_at,
                    r.ready_at if r.was_ready else _NAN,
                    r.stopped_at,
                    self._causes.get(r.index, ""),
                )
            )
        records = log.records()
        completed = int(np.count_nonzero(log.outcome == _COMPLETED))
        lost = int(np.count_nonzero(log.outcome == NO_OUTCOME))
        assert lost == 0, f"{lost} accepted requests were never answered"
        span = max(end, 1e-12)
        extra: dict[str, Any] = {
            "simulated_s": end,
            "wall_s": wall_s,
            "events": events,
            "sim_requests_per_wall_s": len(log) / wall_s if wall_s > 0 else 0.0,
            "decisions": self._decisions,
            "reactions": self._reactions,
            "replicas_started": len(self._replicas),
            "replicas_mean": self._alive_int / span,
            "replicas_max": self._max_alive,
            "spot_cost_usd": spot_cost,
            "preemptions": self._faults_n[PREEMPTION],
            "failures": self._faults_n["failure"],
            "requeued": self._requeued,
            "replaced_at_once": self._replaced,
            "timed_out_in_queue": self._timed_out,
            "cover_replicas": self._covers_n,
            "deferred_starts": self._deferred,
            "utilization": self._busy_int / self._serving_int if self._serving_int > 0 else 0.0,
            "energy_per_request_j": self._energy / completed if completed else 0.0,
            "cost_integral_usd": self._cost_int,
        }
        summary = summarize(
            records,
            preset=self._preset,
            scenario=self._scenario,
            cost_usd=cost,
            energy_j=self._energy,
            makespan_s=end,
            extra=extra,
        )
        return SimResult(summary, log, self._series, tuple(rows))


# --------------------------------------------------------------------------- helpers


def _with_capacity(view: ReplicaView, capacity_rps: float) -> ReplicaView:
    """``view`` showing ``capacity_rps`` (itself when unchanged)."""
    if view.capacity_rps == capacity_rps:
        return view
    return dataclasses.replace(view, capacity_rps=capacity_rps)


def _model_view(m: _Model, arrivals: int, span: float, p99_s: float = 0.0) -> ModelView:
    """``m``'s view for a window of ``span`` seconds holding ``arrivals`` (rate 0 for an
    empty span), with its queue now."""
    return ModelView(
        m.name,
        arrival_rate=arrivals / span if span > 0 else 0.0,
        queue_length=m.waiting(),
        slo_s=m.slo_s,
        accuracy_floor=m.setup.accuracy_floor,
        p99_latency_s=p99_s,
    )


def _usd_per_s(r: SimReplica) -> float:
    node = r.group.node
    return node.usd_per_hour(r.spot) / max(1, node.replicas_per_node) / 3600.0


def _dyn_w(r: SimReplica) -> float:
    node = r.group.node
    return (node.peak_watts - node.idle_watts) / max(1, node.replicas_per_node)


def _require(ok: bool, message: str, fix: str) -> None:
    if not ok:
        raise InvalidInputError(message + ".", fix=fix + ".")


def _bad_target(t: ReplicaTarget) -> CoscaleError:
    return CoscaleError(
        f"a plan asks for {t.count} replica(s) of {t.model!r} variant {t.variant!r} on "
        f"{t.node_type!r} (spot={t.spot}), which is not one of the model's serving options.",
        fix="Plans may only name the (variant, node type) options they were built with.",
        code="invalid_plan",
    )
