"""A backend that runs each replica's variant in this process, on a thread of its own.

:class:`InProcessBackend` implements the same :class:`~coscale.backends.base.Backend`
protocol as :class:`~coscale.backends.local.LocalBackend`, with the same variant
built the same way (:func:`coscale.runtime.worker.build_and_warm`), so it is a real
backend — for unit and contract tests (no processes to start, outputs identical to
the worker's) and for embedding coscale in a program that wants no child processes.

Each :class:`InProcessReplica` owns a ``ThreadPoolExecutor(max_workers=1)``: batches
run one at a time, off the event loop; a concurrent :meth:`~InProcessReplica.infer`
waits in the replica's FIFO (:class:`~coscale.backends.local.FifoGate`), as in the
local backend.

Differences from worker processes, by necessity:

* :meth:`~InProcessReplica.kill` *simulates* a crash: the replica is marked dead, its
  running and queued batches raise :class:`~coscale.backends.base.ReplicaDied` at once
  and later ones are refused; the thread itself cannot be killed, so a batch already
  running finishes in the background and its result is discarded.
* A batch past its timeout (``batch_timeout_s``) is treated as a hung replica: killed
  as above, ReplicaDied raised. A truly hung thread stays blocked (and keeps the
  interpreter from exiting) — use worker processes where models may hang.
* :meth:`~InProcessReplica.ping` is True while the replica is not dead: a thread
  cannot be probed independently of the batch it runs.
* ``pid`` is None (there is no process of its own); PyTorch's intra-op thread count
  is per process, so replicas of torch variants with different ``threads`` in one
  process take turns setting it (ONNX Runtime sessions own their threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from coscale.backends.base import ReplicaDied, ReplicaSpec, ReplicaStartError
from coscale.backends.local import (
    DEFAULT_BATCH_TIMEOUT_S,
    DEFAULT_MAX_BATCH,
    FifoGate,
    settle,
    wait_shielded,
)
from coscale.runtime.worker import build_and_warm, error_info, render_error


class InProcessReplica:
    """One variant served on a dedicated thread of this process (module docstring)."""

    def __init__(
        self, spec: ReplicaSpec, variant: Any, info: dict[str, Any], batch_timeout_s: float
    ) -> None:
        self.spec = spec
        self.variant = variant
        self.info = info
        self.batch_timeout_s = batch_timeout_s
        self.batches = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"coscale-{spec.id}")
        self._gate = FifoGate()
        self._pending: Future[np.ndarray] | None = None
        self._accepting = True
        self._dead = False
        self._reason = ""

    @property
    def pid(self) -> int | None:
        return None

    def alive(self) -> bool:
        return not self._dead

    @property
    def queue_depth(self) -> int:
        """Batches this replica holds: the running one plus those waiting for it."""
        return self._gate.depth

    async def infer(self, batch: Any, *, timeout_s: float | None = None) -> np.ndarray:
        """Run ``batch`` on the replica's thread; ReplicaDied once killed or timed out."""
        if not self._accepting:
            raise ReplicaDied(self._reason or f"replica {self.spec.id} is stopping")
        await self._gate.acquire()
        job: Future[np.ndarray] = Future()
        try:
            if self._dead:
                raise ReplicaDied(self._reason)
            self._pending = job
            self._executor.submit(self._run, job, batch)
        except BaseException:
            self._gate.release()
            raise
        job.add_done_callback(lambda _: self._gate.release())
        limit = self.batch_timeout_s if timeout_s is None else timeout_s
        try:
            output: np.ndarray = await wait_shielded(job, limit)
        except TimeoutError:
            self._die(f"replica {self.spec.id} ran a batch past its {limit:g} s timeout")
            raise ReplicaDied(self._reason) from None
        return output

    def _run(self, job: Future[np.ndarray], batch: Any) -> None:
        if job.done():  # killed while queued
            return
        try:
            output = self.variant.predict(batch)
        except Exception as exc:
            settle(job, error=exc)
        else:
            self.batches += 1
            settle(job, result=output)

    async def ping(self, timeout_s: float = 2.0) -> bool:
        return not self._dead

    async def stop(self, *, drain: bool = True) -> None:
        """Stop taking batches; with ``drain``, finish the running and queued ones first."""
        self._accepting = False
        if drain and not self._dead:
            with contextlib.suppress(ReplicaDied):
                await self._gate.acquire()
        self._die(f"replica {self.spec.id} was stopped")

    def kill(self) -> None:
        """Simulate a crash: the running and queued batches raise ReplicaDied now."""
        self._die(f"replica {self.spec.id} was killed")

    def _die(self, reason: str) -> None:
        if self._dead:
            return
        self._dead = True
        self._accepting = False
        self._reason = reason
        self._gate.close(reason)
        if self._pending is not None:
            settle(self._pending, error=ReplicaDied(f"{reason} while holding a batch"))
        self._executor.shutdown(wait=False, cancel_futures=True)


class InProcessBackend:
    """Replicas on threads of this process (module docstring)."""

    name = "inprocess"

    def __init__(
        self,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        batch_timeout_s: float = DEFAULT_BATCH_TIMEOUT_S,
    ) -> None:
        self.max_batch = max(1, max_batch)
        self.batch_timeout_s = batch_timeout_s
        self._replicas: dict[str, InProcessReplica] = {}

    def replicas(self) -> list[InProcessReplica]:
        return list(self._replicas.values())

    async def start_replica(self, spec: ReplicaSpec) -> InProcessReplica:
        """Build and warm up the variant on a thread; ReplicaStartError if that fails."""
        current = self._replicas.get(spec.id)
        if current is not None and current.alive():
            raise ReplicaStartError(f"replica id {spec.id!r} is already running.")
        started = time.perf_counter()
        try:
            built = await asyncio.to_thread(build_and_warm, spec, self.max_batch)
        except Exception as exc:
            failure = error_info(exc)
            error = ReplicaStartError(
                f"replica {spec.id} ({spec.source} {spec.variant}) could not start: "
                f"{render_error(failure)}"
            )
            error.code = failure.get("code", "start_failed")  # type: ignore[attr-defined]
            raise error from exc
        info = {**built.info, "start_s": time.perf_counter() - started}
        replica = InProcessReplica(spec, built.variant, info, self.batch_timeout_s)
        self._replicas[spec.id] = replica
        return replica

    async def stop_replica(self, replica_id: str, *, drain: bool = True) -> None:
        replica = self._replicas.pop(replica_id, None)
        if replica is not None:
            await replica.stop(drain=drain)

    async def shutdown(self) -> None:
        replicas, self._replicas = list(self._replicas.values()), {}
        await asyncio.gather(*(r.stop(drain=True) for r in replicas))
