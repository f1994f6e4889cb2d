"""Is a latency bridge as accurate as timing against the reference, and how much faster?

Builds the benchmark's env for a task at a target (bridge on, as searches run now, no store: every
reading is fresh), then for the uniform rule and N EagleEye-style strategies projected onto the
target by the estimate (``project_to_target``), in turn: the search meter's bridged reading, a
meter on the same reference and threshold without a bridge (the order of the two alternates), and
the reporting protocol (``compare_latency``: ``--passes`` full passes of >= 30 runs each, best
pass per model; the ratio of the two medians) as the yardstick. Prints each reading, the seconds
and interleaved pairs each meter spent, and both meters' errors against the yardstick.

    python docs/throughput/bridge_probe.py --task default --n 30
    python docs/throughput/bridge_probe.py --task cifar10-resnet20-gpu --n 20 --round-to 8
"""

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
import benchmark  # noqa: E402

from envs.baselines import project_to_target  # noqa: E402
from envs.latency import LatencyMeter, compare_latency, reporting_config  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="default")
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--n", type=int, default=30, help="random strategies besides the uniform rule")
    p.add_argument("--passes", type=int, default=3, help="passes of the yardstick")
    p.add_argument("--round-to", type=int, default=None)
    known, rest = p.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        args = benchmark.parse_args(["--output-dir", tmp, *rest])
        model, splits, _ = benchmark.load_task(known.task, args, ROOT)
        cfg = benchmark.latency_config(args)
        env = benchmark.make_env(
            model, splits, known.target, "latency", cfg, False, known.round_to, "absolute"
        )
    bridged = env.latency.meter
    assert bridged.bridge is not None, "the env set no bridge"
    direct = LatencyMeter(env.model, env.input_shape, bridged.config, threshold=bridged.threshold)
    rng = np.random.default_rng(0)
    strategies = [("uniform rule", env.rule("uniform")["strategy"])] + [
        (f"sampled {i}", project_to_target(env, 1.0 - rng.random(env.num_units)))
        for i in range(known.n)
    ]
    yard = reporting_config(bridged.config)
    rows, spent = [], {"bridged": [0.0, 0], "direct": [0.0, 0]}
    print(f"bridge: {bridged.bridge_ratio:.3f} of the reference\n")
    print("| strategy | bridged | direct | yardstick |\n|---|---|---|---|")
    for i, (name, strategy) in enumerate(strategies):
        pruned = env.pruner.apply(strategy)
        reading = {}
        order = [("bridged", bridged), ("direct", direct)]
        for label, meter in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            reading[label] = meter.relative_latency(pruned, fresh=True)[0]
            spent[label][0] += time.perf_counter() - t0
            spent[label][1] += len(meter.last_times[0])
        stats = compare_latency(
            {"ref": env.model, "cand": pruned}, env.input_shape, yard, known.passes
        )
        truth = stats["cand"].median_ms / stats["ref"].median_ms
        rows.append((reading["bridged"], reading["direct"], truth))
        print(f"| {name} | {reading['bridged']:.3f} | {reading['direct']:.3f} | {truth:.3f} |")
    print(
        f"\nbridge after the probe: {bridged.bridge_ratio:.3f} ({len(bridged._bridge_logs)} pairs)"
    )
    print("\n| meter | seconds | pairs | median abs log error vs yardstick | mean log error |")
    print("|---|---|---|---|---|")
    for j, label in enumerate(("bridged", "direct")):
        errors = [math.log(r[j] / r[2]) for r in rows]
        med = statistics.median(abs(e) for e in errors)
        seconds, pairs = spent[label]
        print(f"| {label} | {seconds:.1f} | {pairs} | {med:.3f} | {statistics.mean(errors):+.3f} |")


if __name__ == "__main__":
    main()
