"""Benchmark: simulated requests per wall-clock second, coscale's kernel vs SimPy, on M/M/c.

Both simulators run the *same* FIFO M/M/c queue on the *same* sample path: the
inter-arrival and service times are drawn from one seeded numpy generator in the same
order (gaps first, then service times), so both must produce identical finish times;
the script checks that before it reports a speed. Timings include drawing the random
numbers and collecting per-request finish times, for both.

SimPy is the idiomatic model: a source process that sleeps for each gap and starts one
customer process per request; each customer requests a ``simpy.Resource(capacity=c)``,
holds it for its service time, and releases it.

Usage (SimPy is a benchmark-only dependency: ``pip install simpy``)::

    python benchmarks/bench_kernel.py                       # c = 1,000 and 10,000, ρ = 0.8
    python benchmarks/bench_kernel.py --requests 500000 --servers 100 1000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from coscale.sim.mmc import MMCParams, run_mmc


def simpy_mmc(lam: float, mu: float, c: int, n: int, seed: int) -> np.ndarray:
    """Finish times of the same M/M/c sample path, simulated with SimPy."""
    import simpy

    rng = np.random.default_rng(seed)
    arrivals: list[float] = np.cumsum(rng.exponential(1.0 / lam, n)).tolist()
    services: list[float] = rng.exponential(1.0 / mu, n).tolist()
    env = simpy.Environment()
    servers = simpy.Resource(env, capacity=c)
    finish = [0.0] * n

    def customer(i: int) -> Generator[Any, Any, None]:
        with servers.request() as req:
            yield req
            yield env.timeout(services[i])
        finish[i] = env.now

    def source() -> Generator[Any, Any, None]:
        for i in range(n):
            yield env.timeout(arrivals[i] - env.now)
            env.process(customer(i))

    env.process(source())
    env.run()
    return np.asarray(finish)


def coscale_mmc(lam: float, mu: float, c: int, n: int, seed: int) -> np.ndarray:
    """Finish times from coscale's kernel-driven M/M/c."""
    return run_mmc(MMCParams(lam, mu, c, n), np.random.default_rng(seed)).finish


def _time(fn: Any, *args: Any) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def bench(servers: int, rho: float, n: int, seed: int, repeats: int) -> dict[str, Any]:
    mu = 1.0
    lam = rho * servers * mu
    ours = [_time(coscale_mmc, lam, mu, servers, n, seed) for _ in range(repeats)]
    theirs = [_time(simpy_mmc, lam, mu, servers, n, seed) for _ in range(repeats)]
    t_ours = min(t for t, _ in ours)
    t_simpy = min(t for t, _ in theirs)
    diff = float(np.max(np.abs(ours[0][1] - theirs[0][1])))
    if diff > 1e-6:
        raise SystemExit(f"the two simulators disagree (max |Δfinish| = {diff} s): not timing")
    return {
        "servers": servers,
        "utilization": rho,
        "requests": n,
        "coscale_s": t_ours,
        "simpy_s": t_simpy,
        "coscale_rps": n / t_ours,
        "simpy_rps": n / t_simpy,
        "speedup": t_simpy / t_ours,
        "max_finish_diff_s": diff,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--utilization", type=float, default=0.8)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="best of R runs each")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        import simpy
    except ImportError:
        print("SimPy is not installed: `pip install simpy` (benchmark-only).", file=sys.stderr)
        return 2
    rows = [
        bench(c, args.utilization, args.requests, args.seed, args.repeats) for c in args.servers
    ]
    header = f"{'servers':>8} {'ρ':>5} {'requests':>9} {'coscale req/s':>14} "
    header += f"{'SimPy req/s':>12} {'ratio':>7}"
    print(
        f"M/M/c, identical sample paths; Python {platform.python_version()}, "
        f"SimPy {simpy.__version__}, best of {args.repeats}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['servers']:>8,} {r['utilization']:>5.2f} {r['requests']:>9,} "
            f"{r['coscale_rps']:>14,.0f} {r['simpy_rps']:>12,.0f} {r['speedup']:>6.1f}×"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
