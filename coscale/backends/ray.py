"""A backend on Ray: every replica is a Ray actor, placed on a node of its catalog type.

:class:`RayBackend` implements :class:`~coscale.backends.base.Backend`, so the data plane
and the controller reconcile Ray actors exactly as they reconcile local worker processes.
Ray is imported only when this backend first connects (``import coscale.backends.ray``
starts nothing and imports no Ray); a missing Ray is a :class:`~coscale.errors.CoscaleError`
whose fix is ``pip install 'coscale[ray]'``.

Resource request of a replica
-----------------------------
:func:`resource_request` turns a :class:`~coscale.backends.base.ReplicaSpec` and its catalog
:class:`~coscale.catalog.nodes.NodeType` ``n`` into the actor's Ray options::

    num_cpus  = max(1, spec.threads)
    num_gpus  = n.accelerator_count / max(1, n.replicas_per_node)   GPU types (nvidia-*)
    resources = {"coscale-node/<n.name>": NODE_RESOURCE_REQUEST}      every type
              + {"TPU": n.accelerator_count / replicas_per_node}      TPU types (google-tpu-*)
    memory    = the variant's measured peak memory (bytes), when the caller knows it
                (``RayBackend(memory_bytes={(source, variant): bytes})``); else not reserved

The custom resource ``coscale-node/<type>`` is a *label*: every Ray node of that type
advertises :data:`NODE_RESOURCE_UNITS` (1) of it (:func:`node_resources`, e.g.
``ray start --resources='{"coscale-node/g5.xlarge": 1}'``, or the worker groups rendered
by ``coscale deploy kubernetes``), and each replica asks for
:data:`NODE_RESOURCE_REQUEST` (0.001), so a replica can only land on a node of the type
the allocation policy chose, while counting (how many replicas fit) is left to CPUs,
GPUs and memory — at most 1000 replicas per node by this resource alone. Spot and
on-demand replicas of a type ask for the same resource (spot is a price, not a place).

Local or connected
------------------
* ``address=None`` (the default): if this process already called ``ray.init`` the
  backend uses that Ray (and leaves it running at shutdown); otherwise it starts a local
  Ray sized to this machine (:func:`local_init_options`: ``num_cpus`` = the usable cores,
  no dashboard) whose one node advertises ``coscale-node/<type>`` for every catalog type
  of provider ``local`` — the node types that *are* this machine — and stops it at
  shutdown. A replica of any other type cannot be placed on a local Ray and fails at once
  with :class:`~coscale.backends.base.ReplicaStartError` naming the resource.
* ``address="auto"`` (a cluster started with ``ray start``), ``"HOST:PORT"`` (its GCS)
  or ``"ray://HOST:PORT"`` (Ray Client): connect. A replica whose resource no node
  offers *now* is left pending (an autoscaler — KubeRay's — may add such a node) until
  ``start_timeout_s`` (default :data:`DEFAULT_START_TIMEOUT_S`, 600 s), then fails.

Serving a whole Ray cluster
---------------------------
:class:`~coscale.runtime.system.ServingSystem` serves only the pools of catalog types of
provider ``local`` (the machine it runs on) and caps them by this machine's cores. On a
Ray cluster (``--address``) every pool of the scenario can run: :func:`cluster_view`
returns the catalog with the scenario's pool types marked ``provider: local`` (for
ServingSystem, "reachable from this server"; prices, power and speed-ups unchanged) and a
core budget ``cores = t × R`` where ``R = Σ max_count × replicas_per_node`` over the
pools and ``t = min over the pools' types of max(1, vcpus // replicas_per_node)``, so no
pool is capped and every replica runs ``t`` threads — a ``num_cpus`` that fits on every
node type of the scenario. ``coscale serve --backend ray --address …`` uses it; without
an address (a local Ray on this machine) the machine's own rules apply.

Connecting waits up to ``connect_timeout_s`` (default :data:`CONNECT_TIMEOUT_S`, 60 s),
retrying every :data:`CONNECT_RETRY_S` (2 s): on Kubernetes the head's ``coscale serve``
starts alongside ``ray start``.

Batches and results
-------------------
A batch (``np.ndarray``, batch axis first, or ``list[str]`` for text) is the argument of
``actor.infer.remote``: Ray serializes it into its object store (arrays above Ray's
inline limit, 100 KiB, travel as plasma objects read zero-copy by the actor; smaller
ones inline in the task), and the actor returns the variant's output array the same
way. An exception inside ``predict`` comes back as that batch's exception —
:class:`~coscale.errors.CoscaleError` subclasses as themselves, others as
:class:`~coscale.runtime.worker.WorkerError` — and the actor lives on (the local
backend's rules).

One batch at a time, per replica: the driver keeps the local backend's FIFO
(:class:`~coscale.backends.local.FifoGate`), and the actor's default concurrency group
has ``max_concurrency`` 1; :meth:`RayReplica.ping` runs in a separate concurrency group
(``health``, 1 thread), so a long batch never makes a live actor look dead.

Failures
--------
* **Death** (``ray.kill``, the worker process killed, its node lost): Ray fails the
  actor's pending calls with ``RayActorError`` (``ActorDiedError``) or, for a lost
  object, ``ObjectLostError``; the batch raises
  :class:`~coscale.backends.base.ReplicaDied` and the replica is dead from then on, so
  the data plane retries the batch elsewhere and the controller replaces the replica.
  Actors are created with ``max_restarts=0`` and ``max_task_retries=0``: coscale, not
  Ray, decides on replacements (the plan's executor is the controller).
* **Hang**: a batch past ``batch_timeout_s`` (default 30 s) kills the actor and raises
  ReplicaDied, as in the local backend.
* :meth:`RayReplica.kill` is ``ray.kill(actor, no_restart=True)``: the batch it holds
  raises ReplicaDied at once.

Threads: the actor's ``runtime_env`` sets
:data:`~coscale.runtime.worker.THREAD_ENV_VARS` to ``spec.threads`` (Ray starts a worker
process with that environment), and the build sets ``torch.set_num_threads`` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coscale.backends.base import ReplicaDied, ReplicaSpec, ReplicaStartError
from coscale.backends.local import (
    DEFAULT_BATCH_TIMEOUT_S,
    DEFAULT_MAX_BATCH,
    DEFAULT_START_TIMEOUT_S,
    FifoGate,
    settle,
    usable_cores,
    wait_shielded,
)
from coscale.catalog import Catalog, load_catalog
from coscale.catalog.nodes import NodeType
from coscale.errors import CoscaleError
from coscale.runtime.worker import (
    THREAD_ENV_VARS,
    WorkerError,
    build_and_warm,
    error_info,
    rebuild_error,
    render_error,
)

__all__ = [
    "NODE_RESOURCE_PREFIX",
    "NODE_RESOURCE_REQUEST",
    "NODE_RESOURCE_UNITS",
    "RayBackend",
    "RayReplica",
    "ReplicaActor",
    "ResourceRequest",
    "check_address",
    "cluster_view",
    "import_ray",
    "is_gpu",
    "is_tpu",
    "local_init_options",
    "memory_from_profiles",
    "node_resource",
    "node_resources",
    "ray_start_command",
    "resource_request",
]

#: Prefix of the custom resource that labels a Ray node with its catalog node type.
NODE_RESOURCE_PREFIX = "coscale-node/"
#: How much of it a node of that type advertises.
NODE_RESOURCE_UNITS = 1.0
#: How much of it one replica asks for (a presence check: ≤ 1000 replicas per node).
NODE_RESOURCE_REQUEST = 0.001
#: Ray namespace of coscale's actors.
RAY_NAMESPACE = "coscale"
#: Concurrency group of health checks (answered while a batch runs).
HEALTH_GROUP = "health"
#: How long connecting to a Ray cluster (``--address``) is retried, and how often.
CONNECT_TIMEOUT_S = 60.0
CONNECT_RETRY_S = 2.0
#: The pip extra that installs Ray.
INSTALL_FIX = "install it: pip install 'coscale[ray]' (or pip install 'ray[default]>=2.40')."


# ------------------------------------------------------------------ pure parts


def node_resource(node_type: str) -> str:
    """The custom resource that labels a Ray node of ``node_type``: ``coscale-node/<type>``."""
    return f"{NODE_RESOURCE_PREFIX}{node_type}"


def is_gpu(node: NodeType) -> bool:
    """True for NVIDIA GPU node types (``accelerator`` ``nvidia-*``, count ≥ 1)."""
    return bool(node.accelerator and node.accelerator.startswith("nvidia-"))


def is_tpu(node: NodeType) -> bool:
    """True for Google TPU node types (``accelerator`` ``google-tpu-*``)."""
    return bool(node.accelerator and node.accelerator.startswith("google-tpu"))


def node_resources(node: NodeType) -> dict[str, float]:
    """Custom resources a Ray node of type ``node`` advertises (module docstring).
    GPUs and TPUs are not listed: Ray detects them (KubeRay from the pod's limits)."""
    return {node_resource(node.name): NODE_RESOURCE_UNITS}


def ray_start_command(node: NodeType, head: str = "HEAD_IP:6379") -> str:
    """The ``ray start`` line that joins a machine of type ``node`` to a cluster."""
    resources = json.dumps(node_resources(node), separators=(",", ":"))
    return f"ray start --address={head} --resources='{resources}'"


@dataclass(frozen=True, slots=True)
class ResourceRequest:
    """A replica's Ray resource request (module docstring, "Resource request")."""

    num_cpus: float
    num_gpus: float = 0.0
    memory_bytes: int | None = None
    resources: tuple[tuple[str, float], ...] = ()

    def actor_options(self) -> dict[str, Any]:
        """Keyword arguments of ``ActorClass.options`` for this request."""
        options: dict[str, Any] = {
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "resources": dict(self.resources),
        }
        if self.memory_bytes:
            options["memory"] = self.memory_bytes
        return options


def resource_request(
    spec: ReplicaSpec, node: NodeType, memory_bytes: int | None = None
) -> ResourceRequest:
    """The Ray resources one replica of ``spec`` asks for on node type ``node`` (module
    docstring's formula). ``memory_bytes`` ≤ 0 or None reserves no memory. A ``node``
    that is not ``spec.node_type`` → ValueError (a caller bug). O(1)."""
    if node.name != spec.node_type:
        raise ValueError(f"replica {spec.id} runs on {spec.node_type}, not {node.name}")
    per_replica = node.accelerator_count / max(1, node.replicas_per_node)
    extra = {node_resource(node.name): NODE_RESOURCE_REQUEST}
    if is_tpu(node) and per_replica > 0:
        extra["TPU"] = per_replica
    return ResourceRequest(
        num_cpus=float(max(1, spec.threads)),
        num_gpus=per_replica if is_gpu(node) else 0.0,
        memory_bytes=memory_bytes if memory_bytes is not None and memory_bytes > 0 else None,
        resources=tuple(sorted(extra.items())),
    )


def check_address(address: str | None) -> str | None:
    """``None``/empty (start or reuse a local Ray), ``auto``, ``HOST:PORT`` or
    ``ray://HOST:PORT``; anything else → CoscaleError naming the accepted forms."""
    if address is None or not address.strip():
        return None
    value = address.strip()
    if value == "auto":
        return value
    rest = value.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if sep and host and port.isdigit() and 0 < int(port) < 65536 and "/" not in host:
        return value
    raise CoscaleError(
        f"--address {address!r} is not a Ray address.",
        fix="use --address auto (a cluster started with `ray start` on this machine), "
        "HOST:PORT (the head's GCS, port 6379 by default) or ray://HOST:PORT (Ray Client, "
        "port 10001); omit it to start a local Ray.",
        code="invalid_input",
    )


def local_init_options(
    cores: int, catalog: Catalog, *, namespace: str = RAY_NAMESPACE
) -> dict[str, Any]:
    """``ray.init`` keywords of the local Ray (module docstring, "Local or connected"):
    ``cores`` CPUs, no dashboard, one unit of ``coscale-node/<type>`` per local type."""
    local = [n for n in catalog if n.provider == "local"]
    resources: dict[str, float] = {}
    for node in local:
        resources.update(node_resources(node))
    return {
        "num_cpus": max(1, cores),
        "resources": resources,
        "include_dashboard": False,
        "namespace": namespace,
        "log_to_driver": False,
    }


def cluster_view(scenario: Any, catalog: Catalog) -> tuple[Catalog, int]:
    """The catalog and core budget under which ServingSystem serves every pool of
    ``scenario`` on a Ray cluster (module docstring, "Serving a whole Ray cluster").
    O(pools + catalog types)."""
    pools = list(scenario.cluster.nodes)
    nodes = {p.type: catalog.get(p.type) for p in pools}
    replicas = sum(p.limit * max(1, nodes[p.type].replicas_per_node) for p in pools)
    threads = min(max(1, n.vcpus // max(1, n.replicas_per_node)) for n in nodes.values())
    types = tuple(
        dataclasses.replace(n, provider="local") if n.name in nodes else n for n in catalog
    )
    view = Catalog(types=types, reference=catalog.reference, source=f"{catalog.source} (Ray)")
    return view, max(1, threads * max(1, replicas))


def import_ray() -> Any:
    """The ``ray`` module, imported now; CoscaleError with the install command if absent."""
    try:
        import ray
    except ImportError as exc:
        raise CoscaleError(
            f"the Ray backend needs Ray, which is not installed ({exc}).",
            fix=INSTALL_FIX,
            code="missing_dependency",
        ) from exc
    return ray


# ------------------------------------------------------------------ the actor


class ReplicaActor:
    """What runs inside the Ray actor: one built, warmed-up variant (remote class made
    by :func:`_actor_class`). Start errors are kept and reported by :meth:`ready`, so
    the driver gets the same message as from a local worker."""

    def __init__(self, spec: ReplicaSpec, max_batch: int) -> None:
        self.spec = spec
        self.variant: Any = None
        self.info: dict[str, Any] = {}
        self.error: dict[str, str] | None = None
        try:
            built = build_and_warm(spec, max_batch)
        except Exception as exc:
            self.error = error_info(exc)
        else:
            self.variant = built.variant
            self.info = built.info

    def ready(self) -> tuple[str, dict[str, Any]]:
        if self.error is not None:
            return ("start_error", self.error)
        return ("ready", self.info)

    def infer(self, batch: Any) -> Any:
        """The variant's output array, or ``("error", info)`` when ``predict`` raised."""
        try:
            return np.asarray(self.variant.predict(batch))
        except Exception as exc:
            return ("error", error_info(exc))

    def ping(self) -> int:
        return os.getpid()


_ACTOR_CLASS: Any = None
_ACTOR_LOCK = threading.Lock()


def _actor_class(ray: Any) -> Any:
    """``ray.remote(ReplicaActor)`` with a ``health`` concurrency group of 1 (made once);
    pings are sent with ``.options(concurrency_group="health")``."""
    global _ACTOR_CLASS
    with _ACTOR_LOCK:
        if _ACTOR_CLASS is None:
            _ACTOR_CLASS = ray.remote(concurrency_groups={HEALTH_GROUP: 1})(ReplicaActor)
    return _ACTOR_CLASS


# ------------------------------------------------------------------ replica


@dataclass(frozen=True)
class RaySettings:
    """Knobs of :class:`RayBackend`."""

    max_batch: int = DEFAULT_MAX_BATCH
    batch_timeout_s: float = DEFAULT_BATCH_TIMEOUT_S
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S
    worker_env: tuple[tuple[str, str], ...] = ()
    memory_bytes: Mapping[tuple[str, str], int] = field(default_factory=dict)


class RayReplica:
    """One Ray actor serving one variant (module docstring). ``info`` holds what the actor
    reported when ready (``build_s``, ``warmup_s``, ``pid``, …) plus ``start_s`` and the
    ``resources`` it asked for."""

    def __init__(
        self,
        spec: ReplicaSpec,
        actor: Any,
        ray: Any,
        settings: RaySettings,
        info: dict[str, Any],
    ) -> None:
        self.spec = spec
        self.info = info
        self.settings = settings
        self.batches = 0
        self._actor = actor
        self._ray = ray
        self._gate = FifoGate()
        self._pending: Future[np.ndarray] | None = None
        self._accepting = True
        self._dead = False
        self._reason = ""

    @property
    def pid(self) -> int | None:
        """The actor's process id (on its own node)."""
        pid = self.info.get("pid")
        return int(pid) if pid is not None else None

    @property
    def actor(self) -> Any:
        """The Ray actor handle."""
        return self._actor

    def alive(self) -> bool:
        return not self._dead

    @property
    def queue_depth(self) -> int:
        """Batches this replica holds: the running one plus those waiting for it."""
        return self._gate.depth

    async def infer(self, batch: Any, *, timeout_s: float | None = None) -> np.ndarray:
        """Run one batch on the actor; ReplicaDied if it dies, is killed or times out."""
        if not self._accepting:
            raise ReplicaDied(self._reason or f"replica {self.spec.id} is stopping")
        await self._gate.acquire()
        job: Future[np.ndarray] = Future()
        try:
            if self._dead:
                raise ReplicaDied(self._reason)
            self._pending = job
            ref = self._actor.infer.remote(batch)
            ref.future().add_done_callback(lambda done: self._on_result(job, done))
        except ReplicaDied:
            self._gate.release()
            raise
        except Exception as exc:  # submission failed: the actor is gone
            self._gate.release()
            self._die(f"replica {self.spec.id} could not take a batch: {exc}")
            raise ReplicaDied(self._reason) from exc
        job.add_done_callback(lambda _: self._gate.release())
        limit = self.settings.batch_timeout_s if timeout_s is None else timeout_s
        try:
            output: np.ndarray = await wait_shielded(job, limit)
        except TimeoutError:
            self._die(f"replica {self.spec.id} ran a batch past its {limit:g} s timeout")
            self._kill_actor()
            raise ReplicaDied(self._reason) from None
        return output

    def _on_result(self, job: Future[np.ndarray], done: Future[Any]) -> None:
        """Settle ``job`` from the actor's answer (runs on a Ray thread)."""
        try:
            value = done.result()
        except Exception as exc:
            if isinstance(exc, self._ray.exceptions.RayTaskError):
                settle(job, error=WorkerError(f"replica {self.spec.id}: {exc}"))
                return
            self._die(f"replica {self.spec.id} (pid {self.pid}) died: {_first_line(exc)}")
            settle(job, error=ReplicaDied(f"{self._reason} while holding a batch"))
            return
        if isinstance(value, tuple) and value and value[0] == "error":
            settle(job, error=rebuild_error(value[1]))
            return
        self.batches += 1
        settle(job, result=value)

    async def ping(self, timeout_s: float = 2.0) -> bool:
        """True when the actor answers within ``timeout_s`` (in its ``health`` group)."""
        if self._dead:
            return False
        try:
            ref = self._actor.ping.options(concurrency_group=HEALTH_GROUP).remote()
            await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout_s)
        except TimeoutError:
            return False
        except Exception as exc:
            self._die(f"replica {self.spec.id} (pid {self.pid}) died: {_first_line(exc)}")
            return False
        return True

    async def stop(self, *, drain: bool = True) -> None:
        """Stop taking batches; with ``drain`` finish the running and queued ones; then
        kill the actor (nothing left in it) and free its resources."""
        self._accepting = False
        if drain and not self._dead:
            with contextlib.suppress(ReplicaDied):
                await self._gate.acquire()
        self._die(f"replica {self.spec.id} was stopped")
        self._kill_actor()

    def kill(self) -> None:
        """``ray.kill`` the actor now (chaos tests): its batch raises ReplicaDied at once."""
        self._die(f"replica {self.spec.id} (pid {self.pid}) was killed")
        self._kill_actor()

    def _kill_actor(self) -> None:
        with contextlib.suppress(Exception):
            self._ray.kill(self._actor, no_restart=True)

    def _die(self, reason: str) -> None:
        if self._dead:
            return
        self._dead = True
        self._accepting = False
        self._reason = reason
        self._gate.close(reason)
        pending = self._pending
        if pending is not None:
            settle(pending, error=ReplicaDied(f"{reason} while holding a batch"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# ------------------------------------------------------------------ backend


_tokens = itertools.count()


class RayBackend:
    """Replicas as Ray actors (module docstring).

    ``address``: None (local Ray, or the one this process already started), ``auto``,
    ``HOST:PORT`` or ``ray://HOST:PORT``. ``memory_bytes``: ``{(source, variant): peak
    bytes}`` to reserve per replica (from the profiles). ``cores``: CPUs of a local Ray
    (default: the usable cores). ``worker_env``: extra environment for the actors.
    ``connect_timeout_s``: how long to retry connecting to ``address``.
    """

    name = "ray"

    def __init__(
        self,
        *,
        address: str | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        batch_timeout_s: float = DEFAULT_BATCH_TIMEOUT_S,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
        memory_bytes: Mapping[tuple[str, str], int] | None = None,
        worker_env: Mapping[str, str] | None = None,
        catalog: Catalog | None = None,
        cores: int | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.address = check_address(address)
        self.connect_timeout_s = connect_timeout_s
        self.settings = RaySettings(
            max_batch=max(1, max_batch),
            batch_timeout_s=batch_timeout_s,
            start_timeout_s=start_timeout_s,
            worker_env=tuple(sorted((worker_env or {}).items())),
            memory_bytes=dict(memory_bytes or {}),
        )
        self.catalog = catalog or load_catalog()
        self.cores = cores
        self.owns_ray = False
        self._ray: Any = None
        self._connect_lock = threading.Lock()
        self._replicas: dict[str, RayReplica] = {}

    # -- connection ---------------------------------------------------------

    def connect(self) -> Any:
        """Import Ray and connect (or start a local Ray); idempotent. Returns ``ray``."""
        with self._connect_lock:
            if self._ray is not None:
                return self._ray
            ray = import_ray()
            if not ray.is_initialized():
                if self.address is None:
                    options = local_init_options(self.cores or usable_cores(), self.catalog)
                    ray.init(**options)
                    self.owns_ray = True
                else:
                    self._connect_to(ray)
            self._ray = ray
            return ray

    def _connect_to(self, ray: Any) -> None:
        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            try:
                ray.init(address=self.address, namespace=RAY_NAMESPACE, log_to_driver=False)
                break
            except (ConnectionError, RuntimeError, ValueError) as exc:
                if time.monotonic() + CONNECT_RETRY_S <= deadline:
                    time.sleep(CONNECT_RETRY_S)
                    continue
                raise self._unreachable(exc) from exc
        self.owns_ray = False

    def _unreachable(self, exc: BaseException) -> CoscaleError:
        return CoscaleError(
            f"cannot connect to the Ray cluster at {self.address!r}: {exc}",
            fix="start one first (`ray start --head` on the head machine, then `ray start "
            "--address HEAD:6379` on the others), or omit --address to start a local Ray.",
            code="ray_unreachable",
        )

    def cluster_resources(self) -> dict[str, float]:
        """The Ray cluster's total resources (connects first)."""
        ray = self.connect()
        return dict(ray.cluster_resources())

    def _env(self, spec: ReplicaSpec) -> dict[str, str]:
        env = dict(self.settings.worker_env)
        env.update({name: str(max(1, spec.threads)) for name in THREAD_ENV_VARS})
        home = os.environ.get("COSCALE_HOME")
        if self.owns_ray and home and "COSCALE_HOME" not in env:
            env["COSCALE_HOME"] = home  # same machine: share the model cache
        return env

    # -- replicas -----------------------------------------------------------

    def replicas(self) -> list[RayReplica]:
        """Replicas started by this backend and not yet stopped."""
        return list(self._replicas.values())

    def request_for(self, spec: ReplicaSpec) -> ResourceRequest:
        """The resource request of ``spec`` (its node type from the catalog)."""
        try:
            node = self.catalog.get(spec.node_type)
        except CoscaleError as exc:
            raise ReplicaStartError(f"replica {spec.id}: {exc.render()}") from exc
        memory = self.settings.memory_bytes.get((spec.source, spec.variant))
        return resource_request(spec, node, memory)

    async def start_replica(self, spec: ReplicaSpec) -> RayReplica:
        """Create the actor, wait until it has built and warmed up its variant (READY),
        or raise ReplicaStartError (module docstring for placement and timeouts)."""
        self._replicas = {k: r for k, r in self._replicas.items() if r.alive()}  # forget dead
        if spec.id in self._replicas:
            raise ReplicaStartError(f"replica id {spec.id!r} is already running.")
        ray = await asyncio.to_thread(self.connect)
        request = self.request_for(spec)
        await asyncio.to_thread(self._check_placeable, ray, spec, request)
        loop = asyncio.get_running_loop()
        started = loop.time()
        actor = (
            _actor_class(ray)
            .options(
                **request.actor_options(),
                max_restarts=0,
                max_task_retries=0,
                runtime_env={"env_vars": self._env(spec)},
            )
            .remote(spec, self.settings.max_batch)
        )
        try:
            message = await self._await_ready(ray, actor, spec)
        except BaseException:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
            raise
        info = {
            **message,
            "start_s": loop.time() - started,
            "resources": request.actor_options(),
            "token": next(_tokens),
        }
        replica = RayReplica(spec, actor, ray, self.settings, info)
        self._replicas[spec.id] = replica
        return replica

    def _check_placeable(self, ray: Any, spec: ReplicaSpec, request: ResourceRequest) -> None:
        """On a Ray this backend started, a node-type resource nobody offers never appears:
        fail now. (Connected: an autoscaler may still add such a node; the start waits.)"""
        if not self.owns_ray:
            return
        total = ray.cluster_resources()
        missing = [name for name, _ in request.resources if name not in total]
        if missing:
            raise ReplicaStartError(
                f"replica {spec.id} asks for Ray resource {', '.join(missing)}, which the "
                f"local Ray (this machine, local node types only) does not offer; use a "
                "local node type in the scenario, or connect to a cluster with a node of "
                f"that type (--address; join it with `ray start --resources="
                f"'{{\"{node_resource(spec.node_type)}\": 1}}'`)."
            )

    async def _await_ready(self, ray: Any, actor: Any, spec: ReplicaSpec) -> dict[str, Any]:
        where = f"replica {spec.id} ({spec.source} {spec.variant} on {spec.node_type})"
        limit = self.settings.start_timeout_s
        try:
            ref = actor.ready.remote()
            kind, payload = await asyncio.wait_for(asyncio.wrap_future(ref.future()), limit)
        except TimeoutError:
            raise ReplicaStartError(
                f"{where} was not ready within {limit:g} s (no Ray node with free "
                f"{node_resource(spec.node_type)}, CPUs, GPUs or memory?); the actor was "
                "removed."
            ) from None
        except ray.exceptions.RayError as exc:
            raise ReplicaStartError(f"{where} died while starting: {_first_line(exc)}") from exc
        if kind != "ready":
            error = ReplicaStartError(f"{where} could not start: {render_error(payload)}")
            error.code = payload.get("code", "start_failed")  # type: ignore[attr-defined]
            raise error
        return dict(payload)

    async def stop_replica(self, replica_id: str, *, drain: bool = True) -> None:
        replica = self._replicas.pop(replica_id, None)
        if replica is not None:
            await replica.stop(drain=drain)

    async def shutdown(self) -> None:
        """Stop every replica (draining); stop the local Ray if this backend started it."""
        replicas, self._replicas = list(self._replicas.values()), {}
        await asyncio.gather(*(r.stop(drain=True) for r in replicas))
        if self.owns_ray and self._ray is not None:
            await asyncio.to_thread(self._ray.shutdown)
            self._ray = None
            self.owns_ray = False


def memory_from_profiles(profiles: Iterable[tuple[str, Any]]) -> dict[tuple[str, str], int]:
    """``{(source, variant): peak memory bytes}`` from ``(source, ProfileFile)`` pairs — what
    :class:`RayBackend` reserves per replica. Variants with no measured memory are left out."""
    out: dict[tuple[str, str], int] = {}
    for source, profile in profiles:
        for v in getattr(profile, "variants", ()):
            memory = int(getattr(v, "peak_memory_bytes", 0) or 0)
            if memory > 0:
                out[(source, v.name)] = memory
    return out
