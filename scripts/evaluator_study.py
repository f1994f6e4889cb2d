"""Which cheap accuracy signal ranks pruning strategies like their accuracy after fine-tuning?

Draws random strategies at a cost target (EagleEye-style whole-strategy sampling, plus uniform
pruning), scores each with every search signal, and with the "truth": test accuracy after an
annealed fine-tune, averaged over fine-tune seeds. Prints the Spearman rank correlation of each
signal with the truth, over all strategies and over the better half (by truth), and the cost of
each signal. Each strategy's scores are cached in ``--output`` as they finish, so an interrupted
study continues where it stopped.

Signals:
    bn           BN recalibration, accuracy on the reward split (``--reward-images``): the search's
                 signal today
    bn_full      BN recalibration, accuracy on the whole reward split
    reconstruct  AMC's least-squares reconstruction of input-pruned layers, then BN recalibration
    short_ft     BN recalibration, then ``--short-steps`` annealed SGD steps

    python scripts/evaluator_study.py --model vgg_small --dataset mnist5k --strategies 30
    python scripts/evaluator_study.py --model resnet20 \\
        --dataset imagefolder:../shared/data/cifar10/train --strategies 30
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import common  # noqa: F401 (OpenMP waiting policy and sys.path, before torch)
import numpy as np
import torch
from scipy.stats import spearmanr
from torch.utils.data import TensorDataset

from envs.baselines import estimated_cost, project_to_target, uniform_for_target
from envs.pruning import recalibrate_bn
from envs.pruning_env import ChannelPruningEnv, PruningEnvConfig
from envs.reconstruction import Reconstructor
from models.atomic import write_json_atomic
from models.data import load_dataset, stratified_subset
from models.errors import RlpruneError
from models.renamed import check_current_names
from models.training import TrainConfig, evaluate, fine_tune, get_base_model

SIGNALS = ("bn", "bn_full", "reconstruct", "short_ft")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--model", default="vgg_small")
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--weights", default=None, help="state_dict of the base model (else trained)")
    p.add_argument("--base-epochs", type=int, default=TrainConfig().epochs)
    p.add_argument("--target", type=float, default=0.5, help="relative MACs of every strategy")
    p.add_argument("--strategies", type=int, default=30, help="random strategies (+ uniform)")
    p.add_argument("--reward-images", type=int, default=1000, help="reward split of 'bn'")
    p.add_argument("--bn-batches", type=int, default=PruningEnvConfig().bn_batches)
    p.add_argument("--short-steps", type=int, default=100, help="SGD steps of 'short_ft'")
    p.add_argument("--ft-epochs", type=int, default=2, help="fine-tune epochs of the truth")
    p.add_argument("--ft-images", type=int, default=None, help="train images of the truth")
    p.add_argument("--ft-seeds", type=int, default=2, help="fine-tune seeds averaged")
    p.add_argument("--ft-lr", type=float, default=0.01)
    p.add_argument("--augment", action="store_true", help="augment the fine-tunes (CIFAR)")
    p.add_argument("--seed", type=int, default=0, help="seed of the strategies")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--output", default="runs/evaluator_study.json", help="cache and results")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except RlpruneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    splits = load_dataset(args.dataset)
    model, info = get_base_model(
        args.model,
        splits,
        config=TrainConfig(epochs=args.base_epochs, progress=False),
    )
    if args.weights:
        model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    base_test = evaluate(model, splits.test)
    reward_small = stratified_subset(splits.reward_val, args.reward_images, args.seed)
    config = PruningEnvConfig(cost="macs", target=args.target, bn_batches=args.bn_batches)
    env = ChannelPruningEnv(model, splits.train, reward_small, config)
    rng = np.random.default_rng(args.seed)
    strategies = {"uniform": uniform_for_target(env)["strategy"]}
    for i in range(args.strategies):
        strategies[f"random{i:02d}"] = project_to_target(env, 1.0 - rng.random(env.num_units))
    t0 = time.perf_counter()
    reconstructor = Reconstructor(model, splits.train, seed=args.seed)
    sample_s = time.perf_counter() - t0
    ft_set = stratified_subset(splits.train, args.ft_images, args.seed)
    short_set = stratified_subset(splits.train, args.short_steps * 64, args.seed + 1)

    cache = read_cache(out)
    scored = cache.get("rows", {})
    if _scored_like(cache.get("settings", vars(args))) != _scored_like(vars(args)):
        scored = {}  # other settings: start afresh
    # Strategy i is the same for any --strategies (one seeded generator), so a longer study
    # reuses a shorter one's rows and a shorter one reports on the first rows of a longer one.
    for name, strategy in strategies.items():
        if name in scored:
            continue
        scored[name] = score(
            args, env, strategy, splits, reward_small, short_set, ft_set, reconstructor
        )
        write_json_atomic(out, {"settings": vars(args), "rows": scored})
        row = scored[name]
        print(f"{name}: " + " ".join(f"{s} {row[s]:.4f}" for s in (*SIGNALS, "truth")), flush=True)
    rows = {name: scored[name] for name in strategies}

    print()
    print(report(args, rows, base_test, info, sample_s))
    return 0


def read_cache(path: Path) -> dict:
    """The study's earlier rows and settings (``--output``; empty when there is none).

    Raises:
        CheckpointError: The file was written by an older rlprune (a renamed key).
    """
    if not path.is_file():
        return {}
    cache = json.loads(path.read_text())
    check_current_names(cache, path, "delete it to score the strategies again")
    return cache


def score(
    args: argparse.Namespace,
    env: ChannelPruningEnv,
    strategy: dict[str, float],
    splits,
    reward_small: TensorDataset,
    short_set: TensorDataset,
    ft_set: TensorDataset,
    reconstructor: Reconstructor,
) -> dict:
    """Every signal of one strategy, the truth (per fine-tune seed and mean) and their seconds."""
    row: dict = {"relative_macs_estimate": estimated_cost(env, strategy), "seconds": {}}

    def bn_model() -> torch.nn.Module:
        pruned = env.pruner.apply(strategy)
        return recalibrate_bn(pruned, splits.train, num_batches=args.bn_batches)

    def reconstructed() -> float:
        pruned = env.pruner.apply(strategy)
        reconstructor.apply(pruned)
        recalibrate_bn(pruned, splits.train, num_batches=args.bn_batches)
        return evaluate(pruned, reward_small)

    def short() -> float:
        pruned = bn_model()
        fine_tune(pruned, short_set, 1, lr=args.ft_lr, progress=False, augment=args.augment)
        return evaluate(pruned, reward_small)

    def truth() -> list[float]:
        accuracies = []
        for seed in range(args.ft_seeds):
            pruned = bn_model()
            fine_tune(
                pruned,
                ft_set,
                args.ft_epochs,
                lr=args.ft_lr,
                seed=seed,
                progress=False,
                augment=args.augment,
            )
            accuracies.append(evaluate(pruned, splits.test))
        return accuracies

    signals = {
        "bn": lambda: evaluate(bn_model(), reward_small),
        "bn_full": lambda: evaluate(bn_model(), splits.reward_val),
        "reconstruct": reconstructed,
        "short_ft": short,
        "truth_seeds": truth,
    }
    for signal, fn in signals.items():
        t = time.perf_counter()
        row[signal] = fn()
        row["seconds"][signal] = time.perf_counter() - t
    row["truth"] = float(np.mean(row["truth_seeds"]))
    row["bn_test"] = evaluate(bn_model(), splits.test)
    return row


def _scored_like(settings: dict) -> dict:
    """The settings a strategy's scores depend on (not how many, where, or on how many threads)."""
    return {k: v for k, v in settings.items() if k not in ("strategies", "output", "threads")}


def report(
    args: argparse.Namespace, rows: dict, base_test: float, info: dict, sample_s: float
) -> str:
    """Markdown: settings, then one line per signal with its rank correlations and cost."""
    names = list(rows)
    truth = np.array([rows[n]["truth"] for n in names])
    better = truth >= np.median(truth)
    seed_rho = (
        spearmanr(
            [rows[n]["truth_seeds"][0] for n in names], [rows[n]["truth_seeds"][1] for n in names]
        )[0]
        if args.ft_seeds >= 2
        else float("nan")
    )
    lines = [
        f"{args.model} on {args.dataset} (base test accuracy {base_test:.4f}), {len(names)} "
        f"strategies at {args.target} of the MACs; truth = test accuracy after {args.ft_epochs} "
        f"annealed fine-tune epochs on {args.ft_images or 'all'} train images, mean of "
        f"{args.ft_seeds} seeds (seed-to-seed Spearman {seed_rho:.2f}); truth range "
        f"{truth.min():.4f}-{truth.max():.4f}",
        "",
        "| signal | Spearman (all) | Spearman (better half) | seconds per strategy |",
        "|---|---|---|---|",
    ]
    for signal in SIGNALS:
        values = np.array([rows[n][signal] for n in names])
        rho_all = spearmanr(values, truth)[0]
        rho_top = spearmanr(values[better], truth[better])[0]
        seconds = np.mean([rows[n]["seconds"][signal] for n in names])
        extra = f" (+{sample_s:.1f} s once)" if signal == "reconstruct" else ""
        lines.append(f"| {signal} | {rho_all:.2f} | {rho_top:.2f} | {seconds:.2f}{extra} |")
    uniform_rank = int((truth > rows["uniform"]["truth"]).sum()) + 1 if "uniform" in rows else None
    lines.append("")
    lines.append(f"uniform ranks {uniform_rank} of {len(names)} by truth")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
