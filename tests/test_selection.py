"""The final choice: top-k distinct architectures of a search, re-scored by a short fine-tune."""

import pytest
from fakes import MacsLatency

from agents.selection import (
    SelectionConfig,
    _steps_subset,
    select_strategy,
    strategy_of,
    top_results,
)
from envs.baselines import sampled_search
from envs.pruning import recalibrate_bn
from envs.pruning_env import ChannelPruningEnv, PruningEnvConfig
from models.training import evaluate, fine_tune


@pytest.fixture(scope="module")
def searched(digits_splits, digits_vgg_small):
    model = digits_vgg_small
    cfg = PruningEnvConfig(cost="macs", target=0.5, bn_batches=2)
    env = ChannelPruningEnv(
        model,
        digits_splits.train,
        digits_splits.reward_val,
        cfg,
        latency=MacsLatency(model, digits_splits.input_shape),
    )
    result = sampled_search(env, episodes=10, seed=0)
    return env, result


def test_top_results_are_distinct_best_first_and_on_target(searched) -> None:
    env, result = searched
    top = top_results(env, 4)
    assert len(top) == 4
    rewards = [r["reward"] for r in top]
    assert rewards == sorted(rewards, reverse=True)
    assert rewards[0] == result["reward"]  # the search's best leads
    kept = [tuple(r["kept_channels"].values()) for r in top]
    assert len(set(kept)) == 4
    assert all(r["macs_ratio"] <= 0.5 for r in top)


def test_top_1_selection_is_the_search_best(searched, digits_splits) -> None:
    env, result = searched
    chosen = select_strategy(env, digits_splits.train, SelectionConfig(top_k=1))
    assert chosen["kept_channels"] == result["kept_channels"]
    assert env.pruner.kept_channels(chosen["strategy"]) == result["kept_channels"]


def test_selection_rescores_with_a_short_fine_tune(searched, digits_splits) -> None:
    env, _ = searched
    config = SelectionConfig(top_k=3, fine_tune_steps=5, seed=1)
    chosen = select_strategy(env, digits_splits.train, config)
    scores = [c["selection_score"] for c in chosen["candidates"]]
    assert [c["search_rank"] for c in chosen["candidates"]] == [0, 1, 2]
    assert chosen["selection_score"] == max(scores)
    # The score is the reward-split accuracy after BN recalibration and the short fine-tune,
    # recomputed here by hand for the chosen architecture.
    pruned = env.pruner.prune_to(chosen["kept_channels"])
    recalibrate_bn(pruned, digits_splits.train, num_batches=env.config.bn_batches)
    fine_tune(pruned, _steps_subset(digits_splits.train, 5, 1), 1, lr=0.01, seed=1, progress=False)
    assert evaluate(pruned, env.reward_set) == chosen["selection_score"]
    assert strategy_of(env, chosen["kept_channels"]) == chosen["strategy"]
