"""The live batcher of one model: its queue and the dispatch loop around the batching policy.

Batching is a decision, not an asyncio loop (DESIGN.md, principle 5). The
:class:`Batcher` only holds the model's queue, calls the policies, and sleeps/wakes on
the injected :class:`~coscale.clock.Clock`; the rule itself is the batching policy's
``decide(now, queue, free_replica, state)``.

When :meth:`Batcher.poke` runs
------------------------------
The data plane calls :meth:`Batcher.poke` whenever something changes that could let a
batch go: a request arrives, a replica becomes free or READY, requests are put back
after a replica died. A ``wake_at`` the policy asked for is a timer on the clock that
pokes again then. Pokes are synchronous and cheap when nothing can happen (no free
replica → O(1)).

One poke (the simulator's ``ClusterSimulator._dispatch``, the same rules)
-------------------------------------------------------------------------
While the queue is not empty:

1. ``f`` = the free replica the pool offers (the fastest idle READY replica: smallest
   batch-1 latency, then smallest id). None → stop (the next free replica pokes).
2. ``BatchDecision(k, wake_at) = batching.decide(now, queue, f, state)``. ``k = 0`` →
   set the ``wake_at`` timer if one is asked for, and stop.
3. Take the oldest ``k`` requests, capped at ``max_batch`` items (always at least one
   request; the rest go back to the front).
4. ``route = routing.route(batch, READY replica views, state)``. No replica → put the
   requests back at the front and poke again after ``route.retry_after_s``.
5. ``pool.assign(batch, replica)``: the replica runs it now, or after the batches it
   already holds (a routing policy may prefer a busy replica that will finish sooner).

The queue
---------
:class:`~coscale.sim.queues.ModelQueue`, the simulator's: FIFO with one tenant, weighted
fair queueing (start-time fair queueing with the tenants' weights) with several; requests
put back after a failure go first. A request answered while queued (its deadline
passed) is *discarded* lazily: it is skipped when it reaches the head or is taken in a
batch, and :meth:`Batcher.__len__` does not count it; until then the batching policy may
still see it in the queue (it can only make the policy dispatch sooner).

Timers
------
:func:`loop_scheduler` bridges the clock to the event loop: with the
:class:`~coscale.clock.SystemClock` a timer is ``loop.call_later(when − now)`` (no
thread per timer); with any other clock (the tests' :class:`~coscale.clock.ManualClock`)
it is ``clock.call_at(when, …)`` whose callback is handed to the loop thread-safely.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol

from coscale.clock import Clock, SystemClock, Timer
from coscale.policies.base import BatchingPolicy, RoutingPolicy
from coscale.sim.queues import ModelQueue
from coscale.types import Batch, ReplicaView, Request

__all__ = ["Batcher", "ReplicaPool", "Scheduler", "loop_scheduler"]

#: ``call_at(when, callback) -> Timer``: how the batcher sets its wake-up timers.
Scheduler = Callable[[float, Callable[[], None]], Timer]


class ReplicaPool(Protocol):
    """What the batcher needs from the data plane for one model."""

    def free_replica(self, now: float) -> ReplicaView | None:
        """The replica a batch is formed for (fastest idle READY), or None."""
        ...

    def ready_views(self, now: float) -> Sequence[ReplicaView]:
        """Views of the model's READY replicas (the routing candidates)."""
        ...

    def assign(self, batch: Batch, replica_id: str, now: float) -> None:
        """Hand ``batch`` to replica ``replica_id`` (chosen by the routing policy)."""
        ...


def loop_scheduler(clock: Clock, loop: asyncio.AbstractEventLoop) -> Scheduler:
    """Timers on ``clock`` whose callbacks run on ``loop`` (module docstring, "Timers")."""
    if isinstance(clock, SystemClock):

        def system_call_at(when: float, callback: Callable[[], None]) -> Timer:
            return loop.call_later(max(0.0, when - clock.now()), callback)

        return system_call_at

    def bridged_call_at(when: float, callback: Callable[[], None]) -> Timer:
        def handoff() -> None:
            loop.call_soon_threadsafe(callback)

        return clock.call_at(when, handoff)

    return bridged_call_at


class Batcher:
    """One model's queue and dispatch loop (module docstring).

    ``weight``: the tenants' fair-share weight function (``WeightedFairQueue.weight``);
    None → FIFO. ``call_at``: the timer scheduler (default ``clock.call_at``; the data
    plane passes :func:`loop_scheduler`). Not thread-safe: call it from one thread.
    """

    def __init__(
        self,
        model: str,
        batching: BatchingPolicy[Any],
        routing: RoutingPolicy[Any],
        pool: ReplicaPool,
        clock: Clock,
        *,
        max_batch: int,
        weight: Callable[[str], float] | None = None,
        call_at: Scheduler | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.batching = batching
        self.routing = routing
        self.pool = pool
        self.clock = clock
        self.max_batch = max_batch
        self.queue = ModelQueue(weight)
        self.bstate: Any = None
        self.rstate: Any = None
        self._call_at: Scheduler = call_at or clock.call_at
        self._dead: set[int] = set()
        self._wake_at: float | None = None
        self._timer: Timer | None = None
        self._poking = False
        self._again = False
        self._closed = False
        self.decisions = 0
        self.batches = 0

    # -- the queue ----------------------------------------------------------------------

    def __len__(self) -> int:
        """Requests waiting (discarded ones not counted)."""
        return len(self.queue) - len(self._dead)

    def push(self, request: Request, priority: bool = False) -> None:
        """Queue an admitted request (FIFO, or fairly between tenants: with ``priority``
        ahead of the requests without, see :class:`~coscale.sim.queues.ModelQueue`)."""
        self.queue.push(request, priority)

    def push_front(self, requests: Sequence[Request]) -> None:
        """Put requests back at the very front, in the given order (after a failure)."""
        self.queue.push_front(list(requests))

    def discard(self, request_id: int) -> None:
        """Forget a queued request that was answered while waiting (lazy removal)."""
        self._dead.add(request_id)

    @property
    def wake_at(self) -> float | None:
        """When the pending wake-up timer fires (None: none set)."""
        return self._wake_at

    # -- dispatching ----------------------------------------------------------------------

    def poke(self) -> None:
        """Dispatch whatever the policies say can go now (module docstring, "One poke")."""
        if self._closed:
            return
        if self._poking:  # re-entered from a callback: run once more when done
            self._again = True
            return
        self._poking = True
        try:
            self._again = True
            while self._again:
                self._again = False
                self._dispatch()
        finally:
            self._poking = False

    def _dispatch(self) -> None:
        now = self.clock.now()
        self._drop_dead_head()
        queue = self.queue
        while queue:
            free = self.pool.free_replica(now)
            if free is None:
                return
            decision, self.bstate = self.batching.decide(now, queue.view(), free, self.bstate)
            self.decisions += 1
            if decision.dispatch <= 0:
                if decision.wake_at is not None:
                    self._wake(decision.wake_at)
                return
            requests = self._take(decision.dispatch)
            if not requests:
                continue
            batch = Batch(self.model, tuple(requests))
            route, self.rstate = self.routing.route(batch, self.pool.ready_views(now), self.rstate)
            if route.replica_id is None:
                queue.push_front(requests)
                self._wake(now + max(0.0, route.retry_after_s))
                return
            self.batches += 1
            self.pool.assign(batch, route.replica_id, now)

    def _drop_dead_head(self) -> None:
        self.queue.drop_dead_head(self._dead)

    def _take(self, k: int) -> list[Request]:
        """The next ``k`` live requests, capped at ``max_batch`` items (≥ 1 request;
        :meth:`~coscale.sim.queues.ModelQueue.take_batch`)."""
        return self.queue.take_batch(k, self.max_batch, self._dead)

    def _wake(self, when: float) -> None:
        now = self.clock.now()
        when = max(when, now)
        if self._wake_at is not None and now <= self._wake_at <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._wake_at = when
        self._timer = self._call_at(when, partial(self._on_wake, when))

    def _on_wake(self, when: float) -> None:
        if self._wake_at != when:
            return
        self._wake_at = None
        self._timer = None
        self.poke()

    def close(self) -> None:
        """Cancel the wake-up timer; later pokes do nothing."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake_at = None
