"""ONNX export and ONNX Runtime helpers shared by the model families.

* :func:`export_onnx`: TorchScript-based exporter (``dynamo=False``) with a dynamic
  batch axis (and dynamic sequence axis for text), opset 17.
* :func:`make_session`: CPU session with all graph optimizations and a fixed number of
  intra-op threads (so replicas do not oversubscribe the cores), inter-op 1.
* :func:`quantize_dynamic_file` / :func:`quantize_static_file`: ONNX Runtime int8
  quantization; per-channel weights by default (per-tensor loses too much fidelity on
  MiniLM: mean cosine 0.966 vs 0.993 per-channel, measured here). Static quantization
  is calibrated on real held-out inputs (MinMax) in QDQ format.
* :func:`saturating_int8`: whether this CPU's int8 kernels can saturate (x86 without
  VNNI), where static quantization should use ``reduce_range`` (7-bit weights);
  :func:`int8_weights_tag` names the cached graphs made that way.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

OPSET = 17


def export_onnx(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
) -> Path:
    """Export ``module`` (eval mode) to ``path`` with the given dynamic axes; atomic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.onnx")
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            str(tmp),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
            opset_version=OPSET,
            dynamo=False,
        )
    os.replace(tmp, path)
    return path


#: Environment variable: ``0`` turns ONNX Runtime's intra-op spin-waiting off
#: (``session.intra_op.allow_spinning``); unset or ``1``: ONNX Runtime's default (on).
#: Spinning threads keep a core busy between runs, which on cores shared with the HTTP
#: server and clients takes CPU from them (docs/benchmarks.md, "Serving through HTTP").
SPINNING_ENV = "COSCALE_ORT_SPINNING"


def make_session(path: Path, *, threads: int = 1, optimize: bool = True) -> ort.InferenceSession:
    """A CPU InferenceSession with ``threads`` intra-op threads.

    ``optimize=True`` (default): ORT_ENABLE_ALL. ``optimize=False``: ORT_DISABLE_ALL, the
    graph run node by node exactly as stored (a user file's reference baseline).
    :data:`SPINNING_ENV` = ``0``: intra-op threads sleep at once when idle.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if os.environ.get(SPINNING_ENV, "1").strip() == "0":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def quantize_dynamic_file(
    src: Path, dst: Path, *, per_channel: bool = True, reduce_range: bool | None = None
) -> Path:
    """Dynamic int8 (weights int8 offline, activations quantized at run time);
    ``reduce_range`` None: 7-bit weights where this CPU's int8 kernels saturate
    (:func:`saturating_int8`; a small MLP's minimum cosine to fp32 0.86 → above 0.98
    on an AVX2-only CPU, MiniLM's unchanged: mean 0.9919 / 0.9916)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = dst.with_name(f".{dst.stem}.{os.getpid()}.tmp.onnx")
    quantize_dynamic(
        src,
        tmp,
        per_channel=per_channel,
        weight_type=QuantType.QInt8,
        reduce_range=saturating_int8() if reduce_range is None else reduce_range,
    )
    os.replace(tmp, dst)
    return dst


class _ArrayReader:
    """CalibrationDataReader over a sequence of feed dicts."""

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]]) -> None:
        self._iter: Iterator[Mapping[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self._iter, None)
        return None if feed is None else dict(feed)

    def rewind(self) -> None:  # pragma: no cover - ORT calls it only for some methods
        pass


def quantize_static_file(
    src: Path,
    dst: Path,
    calibration: Sequence[Mapping[str, np.ndarray]],
    *,
    per_channel: bool = True,
    extra_options: Mapping[str, Any] | None = None,
    nodes_to_exclude: Sequence[str] = (),
    op_types: Sequence[str] | None = None,
    unsigned_activations: bool = False,
    qdq: bool = True,
    reduce_range: bool | None = None,
) -> Path:
    """Static int8 in QDQ format, activations calibrated (MinMax) on ``calibration`` feeds.

    ``nodes_to_exclude``: node names left in float32 (e.g. a final Softmax, whose int8
    output would no longer sum to 1). ``op_types``: quantize only nodes of these op types
    (None: every op type ORT can quantize). ``unsigned_activations``: uint8 activations
    (U8S8, the fast path of ORT's x86 kernels; measured 1.6x faster than S8S8 on
    MiniLM) instead of int8. ``qdq=False``: QOperator format (QLinearMatMul, …).
    ``reduce_range``: 7-bit weights; None: where this CPU's int8 kernels saturate
    (:func:`saturating_int8`)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(_ArrayReader, CalibrationDataReader):  # type: ignore[misc]
        pass

    tmp = dst.with_name(f".{dst.stem}.{os.getpid()}.tmp.onnx")
    quantize_static(
        src,
        tmp,
        Reader(calibration),
        quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
        per_channel=per_channel,
        activation_type=QuantType.QUInt8 if unsigned_activations else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options=dict(extra_options or {}),
        nodes_to_exclude=list(nodes_to_exclude),
        op_types_to_quantize=list(op_types) if op_types is not None else None,
        reduce_range=saturating_int8() if reduce_range is None else reduce_range,
    )
    os.replace(tmp, dst)
    return dst


#: x86 flags whose int8 dot products accumulate in 32 bits (no saturation).
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def saturating_int8() -> bool:
    """Whether ONNX Runtime's x86 int8 kernels may saturate here: an x86 CPU with AVX2 but
    none of :data:`VNNI_FLAGS` multiplies u8 × s8 pairs with ``vpmaddubsw``, whose 16-bit
    sums of two products overflow for large weights and activations. Quantization (static
    and dynamic) then takes 7-bit weights (ONNX Runtime's ``reduce_range``), which cannot
    overflow.
    Measured on an AMD EPYC with AVX2 only (digits-cnn, 360 test images, argmax agreement
    with fp32): ``pruned-structured-int8`` 0.972 → 0.994, ``onnx-int8-static`` 0.989 →
    1.000. ARM and CPUs with VNNI → False."""
    from coscale.accel.hardware import hardware_info

    flags = set(hardware_info()["flags"])
    return "avx2" in flags and not flags & VNNI_FLAGS


#: Marks a cached int8 graph quantized with 7-bit weights (:func:`int8_weights_tag`).
REDUCED_RANGE_TAG = "-w7"


def int8_weights_tag(variant: str) -> str:
    """The part of a cached artifact's name that says how its int8 weights were made:
    :data:`REDUCED_RANGE_TAG` for a variant whose name contains ``int8`` where
    :func:`saturating_int8` holds (7-bit weights), else ``""``. A cache shared between a
    CPU with VNNI and one without (a copied ``COSCALE_HOME``, a network home) then keeps
    one graph of each kind instead of serving the other machine's."""
    return REDUCED_RANGE_TAG if "int8" in variant and saturating_int8() else ""
