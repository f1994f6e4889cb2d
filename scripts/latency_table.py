"""Measure a network's per-layer latency table on this machine, for a search that runs elsewhere.

Run it where the pruned model will be deployed, with the runtime, threads and batch size it will
use there; copy the file to the machine that runs the search and pass it with
``--latency-table FILE`` (the search then takes every episode's latency from the table instead
of timing it). Latency does not depend on the weights, so the network is built untrained from
``--model`` and the dataset's input shape and class count: nothing is trained here.

Besides each layer's time, a few uniformly pruned copies (``--calibration-pruning-ratios``) are
timed against the original, so that the table's linear per-layer estimate is mapped onto measured
relative latencies (see envs/latency_table.py); prune them with the ``--round-to`` the search will
use (ONNX Runtime's blocked convolutions want channel multiples of 8: docs/latency_backends.md).

    python scripts/latency_table.py --model vgg_small --output vgg_small_ort.json \\
        --latency-backend onnxruntime --threads 4 --latency-batch-size 1
"""

from __future__ import annotations

import argparse

import common
import torch

from agents.config import default
from agents.workload import load_splits
from envs.latency import LatencyConfig
from envs.latency_table import calibrate_table, measure_table, save_table
from envs.pruning import Pruner
from models.errors import RlpruneError
from models.training import resolve_device
from models.zoo import DEFAULT_MODEL, build_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--output", required=True, help="the table file to write (JSON)")
    g = p.add_argument_group("network")
    g.add_argument("--model", default=DEFAULT_MODEL, help="zoo or torchvision name, or module:fn")
    g.add_argument("--dataset", default="mnist5k", help="gives the input shape and class count")
    g.add_argument("--data-dir", default=None, help="where torchvision datasets are stored")
    g.add_argument("--download", action="store_true", help="download a torchvision dataset")
    g.add_argument("--image-size", type=int, default=None, help="resize imagefolder images")
    g = p.add_argument_group("latency (as the search will be given them)")
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    g.add_argument(
        "--latency-batch-size", type=int, default=default("latency_batch_size"), help="batch size"
    )
    g.add_argument("--threads", type=int, default=default("threads"), help="threads while timing")
    common.add_latency_backend_arg(g)
    g.add_argument("--latency-repeats", type=int, default=50, help="timed runs per measurement")
    g.add_argument(
        "--round-to",
        type=int,
        default=None,
        help="channel multiple of the calibration copies: the --round-to the search will use",
    )
    g.add_argument(
        "--calibration-pruning-ratios",
        default="0.2,0.4,0.6,0.8",
        help="uniform pruning ratios timed against the original ('' for none)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.check_settings(vars(args))  # positive numbers, the backend's packages installed
    pruning_ratios = [float(r) for r in args.calibration_pruning_ratios.split(",") if r.strip()]
    if any(not 0 < r < 1 for r in pruning_ratios):
        raise RlpruneError(
            f"--calibration-pruning-ratios must be in (0, 1), got {args.calibration_pruning_ratios}"
        )
    common.check_writable_file(args.output, "--output")
    device = resolve_device(args.device)
    settings = {**vars(args), "max_samples": None, "data_seed": default("data_seed")}
    splits = load_splits(settings)
    torch.manual_seed(0)
    model = build_model(args.model, splits.input_shape, splits.num_classes).to(device).eval()
    example = torch.zeros(1, *splits.input_shape, device=device)
    pruner = Pruner(model, example, round_to=args.round_to)
    config = LatencyConfig(
        device=str(device),
        batch_size=args.latency_batch_size,
        repeats=args.latency_repeats,
        threads=args.threads,
        backend=args.latency_backend,
    )
    names = [c.name for c in pruner.layer_costs]
    table = measure_table(model, splits.input_shape, names, config, args.model)
    uniform = [pruner.apply({u.name: r for u in pruner.units}) for r in pruning_ratios]
    table = calibrate_table(table, model, uniform, config)
    path = save_table(table, args.output)
    print(
        f"{args.model} on {splits.name}: {len(names)} layers, {table.latency_ms:.3f} ms per batch"
    )
    print(f"  {table.describe()}")
    for estimate, measured in table.calibration:
        print(
            f"  uniformly pruned: linear estimate {estimate:.3f}, "
            f"measured relative latency {measured:.3f}"
        )
    print(f"wrote {path}; search with: python scripts/train_agent.py --latency-table {path} ...")
    return 0


if __name__ == "__main__":
    common.run_cli(main)
