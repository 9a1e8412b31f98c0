"""``coscale bench``: run the four parts in order and write the report.

:func:`run_bench` runs, as ``settings.parts`` asks: the live cycles (and the live
closed loops after the ``scal_preset`` cycle), the simulated cluster, the simulated
closed loops, and the fidelity replay of the live runs; then
:func:`coscale.bench.report.build_report` writes ``results.json``, the PNG figures and
``report.html`` into the output folder. A part that needs another (fidelity needs the
live runs) is skipped, with a note, when that one did not run. Progress goes to a
:class:`Reporter` (the CLI's is a rich progress bar); nothing here prints.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from coscale.bench.report import build_report
from coscale.bench.settings import BenchSettings

__all__ = ["Reporter", "machine_info", "run_bench"]


class Reporter(Protocol):
    """Where the bench tells its progress."""

    def stage(self, name: str, total: float | None) -> None:
        """A new stage begins; ``total`` units of work (None: unknown)."""

    def advance(self, completed: float, detail: str = "") -> None:
        """The current stage reached ``completed`` units."""

    def say(self, message: str) -> None:
        """A line of news."""


class Silent:
    """A :class:`Reporter` that says nothing."""

    def stage(self, name: str, total: float | None) -> None:
        return None

    def advance(self, completed: float, detail: str = "") -> None:
        return None

    def say(self, message: str) -> None:
        return None


def _load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine_info() -> dict[str, Any]:
    from coscale.runtime.system import usable_cores

    return {
        "cpus": usable_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_start": _load_average(),
    }


def _live_progress(reporter: Reporter) -> Callable[[str], Callable[[Any], None]]:
    def for_preset(preset: str) -> Callable[[Any], None]:
        reporter.stage(f"live cycle · {preset}", None)

        def on_progress(p: Any) -> None:
            reporter.advance(
                min(p.elapsed_s, p.duration_s),
                f"sent {p.sent:,}/{p.planned or 0:,} · ok {p.completed:,} · failed {p.failed:,}",
            )

        return on_progress

    return for_preset


def run_bench(
    settings: BenchSettings,
    out: Path,
    *,
    json_path: Path | None = None,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Run the bench (module docstring); returns the finalized results."""
    from coscale.bench import live as live_part
    from coscale.bench import sim as sim_part

    rep = reporter or Silent()
    started = time.perf_counter()
    results: dict[str, Any] = {
        "schema": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": settings.quick,
        "settings": settings.model_dump(mode="json"),
        "machine": machine_info(),
        "wall_s_by_part": {},
    }
    walls: dict[str, float] = results["wall_s_by_part"]
    profile: Path | None = None
    if "live" in settings.parts:
        t = time.perf_counter()
        live, scal_live, profile = live_part.run_live(
            settings, say=rep.say, progress=_live_progress(rep), records_dir=out / "records"
        )
        results["live"] = live
        if scal_live is not None:
            results.setdefault("scalability", {})["live"] = scal_live
        walls["live"] = time.perf_counter() - t
    if "cluster" in settings.parts:
        t = time.perf_counter()

        def cluster_progress(preset: str, now: float, total: float) -> None:
            if getattr(cluster_progress, "current", None) != preset:
                cluster_progress.current = preset  # type: ignore[attr-defined]
                rep.stage(f"simulated cluster · {preset}", total)
            rep.advance(now, "simulated s")

        rep.say("simulating the cluster")
        results["cluster"] = sim_part.run_cluster(settings, cluster_progress)
        walls["cluster"] = time.perf_counter() - t
    if "scalability" in settings.parts:
        t = time.perf_counter()

        def scal_progress(n: int, now: float, total: float) -> None:
            if getattr(scal_progress, "current", None) != n:
                scal_progress.current = n  # type: ignore[attr-defined]
                rep.stage(f"simulated closed loop · {n} tasks", total)
            rep.advance(now, "simulated s")

        results.setdefault("scalability", {})["sim"] = sim_part.run_scal_sim(
            settings, scal_progress
        )
        walls["scalability_sim"] = time.perf_counter() - t
    if "fidelity" in settings.parts:
        if "live" in results:
            t = time.perf_counter()
            rep.stage("fidelity · replaying the live runs", None)
            results["fidelity"] = sim_part.replay_live(settings, results["live"], profile)
            walls["fidelity"] = time.perf_counter() - t
        else:
            results["fidelity"] = {"pairs": [], "note": "not run: it replays the live runs."}
    results["machine"]["load_average_end"] = _load_average()
    results["wall_s"] = time.perf_counter() - started
    rep.stage("writing the report", None)
    return build_report(results, out, json_path)
