"""The workers' nice increment: a default, an environment override, a clear error."""

from __future__ import annotations

import pytest

from coscale.backends.local import NICE_ENV, WORKER_NICE, LocalBackend, worker_nice_from_env
from coscale.errors import CoscaleError


def test_unset_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NICE_ENV, raising=False)
    assert worker_nice_from_env() == WORKER_NICE
    assert LocalBackend(standby=False).settings.nice == WORKER_NICE


@pytest.mark.parametrize(("text", "value"), [("0", 0), (" 5 ", 5), ("19", 19)])
def test_the_environment_sets_it(monkeypatch: pytest.MonkeyPatch, text: str, value: int) -> None:
    monkeypatch.setenv(NICE_ENV, text)
    assert worker_nice_from_env() == value
    assert LocalBackend(standby=False).settings.nice == value


def test_an_explicit_value_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NICE_ENV, "3")
    assert LocalBackend(nice=7, standby=False).settings.nice == 7


@pytest.mark.parametrize("text", ["ten", "-1", "20", "2.5"])
def test_a_bad_value_is_an_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setenv(NICE_ENV, text)
    with pytest.raises(CoscaleError, match=NICE_ENV):
        worker_nice_from_env()


def test_a_standbys_preparation_runs_in_the_idle_class_and_leaves_it() -> None:
    """``idle_class`` runs its block in SCHED_IDLE where leaving it is permitted (root
    here), and the thread is back in SCHED_OTHER, at the same nice value, after it —
    also when the block raises. Where it is not permitted it yields False and changes
    nothing."""
    import os
    import threading

    from coscale.runtime.worker import idle_class

    nice = os.nice(0)
    started = threading.Event()
    stop = threading.Event()
    pool: list[int] = []

    def pool_thread() -> None:  # a library's pool thread, started during the imports
        pool.append(threading.get_native_id())
        started.set()
        stop.wait(10.0)

    thread = threading.Thread(target=pool_thread, daemon=True)
    with idle_class() as idle:
        inside = os.sched_getscheduler(0)
        thread.start()
        started.wait(5.0)
        born = os.sched_getscheduler(pool[0])
    assert inside == born == (os.SCHED_IDLE if idle else os.SCHED_OTHER)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER and os.nice(0) == nice
    assert os.sched_getscheduler(pool[0]) == os.SCHED_OTHER  # the pool thread left it too
    stop.set()
    thread.join()
    with pytest.raises(RuntimeError), idle_class():
        raise RuntimeError("a failed import")
    assert os.sched_getscheduler(0) == os.SCHED_OTHER and os.nice(0) == nice
    if os.geteuid() == 0:  # root may always leave the class: the probe succeeds
        assert idle
