"""Fine-tune a saved pruned model on its training data and save it beside the input.

Reports test accuracy before and after; the result keeps the input's recipe, with
``fine_tuned_epochs`` counting every fine-tuning epoch so far, and loads with ``load_pruned``.

    python scripts/fine_tune.py runs/vgg_small_mnist5k_latency0.5_s0/pruned_model.pt --epochs 5
    python scripts/fine_tune.py pruned.pt --epochs 2 --lr 0.005 --output pruned_ft2.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import common

from agents.config import default
from agents.finalize import save_pruned_atomic
from models.errors import RlpruneError
from models.training import evaluate, fine_tune, resolve_device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("pruned_model", type=Path, help="a .pt file written by save_pruned()")
    p.add_argument("--epochs", type=int, required=True, help="passes over the train split")
    p.add_argument("--lr", type=float, default=0.01, help="peak SGD learning rate (cosine decay)")
    p.add_argument(
        "--dataset", default=None, help="dataset to train on (default: the recipe's, e.g. digits)"
    )
    p.add_argument("--data-dir", default=None, help="where torchvision datasets live")
    p.add_argument("--download", action="store_true", help="download a missing dataset")
    p.add_argument(
        "--output", type=Path, default=None, help="where to save (default: <input stem>_ft.pt)"
    )
    p.add_argument(
        "--seed", type=int, default=default("seed"), help="fine-tune seed (the batch order)"
    )
    p.add_argument("--device", default=default("device"), help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.epochs < 1:
        raise RlpruneError(f"--epochs must be >= 1, got {args.epochs}")
    if args.lr <= 0:
        raise RlpruneError(f"--lr must be > 0, got {args.lr}")
    output = args.output or args.pruned_model.with_name(f"{args.pruned_model.stem}_ft.pt")
    if output.suffix != ".pt":
        raise RlpruneError(f"--output {output} must end in .pt (its recipe goes beside, as .json)")
    common.check_writable_file(output, "--output")
    common.check_writable_file(output.with_suffix(".json"), "--output")
    device = resolve_device(args.device)
    model, recipe, splits = common.load_pruned_with_data(
        args.pruned_model, args.dataset, args.data_dir, args.download, device
    )

    before = evaluate(model, splits.test, device)
    print(f"{args.pruned_model} ({recipe['model']}, {splits.name}): test accuracy {before:.4f}")
    history = fine_tune(
        model,
        splits.train,
        args.epochs,
        lr=args.lr,
        device=device,
        seed=args.seed,
        progress=not args.no_progress,
        eval_set=splits.reward_val,
    )
    after = evaluate(model, splits.test, device)
    for record in history:
        print(
            f"  epoch {record['epoch']}: loss {record['loss']:.4f}, "
            f"reward-split accuracy {record['eval_acc']:.4f}"
        )
    print(f"after {args.epochs} epoch(s): test accuracy {after:.4f} ({after - before:+.4f})")
    epochs_so_far = int(recipe.get("fine_tuned_epochs", 0)) + args.epochs
    save_pruned_atomic(model, output, {**recipe, "fine_tuned_epochs": epochs_so_far})
    print(f"saved {output} (and {output.with_suffix('.json')})")
    return 0


if __name__ == "__main__":
    common.run_cli(main)
