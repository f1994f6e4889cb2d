"""The action mappings of envs.actions, checked against hand-computed values."""

import pytest

from envs.actions import (
    absolute_action_to_ratio,
    absolute_ratio_to_action,
    check_action_mode,
    relative_action_to_ratio,
    relative_ratio_to_action,
    remaining_anchor_ratio,
    remaining_uniform_ratio,
)
from models.errors import RlpruneError


def linear_cost(weights):
    """Cost = sum_i w_i * keep_i / sum_i w_i: a MACs-like cost with independent units."""
    total = sum(weights)
    return lambda keep: sum(w * k for w, k in zip(weights, keep, strict=True)) / total


def test_absolute_mapping_is_amc_linear_map():
    assert absolute_action_to_ratio(-1.0, 0.1, 0.8) == pytest.approx(0.1)
    assert absolute_action_to_ratio(0.0, 0.1, 0.8) == pytest.approx(0.45)
    assert absolute_action_to_ratio(1.0, 0.1, 0.8) == pytest.approx(0.8)
    assert absolute_action_to_ratio(7.0, 0.1, 0.8) == pytest.approx(0.8)  # clipped


def test_relative_mapping_is_piecewise_linear_around_the_centre():
    # centre 0.6 in [0, 0.8]: -1 -> 0, -0.5 -> 0.3, 0 -> 0.6, 0.5 -> 0.7, 1 -> 0.8
    expected = {-1.0: 0.0, -0.5: 0.3, 0.0: 0.6, 0.5: 0.7, 1.0: 0.8, -3.0: 0.0, 2.0: 0.8}
    for action, ratio in expected.items():
        assert relative_action_to_ratio(action, 0.6, 0.0, 0.8) == pytest.approx(ratio)
    # a centre outside [lo, hi] is clipped into it: 0 -> hi
    assert relative_action_to_ratio(0.0, 0.95, 0.0, 0.8) == pytest.approx(0.8)


def test_remaining_uniform_ratio_meets_the_target_exactly():
    # Four equal units, nothing decided, target 0.5: uniform ratio 0.5.
    cost = linear_cost([1, 1, 1, 1])
    assert remaining_uniform_ratio(cost, [], 4, 0.5, 0.8) == pytest.approx(0.5, abs=1e-3)
    # Unit 0 kept whole (keep 1.0): the other three must reach (2 - 1) / 3 kept, ratio 2/3.
    assert remaining_uniform_ratio(cost, [1.0], 4, 0.5, 0.8) == pytest.approx(2 / 3, abs=1e-3)
    # Unit 0 pruned to keep 0.2: the other three keep (2 - 0.2) / 3 = 0.6, ratio 0.4.
    assert remaining_uniform_ratio(cost, [0.2], 4, 0.5, 0.8) == pytest.approx(0.4, abs=1e-3)


def test_remaining_uniform_ratio_weights_units_by_cost():
    # Costs 3, 1: unit 0 decided at keep 0.5 -> cost (1.5 + k) / 4 <= 0.5 -> k = 0.5, ratio 0.5;
    # at keep 0.25: (0.75 + k) / 4 <= 0.5 -> k = 1.25 > 1 -> already met, ratio 0.
    cost = linear_cost([3, 1])
    assert remaining_uniform_ratio(cost, [0.5], 2, 0.5, 0.8) == pytest.approx(0.5, abs=1e-3)
    assert remaining_uniform_ratio(cost, [0.25], 2, 0.5, 0.8) == 0.0
    # Unreachable even at the maximum: the maximum.
    assert remaining_uniform_ratio(cost, [1.0], 2, 0.5, 0.8) == 0.8


def test_remaining_uniform_ratio_rejects_a_finished_episode():
    with pytest.raises(RlpruneError, match="no unit left"):
        remaining_uniform_ratio(linear_cost([1, 1]), [0.5, 0.5], 2, 0.5, 0.8)


def test_unknown_action_mode_is_one_line_error():
    assert check_action_mode("relative") == "relative"
    with pytest.raises(RlpruneError, match="unknown action mode 'relativ'"):
        check_action_mode("relativ")


def test_ratio_to_action_inverts_both_mappings():
    # By hand: absolute [0.1, 0.8]: 0.45 is the middle (0), 0.8 the top (1).
    assert absolute_ratio_to_action(0.45, 0.1, 0.8) == pytest.approx(0.0)
    assert absolute_ratio_to_action(0.8, 0.1, 0.8) == pytest.approx(1.0)
    # Relative, centre 0.6 in [0, 0.8]: 0.3 is halfway down (-0.5), 0.7 halfway up (0.5).
    assert relative_ratio_to_action(0.3, 0.6, 0.0, 0.8) == pytest.approx(-0.5)
    assert relative_ratio_to_action(0.7, 0.6, 0.0, 0.8) == pytest.approx(0.5)
    assert relative_ratio_to_action(0.7, 0.8, 0.0, 0.8) == pytest.approx(-0.125)
    assert relative_ratio_to_action(0.8, 0.8, 0.0, 0.8) == 0.0  # empty upper side
    for ratio in (0.0, 0.13, 0.6, 0.79):
        a = relative_ratio_to_action(ratio, 0.6, 0.0, 0.8)
        assert relative_action_to_ratio(a, 0.6, 0.0, 0.8) == pytest.approx(ratio)
        b = absolute_ratio_to_action(ratio, 0.0, 0.8)
        assert absolute_action_to_ratio(b, 0.0, 0.8) == pytest.approx(ratio)


def test_remaining_anchor_ratio_shifts_the_anchor_to_meet_the_target():
    cost = linear_cost([1, 1, 1, 1])  # mean kept fraction
    anchor = [0.9, 0.3, 0.6, 0.2]  # cost 0.5
    # Following the anchor: its own ratios.
    assert remaining_anchor_ratio(cost, [], anchor, 0.5, 0.8) == pytest.approx(0.1, abs=1e-3)
    assert remaining_anchor_ratio(cost, [0.9], anchor, 0.5, 0.8) == pytest.approx(0.7, abs=1e-3)
    # Unit 0 kept whole (+0.1): units 1-3 would lose 0.1 / 3 each, but unit 3 (keep 0.2) is at
    # the floor 1 - 0.8, so units 1 and 2 lose 0.05 each: unit 1 keeps 0.25, ratio 0.75.
    assert remaining_anchor_ratio(cost, [1.0], anchor, 0.5, 0.8) == pytest.approx(0.75, abs=1e-3)
    # Unit 0 pruned to 0.5 (-0.4): the others may keep 0.4 / 3 more (unit 1: 0.433, ratio 0.567).
    assert remaining_anchor_ratio(cost, [0.5], anchor, 0.5, 0.8) == pytest.approx(
        1 - (0.3 + 0.4 / 3), abs=1e-3
    )
    # A uniform anchor is the remaining uniform ratio.
    for decided in ([], [1.0], [0.2]):
        assert remaining_anchor_ratio(cost, decided, [0.5] * 4, 0.5, 0.8) == pytest.approx(
            remaining_uniform_ratio(cost, decided, 4, 0.5, 0.8), abs=1e-3
        )
    with pytest.raises(RlpruneError, match="no unit left"):
        remaining_anchor_ratio(cost, anchor, anchor, 0.5, 0.8)
