"""Check rendered manifests against schemas, offline.

* ``RayCluster``: KubeRay's own CRD (``schemas/kuberay/ray.io_rayclusters.yaml``, copied
  byte for byte from ray-project/kuberay, Apache-2.0; see ``SOURCE.txt`` and ``LICENSE``
  beside it): the manifest is validated with ``jsonschema`` against the ``v1`` version's
  ``openAPIV3Schema``, and every field the schema does not declare is reported too —
  the API server would silently *prune* it (a structural schema drops unknown fields
  unless ``x-kubernetes-preserve-unknown-fields`` is set), which plain JSON Schema
  validation does not catch.
* ``Service``, ``ConfigMap`` (``v1``) and ``ServiceMonitor``
  (``monitoring.coreos.com/v1``): the ``kubernetes`` Python client is not a coscale
  dependency, so ``schemas/kubernetes-core.json`` is a small JSON Schema written by hand
  from the Kubernetes API reference for the fields coscale emits, closed
  (``additionalProperties: false``) so that a misspelt field fails.

``jsonschema`` is a development dependency; without it these checks raise
:class:`~coscale.errors.CoscaleError` with the install command.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from coscale.errors import CoscaleError

__all__ = ["SCHEMAS_DIR", "check_manifest", "pruned_fields", "raycluster_schema"]

SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"
RAYCLUSTER_CRD = SCHEMAS_DIR / "kuberay" / "ray.io_rayclusters.yaml"
CORE_SCHEMA = SCHEMAS_DIR / "kubernetes-core.json"


def _jsonschema() -> Any:
    try:
        import jsonschema
    except ImportError as exc:
        raise CoscaleError(
            "checking manifests needs the jsonschema package.",
            fix="pip install jsonschema (it comes with coscale's dev extra).",
            code="missing_dependency",
        ) from exc
    return jsonschema


@functools.lru_cache(maxsize=2)
def raycluster_schema(version: str = "v1") -> dict[str, Any]:
    """The ``openAPIV3Schema`` of KubeRay's RayCluster CRD for ``version``."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(RAYCLUSTER_CRD.read_text(encoding="utf-8"), Loader=loader)
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            schema: dict[str, Any] = v["schema"]["openAPIV3Schema"]
            return schema
    raise KeyError(f"the RayCluster CRD has no version {version!r}")


@functools.lru_cache(maxsize=1)
def _core_schemas() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(CORE_SCHEMA.read_text(encoding="utf-8"))
    return data


def pruned_fields(obj: Any, schema: Mapping[str, Any], path: str = "") -> Iterator[str]:
    """Paths of the fields in ``obj`` that ``schema`` (an OpenAPI v3 structural schema)
    does not declare — those the API server would prune. O(size of ``obj``)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(obj, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            where = f"{path}.{key}" if path else key
            if props is not None and key in props:
                yield from pruned_fields(value, props[key], where)
            elif isinstance(extra, Mapping):
                yield from pruned_fields(value, extra, where)
            elif props is not None or extra is False:
                yield where
    elif isinstance(obj, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(obj):
            yield from pruned_fields(item, schema["items"], f"{path}[{i}]")


def _errors(validator: Any, obj: Any) -> list[str]:
    out = []
    for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in e.absolute_path) or "(top)"
        out.append(f"{where}: {e.message}")
    return out


def check_manifest(obj: Mapping[str, Any]) -> list[str]:
    """Every problem of one manifest (empty: valid): schema errors, and for a RayCluster
    the fields its CRD would prune. An unknown ``apiVersion``/``kind`` is a problem."""
    jsonschema = _jsonschema()
    kind = f"{obj.get('apiVersion')}/{obj.get('kind')}"
    if kind == "ray.io/v1/RayCluster":
        schema = raycluster_schema("v1")
        problems = _errors(jsonschema.Draft7Validator(schema), obj)
        problems += [
            f"{p}: not in the RayCluster schema (pruned)" for p in pruned_fields(obj, schema)
        ]
        return problems
    schemas = _core_schemas()
    if kind not in schemas["kinds"]:
        return [f"(top): no schema for {kind}"]
    full = {
        "$ref": f"#/definitions/{schemas['kinds'][kind]}",
        "definitions": schemas["definitions"],
    }
    return _errors(jsonschema.Draft7Validator(full), obj)
