"""``coscale load``: a load generator for a coscale server, measured at the client.

:func:`run_load` drives one model of a server at ``url`` and returns a :class:`LoadResult`:
the run summary of DESIGN.md (``requests``, ``completed``, ``failed``, ``rejected``,
``lost``, latency percentiles, throughput, …) computed with
:func:`coscale.telemetry.summary.summarize` from what *the client* saw, plus one
:class:`RequestResult` per request. ``coscale bench`` and the benchmarks call it as a
library (:func:`run_load_sync` from synchronous code); the CLI renders it.

Modes (:class:`LoadConfig`, exactly one)
----------------------------------------
* **trace** (open loop): replay a real trace (a bundled alias such as ``azure-code``, or
  a path; :func:`coscale.sim.traces.load_trace`). The window is
  ``[start_s, start_s + duration_s · speedup)`` in *trace* seconds (to the end of the
  trace when ``duration_s`` is None), replayed ``speedup`` times faster, so it lasts
  ``duration_s`` wall seconds. Text models get request lengths from the trace's token
  counts.
* **rate** (open loop): a homogeneous Poisson process at ``rate_rps`` for ``duration_s``
  (:func:`coscale.sim.workloads.poisson`, seeded).
* **closed loop**: ``concurrency`` clients, each sending its next request as soon as the
  previous one is answered, for ``duration_s`` (the paper's Figure 3).

Open loop means the arrival times are fixed before the run: request ``i`` is sent at
``t0 + times[i]`` whatever happened to the earlier ones (each is its own task; nothing
waits for a response). If the client falls behind (a busy CPU), a late request is sent
at once and its lateness is reported (``dispatch_lag_ms``); latency is measured from the
*scheduled* time, so a late client makes latencies worse, never better (no coordinated
omission). Closed-loop latency is measured from the moment the request is sent.

Bounds: at most ``max_requests`` requests (default :data:`DEFAULT_MAX_REQUESTS`; a longer
schedule is cut and ``truncated`` says so), no request is sent after ``duration_s``, and
every request ends within ``timeout_s`` — so a run ends by itself, at the latest
``duration_s + timeout_s`` after it starts.

Only loopback servers
---------------------
:func:`check_url` refuses any URL whose host is not ``localhost``, an address in
127.0.0.0/8 or ``::1`` (:class:`~coscale.errors.CoscaleError` ``non_loopback_url``; the
CLI exits 2): this tool generates load, and load is for your own machine.

Payloads (:func:`build_payloads`)
---------------------------------
The payload kind is the model's ``source`` from ``GET /v1/models`` (or
``LoadConfig.payload``, e.g. against a server that is not coscale):

* ``digits-cnn``: real images, the 1,797 8×8 digits of scikit-learn (pixel values 0–16,
  sent as integers) in a seeded order; the true labels are kept, so ``accuracy`` (the
  share of items whose returned ``label`` is right) is reported.
* ``minilm``: real English sentences (:mod:`coscale.accel.sentences`, disjoint from the
  evaluation set). With a trace whose requests carry token counts, each request's items
  are texts of about that many tokens (:func:`~coscale.accel.sentences.text_of_tokens`,
  the model's tokenizer), clamped to the model's maximum (256); otherwise pool
  sentences of their natural length.
* a model file: seeded inputs of the model's input shape — from the ``inputs`` field of
  ``GET /v1/models`` when the server publishes one (``[{"name", "shape", "dtype"}]``,
  the shape without the batch axis, ``null`` for a symbolic axis), else read from the
  file itself (the server is on this machine) with its family's ``profiling_batch``.

Bodies are JSON-encoded before the run starts (a bank of at most
:data:`PAYLOAD_BANK` bodies, or :data:`TEXTS_PER_LENGTH` texts per distinct token count,
reused round-robin), so encoding costs nothing while the clock runs.

Every response is classified (:func:`classify_status`, :func:`classify_exception`)
-------------------------------------------------------------------------------------
======================================  ==========  =====================================
response                                outcome     ``error`` code
======================================  ==========  =====================================
200 with one output per item            completed   ``""``
200 with a malformed body               failed      ``bad_response``
429                                     rejected    the body's ``error`` (``overloaded``)
504                                     timed out   the body's ``error`` (counted failed)
any other status                        failed      the body's ``error``, else ``http_N``
no answer within ``timeout_s``          failed      ``client_timeout``
connection refused                      failed      ``connect_error``
connection closed / read / write error  failed      ``connection_closed`` /
                                                    ``connection_error``
======================================  ==========  =====================================

Nothing is dropped: every request planned and sent ends with exactly one outcome, so
``requests = completed + failed + rejected`` and ``lost`` (no outcome) is 0 unless the
run itself was interrupted.

The summary (:func:`summarize_load`)
------------------------------------
:func:`~coscale.telemetry.summary.summarize` over (arrival, finish, outcome, deadline)
where arrival is the scheduled time (open loop) or the send time (closed loop) and the
deadline is arrival + the model's SLO (``slo_ms`` from ``GET /v1/models``, or
``LoadConfig.slo_ms``; none → infinite). ``cost_usd`` and ``energy_j`` are the growth of
the server's own ``/v1/stats`` figures over the run (0 when it publishes none);
``preset`` and ``scenario`` are the server's. Extra keys: ``mode``, ``offered_rps``
(requests / the schedule's length, or / the makespan in closed loop),
``errors`` (code → count), ``statuses`` (HTTP status → count, ``0`` for no response),
``items_per_request``, ``items_throughput``, ``accuracy`` (digits), ``dispatch_lag_ms``,
``connections``, ``truncated``, ``served_p99_ms`` (:func:`served_quantile_ms`),
``server`` (the server's counters over the run, for cross-checking), and the client's
own count of answers: ``sent`` (requests that left the client), ``responses`` (those
answered with an HTTP status, any status) and ``no_response`` = ``sent − responses``
(no status within ``timeout_s``, or the connection failed: a request the server may
have accepted and never answered).

Tenants: ``api_key`` is sent as ``Authorization: Bearer KEY`` on every request, the
probes (``/v1/models``, ``/v1/stats``) included; it is never written to the summary.

Connection pool (:func:`pool_size`)
-----------------------------------
Closed loop: one connection per client. Open loop (unless ``connections`` is given, at
most :data:`MAX_POOL`), by Little's law: the peak arrival
rate over 1-s bins × the time a request is expected to stay (the SLO, at least
:data:`MIN_STAY_S`, at most the timeout) × :data:`POOL_HEADROOM`, clamped to
[:data:`MIN_POOL`, :data:`MAX_POOL`]. When every connection is busy a request waits for
one in the client; that wait counts in its latency (it is measured from the schedule).

The requests go through :mod:`coscale.loadclient` (``http_client="lean"``, the default):
one pool of keep-alive HTTP/1.1 connections over asyncio protocols, responses parsed by
httptools in C. Its connections are opened before the schedule's time 0 (a run that
opened them as its first requests went out sent those up to 160 ms late, together).
A request waits for a connection on an ``asyncio.Semaphore`` (O(1),
however long the backlog: a server that stalls under open-loop load must not make its
load generator spend O(backlog) CPU per response and starve the server it shares the
cores with). It costs about 0.25 ms of client CPU per request against 1.5 ms for httpx
on this project's 2-core machine (``benchmarks/bench_load_client.py``; the figures are
in ``docs/benchmarks.md``), and the load generator shares the cores with the server it
measures, so the difference is the server's.

httpx is used for the probes (``/readyz``, ``/v1/models``, ``/v1/stats``), for https
URLs, for a custom ``transport`` (tests: ``httpx.ASGITransport``) and when
``http_client="httpx"``. Its pool is then split into several ``httpx.AsyncClient`` of
:data:`SHARD_CONNECTIONS` (4) connections each, and each open-loop request goes to the
client with the fewest requests in flight (a closed-loop client keeps its own):
httpcore's pool does O(connections) work per request, so one pool of 64 connections
costs ~3 ms of client CPU per request against ~0.9 ms for 16 pools of 4 (measured
against ``GET /healthz``); a request waits for one of its client's connections on a
semaphore too, never inside httpcore's pool (which rescans every waiting request
whenever a connection frees up).

An idle connection is dropped after :data:`KEEPALIVE_EXPIRY_S` (2 s), well before the
server closes it (uvicorn: 5 s; httpx's default, 5 s too, races with it: a request
written on a connection the server is closing at that moment fails with a read error
and never reaches the server — a lost request that says nothing about the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import numpy.typing as npt
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from coscale.clock import Clock, SystemClock
from coscale.errors import CoscaleError, InvalidInputError, UnknownModelError
from coscale.loadclient import (
    ClientError,
    ConnectFailed,
    ConnectionPool,
    PeerClosed,
    encode_request,
)
from coscale.runtime.wire import NPY_MEDIA_TYPE, decode_npy, encode_npy
from coscale.sim.workloads import Workload, poisson
from coscale.telemetry.summary import OUTCOME_CODES, RequestRecords, summarize
from coscale.types import Outcome, RunSummary

__all__ = [
    "DEFAULT_MAX_REQUESTS",
    "DEFAULT_TIMEOUT_S",
    "LoadConfig",
    "LoadProgress",
    "LoadResult",
    "PayloadBank",
    "RequestResult",
    "Schedule",
    "SearchResult",
    "auth_headers",
    "build_payloads",
    "build_schedule",
    "check_url",
    "classify_exception",
    "classify_status",
    "poisson_schedule",
    "pool_size",
    "resolve_api_key",
    "run_load",
    "run_load_sync",
    "schedule_from_workload",
    "search_max_load",
    "served_quantile_ms",
    "summarize_load",
    "trace_workload",
    "wait_ready",
]

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]

#: Most requests one run sends (bounds memory: one record per request).
DEFAULT_MAX_REQUESTS = 200_000
#: Seconds a request may take, end to end, before the client gives up on it.
DEFAULT_TIMEOUT_S = 30.0
#: Seconds between the schedule's time 0 and the moment it is computed (so the first
#: arrivals are not late by the time the dispatcher starts).
START_DELAY_S = 0.05
#: Records built between yields to the event loop before a run's time 0 (so that a
#: second run in the same loop is not held up by this one's preparation).
RECORDS_PER_YIELD = 2_000
#: Arrivals due within this many seconds are sent together rather than slept for.
DISPATCH_SLACK_S = 0.0005
#: Seconds between progress callbacks.
PROGRESS_INTERVAL_S = 0.25
#: Connection pool bounds and sizing (see the module docstring).
MIN_POOL = 4
MAX_POOL = 256
MIN_STAY_S = 0.1
POOL_HEADROOM = 2.0
#: Connections per httpx client: the pool is split into clients of this many (see the
#: module docstring, "Connection pool").
SHARD_CONNECTIONS = 4
#: Seconds an idle connection is kept (below the server's keep-alive timeout, 5 s).
KEEPALIVE_EXPIRY_S = 2.0
#: Distinct request bodies encoded before the run (reused round-robin).
PAYLOAD_BANK = 128
#: Distinct texts per token count for text models with trace lengths.
TEXTS_PER_LENGTH = 4
#: Seconds to wait for GET /v1/models and /v1/stats.
INFO_TIMEOUT_S = 10.0
#: Largest number of items in one request (the API's DEFAULT_MAX_ITEMS).
MAX_ITEMS = 1024

Mode = Literal["trace", "rate", "closed"]
JSON_HEADERS = {"content-type": "application/json"}
NPY_HEADERS = {"content-type": NPY_MEDIA_TYPE, "accept": NPY_MEDIA_TYPE}


# ------------------------------------------------------------------------------ config


class LoadConfig(BaseModel):
    """What to send, where, for how long (module docstring). Exactly one of ``trace``,
    ``rate_rps``, ``concurrency``; ``rate_rps`` and ``concurrency`` need ``duration_s``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="Base URL of the server, e.g. http://127.0.0.1:8000 (loopback).")
    model: str = Field(min_length=1, description="Model name as served (the URL's {model}).")
    trace: str | None = Field(default=None, description="Trace alias or path (open loop).")
    trace_format: Literal["auto", "azure", "servegen", "mooncake"] = "auto"
    speedup: float = Field(default=1.0, gt=0, description="Trace replay speed-up factor.")
    start_s: float = Field(default=0.0, ge=0, description="Where the trace window starts (s).")
    rate_rps: float | None = Field(default=None, gt=0, description="Poisson rate (open loop).")
    concurrency: int | None = Field(default=None, ge=1, le=4096, description="Closed loop.")
    duration_s: float | None = Field(default=None, gt=0, description="Seconds of load.")
    items: int = Field(default=1, ge=1, le=MAX_ITEMS, description="Items per request.")
    binary: bool = Field(
        default=False,
        description="Send .npy bodies and ask for .npy answers (application/x-npy) instead "
        "of JSON; single-input models.",
    )
    timeout_s: float = Field(default=DEFAULT_TIMEOUT_S, gt=0, description="Client timeout (s).")
    seed: int = Field(default=0, ge=0, description="Seed of arrivals and payloads.")
    max_requests: int = Field(default=DEFAULT_MAX_REQUESTS, ge=1, description="Request cap.")
    slo_ms: float | None = Field(default=None, gt=0, description="Default: the server's.")
    payload: str | None = Field(
        default=None,
        description="Payload kind (digits-cnn, minilm, a model file); default: "
        "the model's source from GET /v1/models.",
    )
    wait_ready_s: float = Field(default=0.0, ge=0, description="Wait for /readyz first (s).")
    connections: int | None = Field(
        default=None,
        ge=1,
        le=MAX_POOL,
        description="Connections to open (open loop); default: sized by pool_size.",
    )
    api_key: str | None = Field(
        default=None,
        min_length=1,
        repr=False,
        description="API key sent as `Authorization: Bearer KEY` on every request (a "
        "server with tenants); never written to the summary.",
    )
    http_client: Literal["lean", "httpx"] = Field(
        default="lean",
        description="The client that sends the requests: `lean` (coscale.loadclient, a "
        "small fraction of httpx's CPU per request) or `httpx`; https URLs always use httpx.",
    )
    preset: str | None = Field(default=None, description="Label for the summary's preset.")
    scenario: str | None = Field(default=None, description="Label for the summary's scenario.")

    @model_validator(mode="after")
    def _one_mode(self) -> LoadConfig:
        given = [
            name
            for name, value in (
                ("--trace", self.trace),
                ("--rate", self.rate_rps),
                ("--concurrency", self.concurrency),
            )
            if value is not None
        ]
        if len(given) != 1:
            what = "none" if not given else " and ".join(given)
            raise ValueError(f"give exactly one of --trace, --rate, --concurrency (got {what})")
        if self.trace is None and self.duration_s is None:
            raise ValueError(f"{given[0]} needs --duration (seconds of load)")
        if self.trace is None and (self.speedup != 1.0 or self.start_s != 0.0):
            raise ValueError("--speedup and --start apply only to --trace")
        return self

    @property
    def mode(self) -> Mode:
        if self.trace is not None:
            return "trace"
        return "rate" if self.rate_rps is not None else "closed"

    @classmethod
    def build(cls, **values: Any) -> LoadConfig:
        """Validate ``values``; a problem → :class:`InvalidInputError` naming the field."""
        try:
            return cls(**values)
        except ValidationError as exc:
            parts = []
            for err in exc.errors()[:5]:
                where = ".".join(str(p) for p in err["loc"])
                msg = str(err["msg"]).removeprefix("Value error, ")
                parts.append(f"{where}: {msg}" if where else msg)
            raise InvalidInputError(
                "invalid load settings: " + "; ".join(parts) + ".",
                fix="e.g. `coscale load http://127.0.0.1:8000 --model digits --rate 100 "
                "--duration 10`, or --trace azure-code --speedup 4, or --concurrency 8 "
                "--duration 10.",
            ) from None


def check_url(url: str) -> str:
    """The base URL without a trailing slash, if its host is loopback; else CoscaleError.

    Loopback: ``localhost``, 127.0.0.0/8, ``::1`` (:func:`coscale.api.is_loopback`). The
    scheme must be http or https.
    """
    from coscale.api import is_loopback

    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise CoscaleError(
            f"{url!r} is not a URL ({exc}).",
            fix="give the server's base URL, e.g. http://127.0.0.1:8000.",
            code="bad_url",
        ) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise CoscaleError(
            f"{url!r} is not an http(s) URL with a host.",
            fix="give the server's base URL, e.g. http://127.0.0.1:8000.",
            code="bad_url",
        )
    if not is_loopback(parsed.host):
        raise CoscaleError(
            f"refusing to send load to {parsed.host}: coscale load only targets servers on "
            "this machine (localhost, 127.0.0.0/8 or ::1).",
            fix="run the server here and point coscale load at it, e.g. http://127.0.0.1:8000.",
            code="non_loopback_url",
        )
    return str(parsed).rstrip("/")


# ------------------------------------------------------------------------------ schedules


@dataclass(frozen=True, eq=False)
class Schedule:
    """Open-loop arrivals: ``times`` (s from the start, sorted) and per-request token
    counts ``seq_lens`` (0 = unknown). ``duration_s``: the window's length.
    ``planned``: arrivals in the window before the ``max_requests`` cut."""

    times: F64
    seq_lens: I32
    duration_s: float
    planned: int
    name: str = "schedule"

    def __len__(self) -> int:
        return int(self.times.shape[0])

    @property
    def truncated(self) -> bool:
        return self.planned > len(self)

    @property
    def offered_rps(self) -> float:
        """Requests per second over the window (0 for an empty one)."""
        span = self.duration_s
        if len(self) < self.planned and len(self):  # cut: the rate of what is sent
            span = float(self.times[-1])
        return len(self) / span if span > 0 else 0.0


def schedule_from_workload(
    workload: Workload,
    *,
    speedup: float = 1.0,
    duration_s: float | None = None,
    max_requests: int = DEFAULT_MAX_REQUESTS,
) -> Schedule:
    """``workload`` sped up ``speedup`` times, cut at ``duration_s`` wall seconds (times
    ``< duration_s``; all when None) and at ``max_requests`` arrivals. O(N)."""
    if not (speedup > 0 and math.isfinite(speedup)):
        raise InvalidInputError(
            f"speed-up must be a positive number, got {speedup}.", fix="e.g. --speedup 2."
        )
    if max_requests < 1:
        raise InvalidInputError(f"max_requests must be >= 1, got {max_requests}.", fix="")
    fast = workload.scale_time(speedup)
    span = fast.duration_s if duration_s is None else float(duration_s)
    inside = int(np.searchsorted(fast.times, span, side="left"))
    keep = min(inside, max_requests)
    return Schedule(
        times=fast.times[:keep].copy(),
        seq_lens=fast.seq_lens[:keep].copy(),
        duration_s=span,
        planned=inside,
        name=workload.name,
    )


def poisson_schedule(
    rate_rps: float, duration_s: float, *, seed: int, max_requests: int = DEFAULT_MAX_REQUESTS
) -> Schedule:
    """Poisson arrivals at ``rate_rps`` on ``[0, duration_s)`` (seeded), at most
    ``max_requests`` of them."""
    workload = poisson(rate_rps, duration_s, np.random.default_rng(seed), name="poisson")
    return schedule_from_workload(workload, duration_s=duration_s, max_requests=max_requests)


def trace_workload(
    trace: str, *, fmt: str = "auto", start_s: float = 0.0, window_s: float | None, seed: int
) -> Workload:
    """The trace window ``[start_s, start_s + window_s)`` (trace seconds; to the end when
    ``window_s`` is None), re-based to 0. ``trace``: a bundled alias or a path."""
    from coscale.config import TraceSpec, resolve_trace_format, resolve_trace_path
    from coscale.sim.traces import load_trace

    try:
        spec = TraceSpec(path=trace, format=fmt)  # type: ignore[arg-type]
    except ValidationError as exc:
        message = exc.errors()[0].get("ctx", {}).get("message") or exc.errors()[0]["msg"]
        raise InvalidInputError(
            f"--trace {trace}: {message}.",
            fix="use a bundled trace (azure-code, azure-conv, mooncake, servegen-language, "
            "servegen-reason) or the path of a trace file.",
        ) from None
    workload = load_trace(
        resolve_trace_path(spec),
        resolve_trace_format(spec),
        rng=np.random.default_rng(seed),
        start_s=start_s,
        duration_s=window_s,
    )
    return workload.renamed(trace if len(trace) < 40 else Path(trace).name)


def build_schedule(config: LoadConfig) -> Schedule | None:
    """The open-loop schedule of ``config``; None in closed loop."""
    if config.mode == "closed":
        return None
    if config.mode == "rate":
        assert config.rate_rps is not None and config.duration_s is not None
        return poisson_schedule(
            config.rate_rps, config.duration_s, seed=config.seed, max_requests=config.max_requests
        )
    assert config.trace is not None
    window = None if config.duration_s is None else config.duration_s * config.speedup
    workload = trace_workload(
        config.trace,
        fmt=config.trace_format,
        start_s=config.start_s,
        window_s=window,
        seed=config.seed,
    )
    return schedule_from_workload(
        workload,
        speedup=config.speedup,
        duration_s=config.duration_s,
        max_requests=config.max_requests,
    )


def peak_rate(times: F64, bin_s: float = 1.0) -> float:
    """Most arrivals in one ``bin_s`` bin, per second (0 for no arrivals)."""
    if times.size == 0:
        return 0.0
    counts = np.bincount((times // bin_s).astype(np.int64))
    return float(counts.max()) / bin_s


def pool_size(
    schedule: Schedule | None, *, concurrency: int | None, slo_s: float | None, timeout_s: float
) -> int:
    """Connections to open (module docstring, "Connection pool")."""
    if schedule is None:
        return max(1, concurrency or 1)
    stay = max(MIN_STAY_S, slo_s or MIN_STAY_S)
    stay = min(stay, timeout_s)
    want = math.ceil(peak_rate(schedule.times) * stay * POOL_HEADROOM)
    return int(min(MAX_POOL, max(MIN_POOL, want)))


# ------------------------------------------------------------------------------ payloads


@dataclass(frozen=True, eq=False)
class PayloadBank:
    """Pre-encoded request bodies. ``pick(j, seq_len)`` → index into ``bodies``.

    ``labels[b]``: the true label of each item of body ``b`` (digits), else None.
    ``by_length``: token count → body indices (text models with trace lengths).
    """

    kind: str
    items: int
    bodies: tuple[bytes, ...]
    labels: tuple[tuple[int, ...], ...] | None = None
    by_length: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    #: bodies are ``.npy`` arrays (and answers are asked for as ``.npy``)
    binary: bool = False

    @property
    def headers(self) -> dict[str, str]:
        return dict(NPY_HEADERS) if self.binary else dict(JSON_HEADERS)

    def pick(self, j: int, seq_len: int = 0) -> int:
        if self.by_length and seq_len in self.by_length:
            choices = self.by_length[seq_len]
            return choices[j % len(choices)]
        return j % len(self.bodies)


def _encode(items: Sequence[Any] | np.ndarray, binary: bool = False) -> bytes:
    """A request body: JSON ``{"inputs": items}``, or with ``binary`` one ``.npy`` array of
    the items (batch axis first; a multi-input model's dict items cannot be one array)."""
    if not binary:
        return json.dumps({"inputs": list(items)}, separators=(",", ":")).encode()
    if any(isinstance(item, Mapping) for item in items):
        raise CoscaleError(
            "--binary sends one array per request, but this model takes several inputs.",
            fix="send JSON (drop --binary) for multi-input models.",
            code="invalid_input",
        )
    return encode_npy(np.asarray(items))


def _digits_bank(items: int, seed: int, bank: int, binary: bool = False) -> PayloadBank:
    from sklearn.datasets import load_digits

    data = load_digits()
    pixels = np.asarray(data.data, dtype=np.int64)
    labels = np.asarray(data.target, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(pixels))
    bodies, truth = [], []
    for b in range(bank):
        rows = order[(b * items + np.arange(items)) % len(order)]
        images = pixels[rows]
        bodies.append(_encode(images.astype(np.float32) if binary else images.tolist(), binary))
        truth.append(tuple(int(x) for x in labels[rows]))
    return PayloadBank("digits-cnn", items, tuple(bodies), tuple(truth), binary=binary)


def _minilm_bank(
    items: int, seed: int, bank: int, seq_lens: I32 | None, binary: bool = False
) -> PayloadBank:
    from coscale.accel import sentences

    lengths = sorted({int(s) for s in seq_lens.tolist()} - {0}) if seq_lens is not None else []
    if not lengths:
        plain = [
            _encode(sentences.sample_sentences(items, seed * 1_000_003 + b), binary)
            for b in range(bank)
        ]
        return PayloadBank("minilm", items, tuple(plain), binary=binary)
    from coscale.accel.minilm import TextTokenizer, model_dir, read_max_seq_len

    folder = model_dir()
    limit = read_max_seq_len(folder)
    tokenizer = TextTokenizer(folder, limit)
    rng = np.random.default_rng(seed)
    size = len(sentences.pool())
    cache: dict[int, list[str]] = {}
    bodies: list[bytes] = []
    by_length: dict[int, tuple[int, ...]] = {}
    for length in lengths:
        n = max(3, min(length, limit))
        if n not in cache:
            cache[n] = [
                sentences.text_of_tokens(n, tokenizer.layout, int(rng.integers(size)))
                for _ in range(TEXTS_PER_LENGTH)
            ]
        texts = cache[n]
        indices = []
        for k in range(min(TEXTS_PER_LENGTH, bank)):
            indices.append(len(bodies))
            bodies.append(_encode([texts[(k + i) % len(texts)] for i in range(items)], binary))
        by_length[length] = tuple(indices)
    return PayloadBank("minilm", items, tuple(bodies), by_length=by_length, binary=binary)


def _spec_items(specs: Sequence[Mapping[str, Any]], items: int, seed: int) -> list[Any]:
    """Seeded items from published input specs ``[{"name", "shape", "dtype"}]``."""
    rng = np.random.default_rng(seed)
    columns = {}
    for spec in specs:
        dims = tuple(d if isinstance(d, int) and d > 0 else 16 for d in spec.get("shape", []))
        dtype = np.dtype(str(spec.get("dtype", "float32")))
        shape = (items, *dims)
        if dtype == np.bool_:
            columns[str(spec["name"])] = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            columns[str(spec["name"])] = rng.integers(0, 10, size=shape).astype(dtype)
        else:
            columns[str(spec["name"])] = rng.standard_normal(shape).astype(dtype)
    return _rows(columns, items)


def _rows(columns: Mapping[str, np.ndarray], items: int) -> list[Any]:
    names = list(columns)
    if len(names) == 1:
        return [columns[names[0]][i].tolist() for i in range(items)]
    return [{n: columns[n][i].tolist() for n in names} for i in range(items)]


def _file_bank(
    source: str,
    items: int,
    seed: int,
    bank: int,
    specs: Sequence[Mapping[str, Any]] | None,
    binary: bool = False,
) -> PayloadBank:
    if specs:
        bodies = [_encode(_spec_items(specs, items, seed + b), binary) for b in range(bank)]
        return PayloadBank(source, items, tuple(bodies), binary=binary)
    from coscale.accel.zoo import get_family

    if not Path(source).is_file():
        raise CoscaleError(
            f"cannot make inputs for model source {source!r}: the server publishes no input "
            "shapes and there is no such file here.",
            fix="pass --payload with the model file's path (or digits-cnn / minilm).",
            code="no_payload",
        )
    family = get_family(source)
    bodies = []
    for b in range(bank):
        batch = family.profiling_batch(items, None, seed + b)
        columns = batch if isinstance(batch, Mapping) else {"x": np.asarray(batch)}
        rows = _rows({k: np.asarray(v) for k, v in columns.items()}, items)
        bodies.append(_encode(rows, binary))
    return PayloadBank(source, items, tuple(bodies), binary=binary)


def build_payloads(
    kind: str,
    *,
    items: int,
    seed: int,
    seq_lens: I32 | None = None,
    input_specs: Sequence[Mapping[str, Any]] | None = None,
    bank: int = PAYLOAD_BANK,
    binary: bool = False,
) -> PayloadBank:
    """The bodies for payload ``kind`` (module docstring, "Payloads"); ``binary``: ``.npy``."""
    if kind == "digits-cnn":
        return _digits_bank(items, seed, bank, binary)
    if kind == "minilm":
        return _minilm_bank(items, seed, bank, seq_lens, binary)
    return _file_bank(kind, items, seed, bank, input_specs, binary)


# ------------------------------------------------------------------------------ outcomes


@dataclass(slots=True)
class RequestResult:
    """One request as the client saw it. Times in seconds from the run's start.

    ``scheduled``: when it was due (open loop) or sent (closed loop); ``sent``: when the
    client started sending it; ``wired``: when it got a connection and went on the wire
    (NaN: it waited for a free connection until its timeout, so the server never saw
    it); ``finish``: when its outcome was known (NaN: never).
    ``status``: HTTP status, 0 when no response. ``correct``: items answered with the
    right label (digits), -1 when unknown.
    """

    index: int
    scheduled: float
    sent: float = math.nan
    finish: float = math.nan
    wired: float = math.nan
    status: int = 0
    outcome: Outcome | None = None
    error: str = ""
    items: int = 1
    seq_len: int = 0
    correct: int = -1

    @property
    def latency_s(self) -> float:
        return self.finish - self.scheduled

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "scheduled": self.scheduled,
            "sent": self.sent,
            "wired": self.wired,
            "finish": self.finish,
            "status": self.status,
            "outcome": self.outcome.value if self.outcome is not None else None,
            "error": self.error,
            "items": self.items,
            "seq_len": self.seq_len,
            "correct": self.correct,
        }


def _error_code(body: bytes | None, status: int) -> str:
    if body:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            data = None
        if isinstance(data, dict) and isinstance(data.get("error"), str) and data["error"]:
            return str(data["error"])
    return f"http_{status}"


def classify_status(status: int, body: bytes | None) -> tuple[Outcome, str]:
    """(outcome, error code) of a non-200 response (module docstring's table); a 200 is
    completed with code ``""`` (its body is checked by the caller)."""
    if status == 200:
        return Outcome.COMPLETED, ""
    code = _error_code(body, status)
    if status == 429:
        return Outcome.REJECTED, code
    if status == 504:
        return Outcome.TIMED_OUT, code
    return Outcome.FAILED, code


def classify_exception(exc: BaseException) -> tuple[Outcome, str]:
    """(outcome, error code) of a request that got no response (module docstring)."""
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return Outcome.FAILED, "client_timeout"
    if isinstance(exc, httpx.ConnectError | ConnectFailed):
        return Outcome.FAILED, "connect_error"
    if isinstance(exc, httpx.RemoteProtocolError | PeerClosed):
        return Outcome.FAILED, "connection_closed"
    if isinstance(exc, httpx.TransportError | ClientError | OSError):
        return Outcome.FAILED, "connection_error"
    return Outcome.FAILED, f"client_error:{type(exc).__name__}"


def check_outputs(
    body: bytes, items: int, labels: Sequence[int] | None, binary: bool = False
) -> tuple[bool, int]:
    """(well formed, items labelled right or -1) of a 200 body: ``{"outputs": [...]}``
    with one object per item, or with ``binary`` one ``.npy`` array with one row per item
    (a digits row's label is its argmax)."""
    if binary:
        return _check_npy_outputs(body, items, labels)
    try:
        outputs = orjson.loads(body)["outputs"]  # 10× json.loads on embeddings
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return False, -1
    if not isinstance(outputs, list) or len(outputs) != items:
        return False, -1
    if not all(isinstance(o, dict) for o in outputs):
        return False, -1
    if labels is None:
        return True, -1
    correct = sum(1 for o, y in zip(outputs, labels, strict=True) if o.get("label") == y)
    return True, correct


def _check_npy_outputs(body: bytes, items: int, labels: Sequence[int] | None) -> tuple[bool, int]:
    try:
        rows = decode_npy(body)
    except CoscaleError:
        return False, -1
    if rows.ndim < 1 or len(rows) != items or rows.dtype.kind != "f":
        return False, -1
    if labels is None:
        return True, -1
    predicted = rows.reshape(items, -1).argmax(axis=1)
    return True, int((predicted == np.asarray(labels)).sum())


# ------------------------------------------------------------------------------ summary


@dataclass(frozen=True, eq=False)
class LoadResult:
    """A run's summary (measured at the client) and its per-request records."""

    summary: RunSummary
    records: tuple[RequestResult, ...]

    def to_dict(self) -> dict[str, Any]:
        return self.summary.to_dict()


def served_quantile_ms(records: Sequence[RequestResult], q: float = 0.99) -> float:
    """The ``q`` quantile of latency (ms) over *all* requests, a request that did not
    complete counting as infinitely slow: ``≤ SLO`` means at least a share ``q`` of the
    requests were served within the SLO. ``inf`` when more than ``1 − q`` failed; 0.0
    for no requests. Uses the nearest-rank definition (no interpolation into ``inf``)."""
    if not records:
        return 0.0
    lat = np.array(
        [r.latency_s * 1000.0 if r.outcome is Outcome.COMPLETED else math.inf for r in records]
    )
    lat.sort()
    rank = max(1, math.ceil(q * len(lat)))
    return float(lat[rank - 1])


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    arr = np.asarray(values) * 1000.0
    return {
        "p50": float(np.percentile(arr, 50)),
        "p99": float(np.percentile(arr, 99)),
        "max": float(arr.max()),
    }


def _server_delta(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> dict[str, Any]:
    if not before or not after:
        return {}
    out: dict[str, Any] = {}
    for key in ("requests", "completed", "failed", "rejected", "cost_usd", "energy_j"):
        a, b = after.get(key), before.get(key)
        if isinstance(a, int | float) and isinstance(b, int | float):
            out[key] = a - b
    if isinstance(after.get("lost"), int):
        out["lost"] = after["lost"]
    return out


def summarize_load(
    records: Sequence[RequestResult],
    *,
    config: LoadConfig,
    slo_s: float | None,
    offered_rps: float,
    connections: int,
    truncated: bool = False,
    server_before: Mapping[str, Any] | None = None,
    server_after: Mapping[str, Any] | None = None,
) -> RunSummary:
    """The run summary of ``records`` (module docstring, "The summary")."""
    n = len(records)
    arrival = np.array([r.scheduled for r in records], dtype=np.float64)
    finish = np.array([r.finish for r in records], dtype=np.float64)
    codes = np.array(
        [0 if r.outcome is None else OUTCOME_CODES[r.outcome] for r in records], dtype=np.int8
    )
    deadline = arrival + (slo_s if slo_s is not None else math.inf)
    server = _server_delta(server_before, server_after)
    completed = [r for r in records if r.outcome is Outcome.COMPLETED]
    checked = [r for r in completed if r.correct >= 0]
    lags = [r.sent - r.scheduled for r in records if math.isfinite(r.sent)]
    errors = Counter(r.error for r in records if r.outcome is not None and r.error)
    statuses = Counter(str(r.status) for r in records if r.outcome is not None)
    items_done = sum(r.items for r in completed)
    extra: dict[str, Any] = {
        "mode": config.mode,
        "url": config.url,
        "model": config.model,
        "items_per_request": config.items,
        "offered_rps": offered_rps,
        "errors": dict(sorted(errors.items())),
        "statuses": dict(sorted(statuses.items())),
        "items_completed": items_done,
        "accuracy": (
            sum(r.correct for r in checked) / sum(r.items for r in checked) if checked else None
        ),
        "slo_ms": slo_s * 1000.0 if slo_s is not None else None,
        "served_p99_ms": served_quantile_ms(records, 0.99),
        "dispatch_lag_ms": _percentiles(lags) if config.mode != "closed" else None,
        "latency_from": "scheduled arrival" if config.mode != "closed" else "send",
        "connections": connections,
        "truncated": truncated,
        "seed": config.seed,
        "server": server,
        "sent": sum(1 for r in records if math.isfinite(r.sent)),
        "responses": sum(1 for r in records if r.status != 0),
        "no_response": sum(1 for r in records if math.isfinite(r.sent) and r.status == 0),
    }
    if config.mode == "trace":
        extra["trace"] = {
            "trace": config.trace,
            "start_s": config.start_s,
            "speedup": config.speedup,
            "duration_s": config.duration_s,
        }
    elif config.mode == "closed":
        extra["concurrency"] = config.concurrency
    summary = summarize(
        RequestRecords(arrival, finish, codes, deadline) if n else RequestRecords.empty(),
        preset=config.preset or str((server_after or {}).get("preset", "unknown")),
        scenario=config.scenario or str((server_after or {}).get("scenario", config.url)),
        cost_usd=float(server.get("cost_usd", 0.0)),
        energy_j=float(server.get("energy_j", 0.0)),
        extra=extra,
    )
    span = summary.makespan_s
    summary.extra["items_throughput"] = items_done / span if span > 0 else 0.0
    if config.mode == "closed":
        summary.extra["offered_rps"] = n / span if span > 0 else 0.0
    return summary


# ------------------------------------------------------------------------------ running


@dataclass(frozen=True, slots=True)
class LoadProgress:
    """Where a run stands: ``sent`` of ``planned`` (None in closed loop) after
    ``elapsed_s`` of ``duration_s``; ``answered`` have an outcome."""

    elapsed_s: float
    duration_s: float
    planned: int | None
    sent: int
    answered: int
    completed: int
    rejected: int
    failed: int


ProgressFn = Callable[[LoadProgress], None]
Hook = tuple[float, Callable[[], Any]]


class _HttpxSender:
    """Requests through httpx: the pool split into clients of at most
    :data:`SHARD_CONNECTIONS` connections (module docstring, "Connection pool"); an
    open-loop request goes to the client with the fewest requests in flight (lowest index
    on ties), a closed-loop client keeps its own (``lane``)."""

    def __init__(
        self, clients: list[httpx.AsyncClient], sizes: list[int], path: str, headers: dict[str, str]
    ) -> None:
        self.clients, self.path, self.headers = clients, path, headers
        self.lanes = len(clients)
        self.busy = [0] * len(clients)
        # a custom transport (tests: ASGI) has no connection pool to mirror: no gates
        self.gates = [asyncio.Semaphore(n) for n in sizes]

    def gate(self, k: int) -> contextlib.AbstractAsyncContextManager[Any]:
        return self.gates[k] if self.gates else contextlib.nullcontext()

    async def post(
        self, bank_index: int, body: bytes, lane: int | None, on_wire: Callable[[], None]
    ) -> tuple[int, bytes]:
        busy = self.busy
        k = busy.index(min(busy)) if lane is None else lane
        busy[k] += 1
        try:
            async with self.gate(k):
                on_wire()
                resp = await self.clients[k].post(self.path, content=body, headers=self.headers)
                return resp.status_code, await resp.aread()
        finally:
            busy[k] -= 1


class _LeanSender:
    """Requests through :class:`coscale.loadclient.ConnectionPool`: one pool of
    ``connections``; each bank body's request bytes are encoded once, on first use."""

    lanes = 1

    def __init__(self, pool: ConnectionPool, path: str, host: str, headers: dict[str, str]) -> None:
        self.pool, self.path, self.host, self.headers = pool, path, host, headers
        self.encoded: dict[int, bytes] = {}

    async def post(
        self, bank_index: int, body: bytes, lane: int | None, on_wire: Callable[[], None]
    ) -> tuple[int, bytes]:
        data = self.encoded.get(bank_index)
        if data is None:
            data = encode_request("POST", self.path, self.host, self.headers, body)
            self.encoded[bank_index] = data
        response = await self.pool.request(data, on_wire)
        return response.status, response.body


@dataclass(eq=False)
class _Run:
    """The mutable state of one run (the event loop only touches it)."""

    sender: _HttpxSender | _LeanSender
    config: LoadConfig
    payloads: PayloadBank
    clock: Clock
    t0: float
    records: list[RequestResult] = field(default_factory=list)
    sent: int = 0
    answered: int = 0
    counts: Counter[Outcome] = field(default_factory=Counter)

    def now(self) -> float:
        return self.clock.now() - self.t0

    async def send(self, r: RequestResult, lane: int | None = None) -> None:
        """Send ``r``'s request (on ``lane``, a closed-loop client's own; default: the
        sender's choice) and record its outcome; never raises (but cancellation)."""
        b = self.payloads.pick(r.index, r.seq_len)
        labels = self.payloads.labels[b] if self.payloads.labels is not None else None
        r.sent = self.now()
        self.sent += 1

        def on_wire() -> None:
            r.wired = self.now()

        try:
            async with asyncio.timeout(self.config.timeout_s):
                status, body = await self.sender.post(b, self.payloads.bodies[b], lane, on_wire)
            r.status = status
            outcome, code = classify_status(status, body)
            if outcome is Outcome.COMPLETED:
                ok, correct = check_outputs(
                    body, self.payloads.items, labels, binary=self.payloads.binary
                )
                if ok:
                    r.correct = correct
                else:
                    outcome, code = Outcome.FAILED, "bad_response"
        except Exception as exc:
            outcome, code = classify_exception(exc)
        r.finish = self.now()
        r.outcome, r.error = outcome, code
        self.answered += 1
        self.counts[outcome] += 1

    def progress(self, duration_s: float, planned: int | None) -> LoadProgress:
        c = self.counts
        return LoadProgress(
            elapsed_s=max(0.0, self.now()),
            duration_s=duration_s,
            planned=planned,
            sent=self.sent,
            answered=self.answered,
            completed=c[Outcome.COMPLETED],
            rejected=c[Outcome.REJECTED],
            failed=c[Outcome.FAILED] + c[Outcome.TIMED_OUT],
        )


async def _prepare_open_loop(run: _Run, schedule: Schedule) -> None:
    """Build one record per scheduled request, then fix time 0 (``run.t0``): building
    costs ~2 µs a record, and 50,000 built after time 0 made the first arrivals 100 ms
    late, sent together. Yields to the event loop every :data:`RECORDS_PER_YIELD`
    records, so that a second run in the same loop (another tenant) keeps its pace."""
    times = schedule.times.tolist()
    lens = schedule.seq_lens.tolist()
    run.records = []
    items = run.config.items
    for start in range(0, len(times), RECORDS_PER_YIELD):
        stop = start + RECORDS_PER_YIELD
        chunk = zip(range(start, stop), times[start:stop], lens[start:stop], strict=False)
        run.records.extend(RequestResult(i, t, items=items, seq_len=s) for i, t, s in chunk)
        await asyncio.sleep(0)
    run.t0 = run.clock.now() + START_DELAY_S


async def _open_loop(run: _Run, schedule: Schedule) -> None:
    """Send request ``i`` at ``t0 + times[i]``, each in its own task; wait for them all
    (the records are built, and ``t0`` fixed, by :func:`_prepare_open_loop`)."""
    times = schedule.times.tolist()
    tasks: set[asyncio.Task[None]] = set()
    i, n = 0, len(times)
    while i < n:
        now = run.now()
        if times[i] > now + DISPATCH_SLACK_S:
            await asyncio.sleep(times[i] - now)
            continue
        while i < n and times[i] <= now + DISPATCH_SLACK_S:
            task = asyncio.create_task(run.send(run.records[i]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.sleep(0)
    if tasks:
        await asyncio.gather(*tasks)


async def _closed_loop(run: _Run, clients: int, duration_s: float) -> None:
    """``clients`` loops, each sending its next request when the previous is answered,
    until ``duration_s`` has passed or ``max_requests`` were sent."""
    limit = run.config.max_requests
    await asyncio.sleep(max(0.0, -run.now()))  # time 0 is START_DELAY_S ahead

    async def client(k: int) -> None:
        lane = k * run.sender.lanes // clients
        while run.now() < duration_s and len(run.records) < limit:
            r = RequestResult(len(run.records), run.now(), items=run.config.items)
            run.records.append(r)
            await run.send(r, lane)

    await asyncio.gather(*(client(k) for k in range(clients)))


async def _get_json(http: httpx.AsyncClient, path: str) -> Any | None:
    """GET ``path`` → decoded JSON, or None when it is not there (404, not JSON)."""
    try:
        resp = await http.get(path, timeout=INFO_TIMEOUT_S)
    except httpx.ConnectError:
        raise
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    try:
        return resp.json()
    except ValueError:
        return None


async def wait_ready(http: httpx.AsyncClient, timeout_s: float, clock: Clock | None = None) -> bool:
    """Poll ``GET /readyz`` every 0.2 s until it answers 200 (True) or ``timeout_s`` passes."""
    clock = clock or SystemClock()
    end = clock.now() + timeout_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if (await http.get("/readyz", timeout=2.0)).status_code == 200:
                return True
        if clock.now() >= end:
            return False
        await asyncio.sleep(0.2)


async def _model_info(http: httpx.AsyncClient, config: LoadConfig) -> dict[str, Any]:
    """The model's entry of GET /v1/models ({} when the server publishes none)."""
    try:
        data = await _get_json(http, "/v1/models")
    except httpx.ConnectError:
        raise CoscaleError(
            f"cannot connect to {config.url}: nothing is listening there.",
            fix="start the server first (coscale serve SCENARIO --port N) and check the URL.",
            code="unreachable",
        ) from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list):
        return {}
    names = [str(m.get("name")) for m in models if isinstance(m, dict)]
    for m in models:
        if isinstance(m, dict) and m.get("name") == config.model:
            return m
    raise UnknownModelError(
        f"the server at {config.url} serves no model {config.model!r}; it serves "
        f"{', '.join(names) or 'none'}.",
        fix=f"pass --model with one of: {', '.join(names)}.",
    )


def _payload_kind(config: LoadConfig, info: Mapping[str, Any]) -> str:
    if config.payload:
        return config.payload
    source = info.get("source")
    if isinstance(source, str) and source:
        return source
    return config.model


async def _ticker(run: _Run, fn: ProgressFn, duration_s: float, planned: int | None) -> None:
    while True:
        fn(run.progress(duration_s, planned))
        await asyncio.sleep(PROGRESS_INTERVAL_S)


async def _hook(run: _Run, at_s: float, fn: Callable[[], Any]) -> None:
    await asyncio.sleep(max(0.0, at_s - run.now()))
    try:
        result = fn()
        if asyncio.iscoroutine(result):
            await result
    except Exception:  # a hook's failure must not stop the load
        log.exception("load hook at %.3f s failed", at_s)


async def run_load(
    config: LoadConfig,
    *,
    clock: Clock | None = None,
    on_progress: ProgressFn | None = None,
    hooks: Sequence[Hook] = (),
    transport: httpx.AsyncBaseTransport | None = None,
) -> LoadResult:
    """Run ``config`` against its server; the summary measured here and every record.

    ``clock``: the time base (default :class:`~coscale.clock.SystemClock`).
    ``on_progress``: called every :data:`PROGRESS_INTERVAL_S` and once at the end.
    ``hooks``: ``(seconds from the start, callable)`` pairs run during the load (e.g. kill
    a worker at 10 s); a coroutine result is awaited; a failing hook is logged.
    ``transport``: an httpx transport (tests: ``httpx.ASGITransport``); the URL is checked
    against loopback all the same.
    """
    base = check_url(config.url)
    clock = clock or SystemClock()
    schedule = build_schedule(config)
    timeout = httpx.Timeout(config.timeout_s, pool=None)
    probe_limits = httpx.Limits(max_connections=4)
    auth = auth_headers(config.api_key)
    async with contextlib.AsyncExitStack() as stack:
        probe = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=base,
                timeout=timeout,
                limits=probe_limits,
                transport=transport,
                headers=auth,
            )
        )
        if config.wait_ready_s > 0 and not await wait_ready(probe, config.wait_ready_s, clock):
            raise CoscaleError(
                f"{config.url} was not ready within {config.wait_ready_s:g} s.",
                fix="check the server's log; raise --wait-ready.",
                code="not_ready",
            )
        info = await _model_info(probe, config)
        before = await _get_json(probe, "/v1/stats")
        slo_ms = config.slo_ms if config.slo_ms is not None else info.get("slo_ms")
        slo_s = float(slo_ms) / 1000.0 if isinstance(slo_ms, int | float) and slo_ms > 0 else None
        payloads = build_payloads(
            _payload_kind(config, info),
            items=config.items,
            seed=config.seed,
            seq_lens=schedule.seq_lens if schedule is not None else None,
            input_specs=info.get("inputs") if isinstance(info.get("inputs"), list) else None,
            binary=config.binary,
        )
        connections = config.connections or pool_size(
            schedule, concurrency=config.concurrency, slo_s=slo_s, timeout_s=config.timeout_s
        )
        duration = schedule.duration_s if schedule is not None else float(config.duration_s or 0)
        planned = len(schedule) if schedule is not None else None
        path = f"/v1/models/{config.model}/infer"
        sender = await _make_sender(
            stack, config, base, path, auth | payloads.headers, connections, transport, clock
        )
        run = _Run(sender, config, payloads, clock, t0=clock.now() + START_DELAY_S)
        if schedule is not None:  # before the hooks and the ticker read the clock from t0
            await _prepare_open_loop(run, schedule)
        side = [asyncio.create_task(_hook(run, at, fn)) for at, fn in hooks]
        if on_progress is not None:
            side.append(asyncio.create_task(_ticker(run, on_progress, duration, planned)))
        try:
            if schedule is not None:
                await _open_loop(run, schedule)
            else:
                await _closed_loop(run, config.concurrency or 1, duration)
        finally:
            for task in side:
                task.cancel()
            await asyncio.gather(*side, return_exceptions=True)
        if on_progress is not None:
            on_progress(run.progress(duration, planned))
        after = await _get_json(probe, "/v1/stats") if before is not None else None
    offered = schedule.offered_rps if schedule is not None else 0.0
    summary = summarize_load(
        run.records,
        config=config,
        slo_s=slo_s,
        offered_rps=offered,
        connections=connections,
        truncated=schedule.truncated if schedule is not None else False,
        server_before=before,
        server_after=after,
    )
    return LoadResult(summary, tuple(run.records))


def resolve_api_key(
    api_key: str | None, key_env: str | None, environ: Mapping[str, str]
) -> str | None:
    """The key given directly (``--api-key``) or read from the environment variable
    ``key_env`` (``--key-env``); None for neither. Both, or an unset/empty variable →
    :class:`~coscale.errors.CoscaleError` (``invalid_input`` / ``missing_key``)."""
    if api_key is not None and key_env is not None:
        raise CoscaleError(
            "both --api-key and --key-env were given.",
            fix="give one: --key-env VAR (the key stays out of the process list) or --api-key.",
            code="invalid_input",
        )
    if key_env is None:
        return api_key or None
    key = environ.get(key_env, "").strip()
    if not key:
        raise CoscaleError(
            f"--key-env {key_env}: the environment variable {key_env} is unset or empty.",
            fix=f"export {key_env}=<the tenant's key> (coscale keys new TENANT makes one).",
            code="missing_key",
        )
    return key


def auth_headers(api_key: str | None) -> dict[str, str]:
    """``{"authorization": "Bearer KEY"}`` for a key, else no header."""
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def _shard_limits(connections: int) -> list[httpx.Limits]:
    """``connections`` split into clients of at most :data:`SHARD_CONNECTIONS` each."""
    out = []
    left = connections
    while left > 0:
        n = min(SHARD_CONNECTIONS, left)
        out.append(
            httpx.Limits(
                max_connections=n, max_keepalive_connections=n, keepalive_expiry=KEEPALIVE_EXPIRY_S
            )
        )
        left -= n
    return out


async def _make_sender(
    stack: contextlib.AsyncExitStack,
    config: LoadConfig,
    base: str,
    path: str,
    headers: dict[str, str],
    connections: int,
    transport: httpx.AsyncBaseTransport | None,
    clock: Clock,
) -> _HttpxSender | _LeanSender:
    """The lean client for a plain-http server (``config.http_client`` "lean", no custom
    transport); httpx clients otherwise (https, tests' ASGI transport, or asked for)."""
    url = httpx.URL(base)
    if config.http_client == "lean" and transport is None and url.scheme == "http":
        port = url.port or 80
        pool = ConnectionPool(
            url.host, port, connections, keepalive_expiry_s=KEEPALIVE_EXPIRY_S, clock=clock.now
        )
        stack.callback(pool.close)
        await pool.warm(connections)
        host = url.host if ":" not in url.host else f"[{url.host}]"
        return _LeanSender(pool, path, f"{host}:{port}", headers)
    timeout = httpx.Timeout(config.timeout_s, pool=None)
    limits = _shard_limits(connections)
    clients = [
        await stack.enter_async_context(
            httpx.AsyncClient(base_url=base, timeout=timeout, limits=lim, transport=transport)
        )
        for lim in limits
    ]
    sizes = [lim.max_connections or 1 for lim in limits] if transport is None else []
    return _HttpxSender(clients, sizes, path, headers)


def run_load_sync(config: LoadConfig, **kwargs: Any) -> LoadResult:
    """:func:`run_load` from synchronous code (runs its own event loop)."""
    return asyncio.run(run_load(config, **kwargs))


# ------------------------------------------------------------------------------ search


@dataclass(frozen=True, eq=False)
class SearchResult:
    """The highest passing level found (None if none passed) and every trial, in order."""

    best: float | None
    best_result: Any
    trials: tuple[tuple[float, bool, Any], ...]


async def search_max_load(
    trial: Callable[[float], Awaitable[Any]],
    passes: Callable[[Any], bool],
    *,
    start: float,
    grow: float = 2.0,
    refine: int = 3,
    max_trials: int = 12,
    ceiling: float | None = None,
) -> SearchResult:
    """The highest load level ``x`` for which ``passes(await trial(x))``, by a short search.

    Algorithm: (1) *bracket*: from ``start``, multiply by ``grow`` while trials pass (up
    to ``ceiling``), or divide by it while they fail, until one level passes and the next
    higher one fails; (2) *refine*: ``refine`` bisections of the bracket on a log scale
    (the geometric mean of the bounds). Assumes passing is monotone in ``x`` (noise can
    break that; the trials are returned so a caller can see it). At most ``max_trials``
    trials in all; if none passes, ``best`` is None. If ``ceiling`` passes, it is the
    answer. Complexity: O(log_grow(answer/start) + refine) trials.
    """
    if not (start > 0 and grow > 1):
        raise InvalidInputError(f"search needs start > 0 and grow > 1 (got {start}, {grow}).")
    trials: list[tuple[float, bool, Any]] = []

    async def attempt(x: float) -> bool:
        result = await trial(x)
        ok = bool(passes(result))
        trials.append((x, ok, result))
        return ok

    lo: float | None = None
    hi: float | None = None
    x = min(start, ceiling) if ceiling is not None else start
    while len(trials) < max_trials:
        if await attempt(x):
            lo = x
            if ceiling is not None and x >= ceiling:
                break
            if hi is not None:
                break
            x = x * grow if ceiling is None else min(x * grow, ceiling)
        else:
            hi = x
            if lo is not None:
                break
            x = x / grow
    if lo is not None and hi is not None:
        for _ in range(refine):
            if len(trials) >= max_trials:
                break
            mid = math.sqrt(lo * hi)
            if await attempt(mid):
                lo = mid
            else:
                hi = mid
    best_result = None
    if lo is not None:
        best_result = next(r for x_, ok, r in reversed(trials) if ok and x_ == lo)
    return SearchResult(lo, best_result, tuple(trials))
