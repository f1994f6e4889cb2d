"""AMC's action wall: clamp each unit's pruning ratio so that the target stays reachable.

All functions are pure. A *cost model* is a function ``keep -> cost`` where ``keep[i]`` is the kept
fraction (``1 - pruning_ratio``) of unit ``i``; it must not increase when any ``keep[i]`` decreases.
The env builds one from :func:`envs.units.estimate_cost` on MACs or on per-layer latency.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from models.errors import BudgetError

CostModel = Callable[[Sequence[float]], float]


def required_pruning_ratio(
    cost_model: CostModel,
    decided: Sequence[float],
    num_units: int,
    target_cost: float,
    max_pruning_ratio: float,
    tol: float = 1e-4,
) -> float:
    """Smallest pruning ratio for unit ``len(decided)`` that keeps ``target_cost`` reachable.

    The units before it keep ``decided``; every later unit is assumed pruned at
    ``max_pruning_ratio`` (the most they can still contribute). Found by bisection, since cost is
    monotone in each keep.

    Args:
        cost_model: estimated cost as a function of the kept fraction of every unit.
        decided: kept fractions of the units already visited.
        num_units: number of units of the model.
        target_cost: cost the final model must not exceed (same unit as ``cost_model``).
        max_pruning_ratio: largest pruning ratio any unit may take.
        tol: bisection tolerance on the pruning ratio.

    Returns:
        A pruning ratio in ``[0, max_pruning_ratio]``; ``max_pruning_ratio`` when even that cannot
        reach the target (the caller rejects such targets up front, see :func:`check_reachable`).
    """
    t = len(decided)
    rest = [1.0 - max_pruning_ratio] * (num_units - t - 1)

    def cost_at(pruning_ratio: float) -> float:
        return cost_model([*decided, 1.0 - pruning_ratio, *rest])

    return smallest_meeting(cost_at, target_cost, max_pruning_ratio, tol)


def smallest_meeting(
    cost_at: Callable[[float], float], target_cost: float, max_pruning_ratio: float, tol: float
) -> float:
    """Smallest pruning ratio in ``[0, max_pruning_ratio]`` whose ``cost_at`` is at most
    ``target_cost``, by bisection (``cost_at`` must not increase with the ratio); 0 when no
    pruning already meets it, ``max_pruning_ratio`` when even that does not."""
    if cost_at(0.0) <= target_cost:
        return 0.0
    if cost_at(max_pruning_ratio) > target_cost:
        return max_pruning_ratio
    lo, hi = 0.0, max_pruning_ratio
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if cost_at(mid) <= target_cost:
            hi = mid
        else:
            lo = mid
    return hi


def check_reachable(target: float, min_relative_cost: float, what: str) -> None:
    """Reject a target (relative cost) that is not in (0, 1) or below what maximal pruning reaches.

    Args:
        target: target cost as a fraction of the original.
        min_relative_cost: relative cost of the model with every unit pruned at the maximum
            pruning ratio.
        what: the cost's name for the message (``"latency"``, ``"MACs"``).
    """
    if not 0.0 < target < 1.0:
        raise BudgetError(f"target {target} must be a fraction of the original {what} in (0, 1)")
    if target < min_relative_cost:
        raise BudgetError(
            f"target {target:.3f} of the original {what} is unreachable: pruning every unit at the "
            f"maximum pruning ratio only reaches {min_relative_cost:.3f}; raise --target or "
            "--max-pruning-ratio"
            + (" (or time a larger --latency-batch-size)" if what == "latency" else "")
        )
