"""digits-cnn: deterministic training, the weights/artifact cache, every variant, I/O.

The module trains the real model once (about 5 s on one core) into a temporary
``$COSCALE_HOME`` shared by all tests here; short (1–2 epoch) trainings cover the
determinism and corruption paths.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from coscale.accel.base import BASELINE_VARIANT, VARIANT_DESCRIPTIONS
from coscale.accel.digits import (
    ALL_VARIANTS,
    CHANNELS,
    PRUNE_KEEP,
    DigitsCNN,
    DigitsFamily,
    TrainConfig,
    digits_splits,
    native_bf16,
    prune_structured,
    prune_unstructured,
    train_digits_cnn,
    weights_digest,
)
from coscale.errors import CoscaleError, InvalidInputError

SHORT = TrainConfig(seed=5, epochs=1)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``$COSCALE_HOME`` pointing at a fresh folder for this module, restored afterwards."""
    path = tmp_path_factory.mktemp("coscale-home")
    old = os.environ.get("COSCALE_HOME")
    os.environ["COSCALE_HOME"] = str(path)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("COSCALE_HOME", None)
        else:
            os.environ["COSCALE_HOME"] = old


@pytest.fixture(scope="module")
def family(home: Path) -> DigitsFamily:
    fam = DigitsFamily(seed=0)
    _ = fam.model
    assert fam.weights_status == "trained"
    assert fam.cache_root == home / "models" / "digits-cnn"
    return fam


@pytest.fixture(scope="module")
def baseline_probs(family: DigitsFamily) -> np.ndarray:
    return family.build(BASELINE_VARIANT).predict(digits_splits().test_x)


# ------------------------------------------------------------------ training / cache


def test_split_is_fixed_stratified_and_disjoint() -> None:
    s = digits_splits()
    assert (len(s.train_x), len(s.calib_x), len(s.test_x)) == (1257, 180, 360)
    rows = [tuple(r) for r in np.concatenate([s.train_x, s.calib_x, s.test_x])]
    assert len(rows) == 1797
    assert set(np.unique(s.test_y)) == set(range(10))
    assert np.bincount(s.test_y).min() >= 35  # stratified: ~36 per class
    assert s.test_x.min() >= 0 and s.test_x.max() <= 16


def test_training_is_deterministic_and_restores_torch_state() -> None:
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    a = weights_digest(train_digits_cnn(7, epochs=1))
    b = weights_digest(train_digits_cnn(7, epochs=1))
    c = weights_digest(train_digits_cnn(8, epochs=1))
    assert a == b
    assert a != c
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_trained_model_is_accurate(family: DigitsFamily) -> None:
    assert family.test_accuracy >= 0.95


def test_cache_hit_reloads_without_training(family: DigitsFamily) -> None:
    weights = next(family.cache_root.glob("weights-seed0-*.pt"))
    mtime = weights.stat().st_mtime_ns
    again = DigitsFamily(seed=0)
    assert again.digest == family.digest
    assert again.weights_status == "loaded"
    assert weights.stat().st_mtime_ns == mtime
    assert again.test_accuracy == family.test_accuracy


def _short_family(root: Path) -> DigitsFamily:
    return DigitsFamily(config=SHORT, cache_root=root)


def _flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("flip-weights", "corrupt"),
        ("truncate-weights", "corrupt"),
        ("delete-weights", "missing"),
        ("garbage-checksum", "unreadable"),
    ],
)
def test_corrupt_cache_is_detected_and_rebuilt(tmp_path: Path, damage: str, reason: str) -> None:
    first = _short_family(tmp_path)
    digest = first.digest
    assert first.weights_status == "trained"
    weights = next(tmp_path.glob("weights-*.pt"))
    checksum = weights.with_suffix(".json")
    if damage == "flip-weights":
        _flip_byte(weights, weights.stat().st_size // 2)
    elif damage == "truncate-weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "delete-weights":
        weights.unlink()
    else:
        checksum.write_text("{not json")
    second = _short_family(tmp_path)
    assert second.digest == digest  # retrained, deterministically, to the same weights
    assert second.weights_status.startswith("retrained")
    assert reason in second.weights_status
    assert _short_family(tmp_path).weights_status == "loaded"  # the rebuilt cache is valid


def test_another_config_never_reuses_weights(tmp_path: Path) -> None:
    one = _short_family(tmp_path)
    other = DigitsFamily(config=TrainConfig(seed=5, epochs=2), cache_root=tmp_path)
    assert other.digest != one.digest
    assert other.weights_status == "trained"
    assert len(list(tmp_path.glob("weights-*.pt"))) == 2


def test_corrupt_artifact_is_rebuilt(family: DigitsFamily, tmp_path: Path) -> None:
    variant = family.build("onnx-fp32", cache_dir=tmp_path)
    path = variant.path  # type: ignore[attr-defined]
    assert path.parent == tmp_path
    assert family.digest[:16] in path.name
    expected = variant.predict(digits_splits().test_x[:8])
    _flip_byte(path, path.stat().st_size // 2)
    rebuilt = family.build("onnx-fp32", cache_dir=tmp_path)
    np.testing.assert_allclose(rebuilt.predict(digits_splits().test_x[:8]), expected, atol=1e-6)


# ------------------------------------------------------------------------- variants


def test_variant_names(family: DigitsFamily) -> None:
    names = family.variant_names()
    assert names[0] == BASELINE_VARIANT
    assert set(ALL_VARIANTS) <= set(VARIANT_DESCRIPTIONS)
    assert set(names) <= set(ALL_VARIANTS)
    assert ("bf16-eager" in names) == native_bf16()
    assert "fp16-eager" not in names


def test_unknown_variant_is_a_user_error(family: DigitsFamily) -> None:
    with pytest.raises(CoscaleError) as info:
        family.build("int4-magic")
    assert info.value.code == "unknown_variant"
    assert "onnx-fp32" in info.value.fix


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_variant_agrees_with_fp32(
    family: DigitsFamily, baseline_probs: np.ndarray, name: str
) -> None:
    if name not in family.variant_names():
        pytest.skip(f"{name} is not buildable on this machine")
    s = digits_splits()
    variant = family.build(name, threads=1)
    probs = variant.predict(s.test_x)
    assert probs.dtype == np.float32
    assert probs.shape == (len(s.test_x), 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    agreement = float(np.mean(probs.argmax(1) == baseline_probs.argmax(1)))
    assert agreement >= 0.98, f"{name}: argmax agreement {agreement:.3f}"
    fid = family.fidelity(variant, family.build(BASELINE_VARIANT))
    assert fid.metric == "accuracy"
    assert fid.value == fid.minimum == float(np.mean(probs.argmax(1) == s.test_y))
    # Every variant, pruned-unstructured included: with no fine-tune it loses less than
    # a point here because the over-parameterised CNN's smallest half of the weights
    # carries little signal.
    assert abs(fid.value - family.test_accuracy) <= 0.02, f"{name}: accuracy {fid.value:.4f}"
    assert variant.size_bytes() > 0
    expected_runtime = "onnxruntime" if name.startswith(("onnx", "pruned-structured")) else "torch"
    assert variant.runtime == expected_runtime
    assert variant.name == name
    # (n, 8, 8) batches are accepted too (same 4 images, so dynamic int8 ranges match).
    np.testing.assert_allclose(
        variant.predict(s.test_x[:4].reshape(4, 8, 8)), variant.predict(s.test_x[:4]), atol=1e-6
    )


def test_built_variants_reuse_cached_artifacts(family: DigitsFamily) -> None:
    path = family.build("onnx-int8-static").path  # type: ignore[attr-defined]
    mtime = path.stat().st_mtime_ns
    assert family.build("onnx-int8-static").path == path  # type: ignore[attr-defined]
    assert path.stat().st_mtime_ns == mtime


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _conv_weight_shapes(path: Path) -> list[tuple[int, ...]]:
    inits = _initializers(path)
    model = onnx.load(str(path))
    return [tuple(inits[n.input[1]].shape) for n in model.graph.node if n.op_type == "Conv"]


def test_static_int8_is_really_quantized(family: DigitsFamily) -> None:
    fp32 = family.build("onnx-fp32")
    int8 = family.build("onnx-int8-static")
    graph = onnx.load(str(int8.path)).graph  # type: ignore[attr-defined]
    ops = [n.op_type for n in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    int8_weights = [a for a in _initializers(int8.path).values() if a.dtype == np.int8]  # type: ignore[attr-defined]
    assert sum(a.size for a in int8_weights) > 0.9 * sum(
        p.numel() for p in family.model.parameters()
    )
    # The softmax stays float32: its input is dequantized, its output is the graph output.
    softmax = next(n for n in graph.node if n.op_type == "Softmax")
    assert softmax.output[0] == graph.output[0].name
    assert int8.size_bytes() * 3 < fp32.size_bytes()


def test_structured_pruning_removes_channels(family: DigitsFamily) -> None:
    full = family.model
    small = prune_structured(full, PRUNE_KEEP)
    assert small.channels == tuple(c // 2 for c in CHANNELS)
    n_full = sum(p.numel() for p in full.parameters())
    n_small = sum(p.numel() for p in small.parameters())
    assert n_small < 0.3 * n_full
    # The kept conv1 filters are the largest-L1 ones, copied unchanged, in order.
    norms = full.conv1.weight.detach().abs().sum(dim=(1, 2, 3))
    kept = torch.sort(torch.topk(norms, small.channels[0]).indices).values
    assert torch.equal(small.conv1.weight, full.conv1.weight[kept])
    dropped = torch.ones(len(norms), dtype=torch.bool)
    dropped[kept] = False
    assert norms[kept].min() >= norms[dropped].max()
    assert full.channels == CHANNELS  # the original is untouched
    # What is served has the smaller convolutions.
    for name in ("pruned-structured", "pruned-structured-int8"):
        path = family.build(name).path  # type: ignore[attr-defined]
        if name == "pruned-structured":
            assert _conv_weight_shapes(path) == [(16, 1, 3, 3), (32, 16, 3, 3), (64, 32, 3, 3)]
        assert family.build(name).size_bytes() < family.build("onnx-fp32").size_bytes() / 3


def test_structured_pruning_rejects_bad_fraction(family: DigitsFamily) -> None:
    with pytest.raises(CoscaleError):
        prune_structured(family.model, 0.0)


def test_unstructured_pruning_zeroes_half_densely(family: DigitsFamily) -> None:
    full = family.model
    pruned = prune_unstructured(full, 0.5)
    weights = [pruned.conv1.weight, pruned.conv2.weight, pruned.conv3.weight, pruned.fc.weight]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert abs(zeros - total / 2) <= 1
    assert set(pruned.state_dict()) == set(full.state_dict())  # no masks left behind
    assert int((full.conv2.weight == 0).sum()) == 0  # the original is untouched
    # The smallest kept magnitude is at least the largest zeroed one (global threshold).
    flat_full = torch.cat(
        [
            w.detach().flatten()
            for w in (full.conv1.weight, full.conv2.weight, full.conv3.weight, full.fc.weight)
        ]
    )
    flat_pruned = torch.cat([w.detach().flatten() for w in weights])
    kept = flat_pruned != 0
    assert flat_full[kept].abs().min() >= flat_full[~kept].abs().max()


def test_torch_dynamic_int8_quantizes_only_linear(family: DigitsFamily) -> None:
    module = family.build("int8-dynamic").module  # type: ignore[attr-defined]
    assert "quantized" in type(module.fc).__module__
    assert isinstance(module.conv2, torch.nn.Conv2d)
    assert module.conv2.weight.dtype == torch.float32


def test_torch_variant_sets_process_threads(family: DigitsFamily) -> None:
    before = torch.get_num_threads()
    try:
        variant = family.build(BASELINE_VARIANT, threads=2)
        torch.set_num_threads(1)
        variant.predict(digits_splits().test_x[:2])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_model_module_outputs_probabilities() -> None:
    model = DigitsCNN().eval()
    with torch.no_grad():
        out = model(torch.zeros(3, 64))
    assert out.shape == (3, 10)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(3))


# ------------------------------------------------------------------- batches and I/O


def test_profiling_batch_is_real_test_images(family: DigitsFamily) -> None:
    test_rows = {tuple(r) for r in digits_splits().test_x}
    batch = family.profiling_batch(1000, None, seed=3)
    assert batch.shape == (1000, 64) and batch.dtype == np.float32
    assert all(tuple(r) in test_rows for r in batch)
    assert len({tuple(r) for r in batch}) == len(test_rows)  # cycled through all of them
    np.testing.assert_array_equal(batch, family.profiling_batch(1000, None, seed=3))
    assert not np.array_equal(batch[:64], family.profiling_batch(64, None, seed=4))
    with pytest.raises(CoscaleError):
        family.profiling_batch(0, None, seed=0)


def test_parse_items_accepts_flat_and_nested(family: DigitsFamily) -> None:
    img = digits_splits().test_x[0]
    batch = family.parse_items([img.tolist(), img.reshape(8, 8).tolist(), [int(v) for v in img]])
    assert batch.shape == (3, 64) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, np.stack([img, img, img]))


GOOD = [0.0] * 64


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ([1.0] * 63, "shape (63,)"),
        ([[1.0] * 8] * 7, "shape (7, 8)"),
        ("0" * 64, "str"),
        ({"pixels": GOOD}, "dict"),
        (None, "NoneType"),
        ([17.0, *GOOD[1:]], "pixel 0"),
        ([*GOOD[:5], -1, *GOOD[6:]], "pixel 5"),
        ([*GOOD[:3], float("nan"), *GOOD[4:]], "pixel 3"),
        (["1"] * 64, "type"),
        ([[1.0] * 8] * 7 + [[1.0] * 7], "ragged"),
        ([True] * 64, "type bool"),
    ],
)
def test_parse_items_names_the_bad_item(family: DigitsFamily, bad: object, words: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        family.parse_items([GOOD, GOOD, bad])
    assert "item 2" in info.value.message
    assert words in info.value.message
    assert info.value.fix


@pytest.mark.parametrize("items", [[], "abc", 5])
def test_parse_items_rejects_non_lists(family: DigitsFamily, items: object) -> None:
    with pytest.raises(InvalidInputError):
        family.parse_items(items)  # type: ignore[arg-type]


def test_render_outputs(family: DigitsFamily, baseline_probs: np.ndarray) -> None:
    rendered = family.render_outputs(baseline_probs[:5])
    assert len(rendered) == 5
    for row, probs in zip(rendered, baseline_probs[:5], strict=True):
        assert set(row) == {"label", "probabilities"}
        assert isinstance(row["label"], int) and row["label"] == int(np.argmax(probs))
        assert len(row["probabilities"]) == 10
        assert all(isinstance(p, float) for p in row["probabilities"])
