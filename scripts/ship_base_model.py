"""Ship a base model with rlprune: train it (or take it from the cache) as train_base.py does,
then copy its weights into models/pretrained/ (or ``--to DIR``) and record them in the index with
their command, data fingerprint, training settings, test accuracy and SHA-256.

    python scripts/ship_base_model.py --model resnet20 \\
        --dataset imagefolder:../shared/data/cifar10/train --epochs 40 --batch-size 128 \\
        --lr 0.1 --augment --nesterov --label-smoothing 0.1
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import common  # noqa: F401 (OpenMP waiting policy and sys.path, before torch)
from train_base import parse_args, train_from_args

from models.errors import RlpruneError
from models.pretrained import PRETRAINED_DIR, ship
from models.training import train_settings


def main(argv: list[str] | None = None) -> int:
    """Trains or fetches the base model, then ships it; exit status 2 with one line on errors."""
    argv = sys.argv[1:] if argv is None else argv
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--to", type=Path, default=PRETRAINED_DIR, help="shipped-weights folder")
    known, train_argv = where.parse_known_args(argv)
    args = parse_args(train_argv)
    try:
        model, info, splits, config = train_from_args(args, shipped_dir=None)  # never re-ship
        command = "python scripts/train_base.py " + shlex.join(train_argv)
        entry = ship(
            model.cpu(), args.model, splits, info, command, train_settings(config), known.to
        )
    except RlpruneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"shipped {args.model} on {splits.name}: test accuracy {entry['test_acc']:.4f} "
        f"-> {known.to / entry['file']} (sha256 {entry['sha256'][:16]}...)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
