"""Length-sorted runs of a text batch (coscale.accel.textbatch)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coscale.accel.textbatch import length_runs, padded_length, run_by_length
from coscale.sim.profiles import batch_latency, scale_table, truncate_table
from coscale.types import Batch, LatencyTable, Request


def _cost(lengths: list[int], runs: list[np.ndarray], overhead: float) -> float:
    return sum(overhead + len(r) * max(lengths[i] for i in r) for r in runs)


def _brute_best(lengths: list[int], overhead: float) -> float:
    """Least cost over every way of cutting the sorted lengths into contiguous runs."""
    values = sorted(lengths)
    n = len(values)
    best = float("inf")
    for cuts in itertools.product((False, True), repeat=n - 1):
        cost, start = 0.0, 0
        for i in range(1, n + 1):
            if i == n or cuts[i - 1]:
                cost += overhead + (i - start) * values[i - 1]
                start = i
        best = min(best, cost)
    return best


@given(st.lists(st.integers(2, 64), min_size=1, max_size=9), st.sampled_from([0.0, 8.0, 50.0]))
def test_runs_partition_the_batch_at_the_least_modelled_cost(
    lengths: list[int], overhead: float
) -> None:
    runs = length_runs(lengths, overhead)
    positions = sorted(int(i) for r in runs for i in r)
    assert positions == list(range(len(lengths)))
    longest = [max(lengths[i] for i in r) for r in runs]
    assert longest == sorted(longest)  # runs in increasing length
    assert _cost(lengths, runs, overhead) == pytest.approx(_brute_best(lengths, overhead))


def test_equal_lengths_and_a_short_outlier() -> None:
    assert [list(r) for r in length_runs([16] * 5)] == [[0, 1, 2, 3, 4]]
    assert length_runs([]) == []
    # one 200-token text among 31 of 20 tokens: padding all to 200 costs 6,400 slots,
    # two runs 8 + 31 × 20 + 8 + 200 = 836
    runs = length_runs([20] * 15 + [200] + [20] * 16)
    assert [len(r) for r in runs] == [31, 1] and list(runs[1]) == [15]
    # a large overhead keeps everything in one run
    assert len(length_runs([20, 21, 22, 23], overhead=100.0)) == 1


def test_run_by_length_returns_rows_in_their_order_cut_to_each_runs_longest() -> None:
    rng = np.random.default_rng(3)
    lengths = np.array([3, 40, 5, 5, 38, 12, 3])
    width = int(lengths.max())
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1, 1000, size=(len(lengths), width)) * mask
    seen: list[int] = []

    def masked_mean(feeds: dict[str, np.ndarray]) -> np.ndarray:
        m = feeds["attention_mask"]
        seen.append(m.shape[1])
        assert (m.sum(axis=1) > 0).all() and m[:, -1].any()  # cut to the run's longest
        mean = (feeds["input_ids"] * m).sum(axis=1) / m.sum(axis=1)
        return np.stack([mean, m.sum(axis=1)], axis=1).astype(np.float32)

    out = run_by_length({"input_ids": ids, "attention_mask": mask}, masked_mean, 2)
    whole = masked_mean({"input_ids": ids, "attention_mask": mask})
    np.testing.assert_allclose(out, whole, rtol=1e-6)
    assert seen[:-1] == [5, 12, 40]  # runs (3, 3, 5, 5), (12), (38, 40); then the whole


def test_padded_length_is_the_slots_per_item_of_the_runs() -> None:
    assert padded_length([]) == 0
    assert padded_length([37]) == 37
    assert padded_length([16, 16, 16]) == 16
    # 31 texts of 20 tokens and one of 200: two runs, (31 × 20 + 200) / 32 = 25.6 → 26
    assert padded_length([20] * 31 + [200]) == 26


def test_a_batch_of_mixed_lengths_costs_its_runs() -> None:
    table = LatencyTable((1, 8, 32), (16, 256), ((1.0, 8.0, 32.0), (16.0, 128.0, 512.0)))

    def batch(*parts: tuple[int, int]) -> Batch:
        return Batch(
            "m",
            tuple(Request(i, "m", 0.0, 1.0, items=n, seq_len=s) for i, (n, s) in enumerate(parts)),
        )

    assert batch_latency(table, batch((4, 16), (4, 16))) == table.latency(8, 16)
    assert batch_latency(table, batch()) == table.latency(0, 0)
    # 31 items at 16 tokens and one at 256: 31 × 1.0 + 16 rather than 32 × 16
    mixed = batch((31, 16), (1, 256))
    assert batch_latency(table, mixed) == pytest.approx(
        table.latency(31, 16) + table.latency(1, 256)
    )
    assert batch_latency(table, mixed) < table.latency(32, 256) / 10
    # a backend's per-call cost (Ray: 0.85 ms) is in every cell of a scaled table, but a
    # batch is one call whatever its runs: paid once, not once per run
    ray = scale_table(table, 2.0, overhead_s=0.5)
    assert ray.overhead_s == 0.5 and truncate_table(ray, 8).overhead_s == 0.5
    assert batch_latency(ray, mixed) == pytest.approx(
        table.latency(31, 16) / 2 + table.latency(1, 256) / 2 + 0.5
    )
    assert batch_latency(ray, batch((4, 16), (4, 16))) == pytest.approx(
        table.latency(8, 16) / 2 + 0.5
    )
