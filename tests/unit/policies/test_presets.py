"""Presets and registries (coscale/policies/presets.py)."""

from __future__ import annotations

from typing import Any

import pytest

from coscale.errors import CoscaleError
from coscale.policies.presets import (
    ADMISSION,
    ALLOCATION_NAMES,
    BATCHING,
    PRESETS,
    ROUTING,
    VARIANT,
    PolicyBundle,
    make_admission,
    make_batching,
    make_routing,
    make_variant,
    resolve_preset,
)
from coscale.policies.routing import PowerOfTwo
from coscale.types import LatencyTable

MAKERS = {
    "routing": make_routing,
    "batching": make_batching,
    "admission": make_admission,
    "variant": make_variant,
}


def test_registry_names_match_config() -> None:
    from coscale import config

    assert frozenset(ROUTING) == config.ROUTING_POLICIES
    assert frozenset(BATCHING) == config.BATCHING_POLICIES
    assert frozenset(ADMISSION) == config.ADMISSION_POLICIES
    assert frozenset(VARIANT) == config.VARIANT_POLICIES
    assert frozenset(PRESETS) == config.PRESETS
    assert ALLOCATION_NAMES == config.ALLOCATION_POLICIES


@pytest.mark.parametrize(
    "registry", [ROUTING, BATCHING, ADMISSION, VARIANT], ids=["routing", "batching", "adm", "var"]
)
def test_registry_keys_are_the_policies_names(registry: Any) -> None:
    for key, factory in registry.items():
        assert factory().name == key


EXPECTED = {
    "baseline": ("static", "round-robin", "none", "fixed", "none"),
    "optimized-a": ("predictive", "earliest-completion", "none", "fixed", "deadline"),
    "optimized-b": (
        "predictive",
        "earliest-completion",
        "slo-aware",
        "cheapest-feasible",
        "deadline",
    ),
    "hpa": ("hpa", "round-robin", "none", "fixed", "none"),
    "kpa": ("kpa", "power-of-two", "none", "fixed", "none"),
    "rayserve": ("rayserve", "power-of-two", "rayserve-batch", "fixed", "none"),
    "oracle": ("oracle", "earliest-completion", "slo-aware", "cheapest-feasible", "deadline"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_composition(name: str) -> None:
    b = PRESETS[name]
    assert (b.allocation, b.routing, b.batching, b.variant, b.admission) == EXPECTED[name]
    if b.variant == "fixed":
        assert dict(b.variant_params) == {"variant": "fp32-eager"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_preset_builds(name: str) -> None:
    b = PRESETS[name]
    for kind, make in MAKERS.items():
        policy = make(getattr(b, kind), **b.params(kind))
        assert policy.name == getattr(b, kind)
    assert b.allocation in ALLOCATION_NAMES


def test_kpa_routes_like_knative_activator_and_rayserve_like_ray() -> None:
    kpa = make_routing(PRESETS["kpa"].routing, **PRESETS["kpa"].routing_params)
    ray = make_routing(PRESETS["rayserve"].routing, **PRESETS["rayserve"].routing_params)
    assert isinstance(kpa, PowerOfTwo) and kpa.max_ongoing is None
    assert isinstance(ray, PowerOfTwo) and ray.max_ongoing == 5
    batching = make_batching(PRESETS["rayserve"].batching, **PRESETS["rayserve"].batching_params)
    assert batching.name == "rayserve-batch"


def test_bundle_params_are_read_only() -> None:
    b = PolicyBundle("static", "round-robin", "none", "fixed", "none", routing_params={"x": 1})
    with pytest.raises(TypeError):
        b.routing_params["x"] = 2  # type: ignore[index]
    with pytest.raises(AttributeError):
        b.routing = "random"  # type: ignore[misc]


def test_resolve_without_overrides_is_the_preset() -> None:
    assert resolve_preset("optimized-b") == PRESETS["optimized-b"]
    assert resolve_preset("kpa", {}) == PRESETS["kpa"]


def test_resolve_unknown_preset_lists_valid_ones() -> None:
    with pytest.raises(CoscaleError) as err:
        resolve_preset("fastest")
    assert err.value.code == "unknown_policy"
    assert "baseline, hpa, kpa, optimized-a, optimized-b, oracle, rayserve" in err.value.message


def test_resolve_name_override_replaces_name_and_drops_old_params() -> None:
    b = resolve_preset("kpa", {"routing": "least-outstanding"})
    assert b.routing == "least-outstanding" and dict(b.routing_params) == {}
    assert b.allocation == "kpa"


def test_resolve_params_override_merges() -> None:
    b = resolve_preset("rayserve", {"batching_params": {"max_batch_size": 4}})
    assert dict(b.batching_params) == {"max_batch_size": 4, "batch_wait_timeout_s": 0.01}
    b = resolve_preset("kpa", {"routing": "prequal", "routing_params": {"probes_per_query": 2}})
    assert dict(b.routing_params) == {"probes_per_query": 2}


def test_resolve_same_name_keeps_params_and_none_is_ignored() -> None:
    b = resolve_preset("kpa", {"routing": "power-of-two", "batching": None})
    assert b == PRESETS["kpa"]


def test_resolve_rejects_unknown_key_and_unknown_policy_name() -> None:
    with pytest.raises(CoscaleError, match="unknown preset override 'router'"):
        resolve_preset("baseline", {"router": "random"})
    with pytest.raises(CoscaleError) as err:
        resolve_preset("baseline", {"routing": "fastest"})
    assert "unknown routing policy 'fastest'; valid: earliest-completion" in err.value.message
    with pytest.raises(CoscaleError, match="unknown allocation policy 'magic'"):
        resolve_preset("baseline", {"allocation": "magic"})


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_make_unknown_name_lists_valid(kind: str) -> None:
    with pytest.raises(CoscaleError) as err:
        MAKERS[kind]("nope")
    assert err.value.code == "unknown_policy" and "valid:" in err.value.message


def test_make_passes_params_and_rejects_unknown_ones() -> None:
    table = LatencyTable((1,), (0,), ((0.01,),))
    ec = make_routing("earliest-completion", latencies={("fp32-eager", "cpu"): table})
    assert ec.latencies == {("fp32-eager", "cpu"): table}  # type: ignore[attr-defined]
    with pytest.raises(CoscaleError) as err:
        make_batching("rayserve-batch", max_batch=3)
    assert err.value.code == "invalid_policy_params"
    assert "does not take parameter(s) max_batch" in err.value.message
    assert "max_batch_size, batch_wait_timeout_s" in err.value.fix


def test_make_invalid_value_is_a_coscale_error() -> None:
    with pytest.raises(CoscaleError, match="max_ongoing"):
        make_routing("power-of-two", max_ongoing=0)


def test_predictive_presets_react_and_a_scenario_turns_reactions_off() -> None:
    """The optimized presets react to bursts and pressure (``burst_ratio`` 1.0);
    ``burst_ratio: null`` in a scenario's allocation params is kept (not dropped as an
    absent override) and turns them off."""
    from coscale.config import scenario_from_dict

    for name in ("optimized-a", "optimized-b"):
        params = PRESETS[name].allocation_params
        assert params["burst_ratio"] == 1.0
    off = resolve_preset("optimized-b", {"allocation_params": {"burst_ratio": None}})
    assert off.allocation_params["burst_ratio"] is None
    data = {
        "name": "s",
        "models": [{"name": "d", "source": "digits-cnn", "slo_ms": 50, "accuracy_floor": 0.9}],
        "cluster": {"nodes": [{"type": "local-2vcpu", "count": 1}]},
        "policies": {
            "preset": "optimized-b",
            "allocation": {"name": "predictive", "params": {"burst_ratio": None}},
        },
        "workload": {"generator": {"kind": "poisson", "rate_rps": 10, "duration_s": 5}},
    }
    policies = scenario_from_dict(data).policies
    assert policies.allocation is not None
    assert policies.allocation.params == {"burst_ratio": None}
