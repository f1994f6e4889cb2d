"""Export a saved pruned model to TorchScript and/or ONNX, checking each file's outputs.

Each file is reloaded and run on a random batch; its outputs must match the PyTorch model's (see
``models.export`` for the tolerances and which ONNX runtime is used). Beside the files,
``<stem>.deploy.json`` says how to feed them: input name and shape, the preprocessing that turns
an image into an input (pixel scale, resize, per-channel mean and std:
``x[c] = (resize(image) / pixel_max - mean[c]) / std[c]``), output name and the class names.

    python scripts/export_model.py runs/vgg_small_mnist5k_latency0.5_s0/pruned_model.pt
    python scripts/export_model.py pruned.pt --format onnx --opset 17 --output-dir deploy/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import common
import torch

from envs.pruning import load_pruned
from models.atomic import write_json_atomic
from models.export import deployment_info, export_onnx, export_torchscript

FORMATS = {"torchscript": ("torchscript",), "onnx": ("onnx",), "both": ("torchscript", "onnx")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("pruned_model", type=Path, help="a .pt file written by save_pruned()")
    p.add_argument("--format", choices=list(FORMATS), default="both", help="what to write")
    p.add_argument(
        "--output-dir", type=Path, default=None, help="where to write (default: beside the input)"
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: torch's)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = args.output_dir or args.pruned_model.parent
    common.check_writable_dir(out_dir, "--output-dir")
    model, meta = load_pruned(args.pruned_model, "cpu")
    recipe = meta["recipe"]
    example = torch.zeros(1, *recipe["input_shape"])
    stem = args.pruned_model.stem
    files = {}
    for fmt in FORMATS[args.format]:
        if fmt == "torchscript":
            result = export_torchscript(model, example, out_dir / f"{stem}.ts")
        else:
            result = export_onnx(model, example, out_dir / f"{stem}.onnx", opset=args.opset)
        files[fmt] = result.path.name
        print(f"{fmt}: {result.describe()}")
    info = out_dir / f"{stem}.deploy.json"
    write_json_atomic(info, deployment_info(recipe, files))
    print(f"input preprocessing and class names: {info}")
    if recipe.get("preprocessing") is None:
        print(
            f"warning: {args.pruned_model} records no input normalisation (saved by an older "
            f"rlprune), so {info.name} lacks it; run scripts/evaluate.py on the model to see the "
            "dataset's, or prune it again",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    common.run_cli(main)
