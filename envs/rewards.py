"""Rewards of the pruning search: small pure functions selectable by name.

Every reward takes the BN-recalibrated accuracy on the reward split (in [0, 1]), the measured
relative cost of the pruned model (latency or MACs, pruned / original), the target (a relative
cost) and the original cost (in microseconds for latency, in MACs for MACs) and returns a Python
float; larger is better.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from models.errors import RlpruneError

#: Relative slack over the target before the ``acc`` reward starts to penalise (measurement noise).
TARGET_TOLERANCE = 0.03
#: Accuracy points lost per unit of relative overshoot of the target, in the ``acc`` reward.
OVERSHOOT_PENALTY = 2.0


def accuracy_reward(
    accuracy: float, relative_cost: float, target: float, base_cost: float
) -> float:
    """AMC's resource-constrained reward: accuracy, the budget being enforced by the action wall.

    The budget clamp works on an *estimate*; the final cost is *measured*. If the measured cost
    overshoots the target by more than :data:`TARGET_TOLERANCE`, the reward loses
    ``OVERSHOOT_PENALTY`` per unit of relative overshoot, so the agent learns to avoid strategies
    whose real latency misses the budget.
    """
    overshoot = max(0.0, relative_cost / target - 1.0 - TARGET_TOLERANCE)
    return float(accuracy - OVERSHOOT_PENALTY * overshoot)


def error_log_reward(
    accuracy: float, relative_cost: float, target: float, base_cost: float
) -> float:
    """AMC's ``-error * log(cost)``: trades accuracy against cost with no fixed budget."""
    cost = max(relative_cost * base_cost, 1.0 + 1e-6)
    return float(-(1.0 - accuracy) * math.log(cost))


def mnas_reward(
    accuracy: float,
    relative_cost: float,
    target: float,
    base_cost: float,
    alpha: float = -0.07,
    beta: float = -0.07,
) -> float:
    """MnasNet's ``ACC * (LAT / T) ** w``, with ``w = alpha`` under the target, ``beta`` over it.

    The defaults are MnasNet's soft constraint (``alpha = beta = -0.07``).
    """
    to_target = max(relative_cost / target, 1e-6)
    w = alpha if to_target <= 1.0 else beta
    return float(accuracy * to_target**w)


def mnas_hard_reward(
    accuracy: float, relative_cost: float, target: float, base_cost: float
) -> float:
    """MnasNet's hard constraint: accuracy under the target, ``(LAT/T)^-1`` penalty over it."""
    return mnas_reward(accuracy, relative_cost, target, base_cost, alpha=0.0, beta=-1.0)


RewardFn = Callable[[float, float, float, float], float]

REWARDS: dict[str, RewardFn] = {
    "acc": accuracy_reward,
    "error_log": error_log_reward,
    "mnas": mnas_reward,
    "mnas_hard": mnas_hard_reward,
}


def get_reward(name: str) -> RewardFn:
    """Look a reward function up by name."""
    try:
        return REWARDS[name]
    except KeyError:
        raise RlpruneError(
            f"unknown reward '{name}'; choose one of {', '.join(sorted(REWARDS))}"
        ) from None
