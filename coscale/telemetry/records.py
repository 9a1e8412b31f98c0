"""Live telemetry: one record per answered request, running counters, interval windows.

Per-request records
-------------------
Every request the live runtime answers (a result, an error, a rejection) becomes one
:class:`RequestRecord`: id, model, tenant, arrival, deadline (the SLO deadline the
policies see), finish, outcome, queue time (arrival → its batch started on a replica;
NaN if it never started), batch size (items in the batch it rode in), service time of
that batch, replica, variant, node type, the error code when it failed, and its length
in tokens (``seq_len``; 0 for inputs without one).

:class:`Telemetry` keeps the newest ``ring_capacity`` records (default
:data:`RING_CAPACITY` = 100,000) in a ring — memory stays bounded on a server that runs
for weeks — plus exact running counters per (model, tenant) that never forget.

The ring (:class:`RecordRing`) is column-wise: one numpy array of ``ring_capacity``
slots per field, allocated *and written* (``np.full``, so the pages are resident, not
merely reserved) when the ring is built; strings (model, tenant, replica, variant, node
type, error code) are stored as ``int32`` codes into a small table of distinct strings.
Its memory is therefore fixed at start-up — about :data:`RECORD_BYTES` (93) bytes per
slot, 8.9 MiB for the default capacity, against ~31 MiB for 100,000 Python record
objects that a deque fills up during the first hours of a run (a soak then sees the
server's resident memory grow although nothing leaks). Slot ``(start + i) mod
capacity`` holds the ``i``-th oldest record; appending when full overwrites the oldest
(O(1)). The string table grows only with *distinct* strings (replica ids are new on
every replacement): when it reaches :data:`STRING_TABLE_COMPACT` (4,096) entries it is
rebuilt from the codes still in the ring (O(capacity), amortised O(1) per record), and
the threshold doubles if most entries are still in use. Reading a record back
(``ring[i]``, iteration, ``reversed(ring)``) builds a :class:`RequestRecord` on demand.

The run summary so far
----------------------
:meth:`Telemetry.summary` is :func:`coscale.telemetry.summary.summarize` over the ring's
records, so the formulas are the simulator's. While the ring has never overflowed
(the common case) that is the exact summary of every request. Once it has, the
latency percentiles are those of the last ``ring_capacity`` records (``extra
["latency_window"]`` says how many) and the counts, makespan, throughput, SLO attainment
and reliability are recomputed from the exact counters with the same formulas.
Requests still in flight are not in the summary (``extra["in_flight"]`` counts them):
they are neither answered nor lost yet.

Interval windows (for the controller)
-------------------------------------
:class:`ModelWindow` and :class:`ReplicaSample` are the frozen facts one control interval
produced; :func:`coscale.runtime.controller.build_snapshot` turns them into the
:class:`~coscale.types.Snapshot` the allocation policy reads.

Prometheus
----------
:meth:`Telemetry.prometheus_text` renders the counters and histograms (names prefixed
``coscale_``) plus the gauges the caller passes, in the text exposition format 0.0.4.
An exporter written elsewhere can read :attr:`Telemetry.counters` and
:attr:`Telemetry.histograms` directly.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, overload

import numpy as np
import numpy.typing as npt

from coscale.errors import CoscaleError
from coscale.telemetry.summary import OUTCOME_CODES, RequestRecords, summarize
from coscale.types import Outcome, ReplicaState, RunSummary

__all__ = [
    "LATENCY_BUCKETS_S",
    "RING_CAPACITY",
    "Gauge",
    "Histogram",
    "ModelWindow",
    "RecordRing",
    "ReplicaSample",
    "RequestRecord",
    "Telemetry",
    "TelemetryWindow",
    "write_parquet",
]

#: Records kept in the ring (the newest ones).
RING_CAPACITY = 100_000
#: Distinct strings in the ring's table before it is rebuilt from the codes in use.
STRING_TABLE_COMPACT = 4096
#: Upper bounds (seconds) of the latency and queue-time histogram buckets.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: Upper bounds (items) of the batch-size histogram buckets.
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class RequestRecord(NamedTuple):
    """One answered request (module docstring). Times are on the runtime's clock.

    A named tuple (immutable, built by keyword like a frozen dataclass): the ring builds
    thousands of them per read (the score's 60-s window), ~20× faster than a frozen
    dataclass's ``__init__``.
    """

    id: int
    model: str
    tenant: str
    arrival: float
    deadline: float
    finish: float
    outcome: Outcome
    items: int = 1
    queue_s: float = math.nan
    batch_size: int = 0
    service_s: float = math.nan
    replica: str = ""
    variant: str = ""
    node_type: str = ""
    error: str = ""
    seq_len: int = 0

    @property
    def latency_s(self) -> float:
        return self.finish - self.arrival

    def to_dict(self) -> dict[str, Any]:
        data = self._asdict()
        data["outcome"] = self.outcome.value
        return data


#: Numeric columns of the ring: field → (dtype, fill value of an empty slot).
_NUMERIC: dict[str, tuple[type[np.generic], float]] = {
    "id": (np.int64, -1),
    "arrival": (np.float64, math.nan),
    "deadline": (np.float64, math.nan),
    "finish": (np.float64, math.nan),
    "outcome": (np.int8, 0),
    "items": (np.int64, 0),
    "queue_s": (np.float64, math.nan),
    "batch_size": (np.int64, 0),
    "service_s": (np.float64, math.nan),
    "seq_len": (np.int32, 0),
}
#: String columns of the ring, stored as codes into its string table.
_STRINGS: tuple[str, ...] = ("model", "tenant", "replica", "variant", "node_type", "error")
#: RequestRecord's fields in declaration order (positional construction).
_FIELD_ORDER: tuple[str, ...] = RequestRecord._fields
#: Records built at once when iterating over the ring.
_CHUNK = 1024
#: Outcome code → Outcome.
_OUTCOMES = {code: outcome for outcome, code in OUTCOME_CODES.items()}
#: Bytes per ring slot (every column together).
RECORD_BYTES = sum(np.dtype(t).itemsize for t, _ in _NUMERIC.values()) + 4 * len(_STRINGS)


class RecordRing(Sequence[RequestRecord]):
    """The newest ``capacity`` records as preallocated columns (module docstring).

    A read-only :class:`~collections.abc.Sequence` of :class:`RequestRecord` (oldest
    first; ``len``, indexing, iteration, ``reversed``); :meth:`append` adds one,
    :meth:`indices` and :meth:`column` read the columns without building records.
    """

    def __init__(self, capacity: int = RING_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"ring capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._num: dict[str, npt.NDArray[Any]] = {
            name: np.full(capacity, fill, dtype) for name, (dtype, fill) in _NUMERIC.items()
        }
        self._str: dict[str, npt.NDArray[np.int32]] = {
            name: np.full(capacity, 0, np.int32) for name in _STRINGS
        }
        self._strings: list[str] = [""]
        self._codes: dict[str, int] = {"": 0}
        self._compact_at = STRING_TABLE_COMPACT
        self._start = 0
        self._len = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns (fixed from construction)."""
        return sum(a.nbytes for a in (*self._num.values(), *self._str.values()))

    @property
    def strings(self) -> int:
        """Entries in the string table (the empty string included)."""
        return len(self._strings)

    # -- writing ----------------------------------------------------------------------

    def append(self, r: RequestRecord) -> bool:
        """Store ``r`` in the next slot; True when that evicted the oldest record. O(1)."""
        full = self._len == self.capacity
        if full:
            slot = self._start
            self._start = (self._start + 1) % self.capacity
        else:
            slot = (self._start + self._len) % self.capacity
            self._len += 1
        num = self._num
        num["id"][slot] = r.id
        num["arrival"][slot] = r.arrival
        num["deadline"][slot] = r.deadline
        num["finish"][slot] = r.finish
        num["outcome"][slot] = OUTCOME_CODES[r.outcome]
        num["items"][slot] = r.items
        num["queue_s"][slot] = r.queue_s
        num["batch_size"][slot] = r.batch_size
        num["service_s"][slot] = r.service_s
        num["seq_len"][slot] = r.seq_len
        for name in _STRINGS:
            self._str[name][slot] = self._code(getattr(r, name))
        return full

    def _code(self, text: str) -> int:
        code = self._codes.get(text)
        if code is None:
            if len(self._strings) >= self._compact_at:
                self._compact()
            code = self._codes[text] = len(self._strings)
            self._strings.append(text)
        return code

    def _compact(self) -> None:
        """Rebuild the string table from the codes in the ring; double the threshold
        when more than half of it is still in use."""
        slots = self.indices()
        used = np.unique(np.concatenate([c[slots] for c in self._str.values()] + [[0]]))
        remap = np.zeros(len(self._strings), np.int32)
        remap[used] = np.arange(len(used), dtype=np.int32)
        for column in self._str.values():
            column[slots] = remap[column[slots]]
        self._strings = [self._strings[int(u)] for u in used]
        self._codes = {text: i for i, text in enumerate(self._strings)}
        if len(self._strings) * 2 > self._compact_at:
            self._compact_at *= 2

    # -- reading ----------------------------------------------------------------------

    def __len__(self) -> int:
        return self._len

    def indices(self) -> npt.NDArray[np.intp]:
        """The slots of the records, oldest first (an index array for :meth:`column`)."""
        return (self._start + np.arange(self._len)) % self.capacity

    def column(self, name: str, slots: npt.NDArray[np.intp] | None = None) -> npt.NDArray[Any]:
        """A copy of numeric column ``name`` at ``slots`` (default: every record, oldest
        first)."""
        return self._num[name][self.indices() if slots is None else slots]

    def columns(self) -> dict[str, npt.NDArray[Any]]:
        """Every field of every record, oldest first, one array per field (strings
        decoded, ``outcome`` as its value): what ``coscale serve --records`` writes
        (:func:`write_parquet`)."""
        slots = self.indices()
        text = np.array(self._strings, dtype=object)
        out: dict[str, npt.NDArray[Any]] = {}
        for name in _FIELD_ORDER:
            if name in self._str:
                out[name] = text[self._str[name][slots]]
            elif name == "outcome":
                codes = self._num[name][slots]
                out[name] = np.array([_OUTCOMES[int(c)].value for c in codes], dtype=object)
            else:
                out[name] = self._num[name][slots]
        return out

    def mask(
        self, slots: npt.NDArray[np.intp], *, tenant: str | None, model: str | None
    ) -> npt.NDArray[np.intp]:
        """The ``slots`` whose record has this tenant and/or model (None: any)."""
        for name, value in (("tenant", tenant), ("model", model)):
            if value is None:
                continue
            code = self._codes.get(value)
            if code is None:
                return slots[:0]
            slots = slots[self._str[name][slots] == code]
        return slots

    def record_at(self, slot: int) -> RequestRecord:
        """The record in ring slot ``slot`` (not a position: see :meth:`indices`)."""
        return self.rows(np.array([slot], np.intp))[0]

    def rows(self, slots: npt.NDArray[np.intp]) -> list[RequestRecord]:
        """The records in ``slots``, in that order: each column converted at once
        (``tolist``), then one :class:`RequestRecord` per slot."""
        text = self._strings
        columns: list[list[Any]] = []
        for name in _FIELD_ORDER:
            if name in self._str:
                columns.append([text[c] for c in self._str[name][slots].tolist()])
            elif name == "outcome":
                columns.append([_OUTCOMES[c] for c in self._num[name][slots].tolist()])
            else:
                columns.append(self._num[name][slots].tolist())
        return list(map(RequestRecord._make, zip(*columns, strict=True)))

    def newest_since(self, start: float) -> list[RequestRecord]:
        """The newest records up to (not including) the newest one that finished before
        ``start``, newest first — what scanning ``reversed(ring)`` and stopping at the
        first ``finish < start`` gives, in O(len) numpy plus O(result) records."""
        slots = self.indices()[::-1]
        older = np.flatnonzero(self._num["finish"][slots] < start)
        return self.rows(slots[: older[0]] if len(older) else slots)

    @overload
    def __getitem__(self, index: int) -> RequestRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[RequestRecord]: ...
    def __getitem__(self, index: int | slice) -> RequestRecord | list[RequestRecord]:
        if isinstance(index, slice):
            positions = np.arange(*index.indices(self._len))
            return self.rows((self._start + positions) % self.capacity)
        i = index + self._len if index < 0 else index
        if not 0 <= i < self._len:
            raise IndexError(f"ring index {index} out of range ({self._len} records)")
        return self.record_at((self._start + i) % self.capacity)

    def __iter__(self) -> Iterator[RequestRecord]:
        slots = self.indices()
        for i in range(0, len(slots), _CHUNK):
            yield from self.rows(slots[i : i + _CHUNK])

    def __reversed__(self) -> Iterator[RequestRecord]:
        slots = self.indices()[::-1]
        for i in range(0, len(slots), _CHUNK):
            yield from self.rows(slots[i : i + _CHUNK])


@dataclass(slots=True)
class _Counter:
    requests: int = 0
    completed: int = 0
    failed: int = 0
    rejected: int = 0
    timed_out: int = 0
    on_time: int = 0
    first_arrival: float = math.inf
    last_end: float = -math.inf

    def add(self, r: RequestRecord) -> None:
        self.requests += 1
        if r.outcome is Outcome.COMPLETED:
            self.completed += 1
            self.on_time += r.finish <= r.deadline
        elif r.outcome is Outcome.REJECTED:
            self.rejected += 1
        elif r.outcome is Outcome.TIMED_OUT:
            self.timed_out += 1
            self.failed += 1
        else:
            self.failed += 1
        self.first_arrival = min(self.first_arrival, r.arrival)
        self.last_end = max(self.last_end, r.finish, r.arrival)

    def merge(self, other: _Counter) -> None:
        for name in ("requests", "completed", "failed", "rejected", "timed_out", "on_time"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.first_arrival = min(self.first_arrival, other.first_arrival)
        self.last_end = max(self.last_end, other.last_end)


class Histogram:
    """A cumulative Prometheus histogram (upper bounds ``buckets``, plus +Inf)."""

    __slots__ = ("buckets", "count", "counts", "total")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.count += 1
        self.total += value

    def cumulative(self) -> list[int]:
        out, running = [], 0
        for c in self.counts:
            running += c
            out.append(running)
        return out


@dataclass(frozen=True, slots=True)
class Gauge:
    """One gauge sample for :meth:`Telemetry.prometheus_text`."""

    name: str
    help: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ModelWindow:
    """What one model saw during a control interval.

    ``arrivals``: requests that passed validation (admitted or not); ``latencies_s``:
    latency of each request completed in the interval; ``queue_length``: requests waiting
    at the interval's end.
    """

    name: str
    arrivals: int
    queue_length: int
    slo_s: float
    accuracy_floor: float = 0.0
    latencies_s: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class ReplicaSample:
    """One replica's facts at the end of a control interval.

    ``busy_s``: seconds it held a batch within the interval (the running batch counted up
    to the sample time); ``ready_at``: when it became READY (``inf`` while STARTING);
    ``decided_at``: when its start was decided. The other fields are
    :class:`~coscale.types.ReplicaView`'s.
    """

    id: str
    model: str
    variant: str
    node_type: str
    state: ReplicaState
    spot: bool
    outstanding: int
    queued_work_s: float
    busy_s: float
    latency_s: float
    rate: float
    capacity_rps: float
    decided_at: float
    ready_at: float


@dataclass(frozen=True, slots=True)
class TelemetryWindow:
    """A control interval ``[start, end]`` and what each model saw in it."""

    start: float
    end: float
    models: tuple[ModelWindow, ...] = ()


def write_parquet(
    tables: Sequence[Mapping[str, Sequence[Any] | npt.NDArray[Any]]], path: str | Path
) -> Path:
    """Write column tables (name → values, every column of a table equally long; the
    tables share their columns) as one Parquet file, concatenated in order; parent
    folders are made. Needs ``pyarrow``; without it → CoscaleError naming the fix."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise CoscaleError(
            "writing per-request records needs the pyarrow package, which is not installed.",
            fix="Install it: pip install pyarrow.",
            code="missing_dependency",
        ) from None
    converted = []
    for columns in tables:
        data = {}
        for name, values in columns.items():
            arr = np.asarray(values)
            data[name] = pa.array(arr.tolist() if arr.dtype == object else arr)
        converted.append(pa.table(data))
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables(converted, promote_options="default"), target)
    return target


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


@dataclass
class Telemetry:
    """Records, counters and histograms of one live run (module docstring).

    Not thread-safe: the runtime calls it from its event loop only.
    """

    ring_capacity: int = RING_CAPACITY
    ring: RecordRing = field(init=False)
    counters: dict[tuple[str, str], _Counter] = field(default_factory=dict, init=False)
    outcomes: dict[tuple[str, str, str], int] = field(default_factory=dict, init=False)
    histograms: dict[tuple[str, str], Histogram] = field(default_factory=dict, init=False)
    evicted: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.ring_capacity < 1:
            raise ValueError(f"ring_capacity must be >= 1, got {self.ring_capacity}")
        self.ring = RecordRing(self.ring_capacity)

    # -- writing ----------------------------------------------------------------------

    def record(self, r: RequestRecord) -> None:
        """Add one answered request. O(1) (plus O(log buckets) for the histograms)."""
        if self.ring.append(r):
            self.evicted += 1
        self.counters.setdefault((r.model, r.tenant), _Counter()).add(r)
        key = (r.model, r.tenant, r.outcome.value)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        if r.outcome is Outcome.COMPLETED:
            self._hist("request_latency_seconds", r.model, LATENCY_BUCKETS_S).observe(r.latency_s)
        if not math.isnan(r.queue_s):
            self._hist("queue_seconds", r.model, LATENCY_BUCKETS_S).observe(r.queue_s)

    def observe_batch(self, model: str, items: int, service_s: float) -> None:
        """One batch ran on a replica: its size in items and its service time."""
        self._hist("batch_items", model, BATCH_BUCKETS).observe(float(items))
        self._hist("batch_service_seconds", model, LATENCY_BUCKETS_S).observe(service_s)

    def _hist(self, name: str, model: str, buckets: tuple[float, ...]) -> Histogram:
        h = self.histograms.get((name, model))
        if h is None:
            h = self.histograms[(name, model)] = Histogram(buckets)
        return h

    # -- reading ----------------------------------------------------------------------

    def records(self, tenant: str | None = None, model: str | None = None) -> list[RequestRecord]:
        """The ring's records (oldest first), optionally of one tenant and/or model."""
        return self.ring.rows(self.ring.mask(self.ring.indices(), tenant=tenant, model=model))

    def counter(self, tenant: str | None = None) -> _Counter:
        """Exact counters over every request answered so far (of one tenant if given)."""
        total = _Counter()
        for (_, t), c in self.counters.items():
            if tenant is None or t == tenant:
                total.merge(c)
        return total

    def summary(
        self,
        tenant: str | None = None,
        *,
        preset: str = "",
        scenario: str = "",
        cost_usd: float = 0.0,
        energy_j: float = 0.0,
        extra: Mapping[str, Any] | None = None,
    ) -> RunSummary:
        """The run summary so far (module docstring), for one tenant if given."""
        slots = self.ring.mask(self.ring.indices(), tenant=tenant, model=None)
        columns = RequestRecords(
            self.ring.column("arrival", slots),
            self.ring.column("finish", slots),
            self.ring.column("outcome", slots),
            self.ring.column("deadline", slots),
        )
        info: dict[str, Any] = dict(extra or {})
        base = summarize(
            columns,
            preset=preset,
            scenario=scenario,
            cost_usd=cost_usd,
            energy_j=energy_j,
            extra=info,
        )
        c = self.counter(tenant)
        if c.requests == len(slots):
            return base
        # the ring overflowed: exact counts from the counters, same formulas as summarize
        span = c.last_end - c.first_arrival if c.requests else 0.0
        admitted = c.requests - c.rejected
        return dataclasses.replace(
            base,
            requests=c.requests,
            completed=c.completed,
            failed=c.failed,
            rejected=c.rejected,
            lost=0,
            throughput_rps=c.completed / span if span > 0 else 0.0,
            makespan_s=span,
            slo_attainment=c.on_time / c.requests if c.requests else 1.0,
            reliability=c.completed / admitted if admitted else 1.0,
            extra={**base.extra, "timed_out": c.timed_out, "latency_window": len(slots)},
        )

    # -- Prometheus ---------------------------------------------------------------------

    def prometheus_text(self, gauges: Iterable[Gauge] = ()) -> str:
        """Counters, histograms and ``gauges`` in the Prometheus text format (0.0.4)."""
        lines = [
            "# HELP coscale_requests_total Requests answered, by model, tenant and outcome.",
            "# TYPE coscale_requests_total counter",
        ]
        for (model, tenant, outcome), n in sorted(self.outcomes.items()):
            labels = _labels((("model", model), ("tenant", tenant), ("outcome", outcome)))
            lines.append(f"coscale_requests_total{labels} {n}")
        helps = {
            "request_latency_seconds": "Latency of completed requests (arrival to answer).",
            "queue_seconds": "Time from arrival to the start of the request's batch.",
            "batch_items": "Items per batch run on a replica.",
            "batch_service_seconds": "Seconds a replica took to run one batch.",
        }
        for name in helps:
            rows = sorted((m, h) for (n, m), h in self.histograms.items() if n == name)
            if not rows:
                continue
            full = f"coscale_{name}"
            lines += [f"# HELP {full} {helps[name]}", f"# TYPE {full} histogram"]
            for model, h in rows:
                cumulative = h.cumulative()
                for bound, count in zip((*h.buckets, math.inf), cumulative, strict=True):
                    labels = _labels((("model", model), ("le", _num(bound))))
                    lines.append(f"{full}_bucket{labels} {count}")
                lines.append(f"{full}_sum{_labels((('model', model),))} {h.total!r}")
                lines.append(f"{full}_count{_labels((('model', model),))} {h.count}")
        grouped: dict[str, list[Gauge]] = {}
        for g in gauges:  # samples of one metric must be contiguous
            full = g.name if g.name.startswith("coscale_") else f"coscale_{g.name}"
            grouped.setdefault(full, []).append(g)
        for full, samples in grouped.items():
            lines += [f"# HELP {full} {samples[0].help}", f"# TYPE {full} gauge"]
            lines += [f"{full}{_labels(g.labels)} {_num(g.value)}" for g in samples]
        return "\n".join(lines) + "\n"
