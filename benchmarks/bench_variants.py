"""Benchmark: how much faster is each accelerated variant than fp32 eager, and at what fidelity?

Profiles ``digits-cnn`` and ``minilm`` on this machine with :func:`coscale.accel.profiler.
profile_family` (or reads profile JSON files given with ``--profiles``) and prints, per
model, each variant's speed-up over the fp32 eager baseline (throughput at its best
batch size) and its fidelity, then checks the acceleration goals:

* ``digits-cnn``: the fastest variant whose accuracy is within :data:`DIGITS_MAX_DROP`
  (1 point) of fp32 eager runs at ≥ :data:`DIGITS_MIN_SPEEDUP` (2×) fp32 eager throughput;
* ``minilm``: the fastest variant with mean cosine to fp32 ≥ :data:`MINILM_MIN_COSINE`
  (0.99) runs at ≥ :data:`MINILM_MIN_SPEEDUP` (1.3×) fp32 eager throughput.

Usage::

    python benchmarks/bench_variants.py                       # profile both (minutes)
    python benchmarks/bench_variants.py --quick --threads 2   # rough, faster
    python benchmarks/bench_variants.py --profiles /tmp/digits.json /tmp/minilm.json
    python benchmarks/bench_variants.py --save-dir out/       # also keep the profiles

``--check`` makes the exit status 1 when a goal does not hold.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from coscale.catalog.profiles import ProfileFile, VariantProfile, load_profile, save_profile

DIGITS_MAX_DROP = 0.01
DIGITS_MIN_SPEEDUP = 2.0
MINILM_MIN_COSINE = 0.99
MINILM_MIN_SPEEDUP = 1.3
MODELS = ("digits-cnn", "minilm")


@dataclass(frozen=True)
class GoalResult:
    model: str
    text: str  # the goal, in words
    best: VariantProfile | None  # fastest acceptable non-baseline variant
    min_speedup: float

    @property
    def holds(self) -> bool:
        return self.best is not None and self.best.speedup >= self.min_speedup


def acceptable(profile: ProfileFile, variant: VariantProfile) -> bool:
    """Within the model's fidelity budget (see the module docstring)."""
    if variant.fidelity_metric == "accuracy":
        base = profile.variant(profile.baseline).fidelity
        return variant.fidelity >= base - DIGITS_MAX_DROP - 1e-12
    return variant.fidelity >= MINILM_MIN_COSINE


def evaluate_goal(profile: ProfileFile) -> GoalResult:
    """Fastest acceptable non-baseline variant, against the model's speed-up goal."""
    if profile.variant(profile.baseline).fidelity_metric == "accuracy":
        text = f"fastest variant within {DIGITS_MAX_DROP * 100:g} accuracy point of fp32"
        need = DIGITS_MIN_SPEEDUP
    else:
        text = f"fastest variant with mean cosine ≥ {MINILM_MIN_COSINE}"
        need = MINILM_MIN_SPEEDUP
    candidates = [
        v for v in profile.variants if v.name != profile.baseline and acceptable(profile, v)
    ]
    best = max(candidates, key=lambda v: v.throughput, default=None)
    return GoalResult(profile.model, f"{text}: ≥ {need:g}× fp32 eager", best, need)


def variant_table(profile: ProfileFile, wall_s: float | None) -> Table:
    hw = profile.hardware
    took = f", profiled in {wall_s:.0f} s" if wall_s is not None else ""
    table = Table(
        title=f"{profile.model} on {hw.describe()}, {profile.threads} thread(s){took}",
        caption="throughput at the best batch size; latency p50/p99 ms",
    )
    for col in ("variant", "runtime", "fidelity", "ok", "items/s", "speed-up", "best b"):
        table.add_column(col, justify="left" if col in ("variant", "runtime") else "right")
    table.add_column("b=1 p50/p99", justify="right")
    table.add_column("size MiB", justify="right")
    table.add_column("peak MiB", justify="right")
    for v in sorted(profile.variants, key=lambda v: -v.throughput):
        one = v.latency_ms.get("1")
        table.add_row(
            v.name,
            v.runtime,
            f"{v.fidelity:.4f} {v.fidelity_metric}",
            "✓" if acceptable(profile, v) else "✗",
            f"{v.throughput:,.0f}",
            f"{v.speedup:.2f}×",
            str(v.best_batch),
            f"{one.p50:.3f}/{one.p99:.3f}" if one else "-",
            f"{v.size_bytes / 2**20:.3f}",
            f"{v.peak_memory_bytes / 2**20:.0f}",
        )
    return table


def measure(model: str, *, quick: bool, threads: int | None, console: Console) -> ProfileFile:
    from coscale.accel.profiler import ProfileProgress, profile_family
    from coscale.accel.zoo import get_family

    last = {"stage": ""}

    def report(p: ProfileProgress) -> None:
        if p.stage != "measure" and p.stage != last["stage"]:
            console.print(f"  [{p.completed}/{p.total}] {p.variant}: {p.stage} {p.detail}")
        last["stage"] = p.stage

    return profile_family(get_family(model), quick=quick, threads=threads, progress=report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", nargs="+", type=Path, help="read these profile JSONs")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="models to profile")
    parser.add_argument("--quick", action="store_true", help="quick profiles")
    parser.add_argument("--threads", type=int, default=None, help="threads per variant")
    parser.add_argument("--save-dir", type=Path, help="write measured profiles here")
    parser.add_argument("--check", action="store_true", help="exit 1 if a goal fails")
    args = parser.parse_args(argv)
    console = Console()

    results: list[tuple[ProfileFile, float | None]] = []
    if args.profiles:
        results = [(load_profile(p, allow_foreign=True), None) for p in args.profiles]
    else:
        for model in args.models:
            console.print(f"profiling {model}{' (quick)' if args.quick else ''} …")
            start = time.perf_counter()
            prof = measure(model, quick=args.quick, threads=args.threads, console=console)
            wall = time.perf_counter() - start
            results.append((prof, wall))
            if args.save_dir:
                path = save_profile(prof, args.save_dir / f"{model}.json")
                console.print(f"  saved {path}")

    goals = []
    for prof, wall in results:
        console.print(variant_table(prof, wall))
        goals.append(evaluate_goal(prof))
    for goal in goals:
        verdict = "[green]HOLDS[/green]" if goal.holds else "[red]DOES NOT HOLD[/red]"
        best = (
            f"{goal.best.name} at {goal.best.speedup:.2f}× ({goal.best.fidelity:.4f} "
            f"{goal.best.fidelity_metric})"
            if goal.best
            else "no acceptable variant"
        )
        console.print(f"{goal.model}: {goal.text} → {best}: {verdict}")
    return 1 if args.check and not all(g.holds for g in goals) else 0


if __name__ == "__main__":
    sys.exit(main())
