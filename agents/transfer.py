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
from envs.pruning_env import ChannelPruningEnv


def rollout(agent: AMCDDPG, env: ChannelPruningEnv, seed: int = 0) -> dict[str, Any]:
    """One episode of the agent's deterministic policy; returns the final step's ``info``."""
    obs, _ = env.reset(seed=seed)
    while True:
        action, _ = agent.predict(obs, deterministic=True)
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return info


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

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        return self.current.step(action)
