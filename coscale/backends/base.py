"""The Backend protocol: start, call, health-check and stop replicas.

A *replica* is one loaded model variant serving batches. The data plane never
knows where it runs: in a worker process on this machine (the embedded default,
:mod:`coscale.backends.local`), in a thread of this process (for tests and the
contract tier, :mod:`coscale.backends.inprocess`), or as a Ray actor
(:mod:`coscale.backends.ray`, imported only when chosen).

Contract:

* :meth:`Backend.start_replica` returns once the replica is READY (model built,
  warmed up); a replica that cannot start raises :class:`ReplicaStartError`.
* :meth:`Replica.infer` takes a *native batch* (``np.ndarray`` with the batch axis
  first, or ``list[str]`` for text models) and returns the float32 outputs, one row
  per item. If the replica dies while holding the batch it raises
  :class:`ReplicaDied` — never hangs, never returns partial output — so the data
  plane can retry the batch elsewhere.
* :meth:`Replica.ping` is the health check: False when the replica is dead or does
  not answer within the timeout (a hung worker).
* :meth:`Replica.stop` stops accepting, finishes what it holds (``drain=True``) and
  releases its resources; :meth:`Replica.kill` is an abrupt kill (chaos tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """What to run: ``source`` is a built-in model name or a model file path
    (resolved by :func:`coscale.accel.zoo.get_family`); ``threads`` is the intra-op
    thread count of the replica (so replicas do not oversubscribe the cores)."""

    id: str
    model: str
    source: str
    variant: str
    node_type: str
    spot: bool = False
    threads: int = 1


class ReplicaDied(RuntimeError):
    """The replica crashed, was killed or stopped answering while holding a batch."""


class ReplicaStartError(RuntimeError):
    """The replica could not be started (bad model, out of memory, worker crash)."""


class Replica(Protocol):
    spec: ReplicaSpec

    @property
    def pid(self) -> int | None: ...

    def alive(self) -> bool: ...

    async def infer(self, batch: Any) -> np.ndarray: ...

    async def ping(self, timeout_s: float = 2.0) -> bool: ...

    async def stop(self, *, drain: bool = True) -> None: ...

    def kill(self) -> None: ...


class Backend(Protocol):
    name: str

    async def start_replica(self, spec: ReplicaSpec) -> Replica: ...

    async def shutdown(self) -> None: ...
