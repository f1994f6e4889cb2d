"""Compare a saved pruned model with its original: accuracy, measured latency, MACs, params, size.

The pruned model is rebuilt from its file alone (``load_pruned``) and fed its dataset normalised
as its recipe records (the input shape, normalisation and class names are printed). The original
is the very base model it was pruned from: your ``--weights`` file (or the one the recipe
records, when a run was given ``--weights``), else found in the base-model cache by the weights
checksum its recipe records (``base_sha256``); when it is not there, evaluation stops with one
line saying so. Latency is timed with both models interleaved, best of several passes, so both
see the same load.

    python scripts/evaluate.py runs/vgg_small_mnist5k_latency0.5_s0/pruned_model.pt
    python scripts/evaluate.py pruned.pt --device cpu --threads 1 --latency-batch-size 1
    python scripts/evaluate.py pruned.pt --json eval.json --train-original --base-epochs 8
    python scripts/evaluate.py pruned.pt --weights my_trained.pt   # your original state_dict
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import common
import torch
from torch import nn

from agents.config import default
from agents.evaluation import time_together
from agents.finalize import state_dict_sha256
from envs.backends import check_backend
from envs.latency import LatencyConfig, LatencyStats
from envs.latency_table import device_name
from envs.pruning import count_cost
from models.atomic import write_json_atomic
from models.data import DataSplits, default_cache_dir
from models.errors import CheckpointError, RlpruneError
from models.training import TrainConfig, _cache_key, evaluate, get_base_model, resolve_device
from models.weights import load_weights
from models.zoo import build_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("pruned_model", type=Path, help="a .pt file written by save_pruned()")
    g = p.add_argument_group("data and original model")
    g.add_argument(
        "--dataset",
        default=None,
        help="dataset to evaluate on (default: the recipe's, e.g. digits)",
    )
    g.add_argument("--data-dir", default=None, help="where torchvision datasets live")
    g.add_argument("--download", action="store_true", help="download a missing dataset")
    g.add_argument(
        "--cache-dir", default=None, help="base-model cache (default $RLPRUNE_CACHE or ~/.cache)"
    )
    g.add_argument("--no-original", action="store_true", help="evaluate the pruned model only")
    g.add_argument(
        "--weights",
        type=Path,
        default=None,
        metavar="STATE_DICT.pt",
        help="the original: your trained state_dict the model was pruned from (unset: the "
        "file the recipe records if it is still there, else the base-model cache)",
    )
    g.add_argument(
        "--train-original",
        action="store_true",
        help="train the original model if it is not in the cache (with --base-epochs/--base-seed)",
    )
    g.add_argument(
        "--base-epochs",
        type=int,
        default=None,
        help="pick (or train) the cached original trained this many epochs (default: newest)",
    )
    g.add_argument(
        "--base-seed", type=int, default=None, help="pick (or train) the original of this seed"
    )
    g = p.add_argument_group("measurement")
    g.add_argument("--device", default=default("device"), help="auto, cpu, cuda or cuda:N")
    g.add_argument(
        "--latency-batch-size",
        type=int,
        default=default("latency_batch_size"),
        help="images per timed forward",
    )
    g.add_argument(
        "--threads", type=int, default=default("threads"), help="CPU threads while timing"
    )
    common.add_latency_backend_arg(g)
    g.add_argument("--passes", type=int, default=5, help="interleaved passes; the best is kept")
    g.add_argument(
        "--repeats",
        type=int,
        default=30,
        help="timed forwards per pass (at least 30, the protocol of every reported latency)",
    )
    g.add_argument("--warmup", type=int, default=3, help="untimed forwards per pass")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers to this file")
    return p.parse_args(argv)


def find_base_config(
    model_name: str,
    splits: DataSplits,
    cache_dir: str | None,
    epochs: int | None = None,
    seed: int | None = None,
) -> tuple[TrainConfig, Path] | None:
    """The training settings of a cached original of ``model_name`` on ``splits``, if any.

    Scans ``<cache>/base_models`` for checkpoints whose cache key is exactly the one
    :func:`get_base_model` computes for these splits and their stored settings, so
    :func:`get_base_model` with the returned config loads that file instead of training.
    Among several, those matching ``epochs`` / ``seed`` are kept, then the newest wins.
    """
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    found = []
    for path in (root / "base_models").glob("*.pt"):
        try:
            key = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["key"]
            config = TrainConfig(**key["config"], progress=False)
        except Exception:  # unreadable or foreign file: not a candidate
            continue
        wanted = (epochs is None or config.epochs == epochs) and (
            seed is None or config.seed == seed
        )
        if wanted and key == _cache_key(model_name, splits, config):
            found.append((path.stat().st_mtime, config, path))
    if not found:
        return None
    _, config, path = max(found, key=lambda item: item[0])
    return config, path


def file_bytes(model: nn.Module) -> int:
    """Size in bytes of ``model``'s state_dict saved with ``torch.save``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state_dict.pt"
        torch.save(model.state_dict(), path)
        return path.stat().st_size


def measure(
    model: nn.Module, splits: DataSplits, latency: LatencyStats, size: int, device: torch.device
) -> dict[str, float]:
    """The row of numbers reported for one model."""
    macs, params = count_cost(model, torch.zeros(1, *splits.input_shape, device=device))
    return {
        "test_acc": evaluate(model, splits.test, device),
        "latency_median_ms": latency.median_ms,
        "latency_p25_ms": latency.p25_ms,
        "latency_p75_ms": latency.p75_ms,
        "latency_spread": latency.spread,
        "macs": macs,
        "params": params,
        "file_bytes": size,
    }


def table(rows: dict[str, dict[str, float]], batch_size: int) -> str:
    """Side-by-side text table of the measured rows (original first when present)."""
    metrics = [
        ("test accuracy", lambda r: f"{100 * r['test_acc']:.2f}%", "test_acc"),
        (
            f"latency, batch {batch_size} (ms)",
            lambda r: f"{r['latency_median_ms']:.3f} +-{100 * r['latency_spread']:.0f}%",
            "latency_median_ms",
        ),
        ("MACs per image (M)", lambda r: f"{r['macs'] / 1e6:.3f}", "macs"),
        ("params (M)", lambda r: f"{r['params'] / 1e6:.4f}", "params"),
        ("file size (MB)", lambda r: f"{r['file_bytes'] / 2**20:.3f}", "file_bytes"),
    ]
    names = list(rows)
    header = ["", *names] + (["pruned / original"] if "original" in rows else [])
    lines = [header]
    for label, fmt, key in metrics:
        line = [label, *(fmt(rows[n]) for n in names)]
        if "original" in rows:
            base = rows["original"][key]
            line.append(f"{rows['pruned'][key] / base:.3f}" if base else "-")
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    ]
    return "\n".join(text)


def find_base_by_sha(
    model_name: str, splits: DataSplits, cache_dir: str | None, sha256: str
) -> tuple[nn.Module, Path] | None:
    """The cached base model of ``model_name`` whose weights have this checksum, if any."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    for path in sorted((root / "base_models").glob("*.pt")):
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if checkpoint["key"]["model"] != model_name:
                continue
            if state_dict_sha256(checkpoint["state_dict"]) != sha256:
                continue
            model = build_model(model_name, splits.input_shape, splits.num_classes)
            model.load_state_dict(checkpoint["state_dict"])
        except Exception:  # unreadable, foreign or mismatching file: not a candidate
            continue
        return model.eval(), path
    return None


def load_recorded_original(
    recipe: dict, splits: DataSplits, args: argparse.Namespace, device: torch.device
) -> nn.Module:
    """The very model the pruned one was pruned from (``recipe["base_sha256"]``).

    Raises:
        CheckpointError: It is not in the cache (nor trained again identically).
    """
    name, sha = recipe["model"], recipe["base_sha256"]
    found = find_base_by_sha(name, splits, args.cache_dir, sha)
    if found is None and args.train_original:
        defaults = TrainConfig()
        config = TrainConfig(
            epochs=args.base_epochs if args.base_epochs is not None else defaults.epochs,
            seed=args.base_seed if args.base_seed is not None else defaults.seed,
        )
        print(f"original: not in the cache; training {name} for {config.epochs} epochs")
        get_base_model(name, splits, config=config, device=device, cache_dir=args.cache_dir)
        found = find_base_by_sha(name, splits, args.cache_dir, sha)
    if found is None:
        raise CheckpointError(
            f"{args.pruned_model} was pruned from a {name} (weights sha256 {sha[:12]}) that is "
            f"not in {args.cache_dir or default_cache_dir()}; pass --weights with its state_dict, "
            "--cache-dir where it was trained, --train-original with its --base-epochs/"
            "--base-seed, or --no-original"
        )
    model, path = found
    print(f"original: {path} (weights sha256 {sha[:12]}, the model it was pruned from)")
    return model.to(device)


def load_weights_original(
    recipe: dict, splits: DataSplits, path: str | Path, pruned: Path, device: torch.device
) -> nn.Module:
    """The original from a user's state_dict file, checked to be the one ``pruned`` came from.

    Raises:
        CheckpointError: The file does not load into the recipe's model, or holds other weights
            than the recipe's ``base_sha256``.
    """
    loaded = load_weights(recipe["model"], splits.input_shape, splits.num_classes, path)
    sha = recipe.get("base_sha256")
    if sha and state_dict_sha256(loaded.model.state_dict()) != sha:
        raise CheckpointError(
            f"weights file {loaded.path} is not the {recipe['model']} {pruned} was pruned from "
            f"(that one's weights sha256 is {sha[:12]}); pass that file, or --no-original"
        )
    print(f"original: your weights {loaded.path} (file sha256 {loaded.sha256[:12]})")
    return loaded.model.to(device)


def describe_input(recipe: dict) -> str:
    """What the pruned model takes and returns, from its recipe (for the printout)."""
    shape = "x".join(map(str, recipe["input_shape"]))
    names = recipe.get("class_names")
    classes = f"{recipe['num_classes']} classes"
    if names:
        classes += f" ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})"
    pre = recipe.get("preprocessing")
    if not pre:
        return f"  input: {shape}; output: {classes}"
    resize = f"resized to {pre['resize']} ({pre['resize_method']}), " if pre["resize"] else ""
    return (
        f"  input: {shape}, {resize}pixels / {pre['pixel_max']:g}, then per channel mean "
        f"{[round(m, 4) for m in pre['mean']]} and std {[round(s, 4) for s in pre['std']]}; "
        f"output: {classes}"
    )


def load_original(
    model_name: str, splits: DataSplits, args: argparse.Namespace, device: torch.device
) -> nn.Module | None:
    """For a pruned model that does not record its base: the cached trained original (trained
    now with ``--train-original``), else None."""
    print(
        "original: the pruned model does not record which base model it came from (saved by "
        "an older rlprune); using a cached one, which may not be that one"
    )
    found = find_base_config(model_name, splits, args.cache_dir, args.base_epochs, args.base_seed)
    if found is not None:
        config, path = found
        print(f"original: cached base model {path} ({config.epochs} epochs, seed {config.seed})")
    elif args.train_original:
        defaults = TrainConfig()
        config = TrainConfig(
            epochs=args.base_epochs if args.base_epochs is not None else defaults.epochs,
            seed=args.base_seed if args.base_seed is not None else defaults.seed,
        )
        print(f"original: not in the cache; training {model_name} for {config.epochs} epochs")
    else:
        print(
            f"original: no cached base model of {model_name} on {splits.name} in "
            f"{args.cache_dir or default_cache_dir()}; showing the pruned model only (pass "
            "--train-original to train it, or --cache-dir where it was trained)"
        )
        return None
    model, _ = get_base_model(
        model_name, splits, config=config, device=device, cache_dir=args.cache_dir
    )
    return model


def check_args(args: argparse.Namespace) -> None:
    """Reject impossible measurement settings and an unwritable --json before any work."""
    for flag in ("latency_batch_size", "threads", "passes", "repeats"):
        value = getattr(args, flag)
        if value < 1:
            raise RlpruneError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.warmup < 0:
        raise RlpruneError(f"--warmup must be >= 0, got {args.warmup}")
    if args.json is not None:
        common.check_writable_file(args.json, "--json")
    check_backend(args.latency_backend)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_args(args)
    device = resolve_device(args.device)
    pruned, recipe, splits = common.load_pruned_with_data(
        args.pruned_model, args.dataset, args.data_dir, args.download, device
    )
    print(f"pruned model: {args.pruned_model} ({recipe['model']}, dataset {splits.name})")
    print(describe_input(recipe))
    if "fine_tuned_epochs" in recipe:
        print(f"  fine-tuned for {recipe['fine_tuned_epochs']} epoch(s)")

    nets = {}
    recorded_weights = recipe.get("weights")
    if not args.no_original:
        if args.weights is not None:
            original = load_weights_original(
                recipe, splits, args.weights, args.pruned_model, device
            )
        elif recorded_weights and Path(recorded_weights).is_file():
            original = load_weights_original(
                recipe, splits, recorded_weights, args.pruned_model, device
            )
        elif recipe.get("base_sha256"):
            original = load_recorded_original(recipe, splits, args, device)
        else:
            original = load_original(recipe["model"], splits, args, device)
        if original is not None:
            nets["original"] = original
    nets["pruned"] = pruned

    latency_cfg = LatencyConfig(
        batch_size=args.latency_batch_size,
        warmup=args.warmup,
        repeats=args.repeats,
        threads=args.threads,
        backend=args.latency_backend,
    )
    latency = time_together(
        nets, splits.input_shape, latency_cfg, passes=args.passes, device=device
    )
    repeats = latency["pruned"].n
    sizes = {"pruned": args.pruned_model.stat().st_size}
    if "original" in nets:
        sizes["original"] = file_bytes(nets["original"])
    rows = {n: measure(m, splits, latency[n], sizes[n], device) for n, m in nets.items()}
    print(table(rows, args.latency_batch_size))
    print(
        f"latency: median of {repeats} forwards, best of {args.passes} interleaved passes, "
        f"{args.latency_backend} on {device} ({device_name(str(device))}), {args.threads} "
        "thread(s); +- is the interquartile range / median"
    )
    if args.json:
        report = {
            "pruned_model": str(args.pruned_model),
            "model": recipe["model"],
            "dataset": splits.name,
            "device": str(device),
            "latency": {
                "batch_size": args.latency_batch_size,
                "threads": args.threads,
                "backend": args.latency_backend,
                "device_name": device_name(str(device)),
                "passes": args.passes,
                "repeats": repeats,
            },
            "input_shape": recipe["input_shape"],
            "class_names": recipe.get("class_names"),
            "preprocessing": recipe.get("preprocessing"),
            "pruned": rows["pruned"],
            "original": rows.get("original"),
        }
        write_json_atomic(args.json, report)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    common.run_cli(main)
