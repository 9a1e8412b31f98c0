"""The 10 Hz telemetry sampler: CPU and memory per worker process, GPUs, energy.

Every :data:`SAMPLE_INTERVAL_S` (0.1 s, the paper's 10 Hz) on the injected clock's
timers, :meth:`Sampler.sample`:

1. asks the serving system for its worker processes (``pids()``: a mapping replica id →
   pid; the serving process itself is sampled too, as ``server``);
2. reads each process's cumulative CPU time (user + system) and resident memory
   (``psutil``); a process that has vanished (exited, killed, pid reused — checked by its
   start time) is dropped without error and reappears only under a new pid;
3. CPU percent of a process over the window = ``Δcpu_seconds / Δt × 100`` (percent of
   one core, as ``top`` shows it; 0 on a process's first sample, which only sets its
   origin), with ``Δt`` the clock time since the previous sample;
4. the machine-share utilization ``u = Σ Δcpu_seconds / (Δt × vcpus)`` over the server
   and the workers seen in both samples, clamped to [0, 1] (``vcpus`` of the node type
   the machine stands for), feeds the energy model
   (:func:`coscale.telemetry.energy.utilization`);
5. GPUs through NVML when present (:class:`~coscale.telemetry.energy.NvmlReader`,
   imported lazily; absent → no GPU readings);
6. the :class:`~coscale.telemetry.energy.EnergyMeter` adds the window's energy (RAPL,
   NVML or the model — it says which);
7. the sample is kept (the last :data:`HISTORY_SAMPLES`, a bounded deque, so memory stays
   flat however long the server runs), exported to :class:`ServingMetrics` gauges if
   given, and passed to ``on_sample``.

Scheduling: tick ``k`` is due at ``start + k × interval`` (computed from ``k``, so the
times do not drift); a tick that runs late does not accumulate a backlog — the next one
is due at the first multiple of the interval after now. An exception inside a sample is
logged and counted (``errors``), never kills the sampler. :meth:`stop` cancels the
pending timer; a tick already running finishes.

Cost per sample: O(processes + GPUs) file reads (about 0.1 ms per process on Linux).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from coscale.catalog.nodes import NodeType
from coscale.clock import Clock, Timer
from coscale.telemetry.energy import (
    EnergyMeter,
    EnergyReading,
    GpuReading,
    GpuSource,
    NvmlReader,
    utilization,
)
from coscale.telemetry.prometheus import ServingMetrics

__all__ = [
    "HISTORY_SAMPLES",
    "SAMPLE_INTERVAL_S",
    "SERVER_KEY",
    "ProcessSample",
    "Sample",
    "Sampler",
    "psutil_reader",
]

log = logging.getLogger(__name__)

#: Seconds between samples (10 Hz).
SAMPLE_INTERVAL_S = 0.1
#: Samples kept in memory (60 s at 10 Hz).
HISTORY_SAMPLES = 600
#: Name under which the serving process itself is sampled.
SERVER_KEY = "server"

#: pid → (cumulative CPU seconds, resident bytes), or None when the process is gone.
ProcessReader = Callable[[int], "tuple[float, int] | None"]
#: ``call_at(when, callback) -> Timer``: how the sampler sets its timers.
Scheduler = Callable[[float, Callable[[], None]], Timer]


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """One process at one sample; ``cpu_percent`` of one core over the window."""

    name: str
    pid: int
    cpu_percent: float
    rss_bytes: int


@dataclass(frozen=True, slots=True)
class Sample:
    """Everything read at one tick."""

    time: float
    window_s: float
    server: ProcessSample | None
    replicas: tuple[ProcessSample, ...]
    utilization: float
    energy: EnergyReading
    gpus: tuple[GpuReading, ...] = field(default=())


def psutil_reader() -> ProcessReader:
    """A :data:`ProcessReader` on psutil, caching one ``psutil.Process`` per pid.

    The cache entry is dropped when the process is gone or its pid now belongs to another
    process (``is_running`` compares start times).
    """
    import psutil

    cache: dict[int, psutil.Process] = {}

    def read(pid: int) -> tuple[float, int] | None:
        try:
            proc = cache.get(pid)
            if proc is None or not proc.is_running():
                proc = psutil.Process(pid)
                cache[pid] = proc
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:  # dead, not yet reaped
                    raise psutil.ZombieProcess(pid)
                times = proc.cpu_times()
                rss = proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            cache.pop(pid, None)
            return None
        return float(times.user + times.system), int(rss)

    return read


class Sampler:
    """Samples the serving processes, GPUs and energy at a fixed interval (module docstring)."""

    def __init__(
        self,
        pids: Callable[[], Mapping[str, int]],
        *,
        clock: Clock,
        meter: EnergyMeter,
        gpus: GpuSource | None = None,
        metrics: ServingMetrics | None = None,
        interval_s: float = SAMPLE_INTERVAL_S,
        read_process: ProcessReader | None = None,
        server_pid: int | None = None,
        on_sample: Callable[[Sample], None] | None = None,
        history: int = HISTORY_SAMPLES,
    ) -> None:
        if not interval_s > 0 or math.isinf(interval_s):
            raise ValueError(f"sample interval must be a positive number, got {interval_s}")
        self._pids = pids
        self.clock = clock
        self.meter = meter
        self._gpus = gpus
        self.metrics = metrics
        self.interval_s = interval_s
        self._read = read_process or psutil_reader()
        self.server_pid = os.getpid() if server_pid is None else server_pid
        self._on_sample = on_sample
        self.samples: deque[Sample] = deque(maxlen=history)
        self.errors = 0
        self._cpu: dict[tuple[str, int], float] = {}
        self._last_time: float | None = None
        self._timer: Timer | None = None
        self._origin = 0.0
        self._k = 0
        self._running = False
        self._lock = threading.Lock()
        self._schedule: Scheduler = clock.call_at

    @classmethod
    def for_node(
        cls,
        pids: Callable[[], Mapping[str, int]],
        node: NodeType,
        *,
        clock: Clock,
        metrics: ServingMetrics | None = None,
        **kwargs: object,
    ) -> Sampler:
        """A sampler with NVML (when present) and the energy meter detected for ``node``."""
        nvml = NvmlReader.open()
        meter = EnergyMeter.detect(node, gpus=nvml is not None)
        return cls(pids, clock=clock, meter=meter, gpus=nvml, metrics=metrics, **kwargs)  # type: ignore[arg-type]

    @property
    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    # -- one sample ----------------------------------------------------------------

    def sample(self) -> Sample:
        """Read everything now, update the energy meter and the metrics; return the sample."""
        with self._lock:
            now = self.clock.now()
            window = 0.0 if self._last_time is None else now - self._last_time
            targets = {SERVER_KEY: self.server_pid, **dict(self._pids())}
            readings, busy_s = self._read_processes(targets, window)
            node = self.meter.node
            u = utilization(busy_s, window, node.vcpus)
            gpus = tuple(self._gpus.read()) if self._gpus is not None else ()
            energy = self.meter.update(now, u, gpus)
            self._last_time = now
            server = readings.pop(SERVER_KEY, None)
            sample = Sample(now, window, server, tuple(readings.values()), u, energy, gpus)
            self.samples.append(sample)
        if self.metrics is not None:
            export_sample(self.metrics, sample)
        if self._on_sample is not None:
            self._on_sample(sample)
        return sample

    def _read_processes(
        self, targets: Mapping[str, int], window: float
    ) -> tuple[dict[str, ProcessSample], float]:
        """Per process: CPU % over the window and RSS; and the CPU seconds they all used."""
        seen: dict[tuple[str, int], float] = {}
        out: dict[str, ProcessSample] = {}
        busy = 0.0
        for name, pid in targets.items():
            got = self._read(pid)
            if got is None:
                continue
            cpu_s, rss = got
            key = (name, pid)
            seen[key] = cpu_s
            before = self._cpu.get(key)
            used = max(cpu_s - before, 0.0) if before is not None else 0.0
            busy += used
            percent = 100.0 * used / window if window > 0 else 0.0
            out[name] = ProcessSample(name, pid, percent, rss)
        self._cpu = seen
        return out, busy

    def energy_between(self, start: float, end: float) -> float:
        """Joules used between two times, from the kept samples (0 without two samples).

        The cumulative energy at ``t`` is read at the last sample at or before ``t`` (the
        first kept sample for an earlier ``t``), so a window is measured to the precision of
        the sampling interval.
        """
        samples = list(self.samples)
        if len(samples) < 2 or end <= start:
            return 0.0

        def at(t: float) -> float:
            chosen = samples[0]
            for s in samples:
                if s.time > t:
                    break
                chosen = s
            return chosen.energy.energy_j

        return max(at(end) - at(start), 0.0)

    # -- the timer loop ---------------------------------------------------------------

    def start(self, schedule: Scheduler | None = None) -> None:
        """Take a first sample (the origin) and schedule the next ticks.

        ``schedule(when, callback)`` sets the timers (default the clock's ``call_at``);
        the live server passes one that runs the ticks on its event loop, so ``pids()``
        may read the serving system's loop-only state.
        """
        if self._running:
            return
        if schedule is not None:
            self._schedule = schedule
        self._running = True
        self._safe_sample()
        self._origin = self.clock.now()
        self._k = 1
        self._timer = self._schedule(self._origin + self.interval_s, self._tick)

    def stop(self) -> None:
        """Cancel the pending tick; close NVML."""
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._gpus is not None:
            self._gpus.close()

    @property
    def running(self) -> bool:
        return self._running

    def _tick(self) -> None:
        if not self._running:
            return
        self._safe_sample()
        now = self.clock.now()
        self._k = max(self._k + 1, math.floor((now - self._origin) / self.interval_s) + 1)
        if self._running:
            self._timer = self._schedule(self._origin + self._k * self.interval_s, self._tick)

    def _safe_sample(self) -> None:
        try:
            self.sample()
        except Exception:
            self.errors += 1
            log.exception("telemetry sample failed")


def export_sample(metrics: ServingMetrics, sample: Sample) -> None:
    """Write one sample to the serving metrics (replica gauges replaced wholesale)."""
    if sample.server is not None:
        metrics.server_cpu.set(sample.server.cpu_percent)
        metrics.server_memory.set(sample.server.rss_bytes)
    metrics.utilization.set(sample.utilization)
    metrics.replica_cpu.replace({(p.name,): p.cpu_percent for p in sample.replicas})
    metrics.replica_memory.replace({(p.name,): float(p.rss_bytes) for p in sample.replicas})
    metrics.gpu_utilization.replace({(str(g.index),): g.utilization_percent for g in sample.gpus})
    metrics.gpu_power.replace({(str(g.index),): g.power_w for g in sample.gpus})
    source = sample.energy.source
    metrics.power.replace({(source,): sample.energy.power_w})
    metrics.energy.set_to(sample.energy.energy_j, source=source)
