"""Wire data, base model and environment from plain settings (shared by the scripts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from envs.latency import LatencyConfig
from envs.pruning_env import ChannelPruningEnv, PruningEnvConfig
from models.data import DataSplits, load_dataset
from models.training import TrainConfig, get_base_model


@dataclass(frozen=True)
class Workload:
    """A trained model, its data and the pruning environment built on them."""

    model_name: str
    model: nn.Module
    splits: DataSplits
    env: ChannelPruningEnv
    base_info: dict[str, Any]


def load_splits(settings: dict[str, Any]) -> DataSplits:
    """The dataset named by ``settings`` (dataset, data_dir, download, seed, max_samples...)."""
    return load_dataset(
        settings["dataset"],
        data_dir=settings.get("data_dir"),
        download=settings.get("download", False),
        seed=settings.get("data_seed", 0),
        max_samples=settings.get("max_samples"),
        image_size=settings.get("image_size"),
    )


def env_config(settings: dict[str, Any]) -> PruningEnvConfig:
    """The environment settings from a flat settings dict (the scripts' ``config.json``)."""
    return PruningEnvConfig(
        target=settings["target"],
        cost=settings["cost"],
        reward=settings["reward"],
        min_ratio=settings["min_ratio"],
        max_ratio=settings["max_ratio"],
        importance=settings["importance"],
        round_to=settings.get("round_to"),
        bn_batches=settings["bn_batches"],
        latency=LatencyConfig(
            batch_size=settings["latency_batch_size"],
            repeats=settings["latency_repeats"],
            threads=settings.get("threads"),
        ),
    )


def build_workload(
    model_name: str,
    splits: DataSplits,
    settings: dict[str, Any],
    device: torch.device,
    *,
    model: nn.Module | None = None,
    progress: bool = True,
) -> Workload:
    """Train (or reuse from the cache) the base model and build its pruning environment.

    Args:
        model_name: zoo name, torchvision name or ``module:callable``.
        splits: the dataset.
        settings: flat settings (see :func:`env_config`, plus base_epochs, seed, cache_dir).
        device: where the network runs and is timed.
        model: an already trained model to use instead of the cached base model.
        progress: show training progress bars.
    """
    info: dict[str, Any] = {"cached": True, "train_time_s": 0.0}
    if model is None:
        train_cfg = TrainConfig(seed=settings.get("seed", 0), progress=progress)
        if settings.get("base_epochs"):
            train_cfg = TrainConfig(
                epochs=settings["base_epochs"], seed=settings.get("seed", 0), progress=progress
            )
        model, info = get_base_model(
            model_name, splits, config=train_cfg, device=device, cache_dir=settings.get("cache_dir")
        )
    env = ChannelPruningEnv(
        model,
        splits.train,
        splits.reward_val,
        env_config(settings),
        device=device,
        model_name=model_name,
    )
    return Workload(model_name, model, splits, env, info)
