"""Scenario files fuzzed with hypothesis: whatever the input, a Scenario or a clear
ScenarioError naming a field — never another exception, never a traceback.

Three sources of input: (1) a realistic valid scenario with one to three random
mutations (a value replaced by a random value, a key removed, an unknown key added),
validated in memory; (2) random YAML documents and random text (including invalid
UTF-8 bytes) written to a file and read by ``load_scenario``; (3) some of both through
``coscale validate`` (in-process with typer's runner): exit status 0 or 2, no traceback.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from coscale.cli import app
from coscale.config import Scenario, load_scenario, scenario_from_dict
from coscale.errors import ScenarioError

#: Multiplies every test's example count (``COSCALE_FUZZ_SCALE=20`` for a long search).
SCALE = max(1, int(os.environ.get("COSCALE_FUZZ_SCALE", "1")))


def fuzz(examples: int) -> settings:
    """``examples`` × :data:`SCALE` generated inputs, no deadline, no example database."""
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


BASE: dict[str, Any] = {
    "name": "fuzz",
    "seed": 3,
    "models": [
        {
            "name": "digits",
            "source": "digits-cnn",
            "variants": ["fp32-eager", "int8-dynamic"],
            "slo_ms": 50,
            "accuracy_floor": 0.9,
            "max_batch": 32,
        },
        {"name": "minilm", "source": "minilm", "slo_ms": 200, "accuracy_floor": 0.99},
    ],
    "tenants": [
        {"name": "alice", "weight": 2, "rate_limit_rps": 5, "rate_burst": 10, "key_env": "A_KEY"},
        {"name": "bob", "quota_requests": 100, "quota_period_s": 3600, "key_file": "bob.key"},
    ],
    "cluster": {
        "nodes": [{"type": "local-2vcpu", "count": 1, "max_count": 4}],
        "spot_share": 0.5,
        "budget_usd_per_hour": 3.0,
    },
    "policies": {
        "preset": "optimized-b",
        "batching": {"name": "slo-aware", "params": {"max_wait_ms": 5}},
        "admission": {"name": "deadline"},
    },
    "workload": {
        "generator": {"kind": "mmpp", "rate_rps": 10, "duration_s": 60, "burst_rate_rps": 40},
        "model_mix": {"digits": 3, "minilm": 1},
    },
}

KEYS = sorted(
    {
        "name",
        "seed",
        "models",
        "tenants",
        "cluster",
        "policies",
        "workload",
        "source",
        "slo_ms",
        "variants",
        "weight",
        "key_env",
        "nodes",
        "type",
        "count",
        "preset",
        "params",
        "trace",
        "generator",
        "path",
        "kind",
        "rate_rps",
        "model_mix",
        "quota_period_s",
    }
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            "digits-cnn",
            "minilm",
            "model.onnx",
            "~nobody-zz/x.pt",
            "a" * 400 + ".onnx",
            "x\x00y.ts",
            "azure-code",
            "..",
            "/",
            "local-2vcpu",
            "g5.xlarge",
            "baseline",
            "slo-aware",
            "poisson",
            "fp32-eager",
            "",
            "-1",
            "1e309",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=4),
    ),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


PATHS = list(_paths(BASE))[1:]


def _mutate(doc: Any, path: tuple[Any, ...], action: str, value: Any) -> Any:
    parent = doc
    for part in path[:-1]:
        if not isinstance(parent, dict | list):
            return doc
        try:
            parent = parent[part]
        except (KeyError, IndexError, TypeError):
            return doc
    last = path[-1]
    if isinstance(parent, dict):
        if action == "delete":
            parent.pop(last, None)
        elif action == "add":
            parent[f"{last}_x"] = value
        else:
            parent[last] = value
    elif isinstance(parent, list) and isinstance(last, int) and last < len(parent):
        if action == "delete":
            del parent[last]
        else:
            parent[last] = value
    return doc


mutations = st.lists(
    st.tuples(
        st.sampled_from(PATHS), st.sampled_from(["replace", "replace", "delete", "add"]), values
    ),
    min_size=1,
    max_size=3,
)


def _assert_clear(error: ScenarioError) -> None:
    text = error.render()
    assert error.code == "invalid_scenario"
    assert text and "Traceback" not in text
    assert error.message.strip() and error.fix.strip()


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as name:
        path = Path(name)
        (path / "bob.key").write_text("bob-key-0123456789abcdef\n")
        yield path


def test_the_base_scenario_is_valid(folder: Path) -> None:
    assert isinstance(scenario_from_dict(BASE, base_dir=folder), Scenario)


def test_mutated_scenarios_are_valid_or_clearly_invalid(folder: Path) -> None:
    seen = {"valid": 0, "invalid": 0}

    @fuzz(450)
    @given(changes=mutations)
    def check(changes: list[tuple[tuple[Any, ...], str, Any]]) -> None:
        doc = copy.deepcopy(BASE)
        for path, action, value in changes:
            doc = _mutate(doc, path, action, value)
        try:
            loaded = scenario_from_dict(doc, base_dir=folder)
        except ScenarioError as exc:
            _assert_clear(exc)
            assert "  - " in exc.message  # one line per problem, with its field path
            seen["invalid"] += 1
        else:
            assert isinstance(loaded, Scenario)
            seen["valid"] += 1

    check()
    assert seen["invalid"] + seen["valid"] >= 450
    assert seen["invalid"] > 100 and seen["valid"] > 5  # both outcomes exercised


def _load_text(folder: Path, text: str | bytes) -> None:
    path = folder / "fuzz.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_scenario(path)
    except ScenarioError as exc:
        _assert_clear(exc)


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


def test_random_yaml_files_are_valid_or_clearly_invalid(folder: Path) -> None:
    count = 0

    @fuzz(250)
    @given(doc=st.one_of(values, st.builds(lambda c: c, mutations)))
    def check(doc: Any) -> None:
        nonlocal count
        if isinstance(doc, list) and doc and isinstance(doc[0], tuple):  # mutations of BASE
            base = copy.deepcopy(BASE)
            for path, action, value in doc:
                base = _mutate(base, path, action, value)
            doc = base
        _load_text(folder, _dump(doc))
        count += 1

    check()
    assert count >= 250


YAML_BITS = [
    "name: x\n",
    "models:\n",
    "  - name: m\n",
    "    source: digits-cnn\n",
    "    slo_ms: 5\n",
    "workload: {generator: {kind: poisson, rate_rps: 1, duration_s: 1}}\n",
    "name: a\nname: b\n",
    "&a [*a]\n",
    "!!python/object:os.system\n",
    "\t- x\n",
    "key: 'unclosed\n",
    "- [1, 2\n",
    ":\n",
    "? complex\n: key\n",
    "%YAML 1.1\n---\n",
    "---\n...\n---\n",
    "x: !!binary aGVsbG8=\n",
    "x: 0x1F\ny: .inf\nz: .nan\n",
]


def test_random_text_and_bytes_are_clearly_invalid(folder: Path) -> None:
    count = 0

    @fuzz(250)
    @given(
        text=st.one_of(
            st.lists(st.sampled_from(YAML_BITS), max_size=8).map("".join),
            st.text(max_size=200),
            st.binary(max_size=200),
        )
    )
    def check(text: str | bytes) -> None:
        nonlocal count
        _load_text(folder, text)
        count += 1

    check()
    assert count >= 250


def test_a_missing_file_and_a_folder_are_clear_errors(folder: Path) -> None:
    for path in (folder / "none.yaml", folder, folder / ("n" * 300 + ".yaml")):
        with pytest.raises(ScenarioError) as info:
            load_scenario(path)
        _assert_clear(info.value)


def test_validate_command_exits_0_or_2_without_a_traceback(folder: Path) -> None:
    runner = CliRunner()
    count = 0

    @fuzz(100)
    @given(changes=mutations)
    def check(changes: list[tuple[tuple[Any, ...], str, Any]]) -> None:
        nonlocal count
        doc = copy.deepcopy(BASE)
        for path, action, value in changes:
            doc = _mutate(doc, path, action, value)
        file = folder / "cli.yaml"
        file.write_text(_dump(doc), encoding="utf-8", errors="surrogatepass")
        result = runner.invoke(app, ["validate", str(file)])
        assert result.exit_code in (0, 2), result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert "Traceback" not in result.output
        count += 1

    check()
    assert count >= 100


def test_numbers_that_json_cannot_hold_are_refused() -> None:
    doc = copy.deepcopy(BASE)
    doc["models"][0]["slo_ms"] = math.inf
    doc["tenants"][0]["rate_limit_rps"] = math.nan
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict(doc)
    assert "models[0].slo_ms" in info.value.message
    assert "tenants[0].rate_limit_rps" in info.value.message
