"""Shared capacity, cost and placement model of the allocation policies (pure).

Capacity of one replica
    A replica of serving option ``o`` (a model variant on a node type) serves at most::

        capacity_rps(o, slo) = max { b / L_o(b, s) : b ∈ {1, …, B_o}, L_o(b, s) ≤ β × slo }

    requests per second, where ``L_o`` is the option's measured latency table
    (:class:`~coscale.types.LatencyTable`, already scaled to the node type), ``s`` the
    typical sequence length (``DEFAULT_TYPICAL_SEQ_LEN`` = 128 tokens; tables measured at
    one length ignore it), ``B_o`` the largest *measured* batch size (larger batches are
    extrapolations, not measurements, and are not used) and ``β`` =
    ``LATENCY_BUDGET_FRACTION`` = 0.5: a batch may take half the SLO, the other half is
    left for the time a request waits for its batch to form and for the replica to free
    up. One request is one item.

    ``L_o`` is piecewise linear in ``b`` between measured sizes, so ``b / L_o(b)`` is
    monotone on each segment and its maximum over the feasible set lies at a measured
    size or at the integer where the budget is crossed inside a segment (found by
    bisection). Complexity O(B log B) per option, paid once at construction.

    Edge cases: when no batch size fits the budget the option cannot meet the SLO and its
    capacity is 0; when *no* option of a model can, every option is ranked by its
    best-effort capacity ``1 / L_o(1, s)`` (one item at a time) and ``meets_slo`` is False,
    so the model is still served and the plan's reason says the SLO cannot be met.

Planning capacity (what allocation sizes with)
    ``capacity_rps`` is the replica's *saturation* rate. A replica whose best batch is
    one item (no batching, or only ``b = 1`` fits the budget) has nothing to absorb
    random arrivals: at saturation its queue grows without bound. Such options are
    planned at a utilisation ``u`` (:func:`planning_rps` = ``u × capacity_rps``), the
    largest ``u ≤ MAX_UTILISATION`` (0.9) for which the M/M/1 wait tail
    ``P(wait > slo − L) = u × exp(−(1 − u)(slo − L) / L)`` (``L = L_o(1, s)``) is at most
    ``WAIT_TAIL`` = 0.01, found by bisection (60 steps, the tail rises with ``u``).
    M/M/1 per replica is conservative for deterministic service and shared queues. A
    batching option (best batch > 1) is planned at its capacity: batches grow with the
    load and the other half of the SLO covers their wait. Every allocation policy ranks
    and sizes with the planning capacity (:func:`rank_model`), the oracle included.

Cost of one replica (US dollars per replica-hour)
    ``price(node, spot) / replicas_per_node`` for on-demand. A spot replica is preempted
    ``p`` = ``preemption_per_hour`` times an hour and its replacement needs ``startup_s``
    to serve again, so the expected fraction of time it is lost is
    ``ρ = p × startup_s / 3600``. Spot replicas are over-provisioned by ``f = 1 + ρ``
    (``spot_overprovision``) so their *expected* serving capacity equals what was asked,
    and the risk of the work lost at a preemption is charged at on-demand rates, giving
    the effective cost per serving spot replica-hour::

        effective_spot = (f × spot_price + ρ × on_demand_price) / replicas_per_node

    Candidates (option × {on-demand, spot}) are ranked by effective $/h per request/s of
    planning capacity, ascending; ties broken by node type, variant, on-demand before spot, so the
    ranking (and therefore every plan) is deterministic. Spot candidates exist only when
    the context allows spot (``spot_share`` > 0) and the node type has a spot price > 0.

Pools and placement
    A :class:`PoolLedger` holds, during one decision, the replicas still free per node
    type (``S_t``: the pools' ``max_replicas``, summed over pools of the same type) and
    the spot replicas still free (``floor(spot_share × max_replicas)`` per pool). Models
    are placed in the context's order, so under contention the earlier model wins.
    :func:`place_count` puts ``n`` replicas greedily on the ranked candidates;
    :func:`place_capacity` covers a capacity in requests/s with whole replicas of the
    most efficient candidates and the remainder with the cheapest absolute cover, spot
    where cheaper and within ``spot_share`` (see its docstring). Both are O(P) for P
    candidates, over a
    ranking sorted once at construction (O(P log P)). Replicas count as capacity only
    when READY: :func:`keep_ready` (make before break) keeps ready replicas a change of
    mix would stop until their replacements are ready.

Spares (N + k)
    A model whose start-up exceeds its SLO loses every request a dead replica would have
    served until its replacement is ready. :func:`add_spares` puts k more replicas of the
    placement's largest candidate on top of it while the model has traffic, so the load
    fits the N − k survivors (the predictive and oracle policies' ``spare_replicas``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from coscale.catalog.nodes import NodeType
from coscale.errors import CoscaleError
from coscale.policies.base import AllocationContext, ModelTarget, Pool, VariantOption
from coscale.types import LatencyTable, Plan, ReplicaState, ReplicaTarget, ReplicaView

#: Fraction of the model's latency SLO one batch may take (the rest is queueing/batching).
LATENCY_BUDGET_FRACTION = 0.5
#: Sequence length (tokens) at which text models' latency tables are read.
DEFAULT_TYPICAL_SEQ_LEN = 128
SECONDS_PER_HOUR = 3600.0
#: Tolerance of rounding to integers (guards ceil/floor against floating-point noise).
EPS = 1e-9
#: Largest fraction of batch-1 replicas' wait tail allowed past the SLO (planning).
WAIT_TAIL = 0.01
#: Highest utilisation any batch-1 option is planned at.
MAX_UTILISATION = 0.9

#: Replica states that count towards a model's current replicas (not draining/stopped).
ACTIVE_STATES = (ReplicaState.STARTING, ReplicaState.READY)


def policy_error(message: str, fix: str) -> CoscaleError:
    """The error every allocation policy raises for a bad parameter or context."""
    return CoscaleError(message, fix=fix, code="invalid_policy_params")


def require(condition: bool, message: str, fix: str) -> None:
    if not condition:
        raise policy_error(message, fix)


def ceil_int(x: float) -> int:
    """``ceil(x)`` that ignores floating-point noise below ``EPS``, never negative."""
    return max(0, math.ceil(x - EPS))


def floor_int(x: float) -> int:
    """``floor(x)`` that ignores floating-point noise below ``EPS``, never negative."""
    return max(0, math.floor(x + EPS))


# --------------------------------------------------------------------------- capacity


def capacity_rps(
    option: VariantOption,
    slo_s: float,
    *,
    seq_len: int = DEFAULT_TYPICAL_SEQ_LEN,
    budget_fraction: float = LATENCY_BUDGET_FRACTION,
) -> float:
    """Requests/s one replica of ``option`` sustains within ``slo_s`` (0 if it cannot)."""
    return _best(option, slo_s, seq_len, budget_fraction)[0]


def _best(
    option: VariantOption, slo_s: float, seq_len: int, budget_fraction: float
) -> tuple[float, int]:
    """(saturation capacity, the batch size reaching it); (0, 0) when none fits."""
    budget = slo_s * budget_fraction
    table = option.latency
    best, size = 0.0, 0
    for b in _candidate_batches(table, seq_len, budget):
        lat = table.latency(b, seq_len)
        if 0.0 < lat <= budget and b / lat > best:
            best, size = b / lat, b
    return best, size


def batch1_utilisation(
    service_s: float,
    slo_s: float,
    *,
    tail: float = WAIT_TAIL,
    max_utilisation: float = MAX_UTILISATION,
) -> float:
    """Largest ``u ≤ max_utilisation`` with ``u × exp(−(1 − u)(slo − L)/L) ≤ tail``.

    The M/M/1 probability that a request waits longer than ``slo − L`` (``L`` =
    ``service_s``) at utilisation ``u``; it rises with ``u``, so bisection (60 steps)
    finds the bound. ``L ≥ slo`` or ``L ≤ 0`` → 0 (no waiting room / no service).
    """
    if service_s <= 0 or service_s >= slo_s:
        return 0.0
    room = (slo_s - service_s) / service_s
    if max_utilisation * math.exp(-(1.0 - max_utilisation) * room) <= tail:
        return max_utilisation
    lo, hi = 0.0, max_utilisation
    for _ in range(60):
        mid = (lo + hi) / 2
        if mid * math.exp(-(1.0 - mid) * room) <= tail:
            lo = mid
        else:
            hi = mid
    return lo


def planning_rps(
    option: VariantOption,
    slo_s: float,
    *,
    seq_len: int = DEFAULT_TYPICAL_SEQ_LEN,
    budget_fraction: float = LATENCY_BUDGET_FRACTION,
) -> float:
    """Requests/s allocation plans one replica for (module docstring, "Planning capacity"):
    the saturation capacity, times :func:`batch1_utilisation` when its best batch is 1."""
    cap, size = _best(option, slo_s, seq_len, budget_fraction)
    if size != 1:
        return cap
    return cap * batch1_utilisation(option.latency.latency(1, seq_len), slo_s)


def best_effort_rps(option: VariantOption, *, seq_len: int = DEFAULT_TYPICAL_SEQ_LEN) -> float:
    """One item at a time: ``1 / L(1, s)`` (used only when no option meets the SLO)."""
    lat = option.latency.latency(1, seq_len)
    return 1.0 / lat if lat > 0 else 0.0


def _candidate_batches(table: LatencyTable, seq_len: int, budget: float) -> list[int]:
    sizes = table.batch_sizes
    out = [1, *sizes]
    for lo, hi in itertools.pairwise(sizes):
        lo_ok = table.latency(lo, seq_len) <= budget
        hi_ok = table.latency(hi, seq_len) <= budget
        if lo_ok != hi_ok:
            out.append(_crossing(table, seq_len, budget, lo, hi, lo_ok))
    return out


def _crossing(
    table: LatencyTable, seq_len: int, budget: float, lo: int, hi: int, lo_ok: bool
) -> int:
    """The feasible integer next to where latency crosses ``budget`` inside (lo, hi)."""
    ok, bad = (lo, hi) if lo_ok else (hi, lo)
    while abs(bad - ok) > 1:
        mid = (ok + bad) // 2
        if table.latency(mid, seq_len) <= budget:
            ok = mid
        else:
            bad = mid
    return ok


# --------------------------------------------------------------------------- cost


def replica_usd_per_hour(node: NodeType, spot: bool) -> float:
    """What one replica of ``node`` is billed per hour (the node's price / replicas per node)."""
    return node.usd_per_hour(spot) / max(1, node.replicas_per_node)


def restart_fraction(node: NodeType) -> float:
    """ρ = preemption_per_hour × startup_s / 3600: expected lost fraction of a spot replica."""
    return max(0.0, node.preemption_per_hour) * max(0.0, node.startup_s) / SECONDS_PER_HOUR


def spot_overprovision(node: NodeType) -> float:
    """f = 1 + ρ: spot replicas started per serving spot replica."""
    return 1.0 + restart_fraction(node)


def effective_usd_per_hour(node: NodeType, spot: bool) -> float:
    """$/h per *serving* replica: on-demand price, or (f × spot + ρ × on-demand) for spot."""
    per = max(1, node.replicas_per_node)
    if not spot:
        return node.on_demand_usd_per_hour / per
    rho = restart_fraction(node)
    return ((1.0 + rho) * node.spot_usd_per_hour + rho * node.on_demand_usd_per_hour) / per


# --------------------------------------------------------------------------- ranking


@dataclass(frozen=True, slots=True)
class Candidate:
    """One way to add capacity for a model: an option, on-demand or spot.

    ``capacity_rps``: per serving replica. ``overprovision``: replicas started per serving
    replica (``f`` for spot, 1 for on-demand). ``usd_per_hour``: effective $/h per serving
    replica (see the module docstring).
    """

    model: str
    variant: str
    node_type: str
    spot: bool
    capacity_rps: float
    usd_per_hour: float
    overprovision: float
    startup_s: float

    #: Expected serving capacity of one *started* replica: ``capacity_rps / overprovision``.
    expected_rps: float = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "expected_rps", self.capacity_rps / self.overprovision)

    @property
    def usd_per_rps_hour(self) -> float:
        return self.usd_per_hour / self.capacity_rps

    def target(self, count: int) -> ReplicaTarget:
        return ReplicaTarget(self.model, self.variant, self.node_type, count, self.spot)


@dataclass(frozen=True, slots=True)
class ModelOptions:
    """A model's candidates, cheapest per unit capacity first.

    ``startup_s``: the longest start-up among its candidates (0 when it has none).
    ``meets_slo``: False when no option fits the SLO and capacities are best effort.
    """

    model: str
    slo_s: float
    candidates: tuple[Candidate, ...]
    meets_slo: bool = True
    startup_s: float = 0.0
    _by_key: Mapping[tuple[str, str, bool], Candidate] = field(default_factory=dict)
    _rank: Mapping[tuple[str, str, bool], int] = field(default_factory=dict)

    def rank_of(self, key: tuple[str, str, bool]) -> int:
        """Position of (variant, node type, spot) in the ranking; unknown keys rank last."""
        return self._rank.get(key, len(self._rank))

    def capacity_of(self, replica: ReplicaView) -> float:
        """Expected serving capacity of an existing replica (ours, else its own estimate)."""
        c = self._by_key.get((replica.variant, replica.node_type, replica.spot))
        return c.expected_rps if c is not None else replica.capacity_rps

    def on_demand(self) -> ModelOptions:
        """The same model restricted to its on-demand candidates."""
        return _model_options(
            self.model,
            self.slo_s,
            tuple(c for c in self.candidates if not c.spot),
            self.meets_slo,
        )


def _model_options(
    model: str, slo_s: float, candidates: tuple[Candidate, ...], meets_slo: bool
) -> ModelOptions:
    return ModelOptions(
        model=model,
        slo_s=slo_s,
        candidates=candidates,
        meets_slo=meets_slo,
        startup_s=max((c.startup_s for c in candidates), default=0.0),
        _by_key={(c.variant, c.node_type, c.spot): c for c in candidates},
        _rank={(c.variant, c.node_type, c.spot): i for i, c in enumerate(candidates)},
    )


def rank_model(
    target: ModelTarget,
    pool_types: frozenset[str],
    *,
    allow_spot: bool,
    seq_len: int = DEFAULT_TYPICAL_SEQ_LEN,
    budget_fraction: float = LATENCY_BUDGET_FRACTION,
    cache: dict[tuple[int, float], float] | None = None,
) -> ModelOptions:
    """Candidates of one model on the node types that have a pool, ranked by effective
    cost per unit of planning capacity (:func:`planning_rps`). O(P log P)."""
    cache = {} if cache is None else cache
    usable = [o for o in target.options if o.node.name in pool_types]

    def cap(o: VariantOption) -> float:
        key = (id(o.latency), target.slo_s)
        if key not in cache:
            cache[key] = planning_rps(
                o, target.slo_s, seq_len=seq_len, budget_fraction=budget_fraction
            )
        return cache[key]

    caps = [(o, cap(o)) for o in usable]
    meets_slo = any(c > 0 for _, c in caps) or not usable
    if not meets_slo:
        caps = [(o, best_effort_rps(o, seq_len=seq_len)) for o in usable]
    out: list[Candidate] = []
    for o, c in caps:
        if c <= 0:
            continue
        out.append(_candidate(target.model, o, c, spot=False))
        if allow_spot and o.node.spot_usd_per_hour > 0:
            out.append(_candidate(target.model, o, c, spot=True))
    out.sort(key=lambda c: (c.usd_per_rps_hour, c.node_type, c.variant, c.spot))
    return _model_options(target.model, target.slo_s, tuple(out), meets_slo)


def _candidate(model: str, o: VariantOption, cap: float, *, spot: bool) -> Candidate:
    return Candidate(
        model=model,
        variant=o.variant,
        node_type=o.node.name,
        spot=spot,
        capacity_rps=cap,
        usd_per_hour=effective_usd_per_hour(o.node, spot),
        overprovision=spot_overprovision(o.node) if spot else 1.0,
        startup_s=o.node.startup_s,
    )


def rank_context(
    context: AllocationContext,
    *,
    allow_spot: bool,
    seq_len: int = DEFAULT_TYPICAL_SEQ_LEN,
    budget_fraction: float = LATENCY_BUDGET_FRACTION,
) -> dict[str, ModelOptions]:
    """:func:`rank_model` for every model of the context (spot only if its share > 0)."""
    types = frozenset(p.node.name for p in context.pools)
    cache: dict[tuple[int, float], float] = {}
    spot = allow_spot and context.spot_share > 0
    return {
        m.model: rank_model(
            m,
            types,
            allow_spot=spot,
            seq_len=seq_len,
            budget_fraction=budget_fraction,
            cache=cache,
        )
        for m in context.models
    }


def validate_context(context: AllocationContext) -> None:
    """Raise CoscaleError on a context no policy can work with."""
    require(
        context.interval_s > 0,
        f"allocation interval_s must be > 0, got {context.interval_s}",
        "set the control interval to a positive number of seconds",
    )
    require(
        0.0 <= context.spot_share <= 1.0,
        f"spot_share must be in [0, 1], got {context.spot_share}",
        "give the maximum spot fraction as a number between 0 and 1",
    )
    names = [m.model for m in context.models]
    require(
        len(names) == len(set(names)),
        f"models listed twice in the allocation context: {names}",
        "list each model once",
    )
    for m in context.models:
        require(
            m.slo_s > 0,
            f"model {m.model!r} has a latency SLO of {m.slo_s} s",
            "give every model a positive latency SLO",
        )
    for p in context.pools:
        require(
            p.max_replicas >= 0,
            f"pool {p.node.name!r} has max_replicas {p.max_replicas}",
            "give every pool a non-negative replica limit",
        )


def validate_common(seq_len: int, budget_fraction: float) -> None:
    require(seq_len >= 0, f"seq_len must be >= 0, got {seq_len}", "use a token count >= 0")
    require(
        0.0 < budget_fraction <= 1.0,
        f"budget_fraction must be in (0, 1], got {budget_fraction}",
        "use the fraction of the SLO a batch may take, e.g. 0.5",
    )


# --------------------------------------------------------------------------- pools


class PoolLedger:
    """Free replicas per node type during one decision (a local object, never shared)."""

    __slots__ = ("_free", "_spot_free")

    def __init__(self, free: dict[str, int], spot_free: dict[str, int]) -> None:
        self._free = free
        self._spot_free = spot_free

    @classmethod
    def template(cls, pools: Sequence[Pool], spot_share: float) -> PoolLedger:
        free: dict[str, int] = {}
        spot: dict[str, int] = {}
        for p in pools:
            name = p.node.name
            free[name] = free.get(name, 0) + p.max_replicas
            spot[name] = spot.get(name, 0) + floor_int(spot_share * p.max_replicas)
        return cls(free, spot)

    def copy(self) -> PoolLedger:
        """A fresh ledger for one decision (dict copies: O(P) at C speed)."""
        return PoolLedger(dict(self._free), dict(self._spot_free))

    def free_by_type(self) -> Mapping[str, int]:
        """Free replicas per node type (a live read-only view, for fast skipping)."""
        return self._free

    def free(self, node_type: str, spot: bool) -> int:
        n = self._free.get(node_type, 0)
        return min(n, self._spot_free.get(node_type, 0)) if spot else n

    def take(self, node_type: str, spot: bool, n: int) -> int:
        """Reserve up to ``n`` replicas; returns how many were free."""
        free = self._free.get(node_type, 0)
        if spot:
            free = min(free, self._spot_free.get(node_type, 0))
        k = n if n < free else free
        if k <= 0:
            return 0
        self._free[node_type] -= k
        if spot:
            self._spot_free[node_type] -= k
        return k

    def release(self, node_type: str, spot: bool, n: int) -> None:
        """Give back ``n`` replicas reserved by :meth:`take`."""
        if n > 0:
            self._free[node_type] += n
            if spot:
                self._spot_free[node_type] += n


@dataclass(frozen=True, slots=True)
class Placement:
    """Replicas placed for one model: targets, expected serving capacity, counts."""

    targets: tuple[ReplicaTarget, ...]
    expected_rps: float
    count: int
    spot_count: int


def place_count(options: ModelOptions, n: int, ledger: PoolLedger) -> Placement:
    """Put ``n`` replicas on the ranked candidates, filling each pool before the next.

    O(P). Fewer than ``n`` are placed when the pools run out (``S_t`` reached).
    """
    targets: list[ReplicaTarget] = []
    left, rps, spot = n, 0.0, 0
    for c in options.candidates:
        if left <= 0:
            break
        got = ledger.take(c.node_type, c.spot, left)
        if got:
            targets.append(c.target(got))
            left -= got
            rps += got * c.expected_rps
            spot += got if c.spot else 0
    return Placement(tuple(targets), rps, n - left, spot)


def place_capacity(
    options: ModelOptions, required_rps: float, ledger: PoolLedger, spot_share: float
) -> Placement:
    """Cover ``required_rps`` of expected serving capacity at the least effective cost.

    Algorithm (candidates sorted by effective $/h per request/s, ``c`` a candidate's
    expected capacity per started replica: ``capacity`` on-demand, ``capacity / f`` spot):

    1. ``spot_budget = spot_share × required_rps`` is the capacity spot may serve.
    2. **Whole units**: the most efficient *usable* candidate — free room in its pools
       and, for spot, at least one unit ``c`` left in the spot budget — takes
       ``floor(need / c)`` replicas (spot: ``floor(min(need, spot_budget) / c)``),
       capped by its pool's free (spot) replicas. When the cap or the spot budget cut it
       short, the next usable candidate goes on with the rest; otherwise (and when its
       unit is already larger than the need) ``need < c`` is left — the remainder.
    3. **Remainder** (``need > 0``): covered by the single candidate whose cover
       ``ceil(need / c)`` replicas costs least in absolute $/h (``n × effective $/h /
       f``), among those with that many free replicas (spot only while ``n × c`` fits the
       spot budget); ties to the better-ranked. So a small need goes to a $0.10/h CPU
       replica rather than to a fraction of a $1/h GPU. Mixed covers are not searched.
       When no candidate can cover it alone (pools nearly full), on-demand candidates in
       rank order take ``ceil(need / c)`` each, as many as they have free.
    4. Share by count: if spot replicas exceed ``floor(spot_share × all replicas)`` (spot
       replicas can be smaller than on-demand ones), the most expensive spot replicas are
       dropped down to ``floor(spot_share × on_demand / (1 − spot_share))`` and steps 2–3
       are re-run over on-demand candidates for the capacity they served.

    Edge cases: ``required_rps ≤ 0`` places nothing; pools exhausted leave the rest
    uncovered (``expected_rps < required_rps``). O(P): each step is one pass.
    """
    if required_rps <= 0:
        return Placement((), 0.0, 0, 0)
    taken: dict[Candidate, int] = {}
    need = _greedy(options.candidates, required_rps, spot_share * required_rps, ledger, taken)
    spot_n = sum(n for c, n in taken.items() if c.spot)
    od_n = sum(n for c, n in taken.items() if not c.spot)
    if spot_n > floor_int(spot_share * (spot_n + od_n)):
        allowed = floor_int(spot_share * od_n / (1.0 - spot_share)) if spot_share < 1 else spot_n
        excess = spot_n - allowed
        for c in reversed([c for c in taken if c.spot]):
            drop = min(excess, taken[c])
            taken[c] -= drop
            ledger.release(c.node_type, c.spot, drop)
            excess -= drop
            need += drop * c.expected_rps
        od = tuple(c for c in options.candidates if not c.spot)
        _greedy(od, need, 0.0, ledger, taken)
    targets = tuple(c.target(n) for c, n in taken.items() if n > 0)
    return Placement(
        targets,
        sum(n * c.expected_rps for c, n in taken.items()),
        sum(taken.values()),
        sum(n for c, n in taken.items() if c.spot),
    )


def _greedy(
    candidates: Sequence[Candidate],
    need: float,
    spot_budget: float,
    ledger: PoolLedger,
    taken: dict[Candidate, int],
) -> float:
    """Steps 2–3 of :func:`place_capacity`; returns the capacity left uncovered."""
    free = ledger.free_by_type()
    for c in candidates:
        if need <= EPS:
            return 0.0
        if not free.get(c.node_type, 0) or (c.spot and spot_budget < c.expected_rps - EPS):
            continue  # its pools are full, or not one unit of it fits spot's share
        whole = floor_int(need / c.expected_rps)
        if whole == 0:
            break  # the best usable unit is larger than the need: the remainder
        want = floor_int(min(need, spot_budget) / c.expected_rps) if c.spot else whole
        got = ledger.take(c.node_type, c.spot, want)
        taken[c] = taken.get(c, 0) + got
        need -= got * c.expected_rps
        if c.spot:
            spot_budget -= got * c.expected_rps
        if got >= whole:
            break  # not cut short: what is left is less than one of its units
    if need <= EPS:
        return 0.0
    return _remainder(candidates, need, spot_budget, ledger, taken)


def _remainder(
    candidates: Sequence[Candidate],
    need: float,
    spot_budget: float,
    ledger: PoolLedger,
    taken: dict[Candidate, int],
) -> float:
    """Step 3: the cheapest single-candidate cover of ``need``, else on-demand spill."""
    best: tuple[float, int, Candidate] | None = None
    for c in candidates:
        n = ceil_int(need / c.expected_rps)
        if n <= 0 or ledger.free(c.node_type, c.spot) < n:
            continue
        if c.spot and n * c.expected_rps > spot_budget + EPS:
            continue
        cost = n * c.usd_per_hour / c.overprovision
        if best is None or cost < best[0] - EPS:
            best = (cost, n, c)
    if best is not None:
        _, n, c = best
        ledger.take(c.node_type, c.spot, n)
        taken[c] = taken.get(c, 0) + n
        return 0.0
    for c in candidates:
        if need <= EPS:
            break
        if c.spot:
            continue
        got = ledger.take(c.node_type, False, ceil_int(need / c.capacity_rps))
        if got:
            taken[c] = taken.get(c, 0) + got
            need -= got * c.expected_rps
    return max(0.0, need)


def keep_ready(
    targets: Sequence[ReplicaTarget],
    options: ModelOptions,
    replicas: Sequence[ReplicaView],
    need_rps: float,
    ledger: PoolLedger,
) -> tuple[ReplicaTarget, ...]:
    """Make before break: never let a plan's change of mix cut the ready capacity.

    A new placement may move capacity between node types or between on-demand and spot
    (replica counts are integers, so the cheapest mix changes with the need); stopping
    the old replicas at once would leave a gap of one start-up. So, with ``ready(k)`` the
    model's READY replicas of key ``k`` = (variant, node type, spot) and ``plan(k)`` the
    placement's count, the capacity the plan keeps ready, ``Σ min(plan(k), ready(k)) ×
    capacity(k)``, must reach ``goal = min(need_rps, Σ ready(k) × capacity(k))``. While
    it does not, ready replicas the placement would stop are kept (the plan's count of
    their key is raised), cheapest per unit capacity first, within the pools' free room.
    As the replacements become ready the kept ones are released by the next decisions.
    O(N + P) for the model's N replicas.
    """
    ready: dict[tuple[str, str, bool], int] = {}
    own: dict[tuple[str, str, bool], float] = {}
    for r in replicas:
        if r.state is ReplicaState.READY:
            key = (r.variant, r.node_type, r.spot)
            if key in ready:
                ready[key] += 1
            else:
                ready[key] = 1
                own[key] = options.capacity_of(r)
    counts: dict[tuple[str, str, bool], int] = {}
    for t in targets:
        counts[(t.variant, t.node_type, t.spot)] = (
            counts.get((t.variant, t.node_type, t.spot), 0) + t.count
        )
    total = sum(n * own[k] for k, n in ready.items())
    kept = sum(min(counts.get(k, 0), n) * own[k] for k, n in ready.items())
    goal = min(need_rps, total)
    if kept + EPS >= goal:
        return tuple(targets)
    surplus = sorted(
        (k for k, n in ready.items() if n > counts.get(k, 0) and own[k] > 0),
        key=lambda k: (options.rank_of(k), k),
    )
    extra: list[ReplicaTarget] = []
    for variant, node_type, spot in surplus:
        key = (variant, node_type, spot)
        want = min(ready[key] - counts.get(key, 0), ceil_int((goal - kept) / own[key]))
        got = ledger.take(node_type, spot, want)
        if got:
            extra.append(ReplicaTarget(options.model, variant, node_type, got, spot))
            kept += got * own[key]
        if kept + EPS >= goal:
            break
    return (*targets, *extra)


def needs_spare(options: ModelOptions, capacity: float, spares: int) -> bool:
    """Whether :func:`add_spares` applies: ``spares > 0``, the model has traffic
    (``capacity > 0`` rps provisioned) and its start-up exceeds its SLO
    (``options.startup_s > options.slo_s``)."""
    return spares > 0 and capacity > EPS and options.startup_s > options.slo_s


def add_spares(
    options: ModelOptions,
    targets: Sequence[ReplicaTarget],
    capacity: float,
    spares: int,
    ledger: PoolLedger,
) -> tuple[tuple[ReplicaTarget, ...], int]:
    """N + k: ``spares`` (k) replicas on top of a placement, so that the load still fits
    when k replicas die.

    Rule: when :func:`needs_spare` holds — the model has traffic (``capacity`` > 0) and
    a replica lost now cannot be replaced within the SLO (``startup_s > slo_s``: the
    requests it would have served wait a whole start-up) — k more replicas of the
    placement's *largest* candidate (highest expected capacity per replica, the one whose
    loss costs most; ties to the better-ranked) are added. With ``c_max`` that capacity
    and ``Σ`` the placement's expected capacity (``Σ ≥ capacity``), losing any k
    replicas leaves ``Σ + k × c_max − (lost) ≥ Σ ≥ capacity``: the load fits N − k of
    the N + k replicas. While a model has traffic it thus has at least 1 + k replicas.

    Edge cases: not applicable (no traffic, ``startup_s ≤ slo_s``, k = 0) or an empty
    placement (pools exhausted) → ``targets`` unchanged; no room left for the largest
    candidate → the other candidates in rank order (:func:`place_count`); no room at all
    → fewer spares (the returned count says how many were placed). O(P).
    """
    if not needs_spare(options, capacity, spares) or not targets:
        return tuple(targets), 0
    by_key = {(c.variant, c.node_type, c.spot): c for c in options.candidates}
    placed = [
        by_key[k]
        for k in ((t.variant, t.node_type, t.spot) for t in targets if t.count > 0)
        if k in by_key
    ]
    if not placed:
        return tuple(targets), 0
    largest = max(placed, key=lambda c: (c.expected_rps, -options.rank_of(_key(c))))
    got = ledger.take(largest.node_type, largest.spot, spares)
    extra = [largest.target(got)] if got else []
    if got < spares:
        rest = place_count(options, spares - got, ledger)
        extra.extend(rest.targets)
        got += rest.count
    return (*targets, *extra), got


def _key(c: Candidate) -> tuple[str, str, bool]:
    return (c.variant, c.node_type, c.spot)


# --------------------------------------------------------------------------- plans


def merge_targets(targets: Iterable[ReplicaTarget]) -> tuple[ReplicaTarget, ...]:
    """Sum counts of targets with the same (model, variant, node type, spot); drop zeros."""
    counts: dict[tuple[str, str, str, bool], int] = {}
    for t in targets:
        key = (t.model, t.variant, t.node_type, t.spot)
        counts[key] = counts.get(key, 0) + t.count
    return tuple(ReplicaTarget(m, v, n, c, s) for (m, v, n, s), c in counts.items() if c > 0)


def plan(time: float, targets: Iterable[ReplicaTarget], notes: Sequence[str]) -> Plan:
    return Plan(time=time, targets=merge_targets(targets), reason="; ".join(notes))


def shortfall_note(model: str, wanted: int, placed: int) -> str:
    return f"{model}: pools exhausted, {placed} of {wanted} replicas placed (S_t reached)"


def plan_counts(
    time: float,
    counts: Mapping[str, int],
    options: Mapping[str, ModelOptions],
    ledger: PoolLedger,
    head: str,
    limits: Mapping[str, int] | None = None,
) -> Plan:
    """A plan that places each model's replica count on its ranked candidates.

    The reason names each count, says when a count reached the model's ``S_t``
    (``limits``: the replicas its pools hold) and when fewer could be placed.
    """
    targets: list[ReplicaTarget] = []
    notes = [head]
    for model, n in counts.items():
        opts = options[model]
        placed = place_count(opts, n, ledger)
        targets.extend(placed.targets)
        notes.append(f"{model}={n}")
        limit = limits.get(model) if limits is not None else None
        if limit is not None and n > 0 and n >= limit:
            notes.append(f"{model}: capped at S_t = {limit} replicas (its pools are full)")
        if placed.count < n:
            notes.append(shortfall_note(model, n, placed.count))
        if not opts.meets_slo:
            notes.append(f"{model}: no option meets its SLO, serving best effort")
    return plan(time, targets, notes)


def group_by_model(replicas: Iterable[ReplicaView]) -> dict[str, list[ReplicaView]]:
    """Active (starting or ready) replicas per model, in one pass: O(N)."""
    out: dict[str, list[ReplicaView]] = {}
    for r in replicas:
        if r.state in ACTIVE_STATES:
            out.setdefault(r.model, []).append(r)
    return out


def pool_limit(options: ModelOptions, pools: Sequence[Pool]) -> int:
    """S_t for one model: the replicas its candidates' pools can hold in all."""
    types = {c.node_type for c in options.candidates}
    return sum(p.max_replicas for p in pools if p.node.name in types)


# --------------------------------------------------------------------------- demand


@dataclass(frozen=True, slots=True)
class DemandCurve:
    """A model's demand as rates (requests/s) per time bin.

    Bin ``i`` covers ``[start + i × bin_s, start + (i + 1) × bin_s)``; outside the bins the
    rate is 0. :meth:`peak` is the largest rate of any bin overlapping ``[t0, t1]``:
    O((t1 − t0) / bin_s).
    """

    rates: tuple[float, ...]
    bin_s: float
    start: float = 0.0

    def __post_init__(self) -> None:
        require(
            self.bin_s > 0,
            f"demand bin width must be > 0 s, got {self.bin_s}",
            "give the width of the demand bins in seconds",
        )
        require(
            all(math.isfinite(r) and r >= 0 for r in self.rates),
            "demand rates must be finite and >= 0",
            "remove negative, NaN or infinite rates from the demand curve",
        )

    def rate_at(self, t: float) -> float:
        i = math.floor((t - self.start) / self.bin_s)
        return self.rates[i] if 0 <= i < len(self.rates) else 0.0

    def peak(self, t0: float, t1: float) -> float:
        n = len(self.rates)
        i0 = max(0, math.floor((t0 - self.start) / self.bin_s))
        i1 = min(n - 1, math.floor((t1 - self.start) / self.bin_s))
        return max(self.rates[i0 : i1 + 1], default=0.0) if i0 <= i1 else 0.0

    def max(self) -> float:
        return max(self.rates, default=0.0)

    def mean(self) -> float:
        return sum(self.rates) / len(self.rates) if self.rates else 0.0


#: A demand given as a function of time (requests/s at t).
RateFunction = Callable[[float], float]
