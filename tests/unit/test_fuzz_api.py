"""The HTTP API fuzzed with hypothesis: over 1,000 generated requests, in-process.

The app serves a real ServingSystem (digits-cnn fp32 on the InProcessBackend, the
deadline admission policy) with two tenants and an admin key, and the same system
anonymously. Requests are generated for every endpoint: inference bodies built from the
schema and broken in every way (random JSON, wrong types, NaN, huge counts, ``.npy``
bodies valid and corrupt, random bytes, random content types), random methods, paths,
query strings and Authorization headers.

Properties, for every response:

* no 5xx — except ``504 deadline_exceeded`` for a request that set its own
  ``timeout_ms`` (the documented answer when the server could not meet it);
* every error body is JSON of exactly ``{"error": code, "message": text}`` with
  non-empty strings; 401 carries ``WWW-Authenticate``, 405 ``Allow``, 429 a whole
  ``Retry-After`` >= 1;
* a 200 inference answer holds one output per input item;
* afterwards the app's own counter shows no 5xx besides those 504s, and the system
  lost no request.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coscale.api import ApiLimits, create_app
from coscale.backends.inprocess import InProcessBackend
from coscale.catalog.profiles import ProfileFile, default_profile_path, load_profile
from coscale.clock import ManualClock
from coscale.config import Scenario, scenario_from_dict
from coscale.errors import ProfileError
from coscale.runtime.system import ServingSystem
from coscale.telemetry.prometheus import parse_text
from coscale.tenancy import ADMIN_KEY_ENV, TenantAuth

T = TypeVar("T")

KEYS = {"alice": "alice-fuzz-0123456789abcdef", "bob": "bob-fuzz-0123456789abcdefgh"}
ADMIN_KEY = "admin-fuzz-0123456789abcdef"
ENV = {"COSCALE_KEY_ALICE": KEYS["alice"], "COSCALE_KEY_BOB": KEYS["bob"], ADMIN_KEY_ENV: ADMIN_KEY}
NPY = "application/x-npy"
PATHS = [
    "/v1/models/digits/infer",
    "/v1/models/other/infer",
    "/v1/models",
    "/v1/stats",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
SHAPE_KEYS = {"error", "message"}


#: Multiplies every test's example count (``COSCALE_FUZZ_SCALE=20`` for a long search).
SCALE = max(1, int(os.environ.get("COSCALE_FUZZ_SCALE", "1")))


def fuzz(examples: int) -> settings:
    """``examples`` × :data:`SCALE` generated inputs, no deadline, no example database."""
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def fuzz_scenario() -> Scenario:
    return scenario_from_dict(
        {
            "name": "fuzz-api",
            "models": [
                {
                    "name": "digits",
                    "source": "digits-cnn",
                    "slo_ms": 2000,
                    "accuracy_floor": 0.9,
                    "max_batch": 64,
                }
            ],
            "tenants": [{"name": "alice", "weight": 2}, {"name": "bob"}],
            "policies": {"preset": "baseline", "admission": {"name": "deadline"}},
            "workload": {"generator": {"kind": "poisson", "rate_rps": 10, "duration_s": 10}},
        }
    )


@pytest.fixture(scope="module")
def lt() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def system(lt: LoopThread) -> Iterator[ServingSystem]:
    try:
        profile: ProfileFile = load_profile(default_profile_path("digits-cnn"))
    except ProfileError:
        from coscale.accel.profiler import profile_family
        from coscale.accel.zoo import get_family

        profile = profile_family(
            get_family("digits-cnn"), variants=["fp32-eager"], batch_sizes=[1, 8], quick=True
        )

    async def build() -> ServingSystem:
        s = ServingSystem.from_scenario(
            fuzz_scenario(), backend=InProcessBackend(max_batch=64), profile=profile
        )
        await s.start()
        return s

    s = lt.run(build())
    yield s
    lt.run(s.shutdown(drain=True))
    assert s.stats()["lost"] == 0


class Client:
    def __init__(self, lt: LoopThread, app: Any) -> None:
        self.lt = lt
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver", timeout=60
        )
        self.sent = 0
        self.timeouts_504 = 0

    def __call__(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        self.sent += 1
        headers = kwargs.pop("headers", None) or {}
        kwargs["headers"] = {k: v.encode("latin-1") for k, v in headers.items()}
        return self.lt.run(self.client.request(method, url, **kwargs))


LIMITS = ApiLimits(max_body_bytes=200_000, max_items=64, max_string_chars=200)


@pytest.fixture(scope="module")
def secured(lt: LoopThread, system: ServingSystem) -> Client:
    auth = TenantAuth.from_scenario(fuzz_scenario(), clock=ManualClock(), env=ENV)
    return Client(lt, create_app(system, auth=auth, limits=LIMITS))


@pytest.fixture(scope="module")
def anonymous(lt: LoopThread, system: ServingSystem) -> Client:
    return Client(lt, create_app(system, limits=LIMITS))


# --------------------------------------------------------------------------- strategies

header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60).filter(
    lambda s: "\x7f" not in s
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.text(min_size=190, max_size=210),  # around max_string_chars
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
pixel = st.one_of(st.floats(0, 16), st.integers(0, 16), st.floats(-1e9, 1e9), json_scalars)
flat_image = st.lists(st.floats(0, 16), min_size=64, max_size=64)
grid_image = st.lists(st.lists(st.integers(0, 16), min_size=8, max_size=8), min_size=8, max_size=8)
odd_image = st.lists(pixel, min_size=60, max_size=66)
items = st.one_of(flat_image, flat_image, grid_image, odd_image, json_values)
timeouts = st.one_of(
    st.none(),
    st.floats(min_value=1e-6, max_value=700_000),
    st.sampled_from([0, -1, 1e-3, 5, 50, 1000, 600_000, 600_001]),
    json_scalars,
)


@st.composite
def infer_bodies(draw: st.DrawFn) -> tuple[dict[str, str], bytes, bool]:
    """(headers, body bytes, whether a numeric timeout_ms was asked)."""
    kind = draw(st.sampled_from(["json", "json", "json", "npy", "bytes", "raw-json"]))
    headers: dict[str, str] = {}
    timed = False
    if kind == "json":
        body: dict[str, Any] = {}
        if draw(st.integers(0, 19)) > 0:  # sometimes no inputs at all
            body["inputs"] = draw(
                st.one_of(
                    st.lists(items, max_size=6),
                    st.lists(flat_image, min_size=1, max_size=3),
                    st.just([[0] * 64] * 65),  # over max_items
                    json_values,
                )
            )
        timeout = draw(timeouts)
        if timeout is not None or draw(st.booleans()):
            body["timeout_ms"] = timeout
            timed = isinstance(timeout, int | float) and not isinstance(timeout, bool)
        if draw(st.integers(0, 9)) == 0:
            body[draw(st.text(max_size=10))] = draw(json_values)
        data = json.dumps(body, allow_nan=True).encode()
        headers["content-type"] = draw(
            st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain"])
        )
    elif kind == "npy":
        dtype = draw(st.sampled_from(["float32", "float64", "int64", "uint8", "<U4", "bool"]))
        shape = draw(st.lists(st.integers(0, 9), min_size=0, max_size=3).map(tuple))
        array = np.zeros(shape, dtype=dtype)
        buf = io.BytesIO()
        np.save(buf, array)
        data = buf.getvalue()
        if draw(st.booleans()):  # corrupt it: truncate, or overwrite a byte
            cut = draw(st.integers(0, len(data)))
            data = data[:cut] + draw(st.binary(max_size=8))
        headers["content-type"] = NPY
        if draw(st.booleans()):
            query_timeout = draw(st.sampled_from(["5", "abc", "-1", "1e400", "200"]))
            headers["x-query"] = f"timeout_ms={query_timeout}"
            timed = query_timeout in ("5", "200")
    elif kind == "raw-json":
        data = draw(st.sampled_from([b"{", b"[]", b"null", b'{"inputs": NaN}', b"\xff\xfe", b""]))
        headers["content-type"] = "application/json"
    else:
        data = draw(st.binary(max_size=300))
        ctype = draw(st.one_of(st.none(), st.sampled_from(["application/json", NPY]), header_text))
        if ctype is not None:
            headers["content-type"] = ctype
    if draw(st.integers(0, 4)) == 0:
        headers["accept"] = draw(st.sampled_from([NPY, f"{NPY};q=0", "*/*", "text/html"]))
    return headers, data, timed


def check(resp: httpx.Response, method: str, timed: bool) -> None:
    """The properties in the module docstring."""
    status = resp.status_code
    if status >= 500:
        assert status == 504 and timed, f"{status}: {resp.text[:500]}"
    if status >= 400 and method != "HEAD":
        assert resp.headers.get("content-type", "").startswith("application/json"), resp.text
        body = resp.json()
        assert isinstance(body, dict) and set(body) == SHAPE_KEYS, body
        assert isinstance(body["error"], str) and body["error"]
        assert isinstance(body["message"], str) and body["message"]
    if status == 401:
        assert resp.headers["www-authenticate"].startswith("Bearer")
    if status == 405:
        assert "allow" in resp.headers
    if status == 429:
        retry = resp.headers.get("retry-after", "1")
        assert retry.isdigit() and int(retry) >= 1


def _infer(client: Client, model: str, headers: dict[str, str], data: bytes, timed: bool) -> None:
    query = headers.pop("x-query", None)
    url = f"/v1/models/{quote(model, safe='')}/infer" + (f"?{query}" if query else "")
    resp = client("POST", url, content=data, headers=headers)
    check(resp, "POST", timed)
    if resp.status_code == 504:
        client.timeouts_504 += 1
    sent_json = headers.get("content-type", "").startswith("application/json")
    if resp.status_code == 200 and sent_json and "json" in resp.headers["content-type"]:
        assert len(resp.json()["outputs"]) == len(json.loads(data)["inputs"])


# --------------------------------------------------------------------------- tests


def test_fuzz_inference_bodies(anonymous: Client) -> None:
    start = anonymous.sent
    statuses: set[int] = set()

    @fuzz(450)
    @given(
        model=st.one_of(st.just("digits"), st.just("digits"), st.text(max_size=12)),
        request=infer_bodies(),
    )
    def run(model: str, request: tuple[dict[str, str], bytes, bool]) -> None:
        headers, data, timed = request
        _infer(anonymous, model, dict(headers), data, timed)

    original = anonymous.client.request

    async def recording(*args: Any, **kwargs: Any) -> httpx.Response:
        resp = await original(*args, **kwargs)
        statuses.add(resp.status_code)
        return resp

    anonymous.client.request = recording  # type: ignore[method-assign]
    try:
        run()
    finally:
        anonymous.client.request = original  # type: ignore[method-assign]
    assert anonymous.sent - start >= 450
    assert {200, 400, 404, 413, 422} <= statuses, statuses  # every path was exercised


def test_fuzz_inference_with_keys(secured: Client) -> None:
    start = secured.sent

    @fuzz(200)
    @given(
        key=st.sampled_from([*KEYS.values(), ADMIN_KEY, None, "wrong-key-0123456789"]),
        request=infer_bodies(),
    )
    def run(key: str | None, request: tuple[dict[str, str], bytes, bool]) -> None:
        headers, data, timed = request
        headers = dict(headers)
        if key is not None:
            headers["authorization"] = f"Bearer {key}"
        _infer(secured, "digits", headers, data, timed)

    run()
    assert secured.sent - start >= 200


@st.composite
def any_request(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    method = draw(st.sampled_from(METHODS))
    path = draw(
        st.one_of(
            st.sampled_from(PATHS),
            st.text(max_size=30).map(lambda s: "/" + quote(s, safe="/")),
            st.sampled_from(PATHS).map(lambda p: p + "/"),
        )
    )
    params = draw(
        st.one_of(
            st.just({}),
            st.dictionaries(
                st.sampled_from(["tenant", "timeout_ms", "x"]), st.text(max_size=20), max_size=2
            ),
        )
    )
    headers: dict[str, str] = {}
    auth = draw(
        st.one_of(
            st.none(),
            st.sampled_from([*KEYS.values(), ADMIN_KEY]).map(lambda k: f"Bearer {k}"),
            header_text,
            st.sampled_from([*KEYS.values()]).map(lambda k: f"Basic {k}"),
        )
    )
    if auth is not None:
        headers["authorization"] = auth
    kwargs: dict[str, Any] = {"params": params, "headers": headers}
    if method in ("POST", "PUT", "PATCH") and draw(st.booleans()):
        kwargs["content"] = draw(
            st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()))
        )
    return method, path, kwargs


def test_fuzz_every_endpoint_secured_and_anonymous(secured: Client, anonymous: Client) -> None:
    counts = {"secured": 0, "anonymous": 0}

    @fuzz(400)
    @given(request=any_request(), which=st.sampled_from(["secured", "anonymous"]))
    def run(request: tuple[str, str, dict[str, Any]], which: str) -> None:
        method, path, kwargs = request
        client = secured if which == "secured" else anonymous
        if which == "anonymous":
            kwargs = {**kwargs, "headers": {}}
        resp = client(method, path, **kwargs)
        check(resp, method, timed="timeout_ms" in kwargs["params"])
        counts[which] += 1
        bearer = kwargs["headers"].get("authorization", "").startswith("Bearer ")
        if which == "secured" and path not in ("/healthz", "/readyz") and not bearer:
            assert resp.status_code == 401
        if resp.status_code == 200 and path == "/v1/stats" and which == "secured":
            token = kwargs["headers"]["authorization"].split(" ", 1)[1]
            for tenant, key in KEYS.items():
                if key == token:  # a tenant only ever sees its own stats
                    assert resp.json()["tenant"] == tenant

    run()
    assert counts["secured"] + counts["anonymous"] >= 400
    assert min(counts.values()) > 100


def test_after_the_fuzzing_no_5xx_but_asked_for_504s(
    secured: Client, anonymous: Client, system: ServingSystem
) -> None:
    total = secured.sent + anonymous.sent
    assert total >= 1000, total
    resp = secured("GET", "/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert resp.status_code == 200
    for client in (secured, anonymous):
        text = client("GET", "/metrics").text if client is anonymous else resp.text
        rows = parse_text(text).get("coscale_http_requests_total", [])
        bad = {
            (labels["status"], labels["route"]): v
            for labels, v in rows
            if labels["status"].startswith("5") and labels["status"] != "504"
        }
        assert not bad, bad
    assert system.stats()["lost"] == 0
