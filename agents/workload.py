"""Wire data, base model and environment from plain settings (shared by the scripts)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agents.config import DataConfig, RunConfig, default
from envs.pruning_env import ChannelPruningEnv, PruningEnvConfig
from models.data import DataSplits, default_cache_dir, load_dataset
from models.errors import CheckpointError, DatasetError, RlpruneError, UnknownModelError
from models.training import TrainConfig, evaluate, get_base_model
from models.weights import load_weights
from models.zoo import build_model


@dataclass(frozen=True)
class Workload:
    """A trained model, its data and the pruning environment built on them.

    ``base_info`` says where the model came from (see :func:`build_workload`).
    """

    model_name: str
    model: nn.Module
    splits: DataSplits
    env: ChannelPruningEnv
    base_info: dict[str, Any]

    @property
    def weights(self) -> dict[str, str]:
        """The user's weights file and its sha256 (keys ``weights``, ``weights_sha256``) for run
        records; empty when the base model is rlprune's own."""
        if self.base_info.get("source") != "weights":
            return {}
        return {
            "weights": self.base_info["path"],
            "weights_sha256": self.base_info["weights_sha256"],
        }


def load_splits(settings: dict[str, Any]) -> DataSplits:
    """The dataset named by ``settings`` (dataset, data_dir, download, data_seed, max_samples...).

    Raises:
        DatasetError: The dataset cannot be loaded, or has fewer than 2 classes (accuracy,
            and so the reward, would be 1 for any pruned model).
    """
    splits = load_dataset(
        settings["dataset"],
        data_dir=settings.get("data_dir"),
        download=settings.get("download", False),
        seed=settings.get("data_seed", DataConfig.data_seed),
        max_samples=settings.get("max_samples"),
        image_size=settings.get("image_size"),
    )
    if splits.num_classes < 2:
        raise DatasetError(
            f"dataset '{settings['dataset']}' has {splits.num_classes} class; a classifier "
            "needs at least 2 (one folder per class)"
        )
    return splits


def check_user_model(model_name: str, splits: DataSplits) -> None:
    """Build a user model (``module:callable``) once, so that its failure is one clear line.

    Raises:
        UnknownModelError: The callable raised (whatever the exception), naming the callable.
    """
    if ":" not in model_name:
        return
    try:
        build_model(model_name, splits.input_shape, splits.num_classes)
    except RlpruneError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the user's code is reported
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UnknownModelError(
            f"user model '{model_name}' failed when called ({type(exc).__name__}: {first}); "
            "it must build a torch.nn.Module from num_classes= and in_channels="
        ) from None


def load_user_weights(
    model_name: str, splits: DataSplits, settings: dict[str, Any], device: torch.device
) -> tuple[nn.Module, dict[str, Any]]:
    """``settings["weights"]`` loaded into ``model_name`` and evaluated on the test split.

    Returns:
        ``(model on device, info)``: info as :func:`models.training.get_base_model`'s
        (``test_acc``, ``source`` = ``"weights"``, ``path``) plus ``weights_sha256``.

    Raises:
        CheckpointError: The file does not load into the model, or its checksum is not
            ``settings["weights_sha256"]`` when that is set.
    """
    check_user_model(model_name, splits)
    loaded = load_weights(model_name, splits.input_shape, splits.num_classes, settings["weights"])
    recorded = settings.get("weights_sha256")
    if recorded and recorded != loaded.sha256:
        raise CheckpointError(
            f"weights file {loaded.path} changed since the run started (sha256 {recorded[:12]} "
            f"recorded, {loaded.sha256[:12]} now); restore that file or start a new run"
        )
    model = loaded.model.to(device)
    return model, {
        "cached": False,
        "train_time_s": 0.0,
        "source": "weights",
        "path": str(loaded.path),
        "weights_sha256": loaded.sha256,
        "test_acc": evaluate(model, splits.test, device),
    }


def env_config(settings: dict[str, Any]) -> PruningEnvConfig:
    """The environment settings from flat settings (the scripts' ``config.json``); a missing
    key keeps its :class:`PruningEnvConfig` / :class:`LatencyConfig` default."""
    return RunConfig.from_settings(settings).env


def build_workload(
    model_name: str,
    splits: DataSplits,
    settings: dict[str, Any],
    device: torch.device,
    *,
    progress: bool = True,
) -> Workload:
    """The base model (the user's weights, or trained / reused from the cache) and its env.

    With ``settings["weights"]`` (a state_dict file, see :func:`models.weights.load_weights`)
    no base model is trained: the file is loaded into ``model_name`` and evaluated on the test
    split. ``settings["weights_sha256"]``, when set (a resumed run), must be the file's.

    Args:
        model_name: zoo name, torchvision name or ``module:callable``.
        splits: the dataset.
        settings: flat settings (see :func:`env_config`, plus weights, base_epochs, seed,
            cache_dir, and latency_table: a table measured on another device that the search's
            latency comes from; the env's own tables are kept in :func:`latency_tables_dir`).
        device: where the network runs and is timed.
        progress: show training progress bars.

    Returns:
        The workload; its ``base_info`` holds ``source`` (``"weights"``, ``"cache"``,
        ``"shipped"`` or ``"trained"``) and ``test_acc``, with the user's weights also ``path``
        and ``weights_sha256``.

    Raises:
        UnknownModelError: Unknown model, or a user callable that fails.
        CheckpointError: The weights file is unreadable, does not fit the model, or is not the
            one the run recorded.
    """
    if settings.get("weights"):
        model, info = load_user_weights(model_name, splits, settings, device)
    else:
        check_user_model(model_name, splits)
        seed = settings.get("seed", default("seed"))
        epochs = settings.get("base_epochs") or TrainConfig.epochs
        train_cfg = TrainConfig(epochs=epochs, seed=seed, progress=progress)
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
        latency_tables=latency_tables_dir(settings.get("cache_dir")),
        latency_table=settings.get("latency_table"),
    )
    return Workload(model_name, model, splits, env, info)


def latency_tables_dir(cache_dir: str | None) -> Path:
    """Where per-layer latency tables are saved and reused: beside the base models, in
    ``<cache>/latency_tables`` (``cache_dir`` or :func:`models.data.default_cache_dir`)."""
    return (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / "latency_tables"
