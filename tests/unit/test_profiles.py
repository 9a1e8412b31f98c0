"""Profile files: schema, contract keys, round trip, hardware refusal, errors; the fingerprint."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from coscale.accel import hardware
from coscale.accel.hardware import fingerprint, hardware_info
from coscale.catalog.profiles import (
    default_profile_path,
    latency_table,
    load_profile,
    parse_profile,
    save_profile,
)
from coscale.errors import ProfileError

CONTRACT_TOP = {"model", "hardware", "baseline", "variants"}
CONTRACT_VARIANT = {
    "name",
    "fidelity",
    "fidelity_metric",
    "throughput",
    "latency_ms",
    "size_bytes",
    "peak_memory_bytes",
}


def _hardware(fp: str | None = None) -> dict[str, Any]:
    info = hardware_info()
    return {"fingerprint": fp or fingerprint(info), **info}


def _variant(name: str, p50s: dict[str, float], **extra: Any) -> dict[str, Any]:
    latency = {b: {"p50": p, "p99": p * 1.5} for b, p in p50s.items()}
    best = max(p50s, key=lambda b: int(b) / p50s[b])
    row = {
        "name": name,
        "runtime": "onnxruntime" if name.startswith("onnx") else "torch",
        "fidelity": 0.97,
        "fidelity_metric": "accuracy",
        "fidelity_min": 0.97,
        "throughput": int(best) * 1000 / p50s[best],
        "best_batch": int(best),
        "latency_ms": latency,
        "latency_ms_by_seq_len": None,
        "size_bytes": 90_000,
        "peak_memory_bytes": 300 * 2**20,
        "speedup": 1.0,
    }
    row.update(extra)
    return row


def _profile_dict(fp: str | None = None) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "model": "digits-cnn",
        "task": "image-classification",
        "hardware": _hardware(fp),
        "measured_at": "2025-01-31T12:00:00+00:00",
        "threads": 2,
        "baseline": "fp32-eager",
        "variants": [
            _variant("fp32-eager", {"1": 0.2, "8": 0.5, "64": 2.0}),
            _variant("onnx-int8-static", {"1": 0.05, "8": 0.1, "64": 0.64}, speedup=3.125),
        ],
    }


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_written_json_has_the_contract_keys(tmp_path: Path) -> None:
    path = save_profile(parse_profile(_profile_dict()), tmp_path / "p.json")
    data = json.loads(path.read_text())
    assert set(data) >= CONTRACT_TOP
    for v in data["variants"]:
        assert set(v) >= CONTRACT_VARIANT
        for point in v["latency_ms"].values():
            assert set(point) == {"p50", "p99"}
    # the full schema, so that a rename is noticed
    assert set(data) == CONTRACT_TOP | {
        "schema_version",
        "task",
        "measured_at",
        "threads",
    }
    assert set(data["variants"][0]) == CONTRACT_VARIANT | {
        "runtime",
        "fidelity_min",
        "best_batch",
        "latency_ms_by_seq_len",
        "speedup",
    }
    assert set(data["hardware"]) == {
        "fingerprint",
        "cpu",
        "logical_cpus",
        "flags",
        "memory_gib",
        "accelerators",
        "software",
    }


def test_round_trip(tmp_path: Path) -> None:
    original = parse_profile(_profile_dict())
    loaded = load_profile(save_profile(original, tmp_path / "sub" / "p.json"))
    assert loaded == original
    assert loaded.variant("onnx-int8-static").speedup == 3.125
    with pytest.raises(ProfileError, match="no variant 'bf16-eager'"):
        loaded.variant("bf16-eager")


def test_save_is_atomic_and_leaves_no_temp_file(tmp_path: Path) -> None:
    save_profile(parse_profile(_profile_dict()), tmp_path / "p.json")
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]


def test_foreign_hardware_is_refused_with_a_way_forward(tmp_path: Path) -> None:
    data = _profile_dict(fp="0123456789ab")
    data["hardware"]["cpu"] = "Intel(R) Xeon(R) Platinum 8488C"
    data["hardware"]["logical_cpus"] = 8
    path = _write(tmp_path / "foreign.json", data)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    text = err.value.render()
    assert "Intel(R) Xeon(R) Platinum 8488C, 8 logical CPUs" in text
    assert "0123456789ab" in text and fingerprint(hardware_info()) in text
    assert "coscale profile digits-cnn" in text and "--allow-foreign-profile" in text
    assert load_profile(path, allow_foreign=True).hardware.cpu.startswith("Intel")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["variants"][0].pop("throughput"), "variants.0.throughput"),
        (lambda d: d["variants"][1]["latency_ms"]["8"].update(p99=0.01), "variants.1.latency_ms.8"),
        (lambda d: d["variants"][0]["latency_ms"].update(x={"p50": 1, "p99": 1}), "latency_ms"),
        (lambda d: d["variants"][0].update(fidelity_metric="mse"), "variants.0.fidelity_metric"),
        (lambda d: d.update(baseline="bf16-eager"), "baseline 'bf16-eager' is not among"),
        (lambda d: d.update(schema_version=2), "schema_version"),
        (lambda d: d.update(colour="blue"), "colour"),
        (lambda d: d["hardware"].pop("fingerprint"), "hardware.fingerprint"),
        (lambda d: d["variants"][1].update(best_batch=2), "best_batch 2 is not a measured"),
        (lambda d: d["variants"].append(d["variants"][0]), "duplicate variant names"),
    ],
)
def test_bad_profiles_name_the_field(tmp_path: Path, mutate: Any, field: str) -> None:
    data = _profile_dict()
    mutate(data)
    path = _write(tmp_path / "bad.json", data)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert field in err.value.message
    assert str(path) in err.value.message and err.value.fix
    assert err.value.code == "bad_profile"


def test_not_json_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text('{"model": "digits-cnn",\n  oops}')
    with pytest.raises(ProfileError, match=r"not valid JSON \(line 2, column 3"):
        load_profile(path)
    with pytest.raises(ProfileError, match="cannot read profile"):
        load_profile(tmp_path / "absent.json")


def test_latency_table_fixed_size_inputs() -> None:
    v = parse_profile(_profile_dict()).variants[0]
    table = latency_table(v)
    assert table.batch_sizes == (1, 8, 64)
    assert table.seq_lens == (0,)
    assert table.latency_s == ((0.0002, 0.0005, 0.002),)
    assert table.latency(8) == pytest.approx(0.0005)


def _text_variant() -> dict[str, Any]:
    grid = {
        "128": {"1": {"p50": 8.0, "p99": 9.0}, "16": {"p50": 60.0, "p99": 70.0}},
        "16": {"1": {"p50": 2.0, "p99": 2.5}, "16": {"p50": 10.0, "p99": 12.0}},
    }
    return _variant("fp32-eager", {"1": 3.0, "16": 20.0}, latency_ms_by_seq_len=grid)


def test_latency_table_text_uses_the_seq_len_grid_sorted_numerically() -> None:
    data = _profile_dict()
    data["variants"] = [_text_variant()]
    table = latency_table(parse_profile(data).variants[0])
    assert table.seq_lens == (16, 128)
    assert table.batch_sizes == (1, 16)
    assert table.latency_s == ((0.002, 0.01), (0.008, 0.06))
    assert table.latency(16, 128) == pytest.approx(0.06)


def test_text_grid_must_be_rectangular_with_canonical_keys() -> None:
    data = _profile_dict()
    data["variants"] = [_text_variant()]
    del data["variants"][0]["latency_ms_by_seq_len"]["16"]["16"]
    with pytest.raises(ProfileError, match="same batch sizes"):
        parse_profile(data)
    data["variants"] = [_variant("fp32-eager", {"01": 1.0})]
    with pytest.raises(ProfileError, match="positive integers, got '01'"):
        parse_profile(data)


def test_default_profile_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSCALE_HOME", str(tmp_path))
    fp = fingerprint(hardware_info())
    assert default_profile_path("minilm") == tmp_path / "profiles" / f"minilm-{fp}.json"
    odd = default_profile_path("/home/me/My Model.onnx")
    assert odd.parent == tmp_path / "profiles" and odd.name == f"home_me_My_Model.onnx-{fp}.json"


# ------------------------------------------------------------------ hardware fingerprint


def test_fingerprint_is_stable_and_ignores_software() -> None:
    info = hardware_info()
    fp = fingerprint(info)
    assert fp == fingerprint(hardware_info()) and len(fp) == hardware.FINGERPRINT_CHARS
    upgraded = copy.deepcopy(info)
    upgraded["software"] = {"python": "3.99", "torch": "9.0", "numpy": "0.1"}
    assert fingerprint(upgraded) == fp
    for key, value in [
        ("cpu", "Another CPU"),
        ("logical_cpus", info["logical_cpus"] + 1),
        ("flags", [*info["flags"], "amx_tile"]),
        ("memory_gib", info["memory_gib"] + 1),
        ("accelerators", [{"name": "NVIDIA H100", "memory_gib": 80.0}]),
    ]:
        assert fingerprint({**info, key: value}) != fp, key


def test_fingerprint_of_a_stored_hardware_block_matches(tmp_path: Path) -> None:
    stored = load_profile(save_profile(parse_profile(_profile_dict()), tmp_path / "p.json"))
    block = stored.hardware.model_dump()
    assert fingerprint(block) == block["fingerprint"] == fingerprint(hardware_info())
    assert fingerprint({**block, "memory_gib": float(block["memory_gib"])}) == fingerprint(block)


def test_hardware_info_describes_this_process() -> None:
    import os

    import torch

    info = hardware_info()
    assert info["logical_cpus"] == len(os.sched_getaffinity(0))
    assert set(info["flags"]) <= hardware.RELEVANT_FLAGS
    assert info["memory_gib"] >= 1
    assert info["software"]["torch"] == torch.__version__
    assert hardware.has_cuda() == torch.cuda.is_available()
    if not hardware.has_cuda():
        assert hardware.supports_bf16() == bool(hardware.BF16_FLAGS & set(info["flags"]))
    info["cpu"] = "changed"  # a copy: the cached answer is not affected
    assert hardware_info()["cpu"] != "changed"


def test_cpuinfo_parsing_x86_and_arm() -> None:
    x86 = (
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)  Platinum 8488C\n"
        "flags\t\t: fpu sse avx2 avx512f avx512_vnni amx_bf16 amx_tile ht\n"
    )
    assert hardware._cpu_name(x86) == "Intel(R) Xeon(R) Platinum 8488C"
    assert hardware._cpu_flags(x86) == ["amx_bf16", "amx_tile", "avx2", "avx512_vnni", "avx512f"]
    arm = (
        "processor\t: 0\nBogoMIPS\t: 243.75\n"
        "Features\t: fp asimd evtstrm aes asimddp sve i8mm bf16\n"
        "CPU implementer\t: 0x41\nCPU part\t: 0xd40\n"
    )
    assert "implementer 0x41 part 0xd40" in hardware._cpu_name(arm)
    assert hardware._cpu_flags(arm) == ["asimd", "asimddp", "bf16", "i8mm", "sve"]
