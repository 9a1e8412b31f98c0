"""`coscale load --binary`: .npy payloads, checked answers, end to end through the real app.

The end-to-end test drives the real HTTP app (in-process, httpx's ASGI transport) over a
real ServingSystem running digits-cnn on the InProcessBackend.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import numpy as np
import pytest

from coscale.errors import CoscaleError
from coscale.load import LoadConfig, build_payloads, check_outputs, run_load
from coscale.runtime.wire import NPY_MEDIA_TYPE, decode_npy, encode_npy


def test_binary_digits_bank_holds_the_same_images_as_the_json_one() -> None:
    as_json = build_payloads("digits-cnn", items=4, seed=3)
    binary = build_payloads("digits-cnn", items=4, seed=3, binary=True)
    assert binary.labels == as_json.labels and len(binary.bodies) == len(as_json.bodies)
    for raw, text in zip(binary.bodies, as_json.bodies, strict=True):
        array = decode_npy(raw)
        assert array.dtype == np.float32 and array.shape == (4, 64)
        np.testing.assert_array_equal(array, np.array(json.loads(text)["inputs"]))
    assert binary.headers == {"content-type": NPY_MEDIA_TYPE, "accept": NPY_MEDIA_TYPE}
    assert as_json.headers == {"content-type": "application/json"}


def test_binary_minilm_bank_is_an_array_of_strings() -> None:
    bank = build_payloads("minilm", items=2, seed=0, binary=True, bank=2)
    texts = decode_npy(bank.bodies[0])
    assert texts.dtype.kind == "U" and texts.shape == (2,) and all(texts)


def test_binary_refuses_multi_input_models() -> None:
    specs = [{"name": "a", "shape": [3], "dtype": "float32"}, {"name": "b", "shape": [2]}]
    with pytest.raises(CoscaleError, match="several inputs"):
        build_payloads("model.onnx", items=2, seed=0, input_specs=specs, binary=True)


def test_binary_answers_are_checked_row_by_row() -> None:
    rows = np.eye(3, 10, dtype=np.float32)  # labels 0, 1, 2
    assert check_outputs(encode_npy(rows), 3, [0, 1, 5], binary=True) == (True, 2)
    assert check_outputs(encode_npy(rows), 3, None, binary=True) == (True, -1)
    assert check_outputs(encode_npy(rows), 4, None, binary=True) == (False, -1)
    assert check_outputs(b'{"outputs": []}', 3, None, binary=True) == (False, -1)
    assert check_outputs(encode_npy(rows.astype(np.int32)), 3, None, binary=True)[0] is False


def test_binary_load_end_to_end_is_served_and_labelled_right() -> None:
    from coscale.accel.profiler import profile_family
    from coscale.accel.zoo import get_family
    from coscale.api import create_app
    from coscale.backends.inprocess import InProcessBackend
    from coscale.config import scenario_from_dict
    from coscale.runtime.system import ServingSystem

    scenario = scenario_from_dict(
        {
            "name": "binary-load",
            "models": [
                {"name": "digits", "source": "digits-cnn", "slo_ms": 2000.0, "accuracy_floor": 0.9}
            ],
            "cluster": {"nodes": [{"type": "local-2vcpu", "count": 1}]},
            "policies": {"preset": "baseline"},
            "workload": {"generator": {"kind": "poisson", "rate_rps": 10, "duration_s": 10}},
        }
    )
    profile = profile_family(
        get_family("digits-cnn"), variants=["fp32-eager"], batch_sizes=[1, 8], quick=True
    )

    async def go() -> Any:
        system = ServingSystem.from_scenario(
            scenario, backend=InProcessBackend(max_batch=64), profile=profile
        )
        await system.start()
        try:
            config = LoadConfig.build(
                url="http://127.0.0.1:9",
                model="digits",
                rate_rps=40,
                duration_s=1.0,
                items=8,
                binary=True,
            )
            app = create_app(system)
            return await run_load(config, transport=httpx.ASGITransport(app=app))
        finally:
            await system.shutdown(drain=True)

    result = asyncio.run(go())
    done = [r for r in result.records if r.status == 200]
    assert len(done) == len(result.records) > 10
    correct = sum(r.correct for r in done)
    assert correct >= 0.9 * 8 * len(done)
