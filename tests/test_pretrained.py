"""Shipped base-model weights: found only for the exact data split, checksummed, used by
get_base_model instead of training."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.data import load_dataset
from models.errors import CheckpointError
from models.pretrained import data_fingerprint, find_pretrained, load_pretrained, ship
from models.training import TrainConfig, evaluate, get_base_model, train_settings


@pytest.fixture(scope="module")
def shipped(digits_splits, tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    model, info = get_base_model(
        "vgg_small",
        digits_splits,
        config=TrainConfig(epochs=1, progress=False),
        cache_dir=str(tmp_path_factory.mktemp("cache")),
        shipped_dir=None,
    )
    config = train_settings(TrainConfig(epochs=1))
    entry = ship(model, "vgg_small", digits_splits, info, "train_base.py --epochs 1", config, root)
    return root, model, entry


def test_shipped_weights_match_only_the_same_split(shipped, digits_splits) -> None:
    root, _, entry = shipped
    assert find_pretrained("vgg_small", digits_splits, root) == entry
    assert find_pretrained("resnet20", digits_splits, root) is None
    other_split = load_dataset("digits", seed=1)  # same images, other train/test assignment
    assert data_fingerprint(other_split) != data_fingerprint(digits_splits)
    assert find_pretrained("vgg_small", other_split, root) is None


def test_get_base_model_uses_shipped_weights_instead_of_training(
    shipped, digits_splits, tmp_path: Path
) -> None:
    root, model, entry = shipped
    loaded, info = get_base_model(
        "vgg_small",
        digits_splits,
        config=TrainConfig(progress=False),  # the defaults: the shipped model
        cache_dir=str(tmp_path),
        shipped_dir=root,
    )
    assert info["source"] == "shipped" and info["cached"]
    _, same = get_base_model(
        "vgg_small",
        digits_splits,
        config=TrainConfig(epochs=1, progress=False),  # exactly the shipped model's settings
        cache_dir=str(tmp_path / "other"),
        shipped_dir=root,
    )
    assert same["source"] == "shipped"
    other_settings = find_pretrained(
        "vgg_small", digits_splits, root, train_settings(TrainConfig(epochs=2))
    )
    assert other_settings is None  # asked for another recipe: train it
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert info["test_acc"] == evaluate(model, digits_splits.test) == entry["test_acc"]
    _, retrained = get_base_model(
        "vgg_small",
        digits_splits,
        config=TrainConfig(epochs=1, progress=False),
        cache_dir=str(tmp_path),
        shipped_dir=root,
        retrain=True,
    )
    assert retrained["source"] == "trained"


def test_altered_shipped_weights_are_refused(shipped, tmp_path: Path) -> None:
    root, model, entry = shipped
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in root.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    data = bytearray((copy / entry["file"]).read_bytes())
    data[-10] ^= 0xFF
    (copy / entry["file"]).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        load_pretrained(model, entry, copy)


def test_ship_base_model_script_writes_a_checked_entry(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "RLPRUNE_CACHE": str(tmp_path / "cache")}
    flags = ["--model", "vgg_small", "--dataset", "digits", "--epochs", "1", "--no-progress"]
    proc = subprocess.run(
        [sys.executable, str(root / "scripts" / "ship_base_model.py"), *flags]
        + ["--to", str(tmp_path / "shipped")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (entry,) = json.loads((tmp_path / "shipped" / "index.json").read_text())["models"]
    data = (tmp_path / "shipped" / entry["file"]).read_bytes()
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["command"] == "python scripts/train_base.py " + " ".join(flags)
    assert entry["train_config"]["epochs"] == 1
    splits = load_dataset("digits")
    assert find_pretrained("vgg_small", splits, tmp_path / "shipped") == entry


def test_a_warm_restart_is_shipped_beside_its_start(shipped, digits_splits, tmp_path) -> None:
    """Shipping a model trained --init-from a shipped file keeps that file (other name) and the
    defaults then take the more accurate of the two; exact settings still pick each."""
    root = tmp_path / "pretrained"  # a copy: the module's fixture stays as it is
    shutil.copytree(shipped[0], root)
    first = shipped[2]
    start = root / first["file"]
    before = start.read_bytes()
    restart = TrainConfig(epochs=1, lr=0.01, progress=False, init_from=str(start))
    better, info = get_base_model(
        "vgg_small", digits_splits, config=restart, cache_dir=str(tmp_path), shipped_dir=None
    )
    info = {**info, "test_acc": first["test_acc"] + 0.01}  # made the more accurate on purpose
    second = ship(better, "vgg_small", digits_splits, info, "cmd", train_settings(restart), root)
    assert second["file"] != first["file"] and start.read_bytes() == before
    assert second["train_config"]["init_from"] == "sha256:" + hashlib.sha256(before).hexdigest()
    assert find_pretrained("vgg_small", digits_splits, root) == second  # defaults: most accurate
    exact = train_settings(TrainConfig(epochs=1))
    assert find_pretrained("vgg_small", digits_splits, root, exact) == first
    assert find_pretrained("vgg_small", digits_splits, root, train_settings(restart)) == second


def test_every_shipped_base_model_is_intact_and_fits_its_architecture() -> None:
    """The committed weights in models/pretrained/ match their recorded SHA-256 (an LFS pointer
    or a truncated commit would not) and load into the architecture the index names."""
    from models.architectures import SMALL_ARCHITECTURES
    from models.pretrained import PRETRAINED_DIR, read_index

    entries = read_index(PRETRAINED_DIR)
    assert {e["model"] for e in entries} >= {"resnet20", "plain20", "vgg_cifar"}
    for entry in entries:
        path = PRETRAINED_DIR / entry["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], entry["file"]
        load_pretrained(SMALL_ARCHITECTURES[entry["model"]](), entry)  # raises if it does not fit
