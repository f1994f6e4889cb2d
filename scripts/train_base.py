"""Train (or fetch from the cache) a base model and print its test accuracy.

Usage:
    python scripts/train_base.py --model vgg_small --dataset mnist5k
    python scripts/train_base.py --model resnet20 --dataset cifar10 --data-dir ~/data --download
    python scripts/train_base.py --list-models
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

# Sleeping instead of spinning OpenMP threads: on a shared 2-core machine spinning made training
# 3.5x slower (and small test models 15x). Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    import models  # noqa: F401 (installed with `pip install -e .`)
except ImportError:  # run from a plain checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch import nn

from agents.config import default
from agents.workload import check_user_model
from models.data import DataSplits, list_datasets, load_dataset
from models.errors import RlpruneError
from models.pretrained import PRETRAINED_DIR
from models.training import TrainConfig, get_base_model, resolve_device
from models.zoo import list_models


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; training settings default to :class:`TrainConfig`'s."""
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=default("model"), help="architecture or module:callable")
    parser.add_argument(
        "--dataset", default=default("dataset"), help="dataset name or imagefolder:<dir>"
    )
    parser.add_argument(
        "--data-dir", default=default("data_dir"), help="where torchvision datasets live"
    )
    parser.add_argument("--download", action="store_true", help="download a missing dataset")
    parser.add_argument(
        "--max-samples", type=int, default=default("max_samples"), help="stratified subset size"
    )
    parser.add_argument(
        "--image-size", type=int, default=default("image_size"), help="resize images to SxS px"
    )
    parser.add_argument(
        "--data-seed",
        type=int,
        default=default("data_seed"),
        help="seed of the data split (which images go to train/reward/test), as train_agent.py's",
    )
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default=defaults.optimizer)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument(
        "--augment", action="store_true", help="random crop (pad 4) + horizontal flip (CIFAR)"
    )
    parser.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    parser.add_argument(
        "--cutout",
        type=int,
        default=defaults.cutout,
        metavar="PX",
        help="zero a PXxPX square at a random place of every training image (Cutout; 16 is "
        "the paper's CIFAR-10 size); 0: off",
    )
    parser.add_argument("--nesterov", action="store_true", help="Nesterov momentum (SGD)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default=defaults.precision,
        help="bf16: bfloat16 autocast (about 1.6x faster on CPUs with AVX-512 BF16)",
    )
    parser.add_argument(
        "--init-from",
        metavar="PATH",
        default=None,
        help="start from this weights file (e.g. a shipped model) instead of random weights: "
        "a warm restart, another annealed --epochs cycle at peak --lr",
    )
    parser.add_argument(
        "--swa-epochs",
        type=int,
        default=defaults.swa_epochs,
        metavar="N",
        help="stochastic weight averaging after the cycle: N more epochs at --swa-lr "
        "(see --swa-cycle), the weights averaged, BatchNorm statistics recomputed "
        "(with --epochs 0 --init-from FILE: average around a trained model); 0: off",
    )
    parser.add_argument(
        "--swa-lr",
        type=float,
        default=defaults.swa_lr,
        help="learning rate of the --swa-epochs (constant, or each cycle's peak)",
    )
    parser.add_argument(
        "--swa-cycle",
        type=int,
        default=defaults.swa_cycle,
        metavar="N",
        help="0: constant --swa-lr, average after every epoch; N: cosine cycles of N epochs "
        "from --swa-lr to 0, average at each cycle's end (--swa-epochs a multiple of N)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="training seed (initial weights, batch order): train_agent.py --seed N uses the "
        "base model of --seed N (not the data split: --data-seed)",
    )
    parser.add_argument("--device", default=default("device"), help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--cache-dir", default=default("cache_dir"), help="default: $RLPRUNE_CACHE or ~/.cache"
    )
    parser.add_argument(
        "--retrain", action="store_true", help="ignore a cached checkpoint and shipped weights"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--list-models", action="store_true", help="print model names and exit")
    parser.add_argument("--list-datasets", action="store_true", help="print datasets and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (2 with a one-line message on errors)."""
    try:
        return run(parse_args(argv))
    except RlpruneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C): nothing was cached", file=sys.stderr)
        return 130


def run(args: argparse.Namespace) -> int:
    """Lists names, or loads the data and trains (or fetches) the base model."""
    if args.list_models:
        print("\n".join(list_models()))
    if args.list_datasets:
        print("\n".join(list_datasets()))
    if args.list_models or args.list_datasets:
        return 0
    model, info, splits, _ = train_from_args(args)
    del model
    device = resolve_device(args.device)
    source = {"cache": "loaded from the cache", "shipped": "shipped with rlprune"}.get(
        info.get("source"), "trained"
    )
    print(
        f"{args.model} on {splits.name}: test accuracy {info['test_acc']:.4f} "
        f"({len(splits.test)} images); {source}, training took {info['train_time_s']:.1f} s "
        f"on {device}\ncheckpoint: {info['path']}"
    )
    return 0


def train_from_args(
    args: argparse.Namespace, shipped_dir: Path | None = PRETRAINED_DIR
) -> tuple[nn.Module, dict, DataSplits, TrainConfig]:
    """Validates the flags, loads the data and trains (or fetches) the base model.

    Returns:
        ``(model, info, splits, config)`` as :func:`get_base_model` gives model and info.
    """
    if args.epochs < 0 or args.epochs + args.swa_epochs < 1:
        raise RlpruneError(
            f"--epochs must be >= 1 (or 0 with --swa-epochs >= 1), got --epochs {args.epochs} "
            f"--swa-epochs {args.swa_epochs}"
        )
    if args.no_progress:  # one line per epoch instead of the bar (for logs)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = resolve_device(args.device)
    splits = load_dataset(
        args.dataset,
        data_dir=args.data_dir,
        download=args.download,
        seed=args.data_seed,
        max_samples=args.max_samples,
        image_size=args.image_size,
    )
    check_user_model(args.model, splits)
    config = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        optimizer=args.optimizer,
        batch_size=args.batch_size,
        seed=args.seed,
        augment=args.augment,
        label_smoothing=args.label_smoothing,
        cutout=args.cutout,
        nesterov=args.nesterov,
        precision=args.precision,
        init_from=args.init_from,
        swa_epochs=args.swa_epochs,
        swa_lr=args.swa_lr,
        swa_cycle=args.swa_cycle,
        progress=not args.no_progress,
    )
    model, info = get_base_model(
        args.model,
        splits,
        config=config,
        device=device,
        cache_dir=args.cache_dir,
        retrain=args.retrain,
        shipped_dir=shipped_dir,
    )
    return model, info, splits, config


if __name__ == "__main__":
    sys.exit(main())
