"""The bench's simulated parts: the cluster, its scalability, and the live runs replayed.

All three run :class:`~coscale.sim.cluster.ClusterSimulator` on policies built by
:func:`coscale.sim.build.build_policies` — the function the live server calls too.

Cluster (:func:`run_cluster`)
-----------------------------
The pools of :data:`~coscale.bench.settings.CLUSTER_POOLS` (1,000 nodes at the start,
1,710 at most, up to half the replicas on spot), MiniLM (SLO 200 ms) and the digits CNN
(SLO 50 ms) in shares ``sim_minilm_share`` / the rest, the first ``sim_days`` days of the
ServeGen language 14-day rate table compressed ``sim_time_scale``× and thinned to
``sim_rate_scale``, faults at the catalog's rates × ``sim_time_scale`` (module docstring
of :mod:`coscale.bench.settings`).
Every preset runs on the same prepared workload and seed; ``cost_vs_oracle`` = cost /
the oracle's cost. The time series (replicas, replicas by variant, cost rate) are kept
per preset, thinned to at most :data:`MAX_SERIES_POINTS` rows.

Scalability (:func:`run_scal_sim`)
----------------------------------
For each N in ``scal_tasks_sim``: the same cluster (its 1,000 starting nodes warm),
``scal_preset``, a closed loop of N clients (:class:`~coscale.sim.cluster.ClosedLoop`,
each sends its next request when the previous is answered; total rate capped at
:data:`CLOSED_LOOP_CAP_RPS`, far above what N clients reach) for ``scal_sim_s``
simulated seconds, no faults (the load, not the faults, is under test). Throughput =
completed / makespan.

Fidelity (:func:`replay_live`)
------------------------------
Each live run again in the simulator: a one-pool scenario of this machine's node type
with the live replica budget (``count = max_count = replicas``), the same model, SLO and
accuracy floor, the same trace segment and speed-up, the same preset, seed and profile
file; the worker kill is replayed as a failure of the first initial replica at the same
second (:class:`ScheduledKill`), and no other fault. The live figures are the client's
(p50, p99 over answered requests; throughput = answered / makespan).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from coscale.bench.settings import CLUSTER_POOLS, BenchSettings
from coscale.config import Scenario, scenario_from_dict

__all__ = [
    "CLOSED_LOOP_CAP_RPS",
    "ScheduledKill",
    "cluster_scenario",
    "replay_live",
    "run_cluster",
    "run_scal_sim",
    "thin_series",
]

#: Seconds in a day of the trace.
DAY_S = 86_400.0
#: Most rows kept of a time series in the results.
MAX_SERIES_POINTS = 400
#: Total rate cap of the simulated closed loops (requests/s): never reached.
CLOSED_LOOP_CAP_RPS = 1e7

Progress = Callable[[float, float], None]


def _models(settings: BenchSettings) -> list[dict[str, Any]]:
    return [
        {"name": "minilm", "source": "minilm", "slo_ms": 200, "accuracy_floor": 0.99},
        {"name": "digits", "source": "digits-cnn", "slo_ms": 50, "accuracy_floor": 0.95},
    ]


def cluster_scenario(settings: BenchSettings, workload: Mapping[str, Any]) -> Scenario:
    """The 1,000-node heterogeneous cluster serving MiniLM and the digits CNN."""
    share = settings.sim_minilm_share
    data = {
        "name": "bench-cluster",
        "seed": settings.seed,
        "models": _models(settings),
        "cluster": {
            "nodes": [{"type": t, "count": c, "max_count": m} for t, c, m in CLUSTER_POOLS],
            "spot_share": 0.5,
        },
        "policies": {"preset": "optimized-b"},
        "workload": {**workload, "model_mix": {"minilm": share, "digits": 1.0 - share}},
    }
    return scenario_from_dict(data, source="<bench cluster>")


def thin_series(series: Any, keep: int = MAX_SERIES_POINTS) -> dict[str, Any]:
    """A :class:`~coscale.telemetry.timeseries.TimeSeries` as ``{"time_s", "replicas",
    "cost_usd_per_hour", "variants": {variant: replicas}}``, every k-th row so at most
    ``keep`` remain. Replicas by variant sum the ``replicas:VARIANT@NODE`` columns."""
    data = series.to_dict()
    n = len(data["time_s"])
    step = max(1, -(-n // keep))
    idx = list(range(0, n, step))

    def pick(name: str) -> list[float]:
        col = data.get(name, [0.0] * n)
        return [float(col[i]) for i in idx]

    variants: dict[str, list[float]] = {}
    for name in data:
        if name.startswith("replicas:"):
            variant = name.split(":", 1)[1].split("@", 1)[0]
            col = pick(name)
            old = variants.get(variant)
            variants[variant] = (
                col if old is None else [a + b for a, b in zip(old, col, strict=True)]
            )
    return {
        "time_s": pick("time_s"),
        "replicas": pick("replicas"),
        "cost_usd_per_hour": pick("cost_usd_per_hour"),
        "variants": variants,
    }


def _sim_row(summary: Any) -> dict[str, Any]:
    s, x = summary, summary.extra
    return {
        "preset": s.preset,
        "requests": s.requests,
        "cost_usd": s.cost_usd,
        "cost_vs_oracle": x.get("cost_vs_oracle"),
        "slo_attainment": s.slo_attainment,
        "p50_ms": s.latency_ms.p50,
        "p99_ms": s.latency_ms.p99,
        "throughput_rps": s.throughput_rps,
        "reliability": s.reliability,
        "rejected": s.rejected,
        "lost": s.lost,
        "preemptions": int(x.get("preemptions", 0)),
        "failures": int(x.get("failures", 0)),
        "replicas_mean": float(x.get("replicas_mean", 0.0)),
        "replicas_max": int(x.get("replicas_max", 0)),
        "energy_j": s.energy_j,
        "energy_per_request_j": x.get("energy_per_request_j"),
        "wall_s": x.get("wall_s"),
    }


def run_cluster(
    settings: BenchSettings, progress: Callable[[str, float, float], None] | None = None
) -> dict[str, Any]:
    """Every ``sim_presets`` preset on the cluster under the ServeGen curve (module doc)."""
    from coscale.sim.run import SimOptions, prepare, simulate

    workload = {"trace": {"path": "servegen-language", "time_scale": settings.sim_time_scale}}
    scenario = cluster_scenario(settings, workload)
    options = SimOptions(
        rate_scale=settings.sim_rate_scale,
        fault_scale=settings.sim_time_scale,
        duration_s=settings.sim_days * DAY_S / settings.sim_time_scale,
    )
    prepared = prepare(scenario, options)
    results = simulate(prepared, list(settings.sim_presets), progress)
    pools = scenario.cluster.nodes
    return {
        "nodes_initial": sum(p.count for p in pools),
        "nodes_max": sum(p.limit for p in pools),
        "node_types": [p.type for p in pools],
        "workload": f"ServeGen language m-large 14-day curve, the first {settings.sim_days:g} "
        f"day(s) compressed {settings.sim_time_scale:g}x, rates x {settings.sim_rate_scale:g}",
        "days": settings.sim_days,
        "time_scale": settings.sim_time_scale,
        "rate_scale": settings.sim_rate_scale,
        "fault_scale": settings.sim_time_scale,
        "requests": len(prepared.arrivals.times),  # type: ignore[union-attr]
        "simulated_s": float(prepared.arrivals.duration_s),
        "runs": [_sim_row(r.summary) for r in results],
        "series": {r.summary.preset: thin_series(r.series) for r in results},
    }


def run_scal_sim(
    settings: BenchSettings, progress: Callable[[int, float, float], None] | None = None
) -> dict[str, Any]:
    """Closed loops of N clients on the warm cluster, N in ``scal_tasks_sim``."""
    from coscale.sim.run import SimOptions, prepare, run_preset

    points = []
    for n in settings.scal_tasks_sim:
        workload = {
            "generator": {
                "kind": "closed-loop",
                "concurrency": n,
                "rate_rps": CLOSED_LOOP_CAP_RPS,
                "duration_s": settings.scal_sim_s,
            }
        }
        prepared = prepare(cluster_scenario(settings, workload), SimOptions(fault_scale=0.0))
        cb = None if progress is None else (lambda now, total, n=n: progress(n, now, total))
        s = run_preset(prepared, settings.scal_preset, cb).summary
        points.append(
            {
                "tasks": n,
                "throughput_rps": s.throughput_rps,
                "p50_ms": s.latency_ms.p50,
                "p99_ms": s.latency_ms.p99,
                "requests": s.requests,
                "replicas_mean": float(s.extra.get("replicas_mean", 0.0)),
            }
        )
    nodes = sum(c for _, c, _ in CLUSTER_POOLS)
    return {
        "preset": settings.scal_preset,
        "nodes": nodes,
        "points": points,
        "note": f"simulated: {nodes:,} nodes warm at the start, preset {settings.scal_preset}, "
        f"closed loop for {settings.scal_sim_s:g} simulated s per level, MiniLM/digits "
        f"{settings.sim_minilm_share:.0%}/{1 - settings.sim_minilm_share:.0%}; "
        "throughput = answered / makespan.",
    }


# ------------------------------------------------------------------------------ fidelity


class ScheduledKill:
    """A fault model that kills the first replica it is asked about ``at_s`` seconds after
    its start is decided (the initial replicas: at ``at_s`` into the run), no other."""

    def __init__(self, at_s: float | None) -> None:
        self.at_s = at_s
        self.used = at_s is None

    def rates_per_s(self, node: Any, spot: bool) -> tuple[float, float]:
        return 0.0, 0.0

    def draw(self, node: Any, spot: bool, rng: np.random.Generator) -> tuple[float, str] | None:
        from coscale.sim.faults import FAILURE

        if self.used or self.at_s is None:
            return None
        self.used = True
        return self.at_s, FAILURE


def live_twin_scenario(
    settings: BenchSettings, live: Mapping[str, Any], node_type: str
) -> Scenario:
    """The one-pool scenario the live runs served (module docstring, "Fidelity")."""
    seg = live["segment"]
    data = {
        "name": "bench-live",
        "seed": settings.seed,
        "models": [
            {
                "name": live["served_name"],
                "source": settings.model,
                "slo_ms": settings.slo,
                "accuracy_floor": settings.floor,
                "max_batch": settings.max_batch,
            }
        ],
        "cluster": {
            "nodes": [{"type": node_type, "count": live["replicas"], "max_count": live["replicas"]}]
        },
        "policies": {"preset": "optimized-b"},
        "workload": {
            "trace": {
                "path": settings.trace,
                "start_s": seg["start_s"],
                "duration_s": seg["duration_s"],
                "time_scale": live["speedup"],
            }
        },
    }
    return scenario_from_dict(data, source="<bench live twin>")


def _run_twin(prepared: Any, preset: str, kill_at_s: float | None) -> Any:
    """:func:`coscale.sim.run.run_preset` with a :class:`ScheduledKill` fault model."""
    from coscale.sim.build import build_policies
    from coscale.sim.cluster import ClusterSimulator

    policies = build_policies(prepared, preset)
    simulator = ClusterSimulator(
        policies.setups,
        policies.allocation,
        prepared.pools,
        prepared.arrivals,
        interval_s=policies.interval_s,
        rng=np.random.default_rng([prepared.seed, 2]),
        initial=policies.initial,
        faults=ScheduledKill(kill_at_s),  # type: ignore[arg-type]
        max_retries=prepared.sim.max_retries,
        drain_limit_s=prepared.sim.drain_limit_s,
        sample_interval_s=1.0,
        preset=preset,
        scenario=prepared.scenario.name,
    )
    return simulator.run()


def replay_live(
    settings: BenchSettings, live: Mapping[str, Any], profile: Path | None
) -> dict[str, Any]:
    """Each live run replayed in the simulator; pairs of live and simulated figures."""
    from coscale.sim.run import SimOptions, prepare

    node_type = live["node_type"]
    scenario = live_twin_scenario(settings, live, node_type)
    given = {live["served_name"]: profile} if profile is not None else {}
    prepared = prepare(scenario, SimOptions(profiles=given, fault_scale=0.0))
    pairs = []
    for run in live["runs"]:
        killed = run.get("killed")
        result = _run_twin(prepared, run["preset"], killed["at_s"] if killed else None)
        s = result.summary
        pairs.append(
            {
                "preset": run["preset"],
                "live": {
                    "p50_ms": run["p50_ms"],
                    "p99_ms": run["p99_ms"],
                    "throughput_rps": run["throughput_rps"],
                },
                "sim": {
                    "p50_ms": s.latency_ms.p50,
                    "p99_ms": s.latency_ms.p99,
                    "throughput_rps": s.throughput_rps,
                    "requests": s.requests,
                    "slo_attainment": s.slo_attainment,
                    "replicas_mean": float(s.extra.get("replicas_mean", 0.0)),
                },
            }
        )
    return {
        "pairs": pairs,
        "note": f"simulator: {node_type} × {live['replicas']} (the live replica budget), the "
        f"same trace segment, speed-up, preset, seed and profile "
        f"({profile.name if profile else 'this machine'}); the worker kill replayed as a "
        "failure of the first replica at the same second. Live figures are measured at "
        "the client (they include HTTP); errors = |sim − live| / live.",
    }
