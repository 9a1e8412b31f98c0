"""Online demand forecast: additive Holt-Winters with a phase-binned season (pure).

For one model, from the arrival rates it is shown, :class:`Forecaster` keeps a level
``ℓ``, a trend ``b`` (per second) and a seasonal profile ``s`` over ``season_bins``
phase bins of ``period_s`` (bin width ``w = period_s / season_bins``; defaults 86,400 s
and 24, an hourly profile of the day — finer bins learn one day's noise and, on the
ServeGen trace, forecast worse), all in a frozen :class:`ForecastState`:

1. **Observation** ``y`` at time ``t`` (the caller stamps a rate measured over an
   interval at the interval's midpoint). The first one sets ``ℓ = y``, ``b = 0``. One at
   or before the last observation's time is ignored (``Δ = t − t_last ≤ 0``).
2. **Error**: before updating, the relative error of the previous state's forecast,
   ``e = (y − ŷ(t)) / max(ŷ(t), error_floor_rps)``, is appended to the last
   ``error_window`` (64) errors (positive = demand above the forecast).
3. **Level and trend** (Holt, time-aware): ``ℓ' = α (y − S(t)) + (1 − α)(ℓ + b Δ)``,
   ``b' = β (ℓ' − ℓ) / Δ + (1 − β) b``; ``α`` = 0.5, ``β`` = 0.1.
4. **Season, first period** (``S ≡ 0``, i.e. level/trend only): ``y`` is accumulated per
   phase bin. Once ``t − t_first ≥ period_s`` the season is set to ``s_k = mean of bin k
   − mean of the bin means`` (0 for a bin never observed) and the level and trend are
   re-based so the forecast stays continuous: ``ℓ ← ℓ − S(t)``, ``b ← b − S'(t)``.
5. **Season, afterwards**: the bin ``k`` holding ``phase(t) = t mod period_s`` moves by
   exponential smoothing, ``s_k ← γ (y − ℓ') + (1 − γ) s_k``, ``γ`` = 0.2.
6. **Reading the season**: ``S(τ)`` interpolates linearly between bin centres
   (circularly, so the profile wraps around the period).
7. **Forecast**: ``ŷ(τ) = max(0, ℓ + b (τ − t_last) + S(τ))``; 0 before any observation.
   :meth:`Forecaster.peak` is the largest ``ŷ`` over ``[t0, t1]``, evaluated at ``t0``,
   ``t1`` and every bin centre between them — exact, since ``ŷ`` is piecewise linear.
8. **Margin**: with at least ``min_errors`` (8) errors, the ``margin_quantile`` (0.95,
   nearest rank) of the last errors, clamped to ``[min_margin, max_margin]`` (0.05,
   1.0); with fewer, ``cold_margin`` (0.25).

Complexity: :meth:`~Forecaster.observe` O(B + K) (B bins, K errors: tuples are copied),
:meth:`~Forecaster.forecast` O(1), :meth:`~Forecaster.peak` O((t1 − t0) / w + 2),
:meth:`~Forecaster.margin` O(K log K).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

from coscale.policies.allocation.capacity import require

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ForecastConfig:
    """Named constants of the forecaster (defaults in the module docstring)."""

    period_s: float = 86_400.0
    season_bins: int = 24
    alpha: float = 0.5
    beta: float = 0.1
    gamma: float = 0.2
    error_window: int = 64
    margin_quantile: float = 0.95
    min_errors: int = 8
    min_margin: float = 0.05
    max_margin: float = 1.0
    cold_margin: float = 0.25
    error_floor_rps: float = 1e-3

    def __post_init__(self) -> None:
        require(
            self.period_s > 0 and self.season_bins >= 1,
            f"need period_s > 0 and season_bins >= 1, got {self.period_s}, {self.season_bins}",
            "use e.g. period_s 86400 (a day) and season_bins 24 (hourly bins)",
        )
        require(
            all(0 < x <= 1 for x in (self.alpha, self.beta, self.gamma)),
            "the smoothing factors alpha, beta, gamma must be in (0, 1]",
            "use e.g. alpha 0.5, beta 0.1, gamma 0.2",
        )
        require(
            self.error_window >= 1 and 1 <= self.min_errors <= self.error_window,
            "need 1 <= min_errors <= error_window",
            "use e.g. error_window 64 and min_errors 8",
        )
        require(
            0 < self.margin_quantile <= 1,
            "margin_quantile must be in (0, 1]",
            "use e.g. 0.95",
        )
        require(
            0 <= self.min_margin <= self.max_margin and self.cold_margin >= 0,
            "need 0 <= min_margin <= max_margin and cold_margin >= 0",
            "use e.g. min_margin 0.05, max_margin 1.0, cold_margin 0.25",
        )
        require(self.error_floor_rps > 0, "error_floor_rps must be > 0", "use e.g. 0.001")

    @property
    def bin_s(self) -> float:
        return self.period_s / self.season_bins


@dataclass(frozen=True, slots=True)
class ForecastState:
    """Everything the forecaster has learned about one model's demand."""

    t: float
    level: float
    trend: float
    first_t: float
    season: tuple[float, ...] | None = None
    bin_sum: tuple[float, ...] = ()
    bin_count: tuple[int, ...] = ()
    errors: tuple[float, ...] = ()


class Forecaster:
    """Pure functions over :class:`ForecastState` (see the module docstring)."""

    def __init__(self, config: ForecastConfig | None = None) -> None:
        self.config = config or ForecastConfig()

    # ------------------------------------------------------------- updating

    def observe(self, state: ForecastState | None, t: float, y: float) -> ForecastState:
        """Steps 1–5: the state after observing rate ``y`` at time ``t``."""
        cfg = self.config
        y = max(0.0, y)
        if state is None:
            n = cfg.season_bins
            k = self._bin(t)
            sums = tuple(y if i == k else 0.0 for i in range(n))
            counts = tuple(1 if i == k else 0 for i in range(n))
            return ForecastState(t, y, 0.0, t, None, sums, counts)
        dt = t - state.t
        if dt <= 0:
            return state
        predicted = self.forecast(state, t)
        err = (y - predicted) / max(predicted, cfg.error_floor_rps)
        errors = (*state.errors, err)[-cfg.error_window :]
        s_now = self.season_at(state.season, t)
        level = cfg.alpha * (y - s_now) + (1 - cfg.alpha) * (state.level + state.trend * dt)
        trend = cfg.beta * (level - state.level) / dt + (1 - cfg.beta) * state.trend
        k = self._bin(t)
        if state.season is not None:
            old = state.season[k]
            season = _replace(state.season, k, cfg.gamma * (y - level) + (1 - cfg.gamma) * old)
            return ForecastState(t, level, trend, state.first_t, season, (), (), errors)
        sums, counts = state.bin_sum, state.bin_count
        if len(sums) != cfg.season_bins or len(counts) != cfg.season_bins:
            sums, counts = (0.0,) * cfg.season_bins, (0,) * cfg.season_bins  # foreign state
        sums = _replace(sums, k, sums[k] + y)
        counts = _replace(counts, k, counts[k] + 1)
        if t - state.first_t < cfg.period_s:
            return ForecastState(t, level, trend, state.first_t, None, sums, counts, errors)
        season = _initial_season(sums, counts)
        w = cfg.bin_s
        slope = (self.season_at(season, t + w / 2) - self.season_at(season, t - w / 2)) / w
        level -= self.season_at(season, t)
        trend -= slope
        return ForecastState(t, level, trend, state.first_t, season, (), (), errors)

    # ------------------------------------------------------------- reading

    def season_at(self, season: tuple[float, ...] | None, tau: float) -> float:
        """Step 6: the seasonal component at time ``tau`` (0 before the first period)."""
        if season is None:
            return 0.0
        n = len(season)
        x = (tau % self.config.period_s) / self.config.bin_s - 0.5
        k0 = math.floor(x)
        frac = x - k0
        return season[k0 % n] * (1 - frac) + season[(k0 + 1) % n] * frac

    def forecast(self, state: ForecastState | None, tau: float) -> float:
        """Step 7: the forecast rate at time ``tau``."""
        if state is None:
            return 0.0
        base = state.level + state.trend * (tau - state.t)
        return max(0.0, base + self.season_at(state.season, tau))

    def peak(self, state: ForecastState | None, t0: float, t1: float) -> float:
        """Step 7: the largest forecast over ``[t0, t1]``."""
        if state is None:
            return 0.0
        best = max(self.forecast(state, t0), self.forecast(state, t1))
        if state.season is None:
            return best
        w = self.config.bin_s
        c = (math.floor(t0 / w - 0.5) + 1.5) * w
        while c < t1:
            best = max(best, self.forecast(state, c))
            c += w
        return best

    def margin(self, state: ForecastState | None) -> float:
        """Step 8: the burst margin from the recent relative errors."""
        cfg = self.config
        errors = state.errors if state is not None else ()
        if len(errors) < cfg.min_errors:
            return cfg.cold_margin
        ranked = sorted(errors)
        q = ranked[min(len(ranked) - 1, max(0, math.ceil(cfg.margin_quantile * len(ranked)) - 1))]
        return min(max(q, cfg.min_margin), cfg.max_margin)

    def _bin(self, t: float) -> int:
        n = self.config.season_bins
        return min(n - 1, int((t % self.config.period_s) // self.config.bin_s))


def _replace(items: tuple[T, ...], k: int, value: T) -> tuple[T, ...]:
    return (*items[:k], value, *items[k + 1 :])


def _initial_season(sums: tuple[float, ...], counts: tuple[int, ...]) -> tuple[float, ...]:
    means = [s / c if c else None for s, c in zip(sums, counts, strict=True)]
    seen = [m for m in means if m is not None]
    overall = sum(seen) / len(seen) if seen else 0.0
    return tuple(m - overall if m is not None else 0.0 for m in means)
