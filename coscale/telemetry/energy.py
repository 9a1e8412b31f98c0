"""Energy of the serving machine: measured (RAPL, NVML) where the machine allows, else modelled.

:class:`EnergyMeter` turns successive samples into a cumulative energy (joules) and the
mean power of the last window (watts), and says where the figures came from in
:attr:`EnergyMeter.source`.

Sources, chosen once when the meter is built (:meth:`EnergyMeter.detect`)
------------------------------------------------------------------------
**Host (CPU, memory)**

1. ``rapl`` — the processor's own energy counters, when a counter file is readable:

   * Linux powercap (Intel, and AMD Zen since Linux 5.8): ``/sys/class/powercap/
     intel-rapl:N/energy_uj`` (also ``intel-rapl-mmio``/``amd-rapl`` zone folders), in µJ,
     wrapping at ``max_energy_range_uj``. If a ``psys`` zone (the whole platform) exists
     it is used alone; otherwise every ``package-*`` zone plus every ``dram`` sub-zone
     (DRAM is not part of a package) — never the ``core``/``uncore`` sub-zones, which
     are parts of their package.
   * Linux hwmon ``amd_energy`` (AMD Zen): ``/sys/class/hwmon/hwmonK/energyN_input`` in
     µJ, the ``Esocket*`` channels only (cores are parts of their socket).

   RAPL counts everything on the package, other processes' work included. Since Linux
   5.10 ``energy_uj`` is readable by root only: as a user you get the model.
2. ``model:<node type>`` — otherwise: the catalog's linear power model
   ``P = idle_watts + (peak_watts − idle_watts) × u`` (:meth:`NodeType.watts`) of the
   node type this machine stands for, where ``u`` is the CPU utilization of the machine
   share the serving system uses over the window::

       u = Σ_p Δcpu_seconds(p) / (Δt × vcpus)        clamped to [0, 1]

   summed over the serving process and its replica worker processes (the sampler
   computes it), ``vcpus`` of the node type. Energy over a window is ``P(u) × Δt``: the
   model is linear in ``u``, so the window's mean utilization gives its exact mean
   power. Idle power is charged whenever the server runs (the node is on).

**Accelerators**: ``nvml`` — when ``pynvml`` imports and NVML finds GPUs, each GPU's
total energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ, Volta and later),
or, where that is unsupported, its board power × Δt. It is added to the host energy and
``+nvml`` appended to the source. The catalog's accelerator node types include the
accelerators' power in ``idle_watts``/``peak_watts``, so on such a node type with NVML
and no RAPL the host model is dropped (it would count the GPUs twice) and the source is
``nvml`` alone — the host CPUs' own energy is then not counted.

Possible sources: ``rapl``, ``rapl+nvml``, ``model:<node type>``, ``model:<node
type>+nvml``, ``nvml``.

Edge cases: the first update only sets the origin (energy 0, power 0); a counter that
goes down by more than its range (reset) adds nothing for that window; a non-positive
Δt adds nothing. Complexity: O(counters + GPUs) per update.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from coscale.catalog.nodes import NodeType

__all__ = [
    "HWMON_ROOT",
    "POWERCAP_ROOT",
    "EnergyMeter",
    "EnergyReading",
    "GpuReading",
    "NvmlReader",
    "RaplCounter",
    "find_rapl_counters",
    "model_energy_j",
    "utilization",
]

POWERCAP_ROOT = Path("/sys/class/powercap")
HWMON_ROOT = Path("/sys/class/hwmon")
#: Zone folder prefixes under powercap that are RAPL (Intel, Intel MMIO, AMD).
RAPL_ZONE_PREFIXES: tuple[str, ...] = ("intel-rapl", "amd-rapl")


def utilization(cpu_seconds: float, window_s: float, vcpus: int) -> float:
    """``cpu_seconds / (window_s × vcpus)`` clamped to [0, 1]; 0 for an empty window."""
    if window_s <= 0 or vcpus <= 0:
        return 0.0
    return min(max(cpu_seconds / (window_s * vcpus), 0.0), 1.0)


def model_energy_j(node: NodeType, utilization_fraction: float, window_s: float) -> float:
    """Energy of ``window_s`` seconds at mean utilization ``u``: ``node.watts(u) × Δt``."""
    return node.watts(utilization_fraction) * max(window_s, 0.0)


# --------------------------------------------------------------------------- RAPL


@dataclass(frozen=True, slots=True)
class RaplCounter:
    """One cumulative energy counter file, in µJ; ``max_uj`` is where it wraps (None: never)."""

    path: Path
    label: str
    max_uj: int | None

    def read_uj(self) -> int:
        return int(self.path.read_text().strip())


def _readable(counter: RaplCounter) -> bool:
    try:
        counter.read_uj()
    except (OSError, ValueError):
        return False
    return True


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _powercap_counters(root: Path) -> list[RaplCounter]:
    zones = sorted(
        p
        for p in (root.iterdir() if root.is_dir() else [])
        if p.name.startswith(RAPL_ZONE_PREFIXES) and (p / "energy_uj").exists()
    )
    named = [(zone, _read_text(zone / "name")) for zone in zones]
    psys = [zone for zone, name in named if name.startswith("psys")]
    chosen = psys[:1] or [
        zone for zone, name in named if name.startswith("package") or name == "dram"
    ]
    counters = []
    for zone in chosen:
        max_text = _read_text(zone / "max_energy_range_uj")
        label = f"powercap {zone.name} ({_read_text(zone / 'name')})"
        max_uj = int(max_text) if max_text.isdigit() else None
        counters.append(RaplCounter(zone / "energy_uj", label, max_uj))
    return counters


def _hwmon_counters(root: Path) -> list[RaplCounter]:
    counters = []
    for hwmon in sorted(root.iterdir() if root.is_dir() else []):
        if _read_text(hwmon / "name") != "amd_energy":
            continue
        for label_file in sorted(hwmon.glob("energy*_label")):
            if not _read_text(label_file).startswith("Esocket"):
                continue
            value = label_file.with_name(label_file.name.replace("_label", "_input"))
            counters.append(RaplCounter(value, f"hwmon amd_energy {value.name}", None))
    return counters


def find_rapl_counters(
    powercap_root: Path = POWERCAP_ROOT, hwmon_root: Path = HWMON_ROOT
) -> list[RaplCounter]:
    """The readable RAPL counters (module docstring, source 1); [] when none is readable."""
    for counters in (_powercap_counters(powercap_root), _hwmon_counters(hwmon_root)):
        readable = [c for c in counters if _readable(c)]
        if readable and len(readable) == len(counters):
            return readable
    return []


def counter_delta(previous: int, current: int, max_uj: int | None) -> int:
    """µJ between two readings of a counter that wraps at ``max_uj`` (0 on a reset)."""
    delta = current - previous
    if delta >= 0:
        return delta
    if max_uj is not None and max_uj > 0 and previous <= max_uj:
        return max_uj - previous + current
    return 0


# --------------------------------------------------------------------------- NVML


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One GPU at one sample: utilization %, board power W, energy counter mJ (None if n/a)."""

    index: int
    utilization_percent: float
    power_w: float
    energy_mj: float | None
    memory_used_bytes: int


class GpuSource(Protocol):
    def read(self) -> list[GpuReading]: ...

    def close(self) -> None: ...


class NvmlReader:
    """GPUs through NVML. :meth:`open` returns None when pynvml or a GPU is missing."""

    def __init__(self, nvml: Any, handles: Sequence[Any]) -> None:
        self._nvml = nvml
        self._handles = list(handles)

    @classmethod
    def open(cls) -> NvmlReader | None:
        try:
            import pynvml  # lazy: optional, present on GPU machines only
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except Exception:  # pynvml.NVMLError and driver problems alike: no GPU telemetry
            return None
        if not handles:
            with contextlib.suppress(Exception):
                pynvml.nvmlShutdown()
            return None
        return cls(pynvml, handles)

    @property
    def count(self) -> int:
        return len(self._handles)

    def read(self) -> list[GpuReading]:
        readings = []
        for index, handle in enumerate(self._handles):
            nvml = self._nvml
            util = power = 0.0
            energy: float | None = None
            used = 0
            with contextlib.suppress(Exception):
                util = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            with contextlib.suppress(Exception):
                power = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
            with contextlib.suppress(Exception):
                energy = float(nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
            with contextlib.suppress(Exception):
                used = int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
            readings.append(GpuReading(index, util, power, energy, used))
        return readings

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._nvml.nvmlShutdown()


# --------------------------------------------------------------------------- the meter


@dataclass(frozen=True, slots=True)
class EnergyReading:
    """Cumulative energy since the first update, and the mean power of the last window."""

    time: float
    energy_j: float
    power_w: float
    host_j: float
    gpu_j: float
    source: str


class EnergyMeter:
    """Cumulative energy from RAPL, NVML or the power model (module docstring)."""

    def __init__(
        self,
        node: NodeType,
        *,
        rapl: Sequence[RaplCounter] = (),
        gpus: bool = False,
    ) -> None:
        self.node = node
        self.rapl = tuple(rapl)
        self.gpus = gpus
        self.use_model = not self.rapl and not (gpus and node.accelerator_count > 0)
        self._last_time: float | None = None
        self._last_rapl: list[int] = []
        self._last_gpu: dict[int, float | None] = {}
        self.host_j = 0.0
        self.gpu_j = 0.0
        self.power_w = 0.0

    @classmethod
    def detect(
        cls,
        node: NodeType,
        *,
        gpus: bool = False,
        powercap_root: Path = POWERCAP_ROOT,
        hwmon_root: Path = HWMON_ROOT,
    ) -> EnergyMeter:
        """A meter using RAPL when readable; ``gpus``: NVML is open and found GPUs."""
        return cls(node, rapl=find_rapl_counters(powercap_root, hwmon_root), gpus=gpus)

    @property
    def source(self) -> str:
        """``rapl``, ``model:<node type>`` or ``nvml``, with ``+nvml`` when GPUs add to it."""
        parts = []
        if self.rapl:
            parts.append("rapl")
        elif self.use_model:
            parts.append(f"model:{self.node.name}")
        if self.gpus:
            parts.append("nvml")
        return "+".join(parts)

    def describe(self) -> str:
        """One line for logs: the source and the counters or the model behind it."""
        if self.rapl:
            what = ", ".join(c.label for c in self.rapl)
        elif self.use_model:
            n = self.node
            what = (
                f"{n.idle_watts:g} W idle + ({n.peak_watts:g} − {n.idle_watts:g}) W × CPU "
                f"utilization of {n.vcpus} vCPUs"
            )
        else:
            what = "GPU energy only (host CPUs not measured)"
        return f"energy source {self.source}: {what}"

    @property
    def energy_j(self) -> float:
        return self.host_j + self.gpu_j

    def update(
        self, now: float, cpu_utilization: float, gpus: Sequence[GpuReading] = ()
    ) -> EnergyReading:
        """Add the window since the last update; ``cpu_utilization`` is ``u`` (docstring)."""
        rapl_now = [c.read_uj() for c in self.rapl] if self.rapl else []
        gpu_now = {g.index: g.energy_mj for g in gpus}
        if self._last_time is None:
            self._last_time, self._last_rapl, self._last_gpu = now, rapl_now, gpu_now
            return self.reading(now)
        window = now - self._last_time
        host = gpu = 0.0
        if window > 0:
            if self.rapl:
                deltas = zip(self._last_rapl, rapl_now, self.rapl, strict=True)
                host = sum(counter_delta(a, b, c.max_uj) for a, b, c in deltas) / 1e6
            elif self.use_model:
                host = model_energy_j(self.node, cpu_utilization, window)
            gpu = sum(self._gpu_delta(g, window) for g in gpus)
            self.host_j += host
            self.gpu_j += gpu
            self.power_w = (host + gpu) / window
            self._last_time, self._last_rapl, self._last_gpu = now, rapl_now, gpu_now
        return self.reading(now)

    def _gpu_delta(self, gpu: GpuReading, window: float) -> float:
        before = self._last_gpu.get(gpu.index)
        if gpu.energy_mj is not None and before is not None and math.isfinite(gpu.energy_mj):
            return max(gpu.energy_mj - before, 0.0) / 1000.0
        return gpu.power_w * window

    def reading(self, now: float) -> EnergyReading:
        return EnergyReading(now, self.energy_j, self.power_w, self.host_j, self.gpu_j, self.source)
