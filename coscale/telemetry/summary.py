"""Run summaries from per-request records.

:class:`RequestRecords` holds one run's requests as columns (numpy arrays), which is
how the simulator produces them (millions of rows) and how the live runtime can dump
them. :func:`summarize` turns them into the :class:`~coscale.types.RunSummary` that
users' scripts read (DESIGN.md, "Contracts"); :func:`summary_to_json` writes it.

Outcome codes
-------------
``outcome`` is an ``int8`` column: :data:`NO_OUTCOME` (0) for a request that has no
outcome yet, else the code of a :class:`~coscale.types.Outcome` in
:data:`OUTCOME_CODES` (completed 1, failed 2, rejected 3, timed out 4).

Formulas (N = number of requests)
---------------------------------
* ``completed``, ``rejected``: requests with that outcome.
* ``failed``: requests that were admitted and answered with an error: outcome FAILED
  or TIMED_OUT (the timed-out ones are also reported as ``extra["timed_out"]``).
* ``lost``: requests with no outcome (accepted and never answered; must be 0).
* ``latency_ms``: p50/p90/p99 (numpy's linear-interpolation percentiles) and mean of
  ``(finish − arrival) × 1000`` over *completed* requests; all 0.0 when none completed.
* ``makespan_s`` (unless given): latest end − first arrival, where the latest end is the
  largest finite ``finish`` or ``arrival`` (an unanswered last request still extends the
  run to its arrival); 0.0 when N = 0.
* ``throughput_rps`` = completed / makespan; 0.0 when the makespan is 0.
* ``slo_attainment`` = #(completed and finish ≤ deadline) / N; 1.0 when N = 0.
* ``reliability`` = completed / (N − rejected); 1.0 when nothing was admitted.

Complexity: O(N) plus O(C log C) for the percentiles of C completed requests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from coscale.errors import InvalidInputError
from coscale.types import LatencySummary, Outcome, RunSummary

__all__ = [
    "NO_OUTCOME",
    "OUTCOME_CODES",
    "RequestRecords",
    "outcome_of",
    "summarize",
    "summary_to_json",
]

NO_OUTCOME = 0
OUTCOME_CODES: dict[Outcome, int] = {
    Outcome.COMPLETED: 1,
    Outcome.FAILED: 2,
    Outcome.REJECTED: 3,
    Outcome.TIMED_OUT: 4,
}
_OUTCOMES_BY_CODE = {code: outcome for outcome, code in OUTCOME_CODES.items()}

F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]


def outcome_of(code: int) -> Outcome | None:
    """The :class:`Outcome` of an outcome code; None for :data:`NO_OUTCOME`."""
    if code == NO_OUTCOME:
        return None
    try:
        return _OUTCOMES_BY_CODE[code]
    except KeyError:
        raise InvalidInputError(
            f"unknown outcome code {code}.",
            fix=f"use 0 (no outcome) or one of {sorted(_OUTCOMES_BY_CODE)}.",
        ) from None


@dataclass(frozen=True, slots=True, eq=False)
class RequestRecords:
    """Per-request columns of one run, all of the same length N.

    ``arrival``: arrival time (s). ``finish``: time the request ended (s); NaN when it
    has none. ``outcome``: int8 outcome code (see the module docstring).
    ``deadline``: absolute deadline (s); ``inf`` when the request has none.
    Arrays are converted to float64/int8 on construction and are not copied when
    they already have those types.
    """

    arrival: F64
    finish: F64
    outcome: I8
    deadline: F64

    def __post_init__(self) -> None:
        object.__setattr__(self, "arrival", np.asarray(self.arrival, dtype=np.float64))
        object.__setattr__(self, "finish", np.asarray(self.finish, dtype=np.float64))
        object.__setattr__(self, "outcome", np.asarray(self.outcome, dtype=np.int8))
        object.__setattr__(self, "deadline", np.asarray(self.deadline, dtype=np.float64))
        n = self.arrival.shape
        for name in ("finish", "outcome", "deadline"):
            if getattr(self, name).shape != n or len(n) != 1:
                raise InvalidInputError(
                    f"request records: column {name!r} has shape {getattr(self, name).shape}, "
                    f"arrival has {n}.",
                    fix="give one 1-D array per column, all of the same length.",
                )
        bad = ~np.isin(self.outcome, [NO_OUTCOME, *OUTCOME_CODES.values()])
        if bad.any():
            raise InvalidInputError(
                f"request records: unknown outcome code {int(self.outcome[bad][0])}.",
                fix=f"use 0 (no outcome) or one of {sorted(OUTCOME_CODES.values())}.",
            )

    def __len__(self) -> int:
        return int(self.arrival.shape[0])

    @classmethod
    def empty(cls) -> RequestRecords:
        """Records of a run with no requests."""
        z = np.zeros(0)
        return cls(z, z, np.zeros(0, dtype=np.int8), z)

    def latencies_s(self) -> F64:
        """``finish − arrival`` of the completed requests, in seconds, in record order."""
        done = self.outcome == OUTCOME_CODES[Outcome.COMPLETED]
        latencies: F64 = self.finish[done] - self.arrival[done]
        return latencies

    def __getitem__(self, index: slice | npt.NDArray[Any]) -> RequestRecords:
        """Rows selected by a slice or an index/boolean array."""
        return RequestRecords(
            self.arrival[index], self.finish[index], self.outcome[index], self.deadline[index]
        )


def _latency_summary(latencies_s: F64) -> LatencySummary:
    if latencies_s.size == 0:
        return LatencySummary()
    ms = latencies_s * 1000.0
    p50, p90, p99 = np.percentile(ms, [50.0, 90.0, 99.0])
    return LatencySummary(p50=float(p50), p90=float(p90), p99=float(p99), mean=float(ms.mean()))


def _makespan(records: RequestRecords) -> float:
    if len(records) == 0:
        return 0.0
    finish = records.finish[np.isfinite(records.finish)]
    last = float(records.arrival.max())
    if finish.size:
        last = max(last, float(finish.max()))
    return last - float(records.arrival.min())


def summarize(
    records: RequestRecords,
    *,
    preset: str,
    scenario: str,
    cost_usd: float,
    energy_j: float,
    makespan_s: float | None = None,
    extra: dict[str, Any] | None = None,
) -> RunSummary:
    """The :class:`RunSummary` of one run (formulas in the module docstring)."""
    codes = records.outcome
    counts = np.bincount(codes, minlength=max(OUTCOME_CODES.values()) + 1)
    n = len(records)
    completed = int(counts[OUTCOME_CODES[Outcome.COMPLETED]])
    rejected = int(counts[OUTCOME_CODES[Outcome.REJECTED]])
    timed_out = int(counts[OUTCOME_CODES[Outcome.TIMED_OUT]])
    failed = int(counts[OUTCOME_CODES[Outcome.FAILED]]) + timed_out
    lost = int(counts[NO_OUTCOME])
    span = _makespan(records) if makespan_s is None else float(makespan_s)
    done = codes == OUTCOME_CODES[Outcome.COMPLETED]
    on_time = int(np.count_nonzero(done & (records.finish <= records.deadline)))
    admitted = n - rejected
    return RunSummary(
        requests=n,
        completed=completed,
        failed=failed,
        rejected=rejected,
        lost=lost,
        latency_ms=_latency_summary(records.finish[done] - records.arrival[done]),
        throughput_rps=completed / span if span > 0 else 0.0,
        makespan_s=span,
        cost_usd=float(cost_usd),
        energy_j=float(energy_j),
        slo_attainment=on_time / n if n else 1.0,
        reliability=completed / admitted if admitted else 1.0,
        preset=preset,
        scenario=scenario,
        extra={"timed_out": timed_out, **(extra or {})},
    )


def summary_to_json(summary: RunSummary, path: str | Path) -> Path:
    """Write ``summary.to_dict()`` as indented JSON (creating parent folders); return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(summary.to_dict(), indent=2, sort_keys=False) + "\n")
    return target
