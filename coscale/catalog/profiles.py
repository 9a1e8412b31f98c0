"""Variant profiles: what each variant of a model measured on one machine, as a versioned file.

A profile file is written by ``coscale profile MODEL`` (:mod:`coscale.accel.profiler`) and
read by the simulator's service-time model and the variant selector. It is JSON validated
by :class:`ProfileFile` (pydantic, ``extra="forbid"``)::

    {"schema_version": 1, "model": "digits-cnn", "task": "image-classification",
     "hardware": {"fingerprint": "40b833703ed8", "cpu": "AMD EPYC", "logical_cpus": 2,
                  "flags": ["avx2", …], "memory_gib": 24, "accelerators": [],
                  "software": {"torch": "2.13.0+cpu", …}},
     "measured_at": "2025-01-31T12:00:00+00:00", "threads": 2, "baseline": "fp32-eager",
     "variants": [{"name": "fp32-eager", "runtime": "torch", "fidelity": 0.97,
                   "fidelity_metric": "accuracy", "fidelity_min": 0.97,
                   "throughput": 5321.0, "best_batch": 64,
                   "latency_ms": {"1": {"p50": 0.21, "p99": 0.35}, …},
                   "latency_ms_by_seq_len": null, "size_bytes": 90000,
                   "peak_memory_bytes": 310000000, "speedup": 1.0}, …]}

Contract users' scripts rely on (tested): ``model``, ``hardware``, ``baseline`` and, per
variant, ``name``, ``fidelity``, ``fidelity_metric``, ``throughput``, ``latency_ms``
(per batch size: ``p50``, ``p99``), ``size_bytes``, ``peak_memory_bytes``.

Hardware check: :func:`load_profile` compares the file's ``hardware.fingerprint`` with
this machine's (:func:`coscale.accel.hardware.fingerprint`). Latencies measured on
another machine describe that machine, so a mismatch is a :class:`ProfileError` unless
``allow_foreign=True`` (CLI: ``--allow-foreign-profile``), e.g. to simulate a cluster of
the machine the profile came from.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from coscale.accel.cache import atomic_write_bytes, cache_dir
from coscale.errors import ProfileError
from coscale.types import LatencyTable

SCHEMA_VERSION: Literal[1] = 1
#: Characters allowed in a profile file name; others in a model name become "_".
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LatencyPoint(_Strict):
    """Batch latency percentiles in milliseconds over the timed repetitions."""

    p50: float = Field(gt=0, description="median batch latency, ms")
    p99: float = Field(gt=0, description="99th percentile batch latency, ms")

    @model_validator(mode="after")
    def _ordered(self) -> LatencyPoint:
        if self.p99 < self.p50:
            raise ValueError(f"p99 ({self.p99}) must be >= p50 ({self.p50})")
        return self


def _is_positive_int(key: str) -> bool:
    """True for canonical decimal integers >= 1 ("8", not "08", "-1" or "8.0")."""
    return key.isascii() and key.isdigit() and key == str(int(key)) and int(key) >= 1


def _check_batch_keys(grid: dict[str, LatencyPoint]) -> dict[str, LatencyPoint]:
    if not grid:
        raise ValueError("needs at least one batch size")
    for key in grid:
        if not _is_positive_int(key):
            raise ValueError(f"batch size keys must be positive integers, got {key!r}")
    return grid


class Accelerator(_Strict):
    name: str
    memory_gib: float = Field(ge=0)


class HardwareBlock(_Strict):
    """The machine a profile was measured on (see :mod:`coscale.accel.hardware`)."""

    fingerprint: str = Field(min_length=1, description="short SHA-256 of the hardware fields")
    cpu: str
    logical_cpus: int = Field(ge=1)
    flags: list[str]
    memory_gib: int = Field(ge=0, description="total memory, GiB rounded to an integer")
    accelerators: list[Accelerator]
    software: dict[str, str] = Field(description="library versions; not in the fingerprint")

    def describe(self) -> str:
        """One line: CPU, logical CPUs, memory, accelerators."""
        accels = ", ".join(a.name for a in self.accelerators) or "no accelerator"
        return f"{self.cpu}, {self.logical_cpus} logical CPUs, {self.memory_gib} GiB, {accels}"


class VariantProfile(_Strict):
    """One variant's measurements. Figures are on the profile's hardware with ``threads``."""

    name: str = Field(min_length=1)
    runtime: str = Field(description='"torch" or "onnxruntime"')
    fidelity: float = Field(description="accuracy or mean cosine to fp32 on the eval set")
    fidelity_metric: Literal["accuracy", "cosine"]
    fidelity_min: float = Field(description="worst single item (cosine) or = fidelity")
    throughput: float = Field(gt=0, description="items/s at best_batch = max_b b / p50(b)")
    best_batch: int = Field(ge=1)
    latency_ms: dict[str, LatencyPoint] = Field(
        description="batch size -> latency; text models: batches of real varied-length items"
    )
    latency_ms_by_seq_len: dict[str, dict[str, LatencyPoint]] | None = Field(
        default=None, description="text only: seq len bucket -> batch size -> latency"
    )
    size_bytes: int = Field(ge=0, description="serialized weights on disk")
    peak_memory_bytes: int = Field(ge=0, description="peak RSS of the profiling process")
    speedup: float = Field(gt=0, description="throughput / baseline throughput")

    @field_validator("latency_ms")
    @classmethod
    def _batch_keys(cls, value: dict[str, LatencyPoint]) -> dict[str, LatencyPoint]:
        return _check_batch_keys(value)

    @field_validator("latency_ms_by_seq_len")
    @classmethod
    def _seq_grid(
        cls, value: dict[str, dict[str, LatencyPoint]] | None
    ) -> dict[str, dict[str, LatencyPoint]] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("needs at least one sequence length (or null)")
        columns: set[str] | None = None
        for seq, row in value.items():
            if not _is_positive_int(seq):
                raise ValueError(f"sequence length keys must be positive integers, got {seq!r}")
            _check_batch_keys(row)
            if columns is not None and set(row) != columns:
                raise ValueError("every sequence length must have the same batch sizes")
            columns = set(row)
        return value

    @model_validator(mode="after")
    def _best_batch_measured(self) -> VariantProfile:
        if str(self.best_batch) not in self.latency_ms:
            raise ValueError(f"best_batch {self.best_batch} is not a measured batch size")
        return self


class ProfileFile(_Strict):
    """A model's variant profiles on one machine (schema version 1)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    model: str = Field(min_length=1)
    task: str
    hardware: HardwareBlock
    measured_at: str = Field(description="ISO 8601 date/time of the measurement")
    threads: int = Field(ge=1, description="intra-op threads each variant ran with")
    baseline: str = Field(description="name of the fp32 baseline variant")
    variants: list[VariantProfile] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> ProfileFile:
        names = [v.name for v in self.variants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate variant names: {duplicates}")
        if self.baseline not in names:
            raise ValueError(f"baseline {self.baseline!r} is not among the variants {names}")
        return self

    def variant(self, name: str) -> VariantProfile:
        """The named variant's profile; unknown name → ProfileError listing the known ones."""
        for v in self.variants:
            if v.name == name:
                return v
        known = ", ".join(v.name for v in self.variants)
        raise ProfileError(
            f"profile of {self.model!r} has no variant {name!r}.",
            fix=f"Use one of: {known} (or re-profile with that variant).",
        )


def default_profile_path(model: str) -> Path:
    """``cache_dir("profiles") / f"{model}-{fingerprint}.json"`` for this machine.

    Characters outside ``[A-Za-z0-9._-]`` in ``model`` (a user's file path) become ``_``.
    """
    from coscale.accel.hardware import fingerprint, hardware_info

    safe = _SAFE_NAME.sub("_", model).strip("._") or "model"
    return cache_dir("profiles") / f"{safe}-{fingerprint(hardware_info())}.json"


def save_profile(profile: ProfileFile, path: Path) -> Path:
    """Write ``profile`` as indented JSON, atomically (temp file + rename)."""
    text = profile.model_dump_json(indent=2) + "\n"
    atomic_write_bytes(Path(path), text.encode())
    return Path(path)


def parse_profile(data: Any, *, source: str = "profile") -> ProfileFile:
    """Validate already-decoded JSON; errors → ProfileError naming the first bad field."""
    try:
        return ProfileFile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(
            f"{source} is not a valid profile: {_describe_errors(exc)}",
            fix="Re-create it with `coscale profile MODEL` (do not edit profile files by hand).",
        ) from None


def load_profile(path: Path, *, allow_foreign: bool = False) -> ProfileFile:
    """Read and validate a profile file; refuse one measured on other hardware.

    Raises :class:`ProfileError` when the file is missing, is not JSON, fails the schema
    (the message names the field path, e.g. ``variants.0.latency_ms.1.p99``), or — unless
    ``allow_foreign`` — its hardware fingerprint differs from this machine's.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ProfileError(
            f"cannot read profile {path}: {exc.strerror or exc}.",
            fix="Check the path, or create it with `coscale profile MODEL --out PATH`.",
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(
            f"profile {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).",
            fix="Re-create it with `coscale profile MODEL`.",
        ) from None
    profile = parse_profile(data, source=f"profile {path}")
    if not allow_foreign:
        _check_hardware(profile, path)
    return profile


def _check_hardware(profile: ProfileFile, path: Path) -> None:
    from coscale.accel.hardware import describe, fingerprint, hardware_info

    here = hardware_info()
    mine = fingerprint(here)
    if profile.hardware.fingerprint == mine:
        return
    raise ProfileError(
        f"profile {path} of {profile.model!r} was measured on other hardware: "
        f"{profile.hardware.describe()} (fingerprint {profile.hardware.fingerprint}, "
        f"{profile.measured_at}); this machine is {describe(here)} (fingerprint {mine}). "
        "Its latencies and throughputs describe that machine, not this one.",
        fix=f"Re-profile here with `coscale profile {profile.model}`, or, to use it anyway "
        "(e.g. to simulate that machine), pass --allow-foreign-profile "
        "(allow_foreign=True in Python).",
    )


def latency_table(variant: VariantProfile) -> LatencyTable:
    """The variant's p50 latencies as a :class:`LatencyTable` in seconds.

    Text profiles (``latency_ms_by_seq_len`` present) give one row per sequence-length
    bucket; otherwise one row with ``seq_lens == (0,)`` from ``latency_ms``. Axes are
    sorted numerically.
    """
    if variant.latency_ms_by_seq_len:
        grid = variant.latency_ms_by_seq_len
        seq_lens = sorted(int(s) for s in grid)
        batches = sorted(int(b) for b in grid[str(seq_lens[0])])
        rows = tuple(tuple(grid[str(s)][str(b)].p50 / 1000.0 for b in batches) for s in seq_lens)
        return LatencyTable(tuple(batches), tuple(seq_lens), rows)
    batches = sorted(int(b) for b in variant.latency_ms)
    row = tuple(variant.latency_ms[str(b)].p50 / 1000.0 for b in batches)
    return LatencyTable(tuple(batches), (0,), (row,))


def _describe_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
