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
