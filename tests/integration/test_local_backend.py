"""LocalBackend end to end: real worker processes, real models, real faults.

One module-scoped ``$COSCALE_HOME`` (the digits model is trained once, in this process,
and the workers load it from there). Faults are real: a worker made to hang inside a
batch, or to crash while holding one, through the worker's fault-injection variable
(:data:`coscale.runtime.worker.FAULT_ENV`); kills are real SIGKILLs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from coscale.accel.digits import DigitsFamily
from coscale.accel.minilm import MiniLMFamily
from coscale.backends.base import ReplicaDied, ReplicaSpec, ReplicaStartError
from coscale.backends.local import WORKER_NICE, LocalBackend, LocalReplica
from coscale.errors import InvalidInputError
from coscale.runtime import shm
from coscale.runtime.worker import EXIT_FAULT_CRASH, FAULT_ENV, WorkerError

pytestmark = pytest.mark.integration

FAULTS = "hang@d-hang,crash:1@d-crash"


def spec(replica_id: str, variant: str = "fp32-eager", source: str = "digits-cnn") -> ReplicaSpec:
    return ReplicaSpec(replica_id, source, source, variant, "local", threads=1)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("coscale-home")
    old = os.environ.get("COSCALE_HOME")
    os.environ["COSCALE_HOME"] = str(path)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("COSCALE_HOME", None)
        else:
            os.environ["COSCALE_HOME"] = old


@pytest.fixture(scope="module")
def digits(home: Path) -> DigitsFamily:
    family = DigitsFamily()
    _ = family.model  # train once, here; the workers load the cached weights
    return family


@pytest.fixture(scope="module")
def backend(digits: DigitsFamily) -> Iterator[LocalBackend]:
    backend = LocalBackend(max_batch=64, batch_timeout_s=30.0, worker_env={FAULT_ENV: FAULTS})
    yield backend
    run(backend.shutdown())
    assert shm.list_segments(f"cs-{os.getpid()}-") == []


@pytest.fixture(scope="module")
def pair(backend: LocalBackend) -> tuple[LocalReplica, LocalReplica]:
    async def start() -> tuple[LocalReplica, LocalReplica]:
        a, b = await asyncio.gather(
            backend.start_replica(spec("d-a", "fp32-eager")),
            backend.start_replica(spec("d-b", "onnx-fp32")),
        )
        return a, b

    return run(start())  # type: ignore[no-any-return]


def test_two_replicas_serve_exactly_what_the_variant_computes_in_process(
    digits: DigitsFamily, pair: tuple[LocalReplica, LocalReplica]
) -> None:
    a, b = pair
    assert a.pid != b.pid and os.getpid() not in (a.pid, b.pid)
    assert a.alive() and b.alive()
    assert a.info["threads"] == 1 and a.info["variant"] == "fp32-eager"
    assert a.info["torch_threads"] == 1  # torch's own default would be every core
    # workers run at a lower CPU priority than the server (WORKER_NICE)
    server_nice = os.getpriority(os.PRIO_PROCESS, 0)
    for replica in pair:
        assert replica.pid is not None
        worker_nice = os.getpriority(os.PRIO_PROCESS, replica.pid)
        assert worker_nice == min(19, server_nice + WORKER_NICE)
    for replica in pair:
        assert psutil.Process(replica.pid).environ()["OMP_NUM_THREADS"] == "1"
    print(f"\nstart_s digits-cnn: fp32-eager {a.info['start_s']:.2f}, onnx {b.info['start_s']:.2f}")
    x = digits.profiling_batch(64, None, 3)
    big = digits.profiling_batch(1000, None, 4)  # 256 kB: larger than the first segment

    async def both() -> list[np.ndarray]:
        return list(await asyncio.gather(a.infer(x), b.infer(x), a.infer(big), b.infer(big)))

    out_a, out_b, big_a, big_b = run(both())
    ref_a = digits.build("fp32-eager").predict
    ref_b = digits.build("onnx-fp32").predict
    np.testing.assert_array_equal(out_a, ref_a(x))
    np.testing.assert_allclose(out_b, ref_b(x), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(big_a, ref_a(big))
    np.testing.assert_allclose(big_b, ref_b(big), rtol=0, atol=1e-6)
    assert out_a.dtype == np.float32 and out_a.shape == (64, 10)
    assert run(a.ping()) and run(b.ping())


def test_concurrent_batches_queue_on_one_replica_in_order(
    digits: DigitsFamily, pair: tuple[LocalReplica, LocalReplica]
) -> None:
    a, _ = pair
    batches = [digits.profiling_batch(n, None, n) for n in (2000, 64, 17)]
    depths: list[int] = []

    async def go() -> list[np.ndarray]:
        tasks = [asyncio.ensure_future(a.infer(batch)) for batch in batches]
        await asyncio.sleep(0)
        depths.append(a.queue_depth)
        return list(await asyncio.gather(*tasks))

    outs = run(go())
    assert depths[0] == 3  # one running, two waiting in the replica's own queue
    assert a.queue_depth == 0
    reference = digits.build("fp32-eager")
    for batch, out in zip(batches, outs, strict=True):
        np.testing.assert_array_equal(out, reference.predict(batch))


def test_a_cancelled_caller_does_not_free_the_replica_early(
    digits: DigitsFamily, pair: tuple[LocalReplica, LocalReplica]
) -> None:
    """The worker still reads the cancelled batch: the next one must wait, not overwrite it."""
    a, _ = pair
    first, second = digits.profiling_batch(3000, None, 7), digits.profiling_batch(16, None, 8)

    async def scenario() -> tuple[int, np.ndarray]:
        task = asyncio.ensure_future(a.infer(first))
        await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.sleep(0)
        held = a.queue_depth
        return held, await a.infer(second)

    held, out = run(scenario())
    assert held == 1  # the replica still holds the cancelled batch
    np.testing.assert_array_equal(out, digits.build("fp32-eager").predict(second))


def test_an_error_inside_predict_fails_that_batch_only(
    digits: DigitsFamily, pair: tuple[LocalReplica, LocalReplica]
) -> None:
    a, b = pair
    with pytest.raises(InvalidInputError, match=r"shape \(n, 64\)") as info:
        run(a.infer(np.zeros((2, 5), dtype=np.float32)))
    assert info.value.code == "invalid_input" and info.value.fix
    with pytest.raises(WorkerError, match="ValueError") as remote:
        run(b.infer(np.array([["not a number"] * 64])))  # gets past no validation
    assert "Traceback" in remote.value.remote_traceback
    x = digits.profiling_batch(8, None, 9)
    assert run(a.infer(x)).shape == (8, 10) and run(b.infer(x)).shape == (8, 10)
    assert a.alive() and b.alive()


def test_minilm_text_through_shared_memory(home: Path, backend: LocalBackend) -> None:
    texts = [
        "A quick brown fox jumps over the lazy dog.",
        "Ünïcödé façade — naïve café ☕",
        "日本語の文章もそのまま送れる。",
        "emoji 🚀👩‍💻 and a very, very, very long sentence " * 4,
    ]

    async def scenario() -> tuple[LocalReplica, np.ndarray, np.ndarray]:
        in_process = asyncio.to_thread(lambda: MiniLMFamily().build("fp32-eager").predict(texts))
        replica, reference = await asyncio.gather(
            backend.start_replica(spec("m-0", "fp32-eager", source="minilm")), in_process
        )
        try:
            return replica, await replica.infer(texts), reference
        finally:
            await backend.stop_replica("m-0")

    replica, out, reference = run(scenario())
    print(f"\nstart_s minilm fp32-eager: {replica.info['start_s']:.2f}")
    assert out.shape == (4, 384)
    np.testing.assert_allclose(out, reference, rtol=0, atol=1e-6)
    assert shm.list_segments(replica.segment_prefix) == []


def test_a_hung_worker_is_found_by_the_batch_timeout_and_killed(
    digits: DigitsFamily, backend: LocalBackend
) -> None:
    replica = run(backend.start_replica(spec("d-hang")))  # its batches never return
    pid = replica.pid

    async def scenario() -> float:
        task = asyncio.ensure_future(
            replica.infer(digits.profiling_batch(4, None, 0), timeout_s=1.5)
        )
        await asyncio.sleep(0.5)
        assert not task.done() and await replica.ping()  # hung batch, but pings answered
        started = time.perf_counter()
        with pytest.raises(ReplicaDied, match=r"past its 1\.5 s timeout"):
            await task
        return time.perf_counter() - started

    assert 0.5 < run(scenario()) < 4.0
    assert not run(replica.ping())
    run(backend.stop_replica("d-hang", drain=False))
    assert replica.exitcode == -signal.SIGKILL
    assert pid is not None and _gone(pid)
    assert shm.list_segments(replica.segment_prefix) == []


def test_a_worker_that_crashes_holding_a_batch_raises_replica_died(
    digits: DigitsFamily, backend: LocalBackend
) -> None:
    replica = run(backend.start_replica(spec("d-crash")))  # serves 1 batch, then crashes
    x = digits.profiling_batch(4, None, 0)
    assert run(replica.infer(x)).shape == (4, 10)
    started = time.perf_counter()
    with pytest.raises(ReplicaDied, match="crashed"):
        run(replica.infer(x))
    assert time.perf_counter() - started < 2.0
    run(backend.stop_replica("d-crash"))
    assert replica.exitcode == EXIT_FAULT_CRASH
    assert shm.list_segments(replica.segment_prefix) == []


def test_stop_drains_the_batch_in_flight(
    digits: DigitsFamily, pair: tuple[LocalReplica, LocalReplica], backend: LocalBackend
) -> None:
    a, _ = pair
    x = digits.profiling_batch(8000, None, 5)  # long enough to still run when stop comes

    async def scenario() -> np.ndarray:
        task = asyncio.ensure_future(a.infer(x))
        await asyncio.sleep(0.05)
        assert not task.done()
        stopping = asyncio.ensure_future(backend.stop_replica("d-a", drain=True))
        await asyncio.sleep(0)
        with pytest.raises(ReplicaDied, match="stopping"):
            await a.infer(x[:1])  # no new batches once stopping
        out = await task
        await stopping
        return out

    out = run(scenario())
    np.testing.assert_array_equal(out, digits.build("fp32-eager").predict(x))
    assert a.exitcode == 0 and not a.alive()
    assert shm.list_segments(a.segment_prefix) == []


def test_kill_while_a_batch_is_in_flight_raises_replica_died_at_once(
    digits: DigitsFamily, pair: tuple[LocalReplica, LocalReplica], backend: LocalBackend
) -> None:
    _, b = pair
    x = digits.profiling_batch(100_000, None, 6)  # seconds of real work for onnx-fp32

    async def scenario() -> float:
        task = asyncio.ensure_future(b.infer(x))
        await asyncio.sleep(0.3)
        assert not task.done() and await b.ping()  # busy, yet answering pings
        killed = time.perf_counter()
        b.kill()
        with pytest.raises(ReplicaDied, match="SIGKILL while holding batch"):
            await task
        return time.perf_counter() - killed

    assert run(scenario()) < 2.0
    assert not run(b.ping()) and not b.alive()
    run(backend.stop_replica("d-b", drain=False))
    assert b.exitcode == -signal.SIGKILL
    assert shm.list_segments(b.segment_prefix) == []
    with pytest.raises(ReplicaDied):
        run(b.infer(x[:1]))


def test_a_bad_model_source_fails_start_with_a_clear_error(backend: LocalBackend) -> None:
    started = time.perf_counter()
    with pytest.raises(ReplicaStartError, match="unknown model 'digits-cnnn'") as info:
        run(backend.start_replica(spec("bad", source="digits-cnnn")))
    message = str(info.value)
    assert "Did you mean 'digits-cnn'" in message and "replica bad" in message
    assert info.value.code == "unknown_model"  # type: ignore[attr-defined]
    assert time.perf_counter() - started < 15.0
    assert "bad" not in {r.spec.id for r in backend.replicas()}


def _workers() -> set[int]:
    """This process's live worker children. A child that exits between the listing and
    the read of its command line (a zombie, or already reaped) is gone, not a worker."""
    found = set()
    for child in psutil.Process().children():
        try:
            if "coscale.runtime.worker" in " ".join(child.cmdline()):
                found.add(child.pid)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            continue
    return found


def test_a_start_cancelled_by_its_caller_leaves_no_worker(backend: LocalBackend) -> None:
    mine = f"cs-{os.getpid()}-"
    workers, segments = _workers(), set(shm.list_segments(mine))

    async def scenario() -> None:
        task = asyncio.ensure_future(backend.start_replica(spec("d-cancel", "onnx-fp32")))
        await asyncio.sleep(0.3)
        assert _workers() - workers  # the worker is starting
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())  # returns at once; the worker finishes starting on its own thread

    def leftovers() -> tuple[set[int], set[str]]:
        return _workers() - workers, set(shm.list_segments(mine)) - segments

    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline and any(leftovers()):
        time.sleep(0.1)
    assert leftovers() == (set(), set()), "a start cancelled by its caller left something"
    assert "d-cancel" not in {r.spec.id for r in backend.replicas()}


ORPHAN_SCRIPT = """
import asyncio
from coscale.backends.base import ReplicaSpec
from coscale.backends.local import LocalBackend

async def main():
    backend = LocalBackend(max_batch=4)
    replica = await backend.start_replica(
        ReplicaSpec("orphan", "digits-cnn", "digits-cnn", "onnx-fp32", "local")
    )
    print(replica.pid, replica.segment_prefix, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_worker_whose_parent_dies_exits_and_its_segments_are_freed(home: Path) -> None:
    log = home / "orphan.log"  # the orphaned tracker's clean-up warning goes here
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    try:
        assert parent.stdout is not None
        pid_text, prefix = parent.stdout.readline().split()
        worker = int(pid_text)
        assert psutil.Process(worker).ppid() == parent.pid
        assert shm.list_segments(prefix)  # the worker's output segment exists
    finally:
        parent.kill()
        parent.wait(10)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and not (_gone(worker) and not shm.list_segments(prefix)):
        time.sleep(0.1)
    assert _gone(worker), f"the worker outlived its parent: {log.read_text()}"
    assert shm.list_segments(prefix) == [], f"segments outlived everyone: {log.read_text()}"
