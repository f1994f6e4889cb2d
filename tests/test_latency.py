"""Latency measurement against modules of known duration: statistics, best pass, stopping rule,
per-layer table; caching on real pruned models."""

from __future__ import annotations

import math

import pytest
import torch
from fakes import Wait, busy_wait
from torch import nn

from envs import latency
from envs.latency import (
    LatencyConfig,
    LatencyMeter,
    LatencyStats,
    compare_latency,
    measure_latency,
    paired_relative_latency,
    profile_layers,
    shape_signature,
)
from envs.latency_store import MeasurementStore
from envs.pruning import Pruner
from models.architectures import SMALL_ARCHITECTURES
from models.errors import RlpruneError

SHAPE = (1, 16, 16)
FAST = LatencyConfig(warmup=1, repeats=5, threads=1)


class Steps(nn.Module):
    """Identity whose forward passes take ``durations_ms`` in turn, cycling: a known schedule."""

    def __init__(self, *durations_ms: float) -> None:
        super().__init__()
        self.durations_ms, self.calls = durations_ms, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        busy_wait(self.durations_ms[self.calls % len(self.durations_ms)])
        self.calls += 1
        return x

    def extra_repr(self) -> str:  # a schedule is an architecture (for the store's key)
        return ", ".join(map(str, self.durations_ms))


def test_stats_from_known_times():
    stats = LatencyStats.from_times([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (stats.median_ms, stats.p25_ms, stats.p75_ms, stats.min_ms, stats.n) == (3, 2, 4, 1, 5)
    assert stats.spread == pytest.approx(2 / 3)
    assert LatencyStats.from_times([2.0]).spread == 0


def test_paired_relative_latency_by_hand():
    assert paired_relative_latency([1.0, 2.0, 4.0], [2.0, 4.0, 8.0]) == (pytest.approx(0.5), 0.0)
    # log-ratios 0, 0, -ln2, -ln2: median -ln2/2, MAD ln2/2, se 1.2533 * 1.4826 * MAD / sqrt(4).
    ratio, half_width = paired_relative_latency([1.0] * 4, [1.0, 1.0, 2.0, 2.0])
    se = 1.2533 * 1.4826 * math.log(2) / 2 / 2
    assert ratio == pytest.approx(2**-0.5)
    assert half_width == pytest.approx(math.expm1(1.96 * se))
    assert paired_relative_latency([3.0], [1.0]) == (pytest.approx(3.0), math.inf)


def _best(measure, tries: int = 3):
    """Elementwise minimum over a few tries: on a shared machine a run is only ever slowed down."""
    results = [measure() for _ in range(tries)]
    return {key: min(r[key] for r in results) for key in results[0]}


def test_measure_latency_times_a_known_duration_and_restores_mode_and_threads():
    model = nn.Sequential(Wait(1.0)).train()
    threads = torch.get_num_threads()
    stats = measure_latency(model, SHAPE, LatencyConfig(warmup=1, repeats=7, threads=1))
    assert stats.n == 7
    assert 1.0 <= stats.min_ms < 1.1  # a busy wait is never shorter; the fastest run is close
    assert model.training and torch.get_num_threads() == threads
    best = _best(lambda: {"median": measure_latency(model, SHAPE, FAST).median_ms})
    assert 1.0 <= best["median"] < 1.2


def test_compare_latency_keeps_each_models_best_pass():
    # Pass 1 of `slowed` (1 warm-up + 5 repeats) runs at 3 ms, as if the machine were busy.
    slowed = Steps(*[3.0] * 6, *[1.0] * 6)
    stats = compare_latency({"steady": Wait(0.5), "slowed": slowed}, SHAPE, FAST, passes=2)
    assert list(stats) == ["steady", "slowed"] and slowed.calls == 12
    assert 0.5 <= stats["steady"].min_ms < 0.6
    assert 1.0 <= stats["slowed"].min_ms < 1.1  # the slow pass was dropped
    assert stats["slowed"].median_ms < 2.0  # even if this pass was slowed too


def test_meter_ratio_of_known_durations():
    def ratio() -> float:
        meter = LatencyMeter(Wait(1.0), SHAPE, LatencyConfig(warmup=1, repeats=20))
        return meter.relative_latency(Wait(0.5))[0]

    # Median of three meters: short waits, as the scheduler cuts long ones on a busy machine.
    assert sorted(ratio() for _ in range(3))[1] == pytest.approx(0.5, abs=0.1)


@pytest.fixture
def exact_clock(monkeypatch):
    """Each forward pass "takes" the module's scheduled duration, without running it."""

    def timer(model, x, device, pause_ms=0.0):
        def run() -> float:
            durations = model.durations_ms
            model.calls += 1
            return durations[(model.calls - 1) % len(durations)]

        return run

    monkeypatch.setattr(latency, "_timer", timer)


def test_meter_stops_once_the_ratio_is_known(exact_clock):
    cfg = LatencyConfig(warmup=1, repeats=20, min_repeats=5)
    ratio, stats = LatencyMeter(Steps(4.0), SHAPE, cfg).relative_latency(Steps(2.0))
    assert ratio == pytest.approx(0.5) and stats.n == 5  # steady: known after the fewest pairs
    # Pair ratios 0.25, 0.5, 0.75 in turn: spread far beyond +-2%, so all 20 pairs are timed.
    ratio, stats = LatencyMeter(Steps(4.0), SHAPE, cfg).relative_latency(Steps(1.0, 2.0, 3.0))
    assert stats.n == 20 and ratio == pytest.approx(0.5)
    # Unless a decision hangs on it: clearly under a threshold of 2, five pairs suffice...
    meter = LatencyMeter(Steps(4.0), SHAPE, cfg, threshold=2.0)
    assert meter.relative_latency(Steps(1.0, 2.0, 3.0))[1].n == 5
    # ...but not when the threshold is within the spread.
    meter = LatencyMeter(Steps(4.0), SHAPE, cfg, threshold=0.5)
    assert meter.relative_latency(Steps(1.0, 2.0, 3.0))[1].n == 20
    # With the stopping rule off, every repeat is timed whatever the spread.
    exact = LatencyConfig(warmup=0, repeats=6, rel_tol=None)
    assert LatencyMeter(Steps(4.0), SHAPE, exact).relative_latency(Steps(2.0))[1].n == 6


def test_bridged_meter_times_candidates_against_the_bridge_and_scales_by_its_ratio(exact_clock):
    cfg = LatencyConfig(warmup=1, repeats=20, min_repeats=5)
    reference, bridge = Steps(4.0), Steps(2.0)
    meter = LatencyMeter(reference, SHAPE, cfg)
    meter.set_bridge(bridge, bridge_pairs=8, bridge_every=2, bridge_retime_pairs=3)
    assert meter.bridge_ratio == pytest.approx(0.5)
    calls = reference.calls
    assert meter.relative_latency(Steps(1.0))[0] == pytest.approx(0.25)  # 1/2 of 2/4
    assert reference.calls == calls  # the reference is not run for a candidate
    # The second measurement (fresh: a Steps module has no parameters, so every one has the
    # same shape signature) is followed by three more pairs of the bridge.
    meter.relative_latency(Steps(3.0), fresh=True)
    assert reference.calls == calls + 1 + 3  # one warm-up, three pairs
    # The threshold is read in the bridge's units: pair ratios 0.25, 0.5, 0.75 to the bridge
    # (0.125-0.375 of the reference) are known to lie under 0.6 of the reference (1.2 of the
    # bridge) after five pairs; read as 0.6 of the bridge they would take all twenty.
    meter = LatencyMeter(reference, SHAPE, cfg, threshold=0.6)
    meter.set_bridge(bridge, bridge_pairs=8)
    ratio, stats = meter.relative_latency(Steps(0.5, 1.0, 1.5))
    assert stats.n == 5 and ratio == pytest.approx(0.25)
    meter.set_bridge(None)  # back to the reference
    assert meter.bridge_ratio == 1.0
    assert meter.relative_latency(Steps(2.0), fresh=True)[0] == pytest.approx(0.5)
    with pytest.raises(RlpruneError, match="bridge_pairs >= 2"):
        meter.set_bridge(bridge, bridge_pairs=1)


def test_bridged_meter_ratio_of_known_durations():
    def ratio() -> float:
        meter = LatencyMeter(Wait(1.0), SHAPE, LatencyConfig(warmup=1, repeats=20))
        meter.set_bridge(Wait(0.5), bridge_pairs=10)
        return meter.relative_latency(Wait(0.25))[0]

    assert sorted(ratio() for _ in range(3))[1] == pytest.approx(0.25, abs=0.05)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    model = SMALL_ARCHITECTURES["vgg_small"](1, 10).eval()
    pruner = Pruner(model, torch.zeros(1, *SHAPE))
    half = {u.name: 0.5 for u in pruner.units}
    return model, pruner.apply(half), pruner.apply(half)


def test_meter_caches_by_architecture(models):
    full, half, half_again = models
    meter = LatencyMeter(full, SHAPE, FAST)
    ratio, stats = meter.relative_latency(half)
    assert (meter.hits, meter.misses) == (0, 1)
    assert half_again is not half and meter.relative_latency(half_again) == (ratio, stats)
    assert (meter.hits, meter.misses) == (1, 1)
    meter.relative_latency(full)
    assert (meter.hits, meter.misses) == (1, 2)


def test_shape_signature_tells_architectures_apart(models):
    full, half, half_again = models
    assert shape_signature(half) == shape_signature(half_again)
    assert shape_signature(half) != shape_signature(full)
    assert hash(shape_signature(full))


def test_profile_layers_times_each_layer_of_known_duration():
    model = nn.Sequential(Wait(0.4), Wait(0.8), Wait(1.2))

    def profile():
        per_layer, overhead = profile_layers(model, SHAPE, ["0", "1"], FAST)
        assert set(per_layer) == {"0", "1"}
        return {**per_layer, "overhead": overhead}

    best = _best(profile, tries=5)
    assert 0.4 <= best["0"] < 0.5
    assert 0.8 <= best["1"] < 0.95
    assert 1.0 < best["overhead"] < 1.5  # the unprofiled 1.2 ms layer
    with pytest.raises(RlpruneError, match="not layers"):
        profile_layers(model, SHAPE, ["nope"], FAST)


def test_meters_sharing_a_store_agree_and_time_each_architecture_once(exact_clock, tmp_path):
    cfg = LatencyConfig(warmup=1, repeats=20, min_repeats=5)
    reference = Steps(4.0)

    def meter(threshold=None):
        store = MeasurementStore(tmp_path, reference, cfg, threshold, "net")
        return LatencyMeter(reference, SHAPE, cfg, threshold, store=store)

    first, concurrent = meter(), meter()  # two envs open the store before either writes
    assert first.relative_latency(Steps(2.0))[0] == pytest.approx(0.5)
    assert concurrent.relative_latency(Steps(1.0))[0] == pytest.approx(0.25)
    assert len(MeasurementStore(tmp_path, reference, cfg, None, "net").entries) == 2  # merged
    for candidate, expected in ((Steps(2.0), 0.5), (Steps(1.0), 0.25)):
        later = meter()  # another env: reads the file, times nothing for a known architecture
        ratio, stats = later.relative_latency(candidate)
        assert (ratio, stats.n, candidate.calls) == (pytest.approx(expected), 5, 0)
        assert (later.hits, later.misses) == (1, 0)
    # The stopping rule depends on the threshold: another threshold is another file.
    other = meter(threshold=0.6)
    other.relative_latency(Steps(2.0))
    assert (other.hits, other.misses) == (0, 1)
    assert len(list(tmp_path.glob("net-measurements-*.json"))) == 2


def test_a_fresh_timing_replaces_the_cached_and_stored_one(exact_clock, tmp_path):
    cfg = LatencyConfig(warmup=1, repeats=20, min_repeats=5)
    reference = Steps(4.0)
    # 2 ms for the first six passes (one warm-up, five pairs), 1 ms for the next six
    candidate = Steps(*[2.0] * 6, *[1.0] * 6)

    def meter():
        return LatencyMeter(reference, SHAPE, cfg, store=MeasurementStore(tmp_path, reference, cfg))

    first = meter()
    assert first.relative_latency(candidate)[0] == pytest.approx(0.5)
    assert first.relative_latency(candidate)[0] == pytest.approx(0.5) and candidate.calls == 6
    assert first.relative_latency(candidate, fresh=True)[0] == pytest.approx(0.25)
    assert (first.hits, first.misses, candidate.calls) == (1, 2, 12)
    assert first.relative_latency(candidate)[0] == pytest.approx(0.25)  # the cache has the new one
    later = meter()
    assert later.relative_latency(candidate)[0] == pytest.approx(0.25) and later.misses == 0


def test_an_unreadable_store_is_ignored_and_replaced(exact_clock, tmp_path):
    cfg = LatencyConfig(warmup=1, repeats=20, min_repeats=5)
    reference = Steps(4.0)
    path = MeasurementStore(tmp_path, reference, cfg).path
    path.write_text("{ torn")
    with pytest.warns(UserWarning, match="unreadable latency store"):
        store = MeasurementStore(tmp_path, reference, cfg)
    meter = LatencyMeter(reference, SHAPE, cfg, store=store)
    assert meter.relative_latency(Steps(2.0))[0] == pytest.approx(0.5) and meter.misses == 1
    assert list(MeasurementStore(tmp_path, reference, cfg).entries.values())[0][0] == 0.5


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class GpuWait(nn.Module):
    """Identity that keeps the GPU busy for ``ms`` ms (``torch.cuda._sleep``) and returns at once
    on the host: timing it without synchronising the device reads the launch time alone."""

    def __init__(self, ms: float, cycles_per_ms: float) -> None:
        super().__init__()
        self.ms, self.cycles = ms, int(ms * cycles_per_ms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.cuda._sleep(self.cycles)
        return x

    def extra_repr(self) -> str:
        return str(self.ms)


@pytest.fixture
def cycles_per_ms():
    """GPU clock cycles per ms, read with CUDA events around a long spin (clocks warmed first)."""
    start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
    torch.cuda._sleep(20_000_000)
    start.record()
    torch.cuda._sleep(100_000_000)
    end.record()
    torch.cuda.synchronize()
    return 100_000_000 / start.elapsed_time(end)


@CUDA
def test_cuda_latency_waits_for_the_device(cycles_per_ms):
    config = LatencyConfig(device="cuda", warmup=2, repeats=7, threads=1)
    stats = measure_latency(GpuWait(2.0, cycles_per_ms), SHAPE, config)
    assert 1.9 <= stats.min_ms < 2.4  # the kernel's 2 ms, not the launch's microseconds


@CUDA
def test_cuda_meter_ratio_of_known_durations(cycles_per_ms):
    meter = LatencyMeter(GpuWait(2.0, cycles_per_ms), SHAPE, LatencyConfig(device="cuda"))
    assert meter.relative_latency(GpuWait(1.0, cycles_per_ms))[0] == pytest.approx(0.5, abs=0.05)
