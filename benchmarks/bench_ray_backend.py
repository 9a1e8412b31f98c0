"""Benchmark: what a batch costs through the Ray backend, over the local backend.

One ``digits-cnn`` replica of the same variant (``onnx-fp32``, 1 thread) on each backend,
side by side in one run on a local Ray of 2 CPUs:

* **local**: :class:`~coscale.backends.local.LocalBackend` — a worker process, batches
  through shared memory;
* **ray**: :class:`~coscale.backends.ray.RayBackend` — a Ray actor, batches through Ray's
  object store (inline below 100 KiB).

For each batch size (1, 8, 32 by default) the same inputs go to both replicas, in
alternating blocks of :data:`BLOCK` batches so that the shared machine's noise hits both
alike; the outputs are asserted **identical** (bit for bit). Each ``infer`` is timed with
``time.perf_counter`` (the wall time the data plane waits). Reported per batch size:
median and p99 of each backend, and the *overhead* = ray − local of the paired medians
(per batch, and per item = per request of one item), with the ratio of the medians.

The overhead at batch 1 is what the simulator adds per batch for a scenario with
``cluster.backend: ray`` (:data:`coscale.sim.profiles.BACKEND_OVERHEAD_S`).

Usage::

    python benchmarks/bench_ray_backend.py
    python benchmarks/bench_ray_backend.py --rounds 400 --sizes 1,8,32,64 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from coscale.accel.zoo import get_family
from coscale.backends.base import ReplicaSpec
from coscale.backends.local import LocalBackend
from coscale.backends.ray import RayBackend, import_ray, local_init_options
from coscale.catalog import load_catalog

VARIANT = "onnx-fp32"
BLOCK = 25  # batches on one backend before switching to the other


def spec(replica_id: str) -> ReplicaSpec:
    return ReplicaSpec(replica_id, "digits", "digits-cnn", VARIANT, "local-2vcpu", threads=1)


def stats_ms(samples: list[float]) -> dict[str, float]:
    arr = np.asarray(samples) * 1000.0
    return {
        "median": float(np.median(arr)),
        "p99": float(np.percentile(arr, 99)),
        "mean": float(arr.mean()),
        "n": int(arr.size),
    }


async def measure(rounds: int, sizes: list[int]) -> dict[str, Any]:
    family = get_family("digits-cnn")
    local, on_ray = LocalBackend(max_batch=max(sizes)), RayBackend(max_batch=max(sizes))
    started = time.perf_counter()
    a, b = await asyncio.gather(local.start_replica(spec("l")), on_ray.start_replica(spec("r")))
    start_s = {"local": a.info["start_s"], "ray": b.info["start_s"]}
    results: dict[str, Any] = {}
    try:
        for size in sizes:
            batches = [family.profiling_batch(size, None, seed) for seed in range(8)]
            for x in batches:  # warm both, and check outputs are identical
                assert np.array_equal(await a.infer(x), await b.infer(x)), "outputs differ"
            times: dict[str, list[float]] = {"local": [], "ray": []}
            for start in range(0, rounds, BLOCK):
                for name, replica in (("local", a), ("ray", b)):
                    for i in range(start, min(rounds, start + BLOCK)):
                        x = batches[i % len(batches)]
                        t0 = time.perf_counter()
                        out = await replica.infer(x)
                        times[name].append(time.perf_counter() - t0)
                        assert out.shape[0] == size
            lo, ra = stats_ms(times["local"]), stats_ms(times["ray"])
            results[str(size)] = {
                "local_ms": lo,
                "ray_ms": ra,
                "overhead_ms_per_batch": ra["median"] - lo["median"],
                "overhead_ms_p99": ra["p99"] - lo["p99"],
                "overhead_ms_per_item": (ra["median"] - lo["median"]) / size,
                "ratio": ra["median"] / lo["median"],
                "identical_outputs": True,
            }
    finally:
        await asyncio.gather(local.shutdown(), on_ray.shutdown())
    return {
        "benchmark": "ray-backend-overhead",
        "model": "digits-cnn",
        "variant": VARIANT,
        "rounds": rounds,
        "start_s": start_s,
        "wall_s": time.perf_counter() - started,
        "machine": platform.platform(),
        "by_batch": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300, help="batches per size and backend")
    parser.add_argument("--sizes", default="1,8,32", help="batch sizes, comma-separated")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    get_family("digits-cnn").build(VARIANT, threads=1)  # train/cache the model once, here
    ray = import_ray()
    ray.init(**local_init_options(2, load_catalog()))
    try:
        report = asyncio.run(measure(args.rounds, sizes))
    finally:
        ray.shutdown()
    print(f"digits-cnn {VARIANT}, {args.rounds} batches per size and backend, interleaved")
    print(
        f"replica start: local {report['start_s']['local']:.2f} s, "
        f"ray {report['start_s']['ray']:.2f} s"
    )
    header = "batch | local p50/p99 ms | ray p50/p99 ms | overhead/batch ms | /item ms | ratio"
    print(header)
    for size, r in report["by_batch"].items():
        lo, ra = r["local_ms"], r["ray_ms"]
        print(
            f"{size:>5} | {lo['median']:.3f} / {lo['p99']:.3f} | {ra['median']:.3f} / "
            f"{ra['p99']:.3f} | {r['overhead_ms_per_batch']:.3f} | "
            f"{r['overhead_ms_per_item']:.4f} | {r['ratio']:.2f}×"
        )
    print("outputs identical between local and ray: yes (asserted for every size)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"written to {args.json}")


if __name__ == "__main__":
    main()
