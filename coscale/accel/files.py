"""Serving a user's model file: ONNX (:class:`OnnxFileFamily`) or TorchScript
(:class:`TorchScriptFamily`).

**Inputs.** A file model takes one or more named tensors. Each input's first axis is the
**batch axis** and must be dynamic (an ONNX ``dim_param`` or unknown dim; for
TorchScript, whatever the sidecar says — its first entry is ignored). The other axes
are fixed sizes or symbolic; a symbolic axis gets :data:`DEFAULT_DIM` (16) in profiling
and fidelity inputs (or the profiler's ``seq_len`` when given), and in HTTP items it
may take any size as long as all items of one batch agree.

**Native batch**: ``dict[str, np.ndarray]`` (input name → ``(n, ...)`` array of the
input's dtype); a bare ``np.ndarray`` is accepted for a single-input model. The
**output** served is the graph's first output, cast to float32 (further outputs are
ignored); ``render_outputs`` gives ``{"output": nested list}`` per item.

**Variants and the baseline.** A file model's baseline is *its own float32 graph as
given*, so ``BASELINE_VARIANT`` (``fp32-eager``) keeps its meaning "the unoptimized
reference every fidelity is measured against":

* ONNX: ``fp32-eager`` = the file run by ONNX Runtime with all graph optimizations
  disabled (node by node, as stored; runtime ``onnxruntime``); ``onnx-fp32`` = the same
  file with ORT_ENABLE_ALL; ``onnx-int8-dynamic`` = ORT dynamic int8, per-channel
  weights (offered when the graph has a MatMul, Gemm or Conv);
* TorchScript: ``fp32-eager`` = the scripted module (``torch.jit.load``);
  ``int8-dynamic`` = ``quantize_dynamic_jit`` of its Linear layers (offered when it has
  any); ``onnx-fp32`` / ``onnx-int8-dynamic`` = an ONNX export of it (offered only when
  the export succeeds; the attempt is made once and its result cached).

Derived files live in ``cache_dir("models", "files")`` named by the SHA-256 of the
user's file, so editing the file invalidates them.

**Profiling and fidelity inputs** (seeded, ``numpy.random.default_rng(seed)``): floats
standard normal; integers uniform in ``[0, int_high)`` (default :data:`DEFAULT_INT_HIGH`,
10); booleans fair coin flips. Fidelity = mean and minimum cosine (metric ``"cosine"``)
between the variant's and the baseline's flattened per-item outputs over
:data:`FIDELITY_ITEMS` (256) seeded items (seed :data:`FIDELITY_SEED`); two all-zero
outputs count as identical (1.0), non-finite values as 0.

**TorchScript sidecar.** A TorchScript file does not record its input shapes, so
``<file>.json`` next to it (``model.pt.json``; ``model.json`` is also accepted) must say::

    {"inputs": [{"name": "x", "shape": ["batch", 3, 32, 32], "dtype": "float32"}]}

``shape`` includes the batch axis first; a string, ``null`` or ``-1`` marks a symbolic
axis; ``dtype`` is one of :data:`DTYPES` (default ``float32``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from coscale.accel.base import BASELINE_VARIANT, Fidelity, ModelFamily, Variant
from coscale.accel.cache import cache_dir, sha256_file
from coscale.errors import CoscaleError, InvalidInputError, ModelFileError

log = logging.getLogger(__name__)

#: Size given to a symbolic non-batch axis in profiling and fidelity inputs.
DEFAULT_DIM = 16
#: Integer inputs are drawn uniformly from ``[0, DEFAULT_INT_HIGH)``.
DEFAULT_INT_HIGH = 10
FIDELITY_ITEMS = 256
FIDELITY_BATCH = 32
FIDELITY_SEED = 1234
ARTIFACT_FORMAT = 2
DIGEST_CHARS = 16
DTYPES: tuple[str, ...] = (
    "float32",
    "float64",
    "float16",
    "int64",
    "int32",
    "int8",
    "uint8",
    "bool",
)
ONNX_QUANTIZABLE_OPS = frozenset({"MatMul", "Gemm", "Conv"})
OUTPUT_KEY = "output"


@dataclass(frozen=True)
class InputSpec:
    """One model input: ``dims`` excludes the batch axis; ``None`` marks a symbolic axis."""

    name: str
    dims: tuple[int | None, ...]
    dtype: str

    def concrete(self, size: int) -> tuple[int, ...]:
        """``dims`` with every symbolic axis set to ``size``."""
        return tuple(size if d is None else d for d in self.dims)

    def item_shape(self) -> str:
        """The per-item shape as text, ``n`` for a symbolic axis: ``(3, n)``."""
        text = ", ".join("n" if d is None else str(d) for d in self.dims)
        return f"({text},)" if len(self.dims) == 1 else f"({text})"

    def describe(self) -> str:
        """``name: dtype[batch, 3, n]``."""
        dims = ["batch", *("n" if d is None else str(d) for d in self.dims)]
        return f"{self.name}: {self.dtype}[{', '.join(dims)}]"


def _random_input(
    spec: InputSpec, n: int, size: int, rng: np.random.Generator, high: int
) -> np.ndarray:
    shape = (n, *spec.concrete(size))
    dtype = np.dtype(spec.dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, high, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _item_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-item cosine of flattened outputs; both all-zero → 1, one all-zero → 0."""
    x, y = (_finite_rows(v) for v in (a, b))
    nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
    dots = np.einsum("ij,ij->i", x, y)
    cos = np.divide(dots, nx * ny, out=np.zeros_like(dots), where=(nx * ny) > 0)
    cos[(nx == 0) & (ny == 0)] = 1.0
    return cos


def _finite_rows(values: np.ndarray) -> np.ndarray:
    flat = np.asarray(values, np.float64).reshape(len(values), -1)
    return np.nan_to_num(flat, nan=0.0, posinf=0.0, neginf=0.0)


class _TensorFamily(ModelFamily):
    """What ONNX and TorchScript file families share: inputs, batches, fidelity, I/O."""

    task = "tensor"
    path: Path
    inputs: tuple[InputSpec, ...]
    int_high: int

    def _init_common(self, path: Path, int_high: int) -> None:
        self.path = path
        self.name = path.name
        self.int_high = int_high
        self._digest: str | None = None
        self._reference: weakref.WeakKeyDictionary[Variant, np.ndarray] = (
            weakref.WeakKeyDictionary()
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_reference", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reference = weakref.WeakKeyDictionary()

    @property
    def digest(self) -> str:
        """SHA-256 of the user's file (names the derived files in the cache)."""
        if self._digest is None:
            self._digest = sha256_file(self.path)
        return self._digest

    def artifact_path(self, variant: str, root: Path | None = None) -> Path:
        """``{root}/{digest[:16]}-{variant}{tag}.v{ARTIFACT_FORMAT}.onnx``, ``tag`` =
        :func:`onnxrt.int8_weights_tag` (7-bit int8 weights or not)."""
        from coscale.accel import onnxrt

        tag = onnxrt.int8_weights_tag(variant)
        name = f"{self.digest[:DIGEST_CHARS]}-{variant}{tag}.v{ARTIFACT_FORMAT}.onnx"
        folder = root or cache_dir("models", "files")
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    def _unknown_variant(self, variant: str) -> CoscaleError:
        return CoscaleError(
            f"variant {variant!r} cannot be built for the model file {self.path}.",
            fix=f"Choose one of: {', '.join(self.variant_names())}.",
            code="unknown_variant",
        )

    def feeds(self, batch: Any) -> dict[str, np.ndarray]:
        """A native batch as an input-name → array dict (a bare array for one input)."""
        if isinstance(batch, Mapping):
            return {spec.name: np.asarray(batch[spec.name]) for spec in self.inputs}
        if len(self.inputs) == 1:
            return {self.inputs[0].name: np.asarray(batch)}
        raise InvalidInputError(
            f"{self.name} has {len(self.inputs)} inputs; a batch must be a dict of arrays "
            f"keyed {', '.join(s.name for s in self.inputs)}.",
            fix="Pass one array per input name.",
        )

    def profiling_batch(
        self, batch_size: int, seq_len: int | None, seed: int
    ) -> dict[str, np.ndarray]:
        """Seeded random inputs (module docstring); symbolic axes get ``seq_len`` or 16."""
        rng = np.random.default_rng(seed)
        size = seq_len or DEFAULT_DIM
        return {s.name: _random_input(s, batch_size, size, rng, self.int_high) for s in self.inputs}

    def fidelity(self, variant: Variant, baseline: Variant) -> Fidelity:
        reference = self._reference.get(baseline)
        batches = [
            self.profiling_batch(FIDELITY_BATCH, None, FIDELITY_SEED + i)
            for i in range(0, FIDELITY_ITEMS, FIDELITY_BATCH)
        ]
        if reference is None:
            reference = np.concatenate([baseline.predict(b) for b in batches])
            self._reference[baseline] = reference
        outputs = np.concatenate([variant.predict(b) for b in batches])
        cos = _item_cosines(outputs, reference)
        return Fidelity(value=float(cos.mean()), metric="cosine", minimum=float(cos.min()))

    def parse_items(self, items: Sequence[Any]) -> dict[str, np.ndarray]:
        """Each item: a nested list for a single-input model, else ``{input name: nested
        list}``; per-item shape (batch axis excluded) and dtype are checked."""
        if not items:
            return {s.name: np.zeros((0, *s.concrete(0)), s.dtype) for s in self.inputs}
        columns: dict[str, list[np.ndarray]] = {s.name: [] for s in self.inputs}
        for index, item in enumerate(items):
            values = self._item_values(index, item)
            for spec in self.inputs:
                columns[spec.name].append(_check_value(index, spec, values[spec.name]))
        batch: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            shapes = {a.shape for a in columns[spec.name]}
            if len(shapes) > 1:
                raise InvalidInputError(
                    f"input {spec.name!r}: items of one request must share a shape, got "
                    f"{sorted(shapes)}.",
                    fix="Pad the items to one length, or send them in separate requests.",
                )
            batch[spec.name] = np.stack(columns[spec.name])
        return batch

    def _item_values(self, index: int, item: Any) -> Mapping[str, Any]:
        names = [s.name for s in self.inputs]
        if isinstance(item, Mapping):
            missing = [n for n in names if n not in item]
            extra = [str(k) for k in item if k not in names]
            if missing or extra:
                raise InvalidInputError(
                    f"item {index}: expected the inputs {names}, got {sorted(map(str, item))}.",
                    fix="Send one value per input: "
                    + ", ".join(s.describe() for s in self.inputs)
                    + ".",
                )
            return item
        if len(self.inputs) == 1:
            return {names[0]: item}
        raise InvalidInputError(
            f"item {index}: {self.name} has {len(names)} inputs, so each item must be an object "
            f"keyed {names}, got {type(item).__name__}.",
            fix=f"Send e.g. {{{', '.join(repr(n) + ': [...]' for n in names)}}}.",
        )

    def render_outputs(self, outputs: np.ndarray) -> list[dict[str, Any]]:
        return [{OUTPUT_KEY: np.asarray(row, np.float32).tolist()} for row in outputs]


def _check_value(index: int, spec: InputSpec, value: Any) -> np.ndarray:
    """One item's value for ``spec``: its shape and dtype checked, cast to ``spec.dtype``."""
    want = f"shape {spec.item_shape()} of {spec.dtype}"
    where = f"item {index}, input {spec.name!r}"
    fix = f"Send {spec.describe()} (batch axis excluded per item)."
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"{where}: expected {want}, got a ragged value.", fix=fix) from exc
    got = f"shape {tuple(array.shape)} of {array.dtype}"
    ok_shape = array.ndim == len(spec.dims) and all(
        d is None or d == g for d, g in zip(spec.dims, array.shape, strict=True)
    )
    if not ok_shape:
        raise InvalidInputError(f"{where}: expected {want}, got {got}.", fix=fix)
    target = np.dtype(spec.dtype)
    kind = array.dtype.kind
    if target == np.bool_:
        valid = kind == "b"  # JSON true/false
    elif np.issubdtype(target, np.integer):
        valid = kind in "iu"  # JSON integers; 1.5 or true are refused
    else:
        valid = kind in "iuf" and bool(np.isfinite(array.astype(np.float64)).all())
    if not valid:
        raise InvalidInputError(f"{where}: expected {want}, got {got}.", fix=fix)
    if kind in "iu" and np.issubdtype(target, np.integer):
        info = np.iinfo(target)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise InvalidInputError(f"{where}: values out of range for {spec.dtype}.", fix=fix)
    return array.astype(target, copy=False)


# ------------------------------------------------------------------ ONNX files


class OnnxFileVariant(Variant):
    """A user's ONNX graph (or a derived one) in an ONNX Runtime session."""

    runtime = "onnxruntime"

    def __init__(
        self, name: str, path: Path, family: _TensorFamily, *, threads: int, optimize: bool
    ) -> None:
        from coscale.accel import onnxrt

        self.name = name
        self.path = path
        self.family = family
        self.threads = max(1, threads)
        self.session = onnxrt.make_session(path, threads=self.threads, optimize=optimize)
        self._output = self.session.get_outputs()[0].name

    def predict(self, batch: Any) -> np.ndarray:
        out = self.session.run([self._output], self.family.feeds(batch))[0]
        return np.asarray(out, dtype=np.float32)

    def size_bytes(self) -> int:
        return self.path.stat().st_size


_ONNX_FIX = (
    "Check that the file is an ONNX model (a .onnx file written by torch.onnx.export, "
    "tf2onnx or onnx.save) and was copied completely; re-export it if in doubt."
)


def _missing(path: Path) -> ModelFileError:
    return ModelFileError(
        f"model file {path} does not exist or is not a regular file.",
        fix=f"Check the path (a relative one is resolved from {Path.cwd()}).",
    )


def _onnx_specs(model: Any, path: Path) -> tuple[InputSpec, ...]:
    """Graph inputs (initializers excluded) as :class:`InputSpec`, batch axis checked."""
    from onnx import TensorProto, helper

    initializers = {init.name for init in model.graph.initializer}
    specs: list[InputSpec] = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type") or tensor.elem_type == TensorProto.UNDEFINED:
            raise ModelFileError(
                f"{path}: input {value.name!r} is not a tensor; coscale serves tensor inputs only.",
                fix="Export the model with tensor inputs (no sequences, maps or optionals).",
            )
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        if dtype not in DTYPES:
            raise ModelFileError(
                f"{path}: input {value.name!r} has dtype {dtype}, which coscale cannot feed.",
                fix=f"Export the model with inputs of one of: {', '.join(DTYPES)}.",
            )
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if not tensor.HasField("shape") or not dims or dims[0] is not None:
            raise ModelFileError(
                f"{path}: input {value.name!r} has shape {_shape_text(dims, tensor)}; its first "
                "axis must be a dynamic batch axis.",
                fix="Re-export with a dynamic batch axis, e.g. torch.onnx.export(..., "
                f"dynamic_axes={{{value.name!r}: {{0: 'batch'}}}}).",
            )
        specs.append(InputSpec(value.name, tuple(dims[1:]), dtype))
    if not specs:
        raise ModelFileError(f"{path}: the graph has no inputs.", fix=_ONNX_FIX)
    return tuple(specs)


def _shape_text(dims: list[int | None], tensor: Any) -> str:
    if not tensor.HasField("shape"):
        return "unknown (no rank)"
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def load_onnx_inputs(path: Path) -> tuple[tuple[InputSpec, ...], frozenset[str]]:
    """Validate an ONNX file; its inputs and the set of op types in its main graph.

    Unreadable, corrupt or non-ONNX files → :class:`ModelFileError`.
    """
    import onnx

    if not path.is_file():
        raise _missing(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(str(path))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(
            f"{path} is not a valid ONNX model ({type(exc).__name__}: {first[:200]}).",
            fix=_ONNX_FIX,
        ) from exc
    if not model.graph.node or not model.graph.output:
        raise ModelFileError(f"{path} is not a valid ONNX model (empty graph).", fix=_ONNX_FIX)
    return _onnx_specs(model, path), frozenset(n.op_type for n in model.graph.node)


class OnnxFileFamily(_TensorFamily):
    """A user's ONNX file (see the module docstring). Validated at construction."""

    def __init__(self, path: str | Path, *, int_high: int = DEFAULT_INT_HIGH) -> None:
        self._init_common(Path(path).expanduser().resolve(), int_high)
        self.inputs, self.op_types = load_onnx_inputs(self.path)

    def variant_names(self) -> list[str]:
        names = [BASELINE_VARIANT, "onnx-fp32"]
        if self.op_types & ONNX_QUANTIZABLE_OPS:
            names.append("onnx-int8-dynamic")
        return names

    def build(self, variant: str, *, threads: int = 1, cache_dir: Path | None = None) -> Variant:
        if variant not in self.variant_names():
            raise self._unknown_variant(variant)
        path = self.path
        if variant == "onnx-int8-dynamic":
            path = _quantized(self.path, self.artifact_path(variant, cache_dir))
        try:
            return OnnxFileVariant(
                variant, path, self, threads=threads, optimize=variant != BASELINE_VARIANT
            )
        except Exception as exc:
            raise ModelFileError(
                f"ONNX Runtime cannot load {path} ({type(exc).__name__}: {str(exc)[:300]}).",
                fix="Check that the graph uses operators and an opset this onnxruntime supports.",
            ) from exc


def _quantized(src: Path, dst: Path) -> Path:
    """ORT dynamic int8 (per-channel) of ``src`` at ``dst``, reused when already there."""
    from coscale.accel import onnxrt

    if dst.exists():
        return dst
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer's "run pre-processing first" advice
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            onnxrt.quantize_dynamic_file(src, dst, per_channel=True)
    finally:
        root.setLevel(level)
    return dst


# ------------------------------------------------------------------ TorchScript files


class SidecarInput(BaseModel):
    """One input of a TorchScript model, as written in its sidecar JSON."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, description="input name (used as the HTTP item key)")
    shape: list[int | str | None] = Field(
        min_length=1,
        description="shape with the batch axis first; a string, null or -1 is symbolic",
    )
    dtype: Literal["float32", "float64", "float16", "int64", "int32", "int8", "uint8", "bool"] = (
        "float32"
    )


class Sidecar(BaseModel):
    """``<file>.json`` next to a TorchScript file: the inputs its ``forward`` takes, in order."""

    model_config = ConfigDict(extra="forbid")
    inputs: list[SidecarInput] = Field(min_length=1)


def sidecar_candidates(path: Path) -> list[Path]:
    """``model.pt.json`` first, then ``model.json``."""
    return [path.with_name(path.name + ".json"), path.with_suffix(".json")]


def _sidecar_example() -> str:
    return '{"inputs": [{"name": "x", "shape": ["batch", 3, 32, 32], "dtype": "float32"}]}'


def load_sidecar(path: Path) -> tuple[InputSpec, ...]:
    """The input specs from ``path``'s sidecar; missing or invalid → ModelFileError."""
    found = next((p for p in sidecar_candidates(path) if p.is_file()), None)
    if found is None:
        raise ModelFileError(
            f"TorchScript file {path} has no input description: a TorchScript file does not "
            "record the shapes its forward() expects.",
            fix=f"Write {sidecar_candidates(path)[0]} with e.g. {_sidecar_example()} (shape "
            "starts with the batch axis; a string marks a symbolic axis).",
        )
    try:
        sidecar = Sidecar.model_validate(json.loads(found.read_text()))
    except (OSError, ValueError) as exc:
        problems = exc.errors() if isinstance(exc, ValidationError) else []
        where = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in problems[:3]
        ) or str(exc)
        raise ModelFileError(
            f"{found} is not a valid input description ({where}).",
            fix=f"Write it as JSON like {_sidecar_example()}.",
        ) from exc
    specs = []
    for item in sidecar.inputs:
        dims = tuple(d if isinstance(d, int) and d > 0 else None for d in item.shape[1:])
        bad = [d for d in item.shape[1:] if isinstance(d, int) and d not in (-1,) and d <= 0]
        if bad:
            raise ModelFileError(
                f"{found}: input {item.name!r} has invalid axis sizes {bad}.",
                fix="Use positive sizes, or a string/null/-1 for a symbolic axis.",
            )
        specs.append(InputSpec(item.name, dims, item.dtype))
    if len({s.name for s in specs}) != len(specs):
        raise ModelFileError(f"{found}: input names repeat.", fix="Give each input its own name.")
    return tuple(specs)


def _first_tensor(out: Any) -> Any:
    import torch

    while not isinstance(out, torch.Tensor):
        if isinstance(out, (tuple, list)) and out:
            out = out[0]
        elif isinstance(out, dict) and out:
            out = next(iter(out.values()))
        else:
            raise ModelFileError(
                f"the TorchScript model returned {type(out).__name__}, not a tensor.",
                fix="Serve a model whose forward() returns a tensor (or a tuple of tensors).",
            )
    return out


class TorchScriptVariant(Variant):
    """A TorchScript module run eagerly by PyTorch (float32 or dynamic int8)."""

    runtime = "torch"

    def __init__(self, name: str, module: Any, family: _TensorFamily, *, threads: int) -> None:
        import torch

        self.name = name
        self.module = module
        self.family = family
        self.threads = max(1, threads)
        self._size: int | None = None
        torch.set_num_threads(self.threads)

    def predict(self, batch: Any) -> np.ndarray:
        import torch

        feeds = self.family.feeds(batch)
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        tensors = [
            torch.from_numpy(np.ascontiguousarray(feeds[spec.name])) for spec in self.family.inputs
        ]
        with torch.inference_mode():
            out = _first_tensor(self.module(*tensors))
        return np.asarray(out.detach().float().numpy(), dtype=np.float32)

    def size_bytes(self) -> int:
        import torch

        if self._size is None:
            buffer = io.BytesIO()
            torch.jit.save(self.module, buffer)
            self._size = buffer.getbuffer().nbytes
        return self._size


def load_torchscript(path: Path) -> Any:
    """``torch.jit.load`` on CPU; anything else than a TorchScript archive → ModelFileError."""
    import torch

    if not path.is_file():
        raise _missing(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "switch to torch.export"
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelFileError(
            f"{path} is not a loadable TorchScript file ({type(exc).__name__}: {first[:200]}).",
            fix="Save the model with torch.jit.save(torch.jit.script(model) or "
            "torch.jit.trace(model, example), path); a state_dict or a pickled nn.Module "
            "saved with torch.save is not servable.",
        ) from exc


class TorchScriptFamily(_TensorFamily):
    """A user's TorchScript file plus its sidecar JSON (see the module docstring)."""

    def __init__(self, path: str | Path, *, int_high: int = DEFAULT_INT_HIGH) -> None:
        self._init_common(Path(path).expanduser().resolve(), int_high)
        if not self.path.is_file():
            raise _missing(self.path)
        self.inputs = load_sidecar(self.path)
        module = load_torchscript(self.path)
        self.has_linear = any(
            getattr(m, "original_name", "") == "Linear" for _, m in module.named_modules()
        )
        self._onnx_ok: bool | None = None

    def _module(self) -> Any:
        return load_torchscript(self.path)

    def _export(self, root: Path | None) -> Path | None:
        """The ONNX export (cached), or None when this module does not export."""
        from coscale.accel import onnxrt

        dst = self.artifact_path("onnx-fp32", root)
        failed = dst.with_name(dst.name + ".failed")
        if dst.exists():
            return dst
        if failed.exists():
            return None
        example = self.profiling_batch(2, None, 0)
        import torch

        names = [s.name for s in self.inputs]
        axes: dict[str, dict[int, str]] = {}
        for spec in self.inputs:
            axes[spec.name] = {0: "batch"}
            for axis, dim in enumerate(spec.dims, start=1):
                if dim is None:
                    axes[spec.name][axis] = f"{spec.name}_{axis}"
        axes["output"] = {0: "batch"}
        try:
            onnxrt.export_onnx(
                self._module(),
                tuple(torch.from_numpy(example[n]) for n in names),
                dst,
                input_names=names,
                output_names=["output"],
                dynamic_axes=axes,
            )
            load_onnx_inputs(dst)
        except Exception as exc:
            log.info("TorchScript %s does not export to ONNX: %s", self.path, exc)
            dst.unlink(missing_ok=True)
            failed.write_text(f"{type(exc).__name__}: {exc}\n")
            return None
        return dst

    def onnx_exportable(self, root: Path | None = None) -> bool:
        if self._onnx_ok is None:
            self._onnx_ok = self._export(root) is not None
        return self._onnx_ok

    def variant_names(self) -> list[str]:
        names = [BASELINE_VARIANT]
        if self.has_linear and _jit_dynamic_quant_available():
            names.append("int8-dynamic")
        if self.onnx_exportable():
            names += ["onnx-fp32", "onnx-int8-dynamic"]
        return names

    def build(self, variant: str, *, threads: int = 1, cache_dir: Path | None = None) -> Variant:
        if variant not in self.variant_names():
            raise self._unknown_variant(variant)
        if variant == BASELINE_VARIANT:
            return TorchScriptVariant(variant, self._module(), self, threads=threads)
        if variant == "int8-dynamic":
            return TorchScriptVariant(variant, _jit_int8(self._module()), self, threads=threads)
        exported = self._export(cache_dir)
        if exported is None:
            raise self._unknown_variant(variant)
        path = exported
        if variant == "onnx-int8-dynamic":
            path = _quantized(exported, self.artifact_path(variant, cache_dir))
        return OnnxFileVariant(variant, path, self, threads=threads, optimize=True)


def _jit_dynamic_quant_available() -> bool:
    try:
        from torch.ao.quantization import quantize_dynamic_jit  # noqa: F401
    except ImportError:  # pragma: no cover - removed in a future torch
        return False
    return True


def _jit_int8(module: Any) -> Any:
    """Dynamic int8 (per-channel weights) of a TorchScript module's Linear layers."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic_jit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
        return quantize_dynamic_jit(module, {"": per_channel_dynamic_qconfig})
