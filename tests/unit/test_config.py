"""The scenario schema: valid files load, and every class of mistake gets a precise message."""

from __future__ import annotations

import copy
import hashlib
import textwrap
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from coscale import config
from coscale.catalog import load_catalog
from coscale.config import (
    ADMISSION_POLICIES,
    ALLOCATION_POLICIES,
    BATCHING_POLICIES,
    PRESETS,
    ROUTING_POLICIES,
    TRACE_ALIASES,
    TRACES_DIR,
    VARIANT_POLICIES,
    GeneratorSpec,
    Scenario,
    TraceSpec,
    load_scenario,
    resolve_trace_format,
    resolve_trace_path,
    scenario_from_dict,
)
from coscale.errors import ScenarioError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SHARED_TRACES = Path("/work/shared/traces")

BASE: dict[str, Any] = {
    "name": "t",
    "models": [{"name": "digits", "source": "digits-cnn", "slo_ms": 50, "accuracy_floor": 0.95}],
    "workload": {"generator": {"kind": "poisson", "rate_rps": 10, "duration_s": 5}},
}


def _with(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data.update(copy.deepcopy(changes))
    return data


def _error(data: Any, base_dir: Path | None = None) -> str:
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict(data, base_dir)
    return info.value.message


def _write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- valid input


def test_minimal_scenario_gets_defaults() -> None:
    s = scenario_from_dict(BASE)
    assert s.seed == 0
    assert s.tenants == []
    assert [(p.type, p.count) for p in s.cluster.nodes] == [("local-2vcpu", 1)]
    assert s.cluster.spot_share == 0.0
    assert s.policies.preset == "optimized-b"
    assert s.models[0].max_batch == 64 and s.models[0].is_builtin
    assert s.model("digits").slo_ms == 50


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_validates(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.models


def test_examples_cover_the_three_documented_cases() -> None:
    names = {p.name for p in EXAMPLES.glob("*.yaml")}
    assert {"digits.yaml", "minilm.yaml", "cluster.yaml"} <= names
    cluster = load_scenario(EXAMPLES / "cluster.yaml").cluster
    assert 900 <= sum(p.count for p in cluster.nodes) <= 1100
    accelerated = {load_catalog().get(p.type).accelerator is not None for p in cluster.nodes}
    assert accelerated == {True, False}
    assert cluster.spot_share == 0.5


def test_scenario_is_immutable() -> None:
    s = scenario_from_dict(BASE)
    with pytest.raises(Exception, match="frozen"):
        s.seed = 3


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def test_every_field_is_described_and_every_model_forbids_extras() -> None:
    seen: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [Scenario]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        assert model.model_config.get("extra") == "forbid", model.__name__
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}"
            todo += _models_in(field.annotation)
    assert {m.__name__ for m in seen} >= {
        "ModelSpec",
        "TenantSpec",
        "ClusterSpec",
        "NodePool",
        "PolicySpec",
        "PolicyRef",
        "WorkloadSpec",
        "TraceSpec",
        "GeneratorSpec",
    }


def test_policy_name_sets_match_the_documented_sets() -> None:
    assert {"static", "hpa", "kpa", "rayserve", "predictive", "oracle"} == ALLOCATION_POLICIES
    assert "prequal" in ROUTING_POLICIES and "earliest-completion" in ROUTING_POLICIES
    assert "clipper-aimd" in BATCHING_POLICIES and "slo-aware" in BATCHING_POLICIES
    assert {"fixed", "cheapest-feasible"} == VARIANT_POLICIES
    assert {"none", "deadline"} == ADMISSION_POLICIES
    assert {"baseline", "optimized-a", "optimized-b", "oracle"} <= PRESETS


def test_generator_defaults_fill_only_their_kind() -> None:
    mmpp = GeneratorSpec(kind="mmpp", rate_rps=10, duration_s=60).with_defaults()
    assert mmpp.burst_rate_rps == config.DEFAULT_MMPP_BURST_FACTOR * 10
    assert mmpp.mean_burst_s == config.DEFAULT_MMPP_MEAN_BURST_S
    assert mmpp.period_s is None and mmpp.concurrency is None
    diurnal = GeneratorSpec(kind="diurnal", rate_rps=10, duration_s=600).with_defaults()
    assert diurnal.period_s == 600 and diurnal.amplitude == config.DEFAULT_DIURNAL_AMPLITUDE
    loop = GeneratorSpec(kind="closed-loop", rate_rps=10, duration_s=6, concurrency=3)
    assert loop.with_defaults().concurrency == 3


# --------------------------------------------------------------------------- error classes


def test_unknown_field_suggests_the_close_name() -> None:
    data = _with()
    data["models"][0]["slo"] = 50
    message = _error(data)
    assert "  - models[0].slo: unknown field 'slo'; did you mean 'slo_ms'?" in message
    assert "valid: name, source, variants, slo_ms, accuracy_floor, max_batch" in message


def test_unknown_top_level_field() -> None:
    message = _error(_with(workloads={}))
    assert "  - workloads: unknown field 'workloads'; did you mean 'workload'?" in message


def test_bad_enum_lists_valid_values() -> None:
    data = _with(workload={"generator": {"kind": "poison", "rate_rps": 1, "duration_s": 1}})
    message = _error(data)
    assert "workload.generator.kind: 'poison' is not allowed; did you mean 'poisson'?" in message
    assert "valid: poisson, mmpp, diurnal, closed-loop" in message


def test_unknown_node_type_lists_catalog_names() -> None:
    message = _error(_with(cluster={"nodes": [{"type": "g5.xlrge", "count": 1}]}))
    assert "cluster.nodes[0].type: unknown node type 'g5.xlrge'" in message
    assert "did you mean 'g5.xlarge'?" in message
    for name in load_catalog().names():
        assert name in message


def test_unknown_preset_and_policy_override() -> None:
    message = _error(_with(policies={"preset": "optimised-b", "routing": {"name": "power-of-2"}}))
    assert "policies.preset: unknown preset 'optimised-b'; did you mean 'optimized-b'?" in message
    assert "policies.routing.name: unknown routing policy 'power-of-2'" in message
    assert "did you mean 'power-of-two'?" in message
    assert "valid: " + ", ".join(sorted(ROUTING_POLICIES)) in message


def test_policy_name_checked_against_its_own_kind() -> None:
    message = _error(_with(policies={"allocation": {"name": "prequal"}}))
    assert "policies.allocation.name: unknown allocation policy 'prequal'" in message


def test_policy_params_must_be_scalars() -> None:
    ok = scenario_from_dict(
        _with(policies={"batching": {"name": "triton", "params": {"max_delay_ms": 2, "x": True}}})
    )
    assert ok.policies.batching is not None
    assert ok.policies.batching.params == {"max_delay_ms": 2, "x": True}
    message = _error(_with(policies={"batching": {"name": "triton", "params": {"sizes": [1]}}}))
    assert "policies.batching.params['sizes']: parameter 'sizes' is a list" in message


def test_trace_and_generator_both() -> None:
    workload = {
        "trace": {"path": "azure-code"},
        "generator": {"kind": "poisson", "rate_rps": 1, "duration_s": 1},
    }
    message = _error(_with(workload=workload))
    assert "  - workload: both trace and generator are set" in message
    assert "valid: exactly one of trace or generator" in message


def test_trace_and_generator_neither() -> None:
    message = _error(_with(workload={}))
    assert "  - workload: neither trace nor generator is set" in message


def test_duplicate_model_names() -> None:
    data = _with()
    data["models"].append(dict(data["models"][0]))
    message = _error(data)
    assert "models[1].name: duplicate model 'digits' (also models[0])" in message


def test_duplicate_model_names_reported_next_to_field_errors() -> None:
    data = _with()
    data["models"].append(dict(data["models"][0], slo_ms=-1))
    message = _error(data)
    assert "models[1].slo_ms: must be > 0, got -1" in message
    assert "models[1].name: duplicate model 'digits'" in message


def test_model_mix_names_unknown_model() -> None:
    workload = copy.deepcopy(BASE["workload"])
    workload["model_mix"] = {"digit": 1.0}
    message = _error(_with(workload=workload))
    assert "workload.model_mix['digit']: unknown model 'digit'; did you mean 'digits'?" in message


def test_model_mix_checked_even_when_other_fields_fail() -> None:
    workload = copy.deepcopy(BASE["workload"])
    workload["model_mix"] = {"other": 1.0}
    message = _error(_with(workload=workload, seed=-1))
    assert "seed: must be >= 0" in message
    assert "workload.model_mix['other']: unknown model 'other'" in message


def test_model_mix_weights() -> None:
    workload = copy.deepcopy(BASE["workload"])
    workload["model_mix"] = {"digits": -1.0}
    assert "workload.model_mix['digits']: weight -1 is negative" in _error(_with(workload=workload))
    workload["model_mix"] = {"digits": 0.0}
    assert "workload.model_mix: the weights sum to 0" in _error(_with(workload=workload))


def test_negative_slo() -> None:
    data = _with()
    data["models"][0]["slo_ms"] = -5
    message = _error(data)
    assert "  - models[0].slo_ms: must be > 0, got -5; valid: " in message
    assert "milliseconds" in message


def test_accuracy_floor_and_max_batch_bounds() -> None:
    data = _with()
    data["models"][0].update(accuracy_floor=1.5, max_batch=2048)
    message = _error(data)
    assert "models[0].accuracy_floor: must be <= 1, got 1.5" in message
    assert "models[0].max_batch: must be <= 1024, got 2048" in message


def test_missing_required_field() -> None:
    data = _with()
    del data["models"][0]["slo_ms"]
    message = _error(data)
    assert "models[0].slo_ms: required field is missing; valid: Latency objective" in message


def test_every_error_is_listed_with_count() -> None:
    data = _with(seed=-1, cluster={"nodes": [{"type": "nope", "count": -1}]})
    data["models"][0]["slo_ms"] = 0
    message = _error(data)
    assert message.startswith("scenario <dict> has 4 errors:")
    for path in ("seed:", "models[0].slo_ms:", "cluster.nodes[0].type:", "cluster.nodes[0].count:"):
        assert f"\n  - {path} " in message


def test_unknown_variant_and_duplicate_variant() -> None:
    data = _with()
    data["models"][0]["variants"] = ["fp32-eager", "int9", "fp32-eager"]
    message = _error(data)
    assert "models[0].variants[1]: unknown variant 'int9'" in message
    assert "valid: " in message and "onnx-int8-static" in message
    data["models"][0]["variants"] = ["fp32-eager", "onnx-fp32", "fp32-eager"]
    message = _error(data)
    assert "models[0].variants[2]: variant 'fp32-eager' listed twice" in message


def test_unknown_builtin_model_and_bad_extension() -> None:
    data = _with()
    data["models"][0]["source"] = "minilmm"
    message = _error(data)
    assert "models[0].source: unknown built-in model 'minilmm'; did you mean 'minilm'?" in message
    data["models"][0]["source"] = "model.h5"
    message = _error(data)
    assert "unknown model file type 'model.h5'" in message and ".onnx, .pt, .ts" in message


def test_model_file_must_exist(tmp_path: Path) -> None:
    data = _with()
    data["models"][0]["source"] = "missing.onnx"
    message = _error(data, tmp_path)
    assert f"model file '{tmp_path / 'missing.onnx'}' does not exist" in message


def test_relative_paths_resolve_against_scenario_folder(tmp_path: Path) -> None:
    folder = tmp_path / "scen"
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "net.onnx").write_bytes(b"onnx")
    (folder / "t.jsonl").write_text('{"timestamp": 0}\n', encoding="utf-8")
    path = _write(
        folder,
        """
        name: rel
        models:
          - {name: net, source: models/net.onnx, slo_ms: 10, accuracy_floor: 0.9}
        tenants:
          - {name: a, key_file: secrets/a.key}
        workload:
          trace: {path: t.jsonl}
        """,
    )
    s = load_scenario(path)  # loaded from a different working directory than the file's
    assert s.models[0].source == str(folder / "models" / "net.onnx")
    assert not s.models[0].is_builtin
    assert s.tenants[0].key_file == folder / "secrets" / "a.key"
    assert s.workload.trace is not None
    assert resolve_trace_path(s.workload.trace) == folder / "t.jsonl"
    assert resolve_trace_format(s.workload.trace) == "mooncake"


def test_unknown_trace_alias_suggests() -> None:
    message = _error(_with(workload={"trace": {"path": "azure-cod"}}))
    assert "workload.trace.path: no bundled trace or file named 'azure-cod'" in message
    assert "did you mean 'azure-code'?" in message


def test_trace_format_enum_and_inference(tmp_path: Path) -> None:
    message = _error(_with(workload={"trace": {"path": "mooncake", "format": "kimi"}}))
    assert "workload.trace.format: 'kimi' is not allowed" in message
    assert "valid: auto, azure, servegen, mooncake" in message
    odd = tmp_path / "trace.parquet"
    odd.write_bytes(b"x")
    message = _error(_with(workload={"trace": {"path": str(odd)}}))
    assert "workload.trace.format: cannot infer the trace format of 'trace.parquet'" in message
    azure = tmp_path / "a.csv"
    azure.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n", encoding="utf-8")
    assert resolve_trace_format(TraceSpec(path=str(azure))) == "azure"
    chunk = tmp_path / "c.csv"
    chunk.write_text("0,1.5,1.0,Gamma,1,1\n", encoding="utf-8")
    assert resolve_trace_format(TraceSpec(path=str(chunk))) == "servegen"
    assert resolve_trace_format(TraceSpec(path=str(tmp_path))) == "servegen"
    assert resolve_trace_format(TraceSpec(path=str(azure), format="mooncake")) == "mooncake"


def test_trace_bounds() -> None:
    message = _error(_with(workload={"trace": {"path": "azure-code", "time_scale": 0}}))
    assert "workload.trace.time_scale: must be > 0, got 0" in message
    message = _error(_with(workload={"trace": {"path": "azure-code", "start_s": -1}}))
    assert "workload.trace.start_s: must be >= 0, got -1" in message


def test_generator_parameters_belong_to_their_kind() -> None:
    gen = {"kind": "poisson", "rate_rps": 1, "duration_s": 1, "concurrency": 4}
    message = _error(_with(workload={"generator": gen}))
    assert "workload.generator.concurrency: concurrency applies only to kind 'closed-loop'" in (
        message
    )
    gen = {"kind": "mmpp", "rate_rps": 10, "duration_s": 1, "burst_rate_rps": 5}
    message = _error(_with(workload={"generator": gen}))
    assert "workload.generator.burst_rate_rps: burst_rate_rps 5 is not above rate_rps 10" in (
        message
    )
    gen = {"kind": "diurnal", "rate_rps": 1, "duration_s": 1, "amplitude": 1.0}
    assert "workload.generator.amplitude: must be < 1, got 1.0" in _error(
        _with(workload={"generator": gen})
    )
    gen = {"kind": "closed-loop", "rate_rps": 1, "duration_s": 1, "concurrency": 0}
    assert "workload.generator.concurrency: must be >= 1, got 0" in _error(
        _with(workload={"generator": gen})
    )


def test_cluster_rules() -> None:
    message = _error(_with(cluster={"nodes": [{"type": "g5.xlarge", "count": 4, "max_count": 2}]}))
    assert "cluster.nodes[0].max_count: max_count 2 is below count 4" in message
    nodes = [{"type": "g5.xlarge", "count": 1}, {"type": "g5.xlarge", "count": 2}]
    message = _error(_with(cluster={"nodes": nodes}))
    assert "cluster.nodes[1].type: duplicate node type 'g5.xlarge' (also nodes[0])" in message
    message = _error(_with(cluster={"nodes": [{"type": "g5.xlarge", "count": 0}]}))
    assert "cluster.nodes: every pool has count 0" in message
    message = _error(_with(cluster={"spot_share": 1.5}))
    assert "cluster.spot_share: must be <= 1, got 1.5" in message
    ok = scenario_from_dict(
        _with(cluster={"nodes": [{"type": "g5.xlarge", "count": 0, "max_count": 3}]})
    )
    assert ok.cluster.nodes[0].limit == 3


def test_tenant_rules() -> None:
    tenants = [{"name": "a", "key_env": "KEY_A"}, {"name": "a"}]
    assert "tenants[1].name: duplicate tenant 'a' (also tenants[0])" in _error(
        _with(tenants=tenants)
    )
    message = _error(_with(tenants=[{"name": "Bad Name"}]))
    assert "tenants[0].name: not of the required form, got 'Bad Name'" in message
    assert "lowercase letters, digits" in message
    message = _error(_with(tenants=[{"name": "a", "key_env": "K", "key_file": "k.txt"}]))
    assert "tenants[0].key_file: both key_env and key_file are set" in message
    message = _error(_with(tenants=[{"name": "a", "api_key": "sk-123"}]))
    assert "tenants[0].api_key: unknown field 'api_key'" in message


def test_yaml_syntax_error_has_line_number(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\nmodels:\n  - name: [a\n    slo_ms: 3\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert "is not valid YAML at line 4" in info.value.message


def test_duplicate_yaml_key_rejected_with_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\nseed: 1\nseed: 2\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert "at line 3" in info.value.message
    assert "duplicate key 'seed' (first at line 2)" in info.value.message


def test_schema_errors_carry_yaml_lines(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """\
        name: x
        models:
          - name: m
            source: minilm
            slo_ms: -1
            accuracy_floor: 0.9
        workload:
          generator: {kind: poisson, rate_rps: 1, duration_s: 1, burst: 3}
        """,
    )
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert "models[0].slo_ms: must be > 0, got -1" in info.value.message
    assert "(line 5)" in info.value.message
    assert "workload.generator.burst: unknown field 'burst'" in info.value.message
    assert "(line 8)" in info.value.message


def test_missing_file_and_non_mapping_top_level(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="does not exist"):
        load_scenario(tmp_path / "nope.yaml")
    with pytest.raises(ScenarioError, match="the top level is a list"):
        load_scenario(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ScenarioError, match="the top level is empty"):
        load_scenario(_write(tmp_path, ""))


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ScenarioError, match="cannot read scenario file"):
        load_scenario(path)


def test_error_has_fix_and_code() -> None:
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict(_with(seed=-1))
    assert info.value.code == "invalid_scenario"
    assert "coscale validate" in info.value.fix


# --------------------------------------------------------------------------- bundled traces


@pytest.mark.parametrize("alias", sorted(TRACE_ALIASES))
def test_every_trace_alias_resolves_to_bundled_data(alias: str) -> None:
    spec = TraceSpec(path=alias)
    path = resolve_trace_path(spec)
    assert path.exists() and TRACES_DIR in path.parents
    assert resolve_trace_format(spec) == TRACE_ALIASES[alias].format
    files = sorted(path.glob("chunk-*-trace.csv")) if path.is_dir() else [path]
    assert files and all(f.stat().st_size > 0 for f in files)


def test_bundled_traces_keep_license_and_source() -> None:
    for folder in ("azure_llm_2023", "servegen_2025", "mooncake_fast25"):
        names = {p.name for p in (TRACES_DIR / folder).iterdir()}
        assert "SOURCE.txt" in names, folder
        assert any(n.startswith("LICENSE") for n in names), folder
    readme = (TRACES_DIR / "README.md").read_text(encoding="utf-8")
    for needle in ("CC BY 4.0", "Apache License 2.0", "Splitwise", "ServeGen", "Mooncake"):
        assert needle in readme


def test_bundled_trace_counts() -> None:
    assert len(list(resolve_trace_path(TraceSpec(path="servegen-language")).iterdir())) == 162
    assert len(list(resolve_trace_path(TraceSpec(path="servegen-reason")).iterdir())) == 73
    code = resolve_trace_path(TraceSpec(path="azure-code")).read_text(encoding="utf-8")
    assert len(code.splitlines()) == 8819 + 1  # header
    mooncake = resolve_trace_path(TraceSpec(path="mooncake")).read_text(encoding="utf-8")
    assert len(mooncake.splitlines()) == 12031


@pytest.mark.skipif(not SHARED_TRACES.is_dir(), reason="/work/shared/traces not present")
def test_bundled_traces_are_byte_identical_to_shared() -> None:
    def digest(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    for folder in ("azure_llm_2023", "servegen_2025", "mooncake_fast25"):
        assert digest(TRACES_DIR / folder) == digest(SHARED_TRACES / folder), folder


def test_wrong_shape_for_a_section_lists_its_fields() -> None:
    message = _error(_with(workload={"trace": "azure-code"}))
    assert "workload.trace: expected a mapping, got 'azure-code'" in message
    assert "valid: a mapping with fields: path, format, time_scale, start_s, duration_s" in message
