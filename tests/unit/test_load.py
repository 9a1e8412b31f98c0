"""coscale.load: arrival schedules, payloads, response classification, loopback-only URLs,
and the open/closed-loop drivers against small in-process ASGI apps (httpx.ASGITransport)."""

from __future__ import annotations

import asyncio
import csv
import json
import math
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from coscale.config import TRACES_DIR
from coscale.errors import CoscaleError, InvalidInputError, UnknownModelError
from coscale.load import (
    MAX_POOL,
    MIN_POOL,
    SHARD_CONNECTIONS,
    LoadConfig,
    RequestResult,
    Schedule,
    _shard_limits,
    build_payloads,
    build_schedule,
    check_url,
    classify_exception,
    classify_status,
    poisson_schedule,
    pool_size,
    run_load,
    schedule_from_workload,
    search_max_load,
    served_quantile_ms,
)
from coscale.sim.workloads import Workload
from coscale.types import Outcome

ROOT = Path(__file__).resolve().parents[2]
AZURE_CODE = TRACES_DIR / "azure_llm_2023" / "AzureLLMInferenceTrace_code.csv"


# ------------------------------------------------------------------------------ URLs


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000", "http://127.8.9.10", "http://localhost:1/", "http://[::1]:8000"],
)
def test_loopback_urls_are_accepted(url: str) -> None:
    assert check_url(url) == url.rstrip("/")


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://10.0.0.1:8000", "non_loopback_url"),
        ("http://192.168.1.2", "non_loopback_url"),
        ("http://0.0.0.0:8000", "non_loopback_url"),
        ("http://example.com", "non_loopback_url"),
        ("http://[2001:db8::1]:80", "non_loopback_url"),
        ("ftp://127.0.0.1", "bad_url"),
        ("127.0.0.1:8000", "bad_url"),
    ],
)
def test_other_urls_are_refused(url: str, code: str) -> None:
    with pytest.raises(CoscaleError) as info:
        check_url(url)
    assert info.value.code == code
    assert info.value.fix


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from coscale.cli import main; main()", "load", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
        cwd=ROOT,
    )


def test_cli_refuses_a_remote_url_and_bad_flags_with_exit_2() -> None:
    remote = _cli("http://10.1.2.3:8000", "--model", "m", "--rate", "5", "--duration", "1")
    assert remote.returncode == 2
    assert "non_loopback_url" in remote.stderr and "10.1.2.3" in remote.stderr
    both = _cli("http://127.0.0.1:9", "--model", "m", "--rate", "5", "--concurrency", "2")
    assert both.returncode == 2
    assert "exactly one of --trace, --rate, --concurrency" in both.stderr


def test_config_needs_exactly_one_mode_and_a_duration() -> None:
    base = {"url": "http://127.0.0.1:1", "model": "m"}
    with pytest.raises(InvalidInputError, match="exactly one"):
        LoadConfig.build(**base)
    with pytest.raises(InvalidInputError, match="needs --duration"):
        LoadConfig.build(**base, rate_rps=5)
    with pytest.raises(InvalidInputError, match="only to --trace"):
        LoadConfig.build(**base, rate_rps=5, duration_s=1, speedup=2)
    with pytest.raises(InvalidInputError, match="items"):
        LoadConfig.build(**base, concurrency=2, duration_s=1, items=0)
    assert LoadConfig.build(**base, trace="azure-code").mode == "trace"
    assert LoadConfig.build(**base, concurrency=3, duration_s=1).mode == "closed"


# ------------------------------------------------------------------------------ schedules


def _azure_seconds(path: Path) -> np.ndarray:
    """Seconds from the first request, parsed here independently of coscale.sim.traces."""
    stamps = []
    with path.open() as fh:
        for row in csv.DictReader(fh):
            day, frac = row["TIMESTAMP"].split(".")
            base = datetime.strptime(day, "%Y-%m-%d %H:%M:%S").timestamp()
            stamps.append(base + int(frac) / 10 ** len(frac))
    seconds = np.sort(np.array(stamps))
    return seconds - seconds[0]


def test_trace_schedule_replays_the_window_sped_up() -> None:
    start, duration, speedup = 100.0, 20.0, 5.0
    config = LoadConfig.build(
        url="http://127.0.0.1:1",
        model="m",
        trace="azure-code",
        start_s=start,
        duration_s=duration,
        speedup=speedup,
    )
    schedule = build_schedule(config)
    assert isinstance(schedule, Schedule)
    trace = _azure_seconds(AZURE_CODE)
    inside = trace[(trace >= start) & (trace < start + duration * speedup)]
    expected = (inside - start) / speedup
    assert len(schedule) == len(inside) > 50
    np.testing.assert_allclose(schedule.times, expected, atol=1e-6)
    assert schedule.times.max() < duration and schedule.duration_s == duration
    assert not schedule.truncated
    assert schedule.offered_rps == pytest.approx(len(inside) / duration)
    assert schedule.seq_lens.max() > 256  # the trace's context tokens, not clamped yet


def test_schedule_is_bounded_in_time_and_count() -> None:
    times = np.arange(0.0, 10.0, 0.5)  # 20 arrivals, 2 per second
    workload = Workload(times, np.arange(20), np.zeros(20), duration_s=10.0)
    fast = schedule_from_workload(workload, speedup=2.0)
    np.testing.assert_allclose(fast.times, times / 2)
    assert fast.duration_s == 5.0
    cut = schedule_from_workload(workload, speedup=2.0, duration_s=2.0)
    assert list(cut.times) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert list(cut.seq_lens) == list(range(8))
    capped = schedule_from_workload(workload, max_requests=5)
    assert len(capped) == 5 and capped.planned == 20 and capped.truncated
    with pytest.raises(InvalidInputError):
        schedule_from_workload(workload, speedup=0.0)


def test_poisson_schedule_is_seeded_and_near_its_rate() -> None:
    a = poisson_schedule(200.0, 10.0, seed=3)
    b = poisson_schedule(200.0, 10.0, seed=3)
    c = poisson_schedule(200.0, 10.0, seed=4)
    np.testing.assert_array_equal(a.times, b.times)
    assert not np.array_equal(a.times, c.times)
    assert abs(len(a) - 2000) < 5 * math.sqrt(2000)
    assert np.all(np.diff(a.times) >= 0) and a.times.max() < 10.0
    gaps = np.diff(a.times)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.1)  # exponential gaps


def test_pool_size_follows_littles_law_within_bounds() -> None:
    def sched(rate: float) -> Schedule:
        return poisson_schedule(rate, 5.0, seed=0)

    assert pool_size(None, concurrency=7, slo_s=None, timeout_s=30) == 7
    assert pool_size(sched(5), concurrency=None, slo_s=0.05, timeout_s=30) == MIN_POOL
    mid = pool_size(sched(200), concurrency=None, slo_s=0.2, timeout_s=30)
    assert 80 <= mid <= 120  # ~peak 230/s × 0.2 s × 2
    assert pool_size(sched(5000), concurrency=None, slo_s=1.0, timeout_s=30) == MAX_POOL
    sizes = [lim.max_connections for lim in _shard_limits(2 * SHARD_CONNECTIONS + 1)]
    assert sizes == [SHARD_CONNECTIONS, SHARD_CONNECTIONS, 1]


# ------------------------------------------------------------------------------ payloads


def test_digits_payloads_are_real_images_with_their_labels() -> None:
    from sklearn.datasets import load_digits

    data = load_digits()
    rows = {tuple(int(v) for v in r): int(y) for r, y in zip(data.data, data.target, strict=True)}
    bank = build_payloads("digits-cnn", items=3, seed=1)
    assert bank.labels is not None and len(bank.bodies) == len(bank.labels)
    seen = set()
    for body, labels in zip(bank.bodies, bank.labels, strict=True):
        items = json.loads(body)["inputs"]
        assert len(items) == 3 == len(labels)
        for item, label in zip(items, labels, strict=True):
            assert len(item) == 64 and all(isinstance(v, int) and 0 <= v <= 16 for v in item)
            assert rows[tuple(item)] == label
            seen.add(tuple(item))
    assert len(seen) == 3 * len(bank.bodies)  # distinct images, no repeats within the bank
    assert build_payloads("digits-cnn", items=3, seed=1).bodies == bank.bodies
    assert build_payloads("digits-cnn", items=3, seed=2).bodies != bank.bodies


def test_minilm_payloads_follow_the_trace_token_counts() -> None:
    from coscale.accel.minilm import TextTokenizer, model_dir

    seq = np.array([12, 40, 40, 120, 5000], dtype=np.int32)
    bank = build_payloads("minilm", items=2, seed=0, seq_lens=seq)
    tokenizer = TextTokenizer(model_dir(), 256)
    for j, length in enumerate(seq.tolist()):
        texts = json.loads(bank.bodies[bank.pick(j, length)])["inputs"]
        assert len(texts) == 2
        want = min(length, 256)  # clamped to the model's maximum
        for text in texts:
            assert want - 4 <= tokenizer.count(text) <= want, (length, text)
            assert text[0].isupper()  # real sentences, not token soup
    plain = build_payloads("minilm", items=4, seed=0)
    texts = json.loads(plain.bodies[0])["inputs"]
    assert len(texts) == 4 and all(t.endswith((".", "!", "?")) for t in texts)


def _identity_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, "n"])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_file_model_payloads_match_the_input_shape(tmp_path: Path) -> None:
    path = _identity_onnx(tmp_path / "id.onnx")
    bank = build_payloads(str(path), items=2, seed=5, bank=3)
    for body in bank.bodies:
        items = np.array(json.loads(body)["inputs"])
        assert items.shape == (2, 3, 16)  # symbolic axis → 16, like the profiler's inputs
    assert build_payloads(str(path), items=2, seed=5, bank=3).bodies == bank.bodies
    published = [
        {"name": "ids", "shape": [2, None], "dtype": "int64"},
        {"name": "x", "shape": [4], "dtype": "float32"},
    ]
    bank = build_payloads("model.onnx", items=3, seed=0, input_specs=published, bank=2)
    items = json.loads(bank.bodies[0])["inputs"]
    assert len(items) == 3 and set(items[0]) == {"ids", "x"}
    assert np.array(items[0]["ids"]).shape == (2, 16) and len(items[0]["x"]) == 4
    with pytest.raises(CoscaleError, match="no such file"):
        build_payloads(str(tmp_path / "missing.onnx"), items=1, seed=0)


# ------------------------------------------------------------------------------ classification


@pytest.mark.parametrize(
    ("status", "body", "outcome", "code"),
    [
        (200, b'{"outputs": []}', Outcome.COMPLETED, ""),
        (429, b'{"error": "overloaded", "message": "m"}', Outcome.REJECTED, "overloaded"),
        (429, b"", Outcome.REJECTED, "http_429"),
        (400, b'{"error": "malformed_json"}', Outcome.FAILED, "malformed_json"),
        (404, b'{"error": "unknown_model"}', Outcome.FAILED, "unknown_model"),
        (413, b'{"error": "payload_too_large"}', Outcome.FAILED, "payload_too_large"),
        (422, b'{"error": "invalid_input"}', Outcome.FAILED, "invalid_input"),
        (500, b"Internal Server Error", Outcome.FAILED, "http_500"),
        (502, b'{"error": "replica_failure"}', Outcome.FAILED, "replica_failure"),
        (503, b'{"error": "not_ready"}', Outcome.FAILED, "not_ready"),
        (504, b'{"error": "deadline_exceeded"}', Outcome.TIMED_OUT, "deadline_exceeded"),
    ],
)
def test_statuses_are_classified(status: int, body: bytes, outcome: Outcome, code: str) -> None:
    assert classify_status(status, body) == (outcome, code)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (TimeoutError(), "client_timeout"),
        (httpx.ReadTimeout("slow"), "client_timeout"),
        (httpx.PoolTimeout("pool"), "client_timeout"),
        (httpx.ConnectError("refused"), "connect_error"),
        (httpx.RemoteProtocolError("closed"), "connection_closed"),
        (httpx.ReadError("reset"), "connection_error"),
        (ValueError("odd"), "client_error:ValueError"),
    ],
)
def test_exceptions_are_classified_as_failures(exc: BaseException, code: str) -> None:
    assert classify_exception(exc) == (Outcome.FAILED, code)


def test_served_quantile_counts_unanswered_requests_as_too_slow() -> None:
    def recs(failed: int) -> list[RequestResult]:
        out = []
        for i in range(100):
            ok = i >= failed
            out.append(
                RequestResult(
                    i,
                    0.0,
                    finish=(i + 1) / 1000.0,
                    outcome=Outcome.COMPLETED if ok else Outcome.FAILED,
                )
            )
        return out

    assert served_quantile_ms(recs(0)) == pytest.approx(99.0)
    assert served_quantile_ms(recs(1)) == pytest.approx(100.0)
    assert served_quantile_ms(recs(2)) == math.inf
    assert served_quantile_ms([]) == 0.0


# ------------------------------------------------------------------------------ drivers


class FakeServer:
    """A raw ASGI app: /v1/models, /v1/stats, and an infer endpoint whose behaviour per
    request comes from ``behave(n)`` (n = 0, 1, … in arrival order)."""

    def __init__(self, behave: Callable[[int], tuple[str, float]]) -> None:
        self.behave = behave
        self.calls = 0
        self.active = 0
        self.peak = 0
        self.completed = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        if path == "/v1/models":
            models = [{"name": "digits", "source": "digits-cnn", "slo_ms": 100.0}]
            await self._reply(send, 200, {"models": models})
        elif path == "/v1/stats":
            await self._reply(send, 200, {"completed": self.completed, "preset": "fake"})
        elif path == "/v1/models/digits/infer":
            await self._infer(send, json.loads(body)["inputs"])
        else:
            await self._reply(send, 404, {"error": "not_found", "message": path})

    async def _infer(self, send: Any, inputs: list[Any]) -> None:
        n, self.calls = self.calls, self.calls + 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            kind, delay = self.behave(n)
            await asyncio.sleep(delay)
        finally:
            self.active -= 1
        if kind == "ok":
            self.completed += 1
            await self._reply(send, 200, {"outputs": [{"label": 0}] * len(inputs)})
        elif kind == "short":
            await self._reply(send, 200, {"outputs": []})
        elif kind == "plain500":
            await send({"type": "http.response.start", "status": 500, "headers": []})
            await send({"type": "http.response.body", "body": b"boom"})
        else:
            status = {"overloaded": 429, "not_ready": 503, "deadline_exceeded": 504}[kind]
            await self._reply(send, status, {"error": kind, "message": kind})

    @staticmethod
    async def _reply(send: Any, status: int, data: object) -> None:
        payload = json.dumps(data).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _run(app: FakeServer, **config: Any) -> Any:
    cfg = LoadConfig.build(url="http://127.0.0.1:9", model="digits", **config)
    return asyncio.run(run_load(cfg, transport=httpx.ASGITransport(app=app)))


def test_open_loop_never_waits_for_earlier_responses() -> None:
    app = FakeServer(lambda n: ("ok", 0.4))  # every answer takes 0.4 s
    result = _run(app, rate_rps=40, duration_s=0.5, seed=1)
    s = result.summary
    n = len(poisson_schedule(40, 0.5, seed=1))
    assert s.requests == n == app.calls and n >= 8
    assert s.completed == n and s.lost == 0
    lags = [r.sent - r.scheduled for r in result.records]
    assert max(lags) < 0.15  # sent on schedule, not after the previous answer
    assert app.peak >= 5  # many in flight at once
    assert s.makespan_s < 0.5 + 0.4 + 0.5  # a closed loop would need n × 0.4 s
    assert s.latency_ms.p50 >= 400.0
    assert s.extra["accuracy"] is not None and s.extra["mode"] == "rate"
    assert s.extra["server"]["completed"] == n and s.preset == "fake"


def test_every_request_gets_exactly_one_outcome() -> None:
    kinds = ["ok", "overloaded", "not_ready", "plain500", "short", "deadline_exceeded", "hang"]

    def behave(n: int) -> tuple[str, float]:
        kind = kinds[n % len(kinds)]
        return ("ok", 5.0) if kind == "hang" else (kind, 0.0)

    app = FakeServer(behave)
    result = _run(app, concurrency=2, duration_s=0.8, timeout_s=0.3)
    s = result.summary
    assert s.requests == len(result.records) == app.calls >= len(kinds)
    assert s.requests == s.completed + s.failed + s.rejected and s.lost == 0
    assert all(r.outcome is not None and math.isfinite(r.finish) for r in result.records)
    errors = s.extra["errors"]
    by_kind = {k: sum(1 for i in range(app.calls) if kinds[i % len(kinds)] == k) for k in kinds}
    assert errors.get("overloaded") == by_kind["overloaded"] == s.rejected
    assert errors.get("not_ready") == by_kind["not_ready"]
    assert errors.get("http_500") == by_kind["plain500"]
    assert errors.get("bad_response") == by_kind["short"]
    assert errors.get("deadline_exceeded") == by_kind["deadline_exceeded"]
    assert errors.get("client_timeout") == by_kind["hang"] >= 1
    assert s.completed == by_kind["ok"]
    assert s.extra["statuses"]["0"] == by_kind["hang"]  # no response at all
    assert s.extra["timed_out"] == by_kind["deadline_exceeded"]


def test_closed_loop_keeps_exactly_n_requests_in_flight() -> None:
    app = FakeServer(lambda n: ("ok", 0.05))
    result = _run(app, concurrency=4, duration_s=0.6, items=3)
    s = result.summary
    assert app.peak == 4
    assert 12 <= s.requests <= 4 * 0.6 / 0.05 + 4
    assert s.completed == s.requests and s.lost == 0
    assert s.extra["items_completed"] == 3 * s.completed
    assert s.extra["connections"] == 4 and s.extra["dispatch_lag_ms"] is None
    starts = sorted(r.sent for r in result.records)
    assert starts[-1] < 0.6  # nothing sent after the duration


def test_unknown_model_and_unreachable_server_are_user_errors() -> None:
    app = FakeServer(lambda n: ("ok", 0.0))
    cfg = LoadConfig.build(url="http://127.0.0.1:9", model="nope", concurrency=1, duration_s=0.1)
    with pytest.raises(UnknownModelError, match="digits"):
        asyncio.run(run_load(cfg, transport=httpx.ASGITransport(app=app)))
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = LoadConfig.build(url=f"http://127.0.0.1:{port}", model="m", rate_rps=1, duration_s=1)
    with pytest.raises(CoscaleError) as info:
        asyncio.run(run_load(cfg))
    assert info.value.code == "unreachable"


# ------------------------------------------------------------------------------ search


def _search(threshold: float, **kwargs: Any) -> Any:
    async def trial(x: float) -> float:
        return x

    return asyncio.run(search_max_load(trial, lambda x: x <= threshold, **kwargs))


def test_search_brackets_then_bisects() -> None:
    found = _search(37.3, start=1.0, grow=2.0, refine=3)
    assert found.best is not None and 37.3 / 2 ** (1 / 8) <= found.best <= 37.3
    levels = [x for x, _, _ in found.trials]
    assert levels[:7] == [1, 2, 4, 8, 16, 32, 64] and len(levels) == 10
    down = _search(3.0, start=100.0, grow=2.0, refine=2)
    assert down.best is not None and 3.0 / 2**0.25 <= down.best <= 3.0
    assert _search(0.001, start=1.0, max_trials=4).best is None
    capped = _search(1e9, start=1.0, grow=10.0, ceiling=500.0)
    assert capped.best == 500.0 and capped.trials[-1][0] == 500.0


def test_hooks_run_during_the_load_and_progress_ends_complete() -> None:
    app = FakeServer(lambda n: ("ok", 0.02))
    fired: list[float] = []
    seen: list[Any] = []
    cfg = LoadConfig.build(url="http://127.0.0.1:9", model="digits", rate_rps=50, duration_s=0.6)
    loop_time: list[float] = []

    async def go() -> Any:
        loop_time.append(asyncio.get_running_loop().time())
        return await run_load(
            cfg,
            transport=httpx.ASGITransport(app=app),
            hooks=[(0.3, lambda: fired.append(asyncio.get_running_loop().time()))],
            on_progress=seen.append,
        )

    result = asyncio.run(go())
    assert len(fired) == 1 and 0.2 <= fired[0] - loop_time[0] <= 1.0
    assert seen and seen[-1].answered == seen[-1].sent == result.summary.requests
    assert seen[-1].completed == result.summary.completed
