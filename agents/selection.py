"""The final choice of a search: re-rank the top few strategies with a stronger evaluation.

The best of hundreds of noisy evaluations on one reward split is optimistic (the winner's curse),
and the search's cheap signal ranks good strategies poorly (Distiller's AMC notebooks: r = 0.33
among the good candidates). So the search keeps every distinct architecture it evaluated (the
env's result cache), and :func:`select_strategy` re-scores the ``top_k`` by reward with a
stronger evaluation: the env's repair (:meth:`~envs.pruning_env.ChannelPruningEnv.restore`:
reconstruction if configured, BN recalibration), a short annealed fine-tune, then accuracy on the
whole reward split.
Every search method (agent, random, TPE) gets the same protocol, so comparisons isolate the
policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch.utils.data import TensorDataset

from envs.pruning_env import ChannelPruningEnv
from models.data import stratified_subset
from models.training import evaluate, fine_tune


@dataclass(frozen=True)
class SelectionConfig:
    """How the final strategy is chosen among the search's best.

    Attributes:
        top_k: Distinct architectures re-scored (1: the search's best, no re-scoring).
        fine_tune_steps: SGD steps of the short fine-tune (batch 64, annealed to zero); 0 scores
            after BN recalibration only.
        lr: Peak learning rate of the short fine-tune.
        seed: Seed of the fine-tune's image subset and batch order.
    """

    top_k: int = 5
    fine_tune_steps: int = 100
    lr: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.fine_tune_steps < 0 or self.lr <= 0:
            raise ValueError(
                f"selection needs top_k >= 1, fine_tune_steps >= 0 and lr > 0, got "
                f"{self.top_k}, {self.fine_tune_steps}, {self.lr}"
            )


def top_results(env: ChannelPruningEnv, k: int) -> list[dict[str, Any]]:
    """The ``k`` distinct architectures with the highest reward the env evaluated, best first.

    Only results that meet the target (``cost ratio <= target``) compete, unless none does.
    """
    results = [r for r in env.evaluated_results() if r["reward"] is not None]
    meeting = [r for r in results if env.cost_ratio(r) <= env.config.target]
    pool = meeting or results
    return sorted(pool, key=lambda r: r["reward"], reverse=True)[:k]


def select_strategy(
    env: ChannelPruningEnv, train_set: TensorDataset, config: SelectionConfig = SelectionConfig()
) -> dict[str, Any]:
    """Re-scores the search's ``top_k`` results and returns the best by the stronger score.

    Args:
        env: The env the search ran in (its result cache holds the candidates).
        train_set: Images for BN recalibration and the short fine-tune.
        config: How many candidates and how strong a re-scoring.

    Returns:
        The chosen result (as :meth:`ChannelPruningEnv.evaluate_strategy` gives it, with
        ``strategy``) plus ``selection_score`` and ``candidates``: per candidate its search
        reward, accuracy, ``selection_score`` and ``search_rank`` (0 = the search's best).
    """
    top = top_results(env, config.top_k)
    if not top:
        raise ValueError("the env evaluated no strategy yet; run a search first")
    subset = (
        _steps_subset(train_set, config.fine_tune_steps, config.seed) if config.top_k > 1 else None
    )
    scored = []
    for rank, result in enumerate(top):
        if config.top_k == 1:
            score = result["accuracy"]
        else:
            pruned = env.restore(env.pruner.prune_to(result["kept_channels"]))
            if config.fine_tune_steps:
                fine_tune(
                    pruned,
                    subset,
                    1,
                    lr=config.lr,
                    seed=config.seed,
                    progress=False,
                    device=env.device,
                )
            score = evaluate(pruned, env.reward_set, env.device)
        scored.append({**result, "selection_score": score, "search_rank": rank})
    chosen = max(scored, key=lambda r: (r["selection_score"], -r["search_rank"]))
    strategy = strategy_of(env, chosen["kept_channels"])
    candidates = [
        {
            "search_rank": r["search_rank"],
            "reward": r["reward"],
            "accuracy": r["accuracy"],
            "selection_score": r["selection_score"],
            "kept_channels": r["kept_channels"],
        }
        for r in scored
    ]
    return {**chosen, "strategy": strategy, "candidates": candidates}


def strategy_of(env: ChannelPruningEnv, kept: dict[str, int]) -> dict[str, float]:
    """The pruning ratios that keep exactly ``kept`` channels per unit."""
    return {u.name: 1.0 - kept[u.name] / u.out_channels for u in env.units}


def _steps_subset(dataset: TensorDataset, steps: int, seed: int) -> TensorDataset:
    """``steps`` batches of 64 images (stratified): one epoch of it is ``steps`` SGD steps."""
    return stratified_subset(dataset, max(steps, 1) * 64, seed)
