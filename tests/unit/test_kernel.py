"""The simulation kernel: ordering, the Clock protocol, cancellation, run limits, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coscale.clock import Clock
from coscale.sim.kernel import Kernel


def _logger(kernel: Kernel, log: list[tuple[float, str]]):  # type: ignore[no-untyped-def]
    def make(tag: str):  # type: ignore[no-untyped-def]
        return lambda: log.append((kernel.now(), tag))

    return make


def test_kernel_is_a_clock_and_starts_at_start() -> None:
    clock: Clock = Kernel(start=5.0)
    assert clock.now() == 5.0
    fired: list[float] = []
    timer = clock.call_at(7.5, lambda: fired.append(clock.now()))
    assert hasattr(timer, "cancel")
    assert isinstance(clock, Kernel)
    clock.run()
    assert fired == [7.5]
    assert clock.now() == 7.5


def test_events_fire_in_time_order_and_ties_in_scheduling_order() -> None:
    k = Kernel()
    log: list[tuple[float, str]] = []
    mk = _logger(k, log)
    k.call_at(3.0, mk("c"))
    k.post(1.0, mk("a1"))
    k.call_later(2.0, mk("b"))
    k.post(1.0, mk("a2"))
    k.call_at(1.0, mk("a3"))
    assert k.run() == 5
    assert log == [(1.0, "a1"), (1.0, "a2"), (1.0, "a3"), (2.0, "b"), (3.0, "c")]
    assert k.events == 5
    assert k.pending == 0


def test_event_scheduled_now_by_a_callback_fires_after_those_already_due() -> None:
    k = Kernel()
    log: list[tuple[float, str]] = []
    mk = _logger(k, log)

    def first() -> None:
        log.append((k.now(), "first"))
        k.post(k.now(), mk("spawned-now"))
        k.post_later(0.0, mk("spawned-later-0"))

    k.post(1.0, first)
    k.post(1.0, mk("second"))
    k.run()
    assert [tag for _, tag in log] == ["first", "second", "spawned-now", "spawned-later-0"]


@pytest.mark.parametrize("bad", [-1.0, 4.999, math.nan])
def test_scheduling_in_the_past_raises(bad: float) -> None:
    k = Kernel(start=5.0)
    with pytest.raises(ValueError, match="before now"):
        k.call_at(bad, lambda: None)
    with pytest.raises(ValueError, match="before now"):
        k.post(bad, lambda: None)
    with pytest.raises(ValueError, match="delay"):
        k.call_later(bad - 5.0 if not math.isnan(bad) else bad, lambda: None)
    with pytest.raises(ValueError, match="delay"):
        k.post_later(-0.001, lambda: None)
    assert k.pending == 0


def test_start_must_be_finite() -> None:
    with pytest.raises(ValueError):
        Kernel(start=math.inf)


def test_cancel_is_lazy_exact_and_idempotent() -> None:
    k = Kernel()
    log: list[tuple[float, str]] = []
    mk = _logger(k, log)
    t1 = k.call_at(1.0, mk("one"))
    t2 = k.call_at(2.0, mk("two"))
    k.post(3.0, mk("three"))
    assert k.pending == 3
    t2.cancel()
    t2.cancel()  # twice: no effect
    assert not t2.active and t1.active
    assert k.pending == 2
    assert k.run() == 2
    assert [tag for _, tag in log] == ["one", "three"]
    assert k.events == 2  # the cancelled entry is not an event
    t1.cancel()  # after it fired: no-op
    assert k.pending == 0


def test_cancelling_from_a_callback_prevents_a_same_time_event() -> None:
    k = Kernel()
    log: list[tuple[float, str]] = []
    mk = _logger(k, log)
    victim = k.call_at(1.0, mk("victim"))
    k.call_at(1.0, mk("after"))
    k.post(0.5, victim.cancel)
    k.run()
    assert [tag for _, tag in log] == ["after"]


def test_run_until_stops_at_the_horizon_and_moves_the_clock() -> None:
    k = Kernel()
    log: list[tuple[float, str]] = []
    mk = _logger(k, log)
    for t in (1.0, 2.0, 2.0, 3.0):
        k.post(t, mk(str(t)))
    assert k.run(until=2.0) == 3  # events at exactly `until` fire
    assert k.now() == 2.0
    assert k.pending == 1
    assert k.run(until=2.5) == 0
    assert k.now() == 2.5
    with pytest.raises(ValueError, match="before now"):
        k.run(until=1.0)
    assert k.run() == 1
    assert k.now() == 3.0
    assert k.run(until=10.0) == 0
    assert k.now() == 10.0  # an empty heap still advances to the horizon


def test_max_events_stops_early_and_cancelled_entries_do_not_use_the_budget() -> None:
    k = Kernel()
    log: list[tuple[float, str]] = []
    mk = _logger(k, log)
    timers = [k.call_at(float(i), mk(str(i))) for i in range(1, 7)]
    timers[0].cancel()
    timers[1].cancel()
    assert k.run(until=100.0, max_events=2) == 2
    assert [tag for _, tag in log] == ["3", "4"]
    assert k.now() == 4.0  # left at the last event, not at `until`
    assert k.step()
    assert k.now() == 5.0
    assert k.run(max_events=0) == 0
    assert k.run() == 1
    assert not k.step()
    with pytest.raises(ValueError):
        k.run(max_events=-1)
    k2 = Kernel()
    k2.post(1.0, lambda: None)
    k2.post(2.0, lambda: None)
    assert k2.run(until=10.0, max_events=2) == 2
    assert k2.now() == 2.0  # the budget, not the horizon, stopped it


def test_callback_exception_propagates_and_the_kernel_stays_usable() -> None:
    k = Kernel()
    seen: list[float] = []

    def boom() -> None:
        raise RuntimeError("boom")

    k.post(1.0, boom)
    k.post(2.0, lambda: seen.append(k.now()))
    with pytest.raises(RuntimeError):
        k.run()
    assert k.now() == 1.0
    assert k.events == 1
    k.run()
    assert seen == [2.0]
    assert k.events == 2


def test_peek_reports_the_next_entry() -> None:
    k = Kernel()
    assert k.peek() == math.inf
    k.post(4.0, lambda: None)
    k.post(2.0, lambda: None)
    assert k.peek() == 2.0


def _random_model_log(seed: int) -> list[tuple[float, int]]:
    """Many actors posting at random (often equal) times; the log is the event order."""
    rng = np.random.default_rng(seed)
    k = Kernel()
    log: list[tuple[float, int]] = []
    delays = rng.integers(0, 3, size=5_000).astype(float).tolist()  # many exact ties
    it = iter(delays)

    def actor(name: int) -> None:
        log.append((k.now(), name))
        d = next(it, None)
        if d is not None:
            k.post_later(d, lambda: actor(name))

    for name in range(50):
        k.post(float(rng.integers(0, 5)), lambda n=name: actor(n))  # type: ignore[misc]
    k.run()
    return log


def test_same_seed_gives_identical_event_order() -> None:
    a, b = _random_model_log(7), _random_model_log(7)
    assert a == b
    assert len(a) == 5_050
    assert a != _random_model_log(8)
    times = [t for t, _ in a]
    assert times == sorted(times)
