"""The simulation kernel: a deterministic discrete-event loop that is also a :class:`Clock`.

Algorithm
---------
Pending events live in one binary heap (``heapq``) of plain tuples
``(when, seq, callback)``. ``seq`` comes from a per-kernel counter that starts at 0,
so two events due at the same ``when`` fire in the order they were scheduled: the
order of events is a pure function of the inputs (same seed and inputs → identical
event order, on every run and every machine). :meth:`Kernel.run` pops the smallest
``(when, seq)``, sets the clock to ``when`` and calls ``callback()``; a callback may
schedule further events, including at the current time (they fire after the events
already due then, because their ``seq`` is larger).

Costs: scheduling is one tuple and one ``heappush``, O(log n); each event is one
``heappop``, O(log n), with n the number of pending events. The hot loop binds every
name it uses to a local and allocates nothing per event besides the entry tuple.

Two ways to schedule
--------------------
* :meth:`Kernel.post` / :meth:`Kernel.post_later`: fire-and-forget, the fast path, no
  handle (cannot be cancelled).
* :meth:`Kernel.call_at` / :meth:`Kernel.call_later`: the :class:`~coscale.clock.Clock`
  protocol; they return a :class:`KernelTimer` whose :meth:`~KernelTimer.cancel`
  cancels lazily: the entry stays in the heap and fires as a no-op (it is not counted
  in :attr:`Kernel.events`). Cancelling twice, or after the timer fired, does nothing.

Edge cases
----------
* Scheduling before :meth:`Kernel.now` (or at NaN) raises ``ValueError``; a delay must
  be ≥ 0. Infinity is allowed and simply never fires within a finite ``until``.
* ``run(until=t)`` fires every event with ``when <= t``, then sets the clock to ``t``
  (time never goes backwards: ``t < now()`` raises ``ValueError``). Without ``until``
  it runs until no event is left. ``max_events`` stops after that many callbacks and
  leaves the clock at the last event's time.
* An exception raised by a callback propagates out of :meth:`Kernel.run`; the kernel
  stays consistent (the failing event is consumed, the clock is at its time).

Randomness is not the kernel's business: models take a seeded
``numpy.random.Generator`` explicitly and never touch global random state.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable
from heapq import heappop, heappush

__all__ = ["Kernel", "KernelTimer"]

Callback = Callable[[], None]


class KernelTimer:
    """Handle of an event scheduled with :meth:`Kernel.call_at`; ``cancel()`` is lazy."""

    __slots__ = ("_callback", "_kernel", "when")

    def __init__(self, kernel: Kernel, when: float, callback: Callback) -> None:
        self._kernel = kernel
        self._callback: Callback | None = callback
        self.when = when

    def cancel(self) -> None:
        """Prevent the callback from running; no-op if it already ran or was cancelled."""
        if self._callback is not None:
            self._callback = None
            self._kernel._cancelled += 1

    @property
    def active(self) -> bool:
        """True until the timer fires or is cancelled."""
        return self._callback is not None

    def _fire(self) -> None:
        callback = self._callback
        if callback is None:  # cancelled: the lazily-left entry is not an event
            kernel = self._kernel
            kernel._cancelled -= 1
            kernel._skipped += 1
            return
        self._callback = None
        callback()


class Kernel:
    """A discrete-event loop keyed ``(time, seq)``; implements :class:`~coscale.clock.Clock`.

    ``start`` is the initial simulated time (seconds, default 0).
    """

    __slots__ = ("_cancelled", "_events", "_heap", "_next_seq", "_now", "_skipped")

    def __init__(self, start: float = 0.0) -> None:
        if not math.isfinite(start):
            raise ValueError(f"a kernel must start at a finite time, not {start}")
        self._now = float(start)
        self._heap: list[tuple[float, int, Callback]] = []
        self._next_seq = itertools.count().__next__
        self._events = 0
        self._skipped = 0  # cancelled entries popped so far
        self._cancelled = 0  # cancelled entries still in the heap

    # -- the Clock protocol -------------------------------------------------------------

    def now(self) -> float:
        """Current simulated time in seconds."""
        return self._now

    def call_at(self, when: float, callback: Callback) -> KernelTimer:
        """Run ``callback()`` at simulated time ``when``; returns a cancellable timer."""
        if not when >= self._now:  # also rejects NaN
            raise ValueError(f"cannot schedule at {when}: it is before now ({self._now})")
        timer = KernelTimer(self, when, callback)
        heappush(self._heap, (when, self._next_seq(), timer._fire))
        return timer

    def call_later(self, delay: float, callback: Callback) -> KernelTimer:
        """Run ``callback()`` after ``delay`` ≥ 0 simulated seconds; returns a timer."""
        if not delay >= 0.0:
            raise ValueError(f"a delay must be >= 0, got {delay}")
        return self.call_at(self._now + delay, callback)

    # -- the fast path ------------------------------------------------------------------

    def post(self, when: float, callback: Callback) -> None:
        """Run ``callback()`` at ``when``; no handle, cannot be cancelled (fastest)."""
        if not when >= self._now:
            raise ValueError(f"cannot schedule at {when}: it is before now ({self._now})")
        heappush(self._heap, (when, self._next_seq(), callback))

    def post_later(self, delay: float, callback: Callback) -> None:
        """Run ``callback()`` after ``delay`` ≥ 0 seconds; no handle (fastest)."""
        if not delay >= 0.0:
            raise ValueError(f"a delay must be >= 0, got {delay}")
        heappush(self._heap, (self._now + delay, self._next_seq(), callback))

    # -- running ------------------------------------------------------------------------

    def run(self, until: float | None = None, max_events: int | None = None) -> int:
        """Fire events in ``(time, seq)`` order; return how many callbacks ran.

        Stops when the heap is empty, when the next event is after ``until`` (the clock
        then moves to ``until``), or after ``max_events`` callbacks (cancelled timers
        popped on the way do not count).
        """
        if until is not None and not until >= self._now:
            raise ValueError(f"cannot run until {until}: it is before now ({self._now})")
        if max_events is not None and max_events < 0:
            raise ValueError(f"max_events must be >= 0, got {max_events}")
        limit = math.inf if until is None else until
        remaining = sys.maxsize if max_events is None else max_events
        total = 0
        while True:
            skipped_before = self._skipped
            popped, past_limit = self._drain(limit, remaining)
            ran = popped - (self._skipped - skipped_before)
            total += ran
            remaining -= ran
            if past_limit or ran == popped or remaining <= 0 or not self._heap:
                break
        if until is not None and (past_limit or (not self._heap and remaining > 0)):
            self._now = until  # stopped by the horizon, not by the event budget
        return total

    def _drain(self, limit: float, budget: int) -> tuple[int, bool]:
        """The hot loop: pop up to ``budget`` entries due at or before ``limit``.

        Returns (entries popped, stopped because the next entry is after ``limit``).
        """
        heap = self._heap
        pop = heappop
        popped = 0
        try:
            while heap:
                if popped >= budget:
                    return popped, False
                entry = pop(heap)
                when = entry[0]
                if when > limit:
                    heappush(heap, entry)
                    return popped, True
                self._now = when
                popped += 1
                entry[2]()
            return popped, False
        finally:
            self._events += popped

    def step(self) -> bool:
        """Fire the next live event; False when none is left."""
        return self.run(max_events=1) == 1

    # -- introspection ------------------------------------------------------------------

    @property
    def events(self) -> int:
        """Callbacks run so far over the kernel's life (cancelled timers excluded)."""
        return self._events - self._skipped

    @property
    def pending(self) -> int:
        """Events still to fire (heap entries minus lazily-cancelled timers). O(1)."""
        return len(self._heap) - self._cancelled

    def peek(self) -> float:
        """Time of the next heap entry (``inf`` when empty); it may be a cancelled timer."""
        return self._heap[0][0] if self._heap else math.inf
