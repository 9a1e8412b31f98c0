"""The node catalog: the bundled data, the typed loader, and its error messages."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from coscale.catalog import DEFAULT_CATALOG_PATH, Catalog, load_catalog, parse_catalog
from coscale.catalog.nodes import NodeType
from coscale.errors import CatalogError


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data = yaml.safe_load(DEFAULT_CATALOG_PATH.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "nodes.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_default_catalog_loads_typed_frozen_rows() -> None:
    catalog = load_catalog()
    assert isinstance(catalog, Catalog)
    assert len(catalog.types) >= 10
    assert all(isinstance(t, NodeType) for t in catalog.types)
    with pytest.raises(dataclasses.FrozenInstanceError):
        catalog.types[0].speedup = 2.0  # type: ignore[misc]


def test_default_catalog_is_cached() -> None:
    assert load_catalog() is load_catalog()


def test_names_and_get() -> None:
    catalog = load_catalog()
    assert catalog.names()[0] == catalog.types[0].name
    assert len(set(catalog.names())) == len(catalog.names())
    assert catalog.get("g5.xlarge").name == "g5.xlarge"
    assert "g5.xlarge" in catalog and "nope" not in catalog


def test_required_kinds_present() -> None:
    types = load_catalog().types
    cpu_only = [t for t in types if t.accelerator is None and t.accelerator_count == 0]
    assert len(cpu_only) >= 5
    a10g = [t for t in types if t.accelerator and "a10g" in t.accelerator]
    assert a10g and a10g[0].accelerator_memory_gib == 24  # the paper's GPU memory
    assert any(t.accelerator and "l4" in t.accelerator for t in types)
    assert any(t.accelerator and "a100" in t.accelerator for t in types)
    assert any(t.accelerator and "h100" in t.accelerator for t in types)
    assert any(t.accelerator and "tpu" in t.accelerator for t in types)


def test_local_reference_models_this_machine() -> None:
    catalog = load_catalog()
    local = catalog.local()
    assert local.name == "local-2vcpu"
    assert local.speedup == 1.0
    assert (local.vcpus, local.memory_gib, local.accelerator) == (2, 24, None)
    twin = catalog.get("c7a.large")  # priced like the closest cloud type
    assert local.on_demand_usd_per_hour == twin.on_demand_usd_per_hour
    assert "c7a.large" in local.price_source


def test_prices_and_physics_are_consistent() -> None:
    for t in load_catalog().types:
        assert 0 < t.spot_usd_per_hour < t.on_demand_usd_per_hour, t.name
        assert 0 <= t.idle_watts <= t.peak_watts, t.name
        assert t.speedup > 0 and t.replicas_per_node >= 1, t.name
        assert (t.accelerator is None) == (t.accelerator_count == 0), t.name


def test_every_price_has_source_and_date() -> None:
    for t in load_catalog().types:
        assert len(t.price_source) > 10, t.name
        assert re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", t.price_date), t.name


def test_accelerated_types_are_faster_per_replica_than_cpu() -> None:
    types = load_catalog().types
    fastest_cpu = max(t.speedup for t in types if t.accelerator is None)
    slowest_acc = min(t.speedup for t in types if t.accelerator is not None)
    assert slowest_acc > fastest_cpu


def test_usd_and_watts_helpers() -> None:
    g5 = load_catalog().get("g5.xlarge")
    assert g5.usd_per_hour(spot=True) == g5.spot_usd_per_hour
    assert g5.usd_per_hour(spot=False) == g5.on_demand_usd_per_hour
    assert g5.watts(0.0) == g5.idle_watts and g5.watts(1.0) == g5.peak_watts
    assert g5.watts(2.0) == g5.peak_watts


def test_unknown_name_lists_valid_names_and_suggests() -> None:
    with pytest.raises(CatalogError) as info:
        load_catalog().get("g5.xlrge")
    text = info.value.render()
    assert "did you mean 'g5.xlarge'" in text
    assert "local-2vcpu" in text and "p5.48xlarge" in text


def test_explicit_path_loads_same_rows(tmp_path: Path, raw: dict[str, Any]) -> None:
    catalog = load_catalog(_write(tmp_path, raw))
    assert catalog.types == load_catalog().types


def test_bad_schema_version_rejected(tmp_path: Path, raw: dict[str, Any]) -> None:
    data = dict(raw, schema_version=2)
    with pytest.raises(CatalogError) as info:
        load_catalog(_write(tmp_path, data))
    assert "schema_version 2" in info.value.message
    assert "valid: 1" in info.value.message


def test_missing_schema_version_rejected(raw: dict[str, Any]) -> None:
    data = {k: v for k, v in raw.items() if k != "schema_version"}
    with pytest.raises(CatalogError, match="schema_version None"):
        parse_catalog(data)


def _bad_row(raw: dict[str, Any], index: int, **changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(raw)
    data["node_types"][index].update(changes)
    return data


def test_bad_row_names_row_and_field(raw: dict[str, Any]) -> None:
    with pytest.raises(CatalogError) as info:
        parse_catalog(_bad_row(raw, 2, vcpus=0))
    name = raw["node_types"][2]["name"]
    assert f"node_types[2] ({name}).vcpus: must be >= 1, got 0" in info.value.message


def test_unknown_row_field_rejected_with_suggestion(raw: dict[str, Any]) -> None:
    data = _bad_row(raw, 1, vcpu=2)
    with pytest.raises(CatalogError) as info:
        parse_catalog(data)
    assert "node_types[1] (c7a.large).vcpu: unknown field 'vcpu'" in info.value.message
    assert "did you mean 'vcpus'" in info.value.message


def test_missing_row_field_rejected(raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    del data["node_types"][3]["price_date"]
    with pytest.raises(CatalogError, match=r"node_types\[3\] \(c7i.large\)\.price_date: required"):
        parse_catalog(data)


def test_spot_not_below_on_demand_rejected(raw: dict[str, Any]) -> None:
    with pytest.raises(CatalogError) as info:
        parse_catalog(_bad_row(raw, 1, spot_usd_per_hour=0.2))
    assert "node_types[1] (c7a.large).spot_usd_per_hour: spot price 0.2" in info.value.message


def test_inconsistent_accelerator_rejected(raw: dict[str, Any]) -> None:
    with pytest.raises(CatalogError, match=r"\(c7a.large\)\.accelerator_count: accelerator"):
        parse_catalog(_bad_row(raw, 1, accelerator="nvidia-l4"))


def test_bad_price_date_rejected(raw: dict[str, Any]) -> None:
    with pytest.raises(CatalogError, match=r"\(c7a.large\)\.price_date"):
        parse_catalog(_bad_row(raw, 1, price_date="Dec 2024"))


def test_peak_below_idle_rejected(raw: dict[str, Any]) -> None:
    with pytest.raises(CatalogError, match=r"\(c7a.large\)\.peak_watts: peak_watts 1"):
        parse_catalog(_bad_row(raw, 1, peak_watts=1.0))


def test_duplicate_name_rejected(raw: dict[str, Any]) -> None:
    with pytest.raises(CatalogError, match=r"node_types\[1\] \(local-2vcpu\)\.name: duplicate"):
        parse_catalog(_bad_row(raw, 1, name="local-2vcpu"))


def test_reference_must_exist_and_have_speedup_one(raw: dict[str, Any]) -> None:
    with pytest.raises(CatalogError, match=r"reference: reference 'local-2vcpus'.*did you mean"):
        parse_catalog(dict(raw, reference="local-2vcpus"))
    with pytest.raises(CatalogError, match=r"node_types\[0\] \(local-2vcpu\)\.speedup"):
        parse_catalog(_bad_row(raw, 0, speedup=2.0))


def test_every_error_is_listed(raw: dict[str, Any]) -> None:
    data = _bad_row(raw, 1, vcpus=0, startup_s=-1)
    with pytest.raises(CatalogError) as info:
        parse_catalog(data)
    assert ".vcpus:" in info.value.message and ".startup_s:" in info.value.message


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read node catalog"):
        load_catalog(tmp_path / "missing.yaml")
    with pytest.raises(CatalogError, match="not a mapping"):
        load_catalog(_write(tmp_path, [1, 2]))
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema_version: [1\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(bad)
