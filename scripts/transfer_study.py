"""How well does a trained agent transfer? Zero-shot vs warm start vs from scratch vs uniform.

For each network: the agent's zero-shot strategy, a warm-started search of ``--episodes`` from
the agent, a from-scratch search with the same number of episodes, and uniform pruning, all at
the same target; every pruned model is BN-recalibrated, evaluated, fine-tuned the same way, and
timed interleaved with the others. Prints one Markdown table and writes it to ``--output-dir``.

    python scripts/transfer_study.py --agent runs/RUN/agent.zip \\
        --models mobilenet_v3_small,mnasnet0_5,squeezenet1_1 --episodes 30
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import common
import torch

from agents.ddpg import AgentConfig, load_agent, make_agent
from agents.finalize import compare_strategies
from agents.search import run_search
from agents.transfer import prepare_warm_start, rollout
from agents.workload import build_workload, load_splits
from envs.baselines import uniform_for_target
from models.errors import RlpruneError
from models.training import resolve_device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--agent", required=True, help="agent.zip of a train_agent.py run")
    p.add_argument("--models", required=True, help="comma-separated networks the agent never saw")
    common.add_data_args(p)
    common.add_env_args(p)
    p.add_argument("--episodes", type=int, default=30, help="episodes of warm start and scratch")
    common.add_output_args(p)
    return p.parse_args(argv)


def study(name: str, args: argparse.Namespace, splits, device, run_dir: Path) -> list[str]:
    """Table lines for one network."""
    settings = vars(args)
    work = build_workload(name, splits, settings, device, progress=not args.no_progress)
    env = work.env
    t0 = time.perf_counter()
    agent = load_agent(args.agent, env)
    strategies = {"zero-shot": rollout(agent, env, seed=args.seed)["strategy"]}
    prepare_warm_start(agent, seed=args.seed)
    warm = run_search(
        agent, run_dir / f"{name}_warm", args.episodes, max_units=env.num_units, progress=False
    )
    strategies["warm-start"] = warm.best["strategy"]
    scratch_cfg = AgentConfig(warmup_episodes=max(args.episodes // 3, 1), seed=args.seed)
    scratch = make_agent(env, scratch_cfg, num_units=env.num_units)
    result = run_search(
        scratch, run_dir / f"{name}_scratch", args.episodes, max_units=env.num_units, progress=False
    )
    strategies["scratch"] = result.best["strategy"]
    strategies["uniform"] = uniform_for_target(env)["strategy"]
    rows = compare_strategies(
        env,
        strategies,
        splits,
        fine_tune_epochs=args.fine_tune_epochs,
        seed=args.seed,
        progress=False,
    )
    base = rows[0]
    lines = []
    for row in rows[1:]:
        reward_acc = env.evaluate_strategy(strategies[row.name])["accuracy"]
        lines.append(
            f"| {name} | {env.num_units} | {row.name} | {reward_acc:.4f} | {row.test_acc:.4f} | "
            f"{row.test_acc_finetuned:.4f} | {row.latency_ms / base.latency_ms:.3f} | "
            f"{row.macs / base.macs:.3f} |"
        )
    print("\n".join(lines), flush=True)
    print(f"  ({name}: {time.perf_counter() - t0:.0f} s, original test acc {base.test_acc:.4f})")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    splits = load_splits(vars(args))
    run_dir = common.new_run_dir(args.output_dir, args.name or f"transfer_{args.dataset}")
    run_dir.mkdir(parents=True)
    header = [
        f"Agent {args.agent}, {splits.name}, target {args.target} of {args.cost}, "
        f"{args.episodes} episodes for warm start and scratch, {args.fine_tune_epochs} "
        "fine-tune epochs; latency and MACs are ratios to the original, timed interleaved.",
        "",
        "| network | units | method | reward acc (BN-recal.) | test acc (BN-recal.) | "
        "test acc (fine-tuned) | latency ratio | MACs ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(header), flush=True)
    lines = list(header)
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        try:
            lines += study(name, args, splits, device, run_dir)
        except RlpruneError as exc:  # one network's failure must not lose the others' rows
            lines.append(f"| {name} | - | not run: {exc} | | | | | |")
            print(lines[-1], flush=True)
        (run_dir / "transfer.md").write_text("\n".join(lines) + "\n")
    print(f"\nwritten: {run_dir / 'transfer.md'}")
    return 0


if __name__ == "__main__":
    common.run_cli(main)
