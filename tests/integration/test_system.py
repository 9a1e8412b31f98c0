"""The live system over real worker processes (LocalBackend) serving digits-cnn: a burst
of concurrent requests, and a worker SIGKILLed in the middle of a steady load."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import numpy as np
import pytest

from coscale.accel.zoo import get_family
from coscale.backends.local import LocalBackend
from coscale.catalog.profiles import ProfileFile, default_profile_path, load_profile, save_profile
from coscale.config import scenario_from_dict
from coscale.errors import CoscaleError, ProfileError
from coscale.runtime.system import ServingSystem
from coscale.types import ReplicaState

pytestmark = pytest.mark.integration

VARIANT = "onnx-fp32"
#: The brief's bound: a killed worker's replacement serves within this many seconds.
REPLACEMENT_S = 5.0


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


def system(profile: ProfileFile, replicas: int = 2) -> ServingSystem:
    data: dict[str, Any] = {
        "name": "integration-live",
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
        scenario_from_dict(data),
        backend=LocalBackend(max_batch=32),
        profile=profile,
        cores=replicas,
    )


def images(n: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 17, 64).tolist() for _ in range(n)]


def test_two_hundred_concurrent_requests_are_all_answered(digits_profile: ProfileFile) -> None:
    family = get_family("digits-cnn")
    data = images(200)
    expected = family.build(VARIANT, threads=1).predict(family.parse_items(data))
    s = system(digits_profile)

    async def main() -> None:
        async with s:
            assert s.ready()
            pids = {r["pid"] for r in s.models()[0]["replicas"]}
            assert len(pids) == 2 and os.getpid() not in pids  # real worker processes
            outs = await asyncio.gather(*(s.infer("digits", [x]) for x in data))
            labels = [o[0]["label"] for o in outs]
            assert labels == [int(np.argmax(row)) for row in expected]
            stats = s.stats()
            assert stats["completed"] == 200 and stats["lost"] == 0
            assert "coscale_batch_items_bucket" in s.metrics_text()
        assert s.unanswered_at_shutdown == 0

    asyncio.run(main())


def test_a_killed_worker_loses_nothing_and_is_replaced_within_five_seconds(
    digits_profile: ProfileFile,
) -> None:
    s = system(digits_profile)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with s:
            lane = s.plane.lanes["digits"]
            first = set(lane.replicas)
            data = images(64, seed=1)
            calls: list[asyncio.Future[Any]] = []

            async def load(seconds: float, rate: float) -> None:
                end = loop.time() + seconds
                i = 0
                while loop.time() < end:
                    calls.append(asyncio.ensure_future(s.infer("digits", [data[i % 64]])))
                    i += 1
                    await asyncio.sleep(1.0 / rate)

            generator = asyncio.ensure_future(load(8.0, 300.0))
            try:
                await asyncio.sleep(1.0)
                victim = next(iter(lane.replicas.values()))
                assert victim.handle is not None and victim.handle.pid is not None
                os.kill(victim.handle.pid, signal.SIGKILL)
                killed_at = loop.time()

                def replacement_served() -> bool:
                    return any(
                        r.batches > 0 for rid, r in lane.replicas.items() if rid not in first
                    )

                while not replacement_served() and loop.time() - killed_at < 2 * REPLACEMENT_S:
                    await asyncio.sleep(0.01)
                took = loop.time() - killed_at
                await generator
            finally:
                generator.cancel()
                results = await asyncio.gather(*calls, return_exceptions=True)
            print(
                f"replacement served {took:.2f} s after the kill; {len(calls)} requests, "
                f"requeued {lane.requeued}"
            )
            assert took < REPLACEMENT_S, f"the replacement served {took:.2f} s after the kill"
            assert victim.state is ReplicaState.STOPPED
            errors = [r for r in results if not isinstance(r, list)]
            assert all(isinstance(e, CoscaleError) for e in errors), errors[:3]
            stats = s.stats()
            assert stats["lost"] == 0 and stats["in_flight"] == 0
            assert stats["completed"] + stats["failed"] + stats["rejected"] == len(calls)
            assert stats["completed"] == len(calls) - len(errors)
        assert s.unanswered_at_shutdown == 0

    asyncio.run(main())
