"""The running system: a scenario served live, behind :class:`~coscale.runtime.contract.Serving`.

:meth:`ServingSystem.from_scenario` builds the *same* policy objects the simulator runs,
with the one function :func:`coscale.sim.run.run_preset` calls too
(:func:`coscale.sim.build.build_policies`), from the scenario and the models' profiles
measured on this machine, and wires them to a :class:`~coscale.runtime.dataplane.DataPlane`
and a :class:`~coscale.runtime.controller.Controller` on the injected clock. Only the
tenants' fair queue differs: live tenants are the scenario's, not a workload's.

This machine as the cluster
---------------------------
Live, the cluster is this machine: only the scenario's pools of a ``local`` node type
(``provider: local`` in the catalog, e.g. ``local-2vcpu``) are used; a scenario without
one is a :class:`~coscale.errors.ScenarioError`. Each local pool's replica limit ``S_t``
(``max_count × replicas_per_node``) is capped by the cores (``cores``, default the CPUs
this process may use) so that every replica has at least one core, and its starting
``count`` by that limit. Every replica runs ``threads = max(1, cores // R)`` intra-op
threads where R is the total replica limit, so replicas never oversubscribe the cores.

Profiles
--------
Variant selection and every latency prediction read the models' profiles. ``profile``
may be a :class:`~coscale.catalog.profiles.ProfileFile` or a path (a one-model
scenario), or a mapping from model name to either. A model without one uses the profile
``coscale profile`` wrote for this machine (:func:`default_profile_path`); if there is
none, a :class:`~coscale.errors.ProfileError` says to run the profiler (the CLI's
``serve`` does that first). Paths are checked against this machine's hardware.

Start, serve, stop
------------------
:meth:`ServingSystem.start` starts the initial replicas (each pool's ``count`` split
between the models by the workload's model mix, the variant the variant policy ranks
best — the simulator's initial state), waits until they are READY, and starts the
control loop (first decision one control interval later; at once when a model has no
initial replica). :meth:`ServingSystem.shutdown` stops accepting (503), finishes the
accepted requests, and stops the replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from coscale.accel.base import ModelFamily
from coscale.accel.zoo import get_family
from coscale.backends.base import Backend
from coscale.catalog import Catalog, load_catalog
from coscale.catalog.profiles import ProfileFile, default_profile_path, load_profile
from coscale.clock import Clock, SystemClock
from coscale.config import ModelSpec, NodePool, Scenario
from coscale.errors import CoscaleError, ProfileError, ScenarioError
from coscale.policies.admission import WeightedFairQueue
from coscale.runtime.controller import Controller
from coscale.runtime.dataplane import DataPlane
from coscale.sim.build import PolicySet, build_policies
from coscale.sim.profiles import measured_variants, options_for
from coscale.sim.run import SimOptions, prepare
from coscale.telemetry.records import Gauge, Telemetry

__all__ = ["PolicySet", "ServingSystem", "build_policies", "live_scenario"]

log = logging.getLogger(__name__)

#: Seconds :meth:`ServingSystem.shutdown` waits for accepted requests to finish.
SHUTDOWN_DRAIN_S = 60.0

ProfileArg = ProfileFile | str | Path


# ------------------------------------------------------------------------------ scenario


def usable_cores() -> int:
    """The replicas' core budget: :func:`coscale.backends.local.usable_cores` (the CPUs
    of ``COSCALE_WORKER_CPUS`` when set, else this process's affinity), at least 1."""
    from coscale.backends.local import usable_cores as worker_cores

    return worker_cores()


def live_scenario(scenario: Scenario, catalog: Catalog, cores: int) -> Scenario:
    """The scenario restricted to this machine (module docstring, "This machine")."""
    pools: list[NodePool] = []
    for pool in scenario.cluster.nodes:
        node = catalog.get(pool.type)
        if node.provider != "local":
            continue
        per = max(1, node.replicas_per_node)
        limit_nodes = max(1, min(pool.limit * per, cores) // per)
        pools.append(
            NodePool(type=pool.type, count=min(pool.count, limit_nodes), max_count=limit_nodes)
        )
    if not pools:
        local = ", ".join(n.name for n in catalog if n.provider == "local")
        raise ScenarioError(
            f"scenario {scenario.name!r} has no pool of a local node type, so nothing of it "
            "can run on this machine.",
            fix=f"add a pool of {local or 'a local node type'} under cluster.nodes "
            "(e.g. `- type: local-2vcpu`, `count: 1`).",
        )
    cluster = scenario.cluster.model_copy(update={"nodes": pools})
    return scenario.model_copy(update={"cluster": cluster})


def _resolve_profile(
    model: ModelSpec, family: ModelFamily, given: ProfileArg | None
) -> ProfileFile:
    if isinstance(given, ProfileFile):
        return given
    if given is not None:
        return load_profile(Path(given))
    here = default_profile_path(family.name)
    if here.is_file():
        return load_profile(here)
    raise ProfileError(
        f"no latency profile of model {model.name!r} ({model.source}) for this machine at "
        f"{here}: variant selection and the latency predictions need one.",
        fix=f"run `coscale profile {model.source}` first (a few minutes; `--quick` for a rough "
        "one), or pass a profile.",
    )


def _profile_for(
    model: ModelSpec, profile: ProfileArg | Mapping[str, ProfileArg] | None, n_models: int
) -> ProfileArg | None:
    if profile is None:
        return None
    if isinstance(profile, Mapping):
        return profile.get(model.name) or profile.get(model.source)
    if n_models > 1:
        raise CoscaleError(
            "one profile was given for a scenario with several models",
            fix="pass a mapping {model name: profile}",
            code="bad_profile",
        )
    return profile


# ------------------------------------------------------------------------------ system


class ServingSystem:
    """A scenario served live (module docstring); implements
    :class:`~coscale.runtime.contract.Serving`.

    ``telemetry`` (:class:`~coscale.telemetry.records.Telemetry`) is the hook for
    exporters; ``plane`` and ``controller`` are the data plane and the control loop.
    """

    def __init__(
        self,
        scenario: Scenario,
        policies: PolicySet,
        families: Mapping[str, ModelFamily],
        backend: Backend,
        clock: Clock,
        *,
        preset: str,
        limits: Mapping[str, int],
        threads: int,
        cores: int,
    ) -> None:
        self.scenario = scenario
        self.policies = policies
        self.preset = preset
        self.clock = clock
        self.backend = backend
        self.limits = dict(limits)
        self.threads = threads
        self.cores = cores
        self.telemetry = Telemetry()
        sources = {m.name: m.source for m in scenario.models}
        self.plane = DataPlane(
            [(s, families[s.name], sources[s.name]) for s in policies.setups],
            backend,
            clock,
            self.telemetry,
            threads=threads,
        )
        self.controller = Controller(
            policies.allocation,
            self.plane,
            clock,
            interval_s=policies.interval_s,
            limits=self.limits,
            models=[m.name for m in scenario.models],
        )
        self.started = False
        self.stopped = False
        self.started_at = clock.now()
        self.unanswered_at_shutdown = 0

    @classmethod
    def from_scenario(
        cls,
        scenario: Scenario,
        *,
        preset: str | None = None,
        backend: Backend | None = None,
        clock: Clock | None = None,
        profile: ProfileArg | Mapping[str, ProfileArg] | None = None,
        cores: int | None = None,
        interval_s: float | None = None,
        catalog: Catalog | None = None,
    ) -> ServingSystem:
        """Build the system for ``scenario`` (module docstring); nothing starts yet.

        ``preset``: default the scenario's (its policy overrides apply only to it).
        ``backend``: default :class:`~coscale.backends.local.LocalBackend`. ``clock``:
        default :class:`~coscale.clock.SystemClock`. ``cores``: the core budget (default
        this process's CPUs). ``interval_s``: overrides the allocation policy's control
        interval.
        """
        catalog = catalog or load_catalog()
        cores = cores or usable_cores()
        live = live_scenario(scenario, catalog, cores)
        families: dict[str, ModelFamily] = {}
        measured = {}
        for m in live.models:
            family = get_family(m.source)
            families[m.name] = family
            prof = _resolve_profile(m, family, _profile_for(m, profile, len(live.models)))
            options_for(m, prof, catalog, live.cluster.nodes)  # checks the listed variants
            measured[m.name] = measured_variants(prof)
        prepared = prepare(
            live, SimOptions(interval_s=interval_s), measured=measured, catalog=catalog
        )
        preset = preset or live.policies.preset
        policies = build_policies(prepared, preset)
        if len(live.tenants) >= 2:  # live tenants are the scenario's, not the workload's
            fair = WeightedFairQueue(weights={t.name: t.weight for t in live.tenants})
        else:
            fair = None
        setups = tuple(dataclasses.replace(s, fair_queue=fair) for s in policies.setups)
        policies = dataclasses.replace(policies, setups=setups)
        limits: dict[str, int] = {}
        for pool in prepared.pools:
            limits[pool.node.name] = limits.get(pool.node.name, 0) + pool.max_replicas
        threads = max(1, cores // max(1, sum(limits.values())))
        if backend is None:
            from coscale.backends.local import LocalBackend

            backend = LocalBackend(max_batch=max(m.max_batch for m in live.models))
        return cls(
            live,
            policies,
            families,
            backend,
            clock or SystemClock(),
            preset=preset,
            limits=limits,
            threads=threads,
            cores=cores,
        )

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start the initial replicas, wait until READY, start the control loop.

        A model left with no READY replica (every start failed) stops everything and
        raises :class:`CoscaleError` (``replica_start_failed``) with the causes.
        """
        if self.started:
            return
        self.plane.bind()
        self.started_at = self.clock.now()
        replicas = self.controller.start_initial(self.policies.initial)
        await asyncio.gather(*(r.task for r in replicas if r.task is not None))
        missing = [
            lane.name for lane in self.plane.lanes.values() if not lane.has_capacity_coming()
        ]
        if missing:  # no initial replica: decide now rather than one interval later
            self.controller.tick()
            await asyncio.gather(
                *(r.task for r in self.plane.live_replicas() if r.task is not None)
            )
        dead = [lane.name for lane in self.plane.lanes.values() if not lane.serving()]
        if dead:
            causes = "; ".join(
                f"{r.id} ({r.spec.variant}): {r.cause}" for r in self.plane.history if r.cause
            )
            await self.shutdown(drain=False)
            raise CoscaleError(
                f"model(s) {', '.join(dead)} have no serving replica: "
                f"{causes or 'the plan gives them none'}",
                fix="check the variants (coscale profile) and the scenario's pools",
                code="replica_start_failed",
            )
        self.started = True
        self.controller.run()

    async def shutdown(self, drain: bool = True) -> None:
        """Stop accepting (NotReady), finish (``drain``) or fail the accepted requests,
        stop the control loop and every replica. Every accepted request is answered."""
        if self.stopped:
            return
        self.stopped = True
        self.plane.stop_accepting()
        await self.controller.stop()
        left = await self.plane.close(drain=drain, timeout_s=SHUTDOWN_DRAIN_S)
        self.unanswered_at_shutdown = left if drain else 0
        with contextlib.suppress(Exception):
            await self.backend.shutdown()
        if drain and left:
            log.error("%d accepted requests were still unanswered at shutdown", left)
        assert self.plane.in_flight == 0, "accepted requests were left unanswered"

    async def __aenter__(self) -> ServingSystem:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    # -- Serving -----------------------------------------------------------------------

    async def infer(
        self,
        model: str,
        items: Sequence[Any],
        *,
        tenant: str = "default",
        timeout_s: float | None = None,
        raw: bool = False,
        waited_s: float = 0.0,
    ) -> Any:
        """Validate, admit, batch, route and run; one output object per item, in order
        (``items``: a list, or an array with the batch axis first; ``raw``: the output rows
        as one float32 array instead of JSON objects)."""
        return await self.plane.submit(
            model, items, tenant=tenant, timeout_s=timeout_s, raw=raw, waited_s=waited_s
        )

    def note_refused(self, model: str, tenant: str) -> None:
        self.plane.note_refused(model, tenant)

    def ready(self) -> bool:
        return (
            self.started
            and not self.stopped
            and self.plane.accepting
            and all(lane.serving() for lane in self.plane.lanes.values())
        )

    def models(self) -> list[dict[str, Any]]:
        out = []
        for lane in self.plane.lanes.values():
            replicas = [r.info() for r in lane.replicas.values()]
            out.append(
                {
                    "name": lane.name,
                    "source": lane.source,
                    "slo_ms": lane.slo_s * 1000.0,
                    "max_batch": lane.max_batch,
                    "variants": sorted({r["variant"] for r in replicas}),
                    "options": [f"{v}@{n}" for v, n in lane.options],
                    "replicas": replicas,
                    "queue_length": len(lane.batcher),
                    "in_flight": len(lane.pending),
                }
            )
        return out

    def stats(self, tenant: str | None = None) -> dict[str, Any]:
        now = self.clock.now()
        cost, energy, busy, alive = self.plane.cost_energy(now)
        b = self.policies.bundle
        extra = {
            "in_flight": self.plane.in_flight,
            "uptime_s": now - self.started_at,
            "policies": {
                "allocation": b.allocation,
                "routing": b.routing,
                "batching": b.batching,
                "variant": b.variant,
                "admission": b.admission,
            },
            "control_interval_s": self.policies.interval_s,
            "decisions": self.controller.decisions,
            "reactions": self.controller.reactions,
            "replicas_started": self.plane.accounts.started,
            "replicas_failed": self.plane.accounts.failed,
            "replica_start_failures": self.plane.accounts.start_failures,
            "replacements": self.controller.replacements,
            "health_failures": self.controller.health_failures,
            "requeued": sum(lane.requeued for lane in self.plane.lanes.values()),
            "utilization": busy / alive if alive > 0 else 0.0,
            "threads_per_replica": self.threads,
            "energy_model": "catalog linear power model: idle_watts while alive + "
            "(peak_watts - idle_watts) while running a batch, per replica share of the node",
            "unanswered_at_shutdown": self.unanswered_at_shutdown,
        }
        if tenant is not None:
            extra["tenant"] = tenant
        summary = self.telemetry.summary(
            tenant,
            preset=self.preset,
            scenario=self.scenario.name,
            cost_usd=cost,
            energy_j=energy,
            extra=extra,
        )
        return summary.to_dict()

    def gauges(self) -> list[Gauge]:
        """The live gauges exported with :meth:`metrics_text`."""
        out: list[Gauge] = [
            Gauge("ready", "1 when every model has a READY replica.", float(self.ready()))
        ]
        for lane in self.plane.lanes.values():
            m = (("model", lane.name),)
            out.append(
                Gauge("in_flight", "Accepted requests not yet answered.", len(lane.pending), m)
            )
            out.append(Gauge("queue_length", "Requests waiting for a batch.", len(lane.batcher), m))
            counts: dict[tuple[str, str, str], int] = {}
            for r in lane.replicas.values():
                key = (r.spec.variant, r.spec.node_type, r.state.value)
                counts[key] = counts.get(key, 0) + 1
            for (variant, node, state), n in sorted(counts.items()):
                labels = (*m, ("variant", variant), ("node_type", node), ("state", state))
                out.append(
                    Gauge("replicas", "Replicas by variant, node type and state.", n, labels)
                )
        cost, energy, _, _ = self.plane.cost_energy(self.clock.now())
        out.append(Gauge("cost_usd", "Cost of the replicas so far (catalog prices).", cost))
        out.append(Gauge("energy_joules", "Energy so far (catalog linear power model).", energy))
        out.append(
            Gauge("controller_decisions", "Allocation decisions taken.", self.controller.decisions)
        )
        out.append(
            Gauge(
                "controller_reactions",
                "Plans applied between decisions in reaction to a burst.",
                self.controller.reactions,
            )
        )
        return out

    def metrics_text(self) -> str:
        return self.telemetry.prometheus_text(self.gauges())
