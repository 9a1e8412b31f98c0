"""Authentication, authorization, rate limits and quotas over HTTP, in-process.

A real ServingSystem (digits-cnn fp32 on the InProcessBackend) with three tenants is
served by ``create_app(..., auth=TenantAuth)``; requests go through httpx's ASGI
transport. Keys come from an environment mapping, as ``coscale serve`` reads them. Rate
limits and quotas run on a ManualClock, so their timing is exact.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import httpx
import pytest

from coscale.api import create_app
from coscale.backends.inprocess import InProcessBackend
from coscale.catalog.profiles import ProfileFile, default_profile_path, load_profile
from coscale.clock import ManualClock
from coscale.config import Scenario, scenario_from_dict
from coscale.errors import ProfileError
from coscale.runtime.system import ServingSystem
from coscale.telemetry.prometheus import parse_text
from coscale.tenancy import ADMIN_KEY_ENV, OPEN_PATHS, TenantAuth

T = TypeVar("T")

KEYS = {
    "alice": "alice-0123456789-abcdefghij",
    "bob": "bob-0123456789-abcdefghijkl",
    "carol": "carol-0123456789-abcdefghij",
}
ADMIN_KEY = "admin-0123456789-abcdefghij"
ENV = {
    "ALICE_KEY": KEYS["alice"],
    "COSCALE_KEY_BOB": KEYS["bob"],
    "CAROL_KEY": KEYS["carol"],
    ADMIN_KEY_ENV: ADMIN_KEY,
}
IMAGE = [0.0] * 64
INFER = "/v1/models/digits/infer"

#: Every protected request: method, path, keyword arguments.
PROTECTED: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", INFER, {"json": {"inputs": [IMAGE]}}),
    ("POST", "/v1/models/nope/infer", {"json": {"inputs": [IMAGE]}}),
    ("GET", "/v1/models", {}),
    ("GET", "/v1/stats", {}),
    ("GET", "/v1/stats?tenant=alice", {}),
    ("GET", "/metrics", {}),
    ("GET", "/openapi.json", {}),
    ("GET", "/docs", {}),
    ("GET", "/no/such/route", {}),
    ("DELETE", "/v1/models", {}),
]


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


def tenant_scenario() -> Scenario:
    return scenario_from_dict(
        {
            "name": "auth-test",
            "models": [
                {"name": "digits", "source": "digits-cnn", "slo_ms": 1000, "accuracy_floor": 0.9}
            ],
            "tenants": [
                {"name": "alice", "key_env": "ALICE_KEY", "weight": 2},
                {"name": "bob"},
                {
                    "name": "carol",
                    "key_env": "CAROL_KEY",
                    "rate_limit_rps": 2,
                    "rate_burst": 2,
                    "quota_requests": 3,
                    "quota_period_s": 60,
                },
            ],
            "policies": {"preset": "baseline"},
            "workload": {"generator": {"kind": "poisson", "rate_rps": 10, "duration_s": 10}},
        }
    )


@pytest.fixture(scope="module")
def profile() -> ProfileFile:
    try:
        return load_profile(default_profile_path("digits-cnn"))
    except ProfileError:
        from coscale.accel.profiler import profile_family
        from coscale.accel.zoo import get_family

        return profile_family(
            get_family("digits-cnn"), variants=["fp32-eager"], batch_sizes=[1, 8], quick=True
        )


@pytest.fixture(scope="module")
def lt() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def system(lt: LoopThread, profile: ProfileFile) -> Iterator[ServingSystem]:
    async def build() -> ServingSystem:
        s = ServingSystem.from_scenario(
            tenant_scenario(), backend=InProcessBackend(max_batch=64), profile=profile
        )
        await s.start()
        return s

    s = lt.run(build())
    yield s
    lt.run(s.shutdown(drain=True))


class Api:
    def __init__(self, lt: LoopThread, app: Any) -> None:
        self.lt = lt
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver", timeout=60
        )

    def __call__(
        self, method: str, url: str, key: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return self.lt.run(self.client.request(method, url, headers=headers, **kwargs))


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock(1000.0)


@pytest.fixture(scope="module")
def auth(clock: ManualClock) -> TenantAuth:
    return TenantAuth.from_scenario(tenant_scenario(), clock=clock, env=ENV)


@pytest.fixture(scope="module")
def api(lt: LoopThread, system: ServingSystem, auth: TenantAuth) -> Api:
    return Api(lt, create_app(system, auth=auth))


def assert_error(resp: httpx.Response, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error", "message"} and body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return str(body["message"])


# --------------------------------------------------------------------------- 401


@pytest.mark.parametrize(("method", "path", "kwargs"), PROTECTED)
def test_no_key_is_401_everywhere(api: Api, method: str, path: str, kwargs: dict[str, Any]) -> None:
    resp = api(method, path, **kwargs)
    assert "Authorization: Bearer KEY" in assert_error(resp, 401, "unauthorized")
    assert resp.headers["www-authenticate"] == 'Bearer realm="coscale"'


@pytest.mark.parametrize(("method", "path", "kwargs"), PROTECTED)
def test_a_wrong_key_is_401_everywhere(
    api: Api, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    wrong = KEYS["alice"][:-1] + "X"
    resp = api(method, path, key=wrong, **kwargs)
    assert "not valid" in assert_error(resp, 401, "unauthorized")
    assert 'error="invalid_token"' in resp.headers["www-authenticate"]
    assert wrong not in resp.text


@pytest.mark.parametrize(
    "header",
    [
        "Basic " + KEYS["alice"],  # wrong scheme
        "Bearer",  # no token
        "Bearer ",
        KEYS["alice"],  # no scheme
        "Bearer \u00e9" + KEYS["alice"],  # a character no key holds
    ],
)
def test_malformed_authorization_is_401(api: Api, header: str) -> None:
    resp = api("GET", "/v1/models", headers={"Authorization": header.encode("latin-1")})
    assert_error(resp, 401, "unauthorized")


def test_authentication_comes_before_the_body_is_read(api: Api) -> None:
    """A huge body without a key is refused for the key (401), not buffered (413)."""
    headers = {"content-length": str(10**9), "content-type": "application/json"}
    resp = api("POST", INFER, content=b"{}", headers=headers)
    assert_error(resp, 401, "unauthorized")
    resp = api("POST", INFER, key=KEYS["alice"], content=b"{}", headers=headers)
    assert_error(resp, 413, "payload_too_large")


def test_bearer_scheme_is_case_insensitive(api: Api) -> None:
    resp = api("GET", "/v1/models", headers={"Authorization": "bearer " + KEYS["alice"]})
    assert resp.status_code == 200


@pytest.mark.parametrize("path", sorted(OPEN_PATHS))
def test_health_and_readiness_are_open(api: Api, path: str) -> None:
    assert api("GET", path).status_code == 200
    assert api("GET", path, key="wrong-key-but-ignored-here").status_code == 200


def test_refusals_are_counted_for_the_admin(api: Api) -> None:
    before = parse_text(api("GET", "/metrics", key=ADMIN_KEY).text)
    api("GET", "/v1/models")
    after = parse_text(api("GET", "/metrics", key=ADMIN_KEY).text)

    def refused(samples: dict[str, Any]) -> float:
        rows = samples.get("coscale_auth_refused_total", [])
        return sum(v for labels, v in rows if labels.get("reason") == "unauthorized")

    assert refused(after) == refused(before) + 1


# --------------------------------------------------------------------------- 403 and scope


def test_a_tenant_infers_as_itself_and_sees_only_its_own_stats(api: Api) -> None:
    before_a = api("GET", "/v1/stats", key=KEYS["alice"]).json()
    before_b = api("GET", "/v1/stats", key=KEYS["bob"]).json()
    resp = api("POST", INFER, key=KEYS["bob"], json={"inputs": [IMAGE, IMAGE]})
    assert resp.status_code == 200 and len(resp.json()["outputs"]) == 2
    mine = api("GET", "/v1/stats", key=KEYS["bob"]).json()
    assert mine["tenant"] == "bob" and mine["requests"] == before_b["requests"] + 1
    explicit = api("GET", "/v1/stats?tenant=bob", key=KEYS["bob"]).json()
    assert explicit["requests"] == mine["requests"]
    # bob's request was not counted as alice's
    assert api("GET", "/v1/stats", key=KEYS["alice"]).json()["requests"] == before_a["requests"]


@pytest.mark.parametrize(("who", "other"), [("alice", "bob"), ("bob", "alice"), ("carol", "x")])
def test_another_tenants_stats_are_403(api: Api, who: str, other: str) -> None:
    resp = api("GET", f"/v1/stats?tenant={other}", key=KEYS[who])
    message = assert_error(resp, 403, "forbidden")
    assert f"tenant {who!r} may not read the stats of tenant {other!r}" in message


@pytest.mark.parametrize("who", ["alice", "bob"])
def test_metrics_is_admin_only(api: Api, who: str) -> None:
    message = assert_error(api("GET", "/metrics", key=KEYS[who]), 403, "forbidden")
    assert "cluster-wide" in message and ADMIN_KEY_ENV in message


def test_the_admin_sees_everything_but_does_not_infer(api: Api) -> None:
    resp = api("GET", "/metrics", key=ADMIN_KEY)
    assert resp.status_code == 200 and "coscale_http_requests_total" in resp.text
    whole = api("GET", "/v1/stats", key=ADMIN_KEY).json()
    assert "tenant" not in whole
    parts = [api("GET", f"/v1/stats?tenant={t}", key=ADMIN_KEY).json() for t in KEYS]
    assert sum(p["requests"] for p in parts) == whole["requests"]
    assert api("GET", "/v1/models", key=ADMIN_KEY).status_code == 200
    resp = api("POST", INFER, key=ADMIN_KEY, json={"inputs": [IMAGE]})
    assert "not for inference" in assert_error(resp, 403, "forbidden")


def test_any_key_reads_models_and_the_openapi_document(api: Api) -> None:
    for key in (KEYS["alice"], ADMIN_KEY):
        assert api("GET", "/v1/models", key=key).json()["models"][0]["name"] == "digits"
        doc = api("GET", "/openapi.json", key=key).json()
        assert "401" in doc["paths"]["/v1/stats"]["get"]["responses"]


def test_an_authenticated_unknown_route_is_still_a_json_404(api: Api) -> None:
    assert_error(api("GET", "/nope", key=KEYS["alice"]), 404, "not_found")


def test_without_auth_the_app_serves_anonymously(lt: LoopThread, system: ServingSystem) -> None:
    anon = Api(lt, create_app(system))
    assert anon("GET", "/metrics").status_code == 200
    assert anon("GET", "/v1/stats").status_code == 200
    assert anon("POST", INFER, json={"inputs": [IMAGE]}).status_code == 200


# --------------------------------------------------------------------------- limits


def test_rate_limit_is_429_with_retry_after_from_the_bucket(
    api: Api, clock: ManualClock, auth: TenantAuth
) -> None:
    """carol: 2 requests/s, burst 2. Two reads at once pass, the third waits 0.5 s."""
    clock.advance(100)  # a full bucket, a fresh quota window
    assert api("GET", "/v1/models", key=KEYS["carol"]).status_code == 200
    assert api("GET", "/v1/models", key=KEYS["carol"]).status_code == 200
    resp = api("GET", "/v1/models", key=KEYS["carol"])
    assert "rate limit of 2 requests/s" in assert_error(resp, 429, "rate_limited")
    assert resp.headers["retry-after"] == "1"  # 0.5 s, rounded up to whole seconds
    # other tenants are not limited by carol's bucket
    assert api("GET", "/v1/models", key=KEYS["alice"]).status_code == 200
    clock.advance(0.5)
    assert api("GET", "/v1/models", key=KEYS["carol"]).status_code == 200
    assert api("GET", "/v1/models", key=KEYS["carol"]).status_code == 429


def test_quota_counts_inference_requests_and_renews_each_period(
    api: Api, clock: ManualClock
) -> None:
    """carol: 3 inference requests per 60 s, whatever their outcome."""
    clock.advance(1000)
    start = clock.now()
    window_end = 1000.0 + 60 * (int((start - 1000.0) // 60) + 1)
    body = {"inputs": [IMAGE]}
    for _ in range(3):
        clock.advance(1)  # stay under the rate limit
        assert api("POST", INFER, key=KEYS["carol"], json=body).status_code == 200
    clock.advance(1)
    resp = api("POST", INFER, key=KEYS["carol"], json=body)
    assert "quota of 3 inference requests per 60 s" in assert_error(resp, 429, "quota_exceeded")
    assert int(resp.headers["retry-after"]) == pytest.approx(window_end - clock.now(), abs=1)
    # reads do not count against the quota
    assert api("GET", "/v1/stats", key=KEYS["carol"]).status_code == 200
    clock.advance_to(window_end)
    assert api("POST", INFER, key=KEYS["carol"], json=body).status_code == 200


def test_limits_are_checked_before_the_body_is_read(api: Api, clock: ManualClock) -> None:
    clock.advance(1000)
    for _ in range(2):
        api("GET", "/v1/models", key=KEYS["carol"])
    resp = api("POST", INFER, key=KEYS["carol"], content=b"{not json")
    assert_error(resp, 429, "rate_limited")  # not 400: the body was never parsed


def test_no_auth_refusal_without_a_key_even_when_rate_limited(api: Api) -> None:
    resp = api("GET", "/v1/stats", headers={"Authorization": "Bearer " + "z" * 40})
    assert_error(resp, 401, "unauthorized")


def test_an_inference_refused_by_a_limit_reaches_admission_as_demand(
    api: Api, clock: ManualClock, system: ServingSystem
) -> None:
    """A rate-limited inference request is reported to the model's lane (the data plane
    hands it to admission as ``ModelView.refused``); a refused read of another route is
    not, nor is a request for a model that does not exist."""
    lane = system.plane.lanes["digits"]
    lane.refused.clear()
    clock.advance(100)
    body = {"inputs": [[0.0] * 64]}
    for _ in range(3):  # burst 2: the third is refused
        api("POST", "/v1/models/digits/infer", key=KEYS["carol"], json=body)
    api("GET", "/v1/models", key=KEYS["carol"])
    api("POST", "/v1/models/nope/infer", key=KEYS["carol"], json=body)
    assert list(lane.refused) == [("carol", 1)]
    now = system.plane.clock.now()
    assert lane.admission_snapshot(now).models[0].refused == (("carol", 1),)
