"""The Ray backend end to end: a local Ray (2 CPUs) started here, digits-cnn served by Ray
actors — outputs identical to the local backend's worker processes, and the live system
on Ray losing nothing when an actor is killed (``ray.kill``) under load."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from coscale.accel.zoo import get_family
from coscale.backends.base import ReplicaDied, ReplicaSpec, ReplicaStartError
from coscale.backends.local import LocalBackend
from coscale.catalog import load_catalog
from coscale.catalog.profiles import ProfileFile, default_profile_path, load_profile, save_profile
from coscale.config import scenario_from_dict
from coscale.errors import CoscaleError, ProfileError
from coscale.runtime.system import ServingSystem
from coscale.types import ReplicaState

pytestmark = pytest.mark.integration

ray = pytest.importorskip("ray")

from coscale.backends.ray import RayBackend, local_init_options  # noqa: E402

VARIANT = "onnx-fp32"
#: A killed actor's replacement serves within this many seconds (a Ray actor start is
#: a worker process start, a model build and a warm-up on a busy 2-core machine).
REPLACEMENT_S = 15.0


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """A local Ray with 2 CPUs, offering the local node types (as RayBackend's own would)."""
    get_family("digits-cnn").build(VARIANT, threads=1)  # train/cache once, here
    options = local_init_options(2, load_catalog())
    options["resources"]["coscale-node/c7a.large"] = 1.0  # this node also poses as a c7a.large
    ray.init(**options)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def digits_profile(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> ProfileFile:
    """This machine's digits-cnn profile with the ONNX variant (measured, never made up)."""
    here = default_profile_path("digits-cnn")
    cache = getattr(request.config, "cache", None)
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


def spec(replica_id: str) -> ReplicaSpec:
    return ReplicaSpec(replica_id, "digits", "digits-cnn", VARIANT, "local-2vcpu", threads=1)


def test_outputs_through_ray_equal_the_local_backends(local_ray: Any) -> None:
    family = get_family("digits-cnn")
    batches = [family.profiling_batch(n, None, seed) for seed, n in enumerate((1, 7, 32))]

    async def main() -> tuple[list[np.ndarray], list[np.ndarray]]:
        local, on_ray = LocalBackend(max_batch=32), RayBackend(max_batch=32)
        try:
            a, b = await asyncio.gather(
                local.start_replica(spec("l1")), on_ray.start_replica(spec("r1"))
            )
            assert b.pid is not None and b.info["resources"]["resources"] == {
                "coscale-node/local-2vcpu": 0.001
            }
            assert await b.ping()
            return [await a.infer(x) for x in batches], [await b.infer(x) for x in batches]
        finally:
            await asyncio.gather(local.shutdown(), on_ray.shutdown())

    expected, got = asyncio.run(main())
    for e, g in zip(expected, got, strict=True):
        assert g.dtype == np.float32 and g.shape == e.shape
        assert np.array_equal(e, g)  # bit for bit


def test_a_killed_actor_fails_its_batch_with_replica_died(local_ray: Any) -> None:
    family = get_family("digits-cnn")

    async def main() -> None:
        backend = RayBackend(max_batch=32)
        r = await backend.start_replica(spec("k1"))
        try:
            running = asyncio.ensure_future(r.infer(family.profiling_batch(32, None, 0)))
            await asyncio.sleep(0)
            ray.kill(r.actor, no_restart=True)  # from outside, as a node loss would
            with pytest.raises(ReplicaDied):
                await running
                await r.infer(family.profiling_batch(1, None, 0))  # finished before the kill
            assert not await r.ping(timeout_s=5.0)
            assert not r.alive()
        finally:
            await backend.shutdown()

    asyncio.run(main())


def test_replicas_land_only_where_their_node_type_resource_is(local_ray: Any) -> None:
    family = get_family("digits-cnn")

    async def main() -> None:
        backend, impatient = RayBackend(max_batch=8), RayBackend(start_timeout_s=3.0)
        try:
            placed = await backend.start_replica(
                ReplicaSpec("c1", "digits", "digits-cnn", VARIANT, "c7a.large", threads=1)
            )
            assert placed.info["resources"]["resources"] == {"coscale-node/c7a.large": 0.001}
            assert (await placed.infer(family.profiling_batch(2, None, 0))).shape == (2, 10)
            with pytest.raises(ReplicaStartError, match="not ready within 3 s"):
                await impatient.start_replica(  # no node offers it: pending, then refused
                    ReplicaSpec("g1", "digits", "digits-cnn", VARIANT, "g5.xlarge", threads=1)
                )
        finally:
            await asyncio.gather(backend.shutdown(), impatient.shutdown())

    asyncio.run(main())


def system(profile: ProfileFile, backend: RayBackend, replicas: int = 2) -> ServingSystem:
    data: dict[str, Any] = {
        "name": "integration-ray",
        "models": [
            {
                "name": "digits",
                "source": "digits-cnn",
                "slo_ms": 50,
                "accuracy_floor": 0.5,
                "max_batch": 32,
                "variants": [VARIANT],
            }
        ],
        "cluster": {"nodes": [{"type": "local-2vcpu", "count": replicas, "max_count": replicas}]},
        "policies": {
            "preset": "baseline",
            "allocation": {"name": "static", "params": {"replicas": replicas}},
            "variant": {"name": "fixed", "params": {"variant": VARIANT}},
            "batching": {"name": "fixed", "params": {"max_batch": 16, "timeout_s": 0.002}},
        },
        "workload": {"generator": {"kind": "poisson", "rate_rps": 100, "duration_s": 10}},
    }
    return ServingSystem.from_scenario(
        scenario_from_dict(data), backend=backend, profile=profile, cores=replicas
    )


def test_the_system_on_ray_loses_nothing_when_an_actor_is_killed_under_load(
    local_ray: Any, digits_profile: ProfileFile
) -> None:
    family = get_family("digits-cnn")
    data = [np.random.default_rng(i).integers(0, 17, 64).tolist() for i in range(64)]
    expected = family.build(VARIANT, threads=1).predict(family.parse_items(data))
    s = system(digits_profile, RayBackend(max_batch=32))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with s:
            lane = s.plane.lanes["digits"]
            first = set(lane.replicas)
            outs = await asyncio.gather(*(s.infer("digits", [x]) for x in data))
            assert [o[0]["label"] for o in outs] == [int(np.argmax(r)) for r in expected]
            calls: list[asyncio.Future[Any]] = []

            async def load(seconds: float, rate: float) -> None:
                end, i = loop.time() + seconds, 0
                while loop.time() < end:
                    calls.append(asyncio.ensure_future(s.infer("digits", [data[i % 64]])))
                    i += 1
                    await asyncio.sleep(1.0 / rate)

            generator = asyncio.ensure_future(load(6.0, 150.0))
            try:
                await asyncio.sleep(1.0)
                victim = next(iter(lane.replicas.values()))
                assert victim.handle is not None
                ray.kill(victim.handle.actor, no_restart=True)
                killed_at = loop.time()

                def replacement_served() -> bool:
                    return any(
                        r.batches > 0 for rid, r in lane.replicas.items() if rid not in first
                    )

                while not replacement_served() and loop.time() - killed_at < REPLACEMENT_S:
                    await asyncio.sleep(0.05)
                took = loop.time() - killed_at
                await generator
            finally:
                generator.cancel()
                results = await asyncio.gather(*calls, return_exceptions=True)
            errors = [r for r in results if not isinstance(r, list)]
            stats = s.stats()
            print(
                f"replacement served {took:.2f} s after ray.kill; {len(calls)} requests under "
                f"load: {len(calls) - len(errors)} answered with outputs, {len(errors)} with "
                f"an error, lost {stats['lost']}; batches requeued {lane.requeued}"
            )
            assert replacement_served(), f"no replacement served within {REPLACEMENT_S} s"
            assert victim.state is ReplicaState.STOPPED
            assert all(isinstance(e, CoscaleError) for e in errors), errors[:3]
            assert stats["lost"] == 0 and stats["in_flight"] == 0
            assert stats["completed"] + stats["failed"] + stats["rejected"] == len(calls) + 64
            assert stats["completed"] == len(calls) + 64 - len(errors)
        assert s.unanswered_at_shutdown == 0

    asyncio.run(main())
