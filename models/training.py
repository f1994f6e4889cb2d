"""Train, fine-tune and evaluate classifiers on in-memory tensor datasets; cache base models.

The loop batches straight from the :class:`~torch.utils.data.TensorDataset` tensors (no
DataLoader workers: the data is already in memory), uses a per-step cosine learning-rate schedule
and runs under a forked, seeded RNG so the same seed gives the same weights and the caller's
random state is left untouched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset
from tqdm import tqdm

from models.atomic import torch_save_atomic
from models.data import DataSplits, default_cache_dir
from models.errors import CheckpointError, RlpruneError
from models.pretrained import PRETRAINED_DIR, file_sha256, find_pretrained, load_pretrained
from models.weights import load_weights
from models.zoo import build_model

OPTIMIZERS = ("sgd", "adam")
_SHA_PREFIX = "sha256:"
PRECISIONS = ("fp32", "bf16")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """How a base model is trained. Every field except ``progress`` is part of the cache key.

    The defaults train vgg_small on mnist5k to 98.4-99.0% test accuracy (seeds 0-2) in about
    25 s on 2 idle CPU cores (20,000 image passes; minutes when the cores are shared).

    Attributes:
        epochs: Passes over the train split.
        lr: Peak learning rate, annealed to 0 by a per-step cosine schedule (0.05 suits SGD;
            use about 1e-3 with adam).
        optimizer: ``"sgd"`` (momentum) or ``"adam"`` (AdamW, decoupled weight decay).
        momentum: SGD momentum.
        weight_decay: L2 penalty (SGD) or decoupled weight decay (AdamW).
        batch_size: Images per step.
        seed: Seed of the batch order, the augmentation and random layers (dropout);
            :func:`get_base_model` also seeds the initial weights with it.
        augment: Random-crop (zero padding of 4 px, i.e. the train mean after normalisation)
            and horizontal-flip every training image, the standard CIFAR augmentation. Leave it
            off for digits, whose meaning a flip changes.
        label_smoothing: Cross-entropy label smoothing in [0, 1).
        cutout: Side in pixels of a square set to zero (the train mean after normalisation)
            at a uniformly random centre of every training image, clipped at the borders
            (Cutout, DeVries & Taylor 2017, who use 16 on CIFAR-10); 0 is off. Applied after
            the crop and flip.
        nesterov: Nesterov momentum (SGD only).
        precision: ``"fp32"``, or ``"bf16"`` to run forward and loss under bfloat16 autocast
            (weights and optimizer stay float32). On CPUs with AVX-512 BF16 it trains CIFAR
            ResNet-20 about 1.6x faster (516 -> 842 images/s on 2 cores, batch 128).
        init_from: A weights file to start from instead of seeded random weights: another
            annealed cycle on a trained model (a warm restart, SGDR style). The cache key and
            the shipped-weights lookup hold the file's SHA-256 (``"sha256:<hex>"``), not its
            path, so the same weights anywhere give the same model.
        swa_epochs: Stochastic weight averaging (Izmailov et al. 2018, ``torch.optim.swa_utils``)
            after the cosine cycle: this many more epochs at the constant rate ``swa_lr``, the
            weights averaged at the end of each, then the BatchNorm statistics recomputed for
            the averaged weights with one pass over the train split, augmented as in training.
            0 is off.
            With ``epochs=0`` and ``init_from`` it averages around a trained model.
        swa_lr: The learning rate of the averaging epochs: constant, or the peak of each cycle.
        swa_cycle: 0 keeps ``swa_lr`` constant and averages after every epoch (SWA's default);
            N >= 1 runs cosine cycles of N epochs from ``swa_lr`` down to 0 and averages at the
            end of each (SWA's cyclical schedule), so every averaged point is an annealed
            model. ``swa_epochs`` must then be a multiple of N.
        progress: Show a tqdm progress bar.
    """

    epochs: int = 5
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    seed: int = 0
    augment: bool = False
    label_smoothing: float = 0.0
    cutout: int = 0
    nesterov: bool = False
    precision: str = "fp32"
    init_from: str | None = None
    swa_epochs: int = 0
    swa_lr: float = 0.01
    swa_cycle: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise RlpruneError(f"unknown optimizer '{self.optimizer}'; use one of {OPTIMIZERS}")
        if self.precision not in PRECISIONS:
            raise RlpruneError(f"unknown precision '{self.precision}'; use one of {PRECISIONS}")
        if (
            self.epochs < 0
            or self.lr <= 0
            or self.batch_size < 1
            or not 0 <= self.label_smoothing < 1
            or self.cutout < 0
            or self.swa_epochs < 0
            or self.swa_lr <= 0
            or self.swa_cycle < 0
            or (self.swa_cycle and self.swa_epochs % self.swa_cycle)
        ):
            raise RlpruneError(
                f"invalid training settings: epochs={self.epochs} (>= 0), lr={self.lr} (> 0), "
                f"batch_size={self.batch_size} (>= 1), label_smoothing={self.label_smoothing} "
                f"(in [0, 1)), cutout={self.cutout} (>= 0), swa_epochs={self.swa_epochs} "
                f"(>= 0), swa_lr={self.swa_lr} (> 0), swa_cycle={self.swa_cycle} (>= 0, dividing "
                f"swa_epochs)"
            )


def resolve_device(name: str = "auto") -> torch.device:
    """Turns a device name into a :class:`torch.device`; ``auto`` picks CUDA when available.

    Raises:
        RlpruneError: The name is not a device, or names CUDA on a machine without it.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise RlpruneError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RlpruneError(f"device '{name}' requested but CUDA is not available; use --device cpu")
    return device


def train_model(
    model: nn.Module,
    train_set: TensorDataset,
    config: TrainConfig,
    device: torch.device | str = "cpu",
    eval_set: TensorDataset | None = None,
    desc: str = "train",
) -> list[dict]:
    """Trains ``model`` in place with cross-entropy, then leaves it in eval mode on ``device``.

    Args:
        model: Classifier mapping ``[N, C, H, W]`` to ``[N, num_classes]`` logits.
        train_set: ``(x float32 [N, C, H, W], y int64 [N])``.
        config: Optimiser, schedule and seed.
        device: Where to train.
        eval_set: Optional split whose accuracy is measured after every epoch.
        desc: Label of the progress bar.

    Returns:
        One dict per epoch: ``epoch``, ``loss`` (mean train cross-entropy), ``train_acc`` (on the
        training batches, in [0, 1]), ``eval_acc`` (or None), ``lr`` (at the epoch's end) and
        ``time_s`` (seconds since the start); the averaging epochs (``config.swa_epochs``) are
        marked ``"swa": True`` and followed by one ``{"epoch": "swa", "eval_acc", "time_s"}``
        for the averaged model the call leaves in ``model``.

    Raises:
        RlpruneError: The loss became NaN or infinite (learning rate too high).
    """
    x, y = train_set.tensors
    steps = math.ceil(len(y) / config.batch_size)
    if len(y) % config.batch_size == 1:  # a batch of one breaks BatchNorm: drop it
        steps -= 1
    if steps == 0:
        raise RlpruneError(f"cannot train on {len(y)} image(s); the train split is too small")
    # channels_last makes oneDNN convolutions ~1.3x faster on CPU; restored for the callers.
    model.to(device, memory_format=torch.channels_last)
    optimizer = _optimizer(model, config)
    total = max(1, config.epochs * steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total))
    )
    history: list[dict] = []
    start = time.perf_counter()
    epochs = config.epochs + config.swa_epochs
    averaged = None
    try:
        with (
            torch.random.fork_rng(devices=_cuda_devices(device)),
            tqdm(total=epochs * steps, desc=desc, disable=None if config.progress else True) as bar,
        ):
            torch.manual_seed(config.seed)
            generator = torch.Generator().manual_seed(config.seed)
            for epoch in range(1, epochs + 1):
                if epoch == config.epochs + 1:  # the averaging phase
                    averaged = torch.optim.swa_utils.AveragedModel(model)
                    schedule = _swa_schedule(optimizer, config.swa_lr, config.swa_cycle * steps)
                batches = torch.randperm(len(y), generator=generator)[: steps * config.batch_size]
                loss, acc = _train_epoch(
                    model,
                    x,
                    y,
                    batches.split(config.batch_size),
                    optimizer,
                    schedule,
                    device,
                    bar,
                    config,
                    generator,
                )
                if not math.isfinite(loss):
                    raise RlpruneError(
                        f"training diverged ({desc}: loss {loss} at epoch {epoch}); "
                        f"lower the learning rate (now {config.lr})"
                    )
                if averaged is not None and (epoch - config.epochs) % max(1, config.swa_cycle) == 0:
                    averaged.update_parameters(model)
                eval_acc = evaluate(model, eval_set, device) if eval_set is not None else None
                history.append(
                    {
                        "epoch": epoch,
                        "loss": loss,
                        "train_acc": acc,
                        "eval_acc": eval_acc,
                        "lr": schedule.get_last_lr()[0],
                        "time_s": time.perf_counter() - start,
                        **({"swa": True} if averaged is not None else {}),
                    }
                )
                bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}")
                log.info("%s epoch %d/%d: %s", desc, epoch, epochs, history[-1])
        if averaged is not None:
            _average_into(model, averaged, x, config, device)
            eval_acc = evaluate(model, eval_set, device) if eval_set is not None else None
            history.append(
                {"epoch": "swa", "eval_acc": eval_acc, "time_s": time.perf_counter() - start}
            )
            log.info("%s averaged over %d epochs: %s", desc, config.swa_epochs, history[-1])
    finally:
        model.to(memory_format=torch.contiguous_format)
    model.eval()
    return history


def _swa_schedule(
    optimizer: torch.optim.Optimizer, lr: float, cycle_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """SWA's schedule: ``lr`` held constant (``cycle_steps`` 0), or cosine cycles of
    ``cycle_steps`` steps from ``lr`` down to 0."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = lr
    if not cycle_steps:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * (step % cycle_steps) / cycle_steps))
    )


@torch.no_grad()
def _average_into(
    model: nn.Module,
    averaged: torch.optim.swa_utils.AveragedModel,
    x: torch.Tensor,
    config: TrainConfig,
    device: torch.device | str,
) -> None:
    """Recomputes BatchNorm statistics for the averaged weights and copies them into ``model``.

    One pass over the train images ``x`` in order, augmented as in training (crop, flip,
    Cutout per ``config``), with cumulative BatchNorm averaging
    (``torch.optim.swa_utils.update_bn``). The augmentation matters: statistics of clean
    images put the 89.8% vgg_cifar (trained with Cutout) at 0.871 on the reward split, of
    augmented ones at 0.896, its training running averages at 0.900.
    """
    generator = torch.Generator().manual_seed(config.seed)

    def batches() -> Iterator[torch.Tensor]:
        for start in range(0, len(x), config.batch_size):
            inputs = x[start : start + config.batch_size]
            if config.augment:
                inputs = random_crop_flip(inputs, generator=generator)
            if config.cutout:
                inputs = random_cutout(inputs, config.cutout, generator=generator)
            yield inputs.to(device, memory_format=torch.channels_last)

    torch.optim.swa_utils.update_bn(batches(), averaged)
    model.load_state_dict(averaged.module.state_dict())


def _train_epoch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: tuple[torch.Tensor, ...],
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device | str,
    bar: tqdm,
    config: TrainConfig,
    generator: torch.Generator,
) -> tuple[float, float]:
    """One pass over ``batches`` (index tensors); returns mean loss and accuracy in [0, 1]."""
    model.train()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    for idx in batches:
        inputs = x[idx]
        if config.augment:
            inputs = random_crop_flip(inputs, generator=generator)
        if config.cutout:
            inputs = random_cutout(inputs, config.cutout, generator=generator)
        inputs = inputs.to(device, memory_format=torch.channels_last)
        labels = y[idx].to(device)
        with torch.autocast(
            torch.device(device).type, dtype=torch.bfloat16, enabled=config.precision == "bf16"
        ):
            logits = model(inputs)
            loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        total_loss += loss.detach() * len(idx)
        correct += (logits.argmax(1) == labels).sum()
        bar.update()
    seen = sum(len(idx) for idx in batches)
    return total_loss.item() / seen, correct.item() / seen


def random_crop_flip(
    images: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Crops each image at a random offset of its zero-padded copy, and flips half of them.

    Args:
        images: ``[N, C, H, W]``.
        padding: Pixels of zeros added on every side before cropping back to ``H x W``.
        generator: Source of the offsets and flips (CPU).

    Returns:
        A new ``[N, C, H, W]`` tensor; image ``i`` is ``padded[i, :, r:r+H, c:c+W]`` with
        ``r, c`` uniform in ``[0, 2 * padding]``, mirrored left-right with probability 1/2.
    """
    n, channels, height, width = images.shape
    padded = F.pad(images, (padding,) * 4)
    top = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    flip = torch.rand(n, 1, generator=generator) < 0.5
    rows = top + torch.arange(height)  # [N, H]
    cols = left + torch.arange(width)  # [N, W]
    cols = torch.where(flip, cols.flip(1), cols)
    batch = torch.arange(n)[:, None, None, None]
    chans = torch.arange(channels)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


def random_cutout(
    images: torch.Tensor, size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sets a ``size x size`` square of each image to zero at a random centre (Cutout).

    Args:
        images: ``[N, C, H, W]``.
        size: Side of the square in pixels.
        generator: Source of the centres (CPU).

    Returns:
        A new tensor; image ``i`` is zero on rows ``[r - size // 2, r - size // 2 + size)`` and
        the same span of columns around ``c``, with ``r, c`` uniform over the image and the
        square clipped at its borders (so a square at an edge covers less), as in DeVries &
        Taylor's reference code.
    """
    n, _, height, width = images.shape
    top = torch.randint(0, height, (n, 1), generator=generator) - size // 2
    left = torch.randint(0, width, (n, 1), generator=generator) - size // 2
    rows = torch.arange(height)
    cols = torch.arange(width)
    in_rows = (rows >= top) & (rows < top + size)  # [N, H]
    in_cols = (cols >= left) & (cols < left + size)  # [N, W]
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])  # [N, H, W]
    return images * keep[:, None].to(images.dtype)


def fine_tune(
    model: nn.Module,
    train_set: TensorDataset,
    epochs: int = 2,
    *,
    lr: float = 0.01,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = True,
    eval_set: TensorDataset | None = None,
    augment: bool = False,
) -> list[dict]:
    """Fine-tunes a (pruned) model in place: :func:`train_model` with a small SGD learning rate.

    The learning rate is annealed to zero (cosine), so the end point is stable enough to rank
    models by; ``augment`` adds the CIFAR crop-and-flip augmentation.

    Returns:
        The per-epoch history of :func:`train_model`.
    """
    config = TrainConfig(epochs=epochs, lr=lr, seed=seed, augment=augment, progress=progress)
    return train_model(model, train_set, config, device, eval_set, desc="fine-tune")


@contextmanager
def channels_last(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """``model`` with its 4-D parameters and buffers in channels-last memory format for the
    block, contiguous again after it (in place; other tensors are untouched).

    oneDNN's CPU convolutions run faster on channels-last weights: in the default search
    (vgg_small, 28x28 images) reward-split evaluation took 43% and BN recalibration 13% less
    time (docs/throughput.md).
    The values are the same; only their layout changes, so what is timed after the block
    (contiguous, as deployed) is unaffected.
    """
    if not enabled:
        yield model
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)


def evaluate(
    model: nn.Module,
    dataset: TensorDataset,
    device: torch.device | str = "cpu",
    batch_size: int = 1000,
) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on ``dataset``; the training flag is restored.

    Raises:
        RlpruneError: The dataset is empty.
    """
    right = correct_predictions(model, dataset, device, batch_size)
    return int(right.sum()) / len(right)


def correct_predictions(
    model: nn.Module,
    dataset: TensorDataset,
    device: torch.device | str = "cpu",
    batch_size: int = 1000,
) -> torch.Tensor:
    """Per image of ``dataset``, whether ``model``'s top-1 prediction is right (bool, on CPU).

    Two models' vectors on the same images give a paired comparison (McNemar): only the images
    on which they disagree carry information about which is better.

    Raises:
        RlpruneError: The dataset is empty.
    """
    x, y = dataset.tensors
    if len(y) == 0:
        raise RlpruneError("cannot evaluate on an empty dataset")
    was_training = model.training
    model.to(device).eval()
    right = []
    with torch.inference_mode():
        for start in range(0, len(y), batch_size):
            logits = model(x[start : start + batch_size].to(device))
            right.append(logits.argmax(1).cpu() == y[start : start + batch_size])
    model.train(was_training)
    return torch.cat(right)


def get_base_model(
    model_name: str,
    splits: DataSplits,
    *,
    config: TrainConfig = TrainConfig(),
    device: torch.device | str = "cpu",
    cache_dir: str | None = None,
    retrain: bool = False,
    shipped_dir: Path | None = PRETRAINED_DIR,
) -> tuple[nn.Module, dict]:
    """Returns a trained ``model_name`` for ``splits``: cached, shipped, or trained now.

    Checkpoints live in ``<cache_dir>/base_models/``, keyed by a hash of the model name, the
    dataset (name, shapes, classes, label fingerprint) and every training setting. An unreadable
    checkpoint is retrained with a warning. Without a cached checkpoint, weights shipped with
    rlprune for this model on exactly this data split (:mod:`models.pretrained`) are used
    instead of training when ``config`` is the default or exactly the shipped model's; their
    test accuracy is measured again.

    Args:
        model_name: Any name :func:`models.zoo.build_model` accepts.
        splits: Data; trained on ``train``, monitored on ``reward_val``, reported on ``test``.
        config: Training settings.
        device: Where to train; the returned model lives there.
        cache_dir: Cache root (default: ``$RLPRUNE_CACHE`` or ``~/.cache/rlprune``).
        retrain: Ignore an existing checkpoint (and shipped weights) and overwrite it.
        shipped_dir: Where shipped weights are looked up (None: never use them).

    Returns:
        ``(model in eval mode, info)`` where info holds ``test_acc`` (in [0, 1]),
        ``train_time_s``, ``path`` (the checkpoint, str), ``cached`` (bool), ``history`` and
        ``source`` (``"cache"``, ``"shipped"`` or ``"trained"``).
    """
    key = _cache_key(model_name, splits, config)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = root / "base_models" / f"{_slug(model_name)}-{_slug(splits.name)}-{digest}.pt"
    model = _build_seeded(model_name, splits, config.seed)
    if path.is_file() and not retrain:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(checkpoint["state_dict"])
            info = {field: checkpoint[field] for field in ("test_acc", "train_time_s", "history")}
            return model.to(device).eval(), {
                **info,
                "path": str(path),
                "cached": True,
                "source": "cache",
            }
        except Exception as err:  # any unreadable or mismatching file: train afresh
            warnings.warn(f"retraining: checkpoint {path} is unreadable ({err})", stacklevel=2)
            model = _build_seeded(model_name, splits, config.seed)
    entry = None
    if shipped_dir is not None and not retrain:
        entry = find_pretrained(model_name, splits, shipped_dir, train_settings(config))
    if entry is not None:
        load_pretrained(model, entry, shipped_dir)
        model.to(device).eval()
        return model, {
            "test_acc": evaluate(model, splits.test, device),
            "train_time_s": entry.get("train_time_s"),
            "history": [],
            "path": str(shipped_dir / entry["file"]),
            "cached": True,
            "source": "shipped",
        }
    if config.init_from is not None:  # only when training: a cache hit needs no start weights
        model = _warm_start(model_name, splits, config.init_from)
    start = time.perf_counter()
    history = train_model(model, splits.train, config, device, splits.reward_val, model_name)
    info = {
        "test_acc": evaluate(model, splits.test, device),
        "train_time_s": time.perf_counter() - start,
        "history": history,
    }
    try:
        torch_save_atomic({"state_dict": model.state_dict(), "key": key, **info}, path)
    except OSError as err:
        warnings.warn(f"cannot cache the base model at {path}: {err}", stacklevel=2)
    return model.eval(), {**info, "path": str(path), "cached": False, "source": "trained"}


def _build_seeded(model_name: str, splits: DataSplits, seed: int) -> nn.Module:
    """Builds the model with initial weights drawn from ``seed``, leaving the global RNG as is."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(model_name, splits.input_shape, splits.num_classes)


def _warm_start(model_name: str, splits: DataSplits, init_from: str) -> nn.Module:
    """``model_name`` with the weights of the file ``init_from`` (one-line errors if unfit)."""
    if init_from.startswith(_SHA_PREFIX):
        raise RlpruneError(
            f"cannot train from {init_from}: the starting weights are known only by checksum; "
            "pass the weights file itself (train_base.py --init-from PATH)"
        )
    return load_weights(model_name, splits.input_shape, splits.num_classes, init_from).model


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )


def _cuda_devices(device: torch.device | str) -> list[int]:
    device = torch.device(device)
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _cache_key(model_name: str, splits: DataSplits, config: TrainConfig) -> dict:
    """Everything a trained base model depends on, as JSON-friendly values."""
    labels = [split.tensors[1] for split in (splits.train, splits.reward_val, splits.test)]
    fingerprint = hashlib.sha1(b"".join(y.numpy().tobytes() for y in labels)).hexdigest()
    settings = train_settings(config)
    return {
        "model": model_name,
        "dataset": splits.name,
        "input_shape": list(splits.input_shape),
        "num_classes": splits.num_classes,
        "split_sizes": [len(y) for y in labels],
        "labels_sha1": fingerprint,
        "config": settings,
    }


def train_settings(config: TrainConfig) -> dict:
    """The settings a trained model depends on: ``config`` as a dict without ``progress``.

    ``init_from`` becomes ``"sha256:<hex>"`` of the file (kept as is when it already is one),
    and is left out when None, as ``cutout`` when 0, the SWA settings when ``swa_epochs`` is 0
    and ``swa_cycle`` when 0, so models trained before those fields existed keep their keys.
    """
    settings = dataclasses.asdict(config)
    del settings["progress"]
    if not settings["cutout"]:
        del settings["cutout"]  # models trained before the field existed keep their keys
    if not settings["swa_epochs"]:  # likewise: no averaging, no SWA keys
        del settings["swa_epochs"], settings["swa_lr"], settings["swa_cycle"]
    elif not settings["swa_cycle"]:
        del settings["swa_cycle"]
    init_from = settings.pop("init_from")
    if init_from is not None:
        if not init_from.startswith(_SHA_PREFIX):
            path = Path(init_from).expanduser()
            if not path.is_file():
                raise CheckpointError(
                    f"--init-from {init_from}: no such weights file; check the path"
                )
            init_from = _SHA_PREFIX + file_sha256(path)
        settings["init_from"] = init_from
    return settings


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60]
