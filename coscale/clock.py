"""The one injectable clock.

Nothing outside this module reads ``time.time()``/``time.monotonic()`` to make a
decision. Three implementations share the :class:`Clock` protocol:

* :class:`SystemClock`: monotonic wall time; timers run on daemon threads.
* :class:`ManualClock`: time moves only when a test calls :meth:`ManualClock.advance`;
  timers due by then fire in (time, insertion) order.
* the simulator's kernel (``coscale.sim``) is a clock whose time is the event time.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """``now()`` in seconds; ``call_at(when, fn)`` runs ``fn`` once at or after ``when``."""

    def now(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer: ...


class SystemClock:
    """Monotonic wall-clock time (``time.monotonic``)."""

    def now(self) -> float:
        return time.monotonic()

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = threading.Timer(max(0.0, when - self.now()), callback)
        timer.daemon = True
        timer.start()
        return timer


class _ManualTimer:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock for tests: time advances only through :meth:`advance`/:meth:`advance_to`.

    Timers fire during an advance, in order of due time, ties in the order they were
    set; a timer set by a firing callback for a time within the advance fires too.
    Time never goes backwards: advancing by a negative amount raises ValueError.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._seq = itertools.count()
        self._timers: list[tuple[float, int, _ManualTimer, Callable[[], None]]] = []

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        handle = _ManualTimer()
        heapq.heappush(self._timers, (when, next(self._seq), handle, callback))
        return handle

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"cannot advance a clock by a negative amount ({seconds})")
        self.advance_to(self._now + seconds)

    def advance_to(self, when: float) -> None:
        if when < self._now:
            raise ValueError(f"cannot move a clock backwards from {self._now} to {when}")
        while self._timers and self._timers[0][0] <= when:
            due, _, handle, callback = heapq.heappop(self._timers)
            if handle.cancelled:
                continue
            self._now = max(self._now, due)
            callback()
        self._now = when

    @property
    def pending(self) -> int:
        """Number of timers not yet fired or cancelled."""
        return sum(1 for _, _, h, _ in self._timers if not h.cancelled)
