"""The ``coscale`` command.

Each command is a thin shell: it parses flags, calls the library, and renders
results with rich. A :class:`~coscale.errors.CoscaleError` is printed as one
paragraph and exits with status 2 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from coscale.errors import CoscaleError

app = typer.Typer(
    name="coscale",
    help="Serve AI models on heterogeneous machines: autoscaling, batching, routing and "
    "model acceleration optimized together.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

_state = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug


@app.command()
def validate(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML file to check.")],
) -> None:
    """Check a scenario file without running it; print every error with its field path."""
    from rich.markup import escape

    from coscale.config import load_scenario, scenario_summary
    from coscale.errors import ScenarioError

    try:
        loaded = load_scenario(scenario)
    except ScenarioError as exc:
        if _state["debug"]:
            raise
        # Printed here rather than by main(): one line per error, verbatim (no markup, no
        # wrapping), so paths like models[0].slo_ms survive. SystemExit, not typer.Exit:
        # main() runs the app with standalone_mode=False, where typer.Exit's code is returned.
        err_console.print(f"[bold red]✗[/bold red] ({exc.code})", end=" ")
        err_console.print(exc.message.rstrip(), markup=False, highlight=False, soft_wrap=True)
        err_console.print(exc.fix, markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    console.print(
        f"[green]✓[/green] {escape(str(scenario))} is valid: {escape(scenario_summary(loaded))}",
        soft_wrap=True,
    )


@app.command()
def simulate(
    scenario: Annotated[
        Path | None,
        typer.Argument(help="Scenario YAML to simulate as a cluster (omit with --queue-model)."),
    ] = None,
    queue_model: Annotated[
        str | None,
        typer.Option("--queue-model", help="Run a standalone queueing model instead: 'mmc'."),
    ] = None,
    arrival_rate: Annotated[
        float | None, typer.Option("--arrival-rate", help="M/M/c: arrivals per second (λ).")
    ] = None,
    service_rate: Annotated[
        float | None,
        typer.Option("--service-rate", help="M/M/c: services per second per server (μ)."),
    ] = None,
    servers: Annotated[int | None, typer.Option("--servers", help="M/M/c: servers (c).")] = None,
    requests: Annotated[
        int, typer.Option("--requests", help="M/M/c: requests to simulate (N).")
    ] = 100_000,
    warmup: Annotated[
        int, typer.Option("--warmup", help="M/M/c: first requests left out of the summary.")
    ] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the run summary as JSON here.")
    ] = None,
) -> None:
    """Simulate: a cluster from a scenario file, or a queueing model (--queue-model mmc)."""
    if queue_model is not None:
        if scenario is not None:
            raise CoscaleError(
                f"--queue-model runs a standalone queue and takes no scenario (got {scenario}).",
                fix="drop the scenario argument, or drop --queue-model to simulate it.",
                code="invalid_input",
            )
        _simulate_queue_model(
            queue_model, arrival_rate, service_rate, servers, requests, warmup, seed, json_path
        )
        return
    if scenario is None:
        raise CoscaleError(
            "nothing to simulate: give a scenario file or a queue model.",
            fix="run `coscale simulate SCENARIO.yaml`, or e.g. `coscale simulate --queue-model "
            "mmc --arrival-rate 8 --service-rate 1 --servers 10`.",
            code="invalid_input",
        )
    raise CoscaleError(
        f"cluster simulation of scenario files is not available in this build ({scenario}).",
        fix="use --queue-model mmc for the M/M/c mode.",
        code="not_implemented",
    )


def _simulate_queue_model(
    model: str,
    arrival_rate: float | None,
    service_rate: float | None,
    servers: int | None,
    requests: int,
    warmup: int,
    seed: int,
    json_path: Path | None,
) -> None:
    from rich.table import Table

    from coscale.errors import InvalidInputError
    from coscale.sim.mmc import simulate_mmc
    from coscale.telemetry.summary import summary_to_json

    if model.lower() != "mmc":
        raise InvalidInputError(
            f"unknown queue model {model!r}.", fix="use --queue-model mmc (M/M/c, FIFO)."
        )
    flags = {"--arrival-rate": arrival_rate, "--service-rate": service_rate, "--servers": servers}
    missing = [flag for flag, value in flags.items() if value is None]
    if missing or arrival_rate is None or service_rate is None or servers is None:
        raise InvalidInputError(
            f"the M/M/c model needs {', '.join(missing)}.",
            fix="pass --arrival-rate λ --service-rate μ --servers c.",
        )
    summary = simulate_mmc(arrival_rate, service_rate, servers, requests, seed=seed, warmup=warmup)
    x = summary.extra
    table = Table(title=f"{summary.scenario}, ρ = {x['utilization']:.3f}, seed {seed}")
    table.add_column("metric")
    table.add_column("simulated", justify="right")
    table.add_column("Erlang C", justify="right")
    lat = summary.latency_ms
    table.add_row("requests (after warm-up)", f"{summary.requests:,}", "")
    table.add_row("mean latency (ms)", f"{lat.mean:.3f}", f"{x['erlang_c_mean_latency_ms']:.3f}")
    table.add_row(
        "P(wait)", f"{x['wait_probability']:.4f}", f"{x['erlang_c_wait_probability']:.4f}"
    )
    for name, value in (("p50", lat.p50), ("p90", lat.p90), ("p99", lat.p99)):
        table.add_row(f"{name} latency (ms)", f"{value:.3f}", "")
    table.add_row("throughput (req/s)", f"{summary.throughput_rps:.3f}", f"{arrival_rate:g}")
    table.add_row("events", f"{x['events']:,}", "")
    console.print(table)
    if json_path is not None:
        console.print(f"summary written to {summary_to_json(summary, json_path)}")


@app.command()
def profile(
    model: Annotated[
        str,
        typer.Argument(help="A built-in model (digits-cnn, minilm) or an .onnx/TorchScript file."),
    ],
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the profile (contract JSON) here.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Profile file to write [default: cache profiles/MODEL-HW.json]."
        ),
    ] = None,
    variants: Annotated[
        str | None,
        typer.Option("--variants", help="Comma-separated variants (the baseline is always in)."),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", min=1, help="Threads per variant [default: usable CPUs]."),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Batch sizes 1, 8, 64, fewer repetitions: rough, fast.")
    ] = False,
) -> None:
    """Measure every variant of MODEL on this machine: fidelity, latency, throughput, memory."""
    from datetime import UTC, datetime

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from coscale.accel.profiler import ProfileProgress, profile_family
    from coscale.accel.zoo import get_family
    from coscale.catalog.profiles import default_profile_path, save_profile

    family = get_family(model)
    names = [v.strip() for v in variants.split(",") if v.strip()] if variants else None
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(f"profiling {family.name}", total=None)

        def on_progress(p: ProfileProgress) -> None:
            text = f"{family.name} · {p.variant} · {p.stage} {p.detail}".rstrip()
            bar.update(task, completed=p.completed, total=p.total, description=text)

        result = profile_family(
            family,
            variants=names,
            threads=threads,
            quick=quick,
            progress=on_progress,
            measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
    console.print(_profile_table(result))
    written = save_profile(result, out or default_profile_path(family.name))
    console.print(f"profile written to {written}", soft_wrap=True)
    if json_path is not None:
        console.print(f"JSON written to {save_profile(result, json_path)}", soft_wrap=True)


def _profile_table(result: object) -> object:
    """Rich table of a ProfileFile: one row per variant."""
    from rich.table import Table

    from coscale.catalog.profiles import ProfileFile

    assert isinstance(result, ProfileFile)
    hw = result.hardware
    table = Table(
        title=f"{result.model} on {hw.describe()}, {result.threads} thread(s)",
        caption="latency p50/p99 in ms; peak mem = peak RSS of the measuring process",
    )
    for name in ("variant", "fidelity", "items/s", "speed-up", "b=1 p50/p99"):
        table.add_column(name, justify="left" if name == "variant" else "right")
    for name in ("best b: p50/p99", "size", "peak mem"):
        table.add_column(name, justify="right")
    for v in result.variants:
        one, best = v.latency_ms.get("1"), v.latency_ms[str(v.best_batch)]
        table.add_row(
            v.name + (" (baseline)" if v.name == result.baseline else ""),
            f"{v.fidelity:.4f} {v.fidelity_metric}",
            f"{v.throughput:,.0f}",
            f"{v.speedup:.2f}×",
            f"{one.p50:.3f}/{one.p99:.3f}" if one else "-",
            f"b={v.best_batch}: {best.p50:.3f}/{best.p99:.3f}",
            f"{v.size_bytes / 2**20:.2f} MiB",
            f"{v.peak_memory_bytes / 2**20:.0f} MiB",
        )
    return table


def main() -> None:
    """Entry point: run the app, turning user errors into a clean message and exit code 2."""
    try:
        code = app(standalone_mode=False)
    except CoscaleError as exc:
        if _state["debug"]:
            raise
        err_console.print(
            f"error ({exc.code}): {exc.render()}", markup=False, highlight=False, soft_wrap=True
        )
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(2)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
