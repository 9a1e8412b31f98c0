"""From a scenario to cluster simulations: workload, serving options, policies, runs.

:func:`prepare` does once what every preset of a comparison shares — the workload (one
seeded draw), the models' serving options from their measured profiles, the pools — and
:func:`run_preset` builds one preset's policy objects and runs a
:class:`~coscale.sim.cluster.ClusterSimulator`. :func:`simulate` runs a list of presets on
the same prepared workload and seed, and adds ``cost_vs_oracle`` to every summary when
``oracle`` is among them.

Workload
--------
* **Trace** (``workload.trace`` or ``SimOptions.trace``): :func:`~coscale.sim.traces.load_trace`
  over ``[start_s, start_s + duration_s)`` trace seconds, then sped up by ``time_scale``.
  ServeGen rate tables are drawn at ``SimOptions.rate_scale`` × their published rates
  (request-level traces cannot be thinned: use ``time_scale``).
* **Generator**: ``poisson``, ``mmpp``, ``diurnal`` (λ(t) = rate·(1 + A sin(2πt/P))) from
  :mod:`~coscale.sim.workloads`, or ``closed-loop`` (:class:`~coscale.sim.cluster.ClosedLoop`);
  generated requests have ``seq_len`` 0.
* ``SimOptions.duration_s`` keeps the first seconds only. More than
  :data:`MAX_REQUESTS` arrivals (estimated before drawing) is an error that says how to
  scale the run down.
* Each request's model is drawn from ``workload.model_mix`` (normalised; default equal
  shares) with the scenario's seed; its ``seq_len`` is clamped to the longest profiled
  length of the model (the model truncates longer inputs).
* Tenants are the workload's (ServeGen clients, else one); with several, each model's
  queue is weighted fair between them, with the scenario's tenant weights (default 1).
  Tenants' rate limits and quotas are enforced by the server's front door and are not
  simulated.

Fluid mode (``SimOptions.fluid``)
---------------------------------
For loads too heavy to simulate request by request, :func:`run_preset` runs the
:class:`~coscale.sim.fluid.FluidSimulator` (rate-level; its docstring states the
approximations) on a :class:`~coscale.sim.fluid.FluidLoad` of ``fluid_step_s`` steps:
a ServeGen table's rates (× ``time_scale`` × ``rate_scale``, split by the model mix;
no request is drawn, so there is no request budget), or any other workload's arrivals
binned per step, each standing for ``rate_scale`` requests (a load multiplier: in fluid
mode ``rate_scale`` applies to every workload). The oracle's and static policy's demand
curves are the fluid load's rates. Closed loops have no fluid form.

Policies of a preset
--------------------
:func:`run_preset` builds them with :func:`coscale.sim.build.build_policies` — the one
function the live runtime (:mod:`coscale.runtime.system`) calls too — and that module's
docstring states how: the bundle, per-model routing/batching/admission/variant choice, the
allocation context and parameters (``seq_len``, ``period_s``, ``demand``), the control
interval per allocation policy (:data:`CONTROL_INTERVAL_S`) and the initial replicas.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from coscale.catalog import Catalog, load_catalog
from coscale.config import (
    GeneratorSpec,
    NodePool,
    Scenario,
    resolve_trace_format,
    resolve_trace_path,
)
from coscale.errors import CoscaleError, InvalidInputError
from coscale.policies.base import Pool, VariantOption
from coscale.policies.presets import PRESETS
from coscale.sim.build import (
    CONTROL_INTERVAL_S,
    PolicySet,
    build_policies,
    demand_curves,
    interval_for,
    largest_remainder,
)
from coscale.sim.cluster import (
    TIMEOUT_FACTOR,
    Arrivals,
    ClosedLoop,
    ClusterSimulator,
    SimResult,
)
from coscale.sim.faults import FaultModel
from coscale.sim.fluid import FluidLoad, FluidSimulator
from coscale.sim.profiles import (
    MeasuredVariant,
    backend_overhead_s,
    clamp_seq_len,
    find_profile,
    max_seq_len,
    options_for,
    options_from_measured,
    typical_seq_len,
)
from coscale.sim.traces import TraceError, detect_format, load_trace, read_servegen
from coscale.sim.workloads import Workload, diurnal, mmpp, poisson

__all__ = [
    "CONTROL_INTERVAL_S",
    "MAX_REQUESTS",
    "PolicySet",
    "Prepared",
    "SimOptions",
    "build_policies",
    "demand_curves",
    "interval_for",
    "prepare",
    "run_preset",
    "simulate",
    "summaries_json",
    "with_oracle_ratio",
    "write_records",
]

F64 = npt.NDArray[np.float64]

#: A day in trace seconds: real traces repeat daily (the predictive policy's season).
DAY_S = 86_400.0
#: Most arrivals one run may hold (about 100 bytes each in memory).
MAX_REQUESTS = 20_000_000


@dataclass(frozen=True)
class SimOptions:
    """Run options that are not part of the scenario (CLI flags).

    ``trace``: replace the scenario's workload by this trace file (format detected).
    ``nodes``: scale every pool so the cluster starts with this many nodes (``count``
    and ``max_count`` scaled by the same factor). ``duration_s``: keep only the first
    seconds of the workload. ``rate_scale``: ServeGen rate multiplier. ``interval_s``:
    control interval for every policy (default :data:`CONTROL_INTERVAL_S`).
    ``fault_scale``: multiplies the catalog's preemption and failure rates.
    ``profiles``: model name (or source) → profile file. ``seed``: default the scenario's.
    ``fluid``: simulate at rate level (module docstring, "Fluid mode") on steps of
    ``fluid_step_s`` seconds. ``warm_start``: the run starts with the replicas the first
    minutes' demand needs instead of the pools' ``count`` nodes (see
    :mod:`coscale.sim.build`, "Initial replicas"). ``timeout_factor``: a request still
    queued this many × its model's SLO after its arrival times out, as live (default
    :data:`~coscale.sim.cluster.TIMEOUT_FACTOR`, 10; ``None``: it waits until served).
    """

    trace: Path | None = None
    nodes: int | None = None
    duration_s: float | None = None
    rate_scale: float = 1.0
    interval_s: float | None = None
    sample_interval_s: float = 15.0
    fault_scale: float = 1.0
    max_retries: int = 3
    drain_limit_s: float = 600.0
    oracle_bin_s: float = 1.0
    profiles: Mapping[str, Path] = field(default_factory=dict)
    seed: int | None = None
    fluid: bool = False
    fluid_step_s: float = 1.0
    warm_start: bool = False
    timeout_factor: float | None = TIMEOUT_FACTOR

    def __post_init__(self) -> None:
        checks = [
            (self.nodes is None or self.nodes >= 1, f"--nodes must be >= 1, got {self.nodes}"),
            (
                self.duration_s is None or self.duration_s > 0,
                f"--duration must be > 0 s, got {self.duration_s}",
            ),
            (
                self.rate_scale > 0 and math.isfinite(self.rate_scale),
                f"rate scale must be > 0, got {self.rate_scale}",
            ),
            (
                self.interval_s is None or self.interval_s > 0,
                f"control interval must be > 0 s, got {self.interval_s}",
            ),
            (self.oracle_bin_s > 0, f"oracle bin must be > 0 s, got {self.oracle_bin_s}"),
            (self.sample_interval_s > 0, "sample interval must be > 0 s"),
            (self.fluid_step_s > 0, f"fluid step must be > 0 s, got {self.fluid_step_s}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidInputError(message + ".", fix="pass a positive number.")


# --------------------------------------------------------------------------- preparing


@dataclass(frozen=True, eq=False)
class Prepared:
    """Everything the presets of one comparison share."""

    scenario: Scenario
    catalog: Catalog
    options: tuple[tuple[VariantOption, ...], ...]
    arrivals: Arrivals | ClosedLoop
    typical_seq: tuple[int, ...]
    shares: tuple[float, ...]
    pools: tuple[Pool, ...]
    seed: int
    sim: SimOptions
    workload_name: str
    period_s: float | None = None
    fluid: FluidLoad | None = None


def prepare(
    scenario: Scenario,
    options: SimOptions | None = None,
    *,
    measured: Mapping[str, Sequence[MeasuredVariant]] | None = None,
    catalog: Catalog | None = None,
) -> Prepared:
    """Load the workload and the models' options once (module docstring).

    ``measured``: model name → its measured variants; models not in it are looked up
    with :func:`~coscale.sim.profiles.find_profile`.
    """
    sim = options or SimOptions()
    catalog = catalog or load_catalog()
    scenario = _scaled(scenario, sim.nodes)
    seed = scenario.seed if sim.seed is None else sim.seed
    rng = np.random.default_rng([seed, 1])
    pools = tuple(
        Pool(catalog.get(p.type), p.limit * catalog.get(p.type).replicas_per_node)
        for p in scenario.cluster.nodes
    )
    model_options: list[tuple[VariantOption, ...]] = []
    overhead = backend_overhead_s(scenario.cluster.backend)  # cluster.backend's batch cost
    for m in scenario.models:
        rows = (measured or {}).get(m.name)
        nodes = scenario.cluster.nodes
        if rows is None:
            profile = find_profile(m, given=sim.profiles)
            model_options.append(options_for(m, profile, catalog, nodes, overhead_s=overhead))
            continue
        model_options.append(options_from_measured(m, rows, catalog, nodes, overhead_s=overhead))
    shares = _shares(scenario)
    limits = [max_seq_len(o) for o in model_options]
    fluid = _fluid_servegen(scenario, sim, shares) if sim.fluid else None
    arrivals: Arrivals | ClosedLoop
    load: FluidLoad | None
    if fluid is not None:
        load, name, period = fluid
        arrivals, typical = _no_arrivals(load.duration_s), tuple(0 for _ in limits)
    else:
        source, name, period = _workload(scenario, sim, rng, shares)
        if isinstance(source, Workload):
            arrivals, typical = _assign(source, rng, shares, limits)
        else:
            arrivals, typical = source, tuple(0 for _ in limits)
        load = _fluid_from(arrivals, len(limits), sim) if sim.fluid else None
    return Prepared(
        scenario=scenario,
        catalog=catalog,
        options=tuple(model_options),
        arrivals=arrivals,
        typical_seq=typical,
        shares=shares,
        pools=pools,
        seed=seed,
        sim=sim,
        workload_name=name + (" (fluid)" if load is not None else ""),
        period_s=period,
        fluid=load,
    )


def _no_arrivals(duration_s: float) -> Arrivals:
    i32 = np.zeros(0, dtype=np.int32)
    return Arrivals(np.zeros(0), i32, i32, i32, ("default",), duration_s)


def _fluid_servegen(
    scenario: Scenario, sim: SimOptions, shares: Sequence[float]
) -> tuple[FluidLoad, str, float | None] | None:
    """The scenario's ServeGen trace as a fluid load (None for any other workload)."""
    t = scenario.workload.trace
    if sim.trace is not None or t is None:
        return None
    try:
        fmt = resolve_trace_format(t)
    except ValueError:
        return None
    if fmt != "servegen":
        return None
    table = read_servegen(resolve_trace_path(t))
    lo = t.start_s
    hi = math.inf if t.duration_s is None else t.start_s + t.duration_s
    if sim.duration_s is not None:
        hi = min(hi, t.start_s + sim.duration_s * t.time_scale)
    keep = (table.starts + table.window_s > lo) & (table.starts < hi)
    if not np.any(keep):
        raise TraceError(
            f"no ServeGen window in [{lo}, {hi}) trace seconds", fix="check start_s/duration"
        )
    load = FluidLoad.from_rates(
        table.starts[keep],
        table.window_s,
        table.rate.sum(axis=0)[keep],
        shares,
        time_scale=t.time_scale,
        scale=sim.rate_scale,
        step_s=sim.fluid_step_s,
    )
    name = f"trace {t.path} x{t.time_scale:g} at {sim.rate_scale:g}x its rates"
    return load, name, DAY_S / t.time_scale


def _fluid_from(arrivals: Arrivals | ClosedLoop, n_models: int, sim: SimOptions) -> FluidLoad:
    if isinstance(arrivals, ClosedLoop):
        raise InvalidInputError(
            "a closed loop has no fluid form (its rate depends on its latency).",
            fix="use an open-loop workload (a trace or a generator) with --fluid.",
        )
    return FluidLoad.from_times(
        arrivals.times,
        arrivals.models,
        n_models,
        arrivals.duration_s,
        step_s=sim.fluid_step_s,
        scale=sim.rate_scale,
    )


def _scaled(scenario: Scenario, nodes: int | None) -> Scenario:
    """The scenario with its pools scaled to start with ``nodes`` nodes (None: as is)."""
    if nodes is None:
        return scenario
    pools = scenario.cluster.nodes
    base = [p.count for p in pools]
    if sum(base) == 0:
        base = [p.limit for p in pools]
    factor = nodes / sum(base)
    counts = largest_remainder([b * factor for b in base], nodes)
    scaled = [
        NodePool(
            type=p.type,
            count=c if sum(q.count for q in pools) else 0,
            max_count=max(c, round(p.limit * factor)),
        )
        for p, c in zip(pools, counts, strict=True)
    ]
    cluster = scenario.cluster.model_copy(update={"nodes": scaled})
    return scenario.model_copy(update={"cluster": cluster})


def _shares(scenario: Scenario) -> tuple[float, ...]:
    mix = scenario.workload.model_mix
    names = [m.name for m in scenario.models]
    raw = [1.0 for _ in names] if mix is None else [float(mix.get(n, 0.0)) for n in names]
    total = sum(raw)
    return tuple(w / total for w in raw)


def _workload(
    scenario: Scenario, sim: SimOptions, rng: np.random.Generator, shares: Sequence[float]
) -> tuple[Workload | ClosedLoop, str, float | None]:
    """The workload, its name, and its natural period in simulated seconds (a trace's day
    sped up by its time scale; a diurnal generator's period; None otherwise)."""
    spec = scenario.workload
    if sim.fluid:  # rate_scale multiplies the fluid load instead (module docstring)
        sim = dataclasses.replace(sim, rate_scale=1.0, fluid=False)
    if sim.trace is not None:
        path = Path(sim.trace)
        workload = _trace(path, detect_format(path), 0.0, None, 1.0, sim, rng)
        return workload, f"trace {path}", DAY_S
    if spec.trace is not None:
        t = spec.trace
        try:
            fmt = resolve_trace_format(t)
        except ValueError as exc:
            raise TraceError(
                str(exc), fix="set the trace's format: azure, servegen or mooncake"
            ) from None
        workload = _trace(
            resolve_trace_path(t), fmt, t.start_s, t.duration_s, t.time_scale, sim, rng
        )
        return workload, f"trace {t.path} x{t.time_scale:g}", DAY_S / t.time_scale
    assert spec.generator is not None
    if sim.rate_scale != 1.0:
        raise InvalidInputError(
            "--rate-scale thins ServeGen traces; this scenario's workload is a generator.",
            fix="change the generator's rate_rps instead.",
        )
    gen = spec.generator.with_defaults()
    period = gen.period_s if gen.kind == "diurnal" else None
    return _generate(gen, sim, rng, shares), f"{gen.kind} {gen.rate_rps:g} rps", period


def _trace(
    path: Path,
    fmt: str,
    start_s: float,
    duration_s: float | None,
    time_scale: float,
    sim: SimOptions,
    rng: np.random.Generator,
) -> Workload:
    window = duration_s
    if sim.duration_s is not None:
        wanted = sim.duration_s * time_scale
        window = wanted if window is None else min(window, wanted)
    rate_scale = sim.rate_scale
    if fmt == "servegen":
        _check_servegen_size(path, start_s, window, rate_scale)
    elif rate_scale != 1.0:
        raise InvalidInputError(
            f"--rate-scale thins ServeGen rate tables only; {path} is a {fmt} request trace.",
            fix="use the trace's time_scale to change a request trace's rate.",
        )
    workload = load_trace(
        path, fmt, rng=rng, start_s=start_s, duration_s=window, rate_scale=rate_scale
    )
    if len(workload) > MAX_REQUESTS:
        raise _too_many(len(workload))
    return workload.scale_time(time_scale) if time_scale != 1.0 else workload


def _check_servegen_size(
    path: Path, start_s: float, window: float | None, rate_scale: float
) -> None:
    table = read_servegen(path)
    lo = np.maximum(table.starts, start_s)
    end = float(table.starts[-1]) + table.window_s
    hi = np.minimum(table.starts + table.window_s, end if window is None else start_s + window)
    expected = float((table.rate.sum(axis=0) * np.maximum(hi - lo, 0.0)).sum()) * rate_scale
    if expected > MAX_REQUESTS:
        raise _too_many(int(expected))


def _too_many(n: int) -> CoscaleError:
    return CoscaleError(
        f"the workload holds about {n:,} requests, more than one run simulates ({MAX_REQUESTS:,}).",
        fix="Shorten it with --duration, or thin a ServeGen trace with --rate-scale (e.g. 0.01).",
        code="workload_too_large",
    )


def _generate(
    gen: GeneratorSpec, sim: SimOptions, rng: np.random.Generator, shares: Sequence[float]
) -> Workload | ClosedLoop:
    duration = gen.duration_s if sim.duration_s is None else min(gen.duration_s, sim.duration_s)
    if gen.kind == "closed-loop":
        assert gen.concurrency is not None
        return ClosedLoop(gen.concurrency, gen.rate_rps, duration, tuple(shares))
    if gen.rate_rps * duration > MAX_REQUESTS:
        raise _too_many(int(gen.rate_rps * duration))
    if gen.kind == "poisson":
        return poisson(gen.rate_rps, duration, rng)
    if gen.kind == "mmpp":
        assert gen.burst_rate_rps and gen.mean_calm_s and gen.mean_burst_s
        return mmpp(
            gen.rate_rps, gen.burst_rate_rps, gen.mean_calm_s, gen.mean_burst_s, duration, rng
        )
    assert gen.period_s is not None and gen.amplitude is not None
    # λ(t) = mean (1 − A cos(2π(t + P/4)/P)) = mean (1 + A sin(2πt/P)), the schema's form
    return diurnal(
        gen.rate_rps, gen.amplitude, gen.period_s, duration, rng, phase_s=gen.period_s / 4
    )


def _assign(
    workload: Workload, rng: np.random.Generator, shares: Sequence[float], limits: Sequence[int]
) -> tuple[Arrivals, tuple[int, ...]]:
    n = len(workload)
    if len(shares) == 1:
        models = np.zeros(n, dtype=np.int32)
    else:
        models = rng.choice(len(shares), size=n, p=np.asarray(shares)).astype(np.int32)
    seq = np.asarray(workload.seq_lens, dtype=np.int32).copy()
    typical: list[int] = []
    for k, limit in enumerate(limits):
        rows = models == k
        seq[rows] = clamp_seq_len(seq[rows], limit)
        typical.append(typical_seq_len(seq[rows]) if limit > 0 else 0)
    arrivals = Arrivals(
        times=workload.times,
        models=models,
        seq_lens=seq,
        tenants=workload.tenants,
        tenant_names=workload.tenant_names,
        duration_s=workload.duration_s,
    )
    return arrivals, tuple(typical)


# --------------------------------------------------------------------------- one preset


def run_preset(
    prepared: Prepared,
    preset: str,
    progress: Callable[[float, float], None] | None = None,
    *,
    audit: bool = False,
) -> SimResult:
    """Build the preset's policies (:func:`~coscale.sim.build.build_policies`, the same
    the live runtime runs) and simulate them on the prepared workload (``audit``: see
    :class:`~coscale.sim.cluster.ClusterSimulator`)."""
    scenario, sim = prepared.scenario, prepared.sim
    policies = build_policies(prepared, preset)
    interval = policies.interval_s
    if prepared.fluid is not None:
        fluid = FluidSimulator(
            policies.setups,
            policies.allocation,
            prepared.pools,
            prepared.fluid,
            interval_s=interval,
            rng=np.random.default_rng([prepared.seed, 2]),
            initial=policies.initial,
            faults=FaultModel(sim.fault_scale),
            drain_limit_s=sim.drain_limit_s,
            sample_interval_s=sim.sample_interval_s,
            timeout_factor=sim.timeout_factor,
            preset=preset,
            scenario=scenario.name,
        )
        return _with_info(prepared, policies, fluid.run(progress), 0)
    simulator = ClusterSimulator(
        policies.setups,
        policies.allocation,
        prepared.pools,
        prepared.arrivals,
        interval_s=interval,
        rng=np.random.default_rng([prepared.seed, 2]),
        initial=policies.initial,
        faults=FaultModel(sim.fault_scale),
        max_retries=sim.max_retries,
        drain_limit_s=sim.drain_limit_s,
        sample_interval_s=sim.sample_interval_s,
        timeout_factor=sim.timeout_factor,
        preset=preset,
        scenario=scenario.name,
        audit=audit,
    )
    result = simulator.run(progress)
    return _with_info(prepared, policies, result, simulator.audited)


def _with_info(
    prepared: Prepared, policies: PolicySet, result: SimResult, audited: int
) -> SimResult:
    scenario, sim = prepared.scenario, prepared.sim
    bundle, interval = policies.bundle, policies.interval_s
    info: dict[str, Any] = {
        "seed": prepared.seed,
        "workload": prepared.workload_name,
        "control_interval_s": interval,
        "policies": {
            "allocation": bundle.allocation,
            "routing": bundle.routing,
            "batching": bundle.batching,
            "variant": bundle.variant,
            "admission": bundle.admission,
        },
        "nodes_initial": sum(p.count for p in scenario.cluster.nodes),
        "nodes_max": sum(p.limit for p in scenario.cluster.nodes),
        "fault_scale": sim.fault_scale,
        "audited_decisions": audited,
    }
    summary = dataclasses.replace(result.summary, extra={**result.summary.extra, **info})
    return dataclasses.replace(result, summary=summary)


# --------------------------------------------------------------------------- many presets


def simulate(
    prepared: Prepared,
    presets: Sequence[str],
    progress: Callable[[str, float, float], None] | None = None,
) -> list[SimResult]:
    """Run each preset on the same workload and seed; add cost ratios to the oracle."""
    unknown = [p for p in presets if p not in PRESETS]
    if unknown or not presets:
        valid = ", ".join(PRESETS)
        raise CoscaleError(
            f"unknown preset(s) {unknown}." if unknown else "no preset to simulate.",
            fix=f"Use one or more of: {valid}.",
            code="unknown_policy",
        )
    results = []
    for preset in presets:
        callback = None if progress is None else partial(progress, preset)
        results.append(run_preset(prepared, preset, callback))
    return with_oracle_ratio(results)


def with_oracle_ratio(results: Sequence[SimResult]) -> list[SimResult]:
    """Each summary's ``cost_vs_oracle`` = its cost / the oracle run's (if one is there)."""
    oracle = next((r for r in results if r.summary.preset == "oracle"), None)
    if oracle is None or oracle.summary.cost_usd <= 0:
        return list(results)
    base = oracle.summary.cost_usd
    out = []
    for r in results:
        extra = {**r.summary.extra, "cost_vs_oracle": r.summary.cost_usd / base}
        out.append(dataclasses.replace(r, summary=dataclasses.replace(r.summary, extra=extra)))
    return out


def summaries_json(results: Sequence[SimResult]) -> dict[str, Any]:
    """``{"runs": [summary, …]}`` (each summary names its preset)."""
    return {"runs": [r.summary.to_dict() for r in results]}


def write_records(results: Sequence[SimResult], path: str | Path) -> Path:
    """Every run's per-request log as one Parquet file (a ``preset`` column tells runs apart).

    Needs ``pyarrow`` (``pip install pyarrow``); without it → CoscaleError.
    """
    from coscale.telemetry.records import write_parquet

    tables = []
    for r in results:
        columns: dict[str, Any] = {"preset": [r.summary.preset] * len(r.requests)}
        columns.update(r.requests.columns())
        tables.append(columns)
    return write_parquet(tables, path)
