"""Latency measurement on real (tiny) models: statistics, interleaving, caching, per-layer table."""

from __future__ import annotations

import math

import pytest
import torch

from envs.latency import (
    LatencyConfig,
    LatencyMeter,
    LatencyStats,
    compare_latency,
    measure_latency,
    profile_layers,
    shape_signature,
)
from envs.pruning import Pruner
from models.architectures import SMALL_ARCHITECTURES
from models.errors import RlpruneError

SHAPE = (1, 16, 16)
FAST = LatencyConfig(warmup=1, repeats=5, threads=1)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    model = SMALL_ARCHITECTURES["vgg_small"](1, 10).eval()
    pruner = Pruner(model, torch.zeros(1, *SHAPE))
    half = {u.name: 0.5 for u in pruner.units}
    return model, pruner.apply(half), pruner.apply(half)


def _valid(stats: LatencyStats, n: int) -> None:
    assert stats.n == n
    assert math.isfinite(stats.median_ms) and stats.median_ms > 0
    assert 0 < stats.min_ms <= stats.p25_ms <= stats.median_ms <= stats.p75_ms
    assert stats.spread >= 0


def test_stats_from_known_times():
    stats = LatencyStats.from_times([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (stats.median_ms, stats.p25_ms, stats.p75_ms, stats.min_ms, stats.n) == (3, 2, 4, 1, 5)
    assert stats.spread == pytest.approx(2 / 3)
    assert LatencyStats.from_times([2.0]).spread == 0


def test_measure_latency_restores_mode_and_threads(models):
    model = models[0].train()
    threads = torch.get_num_threads()
    stats = measure_latency(model, SHAPE, LatencyConfig(warmup=1, repeats=7, threads=1))
    _valid(stats, 7)
    assert model.training and torch.get_num_threads() == threads
    model.eval()
    batched = measure_latency(model, SHAPE, LatencyConfig(batch_size=4, warmup=0, repeats=3))
    _valid(batched, 3)


def test_compare_latency_returns_every_model(models):
    full, half, _ = models
    stats = compare_latency({"full": full, "half": half}, SHAPE, FAST, passes=2)
    assert list(stats) == ["full", "half"]
    for value in stats.values():
        _valid(value, FAST.repeats)


def test_meter_caches_by_architecture(models):
    full, half, half_again = models
    meter = LatencyMeter(full, SHAPE, FAST)
    _valid(meter.reference_stats, FAST.repeats)
    ratio, stats = meter.ratio(half)
    assert math.isfinite(ratio) and ratio > 0
    _valid(stats, FAST.repeats)
    assert (meter.hits, meter.misses) == (0, 1)
    assert half_again is not half and meter.ratio(half_again) == (ratio, stats)
    assert (meter.hits, meter.misses) == (1, 1)
    meter.ratio(full)
    assert (meter.hits, meter.misses) == (1, 2)


def test_shape_signature_tells_architectures_apart(models):
    full, half, half_again = models
    assert shape_signature(half) == shape_signature(half_again)
    assert shape_signature(half) != shape_signature(full)
    assert hash(shape_signature(full))


def test_profile_layers_covers_every_name(models):
    full = models[0]
    names = [n for n, m in full.named_modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    per_layer, overhead = profile_layers(full, SHAPE, names, FAST)
    assert set(per_layer) == set(names)
    assert all(math.isfinite(v) and v >= 0 for v in per_layer.values())
    assert overhead >= 0
    with pytest.raises(RlpruneError, match="not layers"):
        profile_layers(full, SHAPE, ["nope"], FAST)
