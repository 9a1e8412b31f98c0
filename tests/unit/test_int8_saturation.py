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
