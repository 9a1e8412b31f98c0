"""Token bucket and quota (coscale.policies.ratelimit): one test per docstring clause."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coscale.errors import CoscaleError
from coscale.policies.ratelimit import DEFAULT_BURST_S, Quota, TokenBucket, default_burst


def test_a_new_bucket_is_full_and_takes_burst_requests_at_once() -> None:
    bucket = TokenBucket.full(rate=2.0, burst=3.0, now=10.0)
    allowed = []
    for _ in range(5):
        take = bucket.take(10.0)
        allowed.append(take.allowed)
        bucket = take.state
    assert allowed == [True, True, True, False, False]


def test_refused_retry_after_is_the_wait_for_one_whole_token() -> None:
    bucket = TokenBucket.full(rate=4.0, burst=1.0, now=0.0).take(0.0).state
    take = bucket.take(0.1)  # 0.4 tokens back
    assert not take.allowed
    assert take.retry_after_s == pytest.approx((1 - 0.4) / 4.0)
    assert take.state.tokens == pytest.approx(0.4)  # refill counted, nothing consumed
    again = take.state.take(0.1 + take.retry_after_s)
    assert again.allowed


def test_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket.full(rate=10.0, burst=2.0, now=0.0)
    bucket = bucket.take(0.0).state.take(0.0).state
    assert bucket.tokens == pytest.approx(0.0)
    later = bucket.take(100.0)  # 1,000 tokens' worth of time
    assert later.allowed and later.state.tokens == pytest.approx(1.0)


def test_a_clock_stepping_back_refills_nothing() -> None:
    bucket = TokenBucket.full(rate=1.0, burst=1.0, now=5.0).take(5.0).state
    take = bucket.take(4.0)
    assert not take.allowed and take.state.tokens == 0.0 and take.state.last == 5.0


def test_take_does_not_mutate() -> None:
    bucket = TokenBucket.full(rate=1.0, burst=2.0, now=0.0)
    bucket.take(0.0)
    assert bucket.tokens == 2.0


def test_default_burst_is_one_second_of_rate_at_least_one() -> None:
    assert DEFAULT_BURST_S == 1.0
    assert default_burst(0.2) == 1.0
    assert default_burst(7.5) == 7.5
    assert TokenBucket.full(rate=5.0, burst=None, now=0.0).burst == 5.0


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1.0), (-1.0, 1.0), (math.inf, 1.0), (1.0, 0.5)])
def test_bad_parameters_are_refused(rate: float, burst: float) -> None:
    with pytest.raises(CoscaleError):
        TokenBucket.full(rate=rate, burst=burst, now=0.0)


@settings(max_examples=200, deadline=None, database=None)
@given(
    rate=st.floats(0.1, 100.0),
    burst=st.floats(1.0, 50.0),
    gaps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=200),
)
def test_never_more_than_burst_plus_rate_times_window(
    rate: float, burst: float, gaps: list[float]
) -> None:
    bucket = TokenBucket.full(rate=rate, burst=burst, now=0.0)
    now = 0.0
    accepted = 0
    for gap in gaps:
        now += gap
        take = bucket.take(now)
        bucket = take.state
        accepted += take.allowed
    assert accepted <= burst + rate * now + 1e-9


def test_quota_counts_up_to_its_limit_for_the_run() -> None:
    quota = Quota(limit=2, period_s=None, origin=0.0)
    verdicts = []
    for t in (0.0, 1e6, 2e6):
        take = quota.take(t)
        verdicts.append(take.allowed)
        quota = take.state
    assert verdicts == [True, True, False]
    assert quota.take(3e6).retry_after_s == math.inf
    assert quota.remaining(5.0) == 0


def test_quota_windows_restart_and_retry_after_points_to_the_next_one() -> None:
    quota = Quota(limit=1, period_s=60.0, origin=100.0)
    quota = quota.take(110.0).state
    refused = quota.take(130.0)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(30.0)
    assert quota.remaining(159.0) == 0 and quota.remaining(160.0) == 1
    fresh = refused.state.take(160.0)
    assert fresh.allowed and fresh.state.window == 1 and fresh.state.used == 1


def test_quota_before_the_origin_counts_in_window_zero() -> None:
    quota = Quota(limit=1, period_s=10.0, origin=100.0)
    assert quota.window_at(50.0) == 0 and quota.window_at(125.0) == 2


@pytest.mark.parametrize(("limit", "period"), [(0, None), (1, 0.0), (1, -5.0), (1, math.nan)])
def test_bad_quota_parameters_are_refused(limit: int, period: float | None) -> None:
    with pytest.raises(CoscaleError):
        Quota(limit=limit, period_s=period, origin=0.0)
