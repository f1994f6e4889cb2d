"""Clean vs augmented BN recalibration on the 17th session's benchmark strategies.

The env recalibrates BatchNorm on clean training images; the GPU-trained CIFAR models were trained
with crop + flip + Cutout 16. This re-scores every distinct delivered strategy of two s17
benchmarks (vgg_cifar 0.3, resnet20 0.45; reconstruction on, widths rounded to 8, 4 x 64
recalibration images as the env) with the recalibration images clean, crop + flipped, or crop +
flipped + Cutout 16, and prints reward-split (1,000) / test (5,000) accuracy next to the
benchmark's fine-tuned accuracy. No latency is timed.

    python docs/evaluator/s18_bn_augment_probe.py    # from the repository root; ~5 min
"""

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))
import benchmark  # noqa: E402 (after the path)
from scipy.stats import spearmanr  # noqa: E402 (after the path)

from envs.pruning_env import ChannelPruningEnv, PruningEnvConfig  # noqa: E402 (after the path)
from models.training import evaluate, random_crop_flip, random_cutout  # noqa: E402 (after the path)

args = argparse.Namespace(
    cifar10="auto", data_dir=None, reward_samples=1000, cache_dir=None, no_progress=True
)
out = {}
for task, target, res in [
    ("cifar10-vgg_cifar-gpu", 0.3, "s17_vgg_t03"),
    ("cifar10-resnet20-gpu", 0.45, "s17_resnet20g_t045_boost"),
]:
    model, splits, info = benchmark.load_task(task, args, REPO)
    rows = json.load(open(REPO / "docs/benchmarks" / res / "results.json"))["rows"]
    cfg = PruningEnvConfig(target=target, cost="macs", reconstruct=True, round_to=8)
    env = ChannelPruningEnv(model, splits.train, splits.reward_val, cfg, model_name=task)
    x, y = splits.train.tensors
    g = torch.Generator().manual_seed(0)
    variants = {
        "clean": splits.train,
        "cropflip": TensorDataset(random_crop_flip(x, generator=g), y),
    }
    g = torch.Generator().manual_seed(0)
    variants["cutout"] = TensorDataset(
        random_cutout(random_crop_flip(x, generator=g), 16, generator=g), y
    )
    print(task, "base test", evaluate(model, splits.test))
    for name, ds in variants.items():
        m = copy.deepcopy(model)
        from envs.pruning import recalibrate_bn

        recalibrate_bn(m, ds, num_batches=4, batch_size=64)
        print(
            f"  unpruned, BN recal {name}: reward {evaluate(m, splits.reward_val):.4f} "
            f"test {evaluate(m, splits.test):.4f}"
        )
    seen = {}
    for r in rows:
        key = json.dumps(r["strategy"], sort_keys=True)
        if key in seen:
            seen[key]["ft"] += [r["test_acc_ft"]] if r.get("test_acc_ft") is not None else []
            continue
        rec = {
            "method": r["method"],
            "seed": r["seed"],
            "bench_test_bn": r["test_acc"],
            "ft": [r["test_acc_ft"]] if r.get("test_acc_ft") is not None else [],
        }
        for name, ds in variants.items():
            env.train_set = ds
            p = env.prune(r["strategy"])
            rec[name] = (evaluate(p, splits.reward_val), evaluate(p, splits.test))
        seen[key] = rec
        print(
            f"  {rec['method']:24s} s{rec['seed']} bench {rec['bench_test_bn']:.3f} "
            + " ".join(f"{n} {rec[n][0]:.3f}/{rec[n][1]:.3f}" for n in variants)
            + f" ft {rec['ft']}",
            flush=True,
        )
    recs = [v for v in seen.values() if v["ft"]]
    ft = [sum(v["ft"]) / len(v["ft"]) for v in recs]
    for n in variants:
        reward = spearmanr([v[n][0] for v in recs], ft)[0]
        test = spearmanr([v[n][1] for v in recs], ft)[0]
        print(f"  spearman vs FT ({len(recs)} strategies) {n}: reward {reward:.2f} test {test:.2f}")
    out[task] = list(seen.values())
json.dump(out, open(REPO / "docs/evaluator/s18_bn_augment_probe.json", "w"), indent=1)
