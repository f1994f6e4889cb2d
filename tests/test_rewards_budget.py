"""Pure functions: rewards rank as they should; the action wall keeps the target reachable."""

import math

import numpy as np
import pytest

from envs.budget import check_reachable, required_pruning_ratio
from envs.rewards import REWARDS, get_reward
from models.errors import BudgetError, RlpruneError


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_rewards_prefer_accuracy_at_equal_cost(name):
    reward = get_reward(name)
    assert reward(0.9, 0.5, 0.5, 1e6) > reward(0.8, 0.5, 0.5, 1e6)
    assert isinstance(reward(0.9, 0.5, 0.5, 1e6), float)


@pytest.mark.parametrize("name", ["error_log", "mnas"])
def test_soft_rewards_prefer_cheaper_at_equal_accuracy(name):
    reward = get_reward(name)
    assert reward(0.9, 0.4, 0.5, 1e6) > reward(0.9, 0.6, 0.5, 1e6)


def test_accuracy_reward_penalises_overshoot_only_beyond_tolerance():
    reward = get_reward("acc")
    assert reward(0.9, 0.3, 0.5, 1.0) == reward(0.9, 0.5, 0.5, 1.0) == 0.9
    assert reward(0.9, 0.51, 0.5, 1.0) == 0.9  # inside the measurement tolerance
    assert reward(0.9, 0.7, 0.5, 1.0) < reward(0.8, 0.5, 0.5, 1.0)


def test_mnas_values():
    assert math.isclose(get_reward("mnas")(0.8, 0.5, 0.5, 1.0), 0.8)
    assert math.isclose(get_reward("mnas")(0.8, 0.25, 0.5, 1.0), 0.8 * 0.5**-0.07)
    hard = get_reward("mnas_hard")
    assert hard(0.8, 0.25, 0.5, 1.0) == 0.8 and math.isclose(hard(0.8, 1.0, 0.5, 1.0), 0.4)


def test_unknown_reward_names_the_choices():
    with pytest.raises(RlpruneError, match="acc"):
        get_reward("accuracy")


def _chain_cost(weights):
    """A VGG-like chain: layer i costs w_i * keep[i-1] * keep[i]."""

    def cost(keep):
        total = sum(weights)
        prev = 1.0
        value = 0.0
        for w, k in zip(weights, keep, strict=True):
            value += w * prev * k
            prev = k
        return value / total

    return cost


@pytest.mark.parametrize("seed", range(20))
def test_action_wall_keeps_target_reachable_for_random_actions(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 12))
    cost = _chain_cost(rng.uniform(0.1, 3.0, n).tolist())
    max_pruning_ratio = float(rng.uniform(0.5, 0.9))
    target = float(rng.uniform(cost([1 - max_pruning_ratio] * n), 1.0))
    keep: list[float] = []
    for _ in range(n):
        floor = required_pruning_ratio(cost, keep, n, target, max_pruning_ratio)
        assert 0.0 <= floor <= max_pruning_ratio
        rest = [1 - max_pruning_ratio] * (n - len(keep) - 1)
        if floor > 0.0:  # the least ratio: 1% less would make the target unreachable
            assert cost([*keep, 1.0 - floor + 0.01, *rest]) > target
        keep.append(1.0 - max(float(rng.uniform(0, max_pruning_ratio)), floor))  # as the env clamps
        assert cost(keep + rest) <= target + 1e-3  # still reachable
    assert cost(keep) <= target + 1e-3


def test_required_pruning_ratio_on_a_hand_computed_cost():
    def mean_keep(keep):
        return sum(keep) / len(keep)

    # Unit 0 of 2, unit 1 at most pruned 0.8 (keeps 0.2): (k + 0.2) / 2 <= 0.5 needs k <= 0.8.
    assert required_pruning_ratio(mean_keep, [], 2, 0.5, 0.8) == pytest.approx(0.2, abs=1e-3)
    # Unit 1 after unit 0 kept 0.9: (0.9 + k) / 2 <= 0.5 needs k <= 0.1, ratio >= 0.9 > max.
    assert required_pruning_ratio(mean_keep, [0.9], 2, 0.5, 0.8) == 0.8
    # Unit 2 of 3 after 0.3 and 0.6: (0.9 + k) / 3 <= 0.5 needs k <= 0.6.
    assert required_pruning_ratio(mean_keep, [0.3, 0.6], 3, 0.5, 0.8) == pytest.approx(
        0.4, abs=1e-3
    )


def test_required_pruning_ratio_is_zero_when_budget_is_loose_and_max_when_impossible():
    cost = _chain_cost([1.0, 1.0, 1.0])
    assert required_pruning_ratio(cost, [], 3, 0.99, 0.8) == 0.0
    assert required_pruning_ratio(cost, [1.0, 1.0], 3, 0.05, 0.8) == 0.8


@pytest.mark.parametrize("target", [0.0, -0.1, 1.0, 1.5])
def test_targets_outside_unit_interval_are_rejected(target):
    with pytest.raises(BudgetError, match="fraction"):
        check_reachable(target, 0.1, "latency")


def test_target_below_maximal_pruning_is_rejected_with_fix():
    with pytest.raises(BudgetError, match="--target or --max-pruning-ratio"):
        check_reachable(0.2, 0.35, "latency")
    check_reachable(0.4, 0.35, "MACs")
