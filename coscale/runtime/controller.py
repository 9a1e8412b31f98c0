"""The live controller: snapshot → allocation policy → plan → reconcile, on the clock.

Every ``interval_s`` of the injected :class:`~coscale.clock.Clock` — the first decision
one interval after the start, after one interval of observations, as in the simulator —
:meth:`Controller.tick`:

1. takes the interval's telemetry from the data plane (:meth:`DataPlane.collect_window`);
2. builds the :class:`~coscale.types.Snapshot` with :func:`build_snapshot` (pure);
3. asks the allocation policy (:meth:`Controller.decide`, the decision step the contract
   tests feed with the simulator's snapshots);
4. reconciles the replicas to the plan with :func:`reconcile` (pure, the simulator's
   rules) and applies the result: starts replicas through the backend (concurrently,
   each in its own task), stops replicas still starting, drains surplus ones.

Snapshot (:func:`build_snapshot`), for the interval ``[start, now]``
--------------------------------------------------------------------
* per model: ``arrival_rate`` = arrivals / (now − start) (0 for an empty interval),
  ``queue_length`` at ``now``, ``p99_latency_s`` = numpy's linear-interpolation 99th
  percentile of the latencies of the requests completed in the interval (0 if none);
* per replica not stopped: ``outstanding``, ``queued_work_s`` (predicted from the latency
  table: the rest of the running batch plus the batches queued at it), EWMA batch
  ``latency_s`` and ``rate``, ``capacity_rps`` (from the profile),
  ``utilization`` = busy seconds / (now − max(ready_at, start)) clamped to [0, 1] (0 while
  STARTING or when that span is 0), ``started_at`` = when it became READY (when its start
  was decided, while STARTING).

Reconciling (:func:`reconcile`), per target key (model, variant, node type, spot)
---------------------------------------------------------------------------------
* READY replicas are kept first (the busiest: most outstanding, then most queued work,
  then smallest id), then STARTING ones (earliest decided); missing ones are started;
  surplus STARTING ones stop at once;
* surplus READY replicas drain (no new batch; they finish what they hold, then stop) —
  except that a model keeps ``min(planned, READY it had)`` READY replicas while its new
  ones start: the busiest surplus replicas are kept as *cover* and drained as
  replacements become READY (:func:`release_covers`; Kubernetes' rolling update with
  ``maxUnavailable: 0``). A variant switch is therefore "start new, then drain old";
* a node type never holds more replicas than its limit (the pool's ``S_t`` capped by the
  cores of this machine), draining ones included: starts beyond it are deferred to the
  next decision, after draining idle cover replicas on that node type to make room.

Reactions to bursts
-------------------
When the allocation policy reacts to bursts between decisions (it has a ``react``
method and a ``react_interval_s`` that is not None: the predictive policy with
``burst_ratio``), every ``react_interval_s`` the controller gives it the short window's
snapshot (:meth:`DataPlane.burst_snapshot`: arrivals over the window, the queue now) and
applies the plan it returns, if any (:meth:`Controller.react`): one that adds burst
capacity, or one that releases it once its hold has lapsed. The policy's state is the
one its decisions carry, so decisions keep a burst's capacity while it is held.

A 2-s window sees a burst a second or two late. So the controller also reacts on
*pressure*: each time admission's decision shows that a model needs capacity now (a
refusal, or a predicted finish beyond the policy's ``pressure_fraction`` of the
request's budget, :func:`~coscale.policies.admission.is_pressure`), the data plane
calls :meth:`Controller.pressure`, which runs a reaction at once — at most one every
``pressure_gap_s`` of the policy (the predictive policy's default 0.25 s; None: no
reactions on pressure); pressure within the gap is answered by one reaction at its
end. Such a reaction's window is the time since the previous one, and its snapshot
counts the window's pressure (``ModelView.pressure``).

Failures
--------
A replica that dies (``ReplicaDied``) or fails its health check is replaced at once
(:meth:`Controller.replica_lost`), not at the next tick, when its key is still planned
and its node type has room. Health checks: every ``health_interval_s``
(:data:`HEALTH_INTERVAL_S` = 2 s) every READY or DRAINING replica is pinged (concurrently,
``ping_timeout_s`` = :data:`PING_TIMEOUT_S` = 2 s); one that does not answer is killed and
replaced (its batches are retried elsewhere by the data plane).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from coscale.clock import Clock, Timer
from coscale.errors import CoscaleError
from coscale.policies.base import AllocationPolicy, reactions_of
from coscale.runtime.dataplane import DataPlane, LiveReplica
from coscale.telemetry.records import ReplicaSample, TelemetryWindow
from coscale.types import (
    ModelView,
    Plan,
    ReplicaState,
    ReplicaTarget,
    ReplicaView,
    Snapshot,
)

__all__ = [
    "HEALTH_INTERVAL_S",
    "PING_TIMEOUT_S",
    "Controller",
    "Reconciliation",
    "build_snapshot",
    "reconcile",
    "release_covers",
    "sleep_until",
]

log = logging.getLogger(__name__)

#: Seconds between health checks of the replicas.
HEALTH_INTERVAL_S = 2.0
#: Seconds a replica has to answer a ping.
PING_TIMEOUT_S = 2.0
#: Plans remembered for inspection (:attr:`Controller.plans`).
PLAN_HISTORY = 100

READY = ReplicaState.READY
STARTING = ReplicaState.STARTING
DRAINING = ReplicaState.DRAINING

Key = tuple[str, str, str, bool]


# ------------------------------------------------------------------------------ snapshot


def build_snapshot(
    now: float, window: TelemetryWindow, replicas: Sequence[ReplicaSample]
) -> Snapshot:
    """The snapshot of the interval ``[window.start, now]`` (module docstring). Pure; O(R + L
    log L) for R replicas and L latencies."""
    start = window.start
    span = now - start
    views: list[ReplicaView] = []
    for s in replicas:
        if s.state is STARTING:
            utilization = 0.0
        else:
            served = now - max(s.ready_at, start)
            utilization = min(1.0, max(0.0, s.busy_s / served)) if served > 0 else 0.0
        views.append(
            ReplicaView(
                id=s.id,
                model=s.model,
                variant=s.variant,
                node_type=s.node_type,
                state=s.state,
                spot=s.spot,
                outstanding=s.outstanding,
                queued_work_s=s.queued_work_s,
                rate=s.rate,
                latency_s=s.latency_s,
                utilization=utilization,
                capacity_rps=s.capacity_rps,
                started_at=s.ready_at if s.state is not STARTING else s.decided_at,
            )
        )
    models = tuple(
        ModelView(
            m.name,
            arrival_rate=m.arrivals / span if span > 0 else 0.0,
            queue_length=m.queue_length,
            slo_s=m.slo_s,
            accuracy_floor=m.accuracy_floor,
            p99_latency_s=float(np.percentile(m.latencies_s, 99.0)) if m.latencies_s else 0.0,
        )
        for m in window.models
    )
    return Snapshot(now, models, tuple(views))


# ------------------------------------------------------------------------------ reconcile


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """What to do to reach a plan (see :func:`reconcile`).

    ``starts``: replicas to start now (``count`` each, within the pools' room);
    ``stop_starting``: STARTING replicas to stop; ``drain``: READY replicas to drain;
    ``covers``: per model, the surplus READY replicas kept until replacements are READY;
    ``planned``: per model, the replicas the plan asks for; ``deferred``: starts that did
    not fit in their pool this time.
    """

    starts: tuple[ReplicaTarget, ...]
    stop_starting: tuple[str, ...]
    drain: tuple[str, ...]
    covers: tuple[tuple[str, tuple[str, ...]], ...]
    planned: tuple[tuple[str, int], ...]
    deferred: int = 0


def _key(v: ReplicaView) -> Key:
    return (v.model, v.variant, v.node_type, v.spot)


def _busiest(v: ReplicaView) -> tuple[int, float, str]:
    return (-v.outstanding, -v.queued_work_s, v.id)


def _idlest(v: ReplicaView) -> tuple[int, float, str]:
    return (v.outstanding, v.queued_work_s, v.id)


def reconcile(
    plan: Plan,
    replicas: Sequence[ReplicaView],
    limits: Mapping[str, int],
    models: Sequence[str],
) -> Reconciliation:
    """Actions that take ``replicas`` (every replica not stopped) to ``plan`` within the
    node types' ``limits``; ``models`` in placement order. Module docstring, "Reconciling".

    A drained replica with no outstanding request stops at once and frees its slot; a busy
    one keeps it until it finishes. Pure; O(R log R + T) for R replicas and T targets.
    """
    targets: dict[Key, int] = {}
    for t in plan.targets:
        key = (t.model, t.variant, t.node_type, t.spot)
        targets[key] = targets.get(key, 0) + t.count
    active: dict[Key, list[ReplicaView]] = {}
    used: dict[str, int] = {}
    for v in replicas:
        used[v.node_type] = used.get(v.node_type, 0) + 1
        if v.state in (READY, STARTING):
            active.setdefault(_key(v), []).append(v)
    starts: list[tuple[Key, int]] = []
    stop_starting: list[str] = []
    drain: list[ReplicaView] = []
    covers: list[tuple[str, tuple[str, ...]]] = []
    planned_by: list[tuple[str, int]] = []
    for model in models:
        keys = [k for k in targets if k[0] == model]
        keys += sorted(k for k in active if k[0] == model and k not in targets)
        planned = ready_in = 0
        surplus: list[ReplicaView] = []
        for key in keys:
            want = targets.get(key, 0)
            reps = active.get(key, [])
            ready = sorted((v for v in reps if v.state is READY), key=_busiest)
            starting = sorted(
                (v for v in reps if v.state is STARTING), key=lambda v: (v.started_at, v.id)
            )
            keep_r = min(want, len(ready))
            keep_s = min(want - keep_r, len(starting))
            for v in starting[keep_s:]:
                stop_starting.append(v.id)
                used[v.node_type] -= 1
            new = want - keep_r - keep_s
            if new > 0:
                starts.append((key, new))
            surplus.extend(ready[keep_r:])
            planned += want
            ready_in += keep_r
        planned_by.append((model, planned))
        cover_n = max(0, min(planned, ready_in + len(surplus)) - ready_in)
        surplus.sort(key=_busiest)
        covers.append((model, tuple(v.id for v in surplus[:cover_n])))
        for v in surplus[cover_n:]:
            drain.append(v)
            if v.outstanding == 0:
                used[v.node_type] -= 1
    cover_views = {v.id: v for v in replicas if any(v.id in ids for _, ids in covers)}
    cover_ids = {m: list(ids) for m, ids in covers}
    out: list[ReplicaTarget] = []
    deferred = 0
    for (model, variant, node, spot), n in starts:
        free = limits.get(node, 0) - used.get(node, 0)
        if free < n:
            freed = _make_room(node, n - free, models, cover_ids, cover_views, drain)
            used[node] = used.get(node, 0) - freed
            free = limits.get(node, 0) - used.get(node, 0)
        k = max(0, min(n, free))
        deferred += n - k
        if k:
            out.append(ReplicaTarget(model, variant, node, k, spot))
            used[node] = used.get(node, 0) + k
    return Reconciliation(
        starts=tuple(out),
        stop_starting=tuple(stop_starting),
        drain=tuple(v.id for v in drain),
        covers=tuple((m, tuple(ids)) for m, ids in cover_ids.items()),
        planned=tuple(planned_by),
        deferred=deferred,
    )


def _make_room(
    node: str,
    n: int,
    models: Sequence[str],
    covers: dict[str, list[str]],
    views: Mapping[str, ReplicaView],
    drain: list[ReplicaView],
) -> int:
    """Drain up to ``n`` cover replicas on ``node`` (idlest first, models in order);
    returns how many slots that freed now (covers with nothing outstanding)."""
    freed = 0
    for model in models:
        ids = covers.get(model, [])
        for v in sorted((views[i] for i in ids), key=_idlest):
            if n <= 0:
                return freed
            if v.node_type == node:
                ids.remove(v.id)
                drain.append(v)
                n -= 1
                freed += 1 if v.outstanding == 0 else 0
    return freed


def release_covers(
    planned: int, ready: Sequence[ReplicaView], covers: Iterable[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(kept, drained) covers once ``ready`` (the model's READY replicas) changed.

    With C the covers still READY and ``ready_in`` = READY replicas that are not covers:
    keep ``allowed = max(0, min(planned, ready_in + |C|) − ready_in)`` covers (the
    busiest), drain the rest. Pure; O(R log R).
    """
    wanted = set(covers)
    cover_views = [v for v in ready if v.id in wanted]
    ready_in = len(ready) - len(cover_views)
    allowed = max(0, min(planned, ready_in + len(cover_views)) - ready_in)
    cover_views.sort(key=_busiest)
    keep, drop = cover_views[:allowed], cover_views[allowed:]
    return tuple(v.id for v in keep), tuple(v.id for v in drop)


# ------------------------------------------------------------------------------ sleeping


async def sleep_until(call_at: Callable[[float, Callable[[], None]], Timer], when: float) -> None:
    """Sleep until ``when`` on the clock behind ``call_at`` (a loop-bound scheduler)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not done.done():
            done.set_result(None)

    timer = call_at(when, wake)
    try:
        await done
    finally:
        timer.cancel()


# ------------------------------------------------------------------------------ controller


class Controller:
    """The control loop over one :class:`DataPlane` (module docstring).

    ``limits``: the most replicas per node type (the pools' ``S_t``, capped by cores).
    ``models``: placement order (the scenario's). ``interval_s``: the control interval.
    """

    def __init__(
        self,
        allocation: AllocationPolicy[Any],
        plane: DataPlane,
        clock: Clock,
        *,
        interval_s: float,
        limits: Mapping[str, int],
        models: Sequence[str],
        health_interval_s: float = HEALTH_INTERVAL_S,
        ping_timeout_s: float = PING_TIMEOUT_S,
    ) -> None:
        if interval_s <= 0:
            raise CoscaleError(
                f"control interval must be > 0 s, got {interval_s}",
                fix="use e.g. 15",
                code="invalid_policy_params",
            )
        self.allocation = allocation
        self.plane = plane
        self.clock = clock
        self.interval_s = float(interval_s)
        self.limits = dict(limits)
        self.models = tuple(models)
        self.health_interval_s = health_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.state: Any = None
        self.plans: deque[Plan] = deque(maxlen=PLAN_HISTORY)
        self.targets: dict[Key, int] = {}
        self.planned: dict[str, int] = {}
        self.covers: dict[str, set[str]] = {}
        self.decisions = 0
        self.reactions = 0
        self.deferred = 0
        self.replacements = 0
        self.health_failures = 0
        self.errors = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._last_react = -float("inf")
        self._pressure_timer: Timer | None = None
        plane.on_replica_lost = self.replica_lost
        plane.on_replica_ready = self.replica_ready
        reactions = reactions_of(allocation)
        #: Seconds between reactions to bursts; None when the policy has none.
        self.react_interval_s = reactions.interval_s
        self.pressure_gap_s = reactions.pressure_gap_s
        if self.pressure_gap_s is not None:
            plane.on_pressure = self.pressure
            plane.pressure_fraction = reactions.pressure_fraction

    # -- the decision step ---------------------------------------------------------------

    def decide(self, snapshot: Snapshot) -> Plan:
        """Ask the allocation policy, carrying its state from one call to the next."""
        plan, self.state = self.allocation.decide(snapshot, self.state)
        self.decisions += 1
        self.plans.append(plan)
        return plan

    def react(self) -> Plan | None:
        """One reaction step (module docstring): the short window's snapshot, the policy's
        ``react``, and the plan applied if it returned one."""
        self._last_react = self.clock.now()
        snapshot = self.plane.burst_snapshot(self._last_react)
        plan, self.state = self.allocation.react(snapshot, self.state)  # type: ignore[attr-defined]
        if plan is None:
            return None
        self.reactions += 1
        self.plans.append(plan)
        self.apply(plan)
        return plan

    def pressure(self, model: str) -> None:
        """Admission showed that ``model`` needs capacity now (module docstring,
        "Reactions to bursts"): react at once, or ``pressure_gap_s`` after the last
        reaction; one reaction answers all the pressure until it runs."""
        if self._pressure_timer is not None or self.pressure_gap_s is None:
            return
        when = max(self.clock.now(), self._last_react + self.pressure_gap_s)
        self._pressure_timer = self.plane.call_at(when, self._react_on_pressure)

    def _react_on_pressure(self) -> None:
        self._pressure_timer = None
        try:
            self.react()
        except CoscaleError:
            self.errors += 1
            log.exception("controller: the burst plan could not be applied")

    def snapshot(self, now: float) -> Snapshot:
        """Close the current interval and build its snapshot."""
        window, samples = self.plane.collect_window(now)
        snapshot = build_snapshot(now, window, samples)
        self.plane.set_utilization(snapshot.replicas)
        return snapshot

    def tick(self) -> Plan:
        """One control step: snapshot, decide, reconcile and apply."""
        plan = self.decide(self.snapshot(self.clock.now()))
        self.apply(plan)
        return plan

    # -- doing -------------------------------------------------------------------------

    def start_initial(self, targets: Sequence[ReplicaTarget]) -> list[LiveReplica]:
        """Start the initial replicas (the simulator's ``initial``) and plan them."""
        started: list[LiveReplica] = []
        for t in targets:
            key = (t.model, t.variant, t.node_type, t.spot)
            self.targets[key] = self.targets.get(key, 0) + t.count
            self.planned[t.model] = self.planned.get(t.model, 0) + t.count
            for _ in range(t.count):
                started.append(self.plane.start_replica(t.model, t.variant, t.node_type, t.spot))
        return started

    def apply(self, plan: Plan) -> Reconciliation:
        """Reconcile the replicas to ``plan`` and carry the actions out."""
        for t in plan.targets:
            lane = self.plane.lane(t.model)
            if (t.variant, t.node_type) not in lane.options or t.count < 0:
                raise CoscaleError(
                    f"a plan asks for {t.count} replica(s) of {t.model!r} variant "
                    f"{t.variant!r} on {t.node_type!r}, which is not one of the model's "
                    "serving options on this machine",
                    fix="plans may only name the (variant, node type) options they were built with",
                    code="invalid_plan",
                )
        now = self.clock.now()
        replicas = self.plane.live_replicas()
        views = [r.view(now) for r in replicas]
        rec = reconcile(plan, views, self.limits, self.models)
        by_id = {r.id: r for r in replicas}
        self.targets = {}
        for t in plan.targets:
            key = (t.model, t.variant, t.node_type, t.spot)
            self.targets[key] = self.targets.get(key, 0) + t.count
        self.planned = dict(rec.planned)
        self.covers = {m: set(ids) for m, ids in rec.covers}
        for rid in rec.stop_starting:
            self.plane.drain(by_id[rid])
        for rid in rec.drain:
            self.plane.drain(by_id[rid])
        for t in rec.starts:
            for _ in range(t.count):
                self.plane.start_replica(t.model, t.variant, t.node_type, t.spot)
        self.deferred += rec.deferred
        return rec

    def replica_ready(self, r: LiveReplica) -> None:
        """A replica became READY: drain the covers its model no longer needs."""
        covers = self.covers.get(r.model)
        if not covers:
            return
        now = self.clock.now()
        lane = self.plane.lane(r.model)
        ready = [x.view(now) for x in lane.replicas.values() if x.state is READY]
        keep, drop = release_covers(self.planned.get(r.model, 0), ready, covers)
        self.covers[r.model] = set(keep)
        for rid in drop:
            self.plane.drain(lane.replicas[rid])

    def replica_lost(self, r: LiveReplica) -> None:
        """A replica died or failed its health check: replace it now if still planned."""
        key = r.key()
        want = self.targets.get(key, 0)
        live = self.plane.live_replicas()
        active = sum(1 for x in live if x.key() == key and x.state in (READY, STARTING))
        used = sum(1 for x in live if x.spec.node_type == key[2])
        if active < want and used < self.limits.get(key[2], 0):
            self.replacements += 1
            log.info("replacing replica %s of %s (%s)", r.id, r.model, r.cause)
            self.plane.start_replica(*key)

    # -- loops -------------------------------------------------------------------------

    def run(self) -> None:
        """Start the control loop and the health checks (as tasks on the running loop)."""
        self._tasks = [
            asyncio.ensure_future(self._guard(self._control_loop)),
            asyncio.ensure_future(self._guard(self._health_loop)),
        ]
        if self.react_interval_s is not None:
            self._tasks.append(asyncio.ensure_future(self._guard(self._react_loop)))

    async def _guard(self, body: Callable[[], Awaitable[None]]) -> None:
        try:
            await body()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not silently stop scaling
            log.exception("controller loop stopped")
            raise

    async def _control_loop(self) -> None:
        next_at = self.clock.now() + self.interval_s
        while True:
            await sleep_until(self.plane.call_at, next_at)
            try:
                self.tick()
            except CoscaleError:
                self.errors += 1
                log.exception("controller: the plan could not be applied")
            next_at += self.interval_s
            next_at = max(next_at, self.clock.now())

    async def _react_loop(self) -> None:
        interval = self.react_interval_s
        assert interval is not None
        self.plane.burst_snapshot(self.clock.now())  # the first window starts now
        next_at = self.clock.now() + interval
        while True:
            await sleep_until(self.plane.call_at, next_at)
            try:
                self.react()
            except CoscaleError:
                self.errors += 1
                log.exception("controller: the burst plan could not be applied")
            next_at = max(next_at + interval, self.clock.now())

    async def _health_loop(self) -> None:
        while True:
            await sleep_until(self.plane.call_at, self.clock.now() + self.health_interval_s)
            await self.check_health()

    async def check_health(self) -> int:
        """Ping every READY or DRAINING replica; kill and replace those that fail.
        Returns the number that failed."""
        checked = [
            r
            for r in self.plane.live_replicas()
            if r.state in (READY, DRAINING) and r.handle is not None
        ]
        answers = await asyncio.gather(
            *(_ping(r, self.ping_timeout_s) for r in checked), return_exceptions=True
        )
        failed = 0
        for r, ok in zip(checked, answers, strict=True):
            if ok is True or r.state not in (READY, DRAINING):
                continue
            failed += 1
            self.health_failures += 1
            self.plane.replica_failed(r, "failed its health check")
        return failed

    async def stop(self) -> None:
        """Cancel the loops (and a reaction that pressure scheduled)."""
        self.plane.on_pressure = None
        self.plane.pressure_fraction = None
        if self._pressure_timer is not None:
            self._pressure_timer.cancel()
            self._pressure_timer = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []


async def _ping(r: LiveReplica, timeout_s: float) -> bool:
    assert r.handle is not None
    if not r.handle.alive():
        return False
    return bool(await r.handle.ping(timeout_s))
