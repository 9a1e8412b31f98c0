"""What ``coscale bench`` runs: the embedded defaults, full and ``--quick``.

:class:`BenchSettings` (pydantic, ``extra="forbid"``) holds every knob of the four parts
(live cycle, simulated cluster, scalability, fidelity) and the goals. :func:`defaults`
returns the full bench or the quick one; :func:`from_overrides` applies a mapping of
field values (tests, the hidden ``COSCALE_BENCH_OVERRIDES`` environment variable) on
top and validates the result.

Defaults and why
----------------
* Live cycle: the Azure LLM inference 2023 *code* trace, trace seconds
  ``[segment_start_s, segment_start_s + segment_s)`` (the full bench: 2,230–2,400 s,
  528 requests in three bursts around a quiet minute; quick: 1,860–1,890 s, 93 requests
  in one burst), MiniLM with each request's length from the trace's
  ``ContextTokens`` (clamped to the model's 256). The load rule: the replay speed-up is
  chosen so that the segment's peak rate is ``load_factor`` (0.8) × what the replica
  budget less one replica can carry — the capacity of ``scal_preset`` (optimized-b)
  measured live on the segment (:func:`coscale.bench.live.calibrate`; without
  ``calibrate``, the profile's fastest variant meeting the accuracy floor on the share of
  the CPUs free at the start) × (replicas − 1) / replicas. A cycle shorter than
  ``min_cycle_s`` wall seconds is slowed down to it; one longer than ``max_cycle_s``
  replays only the segment's first ``max_cycle_s × speedup`` trace seconds at the rule's
  speed-up (:func:`coscale.bench.live.plan_cycle`). The survivors of the kill can
  then carry the load; a preset with less capacity falls behind and its processing time
  (the makespan) grows.
* One worker is killed (SIGKILL) at ``kill_at`` (0.4) of the way from the cycle's first
  arrival to its last, in every run.
* Cluster: :data:`CLUSTER_POOLS` (1,000 nodes at the start, 1,710 at most, ten AWS/GCP
  CPU, GPU and TPU types, half the replicas allowed on spot), the first ``sim_days`` of
  the ServeGen language m-large 14-day rate table (all 14 in the full bench, the first
  half day in the quick one) compressed ``sim_time_scale`` × (24: a day per simulated hour)
  and thinned to ``sim_rate_scale`` (0.0015) of its published rates; preemptions and
  failures at the catalog's rates × ``sim_time_scale`` (the catalog's rates per *trace*
  hour: compressing a day into an hour keeps the number of faults the day would see).
* Scalability: closed loops of ``scal_tasks_sim`` clients in the simulator (on the same
  1,000-node cluster, preset ``scal_preset``) and ``scal_tasks_live`` clients live. A
  simulated level lasts ``scal_sim_s`` or about ``scal_sim_requests`` requests, whichever
  is shorter (:func:`coscale.bench.sim.run_scal_sim`): served at sub-millisecond
  latencies, a thousand clients send millions of requests per simulated second.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from coscale.errors import InvalidInputError

__all__ = [
    "CLUSTER_POOLS",
    "GOALS",
    "BenchSettings",
    "defaults",
    "from_overrides",
    "live_policies",
]

#: The simulated cluster: (node type, nodes at the start, most nodes) — 1,000 / 1,710.
CLUSTER_POOLS: tuple[tuple[str, int, int], ...] = (
    ("c7a.xlarge", 250, 400),
    ("c7i.2xlarge", 200, 300),
    ("m7i.xlarge", 100, 200),
    ("c6i.xlarge", 100, 200),
    ("n2-standard-4", 100, 200),
    ("c3-standard-8", 50, 100),
    ("g5.xlarge", 100, 150),
    ("g6.xlarge", 80, 120),
    ("a2-highgpu-1g", 10, 20),
    ("ct5lp-hightpu-1t", 10, 20),
)

#: The issue's goals: (key, text, threshold).
GOALS: tuple[tuple[str, str, float], ...] = (
    ("processing_time", "optimized-b processing time at least 50 % below baseline's", 50.0),
    ("cost", "optimized-b cost at least 40 % below baseline's", 40.0),
    ("reliability", "optimized-b reliability at least 99.9 % with a worker killed", 0.999),
    ("scaling", "simulated scaling efficiency at 100 concurrent tasks at least 0.9", 0.9),
    ("fidelity", "simulator error at most 10 % on p50, p99 and throughput", 10.0),
)

LIVE_PRESETS = ("baseline", "optimized-a", "optimized-b")
SIM_PRESETS = ("baseline", "optimized-a", "optimized-b", "hpa", "kpa", "rayserve", "oracle")


class BenchSettings(BaseModel):
    """Every knob of one bench run (module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quick: bool = Field(default=False, description="The quick bench (shorter everything).")
    seed: int = Field(default=7, ge=0, description="Seed of every draw.")
    # live cycle
    model: Literal["minilm", "digits-cnn"] = Field(default="minilm", description="Live model.")
    trace: str = Field(default="azure-code", description="Trace of the live cycle.")
    segment_start_s: float = Field(default=2230.0, ge=0, description="Segment start (trace s).")
    segment_s: float = Field(default=170.0, gt=0, description="Segment length (trace s).")
    load_factor: float = Field(
        default=0.8, gt=0, le=5, description="Peak offered rate / the kill survivors' capacity."
    )
    peak_bin_s: float = Field(
        default=30.0, gt=0, description="Trace seconds per bin of the load rule's peak rate."
    )
    min_cycle_s: float = Field(default=5.0, gt=0, description="Shortest live cycle (wall s).")
    max_cycle_s: float = Field(default=180.0, gt=0, description="Longest live cycle (wall s).")
    calibrate: bool = Field(default=True, description="Measure the capacity live first.")
    kill_at: float = Field(
        default=0.4, ge=0, le=1, description="When a worker is killed (share of the cycle)."
    )
    replicas: int = Field(default=2, ge=1, le=64, description="Live replica budget.")
    slo_ms: float | None = Field(default=None, gt=0, description="SLO (default per model).")
    live_presets: tuple[str, ...] = Field(default=LIVE_PRESETS, min_length=1)
    client_timeout_s: float = Field(default=120.0, gt=0, description="Client timeout (s).")
    # simulated cluster
    sim_presets: tuple[str, ...] = Field(default=SIM_PRESETS, min_length=1)
    sim_days: float = Field(default=14.0, gt=0, le=14, description="Days of the curve run.")
    sim_time_scale: float = Field(default=24.0, gt=0, description="24: one day per hour.")
    sim_rate_scale: float = Field(default=0.0015, gt=0, description="ServeGen rate multiplier.")
    sim_minilm_share: float = Field(default=0.8, ge=0, le=1, description="MiniLM share.")
    # scalability
    scal_preset: str = Field(default="optimized-b", description="Preset of the scalability runs.")
    scal_tasks_sim: tuple[int, ...] = Field(default=(10, 50, 100, 200, 500, 1000), min_length=2)
    scal_sim_s: float = Field(default=2.0, gt=0, description="Simulated seconds per level.")
    scal_sim_requests: int = Field(
        default=200_000,
        ge=1,
        description="A simulated level runs for scal_sim_s or for about this many requests "
        "(measured by a short pilot), whichever is shorter.",
    )
    scal_tasks_live: tuple[int, ...] = Field(default=(10, 50, 100, 200), min_length=2)
    scal_live_s: float = Field(default=6.0, gt=0, description="Wall seconds per live level.")
    # parts to run
    parts: tuple[Literal["live", "cluster", "scalability", "fidelity"], ...] = (
        "live",
        "cluster",
        "scalability",
        "fidelity",
    )

    @property
    def slo(self) -> float:
        """The SLO in ms (MiniLM 500, digits-cnn 50 unless given)."""
        if self.slo_ms is not None:
            return self.slo_ms
        return 500.0 if self.model == "minilm" else 50.0

    @property
    def floor(self) -> float:
        """Accuracy floor of the variants the optimized preset may choose."""
        return 0.99 if self.model == "minilm" else 0.95

    @property
    def max_batch(self) -> int:
        return 32 if self.model == "minilm" else 64


_QUICK: dict[str, Any] = {
    "quick": True,
    "segment_start_s": 1860.0,
    "segment_s": 30.0,
    "max_cycle_s": 30.0,
    "client_timeout_s": 60.0,
    "sim_days": 0.5,
    "scal_tasks_sim": (10, 50, 100, 200),
    "scal_sim_s": 1.0,
    "scal_sim_requests": 50_000,
    "scal_tasks_live": (10, 50, 100),
    "scal_live_s": 2.0,
}


def defaults(quick: bool = False) -> BenchSettings:
    """The embedded defaults: the full bench, or the quick one (module docstring)."""
    return BenchSettings(**(_QUICK if quick else {}))


def live_policies(settings: BenchSettings, preset: str) -> dict[str, Any]:
    """The ``policies`` of the scenario that one preset's live run serves (and its twin
    replays): the preset, and for ``baseline`` its static allocation fixed at the live
    replica budget (``replicas``). Sized from the segment's demand instead — the peak of
    its 15-s bins over one fp32 replica's profiled capacity, a ratio that sits near 1 at
    the cycle's speed-ups — the static plan flipped between 2 replicas and 1 from run to
    run; with 1 it served 28 % of the cycle within the SLO, and the cost comparison said
    nothing. A fixed allocation provisions what the cluster has."""
    if preset == "baseline":
        params = {"replicas": settings.replicas}
        return {"preset": preset, "allocation": {"name": "static", "params": params}}
    return {"preset": preset}


def from_overrides(quick: bool, overrides: Mapping[str, Any] | None) -> BenchSettings:
    """The defaults with ``overrides`` applied; a bad field → InvalidInputError."""
    base = defaults(quick).model_dump()
    base.update(dict(overrides or {}))
    try:
        return BenchSettings(**base)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInputError(
            f"bench settings: {where}: {first['msg']}.",
            fix="check the overrides (COSCALE_BENCH_OVERRIDES is a JSON object of fields).",
        ) from None
