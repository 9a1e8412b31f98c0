"""The Ray backend's pure parts: resource requests from the spec and the catalog, address
checks, the local Ray's options. Nothing here starts Ray (DESIGN.md: unit tests must not)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from coscale.backends.base import ReplicaSpec
from coscale.backends.ray import (
    NODE_RESOURCE_REQUEST,
    NODE_RESOURCE_UNITS,
    RayBackend,
    check_address,
    import_ray,
    local_init_options,
    memory_from_profiles,
    node_resource,
    node_resources,
    ray_start_command,
    resource_request,
)
from coscale.catalog import load_catalog
from coscale.errors import CoscaleError

CATALOG = load_catalog()


def spec(node_type: str, threads: int = 2, variant: str = "onnx-fp32") -> ReplicaSpec:
    return ReplicaSpec("r1", "digits", "digits-cnn", variant, node_type, threads=threads)


def test_importing_the_module_does_not_import_ray() -> None:
    code = "import sys, coscale.backends.ray; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_cpu_replica_asks_for_its_threads_and_its_node_type_label() -> None:
    request = resource_request(spec("c7a.xlarge", threads=2), CATALOG.get("c7a.xlarge"))
    assert request.num_cpus == 2.0
    assert request.num_gpus == 0.0
    assert request.memory_bytes is None
    assert dict(request.resources) == {"coscale-node/c7a.xlarge": NODE_RESOURCE_REQUEST}
    options = request.actor_options()
    assert options == {
        "num_cpus": 2.0,
        "num_gpus": 0.0,
        "resources": {"coscale-node/c7a.xlarge": NODE_RESOURCE_REQUEST},
    }
    assert "memory" not in options


def test_threads_below_one_still_ask_for_one_cpu() -> None:
    assert (
        resource_request(spec("local-2vcpu", threads=0), CATALOG.get("local-2vcpu")).num_cpus == 1
    )


def test_gpu_types_ask_for_their_share_of_the_gpus() -> None:
    one = resource_request(spec("g5.xlarge"), CATALOG.get("g5.xlarge"))
    assert one.num_gpus == 1.0
    eight = CATALOG.get("p4d.24xlarge")  # 8 GPUs, 8 replicas per node
    assert eight.accelerator_count == 8 and eight.replicas_per_node == 8
    assert resource_request(spec("p4d.24xlarge"), eight).num_gpus == 1.0
    assert "TPU" not in dict(one.resources)


def test_tpu_types_ask_for_a_tpu_not_a_gpu() -> None:
    request = resource_request(spec("ct5lp-hightpu-1t"), CATALOG.get("ct5lp-hightpu-1t"))
    assert request.num_gpus == 0.0
    assert dict(request.resources)["TPU"] == 1.0
    assert dict(request.resources)["coscale-node/ct5lp-hightpu-1t"] == NODE_RESOURCE_REQUEST


def test_memory_is_reserved_only_when_known() -> None:
    node = CATALOG.get("local-2vcpu")
    assert resource_request(spec("local-2vcpu"), node, 300_000_000).memory_bytes == 300_000_000
    assert resource_request(spec("local-2vcpu"), node, 300_000_000).actor_options()["memory"] == (
        300_000_000
    )
    assert resource_request(spec("local-2vcpu"), node, 0).memory_bytes is None


def test_a_node_of_another_type_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="local-2vcpu"):
        resource_request(spec("local-2vcpu"), CATALOG.get("g5.xlarge"))


def test_the_backend_reads_memory_by_source_and_variant() -> None:
    backend = RayBackend(memory_bytes={("digits-cnn", "onnx-fp32"): 123_456}, catalog=CATALOG)
    assert backend.request_for(spec("local-2vcpu")).memory_bytes == 123_456
    assert backend.request_for(spec("local-2vcpu", variant="fp32-eager")).memory_bytes is None
    assert backend.owns_ray is False  # nothing connected yet


def test_an_unknown_node_type_fails_the_start_with_the_catalog_message() -> None:
    from coscale.backends.base import ReplicaStartError

    backend = RayBackend(catalog=CATALOG)
    with pytest.raises(ReplicaStartError, match="no-such-type"):
        backend.request_for(spec("no-such-type"))


def test_a_node_advertises_one_unit_of_its_label() -> None:
    node = CATALOG.get("g6.xlarge")
    assert node_resources(node) == {node_resource("g6.xlarge"): NODE_RESOURCE_UNITS}
    assert NODE_RESOURCE_REQUEST * 1000 <= NODE_RESOURCE_UNITS  # 1000 replicas fit by label
    line = ray_start_command(node, "10.0.0.1:6379")
    assert line.startswith("ray start --address=10.0.0.1:6379 --resources=")
    assert json.loads(line.split("--resources=")[1].strip("'")) == {"coscale-node/g6.xlarge": 1.0}


def test_the_local_ray_offers_the_local_node_types_only() -> None:
    options = local_init_options(2, CATALOG)
    local = {n.name for n in CATALOG if n.provider == "local"}
    assert set(options["resources"]) == {node_resource(n) for n in local}
    assert options["num_cpus"] == 2 and options["include_dashboard"] is False
    assert local_init_options(0, CATALOG)["num_cpus"] == 1


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, None),
        ("", None),
        ("auto", "auto"),
        ("10.0.0.5:6379", "10.0.0.5:6379"),
        ("ray://head.example:10001", "ray://head.example:10001"),
    ],
)
def test_addresses_that_are_accepted(given: str | None, expected: str | None) -> None:
    assert check_address(given) == expected


@pytest.mark.parametrize("bad", ["head", "ray://head", "http://head:80/x", "head:99999", "h:p"])
def test_addresses_that_are_refused_name_the_accepted_forms(bad: str) -> None:
    with pytest.raises(CoscaleError, match="not a Ray address") as info:
        check_address(bad)
    assert "ray://HOST:PORT" in info.value.fix


def test_a_missing_ray_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(CoscaleError) as info:
        import_ray()
    assert info.value.code == "missing_dependency"
    assert "pip install 'coscale[ray]'" in info.value.fix


def test_memory_from_profiles_keeps_measured_variants() -> None:
    from coscale.catalog.profiles import load_profile
    from coscale.sim.profiles import REFERENCE_PROFILES_DIR

    profile = load_profile(REFERENCE_PROFILES_DIR / "digits-cnn.json", allow_foreign=True)
    memory = memory_from_profiles([("digits-cnn", profile)])
    assert memory
    for v in profile.variants:
        if v.peak_memory_bytes > 0:
            assert memory[("digits-cnn", v.name)] == v.peak_memory_bytes


def test_serve_refuses_address_without_the_ray_backend() -> None:
    from coscale.cli import _serving_system
    from coscale.config import scenario_from_dict

    scenario = scenario_from_dict(
        {
            "name": "s",
            "models": [
                {"name": "digits", "source": "digits-cnn", "slo_ms": 50, "accuracy_floor": 0.5}
            ],
            "workload": {"generator": {"kind": "poisson", "rate_rps": 1, "duration_s": 1}},
        }
    )
    with pytest.raises(CoscaleError, match="--address is for the Ray backend"):
        _serving_system(scenario, None, "local", {}, address="auto")


def test_on_a_ray_cluster_every_pool_is_served_without_caps() -> None:
    from pathlib import Path

    from coscale.backends.ray import cluster_view
    from coscale.config import load_scenario
    from coscale.runtime.system import live_scenario

    scenario = load_scenario(Path(__file__).resolve().parents[2] / "examples" / "cluster.yaml")
    view, cores = cluster_view(scenario, CATALOG)
    live = live_scenario(scenario, view, cores)
    assert [(p.type, p.count, p.max_count) for p in live.cluster.nodes] == [
        (p.type, p.count, p.limit) for p in scenario.cluster.nodes
    ]
    replicas = sum(p.limit * CATALOG.get(p.type).replicas_per_node for p in scenario.cluster.nodes)
    threads = cores // replicas
    smallest = min(
        n.vcpus // n.replicas_per_node
        for n in (CATALOG.get(p.type) for p in scenario.cluster.nodes)
    )
    assert threads == smallest == 2  # fits every node type of the scenario
    for p in scenario.cluster.nodes:  # only the provider changes
        before, after = CATALOG.get(p.type), view.get(p.type)
        assert after.provider == "local" and before.provider != "local"
        assert after.on_demand_usd_per_hour == before.on_demand_usd_per_hour
    assert view.get("p5.48xlarge").provider == CATALOG.get("p5.48xlarge").provider


def test_the_simulator_adds_the_ray_overhead_to_every_batch() -> None:
    from coscale.config import scenario_from_dict
    from coscale.sim.profiles import BACKEND_OVERHEAD_S, backend_overhead_s
    from coscale.sim.run import prepare

    data = {
        "name": "s",
        "models": [{"name": "digits", "source": "digits-cnn", "slo_ms": 50, "accuracy_floor": 0.5}],
        "cluster": {
            "nodes": [{"type": "c7a.xlarge", "count": 1}, {"type": "g5.xlarge", "count": 1}]
        },
        "workload": {"generator": {"kind": "poisson", "rate_rps": 1, "duration_s": 5}},
    }
    local = prepare(scenario_from_dict(data))
    data["cluster"]["backend"] = "ray"  # type: ignore[index]
    on_ray = prepare(scenario_from_dict(data))
    overhead = BACKEND_OVERHEAD_S["ray"]
    assert 0 < overhead < 0.01 and BACKEND_OVERHEAD_S["local"] == 0.0
    for a, b in zip(local.options[0], on_ray.options[0], strict=True):
        for items in (1, 8, 64):  # not divided by the node's speedup: transport, not compute
            assert b.latency.latency(items) == pytest.approx(a.latency.latency(items) + overhead)
    with pytest.raises(CoscaleError, match="no measured per-batch overhead"):
        backend_overhead_s("k8s")
