"""The live controller: the pure snapshot and reconcile rules clause by clause, then the
loop over real replicas on threads (InProcessBackend, digits-cnn) on a manual clock."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from coscale.accel.zoo import get_family
from coscale.backends.inprocess import InProcessBackend
from coscale.catalog.profiles import ProfileFile, default_profile_path, load_profile, save_profile
from coscale.clock import ManualClock
from coscale.config import scenario_from_dict
from coscale.errors import CoscaleError, ProfileError
from coscale.runtime.contract import NotReady
from coscale.runtime.controller import build_snapshot, reconcile, release_covers
from coscale.runtime.system import ServingSystem
from coscale.telemetry.records import ModelWindow, ReplicaSample, TelemetryWindow
from coscale.types import Plan, ReplicaState, ReplicaTarget, ReplicaView

READY, STARTING, DRAINING = ReplicaState.READY, ReplicaState.STARTING, ReplicaState.DRAINING
VARIANTS = ("fp32-eager", "onnx-fp32")


# --------------------------------------------------------------------------- snapshot


def sample(rid: str, state: ReplicaState = READY, **kw: Any) -> ReplicaSample:
    base: dict[str, Any] = {
        "id": rid,
        "model": "m",
        "variant": "v",
        "node_type": "n",
        "state": state,
        "spot": False,
        "outstanding": 0,
        "queued_work_s": 0.0,
        "busy_s": 0.0,
        "latency_s": 0.0,
        "rate": 0.0,
        "capacity_rps": 100.0,
        "decided_at": 0.0,
        "ready_at": 0.0 if state is not STARTING else math.inf,
    }
    base.update(kw)
    return ReplicaSample(**base)


def test_snapshot_rates_percentiles_and_utilization() -> None:
    window = TelemetryWindow(
        10.0, 20.0, (ModelWindow("m", 50, 3, 0.05, 0.9, tuple(float(i) for i in range(1, 101))),)
    )
    snap = build_snapshot(
        20.0,
        window,
        [
            sample("a", busy_s=5.0, ready_at=0.0, outstanding=2, queued_work_s=0.3, rate=9.0),
            sample("b", busy_s=5.0, ready_at=15.0),  # READY for half the interval
            sample("c", busy_s=30.0, ready_at=0.0),  # clamped to 1
            sample("d", STARTING, decided_at=18.0),
        ],
    )
    (m,) = snap.models
    assert m.arrival_rate == 5.0 and m.queue_length == 3 and m.slo_s == 0.05
    assert m.p99_latency_s == pytest.approx(np.percentile(np.arange(1, 101), 99))
    util = {v.id: v.utilization for v in snap.replicas}
    assert util == {"a": 0.5, "b": 1.0, "c": 1.0, "d": 0.0}
    a = snap.replicas[0]
    assert (a.outstanding, a.queued_work_s, a.rate, a.capacity_rps) == (2, 0.3, 9.0, 100.0)
    started = {v.id: v.started_at for v in snap.replicas}
    assert started["b"] == 15.0 and started["d"] == 18.0


def test_snapshot_of_an_empty_interval_has_zero_rates() -> None:
    window = TelemetryWindow(5.0, 5.0, (ModelWindow("m", 3, 0, 0.05),))
    snap = build_snapshot(5.0, window, [sample("a", busy_s=1.0, ready_at=5.0)])
    assert snap.models[0].arrival_rate == 0.0 and snap.models[0].p99_latency_s == 0.0
    assert snap.replicas[0].utilization == 0.0


# --------------------------------------------------------------------------- reconcile


def view(rid: str, state: ReplicaState = READY, variant: str = "v", **kw: Any) -> ReplicaView:
    return ReplicaView(rid, kw.pop("model", "m"), variant, kw.pop("node", "n"), state, **kw)


def plan(*targets: tuple[str, int]) -> Plan:
    return Plan(0.0, tuple(ReplicaTarget("m", v, "n", c) for v, c in targets))


def test_reconcile_keeps_the_busiest_ready_then_starting_and_starts_the_rest() -> None:
    reps = [
        view("r1", outstanding=0),
        view("r2", outstanding=3),
        view("r3", STARTING, started_at=2.0),
        view("r4", STARTING, started_at=1.0),
    ]
    rec = reconcile(plan(("v", 2)), reps, {"n": 10}, ["m"])
    # keep r2 (busiest READY) and r1; both STARTING ones are surplus and stop
    assert set(rec.stop_starting) == {"r3", "r4"} and rec.drain == () and rec.starts == ()
    rec = reconcile(plan(("v", 4)), reps, {"n": 10}, ["m"])
    assert rec.stop_starting == () and rec.starts == ()
    rec = reconcile(plan(("v", 3)), reps, {"n": 10}, ["m"])
    assert rec.stop_starting == ("r3",)  # the earliest-decided STARTING one is kept
    rec = reconcile(plan(("v", 6)), reps, {"n": 10}, ["m"])
    assert rec.starts == (ReplicaTarget("m", "v", "n", 2),)
    assert dict(rec.planned) == {"m": 6}


def test_reconcile_drains_surplus_ready_replicas_idlest_first() -> None:
    reps = [view("r1", outstanding=0), view("r2", outstanding=3), view("r3", outstanding=1)]
    rec = reconcile(plan(("v", 1)), reps, {"n": 10}, ["m"])
    assert set(rec.drain) == {"r1", "r3"} and rec.covers == (("m", ()),)


def test_a_variant_switch_starts_the_new_and_keeps_the_old_as_cover() -> None:
    reps = [view("old1", outstanding=2), view("old2")]
    rec = reconcile(plan(("new", 2)), reps, {"n": 10}, ["m"])
    assert rec.starts == (ReplicaTarget("m", "new", "n", 2),)
    assert rec.drain == () and rec.covers == (("m", ("old1", "old2")),)
    # once one new replica is READY, one cover is released (the idlest)
    ready = [view("old1", outstanding=2), view("old2"), view("new1", variant="new")]
    assert release_covers(2, ready, ["old1", "old2"]) == (("old1",), ("old2",))
    ready.append(view("new2", variant="new"))
    assert release_covers(2, ready, ["old1"]) == ((), ("old1",))


def test_scaling_down_needs_no_cover() -> None:
    reps = [view("a"), view("b", variant="w")]
    rec = reconcile(plan(("v", 1)), reps, {"n": 10}, ["m"])
    # READY a covers the plan; w's replica is surplus and no replacement is starting
    assert rec.drain == ("b",) and rec.covers == (("m", ()),)


def test_pool_limits_defer_starts_and_count_draining_replicas() -> None:
    reps = [view("a"), view("d", DRAINING, outstanding=1)]
    rec = reconcile(plan(("v", 3)), reps, {"n": 3}, ["m"])
    assert rec.starts == (ReplicaTarget("m", "v", "n", 1),) and rec.deferred == 1


def test_idle_drained_replicas_free_their_slot_at_once_busy_ones_do_not() -> None:
    reps = [view("a", variant="w"), view("b", variant="w", outstanding=4)]
    # switch both to v within a limit of 2: covers a, b; room is made by draining covers
    rec = reconcile(plan(("v", 2)), reps, {"n": 2}, ["m"])
    assert set(rec.drain) == {"a", "b"}
    assert rec.starts == (ReplicaTarget("m", "v", "n", 1),) and rec.deferred == 1


# --------------------------------------------------------------------------- live loop


@pytest.fixture(scope="module")
def digits_profile(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> ProfileFile:
    """This machine's digits-cnn profile with both variants (measured, never made up)."""
    here = default_profile_path("digits-cnn")
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
    folder = cache.mkdir("coscale-digits") if cache else tmp_path_factory.mktemp("digits")
    candidates = [here, folder / here.name]
    for path in candidates:
        try:
            profile = load_profile(path)
        except ProfileError:
            continue
        if {v.name for v in profile.variants} >= set(VARIANTS):
            return profile
    from coscale.accel.profiler import profile_family

    profile = profile_family(
        get_family("digits-cnn"),
        variants=["onnx-fp32"],
        quick=True,
        threads=1,
        batch_sizes=(1, 8, 32),
    )
    save_profile(profile, candidates[-1])
    return profile


def make(
    profile: ProfileFile,
    clock: ManualClock,
    *,
    start: int,
    limit: int,
    allocation: dict[str, Any],
    admission: str = "none",
) -> ServingSystem:
    data = {
        "name": "unit-controller",
        "models": [
            {
                "name": "digits",
                "source": "digits-cnn",
                "slo_ms": 50,
                "accuracy_floor": 0.5,
                "max_batch": 16,
                "variants": list(VARIANTS),
            }
        ],
        "cluster": {"nodes": [{"type": "local-2vcpu", "count": start, "max_count": limit}]},
        "policies": {
            "preset": "baseline",
            "allocation": allocation,
            "variant": {"name": "fixed", "params": {"variant": "onnx-fp32"}},
            "admission": {"name": admission},
        },
        "workload": {"generator": {"kind": "poisson", "rate_rps": 10, "duration_s": 5}},
    }
    return ServingSystem.from_scenario(
        scenario_from_dict(data),
        backend=InProcessBackend(max_batch=16),
        clock=clock,
        profile=profile,
        cores=limit,
        interval_s=10.0,
    )


def images(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 17, 64).tolist() for _ in range(n)]


async def until(cond: Callable[[], bool], timeout_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not cond():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.001)


def states(s: ServingSystem) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for r in s.plane.live_replicas():
        out[(r.spec.variant, r.state.value)] = out.get((r.spec.variant, r.state.value), 0) + 1
    return out


def test_the_loop_decides_every_interval_on_the_clock_and_drains_surplus(
    digits_profile: ProfileFile,
) -> None:
    clock = ManualClock(1000.0)
    s = make(
        digits_profile,
        clock,
        start=2,
        limit=2,
        allocation={"name": "static", "params": {"replicas": 1}},
    )

    async def main() -> None:
        await s.start()
        assert states(s) == {("onnx-fp32", "ready"): 2}
        assert s.controller.decisions == 0
        results = await asyncio.gather(*(s.infer("digits", [x]) for x in images(50)))
        assert all(len(r) == 1 for r in results)
        clock.advance(9.9)
        await asyncio.sleep(0.01)
        assert s.controller.decisions == 0
        clock.advance(0.1)  # one interval after the start
        await until(lambda: s.controller.decisions == 1)
        snap_rate = s.controller.plans[-1]
        assert snap_rate.reason.startswith("static")
        await until(lambda: states(s) == {("onnx-fp32", "ready"): 1})
        assert s.controller.plans[-1].count() == 1
        clock.advance(10.0)
        await until(lambda: s.controller.decisions == 2)
        await s.shutdown()
        assert s.stats()["completed"] == 50 and s.stats()["lost"] == 0

    asyncio.run(main())


def test_a_switch_under_load_starts_the_new_replica_then_drains_the_old_losing_nothing(
    digits_profile: ProfileFile,
) -> None:
    # on one node type the variant policy leaves one option per model, so the live switch
    # is of the other part of the key: on-demand → spot (the same make-before-break path)
    clock = ManualClock()
    s = make(
        digits_profile,
        clock,
        start=1,
        limit=2,
        allocation={"name": "static", "params": {"replicas": 1}},
    )

    def kinds() -> dict[tuple[bool, str], int]:
        out: dict[tuple[bool, str], int] = {}
        for r in s.plane.live_replicas():
            out[(r.spec.spot, r.state.value)] = out.get((r.spec.spot, r.state.value), 0) + 1
        return out

    async def main() -> None:
        await s.start()
        calls = [asyncio.ensure_future(s.infer("digits", [x])) for x in images(200, seed=1)]
        await asyncio.sleep(0)
        target = ReplicaTarget("digits", "onnx-fp32", "local-2vcpu", 1, spot=True)
        rec = s.controller.apply(Plan(clock.now(), (target,)))
        assert rec.covers == (("digits", ("r00000",)),) and rec.drain == ()
        assert kinds() == {(False, "ready"): 1, (True, "starting"): 1}
        await until(lambda: kinds() == {(True, "ready"): 1})
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert [r for r in results if not isinstance(r, list)] == []
        await s.shutdown()
        assert s.stats()["completed"] == 200

    asyncio.run(main())


def test_a_plan_naming_an_unknown_option_is_refused(digits_profile: ProfileFile) -> None:
    s = make(
        digits_profile,
        ManualClock(),
        start=1,
        limit=1,
        allocation={"name": "static", "params": {"replicas": 1}},
    )
    with pytest.raises(CoscaleError, match="not one of the model's serving options"):
        s.controller.apply(Plan(0.0, (ReplicaTarget("digits", "int8-dynamic", "local-2vcpu", 1),)))


def test_health_checks_replace_a_dead_idle_replica(digits_profile: ProfileFile) -> None:
    clock = ManualClock()
    s = make(
        digits_profile,
        clock,
        start=2,
        limit=2,
        allocation={"name": "static", "params": {"replicas": 2}},
    )

    async def main() -> None:
        await s.start()
        victim = s.plane.live_replicas()[0]
        assert victim.handle is not None
        victim.handle.kill()  # idle: nothing notices but the health check
        assert await s.controller.check_health() == 1
        assert victim.state is ReplicaState.STOPPED
        await until(lambda: states(s) == {("onnx-fp32", "ready"): 2})
        assert await s.controller.check_health() == 0
        assert s.stats()["replacements"] == 1 and s.stats()["health_failures"] == 1
        await s.shutdown()

    asyncio.run(main())


def test_the_health_loop_runs_on_the_clock(digits_profile: ProfileFile) -> None:
    clock = ManualClock()
    s = make(
        digits_profile,
        clock,
        start=1,
        limit=1,
        allocation={"name": "static", "params": {"replicas": 1}},
    )

    async def main() -> None:
        await s.start()
        (victim,) = s.plane.live_replicas()
        assert victim.handle is not None
        victim.handle.kill()
        await asyncio.sleep(0.01)
        assert victim.state is ReplicaState.READY  # not yet checked
        clock.advance(s.controller.health_interval_s)
        await until(lambda: victim.state is ReplicaState.STOPPED)
        await until(s.ready)
        await s.shutdown()

    asyncio.run(main())


def test_a_model_scaled_to_zero_refuses_with_503_but_its_demand_is_seen(
    digits_profile: ProfileFile,
) -> None:
    clock = ManualClock()
    s = make(
        digits_profile,
        clock,
        start=1,
        limit=1,
        allocation={"name": "static", "params": {"replicas": 1}},
    )

    async def main() -> None:
        await s.start()
        s.controller.apply(Plan(clock.now(), ()))  # scale to zero
        await until(lambda: not s.plane.live_replicas())
        for _ in range(3):
            with pytest.raises(NotReady):
                await s.infer("digits", images(1))
        clock.advance(1.0)
        snapshot = s.controller.snapshot(clock.now())
        assert snapshot.models[0].arrival_rate == pytest.approx(3.0)
        assert s.stats()["rejected"] == 3
        await s.shutdown()

    asyncio.run(main())


def test_bursts_between_decisions_reach_the_policy_react_on_the_clock(
    digits_profile: ProfileFile,
) -> None:
    """The reaction loop: every burst window the policy's ``react`` sees the window's
    arrivals (then a fresh window) and its plan is applied; decisions are not taken."""
    from coscale.policies.allocation.predictive import PredictiveModel, PredictiveState

    clock = ManualClock(1000.0)
    allocation = {"name": "predictive", "params": {"burst_ratio": 1.5, "burst_window_s": 2.0}}
    s = make(digits_profile, clock, start=1, limit=2, allocation=allocation)
    assert s.controller.react_interval_s == 2.0

    async def main() -> None:
        await s.start()
        # the policy believes 1 req/s is provisioned (its real state type, made small so
        # that a few requests are a burst; digits replicas carry thousands per second)
        s.controller.state = PredictiveState((("digits", PredictiveModel(capacity_rps=1.0)),))
        await asyncio.sleep(0.01)  # the reaction loop has opened its first window
        await asyncio.gather(*(s.infer("digits", [x]) for x in images(20)))
        clock.advance(1.9)
        await asyncio.sleep(0.01)
        assert s.controller.reactions == 0
        clock.advance(0.1)  # 20 arrivals in 2 s: 10 req/s > 1.5 × 1
        await until(lambda: s.controller.reactions == 1)
        plan = s.controller.plans[-1]
        assert plan.reason.startswith("predictive: burst") and plan.count("digits") >= 1
        state = s.controller.state.get("digits")
        assert state.burst_rps == pytest.approx(10.0, rel=0.05) and state.capacity_rps == 1.0
        clock.advance(2.0)  # a quiet window: 0 req/s, no reaction
        await asyncio.sleep(0.05)
        assert s.controller.reactions == 1 and s.controller.decisions == 0
        await s.shutdown()

    asyncio.run(main())


def test_admission_pressure_triggers_a_reaction_at_once(digits_profile: ProfileFile) -> None:
    """A flood admitted late (predicted finish beyond ¼ of the budget) reaches the
    policy's ``react`` without waiting for the burst window: the clock never reaches the
    2-s window's end, the rate over it (0 s long) is 0, yet one replica more is planned."""
    clock = ManualClock(1000.0)
    allocation = {"name": "predictive", "params": {"burst_ratio": 1.5, "burst_window_s": 2.0}}
    s = make(digits_profile, clock, start=1, limit=2, allocation=allocation, admission="deadline")
    assert s.controller.pressure_gap_s == 0.25
    assert s.plane.on_pressure == s.controller.pressure

    async def main() -> None:
        await s.start()
        await asyncio.sleep(0.01)  # the reaction loop has opened its first window
        flood = [asyncio.ensure_future(s.infer("digits", [x])) for x in images(800)]
        await asyncio.sleep(0.01)  # admitted; the reaction is due now
        assert s.controller.reactions == 0 and s.controller._pressure_timer is not None
        clock.advance(0.0)  # the manual clock fires timers due now only when advanced
        await until(lambda: s.controller.reactions == 1)
        plan = s.controller.plans[-1]
        assert "pressure" in plan.reason and plan.count("digits") == 2
        assert s.controller.decisions == 0
        # the second replica is STARTING or READY; every request is answered
        await asyncio.gather(*flood, return_exceptions=True)
        assert all(f.done() for f in flood)
        await s.shutdown()

    asyncio.run(main())


def test_pressure_within_the_gap_is_answered_by_one_reaction(
    digits_profile: ProfileFile,
) -> None:
    """Pressure reported again before ``pressure_gap_s`` has passed since the last
    reaction schedules one reaction at the gap's end, not one per report."""
    clock = ManualClock(1000.0)
    allocation = {"name": "predictive", "params": {"burst_ratio": 1.5, "burst_window_s": 2.0}}
    s = make(digits_profile, clock, start=1, limit=2, allocation=allocation)

    async def main() -> None:
        await s.start()
        await asyncio.sleep(0.01)
        s.controller.pressure("digits")
        clock.advance(0.0)
        await until(lambda: s.controller._last_react == 1000.0)  # at once
        for _ in range(5):
            s.controller.pressure("digits")  # within the gap: one reaction, at 1000.25
        clock.advance(0.2)
        await asyncio.sleep(0.02)
        assert s.controller._last_react == 1000.0
        clock.advance(0.05)
        await until(lambda: s.controller._last_react == pytest.approx(1000.25))
        await asyncio.sleep(0.02)
        assert s.controller._pressure_timer is None
        await s.shutdown()

    asyncio.run(main())
