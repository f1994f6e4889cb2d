"""agents/evaluation.py: the one protocol that scores strategies and times models together."""

import pytest
import torch
from fakes import MacsLatency, Wait

from agents import evaluation
from agents.evaluation import (
    FineTuneConfig,
    compare_strategies,
    score_strategy,
    time_together,
)
from agents.finalize import compare_with_uniform
from envs.latency import LatencyConfig
from envs.pruning import count_cost
from envs.pruning_env import ChannelPruningEnv, PruningEnvConfig
from models.training import evaluate

SHAPE = (1, 4, 4)


def _env(model, splits):
    cfg = PruningEnvConfig(
        cost="macs", target=0.5, bn_batches=2, latency=LatencyConfig(batch_size=8, threads=1)
    )
    latency = MacsLatency(model, splits.input_shape)  # the search's measurement only
    return ChannelPruningEnv(model, splits.train, splits.reward_val, cfg, latency=latency)


def _half(env):
    return {u.name: 0.5 for u in env.units}


def test_time_together_reports_with_at_least_30_runs_and_known_ratios():
    """Modules of known duration, asked for 3 repeats: the reporting protocol times 30 per pass,
    and their ratio is the one of their durations."""
    config = LatencyConfig(warmup=1, repeats=3, pause_ms=0.0)
    stats = time_together({"slow": Wait(2.0), "fast": Wait(1.0)}, SHAPE, config, passes=2)
    assert list(stats) == ["slow", "fast"]
    assert stats["slow"].n == stats["fast"].n == 30
    assert stats["slow"].median_ms >= 2.0 and stats["fast"].median_ms >= 1.0
    assert stats["fast"].median_ms / stats["slow"].median_ms == pytest.approx(0.5, abs=0.15)


def test_time_together_times_each_architecture_of_one_network_once(monkeypatch):
    """Two copies of one architecture (other weights) and another one: with ``same_network`` two
    models are timed and the copies share one timing; without it, all three are timed."""
    timed = []
    real = evaluation.compare_latency

    def spy(models, *args, **kwargs):
        timed.append(list(models))
        return real(models, *args, **kwargs)

    monkeypatch.setattr(evaluation, "compare_latency", spy)
    net, other = torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(1, 2, 3)
    copy = torch.nn.Conv2d(1, 4, 3)  # fresh weights, same shapes
    models = {"net": net, "copy": copy, "other": other}
    config = LatencyConfig(warmup=1, repeats=3, pause_ms=0.0)
    stats = time_together(models, SHAPE, config, passes=1, same_network=True)
    assert timed == [["net", "other"]]
    assert list(stats) == ["net", "copy", "other"] and stats["copy"] is stats["net"]
    stats = time_together(models, SHAPE, config, passes=1)
    assert timed[1] == ["net", "copy", "other"] and stats["copy"] is not stats["net"]


def test_score_strategy_is_the_envs_model_fine_tuned_with_its_seed(digits_vgg_small, digits_splits):
    env = _env(digits_vgg_small, digits_splits)
    strategy = _half(env)
    plain = score_strategy("a", strategy, env, digits_splits, FineTuneConfig(0), reward_acc=True)
    # The scored model is the one the env rewards: pruned, BN-recalibrated (one image of slack
    # for the other batch size of the env's evaluation).
    one_image = 1.0 / len(digits_splits.reward_val.tensors[1])
    assert plain.reward_acc == pytest.approx(
        env.evaluate_strategy(strategy)["accuracy"], abs=one_image
    )
    assert plain.test_acc_finetuned is None
    # Its cost is the really pruned model's, well below the original's.
    pruned = env.pruner.apply(strategy)
    assert (plain.macs, plain.params) == count_cost(pruned, env.example_input)
    assert plain.macs < 0.5 * env.base_macs

    tuned = score_strategy("b", strategy, env, digits_splits, FineTuneConfig(1, seed=3))
    again = score_strategy("c", strategy, env, digits_splits, FineTuneConfig(1, seed=3))
    other = score_strategy("d", strategy, env, digits_splits, FineTuneConfig(1, seed=4))
    assert tuned.test_acc == plain.test_acc  # before the fine-tune: the same model
    assert tuned.test_acc_finetuned == evaluate(tuned.model, digits_splits.test)  # tuned in place
    assert tuned.test_acc_finetuned == again.test_acc_finetuned  # same seed, same numbers
    first = next(iter(tuned.model.state_dict().values()))
    assert torch.equal(first, next(iter(again.model.state_dict().values())))
    assert not torch.equal(first, next(iter(other.model.state_dict().values())))


def test_compare_strategies_scores_every_strategy_like_score_strategy(
    digits_vgg_small, digits_splits
):
    """compare_with_uniform (train_agent, apply_agent) and compare_strategies (transfer_study)
    give the numbers of score_strategy (benchmark) for the same strategy and fine-tune."""
    env = _env(digits_vgg_small, digits_splits)
    fine = FineTuneConfig(1, seed=2)
    rows = compare_with_uniform(
        env, _half(env), digits_splits, fine_tune_epochs=1, seed=2, latency_passes=1, progress=False
    )
    assert [r.name for r in rows] == ["original", "agent", "uniform"]
    alone = score_strategy("agent", _half(env), env, digits_splits, fine)
    assert (rows[1].test_acc, rows[1].test_acc_finetuned) == (
        alone.test_acc,
        alone.test_acc_finetuned,
    )
    assert rows[0].test_acc == evaluate(digits_vgg_small, digits_splits.test)
    assert rows[0].test_acc_finetuned is None and rows[0].speedup == 1.0
    assert all(r.latency_ms > 0 and r.latency_spread >= 0 for r in rows)
    assert rows[1].macs < rows[0].macs

    table = compare_strategies(env, {"half": _half(env)}, digits_splits, fine, reward_acc=True)
    assert table[1].test_acc_finetuned == alone.test_acc_finetuned
    assert table[0].reward_acc == evaluate(digits_vgg_small, digits_splits.reward_val)
