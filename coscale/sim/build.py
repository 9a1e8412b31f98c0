"""One preset's policy objects for a prepared scenario — what BOTH executors run.

:func:`build_policies` is the single place where a preset becomes policy objects:
:func:`coscale.sim.run.run_preset` hands its :class:`PolicySet` to the
:class:`~coscale.sim.cluster.ClusterSimulator`, and
:meth:`coscale.runtime.system.ServingSystem.from_scenario` hands the same to the live
data plane and controller. There is no second copy to keep in sync.

Why here (``coscale/sim/build.py``)
-----------------------------------
It reads a :class:`~coscale.sim.run.Prepared` (the seeded workload's demand curves and
typical lengths, the models' measured options) and the profile helpers of
:mod:`coscale.sim.profiles`, so it cannot live in :mod:`coscale.policies`, which stays
pure (no NumPy-heavy simulator imports, no I/O). It is its own module rather than part
of :mod:`coscale.sim.run` so the live runtime imports policy construction, not the
simulator's workload loading and run loop. ``Prepared`` is imported for typing only
(``run`` imports this module at run time, never the reverse), so there is no import
cycle. The per-model bundle :class:`~coscale.sim.cluster.ModelSetup` stays in
:mod:`coscale.sim.cluster`, next to the simulator that consumes it.

Policies of a preset
--------------------
:func:`~coscale.policies.presets.resolve_preset` gives the bundle (the scenario's own
overrides apply only when the preset is the scenario's preset). Per model: routing,
batching and admission objects are built with that model's latency tables
(``latencies``) when their factories take them; the batch limit is the batching
policy's (:func:`~coscale.sim.profiles.batch_limit`); the variant policy ranks the
model's options (scored at the model's typical ``seq_len`` and that batch limit) and
keeps the best one per node type (what allocation places). Allocation gets an
:class:`~coscale.policies.base.AllocationContext` of those options (latency tables
truncated at the batch limit), the pools (``S_t`` = max nodes × replicas per node) and
``spot_share``, plus:

* ``seq_len`` (policies that take it, when not set): the longest of the models' typical
  request lengths (the median of each model's clamped lengths);
* ``period_s`` (policies that take it — the predictive forecaster's season —, when not
  set and the workload has one): :attr:`Prepared.period_s`;
* ``static`` without ``replicas``/``demand``: ``demand`` = each model's arrival rate in
  control-interval bins (the policy sizes for its peak, or ``size_for: mean``);
* ``oracle`` without ``demand``: the realised arrivals per model in ``oracle_bin_s`` bins
  (default 1 s) — perfect foresight of this run's demand.

Each model's queue is weighted fair between tenants (scenario weights, default 1) when
the workload has two or more tenants, else FIFO.

Control interval per allocation policy (:data:`CONTROL_INTERVAL_S`, overridden by
``SimOptions.interval_s``): static, HPA, predictive and oracle 15 s (HPA's sync period);
KPA 2 s (its tick); Ray Serve 1 s (Ray ticks every 0.1 s over 30-s averages and delays
counted in seconds); an unknown policy 15 s.

Initial replicas with ``SimOptions.warm_start`` (a cluster that has been serving this
load with the preset's own variants): per model, the peak demand of the first
:data:`WARM_WINDOW_S` (300 s) seconds covered on-demand by
:func:`~coscale.policies.allocation.capacity.place_capacity` over the preset's options
(the same capacity model as every allocation policy), READY at time 0; models placed
in scenario order within the pools. Otherwise:

Initial replicas: each pool's ``count`` nodes × replicas per node, READY at time 0,
on-demand, split between the models that can meet their SLO on that node type
(``capacity_rps > 0`` at their typical length, with the variant kept for that node
type) in proportion to the model mix (largest remainder, ties to the lower index); a
pool no model can use starts empty.

Complexity: O(M·V) for M models of V options each, plus O(N) over the N arrivals for
the demand curves of ``static``/``oracle``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from coscale.policies.admission import WeightedFairQueue
from coscale.policies.allocation import ALLOCATION, DemandCurve, capacity_rps, make_allocation
from coscale.policies.allocation.capacity import PoolLedger, place_capacity, rank_model
from coscale.policies.base import AllocationContext, AllocationPolicy, ModelTarget, VariantOption
from coscale.policies.presets import (
    ADMISSION,
    BATCHING,
    ROUTING,
    VARIANT,
    PolicyBundle,
    make_admission,
    make_batching,
    make_routing,
    make_variant,
    resolve_preset,
)
from coscale.policies.variant import latency_map
from coscale.sim.cluster import Arrivals, ClosedLoop, ModelSetup
from coscale.sim.profiles import batch_limit, truncate_table
from coscale.types import ReplicaTarget

if TYPE_CHECKING:  # run imports this module; this one needs Prepared for typing only
    from coscale.sim.run import Prepared, SimOptions

__all__ = [
    "CONTROL_INTERVAL_S",
    "WARM_WINDOW_S",
    "PolicySet",
    "build_policies",
    "demand_curves",
    "interval_for",
    "largest_remainder",
]

#: Seconds of demand a warm start is sized for (longer than any start-up plus interval).
WARM_WINDOW_S = 300.0

#: Control interval (s) of each allocation policy unless SimOptions.interval_s is set.
CONTROL_INTERVAL_S: Mapping[str, float] = {
    "static": 15.0,
    "hpa": 15.0,
    "kpa": 2.0,
    "rayserve": 1.0,
    "predictive": 15.0,
    "oracle": 15.0,
}


@dataclass(frozen=True, eq=False)
class PolicySet:
    """One preset's policy objects for a prepared scenario (what both executors run)."""

    bundle: PolicyBundle
    interval_s: float
    setups: tuple[ModelSetup, ...]
    context: AllocationContext
    allocation: AllocationPolicy[Any]
    initial: tuple[ReplicaTarget, ...]


def build_policies(prepared: Prepared, preset: str) -> PolicySet:
    """The preset's policies for ``prepared`` (module docstring, "Policies of a preset")."""
    scenario = prepared.scenario
    bundle = _bundle(prepared, preset)
    interval = interval_for(bundle.allocation, prepared.sim)
    fair = _fair_queue(prepared)
    setups: list[ModelSetup] = []
    targets: list[ModelTarget] = []
    for k, m in enumerate(scenario.models):
        slo = m.slo_ms / 1000.0
        extra: dict[str, Any] = {"latencies": latency_map(prepared.options[k])}
        routing = make_routing(
            bundle.routing, **_inject(ROUTING[bundle.routing], bundle.routing_params, extra)
        )
        batching = make_batching(
            bundle.batching, **_inject(BATCHING[bundle.batching], bundle.batching_params, extra)
        )
        admission = make_admission(
            bundle.admission, **_inject(ADMISSION[bundle.admission], bundle.admission_params, extra)
        )
        limit = batch_limit(batching, m.max_batch)
        scoring = {"seq_len": prepared.typical_seq[k], "max_batch": limit}
        variant_policy = make_variant(
            bundle.variant, **_inject(VARIANT[bundle.variant], bundle.variant_params, scoring)
        )
        choice = variant_policy.choose(slo, m.accuracy_floor, prepared.options[k])
        opts = tuple(s.option for s in choice.by_node().values())
        capped = tuple(
            dataclasses.replace(o, latency=truncate_table(o.latency, limit)) for o in opts
        )
        targets.append(ModelTarget(m.name, slo, capped))
        setups.append(
            ModelSetup(
                name=m.name,
                slo_s=slo,
                options=opts,
                routing=routing,
                batching=batching,
                admission=admission,
                accuracy_floor=m.accuracy_floor,
                max_batch=m.max_batch,
                batch_limit=limit,
                typical_seq_len=prepared.typical_seq[k],
                fair_queue=fair,
            )
        )
    context = AllocationContext(
        models=tuple(targets),
        pools=prepared.pools,
        spot_share=scenario.cluster.spot_share,
        interval_s=interval,
    )
    allocation = make_allocation(
        bundle.allocation, context, **_allocation_params(prepared, bundle, interval)
    )
    return PolicySet(
        bundle=bundle,
        interval_s=interval,
        setups=tuple(setups),
        context=context,
        allocation=allocation,
        initial=_warm(prepared, targets)
        if prepared.sim.warm_start
        else _initial(prepared, targets),
    )


def _allocation_params(prepared: Prepared, bundle: PolicyBundle, interval: float) -> dict[str, Any]:
    """The allocation policy's parameters: the bundle's, plus ``seq_len``, ``period_s``
    and ``demand`` where the policy takes them and they are not set (module docstring)."""
    params = dict(bundle.allocation_params)
    factory = ALLOCATION.get(bundle.allocation)
    typical = max(prepared.typical_seq) if prepared.typical_seq else 0
    if factory is not None and _accepts(factory, "seq_len") and "seq_len" not in params:
        params["seq_len"] = typical
    period = prepared.period_s
    if period and factory is not None and _accepts(factory, "period_s"):
        params.setdefault("period_s", period)
    if bundle.allocation == "static" and "replicas" not in params and "demand" not in params:
        params["demand"] = demand_curves(prepared, interval)
    if bundle.allocation == "oracle" and "demand" not in params:
        params["demand"] = demand_curves(prepared, prepared.sim.oracle_bin_s)
    return params


def interval_for(allocation: str, sim: SimOptions) -> float:
    """The control interval of an allocation policy (SimOptions overrides the default)."""
    if sim.interval_s is not None:
        return sim.interval_s
    return CONTROL_INTERVAL_S.get(allocation, 15.0)


def demand_curves(prepared: Prepared, bin_s: float) -> dict[str, DemandCurve]:
    """Each model's arrival rate (requests/s) in ``bin_s`` bins over the workload; a
    closed loop's is one bin of its nominal rate × the model's share; a fluid load's are
    its rates averaged over bins of ``bin_s`` rounded to whole steps."""
    arrivals = prepared.arrivals
    names = [m.name for m in prepared.scenario.models]
    if prepared.fluid is not None:
        binned = prepared.fluid.binned(bin_s)
        step = prepared.fluid.step_s
        width = max(1, round(bin_s / step)) * step
        return {
            n: DemandCurve(tuple(r.tolist()), width) for n, r in zip(names, binned, strict=True)
        }
    if isinstance(arrivals, ClosedLoop):
        return {
            n: DemandCurve((arrivals.rate_rps * s,), arrivals.duration_s)
            for n, s in zip(names, prepared.shares, strict=True)
        }
    bins = max(1, math.ceil(arrivals.duration_s / bin_s))
    idx = np.minimum((arrivals.times // bin_s).astype(np.int64), bins - 1)
    out: dict[str, DemandCurve] = {}
    for k, n in enumerate(names):
        counts = np.bincount(idx[arrivals.models == k], minlength=bins)
        out[n] = DemandCurve(tuple((counts / bin_s).tolist()), bin_s)
    return out


def largest_remainder(quotas: Sequence[float], total: int) -> list[int]:
    """Integers summing to ``total`` (when ``total >= sum of floors``): each quota's
    floor, plus one for the ``total - Σ floor`` largest fractional parts (ties to the
    lower index). O(n log n)."""
    floors = [math.floor(q) for q in quotas]
    left = total - sum(floors)
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - floors[i]), i))
    for i in order[: max(0, left)]:
        floors[i] += 1
    return floors


def _accepts(factory: Callable[..., Any], name: str) -> bool:
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def _inject(
    factory: Callable[..., Any], params: Mapping[str, Any], extra: Mapping[str, Any]
) -> dict[str, Any]:
    """``params`` plus each ``extra`` value the factory takes and ``params`` lacks."""
    out = dict(params)
    for name, value in extra.items():
        if name not in out and _accepts(factory, name):
            out[name] = value
    return out


def _bundle(prepared: Prepared, preset: str) -> PolicyBundle:
    spec = prepared.scenario.policies
    if preset != spec.preset:
        return resolve_preset(preset)
    overrides: dict[str, Any] = {}
    for kind in ("allocation", "routing", "batching", "variant", "admission"):
        ref = getattr(spec, kind)
        if ref is not None:
            overrides[kind] = ref.name
            overrides[f"{kind}_params"] = dict(ref.params)
    return resolve_preset(preset, overrides)


def _fair_queue(prepared: Prepared) -> WeightedFairQueue | None:
    arrivals = prepared.arrivals
    names = arrivals.tenant_names if isinstance(arrivals, Arrivals) else (arrivals.tenant,)
    if len(names) < 2:
        return None
    weights = {t.name: t.weight for t in prepared.scenario.tenants}
    return WeightedFairQueue(weights=weights)


def _warm(prepared: Prepared, targets: Sequence[ModelTarget]) -> tuple[ReplicaTarget, ...]:
    """Warm-start replicas (module docstring, "Initial replicas with warm_start")."""
    curves = demand_curves(prepared, 1.0)
    types = frozenset(p.node.name for p in prepared.pools)
    ledger = PoolLedger.template(prepared.pools, 0.0)
    out: list[ReplicaTarget] = []
    for k, target in enumerate(targets):
        options = rank_model(target, types, allow_spot=False, seq_len=prepared.typical_seq[k])
        need = curves[target.model].peak(0.0, WARM_WINDOW_S)
        out.extend(place_capacity(options, need, ledger, 0.0).targets)
    return tuple(out)


def _initial(prepared: Prepared, targets: Sequence[ModelTarget]) -> tuple[ReplicaTarget, ...]:
    """Replicas READY at time 0: each pool's ``count`` nodes × replicas per node, split
    between the models that can serve on that node type (an option with capacity > 0 at
    their SLO) in proportion to their shares (largest remainder); none where no model can."""
    out: list[ReplicaTarget] = []
    usable: list[dict[str, VariantOption]] = []
    for k, target in enumerate(targets):
        seq = prepared.typical_seq[k]
        usable.append(
            {
                o.node.name: o
                for o in target.options
                if capacity_rps(o, target.slo_s, seq_len=seq) > 0
            }
        )
    for pool in prepared.scenario.cluster.nodes:
        node = prepared.catalog.get(pool.type)
        replicas = pool.count * node.replicas_per_node
        able = [k for k in range(len(targets)) if node.name in usable[k]]
        total = sum(prepared.shares[k] for k in able)
        if not able or replicas == 0 or total <= 0:
            continue
        split = largest_remainder([replicas * prepared.shares[k] / total for k in able], replicas)
        for k, n in zip(able, split, strict=True):
            if n > 0:
                option = usable[k][node.name]
                out.append(ReplicaTarget(targets[k].model, option.variant, node.name, n, False))
    return tuple(out)
