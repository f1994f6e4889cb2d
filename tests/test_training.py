"""Training, evaluation, the base-model cache and the train_base script, on real tiny data."""

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from models.data import DataSplits
from models.errors import RlpruneError
from models.training import (
    TrainConfig,
    evaluate,
    fine_tune,
    get_base_model,
    random_crop_flip,
    random_cutout,
    resolve_device,
    train_model,
    train_settings,
)
from models.zoo import build_model

REPO = Path(__file__).resolve().parents[1]
FAST = TrainConfig(epochs=2, lr=0.05, batch_size=64, progress=False)


def _seeded_model(name: str, splits: DataSplits, seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(name, splits.input_shape, splits.num_classes)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(RlpruneError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


def test_train_config_rejects_bad_settings() -> None:
    with pytest.raises(RlpruneError, match="unknown optimizer 'rmsprop'"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(RlpruneError, match="lr=0"):
        TrainConfig(lr=0)
    with pytest.raises(RlpruneError, match="unknown precision 'fp16'"):
        TrainConfig(precision="fp16")


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_training_precision_sets_the_convolutions_dtype(digits_splits, precision, dtype) -> None:
    """bf16 runs the training forward in bfloat16 and keeps float32 weights; evaluation is fp32."""
    model = _seeded_model("vgg_small", digits_splits)
    seen: list[torch.dtype] = []
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    config = TrainConfig(epochs=1, batch_size=256, precision=precision, progress=False)
    train_model(model, digits_splits.train, config)
    assert seen and set(seen) == {dtype}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    seen.clear()
    evaluate(model, digits_splits.test)
    assert set(seen) == {torch.float32}


def test_random_crop_flip_shifts_and_mirrors_each_image() -> None:
    # Image i holds the value 100*i + 10*row + col, so every output pixel tells where it came from.
    n, size, pad = 64, 6, 2
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = (100 * torch.arange(n)[:, None, None] + 10 * rows + cols).float()[:, None] + 1
    out = random_crop_flip(images, padding=pad, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    flips, shifts = 0, set()
    for i in range(n):
        src = out[i, 0]
        inside = src > 0  # padding is zero, image pixels are >= 1
        values = src[inside] - 1 - 100 * i
        assert ((values >= 0) & (values < 100)).all()  # only pixels of its own image
        r, c = values // 10, values % 10
        # a crop keeps rows in order; columns in order, or reversed when flipped
        flipped = c.view(-1)[0] > c.view(-1)[-1] if inside.sum() > 1 else False
        flips += int(flipped)
        row_of = (r - torch.nonzero(inside)[:, 0]).unique()
        assert len(row_of) == 1  # one vertical shift per image
        shifts.add(int(row_of))
    assert 0.3 < flips / n < 0.7  # about half are mirrored
    assert shifts <= set(range(-pad, pad + 1)) and len(shifts) > 1


def test_random_cutout_zeroes_one_clipped_square_per_image() -> None:
    n, height, width, size = 200, 8, 6, 4
    images = torch.arange(1, n * 2 * height * width + 1, dtype=torch.float32).view(
        n, 2, height, width
    )
    out = random_cutout(images, size, generator=torch.Generator().manual_seed(0))
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1])  # the same square in every channel
    assert torch.equal(out[~zero], images[~zero])  # everything else untouched
    centres = set()
    for i in range(n):
        rows = torch.nonzero(zero[i, 0].any(1)).flatten()
        cols = torch.nonzero(zero[i, 0].any(0)).flatten()
        # a solid rectangle: every pixel in the rows x cols box is zero, none outside it
        assert int(zero[i, 0].sum()) == len(rows) * len(cols) > 0
        # square of side 4 around a centre in the image, clipped: 2 (corner) to 4 pixels a side
        assert 2 <= len(rows) <= size and 2 <= len(cols) <= size
        if 0 < rows[0] and rows[-1] < height - 1:  # not clipped: exactly the side
            assert len(rows) == size
        centres.add(int(rows[-1]) - size // 2 + 1 if rows[0] == 0 else int(rows[0]) + size // 2)
    assert centres == set(range(height))  # every row is a centre somewhere
    with pytest.raises(RlpruneError, match="cutout=-1"):
        TrainConfig(cutout=-1)


def test_training_applies_cutout_to_its_inputs(digits_splits) -> None:
    # a square twice the image's side covers all of it wherever its centre falls
    model = _seeded_model("vgg_small", digits_splits)
    side = digits_splits.input_shape[-1]
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].abs().sum()))
    config = TrainConfig(epochs=1, batch_size=256, cutout=2 * side, progress=False)
    train_model(model, digits_splits.train, config)
    assert seen and all(total == 0 for total in seen)
    evaluate(model, digits_splits.test)  # evaluation sees the images
    assert seen[-1] > 0


def test_cutout_is_part_of_the_cache_key_only_when_on() -> None:
    # models trained before the option existed (the shipped ones) keep their settings' digest
    assert "cutout" not in train_settings(TrainConfig())
    assert train_settings(TrainConfig(cutout=16))["cutout"] == 16


def test_training_learns_digits_and_is_seeded(digits_splits: DataSplits) -> None:
    model = _seeded_model("vgg_small", digits_splits)
    history = train_model(model, digits_splits.train, FAST, eval_set=digits_splits.reward_val)
    assert [h["epoch"] for h in history] == [1, 2] and history[-1]["lr"] < FAST.lr
    assert history[-1]["loss"] < history[0]["loss"]
    assert evaluate(model, digits_splits.test) > 0.85  # chance is 0.1
    again = _seeded_model("vgg_small", digits_splits)
    train_model(again, digits_splits.train, FAST)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )


def test_fine_tune_with_adam_and_evaluate_keep_the_training_flag(digits_splits) -> None:
    model = build_model("resnet20", digits_splits.input_shape, digits_splits.num_classes)
    config = TrainConfig(epochs=1, lr=3e-3, optimizer="adam", batch_size=64, progress=False)
    train_model(model, digits_splits.train, config)
    before = evaluate(model, digits_splits.reward_val)
    history = fine_tune(
        model, digits_splits.train, epochs=1, progress=False, eval_set=digits_splits.reward_val
    )
    assert len(history) == 1 and 0.0 <= history[0]["eval_acc"] <= 1.0 and before > 0.3
    model.train()
    evaluate(model, digits_splits.test)
    assert model.training


def test_base_model_cache_hit_and_corrupt_checkpoint(digits_splits, tmp_path: Path) -> None:
    config = TrainConfig(epochs=1, batch_size=64, progress=False)
    model, info = get_base_model("vgg_small", digits_splits, config=config, cache_dir=tmp_path)
    assert not info["cached"] and Path(info["path"]).is_file() and not model.training
    assert info["test_acc"] == evaluate(model, digits_splits.test)
    start = time.perf_counter()
    cached, again = get_base_model("vgg_small", digits_splits, config=config, cache_dir=tmp_path)
    assert again["cached"] and time.perf_counter() - start < 2.0
    assert again["test_acc"] == info["test_acc"] == evaluate(cached, digits_splits.test)
    other = get_base_model(
        "vgg_small", digits_splits, config=config, cache_dir=tmp_path, retrain=True
    )[1]
    assert not other["cached"] and other["path"] == info["path"]

    Path(info["path"]).write_bytes(b"truncated checkpoint")
    with pytest.warns(UserWarning, match="unreadable"):
        _, healed = get_base_model("vgg_small", digits_splits, config=config, cache_dir=tmp_path)
    assert not healed["cached"] and healed["test_acc"] == info["test_acc"]
    assert get_base_model("vgg_small", digits_splits, config=config, cache_dir=tmp_path)[1][
        "cached"
    ]


def _load_script():
    spec = importlib.util.spec_from_file_location("train_base", REPO / "scripts" / "train_base.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_base_script_end_to_end(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "train_base.py"),
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--cache-dir",
            str(tmp_path),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "vgg_small on digits: test accuracy" in done.stdout and "trained" in done.stdout
    assert list((tmp_path / "base_models").glob("vgg_small-digits-*.pt"))


def test_train_base_script_reports_errors_in_one_line(capsys) -> None:
    script = _load_script()
    assert script.main(["--dataset", "digitz"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown dataset 'digitz'; did you mean 'digits'?")
    assert err.count("\n") == 1
    assert script.main(["--list-datasets"]) == 0
    assert "mnist5k" in capsys.readouterr().out


def test_warm_start_trains_on_from_the_given_weights(digits_splits, tmp_path: Path) -> None:
    """--init-from: the cycle starts at the file's weights, keyed by checksum, not path."""
    first = get_base_model("vgg_small", digits_splits, config=FAST, cache_dir=tmp_path)[0]
    start = {k: v.clone() for k, v in first.state_dict().items()}
    weights = tmp_path / "a" / "start.pt"
    weights.parent.mkdir()
    torch.save(start, weights)
    # a learning rate of ~0 leaves the weights where they started: the file's, not seed 0's
    still = TrainConfig(epochs=1, lr=1e-12, progress=False, init_from=str(weights))
    model, info = get_base_model("vgg_small", digits_splits, config=still, cache_dir=tmp_path)
    assert info["source"] == "trained"
    convs = [k for k, v in start.items() if k.endswith("weight") and v.dim() == 4]
    assert convs and all(torch.allclose(model.state_dict()[k], start[k]) for k in convs)
    fresh = _seeded_model("vgg_small", digits_splits)
    assert not torch.allclose(fresh.state_dict()[convs[0]], start[convs[0]])
    # the same bytes under another name hit the same cache entry; other bytes do not
    copy = tmp_path / "b.pt"
    copy.write_bytes(weights.read_bytes())
    moved = TrainConfig(epochs=1, lr=1e-12, progress=False, init_from=str(copy))
    again = get_base_model("vgg_small", digits_splits, config=moved, cache_dir=tmp_path)[1]
    assert again["source"] == "cache" and again["path"] == info["path"]
    torch.save(fresh.state_dict(), copy)
    other = get_base_model("vgg_small", digits_splits, config=moved, cache_dir=tmp_path)[1]
    assert other["source"] == "trained" and other["path"] != info["path"]


def test_warm_start_errors_name_the_file(digits_splits, tmp_path: Path, capsys) -> None:
    missing = TrainConfig(epochs=1, progress=False, init_from=str(tmp_path / "nope.pt"))
    with pytest.raises(RlpruneError, match=r"--init-from .*nope\.pt: no such weights file"):
        get_base_model("vgg_small", digits_splits, config=missing, cache_dir=tmp_path)
    wrong = tmp_path / "resnet20.pt"
    torch.save(build_model("resnet20", digits_splits.input_shape, 10).state_dict(), wrong)
    unfit = TrainConfig(epochs=1, progress=False, init_from=str(wrong))
    with pytest.raises(RlpruneError, match="does not fit|missing|unexpected"):
        get_base_model("vgg_small", digits_splits, config=unfit, cache_dir=tmp_path)
    script = _load_script()
    assert script.main(["--dataset", "digits", "--init-from", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --init-from") and err.count("\n") == 1


def test_channels_last_converts_conv_weights_for_the_block_only():
    """Inside the block every 4-D weight is channels-last and the outputs are unchanged; after it
    (also after an exception) the weights are contiguous again, with the same values."""
    from models.training import channels_last

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)
    ).eval()
    x = torch.randn(2, 3, 9, 9)
    before, weights = net(x), [p.detach().clone() for p in net.parameters()]
    with channels_last(net) as same:
        assert same is net
        assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
        assert not net[0].weight.is_contiguous()
        assert torch.allclose(net(x), before, atol=1e-5)
    assert all(p.is_contiguous() for p in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(weights, net.parameters(), strict=True))
    with pytest.raises(ValueError), channels_last(net):
        raise ValueError("inside")
    assert all(p.is_contiguous() for p in net.parameters())
    with channels_last(net, enabled=False):
        assert net[0].weight.is_contiguous()


class _BNLinear(torch.nn.Module):
    """BatchNorm on the input pixels, then a linear classifier: every state is hand-checkable."""

    def __init__(self, channels: int, pixels: int, classes: int) -> None:
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(channels)
        self.fc = torch.nn.Linear(channels * pixels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(x).flatten(1))


def test_swa_averages_the_weights_of_its_epochs_and_recomputes_batchnorm(
    digits_splits, monkeypatch
) -> None:
    """The delivered weights are the mean of the weights at the end of each averaging epoch
    (snapshots taken here, not by the code under test), the averaging epochs run at the
    constant swa_lr, and BatchNorm's statistics are those of the train images."""
    import models.training as training

    x, y = digits_splits.train.tensors
    keep = len(y) // 64 * 64  # whole batches: a cumulative BN mean is then the plain mean
    train = torch.utils.data.TensorDataset(x[:keep], y[:keep])
    torch.manual_seed(0)
    model = _BNLinear(x.shape[1], x.shape[2] * x.shape[3], digits_splits.num_classes)
    snapshots: list[torch.Tensor] = []
    original = training._train_epoch

    def recording(model_, *args):
        result = original(model_, *args)
        snapshots.append(model_.fc.weight.detach().clone())
        return result

    monkeypatch.setattr(training, "_train_epoch", recording)
    config = TrainConfig(
        epochs=2, lr=0.05, batch_size=64, swa_epochs=3, swa_lr=0.02, progress=False
    )
    history = train_model(model, train, config, eval_set=digits_splits.reward_val)
    assert len(snapshots) == 5
    assert torch.allclose(model.fc.weight, torch.stack(snapshots[2:]).mean(0), atol=1e-6)
    assert not torch.allclose(model.fc.weight, snapshots[-1], atol=1e-4)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, "swa"]
    assert [h.get("swa", False) for h in history[:5]] == [False, False, True, True, True]
    assert [h["lr"] for h in history[2:5]] == [0.02, 0.02, 0.02]
    assert history[1]["lr"] == pytest.approx(0.0, abs=1e-9)  # the cosine cycle ended at 0
    assert history[-1]["eval_acc"] == evaluate(model, digits_splits.reward_val)
    pixels = x[:keep].transpose(0, 1).flatten(1)
    assert torch.allclose(model.bn.running_mean, pixels.mean(1), atol=1e-5)
    assert torch.allclose(model.bn.running_var, pixels.var(1), rtol=1e-3, atol=1e-5)


def test_swa_batchnorm_statistics_see_the_training_augmentation(digits_splits) -> None:
    """A Cutout larger than the image zeroes every pixel: BatchNorm recomputed on augmented
    images then has mean 0 and variance 0, whatever the clean images' statistics."""
    x, y = digits_splits.train.tensors
    torch.manual_seed(0)
    model = _BNLinear(x.shape[1], x.shape[2] * x.shape[3], digits_splits.num_classes)
    side = x.shape[-1]
    config = TrainConfig(epochs=0, batch_size=64, cutout=2 * side, swa_epochs=1, progress=False)
    train_model(model, digits_splits.train, config)
    assert torch.equal(model.bn.running_mean, torch.zeros(1))
    assert torch.equal(model.bn.running_var, torch.zeros(1))
    assert x.mean() != 0


def test_cyclic_swa_averages_the_annealed_end_of_each_cycle(digits_splits, monkeypatch) -> None:
    """swa_cycle 2: cosine cycles of two epochs from swa_lr to 0; only the weights at each
    cycle's end (epochs 2 and 4 of the averaging phase) enter the average."""
    import models.training as training

    torch.manual_seed(0)
    x, y = digits_splits.train.tensors
    model = _BNLinear(x.shape[1], x.shape[2] * x.shape[3], digits_splits.num_classes)
    snapshots: list[torch.Tensor] = []
    lrs: list[float] = []
    original = training._train_epoch

    def recording(model_, x_, y_, batches, optimizer, *args):
        lrs.append(optimizer.param_groups[0]["lr"])  # the rate of the epoch's first step
        result = original(model_, x_, y_, batches, optimizer, *args)
        snapshots.append(model_.fc.weight.detach().clone())
        return result

    monkeypatch.setattr(training, "_train_epoch", recording)
    config = TrainConfig(
        epochs=1, lr=0.05, batch_size=64, swa_epochs=4, swa_lr=0.03, swa_cycle=2, progress=False
    )
    train_model(model, digits_splits.train, config)
    assert torch.allclose(model.fc.weight, (snapshots[2] + snapshots[4]) / 2, atol=1e-6)
    steps = len(y) // 64 + (len(y) % 64 > 1)
    # each cycle starts at swa_lr; its second epoch starts half-way down the cosine
    assert lrs[1:] == pytest.approx([0.03, 0.015, 0.03, 0.015], rel=0.1 / steps)
    with pytest.raises(RlpruneError, match="swa_cycle=3"):
        TrainConfig(swa_epochs=4, swa_cycle=3)


def test_swa_settings_enter_the_cache_key_only_when_on() -> None:
    assert "swa_epochs" not in train_settings(FAST) and "swa_lr" not in train_settings(FAST)
    on = train_settings(TrainConfig(epochs=0, swa_epochs=4, swa_lr=0.03))
    assert on["swa_epochs"] == 4 and on["swa_lr"] == 0.03 and on["epochs"] == 0
    assert "swa_cycle" not in on
    assert train_settings(TrainConfig(swa_epochs=4, swa_cycle=2))["swa_cycle"] == 2
    with pytest.raises(RlpruneError, match="swa_epochs=-1"):
        TrainConfig(swa_epochs=-1)
    with pytest.raises(RlpruneError, match="swa_lr=0"):
        TrainConfig(swa_lr=0)


def test_train_base_swa_flags_reach_the_config_and_epochs_zero_needs_them(capsys) -> None:
    script = _load_script()
    argv = ["--epochs", "0", "--swa-epochs", "3", "--swa-lr", "0.004", "--swa-cycle", "3"]
    args = script.parse_args(argv)
    assert (args.epochs, args.swa_epochs, args.swa_lr, args.swa_cycle) == (0, 3, 0.004, 3)
    assert script.main(["--dataset", "digits", "--epochs", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --epochs must be >= 1 (or 0 with --swa-epochs >= 1)")
    assert err.count("\n") == 1
