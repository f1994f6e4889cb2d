"""Flags and error handling shared by the rlprune scripts (only scripts read the command line)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a shared or busy CPU, spinning threads made
# training 3-14x slower here. Set before torch is imported; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    import envs  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs.pruning import load_pruned  # noqa: E402
from envs.rewards import REWARDS  # noqa: E402
from models.data import DataSplits, load_dataset  # noqa: E402
from models.errors import DatasetError, RlpruneError  # noqa: E402
from models.zoo import DEFAULT_MODEL  # noqa: E402

#: Options a described dataset name (``DataSplits.name``, e.g. ``mnist5k@seed=1,max=1000``) holds.
DATASET_OPTIONS = {"seed": ("seed", int), "max": ("max_samples", int), "size": ("image_size", int)}


def add_data_args(p: argparse.ArgumentParser, model_help: str | None = None) -> None:
    """--model, --dataset and the options that locate and shape the data."""
    g = p.add_argument_group("model and data")
    g.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=model_help or "zoo or torchvision name, or package.module:callable (--list-models)",
    )
    g.add_argument(
        "--dataset",
        default="mnist5k",
        help="mnist5k, digits, mnist, fashion-mnist, cifar10 or imagefolder:PATH",
    )
    g.add_argument("--data-dir", default=None, help="where torchvision datasets are stored")
    g.add_argument("--download", action="store_true", help="download a torchvision dataset")
    g.add_argument("--max-samples", type=int, default=None, help="stratified subset of the data")
    g.add_argument("--image-size", type=int, default=None, help="resize imagefolder images")
    g.add_argument(
        "--base-epochs", type=int, default=None, help="base-model training epochs (default 8)"
    )
    g.add_argument(
        "--cache-dir", default=None, help="base-model cache ($RLPRUNE_CACHE or ~/.cache/rlprune)"
    )
    g.add_argument("--list-models", action="store_true", help="print the model names and exit")
    g.add_argument("--list-datasets", action="store_true", help="print the datasets and exit")


def add_env_args(p: argparse.ArgumentParser) -> None:
    """Target, reward and pruning options of the environment, and the latency measurement."""
    g = p.add_argument_group("pruning target")
    g.add_argument("--target", type=float, default=0.5, help="target as a fraction of original")
    g.add_argument(
        "--cost", choices=("latency", "macs"), default="latency", help="what --target constrains"
    )
    g.add_argument("--reward", choices=sorted(REWARDS), default="acc", help="reward function")
    g.add_argument("--min-ratio", type=float, default=0.0, help="smallest pruning ratio of a unit")
    g.add_argument("--max-ratio", type=float, default=0.8, help="largest pruning ratio of a unit")
    g.add_argument("--round-to", type=int, default=None, help="keep channel counts multiples of N")
    g.add_argument("--importance", choices=("l1", "l2"), default="l1", help="channel importance")
    g.add_argument("--bn-batches", type=int, default=8, help="batches for BN recalibration")
    g.add_argument("--seed", type=int, default=0, help="seed of agent, base model and fine-tune")
    g = p.add_argument_group("latency")
    g.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N: where the network runs"
    )
    g.add_argument(
        "--latency-batch-size", type=int, default=16, help="batch size of latency measurements"
    )
    g.add_argument("--latency-repeats", type=int, default=20, help="timed runs per measurement")
    g.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads while timing (1 is stable on a shared machine; use your deployment's)",
    )


def add_output_args(p: argparse.ArgumentParser) -> None:
    """Fine-tuning of the result and where the run is written."""
    g = p.add_argument_group("output")
    g.add_argument("--fine-tune-epochs", type=int, default=2, help="fine-tune epochs after search")
    g.add_argument("--output-dir", default="runs", help="parent directory of run directories")
    g.add_argument("--name", default=None, help="run directory name (default: from the settings)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def new_run_dir(output_dir: str, name: str) -> Path:
    """``output_dir/name``, suffixed -2, -3... when that directory is taken."""
    base = Path(output_dir) / name.replace(":", "-").replace("/", "-")
    path, i = base, 1
    while path.exists() and any(path.iterdir()):
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def load_described(described: str, data_dir: str | None, download: bool) -> DataSplits:
    """Loads a dataset from its described name (``DataSplits.name``, e.g. ``mnist5k@seed=1``).

    A saved pruned model's recipe names its dataset this way.

    Raises:
        DatasetError: Unknown dataset or option.
    """
    name, _, options = described.rpartition("@") if "@" in described else (described, "", "")
    kwargs = {}
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if key not in DATASET_OPTIONS or not value.lstrip("-").isdigit():
            raise DatasetError(
                f"dataset '{described}': bad option '{option}'; options are "
                f"{', '.join(k + '=N' for k in DATASET_OPTIONS)}, e.g. mnist5k@seed=1,max=1000"
            )
        kwargs[DATASET_OPTIONS[key][0]] = DATASET_OPTIONS[key][1](value)
    return load_dataset(name, data_dir=data_dir, download=download, **kwargs)


def load_pruned_with_data(
    path: Path, dataset: str | None, data_dir: str | None, download: bool, device: object
) -> tuple[object, dict, DataSplits]:
    """A saved pruned model, its recipe, and its dataset (``dataset`` or the recipe's).

    Raises:
        DatasetError: No dataset known, or its images do not fit the model.
    """
    model, meta = load_pruned(path, device)
    recipe = meta["recipe"]
    dataset = dataset or recipe.get("dataset")
    if not dataset:
        raise DatasetError(f"{path}: the recipe names no dataset; pass --dataset NAME")
    splits = load_described(dataset, data_dir, download)
    if list(splits.input_shape) != list(recipe["input_shape"]):
        raise DatasetError(
            f"dataset '{dataset}' has images {list(splits.input_shape)} but the model was pruned "
            f"for {recipe['input_shape']}; pass the --dataset it was trained on"
        )
    return model, recipe, splits


def run_cli(main: Callable[[], int]) -> None:
    """Run ``main``; an :class:`RlpruneError` becomes one ``error:`` line and exit status 2."""
    try:
        sys.exit(main())
    except RlpruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
