"""User model files: ONNX and TorchScript families built from real small networks."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from coscale.accel import files
from coscale.accel.base import BASELINE_VARIANT
from coscale.accel.files import (
    DEFAULT_DIM,
    InputSpec,
    OnnxFileFamily,
    TorchScriptFamily,
)
from coscale.accel.onnxrt import export_onnx
from coscale.errors import InvalidInputError, ModelFileError

# torch.jit.script/trace/save announce their deprecation in favour of torch.export.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(8, 256)
        self.b = nn.Linear(256, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


class TwoInputs(nn.Module):
    """Float features (batch, 3) and integer ids (batch, n) of symbolic length n."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.proj = nn.Linear(3, 5)
        self.emb = nn.Embedding(10, 5)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(x) + self.emb(ids).mean(dim=1)


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSCALE_HOME", str(tmp_path / "home"))


@pytest.fixture
def mlp_onnx(tmp_path: Path) -> Path:
    return export_onnx(
        Mlp(),
        (torch.randn(2, 8),),
        tmp_path / "mlp.onnx",
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
    )


@pytest.fixture
def two_onnx(tmp_path: Path) -> Path:
    return export_onnx(
        TwoInputs(),
        (torch.randn(2, 3), torch.randint(0, 10, (2, 4))),
        tmp_path / "two.onnx",
        input_names=["x", "ids"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "ids": {0: "batch", 1: "n"}, "y": {0: "batch"}},
    )


def _torch_out(module: nn.Module, *arrays: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(*(torch.from_numpy(a) for a in arrays)).numpy()


# ------------------------------------------------------------------ ONNX


def test_onnx_inputs_read_from_graph(mlp_onnx: Path, two_onnx: Path) -> None:
    assert OnnxFileFamily(mlp_onnx).inputs == (InputSpec("x", (8,), "float32"),)
    fam = OnnxFileFamily(two_onnx)
    assert fam.inputs == (InputSpec("x", (3,), "float32"), InputSpec("ids", (None,), "int64"))
    assert fam.name == "two.onnx" and fam.task == "tensor"


def test_onnx_variants_serve_the_model(mlp_onnx: Path) -> None:
    fam = OnnxFileFamily(mlp_onnx)
    assert fam.variant_names() == [BASELINE_VARIANT, "onnx-fp32", "onnx-int8-dynamic"]
    batch = fam.profiling_batch(5, None, seed=3)
    expected = _torch_out(Mlp(), batch["x"])
    base = fam.build(BASELINE_VARIANT, threads=1)
    assert base.runtime == "onnxruntime"
    np.testing.assert_allclose(base.predict(batch), expected, atol=1e-5)
    np.testing.assert_allclose(fam.build("onnx-fp32").predict(batch["x"]), expected, atol=1e-5)
    int8 = fam.build("onnx-int8-dynamic")
    assert int8.size_bytes() < base.size_bytes()
    assert fam.fidelity(fam.build("onnx-fp32"), base).value > 0.99999
    fidelity = fam.fidelity(int8, base)
    assert fidelity.metric == "cosine"
    assert 0.98 <= fidelity.minimum <= fidelity.value < 1.0  # measured ~0.9995: close, not equal


def test_onnx_int8_artifact_is_cached_by_file_hash(mlp_onnx: Path, tmp_path: Path) -> None:
    fam = OnnxFileFamily(mlp_onnx)
    variant = fam.build("onnx-int8-dynamic", cache_dir=tmp_path / "c")
    assert variant.path.parent == tmp_path / "c"  # type: ignore[attr-defined]
    assert variant.path.name.startswith(fam.digest[:16])  # type: ignore[attr-defined]
    mtime = variant.path.stat().st_mtime_ns  # type: ignore[attr-defined]
    fam.build("onnx-int8-dynamic", cache_dir=tmp_path / "c")
    assert variant.path.stat().st_mtime_ns == mtime  # type: ignore[attr-defined]


def test_onnx_two_inputs_parse_and_serve(two_onnx: Path) -> None:
    fam = OnnxFileFamily(two_onnx)
    items = [{"x": [0.5, -1.0, 2.0], "ids": [1, 2, 3]}, {"x": [0, 0, 1], "ids": [9, 0, 4]}]
    batch = fam.parse_items(items)
    assert batch["x"].dtype == np.float32 and batch["ids"].dtype == np.int64
    assert batch["ids"].shape == (2, 3)
    out = fam.build("onnx-fp32").predict(batch)
    np.testing.assert_allclose(out, _torch_out(TwoInputs(), batch["x"], batch["ids"]), atol=1e-5)
    rendered = fam.render_outputs(out)
    assert len(rendered) == 2 and len(rendered[0]["output"]) == 5
    assert fam.variant_names() == [BASELINE_VARIANT, "onnx-fp32", "onnx-int8-dynamic"]


def test_profiling_batch_is_seeded_and_fills_symbolic_axes(two_onnx: Path) -> None:
    fam = OnnxFileFamily(two_onnx)
    a, b = fam.profiling_batch(4, None, seed=7), fam.profiling_batch(4, None, seed=7)
    assert a["x"].shape == (4, 3) and a["ids"].shape == (4, DEFAULT_DIM)
    np.testing.assert_array_equal(a["ids"], b["ids"])
    assert not np.array_equal(a["x"], fam.profiling_batch(4, None, seed=8)["x"])
    assert fam.profiling_batch(2, 64, seed=0)["ids"].shape == (2, 64)
    assert a["ids"].min() >= 0 and a["ids"].max() < files.DEFAULT_INT_HIGH


@pytest.mark.parametrize(
    ("item", "expected", "got"),
    [
        ([1.0] * 7, "expected shape (8,) of float32", "got shape (7,)"),
        ([[1.0] * 8], "expected shape (8,) of float32", "got shape (1, 8)"),
        (["a"] * 8, "expected shape (8,) of float32", "<U1"),
        ([True] * 8, "of float32", "of bool"),
        ([1.0, float("nan")] + [0.0] * 6, "of float32", "float64"),
        ([[1, 2], [3]], "expected shape (8,)", "ragged"),
    ],
)
def test_onnx_wrong_items_name_expected_and_got(
    mlp_onnx: Path, item: object, expected: str, got: str
) -> None:
    fam = OnnxFileFamily(mlp_onnx)
    with pytest.raises(InvalidInputError) as info:
        fam.parse_items([[0.0] * 8, item])
    assert "item 1" in info.value.message and "'x'" in info.value.message
    assert expected in info.value.message and got in info.value.message
    assert info.value.fix


def test_two_input_items_checked(two_onnx: Path) -> None:
    fam = OnnxFileFamily(two_onnx)
    with pytest.raises(InvalidInputError, match=r"item 0: expected the inputs"):
        fam.parse_items([{"x": [0, 0, 0]}])
    with pytest.raises(InvalidInputError, match=r"must be an object"):
        fam.parse_items([[0, 0, 0]])
    with pytest.raises(InvalidInputError, match=r"'ids'.*of int64.*float64"):
        fam.parse_items([{"x": [0, 0, 0], "ids": [1.5, 2.0]}])
    with pytest.raises(InvalidInputError, match=r"share a shape"):
        fam.parse_items([{"x": [0, 0, 0], "ids": [1, 2]}, {"x": [0, 0, 0], "ids": [1]}])


@pytest.mark.parametrize(
    "content",
    [b"", b"not an onnx model at all\n" * 10, bytes(range(256)) * 4],
    ids=["empty", "text", "binary"],
)
def test_corrupt_onnx_file_is_a_model_file_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelFileError) as info:
        OnnxFileFamily(path)
    assert "bad.onnx" in info.value.message and "valid ONNX" in info.value.message
    assert "re-export" in info.value.fix


def test_truncated_onnx_file_is_a_model_file_error(mlp_onnx: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.onnx"
    path.write_bytes(mlp_onnx.read_bytes()[:300])
    with pytest.raises(ModelFileError):
        OnnxFileFamily(path)


def test_missing_file_and_fixed_batch_axis(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        OnnxFileFamily(tmp_path / "nope.onnx")
    fixed = export_onnx(
        Mlp(), (torch.randn(1, 8),), tmp_path / "fixed.onnx",
        input_names=["x"], output_names=["y"], dynamic_axes={},
    )  # fmt: skip
    with pytest.raises(ModelFileError, match="dynamic batch axis") as info:
        OnnxFileFamily(fixed)
    assert "dynamic_axes" in info.value.fix


def test_family_pickles_and_unknown_variant(mlp_onnx: Path) -> None:
    fam = OnnxFileFamily(mlp_onnx)
    base = fam.build(BASELINE_VARIANT)
    fam.fidelity(base, base)
    clone = pickle.loads(pickle.dumps(fam))
    assert clone.inputs == fam.inputs and clone.path == fam.path
    with pytest.raises(Exception, match="int8-dynamic"):
        fam.build("int8-dynamic")


# ------------------------------------------------------------------ TorchScript


@pytest.fixture
def scripted(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.pt"
    torch.jit.script(Mlp()).save(str(path))
    return path


def _write_sidecar(path: Path, inputs: object) -> None:
    path.with_name(path.name + ".json").write_text(json.dumps({"inputs": inputs}))


def test_torchscript_with_sidecar(scripted: Path) -> None:
    _write_sidecar(scripted, [{"name": "x", "shape": ["batch", 8], "dtype": "float32"}])
    fam = TorchScriptFamily(scripted)
    assert fam.inputs == (InputSpec("x", (8,), "float32"),)
    assert fam.variant_names() == [
        BASELINE_VARIANT,
        "int8-dynamic",
        "onnx-fp32",
        "onnx-int8-dynamic",
    ]
    batch = fam.parse_items([[0.1 * i for i in range(8)], [1.0] * 8])
    expected = _torch_out(Mlp(), batch["x"])
    base = fam.build(BASELINE_VARIANT, threads=1)
    assert base.runtime == "torch"
    np.testing.assert_allclose(base.predict(batch), expected, atol=1e-5)
    np.testing.assert_allclose(fam.build("onnx-fp32").predict(batch), expected, atol=1e-5)
    for name in ("int8-dynamic", "onnx-int8-dynamic"):
        fidelity = fam.fidelity(fam.build(name), base)
        assert 0.98 <= fidelity.minimum <= fidelity.value < 1.0, name


def test_traced_two_input_torchscript(tmp_path: Path) -> None:
    path = tmp_path / "two.ts"
    example = (torch.randn(2, 3), torch.randint(0, 10, (2, 4)))
    torch.jit.trace(TwoInputs(), example).save(str(path))
    path.with_suffix(".json").write_text(
        json.dumps(
            {
                "inputs": [
                    {"name": "x", "shape": [-1, 3]},
                    {"name": "ids", "shape": [None, "n"], "dtype": "int64"},
                ]
            }
        )
    )
    fam = TorchScriptFamily(path)
    assert fam.inputs[1] == InputSpec("ids", (None,), "int64")
    batch = fam.profiling_batch(3, 6, seed=0)
    out = fam.build(BASELINE_VARIANT).predict(batch)
    np.testing.assert_allclose(out, _torch_out(TwoInputs(), batch["x"], batch["ids"]), atol=1e-5)


def test_torchscript_without_sidecar_fails_clearly(scripted: Path) -> None:
    with pytest.raises(ModelFileError) as info:
        TorchScriptFamily(scripted)
    assert "no input description" in info.value.message
    assert "mlp.pt.json" in info.value.fix and '"shape"' in info.value.fix


@pytest.mark.parametrize(
    ("sidecar", "where"),
    [
        ({"inputs": []}, "inputs"),
        ({"inputs": [{"name": "x", "shape": [1, 8], "dtype": "complex64"}]}, "dtype"),
        ({"inputs": [{"name": "x", "shape": [1, 8], "colour": 1}]}, "colour"),
        ({"inputs": [{"name": "x", "shape": [1, 0]}]}, "invalid axis sizes"),
    ],
)
def test_invalid_sidecar_named(scripted: Path, sidecar: object, where: str) -> None:
    scripted.with_name("mlp.pt.json").write_text(json.dumps(sidecar))
    with pytest.raises(ModelFileError, match=where):
        TorchScriptFamily(scripted)


def test_corrupt_torchscript_is_a_model_file_error(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(Mlp().state_dict(), path)  # a state_dict, not TorchScript
    _write_sidecar(path, [{"name": "x", "shape": ["batch", 8]}])
    with pytest.raises(ModelFileError) as info:
        TorchScriptFamily(path)
    assert "TorchScript" in info.value.message and "torch.jit.save" in info.value.fix
