"""Policy protocols: pure functions of frozen inputs, state carried explicitly.

Every policy is an object built once from static configuration (constructor
arguments: constants, the catalog rows, the measured latency tables) whose
decision method is pure: it reads its arguments, returns a decision and the
next state, performs no I/O, reads no clock and mutates nothing. Hysteresis,
moving windows and pseudo-random streams live in the returned state, which is
a frozen dataclass (or ``None`` before the first call). This is what lets the
simulator and the live controller share the *same* policy objects.

Randomness: a policy that needs it keeps a 64-bit counter/seed in its state
and derives numbers from it with :func:`splitmix64`, so the same inputs and
seed give the same decisions in the simulator and live.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from coscale.catalog.nodes import NodeType
from coscale.types import (
    AdmissionDecision,
    Batch,
    BatchDecision,
    LatencyTable,
    Plan,
    ReplicaView,
    Request,
    RouteDecision,
    Snapshot,
)

S = TypeVar("S")

_MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> tuple[int, float]:
    """One step of SplitMix64: returns (next_state, uniform float in [0, 1))."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z = z ^ (z >> 31)
    return x, (z >> 11) / float(1 << 53)


@dataclass(frozen=True, slots=True)
class VariantOption:
    """One way to serve a model: a variant on a node type, with its measured profile.

    ``latency``: batch latency on this node type (the profile scaled by the node's
    speedup). ``fidelity``: accuracy or mean cosine vs fp32 (from the profile).
    """

    model: str
    variant: str
    node: NodeType
    latency: LatencyTable
    fidelity: float
    memory_bytes: int = 0


class AllocationPolicy(Protocol[S]):
    """Decides how many replicas of which variant run on which node type."""

    name: str

    def decide(self, snapshot: Snapshot, state: S | None) -> tuple[Plan, S]: ...


@dataclass(frozen=True, slots=True)
class Reactions:
    """How an executor runs an allocation policy's reactions to bursts
    (:func:`reactions_of`): its ``react`` every ``interval_s`` (None: never), and at
    once on admission's pressure — at most every ``pressure_gap_s`` (None: not on
    pressure), pressure being a predicted finish past ``pressure_fraction`` of a
    request's budget (:func:`~coscale.policies.admission.is_pressure`)."""

    interval_s: float | None = None
    pressure_gap_s: float | None = None
    pressure_fraction: float = 1.0


def reactions_of(allocation: object) -> Reactions:
    """The reactions ``allocation`` asks for: none unless it has a callable ``react``
    and a ``react_interval_s`` > 0; pressure reactions where it also has a
    ``pressure_gap_s`` that is not None (and then its ``pressure_fraction``). The one
    reading of these attributes for every executor (live controller, both simulators)."""
    interval = getattr(allocation, "react_interval_s", None)
    if not callable(getattr(allocation, "react", None)) or not interval:
        return Reactions()
    gap = getattr(allocation, "pressure_gap_s", None)
    if gap is None:
        return Reactions(float(interval))
    return Reactions(float(interval), float(gap), float(allocation.pressure_fraction))  # type: ignore[attr-defined]


class RoutingPolicy(Protocol[S]):
    """Chooses the replica a batch goes to among the snapshot's serving replicas."""

    name: str

    def route(
        self, batch: Batch, replicas: Sequence[ReplicaView], state: S | None
    ) -> tuple[RouteDecision, S]: ...


class BatchingPolicy(Protocol[S]):
    """Decides, for a model's FIFO queue and a free replica, how many requests to dispatch now.

    ``queue`` is oldest first; ``replica`` is the replica that is free to take a
    batch (its variant's latency table is known to the policy from construction).
    """

    name: str

    def decide(
        self, now: float, queue: Sequence[Request], replica: ReplicaView, state: S | None
    ) -> tuple[BatchDecision, S]: ...


class AdmissionPolicy(Protocol[S]):
    """Admits or rejects one arriving request."""

    name: str

    def decide(
        self, request: Request, snapshot: Snapshot, state: S | None
    ) -> tuple[AdmissionDecision, S]: ...


@dataclass(frozen=True, slots=True)
class Pool:
    """Nodes of one type that allocation may use: at most ``max_replicas`` replicas
    (node count × replicas_per_node), of which at most ``spot_share`` may be spot."""

    node: NodeType
    max_replicas: int


@dataclass(frozen=True, slots=True)
class ModelTarget:
    """What allocation must serve for one model: its SLO and the serving options
    the variant policy allows (one per node type it may run on)."""

    model: str
    slo_s: float
    options: tuple[VariantOption, ...]


@dataclass(frozen=True, slots=True)
class AllocationContext:
    """Static configuration shared by every allocation policy.

    ``interval_s``: how often the executor calls ``decide``.
    ``spot_share``: maximum fraction of all replicas that may be spot.
    """

    models: tuple[ModelTarget, ...]
    pools: tuple[Pool, ...]
    spot_share: float = 0.0
    interval_s: float = 15.0
