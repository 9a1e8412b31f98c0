"""Energy (model, RAPL, NVML readings), the 10 Hz sampler, and the score P_m."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from coscale.catalog import load_catalog
from coscale.catalog.nodes import NodeType
from coscale.clock import ManualClock, SystemClock
from coscale.telemetry.energy import (
    EnergyMeter,
    GpuReading,
    NvmlReader,
    counter_delta,
    find_rapl_counters,
    model_energy_j,
    utilization,
)
from coscale.telemetry.prometheus import ServingMetrics, parse_text
from coscale.telemetry.sampler import SERVER_KEY, Sampler, psutil_reader
from coscale.telemetry.score import (
    Score,
    ScoreCollector,
    ScoreInputs,
    ScoreWeights,
    performance_score,
    reference_energy_per_item,
    window_inputs,
)


@pytest.fixture(scope="module")
def cpu_node() -> NodeType:
    return load_catalog().get("local-2vcpu")


@pytest.fixture(scope="module")
def gpu_node() -> NodeType:
    return next(n for n in load_catalog().types if n.accelerator_count > 0)


# --------------------------------------------------------------------------- the model


def test_model_energy_is_linear_power_times_time(cpu_node: NodeType) -> None:
    idle, peak = cpu_node.idle_watts, cpu_node.peak_watts
    assert model_energy_j(cpu_node, 0.0, 10.0) == pytest.approx(idle * 10)
    assert model_energy_j(cpu_node, 1.0, 10.0) == pytest.approx(peak * 10)
    assert model_energy_j(cpu_node, 0.25, 4.0) == pytest.approx((idle + 0.25 * (peak - idle)) * 4)
    assert model_energy_j(cpu_node, 2.0, 1.0) == pytest.approx(peak)  # clamped
    assert model_energy_j(cpu_node, 0.5, -1.0) == 0.0


@pytest.mark.parametrize(
    ("cpu_s", "window", "vcpus", "u"),
    [
        (0.1, 0.1, 2, 0.5),
        (0.4, 0.1, 2, 1.0),
        (0.0, 0.1, 2, 0.0),
        (1.0, 0.0, 2, 0.0),
        (-1, 1, 2, 0.0),
    ],
)
def test_utilization_is_cpu_seconds_over_window_times_vcpus(
    cpu_s: float, window: float, vcpus: int, u: float
) -> None:
    assert utilization(cpu_s, window, vcpus) == pytest.approx(u)


def test_meter_integrates_the_model_window_by_window(cpu_node: NodeType) -> None:
    meter = EnergyMeter(cpu_node)
    assert meter.source == "model:local-2vcpu"
    first = meter.update(10.0, 0.9)  # origin only
    assert first.energy_j == 0.0 and first.power_w == 0.0
    meter.update(11.0, 0.5)
    meter.update(13.0, 1.0)
    expected = cpu_node.watts(0.5) * 1.0 + cpu_node.peak_watts * 2.0
    assert meter.energy_j == pytest.approx(expected)
    assert meter.power_w == pytest.approx(cpu_node.peak_watts)
    meter.update(13.0, 1.0)  # zero window adds nothing
    assert meter.energy_j == pytest.approx(expected)
    assert "idle" in meter.describe()


# --------------------------------------------------------------------------- RAPL


def _zone(root: Path, name: str, label: str, uj: int, max_uj: int = 2**32) -> Path:
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "name").write_text(label + "\n")
    (zone / "energy_uj").write_text(f"{uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return zone


def test_rapl_packages_and_dram_but_not_subzones(tmp_path: Path, cpu_node: NodeType) -> None:
    powercap = tmp_path / "powercap"
    pkg0 = _zone(powercap, "intel-rapl:0", "package-0", 1_000_000, max_uj=10_000_000)
    _zone(powercap, "intel-rapl:0:0", "core", 500_000)
    dram = _zone(powercap, "intel-rapl:0:1", "dram", 2_000_000)
    pkg1 = _zone(powercap, "intel-rapl:1", "package-1", 3_000_000)
    counters = find_rapl_counters(powercap, tmp_path / "no-hwmon")
    assert {c.path.parent.name for c in counters} == {
        "intel-rapl:0",
        "intel-rapl:0:1",
        "intel-rapl:1",
    }
    meter = EnergyMeter.detect(cpu_node, powercap_root=powercap, hwmon_root=tmp_path / "none")
    assert meter.source == "rapl"
    meter.update(0.0, 0.0)
    # package 0 wraps at 10 J: 1 J → 10 J wraps → 0.5 J is +9.5 J; dram +1 J; package 1 +2 J
    (pkg0 / "energy_uj").write_text("500000\n")
    (dram / "energy_uj").write_text("3000000\n")
    (pkg1 / "energy_uj").write_text("5000000\n")
    reading = meter.update(2.0, 0.123)  # utilization is ignored: RAPL measures
    assert reading.energy_j == pytest.approx(9.5 + 1.0 + 2.0)
    assert reading.power_w == pytest.approx(12.5 / 2.0)


def test_psys_is_used_alone(tmp_path: Path) -> None:
    powercap = tmp_path / "powercap"
    _zone(powercap, "intel-rapl:0", "package-0", 1)
    _zone(powercap, "intel-rapl:1", "psys", 1)
    (counter,) = find_rapl_counters(powercap, tmp_path)
    assert counter.path.parent.name == "intel-rapl:1"


def test_unreadable_rapl_falls_back_to_the_model(tmp_path: Path, cpu_node: NodeType) -> None:
    powercap = tmp_path / "powercap"
    zone = _zone(powercap, "intel-rapl:0", "package-0", 1)
    (zone / "energy_uj").unlink()
    (zone / "energy_uj").mkdir()  # exists but cannot be read as a number
    assert find_rapl_counters(powercap, tmp_path) == []
    meter = EnergyMeter.detect(cpu_node, powercap_root=powercap, hwmon_root=tmp_path)
    assert meter.source == "model:local-2vcpu"


def test_amd_energy_hwmon_sockets_only(tmp_path: Path) -> None:
    hwmon = tmp_path / "hwmon" / "hwmon3"
    hwmon.mkdir(parents=True)
    (hwmon / "name").write_text("amd_energy\n")
    for n, label, value in ((1, "Ecore000", 7), (17, "Esocket0", 123), (18, "Esocket1", 456)):
        (hwmon / f"energy{n}_label").write_text(label + "\n")
        (hwmon / f"energy{n}_input").write_text(f"{value}\n")
    counters = find_rapl_counters(tmp_path / "no-powercap", tmp_path / "hwmon")
    assert sorted(c.read_uj() for c in counters) == [123, 456]


@pytest.mark.parametrize(
    ("before", "after", "max_uj", "delta"),
    [(10, 25, 100, 15), (90, 5, 100, 15), (90, 5, None, 0), (200, 5, 100, 0)],
)
def test_counter_delta_wraps_and_resets(
    before: int, after: int, max_uj: int | None, delta: int
) -> None:
    assert counter_delta(before, after, max_uj) == delta


# --------------------------------------------------------------------------- GPUs


def test_gpu_energy_from_counters_or_power(cpu_node: NodeType, gpu_node: NodeType) -> None:
    meter = EnergyMeter(cpu_node, gpus=True)
    assert meter.source == "model:local-2vcpu+nvml"
    meter.update(
        0.0, 0.0, [GpuReading(0, 10.0, 100.0, 5_000.0, 0), GpuReading(1, 0, 50.0, None, 0)]
    )
    meter.update(
        2.0, 0.0, [GpuReading(0, 90.0, 300.0, 9_000.0, 0), GpuReading(1, 0, 60.0, None, 0)]
    )
    assert meter.gpu_j == pytest.approx(4.0 + 60.0 * 2)  # counter: 4000 mJ; no counter: P × Δt
    assert meter.host_j == pytest.approx(cpu_node.idle_watts * 2)
    gpu_meter = EnergyMeter(gpu_node, gpus=True)
    assert gpu_meter.source == "nvml"  # the catalog's watts include the GPUs: no double count
    gpu_meter.update(0.0, 1.0, [])
    gpu_meter.update(1.0, 1.0, [])
    assert gpu_meter.energy_j == 0.0
    assert EnergyMeter(gpu_node).source == f"model:{gpu_node.name}"


class FakeNvml:
    """The few pynvml functions NvmlReader calls, answering like a driver would."""

    class _Util:
        gpu = 87

    class _Mem:
        used = 3 * 2**30

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> object:
        return self._Util()

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return 250_500  # mW

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        if handle == 1:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return 123_456  # mJ

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> object:
        return self._Mem()

    def nvmlShutdown(self) -> None:
        pass


def test_nvml_reader_units_and_unsupported_counters() -> None:
    reader = NvmlReader(FakeNvml(), [0, 1])
    first, second = reader.read()
    assert first == GpuReading(0, 87.0, 250.5, 123_456.0, 3 * 2**30)
    assert second.energy_mj is None and second.power_w == 250.5
    reader.close()


def test_nvml_absent_means_no_gpu_telemetry() -> None:
    try:
        import pynvml  # noqa: F401
    except ImportError:
        assert NvmlReader.open() is None
    else:  # pragma: no cover - GPU machines
        pytest.skip("pynvml is installed here")


# --------------------------------------------------------------------------- the sampler


@dataclass
class FakeProcs:
    """pid → (cpu seconds, rss) a test sets; a missing pid is a vanished process."""

    table: dict[int, tuple[float, int]]

    def __call__(self, pid: int) -> tuple[float, int] | None:
        return self.table.get(pid)


def test_sampler_cpu_percent_utilization_and_energy(cpu_node: NodeType) -> None:
    clock = ManualClock()
    procs = FakeProcs({1: (10.0, 100), 2: (5.0, 200), 3: (1.0, 300)})
    metrics = ServingMetrics()
    workers = {"r0": 2, "r1": 3}
    sampler = Sampler(
        lambda: workers,
        clock=clock,
        meter=EnergyMeter(cpu_node),
        metrics=metrics,
        read_process=procs,
        server_pid=1,
    )
    first = sampler.sample()
    assert first.window_s == 0 and first.server is not None and first.server.cpu_percent == 0
    clock.advance(0.1)
    procs.table = {1: (10.02, 110), 2: (5.1, 210), 3: (1.05, 310)}
    s = sampler.sample()
    assert s.window_s == pytest.approx(0.1)
    assert s.server is not None and s.server.cpu_percent == pytest.approx(20.0)
    cpu = {p.name: p.cpu_percent for p in s.replicas}
    assert cpu == pytest.approx({"r0": 100.0, "r1": 50.0})
    assert s.utilization == pytest.approx((0.02 + 0.1 + 0.05) / (0.1 * cpu_node.vcpus))
    assert s.energy.energy_j == pytest.approx(cpu_node.watts(s.utilization) * 0.1)
    text = metrics.render()
    parsed = parse_text(text)
    replica_cpu = parsed["coscale_replica_cpu_percent"]
    assert [lab["replica"] for lab, _ in replica_cpu] == ["r0", "r1"]
    assert [v for _, v in replica_cpu] == pytest.approx([100.0, 50.0])
    assert parsed["coscale_server_memory_bytes"] == [({}, 110)]
    # r1's process vanishes; r0 restarts under a new pid (its CPU origin resets)
    clock.advance(0.1)
    workers = {"r0": 4, "r1": 3}
    procs.table = {1: (10.03, 110), 4: (0.5, 50)}
    s = sampler.sample()
    assert [(p.name, p.pid, p.cpu_percent) for p in s.replicas] == [("r0", 4, 0.0)]
    assert s.utilization == pytest.approx(0.01 / 0.2)
    parsed = parse_text(metrics.render())
    assert [lab["replica"] for lab, _ in parsed["coscale_replica_cpu_percent"]] == ["r0"]
    assert parsed["coscale_energy_joules_total"][0][0] == {"source": "model:local-2vcpu"}


def test_sampler_ticks_at_10_hz_on_the_clock_and_stops(cpu_node: NodeType) -> None:
    clock = ManualClock()
    sampler = Sampler(
        dict, clock=clock, meter=EnergyMeter(cpu_node), read_process=FakeProcs({}), server_pid=1
    )
    sampler.start()
    assert len(sampler.samples) == 1
    clock.advance(1.0)
    assert len(sampler.samples) == 11
    times = [s.time for s in sampler.samples]
    assert times == pytest.approx([0.1 * i for i in range(11)])
    sampler.stop()
    clock.advance(1.0)
    assert len(sampler.samples) == 11 and clock.pending == 0


def test_sampler_survives_a_failing_sample(cpu_node: NodeType) -> None:
    clock = ManualClock()
    calls = []

    def pids() -> dict[str, int]:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("system busy")
        return {}

    sampler = Sampler(pids, clock=clock, meter=EnergyMeter(cpu_node), read_process=FakeProcs({}))
    sampler.start()
    clock.advance(0.35)
    assert sampler.errors == 1 and len(sampler.samples) == 3


def test_energy_between_reads_the_history(cpu_node: NodeType) -> None:
    clock = ManualClock()
    sampler = Sampler(
        dict, clock=clock, meter=EnergyMeter(cpu_node), read_process=FakeProcs({}), history=50
    )
    sampler.start()
    clock.advance(2.0)  # idle: idle_watts the whole time
    assert sampler.energy_between(0.55, 1.55) == pytest.approx(cpu_node.idle_watts * 1.0)
    assert sampler.energy_between(-10, 10) == pytest.approx(cpu_node.idle_watts * 2.0)
    assert sampler.energy_between(1.0, 1.0) == 0.0
    assert len(sampler.samples) == 21


def test_sampler_rejects_bad_interval(cpu_node: NodeType) -> None:
    with pytest.raises(ValueError):
        Sampler(dict, clock=ManualClock(), meter=EnergyMeter(cpu_node), interval_s=0)


def test_psutil_reader_real_processes() -> None:
    read = psutil_reader()
    me = read(os.getpid())
    assert me is not None and me[0] > 0 and me[1] > 10_000_000
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert read(child.pid) is None  # exited and reaped


def test_sampler_measures_a_busy_worker_process(cpu_node: NodeType) -> None:
    busy = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.time() + 5\nwhile time.time() < end: pass"]
    )
    try:
        sampler = Sampler(
            lambda: {"r0": busy.pid}, clock=SystemClock(), meter=EnergyMeter(cpu_node)
        )
        sampler.sample()
        time.sleep(0.5)
        s = sampler.sample()
        (worker,) = s.replicas
        assert worker.pid == busy.pid and worker.rss_bytes > 1_000_000
        assert worker.cpu_percent > 10.0  # a spinning process, even on a shared machine
        assert s.utilization > 0.05
        assert s.energy.energy_j > cpu_node.idle_watts * 0.4
        busy.kill()
        busy.wait()
        assert sampler.sample().replicas == ()
        assert s.server is not None and s.server.name == SERVER_KEY
    finally:
        busy.kill()
        busy.wait()


# --------------------------------------------------------------------------- the score P_m


def _inputs(**kw: float) -> ScoreInputs:
    base = dict(
        slo_s=0.05,
        latency_p99_s=0.025,
        requests=100,
        on_time=100,
        items_completed=100,
        energy_j=1.0,
        reference_j_per_item=0.01,
    )
    base.update(kw)
    return ScoreInputs(**base)  # type: ignore[arg-type]


def test_score_ideal_is_one() -> None:
    assert performance_score(_inputs()) == Score(1.0, 1.0, 1.0, 1.0)


def test_score_terms() -> None:
    s = performance_score(_inputs(latency_p99_s=0.1, on_time=80, energy_j=4.0))
    assert s is not None
    assert s.latency == pytest.approx(0.5)  # p99 twice the SLO
    assert s.throughput == pytest.approx(0.8)  # 80 of 100 on time
    assert s.energy == pytest.approx(0.25)  # 0.04 J per item vs 0.01 J reference
    assert s.value == pytest.approx((0.5 + 0.8 + 0.25) / 3)
    weighted = performance_score(_inputs(latency_p99_s=0.1), ScoreWeights(2, 1, 1))
    assert weighted is not None and weighted.value == pytest.approx((2 * 0.5 + 1 + 1) / 4)


def test_score_edge_cases() -> None:
    assert performance_score(_inputs(requests=0, on_time=0, items_completed=0)) is None
    nothing = performance_score(_inputs(latency_p99_s=None, on_time=0, items_completed=0))
    assert nothing == Score(0.0, 0.0, 0.0, 0.0)
    unknown_ref = performance_score(_inputs(reference_j_per_item=0.0))
    assert unknown_ref is not None and unknown_ref.energy == 0.0
    free = performance_score(_inputs(energy_j=0.0))
    assert free is not None and free.energy == 1.0
    with pytest.raises(ValueError):
        ScoreWeights(0, 0, 0)
    with pytest.raises(ValueError):
        ScoreWeights(-1, 1, 1)
    assert reference_energy_per_item(16.4, 4100.0) == pytest.approx(0.004)
    assert reference_energy_per_item(16.4, 0.0) == 0.0


@dataclass(frozen=True)
class Rec:
    model: str
    arrival: float
    finish: float
    deadline: float
    outcome: str = "completed"
    items: int = 1
    batch_size: int = 1
    service_s: float = 0.01


def test_window_inputs_per_model_and_energy_split() -> None:
    records = [
        Rec("a", 0.0, 0.01, 0.05, service_s=0.01),
        Rec("a", 0.0, 0.10, 0.05, service_s=0.01),  # late
        Rec("a", 0.0, 0.0, 0.05, outcome="rejected", service_s=math.nan, batch_size=0),
        Rec("b", 0.5, 0.52, 0.6, items=4, batch_size=8, service_s=0.06),  # 0.03 busy-s
        Rec("b", -5.0, -4.0, 0.0),  # finished before the window
    ]
    got = window_inputs(
        records,
        start=0.0,
        end=1.0,
        slo_s={"a": 0.05, "b": 0.1},
        energy_j=10.0,
        reference_j_per_item={"a": 0.5},
    )
    a, b = got["a"], got["b"]
    assert (a.requests, a.on_time, a.items_completed) == (3, 1, 2)
    assert a.latency_p99_s == pytest.approx(0.0991)
    assert (b.requests, b.on_time, b.items_completed) == (1, 1, 4)
    assert a.energy_j == pytest.approx(10.0 * 0.02 / 0.05)  # busy 0.02 of 0.05 replica-s
    assert b.energy_j == pytest.approx(10.0 * 0.03 / 0.05)
    assert a.reference_j_per_item == 0.5 and b.reference_j_per_item == 0.0


def test_score_collector_sets_and_clears_the_gauges() -> None:
    metrics = ServingMetrics()
    now = [100.0]
    records: list[Rec] = [Rec("digits", 99.0, 99.01, 99.05)]
    collector = ScoreCollector(
        score_gauge=metrics.score,
        term_gauge=metrics.score_term,
        records=lambda: records,
        energy_between=lambda start, end: 0.005,
        reference=lambda: {"digits": 0.01},
        slo_s={"digits": 0.05},
        now=lambda: now[0],
    )
    metrics.registry.add_collector(collector)
    parsed = parse_text(metrics.render())
    assert parsed["coscale_performance_score"] == [({"model": "digits"}, 1.0)]
    assert len(parsed["coscale_performance_score_term"]) == 3
    now[0] = 1000.0  # the request left the window: no score
    parsed = parse_text(metrics.render())
    assert "coscale_performance_score" not in parsed
