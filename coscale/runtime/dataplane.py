"""The live data plane: validate → admit → queue → batch → route → replica → answer.

It is the live *executor* of the same policy objects the simulator runs
(:class:`~coscale.sim.cluster.ModelSetup`: routing, batching, admission per model); it
decides nothing itself.

One request (:meth:`DataPlane.submit`)
--------------------------------------
1. **Validate** the items with the model family's ``parse_items`` (a bad item →
   :class:`~coscale.errors.InvalidInputError`, 422, naming the item's index). More than
   the model's ``max_batch`` items → :class:`~coscale.runtime.contract.PayloadTooLarge`
   (413): a replica never runs a batch larger than that.
2. **Deadlines.** The request's *timeout* is ``timeout_s`` (the caller's, > 0) or, by
   default, ``DEFAULT_TIMEOUT_FACTOR`` (10) × the model's SLO: a request that is merely
   slow still gets its answer. The deadline the policies see (``Request.deadline``) is
   ``arrival + min(SLO, timeout)`` — the SLO, unless the caller set a tighter bound.
   ``arrival`` is when the request reached the server, not the data plane: ``now −
   waited_s``, where the HTTP layer passes how long it spent reading and parsing the
   body (under 3× overload the event loop's backlog made that up to 200 ms at the
   p99, time the client sees and admission must count).
3. **Not ready**: the data plane is not started or is shutting down, or the model has no
   replica READY or STARTING → :class:`~coscale.runtime.contract.NotReady` (503). Such
   a request still counts in the model's arrival rate while the server runs, so an
   allocation policy that scaled the model to zero sees the demand and scales it up.
4. **Admission**: ``admission.decide(request, snapshot)`` over a snapshot of the model
   (arrival rate so far in this control interval, queue length, every replica not
   stopped). Each replica's ``capacity_rps`` there is the profiled figure or, when it
   is lower and the replica's recent batches were at least
   :data:`MEASURED_RATE_MIN_FILL` (½) of the batch limit (EWMA of batch items), its
   measured *cycle rate*: ``items_c / cycle_c``, the EWMAs (α = :data:`CYCLE_ALPHA`,
   about the last 50 batches) of each batch's items and of its cycle, which runs from
   ``max(previous batch's end, its assignment)`` to its end — a ratio of means, not a
   mean of ratios, which short noisy cycles would bias upwards. While the
   replica is backlogged that is its real throughput, including what the event loop
   spends between two batches (answering the last one, routing the next, parsing the
   HTTP requests that arrive meanwhile) — under 3× overload that loop work cut a MiniLM
   replica's throughput from 128 to 78 req/s while items / service time stayed near
   the first figure, and admission promised deadlines from it. A replica that runs
   full batches slower than profiled (a busy machine) must not make admission promise
   deadlines it cannot keep. Small batches say nothing about capacity (a batch's fixed
   cost — the transport to the worker — dominates them), so the profile stands then.
   As in the simulator, the snapshot's model view also carries each tenant's waiting
   requests and weight when the queue is fair (``ModelView.tenant_queues``), and for
   every admitted request with a ``promised_by`` completed since the previous decision
   ``(tenant, promised_by − decided, finish − decided)``, ``decided`` being the time of
   its admission (``ModelView.promises``, at most ``MAX_FEEDBACK``, then cleared): the
   errors :class:`~coscale.policies.admission.DeadlineAdmission` learns its margin
   from, and the ``(tenant, items)`` of the requests refused before the data plane by a
   tenant's rate limit or quota (``ModelView.refused``, from :meth:`DataPlane.note_refused`;
   demand that the reserved shares count). The policy's state lives in the lane between
   decisions. An admitted request with ``decision.priority`` is queued ahead of those
   without (a tenant within its reserved share).
   Rejected → :class:`~coscale.runtime.contract.Overloaded` (429) with
   ``retry_after_s = max(decision.retry_after_s, MIN_RETRY_AFTER_S)``. A decision that
   shows *pressure* (refused, or admitted with a predicted finish beyond the allocation
   policy's ``pressure_fraction`` of the budget:
   :func:`~coscale.policies.admission.is_pressure`) is counted for the next
   burst window (``ModelView.pressure``) and reported to ``on_pressure`` (the controller
   reacts at once).
5. **Queue and batch**: the model's :class:`~coscale.runtime.batcher.Batcher` (FIFO, or
   weighted fair queueing between the scenario's tenants when it has several); batches
   go to replicas as the batching and routing policies decide.
6. **Run**: each replica runs its batches one at a time, in the order routed to it
   (``Replica.infer`` on the concatenated native batch). Each request's items are a
   contiguous slice of the batch; its outputs are rendered by the family's
   ``render_outputs``. Requests whose arrays differ in per-item shape (a file model's
   symbolic axes) cannot share an array: a batch holding several shapes runs as one call
   per shape, on the same replica, one after the other.
7. **Answer**, exactly once: the outputs, or an error. A request whose timeout passes
   while it is still queued is answered :class:`~coscale.runtime.contract.DeadlineExceeded`
   (504) at once; one already running completes.

Failover
--------
``Replica.infer`` raising :class:`~coscale.backends.base.ReplicaDied` (or a failed health
check, :meth:`DataPlane.replica_failed`) stops the replica at once: every batch it held
(running and queued at it) is taken back and its requests go to the front of the model's
queue, to be batched again onto the other replicas — each request at most
``MAX_RETRIES`` (2) times; past that it is answered
:class:`~coscale.runtime.contract.ReplicaFailure` (502). A request whose timeout passed
meanwhile gets 504. The controller is told (``on_replica_lost``) and replaces the replica
at once. Any other exception from ``infer`` (the model rejected the batch) or an output
with the wrong number of rows fails that batch's requests with 502, without retry: the
same batch would fail again.

Accounting
----------
Every accepted request sits in the in-flight registry until answered; :meth:`close`
answers what is left (503) and reports how many that was — 0 unless something is wrong.
Cost and energy follow the simulator's model: a replica is billed from its start
decision until it stops at its node type's $/h / ``replicas_per_node``, and draws
``idle_watts / replicas_per_node`` while alive plus ``(peak − idle) / replicas_per_node``
while it runs a batch (the catalog's linear power model, :meth:`NodeType.watts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coscale.accel.base import ModelFamily
from coscale.accel.textbatch import padded_length
from coscale.backends.base import Backend, Replica, ReplicaDied, ReplicaSpec
from coscale.clock import Clock, Timer
from coscale.errors import CoscaleError, InvalidInputError, UnknownModelError
from coscale.policies.admission import (
    ADMIT,
    CYCLE_ALPHA,
    MEASURED_RATE_MIN_FILL,
    AdmitAll,
    admission_capacity,
    is_pressure,
)
from coscale.policies.allocation.capacity import capacity_rps
from coscale.policies.base import VariantOption
from coscale.runtime.batcher import Batcher, Scheduler
from coscale.runtime.contract import (
    DeadlineExceeded,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    ReplicaFailure,
)
from coscale.sim.cluster import ModelSetup
from coscale.sim.profiles import batch_latency, max_seq_len, truncate_table
from coscale.sim.replicas import EWMA_ALPHA
from coscale.telemetry.records import (
    ModelWindow,
    ReplicaSample,
    RequestRecord,
    Telemetry,
    TelemetryWindow,
)
from coscale.types import (
    MAX_FEEDBACK,
    Batch,
    ModelView,
    Outcome,
    ReplicaState,
    ReplicaView,
    Request,
    Snapshot,
)

__all__ = [
    "DEFAULT_TIMEOUT_FACTOR",
    "MAX_RETRIES",
    "MEASURED_RATE_MIN_FILL",
    "MIN_RETRY_AFTER_S",
    "DataPlane",
    "Lane",
    "LiveReplica",
]

log = logging.getLogger(__name__)

#: Times a request is batched again after the replica holding it died.
MAX_RETRIES = 2
#: Default request timeout, as a multiple of the model's latency SLO.
DEFAULT_TIMEOUT_FACTOR = 10.0
#: Smallest Retry-After hint given with a 429.
MIN_RETRY_AFTER_S = 0.05

READY = ReplicaState.READY
STARTING = ReplicaState.STARTING
DRAINING = ReplicaState.DRAINING
STOPPED = ReplicaState.STOPPED


# ------------------------------------------------------------------------------ replicas


class LiveReplica:
    """One replica as the data plane tracks it (mutable; the event loop only touches it).

    ``local``: batches routed to it, waiting behind ``running``. ``pending_work_s``: the
    predicted service of the ``local`` batches; ``running_until``: the predicted end of
    the running batch. ``busy_acc``: busy seconds in the current control interval;
    ``busy_total``: over its life.
    """

    def __init__(
        self,
        spec: ReplicaSpec,
        option: VariantOption,
        capacity: float,
        speed_s: float,
        decided_at: float,
    ) -> None:
        self.spec = spec
        self.id = spec.id
        self.option = option
        self.capacity_rps = capacity
        self.speed_s = speed_s
        self.decided_at = decided_at
        self.ready_at = math.inf
        self.stopped_at = math.nan
        self.state = STARTING
        self.cause = ""
        self.handle: Replica | None = None
        self.task: asyncio.Task[bool] | None = None
        self.local: deque[Dispatch] = deque()
        self.running: Dispatch | None = None
        self.runner_active = False
        self.outstanding = 0
        self.pending_work_s = 0.0
        self.running_until = 0.0
        self.busy_since = 0.0
        self.busy_acc = 0.0
        self.busy_total = 0.0
        self.latency_ewma = 0.0
        self.rate_ewma = 0.0
        self.items_ewma = 0.0
        self.cycle_items = 0.0
        self.cycle_s = 0.0
        self.last_finish = -math.inf
        self.utilization = 0.0
        self.batches = 0

    @property
    def model(self) -> str:
        return self.spec.model

    @property
    def idle(self) -> bool:
        """READY and holding no batch."""
        return self.state is READY and self.running is None and not self.local

    def key(self) -> tuple[str, str, str, bool]:
        """(model, variant, node type, spot): the plan's target key."""
        return (self.spec.model, self.spec.variant, self.spec.node_type, self.spec.spot)

    def queued_work_s(self, now: float) -> float:
        """Predicted seconds of work ahead of a new batch (running rest + queued)."""
        rest = self.running_until - now if self.running is not None else 0.0
        return max(0.0, rest) + self.pending_work_s

    def view(self, now: float, model_ready: int = 0) -> ReplicaView:
        """The replica as policies see it; ``model_ready``: the model's READY replicas
        (given to the batching policy, 0 elsewhere)."""
        return ReplicaView(
            id=self.id,
            model=self.spec.model,
            variant=self.spec.variant,
            node_type=self.spec.node_type,
            state=self.state,
            spot=self.spec.spot,
            outstanding=self.outstanding,
            queued_work_s=self.queued_work_s(now),
            rate=self.rate_ewma,
            latency_s=self.latency_ewma,
            utilization=self.utilization,
            capacity_rps=self.capacity_rps,
            started_at=self.ready_at if self.state is not STARTING else self.decided_at,
            model_ready=model_ready,
        )

    def observe_batch(self, items: int, service_s: float, cycle_s: float) -> None:
        """Fold one finished batch into the EWMA latency, rate and items (the simulator's
        rule) and the cycle rate ``items / cycle_s`` (module docstring, step 4)."""
        rate = items / service_s if service_s > 0 else 0.0
        cycle_s = max(cycle_s, service_s)
        if self.latency_ewma <= 0.0:
            self.latency_ewma, self.rate_ewma = service_s, rate
            self.items_ewma = self.cycle_items = float(items)
            self.cycle_s = cycle_s
        else:
            self.latency_ewma += EWMA_ALPHA * (service_s - self.latency_ewma)
            self.rate_ewma += EWMA_ALPHA * (rate - self.rate_ewma)
            self.items_ewma += EWMA_ALPHA * (items - self.items_ewma)
            self.cycle_items += CYCLE_ALPHA * (items - self.cycle_items)
            self.cycle_s += CYCLE_ALPHA * (cycle_s - self.cycle_s)

    @property
    def cycle_rate(self) -> float:
        """Items per second of wall time per batch cycle (module docstring, step 4);
        0 before the first batch."""
        return self.cycle_items / self.cycle_s if self.cycle_s > 0 else 0.0

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "variant": self.spec.variant,
            "node_type": self.spec.node_type,
            "spot": self.spec.spot,
            "state": self.state.value,
            "threads": self.spec.threads,
            "pid": self.handle.pid if self.handle is not None else None,
            "outstanding": self.outstanding,
            "batches": self.batches,
        }


# ------------------------------------------------------------------------------ requests


@dataclass(eq=False)
class Pending:
    """An accepted request until it is answered."""

    request: Request
    native: Any
    expires: float
    future: asyncio.Future[Any]
    #: answer with the output rows (``np.ndarray``) instead of rendered JSON objects
    raw: bool = False
    #: the completion time admission predicted (``AdmissionDecision.promised_by``), and
    #: when it decided
    promised_by: float | None = None
    decided_at: float = 0.0
    attempts: int = 0
    queued: bool = True
    done: bool = False
    timer: Timer | None = None


@dataclass(eq=False)
class Dispatch:
    """A batch routed to a replica, with the pending requests it answers."""

    batch: Batch
    pendings: tuple[Pending, ...]
    predicted_s: float
    assigned_at: float
    started_at: float = math.nan
    cancelled: bool = False


def _signature(native: Any) -> tuple[Any, ...]:
    """What must match for two native batches to be concatenated: per-item shape and dtype
    of each array (a file model's symbolic axes may differ between requests)."""
    if isinstance(native, np.ndarray):
        return ("array", native.shape[1:], native.dtype.str)
    if isinstance(native, Mapping):
        return ("dict", tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(native.items())))
    return ("list",)


def _count(native: Any) -> int:
    """Items in a native batch (an array, a list of texts, or a dict of arrays)."""
    if isinstance(native, Mapping):
        return int(next(iter(native.values())).shape[0]) if native else 0
    return len(native)


def _concat(natives: Sequence[Any]) -> Any:
    """One native batch from compatible native batches (same :func:`_signature`)."""
    if len(natives) == 1:
        return natives[0]
    first = natives[0]
    if isinstance(first, np.ndarray):
        return np.concatenate(natives, axis=0)
    if isinstance(first, Mapping):
        return {k: np.concatenate([n[k] for n in natives], axis=0) for k in first}
    return list(itertools.chain.from_iterable(natives))


def _groups(pendings: Sequence[Pending]) -> list[list[int]]:
    """Indexes of ``pendings`` grouped by :func:`_signature` (first appearance order): each
    group is one call to the replica, so requests whose shapes differ are never mixed."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, p in enumerate(pendings):
        groups.setdefault(_signature(p.native), []).append(i)
    return list(groups.values())


def _seq_len(family: ModelFamily, native: Any, limit: int) -> int:
    """A text request's token slots per item (clamped to ``limit``): its texts' lengths
    as the worker runs them, in length-sorted runs (:func:`padded_length`; one text →
    its length); 0 for arrays."""
    if limit <= 0 or not isinstance(native, list):
        return 0
    tokenizer = getattr(family, "tokenizer", None)
    count = getattr(tokenizer, "count", None)
    if count is None:
        return 0
    return padded_length([min(limit, int(count(text))) for text in native])


# ------------------------------------------------------------------------------ one model


class Lane:
    """One model: its policies (a :class:`ModelSetup`), family, batcher and replicas.

    Implements :class:`~coscale.runtime.batcher.ReplicaPool` for its batcher.
    """

    def __init__(
        self, setup: ModelSetup, family: ModelFamily, source: str, plane: DataPlane
    ) -> None:
        self.setup = setup
        self.name = setup.name
        self.family = family
        self.source = source
        self.plane = plane
        self.slo_s = setup.slo_s
        self.max_batch = setup.max_batch
        self.seq_limit = max_seq_len(setup.options)
        self.options = {(o.variant, o.node.name): o for o in setup.options}
        self.replicas: dict[str, LiveReplica] = {}
        self.pending: dict[int, Pending] = {}
        self.astate: Any = None
        self.admit_all = isinstance(setup.admission, AdmitAll)
        fair = setup.fair_queue
        self.tenants = tuple(fair.weights) if fair is not None else ()
        self.promises: deque[tuple[str, float, float]] = deque(maxlen=MAX_FEEDBACK)
        self.refused: deque[tuple[str, int]] = deque(maxlen=MAX_FEEDBACK)
        self.batcher = Batcher(
            setup.name,
            setup.batching,
            setup.routing,
            self,
            plane.clock,
            max_batch=setup.max_batch,
            weight=fair.weight if fair is not None else None,
            call_at=plane.call_at,
        )
        self.arrivals_tick = 0
        self.arrivals_burst = 0  # since the last burst window (Controller's reactions)
        self.pressure_burst = 0  # requests showing pressure in that window
        self.latencies_tick: list[float] = []
        self.requeued = 0

    # -- ReplicaPool -------------------------------------------------------------------

    def free_replica(self, now: float) -> ReplicaView | None:
        best: LiveReplica | None = None
        ready = 0
        for r in self.replicas.values():
            ready += r.state is READY
            if r.idle and (best is None or (r.speed_s, r.id) < (best.speed_s, best.id)):
                best = r
        return None if best is None else best.view(now, model_ready=ready)

    def ready_views(self, now: float) -> list[ReplicaView]:
        return [r.view(now) for r in self.replicas.values() if r.state is READY]

    def assign(self, batch: Batch, replica_id: str, now: float) -> None:
        r = self.replicas.get(replica_id)
        if r is None or r.state is not READY:
            raise RuntimeError(
                f"routing policy {self.setup.routing.name!r} chose {replica_id!r}, which is "
                f"not a READY replica of model {self.name!r}"
            )
        self.plane._assign(self, r, batch, now)

    # -- views -------------------------------------------------------------------------

    def serving(self) -> bool:
        return any(r.state is READY for r in self.replicas.values())

    def has_capacity_coming(self) -> bool:
        return any(r.state in (READY, STARTING) for r in self.replicas.values())

    def admission_snapshot(self, now: float) -> Snapshot:
        span = now - self.plane.window_start
        view = ModelView(
            self.name,
            arrival_rate=self.arrivals_tick / span if span > 0 else 0.0,
            queue_length=len(self.batcher),
            slo_s=self.slo_s,
            accuracy_floor=self.setup.accuracy_floor,
            tenant_queues=self.batcher.queue.tenant_queues(self.tenants),
            promises=tuple(self.promises),
            refused=tuple(self.refused),
        )
        limit = self.setup.batch_limit
        replicas = tuple(_admission_view(r, now, limit) for r in self.replicas.values())
        return Snapshot(now, (view,), replicas)


def _admission_view(r: LiveReplica, now: float, batch_limit: int) -> ReplicaView:
    """``r``'s view with ``capacity_rps`` = min(profiled, measured cycle rate) when its
    recent batches were full enough to measure capacity (module docstring, step 4)."""
    view = r.view(now)
    capacity = admission_capacity(view.capacity_rps, r.cycle_rate, r.items_ewma, batch_limit)
    if capacity != view.capacity_rps:
        return dataclasses.replace(view, capacity_rps=capacity)
    return view


# ------------------------------------------------------------------------------ the plane


@dataclass
class _Accounts:
    """Cost and energy of replicas already stopped (the live ones are added on demand)."""

    cost_usd: float = 0.0
    energy_j: float = 0.0
    busy_s: float = 0.0
    alive_s: float = 0.0
    started: int = 0
    failed: int = 0
    start_failures: int = 0
    causes: dict[str, int] = field(default_factory=dict)


class DataPlane:
    """Every model's lane, the replicas, and the in-flight registry (module docstring).

    ``backend`` starts replicas; ``threads`` is each replica's intra-op thread count.
    ``on_replica_lost(replica)`` is called when a replica dies or fails its health check;
    ``on_replica_ready(replica)`` when one becomes READY; ``on_pressure(model)`` (set by
    a controller whose policy reacts to bursts, with its ``pressure_fraction``) each
    time admission's decision shows that a model needs capacity now
    (:func:`~coscale.policies.admission.is_pressure`; None: pressure is not counted).
    Call :meth:`bind` from the event loop before :meth:`submit`.
    """

    def __init__(
        self,
        setups: Sequence[tuple[ModelSetup, ModelFamily, str]],
        backend: Backend,
        clock: Clock,
        telemetry: Telemetry,
        *,
        threads: int = 1,
        on_replica_lost: Callable[[LiveReplica], None] | None = None,
        on_replica_ready: Callable[[LiveReplica], None] | None = None,
    ) -> None:
        self.clock = clock
        self.backend = backend
        self.telemetry = telemetry
        self.threads = max(1, threads)
        self.on_replica_lost = on_replica_lost
        self.on_replica_ready = on_replica_ready
        self.on_pressure: Callable[[str], None] | None = None
        self.pressure_fraction: float | None = None
        self._scheduler: Scheduler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.lanes: dict[str, Lane] = {}
        for setup, family, source in setups:
            self.lanes[setup.name] = Lane(setup, family, source, self)
        self.history: list[LiveReplica] = []
        self.accounts = _Accounts()
        self.window_start = clock.now()
        self.burst_start = self.window_start
        self._ids = itertools.count()
        self._replica_ids = itertools.count()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.accepting = False
        self.closed = False

    # -- lifecycle ---------------------------------------------------------------------

    def bind(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Attach to the running event loop (timers, tasks) and start accepting."""
        from coscale.runtime.batcher import loop_scheduler

        self._loop = loop or asyncio.get_running_loop()
        self._scheduler = loop_scheduler(self.clock, self._loop)
        self.window_start = self.burst_start = self.clock.now()
        self.accepting = True

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """A timer on the clock whose callback runs on the event loop."""
        if self._scheduler is None:
            raise RuntimeError("DataPlane.bind() must be called from the event loop first")
        return self._scheduler(when, callback)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def in_flight(self) -> int:
        return sum(len(lane.pending) for lane in self.lanes.values())

    def lane(self, model: str) -> Lane:
        lane = self.lanes.get(model)
        if lane is None:
            names = ", ".join(sorted(self.lanes))
            raise UnknownModelError(
                f"unknown model {model!r}; this server serves {names}.",
                fix=f"Use one of: {names}.",
            )
        return lane

    # -- requests ----------------------------------------------------------------------

    async def submit(
        self,
        model: str,
        items: Sequence[Any],
        *,
        tenant: str = "default",
        timeout_s: float | None = None,
        raw: bool = False,
        waited_s: float = 0.0,
    ) -> Any:
        """One request, end to end (module docstring); returns one output per item.

        ``items`` is a list of JSON items, or an ``np.ndarray`` with the batch axis first (a
        binary request; :meth:`ModelFamily.parse_array` checks it). The answer is a list of
        rendered output objects, or with ``raw`` the float32 output rows as one array.
        """
        lane = self.lane(model)
        if isinstance(items, np.ndarray):
            native = lane.family.parse_array(items)
        else:
            native = lane.family.parse_items(items)
        n = _count(native)
        if n > lane.max_batch:
            raise PayloadTooLarge(
                f"request carries {n} items; model {model!r} runs at most {lane.max_batch} "
                "items per batch.",
                fix=f"Split it into requests of at most {lane.max_batch} items.",
            )
        if timeout_s is not None and not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise InvalidInputError(
                f"timeout must be a positive number of seconds, got {timeout_s}.",
                fix="Omit it to use the default, or give seconds > 0.",
            )
        timeout = lane.slo_s * DEFAULT_TIMEOUT_FACTOR if timeout_s is None else timeout_s
        now = self.clock.now()
        arrival = now - min(max(0.0, waited_s), timeout)
        request = Request(
            id=next(self._ids),
            model=model,
            arrival=arrival,
            deadline=arrival + min(lane.slo_s, timeout),
            tenant=tenant,
            items=n,
            seq_len=_seq_len(lane.family, native, lane.seq_limit),
        )
        if self.accepting:  # demand the controller sees, even when no replica can take it
            lane.arrivals_tick += 1
            lane.arrivals_burst += 1
        if not self.accepting or not lane.has_capacity_coming():
            self._reject(lane, request, "not_ready")
            why = "shutting down" if self.closed or not self.accepting else "no replica yet"
            raise NotReady(
                f"model {model!r} cannot take requests now ({why}).",
                fix="Retry shortly; GET /readyz tells when the server is ready.",
            )
        decision = ADMIT
        if not lane.admit_all:  # AdmitAll's decision is constant: skip the snapshot
            decision, lane.astate = lane.setup.admission.decide(
                request, lane.admission_snapshot(now), lane.astate
            )
            lane.promises.clear()
            lane.refused.clear()
            fraction = self.pressure_fraction
            if fraction is not None and is_pressure(decision, request, fraction):
                self._note_pressure(lane)
        if not decision.admit:
            self._reject(lane, request, "overloaded")
            retry = max(decision.retry_after_s, MIN_RETRY_AFTER_S)
            raise Overloaded(
                f"model {model!r} is overloaded: {decision.reason or 'admission refused'}.",
                retry_after_s=retry,
                fix=f"Retry after {retry:.3g} s.",
            )
        assert self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()
        future.add_done_callback(_consume)
        pending = Pending(
            request,
            native,
            arrival + timeout,
            future,
            raw=raw,
            promised_by=decision.promised_by,
            decided_at=now,
        )
        lane.pending[request.id] = pending
        pending.timer = self.call_at(pending.expires, lambda: self._expire(lane, pending))
        lane.batcher.push(request, decision.priority)
        lane.batcher.poke()
        return await asyncio.shield(future)

    def _note_pressure(self, lane: Lane) -> None:
        """Count a request that showed ``lane``'s model needs capacity now
        (:func:`~coscale.policies.admission.is_pressure`) and tell ``on_pressure``."""
        lane.pressure_burst += 1
        if self.on_pressure is not None:
            self.on_pressure(lane.name)

    def note_refused(self, model: str, tenant: str, items: int = 1) -> None:
        """A request of ``tenant`` for ``model`` was refused before reaching the data
        plane (its rate limit or quota): demand that admission reads in its next
        snapshot (``ModelView.refused``). An unknown model is ignored."""
        lane = self.lanes.get(model)
        if lane is not None:
            lane.refused.append((tenant, items))

    def _reject(self, lane: Lane, request: Request, code: str) -> None:
        self.telemetry.record(
            RequestRecord(
                id=request.id,
                model=lane.name,
                tenant=request.tenant,
                arrival=request.arrival,
                deadline=request.deadline,
                finish=request.arrival,
                outcome=Outcome.REJECTED,
                items=request.items,
                error=code,
                seq_len=request.seq_len,
            )
        )

    def _expire(self, lane: Lane, p: Pending) -> None:
        """The request's timeout passed: answer 504 if it has not started."""
        if p.done or not p.queued:
            return
        lane.batcher.discard(p.request.id)
        self._fail(lane, p, _deadline_error(lane, p), Outcome.TIMED_OUT)

    def _answer(
        self,
        lane: Lane,
        p: Pending,
        outcome: Outcome,
        *,
        result: list[dict[str, Any]] | np.ndarray | None = None,
        error: CoscaleError | None = None,
        dispatch: Dispatch | None = None,
        replica: LiveReplica | None = None,
        service_s: float = math.nan,
    ) -> None:
        if p.done:
            return
        p.done = True
        if p.timer is not None:
            p.timer.cancel()
        lane.pending.pop(p.request.id, None)
        now = self.clock.now()
        req = p.request
        started = dispatch.started_at if dispatch is not None else math.nan
        self.telemetry.record(
            RequestRecord(
                id=req.id,
                model=lane.name,
                tenant=req.tenant,
                arrival=req.arrival,
                deadline=req.deadline,
                finish=now,
                outcome=outcome,
                items=req.items,
                queue_s=started - req.arrival,
                batch_size=dispatch.batch.items if dispatch is not None else 0,
                service_s=service_s,
                replica=replica.id if replica is not None else "",
                variant=replica.spec.variant if replica is not None else "",
                node_type=replica.spec.node_type if replica is not None else "",
                error=error.code if error is not None else "",
                seq_len=req.seq_len,
            )
        )
        if p.future.done():
            return
        if error is not None:
            p.future.set_exception(error)
        else:
            p.future.set_result([] if result is None else result)

    def _fail(self, lane: Lane, p: Pending, error: CoscaleError, outcome: Outcome) -> None:
        self._answer(lane, p, outcome, error=error)

    # -- batches -----------------------------------------------------------------------

    def _assign(self, lane: Lane, r: LiveReplica, batch: Batch, now: float) -> None:
        pendings = tuple(lane.pending[req.id] for req in batch.requests)
        for p in pendings:
            p.queued = False
        predicted = batch_latency(r.option.latency, batch)
        r.local.append(Dispatch(batch, pendings, predicted, now))
        r.outstanding += len(pendings)
        r.pending_work_s += predicted
        if not r.runner_active:
            r.runner_active = True
            self._spawn(self._run(lane, r))

    async def _run(self, lane: Lane, r: LiveReplica) -> None:
        """Run ``r``'s batches one at a time until it holds none (or it stops)."""
        try:
            while r.local and r.state is not STOPPED:
                d = r.local.popleft()
                now = self.clock.now()
                r.pending_work_s = max(0.0, r.pending_work_s - d.predicted_s)
                r.running, d.started_at, r.busy_since = d, now, now
                r.running_until = now + d.predicted_s
                try:
                    rows: list[np.ndarray] | None = await self._infer(r, d)
                    error: BaseException | None = None
                except ReplicaDied as exc:
                    self.replica_failed(r, f"died while running a batch: {exc}")
                    return
                except Exception as exc:
                    rows, error = None, exc
                if d.cancelled:
                    return
                self._finish_batch(lane, r, d, rows, error)
        finally:
            r.runner_active = False
        if r.state is DRAINING and r.running is None and not r.local:
            self._retire(r, "drained")
        lane.batcher.poke()

    async def _infer(self, r: LiveReplica, d: Dispatch) -> list[np.ndarray]:
        """Run one dispatch on ``r``: one ``infer`` per group of compatible requests (one in
        the common case); returns each request's output rows, in the dispatch's order."""
        assert r.handle is not None
        rows: list[np.ndarray] = [np.empty(0)] * len(d.pendings)
        for group in _groups(d.pendings):
            members = [d.pendings[i] for i in group]
            outputs = np.asarray(await r.handle.infer(_concat([p.native for p in members])))
            items = sum(p.request.items for p in members)
            if outputs.ndim == 0 or len(outputs) != items:
                raise RuntimeError(f"replica returned {outputs.shape} for {items} items")
            offset = 0
            for i, p in zip(group, members, strict=True):
                rows[i] = outputs[offset : offset + p.request.items]
                offset += p.request.items
        return rows

    def _end_busy(self, r: LiveReplica, now: float) -> None:
        r.busy_acc += now - max(r.busy_since, self.window_start)
        r.busy_total += now - r.busy_since
        r.running = None

    def _finish_batch(
        self,
        lane: Lane,
        r: LiveReplica,
        d: Dispatch,
        rows: list[np.ndarray] | None,
        error: BaseException | None,
    ) -> None:
        now = self.clock.now()
        service = now - d.started_at
        cycle = now - max(r.last_finish, d.assigned_at)
        r.last_finish = now
        self._end_busy(r, now)
        r.outstanding -= len(d.pendings)
        r.batches += 1
        items = d.batch.items
        if error is not None or rows is None:
            log.warning("replica %s failed a batch of %s: %s", r.id, lane.name, error)
            failure = ReplicaFailure(
                f"model {lane.name!r} failed on replica {r.id}: {error}",
                fix="Check the inputs against the model; the server log has the details.",
            )
            for p in d.pendings:
                self._answer(lane, p, Outcome.FAILED, error=failure, dispatch=d, replica=r)
            return
        r.observe_batch(items, service, cycle)
        self.telemetry.observe_batch(lane.name, items, service)
        for p, out in zip(d.pendings, rows, strict=True):
            if p.done:
                continue
            try:
                result = out if p.raw else _render_json(lane.family, out)
            except Exception as exc:
                log.exception("rendering outputs of %s failed", lane.name)
                fail = ReplicaFailure(f"could not render the outputs of {lane.name!r}: {exc}")
                self._answer(lane, p, Outcome.FAILED, error=fail, dispatch=d, replica=r)
                continue
            lane.latencies_tick.append(now - p.request.arrival)
            if p.promised_by is not None:
                decided = p.decided_at
                lane.promises.append((p.request.tenant, p.promised_by - decided, now - decided))
            self._answer(
                lane, p, Outcome.COMPLETED, result=result, dispatch=d, replica=r, service_s=service
            )

    # -- replicas ----------------------------------------------------------------------

    def start_replica(
        self, model: str, variant: str, node_type: str, spot: bool = False
    ) -> LiveReplica:
        """Register a STARTING replica and start it through the backend (in a task)."""
        lane = self.lane(model)
        option = lane.options.get((variant, node_type))
        if option is None:
            raise CoscaleError(
                f"model {model!r} has no serving option {variant!r} on {node_type!r}",
                fix="start only the (variant, node type) options the policies were built with",
                code="invalid_plan",
            )
        spec = ReplicaSpec(
            id=f"r{next(self._replica_ids):05d}",
            model=model,
            source=lane.source,
            variant=variant,
            node_type=node_type,
            spot=spot,
            threads=self.threads,
        )
        typical = lane.setup.typical_seq_len
        reachable = dataclasses.replace(
            option, latency=truncate_table(option.latency, lane.setup.batch_limit)
        )
        r = LiveReplica(
            spec,
            option,
            capacity_rps(reachable, lane.slo_s, seq_len=typical),
            option.latency.latency(1, typical),
            self.clock.now(),
        )
        lane.replicas[r.id] = r
        self.history.append(r)
        self.accounts.started += 1
        r.task = self._spawn(self._launch(lane, r))
        return r

    async def _launch(self, lane: Lane, r: LiveReplica) -> bool:
        try:
            handle = await self.backend.start_replica(r.spec)
        except Exception as exc:
            log.warning("replica %s of %s failed to start: %s", r.id, lane.name, exc)
            self.accounts.start_failures += 1
            r.cause = f"start failed: {exc}"
            self._set_stopped(r, r.cause)
            return False
        r.handle = handle
        if r.state is STOPPED:  # the plan dropped it while it started
            self._spawn(_stop_quietly(handle, drain=False))
            return False
        r.state = READY
        r.ready_at = self.clock.now()
        if self.on_replica_ready is not None:
            self.on_replica_ready(r)
        lane.batcher.poke()
        return True

    def drain(self, r: LiveReplica) -> None:
        """Stop ``r`` gracefully: no new batch; it finishes what it holds, then stops.
        A STARTING replica is stopped as soon as its start returns."""
        if r.state is STARTING:
            self._set_stopped(r, "cancelled while starting")
        elif r.state is READY:
            r.state = DRAINING
            if r.running is None and not r.local:
                self._retire(r, "drained")

    def _retire(self, r: LiveReplica, cause: str) -> None:
        if r.state is STOPPED:
            return
        self._set_stopped(r, cause)
        if r.handle is not None:
            self._spawn(_stop_quietly(r.handle, drain=True))

    def _set_stopped(self, r: LiveReplica, cause: str) -> None:
        if r.state is STOPPED:
            return
        now = self.clock.now()
        r.state = STOPPED
        r.stopped_at = now
        r.cause = r.cause or cause
        lane = self.lanes[r.model]
        lane.replicas.pop(r.id, None)
        self._bill(r, now)

    def _bill(self, r: LiveReplica, end: float) -> None:
        cost, energy, busy, alive = _replica_accounts(r, end)
        a = self.accounts
        a.cost_usd += cost
        a.energy_j += energy
        a.busy_s += busy
        a.alive_s += alive
        key = r.cause.split(":")[0] if r.cause else "stopped"
        a.causes[key] = a.causes.get(key, 0) + 1

    def replica_failed(self, r: LiveReplica, cause: str) -> None:
        """``r`` died or failed its health check: take its batches back (module docstring)."""
        if r.state is STOPPED:
            return
        lane = self.lanes[r.model]
        now = self.clock.now()
        held = ([r.running] if r.running is not None else []) + list(r.local)
        if r.running is not None:
            self._end_busy(r, now)
        r.local.clear()
        r.outstanding = 0
        r.pending_work_s = 0.0
        r.cause = f"failed: {cause}"
        self.accounts.failed += 1
        self._set_stopped(r, r.cause)
        if r.handle is not None:
            with contextlib.suppress(Exception):
                r.handle.kill()
        log.warning(
            "replica %s of %s lost (%s); %d batch(es) taken back", r.id, r.model, cause, len(held)
        )
        again: list[Request] = []
        for d in held:
            d.cancelled = True
            for p in d.pendings:
                if p.done:
                    continue
                p.attempts += 1
                if now >= p.expires:
                    self._fail(lane, p, _deadline_error(lane, p), Outcome.TIMED_OUT)
                elif p.attempts > MAX_RETRIES:
                    error = ReplicaFailure(
                        f"model {lane.name!r}: the replicas holding this request died "
                        f"{p.attempts} times (last: {r.id}, {cause}).",
                        fix="Retry the request; the server is replacing the replicas.",
                    )
                    self._fail(lane, p, error, Outcome.FAILED)
                else:
                    p.queued = True
                    again.append(p.request)
        lane.requeued += len(again)
        if again:
            lane.batcher.push_front(again)
        if self.on_replica_lost is not None:
            self.on_replica_lost(r)
        lane.batcher.poke()

    # -- telemetry ---------------------------------------------------------------------

    def collect_window(self, now: float) -> tuple[TelemetryWindow, tuple[ReplicaSample, ...]]:
        """The facts of the control interval ending ``now``; starts the next interval."""
        start = self.window_start
        models = []
        for lane in self.lanes.values():
            models.append(
                ModelWindow(
                    name=lane.name,
                    arrivals=lane.arrivals_tick,
                    queue_length=len(lane.batcher),
                    slo_s=lane.slo_s,
                    accuracy_floor=lane.setup.accuracy_floor,
                    latencies_s=tuple(lane.latencies_tick),
                )
            )
            lane.arrivals_tick = 0
            lane.latencies_tick = []
        samples = []
        for lane in self.lanes.values():
            for r in lane.replicas.values():
                busy = r.busy_acc
                if r.running is not None:
                    busy += now - max(r.busy_since, start)
                r.busy_acc = 0.0
                samples.append(
                    ReplicaSample(
                        id=r.id,
                        model=r.model,
                        variant=r.spec.variant,
                        node_type=r.spec.node_type,
                        state=r.state,
                        spot=r.spec.spot,
                        outstanding=r.outstanding,
                        queued_work_s=r.queued_work_s(now),
                        busy_s=busy,
                        latency_s=r.latency_ewma,
                        rate=r.rate_ewma,
                        capacity_rps=r.capacity_rps,
                        decided_at=r.decided_at,
                        ready_at=r.ready_at,
                    )
                )
        self.window_start = now
        return TelemetryWindow(start, now, tuple(models)), tuple(samples)

    def burst_snapshot(self, now: float) -> Snapshot:
        """The short window since the previous call (or the start) for the allocation
        policy's ``react``: per model ``arrival_rate`` = arrivals in the window / its
        length, the queue now and the window's ``pressure``; every replica's view.
        Starts the next window."""
        span = now - self.burst_start
        models = []
        for lane in self.lanes.values():
            models.append(
                ModelView(
                    lane.name,
                    arrival_rate=lane.arrivals_burst / span if span > 0 else 0.0,
                    queue_length=len(lane.batcher),
                    slo_s=lane.slo_s,
                    accuracy_floor=lane.setup.accuracy_floor,
                    pressure=lane.pressure_burst,
                )
            )
            lane.arrivals_burst = 0
            lane.pressure_burst = 0
        self.burst_start = now
        views = tuple(r.view(now) for r in self.live_replicas())
        return Snapshot(now, tuple(models), views)

    def set_utilization(self, views: Iterable[ReplicaView]) -> None:
        """Keep each replica's utilization of the last interval (shown in its views)."""
        by_id = {v.id: v for v in views}
        for lane in self.lanes.values():
            for r in lane.replicas.values():
                v = by_id.get(r.id)
                if v is not None:
                    r.utilization = v.utilization

    def live_replicas(self) -> list[LiveReplica]:
        return [r for lane in self.lanes.values() for r in lane.replicas.values()]

    def cost_energy(self, now: float) -> tuple[float, float, float, float]:
        """(cost $, energy J, busy replica-s, alive replica-s) so far, live replicas included."""
        a = self.accounts
        cost, energy, busy, alive = a.cost_usd, a.energy_j, a.busy_s, a.alive_s
        for r in self.live_replicas():
            c, e, b, al = _replica_accounts(r, now)
            cost, energy, busy, alive = cost + c, energy + e, busy + b, alive + al
        return cost, energy, busy, alive

    # -- shutdown ----------------------------------------------------------------------

    def stop_accepting(self) -> None:
        self.accepting = False

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight (or ``timeout_s`` passes); True if idle."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while self.in_flight and loop.time() < end:
            await asyncio.sleep(0.01)
        return self.in_flight == 0

    def answer_leftovers(self) -> int:
        """Answer every request still in flight with 503; returns how many there were."""
        left = 0
        for lane in self.lanes.values():
            for p in list(lane.pending.values()):
                left += 1
                lane.batcher.discard(p.request.id)
                error = NotReady(
                    f"the server shut down before request {p.request.id} of {lane.name!r} "
                    "was answered.",
                    fix="Retry against a running server.",
                )
                self._fail(lane, p, error, Outcome.FAILED)
        return left

    async def close(self, *, drain: bool = True, timeout_s: float = 30.0) -> int:
        """Stop accepting, finish (``drain``) or fail the requests in flight, stop every
        replica. Returns the number of requests that had to be answered with 503 (0 when
        draining worked)."""
        self.stop_accepting()
        if drain:
            await self.wait_idle(timeout_s)
        left = self.answer_leftovers()
        self.closed = True
        for lane in self.lanes.values():
            lane.batcher.close()
        for r in self.live_replicas():
            if r.state is STARTING:
                self._set_stopped(r, "shutdown")
            else:
                for d in ([r.running] if r.running else []) + list(r.local):
                    d.cancelled = True
                self._retire(r, "shutdown")
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)
        return left


def _render_json(family: ModelFamily, out: Any) -> list[dict[str, Any]]:
    """One request's outputs rendered for a JSON answer; outputs that are not all finite
    raise ValueError (JSON has no NaN or infinity, and the encoder would write them as
    ``null``): the request is answered 502 ``replica_failure`` naming the cause."""
    if isinstance(out, np.ndarray) and out.dtype.kind == "f" and not np.isfinite(out).all():
        raise ValueError("the model produced non-finite values (NaN or infinity)")
    return family.render_outputs(out)


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve a future's exception so that an abandoned request logs no warning."""
    if not future.cancelled():
        future.exception()


def _deadline_error(lane: Lane, p: Pending) -> DeadlineExceeded:
    waited = p.expires - p.request.arrival
    return DeadlineExceeded(
        f"request to {lane.name!r} was not started within its {waited:.3g} s timeout "
        f"(SLO {lane.slo_s * 1000:.4g} ms).",
        fix="Retry later, send fewer requests at once, or give a longer timeout.",
    )


async def _stop_quietly(handle: Replica, *, drain: bool) -> None:
    try:
        await handle.stop(drain=drain)
    except Exception as exc:  # a replica that fails to stop is dead anyway
        log.warning("stopping replica %s failed: %s", handle.spec.id, exc)
        with contextlib.suppress(Exception):
            handle.kill()


def _replica_accounts(r: LiveReplica, end: float) -> tuple[float, float, float, float]:
    """(cost $, energy J, busy s, alive s) of one replica from its start decision to ``end``
    (or its stop), with the running batch counted up to ``end``."""
    stop = r.stopped_at if r.state is STOPPED else end
    alive = max(0.0, stop - r.decided_at)
    busy = r.busy_total + (end - r.busy_since if r.running is not None else 0.0)
    node = r.option.node
    per = max(1, node.replicas_per_node)
    cost = alive * node.usd_per_hour(r.spec.spot) / per / 3600.0
    energy = alive * node.idle_watts / per + busy * (node.peak_watts - node.idle_watts) / per
    return cost, energy, busy, alive
