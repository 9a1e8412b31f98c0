"""Benchmark: coscale ``optimized-b`` against Ray Serve with ``@serve.batch`` defaults.

The same model, the same trace segment, the same load generator, in one run:

* **Ray Serve** (what users pick today): one deployment, one replica, the model's
  ``fp32-eager`` variant (coscale's own model code: ``family.parse_items`` →
  ``variant.predict`` → ``family.render_outputs``), behind ``@serve.batch`` with its
  defaults (``max_batch_size=10``, ``batch_wait_timeout_s=0.01`` — read from the
  installed Ray and printed), every other Serve setting at its default too: one replica
  reserving 1 CPU, for which Ray sets ``OMP_NUM_THREADS=1`` (the model runs that many
  intra-op threads; ``--ray-cpus 2`` gives it both cores, as coscale's one replica has
  here), ``max_ongoing_requests=5``. ``ray.init(num_cpus=2, include_dashboard=False)``.
  The route is ``/v1/models/{name}/infer`` with coscale's body, so the load generator
  sends the very same bytes to both.
* **coscale**: ``coscale serve`` (subprocess) of a one-model scenario with the
  ``optimized-b`` preset (predictive allocation, earliest-completion routing, slo-aware
  batching, cheapest-feasible variant from this machine's profile, deadline admission).

Ray runs first for every model and is shut down before coscale starts, so neither
competes with the other for the cores. Per model and system:

1. **Replay**: the trace segment (``--trace``, default the bursty ``azure-code``; window
   ``[start, start + window)`` in trace seconds, default start 180 s: the trace's first
   minute holds 63 requests and the next two none) at the model's reference speed-up
   (digits ×10, MiniLM ×0.5 — slowed down: the trace's prompts are mostly over 256
   tokens, so every MiniLM request is a 256-token text),
   open loop (:func:`coscale.load.run_load`): p50, p99 (completed requests), served p99
   (all requests, an unanswered one counting as infinitely slow), throughput, SLO
   attainment, errors. MiniLM requests are real sentences as long as the trace's token
   counts (clamped to 256); digits requests are real 8×8 images, one per request.
2. **Throughput at the SLO**: the same segment replayed faster and faster — a short
   search (:func:`coscale.load.search_max_load`) over the speed-up, from the reference
   one, doubling until the served p99 exceeds the SLO, then bisections — and the
   throughput (completed / makespan) of the fastest replay whose served p99 is within
   the SLO (i.e. ≥ 99 % of the requests served within the SLO).

Figures are printed side by side (ratios coscale / Ray Serve) and, with ``--json``,
written. Ray Serve is a benchmark-only dependency (``pip install "ray[serve]"``, the
``bench`` extra); coscale never imports it.

Usage::

    python benchmarks/bench_rayserve.py --quick
    python benchmarks/bench_rayserve.py --models minilm --json rayserve.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serving import (
    MODELS,
    CoscaleServer,
    free_port,
    load_average,
    log,
    passes_slo,
    usable_cpus,
    write_scenario,
)

from coscale.load import LoadConfig, LoadResult, run_load, search_max_load

#: Per model: trace window (trace seconds) and the reference speed-up, full and --quick.
SEGMENTS: dict[str, dict[str, tuple[float, float]]] = {
    "digits-cnn": {"full": (600.0, 10.0), "quick": (120.0, 10.0)},
    "minilm": {"full": (120.0, 0.5), "quick": (20.0, 0.5)},
}
BASELINE_VARIANT = "fp32-eager"


# ------------------------------------------------------------------------------ Ray Serve


def ray_batch_defaults() -> dict[str, Any]:
    import inspect

    from ray import serve

    params = inspect.signature(serve.batch).parameters
    return {k: params[k].default for k in ("max_batch_size", "batch_wait_timeout_s")}


def ray_app(source: str, cpus: int | None) -> Any:
    """A Ray Serve application serving ``source``'s fp32 variant behind @serve.batch.

    ``cpus``: the replica's ``num_cpus`` (None: Serve's default, 1). Ray sets the
    replica's ``OMP_NUM_THREADS`` to it, and the model runs that many intra-op threads.
    """
    from ray import serve
    from starlette.requests import Request

    options = {} if cpus is None else {"ray_actor_options": {"num_cpus": cpus}}

    @serve.deployment(**options)
    class Model:
        def __init__(self, source: str, variant: str) -> None:
            import os

            from coscale.accel.zoo import get_family

            threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
            self.family = get_family(source)
            self.model = self.family.build(variant, threads=threads)

        @serve.batch  # the defaults: max_batch_size=10, batch_wait_timeout_s=0.01
        async def infer(self, requests: list[list[Any]]) -> list[list[dict[str, Any]]]:
            flat = [item for items in requests for item in items]
            outputs = self.family.render_outputs(self.model.predict(self.family.parse_items(flat)))
            out, k = [], 0
            for items in requests:
                out.append(outputs[k : k + len(items)])
                k += len(items)
            return out

        async def __call__(self, request: Request) -> dict[str, Any]:
            body = await request.json()
            return {"outputs": await self.infer(body["inputs"])}

    return Model.bind(source, BASELINE_VARIANT)


class RayServe:
    """Ray (2 CPUs, no dashboard) with Serve's HTTP proxy on a loopback port."""

    def __init__(self) -> None:
        import ray
        from ray import serve

        self.port = free_port()
        started = time.perf_counter()
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        log(f"  ray + serve started in {time.perf_counter() - started:.0f} s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def deploy(self, source: str, name: str, cpus: int | None) -> None:
        from ray import serve

        started = time.perf_counter()
        serve.run(ray_app(source, cpus), name=name, route_prefix=f"/v1/models/{name}/infer")
        log(f"  deployed {source} ({BASELINE_VARIANT}) in {time.perf_counter() - started:.0f} s")

    def undeploy(self, name: str) -> None:
        from ray import serve

        serve.delete(name)

    def close(self) -> None:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()


# ------------------------------------------------------------------------------ runs


def summary_row(result: LoadResult) -> dict[str, Any]:
    s = result.summary
    return {
        "requests": s.requests,
        "completed": s.completed,
        "failed": s.failed,
        "rejected": s.rejected,
        "lost": s.lost,
        "p50_ms": s.latency_ms.p50,
        "p99_ms": s.latency_ms.p99,
        "served_p99_ms": s.extra["served_p99_ms"],
        "throughput_rps": s.throughput_rps,
        "goodput_rps": s.slo_attainment * s.requests / s.makespan_s if s.makespan_s else 0.0,
        "offered_rps": s.extra["offered_rps"],
        "slo_attainment": s.slo_attainment,
        "errors": s.extra["errors"],
        "dispatch_lag_p99_ms": (s.extra["dispatch_lag_ms"] or {}).get("p99", 0.0),
        "accuracy": s.extra.get("accuracy"),
    }


async def measure(
    url: str, source: str, *, system: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Replay at the reference speed-up, then search the fastest replay within the SLO."""
    spec = MODELS[source]
    window, speedup = SEGMENTS[source]["quick" if args.quick else "full"]
    seeds = iter(range(1, 1000))

    def config(factor: float) -> LoadConfig:
        return LoadConfig(
            url=url,
            model=spec["name"],
            trace=args.trace,
            start_s=args.start,
            speedup=factor,
            duration_s=window / factor,
            payload=source,
            slo_ms=spec["slo_ms"],
            timeout_s=max(10.0, 20 * spec["slo_ms"] / 1000.0),
            seed=next(seeds),
            preset=system,
            scenario=f"{args.trace}[{args.start:g}+{window:g}s]",
        )

    warm = LoadConfig(
        url=url,
        model=spec["name"],
        concurrency=2,
        duration_s=3.0,
        payload=source,
        slo_ms=spec["slo_ms"],
    )
    await run_load(warm)

    async def trial(factor: float) -> LoadResult:
        result = await run_load(config(factor))
        s = result.summary
        log(
            f"    {system:9} ×{factor:7.2f}: {s.requests} requests, served p99 "
            f"{s.extra['served_p99_ms']:.0f} ms (SLO {spec['slo_ms']:g}), "
            f"{s.throughput_rps:.1f} req/s, errors {s.extra['errors']}"
        )
        await asyncio.sleep(1.0)
        return result

    replay = await trial(speedup)
    done = {speedup: replay}  # the search starts where the replay was: reuse it

    async def cached(factor: float) -> LoadResult:
        return done.pop(factor) if factor in done else await trial(factor)

    found = await search_max_load(
        cached,
        lambda r: passes_slo(r, spec["slo_ms"]),
        start=speedup,
        refine=1 if args.quick else 3,
        max_trials=3 if args.quick else 10,
    )
    best = found.best_result
    return {
        "system": system,
        "speedup": speedup,
        "window_trace_s": window,
        "replay": summary_row(replay),
        "slo_speedup": found.best,
        "throughput_at_slo_rps": best.summary.throughput_rps if best is not None else 0.0,
        "at_slo": summary_row(best) if best is not None else None,
        "trials": [{"speedup": x, "passes": ok, **summary_row(r)} for x, ok, r in found.trials],
    }


def run_ray(models: list[str], args: argparse.Namespace) -> dict[str, Any]:
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as exc:
        return {"error": f"Ray Serve is not installed ({exc}); pip install 'ray[serve]'"}
    out: dict[str, Any] = {"batch_defaults": ray_batch_defaults()}
    log(f"[ray] @serve.batch defaults {out['batch_defaults']}")
    ray_serve = RayServe()
    try:
        for source in models:
            name = MODELS[source]["name"]
            ray_serve.deploy(source, name, args.ray_cpus)
            try:
                out[source] = asyncio.run(
                    measure(ray_serve.url, source, system="rayserve", args=args)
                )
            finally:
                ray_serve.undeploy(name)
    finally:
        ray_serve.close()
    return out


def run_coscale(models: list[str], args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for source in models:
        scenario = write_scenario(folder, source, variant=None, preset=args.preset)
        log(f"[coscale] {source} ({args.preset})")
        with CoscaleServer(scenario, None, folder) as server:
            import httpx

            info = httpx.get(server.url + "/v1/models").json()["models"][0]
            out[source] = asyncio.run(measure(server.url, source, system=args.preset, args=args))
            out[source]["variants"] = info["variants"]
    return out


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short segments, few trials")
    parser.add_argument("--models", default="digits-cnn,minilm")
    parser.add_argument("--trace", default="azure-code")
    parser.add_argument(
        "--start", type=float, default=180.0, help="trace seconds (azure-code is idle 60-180)"
    )
    parser.add_argument("--preset", default="optimized-b")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument(
        "--ray-cpus",
        type=int,
        default=None,
        help="num_cpus of the Ray replica (default: Serve's, 1 → OMP_NUM_THREADS=1)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    results: dict[str, Any] = {
        "cpus": usable_cpus(),
        "load_average_start": load_average(),
        "quick": args.quick,
        "trace": args.trace,
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-rayserve-") as tmp:
        if not args.skip_ray:
            results["rayserve"] = run_ray(models, args)
        results["coscale"] = run_coscale(models, args, Path(tmp))
    results["load_average_end"] = load_average()
    results["wall_s"] = time.perf_counter() - started
    print_report(results, models)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"written {args.json}")
    return 0


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or not math.isfinite(a) or not math.isfinite(b):
        return "-"
    return f"{a / b:.2f}×"


def print_report(results: dict[str, Any], models: list[str]) -> None:
    ray = results.get("rayserve", {})
    cs = results.get("coscale", {})
    print(
        f"\ncoscale vs Ray Serve ({results['cpus']} CPUs, trace {results['trace']}, load "
        f"average {results['load_average_start']:.1f} → {results['load_average_end']:.1f}, "
        f"{results['wall_s']:.0f} s)"
    )
    if "error" in ray:
        print(f"   Ray Serve: {ray['error']}")
    elif ray:
        print(f"   Ray Serve @serve.batch defaults: {ray['batch_defaults']}")
    for source in models:
        r, c = ray.get(source), cs.get(source)
        slo = MODELS[source]["slo_ms"]
        print(f"\n{source} (SLO {slo:g} ms)")
        header = f"   {'':34}{'Ray Serve fp32':>18}{'coscale':>18}{'coscale/Ray':>13}"
        print(header)
        rows = [
            ("variant", BASELINE_VARIANT, ",".join((c or {}).get("variants", ["-"])), None),
        ]
        if r and c:
            rr, cr = r["replay"], c["replay"]
            rows += [
                (f"replay ×{c['speedup']:g}: p50 ms", rr["p50_ms"], cr["p50_ms"], "lower"),
                ("replay: p99 ms", rr["p99_ms"], cr["p99_ms"], "lower"),
                ("replay: served p99 ms", rr["served_p99_ms"], cr["served_p99_ms"], "lower"),
                ("replay: throughput req/s", rr["throughput_rps"], cr["throughput_rps"], "higher"),
                ("replay: SLO attainment", rr["slo_attainment"], cr["slo_attainment"], "higher"),
                (
                    "replay: goodput (within SLO) req/s",
                    rr["goodput_rps"],
                    cr["goodput_rps"],
                    "higher",
                ),
                ("fastest replay within SLO ×", r["slo_speedup"], c["slo_speedup"], "higher"),
                (
                    "throughput at the SLO req/s",
                    r["throughput_at_slo_rps"],
                    c["throughput_at_slo_rps"],
                    "higher",
                ),
            ]
        for label, a, b, _ in rows:
            fa = a if isinstance(a, str) else ("-" if a is None else f"{a:,.2f}")
            fb = b if isinstance(b, str) else ("-" if b is None else f"{b:,.2f}")
            ratio = "" if isinstance(a, str) else _ratio(b, a)
            print(f"   {label:34}{fa:>18}{fb:>18}{ratio:>13}")


if __name__ == "__main__":
    sys.exit(main())
