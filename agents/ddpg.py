"""Stable-Baselines3 DDPG with AMC's defaults (He et al., ECCV 2018).

What AMC does that plain SB3 DDPG does not, and how it is added here:

* **Episode reward on every transition.** The reward arrives only at the end of an episode. AMC
  stores every transition of the episode with the final reward, marked terminal, so the critic
  regresses each (state, action) on the episode's outcome; a moving-average baseline
  (alpha 0.5) is subtracted from sampled rewards. :class:`EpisodeRewardBuffer` holds the
  episode's transitions and writes them to the replay buffer once the episode ends.
* **Truncated-normal exploration** around the actor's output, its sigma decaying per episode after
  the warm-up (:class:`DecayingTruncatedNormalNoise`, used by :meth:`AMCDDPG._sample_action`).
  AMC's fixed decay (0.95 per episode) leaves sigma ~0 after 100 exploitation episodes, so the
  rest of a longer search re-evaluates one strategy; by default the decay is instead tied to the
  episode budget (:func:`budget_noise_decay`): sigma reaches ``noise_final`` at the last episode.
* **Separate learning rates** for actor (1e-4) and critic (1e-3) (:class:`AMCDDPG`).
* **Warm-up** of uniform random actions for a number of *episodes* (SB3 counts steps); with
  relative actions a fresh agent's first episode plays action 0 throughout: with the env's anchor,
  the anchor rule (uniform or global magnitude pruning) at the target as measured
  (:meth:`AMCDDPG._uniform_episode`). With ``AgentConfig.warmup_mode="strategies"`` the warm-up
  instead plays whole strategies drawn as EagleEye draws them (random per-unit propensities
  projected onto the target, :meth:`envs.pruning_env.ChannelPruningEnv.strategy_action`): per-unit
  random actions through the action wall push the late units to the maximum ratio, so their
  transitions teach the critic little about strategies at the target.

With several environments (an SB3 ``VecEnv``, :mod:`agents.parallel`) a rollout is one episode of
every env, the envs' episodes end together (one network: every episode has its number of units),
each env's transitions get its own final reward, the noise counts the episodes of all envs, and the
warm-up draws its random actions episode by episode, so it evaluates the strategies a single env's
warm-up evaluates.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3 import DDPG
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise, VectorizedActionNoise
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.utils import update_learning_rate
from stable_baselines3.common.vec_env import VecEnv

from envs.features import FEATURES_VERSION, current_feature_names
from envs.pruning_env import PruningEnvConfig
from models.errors import CheckpointError

#: How the warm-up explores: unit by unit (AMC) or whole strategies at the target.
WARMUP_MODES = ("actions", "strategies")


@dataclass(frozen=True)
class AgentConfig:
    """DDPG hyperparameters; the defaults are AMC's.

    Attributes:
        hidden: widths of the hidden layers of actor and critic.
        actor_lr: actor learning rate.
        critic_lr: critic learning rate.
        tau: soft target-update rate.
        batch_size: transitions per gradient step.
        buffer_episodes: replay buffer size in episodes (x number of units = transitions).
        warmup_episodes: episodes of exploration before learning starts.
        warmup_mode: how the warm-up explores (:data:`WARMUP_MODES`): ``"actions"`` (AMC:
            uniform random actions, unit by unit) or ``"strategies"`` (whole strategies at the
            target, drawn as EagleEye's sampled search draws them; the first is uniform pruning
            by the cost estimate, or with relative actions the anchor rule).
        noise_sigma: exploration sigma at the end of the warm-up, in pruning-ratio units (action
            range 1).
        noise_decay: sigma multiplier per episode after the warm-up; None ties it to the budget
            (sigma falls geometrically to ``noise_final`` at episode ``episodes``), or AMC's 0.95
            when ``episodes`` is None.
        noise_final: sigma at the last episode of the budget (with ``noise_decay=None``).
        revisit_boost: after the warm-up, sigma is multiplied by this for every episode whose
            architecture the env had already evaluated (a cache hit: the episode bought no new
            information) and divided by it for every new one, never below the schedule and never
            above :data:`MAX_BOOSTED_SIGMA` (or ``noise_sigma``, if larger); 1 is off (AMC). A
            policy that has collapsed onto one architecture widens its search instead of
            re-evaluating it for the rest of the budget.
        episodes: the search's episode budget, warm-up included (None: unknown).
        gamma: discount (irrelevant with ``episode_reward``: every transition is terminal).
        episode_reward: credit the final reward to every transition of the episode (AMC).
        baseline_alpha: rate of the moving-average reward baseline subtracted at sampling (AMC).
        seed: random seed of the agent.
        device: device of the actor and critic networks (the pruned CNN has its own).
    """

    hidden: tuple[int, ...] = (300, 300)
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    tau: float = 0.01
    batch_size: int = 64
    buffer_episodes: int = 100
    warmup_episodes: int = 100
    warmup_mode: str = "actions"
    noise_sigma: float = 0.5
    noise_decay: float | None = None
    noise_final: float = 0.05
    revisit_boost: float = 1.0
    episodes: int | None = None
    gamma: float = 1.0
    episode_reward: bool = True
    baseline_alpha: float = 0.5
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.warmup_mode not in WARMUP_MODES:
            raise ValueError(
                f"unknown warm-up mode '{self.warmup_mode}'; choose {', '.join(WARMUP_MODES)}"
            )
        if self.episodes is not None and self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.revisit_boost < 1:
            raise ValueError(f"revisit_boost must be >= 1 (1: off), got {self.revisit_boost}")
        if not 0 < self.noise_final <= self.noise_sigma:
            raise ValueError(
                f"noise_final must be in (0, noise_sigma={self.noise_sigma}], "
                f"got {self.noise_final}"
            )

    def with_sigma(self, sigma: float) -> AgentConfig:
        """This configuration exploring with ``sigma`` after the warm-up; the final sigma is
        kept unless it would exceed ``sigma``."""
        return replace(self, noise_sigma=sigma, noise_final=min(self.noise_final, sigma))

    @property
    def decay(self) -> float:
        """The sigma multiplier per exploitation episode this configuration uses."""
        if self.noise_decay is not None:
            return self.noise_decay
        if self.episodes is None:
            return AMC_NOISE_DECAY
        return budget_noise_decay(
            self.noise_sigma, self.noise_final, self.episodes - self.warmup_episodes
        )


AMC_NOISE_DECAY = 0.95
#: The largest sigma (pruning-ratio units) a revisit boost raises exploration to: AMC's initial
#: sigma, half the action range.
MAX_BOOSTED_SIGMA = 0.5


def budget_noise_decay(sigma: float, final: float, exploit_episodes: int) -> float:
    """Per-episode decay taking sigma from ``sigma`` to ``final`` over ``exploit_episodes``.

    ``sigma * decay ** exploit_episodes == final``; 1.0 (no decay) when there is no episode left
    after the warm-up.
    """
    if exploit_episodes < 1:
        return 1.0
    return (final / sigma) ** (1.0 / exploit_episodes)


class EpisodeRewardBuffer(ReplayBuffer):
    """Replay buffer that credits an episode's final reward to all of its transitions (AMC).

    Transitions are held until the episode ends, then written with the final reward and
    ``done=True``. With several envs (``n_envs``) their episodes must end together (equal lengths),
    and each env's transitions get that env's final reward. :meth:`sample` subtracts a moving
    average of sampled rewards (AMC's baseline) from the rewards it returns.
    """

    def __init__(self, *args: Any, baseline_alpha: float = 0.5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.baseline_alpha = baseline_alpha
        self.baseline: float | None = None
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]] = []

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        self._pending.append((np.array(obs), np.array(next_obs), np.array(action), infos))
        done = np.asarray(done).reshape(-1)
        if not done.any():
            return
        if not done.all():
            raise ValueError(
                "EpisodeRewardBuffer needs the episodes of all envs to end together (equal "
                f"lengths); these ended: {done.tolist()}"
            )
        final = np.asarray(reward, dtype=np.float32).reshape(self.n_envs)
        for o, next_o, a, info in self._pending:
            super().add(o, next_o, a, final, np.ones(self.n_envs, dtype=np.float32), info)
        self._pending = []

    def sample(self, batch_size: int, env: Any = None) -> ReplayBufferSamples:
        samples = super().sample(batch_size, env)
        batch_mean = float(samples.rewards.mean())
        if self.baseline is None:
            self.baseline = batch_mean
        else:
            self.baseline += self.baseline_alpha * (batch_mean - self.baseline)
        return samples._replace(rewards=samples.rewards - self.baseline)


class DecayingTruncatedNormalNoise(ActionNoise):
    """AMC's exploration: truncated normal around the actor output, sigma decaying per episode.

    ``sigma_t = sigma * decay ** max(0, episode - warmup_episodes) * boost``; sigma is given in
    pruning-ratio units (AMC's action range is 1) and doubled for SB3's [-1, 1] actions. ``boost``
    is 1 unless ``revisit_boost`` > 1: then :meth:`observe` multiplies it by ``revisit_boost``
    after each exploitation episode that re-visited an evaluated architecture and divides it by
    ``revisit_boost`` (not below 1) after each new one; the boosted sigma is capped at
    :data:`MAX_BOOSTED_SIGMA` (or ``sigma``, if larger).
    """

    def __init__(
        self,
        sigma: float,
        decay: float,
        warmup_episodes: int,
        seed: int | None = None,
        revisit_boost: float = 1.0,
    ) -> None:
        super().__init__()
        self.sigma, self.decay, self.warmup_episodes = sigma, decay, warmup_episodes
        self.revisit_boost, self.boost = revisit_boost, 1.0
        self.episode = 0
        self.rng = np.random.default_rng(seed)

    @property
    def scheduled_sigma(self) -> float:
        """Sigma of the current episode by the schedule alone, in pruning-ratio units."""
        return self.sigma * self.decay ** max(0, self.episode - self.warmup_episodes)

    @property
    def current_sigma(self) -> float:
        """Sigma of the current episode, in [-1, 1] action units."""
        boost = getattr(self, "boost", 1.0)  # noises pickled before the boost existed: 1
        return 2.0 * self.scheduled_sigma * boost

    def observe(self, revisited: bool) -> None:
        """The current episode ended; ``revisited``: its architecture had been evaluated before.

        Moves the boost (see the class docstring) after exploitation episodes; a no-op with
        ``revisit_boost`` 1 and during the warm-up.
        """
        factor = getattr(self, "revisit_boost", 1.0)
        if factor == 1.0 or self.episode < self.warmup_episodes:
            return
        if revisited:  # the schedule only falls: capped now, the boosted sigma stays capped
            cap = max(MAX_BOOSTED_SIGMA, self.sigma) / self.scheduled_sigma
            self.boost = max(min(self.boost * factor, cap), 1.0)
        else:
            self.boost = max(self.boost / factor, 1.0)

    def sample_around(self, mean: np.ndarray) -> np.ndarray:
        """A sample of the truncated normal on [-1, 1] centred at ``mean``."""
        sigma = max(self.current_sigma, 1e-6)
        mean = np.clip(mean, -1.0, 1.0)
        a, b = (-1.0 - mean) / sigma, (1.0 - mean) / sigma
        from scipy.stats import truncnorm  # here: scipy.stats takes ~0.7 s to import

        return truncnorm.rvs(a, b, loc=mean, scale=sigma, random_state=self.rng).astype(np.float32)

    def __call__(self) -> np.ndarray:
        return self.rng.normal(0.0, self.current_sigma, size=1).astype(np.float32)

    def reset(self) -> None:
        self.episode += 1


class SharedNoise(VectorizedActionNoise):
    """One exploration noise for all envs, counting the episodes of all of them.

    SB3's :class:`VectorizedActionNoise` copies the noise per env: each copy would count only its
    env's episodes (sigma decaying N times slower) and draw the same numbers as the others.
    """

    def __init__(self, noise: ActionNoise, n_envs: int) -> None:
        super().__init__(noise, n_envs)
        self._noises = [noise] * n_envs  # not through the setter: it resets (counts) each one

    def reset(self, indices: Any = None) -> None:
        """One episode per index ended (SB3 passes none once, when learning starts)."""
        for _ in [0] if indices is None else indices:
            self.base_noise.reset()


def unshared(noise: ActionNoise | None) -> ActionNoise | None:
    """The one noise behind a :class:`SharedNoise` (any other noise, or None, as it is)."""
    return noise.base_noise if isinstance(noise, SharedNoise) else noise


class AMCDDPG(DDPG):
    """SB3 DDPG with AMC's separate actor/critic learning rates and truncated-normal exploration.

    ``observation_features`` and ``features_version`` (saved with the agent) name the observation
    it was trained on (:mod:`envs.features`), ``action_mode`` how its actions became pruning
    ratios (:mod:`envs.actions`; agents saved before it existed are ``"absolute"``);
    :func:`load_agent` refuses an env that observes or acts otherwise.
    """

    def __init__(self, *args: Any, actor_lr: float = 1e-4, critic_lr: float = 1e-3, **kwargs: Any):
        self.actor_lr, self.critic_lr = actor_lr, critic_lr
        self.observation_features: list[str] | None = None
        self.features_version: int | None = None
        self.action_mode: str = "absolute"
        self._warmup_actions: list[np.ndarray] = []
        self.uniform_first_steps = 0  # see _uniform_episode
        self.warmup_mode = "actions"  # AgentConfig.warmup_mode
        self._plan_rng: np.random.Generator | None = None  # see _strategy_action
        super().__init__(*args, learning_rate=critic_lr, **kwargs)

    def _excluded_save_params(self) -> list[str]:
        return [
            *super()._excluded_save_params(),
            "_warmup_actions",
            "uniform_first_steps",
            "_plan_rng",
        ]

    def _update_learning_rate(self, optimizers: Any) -> None:
        update_learning_rate(self.actor.optimizer, self.actor_lr)
        update_learning_rate(self.critic.optimizer, self.critic_lr)
        self.logger.record("train/actor_learning_rate", self.actor_lr)
        self.logger.record("train/critic_learning_rate", self.critic_lr)

    def _sample_action(
        self, learning_starts: int, action_noise: ActionNoise | None = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        noise = unshared(action_noise)
        if n_envs == 1 and self._uniform_episode():
            scaled = np.zeros((1, *self.action_space.shape), dtype=np.float32)
            return self.policy.unscale_action(scaled), scaled
        if self.num_timesteps < learning_starts and self.warmup_mode == "strategies":
            return self._strategy_action(n_envs)
        if self.num_timesteps < learning_starts and n_envs > 1:
            return self._warmup_action(noise, n_envs)
        if self.num_timesteps < learning_starts or not isinstance(
            noise, DecayingTruncatedNormalNoise
        ):
            return super()._sample_action(learning_starts, action_noise, n_envs)
        action, _ = self.predict(self._last_obs, deterministic=True)
        scaled = self.policy.scale_action(action)
        scaled = np.stack([noise.sample_around(row) for row in scaled])
        return self.policy.unscale_action(scaled), scaled

    def _warmup_action(
        self, noise: ActionNoise | None, n_envs: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Random actions of ``n_envs`` envs, drawn a whole episode per env at a round's start.

        A single env draws one episode's actions after the other; drawing them in that order
        (not step by step across envs) gives the envs the episodes a single env would have had.
        A rollout is one episode per env (:func:`make_agent`), ``train_freq`` steps long.
        """
        steps = self.train_freq.frequency
        if (self.num_timesteps // n_envs) % steps == 0:
            # the first env's first episode is uniform pruning, drawing nothing (as one env's)
            uniform = self.num_timesteps == 0 and self._uniform_episode()
            shape = self.action_space.shape
            episodes = [[np.zeros(shape, dtype=np.float32)] * steps] if uniform else []
            episodes += [
                [self._random_action(noise) for _ in range(steps)]
                for _ in range(n_envs - len(episodes))
            ]
            self._warmup_actions = [np.stack(step) for step in zip(*episodes, strict=True)]
        scaled = self._warmup_actions.pop(0)
        return self.policy.unscale_action(scaled), scaled

    def _strategy_action(self, n_envs: int) -> tuple[np.ndarray, np.ndarray]:
        """Warm-up actions that play whole strategies (``warmup_mode="strategies"``).

        Each env draws a strategy at its episode's first unit from the seed it is given
        (:meth:`envs.pruning_env.ChannelPruningEnv.strategy_action`) and plays it to the end; the
        seeds come from a generator seeded by the agent's seed and the step count at its first
        use, so the same seed gives the same search and a resumed search draws new strategies,
        not the first ones again. The first env's first episode plays the seed
        None: with relative actions the anchor rule, else uniform pruning by the cost estimate.
        """
        if self._plan_rng is None:
            self._plan_rng = np.random.default_rng([self.seed or 0, self.num_timesteps])
        first = self.num_timesteps < self.uniform_first_steps * n_envs
        seeds = [int(s) for s in self._plan_rng.integers(0, 2**31, n_envs)]
        scaled = np.array(
            [
                self.env.env_method(
                    "strategy_action", None if first and i == 0 else seed, indices=[i]
                )
                for i, seed in enumerate(seeds)
            ],
            dtype=np.float32,
        ).reshape(n_envs, *self.action_space.shape)
        return self.policy.unscale_action(scaled), scaled

    def _uniform_episode(self) -> bool:
        """Whether this step belongs to the first episode of a fresh agent with relative actions.

        That episode plays action 0 at every step (:mod:`envs.actions`): with the env's anchor
        (``PruningEnvConfig.anchor``, the default) exactly the anchor rule
        (``PruningEnvConfig.anchor_rule``: uniform or global magnitude pruning, bisected on the
        measured cost); without it, uniform pruning by the env's cost estimate, which can differ
        from the rule where the estimate errs. It is a candidate of the
        search and a transition in the replay buffer, as the first candidate of the sampled and
        TPE searches is (:func:`envs.baselines.sampled_search`).
        :func:`make_agent` sets ``uniform_first_steps`` to the episode's length; loaded agents
        (not saved with it) and resumed searches (their step count goes on) start as they are.
        """
        return self.action_mode == "relative" and self.num_timesteps < self.uniform_first_steps

    def _store_transition(
        self,
        replay_buffer: ReplayBuffer,
        buffer_action: np.ndarray,
        new_obs: Any,
        reward: np.ndarray,
        dones: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """SB3's, after telling the exploration noise which ended episodes re-visited an
        architecture (``info["cached"]``; see :class:`DecayingTruncatedNormalNoise`)."""
        noise = unshared(self.action_noise)
        if isinstance(noise, DecayingTruncatedNormalNoise):
            for done, info in zip(dones, infos, strict=True):
                if done and "cached" in info:
                    noise.observe(bool(info["cached"]))
        super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)

    def _random_action(self, noise: ActionNoise | None) -> np.ndarray:
        """One warm-up action as SB3 draws it: uniform, plus the noise, clipped (scaled units)."""
        scaled = self.policy.scale_action(self.action_space.sample())
        return scaled if noise is None else np.clip(scaled + noise(), -1, 1)


def make_agent(
    env: gym.Env, config: AgentConfig = AgentConfig(), *, num_units: int, verbose: int = 0
) -> AMCDDPG:
    """A fresh DDPG agent with AMC's defaults for an env whose episodes have ``num_units`` steps.

    ``env`` may be an SB3 ``VecEnv`` of N copies of one env (:mod:`agents.parallel`): a rollout is
    then one episode of each (``num_units`` steps), the agent trains as many gradient steps as it
    collected transitions, and the warm-up is rounded up to whole rounds of N episodes.
    """
    n_envs = env.num_envs if isinstance(env, VecEnv) else 1
    noise: ActionNoise = DecayingTruncatedNormalNoise(
        config.noise_sigma,
        config.decay,
        config.warmup_episodes,
        seed=config.seed,
        revisit_boost=config.revisit_boost,
    )
    if n_envs > 1:
        noise = SharedNoise(noise, n_envs)
    warmup_rounds = math.ceil(config.warmup_episodes / n_envs)
    buffer_kwargs: dict[str, Any] = {}
    buffer_class: type[ReplayBuffer] = ReplayBuffer
    if config.episode_reward:
        buffer_class, buffer_kwargs = EpisodeRewardBuffer, {"baseline_alpha": config.baseline_alpha}
    agent = AMCDDPG(
        "MlpPolicy",
        env,
        actor_lr=config.actor_lr,
        critic_lr=config.critic_lr,
        buffer_size=max(config.buffer_episodes * num_units, config.batch_size),
        learning_starts=warmup_rounds * n_envs * num_units,
        batch_size=config.batch_size,
        tau=config.tau,
        gamma=config.gamma,
        train_freq=(1, "episode") if n_envs == 1 else (num_units, "step"),
        gradient_steps=-1,
        action_noise=noise,
        replay_buffer_class=buffer_class,
        replay_buffer_kwargs=buffer_kwargs,
        policy_kwargs={"net_arch": {"pi": list(config.hidden), "qf": list(config.hidden)}},
        seed=config.seed,
        device=config.device,
        verbose=verbose,
    )
    agent.uniform_first_steps = num_units
    agent.warmup_mode = config.warmup_mode
    agent.observation_features = list(feature_names(env) or ()) or None
    agent.features_version = FEATURES_VERSION
    agent.action_mode = env_action_mode(env) or "absolute"
    return agent


def load_agent(path: str | Path, env: gym.Env | None = None, device: str = "cpu") -> AMCDDPG:
    """Load a saved agent, with a one-line :class:`CheckpointError` for bad or mismatched files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no agent file at {path}; pass the agent.zip of a finished run")
    try:
        agent = AMCDDPG.load(path, env=None, device=device)
    except (zipfile.BadZipFile, KeyError, ValueError, RuntimeError, EOFError) as exc:
        raise CheckpointError(
            f"{path} is not a readable rlprune agent ({type(exc).__name__}); retrain it"
        ) from None
    trained = getattr(agent, "observation_features", None)
    if trained is not None:  # agents saved before a feature was renamed name it the old way
        agent.observation_features = current_feature_names(trained)
    if env is not None:
        check_observation(agent, env, path)
        if agent.observation_space.shape != env.observation_space.shape:
            raise CheckpointError(
                f"{path} expects observations of shape {agent.observation_space.shape} but this "
                f"rlprune env gives {env.observation_space.shape}; the agent was trained with an "
                "incompatible version, retrain it"
            )
        n_envs = env.num_envs if isinstance(env, VecEnv) else 1
        if n_envs == agent.n_envs:
            agent.set_env(env)
        else:  # trained with another --envs: SB3 re-sizes its buffers only when loading with env
            agent = _load_for_envs(path, env, n_envs, agent, device)
    return agent


def _load_for_envs(path: Path, env: gym.Env, n_envs: int, loaded: AMCDDPG, device: str) -> AMCDDPG:
    """The agent at ``path`` (``loaded`` as read without an env) for ``env`` of ``n_envs`` envs:
    its exploration noise shared among them (:class:`SharedNoise`), or one env's noise again,
    and trained after each round of episodes as :func:`make_agent` sets it up for ``n_envs``."""
    agent = AMCDDPG.load(path, env=env, device=device)
    steps = env.get_attr("num_units")[0] if n_envs > 1 else 1
    agent.train_freq = (steps, "step") if n_envs > 1 else (1, "episode")
    agent._convert_train_freq()
    agent.observation_features = loaded.observation_features
    base = unshared(loaded.action_noise)
    agent.action_noise = SharedNoise(base, n_envs) if n_envs > 1 and base is not None else base
    return agent


def saved_features(path: str | Path) -> list[str] | None:
    """The observation features the agent saved at ``path`` was trained on (None: version 1)."""
    return getattr(load_agent(path), "observation_features", None)


def agent_env_settings(
    path: str | Path, features: str | None, asked_actions: str
) -> tuple[str | None, str]:
    """How to build the env the agent at ``path`` plays in, from one load of the file: the
    observation features it was trained on (unless ``features`` is given) and its own action mode.

    Raises:
        CheckpointError: ``asked_actions`` (the ``--actions`` given) is not the default and
            differs from the agent's mode.
    """
    agent = load_agent(path)
    if features is None:
        features = ",".join(agent.observation_features) if agent.observation_features else None
    mode = agent.action_mode
    if asked_actions != mode and asked_actions != PruningEnvConfig.actions:
        raise CheckpointError(
            f"{path} was trained with --actions {mode}; drop --actions {asked_actions} (an agent "
            "is played the way it was trained)"
        )
    return features, mode


def check_observation(agent: AMCDDPG, env: gym.Env, path: str | Path) -> None:
    """Raise :class:`CheckpointError` unless ``agent`` was trained on the features ``env`` gives.

    Agents saved before the observation was versioned (version 1) have no feature names.
    """
    mode, trained_mode = env_action_mode(env), getattr(agent, "action_mode", "absolute")
    if mode is not None and mode != trained_mode:
        raise CheckpointError(
            f"{path} was trained with --actions {trained_mode} but the env maps actions "
            f"'{mode}'; pass --actions {trained_mode}"
        )
    names = feature_names(env)
    trained = getattr(agent, "observation_features", None)
    if names is None:
        return
    if trained is None:
        raise CheckpointError(
            f"{path} was trained on rlprune's version-1 observation; this rlprune observes "
            f"version {FEATURES_VERSION} (incompatible version): retrain it"
        )
    if list(trained) != list(names):
        raise CheckpointError(
            f"{path} was trained on the observation features {','.join(trained)} but the env "
            f"observes {','.join(names)}; pass --features {','.join(trained)} or retrain it"
        )


def feature_names(env: gym.Env | VecEnv) -> list[str] | None:
    """The observation features of an env (or of a ``VecEnv``'s first env), if it names them."""
    if isinstance(env, VecEnv):
        return env.get_attr("feature_names")[0] if env.has_attr("feature_names") else None
    return getattr(env, "feature_names", None)


def env_action_mode(env: gym.Env | VecEnv) -> str | None:
    """How an env (or a ``VecEnv``'s first env) maps actions (:mod:`envs.actions`), if it says."""
    if isinstance(env, VecEnv):
        config = env.get_attr("config")[0] if env.has_attr("config") else None
    else:
        config = getattr(env, "config", None)
    return getattr(config, "actions", None)


def agent_config_dict(config: AgentConfig) -> dict[str, Any]:
    """Hyperparameters as a flat dict of scalars (for TensorBoard's HParams and config.json)."""
    values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}
    values["noise_decay"] = config.decay  # the decay in use, also when tied to the budget
    return {k: ("none" if v is None else v) for k, v in values.items()}
