"""The contract between model families, their variants, the profiler and (later) the workers.

A :class:`ModelFamily` is one servable model (``digits-cnn``, ``minilm``, or a
user's ONNX/TorchScript file). It knows how to

* build each of its *variants* (fp32 eager, int8, ONNX Runtime, pruned, …) as a
  :class:`Variant`, a callable that maps a native batch to a float32 array;
* make profiling batches of a given size (and, for text, sequence length);
* measure a variant's *fidelity* against the fp32 eager baseline;
* turn HTTP items into a native batch (validating shape and dtype) and outputs
  back into JSON-able objects.

Native batches: ``np.ndarray`` (float32, batch axis first) for array models,
``list[str]`` for text models (tokenized inside the variant, padded to the
longest item in the batch, not to the model's maximum).

Variant names are canonical across families so that scenarios, profiles and
policies can name them:
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coscale.errors import InvalidInputError

BASELINE_VARIANT = "fp32-eager"

#: Every variant name coscale knows, with what it is. A family builds a subset.
VARIANT_DESCRIPTIONS: dict[str, str] = {
    "fp32-eager": "PyTorch eager, float32 (the baseline every fidelity is measured against)",
    "int8-dynamic": "PyTorch dynamic int8 quantization of Linear layers",
    "onnx-fp32": "ONNX Runtime, float32, all graph optimizations",
    "onnx-int8-dynamic": "ONNX Runtime, dynamic int8 quantization (per-channel weights)",
    "onnx-int8-static": "ONNX Runtime, static int8 quantization calibrated on held-out data",
    "pruned-structured": (
        "channels removed (structured L1 pruning) and fine-tuned, then ONNX Runtime"
    ),
    "pruned-structured-int8": "pruned-structured, then ONNX Runtime static int8 (calibrated)",
    "pruned-unstructured": "50 % of weights zeroed by magnitude; dense kernels, so no speed-up",
    "bf16-eager": "PyTorch eager, bfloat16 (only where the CPU has native bf16)",
    "fp16-eager": "PyTorch eager, float16 (GPU only)",
}


@dataclass(frozen=True)
class Fidelity:
    """How close a variant is to the baseline.

    ``value``: accuracy (classifiers) or mean cosine similarity to fp32 outputs.
    ``metric``: ``"accuracy"`` or ``"cosine"``; ``minimum``: worst single item
    (cosine) or the same as value (accuracy).
    """

    value: float
    metric: str
    minimum: float


class Variant(abc.ABC):
    """One built variant of a model: a callable from a native batch to float32 outputs."""

    name: str
    runtime: str  # "torch" or "onnxruntime"

    @abc.abstractmethod
    def predict(self, batch: Any) -> np.ndarray:
        """Run one batch; returns a float32 array with the batch axis first."""

    @abc.abstractmethod
    def size_bytes(self) -> int:
        """Size of the variant's weights as stored on disk (serialized)."""


class ModelFamily(abc.ABC):
    """A servable model and everything needed to accelerate, profile and serve it."""

    name: str
    #: "image-classification", "text-embedding" or "tensor" (a user's file)
    task: str

    @abc.abstractmethod
    def variant_names(self) -> list[str]:
        """Variants that can be built *on this hardware*, baseline first."""

    @abc.abstractmethod
    def build(self, variant: str, *, threads: int = 1, cache_dir: Path | None = None) -> Variant:
        """Build (or load from the cache) one variant. Unknown name → CoscaleError."""

    @abc.abstractmethod
    def profiling_batch(self, batch_size: int, seq_len: int | None, seed: int) -> Any:
        """A native batch of real-looking inputs; for text, items of about ``seq_len`` tokens."""

    def seq_len_buckets(self) -> list[int] | None:
        """Sequence-length buckets to profile (text models); None for fixed-size inputs."""
        return None

    @abc.abstractmethod
    def fidelity(self, variant: Variant, baseline: Variant) -> Fidelity:
        """Measure ``variant`` on the family's fixed evaluation set against ``baseline``."""

    @abc.abstractmethod
    def parse_items(self, items: Sequence[Any]) -> Any:
        """HTTP items → native batch; wrong shape/dtype → InvalidInputError naming the item."""

    def parse_array(self, array: np.ndarray) -> Any:
        """A binary request's array (batch axis first, from ``application/x-npy``) → native
        batch, with the same checks as :meth:`parse_items`.

        The default goes through :meth:`parse_items` item by item (``array.tolist()``);
        families whose items are fixed-size numbers override it with a vectorized check.
        An array the family cannot take (e.g. numbers for a text model) raises
        InvalidInputError from :meth:`parse_items`.
        """
        if array.ndim == 0:
            raise InvalidInputError(
                f"{self.name} expects an array with the batch axis first, got a scalar.",
                fix="Send an array of shape (items, …).",
            )
        return self.parse_items(array.tolist())

    @abc.abstractmethod
    def render_outputs(self, outputs: np.ndarray) -> list[dict[str, Any]]:
        """Model outputs → one JSON-able object per item."""
