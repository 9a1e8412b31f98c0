"""The embedded default backend: every replica in its own worker process on this machine.

:class:`LocalBackend` implements :class:`~coscale.backends.base.Backend`. Each
:class:`LocalReplica` is one fresh interpreter, ``python -m coscale.runtime.worker``
(see that module: why not fork, why not ``multiprocessing`` "spawn"), started with
:data:`~coscale.runtime.worker.THREAD_ENV_VARS` set to ``spec.threads``; batches
travel through a pair of shared-memory segments (:mod:`coscale.runtime.shm`: the
parent writes the input segment, the worker the output segment) and a control socket
(a ``multiprocessing`` ``Connection``) that carries only descriptors (batch id,
shape, dtype, offset).

Threads. ``ReplicaSpec.threads`` is the replica's intra-op thread count, decided by the
caller; the recommended default is :func:`default_threads` =
``max(1, usable cores // replicas on this machine)`` so that replicas never
oversubscribe the cores (two replicas with all cores each run slower than one).

Concurrency of one replica. A replica runs **one batch at a time**. A second
concurrent :meth:`LocalReplica.infer` waits in the replica's own FIFO queue
(:class:`FifoGate`, usable from any event loop) until the first batch's result is
back; :attr:`LocalReplica.queue_depth` tells how many batches the replica holds
(running + waiting). The gate is released only when the worker has answered (or
died), even if the caller was cancelled meanwhile, so a batch never overwrites the
input segment while the worker still reads it.

Failure detection.

* **Death** (crash, OOM kill, :meth:`LocalReplica.kill`): a reader thread per replica
  waits on the worker's two channels *and* its pidfd (readable once the process has
  exited), so a worker that dies while holding a batch fails that batch with
  :class:`~coscale.backends.base.ReplicaDied` within milliseconds — no timeout involved.
* **Hang** (a batch that never returns): every batch has a timeout
  (``batch_timeout_s``, default :data:`DEFAULT_BATCH_TIMEOUT_S` 30 s, overridable per
  call); past it the parent SIGKILLs the worker and raises ``ReplicaDied`` for that batch.
  Pings are answered by a separate worker thread, so :meth:`LocalReplica.ping` tells a
  *live* process from a dead or frozen one, not a slow batch from a hung one.
* **Errors in predict** (bad input that got past validation) come back as that
  batch's exception — :class:`~coscale.errors.CoscaleError` subclasses as themselves,
  others as :class:`~coscale.runtime.worker.WorkerError` — and the worker lives on.

Warm standby (``LocalSettings.standby``; on unless the environment variable
:data:`STANDBY_ENV`, ``COSCALE_LOCAL_STANDBY``, is ``0``). A cold start spends about 2 s
importing torch, ONNX Runtime and scikit-learn in the fresh interpreter before it even
reads the model — on a loaded machine, at the workers' low priority, several seconds —
which is most of the time a killed replica waits for its replacement. So the backend
keeps, per thread count ``t``, at most one *standby*: a worker process spawned with its
thread variables set to ``t`` and the flag ``--standby``, sent ``("prepare", source,
nice)`` (see :mod:`coscale.runtime.worker`: it lowers its priority, imports the family
of ``source`` and primes its data, then waits). The algorithm:

1. ``start_replica(spec)`` takes the standby of ``spec.threads`` if there is one whose
   process is alive, and sends it ``(spec, options)`` instead of spawning a process; it
   builds the variant (reusing the imported family when ``spec.source`` matches — the
   standby was prepared for the last source started with that thread count) and
   reports READY with ``info["standby"] = True``. No standby (the first start of a
   shape, or two starts at once), or one that died or refuses the message: a cold
   spawn, exactly as without standbys.
2. After a start *succeeds* (not when it failed, nor when its caller gave up), a new
   standby for ``spec.threads`` prepared for ``spec.source`` is spawned on a thread of
   its own, unless the shape already has one — so the standby's imports never compete
   with the replica start they would speed up. They run in ``SCHED_IDLE`` where the
   worker may leave that class again (:func:`coscale.runtime.worker.idle_class`), else
   at the workers' lower priority: a standby is spawned in a burst, and its imports at
   the workers' priority slowed the serving replicas 2× there.
3. :meth:`LocalBackend.shutdown` and :meth:`LocalBackend.close_now` (also at interpreter
   exit) kill and reap the standbys; a standby whose parent dies exits on end-of-file
   of its data channel, like every worker. A stopped backend spawns no new standby until
   its next ``start_replica``.

Cost: one idle interpreter per thread count in use (~250 MiB resident with torch,
constant). Measured gain: docs/benchmarks.md, "Reliability under load, faults and
overload" (chaos).

Clean-up. Every shared-memory segment of a replica is named
``cs-{parent pid}-{token}-{i|o}{generation}`` and unlinked by the parent when the
replica stops, is killed or crashes (the worker never unlinks); workers exit by
themselves when the parent dies, and segments left by a parent that was SIGKILLed are
unlinked by Python's resource tracker once the parent and its workers are gone.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from coscale.backends.base import ReplicaDied, ReplicaSpec, ReplicaStartError
from coscale.errors import CoscaleError
from coscale.runtime import shm
from coscale.runtime.worker import (
    EXIT_FAULT_CRASH,
    EXIT_ORPHANED,
    INPUT_ROLE,
    OUTPUT_ROLE,
    THREAD_ENV_VARS,
    WorkerError,
    WorkerOptions,
    rebuild_error,
    render_error,
)

__all__ = [
    "DEFAULT_BATCH_TIMEOUT_S",
    "NICE_ENV",
    "WORKER_CPUS_ENV",
    "FifoGate",
    "LocalBackend",
    "LocalReplica",
    "LocalSettings",
    "WorkerError",
    "default_threads",
    "parse_cpu_list",
    "usable_cores",
    "worker_cpus_from_env",
    "worker_nice_from_env",
]

DEFAULT_MAX_BATCH = 64
DEFAULT_BATCH_TIMEOUT_S = 30.0
#: Building a variant may export and quantize it the first time (minutes for big models).
DEFAULT_START_TIMEOUT_S = 600.0
DEFAULT_STOP_TIMEOUT_S = 30.0
#: After SIGTERM/SIGKILL, how long to wait for the process to be reaped.
KILL_GRACE_S = 5.0
#: ``0`` turns the warm standby off for backends built without ``standby=`` (A/B runs).
STANDBY_ENV = "COSCALE_LOCAL_STANDBY"

_tokens = itertools.count()


#: Environment variable naming the CPUs the worker processes run on, as a Linux CPU
#: list (``0``, ``2-3``, ``0,2-3``; unset or empty: wherever the server may run). Each
#: worker pins itself to these CPUs before it loads anything (its threads inherit the
#: mask), and :func:`usable_cores` — the core budget that replicas × threads divide — is
#: their number. With ``taskset -c 1 coscale serve …`` and ``COSCALE_WORKER_CPUS=0``, the
#: model gets core 0 to itself and the HTTP front end core 1.
WORKER_CPUS_ENV = "COSCALE_WORKER_CPUS"


def parse_cpu_list(text: str, *, name: str = WORKER_CPUS_ENV) -> tuple[int, ...]:
    """The CPUs of a Linux CPU list (``"0,2-3"`` → ``(0, 2, 3)``), sorted, no duplicates.

    Raises :class:`CoscaleError` naming ``name`` for an empty list, a malformed item, a
    range whose end is below its start, or a CPU at or above ``os.cpu_count()``."""
    cpus: set[int] = set()
    count = os.cpu_count() or 1
    for item in text.split(","):
        first, dash, last = item.strip().partition("-")
        try:
            low, high = int(first), int(last if dash else first)
        except ValueError:
            low, high = 0, -1
        if low < 0 or high < low or high >= count:
            raise CoscaleError(
                f"{name}={text!r}: {item.strip()!r} is not a CPU or a range of CPUs of this "
                f"machine (0 to {count - 1}).",
                fix=f"give a CPU list such as {name}=0 or {name}=0-{max(0, count - 2)}, or "
                "unset it.",
                code="invalid_input",
            )
        cpus.update(range(low, high + 1))
    return tuple(sorted(cpus))


def worker_cpus_from_env() -> tuple[int, ...] | None:
    """The CPUs of :data:`WORKER_CPUS_ENV`, None when it is unset or blank."""
    text = os.environ.get(WORKER_CPUS_ENV, "").strip()
    return parse_cpu_list(text) if text else None


def usable_cores() -> int:
    """Cores the replicas may use, at least 1: the CPUs of :data:`WORKER_CPUS_ENV` when
    it is set, else those this process may run on (its CPU affinity)."""
    pinned = worker_cpus_from_env()
    if pinned is not None:
        return len(pinned)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_threads(replicas: int, cores: int | None = None) -> int:
    """Intra-op threads per replica: ``max(1, cores // replicas)`` (``cores`` defaults to
    :func:`usable_cores`; ``replicas`` ≤ 0 counts as 1). More replicas than cores get 1
    thread each (and then share cores)."""
    total = usable_cores() if cores is None else max(1, cores)
    return max(1, total // max(1, replicas))


#: Nice increment of the worker processes: the server's event loop (admission, parsing,
#: answering; light, latency-critical) gets a core whenever it needs one, the workers
#: (heavy, throughput) everything it leaves. Linux's CFS weighs nice 0 against nice 10
#: about 1024 : 110, so a worker that saturates the cores no longer starves the front end
#: (measured: 429s and admitted requests waiting seconds at 3× the capacity).
WORKER_NICE = 10
#: Environment variable that sets the workers' nice increment (an integer 0–19; default
#: :data:`WORKER_NICE`). Lower it on a machine shared with other busy programs: a nice-10
#: worker then gets about a tenth of a nice-0 program's CPU share (measured: a MiniLM
#: worker next to four busy nice-0 jobs on two cores answered in seconds).
NICE_ENV = "COSCALE_WORKER_NICE"


def worker_nice_from_env() -> int:
    """The nice increment from :data:`NICE_ENV`, or :data:`WORKER_NICE` when unset.

    Raises :class:`CoscaleError` naming the variable when it is not an integer in 0–19.
    """
    text = os.environ.get(NICE_ENV, "").strip()
    if not text:
        return WORKER_NICE
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 19:
        raise CoscaleError(
            f"{NICE_ENV}={text!r} is not a nice increment (an integer from 0 to 19).",
            fix=f"unset it (default {WORKER_NICE}) or give e.g. {NICE_ENV}=0 on a shared machine.",
            code="invalid_input",
        )
    return value


@dataclass(frozen=True)
class LocalSettings:
    """Knobs of :class:`LocalBackend` (module docstring)."""

    max_batch: int = DEFAULT_MAX_BATCH
    batch_timeout_s: float = DEFAULT_BATCH_TIMEOUT_S
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S
    stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S
    worker_env: tuple[tuple[str, str], ...] = ()
    nice: int = WORKER_NICE
    standby: bool = True
    #: CPUs every worker pins itself to (None: the server's own)
    cpus: tuple[int, ...] | None = None


@dataclass
class Standby:
    """A pre-spawned worker waiting for its assignment (module docstring)."""

    process: subprocess.Popen[bytes]
    conn: Connection
    control: Connection
    threads: int
    source: str

    def alive(self) -> bool:
        return self.process.poll() is None

    def discard(self) -> None:
        """Kill it, reap it, close its channels."""
        with contextlib.suppress(OSError):
            self.process.kill()
        _join(self.process, KILL_GRACE_S)
        for channel in (self.conn, self.control):
            with contextlib.suppress(OSError):
                channel.close()


# ---------------------------------------------------------------------- gate


class FifoGate:
    """A FIFO mutex for coroutines on any event loop, releasable from any thread.

    ``await acquire()`` returns at once when free, else queues; ``release()`` hands the
    gate to the oldest waiter that is still waiting (cancelled waiters are skipped).
    ``close(reason)`` fails every waiter and every later ``acquire`` with
    :class:`ReplicaDied`. O(1) per operation (except a cancelled waiter's removal).
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._busy = False
        self._waiters: deque[Future[None]] = deque()
        self._closed: str | None = None

    @property
    def depth(self) -> int:
        """Holders and waiters: 0 idle, 1 busy, 1 + n with n waiting."""
        with self._mutex:
            return int(self._busy) + len(self._waiters)

    async def acquire(self) -> None:
        with self._mutex:
            if self._closed is not None:
                raise ReplicaDied(self._closed)
            if not self._busy:
                self._busy = True
                return
            ticket: Future[None] = Future()
            self._waiters.append(ticket)
        try:
            await asyncio.wrap_future(ticket)
        except asyncio.CancelledError:
            self._abandon(ticket)
            raise

    def _abandon(self, ticket: Future[None]) -> None:
        with self._mutex:
            if ticket in self._waiters:
                self._waiters.remove(ticket)
                return
            granted = ticket.done() and not ticket.cancelled() and ticket.exception() is None
        if granted:  # handed to us just as we were cancelled: pass it on
            self.release()

    def release(self) -> None:
        with self._mutex:
            while self._waiters:
                ticket = self._waiters.popleft()
                if ticket.set_running_or_notify_cancel():
                    ticket.set_result(None)
                    return
            self._busy = False

    def close(self, reason: str) -> None:
        with self._mutex:
            self._closed = reason
            waiters, self._waiters = list(self._waiters), deque()
        for ticket in waiters:
            if ticket.set_running_or_notify_cancel():
                ticket.set_exception(ReplicaDied(reason))


async def wait_shielded(future: Future[Any], timeout_s: float) -> Any:
    """Await a thread-side ``future`` for at most ``timeout_s`` without cancelling it: a
    caller that is cancelled or times out leaves it running (the replica still owns the
    batch), and its outcome, if nobody awaits it any more, is consumed quietly."""
    inner = asyncio.wrap_future(future)
    inner.add_done_callback(_consume)
    return await asyncio.wait_for(asyncio.shield(inner), timeout_s)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def settle(future: Future[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    """Complete ``future`` unless it already is (a no-op instead of InvalidStateError)."""
    with contextlib.suppress(InvalidStateError):
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


# ------------------------------------------------------------------- replica


class LocalReplica:
    """One worker process serving one variant (module docstring). Created by
    :meth:`LocalBackend.start_replica`; ``info`` holds what the worker reported when
    ready (``build_s``, ``warmup_s``, ``threads``, …) plus ``start_s``, the wall time
    from spawn to READY."""

    def __init__(
        self,
        spec: ReplicaSpec,
        settings: LocalSettings,
        process: subprocess.Popen[bytes],
        channels: tuple[Connection, Connection],
        prefix: str,
        info: dict[str, Any],
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.info = info
        self.batches = 0
        self.last_predict_s: float | None = None
        self._process = process
        self._conn, self._control = channels
        self._prefix = prefix
        self._inputs = shm.Writer(
            prefix, INPUT_ROLE, initial_size=int(info.get("input_bytes", 0)), owns=True
        )
        self._outputs = shm.Reader(owns=True)
        self._out_names = {info["output_segment"]} if info.get("output_segment") else set()
        self._gate = FifoGate()
        self._send_lock = threading.Lock()
        self._control_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._pending: tuple[int, Future[np.ndarray]] | None = None
        self._pings: dict[int, Future[bool]] = {}
        self._ids = itertools.count(1)
        self._accepting = True
        self._killed = False
        self._stopping = False
        self._note = ""
        self._exited = threading.Event()
        self._reader = threading.Thread(
            target=self._read_loop, name=f"coscale-replica-{spec.id}", daemon=True
        )
        self._reader.start()

    # -- start -------------------------------------------------------------

    @classmethod
    def launch(
        cls, spec: ReplicaSpec, settings: LocalSettings, standby: Standby | None = None
    ) -> LocalReplica:
        """Start the worker — ``standby``'s process if given and it takes the assignment,
        else a fresh one — and block until it is READY (or raise ReplicaStartError)."""
        prefix = shm.segment_prefix(f"r{next(_tokens)}")
        options = WorkerOptions(
            prefix, os.getpid(), settings.max_batch, settings.worker_env, settings.nice
        )
        started = time.perf_counter()
        spawned = _assign(standby, spec, options)
        process, conn, control = spawned or _spawn(spec.id, spec.threads, settings)
        try:
            if spawned is None:
                conn.send((spec, options))
            info = _await_ready(spec, process, conn, settings.start_timeout_s)
        except BaseException:
            _reap(process)
            conn.close()
            control.close()
            shm.unlink_all(prefix)
            raise
        info["start_s"] = time.perf_counter() - started
        return cls(spec, settings, process, (conn, control), prefix, info)

    # -- state -------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def alive(self) -> bool:
        return not (self._killed or self._exited.is_set()) and self._process.poll() is None

    @property
    def segment_prefix(self) -> str:
        """Name prefix of this replica's shared-memory segments (``cs-{pid}-{token}-``)."""
        return self._prefix

    @property
    def queue_depth(self) -> int:
        """Batches this replica holds: the running one plus those waiting for it."""
        return self._gate.depth

    @property
    def exitcode(self) -> int | None:
        """The worker's exit status once it has exited (negative: killed by that signal)."""
        return self._process.poll()

    # -- infer -------------------------------------------------------------

    async def infer(self, batch: Any, *, timeout_s: float | None = None) -> np.ndarray:
        """Run one batch in the worker; see the module docstring for queueing and failures.

        ``timeout_s`` (default ``settings.batch_timeout_s``) bounds the batch's run time
        once it is sent (time waiting in this replica's queue is not counted).
        """
        if not self._accepting:
            raise ReplicaDied(f"replica {self.spec.id} is stopping and takes no new batches")
        await self._gate.acquire()
        try:
            batch_id, future = self._send_batch(batch)
        except BaseException:
            self._gate.release()
            raise
        future.add_done_callback(lambda _: self._gate.release())
        limit = self.settings.batch_timeout_s if timeout_s is None else timeout_s
        try:
            output: np.ndarray = await wait_shielded(future, limit)
        except TimeoutError:
            self._note = f"batch {batch_id} ran past its {limit:g} s timeout (worker killed)"
            self.kill()
            raise ReplicaDied(self._describe_death(batch_id)) from None
        return output

    def _send_batch(self, batch: Any) -> tuple[int, Future[np.ndarray]]:
        if not self.alive():
            raise ReplicaDied(self._describe_death(None))
        batch_id = next(self._ids)
        name, descriptor = self._inputs.write(batch)
        future: Future[np.ndarray] = Future()
        with self._state_lock:
            self._pending = (batch_id, future)
        try:
            self._send(("infer", batch_id, name, descriptor))
        except OSError:
            with self._state_lock:
                self._pending = None
            raise ReplicaDied(self._describe_death(batch_id)) from None
        return batch_id, future

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._conn.send(message)

    # -- health ------------------------------------------------------------

    async def ping(self, timeout_s: float = 2.0) -> bool:
        """True when the worker process answers within ``timeout_s`` (answered by a
        worker thread of its own, so a long batch does not make it look dead)."""
        if not self.alive():
            return False
        nonce = next(self._ids)
        future: Future[bool] = Future()
        self._pings[nonce] = future
        try:
            with self._control_lock:
                self._control.send(("ping", nonce))
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except (OSError, TimeoutError):
            return False
        finally:
            self._pings.pop(nonce, None)

    # -- stop --------------------------------------------------------------

    async def stop(self, *, drain: bool = True) -> None:
        """Stop taking batches; with ``drain``, finish the running and already queued
        batches, then let the worker exit (joined within ``settings.stop_timeout_s``,
        then killed); without, terminate it now (its batches raise ReplicaDied)."""
        self._accepting = False
        self._stopping = True
        if self.alive() and drain:
            await self._request_stop()
            await asyncio.to_thread(_join, self._process, self.settings.stop_timeout_s)
        if self._process.poll() is None:
            await asyncio.to_thread(_reap, self._process)
        await asyncio.to_thread(self._exited.wait, KILL_GRACE_S)

    async def _request_stop(self) -> None:
        try:
            await self._gate.acquire()  # queued batches (accepted earlier) go first
        except ReplicaDied:
            return
        with contextlib.suppress(OSError):
            self._send(("stop",))

    def kill(self) -> None:
        """SIGKILL the worker now (chaos tests; hung batches). Its batch raises ReplicaDied."""
        self._killed = True
        self._accepting = False
        with contextlib.suppress(OSError):
            self._process.kill()

    def close_now(self) -> None:
        """Synchronous kill and clean-up (interpreter exit)."""
        self.kill()
        _reap(self._process)
        self._exited.wait(KILL_GRACE_S)

    # -- reader thread -----------------------------------------------------

    def _read_loop(self) -> None:
        """Dispatch the worker's messages until a channel closes or its pidfd says it exited;
        then take what the data channel still holds (a clean stop's last result)."""
        conn, sentinel = self._conn, _pidfd(self._process.pid)
        watched: list[Any] = [conn, self._control]
        if sentinel is not None:
            watched.append(sentinel)
        try:
            while True:
                ready = wait(watched)
                if conn in ready:
                    self._dispatch(conn.recv())
                if self._control in ready:
                    self._dispatch(self._control.recv())
                if sentinel in ready:
                    break
        except (EOFError, OSError):
            pass
        finally:
            self._drain(conn)
            if sentinel is not None:
                os.close(sentinel)
            self._on_exit()

    def _drain(self, conn: Connection) -> None:
        with contextlib.suppress(EOFError, OSError):
            while conn.poll(0):
                self._dispatch(conn.recv())

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "result":
            self._finish(message[1], lambda: self._decode(message))
        elif kind == "error":
            self._finish(message[1], lambda: _raise(rebuild_error(message[2])))
        elif kind == "pong":
            ping = self._pings.get(message[1])
            if ping is not None:
                settle(ping, result=True)

    def _decode(self, message: tuple[Any, ...]) -> np.ndarray:
        _, _, name, descriptor, predict_s = message
        if name is not None:
            self._out_names.add(name)
        self.last_predict_s = predict_s
        output: np.ndarray = self._outputs.read(name, descriptor, copy=True)
        return output

    def _finish(self, batch_id: int, produce: Any) -> None:
        with self._state_lock:
            pending = self._pending
            if pending is None or pending[0] != batch_id:
                return
            self._pending = None
        self.batches += 1
        try:
            output = produce()
        except Exception as exc:
            settle(pending[1], error=exc)
        else:
            settle(pending[1], result=output)

    def _on_exit(self) -> None:
        """The worker is gone: fail what it held, unlink its segments, close the channels."""
        _reap(self._process, wait_s=2.0, grace_s=1.0)
        with self._state_lock:
            pending, self._pending = self._pending, None
        reason = self._describe_death(pending[0] if pending else None)
        self._gate.close(reason)
        if pending is not None:
            settle(pending[1], error=ReplicaDied(reason))
        for ping in list(self._pings.values()):
            settle(ping, result=False)
        self._inputs.close()
        self._outputs.close()
        shm.unlink_all(self._prefix, known=_next_generations(self._prefix, self._out_names))
        for channel in (self._conn, self._control):
            with contextlib.suppress(OSError):
                channel.close()
        self._exited.set()

    def _describe_death(self, batch_id: int | None) -> str:
        code = self._process.poll()
        if self._note:
            why = self._note
        elif self._stopping and code == 0:
            why = "was stopped"
        elif code is None:
            why = "is not running"
        elif code < 0:
            why = f"was killed by {_signal_name(-code)}"
        elif code == EXIT_FAULT_CRASH:
            why = f"crashed (injected fault, exit code {code})"
        elif code == EXIT_ORPHANED:
            why = "exited because it lost its parent"
        else:
            why = f"exited with code {code}"
        holding = f" while holding batch {batch_id}" if batch_id is not None else ""
        return f"replica {self.spec.id} (pid {self.pid}) {why}{holding}"


def _raise(error: BaseException) -> Any:
    raise error


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _next_generations(prefix: str, names: set[str]) -> list[str]:
    """Output segment names the worker may have created: every generation up to one past
    the newest seen (it may have grown the segment and died before saying so)."""
    start = len(prefix) + len(OUTPUT_ROLE)
    seen = [int(n[start:]) for n in names if n.startswith(prefix + OUTPUT_ROLE)]
    top = max(seen, default=-1) + 1
    return [shm.segment_name(prefix, OUTPUT_ROLE, g) for g in range(top + 1)]


def _assign(
    standby: Standby | None, spec: ReplicaSpec, options: WorkerOptions
) -> tuple[subprocess.Popen[bytes], Connection, Connection] | None:
    """Hand ``spec`` to ``standby``; its process and channels, or None (then discarded)
    when there is none or it is dead or refuses the message."""
    if standby is None:
        return None
    if standby.alive():
        try:
            standby.conn.send((spec, options))
        except OSError:
            pass
        else:
            return standby.process, standby.conn, standby.control
    standby.discard()
    return None


def _spawn(
    label: str, threads: int, settings: LocalSettings, *, standby: bool = False
) -> tuple[subprocess.Popen[bytes], Connection, Connection]:
    """Start ``python -m coscale.runtime.worker`` with its ends of two socket pairs (data,
    control) and the resource tracker's fd, its thread variables set to ``threads``
    (``standby``: with ``--standby``; ``label`` names it in errors)."""
    data, data_child = socket.socketpair()
    control, control_child = socket.socketpair()
    env = {**os.environ, **dict(settings.worker_env)}
    env.update({name: str(max(1, threads)) for name in THREAD_ENV_VARS})
    fds = [data_child.fileno(), control_child.fileno()]
    command = [sys.executable, "-m", "coscale.runtime.worker", "--fd", str(fds[0])]
    command += ["--control-fd", str(fds[1])]
    if standby:
        command.append("--standby")
    if settings.cpus is not None:
        command += ["--cpus", ",".join(map(str, settings.cpus))]
    tracker_fd = resource_tracker.getfd()
    if tracker_fd is not None:
        fds.append(tracker_fd)
        command += ["--tracker-fd", str(tracker_fd)]
    try:
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, pass_fds=fds, close_fds=True
        )
    except OSError as exc:
        data.close()
        control.close()
        raise ReplicaStartError(f"replica {label}: cannot start a worker process: {exc}") from exc
    finally:
        data_child.close()
        control_child.close()
    return process, Connection(data.detach()), Connection(control.detach())


def _pidfd(pid: int) -> int | None:
    """A file descriptor readable once ``pid`` exits (Linux ≥ 5.3), else None."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        fd: int = opener(pid)
    except OSError:
        return None
    return fd


def _join(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout_s)


def _reap(
    process: subprocess.Popen[bytes],
    *,
    wait_s: float = 0.05,
    grace_s: float = KILL_GRACE_S,
) -> None:
    """Make sure ``process`` is gone: wait ``wait_s`` for it to exit by itself, then
    SIGTERM, then SIGKILL after ``grace_s``."""
    _join(process, wait_s)
    if process.poll() is not None:
        return
    with contextlib.suppress(OSError):
        process.terminate()
    _join(process, grace_s)
    if process.poll() is None:
        with contextlib.suppress(OSError):
            process.kill()
        _join(process, grace_s)


def _await_ready(
    spec: ReplicaSpec,
    process: subprocess.Popen[bytes],
    conn: Connection,
    timeout_s: float,
) -> dict[str, Any]:
    """The worker's READY info; its start error, early death or a timeout → ReplicaStartError."""
    where = f"replica {spec.id} ({spec.source} {spec.variant})"
    message: tuple[Any, ...] | None = None
    ready = wait([conn], timeout_s)
    if ready:
        with contextlib.suppress(EOFError, OSError):
            message = conn.recv()
    if message is not None and message[0] == "ready":
        return dict(message[1])
    if message is not None and message[0] == "start_error":
        error = ReplicaStartError(f"{where} could not start: {render_error(message[1])}")
        error.code = message[1].get("code", "start_failed")  # type: ignore[attr-defined]
        error.remote_traceback = message[1].get("traceback", "")  # type: ignore[attr-defined]
        raise error
    if not ready:
        raise ReplicaStartError(
            f"{where} did not become ready within {timeout_s:g} s; the worker was stopped."
        )
    _join(process, 2.0)
    code = process.poll()
    how = f"was killed by {_signal_name(-code)}" if code and code < 0 else f"exited ({code})"
    raise ReplicaStartError(f"{where} could not start: the worker {how} before it was ready.")


# ------------------------------------------------------------------- backend


class LocalBackend:
    """Replicas as worker processes on this machine (the embedded default backend).

    ``max_batch``: the largest batch expected (warm-up and the initial shared-memory
    sizes; larger batches still work, the segments grow). ``batch_timeout_s``: a batch
    running longer is a hung worker (killed, ReplicaDied). ``worker_env``: extra
    environment for the workers (e.g. the fault-injection variable of
    :mod:`coscale.runtime.worker`). ``nice``: how much lower than the server's the
    workers' CPU priority is (None: :data:`NICE_ENV` if set, else :data:`WORKER_NICE`).
    ``standby``: keep a warm standby worker per thread count (module docstring); None: on
    unless :data:`STANDBY_ENV` is ``0``. ``cpus``: the CPUs every worker pins itself to
    (None: :data:`WORKER_CPUS_ENV` if set, else the server's own; an empty or invalid list
    raises :class:`CoscaleError`).
    """

    name = "local"

    def __init__(
        self,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        batch_timeout_s: float = DEFAULT_BATCH_TIMEOUT_S,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
        stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
        worker_env: Mapping[str, str] | None = None,
        nice: int | None = None,
        standby: bool | None = None,
        cpus: Sequence[int] | None = None,
    ) -> None:
        if cpus is None:
            cpus = worker_cpus_from_env()
        elif not cpus:
            raise CoscaleError("cpus: an empty list of CPUs.", fix="give at least one CPU.")
        if nice is None:
            nice = worker_nice_from_env()
        if standby is None:
            standby = os.environ.get(STANDBY_ENV, "1").strip() != "0"
        self.settings = LocalSettings(
            max_batch=max(1, max_batch),
            batch_timeout_s=batch_timeout_s,
            start_timeout_s=start_timeout_s,
            stop_timeout_s=stop_timeout_s,
            worker_env=tuple(sorted((worker_env or {}).items())),
            nice=max(0, nice),
            standby=standby,
            cpus=None if cpus is None else tuple(sorted(set(cpus))),
        )
        self._replicas: dict[str, LocalReplica] = {}
        self._standbys: dict[int, Standby] = {}
        self._standby_lock = threading.Lock()
        self._closed = False
        atexit.register(_close_at_exit, weakref.ref(self))

    def replicas(self) -> list[LocalReplica]:
        """Replicas started by this backend and not yet stopped."""
        return list(self._replicas.values())

    async def start_replica(self, spec: ReplicaSpec) -> LocalReplica:
        """Spawn a worker for ``spec`` and return it once READY (ReplicaStartError if not).

        The blocking start runs on a thread of its own; if the caller is cancelled
        meanwhile, the replica is killed as soon as it is up, so that no worker is left
        unowned (even when the caller's event loop has closed by then)."""
        current = self._replicas.get(spec.id)
        if current is not None and current.alive():
            raise ReplicaStartError(
                f"replica id {spec.id!r} is already running (pid {current.pid})."
            )
        with self._standby_lock:
            self._closed = False
            standby = self._standbys.pop(spec.threads, None)
        launching: Future[LocalReplica] = Future()
        threading.Thread(
            target=_launch_into,
            args=(launching, spec, self.settings, standby),
            name=f"coscale-start-{spec.id}",
            daemon=True,
        ).start()
        try:
            replica = await asyncio.shield(asyncio.wrap_future(launching))
        except asyncio.CancelledError:
            launching.add_done_callback(_discard_started)
            raise
        self._replicas[spec.id] = replica
        if self.settings.standby:
            threading.Thread(
                target=self._refill,
                args=(spec.threads, spec.source),
                name=f"coscale-standby-{spec.threads}",
                daemon=True,
            ).start()
        return replica

    def standbys(self) -> list[Standby]:
        """The standby workers kept now (module docstring, "Warm standby")."""
        with self._standby_lock:
            return list(self._standbys.values())

    def _refill(self, threads: int, source: str) -> None:
        """Spawn a standby for ``threads`` prepared for ``source`` unless there is one
        (or the backend was stopped); any failure just leaves the shape without one."""
        with self._standby_lock:
            if self._closed or threads in self._standbys:
                return
        try:  # outside the lock: start_replica (on the event loop) never waits for a spawn
            process, conn, control = _spawn(
                f"standby-{threads}", threads, self.settings, standby=True
            )
        except ReplicaStartError:
            return
        standby = Standby(process, conn, control, threads, source)
        with contextlib.suppress(OSError):
            conn.send(("prepare", source, self.settings.nice))
        with self._standby_lock:
            if not self._closed and threads not in self._standbys:
                self._standbys[threads] = standby
                return
        standby.discard()  # stopped, or another refill won meanwhile

    def _drop_standbys(self) -> None:
        """Kill and reap every standby; spawn none until the next start."""
        with self._standby_lock:
            self._closed = True
            standbys, self._standbys = list(self._standbys.values()), {}
        for standby in standbys:
            standby.discard()

    async def stop_replica(self, replica_id: str, *, drain: bool = True) -> None:
        replica = self._replicas.pop(replica_id, None)
        if replica is not None:
            await replica.stop(drain=drain)

    async def shutdown(self) -> None:
        """Stop every replica (draining), concurrently."""
        await asyncio.to_thread(self._drop_standbys)
        replicas, self._replicas = list(self._replicas.values()), {}
        await asyncio.gather(*(r.stop(drain=True) for r in replicas))

    def close_now(self) -> None:
        """Kill every replica and standby and unlink the segments, synchronously."""
        self._drop_standbys()
        replicas, self._replicas = list(self._replicas.values()), {}
        for replica in replicas:
            replica.close_now()


def _launch_into(
    launching: Future[LocalReplica],
    spec: ReplicaSpec,
    settings: LocalSettings,
    standby: Standby | None = None,
) -> None:
    """:meth:`LocalReplica.launch` on a thread of its own (not the event loop's executor,
    which a closing loop waits for), its outcome into ``launching``."""
    try:
        replica = LocalReplica.launch(spec, settings, standby)
    except BaseException as exc:
        launching.set_exception(exc)
    else:
        launching.set_result(replica)


def _discard_started(launching: Future[LocalReplica]) -> None:
    """Kill a replica whose start finished after its caller gave up (runs on the
    launching thread, or here if it is already done)."""
    if launching.exception() is None:
        launching.result().close_now()


def _close_at_exit(ref: weakref.ref[LocalBackend]) -> None:
    backend = ref()
    if backend is not None:
        backend.close_now()
