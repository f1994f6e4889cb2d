"""Where a search's time goes: ``train_agent.py`` run with its stages accounted.

Runs ``scripts/train_agent.py`` with the flags after ``--`` and prints the seconds of each stage
of every architecture the run evaluated (``ChannelPruningEnv.evaluate_strategy``: pruning, BN
recalibration, reward-split accuracy, latency timing), of the agent's gradient updates, how many
interleaved pairs each latency measurement took, and how stable the partner's latency is from one
measurement to the next: the reason every measurement times its partner again
(docs/throughput.md). The partner is the unpruned reference until the env sets its latency bridge
(``--latency-bridge``, on by default: a model of about the target's latency), the bridge after
that; ``-- --no-latency-bridge`` profiles the reference alone.

    python scripts/profile_search.py -- --episodes 150 --fine-tune-epochs 0 --no-progress
    python scripts/profile_search.py --json prof.json -- --model resnet20 --episodes 40 --warmup 20
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import common
import train_agent
from stable_baselines3.td3.td3 import TD3

from envs.latency import LatencyMeter
from envs.pruning_env import STAGE_TIMES, ChannelPruningEnv
from models.atomic import write_json_atomic

STAGE_NAMES = {
    "time_prune_s": "pruning + MACs",
    "time_bn_s": "BN recalibration",
    "time_eval_s": "reward-split accuracy",
    "time_latency_s": "latency timing",
}


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Everything after -- goes to train_agent.py (see its --help).",
    )
    p.add_argument("--json", default=None, help="also write the stages and every timing here")
    p.add_argument(
        "--window",
        type=int,
        default=10,
        help="measurements before each one whose reference median it is compared with",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        cut = argv.index("--")
        ours, theirs = argv[:cut], argv[cut + 1 :]
    else:
        ours, theirs = argv, []
    return p.parse_args(ours), theirs


class Recorder:
    """Accounts the stages of a run while :meth:`installed` is active."""

    def __init__(self) -> None:
        self.stages = dict.fromkeys(STAGE_TIMES, 0.0)
        self.evaluated = 0
        self.cached = 0
        self.agent_updates_s = 0.0
        self.timings: list[tuple[list[float], list[float]]] = []
        #: (first reading, second reading) of each architecture whose first relative latency
        #: was timed again (``PruningEnvConfig.retime_below``).
        self.retimed: list[tuple[float, float]] = []

    @contextlib.contextmanager
    def installed(self) -> Iterator[Recorder]:
        originals = (
            ChannelPruningEnv.evaluate_strategy,
            LatencyMeter.relative_latency,
            TD3.train,
        )
        evaluate, relative_latency, train = originals

        def evaluate_strategy(env: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
            result = evaluate(env, *args, **kwargs)
            if result.get("cached"):
                self.cached += 1
            else:
                self.evaluated += 1
                if result.get("latency_retimed_from") is not None:
                    self.retimed.append(
                        (result["latency_retimed_from"], result["relative_latency"])
                    )
                for stage in STAGE_TIMES:
                    self.stages[stage] += float(result.get(stage, 0.0))
            return result

        def timed(meter: Any, model: Any, **kwargs: Any) -> Any:
            before = meter.last_times
            out = relative_latency(meter, model, **kwargs)
            if meter.last_times is not before:  # a new measurement, not a cache hit
                self.timings.append(tuple(list(t) for t in meter.last_times))
            return out

        def updates(agent: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return train(agent, *args, **kwargs)
            finally:
                self.agent_updates_s += time.perf_counter() - start

        ChannelPruningEnv.evaluate_strategy = evaluate_strategy
        LatencyMeter.relative_latency = timed
        TD3.train = updates
        try:
            yield self
        finally:
            (
                ChannelPruningEnv.evaluate_strategy,
                LatencyMeter.relative_latency,
                TD3.train,
            ) = originals


def timing_summary(
    timings: Sequence[tuple[Sequence[float], Sequence[float]]], window: int = 10
) -> dict[str, float]:
    """Pairs per measurement and the reference's stability, from ``(candidate runs, reference
    runs)`` per measurement (the "reference" is each measurement's partner: the bridge once the
    env has set one, see the module doc).

    ``reference_drift_sd`` / ``reference_drift_median_abs``: over measurements after the first
    ``window``, the natural log of the measurement's reference median over the median of the
    previous ``window`` measurements' reference medians (0.04 is about 4%).
    ``reference_within_sd`` / ``pair_ratio_within_sd``: median over measurements of the standard
    deviation of log reference times, and of log candidate/reference ratios of the pairs.
    """
    if not timings:
        return {"measurements": 0}
    pairs = [len(ref) for _, ref in timings]
    longest = max(pairs)
    medians = [statistics.median(ref) for _, ref in timings]
    drift = [
        math.log(medians[i] / statistics.median(medians[i - window : i]))
        for i in range(window, len(medians))
    ]

    def sd(values: Sequence[float]) -> float:
        return statistics.pstdev(values) if len(values) > 1 else 0.0

    summary = {
        "measurements": len(timings),
        "pairs_mean": statistics.mean(pairs),
        "pairs_median": statistics.median(pairs),
        "pairs_max": longest,
        "share_of_pairs_in_longest": sum(p for p in pairs if p == longest) / sum(pairs),
        "reference_within_sd": statistics.median(
            sd([math.log(t) for t in ref]) for _, ref in timings
        ),
        "pair_ratio_within_sd": statistics.median(
            sd([math.log(c / r) for c, r in zip(cand, ref, strict=False)]) for cand, ref in timings
        ),
    }
    if drift:
        summary["reference_drift_sd"] = sd(drift)
        summary["reference_drift_median_abs"] = statistics.median(abs(d) for d in drift)
    return summary


def report(recorder: Recorder, wall_s: float, summary: dict[str, float]) -> str:
    total = sum(recorder.stages.values()) + recorder.agent_updates_s
    n = max(recorder.evaluated, 1)
    lines = [
        f"run: {wall_s:.1f} s; {recorder.evaluated} architectures evaluated, "
        f"{recorder.cached} answered from the env's cache",
        "",
        "| stage | seconds | share of the stages | ms per evaluated architecture |",
        "|---|---|---|---|",
    ]
    rows = [(STAGE_NAMES[s], recorder.stages[s]) for s in STAGE_TIMES]
    rows.append(("agent updates (SB3 train)", recorder.agent_updates_s))
    for name, seconds in rows:
        share = seconds / total if total else 0.0
        lines.append(f"| {name} | {seconds:.2f} | {share:.0%} | {1e3 * seconds / n:.0f} |")
    lines.append("")
    if summary["measurements"]:
        lines.append(
            f"latency: {summary['measurements']} measurements, pairs per measurement mean "
            f"{summary['pairs_mean']:.1f}, median {summary['pairs_median']:.0f}, max "
            f"{summary['pairs_max']} ({summary['share_of_pairs_in_longest']:.0%} of all pairs "
            "in measurements that took the max)"
        )
        lines.append(
            "noise within a measurement (sd of log): reference runs "
            f"{summary['reference_within_sd']:.3f}, "
            f"pair ratios {summary['pair_ratio_within_sd']:.3f}"
        )
        retimed = recorder.retimed
        if retimed:
            pairs = ", ".join(f"{a:.3f} -> {b:.3f}" for a, b in retimed[:8])
            more = f" (first 8 of {len(retimed)})" if len(retimed) > 8 else ""
            lines.append(
                f"re-timed (a first reading far below the calibration's typical value): "
                f"{len(retimed)} of {recorder.evaluated}: {pairs}{more}"
            )
        else:
            lines.append(f"re-timed: none of {recorder.evaluated}")
        if "reference_drift_sd" in summary:
            lines.append(
                "reference median vs the median of the previous measurements' (log): sd "
                f"{summary['reference_drift_sd']:.3f}, median |.| "
                f"{summary['reference_drift_median_abs']:.3f}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = parse_args(argv)
    recorder = Recorder()
    start = time.perf_counter()
    with recorder.installed():
        status = train_agent.main(rest)
    wall = time.perf_counter() - start
    summary = timing_summary(recorder.timings, args.window)
    print()
    print(report(recorder, wall, summary))
    if args.json:
        write_json_atomic(
            args.json,
            {
                "wall_s": wall,
                "stages_s": recorder.stages,
                "agent_updates_s": recorder.agent_updates_s,
                "evaluated": recorder.evaluated,
                "cached": recorder.cached,
                "retimed": recorder.retimed,
                "latency": summary,
                "timings_ms": [{"candidate": c, "reference": r} for c, r in recorder.timings],
            },
        )
    return status


if __name__ == "__main__":
    common.run_cli(main)
