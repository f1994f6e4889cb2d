"""The Gymnasium env: an episode walks a network's prunable units, then prunes it for real."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from envs.actions import (
    absolute_action_to_ratio,
    absolute_ratio_to_action,
    check_action_mode,
    relative_action_to_ratio,
    relative_ratio_to_action,
    remaining_anchor_ratio,
)
from envs.budget import check_reachable, required_pruning_ratio
from envs.cost import CostModel, LatencyCost, MacsCost
from envs.features import DEFAULT_FEATURES, NetworkContext, check_features, unit_features
from envs.latency import LatencyConfig, LatencyMeter, profile_layers
from envs.latency_store import MeasurementStore
from envs.latency_table import LatencyTable, TableLatency, cached_table, device_name, load_table
from envs.pruning import Pruner, count_cost, recalibrate_bn
from envs.reconstruction import Reconstructor
from envs.rewards import TARGET_TOLERANCE, get_reward
from models.errors import PruningError, RlpruneError
from models.training import channels_last, evaluate

#: Seconds of each stage of :meth:`ChannelPruningEnv.evaluate_strategy`, keys of its result.
STAGE_TIMES = ("time_prune_s", "time_bn_s", "time_eval_s", "time_latency_s")

#: Rules that can anchor relative actions (``PruningEnvConfig.anchor_rule``).
ANCHOR_RULES = ("best", "uniform", "global")


@dataclass(frozen=True)
class PruningEnvConfig:
    """Settings of :class:`ChannelPruningEnv`.

    Attributes:
        target: target cost as a fraction of the original model's (latency or MACs), in (0, 1).
        cost: what the target constrains: ``"latency"`` (measured) or ``"macs"`` (AMC's proxy).
        reward: reward name in :data:`envs.rewards.REWARDS`.
        min_pruning_ratio: smallest pruning ratio an action maps to.
        max_pruning_ratio: largest pruning ratio any unit may take (AMC keeps at least 20%: 0.8).
        importance: channel importance criterion (``"l1"``, ``"l2"``).
        round_to: keep channel counts multiples of this (None: any count).
        bn_batches: training batches used to recalibrate BatchNorm statistics (4 x 64 images:
            on 30 random vgg_small/mnist5k strategies, accuracies after 4 batches differ from
            those after 16 by 0.9 points on average, less than 8 batches of two seeds differ
            from each other, 1.3; rank correlation 0.995 either way; at half the time of 8).
        bn_batch_size: images per recalibration batch.
        eval_batch_size: images per batch when evaluating the reward split (100: measured 30%
            faster than 1000 on a 2-core CPU, whose caches the activations of 1000 images spill).
        channels_last: recalibrate BN and evaluate the reward split with the pruned copy's
            weights in channels-last memory format (:func:`models.training.channels_last`; same
            accuracy up to float rounding; evaluation 43% and recalibration 13% faster in the
            default search on 2 CPU cores); the copy is contiguous again before its latency is
            timed.
        latency: how latency is timed (device, batch size, repeats, threads).
        calibrate: correct the per-layer latency estimate of the action wall with the measured
            latency of a uniform strategy at the target and of recent episodes (see
            :meth:`ChannelPruningEnv.latency_estimate`; a low quantile over a window is robust
            to a noisy measurement and errs on the side of the target).
        reconstruct: before BN recalibration, refit every layer whose input channels were
            pruned by AMC's least squares on feature maps of the original network
            (:class:`envs.reconstruction.Reconstructor`; one sampling pass at construction,
            then ~0.1 s per strategy).
        actions: how an action becomes a pruning ratio (:mod:`envs.actions`): ``"relative"``
            (the default: 0 is the uniform pruning ratio that makes the remaining units just meet
            the target, -1 the minimum, +1 the maximum; an unsure policy falls back to uniform
            pruning) or ``"absolute"`` (AMC: linear onto [min_pruning_ratio,
            max_pruning_ratio]). Measured in docs/benchmarks.md (``agent_relative`` vs ``agent``).
        anchor: with relative actions, centre them on a rule measured at the target
            (:meth:`ChannelPruningEnv.ensure_anchor`, once, at the first reset): action 0 is the
            rule's pruning ratio for the unit, shifted by one amount over the remaining units so
            that they just meet the estimated cost of that rule
            (:func:`envs.actions.remaining_anchor_ratio`), and the action wall aims at that estimate
            too, not at the target itself. Action 0 everywhere then reproduces the rule exactly;
            without the anchor the estimate's error (a latency curve one calibrated slope cannot
            fit, its conservative quantile) moves action 0 away from uniform pruning
            (tests/test_env.py, concave latency).
        anchor_rule: which rule anchors relative actions (:data:`ANCHOR_RULES`): ``"uniform"``
            (:func:`envs.baselines.uniform_for_target`), ``"global"`` (global magnitude pruning,
            :func:`envs.baselines.global_for_target`) or ``"best"`` (the default: both are
            measured, the one with the higher reward anchors; on CIFAR plain20 at 0.5 of the
            latency global magnitude was 7 points ahead of uniform, on resnet20 level).
        retime_below: a measured relative latency more than this fraction below what the
            calibration's median slope expects for the strategy (:meth:`LatencyCost.typical
            <envs.cost.LatencyCost.typical>`) is timed once more, and the second timing
            decides. A disturbance of the reference during a short adaptive timing reads low,
            and a low reading lets a model over the budget into the search's best: CIFAR
            resnet20 at 0.5, the delivered model timed 0.397 in its search and 0.49-0.55 in
            four reporting timings. 0 turns it off.
        exact_budget: before an episode's strategy is evaluated, rescale it onto the measured
            budget the way the rules are bisected (its pruning ratios taken as propensities,
            :func:`envs.baselines.project_to_target` with ``measured=True``): the agent chooses
            the shape of the strategy, the measurement its size, so every episode spends exactly
            the rules' budget (the target + the reward's tolerance) whatever the estimate's
            error. About 10 more timings per episode.
        latency_bridge: once the latency estimate is calibrated, pair every timed candidate
            with a model of about the target's latency (uniform pruning bisected on measured
            latency to within 15% of the target) instead of the unpruned reference, and scale
            by the bridge's own ratio to the reference, timed interleaved and pooled over the
            search (:meth:`envs.latency.LatencyMeter.set_bridge`). At a 0.5 target the
            reference is two thirds of every pair's time; same meaning of the numbers, a faster
            search (docs/throughput.md).
        features: Names of the observation features (:data:`envs.features.ALL_FEATURES`), in
            order; the default is every feature of the current version. A subset is for
            ablations; an agent only acts in envs that observe the features it was trained on.
    """

    target: float = 0.5
    cost: str = "latency"
    reward: str = "acc"
    min_pruning_ratio: float = 0.0
    max_pruning_ratio: float = 0.8
    importance: str = "l1"
    round_to: int | None = None
    bn_batches: int = 4
    bn_batch_size: int = 64
    eval_batch_size: int = 100
    channels_last: bool = True
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    calibrate: bool = True
    reconstruct: bool = False
    actions: str = "relative"
    anchor: bool = True
    anchor_rule: str = "best"
    retime_below: float = 0.15
    exact_budget: bool = False
    latency_bridge: bool = True
    features: tuple[str, ...] = DEFAULT_FEATURES

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", check_features(self.features))
        check_action_mode(self.actions)
        if self.anchor_rule not in ANCHOR_RULES:
            raise RlpruneError(
                f"unknown anchor rule '{self.anchor_rule}'; choose one of {', '.join(ANCHOR_RULES)}"
            )
        if self.cost not in ("latency", "macs"):
            raise RlpruneError(f"unknown cost '{self.cost}'; choose 'latency' or 'macs'")
        if not 0.0 <= self.min_pruning_ratio < self.max_pruning_ratio < 1.0:
            raise RlpruneError(
                "need 0 <= min_pruning_ratio < max_pruning_ratio < 1, got "
                f"{self.min_pruning_ratio} and {self.max_pruning_ratio}"
            )
        if not 0.0 <= self.retime_below < 1.0:
            raise RlpruneError(f"need 0 <= retime_below < 1, got {self.retime_below}")
        get_reward(self.reward)  # fail early on an unknown name


class LatencySource(Protocol):
    """Where latency comes from: measured by default, a fixed function in deterministic tests."""

    def profile(self, layer_names: Sequence[str]) -> tuple[dict[str, float], float]:
        """Per-layer latency (ms) of the reference model and the rest (ms) not in those layers."""

    def relative_latency(self, model: nn.Module, fresh: bool = False) -> tuple[float, float]:
        """Latency of ``model`` relative to the reference, and its median in ms; ``fresh``:
        measured again even if this architecture was measured before (a source that measures
        nothing may ignore it)."""


class MeasuredLatency:
    """Latency measured on the target device, candidates interleaved with the reference.

    Args:
        reference: the unpruned model.
        input_shape: one sample's shape.
        config: timing settings (see :class:`envs.latency.LatencyConfig`).
        threshold: relative latency at which the reward changes (target plus tolerance); timing a
            candidate
            stops early once it is known to be on one side of it (see
            :class:`envs.latency.LatencyMeter`).
        tables: directory of saved per-layer latency tables (:mod:`envs.latency_table`): the
            reference's profile is read from there when this device measured it before with
            these settings, else measured and saved there. None: always measured, not saved.
        model_name: names the saved table (and the store file).
        store: directory of kept measurements (:class:`envs.latency_store.MeasurementStore`):
            every candidate's relative latency is read from there when an earlier env measured
            that architecture with these settings and threshold, else timed and added. Envs that
            share it get one number per architecture. None: this env's memory only.

    Attributes:
        table: the reference's latency table once :meth:`profile` ran with ``tables``.
        table_path: its file; ``table_reused``: whether it was read, not measured.
    """

    def __init__(
        self,
        reference: nn.Module,
        input_shape: tuple[int, int, int],
        config: LatencyConfig,
        threshold: float | None = None,
        tables: str | Path | None = None,
        model_name: str = "model",
        store: str | Path | None = None,
    ):
        self.reference = reference
        self.input_shape = input_shape
        self.config = config
        kept = (
            None
            if store is None
            else MeasurementStore(store, reference, config, threshold, model_name)
        )
        self.meter = LatencyMeter(reference, input_shape, config, threshold=threshold, store=kept)
        self.tables, self.model_name = tables, model_name
        self.table: LatencyTable | None = None
        self.table_path: Path | None = None
        self.table_reused = False

    def profile(self, layer_names: Sequence[str]) -> tuple[dict[str, float], float]:
        if self.tables is None:
            return profile_layers(self.reference, self.input_shape, layer_names, self.config)
        self.table, self.table_path, self.table_reused = cached_table(
            self.tables, self.reference, self.input_shape, layer_names, self.config, self.model_name
        )
        return self.table.layer_ms(), self.table.overhead_ms

    def relative_latency(self, model: nn.Module, fresh: bool = False) -> tuple[float, float]:
        relative, stats = self.meter.relative_latency(model, fresh=fresh)
        return relative, stats.median_ms

    def set_bridge(self, bridge: nn.Module) -> None:
        """Pair later candidates with ``bridge`` (:meth:`envs.latency.LatencyMeter.set_bridge`)."""
        self.meter.set_bridge(bridge)

    @property
    def compile_s(self) -> float:
        """Seconds spent so far compiling models for the backend (export, session, trace)."""
        return self.meter.backend.compile_s

    def describe(self) -> str:
        """How latency is measured, for logs and reports: backend, device, threads, batch size,
        the compilations and the per-layer table."""
        cfg, backend = self.config, self.meter.backend
        text = (
            f"latency timed with {cfg.backend} on {cfg.device} ({device_name(cfg.device)}), "
            f"{cfg.threads} thread(s), batch {cfg.batch_size}"
        )
        if cfg.backend != "torch":
            text += f"; {backend.exports} compilations in {backend.compile_s:.1f} s"
        if self.table_path is not None:
            how = "reused" if self.table_reused else "measured and saved"
            text += f"; per-layer table {self.table_path} ({how})"
        return text


class ChannelPruningEnv(gym.Env):
    """AMC-style channel pruning of a trained classifier, one prunable unit per step.

    A *unit* is a group of layers whose output channels must be removed together (residual adds,
    depthwise convs, concatenations; found by Torch-Pruning's dependency graph). The classifier's
    outputs are never pruned.

    **Action space**: ``Box(-1, 1, (1,), float32)``, mapped linearly to a pruning ratio (fraction of
    the unit's channels removed) in ``[min_pruning_ratio, max_pruning_ratio]``, then raised if
    needed by AMC's action wall so that the target stays reachable when every later unit is pruned
    at ``max_pruning_ratio`` (the wall uses a per-layer latency table or MACs, see
    :mod:`envs.budget`).

    **Observation space**: ``Box(0, 1, (len(config.features),), float32)``, the fixed-scale,
    architecture-agnostic features of the current unit named in ``config.features`` (all of
    :data:`envs.features.ALL_FEATURES` by default: relative depth, kind, log widths, kernel,
    stride, feature-map size, MACs and latency shares, cost removed so far, cost still to visit,
    previous pruning ratio, target, coupling, the wall's floor, and for transfer the shares relative
    to the average unit's, the neighbours' shares, downsampling, relative width, network length and
    the cut still needed).

    **Reward**: 0 at every step but the last. At the last unit a copy of the model is pruned for
    real, its BatchNorm statistics are recalibrated on a few training batches, its accuracy is
    measured on the reward split and its latency on the target device; the reward is
    ``REWARDS[config.reward](accuracy, relative_cost, target, base_cost)``.

    **Start**: the first unit, nothing pruned. **End**: ``terminated=True`` after the last unit;
    never truncated. ``info`` of the last step carries ``accuracy``, ``latency_ms``,
    ``relative_latency``, ``relative_macs``, ``relative_params`` (each pruned / original),
    ``strategy``, ``reward`` and the time spent (``time_prune_s``, ``time_bn_s``, ``time_eval_s``,
    ``time_latency_s``; ``time_export_s`` is the part of ``time_latency_s`` spent compiling for the
    latency backend).

    The source model is never modified. Baseline accuracy and latency are measured once, here.

    Latency comes from ``latency`` if given (a :class:`LatencySource`), else from a table measured
    on another device (``latency_table``, a file: :class:`envs.latency_table.TableLatency`,
    nothing is timed), else it is measured (:class:`MeasuredLatency`, whose per-layer table is
    saved in and reused from the directory ``latency_tables``, and whose measurements are kept in
    the directory ``latency_store`` for other envs of the same model and target when given).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        model: nn.Module,
        train_set: TensorDataset,
        reward_val: TensorDataset,
        config: PruningEnvConfig | None = None,
        *,
        device: str | torch.device = "cpu",
        latency: LatencySource | None = None,
        model_name: str = "model",
        latency_tables: str | Path | None = None,
        latency_table: str | Path | None = None,
        latency_store: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.config = config or PruningEnvConfig()
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.model_name = model_name
        self.train_set = train_set
        self.reward_val = reward_val
        self.input_shape = tuple(train_set.tensors[0].shape[1:])
        self.example_input = torch.zeros(1, *self.input_shape, device=self.device)
        self.reward_fn = get_reward(self.config.reward)

        self.pruner = Pruner(
            self.model,
            self.example_input,
            importance=self.config.importance,
            round_to=self.config.round_to,
        )
        self.reconstructor = (
            Reconstructor(self.model, train_set, device=self.device)
            if self.config.reconstruct
            else None
        )
        self.units = self.pruner.units
        if not self.units:
            raise PruningError(
                f"{model_name} has no prunable units (no conv/linear layer with 2+ output "
                "channels besides the classifier); nothing to search"
            )
        self.num_units = len(self.units)
        self.layer_costs = self.pruner.layer_costs
        self.base_macs, self.base_params = self.pruner.base_macs, self.pruner.base_params
        self.base_accuracy = evaluate(
            self.model, reward_val, self.device, self.config.eval_batch_size
        )

        lat_cfg = LatencyConfig(**{**asdict(self.config.latency), "device": str(self.device)})
        threshold = self.config.target * (1.0 + TARGET_TOLERANCE)
        if self.config.cost != "latency":
            threshold = None
        if latency is None and latency_table is not None:  # the search's latency: the table's
            table = load_table(latency_table)
            latency = TableLatency(table, latency_table, self.model, self.input_shape, lat_cfg)
        self.latency = latency or MeasuredLatency(
            self.model,
            self.input_shape,
            lat_cfg,
            threshold,
            latency_tables,
            model_name,
            latency_store,
        )
        self.layer_latency_ms, self.overhead_ms = self.latency.profile(
            [c.name for c in self.layer_costs]
        )
        _, self.base_latency_ms = self.latency.relative_latency(self.model)
        self.macs_cost = MacsCost(self.layer_costs, self.num_units, self.base_macs)
        self.latency_cost = LatencyCost(
            self.layer_costs,
            self.num_units,
            self.layer_latency_ms,
            self.overhead_ms,
            self.base_latency_ms,
            calibrate=self.config.calibrate and self.config.cost == "latency",
        )
        #: The cost the target constrains, chosen once: every cost question goes to it.
        self.cost: CostModel = (
            self.latency_cost if self.config.cost == "latency" else self.macs_cost
        )
        self.unit_macs_shares = self.macs_cost.shares(self.num_units)
        self.unit_latency_shares = self.latency_cost.shares(self.num_units)
        self._unit_cost_shares = (
            self.unit_latency_shares if self.cost is self.latency_cost else self.unit_macs_shares
        )
        # The network-wide part of every observation (the shares change only here).
        self._context = NetworkContext(
            num_units=self.num_units,
            unit_latency_shares=self.unit_latency_shares,
            unit_macs_shares=self.unit_macs_shares,
            input_size=int(self.input_shape[-2]) if len(self.input_shape) == 3 else 1,
            max_out_channels=max(u.out_channels for u in self.units),
        )
        shares = zip(self.units, self.unit_latency_shares, strict=True)
        self.latency_share_by_unit = {u.name: float(s) for u, s in shares}

        max_strategy = self._uniform(self.config.max_pruning_ratio)
        self.max_pruned = self.evaluate_strategy(max_strategy, with_accuracy=False)
        self.check_target(self.config.target)
        self.latency_cost.observe(self.pruner.keep_fractions(max_strategy), self.max_pruned)
        self.latency_cost.refit_at_target(
            self._uniform_keep,
            lambda pruning_ratio: self.evaluate_strategy(
                self._uniform(pruning_ratio), with_accuracy=False
            )["relative_latency"],
            self.config.target,
            self.config.max_pruning_ratio,
        )
        set_bridge = getattr(self.latency, "set_bridge", None)
        if self.config.latency_bridge and set_bridge is not None:
            set_bridge(self._bridge_model())

        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)
        self.feature_names = self.config.features
        self.observation_space = gym.spaces.Box(
            0.0, 1.0, (len(self.feature_names),), dtype=np.float32
        )
        self._cache: dict[tuple[int, ...], dict[str, Any]] = {}
        self._keep: list[float] = []
        self._pruning_ratios: list[float] = []
        self._floor = 0.0
        self._centre = 0.0
        self._plan: dict[str, float] | None = None  # see strategy_action
        #: Kept fractions of the rule relative actions are centred on (``config.anchor``), and
        #: its name (``"uniform"`` or ``"global"``); set by :meth:`ensure_anchor`.
        self.anchor_keep: list[float] | None = None
        self.anchor_name: str | None = None
        self._rules: dict[str, dict[str, Any]] = {}  # see rule()

    # ----------------------------------------------------------------- cost models
    @property
    def calibration(self) -> float:
        """Slope ``k`` of the latency estimate: ``1 - k * (1 - profile estimate)``."""
        return self.latency_cost.slope

    def latency_estimate(self, keep: Sequence[float]) -> float:
        """Estimated relative latency for kept fractions ``keep``
        (:class:`envs.cost.LatencyCost`)."""
        return self.latency_cost.estimate(keep)

    def macs_estimate(self, keep: Sequence[float]) -> float:
        """Estimated relative MACs for kept fractions ``keep``."""
        return self.macs_cost.estimate(keep)

    def cost_estimate(self, keep: Sequence[float]) -> float:
        """Estimated relative cost the target constrains (latency or MACs) for ``keep``."""
        return self.cost.estimate(keep)

    def _bridge_model(self, tolerance: float = 0.15, steps: int = 6) -> nn.Module:
        """Uniform pruning whose measured latency is within ``tolerance`` of the target: about a
        candidate's latency. Starts at the ratio the latency estimate puts at the target (timed
        already by the calibration), then bisects on measured latency for at most ``steps``
        timings, should the estimate be off (a per-layer profile taken under load)."""
        lo, hi = 0.0, self.config.max_pruning_ratio
        ratio = self.latency_cost.uniform_ratio(self._uniform_keep, self.config.target, hi)
        target = self.config.target
        for _ in range(steps):
            measured = self.evaluate_strategy(self._uniform(ratio), with_accuracy=False)
            if abs(measured["relative_latency"] / target - 1.0) <= tolerance:
                break
            lo, hi = (ratio, hi) if measured["relative_latency"] > target else (lo, ratio)
            ratio = 0.5 * (lo + hi)
        return self.pruner.prune_to(self.pruner.kept_channels(self._uniform(ratio)))

    def _uniform(self, pruning_ratio: float) -> dict[str, float]:
        """Every unit at ``pruning_ratio``."""
        return {u.name: pruning_ratio for u in self.units}

    def _uniform_keep(self, pruning_ratio: float) -> list[float]:
        return self.pruner.keep_fractions(self._uniform(pruning_ratio))

    def check_target(self, target: float) -> None:
        """Raise :class:`BudgetError` if ``target`` is outside (0, 1) or below maximal pruning."""
        check_reachable(target, self.cost.measured(self.max_pruned), self.cost.name)

    # ----------------------------------------------------------------- gym API
    @property
    def anchored(self) -> bool:
        """Whether relative actions are centred on a measured rule (``config.anchor``)."""
        return self.config.actions == "relative" and self.config.anchor

    def ensure_anchor(self) -> None:
        """Measure the anchor rule at the target once (``anchor_keep``), if ``config.anchor``.

        :func:`envs.baselines.uniform_for_target` / :func:`~envs.baselines.global_for_target`
        bisect their knob on the env's measured cost and evaluate the result (so the rules are in
        the result cache with their rewards); ``anchor_rule == "best"`` measures both and takes the
        one with the higher reward (uniform on a tie). Called by :meth:`reset`; call it before
        copying the env into parallel workers so they share one anchor.
        """
        if not self.anchored or self.anchor_keep is not None:
            return
        names = (
            ["uniform", "global"]
            if self.config.anchor_rule == "best"
            else [self.config.anchor_rule]
        )
        self.anchor_name = max(names, key=lambda name: self.rule(name)["reward"])
        self.anchor_keep = self.pruner.keep_fractions(self.rule(self.anchor_name)["strategy"])

    def rule(self, name: str) -> dict[str, Any]:
        """The rule ``name`` of :data:`envs.baselines.TARGET_RULES` at the env's target, bisected on
        the measured cost and evaluated (:meth:`evaluate_strategy`'s result) the first time it is
        asked for, the same result after: the anchor and the final selection share it."""
        if name not in self._rules:
            from envs.baselines import TARGET_RULES  # baselines builds on this module

            self._rules[name] = TARGET_RULES[name](self)
        return self._rules[name]

    def estimate_target(self) -> float:
        """The estimated cost the action wall and the relative centre aim at: the target, or
        with an anchor (:meth:`ensure_anchor`) the current estimate of the measured rule."""
        if self.anchor_keep is None:
            return self.config.target
        return self.cost.estimate(self.anchor_keep)

    def _observation(self) -> np.ndarray:
        t = len(self._keep)
        aim = (self.cost.estimate, self._keep, self.num_units, self.estimate_target())
        # The wall and (relative actions) action 0 for this unit; step() reuses both.
        self._floor = required_pruning_ratio(*aim, self.config.max_pruning_ratio)
        if self.config.actions == "relative":  # no anchor: uniform pruning, keep 1 shifted
            anchor = self.anchor_keep or [1.0] * self.num_units
            self._centre = remaining_anchor_ratio(
                self.cost.estimate, self._keep, anchor, aim[-1], self.config.max_pruning_ratio
            )
        ones = [1.0] * (self.num_units - t)
        return unit_features(
            self.units[t],
            self._context,
            cost_removed=1.0 - self.cost.estimate(self._keep + ones),
            cost_rest=float(self._unit_cost_shares[t + 1 :].sum()),
            previous_pruning_ratio=self._pruning_ratios[-1] if self._pruning_ratios else 0.0,
            target=self.config.target,
            required_pruning_ratio=self._floor,
            names=self.feature_names,
        )

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.ensure_anchor()
        self._keep, self._pruning_ratios = [], []
        return self._observation(), {}

    def action_to_pruning_ratio(self, action: float) -> float:
        """The current unit's pruning ratio for an action in [-1, 1] (``config.actions``).

        ``"absolute"``: linear onto [min_pruning_ratio, max_pruning_ratio]. ``"relative"``: 0 is
        the remaining uniform pruning ratio of the current step (:mod:`envs.actions`).
        """
        lo, hi = self.config.min_pruning_ratio, self.config.max_pruning_ratio
        if self.config.actions == "relative":
            return relative_action_to_ratio(action, self._centre, lo, hi)
        return absolute_action_to_ratio(action, lo, hi)

    def pruning_ratio_to_action(self, pruning_ratio: float) -> float:
        """The action that gives the current unit ``pruning_ratio`` (the inverse of
        :meth:`action_to_pruning_ratio` at this step; clipped to the reachable range)."""
        lo, hi = self.config.min_pruning_ratio, self.config.max_pruning_ratio
        if self.config.actions == "relative":
            return relative_ratio_to_action(pruning_ratio, self._centre, lo, hi)
        return absolute_ratio_to_action(pruning_ratio, lo, hi)

    def budget_exact(self, strategy: Mapping[str, float]) -> dict[str, float]:
        """``strategy`` rescaled onto the measured budget (``PruningEnvConfig.exact_budget``):
        its pruning ratios as the propensities of :func:`envs.baselines.project_to_target`
        (``(ratio - min) / (max - min)``, so scale 1 is ``strategy`` itself), the scale bisected
        on the measured cost as the rules' knobs are."""
        from envs.baselines import project_to_target  # baselines builds on this module

        lo, hi = self.config.min_pruning_ratio, self.config.max_pruning_ratio
        propensity = [(float(strategy[u.name]) - lo) / (hi - lo) for u in self.units]
        return project_to_target(self, propensity, measured=True)

    def strategy_action(self, seed: int | None) -> float:
        """The current unit's action in a whole strategy drawn as EagleEye draws one.

        At the episode's first unit the strategy is drawn: one propensity per unit, uniform in
        (0, 1] from ``np.random.default_rng(seed)``, projected onto the cost this env aims at
        (:func:`envs.baselines.project_to_target` at :meth:`estimate_target`); later units play
        that strategy and ignore ``seed``. Playing it for every unit evaluates the strategy, as
        :func:`envs.baselines.sampled_search` does; the agent's warm-up does so with
        ``AgentConfig.warmup_mode="strategies"``. ``seed`` None plays the env's reference
        strategy instead: with relative actions action 0 (the anchor rule), else equal
        propensities (uniform pruning by the cost estimate, the sampled search's first).
        """
        from envs.baselines import project_to_target, random_propensity  # builds on this module

        if seed is None and self.config.actions == "relative":
            return 0.0
        if not self._keep or self._plan is None:
            if seed is None:
                propensity = np.ones(self.num_units)
            else:
                propensity = random_propensity(np.random.default_rng(seed), self.num_units)
            self._plan = project_to_target(self, propensity, self.estimate_target())
        return self.pruning_ratio_to_action(self._plan[self.units[len(self._keep)].name])

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if len(self._keep) >= self.num_units:
            raise RlpruneError("step() called after the episode ended; call reset() first")
        unit = self.units[len(self._keep)]
        wanted = self.action_to_pruning_ratio(float(np.asarray(action).reshape(-1)[0]))
        pruning_ratio = min(max(wanted, self._floor), self.config.max_pruning_ratio)
        # The cost estimates of later steps see the channel count this pruning ratio really keeps.
        self._keep.append(self.pruner.keep_fractions({unit.name: pruning_ratio})[unit.index])
        self._pruning_ratios.append(pruning_ratio)
        info: dict[str, Any] = {
            "unit": unit.name,
            "pruning_ratio": pruning_ratio,
            "wanted_pruning_ratio": wanted,
        }
        if len(self._keep) < self.num_units:
            return self._observation(), 0.0, False, False, info

        strategy = {u.name: r for u, r in zip(self.units, self._pruning_ratios, strict=True)}
        t0 = time.perf_counter()
        if self.config.exact_budget:
            strategy = self.budget_exact(strategy)
            self._keep = self.pruner.keep_fractions(strategy)
        bisect_s = time.perf_counter() - t0
        result = self.evaluate_strategy(strategy)
        # The exact budget's bisection (pruning and timing ~10 candidates) is latency work.
        result["time_latency_s"] += bisect_s
        self.cost.observe(self._keep, result)
        info.update(result, model=self.model_name, latency_share_by_unit=self.latency_share_by_unit)
        obs = np.zeros(len(self.feature_names), dtype=np.float32)
        obs[0] = 1.0
        return obs, float(result["reward"]), True, False, info

    # ----------------------------------------------------------------- evaluation
    def evaluate_strategy(
        self, strategy: Mapping[str, float], *, with_accuracy: bool = True
    ) -> dict[str, Any]:
        """Prune a copy with ``strategy``, recalibrate BN, measure accuracy, latency and cost.

        Results are cached by the kept channel counts, so a strategy that rounds to an
        architecture already seen costs nothing.

        Returns:
            dict with ``accuracy`` (reward split, after BN recalibration; None if not asked),
            ``latency_ms``, ``relative_latency``, ``macs``, ``relative_macs``, ``params``,
            ``relative_params``, ``strategy``, ``kept_channels``, ``reward``, ``cached``,
            ``latency_retimed_from`` (the first relative latency reading when it was so far
            below the calibration's typical value that it was timed again, see
            ``PruningEnvConfig.retime_below``; else None) and the seconds spent in each stage.
        """
        kept = self.pruner.kept_channels(strategy)
        key = tuple(kept[u.name] for u in self.units)
        cached = self._cache.get(key) if with_accuracy else None
        if cached is not None:
            return {**cached, "strategy": dict(strategy), "cached": True}

        times = dict.fromkeys(STAGE_TIMES, 0.0)
        t0 = time.perf_counter()
        pruned = self.pruner.prune_to(kept)  # the counts above: no second rounding
        macs, params = count_cost(pruned, self.example_input)
        t1 = time.perf_counter()
        times["time_prune_s"] = t1 - t0
        accuracy = None
        if with_accuracy:
            with channels_last(pruned, self.config.channels_last):
                self.restore(pruned)
                t2 = time.perf_counter()
                accuracy = evaluate(
                    pruned, self.reward_val, self.device, self.config.eval_batch_size
                )
            t3 = time.perf_counter()
            times["time_bn_s"], times["time_eval_s"] = t2 - t1, t3 - t2
        t4, compiled_s = time.perf_counter(), self._compile_s()
        relative_latency, latency_ms = self.latency.relative_latency(pruned)
        retimed_from = None
        if self._suspiciously_fast(kept, relative_latency):
            retimed_from = relative_latency
            relative_latency, latency_ms = self.latency.relative_latency(pruned, fresh=True)
        times["time_latency_s"] = time.perf_counter() - t4
        times["time_export_s"] = self._compile_s() - compiled_s

        relative_macs = macs / self.base_macs
        result = {
            "accuracy": accuracy,
            "latency_ms": latency_ms,
            "relative_latency": relative_latency,
            "macs": macs,
            "relative_macs": relative_macs,
            "params": params,
            "relative_params": params / self.base_params,
            "kept_channels": kept,
            "latency_retimed_from": retimed_from,
            **times,
        }
        result["reward"] = (
            None
            if accuracy is None
            else self.reward_fn(
                accuracy, self.cost.measured(result), self.config.target, self.cost.base
            )
        )
        if with_accuracy:
            self._cache[key] = result
        return {**result, "strategy": dict(strategy), "cached": False}

    def _suspiciously_fast(self, kept: Mapping[str, int], relative_latency: float) -> bool:
        """Whether a measured relative latency is so far below the calibration's typical value
        for the architecture keeping ``kept`` channels per unit (``config.retime_below``) that
        it is timed again."""
        band = self.config.retime_below
        if not band or self.config.cost != "latency":
            return False
        typical = self.latency_cost.typical(self.pruner.fractions_of(kept))
        return typical is not None and relative_latency < typical * (1.0 - band)

    def _compile_s(self) -> float:
        """Seconds the latency source spent compiling so far (0 for one that compiles nothing)."""
        return float(getattr(self.latency, "compile_s", 0.0))

    def evaluated_results(self) -> list[dict[str, Any]]:
        """Every distinct architecture evaluated with accuracy so far (copies of the cached
        :meth:`evaluate_strategy` results, without ``strategy``; ``kept_channels`` names it)."""
        return [dict(result) for result in self._cache.values()]

    def add_results(self, results: Sequence[Mapping[str, Any]]) -> int:
        """Adds architectures evaluated elsewhere (another worker's copy of this env, see
        :meth:`evaluated_results`) to the result cache; returns how many were new."""
        before = len(self._cache)
        for result in results:
            key = tuple(result["kept_channels"][u.name] for u in self.units)
            self._cache.setdefault(key, dict(result))
        return len(self._cache) - before

    def relative_cost(self, result: Mapping[str, Any]) -> float:
        """The relative cost the env's target applies to, from an :meth:`evaluate_strategy`
        result."""
        return self.cost.measured(result)

    def target_limit(self, target: float | None = None) -> float:
        """The largest measured relative cost that meets ``target`` (the env's when None).

        MACs are exact: the target itself. Measured latency: the target plus the reward's
        tolerance (:data:`envs.rewards.TARGET_TOLERANCE`), the threshold around which the
        search's adaptive timing is precise. A strict ``<= target`` on a measurement made
        discrete architectures near the target flip with the noise: CIFAR resnet20 pruned
        uniformly to 8/16/32 channels timed at 0.48 in one env and over 0.5 in another, so the
        uniform rule of two envs differed (8/16/32 vs 8/16/24 channels, 0.42 vs 0.31 accuracy).
        """
        target = self.config.target if target is None else target
        return target * (1.0 + TARGET_TOLERANCE) if self.config.cost == "latency" else target

    def prune(self, strategy: Mapping[str, float]) -> nn.Module:
        """A pruned, restored (:meth:`restore`) copy of the model; the source is untouched."""
        return self.restore(self.pruner.apply(strategy))

    def restore(self, pruned: nn.Module) -> nn.Module:
        """Repairs a pruned copy in place as every evaluation does: the reconstruction of
        input-pruned layers (if configured), then BN recalibration. Returns it in eval mode."""
        if self.reconstructor is not None:
            self.reconstructor.apply(pruned)
        return recalibrate_bn(
            pruned,
            self.train_set,
            num_batches=self.config.bn_batches,
            batch_size=self.config.bn_batch_size,
            device=self.device,
        )
