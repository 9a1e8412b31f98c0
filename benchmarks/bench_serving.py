"""Benchmark: live serving near the hardware's limit, and how thin the data plane is.

Part A, "near the hardware's limit" (goal: ≥ 0.9), per model:

1. The variant: the profile's best — the highest ``throughput`` among the variants of
   this machine's profile (``coscale profile MODEL``) whose fidelity meets the model's
   floor (digits-cnn 0.95, minilm 0.99), unless ``--variant``.
2. The offline figure, measured *in this run on the same cores*: the profiler
   (:func:`coscale.accel.profiler.profile_family`, a fresh child process, ``threads`` =
   the CPUs this process may use — what the server gives its one replica on this
   machine) on that variant; its ``throughput`` is ``max_b b / p50(b)`` items/s.
3. ``coscale serve`` in a subprocess, a fresh one for each ``--items`` value (what
   admission learned under one mix's overload would otherwise refuse the next mix's
   requests): a one-model scenario pinned to that variant
   (``variants: [v]``), the preset (default ``optimized-b``; ``--batching triton``
   overrides its batching policy), the profile measured in step 2 (``--profile``).
   ``--worker-cpus LIST``: the worker runs on those CPUs only (``COSCALE_WORKER_CPUS``)
   and the server and the load generator on the others, and step 2 measures the
   offline figure on those CPUs — the model's cores to itself, the front end beside it,
   as where the clients are other machines.
4. A short search (:func:`coscale.load.search_max_load`) for the highest open-loop
   Poisson rate (``coscale load``'s generator, in this process) whose p99 over *all*
   requests — a request not answered 200 counts as infinitely slow
   (:func:`coscale.load.served_quantile_ms`) — is within the model's SLO, i.e. at least
   99 % of the requests served within the SLO. From ``min(50, offline / items / 4)``
   req/s, doubling until a trial fails, then ``refine`` bisections on a log scale; each
   trial lasts ``trial_s`` seconds, 1 s apart; rates above 1.5 × the offline figure
   are not tried.
5. The figure: items/s completed at the best rate (measured at the client) ÷ the
   offline items/s. Each trial also records the CPU time (user + system, psutil) per
   completed request of the load generator (this process), of the server process
   and of its worker processes: on cores shared by all three, the workers' share of
   the CPU spent bounds the fraction reachable (a 64-item digits request costs its
   worker about as much CPU as the client and the server together spend on its HTTP).
   Requests carry ``--items`` items (several values may be given);
   JSON over HTTP costs the same per item whatever the model, so the ratio depends on
   how much compute an item carries (a digits image: a few µs; a MiniLM sentence: ms).

Part B, "thin" (goal: < 200 µs at the median): an in-process
:class:`~coscale.runtime.system.ServingSystem` (the one ``coscale serve`` runs, with its
worker processes, no HTTP) serving digits-cnn on the same variant; closed-loop clients
call ``system.infer`` one item at a time. From the server's own per-request records
(``system.telemetry.records()``), per completed request::

    added = (finish − arrival) − service_s

where ``service_s`` is the time its batch spent in ``Replica.infer`` (shared-memory
transport to the worker process, the model, the way back). ``added`` is what the
admission check, the queue, the batcher, the router and answering add — measured at
concurrency 1 (no queueing behind other requests) and 4 (for information: it then
includes waiting for the busy replica). It is measured twice: with ``triton``
batching at ``max_queue_delay_us = 0`` (work-conserving: dispatch as soon as the replica
is free — the mechanism's own cost) and with the preset's batching (``slo-aware``
deliberately waits while the SLO leaves slack, so its ``added`` is mostly a chosen
wait, not overhead). The HTTP layer's cost is reported for information as the client's
median latency minus the server's median over the same closed-loop run (difference of
medians, not a per-request figure).

Results are printed and, with ``--json``, written. Run it on a quiet machine: the
client, the server and the worker share the cores.

Usage::

    python benchmarks/bench_serving.py --quick
    python benchmarks/bench_serving.py --models digits-cnn,minilm --json serving.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from coscale.load import LoadConfig, LoadResult, run_load, search_max_load, served_quantile_ms

#: Per model: the served name, SLO (ms), fidelity floor, max batch, items per request
#: tried in the full run and in --quick.
MODELS: dict[str, dict[str, Any]] = {
    "digits-cnn": {
        "name": "digits",
        "slo_ms": 50.0,
        "floor": 0.95,
        "max_batch": 64,
        "items": (1, 64),
        "quick_items": (64,),
    },
    "minilm": {
        "name": "minilm",
        "slo_ms": 500.0,
        "floor": 0.99,
        "max_batch": 32,
        "items": (1,),
        "quick_items": (1,),
    },
}
#: Highest starting rate of the search (req/s).
START_RPS = 50.0
#: Highest rate tried, as a multiple of the offline figure (above 1 so that an offline
#: figure measured too low shows as a fraction > 1 rather than capping the search).
CEILING = 1.5
#: Seconds between search trials (the queue drains).
PAUSE_S = 1.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------ server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_scenario(
    folder: Path,
    source: str,
    *,
    variant: str | None,
    preset: str,
    batching: dict[str, Any] | None = None,
    max_batch: int | None = None,
) -> Path:
    """A one-model scenario on this machine (local-2vcpu, one node); ``max_batch``
    defaults to the model's in :data:`MODELS` (raised to fit larger requests)."""
    spec = MODELS[source]
    model: dict[str, Any] = {
        "name": spec["name"],
        "source": source,
        "slo_ms": spec["slo_ms"],
        "accuracy_floor": spec["floor"],
        "max_batch": max_batch or spec["max_batch"],
    }
    if variant is not None:
        model["variants"] = [variant]
    policies: dict[str, Any] = {"preset": preset}
    if batching is not None:
        policies["batching"] = batching
    scenario = {
        "name": f"bench-{spec['name']}",
        "seed": 0,
        "models": [model],
        "cluster": {"nodes": [{"type": "local-2vcpu", "count": 1}]},
        "policies": policies,
        "workload": {"generator": {"kind": "poisson", "rate_rps": 10, "duration_s": 60}},
    }
    path = folder / f"{spec['name']}-{preset}.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))
    return path


@dataclass
class CoscaleServer:
    """``coscale serve SCENARIO`` in a subprocess on a free loopback port."""

    scenario: Path
    profile: Path | None
    folder: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    #: extra environment variables of the server process (``--server-env``)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 300.0) -> None:
        self.port = self.port or free_port()
        args = [sys.executable, "-m", "coscale.cli", "serve", str(self.scenario)]
        args += ["--port", str(self.port)]
        if self.profile is not None:
            args += ["--profile", str(self.profile)]
        self.err = self.folder / f"serve-{self.port}.err"
        # cwd: the temporary folder, so the installed coscale is imported (not ./coscale)
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=self.err.open("wb"),
            cwd=self.folder,
            env={**os.environ, **self.env},
        )
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"coscale serve exited {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise RuntimeError(f"coscale serve not ready after {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.err.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)

    def __enter__(self) -> CoscaleServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------ search


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of process ``pid`` and of its live descendants."""
    proc = psutil.Process(pid)
    own = proc.cpu_times()
    children = 0.0
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            children += times.user + times.system
    return own.user + own.system, children


def client_cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


def cpu_per_request_ms(
    before: tuple[float, float, float], after: tuple[float, float, float], completed: int
) -> dict[str, float]:
    """CPU ms per completed request of the client, the server and its workers."""
    n = max(1, completed)
    client, server, workers = (1000.0 * (b - a) / n for a, b in zip(before, after, strict=True))
    total = client + server + workers
    return {
        "client_cpu_ms": round(client, 3),
        "server_cpu_ms": round(server, 3),
        "workers_cpu_ms": round(workers, 3),
        "workers_share": round(workers / total, 3) if total > 0 else 0.0,
    }


def passes_slo(result: LoadResult, slo_ms: float) -> bool:
    """≥ 99 % of the requests answered 200 within the SLO, none lost."""
    return result.summary.lost == 0 and served_quantile_ms(result.records, 0.99) <= slo_ms


def trial_row(rate: float, ok: bool, result: LoadResult) -> dict[str, Any]:
    s = result.summary
    return {
        **result.summary.extra.get("cpu", {}),
        "rate_rps": round(rate, 2),
        "passes": ok,
        "requests": s.requests,
        "completed": s.completed,
        "rejected": s.rejected,
        "failed": s.failed,
        "p50_ms": round(s.latency_ms.p50, 2),
        "p99_ms": round(s.latency_ms.p99, 2),
        "served_p99_ms": round(s.extra["served_p99_ms"], 2),
        "throughput_rps": round(s.throughput_rps, 2),
        "items_per_s": round(s.extra["items_throughput"], 1),
        "dispatch_lag_p99_ms": round((s.extra["dispatch_lag_ms"] or {}).get("p99", 0.0), 2),
        "errors": s.extra["errors"],
    }


async def find_limit(
    url: str,
    model: str,
    *,
    server_pid: int | None = None,
    items: int,
    slo_ms: float,
    offline_items_s: float,
    trial_s: float,
    refine: int,
    max_trials: int,
    binary: bool = False,
) -> dict[str, Any]:
    """The highest Poisson rate whose served p99 is within the SLO (module docstring)."""
    ceiling = CEILING * offline_items_s / items
    start = min(START_RPS, offline_items_s / items / 4)
    seeds = iter(range(1, 1000))

    async def trial(rate: float) -> LoadResult:
        config = LoadConfig(
            url=url,
            model=model,
            rate_rps=rate,
            duration_s=trial_s,
            items=items,
            seed=next(seeds),
            timeout_s=max(5.0, 20 * slo_ms / 1000.0),
            binary=binary,
        )
        before = _cpu_now(server_pid)
        result = await run_load(config)
        s = result.summary
        if server_pid is not None:
            s.extra["cpu"] = cpu_per_request_ms(before, _cpu_now(server_pid), s.completed)
        log(
            f"    {rate:9.1f} req/s × {items}: served p99 "
            f"{s.extra['served_p99_ms']:.1f} ms (SLO {slo_ms:g}), "
            f"{s.extra['items_throughput']:,.0f} items/s, {s.completed}/{s.requests} ok"
        )
        await asyncio.sleep(PAUSE_S)
        return result

    found = await search_max_load(
        trial,
        lambda r: passes_slo(r, slo_ms),
        start=start,
        refine=refine,
        max_trials=max_trials,
        ceiling=ceiling,
    )
    best: LoadResult | None = found.best_result
    served = best.summary.extra["items_throughput"] if best is not None else 0.0
    return {
        "cpu_at_best": best.summary.extra.get("cpu", {}) if best is not None else {},
        "items_per_request": items,
        "body": "npy" if binary else "json",
        "best_rate_rps": found.best,
        "served_items_per_s": served,
        "fraction_of_offline": served / offline_items_s if offline_items_s > 0 else 0.0,
        "trials": [trial_row(x, ok, r) for x, ok, r in found.trials],
    }


def _cpu_now(server_pid: int | None) -> tuple[float, float, float]:
    if server_pid is None:
        return (0.0, 0.0, 0.0)
    server, workers = cpu_seconds(server_pid)
    return (client_cpu_seconds(), server, workers)


# ------------------------------------------------------------------------------ part A


def server_env(args: argparse.Namespace) -> dict[str, str]:
    """``--server-env NAME=VALUE`` pairs as a dict (a malformed one exits 2)."""
    out = {}
    for item in args.server_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--server-env {item!r}: expected NAME=VALUE")
        out[name] = value
    return out


def pick_variant(source: str, given: str | None) -> tuple[str, Path | None]:
    """The variant to pin (``given``, else the profile's best meeting the floor)."""
    from coscale.catalog.profiles import default_profile_path, load_profile

    if given:
        return given, None
    path = default_profile_path(source)
    if not path.is_file():
        raise SystemExit(
            f"no profile of {source} for this machine at {path}: run `coscale profile "
            f"{source}` first, or pass --variant."
        )
    profile = load_profile(path)
    floor = MODELS[source]["floor"]
    ok = [v for v in profile.variants if v.fidelity >= floor]
    best = max(ok, key=lambda v: v.throughput)
    return best.name, path


def offline_throughput(
    source: str, variant: str, *, quick: bool, folder: Path
) -> tuple[float, Path]:
    """The profiler's throughput of ``variant`` measured now; the profile file written."""
    from coscale.accel.profiler import profile_family
    from coscale.accel.zoo import get_family
    from coscale.catalog.profiles import save_profile

    family = get_family(source)
    started = time.perf_counter()
    result = profile_family(family, variants=[variant], quick=quick)
    path = save_profile(result, folder / f"{source}-profile.json")
    figure = result.variant(variant)
    log(
        f"  offline ({time.perf_counter() - started:.0f} s, {result.threads} threads): "
        f"{variant} {figure.throughput:,.0f} items/s at batch {figure.best_batch}"
    )
    return figure.throughput, path


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Any:
    """Run the block on ``cpus`` only (this process and the processes it starts meanwhile
    inherit the mask); None: unchanged. The previous mask is restored after."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def split_cpus(worker_cpus: str | None) -> tuple[set[int] | None, set[int] | None]:
    """``--worker-cpus``: (the worker's CPUs, the others this process may use — the front
    end's: the server's event loop and the load generator); (None, None) when not given."""
    if not worker_cpus:
        return None, None
    from coscale.backends.local import parse_cpu_list

    worker = set(parse_cpu_list(worker_cpus, name="--worker-cpus"))
    front = set(os.sched_getaffinity(0)) - worker
    if not front or not worker <= set(os.sched_getaffinity(0)):
        raise SystemExit(
            f"--worker-cpus {worker_cpus}: must be a proper subset of this process's CPUs "
            f"{sorted(os.sched_getaffinity(0))} (the rest run the server and the client)."
        )
    return worker, front


def bench_limit(source: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    spec = MODELS[source]
    variant, _ = pick_variant(source, args.variant)
    worker_cpus, front_cpus = split_cpus(args.worker_cpus)
    log(f"[A] {source}: variant {variant} (load average {load_average():.1f})")
    with pinned(worker_cpus):
        offline, profile = offline_throughput(source, variant, quick=args.quick, folder=folder)
    batching = {"name": args.batching} if args.batching else None
    items_list = args.items or (spec["quick_items"] if args.quick else spec["items"])
    scenario = write_scenario(
        folder,
        source,
        variant=variant,
        preset=args.preset,
        batching=batching,
        max_batch=max(spec["max_batch"], *items_list),
    )
    rows = []
    env = server_env(args)
    if worker_cpus is not None:
        env["COSCALE_WORKER_CPUS"] = ",".join(map(str, sorted(worker_cpus)))
        log(f"  worker on CPUs {sorted(worker_cpus)}, server and client on {sorted(front_cpus)}")
    for items in items_list:  # a fresh server each: no margin learned on another mix
        with pinned(front_cpus), CoscaleServer(scenario, profile, folder, env=env) as server:
            log(f"  serving at {server.url}")
            warm = LoadConfig(url=server.url, model=spec["name"], concurrency=2, duration_s=2.0)
            asyncio.run(run_load(warm))
            rows.append(
                asyncio.run(
                    find_limit(
                        server.url,
                        spec["name"],
                        server_pid=server.proc.pid if server.proc is not None else None,
                        items=items,
                        slo_ms=spec["slo_ms"],
                        offline_items_s=offline,
                        trial_s=args.trial_s,
                        refine=args.refine,
                        max_trials=args.max_trials,
                        binary=args.binary,
                    )
                )
            )
    return {
        "model": source,
        "variant": variant,
        "preset": args.preset,
        "batching": args.batching or "the preset's",
        "slo_ms": spec["slo_ms"],
        "threads": len(worker_cpus) if worker_cpus is not None else usable_cpus(),
        "worker_cpus": sorted(worker_cpus) if worker_cpus is not None else None,
        "front_cpus": sorted(front_cpus) if front_cpus is not None else None,
        "offline_items_per_s": offline,
        "results": rows,
    }


# ------------------------------------------------------------------------------ part B


async def _closed(system: Any, model: str, images: list[list[int]], clients: int, n: int) -> None:
    count = 0

    async def client() -> None:
        nonlocal count
        while count < n:
            i = count
            count += 1
            await system.infer(model, [images[i % len(images)]])

    await asyncio.gather(*(client() for _ in range(clients)))


def _added_us(records: list[Any]) -> dict[str, float]:
    added = [
        (r.finish - r.arrival - r.service_s) * 1e6
        for r in records
        if r.outcome.value == "completed" and math.isfinite(r.service_s)
    ]
    queue = [r.queue_s * 1e6 for r in records if math.isfinite(r.queue_s)]
    service = [r.service_s * 1e6 for r in records if math.isfinite(r.service_s)]
    q = statistics.quantiles(added, n=10) if len(added) >= 10 else [math.nan] * 9
    return {
        "requests": len(added),
        "added_median_us": statistics.median(added) if added else math.nan,
        "added_p90_us": q[8],
        "queue_median_us": statistics.median(queue) if queue else math.nan,
        "service_median_us": statistics.median(service) if service else math.nan,
    }


async def _thin_one(scenario: Path, profile: Path | None, n: int) -> dict[str, Any]:
    from sklearn.datasets import load_digits

    from coscale.config import load_scenario
    from coscale.runtime.system import ServingSystem

    images = load_digits().data.astype(int).tolist()
    loaded = load_scenario(scenario)
    system = ServingSystem.from_scenario(loaded, profile=profile)
    out: dict[str, Any] = {"batching": system.policies.bundle.batching}
    async with system:
        await _closed(system, "digits", images, 1, 50)  # warm-up
        for clients in (1, 4):
            before = len(system.telemetry.records())
            await _closed(system, "digits", images, clients, n)
            records = system.telemetry.records()[before:]
            out[f"concurrency_{clients}"] = _added_us(records)
    return out


async def _http_layer(url: str, n_s: float) -> dict[str, float]:
    before = httpx.get(url + "/v1/stats").json()
    config = LoadConfig(url=url, model="digits", concurrency=1, duration_s=n_s)
    result = await run_load(config)
    after = httpx.get(url + "/v1/stats").json()
    return {
        "client_p50_ms": result.summary.latency_ms.p50,
        "server_p50_ms_cumulative": after["latency_ms"]["p50"],
        "server_requests_before": before["completed"],
        "requests": result.summary.requests,
    }


def bench_thin(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    variant, _ = pick_variant("digits-cnn", args.variant)
    n = 300 if args.quick else 2000
    log(f"[B] thin: digits-cnn {variant}, {n} requests per concurrency level")
    out: dict[str, Any] = {"variant": variant}
    from coscale.catalog.profiles import default_profile_path

    profile = default_profile_path("digits-cnn") if args.variant is None else None
    triton = {"name": "triton", "params": {"max_queue_delay_us": 0.0}}
    for label, batching in (("work_conserving", triton), ("preset", None)):
        scenario = write_scenario(
            folder, "digits-cnn", variant=variant, preset=args.preset, batching=batching
        )
        scenario = scenario.rename(folder / f"thin-{label}.yaml")
        out[label] = asyncio.run(_thin_one(scenario, profile, n))
        c1 = out[label]["concurrency_1"]
        log(
            f"  {label} ({out[label]['batching']}): added median {c1['added_median_us']:.0f} µs, "
            f"p90 {c1['added_p90_us']:.0f} µs; service median {c1['service_median_us']:.0f} µs"
        )
    scenario = write_scenario(
        folder, "digits-cnn", variant=variant, preset=args.preset, batching=triton
    )
    with CoscaleServer(scenario, profile, folder, env=server_env(args)) as server:
        fresh = asyncio.run(_http_layer(server.url, 3.0 if args.quick else 10.0))
    fresh["http_layer_ms"] = fresh["client_p50_ms"] - fresh["server_p50_ms_cumulative"]
    out["http"] = fresh
    log(f"  HTTP layer (client p50 − server p50): {fresh['http_layer_ms']:.2f} ms")
    return out


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short trials, digits-cnn only")
    parser.add_argument("--models", default=None, help="comma-separated: digits-cnn,minilm")
    parser.add_argument("--variant", default=None, help="pin this variant instead")
    parser.add_argument("--preset", default="optimized-b")
    parser.add_argument(
        "--batching", default=None, help="part A: override the preset's batching policy"
    )
    parser.add_argument("--items", default=None, help="items per request, e.g. 1,64")
    parser.add_argument(
        "--binary", action="store_true", help="part A: .npy bodies and answers instead of JSON"
    )
    parser.add_argument("--trial-s", type=float, default=None, help="seconds per trial")
    parser.add_argument("--refine", type=int, default=None, help="bisection steps")
    parser.add_argument("--max-trials", type=int, default=None)
    parser.add_argument(
        "--worker-cpus",
        default=None,
        metavar="LIST",
        help="part A: pin the model's worker to these CPUs (e.g. 0) and the server and the "
        "load generator to the others; the offline figure is measured on these CPUs",
    )
    parser.add_argument("--skip-limit", action="store_true")
    parser.add_argument("--skip-thin", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable of the server process only (not of the offline "
        "measurement), e.g. COSCALE_ORT_SPINNING=0; repeatable",
    )
    args = parser.parse_args(argv)
    args.items = tuple(int(x) for x in args.items.split(",")) if args.items else None
    args.trial_s = args.trial_s or (3.0 if args.quick else 10.0)
    args.refine = args.refine if args.refine is not None else (2 if args.quick else 4)
    args.max_trials = args.max_trials or (8 if args.quick else 14)
    models = (
        args.models.split(",")
        if args.models
        else (["digits-cnn"] if args.quick else ["digits-cnn", "minilm"])
    )
    results: dict[str, Any] = {
        "load_average_start": load_average(),
        "cpus": usable_cpus(),
        "quick": args.quick,
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        folder = Path(tmp)
        if not args.skip_limit:
            results["limit"] = [bench_limit(m, args, folder) for m in models]
        if not args.skip_thin:
            results["thin"] = bench_thin(args, folder)
    results["load_average_end"] = load_average()
    results["wall_s"] = time.perf_counter() - started
    print_report(results)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"written {args.json}")
    return 0


def print_report(results: dict[str, Any]) -> None:
    print(
        f"\nserving benchmark ({results['cpus']} CPUs, load average "
        f"{results['load_average_start']:.1f} → {results['load_average_end']:.1f}, "
        f"{results['wall_s']:.0f} s)"
    )
    for entry in results.get("limit", []):
        print(
            f"\nA. near the limit: {entry['model']} {entry['variant']} ({entry['preset']}, "
            f"batching: {entry['batching']}), "
            f"SLO {entry['slo_ms']:g} ms, offline {entry['offline_items_per_s']:,.0f} items/s "
            f"({entry['threads']} threads)"
            + (
                f", worker on CPUs {entry['worker_cpus']}, server and client on "
                f"{entry['front_cpus']}"
                if entry.get("worker_cpus")
                else ""
            )
        )
        for row in entry["results"]:
            rate = row["best_rate_rps"]
            text = "no rate met the SLO" if rate is None else f"{rate:,.1f} req/s"
            print(
                f"   {row.get('body', 'json')} × {row['items_per_request']:>4} items: best {text}, "
                "served "
                f"{row['served_items_per_s']:,.0f} items/s = "
                f"{row['fraction_of_offline']:.3f} of offline (goal ≥ 0.9)"
            )
            cpu = row.get("cpu_at_best") or {}
            if cpu:
                print(
                    f"      CPU per request at that rate: client {cpu['client_cpu_ms']:.2f} ms, "
                    f"server {cpu['server_cpu_ms']:.2f} ms, workers {cpu['workers_cpu_ms']:.2f} "
                    f"ms (the workers' share: {cpu['workers_share']:.0%})"
                )
    thin = results.get("thin")
    if thin:
        print(f"\nB. thin: digits-cnn {thin['variant']}, added = e2e − service in the server")
        for label in ("work_conserving", "preset"):
            part = thin[label]
            for c in (1, 4):
                row = part[f"concurrency_{c}"]
                print(
                    f"   {label:15} ({part['batching']:10}) concurrency {c}: added median "
                    f"{row['added_median_us']:8.0f} µs, p90 {row['added_p90_us']:8.0f} µs "
                    f"(goal < 200 µs at concurrency 1, work-conserving); service median "
                    f"{row['service_median_us']:.0f} µs"
                )
        http = thin["http"]
        print(
            f"   HTTP layer (client p50 − server p50, closed loop, 1 client): "
            f"{http['http_layer_ms']:.2f} ms"
        )


if __name__ == "__main__":
    sys.exit(main())
