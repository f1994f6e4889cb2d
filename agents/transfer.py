"""Reuse a trained agent: zero-shot on a new network, warm-started search, multi-network training.

The observation is architecture-agnostic by construction (:mod:`envs.features`), so an agent
trained on one network acts on any other whose units the dependency graph can find.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from agents.ddpg import AMCDDPG, DecayingTruncatedNormalNoise
from envs.baselines import project_to_target, run_strategy
from envs.pruning_env import ChannelPruningEnv


def rollout(
    agent: AMCDDPG, env: ChannelPruningEnv, seed: int = 0, scale: float = 1.0
) -> dict[str, Any]:
    """One episode of the agent's deterministic policy; returns the final step's ``info``.

    ``scale`` multiplies every action before the env maps it to a pruning ratio; with relative
    actions (action 0 = the anchor rule's ratio) a scale below 1 moves the policy's strategy
    towards the rule.
    """
    obs, _ = env.reset(seed=seed)
    while True:
        action, _ = agent.predict(obs, deterministic=True)
        obs, _, terminated, truncated, info = env.step(action * scale)
        if terminated or truncated:
            return info


#: Action scales of the shrunken zero-shot candidates (relative actions only).
ZERO_SHOT_SCALES = (0.5, 0.25)


def zero_shot(
    agent: AMCDDPG,
    env: ChannelPruningEnv,
    seed: int = 0,
    scales: Sequence[float] = ZERO_SHOT_SCALES,
) -> dict[str, Any]:
    """The agent's zero-shot strategy for ``env``: the best by reward of a few policy variants.

    Candidates, each evaluated as one episode (no search, no learning):

    - ``"policy"``: the deterministic rollout as the agent was trained.
    - ``"projected"``: a policy trained on other networks often cuts more than a new network's
      target needs (its sense of how much each unit costs is off), and the action wall only ever
      raises pruning ratios. So the rollout's per-unit pruning ratios are also used as
      *propensities*: scaled together (:func:`envs.baselines.project_to_target`) until the
      estimated cost just meets the target, which keeps the policy's ranking of the units and
      spends the whole budget.
    - ``"policy x<s>"`` for each of ``scales``, with relative actions only: the rollout with every
      action multiplied by ``s``, i.e. the policy's deviations from the anchor rule shrunk by that
      factor. On unseen networks the policy's actions often saturate at +-1 (observations outside
      what it was trained on); a shrunken policy keeps its direction with smaller steps
      (googlenet on mnist5k, 13th session: 0.466 reward-split accuracy at x0.25 against 0.218 for
      the policy, 0.358 for the anchor rule; docs/transfer.md).

    Returns the chosen candidate's final-step info with ``zero_shot`` = its label and
    ``candidates`` = ``{label: summary}`` of every candidate (the chosen one included). Ties go
    to the earlier candidate in the order above.
    """
    policy = rollout(agent, env, seed=seed)
    lo, hi = env.config.min_pruning_ratio, env.config.max_pruning_ratio
    propensity = [(policy["strategy"][u.name] - lo) / (hi - lo) for u in env.units]
    records = {"policy": policy, "projected": run_strategy(env, project_to_target(env, propensity))}
    if env.config.actions == "relative":
        for s in scales:
            records[f"policy x{s:g}"] = rollout(agent, env, seed=seed, scale=s)
    best = max(records, key=lambda k: records[k]["reward"])  # ties: the first
    summaries = {k: _summary(v) for k, v in records.items()}
    return {**records[best], "zero_shot": best, "candidates": summaries}


def _summary(info: dict[str, Any]) -> dict[str, Any]:
    keys = ("reward", "accuracy", "relative_latency", "relative_macs", "strategy")
    return {k: info[k] for k in keys if k in info}


def prepare_warm_start(
    agent: AMCDDPG,
    noise_sigma: float = 0.25,
    noise_decay: float = 0.95,
    seed: int = 0,
    revisit_boost: float = 1.0,
) -> AMCDDPG:
    """Set a loaded agent up to keep learning on a new network at once.

    No random warm-up (the agent already has a policy), a fresh exploration noise that starts
    smaller than a from-scratch search's and decays from the first episode; ``revisit_boost``
    widens it while the agent re-visits evaluated architectures (see
    :class:`agents.ddpg.AgentConfig`; 1: off).
    """
    agent.learning_starts = 0
    agent.action_noise = DecayingTruncatedNormalNoise(
        noise_sigma, noise_decay, 0, seed=seed, revisit_boost=revisit_boost
    )
    return agent


class MultiModelEnv(gym.Env):
    """Alternates episodes between several pruning environments (one per network).

    Each :meth:`reset` moves to the next environment, round robin, so one agent learns from
    several architectures. Spaces are those of :class:`ChannelPruningEnv` (identical for all).
    """

    metadata = {"render_modes": []}

    def __init__(self, envs: Sequence[ChannelPruningEnv]) -> None:
        super().__init__()
        if not envs:
            raise ValueError("MultiModelEnv needs at least one environment")
        self.envs = list(envs)
        names = {tuple(e.feature_names) for e in self.envs}
        if len(names) != 1:
            raise ValueError(f"the environments observe different features: {sorted(names)}")
        modes = {e.config.actions for e in self.envs}
        if len(modes) != 1:
            raise ValueError(f"the environments map actions differently: {sorted(modes)}")
        self.feature_names = self.envs[0].feature_names
        self.observation_space = self.envs[0].observation_space
        self.action_space = self.envs[0].action_space
        self.num_units = max(e.num_units for e in self.envs)
        self._next = 0
        self.current = self.envs[0]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.current = self.envs[self._next % len(self.envs)]
        self._next += 1
        return self.current.reset(seed=seed, options=options)

    @property
    def config(self) -> Any:
        """The current environment's settings (all share the action mode)."""
        return self.current.config

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        return self.current.step(action)

    def strategy_action(self, seed: int | None) -> float:
        """The current environment's :meth:`ChannelPruningEnv.strategy_action`."""
        return self.current.strategy_action(seed)
