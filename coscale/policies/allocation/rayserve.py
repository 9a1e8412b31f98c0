"""Ray Serve autoscaling (``replica_queue_length_autoscaling_policy``), per model.

The default policy of Ray Serve's controller with each model standing for one
Deployment. Every call is one controller tick (Ray ticks every 0.1 s; here, whatever
interval the executor calls at). A tick records the model's ongoing requests
``o = Σ outstanding`` of its replicas ``+`` its queue length (0 when the model is missing
from the snapshot); samples older than ``look_back_period_s`` are dropped and at most
``max_samples`` (4,096) kept. With ``running`` = the model's READY replicas and
``target`` = the replica target last decided (before the first tick: its starting +
ready replicas, or ``initial_replicas`` — default ``min_replicas`` — when it has none):

1. **Average**: ``total`` = mean of the samples of the last ``look_back_period_s`` = 30 s
   (the current one included).
2. **Cold start**: ``running == 0`` and ``total > 0`` → ``target = max(ceil(1 ×
   upscaling_factor), target)`` at once, no delay; ``running == 0`` and no traffic →
   ``target`` unchanged (in both cases a pending decision's count is left as it is).
3. **Desired**: ``error = total / (target_ongoing_requests × running)`` (default 2);
   ``factor = upscaling_factor`` if ``error ≥ 1`` else ``downscaling_factor`` (both
   default 1); ``desired = ceil(running × (1 + (error − 1) × factor))``; if
   ``ceil(running × error) < running`` and ``desired == running``, ``desired − 1`` (a
   smoothing factor must not block a scale-down); clamped to ``[min_replicas,
   max_replicas]`` (defaults 1 and the replicas the model's pools hold, S_t).
4. **Delays**: ``desired > target`` must hold on consecutive ticks for
   ``upscale_delay_s`` = 30 s (``desired < target`` for ``downscale_delay_s`` = 600 s),
   counted from the first such tick, before ``target = desired``; then the count
   restarts. A tick in the other direction restarts the count in that direction; a tick
   with ``desired == target`` clears it. (Ray counts ticks: ``> delay / interval`` ticks,
   which for a fixed interval is the same instant.)
5. **Placement** on the cheapest on-demand option per unit capacity first, spilling over
   full pools; a count at S_t, or fewer placed because every pool is full, is said in
   the reason.

``max_ongoing_requests`` = 5 (a hard cap per replica) is the router's business, not
allocation's. Complexity per tick: O(N + M × (S + P)).
"""

from __future__ import annotations

from dataclasses import dataclass

from coscale.policies.allocation.capacity import (
    ACTIVE_STATES,
    DEFAULT_TYPICAL_SEQ_LEN,
    EPS,
    LATENCY_BUDGET_FRACTION,
    PoolLedger,
    ceil_int,
    plan_counts,
    pool_limit,
    rank_context,
    require,
    validate_common,
    validate_context,
)
from coscale.policies.base import AllocationContext
from coscale.types import Plan, ReplicaState, Snapshot


@dataclass(frozen=True, slots=True)
class RayModel:
    """Per model: samples (time, ongoing), the current target, and the pending decision
    (``direction`` +1 up / −1 down / 0 none, held ``since`` its first tick)."""

    samples: tuple[tuple[float, float], ...]
    target: int
    direction: int = 0
    since: float | None = None


@dataclass(frozen=True, slots=True)
class RayState:
    models: tuple[tuple[str, RayModel], ...]

    def get(self, model: str) -> RayModel | None:
        return next((m for name, m in self.models if name == model), None)


class RayServePolicy:
    """Ray Serve's default autoscaling policy (see the module docstring)."""

    name = "rayserve"

    def __init__(
        self,
        context: AllocationContext,
        *,
        target_ongoing_requests: float = 2.0,
        look_back_period_s: float = 30.0,
        upscale_delay_s: float = 30.0,
        downscale_delay_s: float = 600.0,
        upscaling_factor: float = 1.0,
        downscaling_factor: float = 1.0,
        min_replicas: int = 1,
        max_replicas: int | None = None,
        initial_replicas: int | None = None,
        max_samples: int = 4096,
        seq_len: int = DEFAULT_TYPICAL_SEQ_LEN,
        budget_fraction: float = LATENCY_BUDGET_FRACTION,
    ) -> None:
        validate_context(context)
        validate_common(seq_len, budget_fraction)
        require(
            target_ongoing_requests > 0 and upscaling_factor > 0 and downscaling_factor > 0,
            "target_ongoing_requests and the scaling factors must be > 0",
            "use Ray Serve's defaults: 2, 1.0 and 1.0",
        )
        require(
            look_back_period_s > 0 and upscale_delay_s >= 0 and downscale_delay_s >= 0,
            "need look_back_period_s > 0 and delays >= 0",
            "use Ray Serve's defaults: 30 s, 30 s and 600 s",
        )
        require(
            min_replicas >= 0 and (max_replicas is None or max_replicas >= min_replicas),
            f"need 0 <= min_replicas <= max_replicas, got {min_replicas}, {max_replicas}",
            "fix the replica bounds",
        )
        require(
            initial_replicas is None or initial_replicas >= 0,
            "initial_replicas must be >= 0",
            "give a count, or leave it unset to start at min_replicas",
        )
        require(max_samples >= 1, "max_samples must be >= 1", "keep at least one sample")
        self.context = context
        self.target_ongoing_requests = target_ongoing_requests
        self.look_back_period_s = look_back_period_s
        self.upscale_delay_s = upscale_delay_s
        self.downscale_delay_s = downscale_delay_s
        self.upscaling_factor = upscaling_factor
        self.downscaling_factor = downscaling_factor
        self.min_replicas = min_replicas
        self.initial_replicas = min_replicas if initial_replicas is None else initial_replicas
        self.max_samples = max_samples
        self._options = rank_context(
            context, allow_spot=False, seq_len=seq_len, budget_fraction=budget_fraction
        )
        self._s_t = {m: pool_limit(o, context.pools) for m, o in self._options.items()}
        self._max = {
            m: max_replicas if max_replicas is not None else n for m, n in self._s_t.items()
        }
        self._ledger = PoolLedger.template(context.pools, 0.0)

    def decide(self, snapshot: Snapshot, state: RayState | None) -> tuple[Plan, RayState]:
        now = snapshot.time
        ongoing: dict[str, float] = {v.name: float(v.queue_length) for v in snapshot.models}
        running: dict[str, int] = {}
        active: dict[str, int] = {}
        for r in snapshot.replicas:
            ongoing[r.model] = ongoing.get(r.model, 0.0) + r.outstanding
            if r.state is ReplicaState.READY:
                running[r.model] = running.get(r.model, 0) + 1
            if r.state in ACTIVE_STATES:
                active[r.model] = active.get(r.model, 0) + 1
        models: list[tuple[str, RayModel]] = []
        for m in self.context.models:
            prev = state.get(m.model) if state is not None else None
            if prev is None:
                start = active.get(m.model, 0) or self.initial_replicas
                prev = RayModel((), min(start, self._max[m.model]))
            samples = self._record(prev, now, ongoing.get(m.model, 0.0))
            models.append(
                (m.model, self._tick(m.model, now, samples, running.get(m.model, 0), prev))
            )
        counts = {name: rm.target for name, rm in models}
        plan = plan_counts(now, counts, self._options, self._ledger.copy(), "rayserve", self._s_t)
        return plan, RayState(tuple(models))

    def _record(self, prev: RayModel, now: float, value: float) -> tuple[tuple[float, float], ...]:
        cutoff = now - self.look_back_period_s
        kept = tuple(s for s in prev.samples if cutoff < s[0] < now)
        return (*kept, (now, value))[-self.max_samples :]

    def desired(self, model: str, total: float, running: int) -> int:
        """Step 3: the replicas the averaged load asks for (``running`` > 0)."""
        error = total / (self.target_ongoing_requests * running)
        factor = self.upscaling_factor if error >= 1 else self.downscaling_factor
        desired = ceil_int(running * (1 + (error - 1) * factor))
        if ceil_int(running * error) < running and desired == running:
            desired -= 1
        return min(max(desired, self.min_replicas), self._max[model])

    def _tick(
        self,
        model: str,
        now: float,
        samples: tuple[tuple[float, float], ...],
        running: int,
        prev: RayModel,
    ) -> RayModel:
        total = sum(v for _, v in samples) / len(samples)
        if running == 0:
            if total > 0:
                cold = max(ceil_int(1 * self.upscaling_factor), prev.target)
                return RayModel(samples, min(cold, self._max[model]), prev.direction, prev.since)
            return RayModel(samples, prev.target, prev.direction, prev.since)
        desired = self.desired(model, total, running)
        if desired == prev.target:
            return RayModel(samples, prev.target)
        direction = 1 if desired > prev.target else -1
        since = prev.since if prev.direction == direction and prev.since is not None else now
        delay = self.upscale_delay_s if direction > 0 else self.downscale_delay_s
        if now - since >= delay - EPS:
            return RayModel(samples, desired)
        return RayModel(samples, prev.target, direction, since)
