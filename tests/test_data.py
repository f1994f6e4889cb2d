"""Datasets: offline loading, deterministic stratified disjoint splits, clear errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from models.data import (
    DataSplits,
    list_datasets,
    load_dataset,
    split_off,
    stratified_order,
    stratified_subset,
    stratified_subset_indices,
)
from models.errors import DatasetError


def _class_counts(splits: DataSplits) -> list[np.ndarray]:
    return [
        np.bincount(s.tensors[1].numpy(), minlength=splits.num_classes)
        for s in (splits.train, splits.reward_val, splits.test)
    ]


def test_mnist5k_loads_offline_stratified_and_normalised(mnist5k_splits: DataSplits) -> None:
    s = mnist5k_splits
    assert (s.name, s.input_shape, s.num_classes) == ("mnist5k", (1, 28, 28), 10)
    assert s.class_names == tuple(str(i) for i in range(10))
    train_counts, val_counts, test_counts = _class_counts(s)
    assert (train_counts == 400).all() and (val_counts == 50).all() and (test_counts == 50).all()
    x, y = s.train.tensors
    assert x.shape == (4000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-2
    # Every image lands in exactly one split: 5,000 distinct rows in all.
    rows = torch.cat([d.tensors[0].flatten(1) for d in (s.train, s.reward_val, s.test)])
    assert len({row.numpy().tobytes() for row in rows}) == 5000


def test_digits_loads_with_stratified_80_10_10_split(digits_splits: DataSplits) -> None:
    s = digits_splits
    assert (s.input_shape, s.num_classes) == ((1, 8, 8), 10)
    sizes = [len(d) for d in (s.train, s.reward_val, s.test)]
    assert sizes == [1437, 180, 180]
    totals = sum(_class_counts(s))
    for counts, size in zip(_class_counts(s), sizes, strict=True):
        expected = totals * size / totals.sum()
        assert np.abs(counts - expected).max() <= 1.5


def test_splits_are_deterministic_per_seed(digits_splits: DataSplits) -> None:
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    assert torch.equal(again.reward_val.tensors[0], digits_splits.reward_val.tensors[0])
    assert torch.equal(again.test.tensors[1], digits_splits.test.tensors[1])
    assert not torch.equal(other.reward_val.tensors[0], digits_splits.reward_val.tensors[0])
    assert other.name == "digits@seed=1"


def test_stratified_order_prefixes_are_balanced_and_seeded() -> None:
    labels = np.repeat(np.arange(4), [40, 40, 20, 100])
    order = stratified_order(labels, seed=3)
    assert sorted(order) == list(range(200)) and np.array_equal(order, stratified_order(labels, 3))
    assert np.bincount(labels[order[:20]]).tolist() == [4, 4, 2, 10]
    subset = stratified_subset_indices(labels, 50, seed=3)
    assert len(subset) == 50 and len(set(subset)) == 50
    assert np.bincount(labels[subset]).tolist() == [10, 10, 5, 25]


def test_max_samples_and_image_size_options() -> None:
    s = load_dataset("digits", max_samples=500, image_size=16)
    assert sum(len(d) for d in (s.train, s.reward_val, s.test)) == 500
    assert s.input_shape == (1, 16, 16) and s.test.tensors[0].shape[1:] == (1, 16, 16)
    assert s.name == "digits@max=500,size=16"


def test_unknown_dataset_suggests_a_name() -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'digit'; did you mean 'digits'"):
        load_dataset("digit")
    assert "mnist5k" in list_datasets() and "imagefolder:<path>" in list_datasets()


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_missing_torchvision_data_names_path_and_fix(name: str, tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset(name, data_dir=str(tmp_path))
    message = str(info.value)
    assert "\n" not in message and f"'{name}'" in message
    assert str(tmp_path) in message and "--data-dir" in message and "--download" in message


def _write_image_tree(root: Path, classes: tuple[str, ...], per_class: int) -> None:
    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, size=(10, 12, 3)) + 90 * label
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")


def test_imagefolder_decodes_resizes_and_caches(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RLPRUNE_CACHE", str(tmp_path / "cache"))
    _write_image_tree(tmp_path / "imgs", ("cat", "dog", "fox"), per_class=10)
    name = f"imagefolder:{tmp_path / 'imgs'}"
    s = load_dataset(name, image_size=8)
    assert (s.input_shape, s.num_classes, s.class_names) == ((3, 8, 8), 3, ("cat", "dog", "fox"))
    assert [len(d) for d in (s.train, s.reward_val, s.test)] == [24, 3, 3]
    assert all((counts == 1).all() for counts in _class_counts(s)[1:])
    cached = list((tmp_path / "cache" / "images").glob("*.pt"))
    assert len(cached) == 1
    again = load_dataset(name, image_size=8)
    assert torch.equal(again.train.tensors[0], s.train.tensors[0])
    subset = load_dataset(name, max_samples=15)
    assert sum(len(d) for d in (subset.train, subset.reward_val, subset.test)) == 15
    assert subset.input_shape == (3, 32, 32)


def test_imagefolder_errors_name_the_problem(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RLPRUNE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(f"imagefolder:{tmp_path / 'nowhere'}")
    _write_image_tree(tmp_path / "imgs", ("a", "b"), per_class=5)
    (tmp_path / "imgs" / "b" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="broken.png"):
        load_dataset(f"imagefolder:{tmp_path / 'imgs'}")


def test_split_off_gives_two_disjoint_parts_the_first_stratified():
    y = torch.tensor([0] * 6 + [1] * 4)
    x = torch.arange(10).float().unsqueeze(1)  # each sample's index
    first, rest = split_off(TensorDataset(x, y), 5, seed=0)
    assert first.tensors[1].tolist().count(0) == 3 and first.tensors[1].tolist().count(1) == 2
    indices = first.tensors[0].squeeze(1).tolist() + rest.tensors[0].squeeze(1).tolist()
    assert sorted(indices) == list(range(10))  # disjoint, and nothing lost
    assert torch.equal(first.tensors[0], stratified_subset(TensorDataset(x, y), 5).tensors[0])
    with pytest.raises(ValueError, match="cannot split 10 of 10"):
        split_off(TensorDataset(x, y), 10)
