"""Node types as typed rows (the data lives in ``nodes.yaml`` beside this file)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class NodeType:
    """One cloud machine type, with public facts.

    ``speedup``: how many times faster this node type runs a model variant than the
    machine the profile was measured on, per replica (documented per row in the data
    file; 1.0 for the reference CPU type). ``replicas_per_node``: how many replicas of
    one model fit on a node. ``preemption_per_hour``: expected spot preemptions per
    node-hour. ``failure_per_hour``: expected hardware/host failures per node-hour.
    ``startup_s``: seconds from the decision to start a replica to it serving.
    """

    name: str
    provider: str
    vcpus: int
    memory_gib: float
    accelerator: str | None
    accelerator_count: int
    accelerator_memory_gib: float
    on_demand_usd_per_hour: float
    spot_usd_per_hour: float
    idle_watts: float
    peak_watts: float
    preemption_per_hour: float
    failure_per_hour: float
    startup_s: float
    speedup: float
    replicas_per_node: int
    price_source: str
    price_date: str

    def usd_per_hour(self, spot: bool) -> float:
        return self.spot_usd_per_hour if spot else self.on_demand_usd_per_hour

    def watts(self, utilization: float) -> float:
        """Linear power model: idle + (peak − idle) × utilization, utilization clamped to [0, 1]."""
        u = min(max(utilization, 0.0), 1.0)
        return self.idle_watts + (self.peak_watts - self.idle_watts) * u
