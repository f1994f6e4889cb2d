"""How the agent's action in [-1, 1] becomes a unit's pruning ratio.

Two mappings (:data:`ACTION_MODES`), chosen by ``PruningEnvConfig.actions``:

- ``"absolute"`` (AMC): the action maps linearly onto ``[lo, hi]`` (the smallest and largest
  pruning ratio of a unit); the action wall then raises it where the target would otherwise become
  unreachable. An untrained or unsure policy gets whatever its raw output says, and the wall
  pushes the last units to ``hi`` to pay for it.
- ``"relative"``: action 0 is the *remaining uniform ratio* (:func:`remaining_uniform_ratio`): the
  one ratio that, applied to this unit and every later one, just meets the target given the units
  already decided. -1 is ``lo``, +1 is ``hi``, piecewise linear in between
  (:func:`relative_action_to_ratio`). A policy that outputs 0 everywhere prunes uniformly at the
  target; one that spares a unit makes the remaining units share the difference, because their
  centre is recomputed at every step. Exploration noise then samples strategies around uniform
  pruning, which is where the strongest simple baseline sits. With an anchor
  (``PruningEnvConfig.anchor``, the default) the env centres the actions on a rule *measured* at
  the target instead (:func:`remaining_anchor_ratio`): action 0 is that rule's ratio for the unit,
  the remaining units shifted by one amount to just meet the estimated cost of the rule, so that
  action 0 everywhere reproduces the rule (uniform or global magnitude pruning, whichever scored
  higher) and the estimate's error does not move it.

All functions are pure; the cost model is ``keep -> cost`` as in :mod:`envs.budget`.
"""

from __future__ import annotations

from collections.abc import Sequence

from envs.budget import CostModel, smallest_meeting
from models.errors import RlpruneError

ACTION_MODES = ("absolute", "relative")


def check_action_mode(mode: str) -> str:
    """Return ``mode`` if known, else raise a one-line :class:`RlpruneError`."""
    if mode not in ACTION_MODES:
        raise RlpruneError(f"unknown action mode '{mode}'; choose one of {', '.join(ACTION_MODES)}")
    return mode


def absolute_action_to_ratio(action: float, lo: float, hi: float) -> float:
    """AMC's mapping: ``action`` in [-1, 1] (clipped) linearly onto ``[lo, hi]``."""
    a = min(max(float(action), -1.0), 1.0)
    return lo + (a + 1.0) / 2.0 * (hi - lo)


def relative_action_to_ratio(action: float, centre: float, lo: float, hi: float) -> float:
    """``action`` in [-1, 1] (clipped) onto ``[lo, hi]`` with 0 at ``centre`` (clipped into it).

    Piecewise linear: ``[-1, 0]`` onto ``[lo, centre]`` and ``[0, 1]`` onto ``[centre, hi]``.
    """
    a = min(max(float(action), -1.0), 1.0)
    c = min(max(float(centre), lo), hi)
    return c + a * (hi - c) if a >= 0.0 else c + a * (c - lo)


def absolute_ratio_to_action(pruning_ratio: float, lo: float, hi: float) -> float:
    """The action :func:`absolute_action_to_ratio` maps to ``pruning_ratio`` (clipped, [-1, 1])."""
    return min(max(2.0 * (float(pruning_ratio) - lo) / (hi - lo) - 1.0, -1.0), 1.0)


def relative_ratio_to_action(pruning_ratio: float, centre: float, lo: float, hi: float) -> float:
    """The action :func:`relative_action_to_ratio` maps to ``pruning_ratio`` (clipped to [-1, 1]).

    0 where a side of the piecewise-linear map is empty (the centre at ``lo`` or ``hi``).
    """
    r = float(pruning_ratio)
    c = min(max(float(centre), lo), hi)
    if r >= c:
        a = (r - c) / (hi - c) if hi > c else 0.0
    else:
        a = (r - c) / (c - lo) if c > lo else 0.0
    return min(max(a, -1.0), 1.0)


def remaining_uniform_ratio(
    cost_model: CostModel,
    decided: Sequence[float],
    num_units: int,
    target_cost: float,
    max_pruning_ratio: float,
    tol: float = 1e-4,
) -> float:
    """The one pruning ratio for units ``len(decided)..num_units-1`` that just meets the target.

    Args:
        cost_model: estimated cost as a function of the kept fraction of every unit.
        decided: kept fractions of the units already visited.
        num_units: number of units of the model.
        target_cost: cost the final model must not exceed (same unit as ``cost_model``).
        max_pruning_ratio: largest pruning ratio any unit may take.
        tol: bisection tolerance on the ratio.

    Returns:
        The smallest ratio in ``[0, max_pruning_ratio]`` whose uniform use on the remaining
        units keeps the cost at or under ``target_cost`` (found by bisection: cost is monotone in
        each keep); 0 when the decided units already meet the target unpruned,
        ``max_pruning_ratio`` when even that does not.
    """
    # Uniform pruning is the anchor that keeps everything, shifted: keep 1 - ratio everywhere.
    return remaining_anchor_ratio(
        cost_model, decided, [1.0] * num_units, target_cost, max_pruning_ratio, tol
    )


def remaining_anchor_ratio(
    cost_model: CostModel,
    decided: Sequence[float],
    anchor_keep: Sequence[float],
    target_cost: float,
    max_pruning_ratio: float,
    tol: float = 1e-4,
) -> float:
    """The current unit's pruning ratio when the remaining units follow ``anchor_keep`` shifted
    by one amount so that the target is just met.

    The remaining units ``j = len(decided)..`` keep ``clip(anchor_keep[j] - s, 1 -
    max_pruning_ratio, 1)``; ``s`` is the smallest shift (in kept fraction, bisected over
    ``[-1, 1]``: the cost does not increase with it) whose cost is at most ``target_cost``.
    An anchor that keeps everything gives :func:`remaining_uniform_ratio`; a per-unit anchor
    (global magnitude pruning's ratios) keeps its shape. When ``decided`` follows the anchor and
    ``target_cost`` is the anchor's own cost, ``s`` is 0 (within ``tol``) and the result is the
    anchor's ratio.

    Args:
        cost_model: estimated cost as a function of the kept fraction of every unit.
        decided: kept fractions of the units already visited.
        anchor_keep: kept fraction of every unit under the anchor strategy.
        target_cost: cost the final model must not exceed (same unit as ``cost_model``).
        max_pruning_ratio: largest pruning ratio any unit may take.
        tol: bisection tolerance on the shift.

    Returns:
        The pruning ratio of unit ``len(decided)``, in ``[0, max_pruning_ratio]``.
    """
    t, num_units = len(decided), len(anchor_keep)
    if not 0 <= t < num_units:
        raise RlpruneError(f"{t} units decided of {num_units}: no unit left to choose a ratio for")
    lowest = 1.0 - max_pruning_ratio

    def keep(j: int, shift: float) -> float:
        return min(max(anchor_keep[j] - shift, lowest), 1.0)

    def cost_at(x: float) -> float:  # x = shift + 1 in [0, 2]
        return cost_model([*decided, *(keep(j, x - 1.0) for j in range(t, num_units))])

    shift = smallest_meeting(cost_at, target_cost, 2.0, tol) - 1.0
    return 1.0 - keep(t, shift)
