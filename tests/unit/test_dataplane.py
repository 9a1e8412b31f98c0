"""The live data plane: batcher rules on a manual clock, then the whole request path over
real replicas on threads (InProcessBackend) running the real digits-cnn ONNX variant.

The system tests use a profile measured on this machine: the one ``coscale profile``
wrote, or a quick one measured once and kept in pytest's cache.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from coscale.accel.onnxrt import export_onnx
from coscale.accel.zoo import get_family
from coscale.backends.inprocess import InProcessBackend
from coscale.catalog import load_catalog
from coscale.catalog.profiles import ProfileFile, default_profile_path, load_profile, save_profile
from coscale.clock import ManualClock, SystemClock
from coscale.config import scenario_from_dict
from coscale.errors import InvalidInputError, ProfileError, UnknownModelError
from coscale.policies.admission import AdmissionState, AdmitAll, WeightedFairQueue
from coscale.policies.base import VariantOption
from coscale.policies.batching import FixedBatching, NoBatching
from coscale.policies.routing import RoundRobin
from coscale.runtime.batcher import Batcher
from coscale.runtime.contract import (
    DeadlineExceeded,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    ReplicaFailure,
)
from coscale.runtime.dataplane import MAX_RETRIES, MIN_RETRY_AFTER_S, DataPlane
from coscale.runtime.system import ServingSystem
from coscale.sim.cluster import ModelSetup
from coscale.telemetry.records import Telemetry
from coscale.types import (
    Batch,
    BatchDecision,
    LatencyTable,
    Outcome,
    ReplicaState,
    ReplicaView,
    Request,
)

VARIANT = "onnx-fp32"


# --------------------------------------------------------------------------- batcher


class FakePool:
    """A ReplicaPool of named replicas that become busy when assigned a batch."""

    def __init__(self, ids: Sequence[str], *, routable: bool = True) -> None:
        self.busy: dict[str, bool] = dict.fromkeys(ids, False)
        self.routable = routable
        self.assigned: list[tuple[tuple[int, ...], str]] = []

    def _view(self, rid: str) -> ReplicaView:
        return ReplicaView(rid, "m", "v", "n", ReplicaState.READY, outstanding=int(self.busy[rid]))

    def free_replica(self, now: float) -> ReplicaView | None:
        free = [r for r, b in self.busy.items() if not b]
        return self._view(free[0]) if free else None

    def ready_views(self, now: float) -> list[ReplicaView]:
        return [self._view(r) for r in self.busy] if self.routable else []

    def assign(self, batch: Batch, replica_id: str, now: float) -> None:
        self.busy[replica_id] = True
        self.assigned.append((tuple(r.id for r in batch.requests), replica_id))


class Recording:
    """Wraps a batching policy and logs every decision (inputs and output)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.log: list[tuple[float, tuple[int, ...], str, BatchDecision]] = []

    def decide(
        self, now: float, queue: Sequence[Request], replica: ReplicaView, state: Any
    ) -> tuple[BatchDecision, Any]:
        decision, state = self.inner.decide(now, queue, replica, state)
        self.log.append((now, tuple(r.id for r in queue), replica.id, decision))
        return decision, state


def req(i: int, t: float = 0.0, *, items: int = 1, tenant: str = "default") -> Request:
    return Request(i, "m", t, t + 1.0, tenant, items)


def test_batcher_dispatches_exactly_what_the_policy_decides() -> None:
    clock = ManualClock()
    pool = FakePool(["a", "b"])
    policy = Recording(FixedBatching(max_batch=4, timeout_s=0.01))
    batcher = Batcher("m", policy, RoundRobin(), pool, clock, max_batch=64)
    for i in range(6):
        batcher.push(req(i))
    batcher.poke()
    # 6 queued ≥ 4: a full batch to the first free replica; 2 left wait for the timeout
    assert pool.assigned == [((0, 1, 2, 3), "a")]
    assert [d for *_, d in policy.log] == [BatchDecision(4), BatchDecision(0, 0.01)]
    assert batcher.wake_at == 0.01 and len(batcher) == 2
    clock.advance(0.005)
    assert len(pool.assigned) == 1  # not yet
    clock.advance(0.005)
    assert pool.assigned[-1] == ((4, 5), "b")
    assert len(batcher) == 0 and batcher.wake_at is None


def test_batcher_caps_batches_at_max_batch_items_and_sends_a_big_request_alone() -> None:
    clock = ManualClock()
    pool = FakePool(["a", "b", "c"])
    batcher = Batcher(
        "m", FixedBatching(max_batch=8, timeout_s=0.0), RoundRobin(), pool, clock, max_batch=3
    )
    batcher.push(req(0, items=5))
    for i in range(1, 4):
        batcher.push(req(i))
    batcher.poke()
    assert pool.assigned == [((0,), "a"), ((1, 2, 3), "b")]


def test_batcher_requeues_in_order_and_retries_when_no_replica_can_take_the_batch() -> None:
    clock = ManualClock()
    pool = FakePool(["a"], routable=False)
    batcher = Batcher("m", NoBatching(), RoundRobin(retry_after_s=0.1), pool, clock, max_batch=8)
    for i in range(3):
        batcher.push(req(i))
    batcher.poke()
    assert pool.assigned == [] and batcher.wake_at == pytest.approx(0.1)
    assert [r.id for r in batcher.queue.peek(3)] == [0, 1, 2]
    pool.routable = True
    clock.advance(0.1)
    assert pool.assigned == [((0,), "a")]


def test_batcher_skips_discarded_requests_and_does_not_count_them() -> None:
    clock = ManualClock()
    pool = FakePool(["a"])
    batcher = Batcher(
        "m", FixedBatching(max_batch=3, timeout_s=1.0), RoundRobin(), pool, clock, max_batch=8
    )
    for i in range(4):
        batcher.push(req(i))
    batcher.discard(0)
    batcher.discard(2)
    assert len(batcher) == 2
    clock.advance(1.0)
    batcher.poke()
    assert pool.assigned == [((1, 3), "a")]
    assert len(batcher) == 0


def test_batcher_orders_tenants_fairly_with_weights() -> None:
    clock = ManualClock()
    pool = FakePool(["a"])
    fair = WeightedFairQueue(weights={"big": 3.0, "small": 1.0})
    batcher = Batcher("m", NoBatching(), RoundRobin(), pool, clock, max_batch=8, weight=fair.weight)
    for i in range(8):
        batcher.push(req(i, tenant="big"))
    for i in range(8, 12):
        batcher.push(req(i, tenant="small"))
    order = [r.tenant for r in batcher.queue.peek(8)]
    assert order.count("big") == 6 and order.count("small") == 2


# --------------------------------------------------------------------------- system


@pytest.fixture(scope="module")
def digits_profile(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> ProfileFile:
    """This machine's digits-cnn profile with the ONNX variant (measured, never made up)."""
    here = default_profile_path("digits-cnn")
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
    folder = cache.mkdir("coscale-digits") if cache else tmp_path_factory.mktemp("digits")
    candidates = [here, folder / here.name]
    for path in candidates:
        try:
            profile = load_profile(path)
        except ProfileError:
            continue
        if any(v.name == VARIANT for v in profile.variants):
            return profile
    from coscale.accel.profiler import profile_family

    profile = profile_family(
        get_family("digits-cnn"), variants=[VARIANT], quick=True, threads=1, batch_sizes=(1, 8, 32)
    )
    save_profile(profile, candidates[-1])
    return profile


def scenario(
    *,
    replicas: int = 2,
    slo_ms: float = 50.0,
    max_batch: int = 32,
    batching: dict[str, Any] | None = None,
    admission: dict[str, Any] | None = None,
    routing: dict[str, Any] | None = None,
    tenants: list[dict[str, Any]] | None = None,
) -> Any:
    policies: dict[str, Any] = {
        "preset": "baseline",
        "allocation": {"name": "static", "params": {"replicas": replicas}},
        "variant": {"name": "fixed", "params": {"variant": VARIANT}},
    }
    for kind, ref in (("batching", batching), ("admission", admission), ("routing", routing)):
        if ref is not None:
            policies[kind] = ref
    data = {
        "name": "unit-live",
        "models": [
            {
                "name": "digits",
                "source": "digits-cnn",
                "slo_ms": slo_ms,
                "accuracy_floor": 0.5,
                "max_batch": max_batch,
                "variants": [VARIANT],
            }
        ],
        "cluster": {"nodes": [{"type": "local-2vcpu", "count": replicas, "max_count": replicas}]},
        "policies": policies,
        "workload": {"generator": {"kind": "poisson", "rate_rps": 10, "duration_s": 5}},
    }
    if tenants:
        data["tenants"] = tenants
    return scenario_from_dict(data)


def make(profile: ProfileFile, replicas: int = 2, **kw: Any) -> ServingSystem:
    return ServingSystem.from_scenario(
        scenario(replicas=replicas, **kw),
        backend=InProcessBackend(max_batch=32),
        profile=profile,
        cores=replicas,
    )


def run(system: ServingSystem, body: Callable[[ServingSystem], Awaitable[None]]) -> None:
    async def main() -> None:
        await system.start()
        try:
            await body(system)
        finally:
            await system.shutdown()
        assert system.unanswered_at_shutdown == 0
        assert system.stats()["lost"] == 0

    asyncio.run(main())


def images(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 17, 64).tolist() for _ in range(n)]


async def until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not cond():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0)


def test_outputs_are_the_models_one_per_item_in_order(digits_profile: ProfileFile) -> None:
    family = get_family("digits-cnn")
    reference = family.build(VARIANT, threads=1)
    data = images(40)
    expected = reference.predict(family.parse_items(data))

    async def body(s: ServingSystem) -> None:
        # 10 concurrent requests of 1..7 items: batched together, split back in order
        sizes = [1, 2, 3, 4, 5, 6, 7, 5, 4, 3]
        starts = np.cumsum([0, *sizes[:-1]])
        outs = await asyncio.gather(
            *(s.infer("digits", data[a : a + n]) for a, n in zip(starts, sizes, strict=True))
        )
        for a, n, out in zip(starts, sizes, outs, strict=True):
            assert len(out) == n
            for k, o in enumerate(out):
                assert o["label"] == int(np.argmax(expected[a + k]))
                assert o["probabilities"] == pytest.approx(expected[a + k].tolist(), abs=1e-5)
        batches = {(r.replica, round(r.arrival + r.queue_s, 9)) for r in s.telemetry.records()}
        assert len(batches) < len(sizes)  # some requests rode together

    run(
        make(
            digits_profile,
            batching={"name": "fixed", "params": {"max_batch": 16, "timeout_s": 0.005}},
        ),
        body,
    )


def test_the_free_replica_offered_to_batching_counts_the_models_ready_replicas(
    digits_profile: ProfileFile,
) -> None:
    async def body(s: ServingSystem) -> None:
        lane = s.plane.lane("digits")
        view = lane.free_replica(s.plane.clock.now())
        assert view is not None and view.model_ready == 3
        # the views policies see elsewhere (routing, snapshots) do not carry it
        assert {v.model_ready for v in lane.ready_views(s.plane.clock.now())} == {0}

    run(make(digits_profile, replicas=3), body)


def test_bad_requests_get_the_right_errors(digits_profile: ProfileFile) -> None:
    system = make(digits_profile, replicas=1, max_batch=4)

    async def body(s: ServingSystem) -> None:
        with pytest.raises(InvalidInputError, match="item 1") as bad:
            await s.infer("digits", [images(1)[0], [1, 2, 3]])
        assert bad.value.http_status == 422
        with pytest.raises(UnknownModelError) as unknown:
            await s.infer("nope", images(1))
        assert unknown.value.http_status == 404
        with pytest.raises(PayloadTooLarge) as big:
            await s.infer("digits", images(5))
        assert big.value.http_status == 413
        with pytest.raises(InvalidInputError, match="timeout"):
            await s.infer("digits", images(1), timeout_s=0)
        stats = s.stats()  # invalid requests are not counted; the one before start is
        assert (stats["requests"], stats["rejected"]) == (1, 1)

    async def before() -> None:
        with pytest.raises(NotReady) as not_ready:
            await system.infer("digits", images(1))
        assert not_ready.value.http_status == 503

    asyncio.run(before())
    run(system, body)


def test_a_request_past_its_timeout_while_queued_gets_504_and_never_runs(
    digits_profile: ProfileFile,
) -> None:
    # the policy waits 2 s for a batch of 8 to fill; a lone request times out first
    system = make(
        digits_profile,
        replicas=1,
        batching={"name": "fixed", "params": {"max_batch": 8, "timeout_s": 2.0}},
    )

    async def body(s: ServingSystem) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(DeadlineExceeded) as late:
            await s.infer("digits", images(1), timeout_s=0.05)
        assert late.value.http_status == 504
        assert loop.time() - t0 < 1.0  # answered at its timeout, not when the batch went
        outs = await asyncio.gather(*(s.infer("digits", [x]) for x in images(8, seed=1)))
        assert all(len(o) == 1 for o in outs)
        records = s.telemetry.records()
        timed_out = [r for r in records if r.outcome is Outcome.TIMED_OUT]
        assert len(timed_out) == 1 and math.isnan(timed_out[0].queue_s)
        assert all(r.batch_size == 8 for r in records if r.outcome is Outcome.COMPLETED)
        stats = s.stats()
        assert stats["failed"] == 1 and stats["timed_out"] == 1 and stats["completed"] == 8

    run(system, body)


def test_a_dispatched_request_completes_even_past_its_timeout(digits_profile: ProfileFile) -> None:
    # no batching: the request is handed to the idle replica on arrival
    system = make(digits_profile, replicas=1)

    async def body(s: ServingSystem) -> None:
        out = await s.infer("digits", images(1), timeout_s=1e-9)
        assert len(out) == 1

    run(system, body)


def test_admission_rejects_with_429_and_a_retry_hint(digits_profile: ProfileFile) -> None:
    # a 1 µs SLO: no batch fits it, so the replica's capacity is unknown until it has run a
    # batch (admitted: no evidence yet); from then on every request is predicted late
    system = make(digits_profile, replicas=1, slo_ms=0.001, admission={"name": "deadline"})

    async def body(s: ServingSystem) -> None:
        assert len(await s.infer("digits", images(1))) == 1
        with pytest.raises(Overloaded) as shed:
            await s.infer("digits", images(1))
        assert shed.value.http_status == 429
        assert shed.value.retry_after_s >= MIN_RETRY_AFTER_S
        assert "misses the deadline" in shed.value.message
        stats = s.stats()
        assert stats["rejected"] == 1 and stats["completed"] == 1

    run(system, body)


def test_admission_learns_from_kept_promises_and_sees_each_tenants_queue(
    digits_profile: ProfileFile,
) -> None:
    """The live half of the admission contract the simulator also keeps: completed
    admitted requests that waited for a busy replica come back as ``(tenant,
    promised_by − decided, finish − decided)`` in the next admission snapshot (then
    folded into the policy's stretch, taken / promised), and a fair queue's per-tenant
    backlog and weights are in it."""
    system = make(
        digits_profile,
        replicas=1,
        slo_ms=2000.0,
        admission={"name": "deadline"},
        tenants=[{"name": "gold", "weight": 3}, {"name": "free", "weight": 1}],
    )
    lane = system.plane.lanes["digits"]

    async def body(s: ServingSystem) -> None:
        await asyncio.gather(*(s.infer("digits", [x], tenant="gold") for x in images(5)))
        # the first found the replica free (no promise: nothing to learn); the other four
        # waited for it, and their reports are waiting to be read
        assert len(lane.promises) == 4
        assert all(t == "gold" and 0 < p < 2.0 and 0 < k < 2.0 for t, p, k in lane.promises)
        stretches = sorted(k / p for _, p, k in lane.promises)
        view = lane.admission_snapshot(s.plane.clock.now()).models[0]
        assert view.tenant_queues == (("free", 0, 1.0), ("gold", 0, 3.0))
        assert view.promises == tuple(lane.promises)
        await s.infer("digits", images(1), tenant="free")
        state = lane.astate
        assert isinstance(state, AdmissionState)
        assert state.of("gold").stretches_ordered == pytest.approx(tuple(stretches))
        # q 0.995 of 4: the largest, at least 1
        assert state.of("gold").stretch == pytest.approx(max(1.0, stretches[-1]))
        assert not lane.promises  # read, and the last request found the replica free

    run(system, body)


def test_a_replica_killed_while_holding_batches_loses_nothing(digits_profile: ProfileFile) -> None:
    """Each request waits up to 30 s (not the default 10 × the 50-ms SLO): what is tested
    is that the killed replica's batches are retried and none is lost, not how fast the
    survivor drains 300 requests while the replacement starts beside it (once, in a full
    CI run on two cores, 172 of them passed the default 0.5 s before they started)."""
    system = make(
        digits_profile,
        replicas=2,
        batching={"name": "fixed", "params": {"max_batch": 8, "timeout_s": 0.002}},
    )

    async def body(s: ServingSystem) -> None:
        lane = s.plane.lanes["digits"]
        first = set(lane.replicas)
        calls = [
            asyncio.ensure_future(s.infer("digits", [x], timeout_s=30.0))
            for x in images(300, seed=2)
        ]
        await until(lambda: any(r.running is not None for r in lane.replicas.values()))
        victim = next(r for r in lane.replicas.values() if r.running is not None)
        assert victim.handle is not None
        victim.handle.kill()
        results = await asyncio.gather(*calls, return_exceptions=True)
        errors = [r for r in results if not isinstance(r, list)]
        assert errors == []
        assert lane.requeued >= 1
        assert victim.state is ReplicaState.STOPPED
        await until(
            lambda: len([r for r in lane.replicas.values() if r.state is ReplicaState.READY]) == 2
        )
        assert set(lane.replicas) - first  # a replacement joined
        assert s.controller.replacements == 1
        stats = s.stats()
        assert stats["completed"] == 300 and stats["failed"] == 0

    run(system, body)


def test_retries_exhausted_fail_exactly_those_requests_with_502(
    digits_profile: ProfileFile,
) -> None:
    system = make(digits_profile, replicas=MAX_RETRIES + 1)

    async def body(s: ServingSystem) -> None:
        lane = s.plane.lanes["digits"]
        for r in lane.replicas.values():  # every replica dies, unnoticed until used
            assert r.handle is not None
            r.handle.kill()
        with pytest.raises(ReplicaFailure) as failed:
            await s.infer("digits", images(1))
        assert failed.value.http_status == 502
        await until(s.ready)  # the replacements
        outs = await asyncio.gather(*(s.infer("digits", [x]) for x in images(10, seed=3)))
        assert all(len(o) == 1 for o in outs)
        stats = s.stats()
        assert (stats["failed"], stats["completed"]) == (1, 10)
        assert stats["replicas_failed"] == MAX_RETRIES + 1

    run(system, body)


def test_shutdown_drains_every_accepted_request(digits_profile: ProfileFile) -> None:
    system = make(
        digits_profile,
        replicas=2,
        batching={"name": "fixed", "params": {"max_batch": 4, "timeout_s": 0.01}},
    )

    async def main() -> None:
        await system.start()
        calls = [asyncio.ensure_future(system.infer("digits", [x])) for x in images(200, seed=4)]
        await asyncio.sleep(0)
        await system.shutdown(drain=True)
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert [r for r in results if not isinstance(r, list)] == []
        assert system.unanswered_at_shutdown == 0 and system.plane.in_flight == 0
        assert system.stats()["completed"] == 200
        with pytest.raises(NotReady):
            await system.infer("digits", images(1))
        assert not system.ready()

    asyncio.run(main())


def test_several_tenants_share_the_queue_fairly_and_are_reported_apart(
    digits_profile: ProfileFile,
) -> None:
    system = make(
        digits_profile,
        replicas=1,
        tenants=[{"name": "gold", "weight": 3}, {"name": "free", "weight": 1}],
    )
    assert system.plane.lanes["digits"].batcher.queue.fair

    async def body(s: ServingSystem) -> None:
        await asyncio.gather(
            *(s.infer("digits", [x], tenant="gold") for x in images(6)),
            *(s.infer("digits", [x], tenant="free") for x in images(2)),
        )
        assert s.stats("gold")["completed"] == 6
        assert s.stats("free")["completed"] == 2
        assert s.stats()["completed"] == 8
        text = s.metrics_text()
        assert 'coscale_requests_total{model="digits",tenant="gold",outcome="completed"} 6' in text
        assert 'coscale_replicas{model="digits",variant="onnx-fp32"' in text

    run(system, body)


# --------------------------------------------------------------------------- file models


def one_option_setup(option: VariantOption, batching: Any) -> ModelSetup:
    """A model (named as ``option``) served by its one option: round robin, every
    request admitted, batches of at most 8, SLO 1 s."""
    return ModelSetup(
        name=option.model,
        slo_s=1.0,
        options=(option,),
        routing=RoundRobin(),
        batching=batching,
        admission=AdmitAll(),
        max_batch=8,
        batch_limit=8,
    )


class TwoInputs(torch.nn.Module):
    """Float features (batch, 3) and integer ids (batch, n) of symbolic length n."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.proj = torch.nn.Linear(3, 5)
        self.emb = torch.nn.Embedding(10, 5)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.proj(x) + self.emb(ids).mean(dim=1)
        return out


def test_requests_of_different_shapes_share_a_dispatch_but_never_an_array(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file model with a symbolic axis: requests whose ``ids`` differ in length ride in
    one dispatch as separate calls, each answered with its own outputs."""
    monkeypatch.setenv("COSCALE_HOME", str(tmp_path / "home"))
    path = export_onnx(
        TwoInputs(),
        (torch.randn(2, 3), torch.randint(0, 10, (2, 4))),
        tmp_path / "two.onnx",
        input_names=["x", "ids"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "ids": {0: "batch", 1: "n"}, "y": {0: "batch"}},
    )
    family = get_family(str(path))
    variant = family.variant_names()[0]
    built = family.build(variant, threads=1)
    probe = family.profiling_batch(1, None, 0)
    started = time.perf_counter()
    built.predict(probe)
    measured = LatencyTable((1,), (0,), ((time.perf_counter() - started,),))
    option = VariantOption("two", variant, load_catalog().local(), measured, 1.0)
    setup = one_option_setup(option, FixedBatching(max_batch=8, timeout_s=0.01))
    plane = DataPlane([(setup, family, str(path))], InProcessBackend(), SystemClock(), Telemetry())
    rng = np.random.default_rng(0)
    requests = [
        [{"x": rng.normal(size=3).tolist(), "ids": rng.integers(0, 10, n).tolist()}]
        for n in (4, 7, 4, 7, 2)
    ]

    async def main() -> None:
        plane.bind()
        replica = plane.start_replica("two", variant, option.node.name)
        assert replica.task is not None and await replica.task
        outs = await asyncio.gather(*(plane.submit("two", items) for items in requests))
        for items, out in zip(requests, outs, strict=True):
            expected = built.predict(family.parse_items(items))
            assert out[0]["output"] == pytest.approx(expected[0].tolist(), abs=1e-5)
        starts = {round(r.arrival + r.queue_s, 9) for r in plane.telemetry.records()}
        assert len(starts) == 1  # one dispatch …
        assert getattr(replica.handle, "batches", None) == 3  # … three calls
        assert await plane.close() == 0

    asyncio.run(main())


def test_a_text_requests_record_carries_its_token_length(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record of a MiniLM request keeps the tokens the worker ran (``seq_len``, what
    the bench's fidelity replay reads its service times against), clamped to the
    table's longest length."""
    monkeypatch.setenv("COSCALE_HOME", str(tmp_path / "home"))
    family = get_family("minilm")
    table = LatencyTable((1,), (16, 64), ((0.01,), (0.03,)))
    option = VariantOption("minilm", "fp32-eager", load_catalog().local(), table, 1.0)
    setup = one_option_setup(option, FixedBatching(max_batch=8, timeout_s=0.01))
    plane = DataPlane([(setup, family, "minilm")], InProcessBackend(), SystemClock(), Telemetry())
    short = "a short sentence"
    long = " ".join(["word"] * 200)

    async def main() -> None:
        plane.bind()
        replica = plane.start_replica("minilm", "fp32-eager", option.node.name)
        assert replica.task is not None and await replica.task
        await plane.submit("minilm", [short])
        await plane.submit("minilm", [long])
        assert await plane.close() == 0

    asyncio.run(main())
    records = plane.telemetry.records()
    assert [r.outcome for r in records] == [Outcome.COMPLETED, Outcome.COMPLETED]
    assert records[0].seq_len == family.tokenizer.count(short) < 16
    assert records[1].seq_len == 64  # 202 tokens, clamped to the table's longest


class LogOf(torch.nn.Module):
    """The natural logarithm of each feature: −inf at 0, NaN below."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


def test_non_finite_outputs_fail_a_json_answer_and_pass_a_raw_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JSON cannot carry NaN or infinity: a JSON request whose outputs are not all finite
    is answered ReplicaFailure naming the cause (never a silently nulled number), while
    the same outputs reach a raw (.npy) request as they are, and finite ones render."""
    monkeypatch.setenv("COSCALE_HOME", str(tmp_path / "home"))
    path = export_onnx(
        LogOf(),
        (torch.ones(2, 3),),
        tmp_path / "log.onnx",
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
    )
    family = get_family(str(path))
    variant = family.variant_names()[0]
    table = LatencyTable((1,), (0,), ((0.001,),))
    option = VariantOption("log", variant, load_catalog().local(), table, 1.0)
    setup = one_option_setup(option, NoBatching())
    plane = DataPlane([(setup, family, str(path))], InProcessBackend(), SystemClock(), Telemetry())

    async def main() -> None:
        plane.bind()
        replica = plane.start_replica("log", variant, option.node.name)
        assert replica.task is not None and await replica.task
        finite = await plane.submit("log", [[1.0, 2.0, 4.0]])
        assert finite[0]["output"] == pytest.approx(np.log([1.0, 2.0, 4.0]).tolist())
        with pytest.raises(ReplicaFailure, match="non-finite"):
            await plane.submit("log", [[0.0, 1.0, 2.0]])
        raw = await plane.submit("log", np.array([[0.0, 1.0, 2.0]], np.float32), raw=True)
        assert np.isneginf(raw[0][0]) and raw[0][1] == 0.0
        assert await plane.close() == 0

    asyncio.run(main())
