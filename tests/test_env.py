"""The Gymnasium environment: contract, episode structure, budget, determinism, errors."""

import gymnasium
import numpy as np
import pytest
import torch
from fakes import MacsLatency
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from envs.baselines import uniform_for_target
from envs.features import NUM_FEATURES
from envs.latency import LatencyConfig
from envs.pruning_env import ChannelPruningEnv, PruningEnvConfig
from models.errors import BudgetError, RlpruneError
from models.training import TrainConfig, get_base_model


@pytest.fixture(scope="module")
def trained(mnist5k_splits, tmp_path_factory):
    model, _ = get_base_model(
        "vgg_small",
        mnist5k_splits,
        config=TrainConfig(epochs=1, progress=False),
        cache_dir=str(tmp_path_factory.mktemp("cache")),
    )
    return model


def _env(trained, splits, measured=False, **config):
    latency = None if measured else MacsLatency(trained, splits.input_shape)
    cfg = PruningEnvConfig(**{"latency": LatencyConfig(batch_size=8, repeats=5), **config})
    return ChannelPruningEnv(trained, splits.train, splits.reward_val, cfg, latency=latency)


def _episode(env, actions, seed=0):
    obs, _ = env.reset(seed=seed)
    observations, infos = [obs], []
    for step, action in enumerate(actions):
        obs, reward, terminated, truncated, info = env.step(np.array([action], dtype=np.float32))
        observations.append(obs)
        infos.append(info)
        assert not truncated
        assert terminated == (step == len(actions) - 1)
    return observations, reward, infos


def test_env_passes_gymnasium_and_sb3_checkers(trained, mnist5k_splits):
    env = _env(trained, mnist5k_splits)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env)
    assert env.observation_space.shape == (NUM_FEATURES,)


def test_episode_has_one_step_per_unit_and_reports_the_result(trained, mnist5k_splits):
    env = _env(trained, mnist5k_splits)
    obs, reward, infos = _episode(env, [0.0] * env.num_units)
    assert len(infos) == env.num_units == 6
    assert all(env.observation_space.contains(o) for o in obs)
    final = infos[-1]
    for key in ("accuracy", "latency_ms", "latency_ratio", "macs_ratio", "params_ratio"):
        assert np.isfinite(final[key])
    assert set(final["strategy"]) == {u.name for u in env.units}
    assert isinstance(reward, float) and reward == final["reward"]
    with pytest.raises(RlpruneError, match="reset"):
        env.step(np.zeros(1, dtype=np.float32))


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_budget_holds_whatever_the_agent_does(trained, mnist5k_splits, target):
    env = _env(trained, mnist5k_splits, cost="macs", target=target)
    rng = np.random.default_rng(0)
    for _ in range(5):
        _, _, infos = _episode(env, rng.uniform(-1, 1, env.num_units))
        assert infos[-1]["macs_ratio"] <= target * 1.05


def test_same_seed_same_episode_with_a_fixed_latency_source(trained, mnist5k_splits):
    actions = np.linspace(-1, 1, 6)
    runs = [_episode(_env(trained, mnist5k_splits), actions) for _ in range(2)]
    (obs_a, rew_a, info_a), (obs_b, rew_b, info_b) = runs
    np.testing.assert_array_equal(np.stack(obs_a), np.stack(obs_b))
    assert rew_a == rew_b and info_a[-1]["strategy"] == info_b[-1]["strategy"]


def test_measured_latency_episode_and_uniform_baseline(trained, mnist5k_splits):
    env = _env(trained, mnist5k_splits, measured=True, target=0.7)
    assert env.base_latency_ms > 0
    assert env.latency_estimate([1.0] * env.num_units) == pytest.approx(1.0)  # calibrated slope
    assert env.latency_estimate([0.5] * env.num_units) < 1.0
    _, _, infos = _episode(env, [-1.0] * env.num_units)  # the wall must prune anyway
    assert 0 < infos[-1]["latency_ratio"] < 10  # measured, so noisy: only sanity here
    assert any(i["ratio"] > 0 for i in infos)  # the wall pruned although the agent asked for none
    assert infos[-1]["macs_ratio"] < 1.0
    uniform = uniform_for_target(env, steps=4)
    assert len(set(uniform["strategy"].values())) == 1
    assert 0 < uniform["uniform_ratio"] <= env.config.max_ratio


def test_accuracy_drops_as_pruning_grows_and_original_is_untouched(trained, mnist5k_splits):
    env = _env(trained, mnist5k_splits, cost="macs", target=0.9)
    before = [p.clone() for p in trained.parameters()]
    light = env.evaluate_strategy({u.name: 0.1 for u in env.units})
    heavy = env.evaluate_strategy({u.name: 0.8 for u in env.units})
    assert light["accuracy"] > heavy["accuracy"]
    assert light["macs_ratio"] > heavy["macs_ratio"]
    assert all(torch.equal(a, b) for a, b in zip(before, trained.parameters(), strict=True))
    again = env.evaluate_strategy({u.name: 0.1 for u in env.units})
    assert again["cached"] and again["accuracy"] == light["accuracy"]


def test_impossible_targets_are_rejected_up_front(trained, mnist5k_splits):
    with pytest.raises(BudgetError, match="unreachable"):
        _env(trained, mnist5k_splits, cost="macs", target=0.01)
    with pytest.raises(BudgetError, match="fraction"):
        _env(trained, mnist5k_splits, cost="macs", target=1.2)
    with pytest.raises(RlpruneError, match="reward"):
        PruningEnvConfig(reward="nope")


def test_gymnasium_make_builds_the_registered_env(trained, mnist5k_splits):
    env = gymnasium.make(
        envs.ENV_ID,
        model=trained,
        train_set=mnist5k_splits.train,
        reward_set=mnist5k_splits.reward_val,
        config=PruningEnvConfig(cost="macs"),
        latency=MacsLatency(trained, mnist5k_splits.input_shape),
    )
    obs, _ = env.reset(seed=1)
    assert obs.shape == (NUM_FEATURES,)
