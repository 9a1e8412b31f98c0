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
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="Random seed (default: 0, or the scenario's seed)."),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the run summary as JSON here.")
    ] = None,
    trace: Annotated[
        Path | None,
        typer.Option("--trace", help="Cluster: replay this trace instead of the scenario's."),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option("--preset", help="Cluster: the policy preset (default: the scenario's)."),
    ] = None,
    compare: Annotated[
        str | None,
        typer.Option("--compare", help="Cluster: run presets P1,P2,… on the same workload."),
    ] = None,
    nodes: Annotated[
        int | None,
        typer.Option("--nodes", help="Cluster: scale the pools to start with N nodes."),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option("--duration", help="Cluster: simulate only the first S seconds."),
    ] = None,
    records: Annotated[
        Path | None,
        typer.Option("--records", help="Cluster: write per-request records (Parquet) here."),
    ] = None,
    timeseries: Annotated[
        Path | None,
        typer.Option("--timeseries", help="Cluster: write the sampled time series (CSV) here."),
    ] = None,
    profile_paths: Annotated[
        list[str] | None,
        typer.Option("--profile", help="Cluster: MODEL=PATH, a profile file for a model."),
    ] = None,
    rate_scale: Annotated[
        float,
        typer.Option("--rate-scale", help="Cluster: multiply a ServeGen trace's rates."),
    ] = 1.0,
    fault_scale: Annotated[
        float,
        typer.Option("--fault-scale", help="Cluster: multiply preemption/failure rates."),
    ] = 1.0,
    interval: Annotated[
        float | None,
        typer.Option("--interval", help="Cluster: control interval in s (default: per policy)."),
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
            queue_model,
            arrival_rate,
            service_rate,
            servers,
            requests,
            warmup,
            0 if seed is None else seed,
            json_path,
        )
        return
    if scenario is None:
        raise CoscaleError(
            "nothing to simulate: give a scenario file or a queue model.",
            fix="run `coscale simulate SCENARIO.yaml`, or e.g. `coscale simulate --queue-model "
            "mmc --arrival-rate 8 --service-rate 1 --servers 10`.",
            code="invalid_input",
        )
    from coscale.sim.run import SimOptions

    options = SimOptions(
        trace=trace,
        nodes=nodes,
        duration_s=duration,
        rate_scale=rate_scale,
        interval_s=interval,
        fault_scale=fault_scale,
        profiles=_profile_flags(profile_paths or []),
        seed=seed,
    )
    _simulate_cluster(scenario, options, preset, compare, json_path, records, timeseries)


def _profile_flags(values: list[str]) -> dict[str, Path]:
    """``--profile MODEL=PATH`` flags as a mapping; a malformed one → CoscaleError."""
    out: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise CoscaleError(
                f"--profile {value!r} is not MODEL=PATH.",
                fix="write e.g. --profile digits=profiles/digits-cnn.json.",
                code="invalid_input",
            )
        out[name] = Path(path)
    return out


def _simulate_cluster(
    scenario_path: Path,
    options: object,
    preset: str | None,
    compare: str | None,
    json_path: Path | None,
    records: Path | None,
    timeseries: Path | None,
) -> None:
    """Run one preset (or --compare several) of a scenario; render; write outputs."""
    import json

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from coscale.config import load_scenario
    from coscale.sim.run import SimOptions, prepare, simulate, summaries_json, write_records

    assert isinstance(options, SimOptions)
    if preset is not None and compare is not None:
        raise CoscaleError(
            "--preset and --compare both given.",
            fix="use --preset P for one run, or --compare P1,P2,… for several.",
            code="invalid_input",
        )
    loaded = load_scenario(scenario_path)
    if compare is not None:
        presets = [p.strip() for p in compare.split(",") if p.strip()]
    else:
        presets = [preset or loaded.policies.preset]
    prepared = prepare(loaded, options)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} simulated s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        tasks: dict[str, object] = {}

        def on_progress(name: str, now: float, total: float) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(f"simulating {name}", total=max(total, 1e-9))
            bar.update(tasks[name], completed=now)  # type: ignore[arg-type]

        results = simulate(prepared, presets, on_progress)
    console.print(_comparison_table(loaded.name, prepared.workload_name, results))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        data = summaries_json(results) if compare is not None else results[0].summary.to_dict()
        json_path.write_text(json.dumps(data, indent=2) + "\n")
        console.print(f"summary written to {json_path}", soft_wrap=True)
    if records is not None:
        console.print(f"records written to {write_records(results, records)}", soft_wrap=True)
    if timeseries is not None:
        for r in results:
            target = timeseries
            if len(results) > 1:
                name = f"{timeseries.stem}-{r.summary.preset}{timeseries.suffix}"
                target = timeseries.with_name(name)
            console.print(f"time series written to {r.series.write_csv(target)}", soft_wrap=True)


def _comparison_table(scenario: str, workload: str, results: list[object]) -> object:
    """Rich table: one row per preset run."""
    from rich.table import Table

    from coscale.sim.cluster import SimResult

    table = Table(
        title=f"{scenario}: {workload}",
        caption="cost in US$ over the run; replicas: time-weighted mean / max; "
        "SLO = share of requests answered within their deadline",
    )
    for name in ("preset", "cost $", "cost/oracle", "SLO", "p50 ms", "p99 ms"):
        table.add_column(name, justify="left" if name == "preset" else "right")
    for name in ("reliability", "rejected", "replicas", "energy kJ", "wall s"):
        table.add_column(name, justify="right")
    for r in results:
        assert isinstance(r, SimResult)
        s, x = r.summary, r.summary.extra
        ratio = x.get("cost_vs_oracle")
        table.add_row(
            s.preset,
            f"{s.cost_usd:,.2f}",
            "-" if ratio is None else f"{ratio:.3f}",
            f"{s.slo_attainment:.2%}",
            f"{s.latency_ms.p50:,.1f}",
            f"{s.latency_ms.p99:,.1f}",
            f"{s.reliability:.4f}",
            f"{s.rejected:,}",
            f"{x['replicas_mean']:,.1f} / {x['replicas_max']:,}",
            f"{s.energy_j / 1000:,.1f}",
            f"{x['wall_s']:.1f}",
        )
    return table


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
    import os
    from datetime import UTC, datetime

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from coscale.accel.profiler import ProfileProgress, profile_family
    from coscale.accel.zoo import get_family
    from coscale.catalog.profiles import default_profile_path, save_profile

    family = get_family(model)
    names = [v.strip() for v in variants.split(",") if v.strip()] if variants else None
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(f"profiling {family.name}", total=None)

        def on_progress(p: ProfileProgress) -> None:
            text = f"{family.name} · {p.variant} · {p.stage} {p.detail}".rstrip()
            bar.update(task, completed=p.completed, total=p.total, description=text)
            if not err_console.is_terminal and p.stage != "measure":  # logs: a line a step
                err_console.print(f"[{p.completed}/{p.total}] {text}", markup=False)

        result = profile_family(
            family,
            variants=names,
            threads=threads,
            quick=quick,
            progress=on_progress,
            measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
    console.print(_profile_table(result))
    if load_before >= 0.5 * result.hardware.logical_cpus:
        err_console.print(
            f"note: the machine was busy when profiling began (load average {load_before:.1f} "
            f"on {result.hardware.logical_cpus} logical CPUs); other processes competed for "
            "the CPUs, so latencies may be pessimistic and noisy. Re-profile on an idle machine "
            "for figures to rely on.",
            soft_wrap=True,
        )
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
            _human_bytes(v.size_bytes),
            _human_bytes(v.peak_memory_bytes),
        )
    return table


def _human_bytes(n: int) -> str:
    """1023 → "1023 B", 90_000 → "87.9 KiB", 3·2**20 → "3.0 MiB"."""
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            break
        value /= 1024
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"


@app.command()
def serve(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML: the models to serve.")],
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (non-loopback needs tenants).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8000,
    preset: Annotated[
        str | None, typer.Option("--preset", help="Policy preset (default: the scenario's).")
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            help="Where replicas run: local (worker processes), "
            "inprocess (threads of this process) or ray (Ray actors). "
            "Default: the scenario's cluster.backend (local).",
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="--backend ray: the Ray cluster (auto, HOST:PORT or ray://HOST:PORT); "
            "default: start a local Ray sized to this machine.",
        ),
    ] = None,
    profile: Annotated[
        list[str] | None,
        typer.Option(
            "--profile",
            help="Profile file of a model (PATH for a one-model scenario, else MODEL=PATH; "
            "repeatable). Default: this machine's, from `coscale profile`; measured first "
            "(quick mode) if missing.",
        ),
    ] = None,
    records: Annotated[
        Path | None,
        typer.Option(
            "--records",
            help="On exit, write the per-request records (the newest 100,000: queue and "
            "service time, batch, replica, outcome) to this Parquet file.",
        ),
    ] = None,
) -> None:
    """Serve a scenario's models over HTTP until SIGTERM/SIGINT (then drain and exit 0).

    Loads the scenario, uses each model's measured profile for this machine (profiling it
    first, in quick mode, if there is none), builds the serving system, and runs the HTTP
    API (coscale.api) on HOST:PORT. Binding a non-loopback address needs tenants in the
    scenario.
    """
    from rich.markup import escape

    from coscale.api import bind_socket, is_loopback, live_telemetry, run_server
    from coscale.catalog import load_catalog
    from coscale.catalog.profiles import ProfileFile
    from coscale.config import PRESETS, load_scenario, suggest
    from coscale.runtime.system import ServingSystem

    loaded = load_scenario(scenario)
    if not is_loopback(host) and not loaded.tenants:
        raise CoscaleError(
            f"refusing to serve on {host}: scenario {loaded.name!r} has no tenants, so anyone "
            "who can reach this address could use it without a key.",
            fix="serve on 127.0.0.1 (the default), or add tenants to the scenario, e.g.\n"
            "tenants:\n  - name: alice\n    key_env: ALICE_KEY   # the key is read from "
            "this environment variable",
            code="tenants_required",
        )
    keys = None
    if loaded.tenants:  # read every key now: a missing one fails before anything starts
        import os

        from coscale.tenancy import KeyRing

        keys = KeyRing.from_scenario(loaded, os.environ)
    if preset is not None and preset not in PRESETS:
        raise CoscaleError(
            f"unknown preset {preset!r}{suggest(preset, PRESETS) or '.'}",
            fix=f"use one of: {', '.join(sorted(PRESETS))}.",
            code="invalid_input",
        )
    sock = bind_socket(host, port)  # a busy port fails now, before any profiling
    profiles = _serve_profiles(loaded, profile or [])
    assert all(isinstance(p, ProfileFile) for p in profiles.values())
    typed = {name: p for name, p in profiles.items() if isinstance(p, ProfileFile)}
    chosen = backend or loaded.cluster.backend
    system = _serving_system(loaded, preset, chosen, profiles, address=address)
    assert isinstance(system, ServingSystem)
    catalog = load_catalog()
    node = catalog.get(system.scenario.cluster.nodes[0].type)
    telemetry = live_telemetry(
        system,
        clock=system.clock,
        node=node,
        slo_s={m.name: m.slo_ms / 1000.0 for m in loaded.models},
        throughput={
            name: {v.name: v.throughput for v in prof.variants} for name, prof in typed.items()
        },
        records=lambda: system.telemetry.ring,
    )
    err_console.print(telemetry.sampler.meter.describe(), markup=False, highlight=False)
    url = f"http://{host}:{port}"

    def ready() -> None:
        err_console.print(
            f"[green]✓[/green] serving {escape(loaded.name)} on {escape(url)} "
            f"(preset {escape(system.preset)}; POST /v1/models/MODEL/infer, GET /metrics, "
            "GET /openapi.json); Ctrl-C or SIGTERM drains and stops",
            soft_wrap=True,
        )

    err_console.print(f"starting {len(loaded.models)} model(s) on {escape(url)} …")
    auth = None
    if keys is not None:
        from coscale.tenancy import TenantAuth

        auth = TenantAuth.with_keys(keys, loaded.tenants, system.clock)
        err_console.print(
            f"API keys required: {len(loaded.tenants)} tenant(s)"
            + (", admin key set" if keys.has_admin else " (no admin key: /metrics is closed)"),
            markup=False,
        )
    run_server(
        system, sock=sock, clock=system.clock, telemetry=telemetry, on_ready=ready, auth=auth
    )
    stats = system.stats()
    err_console.print(
        f"stopped: {stats['completed']:,} completed, {stats['failed']:,} failed, "
        f"{stats['rejected']:,} rejected, {stats['lost']:,} lost",
        soft_wrap=True,
    )
    if records is not None:
        from coscale.telemetry.records import write_parquet

        written = write_parquet([system.telemetry.ring.columns()], records)
        err_console.print(f"records written to {escape(str(written))}", soft_wrap=True)


def _serve_profiles(loaded: object, given: list[str]) -> dict[str, object]:
    """Each model's profile: ``--profile`` files, else this machine's, else measured now.

    ``given`` holds ``PATH`` (one-model scenarios) or ``MODEL=PATH`` entries. A model
    without one uses ``default_profile_path``; if that file is missing the profiler runs
    in quick mode (batch sizes 1, 8, 64, fewer repetitions — rough but enough for serving;
    run `coscale profile MODEL` for a full one) over the variants the scenario allows,
    with a progress bar, and saves it there.
    """
    from coscale.accel.zoo import get_family
    from coscale.catalog.profiles import default_profile_path, load_profile
    from coscale.config import Scenario

    assert isinstance(loaded, Scenario)
    names = [m.name for m in loaded.models]
    paths: dict[str, Path] = {}
    for entry in given:
        model, sep, path = entry.partition("=")
        if not sep:
            if len(names) != 1:
                raise CoscaleError(
                    f"--profile {entry} names no model, and the scenario has {len(names)}.",
                    fix="pass --profile MODEL=PATH for each model.",
                    code="invalid_input",
                )
            model, path = names[0], entry
        if model not in names:
            raise CoscaleError(
                f"--profile names model {model!r}, which the scenario does not serve.",
                fix=f"use one of: {', '.join(names)}.",
                code="invalid_input",
            )
        paths[model] = Path(path)
    out: dict[str, object] = {}
    for m in loaded.models:
        if m.name in paths:
            out[m.name] = load_profile(paths[m.name])
            continue
        family = get_family(m.source)
        here = default_profile_path(family.name)
        out[m.name] = load_profile(here) if here.is_file() else _quick_profile(family, m, here)
    return out


def _quick_profile(family: object, model: object, target: Path) -> object:
    """Profile ``family`` (quick mode) with a progress bar; save it at ``target``."""
    from datetime import UTC, datetime

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from coscale.accel.base import ModelFamily
    from coscale.accel.profiler import ProfileProgress, profile_family
    from coscale.catalog.profiles import save_profile
    from coscale.config import ModelSpec

    assert isinstance(family, ModelFamily) and isinstance(model, ModelSpec)
    err_console.print(
        f"no profile of {model.source} for this machine: measuring it now in quick mode "
        f"(rough figures; `coscale profile {model.source}` measures a full one)",
        markup=False,
        soft_wrap=True,
    )
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(f"profiling {family.name}", total=None)

        def on_progress(p: ProfileProgress) -> None:
            text = f"{family.name} · {p.variant} · {p.stage} {p.detail}".rstrip()
            bar.update(task, completed=p.completed, total=p.total, description=text)

        result = profile_family(
            family,
            variants=model.variants,
            quick=True,
            progress=on_progress,
            measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
    err_console.print(f"profile written to {save_profile(result, target)}", markup=False)
    return result


def _serving_system(
    loaded: object,
    preset: str | None,
    backend: str,
    profiles: dict[str, object],
    *,
    address: str | None = None,
) -> object:
    """The ServingSystem for the scenario on the chosen backend (local, inprocess or ray)."""
    from coscale.runtime.system import ServingSystem

    max_batch = max(m.max_batch for m in loaded.models)  # type: ignore[attr-defined]
    extra: dict[str, object] = {}
    if address is not None and backend != "ray":
        raise CoscaleError(
            f"--address is for the Ray backend, and the backend is {backend!r}.",
            fix="add --backend ray, or drop --address.",
            code="invalid_input",
        )
    if backend == "ray":
        from coscale.backends.ray import RayBackend, import_ray, memory_from_profiles

        import_ray()  # not installed: a clear error now, before anything starts
        sources = {m.name: m.source for m in loaded.models}  # type: ignore[attr-defined]
        memory = memory_from_profiles((sources[n], p) for n, p in profiles.items())
        chosen: object = RayBackend(address=address, max_batch=max_batch, memory_bytes=memory)
        cluster = loaded.cluster  # type: ignore[attr-defined]
        if cluster.backend != "ray":  # the latency model adds Ray's per-batch overhead
            update = {"cluster": cluster.model_copy(update={"backend": "ray"})}
            loaded = loaded.model_copy(update=update)  # type: ignore[attr-defined]
        if address is not None:  # a Ray cluster: every pool of the scenario is served
            from coscale.backends.ray import cluster_view
            from coscale.catalog import load_catalog

            view, cores = cluster_view(loaded, load_catalog())
            extra = {"catalog": view, "cores": cores}
        # Connect now, on the main thread and before the HTTP server takes SIGTERM/SIGINT:
        # Ray's own fatal-signal handler then never sees the server's SIGTERM (it aborts
        # the process at exit when it does), and an unreachable cluster fails before serving.
        chosen.connect()  # type: ignore[attr-defined]
    elif backend == "local":
        from coscale.backends.local import LocalBackend

        chosen = LocalBackend(max_batch=max_batch)
    elif backend == "inprocess":
        from coscale.backends.inprocess import InProcessBackend

        chosen = InProcessBackend(max_batch=max_batch)
    else:
        raise CoscaleError(
            f"unknown backend {backend!r}.",
            fix="use --backend local (worker processes, the default), --backend inprocess "
            "or --backend ray.",
            code="invalid_input",
        )
    return ServingSystem.from_scenario(
        loaded,  # type: ignore[arg-type]
        preset=preset,
        backend=chosen,  # type: ignore[arg-type]
        profile=profiles,  # type: ignore[arg-type]
        **extra,  # type: ignore[arg-type]
    )


@app.command()
def load(
    url: Annotated[str, typer.Argument(help="Server base URL (loopback only).")],
    model: Annotated[str, typer.Option("--model", help="Model name as served.")],
    trace: Annotated[
        str | None, typer.Option("--trace", help="Open loop: replay this trace (alias or path).")
    ] = None,
    speedup: Annotated[
        float, typer.Option("--speedup", help="Trace: replay F times faster.")
    ] = 1.0,
    start: Annotated[
        float, typer.Option("--start", help="Trace: where to start, in trace seconds.")
    ] = 0.0,
    duration: Annotated[
        float | None,
        typer.Option("--duration", help="Seconds of load (trace: default to its end)."),
    ] = None,
    rate: Annotated[
        float | None, typer.Option("--rate", help="Open loop: Poisson arrivals per second.")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", help="Closed loop: N concurrent clients.")
    ] = None,
    items: Annotated[int, typer.Option("--items", help="Items per request.")] = 1,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds before the client gives up on a request.")
    ] = 30.0,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the run summary as JSON here.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of arrivals and payloads.")] = 0,
    max_requests: Annotated[
        int, typer.Option("--max-requests", help="Send at most this many requests.")
    ] = 200_000,
    slo_ms: Annotated[
        float | None, typer.Option("--slo-ms", help="Latency SLO (default: the server's).")
    ] = None,
    payload: Annotated[
        str | None,
        typer.Option(
            "--payload",
            help="Payload kind: digits-cnn, minilm or a model file "
            "(default: the model's source from GET /v1/models).",
        ),
    ] = None,
    wait_ready: Annotated[
        float, typer.Option("--wait-ready", help="Wait up to S seconds for /readyz first.")
    ] = 0.0,
    binary: Annotated[
        bool,
        typer.Option(
            "--binary",
            help="Send .npy bodies and read .npy answers (application/x-npy) instead of JSON.",
        ),
    ] = False,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            help="Tenant API key, sent as Authorization: Bearer KEY (prefer --key-env: "
            "a key on the command line shows in the process list).",
        ),
    ] = None,
    key_env: Annotated[
        str | None,
        typer.Option("--key-env", help="Read the tenant API key from this environment variable."),
    ] = None,
) -> None:
    """Send load to a coscale server (open loop: --trace or --rate; closed loop:
    --concurrency) and print the run summary measured at the client."""
    import asyncio
    import os

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from coscale.load import LoadConfig, LoadProgress, resolve_api_key, run_load
    from coscale.runtime.heap import freeze_startup_heap
    from coscale.telemetry.summary import summary_to_json

    config = LoadConfig.build(
        url=url,
        model=model,
        trace=trace,
        speedup=speedup,
        start_s=start,
        duration_s=duration,
        rate_rps=rate,
        concurrency=concurrency,
        items=items,
        timeout_s=timeout,
        seed=seed,
        max_requests=max_requests,
        slo_ms=slo_ms,
        payload=payload,
        wait_ready_s=wait_ready,
        binary=binary,
        api_key=resolve_api_key(api_key, key_env, os.environ),
    )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(f"load {config.mode} → {model}", total=None, counts="")

        def on_progress(p: LoadProgress) -> None:
            counts = (
                f"sent {p.sent:,}"
                + (f"/{p.planned:,}" if p.planned is not None else "")
                + f" · ok {p.completed:,} · 429 {p.rejected:,} · failed {p.failed:,}"
            )
            bar.update(
                task,
                completed=min(p.elapsed_s, p.duration_s),
                total=max(p.duration_s, 1e-9),
                counts=counts,
            )

        freeze_startup_heap()  # a full GC collection would delay the sends ~0.1 s
        result = asyncio.run(run_load(config, on_progress=on_progress))
    console.print(_load_table(result.summary))
    if json_path is not None:
        console.print(
            f"summary written to {summary_to_json(result.summary, json_path)}", soft_wrap=True
        )


def _load_table(summary: object) -> object:
    """Rich table of a client-side run summary."""
    from rich.table import Table

    from coscale.types import RunSummary

    assert isinstance(summary, RunSummary)
    s, x = summary, summary.extra
    table = Table(title=f"{x['mode']} load on {x['model']} at {x['url']} (measured at the client)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    lat = s.latency_ms
    lag = x.get("dispatch_lag_ms")
    rows = [
        (
            "requests (completed / failed / rejected / lost)",
            f"{s.requests:,} ({s.completed:,} / {s.failed:,} / {s.rejected:,} / {s.lost:,})",
        ),
        ("offered rate (req/s)", f"{x['offered_rps']:,.1f}"),
        ("throughput (req/s; items/s)", f"{s.throughput_rps:,.1f}; {x['items_throughput']:,.1f}"),
        (
            "latency p50 / p90 / p99 / mean (ms)",
            f"{lat.p50:,.2f} / {lat.p90:,.2f} / {lat.p99:,.2f} / {lat.mean:,.2f}",
        ),
        (
            "SLO attainment",
            f"{s.slo_attainment:.2%}"
            + (f" (SLO {x['slo_ms']:g} ms)" if x.get("slo_ms") else " (no SLO)"),
        ),
        ("reliability", f"{s.reliability:.4f}"),
        ("makespan (s)", f"{s.makespan_s:,.2f}"),
        ("errors", ", ".join(f"{k} {v:,}" for k, v in x["errors"].items()) or "none"),
    ]
    if x.get("accuracy") is not None:
        rows.append(("accuracy (labels)", f"{x['accuracy']:.4f}"))
    if lag:
        rows.append(
            (
                "dispatch lag p50 / p99 / max (ms)",
                f"{lag['p50']:.2f} / {lag['p99']:.2f} / {lag['max']:.2f}",
            )
        )
    rows.append(("connections", f"{x['connections']}"))
    if x.get("server"):
        srv = x["server"]
        rows.append(
            (
                "server: completed / cost $ / energy J",
                f"{srv.get('completed', 0):,} / {s.cost_usd:.6f} / {s.energy_j:,.1f}",
            )
        )
    if x.get("truncated"):
        rows.append(("note", "schedule cut at --max-requests"))
    for name, value in rows:
        table.add_row(name, value)
    return table


def _register_keys() -> None:
    from coscale.tenancy_cli import keys_app

    app.add_typer(keys_app, name="keys")


_register_keys()


@app.command()
def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="The quick bench (under 5 minutes on 2 cores).")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for report.html, the PNGs and results.json."),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write every result as JSON here.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Live model: minilm (default) or digits-cnn."),
    ] = None,
    parts: Annotated[
        str | None,
        typer.Option("--parts", help="Only these parts: live,cluster,scalability,fidelity."),
    ] = None,
) -> None:
    """Reproduce the paper's evaluation (Table 2, Figures 2 and 3) live and simulated."""
    from coscale.bench.cli import bench_command

    bench_command(quick, out, json_path, model, parts, console, err_console)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A folder `coscale bench --out` wrote.")],
) -> None:
    """Rebuild a bench report (report.html and figures) from its saved results.json."""
    from coscale.bench.cli import report_command

    report_command(run_dir, console)


def _register_deploy() -> None:
    from coscale.deploy.cli import app as deploy_app

    app.add_typer(deploy_app, name="deploy")


_register_deploy()


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
