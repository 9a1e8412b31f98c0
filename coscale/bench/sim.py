"""The bench's simulated parts: the cluster, its scalability, and the live runs replayed.

All three run :class:`~coscale.sim.cluster.ClusterSimulator` on policies built by
:func:`coscale.sim.build.build_policies` — the function the live server calls too.

Cluster (:func:`run_cluster`)
-----------------------------
The pools of :data:`~coscale.bench.settings.CLUSTER_POOLS` (1,000 nodes at the start,
1,710 at most, up to half the replicas on spot), MiniLM (SLO 200 ms) and the digits CNN
(SLO 50 ms) in shares ``sim_minilm_share`` / the rest, the first ``sim_days`` days of the
ServeGen language 14-day rate table compressed ``sim_time_scale``× and thinned to
``sim_rate_scale``, faults at the catalog's rates × ``sim_time_scale`` (module docstring
of :mod:`coscale.bench.settings`).
Every preset runs on the same prepared workload and seed; ``cost_vs_oracle`` = cost /
the oracle's cost. The time series (replicas, replicas by variant, cost rate) are kept
per preset, thinned to at most :data:`MAX_SERIES_POINTS` rows.

Scalability (:func:`run_scal_sim`)
----------------------------------
For each N in ``scal_tasks_sim``: the same cluster (its 1,000 starting nodes warm),
``scal_preset``, a closed loop of N clients (:class:`~coscale.sim.cluster.ClosedLoop`,
each sends its next request when the previous is answered; total rate capped at
:data:`CLOSED_LOOP_CAP_RPS`, far above what N clients reach) for ``scal_sim_s``
simulated seconds or about ``scal_sim_requests`` requests if that is shorter (a pilot
measures the rate), no faults (the load, not the faults, is under test). Throughput =
completed / makespan.

Fidelity (:func:`replay_live`)
------------------------------
Each live run again in the simulator: a one-pool scenario of this machine's node type
with the live replica budget (``count = max_count = replicas``), the same model, SLO and
accuracy floor, the same trace segment and speed-up, the same preset, seed and profile
file; the worker kill is replayed as a failure of the first initial replica at the same
second (:class:`ScheduledKill`), and no other fault. As the live server:

* a preset with no initial replica starts with its allocation's first plan READY at 0 s
  (:func:`first_plan`: ``ServingSystem.start`` decides at once and waits for them);
* the simulator times out a request queued 10 × its SLO and replaces a dead replica at
  once (:mod:`coscale.sim.cluster`).

Calibration, per run, on what that run observed — in the simulated *world* only: the
policies are built from the profile and the catalog, as the live server built them
(a twin whose policies knew the calibrated tables sized its static baseline for a
machine 1.65× slower than the live baseline believed, kept two replicas where live
kept one, and missed its p50 by 79 %). Its replacement's start-up after the kill
(:func:`replacement_startup_s`, from the run's READY series) replaces the node type's,
or where the kill's replacement was too quick to be seen, the start-up of the run's
scale-ups (:func:`scale_up_startup_s`: a burst replica from the warm standby serves
within a sample, against the catalog's 5 s for a cold worker);
and when the run saved ``server_telemetry`` (:func:`server_telemetry`, two ``/metrics``
scrapes around the cycle), every batch takes its table's latency × ``k`` = live mean
service per batch / the table's mean at the live mean batch size over the
segment's request lengths; when the run also saved the client's mean time on the wire
(``wire_mean_ms``), requests reach the simulated server ``c`` = that − the server's mean
latency later, the HTTP path the simulator does not model (:func:`_calibration`,
:func:`http_path_ms`). When the run also kept its server's per-batch service times
(``service_batches``, :func:`service_batches`, from the server's request records), each
simulated batch is further multiplied by one of that run's *service factors* drawn at
random (:func:`service_factors`: each live batch's service over the table's latency at
its size and longest length, divided by their mean) — the live service times scatter
(log standard deviation 0.12–0.23 here) where the table's are one number per size and
length, which gave the twin a mass of requests at exactly the table's latency and put
its p50 there (7–30 % below the live p50). With factors, the twin is replayed
:data:`TWIN_REPLAYS` times with different draws and each figure is their median (one
replay's p99 moved by up to 50 % with the draws). Both sides are then measured alike
(:func:`twin_figures`): p50, p99 over completed requests from the client's send;
throughput = completed / (last answer − first send).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from coscale.bench.settings import CLUSTER_POOLS, BenchSettings, live_policies
from coscale.config import Scenario, scenario_from_dict
from coscale.types import LatencyTable

__all__ = [
    "CLOSED_LOOP_CAP_RPS",
    "ScheduledKill",
    "client_connections",
    "cluster_scenario",
    "first_plan",
    "live_twin_scenario",
    "median_figures",
    "replacement_startup_s",
    "replay_live",
    "run_cluster",
    "run_scal_sim",
    "scale_up_startup_s",
    "server_telemetry",
    "service_batches",
    "service_factors",
    "thin_series",
    "twin_figures",
]

#: Seconds in a day of the trace.
DAY_S = 86_400.0
#: Most rows kept of a time series in the results.
MAX_SERIES_POINTS = 400
#: Simulated seconds of the pilot that sizes each scalability level (:func:`run_scal_sim`).
SCAL_PILOT_S = 0.02
#: Total rate cap of the simulated closed loops (requests/s): never reached.
CLOSED_LOOP_CAP_RPS = 1e7
#: Replays of a live run with service factors (:func:`replay_live`); figures: medians.
TWIN_REPLAYS = 5
#: Fewest live batches from which service factors are drawn (fewer: none).
MIN_FACTOR_BATCHES = 20

Progress = Callable[[float, float], None]


def _models(settings: BenchSettings) -> list[dict[str, Any]]:
    return [
        {"name": "minilm", "source": "minilm", "slo_ms": 200, "accuracy_floor": 0.99},
        {"name": "digits", "source": "digits-cnn", "slo_ms": 50, "accuracy_floor": 0.95},
    ]


def cluster_scenario(settings: BenchSettings, workload: Mapping[str, Any]) -> Scenario:
    """The 1,000-node heterogeneous cluster serving MiniLM and the digits CNN."""
    share = settings.sim_minilm_share
    data = {
        "name": "bench-cluster",
        "seed": settings.seed,
        "models": _models(settings),
        "cluster": {
            "nodes": [{"type": t, "count": c, "max_count": m} for t, c, m in CLUSTER_POOLS],
            "spot_share": 0.5,
        },
        "policies": {"preset": "optimized-b"},
        "workload": {**workload, "model_mix": {"minilm": share, "digits": 1.0 - share}},
    }
    return scenario_from_dict(data, source="<bench cluster>")


def thin_series(series: Any, keep: int = MAX_SERIES_POINTS) -> dict[str, Any]:
    """A :class:`~coscale.telemetry.timeseries.TimeSeries` as ``{"time_s", "replicas",
    "cost_usd_per_hour", "variants": {variant: replicas}}``, every k-th row so at most
    ``keep`` remain. Replicas by variant sum the ``replicas:VARIANT@NODE`` columns."""
    data = series.to_dict()
    n = len(data["time_s"])
    step = max(1, -(-n // keep))
    idx = list(range(0, n, step))

    def pick(name: str) -> list[float]:
        col = data.get(name, [0.0] * n)
        return [float(col[i]) for i in idx]

    variants: dict[str, list[float]] = {}
    for name in data:
        if name.startswith("replicas:"):
            variant = name.split(":", 1)[1].split("@", 1)[0]
            col = pick(name)
            old = variants.get(variant)
            variants[variant] = (
                col if old is None else [a + b for a, b in zip(old, col, strict=True)]
            )
    return {
        "time_s": pick("time_s"),
        "replicas": pick("replicas"),
        "cost_usd_per_hour": pick("cost_usd_per_hour"),
        "variants": variants,
    }


def _sim_row(summary: Any) -> dict[str, Any]:
    s, x = summary, summary.extra
    return {
        "preset": s.preset,
        "requests": s.requests,
        "cost_usd": s.cost_usd,
        "cost_vs_oracle": x.get("cost_vs_oracle"),
        "slo_attainment": s.slo_attainment,
        "p50_ms": s.latency_ms.p50,
        "p99_ms": s.latency_ms.p99,
        "throughput_rps": s.throughput_rps,
        "reliability": s.reliability,
        "rejected": s.rejected,
        "failed": s.failed,
        "timed_out": int(x.get("timed_out", 0)),
        "lost": s.lost,
        "preemptions": int(x.get("preemptions", 0)),
        "failures": int(x.get("failures", 0)),
        "replicas_mean": float(x.get("replicas_mean", 0.0)),
        "replicas_max": int(x.get("replicas_max", 0)),
        "energy_j": s.energy_j,
        "energy_per_request_j": x.get("energy_per_request_j"),
        "wall_s": x.get("wall_s"),
    }


def run_cluster(
    settings: BenchSettings, progress: Callable[[str, float, float], None] | None = None
) -> dict[str, Any]:
    """Every ``sim_presets`` preset on the cluster under the ServeGen curve (module doc)."""
    from coscale.sim.run import SimOptions, prepare, simulate

    workload = {"trace": {"path": "servegen-language", "time_scale": settings.sim_time_scale}}
    scenario = cluster_scenario(settings, workload)
    options = SimOptions(
        rate_scale=settings.sim_rate_scale,
        fault_scale=settings.sim_time_scale,
        duration_s=settings.sim_days * DAY_S / settings.sim_time_scale,
    )
    prepared = prepare(scenario, options)
    results = simulate(prepared, list(settings.sim_presets), progress)
    pools = scenario.cluster.nodes
    return {
        "nodes_initial": sum(p.count for p in pools),
        "nodes_max": sum(p.limit for p in pools),
        "node_types": [p.type for p in pools],
        "workload": f"ServeGen language m-large 14-day curve, the first {settings.sim_days:g} "
        f"day(s) compressed {settings.sim_time_scale:g}x, rates x {settings.sim_rate_scale:g}",
        "days": settings.sim_days,
        "time_scale": settings.sim_time_scale,
        "rate_scale": settings.sim_rate_scale,
        "fault_scale": settings.sim_time_scale,
        "requests": len(prepared.arrivals.times),  # type: ignore[union-attr]
        "simulated_s": float(prepared.arrivals.duration_s),
        "runs": [_sim_row(r.summary) for r in results],
        "series": {r.summary.preset: thin_series(r.series) for r in results},
    }


def _closed_loop_level(
    settings: BenchSettings, clients: int, duration_s: float, progress: Any = None
) -> Any:
    """One simulated closed loop of ``clients`` on the warm cluster; its summary."""
    from coscale.sim.run import SimOptions, prepare, run_preset

    workload = {
        "generator": {
            "kind": "closed-loop",
            "concurrency": clients,
            "rate_rps": CLOSED_LOOP_CAP_RPS,
            "duration_s": duration_s,
        }
    }
    prepared = prepare(cluster_scenario(settings, workload), SimOptions(fault_scale=0.0))
    return run_preset(prepared, settings.scal_preset, progress).summary


def run_scal_sim(
    settings: BenchSettings, progress: Callable[[int, float, float], None] | None = None
) -> dict[str, Any]:
    """Closed loops of N clients on the warm cluster, N in ``scal_tasks_sim``.

    Each level lasts ``T = min(scal_sim_s, max(p, scal_sim_requests / X_p))`` simulated
    seconds, ``X_p`` being the throughput of a pilot run of ``p`` =
    min(:data:`SCAL_PILOT_S`, ``scal_sim_s``) s: the number of requests, not the
    simulated time, bounds the wall time (at 0.04 ms per request ten clients send 250,000
    requests per simulated second), and a closed loop at sub-millisecond latencies is in
    its steady state within the pilot. ``T ≤ p`` → the pilot is the level."""
    points = []
    for n in settings.scal_tasks_sim:
        cb = None if progress is None else (lambda now, total, n=n: progress(n, now, total))
        pilot_s = min(SCAL_PILOT_S, settings.scal_sim_s)
        s = _closed_loop_level(settings, n, pilot_s, cb)
        wanted = settings.scal_sim_requests / s.throughput_rps if s.throughput_rps > 0 else 0.0
        duration = min(settings.scal_sim_s, max(pilot_s, wanted))
        if duration > pilot_s:
            s = _closed_loop_level(settings, n, duration, cb)
        points.append(
            {
                "tasks": n,
                "throughput_rps": s.throughput_rps,
                "p50_ms": s.latency_ms.p50,
                "p99_ms": s.latency_ms.p99,
                "requests": s.requests,
                "replicas_mean": float(s.extra.get("replicas_mean", 0.0)),
                "duration_s": duration,
            }
        )
    nodes = sum(c for _, c, _ in CLUSTER_POOLS)
    return {
        "preset": settings.scal_preset,
        "nodes": nodes,
        "points": points,
        "note": f"simulated: {nodes:,} nodes warm at the start, preset {settings.scal_preset}, "
        f"closed loop for {settings.scal_sim_s:g} simulated s per level or about "
        f"{settings.scal_sim_requests:,} requests if fewer, MiniLM/digits "
        f"{settings.sim_minilm_share:.0%}/{1 - settings.sim_minilm_share:.0%}; "
        "throughput = answered / makespan.",
    }


# ------------------------------------------------------------------------------ fidelity

#: Prometheus families read from the server's ``/metrics`` for the calibration.
_TELEMETRY_FAMILIES = {
    "batch_service_s": "coscale_batch_service_seconds",
    "batch_items": "coscale_batch_items",
    "server_latency_s": "coscale_request_latency_seconds",
}


def server_telemetry(before: str, after: str, model: str) -> dict[str, float]:
    """What a live run's server observed over the cycle, from two ``GET /metrics``
    expositions (before and after it): ``batches`` run, their summed ``batch_items`` and
    ``batch_service_s``, and the ``completed`` requests' summed server-side latency
    ``server_latency_s`` (arrival at the server to answer). Deltas of the histograms'
    ``_sum``/``_count`` for ``model``; a family absent from either text counts 0."""
    from coscale.telemetry.prometheus import parse_text

    def totals(text: str) -> dict[str, float]:
        parsed = parse_text(text)
        out: dict[str, float] = {}
        for key, family in _TELEMETRY_FAMILIES.items():
            for suffix, name in (("_sum", key), ("_count", key + "_n")):
                out[name] = sum(
                    v
                    for labels, v in parsed.get(family + suffix, [])
                    if labels.get("model") == model
                )
        return out

    a, b = totals(before), totals(after)
    d = {k: b[k] - a.get(k, 0.0) for k in b}
    return {
        "batches": d["batch_service_s_n"],
        "batch_items": d["batch_items"],
        "batch_service_s": d["batch_service_s"],
        "completed": d["server_latency_s_n"],
        "server_latency_s": d["server_latency_s"],
    }


def replacement_startup_s(run: Mapping[str, Any]) -> float | None:
    """Seconds from the worker kill to its replacement READY, read from the run's time
    series (samples every :data:`coscale.bench.live.SAMPLE_S` s): the first sample at or
    after the kill (``run["killed"]["at_s"]``) whose READY count is below the one before
    it (the kill seen), to the first later sample back at that count. Drops before the
    kill are the allocation scaling down, not the kill (optimized-a's 2 → 1 at 15 s was
    once read as a 33-s replacement). None without a kill, a series, or a replacement
    within it."""
    series = run.get("series") or {}
    times, ready = series.get("time_s") or [], series.get("replicas_ready") or []
    killed = run.get("killed")
    if not killed or len(times) < 2 or len(ready) != len(times):
        return None
    at = float(killed.get("at_s", 0.0)) if isinstance(killed, Mapping) else 0.0
    for i in range(1, len(ready)):
        if times[i] >= at and ready[i] < ready[i - 1]:
            level, t_drop = ready[i - 1], times[i]
            for j in range(i + 1, len(ready)):
                if ready[j] >= level:
                    return float(times[j] - t_drop)
            return None
    return None


def scale_up_startup_s(run: Mapping[str, Any]) -> float | None:
    """The median start-up of the run's scale-ups, read from its time series: for each
    sample ``i`` whose replica count (READY or STARTING) rose, the seconds until the
    first sample ``j ≥ i`` whose READY count reaches it (0 when the same sample shows it
    READY: faster than the sampling). None without a series or a scale-up that became
    READY within it."""
    series = run.get("series") or {}
    times = series.get("time_s") or []
    total, ready = series.get("replicas") or [], series.get("replicas_ready") or []
    if len(times) < 2 or len(total) != len(times) or len(ready) != len(times):
        return None
    seen: list[float] = []
    for i in range(1, len(times)):
        if total[i] <= total[i - 1]:
            continue
        for j in range(i, len(times)):
            if ready[j] >= total[i]:
                seen.append(float(times[j] - times[i]))
                break
    return float(np.median(seen)) if seen else None


def _calibration(
    prepared: Any, run: Mapping[str, Any], variant: str
) -> tuple[float, dict[str, Any]]:
    """(service scale k, what was used) for one live run.

    ``k`` = the live mean service time per batch / the simulator's mean table latency
    (the profile on this node type, with the backend's per-batch overhead) for
    ``variant``: the table interpolated linearly at the live mean batch size ``b̄`` (not
    rounded: 1.53 items is 47 % of the way from one item to two), averaged over the
    segment's request lengths — the twin serves each request at its own length, so a
    median length (256 tokens where a quarter of the requests are shorter) would
    overstate the table's mean and understate ``k``. A run that also saved the client's
    mean time on the wire (``wire_mean_ms``: answer − on the wire, completed requests)
    gives the HTTP path ``how["http_path_ms"]`` = that − the server's mean latency
    (arrival in the data plane → answer, from the same telemetry), at least 0; else 0.
    Without the run's ``server_telemetry``: k = 1 (the profile as measured)."""
    obs = run.get("server_telemetry") or {}
    batches = float(obs.get("batches", 0.0))
    if batches <= 0:
        return 1.0, {"calibrated": False}
    mean_b = float(obs["batch_items"]) / batches
    mean_s = float(obs["batch_service_s"]) / batches
    options = prepared.options[0]
    option = next((o for o in options if o.variant == variant), options[0])
    predicted = mean_table_latency(option.latency, mean_b, prepared.arrivals.seq_lens)
    k = mean_s / predicted if predicted > 0 else 1.0
    return k, {
        "calibrated": True,
        "variant": option.variant,
        "batches": int(batches),
        "mean_batch_items": mean_b,
        "mean_service_ms": mean_s * 1000.0,
        "profile_service_ms": predicted * 1000.0,
        "service_scale": k,
        "http_path_ms": http_path_ms(run),
    }


def mean_table_latency(table: LatencyTable, mean_items: float, seq_lens: Any) -> float:
    """``table``'s latency at a fractional batch size ``mean_items`` (linear between the
    two integer sizes around it, at least one item), averaged over ``seq_lens`` (each
    request's length; empty: length 0). O(U log B) for U distinct lengths."""
    lo = max(1, int(np.floor(mean_items)))
    frac = min(1.0, max(0.0, mean_items - lo))
    lengths, counts = np.unique(np.asarray(seq_lens, dtype=np.int64), return_counts=True)
    if not len(lengths):
        lengths, counts = np.zeros(1, dtype=np.int64), np.ones(1, dtype=np.int64)
    at = [
        (1.0 - frac) * table.latency(lo, int(s)) + frac * table.latency(lo + 1, int(s))
        for s in lengths
    ]
    return float(np.dot(at, counts) / counts.sum())


def service_batches(columns: Mapping[str, Any], first_n: int) -> dict[str, list[Any]]:
    """A live server's batches from its request records (``coscale serve --records``
    columns: ``id``, ``outcome``, ``replica``, ``arrival``, ``queue_s``, ``batch_size``,
    ``service_s``, ``variant``, ``seq_len``), over the completed requests with ``id <
    first_n`` (the cycle's; the live closed loops come after it on the same server). A
    batch is the requests that started together on one replica (``arrival + queue_s``
    within 1 µs); per batch: ``variant``, ``items`` (its ``batch_size``), ``seq_len``
    (its longest request's) and ``service_s``, in start order."""
    ids = np.asarray(columns.get("id", []), dtype=np.int64)
    done = (ids < first_n) & (np.asarray(columns.get("outcome", []), dtype=object) == "completed")
    out: dict[str, list[Any]] = {"variant": [], "items": [], "seq_len": [], "service_s": []}
    if not done.any():
        return out
    pick = np.flatnonzero(done)
    start = (
        np.asarray(columns["arrival"], dtype=float)[pick]
        + np.asarray(columns["queue_s"], dtype=float)[pick]
    )
    lengths = columns["seq_len"] if "seq_len" in columns else [0] * len(ids)  # older records
    batches: dict[tuple[str, int], int] = {}
    for j, i in enumerate(pick):
        key = (str(columns["replica"][i]), round(float(start[j]) * 1e6))
        seq = int(lengths[i])
        at = batches.get(key)
        if at is None:
            batches[key] = len(out["items"])
            out["variant"].append(str(columns["variant"][i]))
            out["items"].append(int(columns["batch_size"][i]))
            out["seq_len"].append(seq)
            out["service_s"].append(float(columns["service_s"][i]))
        else:
            out["seq_len"][at] = max(out["seq_len"][at], seq)
    order = np.argsort([key[1] for key in batches], kind="stable")
    return {name: [values[k] for k in order] for name, values in out.items()}


def service_factors(
    tables: Mapping[str, LatencyTable], batches: Mapping[str, Any]
) -> npt.NDArray[np.float64] | None:
    """Each live batch's service time over its table's latency (``tables[variant]`` at
    the batch's items and longest length), divided by the mean of those ratios: the
    world's dispersion around its mean speed (the mean itself is ``k``,
    :func:`_calibration`). Batches of a variant without a table, or with a non-positive
    time, are skipped; None when fewer than :data:`MIN_FACTOR_BATCHES` remain."""
    ratios = []
    for variant, items, seq, service in zip(
        batches.get("variant", []),
        batches.get("items", []),
        batches.get("seq_len", []),
        batches.get("service_s", []),
        strict=True,
    ):
        table = tables.get(variant)
        if table is None or not service > 0 or items < 1:
            continue
        predicted = table.latency(int(items), int(seq))
        if predicted > 0 and np.isfinite(service):
            ratios.append(float(service) / predicted)
    if len(ratios) < MIN_FACTOR_BATCHES:
        return None
    r = np.asarray(ratios)
    return r / r.mean()


def http_path_ms(run: Mapping[str, Any]) -> float:
    """The live HTTP path's mean, ms: the client's mean time on the wire
    (``run["wire_mean_ms"]``) − the server's mean latency (``server_latency_s`` /
    ``completed`` of ``run["server_telemetry"]``), at least 0; 0 when either is missing."""
    obs = run.get("server_telemetry") or {}
    wire = run.get("wire_mean_ms")
    done = float(obs.get("completed", 0.0))
    if wire is None or done <= 0 or not np.isfinite(wire):
        return 0.0
    return max(0.0, float(wire) - 1000.0 * float(obs.get("server_latency_s", 0.0)) / done)


def _after_http_path(prepared: Any, http_s: float) -> Any:
    """``prepared`` with every request reaching the server ``http_s`` later (the HTTP
    path the simulator does not model, as a constant measured on the live run)."""
    import dataclasses

    if http_s <= 0:
        return prepared
    a = prepared.arrivals
    shifted = dataclasses.replace(a, times=a.times + http_s, duration_s=a.duration_s + http_s)
    return dataclasses.replace(prepared, arrivals=shifted)


def client_connections(prepared: Any, slo_s: float, timeout_s: float) -> int:
    """The connections ``coscale load`` opens for this schedule
    (:func:`coscale.load.pool_size`: Little's law on its peak 1-s rate × the SLO × 2,
    clamped to [4, 256]) — at most that many requests are at the server at once."""
    from coscale.load import Schedule, pool_size

    a = prepared.arrivals
    schedule = Schedule(a.times, a.seq_lens, a.duration_s, len(a))
    return pool_size(schedule, concurrency=None, slo_s=slo_s, timeout_s=timeout_s)


class ScheduledKill:
    """A fault model that kills the first replica it is asked about ``at_s`` seconds after
    its start is decided (the initial replicas: at ``at_s`` into the run), no other."""

    def __init__(self, at_s: float | None) -> None:
        self.at_s = at_s
        self.used = at_s is None

    def rates_per_s(self, node: Any, spot: bool) -> tuple[float, float]:
        return 0.0, 0.0

    def draw(self, node: Any, spot: bool, rng: np.random.Generator) -> tuple[float, str] | None:
        from coscale.sim.faults import FAILURE

        if self.used or self.at_s is None:
            return None
        self.used = True
        return self.at_s, FAILURE


def live_twin_scenario(
    settings: BenchSettings, live: Mapping[str, Any], node_type: str, preset: str = "optimized-b"
) -> Scenario:
    """The one-pool scenario ``preset``'s live run served (module docstring, "Fidelity"),
    with the same :func:`~coscale.bench.settings.live_policies`."""
    seg = live["segment"]
    data = {
        "name": "bench-live",
        "seed": settings.seed,
        "models": [
            {
                "name": live["served_name"],
                "source": settings.model,
                "slo_ms": settings.slo,
                "accuracy_floor": settings.floor,
                "max_batch": settings.max_batch,
            }
        ],
        "cluster": {
            "nodes": [{"type": node_type, "count": live["replicas"], "max_count": live["replicas"]}]
        },
        "policies": live_policies(settings, preset),
        "workload": {
            "trace": {
                "path": settings.trace,
                "start_s": seg["start_s"],
                "duration_s": seg["duration_s"],
                "time_scale": live["speedup"],
            }
        },
    }
    return scenario_from_dict(data, source="<bench live twin>")


def first_plan(policies: Any) -> tuple[Any, ...]:
    """The replicas a live server starts with when the preset gives no initial ones:
    ``ServingSystem.start`` then asks the allocation policy at once (a snapshot at 0 s,
    no arrivals yet, no replica) and serves only when those are READY — so the twin
    starts with them READY at 0 s."""
    from coscale.types import ModelView, Snapshot

    models = tuple(
        ModelView(s.name, arrival_rate=0.0, queue_length=0, slo_s=s.slo_s,
                  accuracy_floor=s.accuracy_floor)
        for s in policies.setups
    )  # fmt: skip
    plan, _ = policies.allocation.decide(Snapshot(0.0, models, ()), None)
    return tuple(t for t in plan.targets if t.count > 0)


def _run_twin(
    prepared: Any,
    preset: str,
    kill_at_s: float | None,
    connections: int | None = None,
    *,
    service_scale: float = 1.0,
    startup_s: float | None = None,
    service_factors: npt.NDArray[np.float64] | None = None,
    replay: int = 0,
) -> Any:
    """:func:`coscale.sim.run.run_preset` with a :class:`ScheduledKill` fault model, in a
    world ``service_scale`` × slower than the profile, each batch also × one of
    ``service_factors`` at random, with replicas READY after ``startup_s``
    (:class:`~coscale.sim.cluster.ClusterSimulator`): the policies are built from
    ``prepared`` as the live server built them, from the profile. ``replay`` > 0 seeds
    the generator ``[seed, 2, replay]`` (another draw of the factors), 0 ``[seed, 2]``."""
    from coscale.sim.build import build_policies
    from coscale.sim.cluster import ClusterSimulator

    policies = build_policies(prepared, preset)
    simulator = ClusterSimulator(
        policies.setups,
        policies.allocation,
        prepared.pools,
        prepared.arrivals,
        interval_s=policies.interval_s,
        rng=np.random.default_rng([prepared.seed, 2, replay] if replay else [prepared.seed, 2]),
        initial=policies.initial or first_plan(policies),
        faults=ScheduledKill(kill_at_s),  # type: ignore[arg-type]
        max_retries=prepared.sim.max_retries,
        drain_limit_s=prepared.sim.drain_limit_s,
        sample_interval_s=1.0,
        connections=connections,
        service_scale=service_scale,
        startup_s=startup_s,
        service_factors=service_factors,
        preset=preset,
        scenario=prepared.scenario.name,
    )
    return simulator.run()


def twin_figures(result: Any, scheduled: Any) -> dict[str, Any]:
    """The simulated run measured as the live client measures (module docstring of
    :mod:`coscale.bench.live`): latency from each request's *scheduled* time
    (``scheduled``, by request id; the log's arrival is when it reached the server);
    p50/p99 over completed requests; throughput = completed / (last answer − first
    scheduled arrival)."""
    from coscale.telemetry.summary import RequestRecords, summarize

    log = result.requests
    sent = np.asarray(scheduled, dtype=np.float64)
    records = RequestRecords(sent, log.finish, log.outcome, sent + (log.deadline - log.arrival))
    s = summarize(
        records, preset=result.summary.preset, scenario="twin", cost_usd=0.0, energy_j=0.0
    )
    return {
        "p50_ms": s.latency_ms.p50,
        "p99_ms": s.latency_ms.p99,
        "throughput_rps": s.throughput_rps,
        "requests": s.requests,
        "completed": s.completed,
        "failed": s.failed,
        "rejected": s.rejected,
        "slo_attainment": s.slo_attainment,
        "replicas_mean": float(result.summary.extra.get("replicas_mean", 0.0)),
    }


def median_figures(figures: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Each figure's median over several replays (:func:`twin_figures` dictionaries with
    the same keys; counts stay integers, rounded half to even); one replay → itself."""
    if len(figures) == 1:
        return dict(figures[0])
    out: dict[str, Any] = {}
    for key, first in figures[0].items():
        values = [f[key] for f in figures]
        if any(v is None for v in values):
            out[key] = None
            continue
        middle = float(np.median(values))
        out[key] = round(middle) if isinstance(first, int) else middle
    return out


def replay_live(
    settings: BenchSettings, live: Mapping[str, Any], profile: Path | None
) -> dict[str, Any]:
    """Each live run replayed in the simulator; pairs of live and simulated figures.

    Per run, the simulator is *calibrated* on what that live run itself observed
    (:func:`_calibration`: the server's mean service time per batch against the profile;
    :func:`replacement_startup_s`: the replacement's start-up after the kill, else
    :func:`scale_up_startup_s`: the scale-ups'); without
    those observations the profile and the catalog's start-up stand, and the note says
    so. The client's connection pool is replayed too (:func:`client_connections`)."""
    from coscale.sim.run import SimOptions, prepare

    node_type = live["node_type"]
    given = {live["served_name"]: profile} if profile is not None else {}

    def prepared_for(preset: str) -> Any:
        scenario = live_twin_scenario(settings, live, node_type, preset)
        return prepare(scenario, SimOptions(profiles=given, fault_scale=0.0))

    prepared = prepared_for("optimized-b")
    connections = client_connections(prepared, settings.slo / 1000.0, settings.client_timeout_s)
    pairs = []
    calibrated = 0
    for run in live["runs"]:
        own = prepared if run["preset"] == "optimized-b" else prepared_for(run["preset"])
        killed = run.get("killed")
        used = run.get("variants_used") or [live.get("best_variant", "")]
        k, how = _calibration(own, run, str(used[0]))
        startup = replacement_startup_s(run)
        how["replacement_startup_s"] = startup
        if startup is None:
            startup = how["scale_up_startup_s"] = scale_up_startup_s(run)
        how["connections"] = connections
        calibrated += int(bool(how["calibrated"]))
        twin = _after_http_path(own, how.get("http_path_ms", 0.0) / 1000.0)
        kill = killed["at_s"] if killed else None
        tables = {o.variant: o.latency for o in own.options[0]}
        factors = service_factors(tables, run.get("service_batches") or {})
        how["service_spread"] = None if factors is None else float(np.std(np.log(factors)))
        how["replays"] = TWIN_REPLAYS if factors is not None else 1
        figures = [
            twin_figures(
                _run_twin(
                    twin,
                    run["preset"],
                    kill,
                    connections,
                    service_scale=k,
                    startup_s=startup,
                    service_factors=factors,
                    replay=i,
                ),
                own.arrivals.times,
            )
            for i in range(how["replays"])
        ]
        pairs.append(
            {
                "preset": run["preset"],
                "live": {
                    "p50_ms": run["p50_ms"],
                    "p99_ms": run["p99_ms"],
                    "throughput_rps": run["throughput_rps"],
                },
                "sim": median_figures(figures),
                "calibration": how,
            }
        )
    if pairs and calibrated == len(pairs):
        source = (
            "calibrated on each live run's own observations: the service time per batch "
            "scaled to the server's measured mean (the profile was measured on an idle "
            "core; the live run shares a busy machine)"
        )
    else:
        source = (
            f"the profile ({profile.name if profile else 'this machine'}) as measured, "
            "uncalibrated (the live runs saved no server telemetry)"
        )
    return {
        "pairs": pairs,
        "note": f"simulator: {node_type} × {live['replicas']} (the live replica budget), the "
        f"same trace segment, speed-up, preset and seed; {source}. The worker kill is "
        "replayed as a failure of the first replica at the same second, replaced at once "
        "(as live) after the start-up measured in that run; queued requests time out "
        "after 10 × the SLO, as live; at most "
        f"{connections} requests are at the server at once (coscale load's connection "
        "pool for this schedule; the others wait in the client). Where the live run kept "
        "its server's per-batch service times, each simulated batch is also scaled by one "
        "of that run's service factors (live service / the table's, over their mean) drawn "
        f"at random, and the figures are the medians of {TWIN_REPLAYS} replays. The HTTP "
        "path is not simulated: where the live run measured it (the client's mean time on "
        "the wire − the server's mean latency), every request reaches the simulated server "
        "that much later. Both sides are measured the same way: p50/p99 over completed "
        "requests from the scheduled send, throughput = completed / (last answer − first "
        "scheduled send); errors = |sim − live| / live.",
    }
