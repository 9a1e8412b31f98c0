"""Benchmark: the load generator's own CPU per request, lean client against httpx.

The load generator shares the two cores with the server it measures, so its CPU per
request is taken from the server. This runs ``coscale serve`` (digits-cnn, ``optimized-b``,
in a subprocess, as ``bench_serving.py`` does) and offers it the same open-loop Poisson
load (``--rate`` req/s for ``--seconds``, ``--items`` items per request) with each client
in turn — ``lean`` (:mod:`coscale.loadclient`) and ``httpx`` — alternating for
``--rounds`` rounds, so that drift of the machine hits both alike. Per trial it records,
from psutil: CPU ms per completed request of this process (the client), of the server
process and of its workers; and the client-measured p50/p99 and requests completed.
The figure: the ratio of the clients' median CPU per request (httpx / lean).

Usage::

    python benchmarks/bench_load_client.py --rate 300 --seconds 10 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serving import (
    CoscaleServer,
    _cpu_now,
    cpu_per_request_ms,
    load_average,
    log,
    write_scenario,
)

from coscale.load import LoadConfig, run_load

CLIENTS = ("lean", "httpx")


async def trial(
    url: str, client: str, args: argparse.Namespace, seed: int, pid: int
) -> dict[str, Any]:
    config = LoadConfig(
        url=url,
        model="digits",
        rate_rps=args.rate,
        duration_s=args.seconds,
        items=args.items,
        seed=seed,
        timeout_s=10.0,
        http_client=client,  # type: ignore[arg-type]
    )
    before = _cpu_now(pid)
    result = await run_load(config)
    s = result.summary
    cpu = cpu_per_request_ms(before, _cpu_now(pid), s.completed)
    row = {
        "client": client,
        "requests": s.requests,
        "completed": s.completed,
        "rejected": s.rejected,
        "failed": s.failed,
        "p50_ms": round(s.latency_ms.p50, 2),
        "p99_ms": round(s.latency_ms.p99, 2),
        **cpu,
    }
    log(
        f"  {client:5s}: client {cpu['client_cpu_ms']:.3f} ms, server {cpu['server_cpu_ms']:.3f} "
        f"ms, workers {cpu['workers_cpu_ms']:.3f} ms per request; p50 {row['p50_ms']} p99 "
        f"{row['p99_ms']} ms; {s.completed}/{s.requests} ok"
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=300.0, help="req/s offered (Poisson)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per trial")
    parser.add_argument("--items", type=int, default=1, help="digits per request")
    parser.add_argument("--rounds", type=int, default=3, help="trials per client")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    started = time.time()
    load_before = load_average()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="coscale-bench-client-") as tmp:
        folder = Path(tmp)
        scenario = write_scenario(folder, "digits-cnn", variant=None, preset="optimized-b")
        with CoscaleServer(scenario, None, folder) as server:
            assert server.proc is not None
            warm = LoadConfig(url=server.url, model="digits", rate_rps=50, duration_s=2)
            asyncio.run(run_load(warm))
            for k in range(args.rounds):
                for client in CLIENTS if k % 2 == 0 else CLIENTS[::-1]:
                    rows.append(
                        asyncio.run(trial(server.url, client, args, k + 1, server.proc.pid))
                    )
                    time.sleep(1.0)

    def median(client: str, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["client"] == client)

    summary = {
        c: {
            k: median(c, k)
            for k in ("client_cpu_ms", "server_cpu_ms", "workers_cpu_ms", "p50_ms", "p99_ms")
        }
        for c in CLIENTS
    }
    lean = summary["lean"]["client_cpu_ms"]
    ratio = summary["httpx"]["client_cpu_ms"] / lean if lean > 0 else float("inf")
    out = {
        "settings": vars(args) | {"json": str(args.json) if args.json else None},
        "load_average": [load_before, load_average()],
        "seconds": round(time.time() - started, 1),
        "trials": rows,
        "median": summary,
        "client_cpu_ratio_httpx_over_lean": round(ratio, 2),
    }
    print("\n| client | CPU ms / request: client | server | workers | p50 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for c in CLIENTS:
        m = summary[c]
        print(
            f"| {c} | {m['client_cpu_ms']:.3f} | {m['server_cpu_ms']:.3f} | "
            f"{m['workers_cpu_ms']:.3f} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} |"
        )
    loads = ", ".join(f"{x:.2f}" for x in out["load_average"])
    print(f"\nclient CPU per request, httpx / lean: {ratio:.2f}× (load average {loads})")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
