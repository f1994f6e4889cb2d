"""Base-model weights shipped with rlprune, so nobody waits hours to train a CIFAR-10 network.

``models/pretrained/index.json`` lists each shipped checkpoint: the model name, the fingerprint of
the exact data split it was trained and tested on (:func:`data_fingerprint`), its training
settings, its test accuracy, the command that produced it and the file's SHA-256.
:func:`models.training.get_base_model` uses a shipped checkpoint when the model name and the data
fingerprint match (the split must be the same, or the shipped model's training images could leak
into the reward or test split) and the requested training settings are either the defaults
(nothing asked for) or exactly the shipped model's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.atomic import torch_save_atomic, write_json_atomic
from models.data import DataSplits
from models.errors import CheckpointError

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
INDEX = "index.json"
_FINGERPRINT_IMAGES = 256


def data_fingerprint(splits: DataSplits) -> str:
    """SHA-256 of what identifies a data split: shapes, every label of the three splits, in
    order, and the pixels of the first train and test images (as normalised float32)."""
    digest = hashlib.sha256()
    digest.update(repr((tuple(splits.input_shape), splits.num_classes)).encode())
    for split in (splits.train, splits.reward_val, splits.test):
        x, y = split.tensors
        digest.update(repr(len(y)).encode())
        digest.update(y.numpy().tobytes())
    for split in (splits.train, splits.test):
        digest.update(split.tensors[0][:_FINGERPRINT_IMAGES].float().numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_index(root: Path = PRETRAINED_DIR) -> list[dict[str, Any]]:
    """The entries of the shipped-weights index (empty when there is none)."""
    path = root / INDEX
    return json.loads(path.read_text())["models"] if path.is_file() else []


def find_pretrained(
    model_name: str,
    splits: DataSplits,
    root: Path = PRETRAINED_DIR,
    train_config: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The index entry of shipped weights for ``model_name`` on exactly ``splits``, or None.

    Args:
        train_config: The training settings asked for (``TrainConfig`` as a dict, without
            ``progress``); None or the defaults accept any shipped model (the most accurate
            when several fit), other settings only a model trained with exactly them.
    """
    from models.training import TrainConfig, train_settings  # training imports this module

    default = train_settings(TrainConfig())
    entries = [e for e in read_index(root) if e["model"] == model_name]
    if train_config is not None and train_config != default:
        entries = [e for e in entries if e.get("train_config") == train_config]
    if not entries:
        return None  # no fingerprint needed
    fingerprint = data_fingerprint(splits)
    matching = [e for e in entries if e["data_fingerprint"] == fingerprint]
    # several for the defaults (e.g. a model and its warm restart): the most accurate
    return max(matching, key=lambda e: e.get("test_acc", 0.0), default=None)


def load_pretrained(model: nn.Module, entry: dict[str, Any], root: Path = PRETRAINED_DIR) -> None:
    """Loads the shipped weights of ``entry`` into ``model`` after checking the file's checksum.

    Raises:
        CheckpointError: The file is missing, altered (checksum) or does not fit the model.
    """
    path = root / entry["file"]
    if not path.is_file() or file_sha256(path) != entry["sha256"]:
        raise CheckpointError(
            f"shipped weights {path} are missing or altered (SHA-256 mismatch); restore them "
            "with git checkout, or pass --retrain to train the base model"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"shipped weights {path} do not fit the model ({err})") from err


def ship(
    model: nn.Module,
    model_name: str,
    splits: DataSplits,
    info: dict[str, Any],
    command: str,
    train_config: dict[str, Any],
    root: Path = PRETRAINED_DIR,
) -> dict[str, Any]:
    """Writes ``model``'s weights into ``root`` and records them in the index (atomically).

    Args:
        model: The trained base model.
        model_name: Its zoo name.
        splits: The data it was trained (train split) and tested (test split) on.
        info: :func:`models.training.get_base_model`'s info (``test_acc``, ``train_time_s``,
            ``history``).
        command: The command line that trained it.
        train_config: Its training settings (:func:`models.training.train_settings`).

    Returns:
        The new index entry.
    """
    root.mkdir(parents=True, exist_ok=True)
    tail = "_".join(splits.name.replace(":", "/").split("/")[-2:])  # e.g. cifar10_train
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in tail)
    # the settings' digest too: a warm restart must not overwrite the weights it started from
    recipe = hashlib.sha256(json.dumps(train_config, sort_keys=True).encode()).hexdigest()[:6]
    file = f"{model_name}-{slug}-{data_fingerprint(splits)[:8]}-{recipe}.pt"
    torch_save_atomic({k: v.detach().cpu() for k, v in model.state_dict().items()}, root / file)
    history = info.get("history") or []
    entry = {
        "model": model_name,
        "file": file,
        "sha256": file_sha256(root / file),
        "data_fingerprint": data_fingerprint(splits),
        "dataset": splits.name,
        "split_sizes": [len(s.tensors[1]) for s in (splits.train, splits.reward_val, splits.test)],
        "test_acc": info["test_acc"],
        "reward_val_acc": history[-1]["eval_acc"] if history else None,
        "train_time_s": info.get("train_time_s"),
        "train_config": train_config,
        "command": command,
    }
    entries = [e for e in read_index(root) if e["file"] != file] + [entry]
    write_json_atomic(root / INDEX, {"models": entries})
    return entry
