"""The bodies of ``coscale bench`` and ``coscale report`` (registered in coscale/cli.py).

Rendering lives here: a rich progress bar while the bench runs, then Table 2 and the
goals as rich tables. ``COSCALE_BENCH_OVERRIDES`` (a JSON object of
:class:`~coscale.bench.settings.BenchSettings` fields) changes the embedded defaults —
for tests and experiments, e.g. ``{"segment_s": 30, "max_cycle_s": 4}``.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from coscale.errors import InvalidInputError

__all__ = ["OVERRIDES_ENV", "bench_command", "report_command"]

OVERRIDES_ENV = "COSCALE_BENCH_OVERRIDES"
PARTS = ("live", "cluster", "scalability", "fidelity")


class RichReporter:
    """A :class:`~coscale.bench.run.Reporter` on one rich progress bar."""

    def __init__(self, progress: Progress, console: Console) -> None:
        self.progress = progress
        self.console = console
        self.task: TaskID = progress.add_task("starting", total=None, detail="")

    def stage(self, name: str, total: float | None) -> None:
        self.progress.reset(self.task, total=total, description=name, detail="")

    def advance(self, completed: float, detail: str = "") -> None:
        self.progress.update(self.task, completed=completed, detail=detail)

    def say(self, message: str) -> None:
        self.progress.update(self.task, description=message)


def _overrides(model: str | None, parts: str | None) -> dict[str, Any]:
    raw = os.environ.get(OVERRIDES_ENV, "").strip()
    out: dict[str, Any] = {}
    if raw:
        try:
            out = json.loads(raw)
        except ValueError as exc:
            raise InvalidInputError(
                f"{OVERRIDES_ENV} is not JSON ({exc}).",
                fix=f"set it to a JSON object, e.g. {OVERRIDES_ENV}='{{\"segment_s\": 60}}'.",
            ) from None
        if not isinstance(out, dict):
            raise InvalidInputError(
                f"{OVERRIDES_ENV} must be a JSON object of bench settings.",
                fix='e.g. {"segment_s": 60}.',
            )
    if model is not None:
        out["model"] = model
    if parts is not None:
        chosen = tuple(p.strip() for p in parts.split(",") if p.strip())
        bad = [p for p in chosen if p not in PARTS]
        if bad or not chosen:
            raise InvalidInputError(
                f"--parts {parts!r}: unknown part(s) {bad}." if bad else "--parts is empty.",
                fix=f"use a comma-separated subset of {', '.join(PARTS)}.",
            )
        out["parts"] = chosen
    return out


def bench_command(
    quick: bool,
    out: Path | None,
    json_path: Path | None,
    model: str | None,
    parts: str | None,
    console: Console,
    err_console: Console,
) -> None:
    """Run the bench (coscale.bench.run) with a progress bar; print Table 2 and goals."""
    from coscale.bench.run import run_bench
    from coscale.bench.settings import from_overrides

    settings = from_overrides(quick, _overrides(model, parts))
    folder = out or Path(f"coscale-bench-{datetime.now(UTC):%Y%m%d-%H%M%S}")
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        final = run_bench(
            settings, folder, json_path=json_path, reporter=RichReporter(bar, err_console)
        )
    print_summary(final, folder, console)
    if json_path is not None:
        console.print(f"results written to {json_path}", soft_wrap=True, markup=False)


def report_command(run_dir: Path, console: Console) -> None:
    """Rebuild DIR/report.html (and the figures) from DIR/results.json."""
    from coscale.bench.report import build_report, load_results

    final = build_report(load_results(run_dir), run_dir)
    print_summary(final, run_dir, console)


def print_summary(final: dict[str, Any], folder: Path, console: Console) -> None:
    """Table 2 and the goals, then where the report is."""
    rows = final.get("table2", [])
    if rows:
        table = Table(title="Table 2 (live, this machine)")
        for name in (
            "preset",
            "processing s",
            "cost $",
            "reliability",
            "latency −%",
            "cost −%",
            "p50 ms",
            "p99 ms",
            "J/inference",
            "SLO",
        ):
            table.add_column(name, justify="left" if name == "preset" else "right")

        def f(v: Any, spec: str) -> str:
            return "n/a" if v is None else format(v, spec)

        for r in rows:
            table.add_row(
                r["preset"],
                f(r["processing_time_s"], ".2f"),
                f(r["cost_usd"], ".6f"),
                f(100 * r["reliability"], ".2f") + " %",
                f(r["latency_reduction_pct"], ".1f"),
                f(r["cost_reduction_pct"], ".1f"),
                f(r["p50_ms"], ".1f"),
                f(r["p99_ms"], ".1f"),
                f(r["energy_per_inference_j"], ".3f"),
                f(100 * r["slo_attainment"], ".2f") + " %",
            )
        console.print(table)
    for goal in final.get("goals", []):
        style = "dim" if goal["met"] is None else ("green" if goal["met"] else "red")
        console.print(goal["text"], style=style, markup=False, soft_wrap=True)
    console.print(f"report: {folder / 'report.html'}", soft_wrap=True, markup=False)
