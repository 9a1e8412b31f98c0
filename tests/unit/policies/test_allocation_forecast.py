"""One test per clause of the forecaster docstring (coscale.policies.allocation.forecast)."""

from __future__ import annotations

import math

import pytest

from coscale.errors import CoscaleError
from coscale.policies.allocation.forecast import ForecastConfig, Forecaster, ForecastState


def small(**kw: float) -> Forecaster:
    """Period 100 s in 4 bins of 25 s (centres 12.5, 37.5, 62.5, 87.5)."""
    return Forecaster(ForecastConfig(period_s=100.0, season_bins=4, **kw))  # type: ignore[arg-type]


def seasonal(level: float, season: tuple[float, ...], t: float = 0.0) -> ForecastState:
    return ForecastState(t=t, level=level, trend=0.0, first_t=-1e6, season=season)


# ------------------------------------------------------------------ 1. observation


def test_first_observation_sets_the_level() -> None:
    s = small().observe(None, 5.0, 42.0)
    assert (s.t, s.level, s.trend, s.first_t, s.season) == (5.0, 42.0, 0.0, 5.0, None)


def test_observations_not_after_the_last_are_ignored() -> None:
    f = small()
    s = f.observe(None, 5.0, 42.0)
    assert f.observe(s, 5.0, 99.0) is s
    assert f.observe(s, 4.0, 99.0) is s


# ------------------------------------------------------------------ 2. errors


def test_relative_error_of_the_previous_forecast_is_recorded() -> None:
    f = small()
    s = f.observe(f.observe(None, 0.0, 10.0), 10.0, 12.0)
    assert s.errors == pytest.approx((0.2,))  # (12 − 10) / 10


def test_error_window_is_bounded() -> None:
    f = small(error_window=3, min_errors=1)
    s = None
    for i in range(6):
        s = f.observe(s, float(i), 10.0 + i)
    assert s is not None and len(s.errors) == 3


# ------------------------------------------------------------------ 3. level and trend


def test_holt_level_and_trend_update() -> None:
    f = small()
    s = f.observe(f.observe(None, 0.0, 10.0), 10.0, 20.0)
    assert s.level == pytest.approx(15.0)  # 0.5 × 20 + 0.5 × (10 + 0 × 10)
    assert s.trend == pytest.approx(0.05)  # 0.1 × (15 − 10) / 10


# ------------------------------------------------------------------ 4. first period


def test_level_trend_only_during_the_first_period() -> None:
    f = small()
    s = None
    for t in range(0, 100, 10):
        s = f.observe(s, float(t), 10.0 + t)
    assert s is not None and s.season is None
    assert f.season_at(s.season, 37.5) == 0.0


def test_season_is_set_after_one_period_and_the_forecast_is_continuous() -> None:
    f = small()
    never = Forecaster(ForecastConfig(period_s=1e9, season_bins=4))  # same, no season
    s = n = None
    values = {0: 10.0, 10: 10.0, 20: 10.0, 30: 30.0, 40: 30.0, 50: 50.0, 60: 50.0, 70: 50.0}
    values |= {80: 20.0, 90: 20.0, 100: 10.0}
    for t, y in values.items():
        s, n = f.observe(s, float(t), y), never.observe(n, float(t), y)
    assert s is not None and s.season is not None
    # bin means 10, 30, 50, 20 (the 100 s observation is binned, then the season set)
    assert s.season == pytest.approx((-17.5, 2.5, 22.5, -7.5))
    assert f.forecast(s, 100.0) == pytest.approx(never.forecast(n, 100.0))


# ------------------------------------------------------------------ 5. season afterwards


def test_season_bin_moves_by_exponential_smoothing() -> None:
    s = small().observe(seasonal(10.0, (1.0, 2.0, 3.0, 4.0)), 10.0, 20.0)
    # S(10) = 0.9 × s0 + 0.1 × s3 = 1.3; ℓ' = 0.5 × 18.7 + 0.5 × 10 = 14.35
    assert s.level == pytest.approx(14.35)
    assert s.season == pytest.approx((0.2 * (20 - 14.35) + 0.8 * 1.0, 2.0, 3.0, 4.0))


# ------------------------------------------------------------------ 6. reading the season


def test_season_interpolates_between_bin_centres_and_wraps() -> None:
    f = small()
    season = (0.0, 4.0, 8.0, 4.0)
    assert f.season_at(season, 37.5) == pytest.approx(4.0)
    assert f.season_at(season, 50.0) == pytest.approx(6.0)
    assert f.season_at(season, 100.0) == pytest.approx(2.0)  # between 87.5 and 112.5
    assert f.season_at(season, 250.0) == pytest.approx(6.0)  # periodic


# ------------------------------------------------------------------ 7. forecast and peak


def test_forecast_is_level_plus_trend_plus_season_never_negative() -> None:
    f = small()
    s = ForecastState(t=0.0, level=10.0, trend=0.5, first_t=-1e6, season=(0.0, 4.0, 8.0, 4.0))
    assert f.forecast(s, 50.0) == pytest.approx(10.0 + 25.0 + 6.0)
    assert f.forecast(ForecastState(0.0, -5.0, 0.0, 0.0), 1.0) == 0.0
    assert f.forecast(None, 1.0) == 0.0


def test_peak_includes_bin_centres_inside_the_window() -> None:
    f = small()
    s = seasonal(5.0, (0.0, 10.0, 0.0, 0.0))
    assert f.peak(s, 30.0, 45.0) == pytest.approx(15.0)  # at 37.5, not the ends (12)
    assert f.peak(None, 0.0, 10.0) == 0.0


# ------------------------------------------------------------------ 8. margin


def test_margin_is_cold_until_enough_errors() -> None:
    f = small()
    assert f.margin(None) == 0.25
    assert f.margin(ForecastState(0.0, 1.0, 0.0, 0.0, errors=(0.5,) * 7)) == 0.25


def test_margin_is_the_nearest_rank_quantile_clamped() -> None:
    f = small()
    errors = tuple(i / 100 for i in range(1, 21))
    assert f.margin(ForecastState(0.0, 1.0, 0.0, 0.0, errors=errors)) == pytest.approx(0.19)
    assert f.margin(ForecastState(0.0, 1.0, 0.0, 0.0, errors=(-0.3,) * 10)) == 0.05
    assert f.margin(ForecastState(0.0, 1.0, 0.0, 0.0, errors=(3.0,) * 10)) == 1.0


def test_bad_config_is_rejected() -> None:
    with pytest.raises(CoscaleError):
        ForecastConfig(alpha=0.0)
    with pytest.raises(CoscaleError):
        ForecastConfig(period_s=-1.0)
    with pytest.raises(CoscaleError):
        ForecastConfig(min_errors=100, error_window=10)


# ------------------------------------------------------------------ behaviour


def test_tracks_a_ramp_ahead() -> None:
    f = Forecaster()
    s = None
    for i in range(200):
        s = f.observe(s, 15.0 * i, 100.0 + 0.5 * 15.0 * i)
    assert s is not None
    ahead = s.t + 120.0
    assert f.forecast(s, ahead) == pytest.approx(100.0 + 0.5 * ahead, rel=0.01)


def _sine_error(config: ForecastConfig, ahead: float) -> float:
    """Mean absolute error of forecasts ``ahead`` s out over the 4th period of a sine."""
    f = Forecaster(config)

    def y(t: float) -> float:
        return 100.0 + 50.0 * math.sin(2 * math.pi * t / 2000.0)

    s, errors = None, []
    for i in range(800):
        s = f.observe(s, 10.0 * i, y(10.0 * i))
        if i >= 600:
            errors.append(abs(f.forecast(s, s.t + ahead) - y(s.t + ahead)))
    return sum(errors) / len(errors)


def test_a_learned_season_foresees_the_curve() -> None:
    with_season = _sine_error(ForecastConfig(period_s=2000.0, season_bins=20), 300.0)
    level_trend = _sine_error(ForecastConfig(period_s=1e9, season_bins=20), 300.0)
    assert with_season < 4.0  # of a ±50 swing, 300 s (15 % of the period) ahead
    assert with_season < level_trend / 4
