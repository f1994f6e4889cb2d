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


def rollout(agent: AMCDDPG, env: ChannelPruningEnv, seed: int = 0) -> dict[str, Any]:
    """One episode of the agent's deterministic policy; returns the final step's ``info``."""
    obs, _ = env.reset(seed=seed)
    while True:
        action, _ = agent.predict(obs, deterministic=True)
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return info


def zero_shot(agent: AMCDDPG, env: ChannelPruningEnv, seed: int = 0) -> dict[str, Any]:
    """The agent's zero-shot strategy for ``env``, its allocation fitted to the target's budget.

    A policy trained on other networks often cuts more than a new network's target needs (its
    sense of how much each unit costs is off), and the action wall only ever raises pruning
    ratios. So the deterministic rollout's per-unit pruning ratios are also used as *propensities*:
    scaled together (:func:`envs.baselines.project_to_target`) until the estimated cost just meets
    the target, which keeps the policy's ranking of the units and spends the whole budget. Both
    strategies are evaluated (two episodes, no search) and the one with the higher reward is
    returned, with ``zero_shot`` = ``"policy"`` or ``"projected"`` and the other's record under
    ``"alternative"``.
    """
    policy = rollout(agent, env, seed=seed)
    lo, hi = env.config.min_pruning_ratio, env.config.max_pruning_ratio
    propensity = [(policy["strategy"][u.name] - lo) / (hi - lo) for u in env.units]
    projected = run_strategy(env, project_to_target(env, propensity))
    records = {"policy": policy, "projected": projected}
    best = max(records, key=lambda k: records[k]["reward"])  # ties: the policy's own
    other = "projected" if best == "policy" else "policy"
    return {**records[best], "zero_shot": best, "alternative": _summary(records[other])}


def _summary(info: dict[str, Any]) -> dict[str, Any]:
    keys = ("reward", "accuracy", "relative_latency", "relative_macs", "strategy")
    return {k: info[k] for k in keys if k in info}


def prepare_warm_start(
    agent: AMCDDPG, noise_sigma: float = 0.25, noise_decay: float = 0.95, seed: int = 0
) -> AMCDDPG:
    """Set a loaded agent up to keep learning on a new network at once.

    No random warm-up (the agent already has a policy), a fresh exploration noise that starts
    smaller than a from-scratch search's and decays from the first episode.
    """
    agent.learning_starts = 0
    agent.action_noise = DecayingTruncatedNormalNoise(noise_sigma, noise_decay, 0, seed=seed)
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
