"""The simulator's latency model: measured profiles → serving options per node type.

Service time of a batch
-----------------------
A replica of variant ``v`` on node type ``n`` runs a batch of ``b`` items padded to
sequence length ``s`` in::

    service(b, s) = L_v(b, s) / speedup_n + overhead_backend

(a batch of text requests of different lengths: :func:`batch_latency`, the sum over
the length-sorted runs the worker splits it into) where ``L_v`` is the variant's
measured :class:`~coscale.types.LatencyTable` (the p50
batch latencies of its profile, :func:`coscale.catalog.profiles.latency_table`, measured
on the catalog's reference machine), ``speedup_n`` is the node type's ``speedup``
(1.0 for the reference type) and ``overhead_backend`` is the per-batch cost of the live
backend the scenario runs on (``cluster.backend``) over the local one,
:data:`BACKEND_OVERHEAD_S`: 0 for ``local`` (the reference), and for ``ray`` the median
extra wall time of a batch through a Ray actor measured side by side with a local worker
by ``benchmarks/bench_ray_backend.py`` (digits-cnn on 2 vCPUs, two runs: batch 1 0.87 and
0.82 ms, batch 8 0.94 and 0.93 ms, batch 32 1.12 and 1.04 ms; the constant is the batch-1
mean, 0.85 ms, and is not divided by the node's speedup: it is transport, not compute).
:func:`scale_table` divides every cell and adds the overhead, so the scaled table
interpolates and extrapolates exactly as the measured one does. Service times are
deterministic (the p50): the simulator reproduces the mean behaviour of a replica, not
the jitter of individual calls.

Serving options
---------------
:func:`options_for` turns one scenario model and its profile into the
:class:`~coscale.policies.base.VariantOption` rows every policy reads: one per (variant
of the profile allowed by the model's ``variants`` list) × (node type of the cluster's
pools), in profile order then pool order. An option is left out when its measured peak
memory does not fit in one replica's share of the node (``memory_gib × 2³⁰ /
replicas_per_node``). No option left → :class:`~coscale.errors.ProfileError`.

Finding a profile
-----------------
:func:`find_profile` looks, in order, for: a path the caller gives; the profile
``coscale profile`` wrote for this machine (``default_profile_path``); a reference
profile shipped with coscale (``coscale/data/profiles/<family>.json``, measured on the
reference machine). None found → :class:`~coscale.errors.ProfileError` telling how to
make one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from coscale.accel.textbatch import length_runs
from coscale.catalog import Catalog
from coscale.catalog.profiles import ProfileFile, latency_table, load_profile
from coscale.config import ModelSpec, NodePool
from coscale.errors import ProfileError
from coscale.policies.base import VariantOption
from coscale.types import Batch, LatencyTable

__all__ = [
    "BACKEND_OVERHEAD_S",
    "REFERENCE_PROFILES_DIR",
    "TYPICAL_SEQ_QUANTILE",
    "MeasuredVariant",
    "MemoLatencyTable",
    "backend_overhead_s",
    "batch_latency",
    "batch_limit",
    "clamp_seq_len",
    "find_profile",
    "max_seq_len",
    "measured_variants",
    "options_for",
    "options_from_measured",
    "scale_table",
    "truncate_table",
    "typical_seq_len",
]

#: Folder of the reference profiles shipped with coscale (one ``<family>.json`` per model).
REFERENCE_PROFILES_DIR = Path(__file__).resolve().parent.parent / "data" / "profiles"
#: Per-batch overhead (s) of each live backend over the local one (module docstring).
BACKEND_OVERHEAD_S: Mapping[str, float] = MappingProxyType({"local": 0.0, "ray": 0.85e-3})
#: Quantile of a model's request lengths used as its "typical" sequence length.
TYPICAL_SEQ_QUANTILE = 0.5
_GIB = float(2**30)


@dataclass(frozen=True)
class MemoLatencyTable(LatencyTable):
    """A :class:`~coscale.types.LatencyTable` that remembers its answers.

    :meth:`latency` is a pure function of ``(items, seq_len)``, so the first answer for
    a pair is kept in a dict and returned again: the same values, O(1) on repeats
    (batching policies ask the same few questions for every batch). The memo is
    unbounded; its size is at most (distinct batch sizes) × (distinct lengths).
    ``overhead_s``: the per-call cost included in every cell (:func:`scale_table`), which
    a batch pays once however many length runs the worker splits it into
    (:func:`batch_latency`).
    """

    overhead_s: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "_memo", {})

    def latency(self, items: int, seq_len: int = 0) -> float:
        memo: dict[tuple[int, int], float] = self.__dict__["_memo"]
        key = (items, seq_len)
        value = memo.get(key)
        if value is None:
            value = memo[key] = LatencyTable.latency(self, items, seq_len)
        return value


def scale_table(table: LatencyTable, speedup: float, overhead_s: float = 0.0) -> MemoLatencyTable:
    """``table`` with every latency divided by ``speedup`` (> 0) plus ``overhead_s``
    (≥ 0, a backend's per-batch cost), memoized. O(cells)."""
    if not speedup > 0:
        raise ProfileError(
            f"a node type's speedup must be > 0, got {speedup}.",
            fix="fix the node catalog row (speedup is relative to the reference type).",
        )
    rows = tuple(tuple(x / speedup + overhead_s for x in row) for row in table.latency_s)
    return MemoLatencyTable(table.batch_sizes, table.seq_lens, rows, overhead_s=overhead_s)


def batch_latency(table: LatencyTable, batch: Batch) -> float:
    """Predicted seconds of ``batch`` on ``table``'s replica, run as the worker runs it:
    a text model's worker splits a batch into length-sorted runs, each padded to its own
    longest item (:func:`coscale.accel.textbatch.length_runs`), so a batch whose
    requests differ in ``seq_len`` costs ``Σ_runs L(rows_r, longest_r)`` — the same
    partition, over the requests' lengths weighted by their items — less ``(runs − 1) ×
    overhead_s`` of a scaled table (the backend's per-call cost is in every cell but
    paid once per batch: one call carries all its runs). Requests of one length (every
    array model: ``seq_len`` 0) → ``L(items, seq_len)``, one lookup. O(1) then;
    O(n log n + D²) for n requests of D lengths otherwise."""
    requests = batch.requests
    first = requests[0].seq_len if requests else 0
    if all(r.seq_len == first for r in requests):
        return table.latency(batch.items, first)
    lengths = [r.seq_len for r in requests]
    items = [r.items for r in requests]
    total = 0.0
    runs = length_runs(lengths, counts=items)
    for run in runs:
        total += table.latency(sum(items[i] for i in run), max(lengths[i] for i in run))
    return total - (len(runs) - 1) * getattr(table, "overhead_s", 0.0)


def backend_overhead_s(backend: str) -> float:
    """:data:`BACKEND_OVERHEAD_S` of ``backend``; an unknown one → ProfileError."""
    try:
        return BACKEND_OVERHEAD_S[backend]
    except KeyError:
        raise ProfileError(
            f"no measured per-batch overhead for backend {backend!r}.",
            fix=f"use one of: {', '.join(BACKEND_OVERHEAD_S)}.",
        ) from None


def truncate_table(table: LatencyTable, limit: int) -> MemoLatencyTable:
    """The table restricted to batches of at most ``limit`` ≥ 1 items.

    Batch sizes above ``limit`` are dropped; when ``limit`` lies between two measured
    sizes a column at ``limit`` is added with the table's own interpolated latencies.
    Capacity models that read the largest measured batch then see the largest batch the
    batching policy can form (1 without batching). O(cells).
    """
    limit = max(1, int(limit))
    sizes = [b for b in table.batch_sizes if b <= limit]
    if not sizes or sizes[-1] < limit:
        sizes.append(limit)
    rows = tuple(tuple(table.latency(b, s) for b in sizes) for s in table.seq_lens)
    return MemoLatencyTable(
        tuple(sizes), table.seq_lens, rows, overhead_s=getattr(table, "overhead_s", 0.0)
    )


def batch_limit(batching: object, model_max_batch: int) -> int:
    """The most items a batch can hold under a batching policy and the model's limit.

    No batching → 1; a policy with ``max_batch`` or ``max_batch_size`` → the smaller of
    it and ``model_max_batch``; otherwise ``model_max_batch``.
    """
    from coscale.policies.batching import NoBatching

    if isinstance(batching, NoBatching):
        return 1
    for name in ("max_batch", "max_batch_size"):
        value = getattr(batching, name, None)
        if isinstance(value, int) and value >= 1:
            return min(value, model_max_batch)
    return model_max_batch


def _pool_types(pools: Iterable[NodePool | str]) -> list[str]:
    names: list[str] = []
    for p in pools:
        name = p if isinstance(p, str) else p.type
        if name not in names:
            names.append(name)
    return names


@dataclass(frozen=True, slots=True)
class MeasuredVariant:
    """One variant's measured latency table (on the reference machine) and its fidelity."""

    name: str
    table: LatencyTable
    fidelity: float
    memory_bytes: int = 0


def measured_variants(profile: ProfileFile) -> tuple[MeasuredVariant, ...]:
    """A profile's variants as :class:`MeasuredVariant` rows (their p50 latency tables)."""
    return tuple(
        MeasuredVariant(v.name, latency_table(v), v.fidelity, v.peak_memory_bytes)
        for v in profile.variants
    )


def options_for(
    scenario_model: ModelSpec,
    profile: ProfileFile,
    catalog: Catalog,
    pools: Iterable[NodePool | str],
    *,
    overhead_s: float = 0.0,
) -> tuple[VariantOption, ...]:
    """Serving options of one model on the cluster's node types (see the module docstring).

    ``pools``: the scenario's node pools (or node type names). ``overhead_s``: the
    backend's per-batch overhead (:func:`backend_overhead_s`). Variants named by the
    model's ``variants`` list but absent from the profile → :class:`ProfileError` naming
    them; an unknown node type → :class:`~coscale.errors.CatalogError`.
    """
    wanted = scenario_model.variants
    measured = [v.name for v in profile.variants]
    missing = [v for v in wanted or () if v not in measured]
    if missing:
        raise ProfileError(
            f"model {scenario_model.name!r} lists variant(s) {missing} that its profile "
            f"({profile.model}, measured {profile.measured_at}) does not have; it has "
            f"{', '.join(measured)}.",
            fix=f"re-profile with them (`coscale profile {profile.model} --variants "
            f"{','.join(missing)}`) or remove them from the scenario.",
        )
    return options_from_measured(
        scenario_model, measured_variants(profile), catalog, pools, overhead_s=overhead_s
    )


def options_from_measured(
    scenario_model: ModelSpec,
    variants: Sequence[MeasuredVariant],
    catalog: Catalog,
    pools: Iterable[NodePool | str],
    *,
    overhead_s: float = 0.0,
) -> tuple[VariantOption, ...]:
    """:func:`options_for` from measured rows rather than a profile file (same rules;
    variants the model does not list are skipped)."""
    wanted = scenario_model.variants
    kept = [v for v in variants if wanted is None or v.name in wanted]
    nodes = [catalog.get(name) for name in _pool_types(pools)]
    out: list[VariantOption] = []
    for v in kept:
        for node in nodes:
            share = node.memory_gib * _GIB / max(1, node.replicas_per_node)
            if v.memory_bytes > share:
                continue
            out.append(
                VariantOption(
                    model=scenario_model.name,
                    variant=v.name,
                    node=node,
                    latency=scale_table(v.table, node.speedup, overhead_s),
                    fidelity=v.fidelity,
                    memory_bytes=v.memory_bytes,
                )
            )
    if not out:
        raise ProfileError(
            f"model {scenario_model.name!r} has no serving option: none of its variants "
            f"({', '.join(v.name for v in kept) or 'none listed'}) fits the memory of a "
            f"replica on {', '.join(n.name for n in nodes)}.",
            fix="add a node type with more memory per replica, or list other variants.",
        )
    return tuple(out)


def max_seq_len(options: Iterable[VariantOption]) -> int:
    """Longest sequence length measured in any option's table (0 for fixed-size inputs)."""
    return max((max(o.latency.seq_lens) for o in options), default=0)


def clamp_seq_len(seq_lens: npt.ArrayLike, limit: int) -> npt.NDArray[np.int32]:
    """Sequence lengths clamped to ``[0, limit]`` (all 0 when ``limit`` is 0: fixed-size
    inputs). The model truncates longer inputs, so the longest profiled bucket bounds them."""
    arr = np.asarray(seq_lens, dtype=np.int64)
    if limit <= 0:
        return np.zeros(arr.shape, dtype=np.int32)
    return np.clip(arr, 0, limit).astype(np.int32)


def typical_seq_len(seq_lens: npt.ArrayLike, quantile: float = TYPICAL_SEQ_QUANTILE) -> int:
    """The ``quantile`` (nearest rank) of a model's request lengths; 0 when there are none."""
    arr = np.asarray(seq_lens)
    if arr.size == 0:
        return 0
    ranked = np.sort(arr, kind="stable")
    k = min(arr.size - 1, max(0, int(np.ceil(quantile * arr.size)) - 1))
    return int(ranked[k])


def find_profile(
    scenario_model: ModelSpec,
    *,
    given: Mapping[str, Path] | None = None,
    reference_dir: Path = REFERENCE_PROFILES_DIR,
) -> ProfileFile:
    """The measured profile of one scenario model (lookup order in the module docstring).

    ``given`` maps a scenario model name (or its source) to a profile path; such a file
    may come from other hardware (it is then taken as measured on the reference type).
    """
    from coscale.catalog.profiles import default_profile_path

    source = scenario_model.source
    family = Path(source).stem if not scenario_model.is_builtin else source
    for key in (scenario_model.name, source, family):
        if given and key in given:
            return load_profile(Path(given[key]), allow_foreign=True)
    here = default_profile_path(family)
    if here.is_file():
        return load_profile(here)
    shipped = reference_dir / f"{family}.json"
    if shipped.is_file():
        return load_profile(shipped, allow_foreign=True)
    raise ProfileError(
        f"no latency profile for model {scenario_model.name!r} ({source}): the simulator's "
        f"service times come from a profile measured by `coscale profile`, and none was "
        f"found at {here} (this machine) or {shipped} (shipped reference).",
        fix=f"run `coscale profile {source}` on this machine (a few minutes; `--quick` for a "
        f"rough one), or pass a profile with `--profile {scenario_model.name}=PATH`.",
    )
