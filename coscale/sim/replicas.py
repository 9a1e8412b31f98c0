"""Simulated replicas, their serving groups, and the indexes routing is presented through.

Replica life cycle
------------------
``STARTING`` (from the start decision until ``decided_at + startup_s``) → ``READY``
(takes batches) → ``DRAINING`` (a plan removed it: it takes no new batch and finishes the
ones it holds) → ``STOPPED``. A STARTING replica removed by a plan stops at once; any
replica that dies (preemption, failure) stops at once and gives back its batches.

A READY replica runs one batch at a time; batches routed to it while it is busy wait in
its own FIFO. ``busy_until`` is when it will have finished everything it holds (service
times are deterministic, so this is exact), hence ``queued_work_s = busy_until − now``.

Groups and indexes
------------------
A :class:`Group` is one serving option of one model: a variant on a node type (spot and
on-demand replicas of it share the group: same latency table). Its READY replicas are
indexed two ways, by lazy heaps (every change bumps the replica's ``version`` and pushes
a fresh entry; stale entries are skipped when they reach the top and the heaps are
rebuilt when they hold more than twice the live entries plus 64):

* **idle**: replicas holding no batch, smallest id first;
* **busy**: the others, by ``(busy_until, outstanding, id)``.

Routing candidates (:class:`Presenter`)
---------------------------------------
A routing policy is called with a ``Sequence[ReplicaView]`` that the executor passes in
O(1); what it contains depends on the policy, so that the policy's decision is the one it
would make over all of the model's READY replicas:

* :class:`GroupPresenter` (earliest-completion): per group, its best replica — the
  smallest-id idle one, else the busy one with the smallest ``(busy_until, outstanding,
  id)``. Earliest-completion minimises ``(queued_work_s + service_g(batch), outstanding,
  id)`` and ``service_g`` is the same for every replica of a group (one latency table),
  so its choice over all replicas is its choice over the group bests: an idle replica
  (queued work 0, outstanding 0) beats every other of its group, and among busy ones the
  order of ``busy_until − now`` is the order of ``busy_until``. (Equal to the last bit of
  floating point; two completions that differ by less than one rounding step may break
  their tie differently.) Cost per batch: O(G log R) for G groups.
* :class:`RoundRobinPresenter` (round-robin): the READY ids kept sorted; presented: the
  smallest id greater than the last pick and the smallest id — exactly the two replicas
  round robin can choose between. O(log R) per batch (O(R) memmove per READY change).
* :class:`LeastLoadedPresenter` (least-outstanding): READY ids bucketed by outstanding
  count, each bucket sorted; presented: in the least-loaded bucket, the successor of the
  last pick and the smallest id — the two the policy's tie rotation can choose between.
  O(log R) per batch plus O(bucket) per change of a replica's outstanding count.
* :class:`FullPresenter` (every other policy: random, power-of-two, prequal, weighted
  round robin, latency-inverse, or any unknown one): the list of the model's READY
  replicas' views, updated in place for the replicas that changed since the last call
  (a removed replica is swapped with the last entry, so the order is deterministic but
  not by id). Passing it is O(1) (it is a :class:`~coscale.policies.routing.ReadyViews`,
  so the policies need not filter it: power of two samples it in O(1)); the others scan
  it, O(R) per batch. In these views
  ``queued_work_s`` is stamped at the replica's last change (it is exact in the group,
  round-robin and least-loaded presentations, which build fresh views per batch).
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Sequence
from typing import Any

from coscale.catalog.nodes import NodeType
from coscale.policies.admission import CYCLE_ALPHA, admission_capacity
from coscale.policies.base import VariantOption
from coscale.policies.routing import (
    EarliestCompletion,
    LastPickState,
    LeastOutstanding,
    ReadyViews,
    RoundRobin,
)
from coscale.sim.profiles import batch_latency
from coscale.types import Batch, LatencyTable, ReplicaState, ReplicaView

__all__ = [
    "FullPresenter",
    "Group",
    "GroupPresenter",
    "LeastLoadedPresenter",
    "Presenter",
    "RoundRobinPresenter",
    "SimReplica",
    "make_presenter",
]

#: Weight of the newest batch in the replicas' latency and rate averages (EWMA).
EWMA_ALPHA = 0.2
_REBUILD_SLACK = 64

READY = ReplicaState.READY
STARTING = ReplicaState.STARTING
DRAINING = ReplicaState.DRAINING
STOPPED = ReplicaState.STOPPED


class SimReplica:
    """One simulated replica (mutable; only the executor touches it)."""

    __slots__ = (
        "busy_acc",
        "busy_since",
        "busy_total",
        "busy_until",
        "cover",
        "decided_at",
        "group",
        "id",
        "index",
        "latency_ewma",
        "local",
        "outstanding",
        "rate_ewma",
        "ready_at",
        "running",
        "running_start",
        "spot",
        "state",
        "stopped_at",
        "utilization",
        "version",
        "view_cache",
        "view_stamp",
        "was_ready",
    )

    def __init__(
        self, index: int, group: Group, spot: bool, decided_at: float, ready_at: float
    ) -> None:
        self.index = index
        self.id = f"r{index:07d}"
        self.group = group
        self.spot = spot
        self.state = STARTING
        self.decided_at = decided_at
        self.ready_at = ready_at
        self.stopped_at = float("nan")
        self.busy_until = decided_at
        self.running: Batch | None = None
        self.running_start = 0.0
        self.local: deque[tuple[Batch, float]] = deque()
        self.outstanding = 0
        self.latency_ewma = 0.0
        self.rate_ewma = 0.0
        self.utilization = 0.0
        self.busy_since = 0.0
        self.busy_acc = 0.0
        self.busy_total = 0.0
        self.version = 0
        self.cover = False
        self.was_ready = False
        self.view_cache: ReplicaView | None = None
        self.view_stamp: tuple[int, float, float, int] = (-1, 0.0, 0.0, 0)

    @property
    def idle(self) -> bool:
        return self.running is None

    def key(self) -> tuple[str, str, str, bool]:
        """(model, variant, node type, spot): the plan's target key."""
        g = self.group
        return (g.model, g.variant, g.node.name, self.spot)

    def view(self, now: float, model_ready: int = 0) -> ReplicaView:
        """A frozen :class:`ReplicaView` of this replica at ``now``; ``model_ready``: the
        model's READY replicas (given to the batching policy, 0 elsewhere).

        Views are cached: a replica that changed nothing since its last view (same
        version, utilization and ``model_ready``, and — if it holds work, whose remaining
        time depends on the clock — the same ``now``) gets the same object back.
        """
        stamp = (
            self.version,
            self.utilization,
            now if self.running is not None else -1.0,
            model_ready,
        )
        if self.view_stamp == stamp and self.view_cache is not None:
            return self.view_cache
        g = self.group
        queued = self.busy_until - now if self.running is not None else 0.0
        v = ReplicaView(
            id=self.id,
            model=g.model,
            variant=g.variant,
            node_type=g.node.name,
            state=self.state,
            spot=self.spot,
            outstanding=self.outstanding,
            queued_work_s=queued if queued > 0.0 else 0.0,
            rate=self.rate_ewma,
            latency_s=self.latency_ewma,
            utilization=self.utilization,
            capacity_rps=g.capacity_rps,
            started_at=self.ready_at if self.state is not STARTING else self.decided_at,
            model_ready=model_ready,
        )
        self.view_cache = v
        self.view_stamp = stamp
        return v

    def observe_batch(self, items: int, service_s: float) -> None:
        """Fold one finished batch into the latency and rate averages."""
        rate = items / service_s if service_s > 0 else 0.0
        if self.latency_ewma <= 0.0:
            self.latency_ewma, self.rate_ewma = service_s, rate
        else:
            a = EWMA_ALPHA
            self.latency_ewma += a * (service_s - self.latency_ewma)
            self.rate_ewma += a * (rate - self.rate_ewma)


class Group:
    """One serving option of one model (variant × node type) and its READY replicas."""

    __slots__ = (
        "busy",
        "capacity_rps",
        "cycle_items",
        "cycle_s",
        "idle",
        "items_ewma",
        "members",
        "model",
        "node",
        "option",
        "out_ready",
        "scale",
        "speed_s",
        "table",
        "variant",
    )

    def __init__(self, option: VariantOption, capacity_rps: float, typical_seq_len: int) -> None:
        self.option = option
        self.model = option.model
        self.variant = option.variant
        self.node: NodeType = option.node
        self.table: LatencyTable = option.latency
        self.capacity_rps = capacity_rps
        self.speed_s = option.latency.latency(1, typical_seq_len)
        self.members: dict[str, SimReplica] = {}
        self.idle: list[tuple[str, int, SimReplica]] = []
        self.busy: list[tuple[float, int, str, int, SimReplica]] = []
        self.out_ready = 0
        #: The world's speed against the table the policies know (``ClusterSimulator``'s
        #: ``service_scale``; 1: the table is the truth).
        self.scale = 1.0
        #: EWMAs over the group's finished batches (:meth:`observe_cycle`).
        self.items_ewma = self.cycle_items = self.cycle_s = 0.0

    def observe_cycle(self, items: int, cycle_s: float) -> None:
        """Fold one finished batch of a member into the group's EWMAs of items per batch
        (α = ``EWMA_ALPHA``) and of items and seconds per batch cycle (α =
        :data:`~coscale.policies.admission.CYCLE_ALPHA`), as the live data plane does per
        replica (its cycle here is the batch's service: a simulated replica starts its next
        batch the moment the last one ends, or the moment it is assigned)."""
        if self.cycle_s <= 0.0:
            self.items_ewma = self.cycle_items = float(items)
            self.cycle_s = cycle_s
            return
        self.items_ewma += EWMA_ALPHA * (items - self.items_ewma)
        self.cycle_items += CYCLE_ALPHA * (items - self.cycle_items)
        self.cycle_s += CYCLE_ALPHA * (cycle_s - self.cycle_s)

    def admission_capacity(self, batch_limit: int) -> float:
        """Each member's capacity as admission sees it
        (:func:`~coscale.policies.admission.admission_capacity` over the group's EWMAs)."""
        rate = self.cycle_items / self.cycle_s if self.cycle_s > 0 else 0.0
        return admission_capacity(self.capacity_rps, rate, self.items_ewma, batch_limit)

    def service_s(self, batch: Batch) -> float:
        """Seconds this group's replicas take to run ``batch`` (in length-sorted runs,
        :func:`~coscale.sim.profiles.batch_latency`): its table's latency × ``scale``."""
        return batch_latency(self.table, batch) * self.scale

    def index(self, r: SimReplica) -> None:
        """(Re)index ``r`` after a change (its version was bumped by the caller)."""
        if r.state is not READY:
            return
        if r.running is None:
            heapq.heappush(self.idle, (r.id, r.version, r))
            if len(self.idle) > 2 * len(self.members) + _REBUILD_SLACK:
                self._rebuild()
        else:
            heapq.heappush(self.busy, (r.busy_until, r.outstanding, r.id, r.version, r))
            if len(self.busy) > 2 * len(self.members) + _REBUILD_SLACK:
                self._rebuild()

    def _rebuild(self) -> None:
        idle = [(r.id, r.version, r) for r in self.members.values() if r.running is None]
        busy = [
            (r.busy_until, r.outstanding, r.id, r.version, r)
            for r in self.members.values()
            if r.running is not None
        ]
        heapq.heapify(idle)
        heapq.heapify(busy)
        self.idle, self.busy = idle, busy

    def best_idle(self) -> SimReplica | None:
        """The smallest-id idle READY replica, or None. Amortized O(log R)."""
        h = self.idle
        while h:
            _, version, r = h[0]
            if r.version == version:
                return r
            heapq.heappop(h)
        return None

    def best_busy(self) -> SimReplica | None:
        """The busy READY replica with the smallest (busy_until, outstanding, id), or None."""
        h = self.busy
        while h:
            entry = h[0]
            r = entry[4]
            if r.version == entry[3]:
                return r
            heapq.heappop(h)
        return None

    def best(self) -> SimReplica | None:
        return self.best_idle() or self.best_busy()


# --------------------------------------------------------------------------- presenters


class Presenter:
    """Builds the candidate sequence a routing policy is called with (module docstring)."""

    name = "full"

    def __init__(self, groups: Sequence[Group]) -> None:
        self.groups = tuple(groups)

    def changed(self, r: SimReplica, old_outstanding: int, was_ready: bool) -> None:
        """Note a change of ``r`` (state, outstanding or queued work)."""

    def candidates(self, now: float, batch: Batch, state: Any) -> Sequence[ReplicaView]:
        raise NotImplementedError


class GroupPresenter(Presenter):
    """Earliest-completion: each group's best replica (fresh views). O(G log R)."""

    name = "group-best"

    def candidates(self, now: float, batch: Batch, state: Any) -> Sequence[ReplicaView]:
        out: list[ReplicaView] = []
        for g in self.groups:
            r = g.best()
            if r is not None:
                out.append(r.view(now))
        return out


class RoundRobinPresenter(Presenter):
    """Round robin: the successor of the last pick and the smallest id. O(log R)."""

    name = "round-robin-index"

    def __init__(self, groups: Sequence[Group]) -> None:
        super().__init__(groups)
        self._ids: list[str] = []
        self._by_id: dict[str, SimReplica] = {}

    def changed(self, r: SimReplica, old_outstanding: int, was_ready: bool) -> None:
        ready = r.state is READY
        if ready and not was_ready:
            bisect.insort(self._ids, r.id)
            self._by_id[r.id] = r
        elif was_ready and not ready:
            i = bisect.bisect_left(self._ids, r.id)
            if i < len(self._ids) and self._ids[i] == r.id:
                del self._ids[i]
            self._by_id.pop(r.id, None)

    def candidates(self, now: float, batch: Batch, state: Any) -> Sequence[ReplicaView]:
        ids = self._ids
        if not ids:
            return []
        last = state.last_id if isinstance(state, LastPickState) else None
        picks = [ids[0]]
        if last is not None:
            i = bisect.bisect_right(ids, last)
            if i < len(ids) and ids[i] != ids[0]:
                picks.append(ids[i])
        return [self._by_id[i].view(now) for i in picks]


class LeastLoadedPresenter(Presenter):
    """Least outstanding: in the least-loaded bucket, the last pick's successor and the
    smallest id. O(log R) per batch, O(bucket) per change."""

    name = "least-loaded-index"

    def __init__(self, groups: Sequence[Group]) -> None:
        super().__init__(groups)
        self._buckets: dict[int, list[str]] = {}
        self._keys: list[int] = []
        self._by_id: dict[str, SimReplica] = {}

    def _remove(self, rid: str, load: int) -> None:
        bucket = self._buckets.get(load)
        if bucket is None:
            return
        i = bisect.bisect_left(bucket, rid)
        if i < len(bucket) and bucket[i] == rid:
            del bucket[i]

    def _add(self, rid: str, load: int) -> None:
        bucket = self._buckets.get(load)
        if bucket is None:
            bucket = self._buckets[load] = []
        if not bucket:
            heapq.heappush(self._keys, load)
        bisect.insort(bucket, rid)

    def changed(self, r: SimReplica, old_outstanding: int, was_ready: bool) -> None:
        ready = r.state is READY
        if was_ready:
            self._remove(r.id, old_outstanding)
        if ready:
            self._add(r.id, r.outstanding)
            self._by_id[r.id] = r
        else:
            self._by_id.pop(r.id, None)

    def candidates(self, now: float, batch: Batch, state: Any) -> Sequence[ReplicaView]:
        keys = self._keys
        while keys and not self._buckets.get(keys[0]):
            heapq.heappop(keys)
        if not keys:
            return []
        bucket = self._buckets[keys[0]]
        picks = [bucket[0]]
        last = state.last_id if isinstance(state, LastPickState) else None
        if last is not None:
            i = bisect.bisect_right(bucket, last)
            if i < len(bucket) and bucket[i] != bucket[0]:
                picks.append(bucket[i])
        return [self._by_id[i].view(now) for i in picks]


class FullPresenter(Presenter):
    """Every READY replica's view, maintained incrementally (O(changes) per call)."""

    name = "full-list"

    def __init__(self, groups: Sequence[Group]) -> None:
        super().__init__(groups)
        self._views: ReadyViews = ReadyViews()
        self._replicas: list[SimReplica] = []
        self._pos: dict[str, int] = {}
        self._dirty: dict[str, SimReplica] = {}

    def changed(self, r: SimReplica, old_outstanding: int, was_ready: bool) -> None:
        self._dirty[r.id] = r

    def candidates(self, now: float, batch: Batch, state: Any) -> Sequence[ReplicaView]:
        if self._dirty:
            self._refresh(now)
        return self._views

    def _refresh(self, now: float) -> None:
        views, reps, pos = self._views, self._replicas, self._pos
        for rid, r in self._dirty.items():
            i = pos.get(rid)
            if r.state is READY:
                if i is None:
                    pos[rid] = len(views)
                    views.append(r.view(now))
                    reps.append(r)
                else:
                    views[i] = r.view(now)
            elif i is not None:
                last = len(views) - 1
                if i != last:
                    views[i] = views[last]
                    reps[i] = reps[last]
                    pos[reps[i].id] = i
                views.pop()
                reps.pop()
                del pos[rid]
        self._dirty.clear()


def make_presenter(policy: object, groups: Sequence[Group]) -> Presenter:
    """The presenter for a routing policy object (module docstring)."""
    if isinstance(policy, EarliestCompletion):
        tables = policy.latencies
        if all(tables.get((g.variant, g.node.name)) is g.table for g in groups):
            return GroupPresenter(groups)
        return FullPresenter(groups)
    if isinstance(policy, RoundRobin):
        return RoundRobinPresenter(groups)
    if isinstance(policy, LeastOutstanding):
        return LeastLoadedPresenter(groups)
    return FullPresenter(groups)
