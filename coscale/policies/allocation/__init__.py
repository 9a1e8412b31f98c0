"""Allocation policies: how many replicas of which variant run on which node type.

Every policy is built from an :class:`~coscale.policies.base.AllocationContext` plus its
own named constants (keyword arguments with documented defaults) and decides purely:
``decide(snapshot, state) -> (Plan, state)``.

| name         | what                                                             |
|--------------|------------------------------------------------------------------|
| ``static``     | a fixed replica set sized for peak or mean demand (paper Baseline) |
| ``hpa``        | Kubernetes Horizontal Pod Autoscaler                             |
| ``kpa``        | Knative Pod Autoscaler (concurrency, stable/panic windows)       |
| ``rayserve``   | Ray Serve's queue-length autoscaling policy                      |
| ``predictive`` | coscale: Holt-Winters forecast + cheapest on-demand/spot mix     |
| ``oracle``     | the cost lower bound: knows the future demand                    |

:func:`make_allocation` builds one by name and raises
:class:`~coscale.errors.CoscaleError` for an unknown name or parameter.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from coscale.errors import CoscaleError
from coscale.policies.allocation.capacity import (
    LATENCY_BUDGET_FRACTION,
    DemandCurve,
    capacity_rps,
)
from coscale.policies.allocation.forecast import ForecastConfig, Forecaster, ForecastState
from coscale.policies.allocation.hpa import HpaPolicy
from coscale.policies.allocation.kpa import KpaPolicy
from coscale.policies.allocation.oracle import OraclePolicy
from coscale.policies.allocation.predictive import PredictivePolicy
from coscale.policies.allocation.rayserve import RayServePolicy
from coscale.policies.allocation.static import StaticPolicy
from coscale.policies.base import AllocationContext, AllocationPolicy

ALLOCATION: Mapping[str, Callable[..., AllocationPolicy[Any]]] = MappingProxyType(
    {
        "static": StaticPolicy,
        "hpa": HpaPolicy,
        "kpa": KpaPolicy,
        "rayserve": RayServePolicy,
        "predictive": PredictivePolicy,
        "oracle": OraclePolicy,
    }
)


def make_allocation(name: str, context: AllocationContext, **params: Any) -> AllocationPolicy[Any]:
    """Build the allocation policy ``name`` for ``context`` with ``params``.

    Raises :class:`CoscaleError` (code ``unknown_policy``) for a name not in
    :data:`ALLOCATION`, and (code ``invalid_policy_params``) for a parameter the policy
    does not take, a required one missing, or a value the policy rejects.
    """
    if name not in ALLOCATION:
        valid = ", ".join(sorted(ALLOCATION))
        raise CoscaleError(
            f"unknown allocation policy {name!r}; valid: {valid}",
            fix=f"use one of: {valid}",
            code="unknown_policy",
        )
    factory = ALLOCATION[name]
    signature = inspect.signature(factory)
    accepted = [p for p in signature.parameters if p != "context"]
    try:
        signature.bind(context, **params)
    except TypeError as exc:
        unknown = sorted(set(params) - set(accepted))
        problem = f"does not take parameter(s) {', '.join(unknown)}" if unknown else f"— {exc}"
        raise CoscaleError(
            f"allocation policy {name!r} {problem}",
            fix=f"its parameters are: {', '.join(accepted)}",
            code="invalid_policy_params",
        ) from None
    return factory(context, **params)


__all__ = [
    "ALLOCATION",
    "LATENCY_BUDGET_FRACTION",
    "DemandCurve",
    "ForecastConfig",
    "ForecastState",
    "Forecaster",
    "HpaPolicy",
    "KpaPolicy",
    "OraclePolicy",
    "PredictivePolicy",
    "RayServePolicy",
    "StaticPolicy",
    "capacity_rps",
    "make_allocation",
]
