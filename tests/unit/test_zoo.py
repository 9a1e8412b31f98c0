"""The model zoo: built-in names, file paths, and helpful errors for anything else."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from coscale.accel import zoo
from coscale.accel.onnxrt import export_onnx
from coscale.errors import ModelFileError, UnknownModelError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_builtin_names_resolve_lazily() -> None:
    assert zoo.builtin_names() == ["digits-cnn", "minilm"]
    minilm = zoo.get_family("minilm")
    assert (minilm.name, minilm.task) == ("minilm", "text-embedding")
    digits = zoo.get_family(" digits-cnn ")
    assert (digits.name, digits.task) == ("digits-cnn", "image-classification")
    assert minilm.variant_names()[0] == digits.variant_names()[0] == "fp32-eager"


def test_importing_the_zoo_is_cheap() -> None:
    code = "import sys, coscale.accel.zoo; print(sorted({'torch', 'onnxruntime', 'onnx', 'transformers'} & set(sys.modules)))"  # noqa: E501
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("typo", "suggestion"), [("minlm", "minilm"), ("digits", "digits-cnn"), ("MiniLM", "minilm")]
)
def test_unknown_name_suggests_close_match(typo: str, suggestion: str) -> None:
    with pytest.raises(UnknownModelError) as info:
        zoo.get_family(typo)
    message = info.value.render()
    assert f"Did you mean {suggestion!r}?" in message
    assert "digits-cnn, minilm" in message and ".onnx" in message and ".pt" in message
    assert info.value.code == "unknown_model"


def test_unknown_name_without_close_match() -> None:
    with pytest.raises(UnknownModelError) as info:
        zoo.get_family("resnet-152")
    assert "Did you mean" not in info.value.message
    assert "pass the path of your own model file" in info.value.fix


def test_file_paths_by_suffix(tmp_path: Path) -> None:
    onnx_path = export_onnx(
        torch.nn.Linear(4, 2), (torch.randn(2, 4),), tmp_path / "Net.ONNX",
        input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}},
    )  # fmt: skip
    family = zoo.get_family(str(onnx_path))
    assert type(family).__name__ == "OnnxFileFamily" and family.name == "Net.ONNX"
    for suffix in (".pt", ".ts", ".torchscript"):
        path = tmp_path / f"lin{suffix}"
        torch.jit.script(torch.nn.Linear(4, 2)).save(str(path))
        path.with_name(path.name + ".json").write_text(
            json.dumps({"inputs": [{"name": "x", "shape": ["batch", 4]}]})
        )
        assert type(zoo.get_family(str(path))).__name__ == "TorchScriptFamily"


def test_missing_model_file_is_a_file_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        zoo.get_family(str(tmp_path / "absent.onnx"))
    with pytest.raises(ModelFileError, match="does not exist"):
        zoo.get_family(str(tmp_path / "absent.pt"))
