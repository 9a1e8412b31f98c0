"""A scenario as Kubernetes manifests: a KubeRay ``RayCluster`` whose head runs ``coscale serve``.

:func:`render` turns a validated scenario into plain dicts, one file each
(:func:`write` writes them as YAML into a folder; ``coscale deploy kubernetes SCENARIO``
does both). ``NAME`` below is the scenario's name as a Kubernetes name
(:func:`k8s_name`: lower case, ``[a-z0-9-]``, at most :data:`MAX_NAME` characters so
derived names stay within 63).

``configmap.yaml`` — ConfigMap ``NAME-scenario``
    The scenario (key ``scenario.yaml``), mounted read-only at :data:`SCENARIO_DIR` on
    the head. Every tenant gets an explicit ``key_env`` (its own, else
    ``COSCALE_KEY_<NAME>``): keys live in a Secret, never in the scenario; and
    ``cluster.backend`` is ``ray``.

``raycluster.yaml`` — RayCluster ``NAME`` (``ray.io/v1``)
    * annotation ``ray.io/overwrite-container-cmd: "true"`` (KubeRay ≥ 1.1): each
      container runs ``ulimit -n 65536; $KUBERAY_GEN_RAY_START_CMD`` (the ``ray start``
      line KubeRay generates), and the head then ``exec``\\ s ``coscale serve
      /etc/coscale/scenario.yaml --backend ray --address auto --host 0.0.0.0 --port
      8000`` (the Ray backend retries the connection while ``ray start`` comes up);
    * head group: ``rayStartParams`` ``num-cpus: "0"`` (no replica lands on the head),
      :data:`HEAD_CPU` / :data:`HEAD_MEMORY`, the tenants' keys as environment variables
      from the Secret ``NAME-tenant-keys`` (``secretKeyRef``), Prometheus scrape
      annotations on the pod;
    * one worker group per scenario pool (``groupName`` = the node type as a name):
      ``replicas`` = the pool's ``count``, ``minReplicas`` 0, ``maxReplicas`` = its
      ``max_count`` (``enableInTreeAutoscaling: true``: Ray's autoscaler adds nodes
      for actors left pending), ``rayStartParams.resources`` = ``{"coscale-node/<type>":
      1}`` and ``num-cpus`` = the type's vCPUs, the resource label each replica's
      actor asks for (:mod:`coscale.backends.ray`); container CPU limit = vCPUs,
      request = :data:`POD_CPU_REQUEST_SHARE` × vCPUs, memory request = limit =
      :data:`POD_MEMORY_SHARE` × the type's memory (room for the kubelet and system
      daemons); GPU types add ``nvidia.com/gpu`` (the accelerator count) and a
      toleration of the ``nvidia.com/gpu`` taint, TPU types ``google.com/tpu``; cloud
      types select nodes by the well-known label ``node.kubernetes.io/instance-type``
      (catalog types of provider ``local`` select none).

``service.yaml`` — Service ``NAME-http``
    ClusterIP, port :data:`HTTP_PORT` → the head pod (KubeRay's labels
    ``ray.io/cluster: NAME``, ``ray.io/node-type: head``), with the scrape annotations
    ``prometheus.io/scrape|port|path`` (``/metrics``).

``servicemonitor.yaml`` — ServiceMonitor ``NAME`` (``monitoring.coreos.com/v1``)
    For the Prometheus Operator: scrape the Service's ``http`` port at ``/metrics``
    every :data:`SCRAPE_INTERVAL`. Skip this file where that operator is not installed.

Refusals (:class:`~coscale.errors.CoscaleError`, before anything is written):

* no tenants — the head listens on 0.0.0.0, which ``coscale serve`` allows only with
  tenants (each request needs a key);
* a tenant with ``key_file`` — the pod cannot read a file from this machine;
* a workload trace that is a file rather than a bundled alias — same reason.

A model given as a file path is rendered, with a note: the file must be in the image at
that path. Not rendered: the Secret (``kubectl create secret …`` is printed instead),
the image (it must hold coscale with its ``ray`` extra at the cluster's Ray version).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from coscale.backends.ray import is_gpu, is_tpu, node_resources
from coscale.catalog import Catalog, load_catalog
from coscale.catalog.nodes import NodeType
from coscale.config import TRACE_ALIASES, Scenario, load_scenario
from coscale.errors import CoscaleError
from coscale.tenancy import default_key_env

__all__ = [
    "DEFAULT_IMAGE",
    "HTTP_PORT",
    "Rendered",
    "default_key_env",
    "k8s_name",
    "render",
    "render_file",
    "write",
]

#: HTTP port of ``coscale serve`` in the head pod and of the Service.
HTTP_PORT = 8000
#: Where the ConfigMap (the scenario) is mounted on the head.
SCENARIO_DIR = "/etc/coscale"
SCENARIO_KEY = "scenario.yaml"
#: Image used when none is given: build it with coscale and its ``ray`` extra installed.
DEFAULT_IMAGE = "coscale:latest"
DEFAULT_NAMESPACE = "default"
#: The head runs the GCS and ``coscale serve`` (no replicas): its pod's CPU and memory.
HEAD_CPU = "2"
HEAD_MEMORY = "4Gi"
#: Worker pods request this share of the node type's vCPUs (limit: all of them) ...
POD_CPU_REQUEST_SHARE = 0.9
#: ... and this share of its memory (request = limit), leaving room for system daemons.
POD_MEMORY_SHARE = 0.85
SCRAPE_INTERVAL = "15s"
#: Longest name made from the scenario's (suffixes like ``-tenant-keys`` fit in 63).
MAX_NAME = 40
#: Ray version written in the RayCluster when Ray is not installed here.
FALLBACK_RAY_VERSION = "2.40.0"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
ULIMIT = "ulimit -n 65536"


def k8s_name(text: str, limit: int = MAX_NAME) -> str:
    """``text`` as a DNS-1123 label: lower case, runs of other characters → ``-``,
    trimmed to ``limit`` characters, no leading/trailing ``-``; empty → ``coscale``."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower())[:limit].strip("-")
    return name or "coscale"


def ray_version() -> str:
    """The installed Ray's version (the image must run the same), else the fallback."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError:
        return FALLBACK_RAY_VERSION


@dataclass(frozen=True)
class Rendered:
    """The manifests (file name → object) and notes for the user."""

    name: str
    namespace: str
    files: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    secret_keys: list[str] = field(default_factory=list)

    @property
    def secret_name(self) -> str:
        return f"{self.name}-tenant-keys"

    def secret_command(self) -> str:
        """The ``kubectl`` line that creates the tenants' key Secret."""
        literals = " ".join(f"--from-literal={k}=..." for k in self.secret_keys)
        return f"kubectl -n {self.namespace} create secret generic {self.secret_name} {literals}"


# ------------------------------------------------------------------------- checks


def _check(scenario: Scenario) -> list[str]:
    """Refuse what cannot run in pods (module docstring); return notes for what may not."""
    if not scenario.tenants:
        raise CoscaleError(
            f"scenario {scenario.name!r} has no tenants: on Kubernetes coscale listens on "
            "0.0.0.0, and without tenants anyone who reaches the Service could use it "
            "without a key.",
            fix="add tenants to the scenario, e.g.\ntenants:\n  - name: alice\n    key_env: "
            "ALICE_KEY   # the key comes from a Kubernetes Secret through this variable",
            code="tenants_required",
        )
    for tenant in scenario.tenants:
        if tenant.key_file is not None:
            raise CoscaleError(
                f"tenant {tenant.name!r} keeps its key in a file ({tenant.key_file}), which "
                "the pods cannot read.",
                fix=f"use key_env instead (e.g. key_env: {default_key_env(tenant.name)}); the "
                "rendered cluster reads it from a Kubernetes Secret.",
                code="invalid_input",
            )
    trace = scenario.workload.trace
    if trace is not None and trace.path not in TRACE_ALIASES:
        raise CoscaleError(
            f"the workload replays the trace file {trace.path}, which the pods cannot read.",
            fix=f"use a bundled trace ({', '.join(sorted(TRACE_ALIASES))}) or a generator "
            "workload in the scenario you deploy.",
            code="invalid_input",
        )
    notes = [
        f"model {m.name!r} is read from {m.source} inside the pods: the image must hold it "
        "at that path."
        for m in scenario.models
        if not m.is_builtin
    ]
    notes.append(
        "at its first start the head profiles each model (quick mode, minutes) unless it "
        "finds a profile for its hardware under $COSCALE_HOME (default ~/.cache/coscale)."
    )
    return notes


def _scenario_text(raw: dict[str, Any], scenario: Scenario) -> str:
    """The scenario file as YAML for the ConfigMap: every tenant with an explicit key_env,
    ``cluster.backend: ray`` (simulating the file predicts Ray's per-batch overhead)."""
    data = dict(raw)
    tenants = []
    for given, spec in zip(raw.get("tenants") or [], scenario.tenants, strict=True):
        entry = dict(given)
        entry["key_env"] = spec.key_env or default_key_env(spec.name)
        tenants.append(entry)
    data["tenants"] = tenants
    data["cluster"] = {**(raw.get("cluster") or {}), "backend": "ray"}
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# ------------------------------------------------------------------------- objects


def _labels(name: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "coscale",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "coscale",
    }


def _scrape_annotations() -> dict[str, str]:
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(HTTP_PORT),
        "prometheus.io/path": "/metrics",
    }


def _ray_resources_param(node: NodeType) -> str:
    """``rayStartParams.resources`` in KubeRay's quoting: ``"{\\"coscale-node/T\\": 1}"``."""
    body = json.dumps({k: int(v) if v == int(v) else v for k, v in node_resources(node).items()})
    return '"' + body.replace('"', '\\"') + '"'


def _worker_resources(node: NodeType) -> dict[str, dict[str, str]]:
    cpu_request = f"{max(1, math.floor(node.vcpus * POD_CPU_REQUEST_SHARE * 1000))}m"
    memory = f"{max(256, math.floor(node.memory_gib * POD_MEMORY_SHARE * 1024))}Mi"
    requests = {"cpu": cpu_request, "memory": memory}
    limits = {"cpu": str(node.vcpus), "memory": memory}
    if is_gpu(node):
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(node.accelerator_count)
    elif is_tpu(node):
        requests["google.com/tpu"] = limits["google.com/tpu"] = str(node.accelerator_count)
    return {"requests": requests, "limits": limits}


def _worker_group(name: str, node: NodeType, count: int, limit: int, image: str) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "containers": [
            {
                "name": "ray-worker",
                "image": image,
                "command": ["/bin/bash", "-lc", "--"],
                "args": [f"{ULIMIT}; $KUBERAY_GEN_RAY_START_CMD"],
                "resources": _worker_resources(node),
            }
        ]
    }
    if node.provider != "local":
        pod["nodeSelector"] = {INSTANCE_TYPE_LABEL: node.name}
    taint = "nvidia.com/gpu" if is_gpu(node) else "google.com/tpu" if is_tpu(node) else None
    if taint is not None:
        pod["tolerations"] = [{"key": taint, "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "groupName": k8s_name(node.name, 63),
        "replicas": count,
        "minReplicas": 0,
        "maxReplicas": max(limit, count, 1),
        "rayStartParams": {
            "num-cpus": str(node.vcpus),
            "resources": _ray_resources_param(node),
        },
        "template": {
            "metadata": {"labels": {**_labels(name, "worker"), "coscale.io/node-type": node.name}},
            "spec": pod,
        },
    }


def _head_command(preset: str | None) -> str:
    serve = (
        f"exec coscale serve {SCENARIO_DIR}/{SCENARIO_KEY} --backend ray --address auto "
        f"--host 0.0.0.0 --port {HTTP_PORT}"
    )
    if preset is not None:
        serve += f" --preset {preset}"
    return f"{ULIMIT}; $KUBERAY_GEN_RAY_START_CMD & {serve}"


def _head_group(name: str, image: str, keys: list[str], preset: str | None) -> dict[str, Any]:
    env = [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": f"{name}-tenant-keys", "key": key}}}
        for key in keys
    ]
    container: dict[str, Any] = {
        "name": "ray-head",
        "image": image,
        "command": ["/bin/bash", "-lc", "--"],
        "args": [_head_command(preset)],
        "ports": [
            {"containerPort": 6379, "name": "gcs-server"},
            {"containerPort": 8265, "name": "dashboard"},
            {"containerPort": 10001, "name": "client"},
            {"containerPort": HTTP_PORT, "name": "http"},
        ],
        "env": env,
        "resources": {
            "requests": {"cpu": HEAD_CPU, "memory": HEAD_MEMORY},
            "limits": {"cpu": HEAD_CPU, "memory": HEAD_MEMORY},
        },
        "volumeMounts": [{"name": "scenario", "mountPath": SCENARIO_DIR, "readOnly": True}],
    }
    return {
        "serviceType": "ClusterIP",
        "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
        "template": {
            "metadata": {"labels": _labels(name, "head"), "annotations": _scrape_annotations()},
            "spec": {
                "containers": [container],
                "volumes": [{"name": "scenario", "configMap": {"name": f"{name}-scenario"}}],
            },
        },
    }


def _metadata(name: str, namespace: str, component: str, instance: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": _labels(instance, component)}


# ------------------------------------------------------------------------- render


def render(
    scenario: Scenario,
    raw: dict[str, Any],
    *,
    image: str = DEFAULT_IMAGE,
    namespace: str = DEFAULT_NAMESPACE,
    preset: str | None = None,
    catalog: Catalog | None = None,
) -> Rendered:
    """The manifests of ``scenario`` (module docstring). ``raw`` is the scenario file as
    loaded YAML (written to the ConfigMap, tenants' key_env made explicit). O(pools)."""
    notes = _check(scenario)
    catalog = catalog or load_catalog()
    name = k8s_name(scenario.name)
    ns = k8s_name(namespace, 63)
    keys = sorted({t.key_env or default_key_env(t.name) for t in scenario.tenants})
    groups = [
        _worker_group(name, catalog.get(p.type), p.count, p.limit, image)
        for p in scenario.cluster.nodes
    ]
    cluster_meta = _metadata(name, ns, "ray-cluster", name)
    cluster_meta["annotations"] = {"ray.io/overwrite-container-cmd": "true"}
    raycluster = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": cluster_meta,
        "spec": {
            "rayVersion": ray_version(),
            "enableInTreeAutoscaling": True,
            "autoscalerOptions": {"upscalingMode": "Default", "idleTimeoutSeconds": 60},
            "headGroupSpec": _head_group(name, image, keys, preset),
            "workerGroupSpecs": groups,
        },
    }
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(f"{name}-scenario", ns, "scenario", name),
        "data": {SCENARIO_KEY: _scenario_text(raw, scenario)},
    }
    service_meta = _metadata(f"{name}-http", ns, "http", name)
    service_meta["annotations"] = _scrape_annotations()
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": service_meta,
        "spec": {
            "type": "ClusterIP",
            "selector": {"ray.io/cluster": name, "ray.io/node-type": "head"},
            "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _metadata(name, ns, "metrics", name),
        "spec": {
            "selector": {"matchLabels": _labels(name, "http")},
            "namespaceSelector": {"matchNames": [ns]},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": SCRAPE_INTERVAL}],
        },
    }
    files = {
        "configmap.yaml": configmap,
        "raycluster.yaml": raycluster,
        "service.yaml": service,
        "servicemonitor.yaml": monitor,
    }
    return Rendered(name, ns, files, notes, keys)


def render_file(path: Path, **options: Any) -> Rendered:
    """:func:`render` for a scenario file (validated with :func:`load_scenario` first)."""
    scenario = load_scenario(path)
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return render(scenario, raw, **options)


def write(rendered: Rendered, out: Path) -> list[Path]:
    """Write each manifest as ``out/<file>`` (YAML, keys in render order); the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, obj in rendered.files.items():
        target = out / filename
        target.write_text(yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))
        written.append(target)
    return written
