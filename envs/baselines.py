"""Rule-based strategies to compare the agent with: uniform pruning at a target."""

from __future__ import annotations

from typing import Any

from envs.pruning_env import ChannelPruningEnv


def uniform_for_target(
    env: ChannelPruningEnv, target: float | None = None, *, steps: int = 10
) -> dict[str, Any]:
    """The same pruning ratio for every unit, the smallest that meets ``target``.

    Bisection on the ratio against the env's own cost measure (measured latency ratio, or MACs
    ratio), then one full evaluation (BN recalibration + reward-split accuracy) of the result.

    Args:
        env: the environment of the model to prune.
        target: target cost ratio; the env's target when None.
        steps: bisection steps.

    Returns:
        :meth:`ChannelPruningEnv.evaluate_strategy`'s result, plus ``uniform_ratio``.
    """
    target = env.config.target if target is None else target
    key = "latency_ratio" if env.config.cost == "latency" else "macs_ratio"

    def strategy(ratio: float) -> dict[str, float]:
        return {u.name: ratio for u in env.units}

    lo, hi = env.config.min_ratio, env.config.max_ratio
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if env.evaluate_strategy(strategy(mid), with_accuracy=False)[key] <= target:
            hi = mid
        else:
            lo = mid
    result = env.evaluate_strategy(strategy(hi))
    return {**result, "uniform_ratio": hi}
