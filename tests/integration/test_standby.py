"""The local backend's warm standby (real worker processes, digits-cnn ONNX).

A start after the first of a thread count takes the standby (an interpreter that has
already imported the family) instead of a fresh process; the replica it becomes computes
the same outputs; a new standby follows; a dead standby is skipped (cold start); and no
standby outlives its backend's shutdown or its parent process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import psutil
import pytest

from coscale.accel.zoo import get_family
from coscale.backends.base import ReplicaSpec
from coscale.backends.local import STANDBY_ENV, LocalBackend

pytestmark = pytest.mark.integration

VARIANT = "onnx-fp32"


def spec(replica_id: str) -> ReplicaSpec:
    return ReplicaSpec(replica_id, "digits", "digits-cnn", VARIANT, "local", threads=1)


def workers(parent: int | None = None) -> set[int]:
    """Pids of the worker processes (replicas and standbys) below ``parent`` (default: us)."""
    try:
        children = psutil.Process(parent).children()
    except psutil.NoSuchProcess:
        return set()
    out = set()
    for child in children:
        try:
            if "coscale.runtime.worker" in " ".join(child.cmdline()):
                out.add(child.pid)
        except psutil.NoSuchProcess:
            continue
    return out


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(condition: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    return condition()


def test_a_start_takes_the_standby_and_serves_the_same_outputs() -> None:
    before = workers()
    pixels = get_family("digits-cnn").profiling_batch(8, None, 3)

    async def scenario() -> None:
        backend = LocalBackend(max_batch=8)
        try:
            cold = await backend.start_replica(spec("sb-a"))
            assert not cold.info.get("standby")
            standbys = wait_for(backend.standbys, 10.0)
            assert len(standbys) == 1 and standbys[0].threads == 1
            waiting = standbys[0].process.pid
            assert "--standby" in psutil.Process(waiting).cmdline()
            warm = await backend.start_replica(spec("sb-b"))
            assert warm.info["standby"] is True and warm.pid == waiting
            assert psutil.Process(waiting).environ()["OMP_NUM_THREADS"] == "1"
            np.testing.assert_allclose(
                await warm.infer(pixels), await cold.infer(pixels), rtol=1e-5, atol=1e-6
            )
            refilled = wait_for(backend.standbys, 10.0)
            assert len(refilled) == 1 and refilled[0].process.pid not in (waiting, cold.pid)
            assert workers() - before == {cold.pid, warm.pid, refilled[0].process.pid}
            # a standby that died is skipped: the next start is a cold one, and serves
            os.kill(refilled[0].process.pid, signal.SIGKILL)
            refilled[0].process.wait(10)
            again = await backend.start_replica(spec("sb-c"))
            assert not again.info.get("standby") and again.pid != refilled[0].process.pid
            assert (await again.infer(pixels)).shape == (8, 10)
        finally:
            await backend.shutdown()
        assert backend.standbys() == []

    asyncio.run(scenario())
    assert wait_for(lambda: workers() - before == set(), 10.0), "a worker outlived shutdown"


def test_the_standby_is_on_by_default_and_off_with_the_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(STANDBY_ENV, raising=False)
    assert LocalBackend().settings.standby is True
    monkeypatch.setenv(STANDBY_ENV, "0")
    assert LocalBackend().settings.standby is False
    assert LocalBackend(standby=True).settings.standby is True


PARENT_SCRIPT = """
import asyncio, time
from coscale.backends.base import ReplicaSpec
from coscale.backends.local import LocalBackend

async def main():
    backend = LocalBackend(max_batch=4)
    replica = await backend.start_replica(
        ReplicaSpec("orphan", "digits", "digits-cnn", "onnx-fp32", "local")
    )
    while not backend.standbys():
        await asyncio.sleep(0.05)
    print(replica.pid, backend.standbys()[0].process.pid, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


def test_a_standby_exits_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        replica, standby = (int(p) for p in parent.stdout.readline().split())
        assert workers(parent.pid) == {replica, standby}
    finally:
        parent.kill()
        parent.wait(10)
    # the standby may still be importing torch when its parent dies: allow for that
    assert wait_for(lambda: gone(standby) and gone(replica), 30.0), "a worker outlived its parent"


def _masks(pid: int) -> set[tuple[int, ...]]:
    """The CPU affinity of every thread of ``pid``."""
    return {tuple(sorted(os.sched_getaffinity(t.id))) for t in psutil.Process(pid).threads()}


def test_workers_pin_themselves_to_the_backend_s_cpus_cold_and_from_the_standby() -> None:
    """``cpus=(c,)``: a cold worker, the standby and the replica the standby becomes run
    on CPU ``c`` only, every thread of them (ONNX Runtime's included), while this process
    keeps its own mask; a CPU the kernel refuses fails the start with an error naming it."""
    import dataclasses

    from coscale.backends.base import ReplicaStartError

    mine = os.sched_getaffinity(0)
    cpu = max(mine)
    pixels = get_family("digits-cnn").profiling_batch(8, None, 3)

    async def scenario() -> None:
        backend = LocalBackend(max_batch=8, cpus=(cpu,))
        try:
            cold = await backend.start_replica(spec("pin-a"))
            assert cold.info["cpus"] == [cpu] and _masks(cold.pid) == {(cpu,)}
            standbys = wait_for(backend.standbys, 10.0)
            assert len(standbys) == 1
            assert wait_for(lambda: _masks(standbys[0].process.pid) == {(cpu,)}, 5.0)
            warm = await backend.start_replica(spec("pin-b"))
            assert warm.info["standby"] is True and warm.info["cpus"] == [cpu]
            assert (await warm.infer(pixels)).shape == (8, 10)
            assert _masks(warm.pid) == {(cpu,)}
            assert os.sched_getaffinity(0) == mine
            # bypass the list's validation: the kernel itself refuses a CPU it lacks
            refused = LocalBackend(max_batch=8, standby=False)
            refused.settings = dataclasses.replace(refused.settings, cpus=(4095,))
            with pytest.raises(ReplicaStartError, match="cannot run on CPUs 4095"):
                await refused.start_replica(spec("pin-x"))
            await refused.shutdown()
        finally:
            await backend.shutdown()

    asyncio.run(scenario())
