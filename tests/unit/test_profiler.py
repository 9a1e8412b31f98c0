"""The profiler on a small real model family: a 64-32-10 MLP trained here on sklearn digits.

The family has two real variants: fp32 PyTorch eager and ONNX Runtime fp32 (exported with
coscale.accel.onnxrt). Each test profiles in quick mode, so every variant runs in its own
spawned measuring process, as in production.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from coscale.accel.base import Fidelity, ModelFamily, Variant
from coscale.accel.onnxrt import export_onnx, make_session
from coscale.accel.profiler import (
    FULL,
    QUICK,
    Cell,
    RepPolicy,
    best_throughput,
    enough_reps,
    peak_rss_bytes,
    plan_cells,
    profile_family,
    select_variants,
    summarize,
    time_cell,
)
from coscale.catalog.profiles import LatencyPoint, ProfileFile, latency_table
from coscale.errors import CoscaleError, ProfileError

HIDDEN = 32


def _mlp() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(64, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 10)
    )


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


class _TorchVariant(Variant):
    def __init__(self, module: torch.nn.Module, weights: Path) -> None:
        self.name, self.runtime = "fp32-eager", "torch"
        self._module, self._weights = module.eval(), weights

    def predict(self, batch: Any) -> np.ndarray:
        with torch.inference_mode():
            return self._module(torch.from_numpy(batch)).numpy()

    def size_bytes(self) -> int:
        return self._weights.stat().st_size


class _OrtVariant(Variant):
    def __init__(self, path: Path, threads: int) -> None:
        self.name, self.runtime = "onnx-fp32", "onnxruntime"
        self._path, self._session = path, make_session(path, threads=threads)

    def predict(self, batch: Any) -> np.ndarray:
        return self._session.run(None, {"x": batch})[0]

    def size_bytes(self) -> int:
        return self._path.stat().st_size


class TinyDigitsFamily(ModelFamily):
    """A real (tiny) classifier: weights trained in :func:`train`, stored under ``workdir``.

    ``fixed_batch`` exports the ONNX variant without a dynamic batch axis, as some users'
    files are: it runs batches of one item only. Fidelity runs item by item.
    """

    task = "image-classification"

    def __init__(self, workdir: Path, *, fixed_batch: bool = False) -> None:
        self.name = "tiny-digits-fixed" if fixed_batch else "tiny-digits"
        self.workdir, self.fixed_batch = workdir, fixed_batch

    def train(self) -> None:
        x, y = _digits()
        torch.manual_seed(0)
        model = _mlp()
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        xt, yt = torch.from_numpy(x[:1400]), torch.from_numpy(y[:1400])
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # robust to a busy machine; restored below
        try:
            for _ in range(150):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(xt), yt).backward()
                opt.step()
        finally:
            torch.set_num_threads(threads)
        torch.save(model.state_dict(), self.workdir / "mlp.pt")

    def variant_names(self) -> list[str]:
        return ["fp32-eager", "onnx-fp32"]

    def build(self, variant: str, *, threads: int = 1, cache_dir: Path | None = None) -> Variant:
        weights = self.workdir / "mlp.pt"
        model = _mlp()
        model.load_state_dict(torch.load(weights))
        if variant == "fp32-eager":
            return _TorchVariant(model, weights)
        if variant == "onnx-fp32":
            path = self.workdir / ("fixed.onnx" if self.fixed_batch else "mlp.onnx")
            if not path.exists():
                axes = {} if self.fixed_batch else {"x": {0: "batch"}, "y": {0: "batch"}}
                export_onnx(
                    model.eval(),
                    (torch.zeros(1, 64),),
                    path,
                    input_names=["x"],
                    output_names=["y"],
                    dynamic_axes=axes,
                )
            return _OrtVariant(path, threads)
        raise ProfileError(f"unknown variant {variant!r}")

    def profiling_batch(self, batch_size: int, seq_len: int | None, seed: int) -> Any:
        x, _ = _digits()
        idx = np.random.default_rng(seed).integers(0, len(x), batch_size)
        return np.ascontiguousarray(x[idx])

    def fidelity(self, variant: Variant, baseline: Variant) -> Fidelity:
        x, y = _digits()
        preds = [int(variant.predict(x[i : i + 1]).argmax()) for i in range(1400, len(x))]
        acc = float(np.mean(np.asarray(preds) == y[1400:]))
        return Fidelity(acc, "accuracy", acc)

    def parse_items(self, items: Sequence[Any]) -> Any:
        return np.asarray(items, dtype=np.float32).reshape(len(items), 64)

    def render_outputs(self, outputs: np.ndarray) -> list[dict[str, Any]]:
        return [{"label": int(row.argmax())} for row in outputs]


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> TinyDigitsFamily:
    fam = TinyDigitsFamily(tmp_path_factory.mktemp("tiny"))
    fam.train()
    return fam


@pytest.fixture(scope="module")
def profile(family: TinyDigitsFamily) -> ProfileFile:
    seen = []
    result = profile_family(family, quick=True, threads=1, progress=seen.append)
    stages = [(p.variant, p.stage) for p in seen]
    # build and fidelity in order, then one "measure" per cell, for each variant
    assert stages[:2] == [("fp32-eager", "build"), ("fp32-eager", "fidelity")]
    assert sum(s == ("onnx-fp32", "measure") for s in stages) == 3
    assert seen[-1].completed == seen[-1].total == 2 * (2 + 3)
    return result


def test_every_variant_is_profiled_with_consistent_figures(profile: ProfileFile) -> None:
    assert [v.name for v in profile.variants] == ["fp32-eager", "onnx-fp32"]
    assert profile.baseline == "fp32-eager"
    assert profile.threads == 1
    for v in profile.variants:
        assert set(v.latency_ms) == {"1", "8", "64"}
        for point in v.latency_ms.values():
            assert 0 < point.p50 <= point.p99
        best = max(int(b) * 1000 / p.p50 for b, p in v.latency_ms.items())
        assert v.throughput == pytest.approx(best)
        assert v.throughput == pytest.approx(
            v.best_batch * 1000 / v.latency_ms[str(v.best_batch)].p50
        )
        assert v.latency_ms_by_seq_len is None
        assert v.fidelity_metric == "accuracy"
        # a trained classifier: far above chance (0.1) on held-out digits
        assert v.fidelity > 0.85
    base, onnx = profile.variants
    assert base.speedup == 1.0
    assert onnx.speedup == pytest.approx(onnx.throughput / base.throughput)
    # same weights, same predictions: ONNX Runtime fp32 keeps the accuracy
    assert onnx.fidelity == pytest.approx(base.fidelity, abs=0.005)
    assert base.runtime == "torch" and onnx.runtime == "onnxruntime"


def test_sizes_are_the_serialized_weights(profile: ProfileFile, family: TinyDigitsFamily) -> None:
    base, onnx = profile.variants
    assert base.size_bytes == (family.workdir / "mlp.pt").stat().st_size
    assert onnx.size_bytes == (family.workdir / "mlp.onnx").stat().st_size
    params = (64 * HIDDEN + HIDDEN + HIDDEN * 10 + 10) * 4
    assert params <= onnx.size_bytes < params + 20_000


def test_peak_memory_is_the_child_process_not_the_parent(family: TinyDigitsFamily) -> None:
    import psutil

    ballast = np.ones(700 * 2**20 // 8)  # 700 MiB resident in *this* process
    parent_rss = psutil.Process().memory_info().rss
    result = profile_family(family, variants=["fp32-eager"], quick=True, batch_sizes=(1,))
    del ballast
    peak = result.variants[0].peak_memory_bytes
    # the child imported torch (well over 50 MiB) but did not inherit the parent's ballast
    assert 50 * 2**20 < peak < parent_rss - 500 * 2**20


def test_hardware_block_is_this_machine(profile: ProfileFile) -> None:
    from coscale.accel.hardware import fingerprint, hardware_info

    info = hardware_info()
    assert profile.hardware.fingerprint == fingerprint(info)
    assert profile.hardware.logical_cpus == info["logical_cpus"]
    assert profile.model == "tiny-digits" and profile.task == "image-classification"


def test_latency_table_from_a_measured_profile(profile: ProfileFile) -> None:
    v = profile.variants[0]
    table = latency_table(v)
    assert table.batch_sizes == (1, 8, 64) and table.seq_lens == (0,)
    assert table.latency(8) == pytest.approx(v.latency_ms["8"].p50 / 1000)


def test_child_failure_names_the_variant(tmp_path: Path) -> None:
    fixed = TinyDigitsFamily(tmp_path, fixed_batch=True)
    fixed.train()
    with pytest.raises(ProfileError) as err:
        profile_family(fixed, quick=True, batch_sizes=(1, 8), threads=1)
    text = err.value.render()
    assert "'onnx-fp32'" in text and "tiny-digits-fixed" in text
    assert "measuring process" in text and "dimensions" in text.lower()


def test_unbuildable_or_unknown_variants_are_refused(family: TinyDigitsFamily) -> None:
    with pytest.raises(CoscaleError, match="'int8-dynamic' is not buildable here") as err:
        select_variants(family, ["int8-dynamic"])
    assert err.value.code == "unknown_variant" and "fp32-eager, onnx-fp32" in err.value.fix
    with pytest.raises(CoscaleError, match="'turbo' is not a variant"):
        select_variants(family, ["turbo"])
    # baseline always first, even when not asked for
    assert select_variants(family, ["onnx-fp32"]) == ["fp32-eager", "onnx-fp32"]
    assert select_variants(family, None) == ["fp32-eager", "onnx-fp32"]


def test_unpicklable_family_is_a_clear_error(family: TinyDigitsFamily) -> None:
    class Local(TinyDigitsFamily):  # local classes cannot be pickled
        pass

    with pytest.raises(ProfileError, match="cannot be sent to a profiling process"):
        profile_family(Local(family.workdir), quick=True)


# ------------------------------------------------------------------ pure helpers


def test_enough_reps_clauses() -> None:
    p = RepPolicy(min_reps=5, min_seconds=0.3, max_reps=100, cell_budget_s=2.0)
    assert not enough_reps(0, 10.0, p)  # never before one call
    assert not enough_reps(4, 1.0, p)  # too few calls
    assert not enough_reps(10, 0.1, p)  # too little time
    assert enough_reps(5, 0.3, p)  # both minimums
    assert enough_reps(100, 0.01, p)  # max reps
    assert enough_reps(1, 2.0, p)  # cell budget
    assert QUICK.cell_budget_s < FULL.cell_budget_s


def test_time_cell_cycles_batches_and_stops() -> None:
    calls: list[int] = []
    samples = time_cell(calls.append, [0, 1, 2], RepPolicy(4, 0.0, 7, 10.0))
    assert len(samples) == 4 and all(s >= 0 for s in samples)
    assert calls == [0, 0, 1, 2, 0]  # warm-up, then cycling


def test_summarize_percentiles() -> None:
    point = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert point.p50 == 3.0
    assert point.p99 == pytest.approx(96.16)
    assert summarize([0.5]).p50 == summarize([0.5]).p99 == 0.5
    with pytest.raises(ValueError):
        summarize([])


def test_best_throughput_prefers_smallest_batch_on_ties() -> None:
    lat = {
        "1": LatencyPoint(p50=1.0, p99=1.0),
        "2": LatencyPoint(p50=2.0, p99=2.0),
        "4": LatencyPoint(p50=8.0, p99=9.0),
    }
    assert best_throughput(lat) == (1000.0, 1)
    lat["4"] = LatencyPoint(p50=2.0, p99=3.0)
    assert best_throughput(lat) == (2000.0, 4)


def test_plan_cells() -> None:
    assert plan_cells([8, 1, 8], None, quick=False) == (Cell(1, None), Cell(8, None))
    cells = plan_cells([1, 8], [16, 32, 64, 128, 256], quick=True)
    assert [c.seq_len for c in cells] == [None, None, 16, 16, 64, 64, 256, 256]
    assert len(plan_cells([1], [16, 32, 64, 128, 256], quick=False)) == 6
    with pytest.raises(ProfileError):
        plan_cells([0, 1], None, quick=False)


def test_peak_rss_is_at_least_current_rss() -> None:
    import psutil

    assert peak_rss_bytes() >= psutil.Process(os.getpid()).memory_info().rss * 0.9
