"""The node catalog: cloud machine types as frozen :class:`NodeType` rows.

The data lives in ``nodes.yaml`` beside this file (prices, power, preemption and failure
rates, start-up time and relative speed, each row with the source and date of its price).
:func:`load_catalog` reads it (or another file of the same schema), validates every row
with pydantic (unknown fields rejected) and returns a :class:`Catalog`.

File schema, version 1::

    schema_version: 1
    reference: local-2vcpu          # the type profiles are measured on; its speedup is 1.0
    node_types: [ {name, provider, vcpus, memory_gib, ..., price_source, price_date}, ... ]

Row rules, beyond each field's type and bound: names unique; an accelerator name iff
accelerator_count > 0 iff accelerator_memory_gib > 0; spot price strictly below on-demand;
peak watts ≥ idle watts; price_date is ``YYYY-MM`` or ``YYYY-MM-DD``. Any violation raises
:class:`~coscale.errors.CatalogError` naming the row (index and name) and the field.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from coscale.catalog.nodes import NodeType
from coscale.errors import CatalogError

__all__ = ["DEFAULT_CATALOG_PATH", "SCHEMA_VERSION", "Catalog", "NodeType", "load_catalog"]

#: The catalog shipped with coscale.
DEFAULT_CATALOG_PATH = Path(__file__).resolve().parent / "nodes.yaml"
#: The only file schema version this loader reads.
SCHEMA_VERSION = 1


def _suggest(name: str, candidates: Iterable[str]) -> str:
    from coscale.config import suggest  # lazy: keeps `import coscale.catalog.nodes` light

    return suggest(name, candidates)


def _row_problem(message: str, valid: str, at: tuple[int | str, ...]) -> PydanticCustomError:
    return PydanticCustomError(
        "bad_row", "{message}", {"message": message, "valid": valid, "at": at}
    )


class _NodeTypeRow(BaseModel):
    """One row of nodes.yaml; the fields are exactly :class:`NodeType`'s."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Node type name as the provider spells it.")
    provider: str = Field(min_length=1, description="Cloud provider (aws, gcp, ...) or local.")
    vcpus: int = Field(ge=1, description="vCPUs per node (>= 1).")
    memory_gib: float = Field(gt=0, description="Memory per node, GiB (> 0).")
    accelerator: str | None = Field(description="Accelerator model, or null for CPU-only.")
    accelerator_count: int = Field(ge=0, description="Accelerators per node (>= 0).")
    accelerator_memory_gib: float = Field(ge=0, description="Memory per accelerator, GiB.")
    on_demand_usd_per_hour: float = Field(gt=0, description="On-demand list price, US$/h.")
    spot_usd_per_hour: float = Field(gt=0, description="Typical spot price, US$/h (< on-demand).")
    idle_watts: float = Field(ge=0, description="Power at idle, W.")
    peak_watts: float = Field(gt=0, description="Power at full load, W (>= idle_watts).")
    preemption_per_hour: float = Field(ge=0, description="Spot preemptions per node-hour.")
    failure_per_hour: float = Field(ge=0, description="Host failures per node-hour.")
    startup_s: float = Field(ge=0, description="Seconds from decision to a serving replica.")
    speedup: float = Field(gt=0, description="Per-replica throughput relative to the reference.")
    replicas_per_node: int = Field(ge=1, description="Replicas of one model per node (>= 1).")
    price_source: str = Field(min_length=1, description="Where the price is published.")
    price_date: str = Field(
        pattern=r"^\d{4}-\d{2}(-\d{2})?$", description="When the price was recorded: YYYY-MM[-DD]."
    )

    @model_validator(mode="after")
    def _consistent(self) -> _NodeTypeRow:
        has = (self.accelerator is not None, self.accelerator_count > 0)
        if has[0] != has[1] or has[1] != (self.accelerator_memory_gib > 0):
            raise _row_problem(
                "accelerator, accelerator_count and accelerator_memory_gib disagree",
                "all set (name, count >= 1, memory > 0) or none (null, 0, 0)",
                ("accelerator_count",),
            )
        if self.spot_usd_per_hour >= self.on_demand_usd_per_hour:
            raise _row_problem(
                f"spot price {self.spot_usd_per_hour:g} is not below on-demand "
                f"{self.on_demand_usd_per_hour:g}",
                f"a price < {self.on_demand_usd_per_hour:g}",
                ("spot_usd_per_hour",),
            )
        if self.peak_watts < self.idle_watts:
            raise _row_problem(
                f"peak_watts {self.peak_watts:g} is below idle_watts {self.idle_watts:g}",
                f"a power >= {self.idle_watts:g}",
                ("peak_watts",),
            )
        return self


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = Field(description="File schema version (1).")
    reference: str = Field(description="Name of the reference node type (speedup 1.0).")
    node_types: list[_NodeTypeRow] = Field(min_length=1, description="The node types.")

    @model_validator(mode="after")
    def _names(self) -> _CatalogFile:
        first: dict[str, int] = {}
        for i, row in enumerate(self.node_types):
            if row.name in first:
                raise _row_problem(
                    f"duplicate name {row.name!r} (also node_types[{first[row.name]}])",
                    "distinct names",
                    ("node_types", i, "name"),
                )
            first[row.name] = i
        if self.reference not in first:
            raise _row_problem(
                f"reference {self.reference!r} is not a node type{_suggest(self.reference, first)}",
                ", ".join(first),
                ("reference",),
            )
        if self.node_types[first[self.reference]].speedup != 1.0:
            raise _row_problem(
                "the reference type's speedup is not 1.0",
                "1.0 (speedups are relative to the reference)",
                ("node_types", first[self.reference], "speedup"),
            )
        return self


_NODE_FIELDS = tuple(f.name for f in dataclasses.fields(NodeType))
assert set(_NODE_FIELDS) == set(_NodeTypeRow.model_fields), "nodes.yaml row != NodeType"


@dataclass(frozen=True)
class Catalog:
    """The node types of one catalog file, by name. Immutable."""

    types: tuple[NodeType, ...]
    reference: str
    source: str = "<memory>"
    _by_name: Mapping[str, NodeType] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {t.name: t for t in self.types})
        if self.reference not in self._by_name:
            raise CatalogError(
                f"catalog {self.source}: reference {self.reference!r} is not one of its types",
                fix=f"Name one of: {', '.join(self._by_name)}.",
            )

    def names(self) -> tuple[str, ...]:
        """Type names in file order."""
        return tuple(t.name for t in self.types)

    def get(self, name: str) -> NodeType:
        """The type called ``name``; unknown → CatalogError listing the valid names."""
        try:
            return self._by_name[name]
        except KeyError:
            raise CatalogError(
                f"unknown node type {name!r}{_suggest(name, self._by_name)}",
                fix=f"Valid node types: {', '.join(self.names())}.",
            ) from None

    def local(self) -> NodeType:
        """The reference type: the machine profiles are measured on (speedup 1.0)."""
        return self._by_name[self.reference]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[NodeType]:
        return iter(self.types)

    def __len__(self) -> int:
        return len(self.types)


def _row_label(data: Mapping[str, Any], path: str) -> str:
    """``node_types[3].x`` → ``node_types[3] (g5.xlarge).x`` using the raw row's name."""
    match = re.match(r"^node_types\[(\d+)\]", path)
    rows = data.get("node_types")
    if match is None or not isinstance(rows, list):
        return path
    index = int(match.group(1))
    row = rows[index] if index < len(rows) else None
    name = row.get("name") if isinstance(row, Mapping) else None
    if name is None:
        return path
    return f"{path[: match.end()]} ({name}){path[match.end() :]}"


def parse_catalog(data: Any, source: str = "<memory>") -> Catalog:
    """Validate parsed catalog data (see the module docstring) and build a :class:`Catalog`."""
    if not isinstance(data, Mapping):
        raise CatalogError(
            f"catalog {source}: the top level is not a mapping",
            fix="Write schema_version, reference and node_types at the top level.",
        )
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CatalogError(
            f"catalog {source}: schema_version {version!r} is not supported; "
            f"valid: {SCHEMA_VERSION}",
            fix=f"Set schema_version: {SCHEMA_VERSION} and use its row fields.",
        )
    from coscale.config import describe_validation_error  # lazy, as in _suggest

    try:
        parsed = _CatalogFile.model_validate(dict(data))
    except ValidationError as exc:
        lines = []
        for problem in describe_validation_error(exc, _CatalogFile):
            path = _row_label(data, problem.path)
            lines.append(problem.render().replace(problem.path, path, 1))
        raise CatalogError(
            f"catalog {source} has {len(lines)} bad field(s):\n" + "\n".join(lines) + "\n",
            fix="Fix each row and field listed.",
        ) from None
    rows = tuple(NodeType(**row.model_dump()) for row in parsed.node_types)
    return Catalog(types=rows, reference=parsed.reference, source=source)


def load_catalog(path: Path | None = None) -> Catalog:
    """Read and validate a catalog file; ``None`` → the bundled ``nodes.yaml`` (cached)."""
    if path is None:
        return _default_catalog()
    return _read(Path(path))


@functools.lru_cache(maxsize=1)
def _default_catalog() -> Catalog:
    return _read(DEFAULT_CATALOG_PATH)


def _read(path: Path) -> Catalog:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(
            f"cannot read node catalog {str(path)!r}: {exc}", fix="Pass an existing YAML file."
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(
            f"node catalog {path} is not valid YAML: {exc}", fix="Fix the YAML syntax."
        ) from None
    return parse_catalog(data, source=str(path))
