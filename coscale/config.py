"""The scenario schema: one pydantic model behind the YAML file, the CLI and the HTTP API.

A scenario names the models to serve (with their SLO and fidelity floor), the tenants,
the cluster (node pools from the catalog), the policies (a preset plus overrides) and
the workload (a real trace or a generator). Every model forbids unknown fields and every
field carries a description, so the JSON schema documents itself.

Validation collects every problem in one pass and :func:`load_scenario` turns them into a
:class:`~coscale.errors.ScenarioError` whose message lists each one as::

      - models[0].slo_ms: must be > 0, got -5; valid: Latency objective ... (a number > 0). (line 7)

Algorithm of the error report (:func:`describe_validation_error`):

1. Each pydantic error's ``loc`` tuple is walked through the schema: a field name becomes
   ``.name``, a list index ``[i]``, a dict key ``['key']``.
2. The message depends on the error type: unknown field → ``unknown field 'slo'; did you
   mean 'slo_ms'?`` (difflib close match, cutoff :data:`SUGGESTION_CUTOFF`) with the
   model's field names as the valid values; literal → the allowed values; numeric bound →
   the bound; a name checked against a registry (node type, policy, variant, model) → the
   registry's names; otherwise pydantic's message and the field's description.
3. Cross-field checks (unique names, model_mix names, exactly one of trace/generator,
   max_count >= count) run in validators at the lowest level that sees both fields and
   report the exact sub-path through the error context (``at``). Pydantic skips a
   container's validator when something inside it is invalid, so the loader also runs the
   name checks on the raw document (:func:`_raw_cross_issues`) and adds any problem not
   already listed: one bad field never hides a duplicate name.
4. When the input came from a file, each problem gets the line of its YAML node.

Paths in the file (model files, trace files, key files) are resolved against the folder
of the scenario file (``base_dir``); built-in names and trace aliases are kept as names.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from coscale.accel.base import VARIANT_DESCRIPTIONS
from coscale.errors import ScenarioError

# --------------------------------------------------------------------------- name registries

#: Built-in model families (coscale.accel's zoo must provide exactly these).
BUILTIN_MODELS: frozenset[str] = frozenset({"digits-cnn", "minilm"})
#: File extensions accepted for a user's model file: ONNX, PyTorch, TorchScript.
MODEL_FILE_SUFFIXES: frozenset[str] = frozenset({".onnx", ".pt", ".ts"})

PRESETS: frozenset[str] = frozenset(
    {"baseline", "optimized-a", "optimized-b", "hpa", "kpa", "rayserve", "oracle"}
)
ALLOCATION_POLICIES: frozenset[str] = frozenset(
    {"static", "hpa", "kpa", "rayserve", "predictive", "oracle"}
)
ROUTING_POLICIES: frozenset[str] = frozenset(
    {
        "round-robin",
        "random",
        "least-outstanding",
        "weighted-round-robin",
        "power-of-two",
        "latency-inverse",
        "prequal",
        "earliest-completion",
    }
)
BATCHING_POLICIES: frozenset[str] = frozenset(
    {"none", "fixed", "triton", "clipper-aimd", "rayserve-batch", "slo-aware"}
)
VARIANT_POLICIES: frozenset[str] = frozenset({"fixed", "cheapest-feasible"})
ADMISSION_POLICIES: frozenset[str] = frozenset({"none", "deadline"})
#: Policy kind (the PolicySpec field) → the names a scenario may use for it.
POLICY_KINDS: Mapping[str, frozenset[str]] = types.MappingProxyType(
    {
        "allocation": ALLOCATION_POLICIES,
        "routing": ROUTING_POLICIES,
        "batching": BATCHING_POLICIES,
        "variant": VARIANT_POLICIES,
        "admission": ADMISSION_POLICIES,
    }
)

#: Where the bundled traces live (package data, copied from /work/shared/traces).
TRACES_DIR = Path(__file__).resolve().parent / "data" / "traces"


@dataclass(frozen=True, slots=True)
class TraceAlias:
    """A bundled trace: its path under :data:`TRACES_DIR`, its format, and what it is."""

    relative_path: str
    format: str
    description: str


TRACE_ALIASES: Mapping[str, TraceAlias] = types.MappingProxyType(
    {
        "azure-code": TraceAlias(
            "azure_llm_2023/AzureLLMInferenceTrace_code.csv",
            "azure",
            "Azure LLM inference 2023-11-16, code service: 8,819 requests in ~1 h, very bursty",
        ),
        "azure-conv": TraceAlias(
            "azure_llm_2023/AzureLLMInferenceTrace_conv.csv",
            "azure",
            "Azure LLM inference 2023-11-16, conversation service: 19,366 requests, near-Poisson",
        ),
        "servegen-language": TraceAlias(
            "servegen_2025/language/m-large",
            "servegen",
            "Alibaba ServeGen language m-large: 162 clients, 14 days of 10-min rate windows",
        ),
        "servegen-reason": TraceAlias(
            "servegen_2025/reason/deepseek-r1",
            "servegen",
            "Alibaba ServeGen reasoning deepseek-r1: 73 clients, 1 day of 10-min rate windows",
        ),
        "mooncake": TraceAlias(
            "mooncake_fast25/conversation_trace.jsonl",
            "mooncake",
            "Kimi (Mooncake FAST'25) conversation trace: 12,031 requests in 1 h",
        ),
    }
)
TRACE_FORMATS: frozenset[str] = frozenset({"auto", "azure", "servegen", "mooncake"})

#: difflib ratio above which an unknown name gets a "did you mean" suggestion.
SUGGESTION_CUTOFF = 0.6

#: Defaults the generators apply when a kind-specific parameter is left out.
DEFAULT_MMPP_BURST_FACTOR = 4.0  # burst_rate_rps = factor × rate_rps
DEFAULT_MMPP_MEAN_BURST_S = 10.0
DEFAULT_MMPP_MEAN_CALM_S = 60.0
DEFAULT_DIURNAL_AMPLITUDE = 0.5  # period_s defaults to duration_s (one cycle per run)
DEFAULT_CLOSED_LOOP_CONCURRENCY = 8

_SLUG = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_SLUG_WORDS = (
    "1-63 characters: lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
)
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


# --------------------------------------------------------------------------- error helpers


def suggest(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate (difflib ratio ≥ cutoff), else ``""``."""
    match = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=SUGGESTION_CUTOFF)
    return f"; did you mean {match[0]!r}?" if match else ""


Loc = tuple[int | str, ...]


def _problem(kind: str, message: str, valid: str, at: Loc = ()) -> PydanticCustomError:
    """A pydantic error carrying our message, the valid values and an optional sub-location.

    ``at`` is appended to the error's location (``("name",)``, ``(2,)``,
    ``("model_mix", "x")``) when a validator on a container reports a problem inside it.
    """
    return PydanticCustomError(kind, "{message}", {"message": message, "valid": valid, "at": at})


def _unknown_name(
    value: str, allowed: Iterable[str], what: str, at: Loc = ()
) -> PydanticCustomError:
    names = sorted(allowed)
    return _problem(
        "unknown_name", f"unknown {what} {value!r}{suggest(value, names)}", ", ".join(names), at
    )


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context
    if isinstance(context, Mapping) and context.get("base_dir") is not None:
        return Path(context["base_dir"])
    return Path.cwd()


def _resolve(path: str | Path, info: ValidationInfo) -> Path:
    try:
        p = Path(path).expanduser()
    except RuntimeError:  # ~user with no such user: keep the path as written
        p = Path(path)
    return p if p.is_absolute() else (_base_dir(info) / p).resolve()


def _probe(path: Path, test: str) -> bool:
    """``path.is_file()``/``exists()``; a path the OS cannot look up (a name too long, a NUL
    byte) reads as absent instead of raising."""
    try:
        return bool(getattr(path, test)())
    except (OSError, ValueError):
        return False


def _check_variant(name: str) -> str:
    if name not in VARIANT_DESCRIPTIONS:
        raise _unknown_name(name, VARIANT_DESCRIPTIONS, "variant")
    return name


def _check_node_type(name: str) -> str:
    from coscale.catalog import load_catalog  # lazy: the catalog imports this module

    names = load_catalog().names()
    if name not in names:
        raise _unknown_name(name, names, "node type")
    return name


VariantName = Annotated[str, AfterValidator(_check_variant)]
NodeTypeName = Annotated[str, AfterValidator(_check_node_type)]
ParamValue = float | int | str | bool | None


class _Strict(BaseModel):
    # No NaN or infinity anywhere: a scenario is JSON-shaped data, and an infinite rate,
    # duration or SLO would only hang a run or poison its arithmetic.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- models


class ModelSpec(_Strict):
    """One model to serve, with its latency objective and fidelity floor."""

    name: str = Field(
        pattern=_SLUG,
        description=f"Name the model is served under (in URLs and reports); {_SLUG_WORDS}.",
    )
    source: str = Field(
        min_length=1,
        description="A built-in model (digits-cnn, minilm) or a path to a .onnx, .pt or .ts "
        "(TorchScript) file; a relative path is relative to the scenario file's folder.",
    )
    variants: list[VariantName] | None = Field(
        default=None,
        min_length=1,
        description="Variants the variant policy may choose from (default: all the family "
        "builds); names: " + ", ".join(VARIANT_DESCRIPTIONS) + ".",
    )
    slo_ms: float = Field(
        gt=0, description="Latency objective per request, in milliseconds (a number > 0)."
    )
    accuracy_floor: float = Field(
        ge=0,
        le=1,
        description="Lowest fidelity a variant may have, in [0, 1]: accuracy for classifiers, "
        "mean cosine similarity to fp32 outputs otherwise.",
    )
    max_batch: int = Field(
        default=64, ge=1, le=1024, description="Largest batch a replica runs (1..1024)."
    )

    @field_validator("source")
    @classmethod
    def _source(cls, value: str, info: ValidationInfo) -> str:
        if value in BUILTIN_MODELS:
            return value
        valid = (
            f"a built-in model ({', '.join(sorted(BUILTIN_MODELS))}) or a path to an existing "
            f"{', '.join(sorted(MODEL_FILE_SUFFIXES))} file"
        )
        suffix = Path(value).suffix.lower()
        if suffix not in MODEL_FILE_SUFFIXES:
            hint = suggest(value, BUILTIN_MODELS)
            what = "model file type" if suffix else "built-in model"
            raise _problem("bad_model_source", f"unknown {what} {value!r}{hint}", valid)
        path = _resolve(value, info)
        if not _probe(path, "is_file"):
            raise _problem("missing_file", f"model file {str(path)!r} does not exist", valid)
        return str(path)

    @field_validator("variants")
    @classmethod
    def _unique_variants(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            seen: set[str] = set()
            for i, name in enumerate(value):
                if name in seen:
                    raise _problem(
                        "duplicate", f"variant {name!r} listed twice", "distinct names", (i,)
                    )
                seen.add(name)
        return value

    @property
    def is_builtin(self) -> bool:
        """True when ``source`` names a built-in model rather than a file."""
        return self.source in BUILTIN_MODELS


class TenantSpec(_Strict):
    """A tenant: its fair share, limits, and where its API key is kept (never in the file)."""

    name: str = Field(pattern=_SLUG, description=f"Tenant name; {_SLUG_WORDS}.")
    weight: float = Field(default=1.0, gt=0, description="Fair-share weight (a number > 0).")
    rate_limit_rps: float | None = Field(
        default=None,
        gt=0,
        description="Sustained HTTP requests per second allowed (> 0; a token bucket), or none.",
    )
    rate_burst: float | None = Field(
        default=None,
        ge=1,
        description="Most requests accepted at once after an idle spell (the bucket's size, "
        ">= 1); needs rate_limit_rps; default: max(1, rate_limit_rps).",
    )
    quota_requests: int | None = Field(
        default=None,
        ge=1,
        description="Inference requests allowed per quota period (>= 1), or none.",
    )
    quota_period_s: float | None = Field(
        default=None,
        gt=0,
        description="Length of the quota period in seconds (> 0; e.g. 86400 for a daily "
        "quota, counted from server start); needs quota_requests; default: the whole run.",
    )
    key_env: str | None = Field(
        default=None,
        pattern=_ENV_NAME,
        description="Name of the environment variable that holds the tenant's API key "
        "(letters, digits and '_', not starting with a digit); default when neither key_env "
        "nor key_file is set: COSCALE_KEY_<NAME> (the name upper-cased, '-' and '.' as '_').",
    )
    key_file: Path | None = Field(
        default=None,
        description="File that holds the tenant's API key (relative to the scenario file's "
        "folder; read when serving starts).",
    )

    @field_validator("key_file")
    @classmethod
    def _key_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve(value, info)

    @model_validator(mode="after")
    def _one_key_source(self) -> TenantSpec:
        if self.key_env is not None and self.key_file is not None:
            raise _problem(
                "conflict",
                "both key_env and key_file are set",
                "one of key_env or key_file, or neither",
                ("key_file",),
            )
        pairs = (("rate_burst", "rate_limit_rps"), ("quota_period_s", "quota_requests"))
        for extra, needs in pairs:
            if getattr(self, extra) is not None and getattr(self, needs) is None:
                raise _problem(
                    "missing_dependency",
                    f"{extra} is set without {needs}",
                    f"set {needs} too, or leave {extra} out",
                    (extra,),
                )
        return self


class NodePool(_Strict):
    """Nodes of one catalog type."""

    type: NodeTypeName = Field(description="A node type from the catalog (coscale nodes).")
    count: int = Field(ge=0, description="Nodes at the start of the run (an integer >= 0).")
    max_count: int | None = Field(
        default=None,
        ge=0,
        description="Most nodes the allocation policy may use (>= count); default: count.",
    )

    @field_validator("max_count")
    @classmethod
    def _max_at_least_count(cls, value: int | None, info: ValidationInfo) -> int | None:
        count = info.data.get("count")
        if value is not None and isinstance(count, int) and value < count:
            raise _problem(
                "bad_range",
                f"max_count {value} is below count {count}",
                f"an integer >= count ({count}), or none",
            )
        return value

    @property
    def limit(self) -> int:
        """The most nodes of this pool the allocation policy may use."""
        return self.count if self.max_count is None else self.max_count


def _default_nodes() -> list[NodePool]:
    return [NodePool(type="local-2vcpu", count=1)]


class ClusterSpec(_Strict):
    """The node pools and the rules for buying capacity."""

    nodes: list[NodePool] = Field(
        default_factory=_default_nodes,
        min_length=1,
        description="Node pools, one per node type (default: one local-2vcpu node).",
    )
    spot_share: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Largest share of replicas that may run on spot capacity, in [0, 1].",
    )
    budget_usd_per_hour: float | None = Field(
        default=None, gt=0, description="Spending cap in US$ per hour (> 0), or none."
    )
    backend: Literal["local", "ray"] = Field(
        default="local",
        description="Where replicas run live: local (worker processes) or ray (Ray actors); "
        "the simulator adds that backend's measured per-batch overhead to every batch.",
    )

    @field_validator("nodes")
    @classmethod
    def _pools(cls, value: list[NodePool]) -> list[NodePool]:
        issues = _duplicates([pool.type for pool in value], "node type", "nodes", "type")
        if issues:
            raise issues[0].error("duplicate")
        if sum(pool.limit for pool in value) == 0:
            raise _problem(
                "no_capacity",
                "every pool has count 0 and no max_count, so nothing can ever run",
                "at least one pool with count >= 1 or max_count >= 1",
            )
        return value


class PolicyRef(_Strict):
    """A policy by registry name, with parameters that override its defaults."""

    name: str = Field(description="Policy name from the registry for this kind.")
    params: dict[str, ParamValue] = Field(
        default_factory=dict,
        description="Parameter overrides by parameter name: numbers, strings, booleans, or "
        "null where a parameter takes it (e.g. predictive's burst_ratio: null, no reactions).",
    )

    @field_validator("params", mode="before")
    @classmethod
    def _scalar_params(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            for key, item in value.items():
                if item is not None and not isinstance(item, bool | int | float | str):
                    raise _problem(
                        "bad_param",
                        f"parameter {key!r} is a {type(item).__name__}",
                        "a number, a string, a boolean or null",
                        (str(key),),
                    )
        return value


class PolicySpec(_Strict):
    """Which policies run: a named preset, optionally with some parts replaced."""

    preset: str = Field(
        default="optimized-b",
        description="Policy preset: " + ", ".join(sorted(PRESETS)) + ".",
    )
    allocation: PolicyRef | None = Field(
        default=None, description="Allocation (autoscaling) policy overriding the preset's."
    )
    routing: PolicyRef | None = Field(
        default=None, description="Routing policy overriding the preset's."
    )
    batching: PolicyRef | None = Field(
        default=None, description="Batching policy overriding the preset's."
    )
    variant: PolicyRef | None = Field(
        default=None, description="Variant-selection policy overriding the preset's."
    )
    admission: PolicyRef | None = Field(
        default=None, description="Admission policy overriding the preset's."
    )

    @field_validator("preset")
    @classmethod
    def _preset(cls, value: str) -> str:
        if value not in PRESETS:
            raise _unknown_name(value, PRESETS, "preset")
        return value

    @field_validator("allocation", "routing", "batching", "variant", "admission")
    @classmethod
    def _policy_name(cls, value: PolicyRef | None, info: ValidationInfo) -> PolicyRef | None:
        kind = info.field_name
        if value is not None and kind is not None and value.name not in POLICY_KINDS[kind]:
            raise _unknown_name(value.name, POLICY_KINDS[kind], f"{kind} policy", ("name",))
        return value


class TraceSpec(_Strict):
    """Replay a real trace: a bundled alias or a file/folder path."""

    path: str = Field(
        min_length=1,
        description="A bundled trace (" + ", ".join(TRACE_ALIASES) + ") or a path to a trace "
        "file (ServeGen: a folder of chunk-*-trace.csv), relative to the scenario file's folder.",
    )
    format: Literal["auto", "azure", "servegen", "mooncake"] = Field(
        default="auto",
        description="Trace format; auto infers it from the alias or the file (Azure CSV with "
        "a TIMESTAMP header, Mooncake .jsonl, ServeGen folder or headerless CSV).",
    )
    time_scale: float = Field(
        default=1.0,
        gt=0,
        description="Speed-up factor (> 0): 2 replays the trace twice as fast, doubling the rate.",
    )
    start_s: float = Field(
        default=0.0, ge=0, description="Where to start in the trace, in trace seconds (>= 0)."
    )
    duration_s: float | None = Field(
        default=None,
        gt=0,
        description="How much of the trace to replay, in trace seconds (> 0); default: all.",
    )

    @field_validator("path")
    @classmethod
    def _path(cls, value: str, info: ValidationInfo) -> str:
        if value in TRACE_ALIASES:
            return value
        path = _resolve(value, info)
        if not _probe(path, "exists"):
            valid = "a bundled trace (" + ", ".join(sorted(TRACE_ALIASES)) + ") or an existing path"
            hint = suggest(value, TRACE_ALIASES)
            raise _problem("missing_file", f"no bundled trace or file named {value!r}{hint}", valid)
        return str(path)

    @model_validator(mode="after")
    def _known_format(self) -> TraceSpec:
        try:
            resolve_trace_format(self)
        except ValueError as exc:
            raise _problem(
                "unknown_format", str(exc), "format: azure, servegen or mooncake", ("format",)
            ) from None
        return self


#: Generator kind → the parameters that apply only to it.
_GENERATOR_PARAMS: Mapping[str, tuple[str, ...]] = types.MappingProxyType(
    {
        "mmpp": ("burst_rate_rps", "mean_burst_s", "mean_calm_s"),
        "diurnal": ("period_s", "amplitude"),
        "closed-loop": ("concurrency",),
    }
)


class GeneratorSpec(_Strict):
    """Synthetic arrivals: Poisson, Markov-modulated (bursty), diurnal, or closed-loop."""

    kind: Literal["poisson", "mmpp", "diurnal", "closed-loop"] = Field(
        description="Arrival process: poisson, mmpp (calm/burst), diurnal (sinusoidal rate), "
        "closed-loop (fixed number of clients, each sends when its last request returns)."
    )
    rate_rps: float = Field(
        gt=0,
        description="Mean arrival rate in requests/s (> 0); mmpp: the calm rate; closed-loop: "
        "the clients' total rate cap.",
    )
    duration_s: float = Field(gt=0, description="Length of the workload in seconds (> 0).")
    burst_rate_rps: float | None = Field(
        default=None,
        gt=0,
        description="mmpp only: arrival rate during bursts, requests/s, above rate_rps "
        f"(default {DEFAULT_MMPP_BURST_FACTOR:g} × rate_rps).",
    )
    mean_burst_s: float | None = Field(
        default=None,
        gt=0,
        description="mmpp only: mean burst length, s "
        f"(> 0; default {DEFAULT_MMPP_MEAN_BURST_S:g}).",
    )
    mean_calm_s: float | None = Field(
        default=None,
        gt=0,
        description=f"mmpp only: mean calm length, s (> 0; default {DEFAULT_MMPP_MEAN_CALM_S:g}).",
    )
    period_s: float | None = Field(
        default=None, gt=0, description="diurnal only: period, s (> 0; default duration_s)."
    )
    amplitude: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="diurnal only: relative swing of the rate, in [0, 1) "
        f"(default {DEFAULT_DIURNAL_AMPLITUDE:g}): rate × (1 + amplitude × sin(2πt/period)).",
    )
    concurrency: int | None = Field(
        default=None,
        ge=1,
        description="closed-loop only: number of clients (>= 1; "
        f"default {DEFAULT_CLOSED_LOOP_CONCURRENCY}).",
    )

    @model_validator(mode="after")
    def _kind_params(self) -> GeneratorSpec:
        for kind, params in _GENERATOR_PARAMS.items():
            for param in params:
                if kind != self.kind and getattr(self, param) is not None:
                    raise _problem(
                        "wrong_kind",
                        f"{param} applies only to kind {kind!r}, not {self.kind!r}",
                        "parameters of this kind: "
                        + (", ".join(_GENERATOR_PARAMS.get(self.kind, ())) or "none"),
                        (param,),
                    )
        if self.burst_rate_rps is not None and self.burst_rate_rps <= self.rate_rps:
            raise _problem(
                "bad_range",
                f"burst_rate_rps {self.burst_rate_rps:g} is not above rate_rps {self.rate_rps:g}",
                f"a rate > rate_rps ({self.rate_rps:g})",
                ("burst_rate_rps",),
            )
        return self

    def with_defaults(self) -> GeneratorSpec:
        """A copy with this kind's unset parameters filled with the documented defaults."""
        fill: dict[str, float | int] = {}
        if self.kind == "mmpp":
            fill = {
                "burst_rate_rps": DEFAULT_MMPP_BURST_FACTOR * self.rate_rps,
                "mean_burst_s": DEFAULT_MMPP_MEAN_BURST_S,
                "mean_calm_s": DEFAULT_MMPP_MEAN_CALM_S,
            }
        elif self.kind == "diurnal":
            fill = {"period_s": self.duration_s, "amplitude": DEFAULT_DIURNAL_AMPLITUDE}
        elif self.kind == "closed-loop":
            fill = {"concurrency": DEFAULT_CLOSED_LOOP_CONCURRENCY}
        update = {k: v for k, v in fill.items() if getattr(self, k) is None}
        return self.model_copy(update=update)


class WorkloadSpec(_Strict):
    """Where requests come from: exactly one of a trace or a generator."""

    trace: TraceSpec | None = Field(default=None, description="Replay a real trace.")
    generator: GeneratorSpec | None = Field(
        default=None, description="Generate synthetic arrivals."
    )
    model_mix: dict[str, float] | None = Field(
        default=None,
        description="Share of requests per model name (weights >= 0, normalized; "
        "default: equal shares).",
    )

    @field_validator("model_mix")
    @classmethod
    def _weights(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return None
        for name, weight in value.items():
            if weight < 0:
                raise _problem("bad_weight", f"weight {weight:g} is negative", ">= 0", (name,))
        if not value or sum(value.values()) <= 0:
            raise _problem(
                "bad_weight", "the weights sum to 0", "at least one weight > 0, or omit model_mix"
            )
        return value

    @model_validator(mode="after")
    def _exactly_one_source(self) -> WorkloadSpec:
        if (self.trace is None) == (self.generator is None):
            both = self.trace is not None
            raise _problem(
                "source",
                "both trace and generator are set"
                if both
                else "neither trace nor generator is set",
                "exactly one of trace or generator",
            )
        return self


class Scenario(_Strict):
    """A complete experiment or deployment: what to serve, on what, under which policies."""

    name: str = Field(min_length=1, description="Scenario name, shown in reports.")
    seed: int = Field(default=0, ge=0, description="Seed for every random choice (>= 0).")
    models: list[ModelSpec] = Field(
        min_length=1, description="Models to serve (at least one; names unique)."
    )
    tenants: list[TenantSpec] = Field(
        default_factory=list, description="Tenants (names unique); default: none."
    )
    cluster: ClusterSpec = Field(
        default_factory=ClusterSpec, description="Node pools and capacity rules."
    )
    policies: PolicySpec = Field(
        default_factory=PolicySpec, description="Policy preset and overrides."
    )
    workload: WorkloadSpec = Field(description="Where requests come from.")

    @field_validator("models")
    @classmethod
    def _unique_models(cls, value: list[ModelSpec]) -> list[ModelSpec]:
        _check_unique([m.name for m in value], "model", "models")
        return value

    @field_validator("tenants")
    @classmethod
    def _unique_tenants(cls, value: list[TenantSpec]) -> list[TenantSpec]:
        _check_unique([t.name for t in value], "tenant", "tenants")
        return value

    @field_validator("workload")
    @classmethod
    def _mix_names(cls, value: WorkloadSpec, info: ValidationInfo) -> WorkloadSpec:
        models = info.data.get("models")
        if value.model_mix is None or models is None:
            return value  # models invalid: their own errors are reported
        issues = _unknown_mix_names(value.model_mix, [m.name for m in models])
        if issues:
            raise issues[0].error("unknown_name", ("model_mix",))
        return value

    def model(self, name: str) -> ModelSpec:
        """The model named ``name``; unknown → ScenarioError listing the names."""
        for spec in self.models:
            if spec.name == name:
                return spec
        names = ", ".join(m.name for m in self.models)
        raise ScenarioError(f"scenario {self.name!r} has no model {name!r}", fix=f"Use {names}.")


@dataclass(frozen=True, slots=True)
class _Issue:
    """A cross-field problem found by a shared check: sub-location, message, valid values."""

    loc: Loc
    message: str
    valid: str

    def error(self, kind: str, prefix: Loc = ()) -> PydanticCustomError:
        return _problem(kind, self.message, self.valid, prefix + self.loc)


def _duplicates(
    names: Sequence[object], what: str, container: str, key: str = "name"
) -> list[_Issue]:
    """Every repeated name after its first use, at ``[i].key``, naming the first use."""
    first: dict[object, int] = {}
    issues = []
    for i, name in enumerate(names):
        if not isinstance(name, str):
            continue
        if name in first:
            issues.append(
                _Issue(
                    (i, key),
                    f"duplicate {what} {name!r} (also {container}[{first[name]}])",
                    f"distinct {what} names",
                )
            )
        else:
            first[name] = i
    return issues


def _unknown_mix_names(mix: Iterable[object], names: Sequence[str]) -> list[_Issue]:
    """model_mix keys that name no model."""
    known = sorted(set(names))
    return [
        _Issue((key,), f"unknown model {key!r}{suggest(key, known)}", ", ".join(known))
        for key in mix
        if isinstance(key, str) and key not in names
    ]


def _check_unique(names: Sequence[str], what: str, container: str) -> None:
    issues = _duplicates(names, what, container)
    if issues:
        raise issues[0].error("duplicate")


def _raw_cross_issues(data: Mapping[str, Any]) -> list[tuple[Loc, _Issue]]:
    """Cross-field checks on the raw document, for when field errors stop the validators.

    Pydantic runs a container's validator only when its contents are valid, so a file with a
    bad slo_ms would not report duplicate model names. These checks read the raw mapping
    (skipping anything of the wrong shape, which has its own error) and return each issue
    with the location of the container it belongs to.
    """

    def column(value: Any, key: str) -> list[object]:
        """``row[key]`` for each row of a list, None where a row is not a mapping."""
        if not isinstance(value, list):
            return []
        return [row.get(key) if isinstance(row, Mapping) else None for row in value]

    found: list[tuple[Loc, _Issue]] = []
    names = column(data.get("models"), "name")
    found += [(("models",), i) for i in _duplicates(names, "model", "models")]
    tenants = column(data.get("tenants"), "name")
    found += [(("tenants",), i) for i in _duplicates(tenants, "tenant", "tenants")]
    cluster = data.get("cluster")
    if isinstance(cluster, Mapping):
        pools = column(cluster.get("nodes"), "type")
        issues = _duplicates(pools, "node type", "nodes", "type")
        found += [(("cluster", "nodes"), i) for i in issues]
    workload = data.get("workload")
    mix = workload.get("model_mix") if isinstance(workload, Mapping) else None
    if isinstance(mix, Mapping) and names and all(isinstance(n, str) for n in names):
        issues = _unknown_mix_names(mix, [str(n) for n in names])
        found += [(("workload", "model_mix"), i) for i in issues]
    return found


# --------------------------------------------------------------------------- traces


def resolve_trace_path(spec: TraceSpec) -> Path:
    """The file or folder to read: an alias maps into :data:`TRACES_DIR`, a path is itself."""
    alias = TRACE_ALIASES.get(spec.path)
    return TRACES_DIR / alias.relative_path if alias else Path(spec.path)


def resolve_trace_format(spec: TraceSpec) -> str:
    """The trace's format: explicit, the alias's, or inferred from the path.

    Inference for ``auto``: a folder → servegen; ``.jsonl`` → mooncake; ``.csv`` whose first
    line starts with ``TIMESTAMP`` → azure, other ``.csv`` → servegen (one client's chunk).
    Anything else, or an unreadable CSV, raises ValueError.
    """
    if spec.format != "auto":
        return spec.format
    alias = TRACE_ALIASES.get(spec.path)
    if alias is not None:
        return alias.format
    path = Path(spec.path)
    if path.is_dir():
        return "servegen"
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "mooncake"
    if suffix == ".csv":
        try:
            with path.open(encoding="utf-8", errors="replace") as fh:
                head = fh.readline()
        except OSError as exc:
            raise ValueError(f"cannot read trace {path.name!r}: {exc.strerror}") from None
        return "azure" if head.startswith("TIMESTAMP") else "servegen"
    raise ValueError(f"cannot infer the trace format of {path.name!r}; set format")


# --------------------------------------------------------------------------- error reporting


@dataclass(frozen=True, slots=True)
class Problem:
    """One validation problem: where (path), what is wrong, what would be valid, which line."""

    path: str
    message: str
    valid: str
    loc: Loc = ()
    line: int | None = None

    def render(self) -> str:
        """``  - models[0].slo_ms: must be > 0, got -5; valid: ... (line 7)``."""
        text = f"  - {self.path or '(top level)'}: {self.message}"
        if self.valid:
            text += f"; valid: {self.valid}"
        if self.line is not None:
            text += f" (line {self.line})"
        return text


_BOUND_WORDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and ``X | None`` down to the core type."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _walk(root: type[BaseModel], loc: Sequence[int | str]) -> tuple[str, Any, FieldInfo | None]:
    """Render ``loc`` as a path; also return the type found there and the last field's info.

    A model field becomes ``.name``, a list index ``[i]``, a dict key ``['key']``; a part
    the schema does not know (an unknown field) is rendered as a field.
    """
    path = ""
    annotation: Any = root
    field: FieldInfo | None = None
    for part in loc:
        core = _unwrap(annotation)
        origin = typing.get_origin(core)
        if isinstance(core, type) and issubclass(core, BaseModel) and part in core.model_fields:
            field = core.model_fields[str(part)]
            annotation = field.annotation
            path += f".{part}" if path else str(part)
        elif origin in (list, tuple) and isinstance(part, int):
            annotation = typing.get_args(core)[0]
            path += f"[{part}]"
        elif origin is dict:
            if part == "[key]":
                continue
            annotation = typing.get_args(core)[1]
            path += f"[{part!r}]"
        else:
            annotation = None
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path, annotation, field


def _got(value: Any) -> str:
    if isinstance(value, bool | int | float | str) or value is None:
        text = repr(value)
        return f", got {text}" if len(text) <= 60 else ""
    return ""


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe_validation_error(exc: ValidationError, root: type[BaseModel]) -> list[Problem]:
    """Every error in ``exc`` as a :class:`Problem` (see the module docstring for the rules)."""
    return [_describe(err, root) for err in exc.errors(include_url=False)]


def _describe(err: Any, root: type[BaseModel]) -> Problem:
    kind = err["type"]
    ctx: dict[str, Any] = dict(err.get("ctx") or {})
    value = err.get("input")
    loc: Loc = tuple(err["loc"]) + tuple(ctx.get("at") or ())
    path, _, field = _walk(root, loc)
    if "message" in ctx and "valid" in ctx:
        return Problem(path, str(ctx["message"]), str(ctx["valid"]), loc)
    if kind == "extra_forbidden":
        _, parent, _ = _walk(root, loc[:-1])
        core = _unwrap(parent)
        is_model = isinstance(core, type) and issubclass(core, BaseModel)
        fields = list(core.model_fields) if is_model else []
        key = str(loc[-1])
        message = f"unknown field {key!r}{suggest(key, fields)}"
        return Problem(path, message, ", ".join(fields), loc)
    description = field.description if field is not None and field.description else ""
    if kind == "missing":
        return Problem(path, "required field is missing", description, loc)
    if kind == "literal_error":
        allowed = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        hint = suggest(value, allowed) if isinstance(value, str) else ""
        return Problem(path, f"{value!r} is not allowed{hint}", ", ".join(allowed), loc)
    bounds = [f"{word} {_number(ctx[k])}" for k, word in _BOUND_WORDS.items() if k in ctx]
    if bounds:
        return Problem(path, f"must be {bounds[0]}{_got(value)}", description, loc)
    if kind == "string_pattern_mismatch":  # the regex itself is no help to a reader
        return Problem(path, f"not of the required form{_got(value)}", description, loc)
    _, annotation, _ = _walk(root, loc)
    core = _unwrap(annotation)
    if kind in ("model_type", "model_attributes_type", "dict_type") and (
        isinstance(core, type) and issubclass(core, BaseModel)
    ):
        valid = "a mapping with fields: " + ", ".join(core.model_fields)
        return Problem(path, f"expected a mapping{_got(value)}", valid, loc)
    message = str(err["msg"])
    message = message[:1].lower() + message[1:]
    got = _got(value) if "got " not in message else ""
    return Problem(path, message + got, description, loc)


# --------------------------------------------------------------------------- loading


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        except TypeError:
            continue  # unhashable key: construct_mapping reports it
    return dict(loader.construct_mapping(node, deep=True))


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _line_of(node: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """1-based line of the YAML node at ``loc`` (deepest node found on the way)."""
    line = None
    for depth, part in enumerate(loc):
        if node is None:
            break
        line = node.start_mark.line + 1
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if getattr(key_node, "value", None) == part:
                    child = key_node if depth == len(loc) - 1 else value_node
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            child = node.value[part]
        node = child
    if node is not None:
        line = node.start_mark.line + 1
    return line


def _fail(source: str, problems: Sequence[Problem]) -> ScenarioError:
    count = len(problems)
    lines = "\n".join(p.render() for p in problems)
    return ScenarioError(
        f"scenario {source} has {count} error{'s' if count != 1 else ''}:\n{lines}\n",
        fix="Fix each field listed; `coscale validate FILE` checks the file again.",
    )


def _validate(data: Any, base_dir: Path, source: str, tree: yaml.Node | None) -> Scenario:
    if not isinstance(data, Mapping):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        valid = "a mapping with fields: " + _fields()
        raise _fail(source, [Problem("", f"the top level is {kind}", valid)])
    try:
        return Scenario.model_validate(dict(data), context={"base_dir": base_dir})
    except ValidationError as exc:
        problems = describe_validation_error(exc, Scenario)
        seen = {p.path for p in problems}
        for prefix, issue in _raw_cross_issues(data):
            loc = prefix + issue.loc
            path = _walk(Scenario, loc)[0]
            if path not in seen:
                problems.append(Problem(path, issue.message, issue.valid, loc))
        if tree is not None:
            problems = [dataclasses.replace(p, line=_line_of(tree, p.loc)) for p in problems]
        raise _fail(source, problems) from None


def _fields() -> str:
    return ", ".join(Scenario.model_fields)


def scenario_from_dict(
    data: Any, base_dir: Path | None = None, *, source: str = "<dict>"
) -> Scenario:
    """Validate an in-memory scenario (HTTP body, CLI flags); paths resolve against ``base_dir``.

    Raises ScenarioError listing every problem.
    """
    return _validate(data, (base_dir or Path.cwd()).resolve(), source, None)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario YAML file.

    Every failure is a ScenarioError: a missing or unreadable file, a YAML syntax error (with
    its line and column), a duplicate key, a top level that is not a mapping, and every schema
    problem (each with its path, what is wrong, what is valid, and its line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(
            f"scenario file {str(path)!r} does not exist",
            fix="Check the path (examples/ has digits.yaml, minilm.yaml and cluster.yaml).",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(
            f"cannot read scenario file {str(path)!r}: {exc}",
            fix="Pass a readable UTF-8 YAML file.",
        ) from None
    try:
        tree = yaml.compose(text, Loader=_StrictLoader)
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = " ".join(str(s) for s in (exc.context, exc.problem) if s)
        raise ScenarioError(
            f"scenario {path} is not valid YAML{where}: {what}",
            fix="Fix the YAML syntax there (indentation, a missing ':' or an unclosed quote).",
        ) from None
    except yaml.YAMLError as exc:
        raise ScenarioError(
            f"scenario {path} is not valid YAML: {exc}", fix="Fix the YAML syntax."
        ) from None
    return _validate(data, path.resolve().parent, str(path), tree)


def scenario_summary(scenario: Scenario) -> str:
    """One line describing a valid scenario (for ``coscale validate``)."""
    cluster = scenario.cluster
    nodes = sum(p.count for p in cluster.nodes)
    limit = sum(p.limit for p in cluster.nodes)
    workload = scenario.workload
    if workload.trace is not None:
        source = f"trace {workload.trace.path} x{workload.trace.time_scale:g}"
    else:
        assert workload.generator is not None
        gen = workload.generator
        source = f"{gen.kind} generator, {gen.rate_rps:g} req/s for {gen.duration_s:g} s"
    return (
        f"{scenario.name!r}: {len(scenario.models)} model(s) "
        f"({', '.join(m.name for m in scenario.models)}), {len(scenario.tenants)} tenant(s), "
        f"{nodes:,} node(s) of {len(cluster.nodes)} type(s) (up to {limit:,}), "
        f"spot <= {cluster.spot_share:.0%}, preset {scenario.policies.preset}, {source}"
    )
