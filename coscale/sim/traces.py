"""Real workload traces → :class:`~coscale.sim.workloads.Workload`.

Three public formats (see ``coscale/data/traces/README.md`` or ``/work/shared/traces``):

``azure``
    Azure LLM inference 2023 CSV with header ``TIMESTAMP,ContextTokens,GeneratedTokens``.
    ``TIMESTAMP`` ("2023-11-16 18:17:03.9799600", 100-ns digits) → seconds from the first
    request; ``ContextTokens`` → ``seq_len``.
``mooncake``
    Mooncake JSON lines: ``timestamp`` (ms from the start of the trace) → seconds from the
    first request; ``input_length`` → ``seq_len``.
``servegen``
    ServeGen per-client rate statistics: a folder of ``chunk-<N>-trace.csv`` files (or one
    such file), one per client, no header, columns ``window_start_s, rate, cv, family,
    param1, param2``: client N's request rate (1/s) in each window (600 s), the
    coefficient of variation of its inter-arrival times (IATs), and a fitted IAT law,
    ``Gamma`` (param1 = shape k = 1/cv², param2 = scale) or ``Weibull`` (param1 = shape c,
    param2 = scale), or empty when the client sent nothing. Each client is a tenant
    named ``client-N``; ``seq_len`` is 0 (the per-window length distributions are not part
    of these files).

ServeGen arrivals (how a rate table becomes requests)
-----------------------------------------------------
For every client and every window with rate r > 0 (times ``rate_scale``), arrivals in
the part of the window inside ``[start_s, start_s + duration_s)`` are a *stationary
renewal process* whose IAT law keeps the fitted family and shape and is re-scaled so
its mean is exactly 1/r:

* Gamma(k, θ) with k = param1 and θ = 1/(r·k);
* Weibull(c, λ) with c = param1 and λ = 1/(r·Γ(1 + 1/c));
* no fitted law (never happens in the published data): Gamma with k = 1/cv², or
  Exponential(r) when cv is 0.

The fitted scale (param2) is not used: the Gamma scales already equal 1/(r·k) within
a few percent, but the Weibull fits (maximum likelihood on heavy-tailed samples) put
the law's mean a median 17 % above 1/r, and honouring the published rate matters more
for load than the exact fitted scale. *Stationary* means the first arrival after the
window opens is drawn from the forward-recurrence law, U·X̃ with U ~ Uniform(0, 1) and
X̃ the length-biased IAT (Gamma(k + 1, θ); for Weibull λ·G^(1/c) with
G ~ Gamma(1 + 1/c, 1)), so E[arrivals in a span L] = r·L exactly, with no start-up
bias even for bursty clients (CV up to 13). Windows are independent of each other.

Memory and time are O(arrivals): 14 days of m-large at full rate is ~240 M requests, so
load a window (``start_s``, ``duration_s``) and/or scale the rate (``rate_scale``); for
fluid-level 14-day runs use :func:`servegen_rate_curve`, which reads only the rates.

Errors: a missing, unreadable or malformed file, or an unknown format, raises
:class:`TraceError` (a :class:`~coscale.errors.CoscaleError`) naming the file, the line
where that applies, and a fix.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from coscale.errors import CoscaleError
from coscale.sim.workloads import Workload

__all__ = [
    "TRACE_FORMATS",
    "ServeGenTable",
    "TraceError",
    "detect_format",
    "load_trace",
    "read_servegen",
    "servegen_rate_curve",
]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

TRACE_FORMATS = ("azure", "mooncake", "servegen")
_SERVEGEN_FILE = re.compile(r"^chunk-(\d+)-trace\.csv$")
_FAMILIES = {"": 0, "Gamma": 1, "Weibull": 2}
_BATCH_DRAWS = 4_000_000  # IATs drawn per vectorised batch (bounds peak memory)
_FIX_FORMAT = (
    "pass format='azure' (CSV with TIMESTAMP,ContextTokens columns), 'mooncake' (JSON "
    "lines with timestamp and input_length) or 'servegen' (a folder of chunk-N-trace.csv)."
)


class TraceError(CoscaleError):
    """A trace file that cannot be read as the requested format."""

    code = "bad_trace"

    def __init__(self, message: str, *, fix: str = "", code: str | None = None) -> None:
        if message and message[-1] not in ".!?":
            message += "."
        super().__init__(message, fix=fix, code=code)


# -- format detection ---------------------------------------------------------------------


def detect_format(path: str | Path) -> str:
    """Guess a trace's format from the path and its first line; :class:`TraceError` if unsure."""
    p = _existing(path)
    if p.is_dir():
        if any(_SERVEGEN_FILE.match(f.name) for f in p.iterdir()):
            return "servegen"
        raise TraceError(
            f"trace folder {p} holds no chunk-<N>-trace.csv files, so it is not a ServeGen "
            "client folder",
            fix="point at a ServeGen folder such as servegen_2025/language/m-large, or at a "
            "trace file.",
        )
    first = _first_line(p)
    if p.suffix.lower() in (".jsonl", ".json") or first.startswith("{"):
        return "mooncake"
    if first.lstrip("\ufeff").upper().startswith("TIMESTAMP"):
        return "azure"
    if _SERVEGEN_FILE.match(p.name) or _looks_like_servegen_row(first):
        return "servegen"
    raise TraceError(
        f"cannot tell the format of trace {p} (first line: {first[:80]!r})", fix=_FIX_FORMAT
    )


def _looks_like_servegen_row(line: str) -> bool:
    parts = line.split(",")
    if len(parts) != 6 or parts[3] not in _FAMILIES:
        return False
    try:
        [float(parts[i]) for i in (0, 1, 2, 4, 5)]
    except ValueError:
        return False
    return True


def _existing(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise TraceError(
            f"trace {p} does not exist",
            fix="check the path; the bundled traces are under coscale/data/traces/.",
        )
    return p


def _first_line(p: Path) -> str:
    try:
        with p.open("r", encoding="utf-8") as fh:
            return fh.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(
            f"cannot read trace {p}: {exc}", fix="check that it is a readable text file."
        ) from exc


# -- the entry point ----------------------------------------------------------------------


def load_trace(
    path: str | Path,
    format: str = "auto",
    *,
    rng: np.random.Generator,
    max_seq_len: int | None = None,
    start_s: float = 0.0,
    duration_s: float | None = None,
    rate_scale: float = 1.0,
) -> Workload:
    """Load a trace as a :class:`Workload` (times in seconds from the trace's start).

    ``format``: ``"auto"`` (see :func:`detect_format`) or one of :data:`TRACE_FORMATS`.
    ``rng``: draws the ServeGen arrivals (request-level traces do not use it).
    ``max_seq_len``: clamp ``seq_len`` to a model's maximum input.
    ``start_s``/``duration_s``: keep only ``[start_s, start_s + duration_s)`` (to the end
    when ``duration_s`` is None), re-based so ``start_s`` → 0.
    ``rate_scale``: ServeGen only, multiplies every client's rate; for request-level
    traces use :meth:`Workload.scale_time` to change the load.
    """
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in TRACE_FORMATS:
        raise TraceError(f"unknown trace format {format!r}", fix=_FIX_FORMAT)
    if not (start_s >= 0 and math.isfinite(start_s)) or (
        duration_s is not None and not (duration_s >= 0 and math.isfinite(duration_s))
    ):
        raise TraceError(
            f"bad trace window start_s={start_s}, duration_s={duration_s}",
            fix="use a start >= 0 and a duration >= 0 (or none for the rest of the trace).",
        )
    if max_seq_len is not None and max_seq_len < 1:
        raise TraceError(f"max_seq_len must be >= 1, got {max_seq_len}", fix="pass 1 or more.")
    if fmt == "servegen":
        workload = load_servegen(
            path, rng=rng, start_s=start_s, duration_s=duration_s, rate_scale=rate_scale
        )
    else:
        if rate_scale != 1.0:
            raise TraceError(
                f"rate_scale applies to ServeGen rate tables, not to the request-level "
                f"{fmt} trace {path}",
                fix="replay it faster or slower with Workload.scale_time(factor) instead.",
            )
        workload = load_azure(path) if fmt == "azure" else load_mooncake(path)
        if start_s > 0 or duration_s is not None:
            span = workload.duration_s - start_s if duration_s is None else duration_s
            workload = workload.window(start_s, max(span, 0.0))
    if max_seq_len is not None:
        workload = workload.clamp_seq_lens(max_seq_len)
    return workload


# -- request-level traces -----------------------------------------------------------------


def _request_workload(stamps_s: F64, seq_lens: I64, name: str) -> Workload:
    order = np.argsort(stamps_s, kind="stable")
    times = stamps_s[order] - stamps_s[order[0]]
    n = times.shape[0]
    lengths = seq_lens[order].astype(np.int32)
    return Workload(times, lengths, np.zeros(n, np.int32), ("default",), name)


def load_azure(path: str | Path) -> Workload:
    """An Azure LLM inference 2023 CSV (header ``TIMESTAMP,ContextTokens,...``)."""
    p = _existing(path)
    stamps: list[str] = []
    tokens: list[int] = []
    try:
        with p.open("r", encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            if "TIMESTAMP" not in header or "ContextTokens" not in header:
                raise TraceError(
                    f"{p} is not an Azure LLM trace: its header {header[:6]} lacks "
                    "TIMESTAMP and ContextTokens",
                    fix=_FIX_FORMAT,
                )
            ti, ci = header.index("TIMESTAMP"), header.index("ContextTokens")
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                try:
                    stamps.append(row[ti])
                    tokens.append(int(row[ci]))
                except (IndexError, ValueError) as exc:
                    raise TraceError(
                        f"{p}, line {line}: bad row {row[:4]} ({exc})", fix="fix or drop that line."
                    ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"cannot read trace {p}: {exc}", fix="check the file.") from exc
    if not stamps:
        raise TraceError(f"trace {p} has no requests", fix="use a trace with at least one row.")
    try:
        ns = np.array(stamps, dtype="datetime64[ns]").astype(np.int64)
    except ValueError as exc:
        raise TraceError(
            f"{p}: a TIMESTAMP is not a date-time ({exc})",
            fix='timestamps must look like "2023-11-16 18:17:03.9799600".',
        ) from exc
    seconds = (ns - ns.min()).astype(np.float64) / 1e9
    return _request_workload(seconds, np.asarray(tokens, dtype=np.int64), p.stem)


def load_mooncake(path: str | Path) -> Workload:
    """A Mooncake JSON-lines trace (``timestamp`` in ms, ``input_length`` tokens)."""
    p = _existing(path)
    stamps: list[float] = []
    tokens: list[int] = []
    try:
        with p.open("r", encoding="utf-8") as fh:
            for line, text in enumerate(fh, start=1):
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                    stamps.append(float(row["timestamp"]))
                    tokens.append(int(row["input_length"]))
                except (ValueError, KeyError, TypeError) as exc:
                    raise TraceError(
                        f"{p}, line {line}: not a Mooncake request ({type(exc).__name__}: {exc})",
                        fix='each line must be a JSON object with "timestamp" (ms) and '
                        '"input_length".',
                    ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"cannot read trace {p}: {exc}", fix="check the file.") from exc
    if not stamps:
        raise TraceError(f"trace {p} has no requests", fix="use a trace with at least one line.")
    seconds = np.asarray(stamps, dtype=np.float64) / 1000.0
    return _request_workload(seconds, np.asarray(tokens, dtype=np.int64), p.stem)


# -- ServeGen -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ServeGenTable:
    """ServeGen rate statistics as (client × window) arrays.

    ``clients``: client ids (N of chunk-N), ascending; ``window_s``: window length;
    ``starts``: window start times (s); ``rate``, ``cv``, ``param1``, ``param2``: float64
    (clients × windows); ``family``: int8, 0 none, 1 Gamma, 2 Weibull.
    """

    clients: tuple[int, ...]
    window_s: float
    starts: F64
    rate: F64
    cv: F64
    family: npt.NDArray[np.int8]
    param1: F64
    param2: F64

    @property
    def tenant_names(self) -> tuple[str, ...]:
        return tuple(f"client-{c}" for c in self.clients)


def _servegen_files(p: Path) -> list[tuple[int, Path]]:
    if p.is_file():
        m = _SERVEGEN_FILE.match(p.name)
        return [(int(m.group(1)) if m else 0, p)]
    files = sorted((int(m.group(1)), f) for f in p.iterdir() if (m := _SERVEGEN_FILE.match(f.name)))
    if not files:
        raise TraceError(
            f"{p} holds no chunk-<N>-trace.csv files", fix="point at a ServeGen client folder."
        )
    return files


def _read_servegen_file(path: Path) -> tuple[F64, F64, F64, npt.NDArray[np.int8], F64, F64]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"cannot read trace {path}: {exc}", fix="check the file.") from exc
    cols: list[list[float]] = [[], [], [], [], []]
    fams: list[int] = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        parts = raw.split(",")
        try:
            if len(parts) != 6:
                raise ValueError(f"{len(parts)} columns, expected 6")
            fams.append(_FAMILIES[parts[3].strip()])
            for k, i in enumerate((0, 1, 2, 4, 5)):
                cols[k].append(float(parts[i]))
        except (KeyError, ValueError) as exc:
            raise TraceError(
                f"{path}, line {line}: not a ServeGen row ({exc}): {raw[:80]!r}",
                fix="rows are window_start_s,rate,cv,family(Gamma|Weibull|empty),param1,param2.",
            ) from exc
    start, rate, cv, p1, p2 = (np.asarray(c, dtype=np.float64) for c in cols)
    return start, rate, cv, np.asarray(fams, dtype=np.int8), p1, p2


def read_servegen(path: str | Path) -> ServeGenTable:
    """Parse a ServeGen client folder (or one client file) into a :class:`ServeGenTable`.

    All clients must share one grid of equally spaced windows. O(clients × windows).
    The last few tables parsed are cached (keyed by path and modification times); their
    arrays are read-only.
    """
    p = _existing(path).resolve()
    stamp = tuple(f.stat().st_mtime_ns for _, f in _servegen_files(p))
    return _read_servegen_cached(p, stamp)


@functools.lru_cache(maxsize=4)
def _read_servegen_cached(p: Path, stamp: tuple[int, ...]) -> ServeGenTable:
    del stamp  # part of the cache key only
    files = _servegen_files(p)
    parsed = [_read_servegen_file(f) for _, f in files]
    starts = parsed[0][0]
    for (_, f), cols in zip(files, parsed, strict=True):
        if cols[0].shape != starts.shape or not np.array_equal(cols[0], starts):
            raise TraceError(
                f"{f}: its windows differ from {files[0][1].name}'s",
                fix="all clients of a ServeGen folder must share the windows.",
            )
    if starts.size == 0:
        raise TraceError(f"{files[0][1]} has no windows", fix="use a non-empty trace.")
    steps = np.diff(starts)
    window = float(steps[0]) if steps.size else 600.0
    if window <= 0 or (steps.size and not np.allclose(steps, window)):
        raise TraceError(
            f"{files[0][1]}: windows are not equally spaced",
            fix="window_start_s must grow by a constant step.",
        )
    rate = np.stack([c[1] for c in parsed])
    if not (np.isfinite(rate).all() and (rate >= 0).all()):
        raise TraceError(f"{p}: a rate is negative or not a number", fix="check the files.")
    table = ServeGenTable(
        clients=tuple(c for c, _ in files),
        window_s=window,
        starts=starts,
        rate=rate,
        cv=np.stack([c[2] for c in parsed]),
        family=np.stack([c[3] for c in parsed]),
        param1=np.stack([c[4] for c in parsed]),
        param2=np.stack([c[5] for c in parsed]),
    )
    for arr in (table.starts, table.rate, table.cv, table.family, table.param1, table.param2):
        arr.flags.writeable = False
    return table


def servegen_rate_curve(path: str | Path, bin_s: float = 600.0) -> tuple[F64, F64]:
    """(bin start times, summed request rate over all clients) of a ServeGen folder.

    ``bin_s`` must be a whole multiple of the trace's window (600 s); each bin's rate is
    the mean of its windows' summed rates (a trailing partial bin averages the windows it
    has). This reads only the rates: use it for fluid-level runs over the whole 14 days.
    """
    table = read_servegen(path)
    ratio = bin_s / table.window_s
    k = round(ratio)
    if k < 1 or not math.isclose(ratio, k, rel_tol=1e-9):
        raise TraceError(
            f"bin_s={bin_s} is not a whole multiple of the trace's {table.window_s:g}-s window",
            fix=f"use bin_s = {table.window_s:g} × an integer.",
        )
    total = table.rate.sum(axis=0)
    bins = math.ceil(total.size / k)
    sums = np.add.reduceat(total, np.arange(0, total.size, k))
    widths = np.minimum(k, total.size - np.arange(bins) * k)
    return table.starts[0] + np.arange(bins, dtype=np.float64) * bin_s, sums / widths


def load_servegen(
    path: str | Path,
    *,
    rng: np.random.Generator,
    start_s: float = 0.0,
    duration_s: float | None = None,
    rate_scale: float = 1.0,
) -> Workload:
    """Draw a ServeGen folder's arrivals in ``[start_s, start_s + duration_s)`` (module doc)."""
    if not (rate_scale >= 0 and math.isfinite(rate_scale)):
        raise TraceError(
            f"rate_scale must be a finite number >= 0, got {rate_scale}",
            fix="pass 1.0 for the published rates.",
        )
    table = read_servegen(path)
    trace_end = float(table.starts[-1]) + table.window_s
    end = trace_end if duration_s is None else min(start_s + duration_s, trace_end)
    span = max(0.0 if duration_s is None else duration_s, end - start_s, 0.0)
    a = np.maximum(table.starts, start_s)[None, :]
    b = np.minimum(table.starts + table.window_s, end)[None, :]
    live = (table.rate > 0) & (b > a) & (rate_scale > 0)
    ci, wi = np.nonzero(live)  # row-major: client by client, windows in order
    lo = np.broadcast_to(a, live.shape)[ci, wi]
    hi = np.broadcast_to(b, live.shape)[ci, wi]
    rate = table.rate[ci, wi] * rate_scale
    shape, gamma_law = _iat_laws(table, ci, wi)
    times, tenant = _draw_renewals(rng, lo, hi, rate, shape, gamma_law, ci)
    order = np.argsort(times, kind="stable")
    name = Path(path).name if Path(path).is_dir() else Path(path).stem
    return Workload(
        times[order] - start_s,
        np.zeros(order.size, np.int32),
        tenant[order].astype(np.int32),
        table.tenant_names,
        f"servegen:{name}",
        span,
    )


def _iat_laws(table: ServeGenTable, ci: I64, wi: I64) -> tuple[F64, npt.NDArray[np.bool_]]:
    """(shape, is-Gamma) of each live window's IAT law: Weibull rows keep their shape c;
    rows without a law become Gamma with k = 1/cv² (k = 1, exponential, when cv = 0)."""
    fam = table.family[ci, wi]
    shape = table.param1[ci, wi].copy()
    cv = table.cv[ci, wi]
    none = fam == 0
    shape[none] = np.where(cv[none] > 0, 1.0 / np.maximum(cv[none], 1e-12) ** 2, 1.0)
    if not (np.isfinite(shape).all() and (shape > 0).all()):
        raise TraceError(
            "a ServeGen IAT law has a shape that is not a positive number",
            fix="check param1 of the Gamma/Weibull rows.",
        )
    return shape, fam != 2


def _law_scale(rate: F64, shape: F64, gamma_law: npt.NDArray[np.bool_]) -> F64:
    """Scale that gives the law a mean of 1/rate (Gamma θ = 1/(r k); Weibull λ = 1/(r Γ(1+1/c)))."""
    mean_unit = shape.copy()
    weibull = ~gamma_law
    mean_unit[weibull] = [math.gamma(1.0 + 1.0 / c) for c in shape[weibull].tolist()]
    scale: F64 = 1.0 / (rate * mean_unit)
    return scale


def _sample(
    rng: np.random.Generator,
    shape: F64,
    scale: F64,
    gamma_law: npt.NDArray[np.bool_],
    *,
    length_biased: bool = False,
) -> F64:
    """One IAT per row; ``length_biased`` draws X̃ with density x·f(x)/E[X] instead."""
    out = np.empty(shape.shape[0])
    g = gamma_law
    w = ~gamma_law
    out[g] = rng.gamma(shape[g] + (1.0 if length_biased else 0.0), scale[g])
    if length_biased:
        out[w] = scale[w] * rng.gamma(1.0 + 1.0 / shape[w]) ** (1.0 / shape[w])
    else:
        out[w] = scale[w] * rng.weibull(shape[w])
    return out


def _draw_renewals(
    rng: np.random.Generator,
    lo: F64,
    hi: F64,
    rate: F64,
    shape: F64,
    gamma_law: npt.NDArray[np.bool_],
    client: I64,
) -> tuple[F64, I64]:
    """Arrival times and client index of stationary renewal processes on [lo_i, hi_i)."""
    scale = _law_scale(rate, shape, gamma_law)
    first = lo + rng.random(lo.shape[0]) * _sample(rng, shape, scale, gamma_law, length_biased=True)
    times = [first[first < hi]]
    owners = [client[first < hi]]
    pos = first
    pending = np.nonzero(first < hi)[0]
    while pending.size:
        expect = (hi[pending] - pos[pending]) * rate[pending]
        cv2 = np.where(gamma_law[pending], 1.0 / shape[pending], 1.0)
        want = np.ceil(1.2 * expect + 3.0 * np.sqrt(expect * (1.0 + cv2)) + 8).astype(np.int64)
        for chunk in _batches(want, _BATCH_DRAWS):
            rows = pending[chunk]
            k = want[chunk]
            seg = np.repeat(np.arange(rows.size), k)
            gaps = _sample(rng, shape[rows][seg], scale[rows][seg], gamma_law[rows][seg])
            cs = np.cumsum(gaps)
            ends = np.cumsum(k) - 1
            base = np.concatenate([[0.0], cs[ends[:-1]]])
            t = pos[rows][seg] + (cs - base[seg])
            inside = t < hi[rows][seg]
            times.append(t[inside])
            owners.append(client[rows][seg[inside]])
            pos[rows] = t[ends]
        pending = pending[pos[pending] < hi[pending]]
    return np.concatenate(times), np.concatenate(owners)


def _batches(sizes: I64, limit: int) -> list[slice]:
    """Consecutive slices of ``sizes`` whose sums stay near ``limit`` (at least one row)."""
    out: list[slice] = []
    start, total = 0, 0
    for i, s in enumerate(sizes.tolist()):
        if total and total + s > limit:
            out.append(slice(start, i))
            start, total = i, 0
        total += s
    if start < sizes.size:
        out.append(slice(start, sizes.size))
    return out
