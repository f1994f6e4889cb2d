"""The one evaluation protocol of every script: score strategies, time models together, rows.

Scoring a strategy (:func:`score_strategy`): prune a copy, repair it as every evaluation of the
env does (reconstruction if configured, BN recalibration), measure its test-split accuracy (and,
when asked, its reward-split accuracy), fine-tune it with the same settings as every other model
(:class:`FineTuneConfig`, learning rate annealed to zero) and measure its test accuracy again.

Timing (:func:`time_together`): the models that are compared are timed in one run, interleaved,
every repeat of every pass, best pass per model (:func:`envs.latency.compare_latency` under
:func:`envs.latency.reporting_config`, at least 30 timed runs), so that a machine-wide slowdown hits
all of them and the relative latencies are comparable. The search's adaptive, paired measurement
(:class:`envs.latency.LatencyMeter`) is for the search only; reported numbers come from here.

``train_agent.py``, ``apply_agent.py``, ``transfer_study.py``, ``benchmark.py`` and
``evaluate.py`` all go through these functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from envs.latency import (
    LatencyConfig,
    LatencyStats,
    compare_latency,
    reporting_config,
    shape_signature,
)
from envs.pruning import count_cost
from envs.pruning_env import ChannelPruningEnv
from models.data import DataSplits
from models.training import evaluate, fine_tune


@dataclass(frozen=True)
class FineTuneConfig:
    """How every scored model is fine-tuned (the same recipe for all the models compared).

    Attributes:
        epochs: epochs over the train split (0: no fine-tune, no fine-tuned accuracy).
        lr: peak SGD learning rate (cosine-annealed to zero).
        seed: seed of the batch order (and augmentation).
        augment: the CIFAR crop-and-flip augmentation.
        progress: show a progress bar.
    """

    epochs: int = 2
    lr: float = 0.01
    seed: int = 0
    augment: bool = False
    progress: bool = False


@dataclass
class ModelRow:
    """One model of a comparison: its accuracies, latency and cost.

    Attributes:
        name: the row's label (``original`` for the unpruned model).
        model: the model (fine-tuned in place when it was).
        test_acc: test-split accuracy after BN recalibration, before any fine-tune.
        reward_acc: reward-split accuracy after BN recalibration (when asked for).
        test_acc_finetuned: test-split accuracy after the fine-tune (None: not fine-tuned).
        latency_ms: median ms per batch of the best pass (:func:`time_rows`).
        latency_spread: inter-quartile range over the median of that pass.
        speedup: the first row's latency over this row's.
        macs: multiply-accumulates per image.
        params: parameters.
    """

    name: str
    model: nn.Module
    test_acc: float
    reward_acc: float | None = None
    test_acc_finetuned: float | None = None
    latency_ms: float = float("nan")
    latency_spread: float = float("nan")
    speedup: float = float("nan")
    macs: int = 0
    params: int = 0


def score_model(
    name: str,
    model: nn.Module,
    env: ChannelPruningEnv,
    splits: DataSplits,
    fine: FineTuneConfig | None = None,
    *,
    reward_acc: bool = False,
) -> ModelRow:
    """Accuracies and cost of ``model`` (fine-tuned in place when ``fine`` has epochs).

    Args:
        name: the row's label.
        model: a model of ``env``'s network (the original, or a pruned and repaired copy).
        env: the env whose device and example input are used.
        splits: test split (and reward split) for the accuracies, train split for the fine-tune.
        fine: the fine-tune; None or 0 epochs: none.
        reward_acc: also measure the reward-split accuracy (before the fine-tune).
    """
    device = env.device
    row = ModelRow(name, model, evaluate(model, splits.test, device))
    if reward_acc:
        row.reward_acc = evaluate(model, splits.reward_val, device)
    if fine is not None and fine.epochs > 0:
        fine_tune(
            model,
            splits.train,
            fine.epochs,
            lr=fine.lr,
            device=device,
            seed=fine.seed,
            progress=fine.progress,
            augment=fine.augment,
        )
        row.test_acc_finetuned = evaluate(model, splits.test, device)
    row.macs, row.params = count_cost(model, env.example_input)
    return row


def score_strategy(
    name: str,
    strategy: Mapping[str, float],
    env: ChannelPruningEnv,
    splits: DataSplits,
    fine: FineTuneConfig | None = None,
    *,
    reward_acc: bool = False,
) -> ModelRow:
    """:func:`score_model` of ``env``'s network pruned with ``strategy`` (:meth:`env.prune`:
    pruned copy, reconstruction if configured, BN recalibration)."""
    return score_model(name, env.prune(strategy), env, splits, fine, reward_acc=reward_acc)


def time_together(
    models: Mapping[str, nn.Module],
    input_shape: tuple[int, ...],
    config: LatencyConfig,
    *,
    passes: int = 5,
    device: Any = None,
    same_network: bool = False,
) -> dict[str, LatencyStats]:
    """Latency of every model with the reporting protocol: one run, interleaved, best pass.

    ``config`` (its runtime, batch size, threads) on ``device`` (default ``config.device``) with
    at least 30 timed runs per pass (:func:`envs.latency.reporting_config`), ``passes``
    interleaved passes, each model's best kept (:func:`envs.latency.compare_latency`).

    With ``same_network`` (the models are one network and prunings of it, as the rows of one env
    or one benchmark task are), models of one architecture (:func:`envs.latency.shape_signature`:
    the same layers and shapes, whatever their weights) are timed once and share that timing:
    copies timed apart differ only by noise (nine copies of one resnet20 architecture timed
    0.440-0.473 of the original in one benchmark run) and cost time. Not for unrelated models:
    layers without weights (a pooling's size, say) are not part of the signature.

    Returns:
        Stats per model name, in the order of ``models``.
    """
    cfg = reporting_config(config, device)
    keys = {name: shape_signature(m) if same_network else name for name, m in models.items()}
    first: dict[Any, str] = {}  # architecture -> the name it is timed under
    for name, key in keys.items():
        first.setdefault(key, name)
    timed = compare_latency({n: models[n] for n in first.values()}, input_shape, cfg, passes=passes)
    return {name: timed[first[key]] for name, key in keys.items()}


def time_rows(
    rows: list[ModelRow],
    input_shape: tuple[int, ...],
    config: LatencyConfig,
    *,
    passes: int = 5,
    device: Any = None,
    same_network: bool = False,
) -> None:
    """Fill latency, spread and speedup (vs the first row) of every row (:func:`time_together`,
    ``same_network`` as there)."""
    models = {r.name: r.model for r in rows}
    stats = time_together(
        models, input_shape, config, passes=passes, device=device, same_network=same_network
    )
    for row in rows:
        row.latency_ms = stats[row.name].median_ms
        row.latency_spread = stats[row.name].spread
        row.speedup = stats[rows[0].name].median_ms / row.latency_ms


def compare_strategies(
    env: ChannelPruningEnv,
    strategies: Mapping[str, Mapping[str, float]],
    splits: DataSplits,
    fine: FineTuneConfig = FineTuneConfig(),
    *,
    latency_passes: int = 5,
    reward_acc: bool = False,
) -> list[ModelRow]:
    """The original next to one pruned model per strategy, all scored and timed the same way.

    Each strategy is scored by :func:`score_strategy` (the same fine-tune for all), then all
    models are timed together (:func:`time_rows`, the env's latency settings on its device; a
    strategy that prunes to the architecture of another row shares that row's timing).

    Returns:
        ``original`` first, then one row per strategy; ``row.model`` holds the fine-tuned model.
    """
    rows = [score_model("original", env.model, env, splits, reward_acc=reward_acc)]
    rows += [
        score_strategy(name, strategy, env, splits, fine, reward_acc=reward_acc)
        for name, strategy in strategies.items()
    ]
    latency = env.config.latency
    time_rows(
        rows, env.input_shape, latency, passes=latency_passes, device=env.device, same_network=True
    )
    return rows
