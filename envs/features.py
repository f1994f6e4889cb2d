"""Architecture-agnostic observation of one prunable unit (AMC's layer embedding, fixed scales).

AMC min-max normalises each feature over the layers of one network, which ties a trained agent to
that network. Here every feature has a fixed scale (relative depth, log-scaled widths, shares of the
whole model's cost), so a layer of a ResNet and a layer of a MobileNet that play the same role look
alike and one agent can act on networks it has never seen.
"""

from __future__ import annotations

import math

import numpy as np

from envs.units import PrunableUnit

#: Names of the observation features, in order; each is a float in [0, 1].
FEATURE_NAMES: tuple[str, ...] = (
    "relative_depth",  # t / (T - 1)
    "is_conv",  # k x k convolution, groups == 1
    "is_pointwise",  # 1 x 1 convolution
    "is_depthwise",  # depthwise (or grouped) convolution
    "is_linear",  # fully connected layer
    "log_in_channels",  # log2(in_channels) / 12  (4096 channels -> 1)
    "log_out_channels",  # log2(out_channels) / 12
    "kernel_size",  # (k - 1) / 6  (1 -> 0, 3 -> 0.33, 7 -> 1)
    "log_stride",  # log2(stride) / 2  (1 -> 0, 2 -> 0.5, 4 -> 1)
    "log_feature_size",  # log2(output height) / 9  (512 -> 1)
    "macs_share",  # unit MACs / model MACs
    "latency_share",  # estimated unit latency / model latency
    "cost_removed",  # share of the targeted cost removed by the units already visited
    "cost_rest",  # share of the targeted cost held by the units still to visit after this one
    "previous_ratio",  # pruning ratio applied to the previous unit
    "target",  # target cost as a fraction of the original
    "coupling",  # (layers in the unit - 1) / 4: residual/depthwise coupling
    "required_ratio",  # smallest ratio this unit must take for the target to stay reachable
)
NUM_FEATURES = len(FEATURE_NAMES)


def _log_scaled(value: float, log2_max: float) -> float:
    return math.log2(max(value, 1.0)) / log2_max


def unit_features(
    unit: PrunableUnit,
    num_units: int,
    *,
    latency_share: float,
    cost_removed: float,
    cost_rest: float,
    previous_ratio: float,
    target: float,
    required_ratio: float,
) -> np.ndarray:
    """Observation of ``unit`` at its step of the episode.

    Args:
        unit: the unit about to be pruned.
        num_units: number of units in the episode.
        latency_share: the unit's estimated share of the model's latency.
        cost_removed: share of the targeted cost already removed (units before this one).
        cost_rest: share of the targeted cost in the units after this one, at full width.
        previous_ratio: pruning ratio taken at the previous unit (0 at the first).
        target: the target cost ratio.
        required_ratio: the action wall's floor for this unit.

    Returns:
        float32 array of shape ``(NUM_FEATURES,)``, every entry clipped to [0, 1].
    """
    kind = unit.kind
    values = (
        unit.index / max(num_units - 1, 1),
        float(kind == "conv"),
        float(kind == "pointwise"),
        float(kind == "depthwise"),
        float(kind == "linear"),
        _log_scaled(unit.in_channels, 12.0),
        _log_scaled(unit.out_channels, 12.0),
        (unit.kernel_size - 1) / 6.0,
        _log_scaled(unit.stride, 2.0),
        _log_scaled(unit.feature_size, 9.0),
        unit.cost_share,
        latency_share,
        cost_removed,
        cost_rest,
        previous_ratio,
        target,
        (len(unit.layer_names) - 1) / 4.0,
        required_ratio,
    )
    return np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
