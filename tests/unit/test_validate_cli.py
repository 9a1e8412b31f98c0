"""`coscale validate FILE`, end to end in a subprocess: exit codes and what the user sees."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _coscale(*args: str, columns: int = 60) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "coscale"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "coscale.cli"]
    env = dict(os.environ, COLUMNS=str(columns), NO_COLOR="1")
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


@pytest.fixture()
def bad_file(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            name: bad
            models:
              - name: m
                source: minilm
                slo_ms: -5
                accuracy_floor: 0.9
                max_batchsize: 8
            cluster:
              nodes:
                - {type: g5.xlrge, count: 1}
            workload:
              generator: {kind: poisson, rate_rps: 1, duration_s: 1}
            """
        ),
        encoding="utf-8",
    )
    return path


def test_good_file_exits_zero_with_summary() -> None:
    result = _coscale("validate", str(EXAMPLES / "digits.yaml"))
    assert result.returncode == 0, result.stderr
    assert "✓" in result.stdout
    assert "digits.yaml is valid" in result.stdout
    assert "preset optimized-b" in result.stdout


def test_bad_file_exits_two_and_lists_every_error(bad_file: Path) -> None:
    result = _coscale("validate", str(bad_file))
    out = result.stdout + result.stderr
    assert result.returncode == 2
    assert "Traceback" not in out
    assert "has 3 errors" in out
    assert "models[0].slo_ms: must be > 0, got -5" in out
    assert (
        "models[0].max_batchsize: unknown field 'max_batchsize'; did you mean 'max_batch'?" in out
    )
    assert "cluster.nodes[0].type: unknown node type 'g5.xlrge'; did you mean 'g5.xlarge'?" in out


def test_error_lines_are_not_wrapped_on_narrow_terminals(bad_file: Path) -> None:
    result = _coscale("validate", str(bad_file), columns=40)
    lines = result.stderr.splitlines()
    slo = [line for line in lines if "models[0].slo_ms" in line]
    assert len(slo) == 1 and "(line 5)" in slo[0]


def test_yaml_syntax_error_exits_two(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nmodels: [\n", encoding="utf-8")
    result = _coscale("validate", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "not valid YAML at line 3" in result.stderr


def test_missing_file_exits_two(tmp_path: Path) -> None:
    result = _coscale("validate", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_debug_flag_shows_the_traceback(bad_file: Path) -> None:
    result = _coscale("--debug", "validate", str(bad_file))
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ScenarioError" in result.stderr
