"""Sampled time series of a run: one row per sample, one column per metric.

The simulator (and, later, the live sampler) appends one row of named values per
sample with :meth:`TimeSeries.add`. Columns may appear part-way through a run (the first
replica of a new node type, say): earlier rows read 0 for them, which is what such a
column means (no replica, no queue). Column order is the order of first appearance.

Column names used by the cluster simulator (``<m>`` a model, ``<v>@<n>`` a variant on a
node type):

* ``replicas``, ``replicas_starting``, ``replicas_ready``, ``replicas_draining``: replicas
  not stopped, by state; ``replicas_spot``, ``replicas_on_demand``;
  ``replicas:<v>@<n>``: replicas not stopped per variant and node type;
* ``cost_usd_per_hour``: what the replicas alive at the sample are billed per hour;
* ``power_w``: mean power over the sample window; ``utilization``: busy fraction of the
  serving replicas over the window;
* ``queue:<m>``, ``arrival_rps:<m>``, ``completed_rps:<m>``, ``slo_miss_rps:<m>``: per model.

Reading: :meth:`column` (a float64 array), :meth:`time_weighted_mean`, :meth:`max`.
Writing: :meth:`to_dict` (JSON-able), :meth:`write_csv`. Appending is O(columns).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from coscale.errors import InvalidInputError

__all__ = ["TimeSeries"]

F64 = npt.NDArray[np.float64]


class TimeSeries:
    """Rows of named float values at increasing times (module docstring)."""

    __slots__ = ("_columns", "_times")

    def __init__(self) -> None:
        self._times: list[float] = []
        self._columns: dict[str, list[float]] = {}

    def __len__(self) -> int:
        return len(self._times)

    @property
    def names(self) -> tuple[str, ...]:
        """Column names, in order of first appearance (time excluded)."""
        return tuple(self._columns)

    @property
    def times(self) -> F64:
        return np.asarray(self._times, dtype=np.float64)

    def add(self, time: float, values: Mapping[str, float]) -> None:
        """Append one row; a missing column reads 0, a new one is back-filled with 0."""
        if self._times and time < self._times[-1]:
            raise InvalidInputError(
                f"time series rows must be in time order: {time} after {self._times[-1]}.",
                fix="add samples in increasing time.",
            )
        n = len(self._times)
        for name in values:
            if name not in self._columns:
                self._columns[name] = [0.0] * n
        self._times.append(float(time))
        for name, col in self._columns.items():
            col.append(float(values.get(name, 0.0)))

    def column(self, name: str) -> F64:
        """One column as an array; unknown name → :class:`InvalidInputError`."""
        try:
            return np.asarray(self._columns[name], dtype=np.float64)
        except KeyError:
            raise InvalidInputError(
                f"time series has no column {name!r}.",
                fix=f"use one of: {', '.join(self._columns) or '(none)'}.",
            ) from None

    def time_weighted_mean(self, name: str, end: float | None = None) -> float:
        """Mean of a column as a step function (each value holds until the next sample,
        the last one until ``end``, default the last sample's time). 0 for no rows."""
        times = self.times
        if times.size == 0:
            return 0.0
        values = self.column(name)
        stop = float(times[-1]) if end is None else max(float(end), float(times[-1]))
        widths = np.diff(np.append(times, stop))
        span = stop - float(times[0])
        if span <= 0:
            return float(values[-1])
        return float(np.dot(values, widths) / span)

    def max(self, name: str) -> float:
        """Largest value of a column (0 for no rows)."""
        values = self.column(name)
        return float(values.max()) if values.size else 0.0

    def to_dict(self) -> dict[str, Any]:
        """``{"time_s": [...], name: [...], ...}`` (lists of floats)."""
        out: dict[str, Any] = {"time_s": list(self._times)}
        out.update({name: list(col) for name, col in self._columns.items()})
        return out

    def write_csv(self, path: str | Path) -> Path:
        """Write a header ``time_s,<names>`` and one line per row; returns the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["time_s", *self._columns])
            cols = list(self._columns.values())
            for i, t in enumerate(self._times):
                writer.writerow([repr(t), *(repr(c[i]) for c in cols)])
        return target
