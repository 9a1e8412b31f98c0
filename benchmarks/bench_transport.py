"""Benchmark: moving a batch to a worker process and back — shared memory vs pickling.

Part 1, transport only (same run, interleaved): an echo child process returns what it
receives, through

* **shm**: coscale's transport (:mod:`coscale.runtime.shm`), exactly as the worker uses
  it — the parent writes the batch into its input segment and sends the descriptor over
  a ``Pipe``; the child reads it in place, writes it into its output segment and sends
  that descriptor back; the parent copies the result out;
* **pickle**: ``Connection.send(batch)`` both ways (pickle, pipe, unpickle).

Payloads: a ``digits-cnn`` batch of 64 (64 × 64 float32, 16 KiB), a 1 MiB and a 16 MiB
float32 array, and 64 sentences of text. Each round trip is timed with
``time.perf_counter``; rounds of the two methods alternate in blocks so that the shared
machine's noise hits both alike. The table gives the median and p90 per round trip and
the ratio pickle / shm of the medians (> 1: shared memory is faster).

Part 2, a real replica (``--replica``, default on): ``LocalReplica.infer`` round trips
of a ``digits-cnn`` batch of 64 against the worker's own ``predict`` time, so the
difference is what the process boundary costs per batch; and the start time of one
``digits-cnn`` and one ``minilm`` replica (spawn → READY: interpreter, imports, build,
warm-up).

Usage::

    python benchmarks/bench_transport.py
    python benchmarks/bench_transport.py --rounds 3000 --no-replica --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import platform
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from coscale.runtime import shm

BLOCK = 50  # rounds of one method before switching to the other


# ---------------------------------------------------------------- echo children


def _shm_echo(conn: Connection, prefix: str) -> None:
    reader = shm.Reader(owns=False)
    writer = shm.Writer(prefix, "o", initial_size=0, owns=False)
    while (message := conn.recv()) is not None:
        name, descriptor = message
        batch = reader.read(name, descriptor, copy=False)
        reply = writer.write(batch)
        del batch
        conn.send(reply)
    writer.close()
    reader.close()


def _pickle_echo(conn: Connection) -> None:
    while (message := conn.recv()) is not None:
        conn.send(message)


class Echo:
    """A child process and the parent's end of one transport method."""

    def __init__(self, method: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.method = method
        self.conn, child = ctx.Pipe()
        self.prefix = shm.segment_prefix(f"bench-{method}")
        args: tuple[Any, ...] = (child, self.prefix) if method == "shm" else (child,)
        target = _shm_echo if method == "shm" else _pickle_echo
        self.process = ctx.Process(target=target, args=args, daemon=True)
        self.process.start()
        child.close()
        self.writer = shm.Writer(self.prefix, "i", initial_size=0, owns=True)
        self.reader = shm.Reader(owns=True)

    def roundtrip(self, batch: Any) -> Any:
        if self.method == "pickle":
            self.conn.send(batch)
            return self.conn.recv()
        self.conn.send(self.writer.write(batch))
        name, descriptor = self.conn.recv()
        return self.reader.read(name, descriptor, copy=True)

    def close(self) -> None:
        self.conn.send(None)
        self.process.join(10)
        self.writer.close()
        self.reader.close()
        shm.unlink_all(self.prefix)


def payloads() -> dict[str, Any]:
    from coscale.accel.sentences import sample_sentences

    rng = np.random.default_rng(0)
    digits = rng.integers(0, 17, size=(64, 64)).astype(np.float32)
    return {
        "digits batch 64 (16 KiB)": digits,
        "float32 1 MiB": rng.standard_normal(1 << 18).astype(np.float32),
        "float32 16 MiB": rng.standard_normal(1 << 22).astype(np.float32),
        "text 64 sentences": sample_sentences(64, 0),
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return bool(np.array_equal(a, b)) and a.dtype == b.dtype
    return bool(a == b)


def measure_transport(rounds: int) -> list[dict[str, Any]]:
    """Median/p90 round-trip µs of every payload through both methods (module docstring)."""
    echoes = {m: Echo(m) for m in ("shm", "pickle")}
    rows = []
    try:
        for label, batch in payloads().items():
            nbytes = shm.payload_size(batch)
            n = max(BLOCK * 2, min(rounds, int(rounds * (1 << 16) / max(nbytes, 1 << 16))))
            times: dict[str, list[float]] = {"shm": [], "pickle": []}
            for echo in echoes.values():
                assert _same(echo.roundtrip(batch), batch), f"{echo.method} corrupted {label}"
                for _ in range(5):  # warm-up (segments sized, caches warm)
                    echo.roundtrip(batch)
            while len(times["shm"]) < n:
                for method, echo in echoes.items():
                    for _ in range(BLOCK):
                        started = time.perf_counter()
                        echo.roundtrip(batch)
                        times[method].append(time.perf_counter() - started)
            row: dict[str, Any] = {"payload": label, "bytes": nbytes, "rounds": n}
            for method, values in times.items():
                row[f"{method}_p50_us"] = float(np.median(values) * 1e6)
                row[f"{method}_p90_us"] = float(np.percentile(values, 90) * 1e6)
            row["pickle_over_shm"] = row["pickle_p50_us"] / row["shm_p50_us"]
            rows.append(row)
    finally:
        for echo in echoes.values():
            echo.close()
    return rows


# ------------------------------------------------------------------ replicas


async def measure_replicas(rounds: int) -> dict[str, Any]:
    from coscale.accel.digits import DigitsFamily
    from coscale.backends.base import ReplicaSpec
    from coscale.backends.local import LocalBackend

    backend = LocalBackend(max_batch=64)
    result: dict[str, Any] = {}
    try:
        digits = await backend.start_replica(
            ReplicaSpec("bench-d", "digits-cnn", "digits-cnn", "onnx-fp32", "local", threads=1)
        )
        x = DigitsFamily().profiling_batch(64, None, 0)
        round_trips, predicts = [], []
        for _ in range(20):
            await digits.infer(x)
        for _ in range(rounds):
            started = time.perf_counter()
            await digits.infer(x)
            round_trips.append(time.perf_counter() - started)
            predicts.append(digits.last_predict_s or 0.0)
        overhead = np.asarray(round_trips) - np.asarray(predicts)
        result["digits_infer"] = {
            "variant": "onnx-fp32",
            "batch": 64,
            "rounds": rounds,
            "round_trip_p50_us": float(np.median(round_trips) * 1e6),
            "predict_p50_us": float(np.median(predicts) * 1e6),
            "overhead_p50_us": float(np.median(overhead) * 1e6),
            "overhead_p90_us": float(np.percentile(overhead, 90) * 1e6),
        }
        starts = {"digits-cnn onnx-fp32": digits.info}
        minilm = await backend.start_replica(
            ReplicaSpec("bench-m", "minilm", "minilm", "fp32-eager", "local", threads=1)
        )
        starts["minilm fp32-eager"] = minilm.info
        result["starts"] = {
            name: {k: info[k] for k in ("start_s", "build_s", "warmup_s")}
            for name, info in starts.items()
        }
    finally:
        await backend.shutdown()
    return result


# -------------------------------------------------------------------- report


def render(rows: list[dict[str, Any]], replicas: dict[str, Any] | None) -> str:
    lines = [
        "| payload | bytes | shm p50 µs | shm p90 µs | pickle p50 µs | pickle p90 µs "
        "| pickle / shm |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['payload']} | {r['bytes']:,} | {r['shm_p50_us']:.0f} | {r['shm_p90_us']:.0f} "
            f"| {r['pickle_p50_us']:.0f} | {r['pickle_p90_us']:.0f} "
            f"| {r['pickle_over_shm']:.2f}× |"
        )
    if replicas:
        d = replicas["digits_infer"]
        lines += [
            "",
            f"LocalReplica.infer, digits-cnn {d['variant']}, batch {d['batch']}, "
            f"{d['rounds']} rounds: round trip p50 {d['round_trip_p50_us']:.0f} µs, "
            f"worker predict p50 {d['predict_p50_us']:.0f} µs, process-boundary overhead "
            f"p50 {d['overhead_p50_us']:.0f} µs / p90 {d['overhead_p90_us']:.0f} µs",
            "",
            "| replica | start (spawn → READY) s | build s | warm-up s |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, s in replicas["starts"].items():
            lines.append(
                f"| {name} | {s['start_s']:.2f} | {s['build_s']:.2f} | {s['warmup_s']:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2000, help="round trips per small payload")
    parser.add_argument("--replica-rounds", type=int, default=500)
    parser.add_argument("--no-replica", action="store_true", help="transport only")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    rows = measure_transport(args.rounds)
    replicas = None if args.no_replica else asyncio.run(measure_replicas(args.replica_rounds))
    print(render(rows, replicas))
    if args.json is not None:
        record = {
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "processor": platform.processor(),
            "transport": rows,
            "replicas": replicas,
        }
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
