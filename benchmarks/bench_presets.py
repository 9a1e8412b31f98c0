"""Benchmark: every policy preset on real traces, on a 1,000-node heterogeneous cluster.

What it runs
------------
The cluster of ``examples/cluster.yaml``: 1,000 nodes at the start (1,710 at most) of ten
types — AWS and GCP CPU types, NVIDIA A10G/L4/A100 and a TPU v5e — with up to half the
replicas on spot; two models, MiniLM (SLO 200 ms) and the digits CNN (SLO 50 ms), 80/20
of the requests; service times from the models' measured profiles (the shipped reference
profiles by default, ``--profile MODEL=PATH`` to replace one). The pools keep their
maxima (1,710 nodes); with ``--cold-start`` the run starts with ``--initial-nodes`` = 20
nodes READY (the file's 1,000 starting nodes would dominate the comparison). Spot
preemptions and node failures are drawn at the catalog's per-hour rates times
``--fault-scale`` (default 10: the catalog's averages are small over a few simulated
hours).

Workloads (both through :func:`coscale.sim.run.prepare`, one draw shared by all presets),
simulated by default as a **fluid** (``--mode fluid``, :mod:`coscale.sim.fluid`: rates, not
requests, so that the load can need tens to hundreds of replicas), every preset starting
warm (the replicas its own variants need for the first five minutes; ``--cold-start``
starts from ``--initial-nodes`` instead), with the shipped reference profiles
(``--local-profiles`` for this machine's):

* ``servegen``: the ServeGen language m-large 14-day rate table (162 clients),
  compressed ``--servegen-time-scale`` = 24× (one day per simulated hour, 14 hours) at
  ``--servegen-rate-scale`` = 5× its published rates (1.18 billion requests, 23,500/s
  on average, up to 70,000/s).
* ``azure-code``: the Azure LLM inference 2023 code trace (8,819 requests in 57 min,
  on/off bursts) binned per second, each request standing for ``--azure-rate-scale`` =
  100 (bursts up to 5,500/s after silences of minutes).

``--mode discrete`` runs request by request as before (defaults: ServeGen at 0.0025× its
rates, 590,000 requests; Azure in real time). ``--check-fluid`` also runs a short ServeGen
workload (``--check-duration`` 7,200 s at ``--check-rate-scale`` 0.01×) both ways, side
by side, to check the fluid against the request-level simulator.

Each preset (baseline, optimized-a, optimized-b, hpa, kpa, rayserve, oracle) runs on the
same workload and seed. Reported per run: cost (and cost / oracle), SLO attainment,
p99 latency, reliability, replicas (time-weighted mean / max), faults, wall time. Then
the goals of the simulator issue are checked and printed:

1. ServeGen: optimized-a and optimized-b cost ≤ 1.15 × the oracle's, with SLO
   attainment ≥ 99.5 %;
2. both traces: optimized-a/b cheaper than hpa, kpa and rayserve, at equal or better
   attainment.

``--scale`` also times the executor at 1,000 and 10,000 nodes (static clusters of
replicas all READY, a Poisson load that keeps them busy) for the three routing families
(index-presented earliest-completion and round robin, full-list power of two): simulated
requests per wall second should not fall with the replica count for the indexed ones.

Usage::

    python benchmarks/bench_presets.py                      # both traces, every preset (fluid)
    python benchmarks/bench_presets.py --jobs 2 --json bench.json --check-fluid
    python benchmarks/bench_presets.py --mode discrete --scale
    python benchmarks/bench_presets.py --traces azure-code --presets baseline,oracle
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "examples" / "cluster.yaml"
SHIPPED = ROOT / "coscale" / "data" / "profiles"
PRESETS = ("baseline", "optimized-a", "optimized-b", "hpa", "kpa", "rayserve", "oracle")
TRACES = ("azure-code", "servegen")
PREDICTIVE = ("optimized-a", "optimized-b")
BASELINES = ("hpa", "kpa", "rayserve")
ORACLE_RATIO_GOAL = 1.15
ATTAINMENT_GOAL = 0.995


def _warm_pools(base: Any, nodes: int) -> Any:
    """The pools with their maxima kept and ``count`` scaled to ``nodes`` in all."""
    from coscale.config import NodePool

    pools = base.cluster.nodes
    total = sum(p.count for p in pools)
    quotas = [p.count * nodes / total for p in pools]
    counts = [int(q) for q in quotas]
    order = sorted(range(len(pools)), key=lambda i: -(quotas[i] - counts[i]))
    for i in order[: nodes - sum(counts)]:
        counts[i] += 1
    scaled = [
        NodePool(type=p.type, count=c, max_count=p.limit)
        for p, c in zip(pools, counts, strict=True)
    ]
    return base.cluster.model_copy(update={"nodes": scaled})


def _scenario(trace: str, args: argparse.Namespace) -> Any:
    from coscale.config import TraceSpec, WorkloadSpec, load_scenario

    base = load_scenario(SCENARIO)
    if args.initial_nodes is not None:
        base = base.model_copy(update={"cluster": _warm_pools(base, args.initial_nodes)})
    if trace == "azure-code":
        spec = TraceSpec(path="azure-code", time_scale=args.azure_time_scale)
    else:
        spec = TraceSpec(path="servegen-language", time_scale=args.servegen_time_scale)
    workload = WorkloadSpec(trace=spec, model_mix=base.workload.model_mix)
    return base.model_copy(update={"workload": workload, "seed": args.seed})


def _options(trace: str, args: argparse.Namespace, *, fluid: bool | None = None) -> Any:
    from coscale.sim.run import SimOptions

    fluid = args.mode == "fluid" if fluid is None else fluid
    profiles: dict[str, Path] = {}
    if args.shipped_profiles:
        profiles = {
            m: SHIPPED / f"{src}.json"
            for m, src in (("minilm", "minilm"), ("digits", "digits-cnn"))
        }
    for flag in args.profile or []:
        name, _, path = flag.partition("=")
        profiles[name] = Path(path)
    if trace == "servegen":
        rate = args.servegen_rate_scale
    else:
        rate = args.azure_rate_scale if fluid else 1.0
    return SimOptions(
        rate_scale=rate,
        fault_scale=args.fault_scale,
        profiles=profiles,
        nodes=args.nodes,
        fluid=fluid,
        warm_start=args.warm_start,
        duration_s=args.duration,
    )


def _run_one(job: tuple[str, str, argparse.Namespace]) -> dict[str, Any]:
    """One (trace, preset) run in a worker: prepare (same seed → same workload) and run."""
    from coscale.sim.run import prepare, run_preset

    trace, preset, args = job
    prepared = prepare(_scenario(trace, args), _options(trace, args))
    result = run_preset(prepared, preset)
    summary = result.summary.to_dict()
    summary["trace"] = trace
    summary["workload_requests"] = summary["requests"]
    return summary


def _oracle_ratios(runs: list[dict[str, Any]]) -> None:
    for trace in {r["trace"] for r in runs}:
        mine = [r for r in runs if r["trace"] == trace]
        oracle = next((r for r in mine if r["preset"] == "oracle"), None)
        for r in mine:
            if oracle is not None and oracle["cost_usd"] > 0:
                r["cost_vs_oracle"] = r["cost_usd"] / oracle["cost_usd"]


def _goals(runs: list[dict[str, Any]]) -> list[tuple[str, bool | None, str]]:
    """(goal, met — None when a run it needs is missing, the numbers)."""
    out: list[tuple[str, bool | None, str]] = []
    by = {(r["trace"], r["preset"]): r for r in runs}
    for p in PREDICTIVE:
        r = by.get(("servegen", p))
        if r is None or "cost_vs_oracle" not in r:
            out.append((f"servegen {p} <= {ORACLE_RATIO_GOAL} x oracle", None, "not run"))
            continue
        ok = r["cost_vs_oracle"] <= ORACLE_RATIO_GOAL and r["slo_attainment"] >= ATTAINMENT_GOAL
        out.append(
            (
                f"servegen {p}: cost <= {ORACLE_RATIO_GOAL} x oracle, attainment >= 99.5 %",
                ok,
                f"{r['cost_vs_oracle']:.3f} x oracle, {r['slo_attainment']:.4%}",
            )
        )
    for trace in TRACES:
        for p in PREDICTIVE:
            mine = by.get((trace, p))
            for b in BASELINES:
                other = by.get((trace, b))
                label = f"{trace}: {p} cheaper than {b} at >= attainment"
                if mine is None or other is None:
                    out.append((label, None, "not run"))
                    continue
                ok = (
                    mine["cost_usd"] < other["cost_usd"]
                    and mine["slo_attainment"] >= other["slo_attainment"]
                )
                out.append(
                    (
                        label,
                        ok,
                        f"${mine['cost_usd']:.2f} vs ${other['cost_usd']:.2f}, "
                        f"{mine['slo_attainment']:.4%} vs {other['slo_attainment']:.4%}",
                    )
                )
    return out


def _print_runs(runs: list[dict[str, Any]]) -> None:
    head = (
        f"{'trace':10} {'preset':12} {'requests':>9} {'cost $':>9} {'x oracle':>8} "
        f"{'SLO':>8} {'p99 ms':>9} {'reliab.':>8} {'rejected':>8} {'replicas':>12} "
        f"{'faults':>7} {'wall s':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in runs:
        ratio = r.get("cost_vs_oracle")
        reps = f"{r['replicas_mean']:.1f}/{r['replicas_max']}"
        faults = r["preemptions"] + r["failures"]
        print(
            f"{r['trace']:10} {r['preset']:12} {r['requests']:9,} {r['cost_usd']:9.2f} "
            f"{'-' if ratio is None else f'{ratio:.3f}':>8} {r['slo_attainment']:8.4%} "
            f"{r['latency_ms']['p99']:9.1f} {r['reliability']:8.5f} {r['rejected']:8,} "
            f"{reps:>12} {faults:7} {r['wall_s']:7.1f}"
        )


# ------------------------------------------------------------------ fluid vs discrete

CHECK_PRESETS = ("baseline", "optimized-a", "optimized-b", "hpa", "rayserve", "oracle")


def _check_fluid(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The same short ServeGen workload (``--check-duration`` simulated seconds at
    ``--check-rate-scale``) run request by request and as a fluid, side by side."""
    from coscale.sim.run import prepare, run_preset

    sub = argparse.Namespace(**vars(args))
    sub.servegen_rate_scale = args.check_rate_scale
    sub.duration = args.check_duration
    rows: list[dict[str, Any]] = []
    print(
        f"\nfluid vs discrete (servegen, {args.check_duration:g} s at "
        f"{args.check_rate_scale:g}x its rates, x{args.servegen_time_scale:g}):"
    )
    print(
        f"  {'preset':12} {'mode':9} {'requests':>10} {'cost $':>8} {'SLO':>9} "
        f"{'p99 ms':>8} {'wall s':>7}"
    )
    for fluid in (False, True):
        prepared = prepare(_scenario("servegen", sub), _options("servegen", sub, fluid=fluid))
        for preset in CHECK_PRESETS:
            s = run_preset(prepared, preset).summary.to_dict()
            row = {"preset": preset, "mode": "fluid" if fluid else "discrete", **s}
            rows.append(row)
            print(
                f"  {preset:12} {row['mode']:9} {s['requests']:10,} {s['cost_usd']:8.3f} "
                f"{s['slo_attainment']:9.4%} {s['latency_ms']['p99']:8.1f} {s['wall_s']:7.1f}"
            )
    return rows


# ------------------------------------------------------------------ executor scale


def _scale_run(nodes: int, routing: str, requests: int, seed: int) -> dict[str, Any]:
    """A static cluster of ``nodes`` c7a.large replicas, all READY, under a Poisson load
    at 70 % of its capacity: simulated requests per wall second."""
    from coscale.catalog import load_catalog
    from coscale.policies.admission import AdmitAll
    from coscale.policies.base import Pool, VariantOption
    from coscale.policies.batching import NoBatching
    from coscale.policies.presets import make_routing
    from coscale.sim.cluster import Arrivals, ClusterSimulator, ModelSetup
    from coscale.sim.faults import FaultModel
    from coscale.sim.profiles import scale_table
    from coscale.sim.workloads import poisson
    from coscale.types import LatencyTable, Plan, ReplicaTarget, Snapshot

    node = load_catalog().get("c7a.large")
    service = 0.05
    table = scale_table(LatencyTable((1,), (0,), ((service,),)), 1.0)
    option = VariantOption("m", "fp32-eager", node, table, 1.0)
    target = ReplicaTarget("m", "fp32-eager", node.name, nodes)
    rate = 0.7 * nodes / service
    work = poisson(rate, requests / rate, np.random.default_rng(seed))
    n = len(work)
    arrivals = Arrivals(
        work.times,
        np.zeros(n, np.int32),
        np.zeros(n, np.int32),
        np.zeros(n, np.int32),
        ("default",),
        work.duration_s,
    )

    class Static:
        name = "static"

        def decide(self, snapshot: Snapshot, state: None) -> tuple[Plan, None]:
            return Plan(snapshot.time, (target,)), None

    params: dict[str, Any] = {"latencies": {("fp32-eager", node.name): table}}
    if routing != "earliest-completion":
        params = {"max_ongoing": None} if routing == "power-of-two" else {}
    setup = ModelSetup(
        "m",
        1.0,
        (option,),
        make_routing(routing, **params),
        NoBatching(),
        AdmitAll(),
        batch_limit=1,
    )
    sim = ClusterSimulator(
        [setup],
        Static(),
        [Pool(node, nodes)],
        arrivals,
        interval_s=15.0,
        rng=np.random.default_rng(seed),
        initial=(target,),
        faults=FaultModel(0.0),
    )
    start = time.perf_counter()
    result = sim.run()
    wall = time.perf_counter() - start
    s = result.summary
    assert s.lost == 0 and s.completed == s.requests
    return {
        "nodes": nodes,
        "routing": routing,
        "requests": s.requests,
        "wall_s": wall,
        "requests_per_wall_s": s.requests / wall,
        "p99_ms": s.latency_ms.p99,
    }


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--traces", default=",".join(TRACES))
    ap.add_argument("--mode", choices=("fluid", "discrete"), default="fluid")
    ap.add_argument(
        "--servegen-rate-scale", type=float, default=None, help="default 5 fluid, 0.0025 discrete"
    )
    ap.add_argument("--servegen-time-scale", type=float, default=24.0)
    ap.add_argument("--azure-time-scale", type=float, default=1.0)
    ap.add_argument(
        "--azure-rate-scale", type=float, default=100.0, help="fluid: requests per trace request"
    )
    ap.add_argument("--duration", type=float, default=None, help="simulated seconds to keep")
    ap.add_argument(
        "--cold-start",
        dest="warm_start",
        action="store_false",
        help="start from --initial-nodes instead of the first minutes' demand (warm start)",
    )
    ap.add_argument(
        "--local-profiles",
        dest="shipped_profiles",
        action="store_false",
        help="use this machine's profiles (default: the shipped reference profiles)",
    )
    ap.add_argument(
        "--check-fluid",
        action="store_true",
        help="also run fluid and discrete side by side on a short ServeGen run",
    )
    ap.add_argument("--fault-scale", type=float, default=10.0)
    ap.add_argument("--nodes", type=int, default=None, help="rescale the cluster's pools")
    ap.add_argument(
        "--initial-nodes",
        type=int,
        default=20,
        help="nodes READY at the start (pool maxima unchanged; 0 = cold start)",
    )
    ap.add_argument("--profile", action="append", help="MODEL=PATH profile file (repeatable)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    ap.add_argument("--scale", action="store_true", help="also time the executor's scaling")
    ap.add_argument("--scale-requests", type=int, default=200_000)
    ap.add_argument("--check-rate-scale", type=float, default=0.01)
    ap.add_argument("--check-duration", type=float, default=7200.0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.servegen_rate_scale is None:
        args.servegen_rate_scale = 5.0 if args.mode == "fluid" else 0.0025
    presets = [p for p in args.presets.split(",") if p]
    traces = [t for t in args.traces.split(",") if t]
    bad = [t for t in traces if t not in TRACES] + [p for p in presets if p not in PRESETS]
    if bad:
        ap.error(f"unknown trace(s)/preset(s): {bad}")
    wall = time.perf_counter()
    jobs = [(t, p, args) for t in traces for p in presets]
    if args.jobs > 1:
        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            runs = pool.map(_run_one, jobs, chunksize=1)
    else:
        runs = [_run_one(j) for j in jobs]
    _oracle_ratios(runs)
    print(
        f"cluster: {SCENARIO.relative_to(ROOT)}; mode {args.mode}; fault scale "
        f"{args.fault_scale:g}; seed {args.seed}; servegen x{args.servegen_time_scale:g} at "
        f"{args.servegen_rate_scale:g}x its rates; azure x"
        f"{args.azure_rate_scale if args.mode == 'fluid' else 1.0:g} load"
    )
    _print_runs(runs)
    goals = _goals(runs)
    print("\ngoals:")
    for label, ok, numbers in goals:
        mark = "n/a " if ok is None else ("MET " if ok else "MISS")
        print(f"  [{mark}] {label}: {numbers}")
    check: list[dict[str, Any]] = []
    if args.check_fluid:
        check = _check_fluid(args)
    scale: list[dict[str, Any]] = []
    if args.scale:
        print("\nexecutor scale (static cluster, 70 % load, no batching):")
        for routing in ("earliest-completion", "round-robin", "power-of-two"):
            n = args.scale_requests
            for nodes in (1_000, 10_000):
                row = _scale_run(nodes, routing, n, args.seed)
                scale.append(row)
                print(
                    f"  {routing:20} {nodes:6,} nodes: {row['requests']:,} requests in "
                    f"{row['wall_s']:.1f} s = {row['requests_per_wall_s']:,.0f} req/s"
                )
    total = time.perf_counter() - wall
    print(f"\nbench wall time: {total:.0f} s ({args.jobs} job(s))")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "runs": runs,
                    "goals": [{"goal": g, "met": ok, "numbers": n} for g, ok, n in goals],
                    "scale": scale,
                    "fluid_check": check,
                    "wall_s": total,
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "python": sys.version.split()[0],
                    "machine": platform.platform(),
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
