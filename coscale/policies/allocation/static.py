"""Static allocation (the seed paper's Baseline): a fixed set of replicas, never changed.

Sized once, at construction, from exactly one of:

1. ``replicas``: a count for every model (an int) or per model (a mapping); the replicas
   go on the cheapest on-demand option per unit capacity first, spilling over full pools.
2. ``demand``: per model a rate in requests/s or a :class:`DemandCurve`, with
   ``size_for`` = ``"peak"`` (default: the curve's largest bin) or ``"mean"`` (its mean);
   a plain number is taken as the rate to size for. The rate is covered with on-demand
   capacity (:func:`~.capacity.place_capacity`: ``ceil(rate / capacity_rps)`` replicas of
   the cheapest option per unit capacity, spilling over full pools), at least
   ``min_replicas`` (default 1).

Rules and edge cases:

3. Every model of the context needs a size, and every name given must be a model of the
   context; otherwise :class:`~coscale.errors.CoscaleError`.
4. Pools are filled in the context's model order within S_t; a model that does not fit
   is placed partly and every plan's reason says so.
5. :meth:`StaticPolicy.decide` returns the same targets whatever the snapshot (zero
   replicas, no traffic, missing models), timed at the snapshot; the state stays None.
   O(T) per call for T targets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from coscale.policies.allocation.capacity import (
    DEFAULT_TYPICAL_SEQ_LEN,
    LATENCY_BUDGET_FRACTION,
    DemandCurve,
    PoolLedger,
    merge_targets,
    place_capacity,
    place_count,
    rank_context,
    require,
    shortfall_note,
    validate_common,
    validate_context,
)
from coscale.policies.base import AllocationContext
from coscale.types import Plan, ReplicaTarget, Snapshot

T = TypeVar("T")


class StaticPolicy:
    """A fixed replica set sized for peak or mean demand, or given as counts."""

    name = "static"

    def __init__(
        self,
        context: AllocationContext,
        *,
        replicas: int | Mapping[str, int] | None = None,
        demand: Mapping[str, float | DemandCurve] | None = None,
        size_for: str = "peak",
        min_replicas: int = 1,
        seq_len: int = DEFAULT_TYPICAL_SEQ_LEN,
        budget_fraction: float = LATENCY_BUDGET_FRACTION,
    ) -> None:
        validate_context(context)
        validate_common(seq_len, budget_fraction)
        require(
            (replicas is None) != (demand is None),
            "the static policy needs exactly one of replicas or demand",
            "give replicas (a count) or demand (the rate to size for), not both",
        )
        require(
            size_for in ("peak", "mean"),
            f"size_for must be 'peak' or 'mean', got {size_for!r}",
            "use size_for: peak or size_for: mean",
        )
        require(min_replicas >= 0, "min_replicas must be >= 0", "use a count >= 0")
        names = [m.model for m in context.models]
        options = rank_context(
            context, allow_spot=False, seq_len=seq_len, budget_fraction=budget_fraction
        )
        ledger = PoolLedger.template(context.pools, 0.0).copy()
        targets: list[ReplicaTarget] = []
        notes = [f"static ({'replicas' if replicas is not None else size_for})"]
        if replicas is not None:
            counts = (
                {n: replicas for n in names}
                if isinstance(replicas, int)
                else _per_model(replicas, names, "replicas")
            )
            require(
                all(n >= 0 for n in counts.values()),
                f"static replicas must be >= 0, got {counts}",
                "give each model a replica count >= 0",
            )
            for name in names:
                placed = place_count(options[name], counts[name], ledger)
                targets.extend(placed.targets)
                if placed.count < counts[name]:
                    notes.append(shortfall_note(name, counts[name], placed.count))
        else:
            assert demand is not None
            rates = _per_model(demand, names, "demand")
            for name in names:
                rate = _rate(rates[name], size_for)
                opts = options[name]
                placed = place_capacity(opts, rate, ledger, 0.0)
                targets.extend(placed.targets)
                if placed.count < min_replicas:
                    targets.extend(place_count(opts, min_replicas - placed.count, ledger).targets)
                if placed.expected_rps + 1e-9 < rate:
                    notes.append(
                        f"{name}: pools exhausted, {placed.expected_rps:.1f} of "
                        f"{rate:.1f} rps covered (S_t reached)"
                    )
                notes.append(f"{name} sized for {rate:.3g} rps")
        self.context = context
        self.targets = merge_targets(targets)
        self.reason = "; ".join(notes)

    def decide(self, snapshot: Snapshot, state: None) -> tuple[Plan, None]:
        return Plan(time=snapshot.time, targets=self.targets, reason=self.reason), None


def _per_model(value: Mapping[str, T], names: list[str], what: str) -> dict[str, T]:
    unknown = sorted(set(value) - set(names))
    require(
        not unknown,
        f"static {what} names model(s) {unknown} that are not in the scenario",
        f"use the scenario's model names: {names}",
    )
    missing = [n for n in names if n not in value]
    require(
        not missing,
        f"static {what} gives no size for model(s) {missing}",
        f"give a {what} value for every model",
    )
    return {n: value[n] for n in names}


def _rate(value: float | DemandCurve, size_for: str) -> float:
    if isinstance(value, DemandCurve):
        return value.max() if size_for == "peak" else value.mean()
    require(value >= 0, f"static demand must be >= 0 rps, got {value}", "use a rate >= 0")
    return float(value)
