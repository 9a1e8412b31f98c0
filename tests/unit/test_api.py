"""The HTTP API in-process (httpx's ASGI transport) over a real ServingSystem.

The system runs the real digits-cnn fp32 variant on the InProcessBackend (replicas on
threads of this process). Every endpoint and every error status is driven by a real
condition: a malformed body, a limit, a request whose deadline cannot be met (429 from
the deadline admission policy), one queued behind a large batch past its timeout (504),
a replica that hangs on every batch (502 after the retries), a system not started
(503). Only the 500 test wraps the system in a fake whose ``models()`` raises.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits

from coscale.api import (
    DEFAULT_TENANT,
    ApiLimits,
    check_limits,
    create_app,
    is_loopback,
    replica_pids,
    retry_after_seconds,
)
from coscale.backends.inprocess import InProcessBackend
from coscale.catalog.profiles import ProfileFile, default_profile_path, load_profile
from coscale.config import Scenario, scenario_from_dict
from coscale.errors import CoscaleError, ProfileError
from coscale.runtime.contract import PayloadTooLarge
from coscale.runtime.system import ServingSystem
from coscale.telemetry.prometheus import CONTENT_TYPE, parse_text

T = TypeVar("T")

ENDPOINTS = {
    "/v1/models/{model}/infer",
    "/v1/models",
    "/v1/stats",
    "/healthz",
    "/readyz",
    "/metrics",
}


class LoopThread:
    """An asyncio loop on a thread of its own: the system and the client live on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _scenario(name: str, *, slo_ms: float = 1000.0, admission: str | None = None) -> Scenario:
    policies: dict[str, Any] = {"preset": "baseline"}
    if admission is not None:
        policies["admission"] = {"name": admission}
    return scenario_from_dict(
        {
            "name": name,
            "models": [
                {
                    "name": "digits",
                    "source": "digits-cnn",
                    "slo_ms": slo_ms,
                    "accuracy_floor": 0.9,
                    "max_batch": 1024,
                }
            ],
            "cluster": {"nodes": [{"type": "local-2vcpu", "count": 1}]},
            "policies": policies,
            "workload": {"generator": {"kind": "poisson", "rate_rps": 10, "duration_s": 10}},
        }
    )


@pytest.fixture(scope="module")
def profile() -> ProfileFile:
    """This machine's digits-cnn profile, or a quick one of the fp32 baseline (~10 s)."""
    try:
        return load_profile(default_profile_path("digits-cnn"))
    except ProfileError:
        from coscale.accel.profiler import profile_family
        from coscale.accel.zoo import get_family

        return profile_family(
            get_family("digits-cnn"), variants=["fp32-eager"], batch_sizes=[1, 8, 64], quick=True
        )


@pytest.fixture(scope="module")
def lt() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def system(lt: LoopThread, profile: ProfileFile) -> Iterator[ServingSystem]:
    """The baseline preset: one fp32 replica, no batching, every request admitted."""

    async def build() -> ServingSystem:
        s = ServingSystem.from_scenario(
            _scenario("api-test"), backend=InProcessBackend(max_batch=1024), profile=profile
        )
        await s.start()
        return s

    s = lt.run(build())
    yield s
    lt.run(s.shutdown(drain=True))


class Api:
    """Sync front for an httpx.AsyncClient on the loop thread."""

    def __init__(self, lt: LoopThread, app: Any) -> None:
        self.lt = lt
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver", timeout=60
        )

    def __call__(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self.lt.run(self.client.request(method, url, **kwargs))

    def gather(self, *calls: tuple[str, str, dict[str, Any]]) -> list[httpx.Response]:
        async def all_of() -> list[httpx.Response]:
            tasks = [self.client.request(m, u, **kw) for m, u, kw in calls]
            return list(await asyncio.gather(*tasks))

        return self.lt.run(all_of())


@pytest.fixture(scope="module")
def api(lt: LoopThread, system: ServingSystem) -> Api:
    return Api(lt, create_app(system))


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return data.data, data.target


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return body


def counter(text: str, name: str, **labels: str) -> float:
    return sum(v for lab, v in parse_text(text).get(name, []) if labels.items() <= lab.items())


# --------------------------------------------------------------------------- success paths


def test_healthz(api: Api) -> None:
    resp = api("GET", "/healthz")
    assert resp.status_code == 200 and resp.json() == {"status": "ok"}


def test_readyz_when_ready(api: Api) -> None:
    resp = api("GET", "/readyz")
    assert resp.status_code == 200 and resp.json() == {"status": "ready"}


def test_infer_classifies_real_digits_in_order(
    api: Api, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = digits[0][:40], digits[1][:40]
    resp = api("POST", "/v1/models/digits/infer", json={"inputs": images.tolist()})
    assert resp.status_code == 200, resp.text
    outputs = resp.json()["outputs"]
    assert len(outputs) == 40
    predicted = np.array([o["label"] for o in outputs])
    assert (predicted == labels).mean() >= 0.9
    for o in outputs:
        assert len(o["probabilities"]) == 10
        assert sum(o["probabilities"]) == pytest.approx(1.0, abs=1e-4)
        assert o["label"] == int(np.argmax(o["probabilities"]))


def test_infer_accepts_8x8_items_and_a_timeout(
    api: Api, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    image = digits[0][7].reshape(8, 8).tolist()
    resp = api("POST", "/v1/models/digits/infer", json={"inputs": [image], "timeout_ms": 30_000})
    assert resp.status_code == 200
    assert resp.json()["outputs"][0]["label"] == int(digits[1][7])


def test_concurrent_requests_each_get_their_own_outputs(
    api: Api, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    calls = [
        ("POST", "/v1/models/digits/infer", {"json": {"inputs": digits[0][i : i + 3].tolist()}})
        for i in range(0, 60, 3)
    ]
    responses = api.gather(*calls)
    for i, resp in zip(range(0, 60, 3), responses, strict=True):
        assert resp.status_code == 200
        got = [o["label"] for o in resp.json()["outputs"]]
        alone = api(
            "POST", "/v1/models/digits/infer", json={"inputs": digits[0][i : i + 3].tolist()}
        )
        assert got == [o["label"] for o in alone.json()["outputs"]]


def test_models_lists_the_replicas(api: Api) -> None:
    resp = api("GET", "/v1/models")
    assert resp.status_code == 200
    (model,) = resp.json()["models"]
    assert model["name"] == "digits" and model["source"] == "digits-cnn"
    assert model["variants"] == ["fp32-eager"]
    assert [r["state"] for r in model["replicas"]] == ["ready"]


def test_stats_count_requests(api: Api, digits: tuple[np.ndarray, np.ndarray]) -> None:
    before = api("GET", "/v1/stats").json()
    api("POST", "/v1/models/digits/infer", json={"inputs": digits[0][:2].tolist()})
    after = api("GET", "/v1/stats").json()
    for key in ("requests", "completed", "failed", "rejected", "lost", "latency_ms",
                "throughput_rps", "makespan_s", "cost_usd", "energy_j", "slo_attainment",
                "reliability", "preset", "scenario"):  # fmt: skip
        assert key in after
    assert after["completed"] == before["completed"] + 1
    assert after["lost"] == 0
    assert after["preset"] == "baseline" and after["scenario"] == "api-test"
    mine = api("GET", "/v1/stats", params={"tenant": DEFAULT_TENANT}).json()
    assert mine["completed"] == after["completed"]
    assert api("GET", "/v1/stats", params={"tenant": "nobody"}).json()["requests"] == 0


def test_metrics_parse_and_counters_move(api: Api, digits: tuple[np.ndarray, np.ndarray]) -> None:
    first = api("GET", "/metrics")
    assert first.status_code == 200
    assert first.headers["content-type"] == CONTENT_TYPE
    api("POST", "/v1/models/digits/infer", json={"inputs": digits[0][:4].tolist()})
    api("POST", "/v1/models/nope/infer", json={"inputs": [[0] * 64]})
    text = api("GET", "/metrics").text
    for line in text.splitlines():
        assert line.startswith("#") or line.startswith("coscale_"), line
    parse_text(text)  # every line a comment or `name{labels} value`
    done = {"model": "digits", "outcome": "completed"}
    assert counter(text, "coscale_requests_total", **done) == (
        counter(first.text, "coscale_requests_total", **done) + 1
    )
    infer_route = {"route": "/v1/models/{model}/infer", "method": "POST"}
    assert counter(text, "coscale_http_requests_total", **infer_route, status="404") >= 1
    assert counter(text, "coscale_request_latency_seconds_count", model="digits") >= 1
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(names) == len(set(names)), "a family is exported twice"


def test_openapi_lists_the_endpoints_and_schemas(api: Api) -> None:
    resp = api("GET", "/openapi.json")
    assert resp.status_code == 200
    doc = json.loads(resp.text)
    assert doc["info"]["title"] == "coscale"
    assert set(doc["paths"]) >= ENDPOINTS
    infer = doc["paths"]["/v1/models/{model}/infer"]["post"]
    for status in ("400", "404", "413", "422", "429", "502", "503", "504"):
        ref = infer["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorBody")
    schemas = doc["components"]["schemas"]
    assert schemas["InferRequest"]["additionalProperties"] is False
    assert schemas["InferRequest"]["required"] == ["inputs"]
    assert "description" in schemas["InferRequest"]["properties"]["inputs"]
    assert set(schemas["ErrorBody"]["required"]) == {"error", "message"}


# --------------------------------------------------------------------------- client errors


def test_malformed_json_is_400(api: Api) -> None:
    resp = api(
        "POST",
        "/v1/models/digits/infer",
        content=b'{"inputs": [1, 2',
        headers={"content-type": "application/json"},
    )
    body = assert_error(resp, 400, "malformed_json")
    assert "not valid JSON" in body["message"]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(api: Api, constant: str) -> None:
    content = ('{"inputs": [[' + ", ".join(["0"] * 63 + [constant]) + "]]}").encode()
    resp = api("POST", "/v1/models/digits/infer", content=content)
    assert constant in assert_error(resp, 400, "malformed_json")["message"]
    text = api("POST", "/v1/models/digits/infer", json={"inputs": [f"{constant} as text"]})
    assert_error(text, 422, "invalid_input")  # in a string it is JSON: the model refuses it


def test_empty_body_is_422(api: Api) -> None:
    body = assert_error(api("POST", "/v1/models/digits/infer"), 422, "invalid_request")
    assert "no body" in body["message"]


def test_unknown_field_names_the_field_and_suggests(api: Api) -> None:
    resp = api("POST", "/v1/models/digits/infer", json={"input": [[0] * 64]})
    body = assert_error(resp, 422, "invalid_request")
    assert "'input'" in body["message"] and "did you mean 'inputs'" in body["message"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"inputs": []}, "inputs"),
        ({"inputs": "nope"}, "inputs"),
        ({"inputs": [[0] * 64], "timeout_ms": -5}, "timeout_ms"),
        ({"inputs": [[0] * 64], "timeout_ms": "soon"}, "timeout_ms"),
        ([1, 2, 3], "body"),
    ],
)
def test_schema_errors_name_the_field(api: Api, payload: Any, field: str) -> None:
    body = assert_error(
        api("POST", "/v1/models/digits/infer", json=payload), 422, "invalid_request"
    )
    assert field in body["message"]


def test_non_json_content_type_is_422(api: Api) -> None:
    resp = api(
        "POST",
        "/v1/models/digits/infer",
        content=b"inputs=1",
        headers={"content-type": "text/plain"},
    )
    assert "JSON object" in assert_error(resp, 422, "invalid_request")["message"]


def test_bad_item_is_422_naming_the_item(api: Api) -> None:
    resp = api("POST", "/v1/models/digits/infer", json={"inputs": [[0] * 64, [0] * 63]})
    assert "item 1" in assert_error(resp, 422, "invalid_input")["message"]


def test_unknown_model_is_404(api: Api) -> None:
    resp = api("POST", "/v1/models/nope/infer", json={"inputs": [[0] * 64]})
    assert "digits" in assert_error(resp, 404, "unknown_model")["message"]


def test_unknown_route_and_method_are_json(api: Api) -> None:
    assert_error(api("GET", "/v2/nothing"), 404, "not_found")
    resp = api("GET", "/v1/models/digits/infer")
    assert_error(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["allow"]
    assert_error(api("DELETE", "/healthz"), 405, "method_not_allowed")


# --------------------------------------------------------------------------- limits


@pytest.fixture(scope="module")
def small(lt: LoopThread, system: ServingSystem) -> Api:
    limits = ApiLimits(max_body_bytes=4000, max_items=3, max_string_chars=20)
    return Api(lt, create_app(system, limits=limits))


def test_body_over_the_limit_is_413_before_parsing(small: Api) -> None:
    big = b'{"inputs": [' + b"1," * 3000 + b"1"  # not even valid JSON: never parsed
    resp = small("POST", "/v1/models/digits/infer", content=big)
    assert "limit is 4,000 bytes" in assert_error(resp, 413, "payload_too_large")["message"]


def test_streamed_body_over_the_limit_is_413(small: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b" " * 100

    resp = small("POST", "/v1/models/digits/infer", content=chunks())
    assert_error(resp, 413, "payload_too_large")


def test_bad_content_length_is_400(small: Api) -> None:
    resp = small("POST", "/v1/models/digits/infer", content=b"{}", headers={"content-length": "x"})
    assert_error(resp, 400, "bad_request")


def test_too_many_items_is_413(small: Api) -> None:
    resp = small("POST", "/v1/models/digits/infer", json={"inputs": [[0] * 64] * 4})
    assert "4 items" in assert_error(resp, 413, "payload_too_large")["message"]


def test_long_string_is_413(small: Api) -> None:
    resp = small("POST", "/v1/models/digits/infer", json={"inputs": [{"text": ["x" * 21]}]})
    assert "21 characters" in assert_error(resp, 413, "payload_too_large")["message"]


def test_within_limits_is_served(small: Api) -> None:
    resp = small("POST", "/v1/models/digits/infer", json={"inputs": [[0] * 64] * 3})
    assert resp.status_code == 200 and len(resp.json()["outputs"]) == 3


def test_more_items_than_max_batch_is_413(api: Api) -> None:
    resp = api("POST", "/v1/models/digits/infer", json={"inputs": [[0] * 64] * 1025})
    assert_error(resp, 413, "payload_too_large")


def test_check_limits_scans_nested_strings_not_numeric_leaves() -> None:
    limits = ApiLimits(max_items=10, max_string_chars=5)
    check_limits([[1.0] * 10_000, [[0, 1], [2, 3]], "abcde"], limits)
    with pytest.raises(PayloadTooLarge, match="item 1"):
        check_limits(["ok", [["fine", {"k": "toolong"}]]], limits)
    with pytest.raises(PayloadTooLarge, match="item 0"):
        check_limits([{"toolongkey": 1}], limits)


def test_limits_must_be_positive() -> None:
    with pytest.raises(CoscaleError, match="max_items"):
        ApiLimits(max_items=0)


# --------------------------------------------------------------------------- server errors


def test_overloaded_is_429_with_retry_after(lt: LoopThread, profile: ProfileFile) -> None:
    """The deadline admission policy rejects a request with a 1 µs timeout: no replica can
    answer that fast (its predicted service time, from the profile, is longer)."""

    async def build() -> ServingSystem:
        s = ServingSystem.from_scenario(
            _scenario("admission", admission="deadline"),
            backend=InProcessBackend(max_batch=64),
            profile=profile,
        )
        await s.start()
        return s

    strict = lt.run(build())
    try:
        app = Api(lt, create_app(strict))
        body = {"inputs": [[0] * 64], "timeout_ms": 0.001}
        resp = app("POST", "/v1/models/digits/infer", json=body)
        assert "overloaded" in assert_error(resp, 429, "overloaded")["message"]
        retry = resp.headers["retry-after"]
        assert retry.isdigit() and int(retry) >= 1
    finally:
        lt.run(strict.shutdown(drain=True))


@pytest.mark.parametrize(("seconds", "header"), [(0.0, 1), (0.05, 1), (1.0, 1), (1.2, 2), (30, 30)])
def test_retry_after_rounds_up_to_whole_seconds(seconds: float, header: int) -> None:
    assert retry_after_seconds(seconds) == header


def test_deadline_exceeded_is_504(
    lt: LoopThread, api: Api, system: ServingSystem, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    """A small request queued behind 5 × 1024 items of fp32 work (one batch at a time, no
    batching) passes its 20 ms timeout while waiting."""
    big = {"inputs": np.resize(digits[0], (1024, 64)).tolist()}
    small = {"inputs": digits[0][:1].tolist(), "timeout_ms": 20}

    async def scenario() -> tuple[list[httpx.Response], httpx.Response]:
        post = api.client.post
        bigs = [asyncio.ensure_future(post("/v1/models/digits/infer", json=big)) for _ in range(5)]
        while system.models()[0]["in_flight"] < 5:
            await asyncio.sleep(0.001)
        late = await post("/v1/models/digits/infer", json=small)
        return list(await asyncio.gather(*bigs)), late

    bigs, late = lt.run(scenario())
    assert all(r.status_code == 200 and len(r.json()["outputs"]) == 1024 for r in bigs)
    assert_error(late, 504, "deadline_exceeded")


def test_not_ready_is_503(lt: LoopThread, profile: ProfileFile) -> None:
    idle = ServingSystem.from_scenario(
        _scenario("not-started"), backend=InProcessBackend(), profile=profile
    )
    app = Api(lt, create_app(idle))
    body = assert_error(app("GET", "/readyz"), 503, "not_ready")
    assert "digits" in body["message"]
    assert_error(
        app("POST", "/v1/models/digits/infer", json={"inputs": [[0] * 64]}), 503, "not_ready"
    )
    assert app("GET", "/healthz").status_code == 200


def test_replica_failure_is_502(lt: LoopThread, profile: ProfileFile) -> None:
    """Every batch outlives the backend's 1 ns batch timeout: the replica is declared hung
    and replaced, the batch retried, and after the retries the request gets 502."""

    async def build() -> ServingSystem:
        s = ServingSystem.from_scenario(
            _scenario("hung", slo_ms=5000),
            backend=InProcessBackend(max_batch=1024, batch_timeout_s=1e-9),
            profile=profile,
        )
        await s.start()
        return s

    hung = lt.run(build())
    try:
        app = Api(lt, create_app(hung))
        body = {"inputs": [[0] * 64] * 1024}  # tens of ms of work: always past 1 ns
        resp = app("POST", "/v1/models/digits/infer", json=body)
        assert_error(resp, 502, "replica_failure")
    finally:
        lt.run(hung.shutdown(drain=False))


class _BrokenModels:
    """The real system, except that ``models()`` has a bug (for the 500 path only)."""

    def __init__(self, inner: ServingSystem) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def models(self) -> list[dict[str, Any]]:
        raise ZeroDivisionError("a bug")


def test_unexpected_exception_is_500_json_and_logged(
    lt: LoopThread, system: ServingSystem, caplog: pytest.LogCaptureFixture
) -> None:
    app = Api(lt, create_app(_BrokenModels(system)))  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="coscale.api"):
        body = assert_error(app("GET", "/v1/models"), 500, "internal")
    assert "ZeroDivisionError" in caplog.text
    assert "a bug" not in body["message"]  # internals stay in the log
    assert app("GET", "/healthz").status_code == 200


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("192.168.1.4", False), ("::", False),
     ("example.com", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_replica_pids_reads_models(system: ServingSystem) -> None:
    # the in-process backend's replicas have no process of their own
    assert replica_pids(system) == {}


# --------------------------------------------------------------------------- binary bodies

NPY = "application/x-npy"


def npy(array: np.ndarray) -> bytes:
    from coscale.runtime.wire import encode_npy

    return encode_npy(array)


def read_npy(resp: httpx.Response) -> np.ndarray:
    from coscale.runtime.wire import decode_npy

    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == NPY
    return decode_npy(resp.content)


def test_npy_in_npy_out_matches_the_json_answer(
    api: Api, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = digits[0][:40].astype(np.float32), digits[1][:40]
    binary = api(
        "POST",
        "/v1/models/digits/infer",
        content=npy(images),
        headers={"content-type": NPY, "accept": NPY},
    )
    rows = read_npy(binary)
    assert rows.shape == (40, 10) and rows.dtype == np.float32
    assert (rows.argmax(axis=1) == labels).mean() >= 0.9
    as_json = api("POST", "/v1/models/digits/infer", json={"inputs": images.tolist()})
    probabilities = np.array([o["probabilities"] for o in as_json.json()["outputs"]])
    np.testing.assert_allclose(rows, probabilities, rtol=1e-5, atol=1e-6)


def test_npy_8x8_integers_in_json_out(api: Api, digits: tuple[np.ndarray, np.ndarray]) -> None:
    images = digits[0][:5].astype(np.int64).reshape(5, 8, 8)
    resp = api(
        "POST", "/v1/models/digits/infer", content=npy(images), headers={"content-type": NPY}
    )
    assert resp.status_code == 200, resp.text
    assert [o["label"] for o in resp.json()["outputs"]] == list(digits[1][:5])


def test_json_in_npy_out(api: Api, digits: tuple[np.ndarray, np.ndarray]) -> None:
    resp = api(
        "POST",
        "/v1/models/digits/infer",
        json={"inputs": digits[0][:3].tolist()},
        headers={"accept": f"application/json;q=0.5, {NPY}"},
    )
    assert read_npy(resp).shape == (3, 10)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"not an array", "not a valid .npy"),
        (npy(np.zeros((2, 64), np.float32))[:-4], "body carries"),
        (npy(np.array(3.0)), "scalar"),
        (b"\x93NUMPY\x09\x00" + b"\x00" * 20, "version"),
    ],
)
def test_malformed_npy_is_400_naming_the_problem(api: Api, body: bytes, needle: str) -> None:
    resp = api("POST", "/v1/models/digits/infer", content=body, headers={"content-type": NPY})
    assert needle in assert_error(resp, 400, "malformed_body")["message"]


def test_pickled_npy_is_refused(api: Api) -> None:
    import io

    stream = io.BytesIO()
    np.save(stream, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    resp = api(
        "POST", "/v1/models/digits/infer", content=stream.getvalue(), headers={"content-type": NPY}
    )
    assert "objects" in assert_error(resp, 400, "malformed_body")["message"]


@pytest.mark.parametrize(
    ("array", "needle"),
    [
        (np.zeros((2, 63), np.float32), "shape (2, 63)"),
        (np.array(["a", "b"]), "shape (2,)"),
        (np.full((3, 64), 2.0, np.float32) + np.eye(3, 64, 5, dtype=np.float32) * 20, "item 0"),
        (np.zeros((0, 64), np.float32), "no items"),
    ],
)
def test_npy_of_the_wrong_shape_or_range_is_422(api: Api, array: np.ndarray, needle: str) -> None:
    resp = api("POST", "/v1/models/digits/infer", content=npy(array), headers={"content-type": NPY})
    assert needle in assert_error(resp, 422, "invalid_input")["message"]


def test_npy_over_the_item_limit_is_413(lt: LoopThread, system: ServingSystem) -> None:
    small = Api(lt, create_app(system, limits=ApiLimits(max_items=4)))
    resp = small(
        "POST",
        "/v1/models/digits/infer",
        content=npy(np.zeros((5, 64), np.float32)),
        headers={"content-type": NPY},
    )
    assert "5 items" in assert_error(resp, 413, "payload_too_large")["message"]


def test_npy_timeout_goes_in_the_query(api: Api) -> None:
    resp = api(
        "POST",
        "/v1/models/digits/infer?timeout_ms=-1",
        content=npy(np.zeros((1, 64), np.float32)),
        headers={"content-type": NPY},
    )
    assert "timeout_ms" in assert_error(resp, 422, "invalid_request")["message"]


def test_openapi_documents_the_binary_body(api: Api) -> None:
    infer = api("GET", "/openapi.json").json()["paths"]["/v1/models/{model}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", NPY}
    assert NPY in infer["responses"]["200"]["content"]


def test_npy_string_limit_names_the_longest_item() -> None:
    from coscale.api import check_array_limits

    texts = np.array(["short", "x" * 30, "y" * 12])
    with pytest.raises(PayloadTooLarge, match=r"inputs\[1\]: item 1 holds a string of 30"):
        check_array_limits(texts, ApiLimits(max_string_chars=20))
    check_array_limits(texts, ApiLimits(max_string_chars=30))
