"""Architecture-agnostic observation of one prunable unit (AMC's layer embedding, fixed scales).

AMC min-max normalises each feature over the layers of one network, which ties a trained agent to
that network. Here every feature has a fixed scale (relative depth, log-scaled widths, shares of the
whole model's cost), so a layer of a ResNet and a layer of a MobileNet that play the same role look
alike and one agent can act on networks it has never seen.

Version 2 adds features meant for transfer across networks of different lengths and input
resolutions: a unit's cost share *relative to the average unit's* (a 6-unit and a 50-unit network
have shares ~0.17 and ~0.02 for an average unit; relative, both read 0.5), the neighbours' relative
shares, the downsampling relative to the input instead of the absolute feature-map size, the width
relative to the widest unit, the network's length, and the cut the remaining units must still make.
An observation is selected by feature names (:data:`DEFAULT_FEATURES`, or a subset for ablations);
an agent records the names it was trained with and refuses an env that gives others.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from envs.units import PrunableUnit
from models.errors import RlpruneError

#: Bumped whenever a feature's meaning or scale changes; saved with every agent.
FEATURES_VERSION = 2

#: Every feature the env can observe, in order; each is a float in [0, 1].
ALL_FEATURES: tuple[str, ...] = (
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
    "previous_pruning_ratio",  # pruning ratio applied to the previous unit
    "target",  # target cost as a fraction of the original
    "coupling",  # (layers in the unit - 1) / 4: residual/depthwise coupling
    "required_pruning_ratio",  # smallest pruning ratio this unit must take to keep the target
    # reachable
    # version 2: transfer across network lengths and resolutions
    "relative_latency_share",  # log2(share * T) / 8 + 0.5: the average unit -> 0.5, 16x -> 1
    "relative_macs_share",  # the same for MACs
    "previous_relative_share",  # relative latency share of the previous unit (0: none)
    "next_relative_share",  # relative latency share of the next unit (0: none)
    "log_downsampling",  # log2(input height / output height) / 6  (64x -> 1)
    "relative_width",  # out_channels / the widest unit's out_channels
    "log_num_units",  # log2(T) / 7  (128 units -> 1)
    "needed_cut",  # (cost left - target) / cost left: the relative cut still to make (0: met)
)
#: The observation of a new env and agent: every feature.
DEFAULT_FEATURES: tuple[str, ...] = ALL_FEATURES
#: Version-1 observation (agents saved before :data:`FEATURES_VERSION` 2).
FEATURES_V1: tuple[str, ...] = ALL_FEATURES[:18]
#: Old feature name -> current name. Agents saved before the rename (e.g. the shipped multi6-v2)
#: record the old names; :func:`current_feature_names` reads them as the same features.
RENAMED_FEATURES: dict[str, str] = {
    "previous_ratio": "previous_pruning_ratio",
    "required_ratio": "required_pruning_ratio",
}
#: Kept for readers of version 1: the names and count of the default observation.
FEATURE_NAMES = DEFAULT_FEATURES
NUM_FEATURES = len(DEFAULT_FEATURES)


def current_feature_names(names: Sequence[str]) -> list[str]:
    """``names`` with every renamed feature under its current name (:data:`RENAMED_FEATURES`)."""
    return [RENAMED_FEATURES.get(n, n) for n in names]


def check_features(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple, or a one-line error naming the unknown ones."""
    names = tuple(names)
    unknown = [n for n in names if n not in ALL_FEATURES]
    if unknown or not names or len(set(names)) != len(names):
        raise RlpruneError(
            f"bad observation features {list(names)} (unknown: {unknown}); choose distinct names "
            f"among {', '.join(ALL_FEATURES)}"
        )
    return names


@dataclass(frozen=True)
class NetworkContext:
    """What every unit's observation needs to know about the whole network.

    Attributes:
        num_units: Units in an episode (T).
        unit_latency_shares: Per unit index, its estimated share of the model's latency.
        unit_macs_shares: Per unit index, its share of the model's MACs.
        input_size: Height of the network's input, pixels.
        max_out_channels: Largest ``out_channels`` over the units.
    """

    num_units: int
    unit_latency_shares: np.ndarray
    unit_macs_shares: np.ndarray
    input_size: int
    max_out_channels: int


def _log_scaled(value: float, log2_max: float) -> float:
    return math.log2(max(value, 1.0)) / log2_max


def _relative(share: float, num_units: int) -> float:
    """log2(share / average share) / 8 + 0.5: an average unit reads 0.5, 16x more reads 1."""
    return math.log2(max(share * num_units, 1e-6)) / 8.0 + 0.5


def unit_features(
    unit: PrunableUnit,
    context: NetworkContext,
    *,
    cost_removed: float,
    cost_rest: float,
    previous_pruning_ratio: float,
    target: float,
    required_pruning_ratio: float,
    names: Sequence[str] = DEFAULT_FEATURES,
) -> np.ndarray:
    """Observation of ``unit`` at its step of the episode.

    Args:
        unit: the unit about to be pruned.
        context: the network the unit belongs to.
        cost_removed: share of the targeted cost already removed (units before this one).
        cost_rest: share of the targeted cost in the units after this one, at full width.
        previous_pruning_ratio: pruning ratio taken at the previous unit (0 at the first).
        target: the target (relative cost).
        required_pruning_ratio: the action wall's floor for this unit.
        names: the features to return, in this order (see :data:`ALL_FEATURES`).

    Returns:
        float32 array of shape ``(len(names),)``, every entry clipped to [0, 1].
    """
    kind = unit.kind
    t, n = unit.index, context.num_units
    share = float(context.unit_latency_shares[t])
    # The cost this unit and the later ones leave (estimated, as a fraction of the original) and
    # the relative cut they must still make together to reach the target.
    current = 1.0 - cost_removed
    values = {
        "relative_depth": t / max(n - 1, 1),
        "is_conv": float(kind == "conv"),
        "is_pointwise": float(kind == "pointwise"),
        "is_depthwise": float(kind == "depthwise"),
        "is_linear": float(kind == "linear"),
        "log_in_channels": _log_scaled(unit.in_channels, 12.0),
        "log_out_channels": _log_scaled(unit.out_channels, 12.0),
        "kernel_size": (unit.kernel_size - 1) / 6.0,
        "log_stride": _log_scaled(unit.stride, 2.0),
        "log_feature_size": _log_scaled(unit.feature_size, 9.0),
        "macs_share": unit.cost_share,
        "latency_share": share,
        "cost_removed": cost_removed,
        "cost_rest": cost_rest,
        "previous_pruning_ratio": previous_pruning_ratio,
        "target": target,
        "coupling": (len(unit.layer_names) - 1) / 4.0,
        "required_pruning_ratio": required_pruning_ratio,
        "relative_latency_share": _relative(share, n),
        "relative_macs_share": _relative(float(context.unit_macs_shares[t]), n),
        "previous_relative_share": _relative(float(context.unit_latency_shares[t - 1]), n)
        if t > 0
        else 0.0,
        "next_relative_share": _relative(float(context.unit_latency_shares[t + 1]), n)
        if t + 1 < n
        else 0.0,
        "log_downsampling": _log_scaled(context.input_size / max(unit.feature_size, 1), 6.0),
        "relative_width": unit.out_channels / max(context.max_out_channels, 1),
        "log_num_units": _log_scaled(n, 7.0),
        "needed_cut": max(current - target, 0.0) / current if current > 1e-9 else 0.0,
    }
    return np.clip(np.asarray([values[k] for k in names], dtype=np.float32), 0.0, 1.0)
