"""The built-in minilm family (all-MiniLM-L6-v2, real weights) and its real sentences.

Every variant is built once per module, into a temporary ``COSCALE_HOME``; fidelity is
measured on 64 evaluation sentences (the family's default is 512) to stay fast.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coscale.accel import sentences
from coscale.accel.base import BASELINE_VARIANT, VARIANT_DESCRIPTIONS, Variant
from coscale.accel.minilm import (
    EMBEDDING_DIM,
    MiniLMFamily,
    cosine_rows,
    native_bf16,
)
from coscale.errors import CoscaleError, InvalidInputError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TEXTS = [
    "The cat sat on the mat.",
    "Quantization maps floating-point weights to eight-bit integers, trading a little "
    "accuracy for a smaller and faster model.",
    "Autoscaling adds replicas when the queue grows.",
    "Hi",
]
#: Lowest mean cosine to fp32 accepted per variant (measured on 512 sentences here:
#: onnx-fp32 1.0000, bf16-eager 0.99996, onnx-int8-dynamic 0.993, onnx-int8-static 0.991,
#: int8-dynamic 0.987).
MIN_MEAN_COSINE = {
    "onnx-fp32": 0.99999,
    "bf16-eager": 0.999,
    "onnx-int8-dynamic": 0.98,
    "onnx-int8-static": 0.98,
    "int8-dynamic": 0.98,
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("coscale-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COSCALE_HOME", str(root))
        yield root


@pytest.fixture(scope="module")
def family(home: Path) -> MiniLMFamily:
    return MiniLMFamily(eval_size=64, calibration_size=64)


@pytest.fixture(scope="module")
def variants(family: MiniLMFamily) -> dict[str, Variant]:
    return {name: family.build(name, threads=1) for name in family.variant_names()}


# ------------------------------------------------------------------ embeddings


def test_variant_names(family: MiniLMFamily) -> None:
    names = family.variant_names()
    assert names[0] == BASELINE_VARIANT
    assert set(names) <= set(VARIANT_DESCRIPTIONS)
    assert {"onnx-fp32", "onnx-int8-dynamic", "onnx-int8-static"} <= set(names)
    assert ("bf16-eager" in names) == native_bf16()
    with pytest.raises(CoscaleError, match="fp16-eager"):
        family.build("fp16-eager")


def test_matches_sentence_transformers(variants: dict[str, Variant], family: MiniLMFamily) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(family.folder), device="cpu", local_files_only=True)
    assert reference.max_seq_length == family.max_seq_len == 256
    expected = reference.encode(TEXTS, batch_size=len(TEXTS), convert_to_numpy=True)
    for name in ("fp32-eager", "onnx-fp32"):
        got = variants[name].predict(TEXTS)
        assert got.shape == (len(TEXTS), EMBEDDING_DIM) and got.dtype == np.float32
        assert cosine_rows(got, expected).min() > 0.9999, name
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_padding_to_longest_matches_one_at_a_time(
    variants: dict[str, Variant], family: MiniLMFamily
) -> None:
    feeds = family.tokenizer.encode(TEXTS)
    longest = max(family.tokenizer.count(t) for t in TEXTS)
    assert feeds["input_ids"].shape == (len(TEXTS), longest) and longest < 64
    assert feeds["attention_mask"].sum(axis=1).tolist() == [
        family.tokenizer.count(t) for t in TEXTS
    ]
    for name in ("fp32-eager", "onnx-fp32"):
        batched = variants[name].predict(TEXTS)
        single = np.concatenate([variants[name].predict([t]) for t in TEXTS])
        np.testing.assert_allclose(batched, single, atol=1e-5, err_msg=name)


def test_a_batch_runs_in_length_sorted_runs_with_the_padded_result(
    variants: dict[str, Variant], family: MiniLMFamily
) -> None:
    texts = [*TEXTS, " ".join(["word"] * 150)]  # one long text among short ones
    feeds = family.tokenizer.encode(texts)
    for name in ("fp32-eager", "onnx-fp32"):
        variant = variants[name]
        widths: list[int] = []
        run = variant._run  # type: ignore[attr-defined]

        def counted(
            part: dict[str, np.ndarray], run: Any = run, widths: list[int] = widths
        ) -> np.ndarray:
            widths.append(part["input_ids"].shape[1])
            return run(part)  # type: ignore[no-any-return]

        padded = run(feeds)
        variant._run = counted  # type: ignore[attr-defined]
        try:
            split = variant.predict(texts)
        finally:
            del variant._run  # type: ignore[attr-defined]
        assert len(widths) >= 2 and max(widths[:-1]) < 64 < widths[-1]  # short ones apart
        np.testing.assert_allclose(split, padded, atol=1e-5, err_msg=name)


def test_long_text_is_truncated_to_max_seq_len(family: MiniLMFamily) -> None:
    long_text = " ".join(sentences.pool()[:60])
    assert family.tokenizer.count(long_text) > 300
    assert family.tokenizer.encode([long_text, "short"])["input_ids"].shape == (2, 256)


@pytest.mark.parametrize("name", list(MIN_MEAN_COSINE))
def test_variant_agrees_with_fp32(
    name: str, variants: dict[str, Variant], family: MiniLMFamily
) -> None:
    if name not in variants:
        pytest.skip(f"{name} is not buildable on this machine")
    fidelity = family.fidelity(variants[name], variants[BASELINE_VARIANT])
    assert fidelity.metric == "cosine"
    assert MIN_MEAN_COSINE[name] <= fidelity.value <= 1.0 + 1e-6
    assert fidelity.minimum <= fidelity.value
    if "int8" in name:  # really quantized: close to fp32 but not identical
        assert fidelity.value < 0.9999
        assert variants[name].size_bytes() < variants[BASELINE_VARIANT].size_bytes()
    assert variants[name].predict(TEXTS).shape == (len(TEXTS), EMBEDDING_DIM)


def test_empty_batch(variants: dict[str, Variant]) -> None:
    for variant in variants.values():
        assert variant.predict([]).shape == (0, EMBEDDING_DIM)


def test_onnx_artifacts_cached_by_weights_hash(
    family: MiniLMFamily, variants: dict[str, Variant], home: Path
) -> None:
    path = variants["onnx-fp32"].path  # type: ignore[attr-defined]
    assert path.parent == home / "models" / "minilm"
    assert path.name.startswith(family.digest[:16])
    assert len(family.digest) == 64
    mtime = path.stat().st_mtime_ns
    assert family.build("onnx-fp32").path == path  # type: ignore[attr-defined]
    assert path.stat().st_mtime_ns == mtime  # reused, not re-exported
    sidecar = path.with_name(path.name + ".sha256")
    sidecar.write_text("0" * 64)  # a corrupt or foreign file is rebuilt
    rebuilt = family.build("onnx-fp32")
    assert sidecar.read_text() != "0" * 64
    np.testing.assert_allclose(
        rebuilt.predict(TEXTS[:2]), variants["onnx-fp32"].predict(TEXTS[:2]), atol=1e-6
    )


def test_family_pickles_as_settings(family: MiniLMFamily) -> None:
    clone = pickle.loads(pickle.dumps(family))
    assert (clone.eval_size, clone.calibration_size) == (64, 64)
    assert len(pickle.dumps(family)) < 1000  # no weights, sessions or tokenizers


# ------------------------------------------------------------------ HTTP items


def test_parse_and_render(family: MiniLMFamily, variants: dict[str, Variant]) -> None:
    batch = family.parse_items(["first text", "second"])
    assert batch == ["first text", "second"]
    rendered = family.render_outputs(variants[BASELINE_VARIANT].predict(batch))
    assert len(rendered) == 2 and len(rendered[0]["embedding"]) == EMBEDDING_DIM
    assert all(isinstance(v, float) for v in rendered[1]["embedding"])


@pytest.mark.parametrize(
    ("items", "index", "what"),
    [(["ok", ""], 1, "empty"), (["ok", "  \n"], 1, "empty"), ([3], 0, "int"), ([None], 0, "None")],
)
def test_bad_items_name_the_index(
    family: MiniLMFamily, items: list[object], index: int, what: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        family.parse_items(items)
    assert f"item {index}" in info.value.message and what in info.value.message
    assert info.value.fix


# ------------------------------------------------------------------ sentences


def test_sentences_are_real_deterministic_and_disjoint() -> None:
    all_sentences = sentences.harvest()
    assert len(all_sentences) > 2000
    assert len(set(all_sentences)) == len(all_sentences)
    for sentence in all_sentences[:200]:
        assert sentences.MIN_WORDS <= len(sentence.split()) <= sentences.MAX_WORDS
        assert sentence[0].isupper() and sentence[-1] in ".!?"
    evaluation, calibration = sentences.evaluation_set(), sentences.calibration_set()
    assert len(evaluation) == 512 and len(calibration) == 256
    assert not set(evaluation) & set(calibration)
    assert not set(evaluation + calibration) & set(sentences.pool())
    assert sentences.evaluation_set(10) == evaluation[:10]
    assert sentences.sample_sentences(5, seed=1) == sentences.sample_sentences(5, seed=1)
    assert sentences.sample_sentences(5, seed=1) != sentences.sample_sentences(5, seed=2)


@pytest.mark.parametrize("count", [1, 8, 32, 64])
def test_a_stratified_sample_spreads_its_lengths_as_the_pool_does(count: int) -> None:
    """One sentence from each of ``count`` equal slices of the pool sorted by length: the
    sample's k-th shortest lies in the k-th slice's range of lengths, so its mean length
    is the pool's; seeded, shuffled, and different between seeds."""
    ordered = sorted(len(s) for s in sentences.pool())
    n = len(ordered)
    sample = sentences.stratified_sentences(count, seed=3)
    assert sample == sentences.stratified_sentences(count, seed=3)
    assert sample != sentences.stratified_sentences(count, seed=4)
    assert set(sample) <= set(sentences.pool()) and len(sample) == count
    for k, length in enumerate(sorted(len(s) for s in sample)):
        assert ordered[k * n // count] <= length <= ordered[(k + 1) * n // count - 1]
    if count >= 32:
        mean = sum(ordered) / n
        for seed in range(8):
            lengths = [len(s) for s in sentences.stratified_sentences(count, seed)]
            assert abs(sum(lengths) / count - mean) < 0.05 * mean
    if count >= 8:  # shuffled, not in the strata's order
        assert [len(s) for s in sample] != sorted(len(s) for s in sample)


def test_split_sentences_skips_code() -> None:
    doc = (
        "Return the thing that was asked for. It may be cached.\n\n"
        "Example::\n\n    >>> thing()\n    42\n\n"
        "This paragraph has enough words to be kept here! Short one."
    )
    assert sentences.split_sentences(doc) == [
        "Return the thing that was asked for.",
        "This paragraph has enough words to be kept here!",
    ]


def test_docstrings_read_from_source_public_only() -> None:
    source = (
        '"""Module doc."""\n'
        "class Public:\n"
        '    """Class doc."""\n'
        "    def method(self):\n"
        '        """Method doc."""\n'
        "        def inner():\n"
        '            """Nested, skipped."""\n'
        "    def _private(self):\n"
        '        """Private, skipped."""\n'
        "def _hidden():\n"
        '    """Hidden, skipped."""\n'
        "async def run():\n"
        '    """Coroutine doc."""\n'
    )
    assert list(sentences.docstrings(source)) == [
        "Module doc.",
        "Class doc.",
        "Method doc.",
        "Coroutine doc.",
    ]
    assert list(sentences.docstrings("def broken(:")) == []


def test_profiling_batches_by_sequence_length(family: MiniLMFamily) -> None:
    assert family.seq_len_buckets() == [16, 32, 64, 128, 256]
    for n_tokens in family.seq_len_buckets():
        texts = family.profiling_batch(6, n_tokens, seed=n_tokens)
        counts = [family.tokenizer.count(t) for t in texts]
        assert all(n_tokens - 4 <= c <= n_tokens for c in counts), (n_tokens, counts)
        assert len(set(texts)) == 6
    assert family.profiling_batch(4, 64, seed=3) == family.profiling_batch(4, 64, seed=3)
    varied = family.profiling_batch(32, None, seed=0)
    lengths = [family.tokenizer.count(t) for t in varied]
    assert len(varied) == 32 and max(lengths) > 2 * min(lengths)
