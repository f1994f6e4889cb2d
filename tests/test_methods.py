"""agents/methods.py: every search method behind one interface, each with its history."""

import csv

import pytest
from fakes import MacsLatency

from agents import methods
from agents.ddpg import make_agent
from agents.methods import (
    RULES,
    SEARCH_METHODS,
    SearchSettings,
    best_record,
    default_warmup,
    run_method,
)
from envs.baselines import RECORD_KEYS, random_search, sampled_search, tpe_search
from envs.pruning_env import ChannelPruningEnv, PruningEnvConfig
from models.errors import RlpruneError


def _env(model, splits):
    cfg = PruningEnvConfig(cost="macs", target=0.5, bn_batches=1)
    latency = MacsLatency(model, splits.input_shape)
    return ChannelPruningEnv(model, splits.train, splits.reward_val, cfg, latency=latency)


@pytest.mark.parametrize("name", list(SEARCH_METHODS))
def test_every_method_returns_its_best_and_history_the_same_way(
    name, digits_vgg_small, digits_splits, tmp_path
):
    env = _env(digits_vgg_small, digits_splits)
    settings = SearchSettings(episodes=4, seed=1, warmup=2, run_dir=tmp_path / name)
    result = run_method(name, env, settings)
    assert set(result["strategy"]) == {u.name for u in env.units}
    assert result["relative_macs"] <= 0.5 * 1.01 and result["seconds"] > 0
    if name in RULES:
        assert result["history"] == []
        return
    history = result["history"]
    assert len(history) == 4
    for record in history:
        assert set(RECORD_KEYS) | {"seconds"} <= set(record)
        assert record["seconds"] > 0
    assert result["reward"] == max(r["reward"] for r in history)
    assert "history" not in best_record(result) and best_record(result)["strategy"]


def test_the_agents_history_is_its_episodes_csv(digits_vgg_small, digits_splits, tmp_path):
    """The search returns what the callback wrote to episodes.csv, episode by episode."""
    env = _env(digits_vgg_small, digits_splits)
    result = run_method("agent", env, SearchSettings(5, seed=0, warmup=2, run_dir=tmp_path))
    with (tmp_path / "episodes.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["episode"] for r in result["history"]] == [int(r["episode"]) for r in rows]
    for record, row in zip(result["history"], rows, strict=True):
        assert record["reward"] == float(row["reward"])
        assert record["seconds"] == float(row["seconds"])
        assert record["cached"] == (row["cached"] == "True")
        if record["cached"]:
            assert record["time_eval_s"] == 0.0


@pytest.mark.parametrize(
    ("name", "search"),
    [("random", random_search), ("sampled", sampled_search), ("tpe", tpe_search)],
)
def test_registry_searches_are_the_baselines_with_their_seed(
    name, search, digits_vgg_small, digits_splits
):
    """The registry passes the budget and the seed through: the same strategies as a direct
    call (the numbers of earlier benchmarks stay), another seed gives others."""
    direct = search(_env(digits_vgg_small, digits_splits), 5, 7)
    same = run_method(name, _env(digits_vgg_small, digits_splits), SearchSettings(5, seed=7))
    other = run_method(name, _env(digits_vgg_small, digits_splits), SearchSettings(5, seed=8))
    assert same["strategy"] == direct["strategy"]
    assert [r["reward"] for r in same["history"]] == [r["reward"] for r in direct["history"]]
    assert other["history"] != same["history"]


def test_agent_is_seeded(digits_vgg_small, digits_splits):
    first = run_method("agent", _env(digits_vgg_small, digits_splits), SearchSettings(4, 0, 2))
    again = run_method("agent", _env(digits_vgg_small, digits_splits), SearchSettings(4, 0, 2))
    assert [r["reward"] for r in first["history"]] == [r["reward"] for r in again["history"]]
    assert first["strategy"] == again["strategy"]


def test_default_warmup_is_a_third_of_the_budget_and_at_least_one():
    assert default_warmup(300) == 100  # AMC: 100 random episodes of 300
    assert default_warmup(50) == 16
    assert default_warmup(2) == 1


def test_bad_names_and_budgets_are_one_line_errors(digits_vgg_small, digits_splits):
    env = _env(digits_vgg_small, digits_splits)
    with pytest.raises(RlpruneError, match="unknown search method 'amc'; choose uniform"):
        run_method("amc", env, SearchSettings(1))
    with pytest.raises(RlpruneError, match="at least 1 episode"):
        SearchSettings(0)
    with pytest.raises(RlpruneError, match="noise sigma must be > 0"):
        SearchSettings(5, noise_sigma=0.0)


@pytest.mark.parametrize(("sigma", "final"), [(None, 0.05), (0.15, 0.05), (0.02, 0.02)])
def test_the_agents_noise_sigma_is_the_settings(
    digits_vgg_small, digits_splits, monkeypatch, sigma, final
):
    """AgentConfig's sigma 0.5 falling to 0.05 unless the settings give one (the last episode's
    sigma then at most that)."""
    made = []

    def spy(env, config, **kwargs):
        made.append(config)
        return make_agent(env, config, **kwargs)

    monkeypatch.setattr(methods, "make_agent", spy)
    run_method(
        "agent", _env(digits_vgg_small, digits_splits), SearchSettings(3, 0, 1, noise_sigma=sigma)
    )
    assert made[0].noise_sigma == (0.5 if sigma is None else sigma)
    assert made[0].noise_final == final
