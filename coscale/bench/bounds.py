"""What the live goals ask of a cycle: necessary capacities computed from its schedule.

The live cycle replays one fixed schedule (arrival times ``t_1 ≤ … ≤ t_N``, seconds)
for every preset. Two of the goals pull its capacity requirements in opposite
directions, and both can be bounded from the schedule alone, for *any* allocation,
admission or scheduling policy, in a fluid model where each request is one unit of work
and a preset's replicas together serve ``C`` requests per second:

* **Reliability** (a share ``r`` of the requests answered within the SLO ``d``): a
  request that arrives in ``[t_i, t_j]`` and is answered within the SLO is served
  within ``[t_i, t_j + d]``, so at most ``C · (t_j − t_i + d)`` of the ``j − i + 1``
  arrivals there make it, and at most ``m = ⌊(1 − r) · N⌋`` may miss::

      C ≥ C_reliable = max over i ≤ j of (j − i + 1 − m) / (t_j − t_i + d)

  (:func:`reliable_capacity`; O(N²) in numpy rows, a few ms for the cycle's hundreds
  of requests). A worker killed during the cycle only raises what is needed.
* **Processing time** ``cut`` lower (0.5 for "at least 50 %"): the makespan counts from
  the first scheduled arrival, the optimized preset cannot finish before the last
  arrival, ``S = t_N − t_1``, so the baseline's makespan must reach ``S / (1 − cut)``.
  A work-conserving server of rate ``C_b`` that serves every request (the baseline
  refuses nothing) finishes at ``M(C_b) = max_k (t_k − t_1 + (N − k + 1) / C_b)``, and
  ``M(C_b) ≥ S / (1 − cut)`` iff::

      C_b ≤ C_slow = max over k of (N − k + 1) / (S / (1 − cut) − (t_k − t_1))

  (:func:`slow_capacity`; O(N)).

Together: the optimized preset must serve at least ``C_reliable / C_slow`` times what the
baseline serves on the same replicas (:func:`goal_needs`). The bench compares that with
the ratio measured in the run (:func:`measured_speed_ratio`: the baseline's per-item
service time over the optimized preset's, from each server's own telemetry).

Fluid approximations: lengths are not weighed (a request is one unit at the cycle's mean
length), and a request's own service time is not counted against the SLO — both make
the real requirement larger, not smaller, for the reliability side. On the baseline's
side, ``c`` replicas each serving one request at a time can finish up to about one
service time later than the fluid server; the bound ignores that.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["goal_needs", "measured_speed_ratio", "reliable_capacity", "slow_capacity"]


def _sorted(times: Sequence[float] | npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    t = np.sort(np.asarray(times, dtype=np.float64))
    if t.size and not np.isfinite(t).all():
        raise ValueError("arrival times must be finite")
    return t


def reliable_capacity(
    times: Sequence[float] | npt.NDArray[np.float64], slo_s: float, reliability: float
) -> float:
    """``C_reliable`` (module docstring): the least combined rate, requests/s, at which a
    share ``reliability`` of the arrivals at ``times`` can be answered within ``slo_s``.
    0 for no arrivals or when the allowed misses cover every window."""
    if slo_s <= 0 or not 0.0 <= reliability <= 1.0:
        raise ValueError(f"slo_s={slo_s} must be > 0 and reliability={reliability} in [0, 1]")
    t = _sorted(times)
    n = t.size
    misses = math.floor((1.0 - reliability) * n + 1e-9)
    best = 0.0
    counts = np.arange(1, n + 1, dtype=np.float64)
    for i in range(n):
        span = t[i:] - t[i] + slo_s
        need = (counts[: n - i] - misses) / span
        best = max(best, float(need.max()))
    return best


def slow_capacity(times: Sequence[float] | npt.NDArray[np.float64], cut: float) -> float:
    """``C_slow`` (module docstring): the greatest combined rate, requests/s, at which a
    work-conserving server that serves every request still takes ``1 / (1 − cut)`` times
    the schedule's span to finish. ``inf`` when the span is 0 (one request, or all at
    once: no rate is slow enough to be measured against it) or ``cut`` is 0 (every rate
    ends at the span or later)."""
    if not 0.0 <= cut < 1.0:
        raise ValueError(f"cut={cut} must be in [0, 1)")
    t = _sorted(times)
    if t.size == 0:
        return math.inf
    span = float(t[-1] - t[0])
    if span <= 0 or cut == 0.0:
        return math.inf
    target = span / (1.0 - cut)
    left = np.arange(t.size, 0, -1, dtype=np.float64)  # N − k + 1
    room = target - (t - t[0])
    return float((left / room).max())


def goal_needs(
    times: Sequence[float] | npt.NDArray[np.float64],
    slo_s: float,
    reliability: float,
    cut: float,
) -> dict[str, float | None]:
    """The two bounds and their ratio (module docstring) for one schedule:
    ``reliable_rps``, ``slow_rps`` and ``ratio_needed`` = reliable / slow (None when
    ``slow_rps`` is 0 or infinite)."""
    reliable = reliable_capacity(times, slo_s, reliability)
    slow = slow_capacity(times, cut)
    ratio = reliable / slow if 0 < slow < math.inf else None
    return {
        "reliable_rps": reliable,
        "slow_rps": slow if math.isfinite(slow) else None,
        "ratio_needed": ratio,
        "reliability": reliability,
        "cut": cut,
        "slo_s": slo_s,
    }


def per_item_service_s(run: Mapping[str, Any]) -> float | None:
    """Seconds of replica service per item in a live run, from its server's telemetry
    (``batch_service_s / batch_items``); None without telemetry or items."""
    tel = run.get("server_telemetry") or {}
    items = tel.get("batch_items") or 0.0
    service = tel.get("batch_service_s")
    if not items or service is None or service <= 0:
        return None
    return float(service) / float(items)


def measured_speed_ratio(
    runs: Sequence[Mapping[str, Any]], fast: str = "optimized-b", slow: str = "baseline"
) -> dict[str, float | None]:
    """How much faster ``fast``'s replicas served than ``slow``'s in the same bench run:
    ``slow``'s per-item service time / ``fast``'s (:func:`per_item_service_s`), with
    both times in ms. None where a run or its telemetry is missing."""
    by = {r.get("preset"): r for r in runs}
    a = per_item_service_s(by[slow]) if slow in by else None
    b = per_item_service_s(by[fast]) if fast in by else None
    return {
        "baseline_ms_per_item": None if a is None else 1000.0 * a,
        "optimized_ms_per_item": None if b is None else 1000.0 * b,
        "ratio": a / b if a is not None and b is not None else None,
    }
