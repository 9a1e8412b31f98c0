"""Fluid (rate-level) cluster simulation: the same allocation policies on loads far too
heavy to simulate request by request (days of traffic at hundreds of thousands of
requests per second, hundreds of replicas).

It is an executor of the same :class:`~coscale.types.Plan` objects as
:class:`~coscale.sim.cluster.ClusterSimulator`, with the same replica life cycle, pools,
billing, faults and control loop; only the data plane is a fluid.

Model (per model ``m``, on steps of ``step_s``, default 1 s)
-------------------------------------------------------------
* **Load**: ``λ_m(t)`` requests/s, constant within a step (:class:`FluidLoad`: a trace's
  arrivals binned per step, or a ServeGen rate table, times a load scale).
* **Replicas**: a start decision; READY after the node type's ``startup_s``; a death
  drawn at the start decision from :class:`~coscale.sim.faults.FaultModel` (a dead
  replica is gone; the next plan replaces it); a plan's surplus stops at once (STARTING
  first, then READY — no draining: the pooled queue keeps the work), except READY
  *cover*: a rolling update that keeps, while the new replicas start, the model's READY
  capacity at ``min(planned capacity, READY capacity it had)`` (largest replicas first;
  re-counted at every decision). The cluster simulator counts replicas instead; by
  capacity, one slow CPU replica does not stand in for a GPU being replaced. Starts
  beyond a pool's ``S_t`` are deferred to the next decision (covers on that node type
  give up their slots first). Billing, energy and the initial READY replicas as in the
  cluster simulator.
* **Service**: a model's READY replicas form one pooled server of rate ``μ = Σ μ_i``,
  ``μ_i`` = the replica's saturation capacity (:func:`capacity_rps` of its option with
  the table cut at the model's batch limit, i.e. within half the SLO; ``1 / L(1)`` when
  no batch fits), ``c`` = READY replicas. A request's service time ``s`` is its group's
  latency at the *operating batch*: the smallest batch ``b`` whose rate ``b / L(b)``
  covers the replica's share of the load (``λ μ_i / μ``), capped at the best batch;
  ``s`` is averaged over groups by capacity.
* **Queue**: the fluid backlog ``q ← max(0, q + (λ − μ) Δt)``, FIFO. With deadline
  admission (``DeadlineAdmission``), arrivals that would push the backlog's wait
  ``q / μ`` past ``ADMIT_SLACK × (SLO − s)`` (0.9; ``SLO − 2s`` with batching, which
  may wait one batch) are rejected instead (the admission rule's fluid form; the slack
  covers the step discretisation so that what is admitted meets its deadline).
  **Timeout** (the cluster simulator's, the live data plane's): a request still queued
  ``timeout_factor`` (10) × SLO after its arrival times out (counted failed). The queue
  is FIFO, so after each step the backlog keeps only what arrived within the timeout:
  ``q ← min(q, Σ admitted over the last ⌈timeout / Δt⌉ steps)``; the excess is timed
  out (and leaves the departure curve the waits are read from, like a service).
* **Latency** of a request arriving at ``t``: ``s + w_f(t) + W``, with ``w_f`` the exact
  FIFO fluid wait (cumulative departures reach its arrival: computed after the run from
  the cumulative curves) and ``W`` a random wait that depends on the routing. Routing
  to the replica that frees first (:data:`POOLED_ROUTING`: earliest-completion, least
  outstanding, Prequal) is one M/M/c queue of ``c`` servers of rate ``μ / c`` at load
  ``λ``: ``P(W > x) = C(c, λc/μ) e^{−(μ − λ)x}`` (Erlang C, exact recursion for
  ``c ≤ 40``, the Halfin–Whitt approximation above). Any other routing (round robin,
  random, power of two…) leaves a queue per replica, each M/M/1 at the same load:
  ``P(W > x) = ρ e^{−(μ − λ)x / c}``, ``ρ = λ/μ``. ``W = 0`` when ``λ ≥ μ``: the
  backlog then carries the wait. With batching (the
  model's batch limit > 1) a request instead waits for the batch in service:
  ``W ~ Uniform(0, s)`` (a batch forms while the previous one runs). SLO attainment, mean
  and percentiles are those of this mixture, weighted by each step's admitted requests.
* **Snapshots** (every control interval, what the policies read): per model
  ``arrival_rate`` (arrivals of the last interval / interval), ``queue_length`` =
  ``round(q)``; per replica ``utilization`` = the pool's busy fraction over the
  interval (served / μ), ``outstanding`` = its share of the requests in flight by
  Little's law (``λ (s + E[W])``, spread evenly, rounded), ``capacity_rps`` = ``μ_i``,
  ``latency_s`` = ``s``, ``rate`` = its share of the throughput, ``started_at`` as in
  the cluster simulator.

Approximations (what the fluid does not see)
--------------------------------------------
Routing policies are not simulated, only classed as pooled or per-replica queues (with
the load spread in proportion to capacity: round robin's overload of slow replicas in a
mixed pool is not charged); batching only through the operating batch;
arrivals are Poisson within a step (ServeGen's per-client burstiness inside a
10-minute window is not kept); work on a dying or stopped replica goes back to the pool
at no cost (no retries, no failures); covers are released at decisions, not the moment
their replacements are ready. It is checked against the request-level simulator on the same workload
(``tests/unit/test_fluid.py``, ``benchmarks/bench_presets.py --check-fluid``).

Complexity: O(T × (M × G) + D × N) for T steps, M models of G groups, D decisions and
N replicas, plus O(T log T) for the percentiles. Deterministic for a given seed.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from coscale.errors import InvalidInputError
from coscale.policies.admission import DeadlineAdmission
from coscale.policies.allocation.capacity import best_effort_rps, capacity_rps
from coscale.policies.base import AllocationPolicy, Pool, VariantOption, reactions_of
from coscale.sim.cluster import TIMEOUT_FACTOR, ModelSetup, RequestLog, SimResult
from coscale.sim.faults import PREEMPTION, FaultModel
from coscale.sim.profiles import truncate_table
from coscale.telemetry.timeseries import TimeSeries
from coscale.types import (
    LatencySummary,
    ModelView,
    Plan,
    ReplicaState,
    ReplicaTarget,
    ReplicaView,
    RunSummary,
    Snapshot,
)

__all__ = ["FluidLoad", "FluidSimulator", "erlang_c"]

F64 = npt.NDArray[np.float64]

READY = ReplicaState.READY
STARTING = ReplicaState.STARTING
STOPPED = ReplicaState.STOPPED

#: Largest server count for the exact Erlang C recursion (Halfin–Whitt above).
ERLANG_EXACT_MAX = 40
#: Share of the SLO's waiting room the fluid admission fills (the rest absorbs the
#: step discretisation, so admitted requests finish within their deadline).
ADMIT_SLACK = 0.9
#: Routing policies that send work to the replica that will serve it first (≈ one
#: pooled M/M/c queue); the others (round robin, random, power of two, weighted round
#: robin, latency-inverse) leave a queue per replica (≈ M/M/1 each).
POOLED_ROUTING = frozenset({"earliest-completion", "least-outstanding", "prequal"})


@dataclass(frozen=True, eq=False)
class FluidLoad:
    """Per-model arrival rates (requests/s), one value per step of ``step_s`` seconds."""

    rates: tuple[F64, ...]
    step_s: float = 1.0

    def __post_init__(self) -> None:
        lengths = {len(r) for r in self.rates}
        if not self.rates or len(lengths) != 1 or not self.step_s > 0:
            raise InvalidInputError(
                "fluid load: need one rate series per model, all of one length, step > 0.",
                fix="build it with FluidLoad.from_times or FluidLoad.from_rates.",
            )
        if any(not np.all(np.isfinite(r)) or np.any(r < 0) for r in self.rates):
            raise InvalidInputError(
                "fluid load: rates must be finite and >= 0.", fix="check the workload."
            )

    @property
    def steps(self) -> int:
        return len(self.rates[0])

    @property
    def duration_s(self) -> float:
        return self.steps * self.step_s

    def total(self) -> float:
        """Expected number of requests in the load."""
        return float(sum(r.sum() for r in self.rates) * self.step_s)

    def binned(self, bin_s: float) -> tuple[F64, ...]:
        """Each model's mean rate in bins of ``bin_s`` seconds (for demand curves)."""
        k = max(1, round(bin_s / self.step_s))
        out = []
        for r in self.rates:
            n = math.ceil(len(r) / k)
            padded = np.zeros(n * k)
            padded[: len(r)] = r
            out.append(padded.reshape(n, k).mean(axis=1))
        return tuple(out)

    @classmethod
    def from_times(
        cls,
        times: F64,
        models: npt.NDArray[np.int32],
        n_models: int,
        duration_s: float,
        *,
        step_s: float = 1.0,
        scale: float = 1.0,
    ) -> FluidLoad:
        """Arrival times binned per step, each arrival standing for ``scale`` requests."""
        steps = max(1, math.ceil(duration_s / step_s))
        idx = np.minimum((np.asarray(times) // step_s).astype(np.int64), steps - 1)
        rates = tuple(
            np.bincount(idx[models == k], minlength=steps).astype(np.float64) * scale / step_s
            for k in range(n_models)
        )
        return cls(rates, step_s)

    @classmethod
    def from_rates(
        cls,
        starts: F64,
        window_s: float,
        total_rate: F64,
        shares: Sequence[float],
        *,
        time_scale: float = 1.0,
        scale: float = 1.0,
        step_s: float = 1.0,
    ) -> FluidLoad:
        """A rate table (``total_rate`` per window starting at ``starts``, trace seconds)
        sped up by ``time_scale`` (rates × time_scale), times ``scale``, split by
        ``shares``, resampled to steps of ``step_s`` simulated seconds."""
        t0 = float(starts[0])
        duration = (float(starts[-1]) - t0 + window_s) / time_scale
        steps = max(1, math.ceil(duration / step_s))
        mid = (np.arange(steps) + 0.5) * step_s * time_scale + t0
        idx = np.clip(((mid - t0) // window_s).astype(np.int64), 0, len(total_rate) - 1)
        base = np.asarray(total_rate, dtype=np.float64)[idx] * time_scale * scale
        return cls(tuple(base * s for s in shares), step_s)


def erlang_c(c: int, a: float) -> float:
    """Probability of waiting in M/M/c with offered load ``a`` = λ/μ₁ (``a < c``).

    Exact by the Erlang B recursion ``B_k = a B_{k−1} / (k + a B_{k−1})`` and ``C = c B /
    (c − a (1 − B))`` for ``c ≤ ERLANG_EXACT_MAX``; above it the Halfin–Whitt limit
    ``C ≈ 1 / (1 + β Φ(β) / φ(β))``, ``β = (1 − a/c) √c``. ``c = 0`` or ``a ≥ c`` → 1;
    ``a ≤ 0`` → 0. O(min(c, 40)).
    """
    if c <= 0 or a >= c:
        return 1.0
    if a <= 0:
        return 0.0
    if c <= ERLANG_EXACT_MAX:
        b = 1.0
        for k in range(1, c + 1):
            b = a * b / (k + a * b)
        return c * b / (c - a * (1.0 - b))
    beta = (1.0 - a / c) * math.sqrt(c)
    if beta > 30.0:  # φ(β) underflows; C < 1e-190
        return 0.0
    phi = math.exp(-beta * beta / 2) / math.sqrt(2 * math.pi)
    big_phi = 0.5 * (1 + math.erf(beta / math.sqrt(2)))
    return 1.0 / (1.0 + beta * big_phi / phi)


# --------------------------------------------------------------------------- internals


class _Group:
    """One serving option of a model: its saturation rate and operating-batch table."""

    def __init__(self, option: VariantOption, setup: ModelSetup) -> None:
        self.option = option
        self.node = option.node
        self.variant = option.variant
        seq = setup.typical_seq_len
        table = truncate_table(option.latency, setup.batch_limit)
        cut = dataclasses.replace(option, latency=table)
        cap = capacity_rps(cut, setup.slo_s, seq_len=seq)
        self.mu = cap if cap > 0 else best_effort_rps(cut, seq_len=seq)
        self.rates: list[float] = []
        self.lats: list[float] = []
        best = 0.0
        for b in range(1, max(1, setup.batch_limit) + 1):
            lat = table.latency(b, seq)
            if lat <= 0 or b / lat > self.mu * (1 + 1e-9):
                break
            if b / lat > best:
                best = b / lat
                self.rates.append(best)
                self.lats.append(lat)
        if not self.rates:
            self.rates, self.lats = [self.mu], [1.0 / self.mu if self.mu > 0 else math.inf]

    def service_s(self, per_replica_rps: float) -> float:
        """Latency at the smallest batch whose rate covers ``per_replica_rps``."""
        for rate, lat in zip(self.rates, self.lats, strict=True):
            if rate >= per_replica_rps:
                return lat
        return self.lats[-1]


class _Replica:
    __slots__ = ("decided", "dies", "group", "id", "model", "ready_at", "spot", "state", "stop")

    def __init__(
        self, rid: int, model: int, group: _Group, spot: bool, now: float, ready_at: float
    ):
        self.id = rid
        self.model = model
        self.group = group
        self.spot = spot
        self.decided = now
        self.ready_at = ready_at
        self.state = STARTING
        self.stop = math.inf
        self.dies = math.inf


class _ModelRun:
    """Per-model fluid state and the per-step records the summary is computed from."""

    def __init__(self, index: int, setup: ModelSetup, steps: int) -> None:
        self.index = index
        self.setup = setup
        self.name = setup.name
        self.slo_s = setup.slo_s
        self.groups = {(o.variant, o.node.name): _Group(o, setup) for o in setup.options}
        self.deadline = isinstance(setup.admission, DeadlineAdmission)
        self.q = 0.0
        self.mu = 0.0
        self.ready: dict[tuple[str, str], int] = {}
        self.arrived_tick = 0.0
        self.arrived_burst = 0.0
        self.busy_tick = 0.0
        self.cap_tick = 0.0
        self.inflight = 0.0
        self.service = 0.0
        # per step: admitted arrivals, served, service time, Erlang C, decay rate
        self.adm = np.zeros(steps)
        self.srv = np.zeros(steps)
        self.svc = np.zeros(steps)
        self.pw = np.zeros(steps)
        self.theta = np.zeros(steps)
        self.uni = np.zeros(steps)
        self.batched = setup.batch_limit > 1
        self.pooled = getattr(setup.routing, "name", "") in POOLED_ROUTING
        self.rejected = 0.0
        self.arrived = 0.0
        self.exp = np.zeros(steps)
        self.timeout_steps = 0  # 0: no timeout


@dataclass(frozen=True)
class _Totals:
    requests: float
    completed: float
    rejected: float
    on_time: float
    latency: LatencySummary
    timed_out: float = 0.0


class FluidSimulator:
    """Fluid executor of allocation plans (module docstring)."""

    def __init__(
        self,
        setups: Sequence[ModelSetup],
        allocation: AllocationPolicy[Any],
        pools: Sequence[Pool],
        load: FluidLoad,
        *,
        interval_s: float,
        rng: np.random.Generator,
        initial: Sequence[ReplicaTarget] = (),
        faults: FaultModel | None = None,
        drain_limit_s: float = 600.0,
        sample_interval_s: float = 15.0,
        timeout_factor: float | None = TIMEOUT_FACTOR,
        preset: str = "",
        scenario: str = "",
    ) -> None:
        if len(load.rates) != len(setups):
            raise InvalidInputError(
                f"fluid load has {len(load.rates)} model series for {len(setups)} models.",
                fix="give one rate series per model, in the scenario's order.",
            )
        if not interval_s > 0:
            raise InvalidInputError("control interval must be > 0 s.", fix="use e.g. 15.")
        self._load = load
        self._dt = load.step_s
        extra = math.ceil(drain_limit_s / self._dt)
        self._steps = load.steps + extra
        self._models = [_ModelRun(k, s, self._steps) for k, s in enumerate(setups)]
        if timeout_factor is not None:
            for m in self._models:
                m.timeout_steps = max(1, math.ceil(m.slo_s * timeout_factor / self._dt))
        self._by_name = {m.name: m for m in self._models}
        self._allocation = allocation
        self._astate: Any = None
        self._interval = interval_s
        self._rng = rng
        self._faults = faults or FaultModel(0.0)
        self._initial = tuple(initial)
        self._limit: dict[str, int] = {}
        for p in pools:
            self._limit[p.node.name] = self._limit.get(p.node.name, 0) + p.max_replicas
        self._used: dict[str, int] = {}
        self._replicas: list[_Replica] = []
        self._alive: dict[int, _Replica] = {}
        self._events: list[tuple[float, int, int]] = []  # (time, kind 0 ready / 1 death, id)
        self._sample_interval = sample_interval_s
        self._series = TimeSeries()
        self._preset, self._scenario = preset, scenario
        self._decisions = self._deferred = 0
        self._reactions = 0
        self._last_react = 0.0
        self._react_interval = reactions_of(allocation).interval_s
        self._faults_n = {PREEMPTION: 0, "failure": 0}
        self._causes: dict[int, str] = {}
        self._alive_int = 0.0
        self._max_alive = 0
        self._energy = 0.0
        self._idle_w = self._dyn_w = 0.0
        self._last_tick = 0.0

    # ------------------------------------------------------------------ replicas

    def _start(self, m: _ModelRun, g: _Group, spot: bool, now: float, ready_now: bool) -> None:
        ready_at = now if ready_now else now + g.node.startup_s
        r = _Replica(len(self._replicas), m.index, g, spot, now, ready_at)
        self._replicas.append(r)
        self._alive[r.id] = r
        self._used[g.node.name] = self._used.get(g.node.name, 0) + 1
        self._max_alive = max(self._max_alive, len(self._alive))
        self._idle_w += _watts(g)[0]
        death = self._faults.draw(g.node, spot, self._rng)
        if death is not None:
            r.dies = now + death[0]
            self._causes[r.id] = death[1]
            heapq.heappush(self._events, (r.dies, 1, r.id))
        if ready_now:
            self._ready(r)
        else:
            heapq.heappush(self._events, (ready_at, 0, r.id))

    def _ready(self, r: _Replica) -> None:
        r.state = READY
        m = self._models[r.model]
        key = (r.group.variant, r.group.node.name)
        m.ready[key] = m.ready.get(key, 0) + 1
        m.mu += r.group.mu
        self._dyn_w += _watts(r.group)[1]

    def _stop(self, r: _Replica, now: float) -> None:
        if r.state is READY:
            m = self._models[r.model]
            key = (r.group.variant, r.group.node.name)
            m.ready[key] -= 1
            m.mu = max(0.0, m.mu - r.group.mu)
            self._dyn_w -= _watts(r.group)[1]
        self._idle_w -= _watts(r.group)[0]
        r.state = STOPPED
        r.stop = now
        self._used[r.group.node.name] -= 1
        del self._alive[r.id]

    def _events_until(self, now: float) -> None:
        ev = self._events
        while ev and ev[0][0] <= now + 1e-12:
            t, kind, rid = heapq.heappop(ev)
            r = self._replicas[rid]
            if r.state is STOPPED:
                continue
            if kind == 0 and r.state is STARTING:
                self._ready(r)
            elif kind == 1:
                self._faults_n[self._causes[rid]] += 1
                self._stop(r, t)

    # ------------------------------------------------------------------ control

    def _snapshot(self, now: float) -> Snapshot:
        span = max(now - self._last_tick, 1e-12)
        models: list[ModelView] = []
        views: list[ReplicaView] = []
        per: dict[int, tuple[float, float, float]] = {}
        for m in self._models:
            util = min(1.0, m.busy_tick / m.cap_tick) if m.cap_tick > 0 else 0.0
            c = sum(m.ready.values())
            per[m.index] = (util, m.inflight / c if c else 0.0, m.service)
            models.append(_model_view(m, m.arrived_tick / span))
            m.arrived_tick = m.busy_tick = m.cap_tick = 0.0
        carry: dict[int, float] = {}
        for r in self._alive.values():
            util, share, service = per[r.model]
            ready = r.state is READY
            acc = carry.get(r.model, 0.0) + (share if ready else 0.0)
            out = math.floor(acc + 1e-9)
            carry[r.model] = acc - out
            views.append(
                self._replica_view(
                    r,
                    outstanding=out if ready else 0,
                    rate=util * r.group.mu if ready else 0.0,
                    latency_s=service if ready else 0.0,
                    utilization=util if ready else 0.0,
                )
            )
        return Snapshot(now, tuple(models), tuple(views))

    def _replica_view(self, r: _Replica, **observed: Any) -> ReplicaView:
        """``r``'s identity, state, ``capacity_rps`` and start as a policy sees them, with
        the ``observed`` fields (load, rates) of the caller's snapshot."""
        return ReplicaView(
            f"f{r.id}",
            self._models[r.model].name,
            r.group.variant,
            r.group.node.name,
            r.state,
            r.spot,
            capacity_rps=r.group.mu,
            started_at=r.ready_at if r.state is READY else r.decided,
            **observed,
        )

    def _react(self, now: float) -> None:
        """The allocation policy's reaction to bursts, as the request-level simulator's:
        per model the arrivals since the previous reaction / its span and the backlog;
        per replica its identity, state and ``capacity_rps``."""
        span = max(now - self._last_react, 1e-12)
        models = []
        for m in self._models:
            models.append(_model_view(m, m.arrived_burst / span))
            m.arrived_burst = 0.0
        self._last_react = now
        views = tuple(self._replica_view(r) for r in self._alive.values())
        snapshot = Snapshot(now, tuple(models), views)
        plan, self._astate = self._allocation.react(snapshot, self._astate)  # type: ignore[attr-defined]
        if plan is not None:
            self._reactions += 1
            self._reconcile(plan, now)

    def _reconcile(self, plan: Plan, now: float) -> None:
        targets: dict[tuple[int, str, str, bool], int] = {}
        for t in plan.targets:
            m = self._by_name.get(t.model)
            if m is None or (t.variant, t.node_type) not in m.groups or t.count < 0:
                raise InvalidInputError(
                    f"plan target {t} names an unknown model or option.",
                    fix="plans may only name the models and options they were given.",
                )
            key = (m.index, t.variant, t.node_type, t.spot)
            targets[key] = targets.get(key, 0) + t.count
        active: dict[tuple[int, str, str, bool], list[_Replica]] = {}
        for r in self._alive.values():
            key = (r.model, r.group.variant, r.group.node.name, r.spot)
            active.setdefault(key, []).append(r)
        starts: list[tuple[_ModelRun, _Group, bool, int]] = []
        planned = [0.0] * len(self._models)
        ready_in = [0.0] * len(self._models)
        surplus: list[list[_Replica]] = [[] for _ in self._models]
        for key in [*targets, *sorted(k for k in active if k not in targets)]:
            want = targets.get(key, 0)
            reps = active.get(key, [])
            ready = [r for r in reps if r.state is READY]
            starting = sorted((r for r in reps if r.state is STARTING), key=lambda r: r.ready_at)
            keep_r = min(want, len(ready))
            keep_s = min(want - keep_r, len(starting))
            for r in starting[keep_s:]:
                self._stop(r, now)
            surplus[key[0]].extend(ready[keep_r:])
            mu = self._models[key[0]].groups[(key[1], key[2])].mu
            planned[key[0]] += want * mu
            ready_in[key[0]] += keep_r * mu
            if want - keep_r - keep_s > 0:
                m = self._models[key[0]]
                starts.append((m, m.groups[(key[1], key[2])], key[3], want - keep_r - keep_s))
        covers: list[_Replica] = []
        for k, extra in enumerate(surplus):
            # rolling update: keep READY capacity ≥ min(planned, READY capacity it had)
            goal = min(planned[k], ready_in[k] + sum(r.group.mu for r in extra))
            kept = ready_in[k]
            for r in sorted(extra, key=lambda r: -r.group.mu):
                if kept < goal - 1e-9:
                    covers.append(r)
                    kept += r.group.mu
                else:
                    self._stop(r, now)
        for m, g, spot, n in starts:
            free = self._limit.get(g.node.name, 0) - self._used.get(g.node.name, 0)
            for r in [c for c in covers if c.group.node.name == g.node.name][: max(0, n - free)]:
                self._stop(r, now)  # a cover gives its slot to a planned start
            free = self._limit.get(g.node.name, 0) - self._used.get(g.node.name, 0)
            k = max(0, min(n, free))
            self._deferred += n - k
            for _ in range(k):
                self._start(m, g, spot, now, ready_now=False)

    # ------------------------------------------------------------------ run

    def run(self, progress: Callable[[float, float], None] | None = None) -> SimResult:
        """Simulate every step; the workload's end plus up to ``drain_limit_s`` to drain."""
        wall = time.perf_counter()
        for t in self._initial:
            m = self._by_name.get(t.model)
            g = m.groups.get((t.variant, t.node_type)) if m is not None else None
            if m is None or g is None:
                raise InvalidInputError(f"initial target {t} is unknown.", fix="check it.")
            for _ in range(t.count):
                self._start(m, g, t.spot, 0.0, ready_now=True)
        dt, load_steps = self._dt, self._load.steps
        next_tick, next_sample = self._interval, self._sample_interval
        next_react = self._react_interval if self._react_interval is not None else math.inf
        end_step = self._steps
        for k in range(self._steps):
            now = k * dt
            if k >= load_steps and all(m.q <= 1e-9 for m in self._models):
                end_step = k  # the load is over and nothing is queued
                break
            self._events_until(now)
            if now + 1e-9 >= next_tick:
                snapshot = self._snapshot(now)
                plan, self._astate = self._allocation.decide(snapshot, self._astate)
                self._decisions += 1
                self._last_tick = now
                self._reconcile(plan, now)
                next_tick += self._interval
            if now + 1e-9 >= next_react:
                self._react(now)
                next_react += self._react_interval or math.inf
            if now + 1e-9 >= next_sample:
                self._sample(now)
                next_sample += self._sample_interval
            self._step(k, dt, load_steps)
            if progress is not None and k % 3600 == 0:
                progress(now, self._steps * dt)
        return self._result(end_step, time.perf_counter() - wall)

    def _step(self, k: int, dt: float, load_steps: int) -> None:
        self._alive_int += len(self._alive) * dt
        busy_frac = 0.0
        for m in self._models:
            lam = float(self._load.rates[m.index][k]) if k < load_steps else 0.0
            arrivals = lam * dt
            m.arrived += arrivals
            m.arrived_tick += arrivals
            m.arrived_burst += arrivals
            mu = m.mu
            service = self._service(m, lam)
            m.service = service
            admitted = arrivals
            if m.deadline:
                worst = service * (2.0 if m.batched else 1.0)
                room = max(0.0, (m.slo_s - worst) * mu * ADMIT_SLACK) if mu > 0 else 0.0
                limit = room + mu * dt
                admitted = min(arrivals, max(0.0, limit - m.q))
                m.rejected += arrivals - admitted
            served = min(m.q + admitted, mu * dt)
            m.q = m.q + admitted - served
            m.adm[k] = admitted
            if m.timeout_steps and m.q > 0:
                young = float(m.adm[max(0, k - m.timeout_steps + 1) : k + 1].sum())
                if m.q > young:
                    m.exp[k] = m.q - young
                    m.q = young
            c = sum(m.ready.values())
            pw = theta = uni = 0.0
            if mu > 0 and m.batched:
                uni = service  # waits for the batch in service: up to one batch time
            elif mu > 0 and lam < mu and c > 0 and m.pooled:
                pw = erlang_c(c, lam * c / mu)
                theta = mu - lam
            elif mu > 0 and lam < mu and c > 0:
                pw = lam / mu  # M/M/1 per replica: P(W > x) = ρ e^{−(μ₁ − λ₁)x}
                theta = (mu - lam) / c
            m.adm[k], m.srv[k], m.svc[k] = admitted, served, service
            m.pw[k], m.theta[k], m.uni[k] = pw, theta, uni
            m.busy_tick += served
            m.cap_tick += mu * dt
            wait = pw / theta if theta > 0 else uni / 2
            m.inflight = lam * (service + wait)  # the backlog q is the queue_length
            if mu > 0:
                busy_frac = max(busy_frac, served / (mu * dt))
        self._energy += (self._idle_w + self._dyn_w * busy_frac) * dt

    def _service(self, m: _ModelRun, lam: float) -> float:
        """Capacity-weighted service time at the operating batch (module docstring)."""
        if m.mu <= 0:
            groups = list(m.groups.values())
            return min(g.lats[0] for g in groups) if groups else 0.0
        total = 0.0
        for key, n in m.ready.items():
            if n <= 0:
                continue
            g = m.groups[key]
            share = g.mu * n / m.mu
            total += share * g.service_s(lam * g.mu / m.mu)
        return total

    def _sample(self, now: float) -> None:
        row: dict[str, float] = {"replicas": float(len(self._alive))}
        for m in self._models:
            row[f"queue.{m.name}"] = m.q
            row[f"capacity_rps.{m.name}"] = m.mu
        self._series.add(now, row)

    # ------------------------------------------------------------------ results

    def _totals(self, end_step: int) -> _Totals:
        requests = completed = rejected = on_time = expired = 0.0
        dists: list[tuple[F64, F64, F64, F64, F64]] = []
        dt = self._dt
        for m in self._models:
            adm, srv = m.adm[:end_step], m.srv[:end_step]
            times = np.arange(end_step) * dt
            cum_a = np.concatenate(([0.0], np.cumsum(adm)))
            cum_d = np.concatenate(([0.0], np.cumsum(srv + m.exp[:end_step])))
            grid = np.concatenate((times, [end_step * dt]))
            # an arrival at the middle of step k is served when D reaches A at that point
            mid_a = (cum_a[:-1] + cum_a[1:]) / 2
            finish = np.interp(mid_a, cum_d, grid, right=np.inf)
            wait = np.maximum(0.0, finish - (times + dt / 2))
            done = float(min(srv.sum(), cum_a[-1]))
            base = m.svc[:end_step] + wait
            tail = (m.pw[:end_step], m.theta[:end_step], m.uni[:end_step])
            dists.append((adm, base, *tail))
            meet = 1.0 - _tail(m.slo_s - base, *tail)
            on_time += float((adm * meet).sum())
            requests += m.arrived
            rejected += m.rejected
            completed += done
            expired += float(m.exp[:end_step].sum())
        return _Totals(requests, completed, rejected, on_time, _latency(dists), expired)

    def _result(self, end_step: int, wall_s: float) -> SimResult:
        end = end_step * self._dt
        cost = spot_cost = 0.0
        for r in self._replicas:
            stop = min(r.stop, end)
            node = r.group.node
            billed = (stop - r.decided) * node.usd_per_hour(r.spot) / max(1, node.replicas_per_node)
            cost += billed / 3600.0
            spot_cost += billed / 3600.0 if r.spot else 0.0
        tot = self._totals(end_step)
        n = round(tot.requests)
        completed = round(tot.completed)
        rejected = round(tot.rejected)
        admitted = tot.requests - tot.rejected
        summary = RunSummary(
            requests=n,
            completed=completed,
            failed=round(tot.timed_out),
            rejected=rejected,
            lost=0,
            latency_ms=tot.latency,
            throughput_rps=tot.completed / end if end > 0 else 0.0,
            makespan_s=end,
            cost_usd=cost,
            energy_j=self._energy,
            slo_attainment=tot.on_time / tot.requests if tot.requests > 0 else 1.0,
            reliability=tot.completed / admitted if admitted > 0 else 1.0,
            preset=self._preset,
            scenario=self._scenario,
            extra={
                "mode": "fluid",
                "timed_out": round(tot.timed_out),
                "simulated_s": end,
                "wall_s": wall_s,
                "steps": end_step,
                "step_s": self._dt,
                "decisions": self._decisions,
                "reactions": self._reactions,
                "replicas_started": len(self._replicas),
                "replicas_mean": self._alive_int / max(end, 1e-12),
                "replicas_max": self._max_alive,
                "spot_cost_usd": spot_cost,
                "preemptions": self._faults_n[PREEMPTION],
                "failures": self._faults_n["failure"],
                "deferred_starts": self._deferred,
                "queue_left": sum(m.q for m in self._models),
            },
        )
        f0, i0 = np.zeros(0), np.zeros(0, np.int32)
        log = RequestLog(
            arrival=f0,
            deadline=f0,
            finish=f0,
            outcome=np.zeros(0, np.int8),
            model=i0,
            tenant=i0,
            seq_len=i0,
            replica=np.zeros(0, np.int64),
            service_start=f0,
            batch_size=i0,
            retries=i0,
            model_names=tuple(m.name for m in self._models),
            tenant_names=("default",),
        )
        rows = tuple(
            (
                r.id,
                self._models[r.model].name,
                r.group.variant,
                r.group.node.name,
                r.spot,
                r.decided,
                r.ready_at if r.ready_at <= min(r.stop, end) else math.nan,
                r.stop if r.stop < math.inf else math.nan,
                self._causes.get(r.id, "") if r.dies <= min(r.stop, end) else "",
            )
            for r in self._replicas
        )
        return SimResult(summary, log, self._series, rows)


def _model_view(m: _ModelRun, rate: float) -> ModelView:
    """``m``'s view at arrival ``rate`` (requests/s) with its backlog now."""
    return ModelView(
        m.name,
        arrival_rate=rate,
        queue_length=round(m.q),
        slo_s=m.slo_s,
        accuracy_floor=m.setup.accuracy_floor,
    )


def _watts(g: _Group) -> tuple[float, float]:
    """(idle, peak − idle) watts of one replica of the group (its share of the node)."""
    node, per = g.node, max(1, g.node.replicas_per_node)
    return node.idle_watts / per, (node.peak_watts - node.idle_watts) / per


def _tail(y: F64, p: F64, theta: F64, uni: F64) -> F64:
    """``P(W > y)`` per step: ``p e^{−θy}`` (θ > 0), ``1 − y/u`` clipped (batching, u >
    0), else 0; 1 where ``y < 0``."""
    y0 = np.maximum(y, 0.0)
    expo = np.where(theta > 0, p * np.exp(-theta * y0), 0.0)
    flat = np.where(uni > 0, np.clip(1.0 - y0 / np.where(uni > 0, uni, 1.0), 0.0, 1.0), 0.0)
    out: F64 = np.where(y < 0, 1.0, expo + flat)
    return out


def _latency(dists: Sequence[tuple[F64, F64, F64, F64, F64]]) -> LatencySummary:
    """Mean and percentiles (ms) of the mixture: per step, mass ``w`` at ``base``, plus
    a random wait with the survival :func:`_tail`."""
    cols = [np.concatenate([d[i] for d in dists]) if dists else np.zeros(0) for i in range(5)]
    keep = (cols[0] > 0) & np.isfinite(cols[1])
    w, base, p, theta, uni = (c[keep] for c in cols)
    total = float(w.sum())
    if total <= 0:
        return LatencySummary(0.0, 0.0, 0.0, 0.0)
    extra = np.where(theta > 0, p / np.where(theta > 0, theta, 1.0), 0.0) + uni / 2
    mean = float((w * (base + extra)).sum() / total)

    def survival(x: float) -> float:
        return float((w * _tail(x - base, p, theta, uni)).sum() / total)

    def quantile(q: float) -> float:
        lo, hi = 0.0, float(base.max() + extra.max() * 50 + uni.max()) + 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if survival(mid) > 1 - q:
                lo = mid
            else:
                hi = mid
        return hi

    return LatencySummary(
        p50=quantile(0.5) * 1000.0,
        p90=quantile(0.9) * 1000.0,
        p99=quantile(0.99) * 1000.0,
        mean=mean * 1000.0,
    )
