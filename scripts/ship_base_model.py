"""Ship a base model with rlprune: train it (or take it from the cache) as train_base.py does,
then copy its weights into models/pretrained/ and record them in the index with their command,
data fingerprint, test accuracy and SHA-256.

    python scripts/ship_base_model.py --model resnet20 \\
        --dataset imagefolder:../shared/data/cifar10/train --epochs 40 --batch-size 128 \\
        --lr 0.1 --augment --nesterov --label-smoothing 0.1
"""

from __future__ import annotations

import shlex
import sys

import common  # noqa: F401 (OpenMP waiting policy and sys.path, before torch)
from train_base import parse_args

from models.data import load_dataset
from models.errors import RlpruneError
from models.pretrained import ship
from models.training import TrainConfig, get_base_model, resolve_device, train_settings


def main(argv: list[str] | None = None) -> int:
    """Trains or fetches the base model, then ships it; exit status 2 with one line on errors."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        splits = load_dataset(
            args.dataset,
            data_dir=args.data_dir,
            download=args.download,
            seed=args.seed,
            max_samples=args.max_samples,
            image_size=args.image_size,
        )
        config = TrainConfig(
            epochs=args.epochs,
            lr=args.lr,
            optimizer=args.optimizer,
            batch_size=args.batch_size,
            seed=args.seed,
            augment=args.augment,
            label_smoothing=args.label_smoothing,
            nesterov=args.nesterov,
            progress=not args.no_progress,
        )
        model, info = get_base_model(
            args.model,
            splits,
            config=config,
            device=resolve_device(args.device),
            cache_dir=args.cache_dir,
            retrain=args.retrain,
            shipped_dir=None,  # never re-ship shipped weights
        )
        command = "python scripts/train_base.py " + shlex.join(argv)
        entry = ship(model.cpu(), args.model, splits, info, command, train_settings(config))
    except RlpruneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"shipped {args.model} on {splits.name}: test accuracy {entry['test_acc']:.4f} "
        f"-> models/pretrained/{entry['file']} (sha256 {entry['sha256'][:16]}...)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
