"""How well does the search's latency estimate place whole strategies? (session 14 probe)

Builds the benchmark's env for a task at a target (same latency settings and store as
``benchmark.py``), then for the uniform rule and N EagleEye-style strategies projected onto the
target by the estimate (``project_to_target``): the estimate (calibrated, as the wall sees it),
the profile's raw estimate, and the measured relative latency (``evaluate_strategy`` without
accuracy). Prints each, the per-strategy slope (measured saving / raw saving), and how a
least-squares fit of measured latency on each unit's raw saving (leave-one-out) would place them.

    python docs/benchmarks/s14_latency_model/probe.py --task cifar10-resnet20-gpu --n 24 \
        --output-dir runs/s14/bench_r20g_t05
"""

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
import benchmark  # noqa: E402

from envs.baselines import project_to_target  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--task", default="cifar10-resnet20-gpu")
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--n", type=int, default=24)
    p.add_argument("--output-dir", default="runs/s14/probe")
    known, rest = p.parse_known_args()
    args = benchmark.parse_args(
        ["--round-to", "8", "--reward-samples", "1000", "--output-dir", known.output_dir, *rest]
    )
    model, splits, _ = benchmark.load_task(known.task, args, ROOT)
    env = benchmark.make_env(
        model,
        splits,
        known.target,
        "latency",
        benchmark.latency_config(args),
        True,
        8,
        "absolute",
        Path(known.output_dir) / "latency",
        known.task,
    )
    env.reset()
    rng = np.random.default_rng(0)
    rows = []
    uniform = env.rule("uniform")["strategy"]
    cands = [("uniform rule", uniform)] + [
        (f"sampled {i}", project_to_target(env, 1.0 - rng.random(env.num_units)))
        for i in range(known.n)
    ]
    for name, strategy in cands:
        keep = env.pruner.keep_fractions(strategy)
        est, raw = env.cost.estimate(keep), env.cost.raw_estimate(keep)
        measured = env.evaluate_strategy(strategy, with_accuracy=False)["relative_latency"]
        rows.append((name, keep, est, raw, measured))
    print("| strategy | estimate | raw estimate | measured | slope |\n|---|---|---|---|---|")
    for name, _, est, raw, measured in rows:
        slope = (1 - measured) / (1 - raw)
        print(f"| {name} | {est:.3f} | {raw:.3f} | {measured:.3f} | {slope:.3f} |")
    measured = np.array([r[4] for r in rows])
    slopes = (1 - measured) / (1 - np.array([r[3] for r in rows]))
    spread = f"sd {measured.std():.3f}; slope sd {slopes.std():.3f}"
    print(f"\nmeasured: mean {measured.mean():.3f}, {spread}")
    # per-unit raw savings: x_i = raw saving when only unit i is pruned as in the strategy
    ones = [1.0] * env.num_units
    X = np.array(
        [
            [
                1.0 - env.cost.raw_estimate(ones[:i] + [k[i]] + ones[i + 1 :])
                for i in range(env.num_units)
            ]
            for _, k, *_ in rows
        ]
    )
    y = 1.0 - measured
    errs = []
    for j in range(len(rows)):  # leave-one-out ridge towards one global slope
        m = np.arange(len(rows)) != j
        lam = 1e-3
        w0 = np.median(slopes[m])
        A = X[m].T @ X[m] + lam * np.eye(X.shape[1])
        w = np.linalg.solve(A, X[m].T @ y[m] + lam * w0)
        errs.append((1 - X[j] @ w) - measured[j])
    glob = np.array(
        [
            (1 - np.median(np.delete(slopes, j)) * (1 - rows[j][3])) - measured[j]
            for j in range(len(rows))
        ]
    )
    print(
        f"leave-one-out error of the measured latency: one global slope (median) "
        f"mean {glob.mean():+.3f} sd {glob.std():.3f}; per-unit ridge mean {np.mean(errs):+.3f} "
        f"sd {np.std(errs):.3f}"
    )


if __name__ == "__main__":
    main()
