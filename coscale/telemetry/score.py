"""The performance score P_m of the paper, defined precisely.

The paper (§3.1, "Output Performance Metrics") says only that the framework aggregates
end-to-end latency, throughput in operations per second and energy per inference, and
that "P_m denote[s] the comprehensive performance score derived from these metrics",
used to judge the workload distribution W and the allocation A_t. It gives no formula.
coscale therefore *defines* P_m as a weighted mean of three terms, each a ratio of a
target to what was achieved, clipped to [0, 1], so that 1 is ideal on every axis:

.. math::

    P_m = w_L S_L + w_T S_T + w_E S_E, \\qquad w_L + w_T + w_E = 1

* **Latency** ``S_L = min(1, L_slo / L_p99)``: the model's latency SLO over the p99
  end-to-end latency of the completed requests. 1 while the tail is within the SLO;
  0.5 when p99 is twice the SLO. 0 when nothing completed.
* **Throughput** ``S_T = min(1, X_good / X_offered)``: goodput — requests completed
  within their deadline — over the requests offered (answered in any way: completed,
  failed, rejected, timed out), both per second over the same window, i.e. the share of
  the offered load served on time. Normalising by the offered rate (not by a capacity)
  keeps the term meaningful at any load: a server cannot complete more than it is sent.
* **Energy** ``S_E = min(1, E_ref / E_item)``: ``E_item`` is the energy used per completed
  inference (item) over the window; ``E_ref = P_peak / X_cap`` is the energy per item of
  the machine running the served variant flat out — its peak power over the profiled
  best throughput of that variant on this hardware (items/s, × the node type's speedup).
  Idle power spread over few requests and slow variants both lower it; 0 when nothing
  completed.

Weights: :data:`DEFAULT_WEIGHTS` = (1/3, 1/3, 1/3); any non-negative weights with a
positive sum are accepted and divided by their sum. No requests in the window → no score
(``None``): P_m is undefined on an idle server, and the gauge is then absent.

Several models on one machine: each model gets its own P_m. ``S_L`` and ``S_T`` use that
model's requests. The machine's energy in the window is split between models in
proportion to the replica-busy seconds their requests used (a request's share of its
batch's service time: ``service_s × items / batch_size``); with one model it is all of it.

The live value (:class:`ScoreCollector`) is computed over the last
:data:`SCORE_WINDOW_S` seconds (requests that finished in the window; the sampler's
energy over the same window) every time ``/metrics`` is scraped, and exported as the
gauges ``coscale_performance_score{model}`` and ``coscale_performance_score_term{model,
term}``. Complexity: O(requests in the window) — the records are scanned from the newest
(they are kept in the order they were answered) — plus the percentile's sort.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

__all__ = [
    "DEFAULT_WEIGHTS",
    "SCORE_WINDOW_S",
    "Score",
    "ScoreCollector",
    "ScoreInputs",
    "ScoreWeights",
    "performance_score",
    "reference_energy_per_item",
    "window_inputs",
]

#: Seconds of history the live score is computed over.
SCORE_WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class ScoreWeights:
    """Weights of the latency, throughput and energy terms (non-negative, positive sum)."""

    latency: float = 1 / 3
    throughput: float = 1 / 3
    energy: float = 1 / 3

    def __post_init__(self) -> None:
        parts = (self.latency, self.throughput, self.energy)
        if any(not (w >= 0 and math.isfinite(w)) for w in parts) or sum(parts) <= 0:
            raise ValueError(f"score weights must be finite, >= 0 and sum > 0, got {parts}")

    def normalised(self) -> tuple[float, float, float]:
        total = self.latency + self.throughput + self.energy
        return self.latency / total, self.throughput / total, self.energy / total


DEFAULT_WEIGHTS = ScoreWeights()


@dataclass(frozen=True, slots=True)
class ScoreInputs:
    """What one model did over one window (module docstring for each quantity).

    ``latency_p99_s``: None when nothing completed. ``requests``: answered in any way.
    ``on_time``: completed by their deadline. ``items_completed``: inputs in completed
    requests. ``energy_j``: the model's share of the machine's energy in the window.
    ``reference_j_per_item``: ``E_ref``.
    """

    slo_s: float
    latency_p99_s: float | None
    requests: int
    on_time: int
    items_completed: int
    energy_j: float
    reference_j_per_item: float


@dataclass(frozen=True, slots=True)
class Score:
    """P_m and its three terms, each in [0, 1]."""

    value: float
    latency: float
    throughput: float
    energy: float


def _ratio(target: float, achieved: float) -> float:
    """``min(1, target / achieved)``; 1 when achieved ≤ 0 < target, 0 when target ≤ 0."""
    if not target > 0 or math.isnan(achieved):
        return 0.0
    if achieved <= 0:
        return 1.0
    return min(1.0, target / achieved)


def performance_score(inputs: ScoreInputs, weights: ScoreWeights = DEFAULT_WEIGHTS) -> Score | None:
    """P_m of one window (module docstring); None when no request was offered."""
    if inputs.requests <= 0:
        return None
    latency = 0.0
    if inputs.latency_p99_s is not None and inputs.items_completed > 0:
        latency = _ratio(inputs.slo_s, inputs.latency_p99_s)
    throughput = min(1.0, max(inputs.on_time, 0) / inputs.requests)
    energy = 0.0
    if inputs.items_completed > 0:
        per_item = max(inputs.energy_j, 0.0) / inputs.items_completed
        energy = _ratio(inputs.reference_j_per_item, per_item)
    w_l, w_t, w_e = weights.normalised()
    value = w_l * latency + w_t * throughput + w_e * energy
    return Score(value, latency, throughput, energy)


def reference_energy_per_item(peak_watts: float, capacity_items_per_s: float) -> float:
    """``E_ref = P_peak / X_cap`` in joules per item; 0 when the capacity is unknown (≤ 0)."""
    if capacity_items_per_s <= 0 or peak_watts < 0:
        return 0.0
    return peak_watts / capacity_items_per_s


class RecordLike(Protocol):
    """The fields of :class:`coscale.telemetry.records.RequestRecord` the score reads."""

    @property
    def model(self) -> str: ...
    @property
    def arrival(self) -> float: ...
    @property
    def finish(self) -> float: ...
    @property
    def deadline(self) -> float: ...
    @property
    def items(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def service_s(self) -> float: ...
    @property
    def outcome(self) -> Any: ...


def _completed(record: RecordLike) -> bool:
    return str(getattr(record.outcome, "value", record.outcome)) == "completed"


def _busy_share(record: RecordLike) -> float:
    """The replica-busy seconds a completed request used (its share of its batch)."""
    if not _completed(record) or record.batch_size <= 0 or not math.isfinite(record.service_s):
        return 0.0
    return record.service_s * record.items / record.batch_size


def window_inputs(
    records: Iterable[RecordLike],
    *,
    start: float,
    end: float,
    slo_s: Mapping[str, float],
    energy_j: float,
    reference_j_per_item: Mapping[str, float],
) -> dict[str, ScoreInputs]:
    """Per model, the :class:`ScoreInputs` of the requests that finished in ``[start, end]``.

    The machine's ``energy_j`` over the window is split by replica-busy seconds (module
    docstring); when no request recorded a service time it is split by completed items.
    Models with no request in the window are absent.
    """
    by_model: dict[str, list[RecordLike]] = {}
    for r in records:
        if start <= r.finish <= end and r.model in slo_s:
            by_model.setdefault(r.model, []).append(r)
    busy = {m: sum(_busy_share(r) for r in rows) for m, rows in by_model.items()}
    items = {m: sum(r.items for r in rows if _completed(r)) for m, rows in by_model.items()}
    weights = busy if sum(busy.values()) > 0 else {m: float(n) for m, n in items.items()}
    total_weight = sum(weights.values())
    out = {}
    for model, rows in by_model.items():
        latencies = [r.finish - r.arrival for r in rows if _completed(r)]
        p99 = float(np.percentile(latencies, 99)) if latencies else None
        share = weights[model] / total_weight if total_weight > 0 else 0.0
        out[model] = ScoreInputs(
            slo_s=slo_s[model],
            latency_p99_s=p99,
            requests=len(rows),
            on_time=sum(1 for r in rows if _completed(r) and r.finish <= r.deadline),
            items_completed=items[model],
            energy_j=energy_j * share,
            reference_j_per_item=reference_j_per_item.get(model, 0.0),
        )
    return out


def _newest(records: Sequence[RecordLike], start: float) -> list[RecordLike]:
    """The records that finished at or after ``start``, scanning from the newest.

    Records are appended when answered, so ``finish`` grows along the sequence; the scan
    stops at the first older one: O(records in the window), not O(records kept). A
    :class:`~coscale.telemetry.records.RecordRing` does the same on its columns
    (``newest_since``).
    """
    newest_since = getattr(records, "newest_since", None)
    if newest_since is not None:
        found: list[RecordLike] = newest_since(start)
        return found
    out = []
    for r in reversed(records):
        if r.finish < start:
            break
        out.append(r)
    return out


class _GaugeLike(Protocol):
    def replace(self, values: Mapping[tuple[str, ...], float]) -> None: ...


class ScoreCollector:
    """Computes the live P_m per model and writes the two score gauges (module docstring).

    ``records()`` returns the recent request records; ``energy_between(start, end)`` the
    machine's energy in joules over a window (the sampler's history); ``reference()`` the
    current ``E_ref`` per model (it changes when a variant is switched); ``now()`` the
    clock. Call it (as a registry collector) before every render.
    """

    def __init__(
        self,
        *,
        score_gauge: _GaugeLike,
        term_gauge: _GaugeLike,
        records: Callable[[], Sequence[RecordLike]],
        energy_between: Callable[[float, float], float],
        reference: Callable[[], Mapping[str, float]],
        slo_s: Mapping[str, float],
        now: Callable[[], float],
        window_s: float = SCORE_WINDOW_S,
        weights: ScoreWeights = DEFAULT_WEIGHTS,
    ) -> None:
        self._score = score_gauge
        self._terms = term_gauge
        self._records = records
        self._energy_between = energy_between
        self._reference = reference
        self._slo = dict(slo_s)
        self._now = now
        self.window_s = window_s
        self.weights = weights
        self.latest: dict[str, Score] = {}

    def __call__(self) -> None:
        end = self._now()
        start = end - self.window_s
        inputs = window_inputs(
            _newest(self._records(), start),
            start=start,
            end=end,
            slo_s=self._slo,
            energy_j=self._energy_between(start, end),
            reference_j_per_item=self._reference(),
        )
        scores = {m: performance_score(i, self.weights) for m, i in inputs.items()}
        self.latest = {m: s for m, s in scores.items() if s is not None}
        self._score.replace({(m,): s.value for m, s in self.latest.items()})
        terms: dict[tuple[str, ...], float] = {}
        for m, s in self.latest.items():
            terms[(m, "latency")] = s.latency
            terms[(m, "throughput")] = s.throughput
            terms[(m, "energy")] = s.energy
        self._terms.replace(terms)
