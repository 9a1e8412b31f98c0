"""Live telemetry: one record per answered request, running counters, interval windows.

Per-request records
-------------------
Every request the live runtime answers (a result, an error, a rejection) becomes one
:class:`RequestRecord`: id, model, tenant, arrival, deadline (the SLO deadline the
policies see), finish, outcome, queue time (arrival → its batch started on a replica;
NaN if it never started), batch size (items in the batch it rode in), service time of
that batch, replica, variant, node type, and the error code when it failed.

:class:`Telemetry` keeps the newest ``ring_capacity`` records (default
:data:`RING_CAPACITY` = 100,000) in a ring — memory stays bounded on a server that runs
for weeks — plus exact running counters per (model, tenant) that never forget.

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
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coscale.telemetry.summary import OUTCOME_CODES, RequestRecords, summarize
from coscale.types import Outcome, ReplicaState, RunSummary

__all__ = [
    "LATENCY_BUCKETS_S",
    "RING_CAPACITY",
    "Gauge",
    "Histogram",
    "ModelWindow",
    "ReplicaSample",
    "RequestRecord",
    "Telemetry",
    "TelemetryWindow",
]

#: Records kept in the ring (the newest ones).
RING_CAPACITY = 100_000
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


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One answered request (module docstring). Times are on the runtime's clock."""

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

    @property
    def latency_s(self) -> float:
        return self.finish - self.arrival

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["outcome"] = self.outcome.value
        return data


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
    ring: deque[RequestRecord] = field(init=False)
    counters: dict[tuple[str, str], _Counter] = field(default_factory=dict, init=False)
    outcomes: dict[tuple[str, str, str], int] = field(default_factory=dict, init=False)
    histograms: dict[tuple[str, str], Histogram] = field(default_factory=dict, init=False)
    evicted: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.ring_capacity < 1:
            raise ValueError(f"ring_capacity must be >= 1, got {self.ring_capacity}")
        self.ring = deque(maxlen=self.ring_capacity)

    # -- writing ----------------------------------------------------------------------

    def record(self, r: RequestRecord) -> None:
        """Add one answered request. O(1) (plus O(log buckets) for the histograms)."""
        if len(self.ring) == self.ring.maxlen:
            self.evicted += 1
        self.ring.append(r)
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
        return [
            r
            for r in self.ring
            if (tenant is None or r.tenant == tenant) and (model is None or r.model == model)
        ]

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
        rows = self.records(tenant)
        columns = RequestRecords(
            np.fromiter((r.arrival for r in rows), np.float64, len(rows)),
            np.fromiter((r.finish for r in rows), np.float64, len(rows)),
            np.fromiter((OUTCOME_CODES[r.outcome] for r in rows), np.int8, len(rows)),
            np.fromiter((r.deadline for r in rows), np.float64, len(rows)),
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
        if c.requests == len(rows):
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
            extra={**base.extra, "timed_out": c.timed_out, "latency_window": len(rows)},
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
