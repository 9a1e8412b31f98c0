"""The pieces of the local backend that need no worker process, and the in-process backend.

* :class:`FifoGate` (one batch at a time per replica, FIFO, any loop, any thread);
* the worker's fault-injection parser and error transport (``error_info`` → ``rebuild_error``);
* :func:`default_threads`;
* :class:`InProcessBackend` serving a real (tiny) ONNX model file: outputs, queueing,
  kill, timeout, drain, start errors.

To hold an in-process replica's thread busy on purpose, a test submits a blocking
``threading.Event.wait`` to the replica's own executor: a real blocked thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from coscale.accel.onnxrt import export_onnx
from coscale.accel.zoo import get_family
from coscale.backends.base import ReplicaDied, ReplicaSpec, ReplicaStartError
from coscale.backends.inprocess import InProcessBackend, InProcessReplica
from coscale.backends.local import FifoGate, default_threads
from coscale.errors import CoscaleError, InvalidInputError, UnknownModelError
from coscale.runtime.worker import (
    Fault,
    WorkerError,
    error_info,
    parse_fault,
    rebuild_error,
    render_error,
)

# ---------------------------------------------------------------------- gate


def test_gate_grants_in_arrival_order_and_reports_depth() -> None:
    async def scenario() -> list[str]:
        gate = FifoGate()
        order: list[str] = []
        await gate.acquire()
        assert gate.depth == 1

        async def take(name: str) -> None:
            await gate.acquire()
            order.append(name)

        tasks = [asyncio.ensure_future(take(n)) for n in "bcd"]
        await asyncio.sleep(0.01)
        assert gate.depth == 4 and order == []
        for _ in range(3):
            gate.release()
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)
        gate.release()
        assert gate.depth == 0
        return order

    assert asyncio.run(scenario()) == ["b", "c", "d"]


def test_gate_skips_a_cancelled_waiter() -> None:
    async def scenario() -> list[str]:
        gate = FifoGate()
        order: list[str] = []
        await gate.acquire()

        async def take(name: str) -> None:
            await gate.acquire()
            order.append(name)

        b = asyncio.ensure_future(take("b"))
        c = asyncio.ensure_future(take("c"))
        await asyncio.sleep(0.01)
        b.cancel()
        await asyncio.sleep(0.01)
        gate.release()
        await c
        assert gate.depth == 1  # c holds it; nobody waits
        return order

    assert asyncio.run(scenario()) == ["c"]


def test_gate_released_from_another_thread_wakes_the_loop() -> None:
    async def scenario() -> float:
        gate = FifoGate()
        await gate.acquire()
        timer = threading.Timer(0.1, gate.release)
        started = time.perf_counter()
        timer.start()
        await asyncio.wait_for(gate.acquire(), 2.0)
        return time.perf_counter() - started

    assert 0.05 < asyncio.run(scenario()) < 1.0


def test_gate_works_across_event_loops() -> None:
    gate = FifoGate()
    asyncio.run(gate.acquire())
    threading.Timer(0.05, gate.release).start()
    asyncio.run(asyncio.wait_for(gate.acquire(), 2.0))  # a second loop waits on it
    gate.release()
    assert gate.depth == 0


def test_closed_gate_fails_waiters_and_later_acquires() -> None:
    async def scenario() -> None:
        gate = FifoGate()
        await gate.acquire()
        waiter = asyncio.ensure_future(gate.acquire())
        await asyncio.sleep(0.01)
        gate.close("replica r1 was killed")
        with pytest.raises(ReplicaDied, match="r1 was killed"):
            await waiter
        with pytest.raises(ReplicaDied, match="r1 was killed"):
            await gate.acquire()

    asyncio.run(scenario())


# -------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("value", "replica", "expected"),
    [
        ("", "r", None),
        ("  ", "r", None),
        ("hang", "r", Fault("hang", 0)),
        ("crash:3", "r", Fault("crash", 3)),
        ("hang@other", "r", None),
        ("hang@r", "r", Fault("hang", 0)),
        ("hang@a,crash:1@b", "b", Fault("crash", 1)),
        ("hang@a, crash:1@b", "a", Fault("hang", 0)),
        ("crash@r,hang", "r", Fault("crash", 0)),  # the first that matches wins
    ],
)
def test_parse_fault(value: str, replica: str, expected: Fault | None) -> None:
    assert parse_fault(value, replica) == expected


@pytest.mark.parametrize("value", ["explode", "hang:soon", "hang@a,segfault", "crash:-1"])
def test_malformed_fault_is_a_clear_error(value: str) -> None:
    with pytest.raises(CoscaleError, match="not a fault") as info:
        parse_fault(value, "r")
    assert info.value.code == "bad_fault" and "ACTION" in info.value.fix


def test_fault_strikes_only_after_the_given_number_of_batches() -> None:
    Fault("crash", after=2).strike(served=1)  # returns: not yet (else this process exits)


# -------------------------------------------------------------------- errors


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_coscale_errors_come_back_as_the_same_class() -> None:
    original = InvalidInputError("item 3: bad pixel", fix="Send numbers in [0, 16].")
    rebuilt = rebuild_error(error_info(_raised(original)))
    assert type(rebuilt) is InvalidInputError
    assert (rebuilt.message, rebuilt.fix, rebuilt.code) == (
        "item 3: bad pixel",
        "Send numbers in [0, 16].",
        "invalid_input",
    )
    assert rebuilt.http_status == 422
    custom = rebuild_error(error_info(CoscaleError("x", fix="y", code="unknown_variant")))
    assert type(custom) is CoscaleError and custom.code == "unknown_variant"
    assert render_error(error_info(original)) == "item 3: bad pixel Send numbers in [0, 16]."


def test_other_errors_come_back_as_worker_error_with_the_remote_traceback() -> None:
    info = error_info(_raised(ValueError("could not convert string to float: 'x'")))
    rebuilt = rebuild_error(info)
    assert isinstance(rebuilt, WorkerError)
    assert rebuilt.remote_type == "builtins.ValueError"
    assert "ValueError: could not convert" in str(rebuilt)
    assert "Traceback" in rebuilt.remote_traceback and "_raised" in rebuilt.remote_traceback
    assert render_error(info) == "ValueError: could not convert string to float: 'x'"


def test_an_error_class_outside_coscale_is_never_imported() -> None:
    info = error_info(UnknownModelError("nope", fix="f"))
    info["module"] = "os"  # forged: must not be looked up
    assert type(rebuild_error(info)) is CoscaleError


# ------------------------------------------------------------------- threads


@pytest.mark.parametrize(
    ("replicas", "cores", "expected"),
    [(1, 8, 8), (3, 8, 2), (4, 2, 1), (0, 4, 4), (2, 1, 1)],
)
def test_default_threads(replicas: int, cores: int, expected: int) -> None:
    assert default_threads(replicas, cores) == expected


def test_default_threads_uses_this_machine() -> None:
    assert default_threads(1) >= 1


# --------------------------------------------------------- in-process backend


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real model (two linear layers, seeded weights) as an ONNX file."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    path = tmp_path_factory.mktemp("models") / "mlp.onnx"
    return export_onnx(
        model.eval(),
        (torch.zeros(1, 16),),
        path,
        input_names=["features"],
        output_names=["scores"],
        dynamic_axes={"features": {0: "batch"}, "scores": {0: "batch"}},
    )


def _spec(path: Path, replica_id: str = "m-0", variant: str = "onnx-fp32") -> ReplicaSpec:
    return ReplicaSpec(replica_id, "mlp", str(path), variant, "local", threads=1)


def _block(replica: InProcessReplica) -> threading.Event:
    """Occupy the replica's one thread until the returned event is set."""
    release = threading.Event()
    replica._executor.submit(release.wait, 10.0)
    return release


def _x(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 16)).astype(np.float32)


def test_inprocess_replica_serves_the_variant_in_order(model_file: Path) -> None:
    reference = get_family(str(model_file)).build("onnx-fp32")

    async def scenario() -> tuple[list[np.ndarray], list[int], InProcessReplica]:
        backend = InProcessBackend(max_batch=8)
        replica = await backend.start_replica(_spec(model_file))
        depths: list[int] = []
        release = _block(replica)
        tasks = [asyncio.ensure_future(replica.infer(_x(n))) for n in (1, 5, 9)]
        await asyncio.sleep(0.02)
        depths.append(replica.queue_depth)
        release.set()
        outs = list(await asyncio.gather(*tasks))
        depths.append(replica.queue_depth)
        await backend.shutdown()
        return outs, depths, replica

    outs, depths, replica = asyncio.run(scenario())
    assert depths == [3, 0]
    for n, out in zip((1, 5, 9), outs, strict=True):
        np.testing.assert_array_equal(out, reference.predict(_x(n)))
    assert replica.pid is None and not replica.alive()
    assert replica.info["variant"] == "onnx-fp32" and replica.info["start_s"] > 0


def test_inprocess_errors_in_predict_fail_the_batch_only(model_file: Path) -> None:
    async def scenario() -> None:
        backend = InProcessBackend(max_batch=4)
        replica = await backend.start_replica(_spec(model_file))
        with pytest.raises(InvalidArgument, match=r"invalid dimensions for input: features"):
            await replica.infer(np.zeros((2, 3), dtype=np.float32))  # ORT's own error
        assert replica.alive() and await replica.ping()
        assert (await replica.infer(_x(2))).shape == (2, 4)
        await backend.shutdown()

    asyncio.run(scenario())


def test_inprocess_kill_fails_running_and_queued_batches_at_once(model_file: Path) -> None:
    async def scenario() -> float:
        replica = await InProcessBackend(max_batch=4).start_replica(_spec(model_file))
        release = _block(replica)
        running = asyncio.ensure_future(replica.infer(_x(1)))
        queued = asyncio.ensure_future(replica.infer(_x(2)))
        await asyncio.sleep(0.02)
        started = time.perf_counter()
        replica.kill()
        for task in (running, queued):
            with pytest.raises(ReplicaDied, match="m-0 was killed"):
                await task
        elapsed = time.perf_counter() - started
        assert not await replica.ping() and not replica.alive()
        with pytest.raises(ReplicaDied):
            await replica.infer(_x(1))
        release.set()
        return elapsed

    assert asyncio.run(scenario()) < 0.5


def test_inprocess_batch_past_its_timeout_kills_the_replica(model_file: Path) -> None:
    async def scenario() -> None:
        backend = InProcessBackend(max_batch=4, batch_timeout_s=0.2)
        replica = await backend.start_replica(_spec(model_file))
        release = _block(replica)
        with pytest.raises(ReplicaDied, match=r"past its 0\.2 s timeout"):
            await replica.infer(_x(1))
        assert not replica.alive()
        release.set()

    asyncio.run(scenario())


def test_inprocess_stop_drains_queued_batches_then_refuses(model_file: Path) -> None:
    async def scenario() -> np.ndarray:
        backend = InProcessBackend(max_batch=4)
        replica = await backend.start_replica(_spec(model_file))
        release = _block(replica)
        queued = asyncio.ensure_future(replica.infer(_x(3)))
        await asyncio.sleep(0.02)
        stopping = asyncio.ensure_future(backend.stop_replica("m-0"))
        await asyncio.sleep(0.02)
        with pytest.raises(ReplicaDied, match="stopping"):
            await replica.infer(_x(1))
        assert not stopping.done()
        release.set()
        out = await queued
        await stopping
        assert not replica.alive()
        return out

    out = asyncio.run(scenario())
    assert out.shape == (3, 4)


def test_inprocess_bad_source_and_duplicate_id_fail_to_start(model_file: Path) -> None:
    async def scenario() -> None:
        backend = InProcessBackend(max_batch=2)
        with pytest.raises(ReplicaStartError, match="unknown model 'digits-cnnn'") as info:
            await backend.start_replica(
                ReplicaSpec("x", "digits", "digits-cnnn", "fp32-eager", "local")
            )
        error: Any = info.value
        assert error.code == "unknown_model" and "Did you mean 'digits-cnn'" in str(error)
        await backend.start_replica(_spec(model_file))
        with pytest.raises(ReplicaStartError, match="already running"):
            await backend.start_replica(_spec(model_file))
        await backend.shutdown()
        assert backend.replicas() == []

    asyncio.run(scenario())
