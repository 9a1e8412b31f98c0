"""The workers' CPUs: a Linux CPU list in ``COSCALE_WORKER_CPUS`` (or ``cpus=``) sets the
replicas' core budget and what every worker pins itself to; a bad list names the
variable."""

from __future__ import annotations

import os

import pytest

from coscale.backends.local import (
    WORKER_CPUS_ENV,
    LocalBackend,
    default_threads,
    parse_cpu_list,
    usable_cores,
    worker_cpus_from_env,
)
from coscale.errors import CoscaleError
from coscale.runtime import system

CPUS = os.cpu_count() or 1


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0", (0,)), (" 0 ", (0,)), (f"0-{CPUS - 1}", tuple(range(CPUS))), (f"{CPUS - 1},0,0", None)],
)
def test_a_cpu_list_parses_to_sorted_distinct_cpus(text: str, cpus: tuple[int, ...] | None) -> None:
    expected = cpus if cpus is not None else tuple(sorted({0, CPUS - 1}))
    assert parse_cpu_list(text) == expected


@pytest.mark.parametrize("text", ["", "x", "1-0", "-1", f"{CPUS}", f"0-{CPUS}", "0,,1", "0.5"])
def test_a_bad_cpu_list_is_an_error_naming_the_variable(text: str) -> None:
    with pytest.raises(CoscaleError, match=WORKER_CPUS_ENV) as info:
        parse_cpu_list(text)
    assert info.value.code == "invalid_input"
    with pytest.raises(CoscaleError, match="--worker-cpus"):
        parse_cpu_list(text, name="--worker-cpus")


def test_unset_the_budget_is_this_process_s_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WORKER_CPUS_ENV, raising=False)
    assert worker_cpus_from_env() is None
    assert usable_cores() == system.usable_cores() == len(os.sched_getaffinity(0))
    assert LocalBackend(standby=False).settings.cpus is None
    monkeypatch.setenv(WORKER_CPUS_ENV, "  ")
    assert worker_cpus_from_env() is None


def test_the_environment_sets_the_budget_and_the_backend_s_cpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(WORKER_CPUS_ENV, "0")
    assert worker_cpus_from_env() == (0,)
    assert usable_cores() == system.usable_cores() == 1
    assert default_threads(1) == 1  # one replica on one pinned core: one thread
    assert LocalBackend(standby=False).settings.cpus == (0,)
    # an explicit list wins over the environment
    assert LocalBackend(standby=False, cpus=[CPUS - 1, 0]).settings.cpus == tuple(
        sorted({0, CPUS - 1})
    )


def test_a_bad_environment_fails_the_backend_and_an_empty_list_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(WORKER_CPUS_ENV, "all")
    with pytest.raises(CoscaleError, match=WORKER_CPUS_ENV):
        LocalBackend(standby=False)
    with pytest.raises(CoscaleError, match=WORKER_CPUS_ENV):
        usable_cores()
    monkeypatch.delenv(WORKER_CPUS_ENV)
    with pytest.raises(CoscaleError, match="empty"):
        LocalBackend(standby=False, cpus=[])
