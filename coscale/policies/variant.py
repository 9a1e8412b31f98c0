"""Model-variant selection (INFaaS-style) and the latency lookups shared by policies.

A *serving option* (:class:`~coscale.policies.base.VariantOption`) is one variant of a
model on one node type, with its measured latency table (already scaled by the node
type's speedup) and its fidelity. Variant selection scores every option and ranks them;
allocation then places replicas using the ranked options, one per node type.

Scoring one option (``slo`` = the model's latency SLO in seconds):

* ``lat(b)`` = the option's table latency for a batch of ``b`` items padded to
  ``seq_len`` tokens (constructor constant, default 0 = the table's shortest row).
* **Best throughput within the SLO**:
  ``thr = max { b / lat(b) : 1 ≤ b ≤ max_batch, lat(b) ≤ batch_fraction × slo }``
  (``batch_fraction`` = 0.5: a request may wait for the batch in front of it and then
  ride in its own, so one batch may use at most half the SLO; ``max_batch`` = 64).
  Ties in throughput go to the smaller batch. No batch within the bound → ``thr = 0``.
* **Cost per item**: ``usd_per_item = node $/hour / 3600 / (replicas_per_node × thr)``
  (on-demand price, or the spot price when ``spot=True``); ``inf`` when ``thr = 0``.
* **Feasible** iff ``lat(1) ≤ slo`` *and* ``thr > 0`` (some batch fits in
  ``batch_fraction × slo``) *and* ``fidelity ≥ accuracy_floor``.
* **Miss score** of an infeasible option (how far it is from feasible, 0 when feasible):
  ``max(0, lat(1)/slo − 1) + max(0, lat(1)/(batch_fraction × slo) − 1)
  + max(0, (floor − fidelity) / floor)`` — relative shortfalls, summed.

Ranking: feasible options first, cheapest first, ties → higher fidelity, then variant
name, then node name; infeasible options after them by miss score (closest first).

Complexity: O(N × max_batch × log T) for N options and T table points.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from coscale.accel.base import BASELINE_VARIANT
from coscale.errors import CoscaleError
from coscale.policies.base import VariantOption
from coscale.types import LatencyTable, ReplicaView

#: Latency tables keyed by ``(variant, node_type)``; values are already scaled to the node type.
LatencyMap = Mapping[tuple[str, str], LatencyTable]

#: How many closest misses an infeasibility error names.
CLOSEST_MISSES = 3


def latency_map(options: Iterable[VariantOption]) -> dict[tuple[str, str], LatencyTable]:
    """The ``(variant, node_type) → table`` mapping that routing, batching and admission take.

    Later options with the same key replace earlier ones. O(N).
    """
    return {(o.variant, o.node.name): o.latency for o in options}


def predicted_service_s(
    latencies: LatencyMap, replica: ReplicaView, items: int, seq_len: int = 0
) -> float | None:
    """Predicted seconds for ``replica`` to run a batch of ``items`` items.

    1. A table for ``(replica.variant, replica.node_type)`` → ``table.latency(items, seq_len)``.
    2. Else the replica's measured rate (items/s) > 0 → ``items / rate``.
    3. Else its profiled ``capacity_rps`` > 0 → ``items / capacity_rps``.
    4. Else ``None`` (unknown). O(log T).
    """
    table = latencies.get((replica.variant, replica.node_type))
    if table is not None:
        return table.latency(items, seq_len)
    if replica.rate > 0:
        return items / replica.rate
    if replica.capacity_rps > 0:
        return items / replica.capacity_rps
    return None


def _param_error(policy: str, message: str, fix: str) -> CoscaleError:
    return CoscaleError(f"{policy}: {message}", fix=fix, code="invalid_policy_params")


@dataclass(frozen=True, slots=True)
class ScoredOption:
    """One serving option with its score (see the module docstring for the formulas).

    ``batch``: the batch size that gives ``throughput`` (0 when none fits);
    ``miss``: why the option is infeasible, ``""`` when it is feasible.
    """

    option: VariantOption
    feasible: bool
    usd_per_item: float
    throughput: float
    batch: int
    latency_1_s: float
    miss: str
    miss_score: float


@dataclass(frozen=True, slots=True)
class VariantChoice:
    """The chosen option and every scored option, best first."""

    best: VariantOption
    ranked: tuple[ScoredOption, ...]

    def by_node(self) -> dict[str, ScoredOption]:
        """The best-ranked option for each node type (what allocation places per pool)."""
        out: dict[str, ScoredOption] = {}
        for scored in self.ranked:
            out.setdefault(scored.option.node.name, scored)
        return out


class VariantPolicy(Protocol):
    """Chooses how a model is served among its options (no state: a pure function)."""

    name: str

    def choose(
        self, slo_s: float, accuracy_floor: float, options: Sequence[VariantOption]
    ) -> VariantChoice: ...


@dataclass(frozen=True, kw_only=True)
class _Scorer:
    """Constants shared by the variant policies (see the module docstring)."""

    batch_fraction: float = 0.5
    max_batch: int = 64
    seq_len: int = 0
    spot: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.batch_fraction <= 1.0:
            raise _param_error(
                "variant", f"batch_fraction={self.batch_fraction} is not in (0, 1]", "use 0.5"
            )
        if self.max_batch < 1:
            raise _param_error("variant", f"max_batch={self.max_batch} < 1", "use 64")
        if self.seq_len < 0:
            raise _param_error("variant", f"seq_len={self.seq_len} < 0", "use 0")

    def score(self, option: VariantOption, slo_s: float, floor: float) -> ScoredOption:
        """Score one option. O(max_batch × log T)."""
        table, bound = option.latency, self.batch_fraction * slo_s
        lat1 = table.latency(1, self.seq_len)
        best_thr, best_b = 0.0, 0
        for b in range(1, self.max_batch + 1):
            lat = table.latency(b, self.seq_len)
            if lat <= bound and b / lat > best_thr:
                best_thr, best_b = b / lat, b
        node = option.node
        usd = (
            node.usd_per_hour(self.spot) / 3600.0 / (node.replicas_per_node * best_thr)
            if best_thr > 0
            else math.inf
        )
        misses: list[str] = []
        if lat1 > slo_s:
            misses.append(f"batch-1 latency {lat1:.4g} s > SLO {slo_s:.4g} s")
        if best_thr == 0:
            misses.append(f"no batch within {bound:.4g} s (batch-1 takes {lat1:.4g} s)")
        if option.fidelity < floor:
            misses.append(f"fidelity {option.fidelity:.4g} < floor {floor:.4g}")
        miss_score = (
            max(0.0, lat1 / slo_s - 1.0)
            + max(0.0, lat1 / bound - 1.0)
            + (max(0.0, (floor - option.fidelity) / floor) if floor > 0 else 0.0)
        )
        return ScoredOption(
            option=option,
            feasible=not misses,
            usd_per_item=usd,
            throughput=best_thr,
            batch=best_b,
            latency_1_s=lat1,
            miss="; ".join(misses),
            miss_score=0.0 if not misses else miss_score,
        )

    def rank(
        self, slo_s: float, floor: float, options: Sequence[VariantOption]
    ) -> tuple[ScoredOption, ...]:
        """Score and rank (module docstring, "Ranking"). O(N log N) after scoring."""
        if slo_s <= 0:
            raise CoscaleError(
                f"latency SLO must be positive, got {slo_s}",
                fix="set the model's slo_ms to a positive value",
                code="invalid_slo",
            )
        scored = [self.score(o, slo_s, floor) for o in options]
        return tuple(sorted(scored, key=_rank_key))


def _rank_key(s: ScoredOption) -> tuple[bool, float, float, float, str, str]:
    if s.feasible:
        return (
            False,
            s.usd_per_item,
            -s.option.fidelity,
            0.0,
            s.option.variant,
            s.option.node.name,
        )
    return (True, 0.0, 0.0, s.miss_score, s.option.variant, s.option.node.name)


def _no_options(policy: str) -> CoscaleError:
    return CoscaleError(
        f"{policy}: the model has no serving options (no profiled variant on any node type)",
        fix="profile the model (`coscale profile`) and list node types in the scenario's cluster",
        code="no_variant_options",
    )


@dataclass(frozen=True, kw_only=True)
class CheapestFeasible(_Scorer):
    """INFaaS: the cheapest option meeting the latency SLO and the accuracy floor.

    Constants: ``batch_fraction`` = 0.5, ``max_batch`` = 64, ``seq_len`` = 0, ``spot`` = False
    (module docstring gives the formulas). ``choose`` returns the first-ranked option.

    Edge cases: no options → :class:`CoscaleError` (``no_variant_options``); no feasible
    option → :class:`CoscaleError` (``no_feasible_variant``) whose message names the
    ``CLOSEST_MISSES`` = 3 options with the lowest miss score and why each misses.
    ``slo_s ≤ 0`` → :class:`CoscaleError` (``invalid_slo``).
    """

    name = "cheapest-feasible"

    def choose(
        self, slo_s: float, accuracy_floor: float, options: Sequence[VariantOption]
    ) -> VariantChoice:
        if not options:
            raise _no_options(self.name)
        ranked = self.rank(slo_s, accuracy_floor, options)
        if not ranked[0].feasible:
            closest = ", ".join(
                f"{s.option.variant} on {s.option.node.name} ({s.miss})"
                for s in ranked[:CLOSEST_MISSES]
            )
            raise CoscaleError(
                f"no serving option of model {options[0].model!r} meets SLO {slo_s:.4g} s "
                f"and accuracy floor {accuracy_floor:.4g}; closest: {closest}",
                fix="relax the SLO or the accuracy floor, or add a faster node type",
                code="no_feasible_variant",
            )
        return VariantChoice(best=ranked[0].option, ranked=ranked)


@dataclass(frozen=True, kw_only=True)
class FixedVariant(_Scorer):
    """Always the named variant (default ``fp32-eager``, the paper's Baseline).

    Its options (one per node type) are scored and ranked as in the module docstring
    (feasible first, then cheapest) but infeasibility does not exclude them: the
    baseline serves what it is told. ``choose`` returns the first-ranked one.

    Edge cases: no options → :class:`CoscaleError` (``no_variant_options``); none of the
    options is the named variant → :class:`CoscaleError` (``unknown_variant``) listing
    the variants offered. O(N × max_batch × log T).
    """

    name = "fixed"
    variant: str = BASELINE_VARIANT

    def choose(
        self, slo_s: float, accuracy_floor: float, options: Sequence[VariantOption]
    ) -> VariantChoice:
        if not options:
            raise _no_options(self.name)
        mine = [o for o in options if o.variant == self.variant]
        if not mine:
            offered = ", ".join(sorted({o.variant for o in options}))
            raise CoscaleError(
                f"fixed: variant {self.variant!r} is not among the model's options ({offered})",
                fix=f"set the variant policy's `variant` to one of: {offered}",
                code="unknown_variant",
            )
        ranked = self.rank(slo_s, accuracy_floor, mine)
        return VariantChoice(best=ranked[0].option, ranked=ranked)
