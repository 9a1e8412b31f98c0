"""The worker process: one replica, one model variant, serving batches.

:class:`coscale.backends.local.LocalBackend` starts a worker as a fresh interpreter,
``python -m coscale.runtime.worker --fd D --control-fd C --tracker-fd M`` (no fork:
no copied locks or torch state; unlike ``multiprocessing`` "spawn" it does not re-run
the parent's ``__main__``, so scripts need no ``if __name__ == "__main__"`` guard,
and the thread variables below are in its environment before any library loads).
``D`` and ``C`` are its ends of two socket pairs (each a
:class:`~multiprocessing.connection.Connection`): the *data* channel (the first
message is ``(ReplicaSpec, WorkerOptions)``, then batches) and the *control* channel
(pings); ``M`` is the parent's ``multiprocessing`` resource tracker, shared so that
segments outliving everyone are still unlinked. In order, the worker

1. ignores SIGINT (Ctrl-C in a terminal reaches the whole process group; the parent
   decides when its workers stop and drains them), lowers its own CPU priority by
   ``WorkerOptions.nice`` (the local backend's :data:`~coscale.backends.local.WORKER_NICE`:
   the server process's event loop — admission, parsing, answering — then gets a core
   as soon as it needs one, while the workers take every cycle it leaves; without it a
   saturated worker starves the front end and even a 429 waits), applies the backend's extra
   environment, and sets :data:`THREAD_ENV_VARS` (``OMP_NUM_THREADS``,
   ``MKL_NUM_THREADS``, …; the parent already put them in its environment) to
   ``spec.threads`` — and ``torch.set_num_threads`` before and after the build when
   the family uses torch — so that N replicas on C cores run ``threads = C // N`` intra-op
   threads each instead of C each (oversubscription);
2. builds ``get_family(spec.source).build(spec.variant, threads=spec.threads)`` and
   warms it up: a batch of 1, then one of ``min(max_batch, WARMUP_BATCH)`` (8) real
   profiling inputs, whose payload per item × ``max_batch`` sizes the shared-memory
   segments (× :data:`TEXT_HEADROOM` for the input of text models, whose lengths
   vary; larger batches grow the segments later);
3. sends ``("ready", info)`` — or ``("start_error", error)`` and exits with
   :data:`EXIT_START_FAILED` when anything above failed;
4. serves. The **main thread** reads the data channel itself and runs batches one at
   a time, in order (no hand-off between threads: one wake-up per batch); a
   **control thread** answers pings on the control channel, so a long batch never
   makes a healthy worker look dead (a *hung* batch is the parent's per-batch
   timeout's job); the worker exits (:data:`EXIT_ORPHANED`) when the parent dies —
   seen as end-of-file on either channel, or by an **orphan watchdog** as a changed
   parent pid, polled every :data:`ORPHAN_POLL_S` (0.5 s) — so no worker outlives
   its server.

**Standby** (``--standby``): the local backend may start a worker *before* it has a
replica to give it (:class:`~coscale.backends.local.LocalBackend`'s warm standby). Its
first message is then ``("prepare", source, nice)``: it does step 1's signal and
priority part, imports the family of ``source`` (torch, ONNX Runtime… — about 2 s of a
cold start) and primes its data (``family.profiling_batch(1, None, 0)``: the digits
split, the tokenizer), then waits for the usual ``(ReplicaSpec, WorkerOptions)`` and
goes on with steps 1–4, reusing that family object when ``spec.source`` matches (a
failed preparation is ignored: the real start reports the error). A standby whose
parent dies exits on end-of-file like any worker. The preparation runs in Linux's
``SCHED_IDLE`` class where the process may leave it again (:func:`idle_class`): it
takes only CPU nobody else wants. A standby is spawned right after a replica started
from the previous one — in a burst, on the live cycle — and its 2 s of imports at the
workers' priority halved the two serving replicas' speed there (batches of 7 MiniLM
requests in 0.41–0.53 s instead of about 0.22 s, 19 answers late). Where leaving
``SCHED_IDLE`` is not permitted (an unprivileged process whose ``RLIMIT_NICE`` does not
cover its nice value) the class is not entered, and the preparation runs at the
workers' priority as before.

Protocol (pickled tuples; payloads go through shared memory, see
:mod:`coscale.runtime.shm`)::

    data     parent → worker  ("prepare", source, nice)   a standby's first message
                              (ReplicaSpec, WorkerOptions) first (or after "prepare")
                              ("infer", batch_id, segment_name | None, descriptor)
                              ("stop",)             after the batches sent before it: exit 0
             worker → parent  ("ready", info) | ("start_error", error)
                              ("result", batch_id, segment_name | None, descriptor, predict_s)
                              ("error", batch_id, error)   the batch failed; the worker lives on
                              ("bye",)              sent just before a clean exit
    control  parent → worker  ("ping", nonce)
             worker → parent  ("pong", nonce)

An exception inside ``predict`` (input that got past validation, a model bug) is
sent back as ``("error", …)`` for that batch only: :class:`~coscale.errors.CoscaleError`
subclasses are rebuilt as the same class in the parent (:func:`rebuild_error`), any
other exception as :class:`WorkerError` carrying the remote type and traceback.

**Fault injection** (for chaos and integration tests; real faults, not mocks): the
environment variable :data:`FAULT_ENV` (``COSCALE_WORKER_FAULT``) set to
``ACTION[:AFTER][@REPLICA_ID]`` makes the worker, after serving ``AFTER`` batches
(default 0), on the next batch

* ``hang``: block forever inside the batch (the model never returns; the channels and
  pings keep working, exactly like a deadlocked kernel), or
* ``crash``: exit at once with :data:`EXIT_FAULT_CRASH` while holding the batch.

``@REPLICA_ID`` limits the fault to that replica; several faults are separated by
commas (``"hang@a,crash:1@b"``). Pass it to one backend with
``LocalBackend(worker_env={FAULT_ENV: "hang"})`` rather than the global environment.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, NoReturn

import numpy as np

from coscale.backends.base import ReplicaSpec
from coscale.errors import CoscaleError
from coscale.runtime import shm
from coscale.runtime.heap import freeze_startup_heap

#: Environment variables that size the intra-op thread pools of OpenMP, MKL, OpenBLAS…
THREAD_ENV_VARS: tuple[str, ...] = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
#: Warm-up: one batch of 1, then one of ``min(max_batch, WARMUP_BATCH)`` items (a big
#: text model would spend seconds on a warm-up batch of 64).
WARMUP_BATCH = 8
#: Text payloads vary in length: the input segment starts at this multiple of the
#: estimate for a max batch (arrays: exactly one max batch).
TEXT_HEADROOM = 2.0
ORPHAN_POLL_S = 0.5
FAULT_ENV = "COSCALE_WORKER_FAULT"
FAULT_ACTIONS = ("hang", "crash")

EXIT_START_FAILED = 1
EXIT_ORPHANED = 3
EXIT_FAULT_CRASH = 70

#: Segment roles: the parent writes "i" (inputs), the worker writes "o" (outputs).
INPUT_ROLE = "i"
OUTPUT_ROLE = "o"


@dataclass(frozen=True)
class WorkerOptions:
    """What the parent tells a worker besides its :class:`ReplicaSpec`."""

    segment_prefix: str
    parent_pid: int
    max_batch: int = 64
    env: tuple[tuple[str, str], ...] = ()
    #: added to the worker's nice value (0: same priority as the server)
    nice: int = 0


class WorkerError(RuntimeError):
    """A batch failed inside the worker with an exception that is not a CoscaleError.

    ``remote_type`` is the exception's qualified class name, ``remote_traceback`` the
    worker-side traceback text."""

    def __init__(self, message: str, *, remote_type: str = "", remote_traceback: str = ""):
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback


# ------------------------------------------------------------------- errors


def error_info(exc: BaseException) -> dict[str, str]:
    """A picklable description of ``exc`` (class, message, CoscaleError fields, traceback)."""
    cls = type(exc)
    info = {
        "module": cls.__module__,
        "type": cls.__qualname__,
        "message": exc.message if isinstance(exc, CoscaleError) else str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }
    if isinstance(exc, CoscaleError):
        info.update(fix=exc.fix, code=exc.code, coscale="1")
    return info


def _coscale_class(info: dict[str, str]) -> type[CoscaleError]:
    """The CoscaleError subclass named in ``info`` (a coscale module), else CoscaleError."""
    if info.get("module", "").startswith("coscale."):
        try:
            found = getattr(importlib.import_module(info["module"]), info["type"], None)
        except ImportError:
            found = None
        if isinstance(found, type) and issubclass(found, CoscaleError):
            return found
    return CoscaleError


def rebuild_error(info: dict[str, str]) -> Exception:
    """The parent-side exception for a worker's :func:`error_info`."""
    if info.get("coscale"):
        cls = _coscale_class(info)
        error = cls.__new__(cls)
        CoscaleError.__init__(error, info["message"], fix=info.get("fix", ""), code=info["code"])
        return error
    return WorkerError(
        f"{info['type']}: {info['message']}",
        remote_type=f"{info['module']}.{info['type']}",
        remote_traceback=info.get("traceback", ""),
    )


def render_error(info: dict[str, str]) -> str:
    """One line for a user: a CoscaleError's message and fix, else ``Type: message``."""
    if info.get("coscale"):
        return f"{info['message']} {info.get('fix', '')}".strip()
    return f"{info['type']}: {info['message']}"


# -------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    """A fault injected on purpose (see the module docstring)."""

    action: str
    after: int = 0

    def strike(self, served: int) -> None:
        """Hang or crash now if ``served`` batches have already been served."""
        if served < self.after:
            return
        if self.action == "crash":
            os._exit(EXIT_FAULT_CRASH)
        threading.Event().wait()  # "hang": a model that never returns


def parse_fault(value: str, replica_id: str) -> Fault | None:
    """``ACTION[:AFTER][@REPLICA_ID]``, several separated by commas → the first
    :class:`Fault` for this replica, or None.

    Empty → None; faults only for other replicas → None; anything malformed →
    CoscaleError (so the replica fails to start with a clear message).
    """
    found: Fault | None = None
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        head, _, target = entry.partition("@")
        action, _, after = head.partition(":")
        if action not in FAULT_ACTIONS or (after and not after.isdigit()):
            raise CoscaleError(
                f"{FAULT_ENV}={value!r}: {entry!r} is not a fault this worker knows.",
                fix=f"Use ACTION[:AFTER][@REPLICA_ID][,...] with ACTION one of "
                f"{', '.join(FAULT_ACTIONS)}, e.g. 'hang', 'crash:3' or 'hang@digits-0'; "
                "unset it to serve normally.",
                code="bad_fault",
            )
        if found is None and (not target or target == replica_id):
            found = Fault(action, int(after or 0))
    return found


# -------------------------------------------------------------------- start


def _apply_env(threads: int, extra: tuple[tuple[str, str], ...]) -> None:
    os.environ.update(dict(extra))
    for name in THREAD_ENV_VARS:
        os.environ[name] = str(threads)
    _set_torch_threads(threads)


def _set_torch_threads(threads: int) -> None:
    """``torch.set_num_threads`` if torch is imported (a family imports it when it needs
    it, and then reads ``OMP_NUM_THREADS``, already set); inter-op threads 1."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only settable before any inter-op work
        torch.set_num_interop_threads(1)


@dataclass(frozen=True)
class Built:
    variant: Any
    info: dict[str, Any]
    input_bytes: int
    output_bytes: int


@dataclass(frozen=True)
class Prepared:
    """What a standby did before its assignment (module docstring, "Standby")."""

    source: str
    family: Any  # the ModelFamily, or None when preparing it failed
    nice: int
    prepare_s: float


def prepare(source: str, nice: int) -> Prepared:
    """A standby's preparation: ignore SIGINT, lower the priority by ``nice``, import
    the family of ``source`` and prime its data, in ``SCHED_IDLE`` where permitted
    (:func:`idle_class`). Never raises (family None on failure)."""
    started = time.perf_counter()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _lower_priority(nice)
    family: Any = None
    with idle_class():
        try:
            from coscale.accel.zoo import get_family

            family = get_family(source)
            family.profiling_batch(1, None, 0)
        except Exception:  # the assignment's own build reports it
            family = None
    return Prepared(source, family, nice, time.perf_counter() - started)


@contextlib.contextmanager
def idle_class() -> Iterator[bool]:
    """Run the block in Linux's ``SCHED_IDLE`` scheduling class (only CPU time no other
    runnable process wants), then back in ``SCHED_OTHER`` with the same nice value —
    the calling thread and every thread the block started (they inherit the class), so
    no pool thread of an imported library serves in it later; yields whether it did.
    It enters the class only after a probe (enter, leave) showed that leaving it is
    permitted; no ``SCHED_IDLE`` (not Linux) or a refused probe: the block runs as it
    is. A leave refused after the probe succeeded (it cannot happen unless the limits
    change meanwhile) ends the process with :data:`EXIT_START_FAILED` rather than serve
    in the idle class."""
    if not _can_leave_idle():
        yield False
        return
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    try:
        yield True
    finally:
        try:
            for tid in _thread_ids():
                with contextlib.suppress(ProcessLookupError):  # a thread that ended
                    if os.sched_getscheduler(tid) == os.SCHED_IDLE:
                        os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
        except OSError:
            _exit(EXIT_START_FAILED)


def _thread_ids() -> list[int]:
    """The process's thread ids (``/proc/self/task``), the calling thread first."""
    me = threading.get_native_id()
    try:
        others = [int(t) for t in os.listdir("/proc/self/task") if int(t) != me]
    except OSError:
        others = []
    return [me, *others]


def _can_leave_idle() -> bool:
    """Enter ``SCHED_IDLE`` and leave it at once; whether both were permitted."""
    idle = getattr(os, "SCHED_IDLE", None)
    if idle is None or not hasattr(os, "sched_setscheduler"):
        return False
    try:
        os.sched_setscheduler(0, idle, os.sched_param(0))
    except OSError:
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError:
        _exit(EXIT_START_FAILED)
    return True


def build_and_warm(spec: ReplicaSpec, max_batch: int, family: Any = None) -> Built:
    """Build the variant and run the warm-up batches (module docstring, steps 1–2);
    ``family``: an already imported family of ``spec.source`` (a standby's)."""
    from coscale.accel.zoo import get_family

    started = time.perf_counter()
    _set_torch_threads(spec.threads)
    family = family if family is not None else get_family(spec.source)
    variant = family.build(spec.variant, threads=spec.threads)
    _set_torch_threads(spec.threads)
    built = time.perf_counter()
    max_batch = max(1, max_batch)
    n = min(max_batch, WARMUP_BATCH)
    variant.predict(family.profiling_batch(1, None, 0))
    warm = family.profiling_batch(n, None, 1)
    output = np.asarray(variant.predict(warm))
    warmed = time.perf_counter()
    headroom = TEXT_HEADROOM if isinstance(warm, list) else 1.0
    torch = sys.modules.get("torch")
    info = {
        "pid": os.getpid(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "family": family.name,
        "variant": variant.name,
        "runtime": variant.runtime,
        "threads": spec.threads,
        "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "build_s": built - started,
        "warmup_s": warmed - built,
    }
    return Built(
        variant=variant,
        info=info,
        input_bytes=int(headroom * shm.payload_size(warm) * max_batch / n),
        output_bytes=int(shm.payload_size(output) * max_batch / n),
    )


def _lower_priority(increment: int) -> None:
    """``os.nice(increment)`` (a positive increment lowers the priority; refused → kept)."""
    if increment > 0:
        with contextlib.suppress(OSError, AttributeError):
            os.nice(increment)


def worker_main(
    conn: Connection,
    control: Connection,
    spec: ReplicaSpec,
    options: WorkerOptions,
    prepared: Prepared | None = None,
    pin_error: CoscaleError | None = None,
) -> None:
    """The worker process's entry point (see the module docstring); ``pin_error``: why it
    could not pin itself to its CPUs, reported as its start error."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _lower_priority(options.nice - (prepared.nice if prepared is not None else 0))
    _apply_env(max(1, spec.threads), options.env)
    family = prepared.family if prepared is not None and prepared.source == spec.source else None
    try:
        if pin_error is not None:
            raise pin_error
        fault = parse_fault(os.environ.get(FAULT_ENV, ""), spec.id)
        built = build_and_warm(spec, options.max_batch, family)
        if prepared is not None:
            built.info.update(standby=True, prepare_s=prepared.prepare_s)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            conn.send(("start_error", error_info(exc)))
        _exit(EXIT_START_FAILED)
    freeze_startup_heap()
    server = _Server(conn, control, spec, options, built, fault)
    server.serve()
    _exit(0)


def main(argv: list[str] | None = None) -> None:
    """``python -m coscale.runtime.worker --fd D --control-fd C [--tracker-fd M]
    [--standby]``."""
    parser = argparse.ArgumentParser(prog="coscale-worker", description=__doc__.split("\n")[0])
    parser.add_argument("--fd", type=int, required=True, help="data channel socket fd")
    parser.add_argument("--control-fd", type=int, required=True, help="control socket fd")
    parser.add_argument("--tracker-fd", type=int, default=None, help="resource tracker fd")
    parser.add_argument("--standby", action="store_true", help="a standby (expects prepare)")
    parser.add_argument("--cpus", default=None, help="comma-separated CPUs to pin itself to")
    args = parser.parse_args(argv)
    pin_error = _pin_cpus(args.cpus)
    if args.standby:  # Ctrl-C reaches the process group while it waits for "prepare"
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if args.tracker_fd is not None:
        from multiprocessing import resource_tracker

        # what multiprocessing's own spawn does: use the parent's tracker, not a new one
        resource_tracker._resource_tracker._fd = args.tracker_fd  # type: ignore[attr-defined]
    conn, control = Connection(args.fd), Connection(args.control_fd)
    prepared: Prepared | None = None
    try:
        first = conn.recv()
        if isinstance(first, tuple) and len(first) == 3 and first[0] == "prepare":
            prepared = prepare(first[1], int(first[2]))
            first = conn.recv()
        spec, options = first
    except (EOFError, OSError):
        _exit(EXIT_ORPHANED)
    worker_main(conn, control, spec, options, prepared, pin_error)


def _pin_cpus(cpus: str | None) -> CoscaleError | None:
    """Pin this process to ``cpus`` (comma-separated, from the backend's ``--cpus``) before
    anything starts a thread; the error to report at start when the kernel refuses."""
    if not cpus:
        return None
    wanted = {int(c) for c in cpus.split(",")}
    try:
        os.sched_setaffinity(0, wanted)
    except (OSError, AttributeError) as exc:
        return CoscaleError(
            f"the worker cannot run on CPUs {cpus} ({exc}).",
            fix="give COSCALE_WORKER_CPUS CPUs that this machine (or its cgroup) allows.",
            code="invalid_input",
        )
    return None


def _send(conn: Connection, message: tuple[Any, ...]) -> None:
    """Send, or exit if the parent is gone (each channel has one sending thread here)."""
    try:
        conn.send(message)
    except OSError:
        _exit(EXIT_ORPHANED)


def _recv(conn: Connection) -> tuple[Any, ...]:
    """Receive, or exit if the parent is gone (end of file)."""
    try:
        message: tuple[Any, ...] = conn.recv()
    except (EOFError, OSError):
        _exit(EXIT_ORPHANED)
    return message


def _exit(code: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


# ------------------------------------------------------------------- serve


class _Server:
    """The serving loop of a started worker: main loop, control thread, watchdog."""

    def __init__(
        self,
        conn: Connection,
        control: Connection,
        spec: ReplicaSpec,
        options: WorkerOptions,
        built: Built,
        fault: Fault | None,
    ) -> None:
        self.conn = conn
        self.control = control
        self.spec = spec
        self.options = options
        self.variant = built.variant
        self.fault = fault
        self.served = 0
        self.inputs = shm.Reader(owns=False)
        self.outputs = shm.Writer(
            options.segment_prefix, OUTPUT_ROLE, initial_size=built.output_bytes, owns=False
        )
        self.outputs.reserve(built.output_bytes)
        info = dict(built.info)
        info.update(
            input_bytes=built.input_bytes,
            output_bytes=built.output_bytes,
            output_segment=self.outputs.segment.name if self.outputs.segment else None,
        )
        _send(self.conn, ("ready", info))

    def serve(self) -> None:
        threading.Thread(target=self._answer_pings, name="coscale-control", daemon=True).start()
        threading.Thread(target=self._watch, name="coscale-watchdog", daemon=True).start()
        while (message := _recv(self.conn))[0] == "infer":
            _send(self.conn, self._run(message))
        self.outputs.close()
        self.inputs.close()
        _send(self.conn, ("bye",))
        with contextlib.suppress(OSError):
            self.conn.close()

    def _answer_pings(self) -> None:
        while True:
            message = _recv(self.control)
            if message[0] == "ping":
                _send(self.control, ("pong", message[1]))

    def _watch(self) -> None:
        while True:
            time.sleep(ORPHAN_POLL_S)
            if os.getppid() != self.options.parent_pid:
                _exit(EXIT_ORPHANED)

    def _run(self, job: tuple[Any, ...]) -> tuple[Any, ...]:
        _, batch_id, name, descriptor = job
        try:
            batch = self.inputs.read(name, descriptor, copy=False)
            if self.fault is not None:
                self.fault.strike(self.served)
            started = time.perf_counter()
            output = self.variant.predict(batch)
            predict_s = time.perf_counter() - started
            del batch  # release the views of the input segment before it may be replaced
            out_name, out_descriptor = self.outputs.write(output)
        except Exception as exc:
            return ("error", batch_id, error_info(exc))
        finally:
            self.served += 1
        return ("result", batch_id, out_name, out_descriptor, predict_s)


if __name__ == "__main__":
    # run the importable module, not this __main__ copy (pickled classes resolve to it)
    from coscale.runtime import worker as _worker

    _worker.main()
