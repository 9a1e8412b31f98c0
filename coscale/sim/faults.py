"""Faults: spot preemptions and node failures at the catalog's per-hour rates.

Model
-----
Each replica lives on a node of its type. From the moment its start is decided, it dies
after an exponential time with rate (per second)::

    λ = scale × (failure_per_hour + [spot] × preemption_per_hour) / 3600

— the two causes are independent Poisson processes, so the first event is their
superposition; the cause is drawn with probability proportional to its rate. Draws come
from the seeded ``numpy.random.Generator`` passed in, one exponential and (for a spot
replica with both rates > 0) one uniform per replica, in the order replicas are started,
so a run is a pure function of its inputs and seed.

``scale`` (default 1) multiplies every rate: a stress knob (the catalog's averages are
small; real spot capacity is reclaimed in bursts), never an edit of the catalog.
A replica with λ = 0 never dies. Replicas on one node are not correlated (each draws its
own time): the marginal rate per replica is exact, the co-location of replicas is not
modelled. O(1) per replica.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from coscale.catalog.nodes import NodeType
from coscale.errors import InvalidInputError

__all__ = ["FAILURE", "PREEMPTION", "FaultModel"]

PREEMPTION = "preemption"
FAILURE = "failure"
SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class FaultModel:
    """Draws each replica's time of death (see the module docstring)."""

    scale: float = 1.0

    def __post_init__(self) -> None:
        if not (self.scale >= 0 and math.isfinite(self.scale)):
            raise InvalidInputError(
                f"fault rate scale must be a finite number >= 0, got {self.scale}.",
                fix="use 1 for the catalog's rates, 0 for no faults.",
            )

    def rates_per_s(self, node: NodeType, spot: bool) -> tuple[float, float]:
        """(failure, preemption) rates per second of one replica."""
        fail = self.scale * max(0.0, node.failure_per_hour) / SECONDS_PER_HOUR
        preempt = (
            self.scale * max(0.0, node.preemption_per_hour) / SECONDS_PER_HOUR if spot else 0.0
        )
        return fail, preempt

    def draw(
        self, node: NodeType, spot: bool, rng: np.random.Generator
    ) -> tuple[float, str] | None:
        """(seconds until death, cause), or None when the replica cannot die."""
        fail, preempt = self.rates_per_s(node, spot)
        total = fail + preempt
        if total <= 0:
            return None
        delay = float(rng.exponential(1.0 / total))
        if fail > 0 and preempt > 0:
            cause = PREEMPTION if float(rng.random()) * total < preempt else FAILURE
        else:
            cause = PREEMPTION if preempt > 0 else FAILURE
        return delay, cause
