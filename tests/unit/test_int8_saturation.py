"""7-bit weights where x86 int8 kernels saturate (coscale.accel.onnxrt.saturating_int8)."""

from __future__ import annotations

from typing import Any

import pytest

from coscale.accel import hardware, onnxrt


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["avx", "avx2", "fma"], True),  # AVX2 only: vpmaddubsw saturates
        (["avx2", "avx512f", "avx512_vnni"], False),
        (["avx2", "avx_vnni"], False),
        (["avx2", "amx_int8"], False),
        (["neon", "asimd"], False),  # ARM
        ([], False),
    ],
)
def test_saturating_int8_reads_the_cpu_flags(
    monkeypatch: pytest.MonkeyPatch, flags: list[str], expected: bool
) -> None:
    real = hardware.hardware_info()

    def with_flags() -> dict[str, Any]:
        return {**real, "flags": flags}

    monkeypatch.setattr(hardware, "hardware_info", with_flags)
    assert onnxrt.saturating_int8() is expected


@pytest.mark.parametrize("saturating", [True, False])
def test_cached_int8_graphs_are_named_by_their_weight_bits(
    monkeypatch: pytest.MonkeyPatch, saturating: bool
) -> None:
    """A graph quantized with 7-bit weights and one with 8-bit weights never share a
    cache file: an int8 variant's name carries the tag where the CPU saturates; fp32
    graphs (and the names on the other kind of CPU) do not."""
    from coscale.accel.zoo import get_family

    monkeypatch.setattr(onnxrt, "saturating_int8", lambda: saturating)
    expected = onnxrt.REDUCED_RANGE_TAG if saturating else ""
    assert onnxrt.int8_weights_tag("onnx-int8-dynamic") == expected
    assert onnxrt.int8_weights_tag("onnx-fp32") == ""
    family = get_family("digits-cnn")
    int8 = family.artifact_path("onnx-int8-static").name
    fp32 = family.artifact_path("onnx-fp32").name
    assert (onnxrt.REDUCED_RANGE_TAG in int8) is saturating
    assert onnxrt.REDUCED_RANGE_TAG not in fp32
    monkeypatch.setattr(onnxrt, "saturating_int8", lambda: not saturating)
    assert family.artifact_path("onnx-int8-static").name != int8
    assert family.artifact_path("onnx-fp32").name == fp32
