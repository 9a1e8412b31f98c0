"""Named policy presets and the registries that build policies by name.

A :class:`PolicyBundle` names one policy of each kind (allocation, routing, batching,
variant selection, admission) with its constructor parameters. Presets:

| preset      | allocation | routing             | batching       | variant           | admission |
|-------------|------------|---------------------|----------------|-------------------|-----------|
| baseline    | static     | round-robin         | none           | fixed fp32-eager  | none      |
| optimized-a | predictive | earliest-completion | none           | fixed fp32-eager  | deadline  |
| optimized-b | predictive | earliest-completion | slo-aware      | cheapest-feasible | deadline  |
| hpa         | hpa        | round-robin         | none           | fixed fp32-eager  | none      |
| kpa         | kpa        | power-of-two, ∞ cap | none           | fixed fp32-eager  | none      |
| rayserve    | rayserve   | power-of-two, cap 5 | rayserve-batch | fixed fp32-eager  | none      |
| oracle      | oracle     | earliest-completion | slo-aware      | cheapest-feasible | deadline  |

* ``baseline``, ``optimized-a``, ``optimized-b``: the seed paper's Table 2 columns. The
  predictive presets set the burst margin at the 0.99 quantile of the forecast's errors
  (not 0.95) and hold capacity for 8 intervals (2 min) before scaling down (not 2): on
  the ServeGen trace compressed 24× these are what keep 99.5 % of requests within the
  SLO across start-ups of up to 3 min (``benchmarks/bench_presets.py``, docs). They
  react to bursts between decisions (``burst_ratio`` 1.0, burst capacity held 4 s:
  :meth:`~coscale.policies.allocation.predictive.PredictivePolicy.react`), on the 2-s
  windows' demand and at once on admission's pressure (a refusal, or a predicted finish
  beyond 15 % of the budget). Reactions place capacity only where a replica starts
  within ``burst_max_startup_s`` (10 s: a local worker or its warm standby), so the
  simulated clusters (start-ups of 90 s and more) run as without them; on the live
  cycle of ``coscale bench`` they raised optimized-b's reliability from 88–92 % to
  99.4–100 % for 24–28 % less cost than baseline instead of 42 % (docs/benchmarks.md,
  "Reacting on admission's pressure"). Turn them off with ``allocation: {name:
  predictive, params: {burst_ratio: null}}``. They keep
  no spare replica by default (``spare_replicas`` = 0): a spare (N + 1, while a model has
  traffic and its start-up exceeds its SLO, so a killed replica's load fits the
  survivors while its replacement starts — :func:`~coscale.policies.allocation.capacity.add_spares`)
  cost 40–50 % more on the simulated traces for +0.3 to +6 points of SLO attainment, and
  the local backend's warm standby replaces a killed worker in under a second. Set
  ``allocation: {name: predictive, params: {spare_replicas: 1}}`` to buy it.
* ``hpa``: a Kubernetes Deployment behind a Service — kube-proxy spreads connections
  without looking at load; round robin is its deterministic stand-in.
* ``kpa``: Knative's activator with the default ``containerConcurrency: 0`` (unlimited)
  load-balances with "random choice of 2" (power of two choices, no cap); with a
  concurrency limit it would use first-available / round robin instead. The revision's
  soft target (``autoscaling.knative.dev/target``) is set per model from its profile
  (``target: slo``, see :mod:`~coscale.policies.allocation.kpa`): Knative's default of
  100 concurrent requests (70 at 0.7 utilisation) is meant for web services, and on a
  millisecond model it lets queues grow far past the SLO before scaling.
* ``rayserve``: Ray Serve's power-of-two router with ``max_ongoing_requests`` = 5 and
  ``@serve.batch`` defaults.
* ``oracle``: the cost lower bound — the future-knowing allocation with coscale's
  routing, batching, variant choice and admission, so the cost ratio to it isolates
  the allocation policy.

Parameters that need measured data (the ``latencies`` of earliest-completion,
slo-aware and deadline) are not part of a preset: the executor that builds the
policies passes them, e.g. ``make_routing(b.routing, **b.routing_params,
latencies=latency_map(options))``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, TypeVar

from coscale.errors import CoscaleError
from coscale.policies.admission import AdmitAll, DeadlineAdmission
from coscale.policies.base import AdmissionPolicy, BatchingPolicy, RoutingPolicy
from coscale.policies.batching import (
    ClipperAimd,
    FixedBatching,
    NoBatching,
    RayServeBatch,
    SloAware,
    TritonDynamic,
)
from coscale.policies.routing import (
    EarliestCompletion,
    LatencyInverse,
    LeastOutstanding,
    PowerOfTwo,
    Prequal,
    RandomRouting,
    RoundRobin,
    WeightedRoundRobin,
)
from coscale.policies.variant import CheapestFeasible, FixedVariant, VariantPolicy

T = TypeVar("T")

ROUTING: Mapping[str, Callable[..., RoutingPolicy[Any]]] = MappingProxyType(
    {
        "round-robin": RoundRobin,
        "random": RandomRouting,
        "least-outstanding": LeastOutstanding,
        "weighted-round-robin": WeightedRoundRobin,
        "power-of-two": PowerOfTwo,
        "latency-inverse": LatencyInverse,
        "prequal": Prequal,
        "earliest-completion": EarliestCompletion,
    }
)
BATCHING: Mapping[str, Callable[..., BatchingPolicy[Any]]] = MappingProxyType(
    {
        "none": NoBatching,
        "fixed": FixedBatching,
        "triton": TritonDynamic,
        "clipper-aimd": ClipperAimd,
        "rayserve-batch": RayServeBatch,
        "slo-aware": SloAware,
    }
)
ADMISSION: Mapping[str, Callable[..., AdmissionPolicy[Any]]] = MappingProxyType(
    {"none": AdmitAll, "deadline": DeadlineAdmission}
)
VARIANT: Mapping[str, Callable[..., VariantPolicy]] = MappingProxyType(
    {"fixed": FixedVariant, "cheapest-feasible": CheapestFeasible}
)
#: Allocation policy names the presets use (the classes live in ``policies/allocation``).
ALLOCATION_NAMES = frozenset({"static", "hpa", "kpa", "rayserve", "predictive", "oracle"})

KINDS = ("allocation", "routing", "batching", "variant", "admission")


def _frozen(params: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(params))


@dataclass(frozen=True, slots=True)
class PolicyBundle:
    """One policy of each kind, by registry name, with constructor parameters."""

    allocation: str
    routing: str
    batching: str
    variant: str
    admission: str
    allocation_params: Mapping[str, Any] = field(default_factory=dict)
    routing_params: Mapping[str, Any] = field(default_factory=dict)
    batching_params: Mapping[str, Any] = field(default_factory=dict)
    variant_params: Mapping[str, Any] = field(default_factory=dict)
    admission_params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind in KINDS:
            key = f"{kind}_params"
            object.__setattr__(self, key, _frozen(getattr(self, key)))

    def params(self, kind: str) -> Mapping[str, Any]:
        """The parameters of one kind (``"routing"``, …)."""
        value: Mapping[str, Any] = getattr(self, f"{kind}_params")
        return value


_FP32 = {"variant": "fp32-eager"}
#: The predictive presets' tuning (see the module docstring).
_PREDICTIVE = {"margin_quantile": 0.99, "cooldown_intervals": 8.0, "burst_ratio": 1.0}

PRESETS: Mapping[str, PolicyBundle] = MappingProxyType(
    {
        "baseline": PolicyBundle(
            "static", "round-robin", "none", "fixed", "none", variant_params=_FP32
        ),
        "optimized-a": PolicyBundle(
            "predictive",
            "earliest-completion",
            "none",
            "fixed",
            "deadline",
            allocation_params=_PREDICTIVE,
            variant_params=_FP32,
        ),
        "optimized-b": PolicyBundle(
            "predictive",
            "earliest-completion",
            "slo-aware",
            "cheapest-feasible",
            "deadline",
            allocation_params=_PREDICTIVE,
        ),
        "hpa": PolicyBundle("hpa", "round-robin", "none", "fixed", "none", variant_params=_FP32),
        "kpa": PolicyBundle(
            "kpa",
            "power-of-two",
            "none",
            "fixed",
            "none",
            allocation_params={"target": "slo"},
            routing_params={"max_ongoing": None},
            variant_params=_FP32,
        ),
        "rayserve": PolicyBundle(
            "rayserve",
            "power-of-two",
            "rayserve-batch",
            "fixed",
            "none",
            routing_params={"max_ongoing": 5},
            batching_params={"max_batch_size": 10, "batch_wait_timeout_s": 0.01},
            variant_params=_FP32,
        ),
        "oracle": PolicyBundle(
            "oracle", "earliest-completion", "slo-aware", "cheapest-feasible", "deadline"
        ),
    }
)


def _valid_names(kind: str) -> frozenset[str]:
    registries: dict[str, Mapping[str, object]] = {
        "routing": ROUTING,
        "batching": BATCHING,
        "variant": VARIANT,
        "admission": ADMISSION,
    }
    return ALLOCATION_NAMES if kind == "allocation" else frozenset(registries[kind])


def _unknown(what: str, name: str, valid: frozenset[str]) -> CoscaleError:
    listed = ", ".join(sorted(valid))
    return CoscaleError(
        f"unknown {what} {name!r}; valid: {listed}",
        fix=f"use one of: {listed}",
        code="unknown_policy",
    )


def resolve_preset(name: str, overrides: Mapping[str, Any] | None = None) -> PolicyBundle:
    """The preset ``name`` with ``overrides`` applied.

    ``overrides`` keys are the bundle's fields: a kind (``"routing"``, …) replaces that
    policy's name — and drops the preset's parameters for that kind, which belong to
    the old policy — and ``"<kind>_params"`` is merged over that kind's parameters
    (after any name replacement). ``None`` values are ignored.

    Errors (:class:`CoscaleError`): an unknown preset (the message lists the valid ones),
    an unknown override key, or an unknown policy name for a kind.
    """
    if name not in PRESETS:
        raise _unknown("preset", name, frozenset(PRESETS))
    bundle = PRESETS[name]
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    allowed = frozenset(f.name for f in fields(PolicyBundle))
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise _unknown("preset override", bad[0], allowed)
    changes: dict[str, Any] = {}
    for kind in KINDS:
        params = dict(bundle.params(kind))
        if kind in overrides and overrides[kind] != getattr(bundle, kind):
            if overrides[kind] not in _valid_names(kind):
                raise _unknown(f"{kind} policy", str(overrides[kind]), _valid_names(kind))
            changes[kind] = overrides[kind]
            params = {}
        params.update(overrides.get(f"{kind}_params", {}))
        changes[f"{kind}_params"] = params
    return replace(bundle, **changes)


def _make(kind: str, registry: Mapping[str, Callable[..., T]], name: str, params: Any) -> T:
    if name not in registry:
        raise _unknown(f"{kind} policy", name, frozenset(registry))
    factory = registry[name]
    try:
        inspect.signature(factory).bind(**params)
    except TypeError:
        accepted = ", ".join(inspect.signature(factory).parameters) or "none"
        unknown = ", ".join(sorted(set(params) - set(inspect.signature(factory).parameters)))
        raise CoscaleError(
            f"{kind} policy {name!r} does not take parameter(s) {unknown}",
            fix=f"its parameters are: {accepted}",
            code="invalid_policy_params",
        ) from None
    return factory(**params)


def make_routing(name: str, **params: Any) -> RoutingPolicy[Any]:
    """Build a routing policy by registry name (unknown name or parameter → CoscaleError)."""
    return _make("routing", ROUTING, name, params)


def make_batching(name: str, **params: Any) -> BatchingPolicy[Any]:
    """Build a batching policy by registry name (unknown name or parameter → CoscaleError)."""
    return _make("batching", BATCHING, name, params)


def make_admission(name: str, **params: Any) -> AdmissionPolicy[Any]:
    """Build an admission policy by registry name (unknown name or parameter → CoscaleError)."""
    return _make("admission", ADMISSION, name, params)


def make_variant(name: str, **params: Any) -> VariantPolicy:
    """Build a variant policy by registry name (unknown name or parameter → CoscaleError)."""
    return _make("variant", VARIANT, name, params)
