"""Whole-strategy searches: projection onto the target, EagleEye sampling and Optuna TPE."""

import math
import time

import numpy as np
import pytest
import torch
from fakes import CurveLatency, MacsLatency, record_episodes

from envs.baselines import (
    project_to_target,
    run_strategy,
    sampled_search,
    tpe_search,
    uniform_for_target,
)
from envs.pruning import count_cost
from envs.pruning_env import ChannelPruningEnv, PruningEnvConfig
from envs.rewards import TARGET_TOLERANCE


@pytest.fixture(scope="module")
def model(digits_vgg_small):
    return digits_vgg_small


def _env(model, splits, target=0.5):
    cfg = PruningEnvConfig(cost="macs", target=target, bn_batches=1)
    latency = MacsLatency(model, splits.input_shape)
    return ChannelPruningEnv(model, splits.train, splits.reward_val, cfg, latency=latency)


def _relative_macs(env, strategy) -> float:
    """MACs of the really pruned model over the original's: independent of the env's estimate."""
    pruned = env.pruner.apply(strategy)
    return count_cost(pruned, env.example_input)[0] / count_cost(env.model, env.example_input)[0]


@pytest.mark.parametrize("target", [0.3, 0.6])
def test_projection_just_meets_the_target_and_keeps_the_order(model, digits_splits, target):
    env = _env(model, digits_splits, target)
    propensity = np.linspace(0.2, 1.0, env.num_units)
    strategy = project_to_target(env, propensity)
    ratios = [strategy[u.name] for u in env.units]
    assert ratios == sorted(ratios)  # more propensity, more pruning
    assert all(env.config.min_pruning_ratio <= r <= env.config.max_pruning_ratio for r in ratios)
    macs = _relative_macs(env, strategy)
    assert target - 0.05 < macs <= target + 1e-9  # just under the target, not far below


def test_run_strategy_plays_the_strategy_unchanged(model, digits_splits):
    env = _env(model, digits_splits)
    strategy = project_to_target(env, np.full(env.num_units, 0.7))
    info = run_strategy(env, strategy)
    for name, ratio in strategy.items():
        assert info["strategy"][name] == pytest.approx(ratio, abs=1e-3)  # the wall did not act
    assert info["relative_macs"] == pytest.approx(_relative_macs(env, strategy))


def test_sampled_search_candidates_are_random_and_on_target(model, digits_splits):
    env = _env(model, digits_splits)
    result = sampled_search(env, episodes=8, seed=1)
    again = sampled_search(_env(model, digits_splits), episodes=8, seed=1)
    assert result["strategy"] == again["strategy"]
    rows = result["history"]
    assert len(rows) == 8 and result["reward"] == max(r["reward"] for r in rows)
    assert all(0.45 < r["relative_macs"] <= 0.5 + 1e-9 for r in rows)
    assert result["strategy"] != sampled_search(_env(model, digits_splits), 8, seed=2)["strategy"]


@pytest.mark.parametrize("search", [sampled_search, tpe_search])
def test_whole_strategy_searches_start_with_uniform_pruning(model, digits_splits, search):
    """The first candidate is one pruning ratio for every unit, the one uniform_for_target
    bisects on the measured cost; the next ones are random."""
    env = _env(model, digits_splits)
    played = record_episodes(env)
    search(env, episodes=3, seed=0)
    uniform = uniform_for_target(env, 0.5)["uniform_pruning_ratio"]
    assert played[0] == pytest.approx([uniform] * env.num_units, abs=0.02)
    assert max(played[1]) - min(played[1]) > 0.1


def test_tpe_search_is_seeded_and_returns_the_best(model, digits_splits):
    torch.manual_seed(0)
    first = tpe_search(_env(model, digits_splits), episodes=12, seed=0)
    again = tpe_search(_env(model, digits_splits), episodes=12, seed=0)
    assert first["strategy"] == again["strategy"]
    rewards = [r["reward"] for r in first["history"]]
    assert first["reward"] == max(rewards) == rewards[first["episode"]]
    assert all(r["relative_macs"] <= 0.5 + 1e-9 for r in first["history"])


def _curve_env(model, splits, target=0.5, **config):
    """Latency that is the square root of each layer's kept share: the env's linear estimate
    errs, so only a measured projection lands a strategy at the target."""
    cfg = PruningEnvConfig(
        cost="latency", target=target, bn_batches=1, actions="absolute", **config
    )
    latency = CurveLatency(model, math.sqrt)
    return ChannelPruningEnv(model, splits.train, splits.reward_val, cfg, latency=latency)


def test_measured_projection_spends_the_budget_the_rules_spend(model, digits_splits):
    env = _curve_env(model, digits_splits)
    curve = CurveLatency(model, math.sqrt)  # the same law, measured on the pruned model itself

    def measured(strategy):
        return curve.relative_latency(env.pruner.apply(strategy))[0]

    limit = env.target_limit()  # the rules' bar: the target + the reward's tolerance
    rng = np.random.default_rng(0)
    for _ in range(3):
        propensity = 1.0 - rng.random(env.num_units)
        by_estimate = measured(project_to_target(env, propensity))
        exact = measured(project_to_target(env, propensity, measured=True))
        assert limit - 0.02 < exact <= limit  # at the bar, up to one bisection step
        assert abs(by_estimate - limit) > limit - exact  # the estimate alone misses it


@pytest.mark.parametrize("search", [sampled_search, tpe_search])
def test_exact_searches_start_with_the_uniform_rule_and_stay_within_the_limit(
    model, digits_splits, search
):
    env = _curve_env(model, digits_splits)
    result = search(env, episodes=4, seed=0, exact=True)
    rule = uniform_for_target(env)
    first = result["history"][0]
    assert first["relative_latency"] == rule["relative_latency"]
    assert first["accuracy"] == rule["accuracy"]
    assert all(r["relative_latency"] <= env.target_limit() for r in result["history"])


def test_exact_budget_env_rescales_each_episode_onto_the_measured_budget(model, digits_splits):
    """The agent's episode fixes the shape (which units are pruned more), the measurement the
    size: the evaluated strategy keeps the proposed order and lands at the rules' bar."""
    curve = CurveLatency(model, math.sqrt)
    actions = np.linspace(-0.9, 0.9, 6)  # later units pruned more
    finals = {}
    for exact in (False, True):
        env = _curve_env(model, digits_splits, exact_budget=exact)
        env.reset()
        for a in actions:
            *_, done, _, info = env.step(np.array([a], dtype=np.float32))
        assert done
        finals[exact] = info
    exact = finals[True]
    limit = 0.5 * (1 + TARGET_TOLERANCE)
    measured = curve.relative_latency(env.pruner.apply(exact["strategy"]))[0]
    assert exact["relative_latency"] == pytest.approx(measured)
    assert limit - 0.02 < measured <= limit
    assert abs(finals[False]["relative_latency"] - limit) > limit - measured
    ratios = [exact["strategy"][u.name] for u in env.units]
    assert ratios == sorted(ratios)  # the proposed shape survives the rescaling


def test_exact_budget_bisection_counts_as_latency_time(model, digits_splits):
    """The episode's rescaling times ~10 candidates before the episode is evaluated; the step
    reports that time in its latency stage (throughput tables read it from there)."""

    class SlowCurve(CurveLatency):
        calls = 0

        def relative_latency(self, model, fresh=False):
            type(self).calls += 1
            time.sleep(0.02)
            return super().relative_latency(model, fresh)

    cfg = PruningEnvConfig(target=0.5, bn_batches=1, actions="absolute", exact_budget=True)
    latency = SlowCurve(model, math.sqrt)
    env = ChannelPruningEnv(
        model, digits_splits.train, digits_splits.reward_val, cfg, latency=latency
    )
    env.reset()
    for a in np.linspace(-0.9, 0.9, env.num_units)[:-1]:
        env.step(np.array([a], dtype=np.float32))
    before = SlowCurve.calls
    info = env.step(np.array([0.9], dtype=np.float32))[-1]
    calls = SlowCurve.calls - before
    assert calls >= 5  # the bisection, then the evaluation
    assert info["time_latency_s"] >= 0.02 * calls
