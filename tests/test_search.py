"""A real DDPG search of a few episodes: TensorBoard tags, checkpoints, reload, resume."""

import copy
import csv
import json
from dataclasses import replace

import numpy as np
import pytest
from fakes import MacsLatency
from stable_baselines3.common.vec_env import DummyVecEnv
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.ddpg import AgentConfig, SharedNoise, load_agent, make_agent
from agents.search import read_search_state, resume, run_search
from envs.baselines import project_to_target
from envs.pruning_env import ChannelPruningEnv, PruningEnvConfig
from models.errors import CheckpointError


@pytest.fixture(scope="module")
def env(digits_splits, digits_vgg_small_2ep, tmp_path_factory):
    model = digits_vgg_small_2ep
    cfg = PruningEnvConfig(cost="macs", target=0.5, bn_batches=2)
    latency = MacsLatency(model, digits_splits.input_shape)
    return ChannelPruningEnv(
        model, digits_splits.train, digits_splits.reward_val, cfg, latency=latency
    )


def _tags(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    return set(tags["scalars"]) | set(tags["images"]) | set(tags["tensors"])


def test_search_logs_checkpoints_and_resumes(env, tmp_path):
    config = AgentConfig(warmup_episodes=3, batch_size=8, seed=0)
    agent = make_agent(env, config, num_units=env.num_units)
    result = run_search(
        agent,
        tmp_path,
        6,
        max_units=env.num_units,
        hparams={"target": 0.5},
        progress=False,
        figure_every=3,
    )
    assert result.episodes == 6 and not result.interrupted
    best = json.loads((tmp_path / "best_strategy.json").read_text())
    assert set(best["strategy"]) == {u.name for u in env.units}
    assert best["relative_macs"] <= 0.5 * 1.05
    rows = (tmp_path / "episodes.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 6

    tags = _tags(tmp_path)
    for tag in (
        "episode/reward",
        "episode/accuracy",
        "episode/relative_latency",
        "episode/relative_macs",
        "episode/best_reward",
        f"strategy/{env.units[0].name}",
        "best/strategy",
        "policy/heatmap",
        "train/actor_loss",
        "train/critic_loss",
        "rollout/ep_rew_mean",
    ):
        assert tag in tags, tag
    assert any(t.startswith("best/strategy_table") for t in tags)

    reloaded = load_agent(tmp_path / "agent.zip", env)
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(
        reloaded.predict(obs, deterministic=True)[0], agent.predict(obs, deterministic=True)[0]
    )
    assert reloaded.actor_lr == config.actor_lr and reloaded.critic_lr == config.critic_lr

    state = read_search_state(tmp_path)
    assert state["episode"] == 6
    reloaded.load_replay_buffer(tmp_path / "replay_buffer.pkl")
    more = run_search(
        reloaded, tmp_path, 2, max_units=env.num_units, resume_state=state, progress=False
    )
    assert more.episodes == 2 and read_search_state(tmp_path)["episode"] == 8
    assert len((tmp_path / "episodes.csv").read_text().strip().splitlines()) == 1 + 8


def test_same_seed_gives_the_same_search(env, tmp_path):
    bests = []
    for i in range(2):
        agent = make_agent(env, AgentConfig(warmup_episodes=2, batch_size=8, seed=3), num_units=6)
        bests.append(run_search(agent, tmp_path / str(i), 4, max_units=6, progress=False).best)
    assert bests[0]["strategy"] == bests[1]["strategy"]


def test_bad_agent_files_give_clear_errors(env, tmp_path):
    with pytest.raises(CheckpointError, match="no agent file"):
        load_agent(tmp_path / "missing.zip", env)
    bad = tmp_path / "agent.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a readable rlprune agent"):
        load_agent(bad, env)


class InterruptAfter:
    """Wraps an env's step to raise KeyboardInterrupt (Ctrl-C) after ``steps`` steps."""

    def __init__(self, env, steps: int) -> None:
        self.env, self.steps, self.original = env, steps, env.step

    def __enter__(self):
        def step(action):
            self.steps -= 1
            if self.steps < 0:
                raise KeyboardInterrupt
            return self.original(action)

        self.env.step = step
        return self

    def __exit__(self, *exc):
        self.env.step = self.original


def test_ctrl_c_keeps_agent_buffer_and_best_strategy(env, tmp_path):
    agent = make_agent(env, AgentConfig(warmup_episodes=2, batch_size=8), num_units=6)
    with InterruptAfter(env, steps=3 * env.num_units + 2):
        result = run_search(agent, tmp_path, 10, max_units=env.num_units, progress=False)
    assert result.interrupted and result.episodes == 3
    for name in ("agent.zip", "replay_buffer.pkl", "best_strategy.json", "search_state.json"):
        assert (tmp_path / name).is_file(), name
    assert read_search_state(tmp_path)["episode"] == 3
    # the 2 steps of the unfinished 4th episode are dropped, not credited with a later reward
    agent, state = resume(tmp_path, env)
    assert state["episode"] == 3 and agent.num_timesteps == 3 * env.num_units
    assert agent.replay_buffer.pos == 3 * env.num_units and not agent.replay_buffer._pending


def test_an_agent_trained_on_two_envs_plays_in_one_and_back(env, tmp_path):
    """An agent of a two-env search (train_agent --envs 2) is reused in one env (apply_agent,
    transfer_study) and vice versa: same policy, buffers and noise sized for the new count."""
    two = DummyVecEnv([lambda: env, lambda: copy.deepcopy(env)])
    agent = make_agent(two, AgentConfig(warmup_episodes=2, batch_size=8, seed=0), num_units=6)
    agent.save(tmp_path / "two.zip")
    one = load_agent(tmp_path / "two.zip", env)
    assert one.n_envs == 1 and one.replay_buffer.n_envs == 1
    assert not isinstance(one.action_noise, SharedNoise)
    assert one.action_noise is not None and one.action_noise().shape == (1,)
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(
        one.predict(obs, deterministic=True)[0], agent.predict(obs[None], deterministic=True)[0][0]
    )
    fresh = make_agent(env, AgentConfig(warmup_episodes=2, batch_size=8, seed=0), num_units=6)
    assert one.train_freq == fresh.train_freq  # after each episode, whatever the network's length
    one.learning_starts = 0  # as a warm start (agents.transfer.prepare_warm_start) sets it
    one.learn(total_timesteps=2 * env.num_units)  # trains after each episode of the one env
    assert one.replay_buffer.size() == 2 * env.num_units and one._n_updates > 0
    one.save(tmp_path / "one.zip")
    again = load_agent(tmp_path / "one.zip", two)
    assert again.n_envs == 2 and isinstance(again.action_noise, SharedNoise)
    assert again.train_freq.frequency == env.num_units  # a round of two whole episodes
    assert again.observation_features == agent.observation_features


@pytest.mark.parametrize("actions", ["relative", "absolute"])
def test_strategy_warmup_plays_whole_strategies_drawn_as_eagleeye_draws_them(
    actions, digits_splits, digits_vgg_small_2ep, tmp_path, monkeypatch
):
    cfg = PruningEnvConfig(cost="macs", target=0.5, bn_batches=2, actions=actions)
    latency = MacsLatency(digits_vgg_small_2ep, digits_splits.input_shape)
    env = ChannelPruningEnv(
        digits_vgg_small_2ep, digits_splits.train, digits_splits.reward_val, cfg, latency=latency
    )
    seeds, strategies = [], []
    action, evaluate = env.strategy_action, env.evaluate_strategy

    def spy_action(seed):
        seeds.append(seed)
        return action(seed)

    def spy_evaluate(strategy, **kwargs):
        strategies.append(dict(strategy))
        return evaluate(strategy, **kwargs)

    monkeypatch.setattr(env, "strategy_action", spy_action)
    monkeypatch.setattr(env, "evaluate_strategy", spy_evaluate)
    config = AgentConfig(warmup_episodes=4, warmup_mode="strategies", batch_size=8, seed=0)
    agent = make_agent(env, config, num_units=6)
    result = run_search(agent, tmp_path, 6, max_units=6, progress=False)
    assert result.episodes == 6
    episodes = strategies[-6:]  # before them, a relative env measured its anchor rule
    # Relative actions: the first episode plays action 0 (the anchor rule) without a strategy.
    played = 4 if actions == "absolute" else 3
    assert len(seeds) == played * 6  # every warm-up step, none after the warm-up
    firsts = seeds[::6]
    if actions == "absolute":
        assert firsts[0] is None  # uniform pruning by the estimate first, as sampled_search
    drawn = [s for s in firsts if s is not None]
    assert len(set(drawn)) == 3  # a fresh strategy every episode
    for seed, strategy in zip(firsts, episodes[4 - played : 4], strict=True):
        p = np.ones(6) if seed is None else 1.0 - np.random.default_rng(seed).random(6)
        expected = project_to_target(env, p, env.estimate_target())  # the cost it aims at
        assert strategy == pytest.approx(expected, abs=1e-6)
    env.reset()
    if actions == "relative":  # seed None with relative actions: action 0, the anchor rule
        assert env.strategy_action(None) == 0.0


def test_revisits_widen_the_logged_exploration_sigma(digits_splits, digits_vgg_small_2ep, tmp_path):
    """With a revisit boost the sigma each episode is played with (``episode/noise_sigma``)
    follows the episodes' cache hits (``episode/revisit``): x1.5 after a re-visited exploitation
    episode, /1.5 (not below 0.01) after a new one, recomputed here from ``episodes.csv``."""
    cfg = PruningEnvConfig(cost="macs", target=0.5, bn_batches=2, round_to=8)
    latency = MacsLatency(digits_vgg_small_2ep, digits_splits.input_shape)
    fresh = ChannelPruningEnv(  # its own result cache: the module's env has seen other searches
        digits_vgg_small_2ep, digits_splits.train, digits_splits.reward_val, cfg, latency=latency
    )
    config = AgentConfig(
        warmup_episodes=2, batch_size=8, seed=0, noise_sigma=0.01, noise_final=0.01
    )
    config = replace(config, noise_decay=1.0, revisit_boost=1.5)
    agent = make_agent(fresh, config, num_units=fresh.num_units)
    run_search(agent, tmp_path, 10, max_units=fresh.num_units, progress=False)
    with (tmp_path / "episodes.csv").open() as f:
        cached = [row["cached"] == "True" for row in csv.DictReader(f)]
    assert any(cached[2:]) and not all(cached[2:])  # both kinds of exploitation episode
    expected, boost = [], 1.0
    for episode, hit in enumerate(cached):
        expected.append(0.01 * boost)
        if episode >= 2:
            boost = boost * 1.5 if hit else max(boost / 1.5, 1.0)
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    acc.Reload()
    logged = [e.value for e in acc.Scalars("episode/noise_sigma")]
    np.testing.assert_allclose(logged, expected, rtol=1e-5)
    assert [e.value for e in acc.Scalars("episode/revisit")] == [float(c) for c in cached]
