"""Reuse of a trained agent on architectures it never saw, and multi-network training."""

import numpy as np
import pytest
import torch
from fakes import MacsLatency

from agents.ddpg import AgentConfig, make_agent
from agents.search import run_search
from agents.transfer import MultiModelEnv, prepare_warm_start, rollout, zero_shot
from envs.pruning_env import ChannelPruningEnv, PruningEnvConfig
from models.training import TrainConfig, get_base_model

TARGET = 0.5


@pytest.fixture(scope="module")
def make_env(digits_splits, tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("cache"))

    def build(name: str, actions: str = "relative") -> ChannelPruningEnv:
        model, _ = get_base_model(
            name, digits_splits, config=TrainConfig(epochs=1, progress=False), cache_dir=cache
        )
        cfg = PruningEnvConfig(cost="macs", target=TARGET, bn_batches=2, actions=actions)
        latency = MacsLatency(model, digits_splits.input_shape)
        return ChannelPruningEnv(
            model,
            digits_splits.train,
            digits_splits.reward_val,
            cfg,
            model_name=name,
            latency=latency,
        )

    return build


@pytest.fixture(scope="module")
def trained_agent(make_env, tmp_path_factory):
    env = make_env("vgg_small")
    agent = make_agent(env, AgentConfig(warmup_episodes=3, batch_size=8), num_units=env.num_units)
    run_search(agent, tmp_path_factory.mktemp("run"), 6, max_units=env.num_units, progress=False)
    return agent


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2_small"])
def test_agent_proposes_valid_strategies_for_unseen_families(trained_agent, make_env, name):
    env = make_env(name)
    info = rollout(trained_agent, env)
    assert set(info["strategy"]) == {u.name for u in env.units}
    assert info["relative_macs"] <= TARGET * 1.05
    pruned = env.prune(info["strategy"])
    out = pruned(torch.zeros(2, *env.input_shape))
    assert out.shape == (2, 10)
    assert rollout(trained_agent, env)["strategy"] == info["strategy"]  # deterministic policy


def test_warm_start_search_runs_on_the_new_network(trained_agent, make_env, tmp_path):
    env = make_env("resnet20")
    trained_agent.set_env(env)
    prepare_warm_start(trained_agent)
    result = run_search(trained_agent, tmp_path, 3, max_units=env.num_units, progress=False)
    assert result.episodes == 3
    assert result.best["relative_macs"] <= TARGET * 1.05
    assert (tmp_path / "best_strategy.json").is_file()


def test_multi_model_env_alternates_networks(make_env, tmp_path):
    envs = [make_env("vgg_small"), make_env("resnet20")]
    multi = MultiModelEnv(envs)
    agent = make_agent(multi, AgentConfig(warmup_episodes=2, batch_size=8), num_units=12)
    result = run_search(agent, tmp_path, 4, max_units=12, progress=False, per_model=True)
    assert set(result.bests) == {"vgg_small", "resnet20"}
    assert (tmp_path / "best_strategy_vgg_small.json").is_file()
    assert (tmp_path / "best_strategy_resnet20.json").is_file()


def test_zero_shot_fits_the_policy_allocation_to_the_budget(trained_agent, make_env):
    env = make_env("resnet20")
    policy = rollout(trained_agent, env)
    zero = zero_shot(trained_agent, env)
    records = zero["candidates"]
    assert records["policy"]["strategy"] == policy["strategy"]
    assert zero["strategy"] == records[zero["zero_shot"]]["strategy"]
    assert zero["reward"] == max(r["reward"] for r in records.values())
    projected = records["projected"]["strategy"]
    # the projection spends the budget: its MACs (the cost here) sit just under the target,
    # at least as close to it as the policy's own strategy
    assert records["projected"]["relative_macs"] <= TARGET * 1.05
    assert TARGET - records["projected"]["relative_macs"] <= max(
        TARGET - policy["relative_macs"], 0.02
    )
    # and keeps the policy's ranking of the units: a unit the policy cut more is cut as much,
    # up to the rounding of each ratio to a whole number of channels
    width = {u.name: u.out_channels for u in env.units}
    for a in width:
        for b in width:
            if policy["strategy"][a] > policy["strategy"][b]:
                assert projected[a] >= projected[b] - 1 / width[a] - 1 / width[b], (a, b)


def test_zero_shot_also_tries_the_policy_shrunk_towards_the_anchor(trained_agent, make_env):
    env = make_env("resnet20")  # relative actions (the default): action 0 is the anchor rule
    zero = zero_shot(trained_agent, env, scales=(0.5, 0.0))
    records = zero["candidates"]
    assert list(records) == ["policy", "projected", "policy x0.5", "policy x0"]
    assert zero["reward"] == max(r["reward"] for r in records.values())
    # scale 0 is the anchor rule whatever the policy says: the env played with zero actions
    obs, _ = env.reset(seed=0)
    done = False
    while not done:
        obs, _, terminated, truncated, info = env.step(np.zeros(1, dtype=np.float32))
        done = terminated or truncated
    assert records["policy x0"]["strategy"] == info["strategy"]
    assert records["policy x0.5"]["strategy"] == rollout(trained_agent, env, scale=0.5)["strategy"]
    assert records["policy x0.5"]["strategy"] != records["policy"]["strategy"]
    # absolute actions have no rule at 0: no shrunken candidates
    absolute = make_env("resnet20", actions="absolute")
    assert list(zero_shot(trained_agent, absolute)["candidates"]) == ["policy", "projected"]
