"""Workloads: request arrival streams as columns, and generators of synthetic ones.

A :class:`Workload` is a columnar, time-sorted list of request arrivals (times in
seconds from 0, sequence lengths, tenant indices). Real traces are loaded into the same
type by :mod:`coscale.sim.traces`.

Every generator takes a seeded ``numpy.random.Generator`` explicitly (never global
random state) and is vectorised: a few million arrivals take about a second. The same
generator, parameters and seed give the same arrays, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from coscale.errors import InvalidInputError
from coscale.types import Request

__all__ = [
    "Workload",
    "constant_seq_lens",
    "diurnal",
    "lognormal_seq_lens",
    "mmpp",
    "poisson",
    "resample_seq_lens",
    "superpose",
]

F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]

DEFAULT_TENANT = "default"
_BELOW_ONE = float(np.nextafter(1.0, 0.0))


@dataclass(frozen=True, eq=False)
class Workload:
    """A time-sorted stream of request arrivals, as numpy columns.

    ``times``: float64 arrival times in seconds from 0, non-decreasing.
    ``seq_lens``: int32 tokens per request (0 when unknown or not a text model).
    ``tenants``: int32 index of each request's tenant into ``tenant_names``.
    ``duration_s``: length of the observed window, ≥ the last arrival (it matters for
    rates when the stream ends in silence); defaults to the last arrival time.
    Columns are converted on construction and validated (same length, sorted times,
    non-negative times and lengths, tenant indices in range); violations raise
    :class:`~coscale.errors.InvalidInputError`.
    """

    times: F64
    seq_lens: I32
    tenants: I32
    tenant_names: tuple[str, ...] = (DEFAULT_TENANT,)
    name: str = "workload"
    duration_s: float = field(default=-1.0)

    def __post_init__(self) -> None:
        times = np.ascontiguousarray(self.times, dtype=np.float64)
        seq = np.ascontiguousarray(self.seq_lens, dtype=np.int32)
        ten = np.ascontiguousarray(self.tenants, dtype=np.int32)
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "seq_lens", seq)
        object.__setattr__(self, "tenants", ten)
        object.__setattr__(self, "tenant_names", tuple(self.tenant_names))
        _check(
            times.ndim == 1 and seq.shape == times.shape and ten.shape == times.shape,
            f"workload {self.name!r}: times, seq_lens and tenants must be 1-D arrays of "
            f"one length (got {times.shape}, {seq.shape}, {ten.shape})",
        )
        if times.size:
            _check(
                bool(np.isfinite(times).all()) and times[0] >= 0,
                f"workload {self.name!r}: arrival times must be finite and >= 0",
            )
            _check(
                bool((np.diff(times) >= 0).all()),
                f"workload {self.name!r}: arrival times must be sorted",
            )
            _check(int(seq.min()) >= 0, f"workload {self.name!r}: seq_lens must be >= 0")
            _check(
                int(ten.min()) >= 0 and int(ten.max()) < len(self.tenant_names),
                f"workload {self.name!r}: tenant index out of range "
                f"(0..{len(self.tenant_names) - 1})",
            )
        last = float(times[-1]) if times.size else 0.0
        duration = last if self.duration_s < 0 else float(self.duration_s)
        _check(
            duration >= last and math.isfinite(duration),
            f"workload {self.name!r}: duration_s={self.duration_s} is before the last "
            f"arrival ({last})",
        )
        object.__setattr__(self, "duration_s", duration)

    def __len__(self) -> int:
        return int(self.times.shape[0])

    @property
    def mean_rate(self) -> float:
        """Requests per second over ``duration_s`` (0 for an empty window)."""
        return len(self) / self.duration_s if self.duration_s > 0 else 0.0

    def _take(
        self,
        rows: slice | npt.NDArray[np.intp],
        times: F64,
        duration: float,
        name: str | None = None,
    ) -> Workload:
        return Workload(
            times,
            self.seq_lens[rows],
            self.tenants[rows],
            self.tenant_names,
            name or self.name,
            duration,
        )

    def window(self, start_s: float, duration_s: float) -> Workload:
        """Arrivals with ``start_s ≤ t < start_s + duration_s``, re-based so ``start_s`` → 0.

        O(log N) to find the rows (binary search) plus the copy of the times.
        """
        _check(
            start_s >= 0 and duration_s >= 0 and math.isfinite(start_s + duration_s),
            f"window({start_s}, {duration_s}): start and duration must be finite and >= 0",
        )
        lo = int(np.searchsorted(self.times, start_s, side="left"))
        hi = int(np.searchsorted(self.times, start_s + duration_s, side="left"))
        rows = slice(lo, hi)
        return self._take(rows, self.times[rows] - start_s, float(duration_s))

    def scale_time(self, factor: float) -> Workload:
        """Speed the workload up by ``factor`` > 0: times and duration divided by it.

        ``factor = 2`` replays the same requests in half the time (twice the rate).
        """
        _check(
            factor > 0 and math.isfinite(factor),
            f"scale_time({factor}): the speed-up factor must be a positive number",
        )
        return self._take(slice(None), self.times / factor, self.duration_s / factor)

    def rate_series(self, bin_s: float) -> tuple[F64, F64]:
        """(bin start times, requests/s in each bin) over ``[0, duration_s)``.

        Bins are ``[k·bin_s, (k+1)·bin_s)``; the last one may extend past ``duration_s``
        (its rate still divides by ``bin_s``). O(N).
        """
        _check(bin_s > 0 and math.isfinite(bin_s), f"rate_series({bin_s}): bin_s must be > 0")
        bins = max(1, math.ceil(self.duration_s / bin_s))
        idx = np.minimum((self.times // bin_s).astype(np.int64), bins - 1)
        counts = np.bincount(idx, minlength=bins)
        return np.arange(bins, dtype=np.float64) * bin_s, counts / bin_s

    def with_seq_lens(self, seq_lens: npt.ArrayLike) -> Workload:
        """The same arrivals with new sequence lengths (one per request)."""
        return Workload(
            self.times,
            np.asarray(seq_lens),
            self.tenants,
            self.tenant_names,
            self.name,
            self.duration_s,
        )

    def clamp_seq_lens(self, max_len: int) -> Workload:
        """Sequence lengths clamped to ``max_len`` (a model's maximum input)."""
        _check(max_len >= 1, f"clamp_seq_lens({max_len}): max_len must be >= 1")
        return self.with_seq_lens(np.minimum(self.seq_lens, max_len))

    def renamed(self, name: str) -> Workload:
        return Workload(
            self.times, self.seq_lens, self.tenants, self.tenant_names, name, self.duration_s
        )

    def requests(self, model: str, slo_s: float, *, first_id: int = 0) -> Iterator[Request]:
        """The arrivals as :class:`~coscale.types.Request` objects, deadline = arrival + SLO."""
        names = self.tenant_names
        for i, (t, s, k) in enumerate(
            zip(self.times.tolist(), self.seq_lens.tolist(), self.tenants.tolist(), strict=True)
        ):
            yield Request(
                id=first_id + i,
                model=model,
                arrival=t,
                deadline=t + slo_s,
                tenant=names[k],
                seq_len=s,
            )


def superpose(workloads: Sequence[Workload], name: str = "superposed") -> Workload:
    """Merge several streams into one (stable by input order on equal times).

    Tenants with the same name are merged; duration is the longest input's. O(N log N).
    """
    names: list[str] = []
    index: dict[str, int] = {}
    tenants = []
    for w in workloads:
        remap = np.array([index.setdefault(n, len(index)) for n in w.tenant_names], dtype=np.int32)
        tenants.append(remap[w.tenants] if len(w) else w.tenants)
    names = list(index)
    if not workloads:
        empty = np.zeros(0, np.int32)
        return Workload(np.zeros(0), empty, empty, (DEFAULT_TENANT,), name, 0.0)
    times = np.concatenate([w.times for w in workloads])
    order = np.argsort(times, kind="stable")
    return Workload(
        times[order],
        np.concatenate([w.seq_lens for w in workloads])[order],
        np.concatenate(tenants)[order],
        tuple(names),
        name,
        max(w.duration_s for w in workloads),
    )


# -- arrival generators ---------------------------------------------------------------------


def _single_tenant(times: F64, duration: float, name: str, tenant: str) -> Workload:
    n = times.shape[0]
    return Workload(times, np.zeros(n, np.int32), np.zeros(n, np.int32), (tenant,), name, duration)


def _uniform_sorted(
    rng: np.random.Generator, starts: F64, lengths: F64, counts: npt.NDArray[np.int64]
) -> F64:
    """``counts[i]`` sorted uniform points in each ``[starts[i], starts[i] + lengths[i])``.

    Uses normalised exponential spacings instead of a sort: if E_1..E_{n+1} are i.i.d.
    Exponential(1) and S_j = E_1 + … + E_j, then (S_1/S_{n+1}, …, S_n/S_{n+1}) has the
    law of n sorted Uniform(0, 1) points. Segments are laid end to end, so the result is
    sorted when the segments are. O(N + S).
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0)
    sizes = counts + 1
    cs = np.cumsum(rng.exponential(1.0, int(sizes.sum())))
    ends = np.cumsum(sizes) - 1  # index of each segment's closing spacing
    base = np.concatenate([[0.0], cs[ends[:-1]]])
    seg = np.repeat(np.arange(counts.shape[0]), sizes)
    keep = np.ones(cs.shape[0], dtype=bool)
    keep[ends] = False
    seg = seg[keep]
    frac = (cs[keep] - base[seg]) / (cs[ends] - base)[seg]
    times: F64 = starts[seg] + np.minimum(frac, _BELOW_ONE) * lengths[seg]
    np.maximum.accumulate(times, out=times)  # guard against 1-ulp rounding at segment joins
    return times


def poisson(
    rate: float,
    duration: float,
    rng: np.random.Generator,
    *,
    name: str = "poisson",
    tenant: str = DEFAULT_TENANT,
) -> Workload:
    """Homogeneous Poisson arrivals at ``rate``/s on ``[0, duration)``.

    Process: N ~ Poisson(rate·duration), then N i.i.d. Uniform(0, duration) times,
    sorted (the order statistics of uniforms are exactly a Poisson process given N).
    Inter-arrival times are i.i.d. Exponential(rate). O(N log N). ``rate = 0`` gives an
    empty workload.
    """
    _check_rate_duration(rate, duration)
    n = np.array([rng.poisson(rate * duration)], dtype=np.int64)
    times = _uniform_sorted(rng, np.zeros(1), np.array([float(duration)]), n)
    return _single_tenant(times, duration, name, tenant)


def mmpp(
    calm_rate: float,
    burst_rate: float,
    mean_calm_s: float,
    mean_burst_s: float,
    duration: float,
    rng: np.random.Generator,
    *,
    name: str = "mmpp",
    tenant: str = DEFAULT_TENANT,
) -> Workload:
    """2-state Markov-modulated Poisson process on ``[0, duration)``.

    A hidden chain alternates between CALM and BURST; it stays in CALM for an
    Exponential(mean ``mean_calm_s``) time and in BURST for an Exponential(mean
    ``mean_burst_s``) time. While in a state, arrivals are Poisson at ``calm_rate`` or
    ``burst_rate``. The initial state is drawn from the chain's stationary law
    (P(BURST) = mean_burst_s / (mean_calm_s + mean_burst_s)), and the first sojourn is a
    full exponential (memoryless), so the process is stationary: mean rate
    = (calm_rate·mean_calm_s + burst_rate·mean_burst_s) / (mean_calm_s + mean_burst_s).
    O(N log N + S) with S the number of sojourns.
    """
    _check_rate_duration(calm_rate, duration)
    _check_rate_duration(burst_rate, duration)
    _check(
        mean_calm_s > 0 and mean_burst_s > 0,
        f"mmpp: mean sojourn times must be > 0 (got {mean_calm_s}, {mean_burst_s})",
    )
    first_burst = bool(rng.random() < mean_burst_s / (mean_calm_s + mean_burst_s))
    order = [1, 0] if first_burst else [0, 1]
    means = np.array([mean_calm_s, mean_burst_s])[order]
    rates = np.array([calm_rate, burst_rate], dtype=np.float64)[order]
    cycle = mean_calm_s + mean_burst_s
    k = 2 * math.ceil(duration / cycle + 4 * math.sqrt(duration / cycle + 1) + 4)
    sojourns = rng.exponential(1.0, k) * np.resize(means, k)
    while sojourns.sum() < duration:  # rare: extend with more alternating sojourns
        sojourns = np.concatenate([sojourns, rng.exponential(1.0, k) * np.resize(means, k)])
    ends = np.cumsum(sojourns)
    s = int(np.searchsorted(ends, duration, side="left")) + 1
    starts = np.concatenate([[0.0], ends[: s - 1]])
    lengths = np.minimum(ends[:s], duration) - starts
    counts = rng.poisson(np.resize(rates, s) * lengths).astype(np.int64)
    return _single_tenant(_uniform_sorted(rng, starts, lengths, counts), duration, name, tenant)


def diurnal(
    mean_rate: float,
    amplitude: float,
    period_s: float,
    duration: float,
    rng: np.random.Generator,
    *,
    phase_s: float = 0.0,
    name: str = "diurnal",
    tenant: str = DEFAULT_TENANT,
) -> Workload:
    """Non-homogeneous Poisson arrivals with a sinusoidal rate, by thinning.

    λ(t) = mean_rate · (1 − amplitude · cos(2π (t + phase_s) / period_s)), so with
    ``phase_s = 0`` the trough (mean·(1 − A)) is at t = 0 and the peak (mean·(1 + A))
    at t = period/2. ``0 ≤ amplitude ≤ 1``.

    Thinning (Lewis & Shedler): draw a homogeneous Poisson process at
    λ_max = mean_rate·(1 + amplitude) and keep each point t with probability
    λ(t)/λ_max. O(N log N) with N ≈ λ_max·duration candidates.
    """
    _check_rate_duration(mean_rate, duration)
    _check(0.0 <= amplitude <= 1.0, f"diurnal: amplitude must be in [0, 1], got {amplitude}")
    _check(period_s > 0, f"diurnal: period_s must be > 0, got {period_s}")
    peak = mean_rate * (1.0 + amplitude)
    n = np.array([rng.poisson(peak * duration)], dtype=np.int64)
    cand = _uniform_sorted(rng, np.zeros(1), np.array([float(duration)]), n)
    rate = mean_rate * (1.0 - amplitude * np.cos(2.0 * np.pi * (cand + phase_s) / period_s))
    keep = rng.random(cand.shape[0]) * peak < rate
    return _single_tenant(cand[keep], duration, name, tenant)


# -- sequence lengths -----------------------------------------------------------------------


def lognormal_seq_lens(
    n: int,
    median: float,
    sigma: float,
    rng: np.random.Generator,
    *,
    min_len: int = 1,
    max_len: int | None = None,
) -> I32:
    """``n`` token counts ~ round(LogNormal(ln median, sigma)), clipped to [min_len, max_len]."""
    _check(
        n >= 0 and median > 0 and sigma >= 0 and min_len >= 0,
        f"lognormal_seq_lens: need n >= 0, median > 0, sigma >= 0 (got {n}, {median}, {sigma})",
    )
    raw = np.rint(rng.lognormal(math.log(median), sigma, n))
    hi = np.inf if max_len is None else max_len
    return np.clip(raw, min_len, hi).astype(np.int32)


def resample_seq_lens(
    n: int, pool: npt.ArrayLike, rng: np.random.Generator, *, max_len: int | None = None
) -> I32:
    """``n`` token counts drawn uniformly with replacement from an empirical ``pool``
    (e.g. a real trace's ``seq_lens``), optionally clipped to ``max_len``."""
    values = np.asarray(pool, dtype=np.int64)
    _check(values.size > 0, "resample_seq_lens: the pool of lengths is empty")
    out = values[rng.integers(0, values.size, n)]
    if max_len is not None:
        out = np.minimum(out, max_len)
    return out.astype(np.int32)


def constant_seq_lens(n: int, value: int) -> I32:
    """``n`` copies of ``value``."""
    _check(value >= 0, f"constant_seq_lens: value must be >= 0, got {value}")
    return np.full(n, value, dtype=np.int32)


# -- checks ---------------------------------------------------------------------------------


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidInputError(
            message.rstrip(".") + ".", fix="see the function's docstring for valid inputs."
        )


def _check_rate_duration(rate: float, duration: float) -> None:
    _check(rate >= 0 and math.isfinite(rate), f"rate must be a finite number >= 0, got {rate}")
    _check(
        duration >= 0 and math.isfinite(duration),
        f"duration must be a finite number >= 0, got {duration}",
    )
