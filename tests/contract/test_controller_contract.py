"""Contract: the live runtime and the simulator decide the same from the same inputs.

The simulator runs each preset exactly as ``coscale simulate`` does
(:func:`coscale.sim.run.run_preset`), with its policy objects recorded as they decide
(subclasses that log each call and change nothing else, so the simulator's own fast
paths stay on). The live system is built from the same scenario and profile by
:meth:`ServingSystem.from_scenario` and is fed the recorded inputs:

* every snapshot the simulator's controller built, in order, through the live
  controller's decision step → the same plans (and the allocation state carried along);
* every batching and routing call (queue, replica views, state) through the live
  lanes' policy objects → the same decisions and next states.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

import coscale.sim.run as sim_run
from coscale.accel.zoo import get_family
from coscale.backends.inprocess import InProcessBackend
from coscale.catalog import load_catalog
from coscale.catalog.profiles import ProfileFile, default_profile_path, load_profile, save_profile
from coscale.config import scenario_from_dict
from coscale.errors import ProfileError
from coscale.runtime.system import ServingSystem, live_scenario
from coscale.sim.cluster import ClusterSimulator
from coscale.sim.profiles import measured_variants, options_for
from coscale.types import Plan, Snapshot

VARIANTS = ("fp32-eager", "onnx-fp32")
#: Cores of the pretend machine, its pool's ``max_count``: room for the predictive presets'
#: spare replica above what the wave needs, so that their plans still change.
CORES = 6
INTERVAL_S = 0.2
DURATION_S = 3.0
#: Mean arrival rate as a multiple of what one fp32 replica serves without batching
#: (1 / batch-1 latency); the diurnal wave swings ±90 % around it, so unbatched presets
#: overload and scale, batching ones see their queues and wait times change.
LOAD = 1.5
#: Highest mean rate (keeps each simulation to a few tens of thousands of requests).
MAX_RATE_RPS = 4000.0


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


def make_scenario(profile: ProfileFile) -> Any:
    """A diurnal wave around LOAD × one unbatched fp32 replica's rate, so plans change."""
    model = {
        "name": "digits",
        "source": "digits-cnn",
        "slo_ms": 50,
        "accuracy_floor": 0.5,
        "max_batch": 32,
        "variants": list(VARIANTS),
    }
    base = {
        "name": "contract",
        "seed": 3,
        "models": [model],
        "cluster": {"nodes": [{"type": "local-2vcpu", "count": 1, "max_count": CORES}]},
        "workload": {"generator": {"kind": "poisson", "rate_rps": 1, "duration_s": DURATION_S}},
    }
    scenario = scenario_from_dict(base)
    catalog = load_catalog()
    options = options_for(scenario.models[0], profile, catalog, scenario.cluster.nodes)
    fp32 = next(o for o in options if o.variant == "fp32-eager")
    rate = min(LOAD / fp32.latency.latency(1), MAX_RATE_RPS)
    base["workload"] = {
        "generator": {
            "kind": "diurnal",
            "rate_rps": rate,
            "amplitude": 0.9,
            "period_s": DURATION_S,
            "duration_s": DURATION_S,
        }
    }
    return scenario_from_dict(base)


# --------------------------------------------------------------------------- recording


#: Queue entries a recorded batching call keeps (policies read at most a batch + 1).
PREFIX = 130


class FrozenPrefix(Sequence[Any]):
    """A recorded queue: its length and first ``PREFIX`` entries. Reading further fails
    loudly (the replay would not be faithful)."""

    def __init__(self, items: Sequence[Any]) -> None:
        self._len = len(items)
        self._items = list(items[:PREFIX])

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._len)
            assert max(start, stop) <= len(self._items) or start >= stop, "read past prefix"
            return self._items[start:stop:step]
        i = index + self._len if index < 0 else index
        if not 0 <= i < self._len:
            raise IndexError(index)
        assert i < len(self._items), "the policy read past the recorded prefix"
        return self._items[i]

    def __iter__(self) -> Iterator[Any]:
        for i in range(self._len):
            yield self[i]


def _freeze(value: Any) -> Any:
    """Lazy sequence views of the simulator (queue, candidates) → frozen copies."""
    if isinstance(value, str | dict) or dataclasses.is_dataclass(value):
        return value
    if hasattr(value, "__getitem__") and hasattr(value, "__len__"):
        return FrozenPrefix(value)
    return value


def recording(policy: Any, method: str, log: list[tuple[Any, Any]]) -> Any:
    """A copy of ``policy`` whose ``method`` logs (inputs, output); same class behaviour."""
    cls = type(policy)

    def logged(self: Any, *args: Any) -> Any:
        out = getattr(super(sub, self), method)(*args)
        log.append((tuple(_freeze(a) for a in args), out))
        return out

    sub = type(f"Recording{cls.__name__}", (cls,), {method: logged})
    clone = copy.copy(policy)
    object.__setattr__(clone, "__class__", sub)
    return clone


class RecordingAllocation:
    def __init__(self, inner: Any, log: list[tuple[Snapshot, Plan]]) -> None:
        self.inner, self.log, self.name = inner, log, inner.name

    def decide(self, snapshot: Snapshot, state: Any) -> tuple[Plan, Any]:
        plan, state = self.inner.decide(snapshot, state)
        self.log.append((snapshot, plan))
        return plan, state


@dataclasses.dataclass
class Logs:
    plans: list[tuple[Snapshot, Plan]] = dataclasses.field(default_factory=list)
    batching: list[tuple[Any, Any]] = dataclasses.field(default_factory=list)
    routing: list[tuple[Any, Any]] = dataclasses.field(default_factory=list)


def simulate(
    monkeypatch: pytest.MonkeyPatch, scenario: Any, profile: ProfileFile, preset: str
) -> Logs:
    logs = Logs()

    class RecordingSimulator(ClusterSimulator):
        def __init__(self, models: Any, allocation: Any, *args: Any, **kw: Any) -> None:
            models = [
                dataclasses.replace(
                    s,
                    batching=recording(s.batching, "decide", logs.batching),
                    routing=recording(s.routing, "route", logs.routing),
                )
                for s in models
            ]
            super().__init__(models, RecordingAllocation(allocation, logs.plans), *args, **kw)

    monkeypatch.setattr(sim_run, "ClusterSimulator", RecordingSimulator)
    catalog = load_catalog()
    live = live_scenario(scenario, catalog, CORES)  # the same pools as the live system
    measured = {m.name: measured_variants(profile) for m in live.models}
    # no queue timeout: the replicas take longer to start than the run lasts, and the
    # requests must wait for them so that batching and routing are called
    options = sim_run.SimOptions(interval_s=INTERVAL_S, timeout_factor=None)
    prepared = sim_run.prepare(live, options, measured=measured, catalog=catalog)
    result = sim_run.run_preset(prepared, preset)
    assert result.summary.lost == 0
    return logs


@pytest.mark.parametrize(
    "preset", ["baseline", "optimized-a", "optimized-b", "hpa", "kpa", "rayserve", "oracle"]
)
def test_live_and_simulated_executors_decide_the_same(
    preset: str, digits_profile: ProfileFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = make_scenario(digits_profile)
    logs = simulate(monkeypatch, scenario, digits_profile, preset)
    system = ServingSystem.from_scenario(
        scenario,
        preset=preset,
        backend=InProcessBackend(),
        profile=digits_profile,
        cores=CORES,
        interval_s=INTERVAL_S,
    )
    assert system.policies.interval_s == INTERVAL_S

    # allocation: the simulator's snapshots through the live decision step
    assert len(logs.plans) >= DURATION_S / INTERVAL_S - 1
    assert any(s.models[0].arrival_rate > 0 for s, _ in logs.plans)
    live_plans = [system.controller.decide(snapshot) for snapshot, _ in logs.plans]
    assert live_plans == [plan for _, plan in logs.plans]
    assert system.controller.decisions == len(logs.plans)

    # batching and routing: the same calls through the live lanes' policy objects
    lane = system.plane.lanes["digits"]
    assert lane.batcher.batching is lane.setup.batching
    assert lane.batcher.routing is lane.setup.routing
    assert logs.batching and logs.routing
    for args, out in logs.batching:
        assert lane.setup.batching.decide(*args) == out
    for args, out in logs.routing:
        assert lane.setup.routing.route(*args) == out


def test_the_plans_of_the_wave_are_not_all_the_same(
    digits_profile: ProfileFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contract above is only as strong as its inputs: the wave makes the predictive
    policy (stateful: its forecaster is carried from call to call) change its plans."""
    logs = simulate(monkeypatch, make_scenario(digits_profile), digits_profile, "optimized-a")
    counts = {plan.count() for _, plan in logs.plans}
    assert len(counts) > 1, counts
