"""The Prometheus exporter: names, types, escaping, histograms, parsing, merging."""

from __future__ import annotations

import math
import threading

import pytest

from coscale.telemetry.prometheus import (
    BATCH_SIZE_BUCKETS,
    CONTENT_TYPE,
    LATENCY_BUCKETS_S,
    Histogram,
    Registry,
    ServingMetrics,
    format_value,
    merge_expositions,
    parse_text,
)


def test_content_type_is_the_text_format_004() -> None:
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3, "3"),
        (3.0, "3"),
        (0.25, "0.25"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (1e-7, "1e-07"),
    ],
)
def test_format_value(value: float, text: str) -> None:
    assert format_value(value) == text


def test_format_value_nan() -> None:
    assert format_value(math.nan) == "NaN"


@pytest.mark.parametrize(
    "name", ["requests_total", "coscale-bad_total", "prom_coscale_x_total", "coscale_9 x_total"]
)
def test_names_must_carry_the_prefix_and_be_valid(name: str) -> None:
    with pytest.raises(ValueError, match="coscale_"):
        Registry().counter(name, "help")


def test_counter_names_end_in_total_and_register_once() -> None:
    r = Registry()
    with pytest.raises(ValueError, match="_total"):
        r.counter("coscale_requests", "help")
    r.counter("coscale_x_total", "help")
    with pytest.raises(ValueError, match="already registered"):
        r.gauge("coscale_x_total", "help")


@pytest.mark.parametrize("label", ["le", "__name", "9x", "a-b"])
def test_bad_label_names(label: str) -> None:
    r = Registry()
    with pytest.raises(ValueError):
        r.histogram("coscale_h", "help", (label,))


def test_counter_only_goes_up() -> None:
    c = Registry().counter("coscale_c_total", "help", ("model",))
    c.inc(model="a")
    c.inc(2.5, model="a")
    assert c.value(model="a") == 3.5
    with pytest.raises(ValueError):
        c.inc(-1, model="a")
    with pytest.raises(ValueError):
        c.inc(math.inf, model="a")
    c.set_to(10, model="a")
    with pytest.raises(ValueError, match="go down"):
        c.set_to(9, model="a")
    assert c.value(model="a") == 10


def test_labels_must_match_exactly() -> None:
    g = Registry().gauge("coscale_g", "help", ("a", "b"))
    with pytest.raises(ValueError, match="takes labels"):
        g.set(1, a="x")
    with pytest.raises(ValueError, match="takes labels"):
        g.set(1, a="x", b="y", c="z")


def test_render_escapes_and_sorts() -> None:
    r = Registry()
    g = r.gauge("coscale_g", "help with \\ and\nnewline", ("name",))
    g.set(2, name='b"q')
    g.set(1, name="a\\b\nc")
    text = r.render()
    assert "# HELP coscale_g help with \\\\ and\\nnewline" in text
    lines = [line for line in text.splitlines() if line.startswith("coscale_g{")]
    assert lines == ['coscale_g{name="a\\\\b\\nc"} 1', 'coscale_g{name="b\\"q"} 2']
    parsed = parse_text(text)
    assert {v["name"] for v, _ in parsed["coscale_g"]} == {'b"q', "a\\b\nc"}


def test_unlabelled_families_render_zero_and_labelled_render_headers_only() -> None:
    r = Registry()
    r.counter("coscale_a_total", "a")
    r.gauge("coscale_b", "b", ("x",))
    text = r.render()
    assert "coscale_a_total 0" in text.splitlines()
    assert "# TYPE coscale_b gauge" in text
    assert not any(line.startswith("coscale_b") for line in text.splitlines())


def test_histogram_buckets_are_cumulative_with_le_inclusive() -> None:
    r = Registry()
    h = r.histogram("coscale_h_seconds", "h", ("model",), buckets=(0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 3.0):
        h.observe(v, model="m")
    h.observe(math.nan, model="m")  # ignored
    parsed = parse_text(r.render())
    buckets = {labels["le"]: v for labels, v in parsed["coscale_h_seconds_bucket"]}
    assert buckets == {"0.1": 2, "1": 4, "+Inf": 5}
    assert parsed["coscale_h_seconds_count"] == [({"model": "m"}, 5)]
    assert parsed["coscale_h_seconds_sum"][0][1] == pytest.approx(4.65)


def test_histogram_rejects_bad_buckets() -> None:
    with pytest.raises(ValueError, match="increasing"):
        Histogram("coscale_h", "h", buckets=(1, 1))
    with pytest.raises(ValueError, match="finite"):
        Histogram("coscale_h", "h", buckets=(1, math.inf))


def test_histogram_quantile_interpolates_like_promql() -> None:
    h = Histogram("coscale_h", "h", buckets=(1.0, 2.0, 4.0))
    assert math.isnan(h.quantile(0.5))
    for v in (0.5, 1.5, 1.5, 3.0):
        h.observe(v)
    # rank 2 of 4 falls in (1, 2] holding ranks 2..3: 1 + 1 × (2 − 1) / 2
    assert h.quantile(0.5) == pytest.approx(1.5)
    assert h.quantile(1.0) == pytest.approx(4.0)
    h.observe(100.0)
    assert h.quantile(1.0) == 4.0  # +Inf bucket → largest finite bound


def test_default_buckets_are_sensible() -> None:
    assert LATENCY_BUCKETS_S[0] <= 0.001 and LATENCY_BUCKETS_S[-1] >= 5
    assert list(LATENCY_BUCKETS_S) == sorted(set(LATENCY_BUCKETS_S))
    assert BATCH_SIZE_BUCKETS[-1] >= 1024


def test_collectors_run_before_render_and_failures_are_counted() -> None:
    r = Registry()
    g = r.gauge("coscale_g", "g")
    calls = []

    def good() -> None:
        calls.append(1)
        g.set(len(calls))

    def bad() -> None:
        raise RuntimeError("boom")

    r.add_collector(good)
    r.add_collector(bad)
    parsed = parse_text(r.render())
    assert parsed["coscale_g"] == [({}, 1)]
    assert parsed["coscale_collector_errors_total"] == [({}, 1)]


def test_serving_metrics_every_name_prefixed_and_parses() -> None:
    m = ServingMetrics()
    m.replica_cpu.set(50, replica="r1")
    m.energy.set_to(12.5, source="model:local-2vcpu")
    m.score.set(0.75, model="digits")
    text = m.render()
    parsed = parse_text(text)
    for line in text.splitlines():
        assert line.startswith("#") or line.startswith("coscale_")
    assert parsed["coscale_energy_joules_total"] == [({"source": "model:local-2vcpu"}, 12.5)]


def test_parse_text_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="line 2"):
        parse_text("# ok\nnot a sample line at all\n")


def test_merge_keeps_the_first_block_of_each_family() -> None:
    first = (
        "# HELP coscale_requests_total a\n# TYPE coscale_requests_total counter\n"
        'coscale_requests_total{model="m"} 3\n'
        "# TYPE coscale_lat_seconds histogram\n"
        'coscale_lat_seconds_bucket{le="+Inf"} 1\ncoscale_lat_seconds_sum 0.1\n'
        "coscale_lat_seconds_count 1\n"
    )
    second = Registry()
    second.counter("coscale_requests_total", "dup").inc(100)
    second.gauge("coscale_other", "o").set(7)
    merged = merge_expositions(first, second.render())
    parsed = parse_text(merged)
    assert parsed["coscale_requests_total"] == [({"model": "m"}, 3)]
    assert parsed["coscale_other"] == [({}, 7)]
    assert parsed["coscale_lat_seconds_count"] == [({}, 1)]
    assert merged.count("# TYPE coscale_requests_total") == 1


def test_concurrent_updates_are_not_lost() -> None:
    c = Registry().counter("coscale_c_total", "c")

    def work() -> None:
        for _ in range(5000):
            c.inc()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.value() == 20000
