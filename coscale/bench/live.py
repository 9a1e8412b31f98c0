"""The bench's live part: one workload cycle per preset on this machine, and its
closed-loop scalability.

The cycle (:func:`plan_cycle`)
------------------------------
A fixed segment of a real trace — ``[segment_start_s, segment_start_s + segment_s)``
trace seconds of the Azure code trace by default: its requests, in their order, with
their lengths and their relative arrival times — replayed open loop ``speedup`` times
faster. The speed-up is the *load rule*: the segment's busiest stretch is offered at
``load_factor`` of what the ``scal_preset`` (optimized-b) server can carry **with one
replica down**::

    per_item(L)  = min over variants v with fidelity ≥ floor, batch b ≤ max_batch of
                   latency_v(b, L) / b                     (the profile's p50, seconds)
    share        = min(1, cores / load average)             (CPUs free at the start)
    capacity     = share × replicas / mean over the segment's requests of per_item(L_i)
    survivors    = capacity × (replicas − 1) / replicas     (capacity when replicas = 1)
    peak         = most requests in one peak_bin_s (default PEAK_BIN_S, 30 s) bin of
                   the segment / peak_bin_s
    speedup      = load_factor × survivors / peak

With ``calibrate`` (the default), ``capacity`` is then *measured*: a fresh
``scal_preset`` server is sent the segment at :data:`CALIBRATION_OVERLOAD` × the
profile's ``capacity`` (an overload), and capacity = its answers per second
(:func:`calibrate`) — a profile measured on an idle core overstates what a shared
machine serves. A cycle (segment_s / speedup) shorter than ``min_cycle_s`` wall seconds
is slowed down to it (a lighter load); one longer than ``max_cycle_s`` keeps the
rule's speed-up and replays only the segment's first ``max_cycle_s × speedup`` trace
seconds (the report's note says how many requests), so a slow machine gets fewer
requests rather than more than its survivors carry (if that beginning holds no request,
the whole segment is sped up to last ``max_cycle_s``). ``L_i`` is request i's token
count clamped to the model's 256 (0 for the digits CNN). The same schedule is replayed
for every preset.

Why this rule: a worker is killed in every run, and a preset that is to answer (nearly)
every request within the SLO must carry the load on the surviving replicas while the
replacement starts (seconds, against a sub-second SLO) — so the offered peak is sized to
the survivors of the best preset, measured live, not to its full capacity. A preset
with less capacity (baseline: fp32 eager, one request at a time) cannot keep up with
that rate: its queue grows and its processing time with it. The rule sizes the load to
optimized-b's measured capacity; it is the same schedule for every preset, stated in the
report, and nothing else is tuned per preset.

A run (:func:`run_cycle`)
-------------------------
``coscale serve`` in a subprocess (a one-pool scenario of this machine's node type,
``count = max_count = replicas``, whose workload is the cycle's segment and speed-up,
``--preset P``, ``--profile`` the profile above; baseline's static allocation fixed at
the ``replicas`` budget, :func:`~coscale.bench.settings.live_policies`) on a free
loopback port;
:func:`coscale.load.run_load` (``coscale load``'s generator) replays the schedule; at
``kill_at_s`` (``kill_at`` of the way from the first arrival to the last) the first READY
worker (by replica id) is killed with SIGKILL, in
every run. A side task polls ``/v1/models`` and ``/v1/stats`` every :data:`SAMPLE_S`
seconds for the time series (replicas, replicas by variant, cost rate). Figures of a run:

* processing time = the time to process the cycle's work: the client's makespan, from
  the first scheduled arrival to the last answer. A preset that keeps up finishes about
  when the segment's replay ends; one that falls behind finishes when its queue has
  drained: the bench's client sends every request with ``timeout_ms`` = its own
  timeout (``client_timeout_s``, :class:`WaitAsLongAsTheClient`), so the server keeps
  a request as long as the client waits for it instead of failing it (504) after its
  default 10 × SLO — work is processed late, not dropped, the same for every preset. A
  request refused (429) or failed ends early and counts against reliability, so
  processing time is read together with reliability (the goals judge both);
* cost = the growth of the server's cost over the run (each replica's alive seconds ×
  the catalog's $/h of its node type / 3600); replica-seconds = cost / (price / 3600);
* reliability = #(answered 200 with one well-formed output per item, within the SLO) /
  #requests; SLO attainment = #(answered within the SLO) / #answered;
* p50/p99 over answered requests, throughput = answered / makespan;
* energy per inference = the server's energy growth (catalog power model) / items
  answered.

With ``records`` the row also keeps the cycle's batches (``service_batches``: variant,
items, longest length and service time of each, :func:`read_service_batches`), from
which the fidelity replay draws its service factors.

What the goals ask of the cycle (:func:`cycle_needs`, saved as the live results'
``needs``): the capacity that reliability at the goal's share needs on this schedule and
the most the baseline may have for the processing-time goal, by the fluid bounds of
:mod:`coscale.bench.bounds`; the report sets their ratio beside the measured one.

Live scalability (:func:`closed_loops`) runs on the ``scal_preset`` server right after
its cycle: closed loops of N clients for ``scal_live_s`` seconds each.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from coscale.bench.settings import GOALS, BenchSettings, live_policies
from coscale.bench.sim import server_telemetry
from coscale.errors import CoscaleError

__all__ = [
    "SAMPLE_S",
    "CyclePlan",
    "closed_loops",
    "cycle_needs",
    "local_node",
    "plan_cycle",
    "resolve_profile",
    "run_cycle",
    "run_live",
]

#: Seconds between the time-series samples of a live run.
SAMPLE_S = 0.5
#: Seconds to wait for a server to be ready.
READY_TIMEOUT_S = 600.0
#: Seconds between a cycle's end and the closed loops (the replacement replica settles).
SETTLE_S = 2.0
#: Trace seconds per bin when finding a segment's peak rate.
PEAK_BIN_S = 30.0
#: Calibration: the segment's peak is offered at this many times the profile's capacity
#: of the whole replica budget (an overload, so the answers per second measure what the
#: machine can serve).
CALIBRATION_OVERLOAD = 1.5
#: Token limit of MiniLM (longer inputs are truncated by the model).
MINILM_MAX_TOKENS = 256

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


# ------------------------------------------------------------------------------ planning


def local_node() -> Any:
    """This machine's catalog node type (the first ``provider: local`` one)."""
    from coscale.catalog import load_catalog

    for node in load_catalog():
        if node.provider == "local":
            return node
    raise CoscaleError(
        "the node catalog has no local node type, so live runs cannot be priced.",
        fix="add a node type with provider: local to the catalog.",
        code="catalog_error",
    )


def resolve_profile(model: str) -> Path | None:
    """The profile file both the server and the simulator use: this machine's (from
    ``coscale profile``), else the shipped reference when it was measured on this
    hardware, else None (:func:`measure_profile` then measures one in quick mode)."""
    from coscale.catalog.profiles import default_profile_path, load_profile
    from coscale.sim.profiles import REFERENCE_PROFILES_DIR

    here = default_profile_path(model)
    if here.is_file():
        return here
    shipped = REFERENCE_PROFILES_DIR / f"{model}.json"
    if shipped.is_file():
        try:
            load_profile(shipped)  # checks the hardware
        except CoscaleError:
            return None
        return shipped
    return None


def measure_profile(model: str) -> Path:
    """Profile ``model``'s variants in quick mode (what ``coscale serve`` does when it
    finds no profile) and save it where :func:`resolve_profile` looks first."""
    from datetime import UTC, datetime

    from coscale.accel.profiler import profile_family
    from coscale.accel.zoo import get_family
    from coscale.catalog.profiles import default_profile_path, save_profile

    family = get_family(model)
    result = profile_family(
        family, quick=True, measured_at=datetime.now(UTC).isoformat(timespec="seconds")
    )
    return save_profile(result, default_profile_path(family.name))


@dataclass(frozen=True)
class CyclePlan:
    """The cycle's schedule parameters (module docstring, "The cycle")."""

    start_s: float
    segment_s: float
    requests: int
    speedup: float
    cycle_s: float
    capacity_rps: float
    offered_rps: float
    best_variant: str
    note: str
    kill_at_s: float = 0.0
    seq_lens: tuple[int, ...] = field(default=(), repr=False)
    #: Arrival times of the replayed requests, trace seconds from the segment's start.
    times: tuple[float, ...] = field(default=(), repr=False)
    survivors_rps: float = 0.0
    peak_rps: float = 0.0


def per_item_s(profile: Any, floor: float, max_batch: int, seq_len: int) -> tuple[float, str]:
    """(best seconds per item at ``seq_len``, its variant) over the variants meeting
    ``floor`` and batch sizes ≤ ``max_batch`` (module docstring)."""
    from coscale.catalog.profiles import latency_table

    best, name = math.inf, ""
    for v in profile.variants:
        if v.fidelity < floor:
            continue
        table = latency_table(v)
        for b in table.batch_sizes:
            if b > max_batch:
                continue
            t = table.latency(b, seq_len) / b
            if t < best:
                best, name = t, v.name
    if not math.isfinite(best):
        raise CoscaleError(
            f"no variant in the profile meets the accuracy floor {floor}.",
            fix="re-profile the model (coscale profile MODEL).",
            code="bad_profile",
        )
    return best, name


def machine_share(cores: int, load_average: float | None) -> float:
    """Share of this machine's CPUs free for the bench: ``min(1, cores / load)``, the
    1-minute load average measured before any server starts (other work on the machine
    takes its share under fair scheduling); 1 when unknown or the machine is idle."""
    if load_average is None or load_average <= cores:
        return 1.0
    return cores / load_average


def peak_rate(times: npt.NDArray[np.float64], span_s: float, bin_s: float = PEAK_BIN_S) -> float:
    """Requests per second in the busiest ``bin_s`` bin of ``[0, span_s)`` (the mean rate
    when the span is shorter than a bin). O(N)."""
    if times.size == 0:
        return 0.0
    if span_s <= bin_s:
        return float(times.size) / span_s
    counts = np.bincount((times // bin_s).astype(np.int64))
    return float(counts.max()) / bin_s


def plan_cycle(
    settings: BenchSettings,
    profile: Any,
    *,
    cores: int = 1,
    load_average: float | None = None,
    measured_rps: float | None = None,
) -> CyclePlan:
    """The segment and its speed-up (module docstring, "The cycle"); ``measured_rps``:
    the capacity measured live (:func:`calibrate`), used instead of the profile's."""
    from coscale.load import trace_workload

    work = trace_workload(
        settings.trace,
        start_s=settings.segment_start_s,
        window_s=settings.segment_s,
        seed=settings.seed,
    )
    n = len(work)
    if n == 0:
        raise CoscaleError(
            f"trace seconds {settings.segment_start_s:g}+{settings.segment_s:g} of "
            f"{settings.trace} hold no request.",
            fix="choose another segment.",
            code="invalid_input",
        )
    text = settings.model == "minilm"
    lens = np.minimum(np.asarray(work.seq_lens), MINILM_MAX_TOKENS) if text else np.zeros(n, int)
    cost: dict[int, float] = {}
    names: dict[str, int] = {}
    for length in np.unique(lens):
        t, name = per_item_s(profile, settings.floor, settings.max_batch, int(length))
        cost[int(length)] = t
        names[name] = names.get(name, 0) + int((lens == length).sum())
    mean_s = float(np.mean([cost[int(x)] for x in lens]))
    share = machine_share(cores, load_average)
    capacity = settings.replicas / mean_s * share
    source = (
        f"the profile's capacity of {settings.replicas} replica(s) of the fastest variant "
        f"meeting the accuracy floor × the share of the CPUs free at the start ({share:.2f})"
    )
    if measured_rps is not None and measured_rps > 0:
        capacity = measured_rps
        source = (
            f"the capacity measured live ({settings.scal_preset}, {settings.replicas} "
            f"replica(s), the segment's peak offered at {CALIBRATION_OVERLOAD:g}× the "
            "profile's capacity)"
        )
    r = settings.replicas
    survivors = capacity * (r - 1) / r if r > 1 else capacity
    rate = peak_rate(np.asarray(work.times), settings.segment_s, settings.peak_bin_s)
    speedup = settings.load_factor * survivors / rate
    cycle = settings.segment_s / speedup
    note = (
        f"Load rule: the segment's peak rate (busiest {settings.peak_bin_s:g} trace seconds) is "
        f"{settings.load_factor:g} × what {settings.scal_preset} can carry with one replica "
        f"down: {source} = {capacity:.1f} req/s, × {max(1, r - 1)}/{r} = {survivors:.1f} "
        f"req/s. Mean offered rate {n / cycle:.1f} req/s; a preset with less capacity falls "
        "behind, and its processing time grows."
    )
    times = np.asarray(work.times)
    segment = settings.segment_s
    keep = times < settings.max_cycle_s * speedup
    if cycle > settings.max_cycle_s >= settings.min_cycle_s and keep.any():
        # too slow to fit: replay the segment's beginning at the rule's speed-up
        segment, cycle = settings.max_cycle_s * speedup, settings.max_cycle_s
        times, lens, n = times[keep], lens[keep], int(keep.sum())
        note += (
            f" At that speed the segment would last {settings.segment_s / speedup:.0f} s, "
            f"more than the {cycle:g} s allowed: its first {segment:.1f} trace seconds "
            f"({n} requests) are replayed."
        )
    elif cycle > settings.max_cycle_s or cycle < settings.min_cycle_s:
        cycle = min(max(cycle, settings.min_cycle_s), settings.max_cycle_s)
        speedup = settings.segment_s / cycle
        note += (
            f" The cycle was bounded to {cycle:g} s, so the peak rate is "
            f"{rate * speedup / survivors:.2f} × the survivors' capacity."
        )
    first, last = float(times[0]) / speedup, float(times[-1]) / speedup
    return CyclePlan(
        kill_at_s=first + settings.kill_at * (last - first),
        start_s=settings.segment_start_s,
        segment_s=segment,
        requests=n,
        speedup=speedup,
        cycle_s=cycle,
        capacity_rps=capacity,
        offered_rps=n / cycle,
        best_variant=max(names, key=lambda k: names[k]),
        note=note,
        seq_lens=tuple(int(x) for x in lens),
        times=tuple(float(x) for x in times),
        survivors_rps=survivors,
        peak_rps=rate,
    )


# ------------------------------------------------------------------------------ server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def served_name(model: str) -> str:
    return "minilm" if model == "minilm" else "digits"


def write_scenario(
    folder: Path,
    settings: BenchSettings,
    node_type: str,
    plan: CyclePlan,
    preset: str = "optimized-b",
) -> Path:
    """The one-model, one-pool scenario ``preset``'s live run serves. Its workload is
    the cycle's trace segment at the cycle's speed-up (``plan``), so the server's
    policies see the lengths and rates they will serve (variant choice at the typical
    length); its policies are :func:`~coscale.bench.settings.live_policies` (baseline's
    static allocation at the replica budget)."""
    workload = {
        "trace": {
            "path": settings.trace,
            "start_s": plan.start_s,
            "duration_s": plan.segment_s,
            "time_scale": plan.speedup,
        }
    }
    scenario = {
        "name": f"bench-live-{settings.model}",
        "seed": settings.seed,
        "models": [
            {
                "name": served_name(settings.model),
                "source": settings.model,
                "slo_ms": settings.slo,
                "accuracy_floor": settings.floor,
                "max_batch": settings.max_batch,
            }
        ],
        "cluster": {
            "nodes": [
                {"type": node_type, "count": settings.replicas, "max_count": settings.replicas}
            ]
        },
        "policies": live_policies(settings, preset),
        "workload": workload,
    }
    name = "bench-live" if preset == "optimized-b" else f"bench-live-{preset}"
    path = folder / (f"{name}.yaml" if plan is not None else "bench-profile.yaml")
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))
    return path


class Server:
    """``coscale serve SCENARIO --preset P`` in a subprocess on a free loopback port."""

    def __init__(
        self,
        scenario: Path,
        preset: str,
        profile: Path | None,
        folder: Path,
        records: Path | None = None,
    ) -> None:
        self.scenario, self.preset, self.profile, self.folder = scenario, preset, profile, folder
        self.records = records
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.err = folder / f"serve-{preset}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import httpx

        args = [sys.executable, "-m", "coscale.cli", "serve", str(self.scenario)]
        args += ["--port", str(self.port), "--preset", self.preset]
        if self.profile is not None:
            args += ["--profile", str(self.profile)]
        if self.records is not None:
            args += ["--records", str(self.records)]
        with self.err.open("wb") as err:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
        end = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise CoscaleError(
                    f"coscale serve ({self.preset}) exited {self.proc.returncode}: "
                    f"{self.log()[-1500:]}",
                    fix="run the same scenario with `coscale serve` to see why.",
                    code="bench_server_failed",
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        self.stop()
        raise CoscaleError(
            f"coscale serve ({self.preset}) was not ready after {READY_TIMEOUT_S:g} s.",
            fix="check the machine's load; see the server log: " + str(self.err),
            code="bench_server_failed",
        )

    def log(self) -> str:
        return self.err.read_text(errors="replace") if self.err.is_file() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


# ------------------------------------------------------------------------------ one run


#: Most connections the cycle's client opens (its transport has no per-shard pools).
CLIENT_MAX_CONNECTIONS = 512


class WaitAsLongAsTheClient:
    """An httpx transport that adds ``timeout_ms`` (the client's timeout, at most the API's
    10 minutes) to every ``POST …/infer``: the server then keeps each request as long as
    the client waits for it (module docstring, processing time). Other requests pass
    unchanged. Shared by the load generator's clients, so closing them does not close
    it: :meth:`close` does, once."""

    def __init__(self, timeout_s: float) -> None:
        import httpx

        from coscale.api import MAX_TIMEOUT_MS

        self.timeout_ms = min(timeout_s * 1000.0, MAX_TIMEOUT_MS)
        self._inner = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=CLIENT_MAX_CONNECTIONS)
        )

    async def handle_async_request(self, request: Any) -> Any:
        if request.method == "POST" and request.url.path.endswith("/infer"):
            request.url = request.url.copy_merge_params({"timeout_ms": f"{self.timeout_ms:g}"})
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        return None  # closed by close(), after every client sharing it

    async def close(self) -> None:
        await self._inner.aclose()


def _transport(timeout_s: float) -> Any:
    """:class:`WaitAsLongAsTheClient` as an ``httpx.AsyncBaseTransport``."""
    import httpx

    class _Transport(WaitAsLongAsTheClient, httpx.AsyncBaseTransport):
        pass

    return _Transport(timeout_s)


@dataclass
class Sampler:
    """Polls the server for the time series (module docstring)."""

    url: str
    model: str
    t0: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        import httpx

        async with httpx.AsyncClient(base_url=self.url, timeout=5.0) as http:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    models = (await http.get("/v1/models")).json()
                    stats = (await http.get("/v1/stats")).json()
                    self.rows.append(self._row(models, stats))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), SAMPLE_S)

    def _row(self, models: Any, stats: Mapping[str, Any]) -> dict[str, Any]:
        entries = models.get("models", models) if isinstance(models, dict) else models
        empty: dict[str, Any] = {"replicas": []}
        mine: dict[str, Any] = next((m for m in entries if m.get("name") == self.model), empty)
        alive = [r for r in mine["replicas"] if r.get("state") in ("starting", "ready")]
        variants: dict[str, int] = {}
        for r in alive:
            variants[r["variant"]] = variants.get(r["variant"], 0) + 1
        return {
            "t": time.perf_counter() - self.t0,
            "replicas": len(alive),
            "ready": sum(1 for r in alive if r.get("state") == "ready"),
            "variants": variants,
            "cost_usd": float(stats.get("cost_usd", 0.0)),
        }

    def series(self) -> dict[str, Any]:
        """``{"time_s", "replicas", "replicas_ready", "cost_usd", "cost_usd_per_hour",
        "variants": {name: [...]}}``; the cost rate is the cost's growth between
        samples, per hour."""
        rows = self.rows
        names = sorted({v for r in rows for v in r["variants"]})
        rate = [0.0]
        for a, b in itertools.pairwise(rows):
            dt = b["t"] - a["t"]
            rate.append((b["cost_usd"] - a["cost_usd"]) / dt * 3600.0 if dt > 0 else 0.0)
        return {
            "time_s": [r["t"] for r in rows],
            "replicas": [r["replicas"] for r in rows],
            "replicas_ready": [r["ready"] for r in rows],
            "cost_usd": [r["cost_usd"] for r in rows],
            "cost_usd_per_hour": rate[: len(rows)],
            "variants": {n: [r["variants"].get(n, 0) for r in rows] for n in names},
        }


async def kill_one_worker(url: str, model: str) -> dict[str, Any] | None:
    """SIGKILL the first READY worker (by replica id) of ``model``; what was killed."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=5.0) as http:
        data = (await http.get("/v1/models")).json()
    entries = data.get("models", data) if isinstance(data, dict) else data
    mine = next((m for m in entries if m.get("name") == model), None)
    if mine is None:
        return None
    ready = sorted(
        (r for r in mine["replicas"] if r.get("state") == "ready" and r.get("pid")),
        key=lambda r: r["id"],
    )
    if not ready:
        return None
    victim = ready[0]
    os.kill(int(victim["pid"]), signal.SIGKILL)
    return {"replica": victim["id"], "variant": victim["variant"], "pid": victim["pid"]}


def _row(
    preset: str, result: Any, slo_ms: float, price_per_h: float, killed: Any
) -> dict[str, Any]:
    from coscale.types import Outcome

    s = result.summary
    records = result.records
    n = len(records)
    answered = [r for r in records if r.outcome is Outcome.COMPLETED]
    in_slo = [r for r in answered if r.latency_s * 1000.0 <= slo_ms]
    items = sum(r.items for r in answered)
    wire = [r.finish - r.wired for r in answered if math.isfinite(r.wired)]
    return {
        "preset": preset,
        "processing_time_s": s.makespan_s,
        "cost_usd": s.cost_usd,
        "replica_seconds": s.cost_usd / (price_per_h / 3600.0) if price_per_h > 0 else None,
        "reliability": len(in_slo) / n if n else 1.0,
        "slo_attainment": len(in_slo) / len(answered) if answered else 0.0,
        "p50_ms": s.latency_ms.p50,
        "p99_ms": s.latency_ms.p99,
        "wire_mean_ms": 1000.0 * sum(wire) / len(wire) if wire else None,
        "throughput_rps": s.throughput_rps,
        "energy_j": s.energy_j,
        "energy_per_inference_j": s.energy_j / items if items else None,
        "requests": s.requests,
        "completed": s.completed,
        "failed": s.failed,
        "rejected": s.rejected,
        "lost": s.lost,
        "errors": s.extra.get("errors", {}),
        "accuracy": s.extra.get("accuracy"),
        "dispatch_lag_ms": s.extra.get("dispatch_lag_ms"),
        "killed": killed,
    }


async def _cycle(
    url: str, settings: BenchSettings, plan: CyclePlan, preset: str, on_progress: Any
) -> tuple[Any, dict[str, Any] | None, dict[str, Any]]:
    from coscale.load import LoadConfig, run_load

    model = served_name(settings.model)
    config = LoadConfig(
        url=url,
        model=model,
        trace=settings.trace,
        start_s=plan.start_s,
        duration_s=plan.cycle_s,
        speedup=plan.speedup,
        timeout_s=settings.client_timeout_s,
        seed=settings.seed,
        preset=preset,
        scenario=f"bench-live-{settings.model}",
    )
    killed: dict[str, Any] = {}
    sampler = Sampler(url, model, t0=time.perf_counter())
    kill_at = plan.kill_at_s

    async def kill() -> None:
        what = await kill_one_worker(url, model)
        if what is not None:
            killed.update(what, at_s=kill_at)

    stop = asyncio.Event()
    polling = asyncio.create_task(sampler.run(stop))
    transport = _transport(settings.client_timeout_s)
    try:
        result = await run_load(
            config, hooks=[(kill_at, kill)], on_progress=on_progress, transport=transport
        )
    finally:
        stop.set()
        await polling
        await transport.close()
    return result, (killed or None), sampler.series()


async def closed_loops(
    url: str, model: str, tasks: Sequence[int], seconds: float, timeout_s: float, seed: int
) -> list[dict[str, Any]]:
    """Closed loops of N clients for ``seconds`` each (module docstring)."""
    from coscale.load import LoadConfig, run_load

    points = []
    for k, n in enumerate(tasks):
        config = LoadConfig(
            url=url,
            model=model,
            concurrency=n,
            duration_s=seconds,
            timeout_s=timeout_s,
            seed=seed + k,
        )
        s = (await run_load(config)).summary
        points.append(
            {
                "tasks": n,
                "throughput_rps": s.throughput_rps,
                "p50_ms": s.latency_ms.p50,
                "p99_ms": s.latency_ms.p99,
                "requests": s.requests,
                "failed": s.failed,
                "rejected": s.rejected,
            }
        )
    return points


def scrape_metrics(url: str) -> str | None:
    """The server's ``GET /metrics`` text, or None if it cannot be read (the replay then
    runs uncalibrated and says so)."""
    import httpx

    try:
        response = httpx.get(url + "/metrics", timeout=10.0)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def run_cycle(
    settings: BenchSettings,
    plan: CyclePlan,
    preset: str,
    scenario: Path,
    profile: Path | None,
    folder: Path,
    *,
    say: Say = _quiet,
    on_progress: Any = None,
    scal: bool = False,
    records: Path | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One preset's cycle (and, with ``scal``, the live closed loops after it);
    ``records``: where the server writes its per-request records when it stops."""
    node = local_node()
    server = Server(scenario, preset, profile, folder, records)
    say(f"starting coscale serve --preset {preset}")
    server.start()
    try:
        say(f"{preset}: replaying the cycle ({plan.cycle_s:.0f} s)")
        before = scrape_metrics(server.url)
        result, killed, series = asyncio.run(
            _cycle(server.url, settings, plan, preset, on_progress)
        )
        after = scrape_metrics(server.url)
        row = _row(preset, result, settings.slo, node.on_demand_usd_per_hour, killed)
        row["series"] = series
        if before is not None and after is not None:  # the fidelity replay's calibration
            row["server_telemetry"] = server_telemetry(before, after, served_name(settings.model))
        row["variants_used"] = sorted(series["variants"])
        points: list[dict[str, Any]] = []
        if scal:
            time.sleep(SETTLE_S)
            say(f"{preset}: closed loops at {', '.join(map(str, settings.scal_tasks_live))} tasks")
            points = asyncio.run(
                closed_loops(
                    server.url,
                    served_name(settings.model),
                    settings.scal_tasks_live,
                    settings.scal_live_s,
                    settings.client_timeout_s,
                    settings.seed,
                )
            )
    finally:
        server.stop()
    if records is not None and records.exists():  # the fidelity replay's service factors
        row["service_batches"] = read_service_batches(records, int(result.summary.requests))
    return row, points


def read_service_batches(path: Path, first_n: int) -> dict[str, list[Any]]:
    """The cycle's batches (:func:`coscale.bench.sim.service_batches`) from the request
    records the server wrote to ``path`` (Parquet)."""
    import pyarrow.parquet as pq

    from coscale.bench.sim import service_batches

    return service_batches(pq.read_table(path).to_pydict(), first_n)


def calibrate(
    settings: BenchSettings, plan: CyclePlan, profile: Path | None, folder: Path, node_type: str
) -> float:
    """Answers per second of a ``scal_preset`` server (fresh, no worker killed) when the
    segment's peak is offered at :data:`CALIBRATION_OVERLOAD` × ``plan``'s (profile-based)
    capacity of the whole replica budget: completed / makespan, at the client."""
    from coscale.load import LoadConfig, run_load

    speedup = CALIBRATION_OVERLOAD * plan.capacity_rps / max(plan.peak_rps, 1e-9)
    fast = dataclasses.replace(plan, speedup=speedup)
    fast = dataclasses.replace(fast, cycle_s=plan.segment_s / fast.speedup)
    scenario = write_scenario(folder, settings, node_type, fast)
    server = Server(scenario, settings.scal_preset, profile, folder)
    server.start()
    try:
        config = LoadConfig(
            url=server.url,
            model=served_name(settings.model),
            trace=settings.trace,
            start_s=plan.start_s,
            duration_s=fast.cycle_s,
            speedup=fast.speedup,
            timeout_s=settings.client_timeout_s,
            seed=settings.seed + 1,
        )
        summary = asyncio.run(run_load(config)).summary
    finally:
        server.stop()
    return float(summary.throughput_rps)


def cycle_needs(plan: CyclePlan, settings: BenchSettings) -> dict[str, float | None]:
    """What the processing-time and reliability goals ask of the cycle's schedule
    (:func:`coscale.bench.bounds.goal_needs` on the replayed arrival times, wall
    seconds, with the goals' thresholds and the SLO)."""
    from coscale.bench.bounds import goal_needs

    thresholds = {key: value for key, _, value in GOALS}
    return goal_needs(
        np.asarray(plan.times) / plan.speedup,
        settings.slo / 1000.0,
        thresholds["reliability"],
        thresholds["processing_time"] / 100.0,
    )


def run_live(
    settings: BenchSettings,
    *,
    say: Say = _quiet,
    progress: Callable[[str], Any] | None = None,
    work_dir: Path | None = None,
    records_dir: Path | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None, Path | None]:
    """Every live preset's cycle; (live results, live scalability or None, profile).
    ``records_dir``: each preset's server writes its per-request records there as
    ``records-PRESET.parquet`` (``coscale serve --records``) — the cycle, then the
    live closed loops for the scalability preset."""
    from coscale.catalog.profiles import load_profile
    from coscale.runtime.system import usable_cores

    node = local_node()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="coscale-bench-") as tmp:
        folder = work_dir or Path(tmp)
        profile_path = resolve_profile(settings.model)
        if profile_path is None:
            say(f"no profile of {settings.model} here: measuring one (quick mode) first")
            profile_path = measure_profile(settings.model)
        profile = load_profile(profile_path) if profile_path else None
        if profile is None:
            raise CoscaleError(
                f"no profile of {settings.model} for this machine.",
                fix=f"run `coscale profile {settings.model}` first.",
                code="no_profile",
            )
        plan = plan_cycle(settings, profile, cores=usable_cores(), load_average=load_before)
        if settings.calibrate:
            say("measuring this machine's capacity on the segment")
            if progress is not None:
                progress("calibration")
            measured = calibrate(settings, plan, profile_path, folder, node.name)
            plan = plan_cycle(
                settings,
                profile,
                cores=usable_cores(),
                load_average=load_before,
                measured_rps=measured,
            )
        runs = []
        scal_points: list[dict[str, Any]] = []
        want_scal = "scalability" in settings.parts
        for preset in settings.live_presets:
            cb = progress(preset) if progress is not None else None
            scenario = write_scenario(folder, settings, node.name, plan, preset)
            row, points = run_cycle(
                settings,
                plan,
                preset,
                scenario,
                profile_path,
                folder,
                say=say,
                on_progress=cb,
                scal=want_scal and preset == settings.scal_preset,
                records=None if records_dir is None else records_dir / f"records-{preset}.parquet",
            )
            runs.append(row)
            scal_points = points or scal_points
    live = {
        "model": settings.model,
        "served_name": served_name(settings.model),
        "trace": settings.trace,
        "segment": {"start_s": plan.start_s, "duration_s": plan.segment_s},
        "requests": plan.requests,
        "speedup": plan.speedup,
        "cycle_s": plan.cycle_s,
        "capacity_rps": plan.capacity_rps,
        "offered_rps": plan.offered_rps,
        "best_variant": plan.best_variant,
        "load_note": plan.note,
        "kill_at_s": plan.kill_at_s,
        "survivors_rps": plan.survivors_rps,
        "peak_rps_trace": plan.peak_rps,
        "load_factor": settings.load_factor,
        "slo_ms": settings.slo,
        "replicas": settings.replicas,
        "node_type": node.name,
        "price_usd_per_hour": node.on_demand_usd_per_hour,
        "profile": str(profile_path),
        "runs": runs,
        "needs": cycle_needs(plan, settings),
    }
    scal = None
    if scal_points:
        scal = {
            "preset": settings.scal_preset,
            "points": scal_points,
            "note": f"live: {settings.model} on this machine ({settings.replicas} replica(s) "
            f"at most), preset {settings.scal_preset}, closed loop for "
            f"{settings.scal_live_s:g} s per level over HTTP; the clients share the cores "
            "with the server, so throughput saturates at the machine's capacity.",
        }
    return live, scal, profile_path
