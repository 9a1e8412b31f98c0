"""The M/M/c queueing-theory mode: a FIFO M/M/c queue run through the :class:`Kernel`.

It is the simulator's calibration check: the same kernel that drives cluster
simulations must reproduce the closed-form mean latency of the Erlang C model.

Model
-----
Requests arrive as a Poisson process of rate λ (i.i.d. Exponential(λ) gaps); each needs
an Exponential(μ) service time; c identical servers take waiting requests in arrival
order (FIFO, no batching, no admission limit). Latency = waiting + service.

Events: one *arrival* per request (each arrival schedules the next one, so the heap
holds one pending arrival) and one *departure* per request. Because the queue is FIFO,
a request's finish time is known when it starts service (start + its service time), so
the departure event only frees a server or hands it to the head of the queue. The
gaps and service times are drawn up front with numpy, gaps first, then service
times, from the given seeded generator: the run is a pure function of
(λ, μ, c, N, seed).

Erlang C (the reference)
------------------------
With offered load a = λ/μ and utilisation ρ = a/c < 1, the Erlang B blocking
probability follows the stable recursion B(0) = 1, B(k) = a·B(k−1) / (k + a·B(k−1))
(every term in [0, 1]: no factorials, no overflow, O(c)); then
P_wait = c·B(c) / (c − a·(1 − B(c))), Wq = P_wait / (cμ − λ) and W = Wq + 1/μ.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from coscale.errors import InvalidInputError
from coscale.sim.kernel import Kernel
from coscale.telemetry.summary import OUTCOME_CODES, RequestRecords, summarize
from coscale.types import Outcome, RunSummary

__all__ = [
    "MMCParams",
    "MMCTrace",
    "erlang_c_mean_latency",
    "erlang_c_wait_probability",
    "run_mmc",
    "simulate_mmc",
]

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class MMCParams:
    """λ (arrivals/s), μ (services/s per server), c servers, N requests; validated."""

    arrival_rate: float
    service_rate: float
    servers: int
    requests: int

    def __post_init__(self) -> None:
        validate_mmc(self.arrival_rate, self.service_rate, self.servers, self.requests)

    @property
    def utilization(self) -> float:
        return self.arrival_rate / (self.servers * self.service_rate)


@dataclass(frozen=True, slots=True, eq=False)
class MMCTrace:
    """Per-request times of one M/M/c run (seconds) and the kernel's event count."""

    arrival: F64
    start: F64
    finish: F64
    events: int


def validate_mmc(lam: float, mu: float, c: int, n: int = 1) -> None:
    """Raise :class:`InvalidInputError` unless λ > 0, μ > 0, c ≥ 1, N ≥ 1 and λ < cμ."""
    if not (lam > 0 and math.isfinite(lam)):
        raise InvalidInputError(
            f"M/M/c: arrival rate λ must be a positive number, got {lam}.",
            fix="pass --arrival-rate > 0 (requests per second).",
        )
    if not (mu > 0 and math.isfinite(mu)):
        raise InvalidInputError(
            f"M/M/c: service rate μ must be a positive number, got {mu}.",
            fix="pass --service-rate > 0 (requests per second per server).",
        )
    if int(c) != c or c < 1:
        raise InvalidInputError(
            f"M/M/c: the number of servers c must be an integer >= 1, got {c}.",
            fix="pass --servers 1 or more.",
        )
    if int(n) != n or n < 1:
        raise InvalidInputError(
            f"M/M/c: the number of requests N must be an integer >= 1, got {n}.",
            fix="pass --requests 1 or more.",
        )
    if lam >= c * mu:
        raise InvalidInputError(
            f"M/M/c: the queue is unstable: λ = {lam} >= c·μ = {c * mu} "
            f"(utilisation {lam / (c * mu):.3f} >= 1), so latency grows without bound.",
            fix=f"lower --arrival-rate below {c * mu} or add servers "
            f"(at least {math.floor(lam / mu) + 1}).",
        )


def erlang_c_wait_probability(lam: float, mu: float, c: int) -> float:
    """P(an arrival waits) in a stable M/M/c queue (Erlang C), via Erlang B. O(c)."""
    validate_mmc(lam, mu, c)
    a = lam / mu
    b = 1.0
    for k in range(1, c + 1):
        ab = a * b
        b = ab / (k + ab)
    return c * b / (c - a * (1.0 - b))


def erlang_c_mean_latency(lam: float, mu: float, c: int) -> float:
    """Mean latency W = P_wait / (cμ − λ) + 1/μ of a stable M/M/c FIFO queue, seconds."""
    p_wait = erlang_c_wait_probability(lam, mu, c)
    return p_wait / (c * mu - lam) + 1.0 / mu


def run_mmc(params: MMCParams, rng: np.random.Generator) -> MMCTrace:
    """Simulate the queue event by event on a fresh :class:`Kernel`; return the times."""
    n, c = params.requests, params.servers
    arrivals = np.cumsum(rng.exponential(1.0 / params.arrival_rate, n))
    services = rng.exponential(1.0 / params.service_rate, n)
    arr: list[float] = arrivals.tolist()
    svc: list[float] = services.tolist()
    start = [0.0] * n
    finish = [0.0] * n
    kernel = Kernel()
    post = kernel.post
    now = kernel.now
    waiting: deque[int] = deque()
    push_wait = waiting.append
    pop_wait = waiting.popleft
    free = c
    nxt = 0

    def arrive() -> None:
        nonlocal free, nxt
        i = nxt
        nxt = i + 1
        if nxt < n:
            post(arr[nxt], arrive)
        if free:
            free -= 1
            t = arr[i]
            start[i] = t
            done = t + svc[i]
            finish[i] = done
            post(done, depart)
        else:
            push_wait(i)

    def depart() -> None:
        nonlocal free
        if waiting:
            j = pop_wait()
            t = now()
            start[j] = t
            done = t + svc[j]
            finish[j] = done
            post(done, depart)
        else:
            free += 1

    post(arr[0], arrive)
    kernel.run()
    return MMCTrace(arrivals, np.array(start), np.array(finish), kernel.events)


def simulate_mmc(
    arrival_rate: float,
    service_rate: float,
    servers: int,
    requests: int,
    *,
    seed: int = 0,
    warmup: int = 0,
) -> RunSummary:
    """Run an M/M/c queue and summarise it; the first ``warmup`` requests are dropped.

    Every request completes (no deadlines: ``slo_attainment`` counts all completed).
    ``extra`` carries the model (λ, μ, c, ρ), the Erlang C mean latency in ms, the
    measured waiting probability and the kernel's event count. Cost and energy are 0:
    the queue has no hardware.
    """
    params = MMCParams(arrival_rate, service_rate, servers, requests)
    if int(warmup) != warmup or not 0 <= warmup < requests:
        raise InvalidInputError(
            f"M/M/c: warm-up must be an integer in [0, requests), got {warmup}.",
            fix=f"pass a warm-up below --requests ({requests}).",
        )
    trace = run_mmc(params, np.random.default_rng(seed))
    keep = slice(warmup, None)
    kept = requests - warmup
    records = RequestRecords(
        trace.arrival[keep],
        trace.finish[keep],
        np.full(kept, OUTCOME_CODES[Outcome.COMPLETED], dtype=np.int8),
        np.full(kept, np.inf),
    )
    waited = float(np.mean(trace.start[keep] > trace.arrival[keep]))
    theory_ms = erlang_c_mean_latency(arrival_rate, service_rate, servers) * 1000.0
    extra = {
        "queue_model": "mmc",
        "arrival_rate": float(arrival_rate),
        "service_rate": float(service_rate),
        "servers": int(servers),
        "utilization": params.utilization,
        "seed": int(seed),
        "warmup": int(warmup),
        "events": trace.events,
        "wait_probability": waited,
        "erlang_c_wait_probability": erlang_c_wait_probability(arrival_rate, service_rate, servers),
        "erlang_c_mean_latency_ms": theory_ms,
    }
    return summarize(
        records,
        preset="mmc",
        scenario=f"M/M/{servers} λ={arrival_rate:g} μ={service_rate:g}",
        cost_usd=0.0,
        energy_j=0.0,
        extra=extra,
    )
