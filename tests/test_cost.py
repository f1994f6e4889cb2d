"""The cost models on their own: hand-computed estimates, shares and latency calibration."""

import numpy as np
import pytest

from envs.cost import CALIBRATION_WINDOW, LatencyCost, MacsCost
from envs.units import LayerCost

# Two layers: A's output is unit 0; B reads unit 0 and its output is unit 1.
LAYERS = [
    LayerCost("A", macs=100, params=10, out_unit=0, in_unit=None, depthwise=False),
    LayerCost("B", macs=300, params=30, out_unit=1, in_unit=0, depthwise=False),
]
LAYER_MS = {"A": 1.0, "B": 3.0}  # + 1 ms overhead: 5 ms in all


def latency(calibrate=True):
    return LatencyCost(LAYERS, 2, LAYER_MS, overhead_ms=1.0, base_ms=5.0, calibrate=calibrate)


def test_macs_estimate_and_shares_by_hand():
    macs = MacsCost(LAYERS, 2, base_macs=400)
    # A: 100 * 0.5, B: 300 * 1 (out) * 0.5 (in) -> 200 of 400
    assert macs.estimate([0.5, 1.0]) == pytest.approx(0.5)
    assert macs.estimate([1.0, 0.25]) == pytest.approx((100 + 75) / 400)
    # unit 0 gone removes A and B's input (everything); unit 1 gone removes B only
    assert macs.shares(2) == pytest.approx([1.0, 0.75])
    assert macs.measured({"relative_macs": 0.3, "relative_latency": 0.9}) == 0.3
    assert macs.base == 400


def test_latency_estimate_uses_the_profile_plus_overhead():
    cost = latency()
    # 1 ms overhead + A 1 * 0.5 + B 3 * 0.5 = 3 of 5 ms
    assert cost.raw_estimate([0.5, 1.0]) == pytest.approx(0.6)
    assert cost.estimate([0.5, 1.0]) == pytest.approx(0.6)  # slope 1 before any measurement
    assert cost.shares(2) == pytest.approx([0.8, 0.6])
    assert cost.base == pytest.approx(5000.0)  # microseconds for the reward


def test_calibration_slope_is_a_low_quantile_of_measured_slopes():
    cost = latency()
    keep = [0.5, 1.0]  # predicted saving 0.4
    cost.observe(keep, {"relative_latency": 0.8})  # measured saving 0.2: slope 0.5
    assert cost.slope == pytest.approx(0.5)
    assert cost.estimate(keep) == pytest.approx(0.8)
    for measured in (0.6, 0.4, 0.2):  # slopes 1.0, 1.5, 2.0
        cost.add_point(keep, measured)
    assert cost.slope == pytest.approx(np.quantile([0.5, 1.0, 1.5, 2.0], 0.25))
    for _ in range(CALIBRATION_WINDOW):  # the window forgets the old points
        cost.add_point(keep, 0.4)
    assert cost.slope == pytest.approx(1.5)


def test_calibration_ignores_tiny_savings_and_can_be_off():
    cost = latency()
    cost.add_point([0.99, 1.0], 0.5)  # predicted saving 0.002: noise, not a slope
    assert cost.slope == 1.0
    off = latency(calibrate=False)
    off.add_point([0.5, 1.0], 0.8)
    assert off.slope == 1.0 and off.estimate([0.5, 1.0]) == pytest.approx(0.6)
    macs = MacsCost(LAYERS, 2, base_macs=400)
    macs.observe([0.5, 1.0], {"relative_macs": 0.1})  # exact: nothing to learn
    assert macs.estimate([0.5, 1.0]) == pytest.approx(0.5)


def test_refit_at_target_replaces_the_points_with_one_uniform_measurement():
    cost = latency()
    cost.add_point([0.5, 1.0], 0.9)  # slope 0.25, to be forgotten
    measured_at = []

    def measure(ratio):
        measured_at.append(ratio)
        return 0.6

    def uniform_keep(ratio):
        return [1.0 - ratio, 1.0 - ratio]

    cost.refit_at_target(uniform_keep, measure, target=0.5, max_pruning_ratio=0.8)
    (ratio,) = measured_at
    # Uniform keep k has raw estimate (1 + 1*k + 3*k*k) / 5; at slope 0.25 the estimate meets
    # 0.5 only where the raw saving is 2 (impossible): bisection ends at max_pruning_ratio.
    assert ratio == pytest.approx(0.8, abs=1e-3)
    saving = 1.0 - cost.raw_estimate(uniform_keep(ratio))
    assert cost.slope == pytest.approx(0.4 / saving)


def test_refit_at_target_measures_the_uniform_ratio_the_estimate_puts_at_the_target():
    cost = latency()
    measured_at = []
    cost.refit_at_target(
        lambda r: [1.0 - r, 1.0 - r], lambda r: measured_at.append(r) or 0.45, 0.5, 0.8
    )
    # raw estimate (1 + k + 3 k^2) / 5 = 0.5 at k = (sqrt(19) - 1) / 6
    assert measured_at[0] == pytest.approx(1.0 - (np.sqrt(19.0) - 1.0) / 6.0, abs=1e-3)
    assert cost.estimate([1.0 - measured_at[0]] * 2) == pytest.approx(0.45)
