"""A model's inputs: the loader records the normalisation it applies, and a saved or exported
model carries it (with the class names), so it can be fed outside rlprune."""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from agents.finalize import make_recipe
from envs.pruning import Pruner, load_pruned, save_pruned
from models.data import DataSplits, Preprocessing, load_dataset, renormalized
from models.errors import DatasetError
from models.zoo import build_model

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))  # the scripts import their shared `common` module


def digits_statistics(splits: DataSplits) -> tuple[float, float]:
    """(mean, std) the loader divided by, read off the normalised train images alone.

    Raw digits pixels are 0/16 .. 16/16 and the train split holds both extremes, so the
    normalised minimum is (0 - mean) / std and the maximum (1 - mean) / std.
    """
    x = splits.train.tensors[0].double()
    low, high = x.min().item(), x.max().item()
    std = 1 / (high - low)
    return -low * std, std


def test_digits_records_the_normalisation_its_loader_applies(digits_splits):
    mean, std = digits_statistics(digits_splits)
    pre = digits_splits.preprocessing
    assert pre.mean == pytest.approx((mean,), rel=1e-5)
    assert pre.std == pytest.approx((std,), rel=1e-5)
    assert (pre.pixel_max, pre.resize) == (16.0, None)
    # The train split is 80% of the digits, stratified: its mean is close to all images' mean.
    assert pre.mean[0] == pytest.approx(load_digits().images.mean() / 16, abs=0.005)
    assert digits_splits.class_names == tuple(str(i) for i in range(10))


def test_image_folder_records_resize_mean_and_std(tmp_path, monkeypatch):
    monkeypatch.setenv("RLPRUNE_CACHE", str(tmp_path / "cache"))
    colours = {"cat": (255, 0, 51), "dog": (0, 102, 204)}
    for name, colour in colours.items():
        (tmp_path / "img" / name).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (10, 10), colour).save(tmp_path / "img" / name / f"{i}.png")
    splits = load_dataset(f"imagefolder:{tmp_path / 'img'}")
    pre = splits.preprocessing
    # 20 images split 16 / 2 / 2, stratified: 8 solid images of each colour, upsampled to 32x32
    # (a solid image stays solid). Per channel, half the pixels are a, half b.
    n = 16 * 32 * 32
    a, b = (np.array(c) / 255 for c in colours.values())
    assert pre.mean == pytest.approx(tuple((a + b) / 2), rel=1e-5)
    assert pre.std == pytest.approx(tuple(abs(a - b) / 2 * math.sqrt(n / (n - 1))), rel=1e-5)
    assert (pre.pixel_max, pre.resize, splits.input_shape) == (255.0, (32, 32), (3, 32, 32))
    assert "PIL bilinear" in pre.resize_method
    assert splits.class_names == ("cat", "dog")


def test_preprocessing_round_trips_through_json(digits_splits):
    pre = load_dataset("digits", image_size=16).preprocessing
    assert pre.resize == (16, 16) and pre.resize_method
    again = Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert again == pre and again.same_input_as(pre)
    assert not again.same_input_as(digits_splits.preprocessing)
    with pytest.raises(DatasetError, match="needs mean, std and pixel_max"):
        Preprocessing.from_dict({"mean": [0.5]})


def nearest_distances(images: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """Distance of each image to its nearest image in ``pool``."""
    return torch.cdist(images.flatten(1).double(), pool.flatten(1).double()).min(dim=1).values


def test_renormalized_feeds_another_split_as_the_model_was_trained(digits_splits):
    other = load_dataset("digits", seed=1)  # another train split: another mean and std
    assert not other.preprocessing.same_input_as(digits_splits.preprocessing)
    every_seed0_image = torch.cat(
        [s.tensors[0] for s in (digits_splits.train, digits_splits.reward_val, digits_splits.test)]
    )
    converted = renormalized(other, digits_splits.preprocessing)
    # Each seed-1 test image, renormalised, is that very digit as the seed-0 loader gave it.
    assert nearest_distances(converted.test.tensors[0], every_seed0_image).max() < 1e-4
    assert nearest_distances(other.test.tensors[0], every_seed0_image).min() > 1e-3
    assert converted.preprocessing == digits_splits.preprocessing
    with pytest.raises(DatasetError, match="pass the --dataset"):
        renormalized(load_dataset("digits", image_size=16), digits_splits.preprocessing)


@pytest.fixture(scope="module")
def pruned_file(tmp_path_factory, digits_splits) -> Path:
    """A digits vgg_small (untrained: only the inputs matter here), half pruned, saved with the
    recipe the scripts write (agents.finalize.make_recipe)."""
    torch.manual_seed(0)
    base = build_model("vgg_small", digits_splits.input_shape, digits_splits.num_classes).eval()
    pruner = Pruner(base, torch.zeros(1, *digits_splits.input_shape))
    strategy = {unit.name: 0.5 for unit in pruner.units}
    recipe = make_recipe("vgg_small", digits_splits, base, {"importance": "l1", "round_to": None})
    path = tmp_path_factory.mktemp("pruned") / "pruned_model.pt"
    save_pruned(pruner.apply(strategy).eval(), path, {**recipe, "strategy": strategy})
    return path


def test_saved_model_carries_shape_normalisation_and_class_names(pruned_file, digits_splits):
    mean, std = digits_statistics(digits_splits)
    for recipe in (
        load_pruned(pruned_file)[1]["recipe"],
        json.loads(pruned_file.with_suffix(".json").read_text())["recipe"],
    ):
        assert recipe["input_shape"] == [1, 8, 8]
        assert recipe["class_names"] == [str(i) for i in range(10)]
        assert recipe["preprocessing"]["mean"] == pytest.approx([mean], rel=1e-5)
        assert recipe["preprocessing"]["std"] == pytest.approx([std], rel=1e-5)
        assert recipe["preprocessing"]["pixel_max"] == 16


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_sidecar_lets_a_raw_image_be_classified_outside_rlprune(
    pruned_file, digits_splits, tmp_path, capsys
):
    main = runpy.run_path(str(SCRIPTS / "export_model.py"), run_name="preprocessing_test")["main"]
    argv = [str(pruned_file), "--format", "torchscript", "--output-dir", str(tmp_path)]
    assert main(argv) == 0
    assert "pruned_model.deploy.json" in capsys.readouterr().out
    info = json.loads((tmp_path / "pruned_model.deploy.json").read_text())
    mean, std = digits_statistics(digits_splits)
    pre = info["input"]["preprocessing"]
    assert pre["mean"] == pytest.approx([mean], rel=1e-5)
    assert pre["std"] == pytest.approx([std], rel=1e-5)
    assert info["class_names"] == [str(i) for i in range(10)]
    assert info["input"]["shape"] == ["batch", 1, 8, 8] and info["input"]["name"] == "input"
    assert info["files"] == {"torchscript": "pruned_model.ts"}

    # A user with only the sidecar and the file: raw sklearn images in, rlprune's inputs out.
    raw = torch.from_numpy(load_digits().images[:20]).float().unsqueeze(1)
    x = (raw / pre["pixel_max"] - pre["mean"][0]) / pre["std"][0]
    every_image = torch.cat(
        [s.tensors[0] for s in (digits_splits.train, digits_splits.reward_val, digits_splits.test)]
    )
    assert nearest_distances(x, every_image).max() < 1e-4
    scripted = torch.jit.load(str(tmp_path / "pruned_model.ts"))
    with torch.no_grad():
        assert torch.allclose(scripted(x), load_pruned(pruned_file)[0](x), atol=1e-5)


def test_old_file_without_inputs_still_loads_exports_and_gets_the_dataset_ones(
    pruned_file, digits_splits, tmp_path, capsys
):
    import common

    model, meta = load_pruned(pruned_file)
    old = {k: v for k, v in meta["recipe"].items() if k not in ("class_names", "preprocessing")}
    path = tmp_path / "old.pt"
    save_pruned(model, path, old)

    assert "preprocessing" not in load_pruned(path)[1]["recipe"]
    _, recipe, splits = common.load_pruned_with_data(path, None, None, False, "cpu")
    assert "records no input normalisation" in capsys.readouterr().out
    assert recipe["class_names"] == [str(i) for i in range(10)]
    assert recipe["preprocessing"] == digits_splits.preprocessing.to_dict()
    assert torch.equal(splits.test.tensors[0], digits_splits.test.tensors[0])

    main = runpy.run_path(str(SCRIPTS / "export_model.py"), run_name="preprocessing_test")["main"]
    assert main([str(path), "--format", "torchscript", "--output-dir", str(tmp_path)]) == 0
    assert "records no input normalisation" in capsys.readouterr().err
    info = json.loads((tmp_path / "old.deploy.json").read_text())
    assert info["input"]["preprocessing"] is None and info["class_names"] is None
