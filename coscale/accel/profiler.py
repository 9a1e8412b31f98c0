"""The profiler: measure every variant of a model family on this machine.

:func:`profile_family` returns a :class:`~coscale.catalog.profiles.ProfileFile`.

Algorithm:

1. **Variants.** The requested names (default: all of ``family.variant_names()``, the
   variants buildable on this hardware), in the family's order. The baseline —
   ``variant_names()[0]``, fp32 eager for the built-in models — is always profiled, first,
   because every speed-up and fidelity is relative to it. A name the family cannot build
   here → :class:`CoscaleError` (code ``unknown_variant``) listing the ones it can.
2. **Fidelity** (in this process). Build the baseline once; for each variant build it and
   call ``family.fidelity(variant, baseline)`` on the family's fixed evaluation set (the
   baseline against itself gives its own accuracy, or cosine 1). Building here also
   fills the on-disk cache, so step 3 loads rather than builds.
3. **Timing and memory** (one fresh child process per variant, ``python -m
   coscale.accel.profiler --child FD``, so no thread pool, allocator state or cached
   tensor of one variant affects another, and the caller's ``__main__`` is never
   re-imported; the family goes to it pickled, so a family must be picklable — paths and
   settings, sessions built in ``build``). The child starts with ``OMP_NUM_THREADS``/
   ``MKL_NUM_THREADS``/``OPENBLAS_NUM_THREADS`` = ``threads`` and sets
   ``torch.set_num_threads(threads)``, inter-op threads 1; builds the variant with
   ``threads``; runs :data:`WARMUP_CALLS` calls at the smallest batch; then times every
   *cell*:

   * every batch size ``b``: :data:`BATCHES_PER_CELL` batches from
     ``family.profiling_batch(b, None, seed)`` — for text models these are real
     sentences of varied length, padded to the longest in the batch, i.e. what serving
     sees (MiniLM: each batch a stratified sample whose lengths spread as the pool's, so
     that four batches time the pool's typical cost rather than the luck of four
     draws). These cells give ``latency_ms``, hence ``throughput``.
   * text models only, every sequence-length bucket ``s`` of ``family.seq_len_buckets()``
     and batch size ``b``: batches of items of about ``s`` tokens, giving
     ``latency_ms_by_seq_len`` (the simulator's grid).

   In a cell: one untimed warm-up call, then timed calls (``time.perf_counter`` around
   ``variant.predict``) cycling through the cell's batches, until :func:`enough_reps`:
   at least ``min_reps`` calls **and** ``min_seconds`` elapsed, or ``max_reps`` calls, or
   ``cell_budget_s`` elapsed (at least one timed call always). ``p50`` = median and
   ``p99`` = 99th percentile (linear interpolation) of the per-call milliseconds. With
   few calls (slow cells) p99 is close to the maximum.

   **Peak memory** = the child's peak resident set size after all cells: ``VmHWM`` from
   ``/proc/self/status`` on Linux (``getrusage`` ``ru_maxrss`` elsewhere — not on Linux,
   where a child's ``ru_maxrss`` carries over the parent's RSS at fork). It counts
   everything a replica process serving this variant holds: interpreter, torch/ORT
   libraries (a few hundred MB), weights and activations of the largest profiled batch.
4. **Summary.** ``throughput`` = max over ``b`` of ``b / p50(b)`` (items/s, from
   ``latency_ms``); ``best_batch`` = the smallest such ``b``; ``speedup`` = throughput /
   the baseline's throughput. Latencies are stored in ms rounded to
   :data:`LATENCY_DECIMALS` decimals, and throughput is computed from the stored values.

Settings: :data:`FULL` (batch sizes 1…64, all buckets, ≥5 calls and ≥0.3 s per cell, ≤2 s
per cell) and :data:`QUICK` (batch sizes 1, 8, 64; the smallest, middle and largest
bucket; ≥3 calls, ≥0.05 s, ≤0.5 s per cell). Cost: about cells × variants × (cell time),
plus ~2 s per child for importing torch.

A child that raises or dies → :class:`ProfileError` naming the variant, with the last
line of its traceback (or its exit code).
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import IO, Any, Literal

import numpy as np

from coscale.accel.base import VARIANT_DESCRIPTIONS, Fidelity, ModelFamily, Variant
from coscale.accel.hardware import fingerprint, hardware_info, usable_cpus
from coscale.catalog.profiles import (
    HardwareBlock,
    LatencyPoint,
    ProfileFile,
    VariantProfile,
)
from coscale.errors import CoscaleError, ProfileError

DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
QUICK_BATCH_SIZES: tuple[int, ...] = (1, 8, 64)
#: Untimed calls at the smallest batch size before the first cell.
WARMUP_CALLS = 3
#: Distinct batches (seeds 0..n-1) cycled through in each cell.
BATCHES_PER_CELL = 4
#: Latencies are stored in ms with this many decimals (0.1 µs).
LATENCY_DECIMALS = 4
#: A child silent (no finished cell) for this long is killed and reported.
CHILD_SILENCE_TIMEOUT_S = 900.0
#: Characters of a failed child's output quoted in the error.
CHILD_LOG_TAIL_CHARS = 600
#: Environment variables that size native thread pools; set to ``threads`` in children.
THREAD_ENV_VARS: tuple[str, ...] = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True, slots=True)
class RepPolicy:
    """When to stop timing one cell (see :func:`enough_reps`)."""

    min_reps: int
    min_seconds: float
    max_reps: int
    cell_budget_s: float


FULL = RepPolicy(min_reps=5, min_seconds=0.3, max_reps=1000, cell_budget_s=2.0)
QUICK = RepPolicy(min_reps=3, min_seconds=0.05, max_reps=200, cell_budget_s=0.5)


@dataclass(frozen=True, slots=True)
class ProfileProgress:
    """One step done: ``completed`` of ``total`` steps (build, fidelity, each timed cell)."""

    variant: str
    stage: Literal["build", "fidelity", "measure", "done"]
    completed: int
    total: int
    detail: str = ""


ProgressFn = Callable[[ProfileProgress], None]


@dataclass(frozen=True, slots=True)
class Cell:
    """One timed configuration: ``seq_len`` None = real varied-length (or fixed-size) items."""

    batch_size: int
    seq_len: int | None


@dataclass(frozen=True, slots=True)
class _ChildJob:
    variant: str
    threads: int
    cells: tuple[Cell, ...]
    policy: RepPolicy


@dataclass(frozen=True, slots=True)
class _Measured:
    samples_ms: dict[Cell, list[float]]
    size_bytes: int
    peak_memory_bytes: int


def enough_reps(reps: int, elapsed_s: float, policy: RepPolicy) -> bool:
    """Stop timing a cell? ``reps >= max_reps`` or ``elapsed >= cell_budget_s`` or
    (``reps >= min_reps`` and ``elapsed >= min_seconds``); never before one call."""
    if reps < 1:
        return False
    if reps >= policy.max_reps or elapsed_s >= policy.cell_budget_s:
        return True
    return reps >= policy.min_reps and elapsed_s >= policy.min_seconds


def summarize(samples_ms: Sequence[float]) -> LatencyPoint:
    """p50 (median) and p99 (linear interpolation) of per-call milliseconds, rounded."""
    if not samples_ms:
        raise ValueError("no samples")
    arr = np.asarray(samples_ms, dtype=np.float64)
    floor = 10.0**-LATENCY_DECIMALS
    p50 = max(round(float(np.percentile(arr, 50)), LATENCY_DECIMALS), floor)
    p99 = max(round(float(np.percentile(arr, 99)), LATENCY_DECIMALS), p50)
    return LatencyPoint(p50=p50, p99=p99)


def best_throughput(latency_ms: dict[str, LatencyPoint]) -> tuple[float, int]:
    """(max over b of b / p50(b) in items/s, the smallest b reaching it)."""
    best = max(sorted(latency_ms, key=int), key=lambda b: int(b) / latency_ms[b].p50)
    return int(best) * 1000.0 / latency_ms[best].p50, int(best)


def plan_cells(
    batch_sizes: Sequence[int], buckets: Sequence[int] | None, *, quick: bool
) -> tuple[Cell, ...]:
    """Batch sizes × (None, then each bucket); quick keeps the smallest/middle/largest bucket."""
    sizes = sorted(set(batch_sizes))
    if not sizes or sizes[0] < 1:
        raise ProfileError(
            f"batch sizes must be positive integers, got {list(batch_sizes)}.",
            fix="Pass batch sizes such as 1,8,64.",
        )
    seqs: list[int | None] = [None]
    if buckets:
        chosen = sorted(set(buckets))
        if quick and len(chosen) > 3:
            chosen = sorted({chosen[0], chosen[len(chosen) // 2], chosen[-1]})
        seqs.extend(chosen)
    return tuple(Cell(b, s) for s in seqs for b in sizes)


def select_variants(family: ModelFamily, requested: Sequence[str] | None) -> list[str]:
    """Requested variants in the family's order, baseline first (always included)."""
    available = family.variant_names()
    if not available:
        raise ProfileError(f"model {family.name!r} has no variant buildable on this machine.")
    if requested is None:
        return list(available)
    problems = []
    for name in requested:
        if name in available:
            continue
        why = "is not buildable here" if name in VARIANT_DESCRIPTIONS else "is not a variant"
        problems.append(f"{name!r} {why}")
    if problems:
        raise CoscaleError(
            f"cannot profile {family.name!r}: {'; '.join(problems)}.",
            fix=f"Choose among the variants this machine can build: {', '.join(available)}.",
            code="unknown_variant",
        )
    wanted = set(requested)
    return [available[0]] + [v for v in available[1:] if v in wanted]


def profile_family(
    family: ModelFamily,
    *,
    variants: Sequence[str] | None = None,
    batch_sizes: Sequence[int] | None = None,
    threads: int | None = None,
    quick: bool = False,
    progress: ProgressFn | None = None,
    measured_at: str | None = None,
) -> ProfileFile:
    """Measure ``family``'s variants on this machine (algorithm: module docstring).

    ``batch_sizes`` defaults to :data:`DEFAULT_BATCH_SIZES` (:data:`QUICK_BATCH_SIZES`
    when ``quick``); ``threads`` to the CPUs this process may use; ``measured_at`` to now
    (UTC, ISO 8601). ``progress`` is called after every step.
    """
    threads = threads or usable_cpus()
    if threads < 1:
        raise ProfileError(f"threads must be >= 1, got {threads}.", fix="Pass --threads 1 or more.")
    names = select_variants(family, variants)
    sizes = batch_sizes or (QUICK_BATCH_SIZES if quick else DEFAULT_BATCH_SIZES)
    cells = plan_cells(sizes, family.seq_len_buckets(), quick=quick)
    policy = QUICK if quick else FULL
    family_bytes = _pickle_family(family)
    tracker = _Tracker(progress, total=len(names) * (2 + len(cells)))

    baseline = _build(family, names[0], threads)
    profiles = []
    for name in names:
        variant = baseline if name == names[0] else _build(family, name, threads)
        tracker.step(name, "build")
        fidelity = _fidelity(family, variant, baseline)
        runtime = str(variant.runtime)
        tracker.step(name, "fidelity", f"{fidelity.metric} {fidelity.value:.4f}")
        if variant is not baseline:
            del variant
            gc.collect()
        job = _ChildJob(variant=name, threads=threads, cells=cells, policy=policy)
        measured = _measure_in_child(family.name, family_bytes, job, tracker)
        profiles.append(_variant_profile(name, runtime, fidelity, measured, cells))
        tracker.step(name, "done", advance=0)
    return _assemble(family, names[0], profiles, threads, measured_at)


class _Tracker:
    def __init__(self, progress: ProgressFn | None, total: int) -> None:
        self.progress, self.total, self.completed = progress, total, 0

    def step(self, variant: str, stage: Any, detail: str = "", *, advance: int = 1) -> None:
        self.completed += advance
        if self.progress is not None:
            self.progress(ProfileProgress(variant, stage, self.completed, self.total, detail))


def _pickle_family(family: ModelFamily) -> bytes:
    try:
        return pickle.dumps(family)
    except Exception as exc:
        raise ProfileError(
            f"model family {family.name!r} cannot be sent to a profiling process: {exc}.",
            fix="A ModelFamily must be picklable (hold paths and settings; build sessions "
            "in build()).",
        ) from exc


def _build(family: ModelFamily, name: str, threads: int) -> Variant:
    try:
        return family.build(name, threads=threads)
    except CoscaleError:
        raise
    except Exception as exc:
        raise ProfileError(
            f"building variant {name!r} of {family.name!r} failed: {type(exc).__name__}: {exc}.",
            fix="Profile the other variants with --variants, or run with --debug for the "
            "traceback.",
        ) from exc


def _fidelity(family: ModelFamily, variant: Variant, baseline: Variant) -> Fidelity:
    try:
        return family.fidelity(variant, baseline)
    except CoscaleError:
        raise
    except Exception as exc:
        raise ProfileError(
            f"measuring the fidelity of variant {variant.name!r} of {family.name!r} failed: "
            f"{type(exc).__name__}: {exc}.",
            fix="Profile the other variants with --variants, or run with --debug.",
        ) from exc


def _variant_profile(
    name: str,
    runtime: str,
    fidelity: Fidelity,
    measured: _Measured,
    cells: tuple[Cell, ...],
) -> dict[str, Any]:
    latency = {
        str(c.batch_size): summarize(measured.samples_ms[c]) for c in cells if c.seq_len is None
    }
    by_seq: dict[str, dict[str, LatencyPoint]] = {}
    for c in cells:
        if c.seq_len is not None:
            by_seq.setdefault(str(c.seq_len), {})[str(c.batch_size)] = summarize(
                measured.samples_ms[c]
            )
    throughput, best = best_throughput(latency)
    return {
        "name": name,
        "runtime": runtime,
        "fidelity": float(fidelity.value),
        "fidelity_metric": fidelity.metric,
        "fidelity_min": float(fidelity.minimum),
        "throughput": throughput,
        "best_batch": best,
        "latency_ms": latency,
        "latency_ms_by_seq_len": by_seq or None,
        "size_bytes": measured.size_bytes,
        "peak_memory_bytes": measured.peak_memory_bytes,
    }


def _assemble(
    family: ModelFamily,
    baseline: str,
    rows: list[dict[str, Any]],
    threads: int,
    measured_at: str | None,
) -> ProfileFile:
    base_tp = next(r["throughput"] for r in rows if r["name"] == baseline)
    info = hardware_info()
    hardware = HardwareBlock(fingerprint=fingerprint(info), **info)
    return ProfileFile(
        model=family.name,
        task=family.task,
        hardware=hardware,
        measured_at=measured_at or datetime.now(UTC).isoformat(timespec="seconds"),
        threads=threads,
        baseline=baseline,
        variants=[VariantProfile(**r, speedup=r["throughput"] / base_tp) for r in rows],
    )


# --------------------------------------------------------------------------- parent side


def _measure_in_child(
    model: str, family_bytes: bytes, job: _ChildJob, tracker: _Tracker
) -> _Measured:
    """Run ``python -m coscale.accel.profiler --child FD``; collect its samples and peak RSS.

    The job (this process's ``sys.path`` so that the family's class imports, the pickled
    family, the cells) goes to the child's stdin; results come back as pickled messages
    on a dedicated pipe (stdout is left to libraries that print). The child's
    stdout/stderr go to a temporary file whose tail is quoted if it fails.
    """
    read_fd, write_fd = os.pipe()
    env = {**os.environ, **{k: str(job.threads) for k in THREAD_ENV_VARS}}
    command = [sys.executable, "-m", "coscale.accel.profiler", "--child", str(write_fd)]
    with tempfile.TemporaryFile() as log:
        try:
            proc = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=log, stderr=log, env=env, pass_fds=[write_fd]
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        receiver = Connection(read_fd)
        try:
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(pickle.dumps((list(sys.path), family_bytes, job)))
                proc.stdin.close()
            return _collect(model, job, receiver, proc, tracker, log)
        finally:
            receiver.close()
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _collect(
    model: str,
    job: _ChildJob,
    receiver: Connection,
    proc: subprocess.Popen[bytes],
    tracker: _Tracker,
    log: IO[bytes],
) -> _Measured:
    samples: dict[Cell, list[float]] = {}
    while True:
        if not receiver.poll(CHILD_SILENCE_TIMEOUT_S):
            raise _child_error(model, job.variant, f"no progress for {CHILD_SILENCE_TIMEOUT_S} s")
        try:
            msg = receiver.recv()
        except EOFError:
            code = proc.wait()
            raise _child_error(model, job.variant, _exit_text(code, _tail(log))) from None
        kind = msg[0]
        if kind == "cell":
            cell = job.cells[msg[1]]
            samples[cell] = msg[2]
            detail = f"batch {cell.batch_size}" + (f", seq {cell.seq_len}" if cell.seq_len else "")
            tracker.step(job.variant, "measure", detail)
        elif kind == "done":
            return _Measured(samples, size_bytes=msg[1], peak_memory_bytes=msg[2])
        else:  # "error"
            raise _child_error(model, job.variant, msg[1])


def _tail(log: IO[bytes], limit: int = CHILD_LOG_TAIL_CHARS) -> str:
    log.flush()
    log.seek(0)
    text = log.read().decode(errors="replace").strip()
    return " ".join(text[-limit:].split())


def _exit_text(code: int | None, output: str) -> str:
    if code is not None and code < 0:
        why = f"the process was killed by signal {-code} (out of memory?)"
    else:
        why = f"the process exited with code {code} without a result"
    return f"{why}; its last output: {output}" if output else why


def _child_error(model: str, variant: str, why: str) -> ProfileError:
    return ProfileError(
        f"profiling variant {variant!r} of {model!r} failed in its measuring process: {why}",
        fix="Profile the other variants with --variants, or check that this variant runs "
        "on this machine.",
    )


# --------------------------------------------------------------------------- child side


def _child_entry(fd: int) -> None:
    """``python -m coscale.accel.profiler --child FD``: read the job from stdin, run it."""
    conn = Connection(fd)
    try:
        parent_path, family_bytes, job = pickle.loads(sys.stdin.buffer.read())
        sys.path[:0] = [p for p in parent_path if p not in sys.path]
    except BaseException as exc:
        conn.send(("error", f"could not read the job: {type(exc).__name__}: {exc}"))
        conn.close()
        return
    _child_main(conn, family_bytes, job)


def _child_main(conn: Connection, family_bytes: bytes, job: _ChildJob) -> None:
    """Build, warm up, time every cell, report peak RSS; any exception → ("error", text)."""
    try:
        _set_torch_threads(job.threads)
        family: ModelFamily = pickle.loads(family_bytes)
        variant = family.build(job.variant, threads=job.threads)
        first = family.profiling_batch(job.cells[0].batch_size, job.cells[0].seq_len, 0)
        for _ in range(WARMUP_CALLS):
            variant.predict(first)
        for index, cell in enumerate(job.cells):
            batches = [
                family.profiling_batch(cell.batch_size, cell.seq_len, seed)
                for seed in range(BATCHES_PER_CELL)
            ]
            conn.send(("cell", index, time_cell(variant.predict, batches, job.policy)))
        conn.send(("done", int(variant.size_bytes()), peak_rss_bytes()))
    except BaseException as exc:
        lines = traceback.format_exception_only(type(exc), exc)
        conn.send(("error", " ".join(lines[-1].split())))
    finally:
        conn.close()


def time_cell(
    predict: Callable[[Any], Any], batches: Sequence[Any], policy: RepPolicy
) -> list[float]:
    """One untimed call, then timed calls cycling ``batches`` until :func:`enough_reps`."""
    predict(batches[0])
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        predict(batches[len(samples) % len(batches)])
        t1 = time.perf_counter()
        samples.append((t1 - t0) * 1000.0)
        if enough_reps(len(samples), t1 - start, policy):
            return samples


def _set_torch_threads(threads: int) -> None:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set by an import side effect
        torch.set_num_interop_threads(1)


def peak_rss_bytes() -> int:
    """This process's peak resident set size: ``VmHWM`` on Linux, else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        from coscale.accel.profiler import _child_entry as _entry

        _entry(int(sys.argv[2]))
    else:
        sys.exit("usage: python -m coscale.accel.profiler --child FD (used by profile_family)")
