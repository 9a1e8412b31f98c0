"""Benchmark: reliability under load, faults and overload (issue 7), long and short forms.

Four experiments, each against a real ``coscale serve`` subprocess on 127.0.0.1 (real
worker processes, real models), driven by ``coscale load``'s open-loop generator
(:func:`coscale.load.run_load`) in this process. The tests in
``tests/integration/test_{chaos,overload,noisy_neighbour,soak}.py`` run the short forms
through the same functions.

Counting at the client (every experiment)
-----------------------------------------
Every request of the schedule is sent (``sent``) and, after the run, every one has
either an HTTP status (``responses``, by status) or none (``lost`` = ``sent −
responses``: no answer within the client timeout, :data:`GRACE_S`, or the connection
failed). The client timeout is the grace period: the run ends only when every sent
request has been answered or has waited that long. ``lost`` must be 0.

Capacity (chaos, overload, noisy neighbour, soak)
--------------------------------------------------
Measured in the same run, before the experiment, on the same server
(:func:`measure_capacity`): a closed loop of ``concurrency`` clients gives a first
figure C, then open-loop arrivals at 1.5 × C for ``capacity_s`` seconds (doubled until
they saturate the server, at most 3 rounds); capacity = requests answered 200 /
makespan. That is the open-loop saturation
throughput of the whole path (client, HTTP, data plane, worker) on this machine at that
moment, so "70 % of capacity" means 70 % of what this server sustains here, not a
profile's figure.

1. Chaos (:func:`run_chaos`): digits-cnn, two replicas (``static`` allocation, so the
   plan keeps both), open-loop Poisson at ``load`` (0.7) × capacity for ``duration_s``;
   from ``first_kill_s``, every ``period_s`` the oldest READY replica's worker process
   is SIGKILLed (``os.kill(pid, SIGKILL)``; the pid from ``GET /v1/models``) — once the
   previous victim's replacement is READY. ``/v1/models`` is polled every
   :data:`POLL_S` after each kill: the replacement is the first replica id not listed
   before the kill; ``ready_s`` = kill → it is listed READY, ``served_s`` = kill → its
   ``batches`` > 0. Pass: success (200) ≥ 99.9 % of requests sent, lost = 0, every
   kill replaced READY within :data:`REPLACE_WITHIN_S` (5 s).
2. Overload (:func:`run_overload`): MiniLM (the model, not HTTP, is the bottleneck on a
   small CPU: a digits image costs µs, a sentence ms), one replica, open-loop Poisson at
   ``factor`` (3) × capacity, 256 connections. Pass: p99 of the admitted (200) requests
   ≤ SLO (latency from the scheduled send time), the others get 429 with p99 latency
   (from the moment the request had a connection) ≤ :data:`FAST_429_MS`, lost = 0,
   resident memory (server + workers) grows < :data:`OVERLOAD_RSS_GROWTH` between the
   first and last third of the run.
3. Noisy neighbour (:func:`run_noisy`): MiniLM, one replica, tenants ``a`` and ``b`` of
   equal weight with API keys (``Authorization: Bearer``); share = capacity × weight /
   Σ weights, capacity measured first on an anonymous server of the same model; each
   tenant's ``rate_limit_rps`` = :data:`RATE_LIMIT_HEADROOM` (1.2) × its share (burst:
   one second of it); ``--no-rate-limit``: no limits, fair queueing and admission
   control alone. First B alone at its share (baseline), then A at ``flood`` (5) × its
   share together with B at its share. Pass: B's p99 over the 200s ≤ SLO, B's requests
   answered 200 ≥ :data:`NOISY_B_SUCCESS`, lost = 0 for both.
4. Soak (:func:`run_soak`): digits-cnn, one replica, open-loop Poisson at ``load``
   (0.5) × capacity for ``duration_s``; RSS of the server and of its workers sampled
   every ``sample_s`` after a ``warmup_s``. Growth = mean of the last third / mean of
   the first third − 1, and the least-squares slope in % per minute. Pass (long form):
   growth < 5 %; the short test allows :data:`SOAK_SHORT_GROWTH`.

Resident memory (:func:`tree_rss`): ``psutil`` RSS of the server process and, summed,
of its child processes (the workers), sampled every ``sample_s`` while the load runs.

Results are printed as JSON (``--json PATH`` writes them). The machine is shared: the
client, the server and its workers share the cores, so absolute rates say little about
the hardware; the pass/fail criteria are ratios measured within one run.

Usage::

    python benchmarks/bench_reliability.py chaos --duration 120 --period 10
    python benchmarks/bench_reliability.py chaos --duration 120 --period 10 --no-standby
    python benchmarks/bench_reliability.py overload --duration 60
    python benchmarks/bench_reliability.py noisy --duration 60
    python benchmarks/bench_reliability.py soak --duration 1200
    python benchmarks/bench_reliability.py all --quick
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import yaml

from coscale.load import LoadConfig, LoadResult, RequestResult, auth_headers, run_load
from coscale.runtime.heap import freeze_startup_heap

ROOT = Path(__file__).resolve().parents[1]

#: Client timeout = the grace period after which an unanswered request counts as lost.
GRACE_S = 30.0
#: Request cap of one load run (the 20-min soak at ~175 req/s sends ~210,000).
MAX_REQUESTS = 500_000
#: Connections of the overload client and of the flooding tenant (coscale load's most).
MAX_CONNECTIONS = 256
#: Open-loop capacity probe: this many times the closed-loop figure, at most this many
#: rounds, and "saturated" when less than this share of the offered rate was served.
PROBE_FACTOR = 1.5
PROBE_ROUNDS = 3
SATURATED = 0.9
#: Seconds between polls of GET /v1/models after a kill.
POLL_S = 0.05
#: A killed replica must be replaced (READY) within this many seconds.
REPLACE_WITHIN_S = 5.0
#: Least share of requests answered 200 under chaos.
CHAOS_SUCCESS = 0.999
#: A 429 must come back within this (p99, from the send), ms.
FAST_429_MS = 250.0
#: Largest RSS growth (last third / first third − 1) under overload.
OVERLOAD_RSS_GROWTH = 0.10
#: Largest RSS growth in the soak's long form (the issue's figure) and short form.
SOAK_GROWTH = 0.05
SOAK_SHORT_GROWTH = 0.05
#: Least share of B's requests answered 200 while A floods.
NOISY_B_SUCCESS = 0.99
#: Each tenant's rate limit, as a multiple of its share (noisy neighbour).
RATE_LIMIT_HEADROOM = 1.2

STOPPED = re.compile(
    r"stopped: (?P<completed>[\d,]+) completed, (?P<failed>[\d,]+) failed, "
    r"(?P<rejected>[\d,]+) rejected, (?P<lost>[\d,]+) lost"
)

#: The two models: served name, SLO (ms), fidelity floor, max batch, pinned variant.
MODELS: dict[str, dict[str, Any]] = {
    "digits-cnn": {
        "name": "digits",
        "slo_ms": 50.0,
        "floor": 0.95,
        "max_batch": 64,
        "variant": "pruned-structured",
    },
    "minilm": {
        "name": "minilm",
        "slo_ms": 500.0,
        "floor": 0.99,
        "max_batch": 2,
        "variant": "onnx-fp32",
    },
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------ server


def scenario_dict(
    source: str,
    *,
    replicas: int,
    tenants: Sequence[dict[str, Any]] = (),
    name: str = "",
    admission: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A one-model scenario on this machine: ``replicas`` replicas of the model's pinned
    variant kept by the ``static`` allocation policy (optimized-b otherwise);
    ``admission``: deadline admission's parameters instead of the preset's defaults."""
    m = MODELS[source]
    out: dict[str, Any] = {
        "name": name or f"reliability-{m['name']}",
        "seed": 0,
        "models": [
            {
                "name": m["name"],
                "source": source,
                "slo_ms": m["slo_ms"],
                "accuracy_floor": m["floor"],
                "max_batch": m["max_batch"],
                "variants": [m["variant"]],
            }
        ],
        "cluster": {"nodes": [{"type": "local-2vcpu", "count": replicas, "max_count": replicas}]},
        "policies": {
            "preset": "optimized-b",
            "allocation": {"name": "static", "params": {"replicas": replicas}},
        },
        "workload": {"generator": {"kind": "poisson", "rate_rps": 10, "duration_s": 60}},
    }
    if tenants:
        out["tenants"] = list(tenants)
    if admission is not None:
        out["policies"]["admission"] = {"name": "deadline", "params": dict(admission)}
    return out


def ensure_profile(source: str, folder: Path) -> Path:
    """This machine's profile of ``source`` if it has the pinned variant, else a quick
    profile of that variant alone, written in ``folder``."""
    from coscale.accel.profiler import profile_family
    from coscale.accel.zoo import get_family
    from coscale.catalog.profiles import default_profile_path, load_profile, save_profile
    from coscale.errors import ProfileError

    variant = MODELS[source]["variant"]
    here = default_profile_path(source)
    with contextlib.suppress(ProfileError, OSError):
        if variant in {v.name for v in load_profile(here).variants}:
            return here
    log(f"profiling {source} ({variant}, quick mode) …")
    result = profile_family(get_family(source), variants=[variant], quick=True)
    return save_profile(result, folder / f"{source}.json")


@dataclass
class Server:
    """``coscale serve`` in a subprocess (stdout/stderr to files in ``folder``)."""

    proc: subprocess.Popen[bytes]
    base: str
    folder: Path
    model: str
    slo_ms: float

    @classmethod
    def start(
        cls,
        source: str,
        folder: Path,
        *,
        replicas: int,
        profile: Path,
        tenants: Sequence[dict[str, Any]] = (),
        env: dict[str, str] | None = None,
        admission: dict[str, Any] | None = None,
    ) -> Server:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "scenario.yaml"
        scenario = scenario_dict(source, replicas=replicas, tenants=tenants, admission=admission)
        path.write_text(yaml.safe_dump(scenario))
        port = free_port()
        command = [sys.executable, "-m", "coscale.cli", "serve", str(path), "--port", str(port)]
        proc = subprocess.Popen(
            [*command, "--profile", str(profile), "--records", str(folder / "records.parquet")],
            stdout=(folder / "serve.out").open("w"),
            stderr=(folder / "serve.err").open("w"),
            env={**os.environ, "COLUMNS": "200", **(env or {})},
            cwd=ROOT,
        )
        m = MODELS[source]
        return cls(proc, f"http://127.0.0.1:{port}", folder, m["name"], m["slo_ms"])

    def stderr(self) -> str:
        return (self.folder / "serve.err").read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.stderr()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.base + "/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout_s} s:\n{self.stderr()}")

    def stats(self, api_key: str | None = None) -> dict[str, Any]:
        """The server's own summary (GET /v1/stats): counts and latency from the data
        plane's point of view (admission to answer; no HTTP, no client)."""
        try:
            data = httpx.get(self.base + "/v1/stats", headers=auth_headers(api_key), timeout=10)
            full = data.json()
        except (httpx.HTTPError, ValueError):
            return {}
        keys = ("requests", "completed", "failed", "rejected", "lost", "latency_ms")
        return {k: full.get(k) for k in keys}

    def terminate(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """SIGTERM (drain), wait; the exit code and the server's own final counts."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        found = STOPPED.search(self.stderr())
        counts = {k: int(v.replace(",", "")) for k, v in found.groupdict().items()} if found else {}
        return {"exit_code": self.proc.returncode, "server_counts": counts}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


async def replicas_of(http: httpx.AsyncClient, model: str) -> list[dict[str, Any]]:
    """The model's replicas from GET /v1/models ([] when it cannot be read)."""
    try:
        resp = await http.get("/v1/models", timeout=5)
        for m in resp.json()["models"]:
            if m["name"] == model:
                return list(m["replicas"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        pass
    return []


# ------------------------------------------------------------------------------ memory


def tree_rss(pid: int) -> tuple[int, int, int]:
    """(RSS of ``pid``, summed RSS of its descendants, number of descendants), bytes."""
    try:
        proc = psutil.Process(pid)
        own = proc.memory_info().rss
        children = proc.children(recursive=True)
    except psutil.Error:
        return 0, 0, 0
    total = 0
    for c in children:
        with contextlib.suppress(psutil.Error):
            total += c.memory_info().rss
    return own, total, len(children)


@dataclass
class RssSampler:
    """Samples :func:`tree_rss` every ``interval_s`` (a task on the running loop)."""

    pid: int
    interval_s: float = 0.5
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        t0 = time.perf_counter()
        while True:
            own, kids, n = await asyncio.to_thread(tree_rss, self.pid)
            self.samples.append((time.perf_counter() - t0, own, kids, n))
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def summary(self) -> dict[str, Any]:
        return rss_summary(self.samples)


def growth(values: Sequence[float]) -> float:
    """mean(last third) / mean(first third) − 1 (0 for fewer than 3 values)."""
    n = len(values)
    if n < 3:
        return 0.0
    k = n // 3
    first, last = float(np.mean(values[:k])), float(np.mean(values[-k:]))
    return last / first - 1.0 if first > 0 else 0.0


def slope_pct_per_min(times: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` over ``times`` (s), in % of the mean per minute."""
    if len(values) < 3 or float(np.ptp(times)) <= 0:
        return 0.0
    a = np.polyfit(np.asarray(times), np.asarray(values, dtype=float), 1)[0]
    return float(a * 60.0 / np.mean(values) * 100.0)


def rss_summary(samples: Sequence[tuple[float, int, int, int]]) -> dict[str, Any]:
    """Growth and slope of the server's, the workers' and the total RSS."""
    if not samples:
        return {"samples": 0}
    t = [s[0] for s in samples]
    server = [s[1] for s in samples]
    workers = [s[2] for s in samples]
    total = [s[1] + s[2] for s in samples]
    mib = 1024 * 1024
    return {
        "samples": len(samples),
        "span_s": t[-1] - t[0],
        "server_mib": {"first": server[0] / mib, "last": server[-1] / mib},
        "workers_mib": {"first": workers[0] / mib, "last": workers[-1] / mib},
        "growth": {"server": growth(server), "workers": growth(workers), "total": growth(total)},
        "slope_pct_per_min": {
            "server": slope_pct_per_min(t, server),
            "workers": slope_pct_per_min(t, workers),
            "total": slope_pct_per_min(t, total),
        },
        "worker_processes": sorted({s[3] for s in samples}),
    }


# ------------------------------------------------------------------------------ load


def load_config(
    server: Server,
    *,
    rate: float,
    duration_s: float,
    seed: int,
    api_key: str | None = None,
    connections: int | None = None,
) -> LoadConfig:
    """Open-loop Poisson load; ``connections`` None: sized from the SLO (coscale load's
    default), else that many (overload: enough that no request waits for a connection
    while admitted ones hold theirs, so a 429's latency is the server's)."""
    return LoadConfig(
        url=server.base,
        model=server.model,
        rate_rps=rate,
        duration_s=duration_s,
        seed=seed,
        timeout_s=GRACE_S,
        api_key=api_key,
        connections=connections,
        max_requests=MAX_REQUESTS,
    )


async def measure_capacity(
    server: Server, *, concurrency: int, duration_s: float, api_key: str | None = None
) -> dict[str, Any]:
    """Open-loop saturation throughput (module docstring, "Capacity"): a closed loop
    for ``duration_s`` / 2 gives a first figure C; then open-loop Poisson arrivals at
    :data:`PROBE_FACTOR` × C for ``duration_s``, and capacity = requests answered 200 /
    the probe's makespan (the backlog drains within it). If that is at least
    :data:`SATURATED` (0.9) of the offered rate the server was not saturated (a closed
    loop underestimates a server whose batcher waits for company), so the probe is
    repeated at 2 × the figure, at most :data:`PROBE_ROUNDS` (3) times in all. Open loop,
    because that is how the experiments load the server and it costs the client more
    per request than a closed loop does (one task per request), on the cores it shares
    with the server."""
    closed = await run_load(
        LoadConfig(
            url=server.base,
            model=server.model,
            concurrency=concurrency,
            duration_s=duration_s / 2,
            timeout_s=GRACE_S,
            api_key=api_key,
        )
    )
    c = closed.summary
    first = c.completed / c.makespan_s if c.makespan_s > 0 else 1.0
    rate = PROBE_FACTOR * max(first, 1.0)
    probes = []
    capacity = 0.0
    for k in range(PROBE_ROUNDS):
        probe = await run_load(
            LoadConfig(
                url=server.base,
                model=server.model,
                rate_rps=rate,
                duration_s=duration_s,
                timeout_s=GRACE_S,
                seed=99 + k,
                api_key=api_key,
                connections=MAX_CONNECTIONS,
            )
        )
        s = probe.summary
        capacity = s.completed / s.makespan_s if s.makespan_s > 0 else 0.0
        probes.append({"offered_rps": rate, "served_rps": capacity, **s.extra["statuses"]})
        if capacity < SATURATED * rate:
            break
        rate = 2.0 * capacity
    return {
        "capacity_rps": capacity,
        "closed_loop_rps": first,
        "concurrency": concurrency,
        "duration_s": duration_s,
        "probes": probes,
    }


def _pct(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    arr = np.asarray(values, dtype=float)
    return {
        "n": len(values),
        "p50": float(np.percentile(arr, 50)),
        "p90": float(np.percentile(arr, 90)),
        "p99": float(np.percentile(arr, 99)),
        "max": float(arr.max()),
    }


def accounting(records: Sequence[RequestResult]) -> dict[str, Any]:
    """Client-side counts (module docstring, "Counting at the client")."""
    sent = [r for r in records if math.isfinite(r.sent)]
    answered = [r for r in sent if r.status != 0]
    statuses = Counter(str(r.status) for r in answered)
    errors = Counter(r.error for r in sent if r.status == 0)
    return {
        "planned": len(records),
        "sent": len(sent),
        "responses": len(answered),
        "lost": len(sent) - len(answered),
        # of those: never got a connection (the client's backlog; the server never saw
        # them) / went on the wire and got no answer
        "lost_in_client_backlog": sum(1 for r in sent if r.status == 0 and math.isnan(r.wired)),
        "lost_on_the_wire": sum(1 for r in sent if r.status == 0 and math.isfinite(r.wired)),
        "unsent": len(records) - len(sent),
        "statuses": dict(sorted(statuses.items())),
        "no_response_errors": dict(errors),
        "success": statuses.get("200", 0) / len(sent) if sent else 0.0,
    }


def latencies(records: Sequence[RequestResult], status: int) -> dict[str, Any]:
    """Latency (ms) of the requests answered ``status``: from the scheduled send time
    (``from_schedule``, the open-loop convention), from the actual send (``from_send``)
    and from the moment it had a connection (``from_wire``: the server's response time
    plus the network, without any wait in the client)."""
    rs = [r for r in records if r.status == status]
    return {
        "from_schedule": _pct([(r.finish - r.scheduled) * 1000 for r in rs]),
        "from_send": _pct([(r.finish - r.sent) * 1000 for r in rs]),
        "from_wire": _pct([(r.finish - r.wired) * 1000 for r in rs if math.isfinite(r.wired)]),
    }


def timeline(records: Sequence[RequestResult], bin_s: float = 1.0) -> list[dict[str, Any]]:
    """Per ``bin_s`` of scheduled send time: requests, answered 200, no answer, and the
    median latency (ms, from the schedule) of the 200s."""
    if not records:
        return []
    bins: dict[int, list[RequestResult]] = {}
    for r in records:
        bins.setdefault(int(r.scheduled // bin_s), []).append(r)
    out = []
    for k in sorted(bins):
        rs = bins[k]
        ok = [(r.finish - r.scheduled) * 1000 for r in rs if r.status == 200]
        out.append(
            {
                "t": k * bin_s,
                "n": len(rs),
                "ok": len(ok),
                "lost": sum(1 for r in rs if r.status == 0),
                "p50_ms": round(float(np.median(ok)), 1) if ok else None,
            }
        )
    return out


def dispatch_lag(records: Sequence[RequestResult]) -> dict[str, Any]:
    return _pct([(r.sent - r.scheduled) * 1000 for r in records if math.isfinite(r.sent)])


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan


# ------------------------------------------------------------------------------ chaos


@dataclass
class Kill:
    """One SIGKILL and what followed (seconds from the kill)."""

    at_s: float
    replica: str
    pid: int
    replacement: str = ""
    ready_s: float = math.nan
    served_s: float = math.nan


async def chaos_monkey(
    server: Server,
    *,
    first_s: float,
    period_s: float,
    last_s: float,
    kills: list[Kill],
    watch_s: float = 15.0,
) -> None:
    """Kill the oldest READY replica every ``period_s`` from ``first_s`` until ``last_s``
    (seconds from now), each time after the previous replacement is READY; watch each
    replacement until it has served a batch (or ``watch_s`` passed)."""
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=server.base, timeout=5) as http:
        due = first_s
        while due <= last_s:
            await asyncio.sleep(max(0.0, due - (time.perf_counter() - t0)))
            reps = await replicas_of(http, server.model)
            ready = [r for r in reps if r["state"] == "ready" and r.get("pid")]
            if len(ready) < len(reps) or not ready:  # a replacement is still starting
                due += POLL_S
                continue
            victim = min(ready, key=lambda r: r["id"])
            known = {r["id"] for r in reps}
            os.kill(int(victim["pid"]), signal.SIGKILL)
            killed_at = time.perf_counter()
            kill = Kill(killed_at - t0, victim["id"], int(victim["pid"]))
            kills.append(kill)
            while time.perf_counter() - killed_at < watch_s:
                for r in await replicas_of(http, server.model):
                    if r["id"] in known:
                        continue
                    kill.replacement = r["id"]
                    if r["state"] == "ready" and math.isnan(kill.ready_s):
                        kill.ready_s = time.perf_counter() - killed_at
                    if r.get("batches", 0) > 0 and math.isnan(kill.served_s):
                        kill.served_s = time.perf_counter() - killed_at
                if not math.isnan(kill.served_s):
                    break
                await asyncio.sleep(POLL_S)
            due = max(due + period_s, kill.at_s + 0.5)


async def run_chaos(
    folder: Path,
    *,
    profile: Path,
    duration_s: float,
    period_s: float,
    first_kill_s: float | None = None,
    load: float = 0.7,
    rate: float | None = None,
    capacity_s: float = 3.0,
    concurrency: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """Experiment 1 (module docstring); ``rate`` (req/s) overrides ``load`` × capacity."""
    server = Server.start("digits-cnn", folder, replicas=2, profile=profile)
    try:
        await asyncio.to_thread(server.wait_ready)
        cap = await measure_capacity(server, concurrency=concurrency, duration_s=capacity_s)
        rate = rate or load * cap["capacity_rps"]
        log(f"chaos: capacity {cap['capacity_rps']:.0f} req/s → {rate:.0f} req/s")
        kills: list[Kill] = []
        first = period_s / 2 if first_kill_s is None else first_kill_s
        last = duration_s - min(period_s, 6.0)  # the last replacement comes up under load
        config = load_config(server, rate=rate, duration_s=duration_s, seed=seed)
        result, _ = await asyncio.gather(
            run_load(config),
            chaos_monkey(server, first_s=first, period_s=period_s, last_s=last, kills=kills),
        )
        after = await _final_replicas(server)
        seen = await asyncio.to_thread(server.stats)
    finally:
        stop = await asyncio.to_thread(server.terminate)
    acc = accounting(result.records)
    ready = [k.ready_s for k in kills]
    return {
        "experiment": "chaos",
        "server_stats": seen,
        "load_average": load_average(),
        "capacity": cap,
        "load": load,
        "rate_rps": rate,
        "duration_s": duration_s,
        "period_s": period_s,
        "accounting": acc,
        "latency_ms_200": latencies(result.records, 200),
        "dispatch_lag_ms": dispatch_lag(result.records),
        "kills": [asdict(k) for k in kills],
        "timeline": timeline(result.records),
        "replaced_ready_s_max": max(ready) if ready else math.nan,
        "replicas_after": after,
        "server": stop,
        "summary": _summary_brief(result),
    }


async def _final_replicas(server: Server) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=server.base, timeout=5) as http:
        return [
            {k: r.get(k) for k in ("id", "state", "pid", "batches")}
            for r in await replicas_of(http, server.model)
        ]


def _summary_brief(result: LoadResult) -> dict[str, Any]:
    s = result.summary
    return {
        "requests": s.requests,
        "completed": s.completed,
        "failed": s.failed,
        "rejected": s.rejected,
        "lost": s.lost,
        "throughput_rps": s.throughput_rps,
        "server_delta": s.extra.get("server"),
    }


def chaos_passed(r: dict[str, Any], min_kills: int) -> list[str]:
    """The chaos criteria that failed (empty: passed)."""
    out = []
    acc = r["accounting"]
    if acc["lost"] or acc["unsent"]:
        out.append(f"lost {acc['lost']}, unsent {acc['unsent']}")
    if acc["success"] < CHAOS_SUCCESS:
        out.append(f"success {acc['success']:.4%} < {CHAOS_SUCCESS:.1%}: {acc['statuses']}")
    if len(r["kills"]) < min_kills:
        out.append(f"only {len(r['kills'])} kills (< {min_kills})")
    for k in r["kills"]:
        if not k["ready_s"] <= REPLACE_WITHIN_S:
            out.append(f"replica {k['replica']} not replaced within {REPLACE_WITHIN_S} s: {k}")
    if r["server"]["server_counts"].get("lost", 0) != 0:
        out.append(f"server reports lost requests: {r['server']}")
    return out


# ------------------------------------------------------------------------------ overload


async def run_overload(
    folder: Path,
    *,
    profile: Path,
    duration_s: float,
    factor: float = 3.0,
    rate: float | None = None,
    capacity_s: float = 5.0,
    concurrency: int = 4,
    seed: int = 0,
    admission: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Experiment 2 (module docstring); ``admission``: deadline admission's parameters."""
    server = Server.start("minilm", folder, replicas=1, profile=profile, admission=admission)
    try:
        await asyncio.to_thread(server.wait_ready)
        cap = await measure_capacity(server, concurrency=concurrency, duration_s=capacity_s)
        rate = rate or factor * cap["capacity_rps"]
        log(f"overload: capacity {cap['capacity_rps']:.1f} req/s → {rate:.1f} req/s")
        sampler = RssSampler(server.proc.pid)
        sampler.start()
        try:
            config = load_config(
                server, rate=rate, duration_s=duration_s, seed=seed, connections=MAX_CONNECTIONS
            )
            result = await run_load(config)
        finally:
            await sampler.stop()
        seen = await asyncio.to_thread(server.stats)
    finally:
        stop = await asyncio.to_thread(server.terminate)
    return {
        "experiment": "overload",
        "admission": admission or {},
        "server_stats": seen,
        "load_average": load_average(),
        "capacity": cap,
        "factor": factor,
        "rate_rps": rate,
        "duration_s": duration_s,
        "slo_ms": server.slo_ms,
        "accounting": accounting(result.records),
        "latency_ms_200": latencies(result.records, 200),
        "latency_ms_429": latencies(result.records, 429),
        "dispatch_lag_ms": dispatch_lag(result.records),
        "rss": sampler.summary(),
        "server": stop,
        "summary": _summary_brief(result),
    }


def overload_passed(
    r: dict[str, Any],
    max_growth: float = OVERLOAD_RSS_GROWTH,
    *,
    admitted_slo: bool = True,
    fast_429_ms: float = FAST_429_MS,
) -> list[str]:
    """What the overload run missed (empty: every criterion met). ``admitted_slo``: check
    the admitted requests' p99 against the SLO; ``fast_429_ms``: the bound on the 429s'
    p99."""
    out = []
    acc = r["accounting"]
    if acc["lost"] or acc["unsent"]:
        out.append(f"lost {acc['lost']}, unsent {acc['unsent']}")
    ok = r["latency_ms_200"]["from_schedule"]
    if not ok.get("n"):
        out.append("no request was admitted")
    elif admitted_slo and ok["p99"] > r["slo_ms"]:
        out.append(f"admitted p99 {ok['p99']:.0f} ms > SLO {r['slo_ms']:.0f} ms")
    shed = r["latency_ms_429"]["from_wire"]
    if not shed.get("n"):
        out.append(f"nothing was rejected at {r['factor']}x capacity: {acc['statuses']}")
    elif shed["p99"] > fast_429_ms:
        out.append(f"429 p99 {shed['p99']:.0f} ms > {fast_429_ms:.0f} ms")
    others = set(acc["statuses"]) - {"200", "429"}
    if others:
        out.append(f"other statuses: {acc['statuses']}")
    g = r["rss"].get("growth", {}).get("total", 0.0)
    if g >= max_growth:
        out.append(f"RSS grew {g:.1%} (>= {max_growth:.0%}): {r['rss']}")
    return out


# ------------------------------------------------------------------------------ noisy


def tenant_keys() -> dict[str, str]:
    """Fresh keys for tenants a and b (env var name → key)."""
    return {
        "COSCALE_KEY_RELIABILITY_A": secrets.token_urlsafe(32),
        "COSCALE_KEY_RELIABILITY_B": secrets.token_urlsafe(32),
    }


async def run_noisy(
    folder: Path,
    *,
    profile: Path,
    duration_s: float,
    flood: float = 5.0,
    capacity_s: float = 5.0,
    concurrency: int = 4,
    baseline_s: float | None = None,
    rate_limit: float | None = RATE_LIMIT_HEADROOM,
    seed: int = 0,
    admission: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Experiment 3 (module docstring). ``rate_limit``: each tenant's ``rate_limit_rps``
    as a multiple of its share (capacity measured first on an anonymous server of the
    same model); None: no rate limits (fair queueing and admission control alone, one
    server, capacity measured with B's key)."""
    keys = tenant_keys()
    key_a, key_b = keys["COSCALE_KEY_RELIABILITY_A"], keys["COSCALE_KEY_RELIABILITY_B"]
    tenants: list[dict[str, Any]] = [
        {"name": "a", "weight": 1.0, "key_env": "COSCALE_KEY_RELIABILITY_A"},
        {"name": "b", "weight": 1.0, "key_env": "COSCALE_KEY_RELIABILITY_B"},
    ]
    cap: dict[str, Any] = {}
    if rate_limit is not None:
        probe = Server.start("minilm", folder / "capacity", replicas=1, profile=profile)
        try:
            await asyncio.to_thread(probe.wait_ready)
            cap = await measure_capacity(probe, concurrency=concurrency, duration_s=capacity_s)
        finally:
            await asyncio.to_thread(probe.terminate)
        limit = cap["capacity_rps"] * 0.5 * rate_limit
        for t in tenants:
            t.update(rate_limit_rps=round(limit, 3), rate_burst=max(1.0, round(limit, 3)))
    server = Server.start(
        "minilm", folder, replicas=1, profile=profile, tenants=tenants, env=keys,
        admission=admission,
    )  # fmt: skip
    try:
        await asyncio.to_thread(server.wait_ready)
        await _check_keys(server, key_b)
        if rate_limit is None:
            cap = await measure_capacity(
                server, concurrency=concurrency, duration_s=capacity_s, api_key=key_b
            )
        share = cap["capacity_rps"] * 0.5  # equal weights
        log(f"noisy: capacity {cap['capacity_rps']:.1f} req/s, share {share:.1f} req/s")
        alone = await run_load(
            load_config(
                server, rate=share, duration_s=baseline_s or duration_s, seed=seed, api_key=key_b
            )
        )
        a_cfg = load_config(
            server,
            rate=flood * share,
            duration_s=duration_s,
            seed=seed + 1,
            api_key=key_a,
            connections=MAX_CONNECTIONS,
        )
        b_cfg = load_config(server, rate=share, duration_s=duration_s, seed=seed + 2, api_key=key_b)
        res_a, res_b = await asyncio.gather(run_load(a_cfg), run_load(b_cfg))
        seen = {
            "a": await asyncio.to_thread(server.stats, key_a),
            "b": await asyncio.to_thread(server.stats, key_b),
        }
    finally:
        stop = await asyncio.to_thread(server.terminate)
    return {
        "experiment": "noisy-neighbour",
        "admission": admission or {},
        "server_stats": seen,
        "load_average": load_average(),
        "capacity": cap,
        "share_rps": share,
        "flood": flood,
        "tenants": tenants,
        "duration_s": duration_s,
        "slo_ms": server.slo_ms,
        "b_alone": {
            "accounting": accounting(alone.records),
            "latency_ms_200": latencies(alone.records, 200),
        },
        "a": {
            "rate_rps": flood * share,
            "accounting": accounting(res_a.records),
            "latency_ms_200": latencies(res_a.records, 200),
        },
        "b": {
            "rate_rps": share,
            "accounting": accounting(res_b.records),
            "latency_ms_200": latencies(res_b.records, 200),
            "served_p99_ms": res_b.summary.extra.get("served_p99_ms"),
        },
        "server": stop,
    }


async def _check_keys(server: Server, key: str) -> None:
    """The server requires keys: no key → 401, the tenant's key → 200 on GET /v1/models."""
    async with httpx.AsyncClient(base_url=server.base, timeout=5) as http:
        bare = await http.get("/v1/models")
        keyed = await http.get("/v1/models", headers=auth_headers(key))
    if bare.status_code != 401 or keyed.status_code != 200:
        raise RuntimeError(
            f"the server does not authenticate tenants (no key → {bare.status_code}, "
            f"key → {keyed.status_code}): the noisy-neighbour test needs API keys"
        )


def noisy_passed(r: dict[str, Any]) -> list[str]:
    out = []
    for who in ("a", "b"):
        acc = r[who]["accounting"]
        if acc["lost"] or acc["unsent"]:
            out.append(f"tenant {who}: lost {acc['lost']}, unsent {acc['unsent']}")
    b = r["b"]
    p99 = b["latency_ms_200"]["from_schedule"].get("p99", math.inf)
    if p99 > r["slo_ms"]:
        out.append(f"B's p99 {p99:.0f} ms > SLO {r['slo_ms']:.0f} ms while A floods")
    if b["accounting"]["success"] < NOISY_B_SUCCESS:
        out.append(
            f"B served {b['accounting']['success']:.2%} (< {NOISY_B_SUCCESS:.0%}) while A "
            f"floods: {b['accounting']['statuses']}"
        )
    return out


# ------------------------------------------------------------------------------ soak


async def run_soak(
    folder: Path,
    *,
    profile: Path,
    duration_s: float,
    load: float = 0.5,
    rate: float | None = None,
    warmup_s: float = 10.0,
    sample_s: float = 1.0,
    capacity_s: float = 3.0,
    concurrency: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """Experiment 4 (module docstring); ``rate`` (req/s) overrides ``load`` × capacity."""
    server = Server.start("digits-cnn", folder, replicas=1, profile=profile)
    try:
        await asyncio.to_thread(server.wait_ready)
        cap = await measure_capacity(server, concurrency=concurrency, duration_s=capacity_s)
        rate = rate or load * cap["capacity_rps"]
        log(f"soak: capacity {cap['capacity_rps']:.0f} req/s → {rate:.0f} req/s")
        sampler = RssSampler(server.proc.pid, interval_s=sample_s)

        async def sample_later() -> None:
            await asyncio.sleep(warmup_s)
            sampler.start()

        starter = asyncio.create_task(sample_later())
        try:
            config = load_config(server, rate=rate, duration_s=duration_s, seed=seed)
            result = await run_load(config)
        finally:
            starter.cancel()
            await sampler.stop()
        seen = await asyncio.to_thread(server.stats)
    finally:
        stop = await asyncio.to_thread(server.terminate)
    return {
        "experiment": "soak",
        "server_stats": seen,
        "load_average": load_average(),
        "capacity": cap,
        "load": load,
        "rate_rps": rate,
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "accounting": accounting(result.records),
        "latency_ms_200": latencies(result.records, 200),
        "rss": sampler.summary(),
        "server": stop,
        "summary": _summary_brief(result),
    }


def soak_passed(r: dict[str, Any], max_growth: float = SOAK_GROWTH) -> list[str]:
    out = []
    acc = r["accounting"]
    if acc["lost"] or acc["unsent"]:
        out.append(f"lost {acc['lost']}, unsent {acc['unsent']}")
    for part in ("server", "workers", "total"):
        g = r["rss"].get("growth", {}).get(part, 0.0)
        if g >= max_growth:
            out.append(f"{part} RSS grew {g:.1%} (>= {max_growth:.0%})")
    return out


# ------------------------------------------------------------------------------ main


def assert_all_answered(r: dict[str, Any]) -> None:
    """What every short form checks first: the client sent every planned request and got
    an answer for each (``accounting``), and the server exited 0 having lost none."""
    acc = r["accounting"]
    assert acc["sent"] == acc["planned"] > 0
    assert acc["lost"] == 0, f"{acc['lost']} requests got no answer: {acc}"
    assert_server_clean(r)


def assert_server_clean(r: dict[str, Any]) -> None:
    """The server exited 0 and counted no request lost."""
    assert r["server"]["exit_code"] == 0
    assert r["server"]["server_counts"]["lost"] == 0


def _default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("experiment", choices=["chaos", "overload", "noisy", "soak", "all"])
    parser.add_argument("--quick", action="store_true", help="the tests' short forms")
    parser.add_argument("--duration", type=float, default=None, help="seconds of load")
    parser.add_argument("--period", type=float, default=None, help="chaos: seconds between kills")
    parser.add_argument("--rate", type=float, default=None, help="req/s instead of capacity x")
    parser.add_argument("--no-rate-limit", action="store_true", help="noisy: no tenant limits")
    parser.add_argument(
        "--admission-window",
        type=int,
        default=None,
        help="overload/noisy: deadline admission's margin window (0: no learned margin)",
    )
    parser.add_argument(
        "--admission-max-margin",
        type=float,
        default=None,
        help="overload/noisy: deadline admission's max_margin_ratio (share of the SLO)",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--folder",
        type=Path,
        default=None,
        help="server logs and per-request records (default: tmp)",
    )
    parser.add_argument(
        "--no-standby", action="store_true", help="servers without the warm standby worker"
    )
    args = parser.parse_args(argv)
    freeze_startup_heap()  # the load generator runs in this process
    if args.no_standby:  # read by the servers' LocalBackend (coscale.backends.local)
        os.environ["COSCALE_LOCAL_STANDBY"] = "0"
    import tempfile

    base = args.folder or Path(tempfile.mkdtemp(prefix="coscale-reliability-"))
    wanted = (
        ["chaos", "overload", "noisy", "soak"] if args.experiment == "all" else [args.experiment]
    )
    long = {"chaos": 120.0, "overload": 60.0, "noisy": 60.0, "soak": 1200.0}
    short = {"chaos": 40.0, "overload": 20.0, "noisy": 20.0, "soak": 60.0}
    admission: dict[str, Any] = {}
    if args.admission_window is not None:
        admission["window"] = args.admission_window
    if args.admission_max_margin is not None:
        admission["max_margin_ratio"] = args.admission_max_margin
    results: dict[str, Any] = {}
    failed = False
    for name in wanted:
        duration = args.duration or (short if args.quick else long)[name]
        source = "minilm" if name in ("overload", "noisy") else "digits-cnn"
        profile = ensure_profile(source, base)
        folder = base / name
        started = time.perf_counter()
        if name == "chaos":
            period = args.period or 10.0
            r = asyncio.run(
                run_chaos(
                    folder, profile=profile, duration_s=duration, period_s=period, rate=args.rate
                )
            )
            problems = chaos_passed(r, min_kills=max(1, int((duration - 6) // period)))
        elif name == "overload":
            r = asyncio.run(
                run_overload(
                    folder,
                    profile=profile,
                    duration_s=duration,
                    rate=args.rate,
                    admission=admission or None,
                )
            )
            problems = overload_passed(r)
        elif name == "noisy":
            r = asyncio.run(
                run_noisy(
                    folder,
                    profile=profile,
                    duration_s=duration,
                    rate_limit=None if args.no_rate_limit else RATE_LIMIT_HEADROOM,
                    admission=admission or None,
                )
            )
            problems = noisy_passed(r)
        else:
            r = asyncio.run(run_soak(folder, profile=profile, duration_s=duration, rate=args.rate))
            problems = soak_passed(r, SOAK_SHORT_GROWTH if args.quick else SOAK_GROWTH)
        r["wall_s"] = time.perf_counter() - started
        r["standby"] = os.environ.get("COSCALE_LOCAL_STANDBY", "1") != "0"
        r["passed"] = not problems
        r["problems"] = problems
        results[name] = r
        failed = failed or bool(problems)
        log(f"{name}: {'PASS' if not problems else 'FAIL: ' + '; '.join(problems)}")
    text = json.dumps(results, indent=2, default=_default)
    print(text)
    if args.json is not None:
        args.json.write_text(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
