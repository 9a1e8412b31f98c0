"""A small Prometheus exporter: counters, gauges and histograms in the text format 0.0.4.

coscale writes its own exporter (no ``prometheus_client`` dependency): a :class:`Registry`
holds metric *families*; each family has a name, a help text, a type and label names, and
one *child* (a value, or a histogram's buckets) per distinct tuple of label values.
:meth:`Registry.render` writes the exposition that ``GET /metrics`` serves with the
content type :data:`CONTENT_TYPE`.

Format (https://prometheus.io/docs/instrumenting/exposition_formats/, version 0.0.4)::

    # HELP coscale_requests_total Requests answered, by model, tenant and outcome.
    # TYPE coscale_requests_total counter
    coscale_requests_total{model="digits",outcome="completed",tenant="default"} 42
    # TYPE coscale_request_latency_seconds histogram
    coscale_request_latency_seconds_bucket{model="digits",le="0.005"} 40
    coscale_request_latency_seconds_bucket{model="digits",le="+Inf"} 42
    coscale_request_latency_seconds_sum{model="digits"} 0.113
    coscale_request_latency_seconds_count{model="digits"} 42

Rules (each enforced, :class:`ValueError` otherwise):

* every metric name starts with :data:`PREFIX` (``coscale_``) and matches
  ``[a-zA-Z_:][a-zA-Z0-9_:]*``; a counter's name ends in ``_total``; label names match
  ``[a-zA-Z_][a-zA-Z0-9_]*`` and do not start with ``__``; ``le`` is reserved for
  histograms; a name is registered once per registry;
* a sample gives exactly the family's label names (values are converted with ``str``);
* counters only go up: :meth:`Counter.inc` takes an amount ≥ 0 and :meth:`Counter.set_to`
  (for totals kept elsewhere, e.g. a RAPL energy counter) a value ≥ the current one;
* histogram buckets are finite, strictly increasing upper bounds; ``+Inf`` is implicit.
  An observation ``v`` counts in every bucket with ``v ≤ le`` (the rendered buckets are
  cumulative); ``_sum`` and ``_count`` follow.

Rendering: families in registration order, children sorted by label values (stable
output), label values escaped (``\\`` → ``\\\\``, ``"`` → ``\\"``, newline → ``\\n``),
help text escaped (``\\`` and newline). Values: integers as integers, ``+Inf``/``-Inf``/
``NaN`` spelled as Prometheus spells them, other floats by ``repr`` (shortest round-trip).
A family with no children renders only its HELP and TYPE lines, except an unlabelled
counter or gauge, which renders its value (0 before the first update).

Thread safety: each family has a lock; the sampler thread and the event loop update
families concurrently with a scrape. Complexity: an update is O(labels) (histograms
O(log buckets)); a render is O(children × buckets).

:class:`ServingMetrics` is the set the serving process adds (CPU and memory per replica,
GPU, power, energy, the score P_m); :func:`merge_expositions` joins it to the
serving system's request metrics without repeating a family.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "CONTENT_TYPE",
    "LATENCY_BUCKETS_S",
    "PREFIX",
    "Counter",
    "Gauge",
    "Histogram",
    "Registry",
    "ServingMetrics",
    "format_value",
    "merge_expositions",
    "parse_text",
]

#: Content type of the text exposition format 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Every coscale metric name starts with this.
PREFIX = "coscale_"
#: Request latency / queue time buckets, seconds: 0.5 ms … 10 s, about ×2–2.5 apart,
#: dense around the tens of milliseconds where SLOs of small models sit.
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
#: Batch size buckets (items): powers of two up to the largest max_batch a scenario allows.
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*)\})?'
    r" (?P<value>[^ ]+)(?: (?P<ts>-?\d+))?$"
)
_LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

LabelValues = tuple[str, ...]


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it: ``3``, ``0.25``, ``+Inf``, ``-Inf``, ``NaN``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    inner = ",".join(f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + inner + "}"


class _Family:
    """Common parts of a metric family: name, help, label names, children, lock."""

    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        if not name.startswith(PREFIX) or not _NAME.match(name):
            raise ValueError(
                f"metric name {name!r} must start with {PREFIX!r} and match "
                "[a-zA-Z_:][a-zA-Z0-9_:]*"
            )
        for label in labelnames:
            if not _LABEL.match(label) or label.startswith("__"):
                raise ValueError(f"bad label name {label!r} for {name}")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"duplicate label names for {name}: {list(labelnames)}")
        self.name = name
        self.help = help_text
        self.labelnames: tuple[str, ...] = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: Mapping[str, Any]) -> LabelValues:
        if len(labels) != len(self.labelnames) or any(n not in labels for n in self.labelnames):
            raise ValueError(
                f"{self.name} takes labels {list(self.labelnames)}, got {sorted(labels)}"
            )
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError


class _ValueFamily(_Family):
    """A family whose children are single numbers (counters and gauges)."""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[LabelValues, float] = {}

    def value(self, **labels: Any) -> float:
        """The current value for these labels (0 if never set)."""
        key = self._key(labels)
        with self._lock:
            return self._values.get(key, 0.0)

    def samples(self) -> list[tuple[LabelValues, float]]:
        """(label values, value) for every child, sorted by label values."""
        with self._lock:
            return sorted(self._values.items())

    def render(self) -> list[str]:
        lines = self.header()
        items = self.samples()
        if not items and not self.labelnames:
            items = [((), 0.0)]
        for key, value in items:
            lines.append(f"{self.name}{_labels_text(self.labelnames, key)} {format_value(value)}")
        return lines


class Counter(_ValueFamily):
    """A monotonically increasing total (name ends in ``_total``)."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter name {name!r} must end in '_total'")
        super().__init__(name, help_text, labelnames)

    def inc(self, amount: float = 1.0, **labels: Any) -> None:
        """Add ``amount`` (≥ 0, finite) to the child with these labels."""
        if not amount >= 0 or math.isinf(amount):
            raise ValueError(f"{self.name}: a counter only goes up by a finite amount ≥ 0")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def set_to(self, total: float, **labels: Any) -> None:
        """Set the child to a total kept elsewhere; it must not go down (or be NaN)."""
        key = self._key(labels)
        with self._lock:
            current = self._values.get(key, 0.0)
            if not total >= current:
                raise ValueError(f"{self.name}: counter would go down from {current} to {total}")
            self._values[key] = float(total)


class Gauge(_ValueFamily):
    """A value that goes up and down."""

    kind = "gauge"

    def set(self, value: float, **labels: Any) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, **labels: Any) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def remove(self, **labels: Any) -> None:
        """Drop one child (e.g. a replica that stopped); unknown labels are ignored."""
        key = self._key(labels)
        with self._lock:
            self._values.pop(key, None)

    def replace(self, values: Mapping[LabelValues, float]) -> None:
        """Replace every child at once (label value tuples in label-name order)."""
        for key in values:
            if len(key) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {list(self.labelnames)}, got {key}")
        with self._lock:
            self._values = {tuple(str(v) for v in k): float(x) for k, x in values.items()}


class Histogram(_Family):
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = LATENCY_BUCKETS_S,
    ) -> None:
        if "le" in labelnames:
            raise ValueError(f"{name}: 'le' is reserved for histogram buckets")
        super().__init__(name, help_text, labelnames)
        bounds = [float(b) for b in buckets]
        if not bounds or any(not math.isfinite(b) for b in bounds):
            raise ValueError(f"{name}: buckets must be finite numbers (+Inf is implicit)")
        if any(b >= c for b, c in itertools.pairwise(bounds)):
            raise ValueError(f"{name}: buckets must be strictly increasing, got {bounds}")
        self.buckets: tuple[float, ...] = tuple(bounds)
        # per child: [count per bucket (non-cumulative, last = +Inf), sum]
        self._children: dict[LabelValues, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: Any) -> None:
        """Count ``value`` (NaN is ignored)."""
        if math.isnan(value):
            return
        key = self._key(labels)
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            child = self._children.get(key)
            if child is None:
                child = ([0] * (len(self.buckets) + 1), [0.0])
                self._children[key] = child
            child[0][index] += 1
            child[1][0] += value

    def snapshot(self, **labels: Any) -> tuple[list[int], float, int]:
        """(cumulative count per bucket incl. +Inf, sum, count) for these labels."""
        key = self._key(labels)
        with self._lock:
            child = self._children.get(key)
            counts = list(child[0]) if child else [0] * (len(self.buckets) + 1)
            total = child[1][0] if child else 0.0
        cumulative = [sum(counts[: i + 1]) for i in range(len(counts))]
        return cumulative, total, cumulative[-1]

    def quantile(self, q: float, **labels: Any) -> float:
        """Estimate the ``q`` quantile as PromQL's ``histogram_quantile`` does.

        Find the bucket holding rank ``q × count`` and interpolate linearly inside it
        (the first bucket's lower bound is 0); a rank in the +Inf bucket returns the
        largest finite bound. NaN when there are no observations; ``q`` in [0, 1].
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
        cumulative, _, count = self.snapshot(**labels)
        if count == 0:
            return math.nan
        rank = q * count
        index = bisect.bisect_left(cumulative, rank)
        if index >= len(self.buckets):
            return self.buckets[-1]
        lower = self.buckets[index - 1] if index > 0 else 0.0
        below = cumulative[index - 1] if index > 0 else 0
        inside = cumulative[index] - below
        if inside <= 0:
            return self.buckets[index]
        return lower + (self.buckets[index] - lower) * (rank - below) / inside

    def render(self) -> list[str]:
        lines = self.header()
        with self._lock:
            children = sorted(
                (key, list(counts), total[0]) for key, (counts, total) in self._children.items()
            )
        bounds = [*(format_value(b) for b in self.buckets), "+Inf"]
        names = (*self.labelnames, "le")
        for key, counts, total in children:
            running = 0
            for bound, n in zip(bounds, counts, strict=True):
                running += n
                lines.append(f"{self.name}_bucket{_labels_text(names, (*key, bound))} {running}")
            labels = _labels_text(self.labelnames, key)
            lines.append(f"{self.name}_sum{labels} {format_value(total)}")
            lines.append(f"{self.name}_count{labels} {running}")
        return lines


Collector = Callable[[], None]


class Registry:
    """Metric families by name, rendered in registration order.

    ``collectors`` are called at the start of every :meth:`render` (under no lock) to
    refresh gauges computed on demand (e.g. the score P_m from the latest counters);
    one that raises is skipped and counted in ``coscale_collector_errors_total``.
    """

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._collectors: list[Collector] = []
        self._lock = threading.Lock()
        self.collector_errors = self.counter(
            "coscale_collector_errors_total",
            "Metric collectors that raised while refreshing before a scrape.",
        )

    def _add(self, family: _Family) -> Any:
        with self._lock:
            if family.name in self._families:
                raise ValueError(f"metric {family.name!r} is already registered")
            self._families[family.name] = family
        return family

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Counter:
        result: Counter = self._add(Counter(name, help_text, labelnames))
        return result

    def gauge(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Gauge:
        result: Gauge = self._add(Gauge(name, help_text, labelnames))
        return result

    def histogram(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = LATENCY_BUCKETS_S,
    ) -> Histogram:
        result: Histogram = self._add(Histogram(name, help_text, labelnames, buckets=buckets))
        return result

    def get(self, name: str) -> _Family:
        """The family registered under ``name`` (KeyError if none)."""
        return self._families[name]

    def names(self) -> list[str]:
        return list(self._families)

    def add_collector(self, collector: Collector) -> None:
        self._collectors.append(collector)

    def render(self) -> str:
        """The whole exposition, newline-terminated."""
        for collector in list(self._collectors):
            try:
                collector()
            except Exception:
                self.collector_errors.inc()
        with self._lock:
            families = list(self._families.values())
        lines: list[str] = []
        for family in families:
            lines.extend(family.render())
        return "\n".join(lines) + "\n"


class ServingMetrics:
    """The metrics the serving process adds to the serving system's request metrics.

    The request-level families — ``coscale_requests_total{model,tenant,outcome}``,
    ``coscale_request_latency_seconds``, ``coscale_queue_seconds``,
    ``coscale_batch_items``, ``coscale_batch_service_seconds`` and the replica gauges —
    are rendered by the serving system itself
    (:meth:`coscale.telemetry.records.Telemetry.prometheus_text`); the API merges the two
    expositions (:func:`merge_expositions`). This set holds what the sampler, the energy
    meter and the score compute:

    ==============================================  =========  ===========================
    name                                            type       labels
    ==============================================  =========  ===========================
    ``coscale_replica_cpu_percent``                 gauge      replica
    ``coscale_replica_memory_bytes``                gauge      replica
    ``coscale_server_cpu_percent``                  gauge      —
    ``coscale_server_memory_bytes``                 gauge      —
    ``coscale_machine_utilization_ratio``           gauge      —
    ``coscale_gpu_utilization_percent``             gauge      gpu
    ``coscale_gpu_power_watts``                     gauge      gpu
    ``coscale_power_watts``                         gauge      source
    ``coscale_energy_joules_total``                 counter    source
    ``coscale_performance_score``                   gauge      model
    ``coscale_performance_score_term``              gauge      model, term
    ==============================================  =========  ===========================

    CPU percent is of one core (200 = two cores busy), as ``top`` shows it.
    """

    def __init__(self, registry: Registry | None = None) -> None:
        r = registry if registry is not None else Registry()
        self.registry = r
        self.replica_cpu = r.gauge(
            "coscale_replica_cpu_percent",
            "CPU use of a replica's worker process over the last sample, percent of one core.",
            ("replica",),
        )
        self.replica_memory = r.gauge(
            "coscale_replica_memory_bytes",
            "Resident memory of a replica's worker process, bytes.",
            ("replica",),
        )
        self.server_cpu = r.gauge(
            "coscale_server_cpu_percent",
            "CPU use of the serving process (API, batcher, router), percent of one core.",
        )
        self.server_memory = r.gauge(
            "coscale_server_memory_bytes", "Resident memory of the serving process, bytes."
        )
        self.utilization = r.gauge(
            "coscale_machine_utilization_ratio",
            "CPU seconds of the server and its workers per second over the node type's "
            "vCPUs, in [0, 1] (the energy model's utilization).",
        )
        self.gpu_utilization = r.gauge(
            "coscale_gpu_utilization_percent", "GPU utilization reported by NVML.", ("gpu",)
        )
        self.gpu_power = r.gauge(
            "coscale_gpu_power_watts", "GPU board power reported by NVML, watts.", ("gpu",)
        )
        self.power = r.gauge(
            "coscale_power_watts",
            "Mean power over the last sample window, watts, by energy source "
            "(rapl, nvml, model:<node type>).",
            ("source",),
        )
        self.energy = r.counter(
            "coscale_energy_joules_total",
            "Energy used since the server started, joules, by energy source.",
            ("source",),
        )
        self.score = r.gauge(
            "coscale_performance_score",
            "The performance score P_m in [0, 1] over the last minute (coscale.telemetry.score).",
            ("model",),
        )
        self.score_term = r.gauge(
            "coscale_performance_score_term",
            "The normalised terms of P_m in [0, 1]: latency, throughput, energy.",
            ("model", "term"),
        )

    def render(self) -> str:
        return self.registry.render()


_HEADER = re.compile(r"^# (?:HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*)")


def _blocks(text: str) -> list[tuple[str, list[str]]]:
    """Split an exposition into (family name, lines) blocks, in order."""
    blocks: list[tuple[str, list[str]]] = []
    typed: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        header = _HEADER.match(line)
        if header:
            name = header.group(1)
            if line.startswith("# TYPE "):
                typed[name] = line.rsplit(" ", 1)[-1]
        elif line.startswith("#"):
            name = blocks[-1][0] if blocks else ""
        else:
            name = line.split("{", 1)[0].split(" ", 1)[0]
            for suffix in ("_bucket", "_sum", "_count"):
                base = name.removesuffix(suffix)
                if base != name and typed.get(base) in ("histogram", "summary"):
                    name = base
                    break
        if not blocks or blocks[-1][0] != name:
            blocks.append((name, []))
        blocks[-1][1].append(line)
    return blocks


def merge_expositions(*texts: str) -> str:
    """Concatenate expositions, keeping the first block of each family name.

    A family that two sources both export (say ``coscale_requests_total``) would make the
    exposition invalid; the earlier source wins and the later block is dropped whole.
    """
    seen: set[str] = set()
    lines: list[str] = []
    for text in texts:
        for name, block in _blocks(text):
            if name in seen:
                continue
            seen.add(name)
            lines.extend(block)
    return "\n".join(lines) + "\n" if lines else ""


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_text(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Parse an exposition into ``{sample name: [(labels, value), …]}``.

    Strict enough for tests: every non-empty line must be a ``#`` comment or a sample
    ``name{labels} value [timestamp]``; anything else raises ValueError naming the line.
    """
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            raise ValueError(f"line {number} is not a Prometheus sample: {line!r}")
        labels = {k: _unescape(v) for k, v in _LABEL_PAIR.findall(match.group("labels") or "")}
        raw = match.group("value")
        value = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}.get(raw)
        out.setdefault(match.group("name"), []).append(
            (labels, float(raw) if value is None else value)
        )
    return out
