"""The live telemetry's record ring: fixed memory, eviction order, exact read-back."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from coscale.telemetry import records as records_module
from coscale.telemetry.records import RECORD_BYTES, RecordRing, RequestRecord, Telemetry
from coscale.telemetry.summary import OUTCOME_CODES, RequestRecords, summarize
from coscale.types import Outcome

OUTCOMES = (Outcome.COMPLETED, Outcome.COMPLETED, Outcome.FAILED, Outcome.REJECTED)


def make(i: int, *, replica: str | None = None) -> RequestRecord:
    """Record ``i``: a deterministic mix of outcomes, tenants, models and replicas."""
    outcome = OUTCOMES[i % len(OUTCOMES)] if i % 7 else Outcome.TIMED_OUT
    started = outcome is not Outcome.REJECTED
    return RequestRecord(
        id=i,
        model=("digits", "minilm")[i % 2],
        tenant=("a", "b", "c")[i % 3],
        arrival=i * 0.01,
        deadline=i * 0.01 + 0.05,
        finish=i * 0.01 + 0.001 * (i % 90),
        outcome=outcome,
        items=1 + i % 4,
        queue_s=0.0005 * (i % 5) if started else math.nan,
        batch_size=8 if started else 0,
        service_s=0.002 if started else math.nan,
        replica=replica if replica is not None else f"r{i % 3:05d}",
        variant="onnx-fp32" if started else "",
        node_type="cpu-small" if started else "",
        error="overloaded" if outcome is Outcome.REJECTED else "",
        seq_len=(0, 12 + i % 200)[i % 2],
    )


def same(a: RequestRecord, b: RequestRecord) -> bool:
    """Field-wise equality with NaN equal to NaN."""
    for key, x in a.to_dict().items():
        y = b.to_dict()[key]
        if isinstance(x, float) and math.isnan(x):
            if not (isinstance(y, float) and math.isnan(y)):
                return False
        elif x != y:
            return False
    return True


def test_records_read_back_exactly() -> None:
    ring = RecordRing(50)
    rows = [make(i) for i in range(30)]
    for r in rows:
        assert ring.append(r) is False
    assert len(ring) == 30
    assert all(same(a, b) for a, b in zip(ring, rows, strict=True))
    assert same(ring[-1], rows[-1]) and same(ring[0], rows[0])
    assert [r.id for r in ring[5:8]] == [5, 6, 7]
    assert [r.seq_len for r in ring[:4]] == [0, 13, 0, 15]
    assert ring.columns()["seq_len"].tolist() == [r.seq_len for r in rows]
    assert [r.id for r in reversed(ring)] == list(range(29, -1, -1))
    with pytest.raises(IndexError):
        ring[30]


def test_full_ring_evicts_the_oldest_in_order() -> None:
    cap = 100
    ring = RecordRing(cap)
    evicted = sum(ring.append(make(i)) for i in range(250))
    assert evicted == 150
    assert len(ring) == cap
    assert [r.id for r in ring] == list(range(150, 250))
    assert same(ring[0], make(150)) and same(ring[-1], make(249))
    assert [r.id for r in reversed(ring)][:3] == [249, 248, 247]


def test_column_memory_is_fixed_from_construction() -> None:
    """The arrays are allocated (and written) at construction: adding 2× capacity
    records changes neither their size nor the traced memory beyond a few KiB."""
    cap = 20_000
    tracemalloc.start()
    try:
        telemetry = Telemetry(ring_capacity=cap)
        nbytes = telemetry.ring.nbytes
        assert nbytes == cap * RECORD_BYTES
        for i in range(100):  # counters and histograms of every (model, tenant) exist now
            telemetry.record(make(i))
        before, _ = tracemalloc.get_traced_memory()
        for i in range(100, 2 * cap):
            telemetry.record(make(i))
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert telemetry.ring.nbytes == nbytes
    assert telemetry.evicted == 2 * cap - cap
    # a deque of Python records grows ~300 bytes per record (≈ 6 MB here)
    assert after - before < 64 * 1024, f"ring grew by {after - before} bytes"


def test_string_table_stays_bounded_with_replica_churn(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new replica id on every record (endless replacements): the table is compacted
    to the strings still in the ring, and every record still reads back exactly."""
    monkeypatch.setattr(records_module, "STRING_TABLE_COMPACT", 64)
    ring = RecordRing(20)
    rows = [make(i, replica=f"r{i:05d}") for i in range(2_000)]
    for r in rows:
        ring.append(r)
        assert ring.strings <= 128
    assert all(same(a, b) for a, b in zip(ring, rows[-20:], strict=True))


def _reference(rows: list[RequestRecord]) -> RequestRecords:
    return RequestRecords(
        np.array([r.arrival for r in rows], np.float64),
        np.array([r.finish for r in rows], np.float64),
        np.array([OUTCOME_CODES[r.outcome] for r in rows], np.int8),
        np.array([r.deadline for r in rows], np.float64),
    )


@pytest.mark.parametrize("tenant", [None, "a", "b"])
def test_summary_equals_summarize_of_the_records(tenant: str | None) -> None:
    telemetry = Telemetry(ring_capacity=1_000)
    rows = [make(i) for i in range(600)]
    for r in rows:
        telemetry.record(r)
    mine = [r for r in rows if tenant is None or r.tenant == tenant]
    got = telemetry.summary(tenant, preset="p", scenario="s")
    assert got == summarize(
        _reference(mine), preset="p", scenario="s", cost_usd=0.0, energy_j=0.0, extra={}
    )
    assert [r.id for r in telemetry.records(tenant)] == [r.id for r in mine]
    assert [r.id for r in telemetry.records(tenant, model="minilm")] == [
        r.id for r in mine if r.model == "minilm"
    ]
    assert telemetry.records("nobody") == []


def test_summary_after_overflow_uses_exact_counters() -> None:
    cap = 200
    telemetry = Telemetry(ring_capacity=cap)
    rows = [make(i) for i in range(700)]
    for r in rows:
        telemetry.record(r)
    s = telemetry.summary(preset="p", scenario="s")
    exact = summarize(
        _reference(rows), preset="p", scenario="s", cost_usd=0.0, energy_j=0.0, extra={}
    )
    window = summarize(
        _reference(rows[-cap:]), preset="p", scenario="s", cost_usd=0.0, energy_j=0.0, extra={}
    )
    for name in ("requests", "completed", "failed", "rejected", "lost", "makespan_s"):
        assert getattr(s, name) == getattr(exact, name), name
    for name in ("throughput_rps", "slo_attainment", "reliability"):
        assert getattr(s, name) == pytest.approx(getattr(exact, name)), name
    assert s.latency_ms == window.latency_ms
    assert s.extra["latency_window"] == cap
    assert s.extra["timed_out"] == exact.extra["timed_out"]


def test_newest_since_equals_the_reverse_scan() -> None:
    """The score's window: newest first, stopping at the first record older than start
    (finish is not strictly ordered: make() answers some requests out of order)."""
    from coscale.telemetry.score import _newest

    ring = RecordRing(300)
    for i in range(500):
        ring.append(make(i))
    for start in (-1.0, 2.0, 4.5, 4.9, 5.3, 99.0):
        scanned = []
        for r in reversed(ring):
            if r.finish < start:
                break
            scanned.append(r)
        assert [r.id for r in ring.newest_since(start)] == [r.id for r in scanned]
        assert [r.id for r in _newest(ring, start)] == [r.id for r in scanned]
        assert [r.id for r in _newest(list(ring), start)] == [r.id for r in scanned]
