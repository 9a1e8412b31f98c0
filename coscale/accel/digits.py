"""The built-in ``digits-cnn`` model family: a small CNN for scikit-learn's digits.

Data
    :func:`sklearn.datasets.load_digits` (1 797 grey 8×8 images, pixel values 0–16,
    10 classes; shipped with scikit-learn, nothing is downloaded). One fixed,
    stratified split with :data:`SPLIT_SEED`: :data:`TEST_SIZE` (360) test images
    (accuracy, profiling batches), :data:`CALIBRATION_SIZE` (180) held-out calibration
    images (static int8 calibration, pruning fine-tune validation), the rest (1 257) for
    training. The split does not depend on the training seed. It is cached as an
    ``.npz`` (:func:`digits_splits`), so a worker's warm-up does not import scikit-learn.

Model (:class:`DigitsCNN`, channels ``(c1, c2, c3)`` = :data:`CHANNELS` (32, 64, 128))
    input ``(n, 64)`` raw pixels → reshape ``(n, 1, 8, 8)`` → ``x / 16`` →
    conv3×3(1→c1) → BN → ReLU → conv3×3(c1→c2) → BN → ReLU → maxpool 2 →
    conv3×3(c2→c3) → ReLU → global average pool → linear(c3→10) → softmax.
    About 2.4 M multiply-adds per image, so a batch of 64 is compute-bound. The
    normalisation and the softmax are part of the module, hence of every exported ONNX
    graph: every variant maps raw pixels ``(n, 64)`` to probabilities ``(n, 10)``.

Training (:func:`train_digits_cnn`)
    Adam with a one-cycle learning-rate schedule (peak :data:`LEARNING_RATE`),
    :data:`EPOCHS` (15) epochs of mini-batches of :data:`BATCH_SIZE` (64) shuffled by a
    ``torch.Generator`` seeded with the seed, cross-entropy on the logits. Deterministic:
    ``torch.manual_seed(seed)``, ``torch.use_deterministic_algorithms(True)`` and one
    intra-op thread while training (both restored afterwards), so the same seed gives
    bit-identical weights on the same machine and library versions. About 5 s on one
    core; test accuracy about 99 %.

Weights cache
    ``cache_dir("models", "digits-cnn")/weights-seed{seed}-{config hash}.pt`` plus a
    ``.json`` of the same stem holding the training config, its SHA-256, the SHA-256 of
    the weights file and :func:`weights_digest` (SHA-256 over every tensor's name,
    dtype, shape and bytes). The weights are reloaded only when the config matches, the
    file's SHA-256 matches and the loaded tensors hash to the recorded digest; otherwise
    the model is retrained (logged as a warning, and :attr:`DigitsFamily.weights_status`
    says why). Every derived artifact (ONNX files) has the first
    :data:`DIGEST_CHARS` hex digits of the weights digest in its name and a ``.sha256``
    side file, so retrained weights never meet stale artifacts and a corrupt artifact is
    rebuilt. Writes are atomic (temp file + rename); two processes building the same
    artifact at once both produce a valid file.

Variants (see :data:`coscale.accel.base.VARIANT_DESCRIPTIONS`)
    ``fp32-eager`` (baseline), ``int8-dynamic`` (torch dynamic int8 of the one Linear
    layer: the convolutions, which do all the work, stay fp32, so no speed-up),
    ``onnx-fp32``, ``onnx-int8-dynamic`` (ORT ConvInteger; slower than fp32 on x86),
    ``onnx-int8-static`` (QDQ, per-channel, MinMax-calibrated on the calibration split,
    the final Softmax left in float32 so probabilities still sum to 1; QDQ and QOperator
    measured equally fast here, QDQ is ORT's recommended format; quantizing only the
    convolutions is ~10 % slower),
    ``pruned-structured`` (:func:`prune_structured`: L1 filter pruning keeping
    :data:`PRUNE_KEEP` (50 %) of every conv's output channels in a *smaller* module,
    fine-tuned :data:`FINE_TUNE_EPOCHS` epochs, served by ONNX Runtime fp32),
    ``pruned-structured-int8`` (the same pruned model, static int8 like
    ``onnx-int8-static``), ``pruned-unstructured`` (:func:`prune_unstructured`: 50 % of
    the conv/linear weights zeroed by global magnitude, no fine-tune, dense kernels,
    served in eager PyTorch like the baseline so the comparison is honest) and
    ``bf16-eager`` (only where the CPU computes bf16 natively).

Measured (AMD EPYC with AVX512-BF16, 1 thread, batch 64, best of 15 interleaved rounds;
figures are a record, nothing reads them): fp32-eager ≈ 16 k images/s; onnx-fp32 1.6×;
onnx-int8-static 4.1× at equal accuracy; pruned-structured 6.2× and
pruned-structured-int8 10× at −0.6 / −0.8 accuracy points; bf16-eager 1.3×;
int8-dynamic and pruned-unstructured 1.0×; onnx-int8-dynamic 0.33×.

Threads
    ONNX Runtime variants own a session with ``threads`` intra-op threads. PyTorch's
    intra-op thread count is *per process*: a torch variant calls
    ``torch.set_num_threads(threads)`` when built and again before a prediction if
    something changed it, so two torch variants with different ``threads`` in one
    process take turns setting it. coscale runs one replica per worker process, where
    this is exact.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import itertools
import json
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from coscale.accel import onnxrt
from coscale.accel.base import BASELINE_VARIANT, Fidelity, ModelFamily, Variant
from coscale.accel.cache import atomic_write_bytes, cache_dir, sha256_file
from coscale.errors import CoscaleError, InvalidInputError

log = logging.getLogger(__name__)

FAMILY_NAME = "digits-cnn"
PIXELS = 64
SIDE = 8
CLASSES = 10
MAX_PIXEL = 16.0

#: Seed of the fixed train / calibration / test split (independent of the training seed).
SPLIT_SEED = 0
TEST_SIZE = 360
CALIBRATION_SIZE = 180

CHANNELS: tuple[int, int, int] = (32, 64, 128)
EPOCHS = 15
LEARNING_RATE = 3e-3
BATCH_SIZE = 64

#: Structured pruning: fraction of each conv's output channels kept, fine-tune schedule.
PRUNE_KEEP = 0.5
FINE_TUNE_EPOCHS = 8
FINE_TUNE_LEARNING_RATE = 2e-3
#: Offset added to the family seed for the fine-tune (so it is seeded, but not the same
#: random stream as the original training).
FINE_TUNE_SEED_OFFSET = 1000
#: Unstructured pruning: fraction of conv/linear weights zeroed (global magnitude).
UNSTRUCTURED_AMOUNT = 0.5
#: Static int8 calibration: feeds of this many calibration images.
CALIBRATION_FEED = 32

#: Bump when the training code changes in a way that changes the weights.
TRAINING_FORMAT = 1
#: Bump when the way artifacts are built from the weights changes (in their file names).
ARTIFACT_FORMAT = 2
DIGEST_CHARS = 16
INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"

#: Variants this family can build, in canonical order (bf16 only where native).
ALL_VARIANTS: tuple[str, ...] = (
    BASELINE_VARIANT,
    "int8-dynamic",
    "onnx-fp32",
    "onnx-int8-dynamic",
    "onnx-int8-static",
    "pruned-structured",
    "pruned-structured-int8",
    "pruned-unstructured",
    "bf16-eager",
)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DigitsSplits:
    """The fixed split; arrays are read-only, pixels float32 in [0, 16], labels int64."""

    train_x: np.ndarray
    train_y: np.ndarray
    calib_x: np.ndarray
    calib_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


_SPLIT_FIELDS = ("train_x", "train_y", "calib_x", "calib_y", "test_x", "test_y")


@lru_cache(maxsize=1)
def digits_splits() -> DigitsSplits:
    """The split (module docstring, "Data"), from the cache file when it is valid, else
    computed with scikit-learn and cached.

    The cache (``cache_dir("data", "digits-cnn")/splits-…npz`` plus a ``.sha256`` side
    file; the name holds :data:`SPLIT_SEED`, the split sizes and scikit-learn's version)
    spares a worker the import of scikit-learn (~1 s of CPU) at every start: the split
    is the worker's warm-up input. A missing, corrupt or unreadable cache is rebuilt.
    """
    path = _splits_cache_path()
    side = path.with_name(path.name + ".sha256")
    with contextlib.suppress(OSError, ValueError, KeyError):
        if path.exists() and side.exists() and side.read_text().strip() == sha256_file(path):
            with np.load(path, allow_pickle=False) as data:
                arrays = [np.ascontiguousarray(data[name]) for name in _SPLIT_FIELDS]
            for array in arrays:
                array.setflags(write=False)
            return DigitsSplits(*arrays)
    splits = _compute_splits()
    with contextlib.suppress(OSError):
        buffer = io.BytesIO()
        np.savez(buffer, **{name: getattr(splits, name) for name in _SPLIT_FIELDS})
        atomic_write_bytes(path, buffer.getvalue())
        atomic_write_bytes(side, sha256_file(path).encode())
    return splits


def _splits_cache_path() -> Path:
    from importlib.metadata import PackageNotFoundError, version

    try:
        sklearn = version("scikit-learn")
    except PackageNotFoundError:
        sklearn = "none"
    name = f"splits-seed{SPLIT_SEED}-test{TEST_SIZE}-calib{CALIBRATION_SIZE}-sk{sklearn}.npz"
    return cache_dir("data", FAMILY_NAME) / name


def _compute_splits() -> DigitsSplits:
    """Load scikit-learn's digits and split them (stratified, :data:`SPLIT_SEED`)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = np.asarray(data.data, dtype=np.float32)
    y = np.asarray(data.target, dtype=np.int64)
    rest_x, test_x, rest_y, test_y = train_test_split(
        x, y, test_size=TEST_SIZE, stratify=y, random_state=SPLIT_SEED
    )
    train_x, calib_x, train_y, calib_y = train_test_split(
        rest_x, rest_y, test_size=CALIBRATION_SIZE, stratify=rest_y, random_state=SPLIT_SEED
    )
    arrays = [np.ascontiguousarray(a) for a in (train_x, train_y, calib_x, calib_y, test_x, test_y)]
    for array in arrays:
        array.setflags(write=False)
    return DigitsSplits(*arrays)


# -------------------------------------------------------------------------- model


class DigitsCNN(nn.Module):
    """The digits CNN (see the module docstring); ``forward`` returns probabilities."""

    def __init__(self, channels: Sequence[int] = CHANNELS) -> None:
        super().__init__()
        c1, c2, c3 = (int(c) for c in channels)
        self.channels = (c1, c2, c3)
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c2)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.fc = nn.Linear(c3, CLASSES)

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.reshape(-1, 1, SIDE, SIDE) / MAX_PIXEL
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.max_pool2d(x, 2)
        x = F.relu(self.conv3(x))
        return self.fc(x.mean(dim=(2, 3)))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(pixels), dim=-1)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained weights (hashed into the cache check)."""

    seed: int = 0
    epochs: int = EPOCHS
    learning_rate: float = LEARNING_RATE
    batch_size: int = BATCH_SIZE
    channels: tuple[int, int, int] = CHANNELS
    split_seed: int = SPLIT_SEED
    test_size: int = TEST_SIZE
    calibration_size: int = CALIBRATION_SIZE
    format: int = TRAINING_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))


@contextlib.contextmanager
def _deterministic_torch(seed: int) -> Iterator[None]:
    """Seeded, deterministic, single-threaded torch; previous settings restored after."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def _fit(
    model: DigitsCNN,
    *,
    seed: int,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    after_epoch: Callable[[DigitsCNN], None] | None = None,
) -> DigitsCNN:
    """Adam + one-cycle schedule on the train split; ``after_epoch`` sees the eval model."""
    splits = digits_splits()
    x = torch.from_numpy(splits.train_x.copy())
    y = torch.from_numpy(splits.train_y.copy())
    steps_per_epoch = -(-len(x) // batch_size)
    with _deterministic_torch(seed):
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=learning_rate, total_steps=max(1, epochs * steps_per_epoch)
        )
        for _ in range(epochs):
            model.train()
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), batch_size):
                idx = order[start : start + batch_size]
                loss = F.cross_entropy(model.logits(x[idx]), y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
            model.eval()
            if after_epoch is not None:
                after_epoch(model)
    return model.eval()


def train_digits_cnn(
    seed: int = 0,
    *,
    epochs: int = EPOCHS,
    learning_rate: float = LEARNING_RATE,
    batch_size: int = BATCH_SIZE,
    channels: Sequence[int] = CHANNELS,
) -> DigitsCNN:
    """Train a :class:`DigitsCNN` from scratch, deterministically (see module docstring)."""
    with _deterministic_torch(seed):
        model = DigitsCNN(channels)
    return _fit(model, seed=seed, epochs=epochs, learning_rate=learning_rate, batch_size=batch_size)


def weights_digest(module: nn.Module) -> str:
    """SHA-256 over the state dict: each tensor's name, dtype, shape and bytes, in order."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        array = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{array.dtype}|{tuple(array.shape)}|".encode())
        digest.update(array.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose argmax equals the label."""
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))


def _torch_predict(module: nn.Module, pixels: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return module(torch.from_numpy(np.array(pixels, dtype=np.float32))).float().numpy()


# ------------------------------------------------------------------------ pruning


def _top_filters(conv: nn.Conv2d, keep: int) -> torch.Tensor:
    """Indices (ascending) of the ``keep`` output filters with the largest L1 norm."""
    norms = conv.weight.detach().abs().sum(dim=(1, 2, 3))
    return torch.sort(torch.topk(norms, keep).indices).values


def prune_structured(model: DigitsCNN, keep: float = PRUNE_KEEP) -> DigitsCNN:
    """L1 filter pruning (Li et al., 2017) into a *smaller* :class:`DigitsCNN`.

    For each conv layer, keep ``max(1, round(keep × channels))`` output filters with the
    largest L1 weight norm; copy their weights, biases and BN statistics, and slice the
    next layer's input channels to match (the linear layer's input columns after
    conv3). The result has fewer channels and parameters; it needs a fine-tune
    (:meth:`DigitsFamily.pruned_structured_model`). ``model`` is not modified.
    """
    if not 0.0 < keep <= 1.0:
        raise CoscaleError(
            f"structured pruning keep fraction {keep} is not in (0, 1].",
            fix="Pass a fraction such as 0.5 (keep half of each layer's channels).",
        )
    kept = [max(1, round(keep * c)) for c in model.channels]
    i1 = _top_filters(model.conv1, kept[0])
    i2 = _top_filters(model.conv2, kept[1])
    i3 = _top_filters(model.conv3, kept[2])
    small = DigitsCNN(kept)
    with torch.no_grad():
        small.conv1.weight.copy_(model.conv1.weight[i1])
        small.conv1.bias.copy_(model.conv1.bias[i1])
        small.conv2.weight.copy_(model.conv2.weight[i2][:, i1])
        small.conv2.bias.copy_(model.conv2.bias[i2])
        small.conv3.weight.copy_(model.conv3.weight[i3][:, i2])
        small.conv3.bias.copy_(model.conv3.bias[i3])
        small.fc.weight.copy_(model.fc.weight[:, i3])
        small.fc.bias.copy_(model.fc.bias)
        for dst, src, idx in ((small.bn1, model.bn1, i1), (small.bn2, model.bn2, i2)):
            for attr in ("weight", "bias", "running_mean", "running_var"):
                getattr(dst, attr).copy_(getattr(src, attr)[idx])
    return small.eval()


def prune_unstructured(model: DigitsCNN, amount: float = UNSTRUCTURED_AMOUNT) -> DigitsCNN:
    """A copy of ``model`` with the ``amount`` smallest-magnitude conv/linear weights zeroed.

    Global magnitude pruning (``torch.nn.utils.prune.global_unstructured`` with
    ``L1Unstructured``) over the weights of conv1–3 and fc (biases and BN untouched),
    made permanent; the tensors stay dense, so inference costs the same.
    """
    from torch.nn.utils import prune

    pruned = copy.deepcopy(model).eval()
    targets = [(pruned.conv1, "weight"), (pruned.conv2, "weight"), (pruned.conv3, "weight")]
    targets.append((pruned.fc, "weight"))
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in targets:
        prune.remove(module, name)
    return pruned


# ----------------------------------------------------------------------- variants


def _as_pixels(batch: Any) -> np.ndarray:
    """A contiguous float32 ``(n, 64)`` view of ``batch`` ((n, 64) or (n, 8, 8))."""
    array = np.ascontiguousarray(batch, dtype=np.float32)
    if array.ndim == 3 and array.shape[1:] == (SIDE, SIDE):
        array = array.reshape(len(array), PIXELS)
    if array.ndim != 2 or array.shape[1] != PIXELS:
        raise InvalidInputError(
            f"digits-cnn expects a batch of shape (n, 64) or (n, 8, 8), got {array.shape}.",
            fix="Pass one row of 64 pixel values (0–16) per image.",
        )
    return array


def _serialized_size(module: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes


class Bf16DigitsCNN(nn.Module):
    """A bfloat16 copy of a :class:`DigitsCNN`: float32 pixels in, cast to bf16 (exact for
    integers 0–16), logits in bf16, softmax in float32 so probabilities sum to 1."""

    def __init__(self, model: DigitsCNN) -> None:
        super().__init__()
        self.inner = copy.deepcopy(model).to(torch.bfloat16).eval()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = self.inner.logits(pixels.to(torch.bfloat16))
        return torch.softmax(logits.float(), dim=-1)


class TorchVariant(Variant):
    """A variant served by PyTorch eager: float32 pixels in, float32 probabilities out."""

    runtime = "torch"

    def __init__(self, name: str, module: nn.Module, *, threads: int) -> None:
        self.name = name
        self.module = module.eval()
        self.threads = max(1, threads)
        self._size: int | None = None
        torch.set_num_threads(self.threads)

    def predict(self, batch: Any) -> np.ndarray:
        array = _as_pixels(batch)
        pixels = torch.from_numpy(array if array.flags.writeable else array.copy())
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            return self.module(pixels).float().numpy()

    def size_bytes(self) -> int:
        if self._size is None:
            self._size = _serialized_size(self.module)
        return self._size


class OnnxVariant(Variant):
    """A variant served by an ONNX Runtime session on ``path``."""

    runtime = "onnxruntime"

    def __init__(self, name: str, path: Path, *, threads: int) -> None:
        self.name = name
        self.path = path
        self.threads = max(1, threads)
        self.session = onnxrt.make_session(path, threads=self.threads)

    def predict(self, batch: Any) -> np.ndarray:
        return np.asarray(self.session.run(None, {INPUT_NAME: _as_pixels(batch)})[0], np.float32)

    def size_bytes(self) -> int:
        return self.path.stat().st_size


def native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 / AMX-BF16 / ARM BF16)
    and PyTorch's oneDNN reports bf16 support."""
    from coscale.accel.hardware import BF16_FLAGS, hardware_info

    if not BF16_FLAGS & set(hardware_info()["flags"]):
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else True
    except RuntimeError:  # pragma: no cover - op missing from this torch build
        return True


def torch_dynamic_int8_available() -> bool:
    """True when ``torch.ao.quantization.quantize_dynamic`` and an x86/ARM engine exist."""
    try:
        from torch.ao.quantization import quantize_dynamic  # noqa: F401
    except ImportError:  # pragma: no cover - removed in a future torch
        return False
    engines = set(torch.backends.quantized.supported_engines)
    return bool(engines & {"x86", "fbgemm", "qnnpack"})


def quantize_torch_dynamic(model: nn.Module) -> nn.Module:
    """Dynamic int8 (``torch.ao.quantization.quantize_dynamic``) of the Linear layers."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
        return quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


# ------------------------------------------------------------------------- family


class DigitsFamily(ModelFamily):
    """``digits-cnn``: image classification of 8×8 digits (see the module docstring).

    The model is trained (or loaded from the cache) on first use, not at construction,
    so listing families is cheap. ``cache_root`` defaults to
    ``cache_dir("models", "digits-cnn")`` (under ``$COSCALE_HOME``), read at first use.
    ``config`` (default ``TrainConfig(seed=seed)``) fixes the training; the weights file
    is named after its seed and a hash of it, so two configs never overwrite each other.
    """

    name = FAMILY_NAME
    task = "image-classification"

    def __init__(
        self, seed: int = 0, *, cache_root: Path | None = None, config: TrainConfig | None = None
    ) -> None:
        self.config = config if config is not None else TrainConfig(seed=seed)
        self.seed = self.config.seed
        self._cache_root = cache_root
        self._model: DigitsCNN | None = None
        self._digest: str | None = None
        self._test_accuracy: float | None = None
        self._pruned: DigitsCNN | None = None
        self._weights_status = ""

    # -- weights ------------------------------------------------------------

    @property
    def cache_root(self) -> Path:
        return self._cache_root or cache_dir("models", FAMILY_NAME)

    def _weights_paths(self) -> tuple[Path, Path]:
        stem = f"weights-seed{self.seed}-{_sha256_text(self.config.to_json())[:12]}"
        return self.cache_root / f"{stem}.pt", self.cache_root / f"{stem}.json"

    @property
    def model(self) -> DigitsCNN:
        """The trained fp32 model (loaded from the cache when valid, else trained)."""
        if self._model is None:
            self._model, self._weights_status = self._load_or_train()
            self._digest = weights_digest(self._model)
        return self._model

    @property
    def weights_status(self) -> str:
        """How the model was obtained: ``"loaded"`` (valid cache), ``"trained"`` (no cache)
        or ``"retrained: <why the cache was rejected>"``; loads or trains on first use."""
        _ = self.model
        return self._weights_status

    @property
    def digest(self) -> str:
        """:func:`weights_digest` of the trained model."""
        _ = self.model
        assert self._digest is not None
        return self._digest

    def _load_or_train(self) -> tuple[DigitsCNN, str]:
        weights, meta = self._weights_paths()
        if not weights.exists() and not meta.exists():
            return self._train_and_store(), "trained"
        model, problem = self._try_load(weights, meta)
        if model is not None:
            return model, "loaded"
        log.warning("digits-cnn weights cache %s: %s; retraining.", weights, problem)
        return self._train_and_store(), f"retrained: {problem}"

    def _try_load(self, weights: Path, meta_path: Path) -> tuple[DigitsCNN | None, str]:
        """The cached model, or None and why it cannot be used."""
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            return None, f"checksum file unreadable ({exc.__class__.__name__})"
        if not isinstance(meta, dict) or meta.get("config") != self.config.to_json():
            return None, "trained with another config"
        if not weights.exists():
            return None, "weights file missing"
        if sha256_file(weights) != meta.get("file_sha256"):
            return None, "weights file corrupt (SHA-256 mismatch)"
        model = DigitsCNN(self.config.channels)
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:  # a corrupt zip, wrong keys or shapes
            return None, f"weights file unloadable ({exc.__class__.__name__})"
        if weights_digest(model) != meta.get("weights_sha256"):
            return None, "weights digest mismatch"
        return model.eval(), ""

    def _train_and_store(self) -> DigitsCNN:
        cfg = self.config
        model = train_digits_cnn(
            cfg.seed,
            epochs=cfg.epochs,
            learning_rate=cfg.learning_rate,
            batch_size=cfg.batch_size,
            channels=cfg.channels,
        )
        weights, meta = self._weights_paths()
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        atomic_write_bytes(weights, buffer.getvalue())
        record = {
            "config": cfg.to_json(),
            "config_sha256": _sha256_text(cfg.to_json()),
            "file_sha256": sha256_file(weights),
            "weights_sha256": weights_digest(model),
        }
        atomic_write_bytes(meta, json.dumps(record, indent=2).encode())
        return model

    @property
    def test_accuracy(self) -> float:
        """Accuracy of the fp32 model on the test split."""
        if self._test_accuracy is None:
            splits = digits_splits()
            self._test_accuracy = accuracy(_torch_predict(self.model, splits.test_x), splits.test_y)
        return self._test_accuracy

    # -- artifacts ----------------------------------------------------------

    def artifact_path(self, variant: str, root: Path | None = None) -> Path:
        """``{root}/{digest[:16]}-{variant}{tag}.v{ARTIFACT_FORMAT}.onnx``: tied to the
        weights; ``tag`` = :func:`onnxrt.int8_weights_tag` (7-bit int8 weights or not)."""
        tag = onnxrt.int8_weights_tag(variant)
        name = f"{self.digest[:DIGEST_CHARS]}-{variant}{tag}.v{ARTIFACT_FORMAT}.onnx"
        return (root or self.cache_root) / name

    def _artifact(self, variant: str, root: Path | None, make: Callable[[Path], None]) -> Path:
        """The verified cached artifact, or a fresh one built by ``make(path)``."""
        path = self.artifact_path(variant, root)
        side = path.with_name(path.name + ".sha256")
        if path.exists() and side.exists() and side.read_text().strip() == sha256_file(path):
            return path
        if path.exists():
            log.warning("digits-cnn artifact %s unverified or corrupt; rebuilding.", path)
        make(path)
        atomic_write_bytes(side, sha256_file(path).encode())
        return path

    def _export(self, module: nn.Module, path: Path) -> None:
        example = (torch.from_numpy(digits_splits().test_x[:2].copy()),)
        axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
        onnxrt.export_onnx(
            module,
            example,
            path,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
        )

    def _calibration_feeds(self) -> list[dict[str, np.ndarray]]:
        x = digits_splits().calib_x
        return [
            {INPUT_NAME: np.array(x[i : i + CALIBRATION_FEED])}
            for i in range(0, len(x), CALIBRATION_FEED)
        ]

    def _static_int8(self, fp32: Path, dst: Path) -> None:
        """QDQ int8, per-channel, calibrated on the calibration split; Softmax kept fp32;
        7-bit weights where this CPU's int8 kernels saturate (:func:`onnxrt.saturating_int8`)."""
        import onnx

        softmax = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Softmax"]
        with _quiet_quantizer():
            onnxrt.quantize_static_file(
                fp32,
                dst,
                self._calibration_feeds(),
                per_channel=True,
                nodes_to_exclude=softmax,
            )

    def _dynamic_int8(self, fp32: Path, dst: Path) -> None:
        with _quiet_quantizer():
            onnxrt.quantize_dynamic_file(fp32, dst, per_channel=True)

    def pruned_structured_model(self) -> DigitsCNN:
        """:func:`prune_structured` of the model, fine-tuned on the train split.

        Fine-tune: :data:`FINE_TUNE_EPOCHS` epochs, Adam one-cycle (peak
        :data:`FINE_TUNE_LEARNING_RATE`), seed ``seed + FINE_TUNE_SEED_OFFSET``; the
        epoch with the best calibration-split accuracy is kept (ties → the later one).
        """
        if self._pruned is not None:
            return self._pruned
        splits = digits_splits()
        best: dict[str, Any] = {"accuracy": -1.0, "state": None}

        def keep_best(candidate: DigitsCNN) -> None:
            acc = accuracy(_torch_predict(candidate, splits.calib_x), splits.calib_y)
            if acc >= best["accuracy"]:
                best.update(accuracy=acc, state=copy.deepcopy(candidate.state_dict()))

        small = prune_structured(self.model, PRUNE_KEEP)
        _fit(
            small,
            seed=self.seed + FINE_TUNE_SEED_OFFSET,
            epochs=FINE_TUNE_EPOCHS,
            learning_rate=FINE_TUNE_LEARNING_RATE,
            batch_size=BATCH_SIZE,
            after_epoch=keep_best,
        )
        small.load_state_dict(best["state"])
        self._pruned = small.eval()
        return self._pruned

    # -- ModelFamily --------------------------------------------------------

    def variant_names(self) -> list[str]:
        names = list(ALL_VARIANTS)
        if not torch_dynamic_int8_available():
            names.remove("int8-dynamic")
        if not native_bf16():
            names.remove("bf16-eager")
        return names

    def build(self, variant: str, *, threads: int = 1, cache_dir: Path | None = None) -> Variant:
        """Build ``variant`` (artifacts under ``cache_dir`` or the family's cache root)."""
        if variant not in self.variant_names():
            raise CoscaleError(
                f"digits-cnn has no variant {variant!r} on this machine.",
                fix=f"Choose one of: {', '.join(self.variant_names())}.",
                code="unknown_variant",
            )
        if variant in (BASELINE_VARIANT, "int8-dynamic", "pruned-unstructured", "bf16-eager"):
            return self._build_torch(variant, threads)
        return OnnxVariant(variant, self._build_onnx(variant, cache_dir), threads=threads)

    def _build_torch(self, variant: str, threads: int) -> Variant:
        if variant == "int8-dynamic":
            return TorchVariant(variant, quantize_torch_dynamic(self.model), threads=threads)
        if variant == "pruned-unstructured":
            return TorchVariant(variant, prune_unstructured(self.model), threads=threads)
        if variant == "bf16-eager":
            return TorchVariant(variant, Bf16DigitsCNN(self.model), threads=threads)
        return TorchVariant(variant, copy.deepcopy(self.model), threads=threads)

    def _build_onnx(self, variant: str, root: Path | None) -> Path:
        def fp32(dst: Path) -> None:
            self._export(self.model, dst)

        def pruned(dst: Path) -> None:
            self._export(self.pruned_structured_model(), dst)

        if variant == "onnx-fp32":
            return self._artifact(variant, root, fp32)
        if variant == "pruned-structured":
            return self._artifact(variant, root, pruned)
        if variant == "onnx-int8-dynamic":
            src = self._artifact("onnx-fp32", root, fp32)
            return self._artifact(variant, root, lambda dst: self._dynamic_int8(src, dst))
        base = "onnx-fp32" if variant == "onnx-int8-static" else "pruned-structured"
        src = self._artifact(base, root, fp32 if base == "onnx-fp32" else pruned)
        return self._artifact(variant, root, lambda dst: self._static_int8(src, dst))

    def profiling_batch(self, batch_size: int, seq_len: int | None, seed: int) -> np.ndarray:
        """``batch_size`` real test-split images: a seeded permutation, cycled."""
        if batch_size < 1:
            raise CoscaleError(
                f"profiling batch size {batch_size} is below 1.", fix="Use a batch size ≥ 1."
            )
        test_x = digits_splits().test_x
        order = np.random.default_rng(seed).permutation(len(test_x))
        return np.ascontiguousarray(test_x[np.resize(order, batch_size)], dtype=np.float32)

    def fidelity(self, variant: Variant, baseline: Variant) -> Fidelity:
        """Test-split accuracy of ``variant`` (``baseline`` is not needed: labels exist)."""
        splits = digits_splits()
        value = accuracy(variant.predict(splits.test_x), splits.test_y)
        return Fidelity(value=value, metric="accuracy", minimum=value)

    def parse_items(self, items: Sequence[Any]) -> np.ndarray:
        """Each item: 64 numbers or 8×8 nested lists, values in [0, 16] → ``(n, 64)`` float32."""
        if isinstance(items, str | bytes) or not isinstance(items, Sequence | np.ndarray):
            raise InvalidInputError(
                f"digits-cnn expects a list of items, got {type(items).__name__}.",
                fix="Send items as a JSON list of images, each 64 numbers in [0, 16].",
            )
        if len(items) == 0:
            raise InvalidInputError(
                "digits-cnn got no items.", fix="Send at least one image of 64 numbers in [0, 16]."
            )
        uniform = _as_uniform_array(items)
        if uniform is not None:  # one vectorized check instead of one per item
            return self.parse_array(uniform)
        return np.stack([_parse_item(i, item) for i, item in enumerate(items)])

    def parse_array(self, array: np.ndarray) -> np.ndarray:
        """``(n, 64)`` or ``(n, 8, 8)`` numbers in [0, 16] → ``(n, 64)`` float32, checked at
        once (``O(n)`` in NumPy); the first bad pixel's item and position are named."""
        shape = tuple(array.shape)
        if array.dtype.kind not in "iuf" or len(shape) < 2 or shape[1:] not in _ITEM_SHAPES:
            raise InvalidInputError(
                f"digits-cnn expects an array of shape (items, 64) or (items, 8, 8) with pixel "
                f"values in [0, 16], got shape {shape} of {array.dtype.name}.",
                fix=_ITEM_FIX,
            )
        if shape[0] == 0:
            raise InvalidInputError(
                "digits-cnn got no items.", fix="Send at least one image of 64 numbers in [0, 16]."
            )
        pixels = np.ascontiguousarray(array.reshape(shape[0], PIXELS), dtype=np.float32)
        bad = ~np.isfinite(pixels) | (pixels < 0) | (pixels > MAX_PIXEL)
        if bad.any():
            item, where = divmod(int(np.argmax(bad)), PIXELS)
            value = array.reshape(shape[0], PIXELS)[item, where].item()
            raise InvalidInputError(
                f"item {item}: pixel {where} is {value!r}, outside [0, 16].",
                fix=_ITEM_FIX,
            )
        return pixels

    def render_outputs(self, outputs: np.ndarray) -> list[dict[str, Any]]:
        """``[{"label": argmax, "probabilities": [10 floats]}, …]``."""
        return [
            {"label": int(np.argmax(row)), "probabilities": [float(p) for p in row]}
            for row in np.asarray(outputs, dtype=np.float32)
        ]


_ITEM_FIX = "Send each image as 64 numbers (or 8 lists of 8 numbers) between 0 and 16."
_ITEM_SHAPES = ((PIXELS,), (SIDE, SIDE))


def _as_uniform_array(items: Sequence[Any]) -> np.ndarray | None:
    """``items`` as one numeric array when they are all well-formed numbers of one shape,
    else None (the caller then checks item by item, to name the bad one)."""
    if isinstance(items, np.ndarray):
        return items
    if any(isinstance(item, str | bytes | dict) or item is None for item in items):
        return None
    try:
        array = np.asarray(items)
    except (ValueError, TypeError):
        return None
    if array.dtype.kind not in "iuf" or tuple(array.shape[1:]) not in _ITEM_SHAPES:
        return None
    rows = items if array.ndim == 2 else itertools.chain.from_iterable(items)
    if bool in {type(v) for v in itertools.chain.from_iterable(rows)}:
        return None  # NumPy turns True into 1 beside numbers; an item of booleans is refused
    return array


def _parse_item(index: int, item: Any) -> np.ndarray:
    """One HTTP item → float32 ``(64,)``; anything else → InvalidInputError naming ``index``."""
    expected = "64 numbers or 8×8 nested lists with pixel values in [0, 16]"
    if isinstance(item, str | bytes | dict) or item is None:
        raise InvalidInputError(
            f"item {index}: expected {expected}, got {type(item).__name__}.", fix=_ITEM_FIX
        )
    try:
        array = np.asarray(item)
    except (ValueError, TypeError):
        array = None
    if array is None or array.dtype == object:
        raise InvalidInputError(
            f"item {index}: expected {expected}, got a ragged or mixed list.", fix=_ITEM_FIX
        )
    if array.dtype.kind not in "iuf":
        raise InvalidInputError(
            f"item {index}: expected {expected}, got values of type {array.dtype.name}.",
            fix=_ITEM_FIX,
        )
    if array.shape not in ((PIXELS,), (SIDE, SIDE)):
        raise InvalidInputError(
            f"item {index}: expected {expected}, got shape {array.shape}.", fix=_ITEM_FIX
        )
    pixels = array.astype(np.float32).reshape(PIXELS)
    bad = ~np.isfinite(pixels) | (pixels < 0) | (pixels > MAX_PIXEL)
    if bad.any():
        where = int(np.argmax(bad))
        raise InvalidInputError(
            f"item {index}: pixel {where} is {array.reshape(PIXELS)[where].item()!r}, "
            "outside [0, 16].",
            fix=_ITEM_FIX,
        )
    return pixels


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Silence ONNX Runtime's quantizer advice, which it logs on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
