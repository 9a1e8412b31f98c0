"""ONNX Runtime sessions: intra-op spin-waiting can be turned off from the environment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from coscale.accel.onnxrt import SPINNING_ENV, make_session

KEY = "session.intra_op.allow_spinning"


def tiny_model(path: Path) -> Path:
    """y = relu(x), x float32 [N, 4]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def spinning(session: object) -> str:
    """The session's allow_spinning entry, or "default" when it has none."""
    options = session.get_session_options()  # type: ignore[attr-defined]
    try:
        return str(options.get_session_config_entry(KEY))
    except RuntimeError:  # "does not have configuration with key"
        return "default"


def test_spinning_is_left_to_onnx_runtime_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SPINNING_ENV, raising=False)
    session = make_session(tiny_model(tmp_path / "m.onnx"), threads=2)
    assert spinning(session) == "default"


def test_zero_turns_spinning_off_and_the_session_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SPINNING_ENV, "0")
    session = make_session(tiny_model(tmp_path / "m.onnx"), threads=2)
    assert spinning(session) == "0"
    x = np.array([[-1.0, 0.5, 2.0, -3.0]], dtype=np.float32)
    (y,) = session.run(None, {"x": x})
    assert np.array_equal(y, np.maximum(x, 0))
