"""What machine is this? A hardware description and a short fingerprint of it.

A variant profile (latency by batch size, throughput, peak memory) is only true on the
hardware it was measured on, so every profile file records :func:`hardware_info` and
its :func:`fingerprint`; loading a profile on a machine with a different fingerprint is
refused unless the caller explicitly allows it (:mod:`coscale.catalog.profiles`).

:func:`hardware_info` returns a JSON-able dict:

* ``cpu``: the CPU model name (``model name`` in ``/proc/cpuinfo``; on ARM Linux the
  implementer/part ids when no name is given; else :func:`platform.processor` or
  :func:`platform.machine`);
* ``logical_cpus``: logical CPUs this process may run on (``os.sched_getaffinity``,
  else ``os.cpu_count``) — a container limited to 2 of 64 cores is a 2-CPU machine;
* ``flags``: the ISA extensions that change which kernels run (:data:`RELEVANT_FLAGS`
  present on this CPU, sorted): AVX2/AVX-512/VNNI/BF16/AMX on x86, NEON/dot-product/
  SVE/BF16/I8MM on ARM;
* ``memory_gib``: total physical memory in GiB, rounded to the nearest integer (so the
  few MiB that a kernel update reserves do not change the fingerprint);
* ``accelerators``: one ``{"name", "memory_gib"}`` per CUDA device (NVML when the
  optional ``pynvml`` package is present, else ``torch.cuda``), sorted;
* ``software``: versions of python, torch, onnxruntime and numpy. Recorded for the
  reader, **not** part of the fingerprint: upgrading numpy does not make a machine
  another machine (re-profile if you want the new library's speed).

:func:`fingerprint` = the first :data:`FINGERPRINT_CHARS` (12) hex digits of the SHA-256
of the canonical JSON (sorted keys, no spaces) of the fields in :data:`HARDWARE_FIELDS`
only. It is a pure function of the dict, so a profile's hardware block can be re-checked
anywhere. :func:`hardware_info` is cached per process (the answer does not change while
the process runs, and the accelerator probe imports torch).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

#: Fields of :func:`hardware_info` that identify the machine (the fingerprint's input).
HARDWARE_FIELDS: tuple[str, ...] = ("cpu", "logical_cpus", "flags", "memory_gib", "accelerators")
#: Hex digits of SHA-256 kept in a fingerprint (48 bits: collisions are not a concern
#: among the machines one user profiles on).
FINGERPRINT_CHARS = 12
#: ISA flags that matter for inference kernels (x86 ``flags``, ARM ``Features`` names).
RELEVANT_FLAGS: frozenset[str] = frozenset(
    {
        # x86
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512_vnni",
        "avx_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
        # ARM (/proc/cpuinfo "Features")
        "neon",
        "asimd",
        "asimddp",
        "asimdhp",
        "sve",
        "sve2",
        "bf16",
        "i8mm",
    }
)
#: Flags meaning the CPU computes in bfloat16 natively.
BF16_FLAGS: frozenset[str] = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
#: Packages whose versions are recorded in ``software``.
SOFTWARE_PACKAGES: tuple[str, ...] = ("torch", "onnxruntime", "numpy")

_CPUINFO = Path("/proc/cpuinfo")
_MEMINFO = Path("/proc/meminfo")


def hardware_info() -> dict[str, Any]:
    """This machine's description (see the module docstring); a fresh copy each call."""
    return copy.deepcopy(_hardware_info_cached())


@lru_cache(maxsize=1)
def _hardware_info_cached() -> dict[str, Any]:
    cpuinfo = _read_text(_CPUINFO)
    return {
        "cpu": _cpu_name(cpuinfo),
        "logical_cpus": usable_cpus(),
        "flags": _cpu_flags(cpuinfo),
        "memory_gib": _memory_gib(),
        "accelerators": _accelerators(),
        "software": software_versions(),
    }


def fingerprint(info: dict[str, Any]) -> str:
    """Short SHA-256 of the hardware fields of ``info`` (software versions excluded).

    A field missing from ``info`` hashes as null, so an incomplete dict still has a
    (different) fingerprint rather than raising. Integral floats hash as ints.
    """
    hardware = {key: _canonical(info.get(key)) for key in HARDWARE_FIELDS}
    canonical = json.dumps(hardware, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:FINGERPRINT_CHARS]


def _canonical(value: Any) -> Any:
    """Integral floats as ints (``24.0`` → ``24``), recursively, so that a hardware block
    read back from JSON, where a validator may have turned ints into floats, hashes the
    same as the dict it was made from."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def usable_cpus() -> int:
    """Logical CPUs this process may run on (affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS / Windows have no affinity API
        return max(1, os.cpu_count() or 1)


def supports_bf16() -> bool:
    """True where bfloat16 runs natively: a CPU with AVX512-BF16/AMX-BF16/ARM BF16, or CUDA
    device 0 reporting bf16 support (Ampere and later)."""
    if BF16_FLAGS & set(hardware_info()["flags"]):
        return True
    if not has_cuda():
        return False
    import torch

    return bool(torch.cuda.is_bf16_supported())


def has_cuda() -> bool:
    """True when at least one CUDA device is visible."""
    return bool(hardware_info()["accelerators"])


def software_versions() -> dict[str, str]:
    """``{"python": …, "torch": …, …}``; a package that is not installed is left out."""
    versions = {"python": platform.python_version()}
    for package in SOFTWARE_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def describe(info: dict[str, Any]) -> str:
    """One line for messages: ``AMD EPYC, 2 logical CPUs, 23 GiB, no accelerator``."""
    accels = info.get("accelerators") or []
    accel = ", ".join(str(a.get("name")) for a in accels) if accels else "no accelerator"
    return (
        f"{info.get('cpu', '?')}, {info.get('logical_cpus', '?')} logical CPUs, "
        f"{info.get('memory_gib', '?')} GiB, {accel}"
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _cpuinfo_values(cpuinfo: str, key: str) -> list[str]:
    values = []
    for line in cpuinfo.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == key:
            values.append(value.strip())
    return values


def _cpu_name(cpuinfo: str) -> str:
    names = _cpuinfo_values(cpuinfo, "model name")
    if names and names[0]:
        return " ".join(names[0].split())
    implementer = _cpuinfo_values(cpuinfo, "cpu implementer")
    part = _cpuinfo_values(cpuinfo, "cpu part")
    if implementer and part:
        return f"{platform.machine()} implementer {implementer[0]} part {part[0]}"
    return platform.processor() or platform.machine() or "unknown"


def _cpu_flags(cpuinfo: str) -> list[str]:
    lines = _cpuinfo_values(cpuinfo, "flags") or _cpuinfo_values(cpuinfo, "features")
    present = set(lines[0].split()) if lines else set()
    if not lines and sys.platform == "darwin" and platform.machine() == "arm64":
        present = {"neon", "asimd", "asimddp", "bf16", "i8mm"} & _darwin_arm_features()
    return sorted(present & RELEVANT_FLAGS)


def _darwin_arm_features() -> set[str]:
    """Apple silicon: NEON always; dot-product/BF16/I8MM from ``sysctl hw.optional``."""
    import subprocess

    features = {"neon", "asimd"}
    probes = {"asimddp": "FEAT_DotProd", "bf16": "FEAT_BF16", "i8mm": "FEAT_I8MM"}
    for flag, key in probes.items():
        result = subprocess.run(
            ["sysctl", "-n", f"hw.optional.arm.{key}"], capture_output=True, text=True, check=False
        )
        if result.stdout.strip() == "1":
            features.add(flag)
    return features


def _memory_gib() -> int:
    for line in _read_text(_MEMINFO).splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20)
    try:
        import psutil

        return round(int(psutil.virtual_memory().total) / 2**30)
    except ImportError:  # pragma: no cover - psutil is a dependency
        return 0


def _accelerators() -> list[dict[str, Any]]:
    """CUDA devices as ``{"name", "memory_gib"}`` (GiB rounded to 0.1), NVML first."""
    devices = _nvml_devices()
    if devices is None:
        devices = _torch_cuda_devices()
    return sorted(devices, key=lambda d: (d["name"], d["memory_gib"]))


def _nvml_devices() -> list[dict[str, Any]] | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver: NVML present but unusable
        return None
    try:
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            total = pynvml.nvmlDeviceGetMemoryInfo(handle).total
            devices.append({"name": name, "memory_gib": round(total / 2**30, 1)})
        return devices
    finally:
        pynvml.nvmlShutdown()


def _torch_cuda_devices() -> list[dict[str, Any]]:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return []
    if not torch.cuda.is_available():
        return []
    devices = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        devices.append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    return devices
