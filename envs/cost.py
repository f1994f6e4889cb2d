"""The cost a target constrains, as one object: MACs (AMC's proxy) or measured latency.

The env chooses a :class:`CostModel` once (``PruningEnvConfig.cost``) and asks it everything that
used to branch on the cost's name: the estimate the action wall bisects on, each unit's share of
the cost (the observation), which measured relative cost of an evaluated strategy the target applies
to,
the base cost the reward sees, and what a measured episode teaches the estimate (latency only).

Both estimate a strategy without pruning it, from :func:`envs.units.estimate_cost` over the
model's layers: MACs exactly (up to layers outside every unit), latency from a per-layer profile
of the unpruned model, whose predicted saving is scaled by a slope fitted on measured episodes
(:class:`LatencyCost`). A new cost (energy, memory) is a new subclass; nothing else branches.
"""

from __future__ import annotations

import collections
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from envs.units import LayerCost, estimate_cost

#: Recent episodes whose measured latency calibrates the action wall's estimate.
CALIBRATION_WINDOW = 25
#: Quantile of the window's slopes the wall uses. Real latency is not linear in the table's
#: estimate, so the slope varies with the strategy; the median lets half the strategies overshoot
#: the target. On a concave latency curve (sqrt, tests/fakes.py CurveLatency, target 0.5), the
#: lower quartile cut the random episodes over target + 3% from 10 of 40 to 2 and the worst
#: overshoot from 7.4% to 5.5%.
CALIBRATION_QUANTILE = 0.25
#: Strategies whose estimated saving is below this teach the slope nothing (noise dominates).
_MIN_SAVING = 0.05
#: Measured points the window needs before :meth:`LatencyCost.typical` answers.
TYPICAL_MIN_POINTS = 5


class CostModel(ABC):
    """A cost relative to the unpruned model's: estimated for kept fractions, read from results.

    Attributes:
        name: the cost's name in messages (``"latency"``, ``"MACs"``).
        result_key: the key of an evaluated strategy's measured relative cost
            (``"relative_latency"``, ...).
    """

    name = ""
    result_key = ""

    @abstractmethod
    def estimate(self, keep: Sequence[float]) -> float:
        """Estimated relative cost when unit ``i`` keeps the fraction ``keep[i]`` of its
        channels."""

    def shares(self, num_units: int) -> np.ndarray:
        """Each unit's share of the cost: what removing all of its channels would save."""
        return _shares(self.estimate, num_units)

    def measured(self, result: Mapping[str, Any]) -> float:
        """The measured relative cost of an evaluated strategy
        (``ChannelPruningEnv.evaluate_strategy``)."""
        return float(result[self.result_key])

    def observe(self, keep: Sequence[float], result: Mapping[str, Any]) -> None:
        """Learn from an evaluated strategy's measurement (nothing to learn by default)."""
        return None


class MacsCost(CostModel):
    """Multiply-accumulates, estimated layer by layer from the kept fractions."""

    name = "MACs"
    result_key = "relative_macs"

    def __init__(self, layer_costs: Sequence[LayerCost], num_units: int, base_macs: float) -> None:
        self.layer_costs = list(layer_costs)
        self.base = float(base_macs)  # what the reward's cost term sees
        self._full = estimate_cost(self.layer_costs, [1.0] * num_units, "macs")

    def estimate(self, keep: Sequence[float]) -> float:
        return estimate_cost(self.layer_costs, keep, "macs") / self._full


class LatencyCost(CostModel):
    """Latency on the target device: a per-layer profile, calibrated on measured episodes.

    The profile (conv/linear layers timed with hooks, the rest a constant overhead) misses what
    shrinks with the channels outside those layers (BatchNorm, activations, pooling, memory
    traffic); the saving it predicts is scaled by a slope ``k`` fitted on measured strategies:
    ``estimate = 1 - k * (1 - profile estimate)``, exact at the unpruned model. ``k`` is a low
    quantile (:data:`CALIBRATION_QUANTILE`) of the slopes of the last
    :data:`CALIBRATION_WINDOW` measurements, so one noisy timing cannot move the action wall.
    """

    name = "latency"
    result_key = "relative_latency"

    def __init__(
        self,
        layer_costs: Sequence[LayerCost],
        num_units: int,
        layer_ms: Mapping[str, float],
        overhead_ms: float,
        base_ms: float,
        calibrate: bool = True,
    ) -> None:
        self.layer_costs = list(layer_costs)
        self.layer_ms = dict(layer_ms)
        self.overhead_ms = float(overhead_ms)
        self.base = float(base_ms) * 1000.0  # the reward's cost term sees microseconds
        self.calibrate = calibrate
        self.slope = 1.0
        self._samples: collections.deque[float] = collections.deque(maxlen=CALIBRATION_WINDOW)
        self._full = self._profile_ms([1.0] * num_units)

    def _profile_ms(self, keep: Sequence[float]) -> float:
        return self.overhead_ms + estimate_cost(self.layer_costs, keep, per_layer=self.layer_ms)

    def raw_estimate(self, keep: Sequence[float]) -> float:
        """The profile's relative latency, before calibration."""
        return self._profile_ms(keep) / self._full

    def estimate(self, keep: Sequence[float]) -> float:
        return 1.0 - self.slope * (1.0 - self.raw_estimate(keep))

    def typical(self, keep: Sequence[float]) -> float | None:
        """The relative latency a measurement of ``keep`` typically gives: the estimate with the
        window's median slope (the action wall's quantile errs high on purpose). None while the
        window holds fewer than :data:`TYPICAL_MIN_POINTS` points, or without calibration."""
        if not self.calibrate or len(self._samples) < TYPICAL_MIN_POINTS:
            return None
        slope = float(np.median(self._samples))
        return 1.0 - slope * (1.0 - self.raw_estimate(keep))

    def shares(self, num_units: int) -> np.ndarray:
        """Shares of the uncalibrated profile (fixed for the env's life: the observation's)."""
        return _shares(self.raw_estimate, num_units)

    def observe(self, keep: Sequence[float], result: Mapping[str, Any]) -> None:
        """Add the measured point of one evaluated strategy to the slope."""
        self.add_point(keep, self.measured(result))

    def add_point(self, keep: Sequence[float], measured_relative_latency: float) -> None:
        """Add one measured point ``(keep, measured relative latency)`` to the slope."""
        saving = 1.0 - self.raw_estimate(keep)
        if not self.calibrate or saving < _MIN_SAVING:
            return
        self._samples.append(max(1.0 - measured_relative_latency, 0.0) / saving)
        self.slope = float(np.quantile(self._samples, CALIBRATION_QUANTILE))

    def refit_at_target(
        self,
        uniform_keep: Callable[[float], Sequence[float]],
        measure: Callable[[float], float],
        target: float,
        max_pruning_ratio: float,
        steps: int = 12,
    ) -> None:
        """Re-fit the slope on one uniform strategy that the estimate puts at ``target``.

        Measured latency is rarely linear in the profile's estimate (fixed per-op costs, cache
        effects), so the slope through the maximally pruned model can be far from the slope near
        the target, where the wall decides; this point replaces every earlier one.

        Args:
            uniform_keep: kept fractions of every unit when all are pruned at one pruning ratio.
            measure: measured relative latency of the uniform strategy at a pruning ratio.
            target: the env's target relative latency.
            max_pruning_ratio: the largest pruning ratio.
        """
        if not self.calibrate:
            return
        ratio = self.uniform_ratio(uniform_keep, target, max_pruning_ratio, steps)
        measured = measure(ratio)
        self._samples.clear()
        self.add_point(uniform_keep(ratio), measured)

    def uniform_ratio(
        self,
        uniform_keep: Callable[[float], Sequence[float]],
        target: float,
        max_pruning_ratio: float,
        steps: int = 12,
    ) -> float:
        """The least uniform pruning ratio whose estimate meets ``target`` (bisected in
        ``steps``; ``max_pruning_ratio`` if none does)."""
        lo, hi = 0.0, max_pruning_ratio
        for _ in range(steps):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if self.estimate(uniform_keep(mid)) <= target else (mid, hi)
        return hi


def _shares(estimate: Callable[[Sequence[float]], float], num_units: int) -> np.ndarray:
    ones = [1.0] * num_units
    return np.array([1.0 - estimate(ones[:i] + [0.0] + ones[i + 1 :]) for i in range(num_units)])
