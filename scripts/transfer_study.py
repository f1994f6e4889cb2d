"""How well does a trained agent transfer? Zero-shot vs warm start vs from scratch vs random search.

For each network the agent never saw, at the same target: the agent's zero-shot strategy (the
best by reward of its deterministic episode, that strategy's allocation scaled to just meet the
target, and, with relative actions, the episode with its actions shrunk towards the anchor rule:
:func:`agents.transfer.zero_shot`; the row ``zero-shot (policy)`` is the policy's episode alone),
a warm-started search of ``--episodes`` (N) from the agent, from-scratch
searches of N and 3N episodes, EagleEye-style random search (``sampled``) of N episodes (and of R
episodes with ``--random-episodes R``, e.g. 300: the bar a zero-shot policy would ideally clear),
and uniform pruning. The stochastic methods run once per seed of ``--seeds``. Every strategy is BN-
recalibrated, evaluated (reward and test split), fine-tuned the same way and timed interleaved with
the original and the others (best of several passes). Writes ``transfer.md`` (means and spreads
over seeds) and ``transfer.json`` (every row) into the run directory.

    python scripts/transfer_study.py --models resnet18,mobilenet_v2,mnasnet0_5 \\
        --episodes 50 --seeds 0,1,2 --random-episodes 300

Without ``--agent`` the agent shipped in agents/pretrained/ is studied.

The env observes the features the agent was trained on (``--features`` is taken from the agent).
Searches report their best episode (no final re-scoring: the env's result cache is shared by the
methods of one network, so its top-k would mix them).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import common
import torch

from agents.ddpg import agent_env_settings, load_agent
from agents.evaluation import FineTuneConfig, compare_strategies
from agents.methods import SearchSettings, agent_search, run_method
from agents.pretrained import default_agent
from agents.transfer import prepare_warm_start, zero_shot
from agents.workload import build_workload, load_splits
from envs.baselines import uniform_for_target
from models.atomic import write_json_atomic, write_text_atomic
from models.errors import RlpruneError
from models.training import resolve_device

#: Methods in table order; those with a seed suffix run once per seed.
METHODS = (
    "zero-shot",
    "zero-shot (policy)",
    "warm-start N",
    "scratch N",
    "scratch 3N",
    "sampled N",
    "sampled R",
    "uniform",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--agent",
        help="agent.zip of a train_agent.py run (default: the agent shipped in agents/pretrained/)",
    )
    p.add_argument("--models", required=True, help="comma-separated networks the agent never saw")
    common.add_data_args(p)
    common.add_env_args(p)
    p.add_argument("--episodes", type=int, default=50, help="N: episodes of warm start etc.")
    p.add_argument("--seeds", default="0", help="seeds of the stochastic methods, e.g. 0,1,2")
    p.add_argument(
        "--random-episodes",
        type=int,
        default=0,
        help="R: also a random search (sampled) of R episodes per seed; 0: none",
    )
    p.add_argument(
        "--zero-shot-only",
        action="store_true",
        help="only the agent's zero-shot strategy and uniform (no searches; e.g. to compare "
        "agents trained on different observation features)",
    )
    common.add_output_args(p)
    return p.parse_args(argv)


def search_strategies(
    env, agent_path: str, episodes: int, seed: int, run_dir: Path, random_episodes: int = 0
) -> dict:
    """Strategy and policy seconds of every stochastic method for one seed."""
    t0 = time.perf_counter()
    agent = prepare_warm_start(load_agent(agent_path, env), seed=seed)
    warm = agent_search(
        env, SearchSettings(episodes, seed, run_dir=run_dir / f"warm_s{seed}"), agent
    )
    out = {"warm-start N": (warm["strategy"], time.perf_counter() - t0)}
    searches = [("scratch N", "agent", episodes), ("scratch 3N", "agent", 3 * episodes)]
    searches += [("sampled N", "sampled", episodes), ("sampled R", "sampled", random_episodes)]
    for label, method, n in searches:
        if n < 1:  # no --random-episodes
            continue
        t0 = time.perf_counter()
        logs = run_dir / f"{label.replace(' ', '_')}_s{seed}"  # the agent's run directory
        found = run_method(method, env, SearchSettings(n, seed, run_dir=logs))
        out[label] = (found["strategy"], time.perf_counter() - t0)
    return out


def study(name: str, args: argparse.Namespace, splits, device, run_dir: Path) -> list[dict]:
    """One row per (method, seed) for network ``name``."""
    settings = vars(args)
    work = build_workload(name, splits, settings, device, progress=not args.no_progress)
    env = work.env
    seeds = _seeds(args.seeds)
    t0 = time.perf_counter()
    agent = load_agent(args.agent, env)
    zero = zero_shot(agent, env, seed=seeds[0])
    policy = zero["candidates"]["policy"]
    strategies: dict[str, dict] = {"zero-shot": zero["strategy"]}
    seconds = {"zero-shot": time.perf_counter() - t0}
    strategies["zero-shot (policy)"] = policy["strategy"]
    strategies["uniform"] = uniform_for_target(env)["strategy"]
    labels = {k: (k, None) for k in strategies}
    for seed in [] if args.zero_shot_only else seeds:
        for method, (strategy, secs) in search_strategies(
            env, args.agent, args.episodes, seed, run_dir / name, args.random_episodes
        ).items():
            key = f"{method} s{seed}"
            strategies[key], seconds[key], labels[key] = strategy, secs, (method, seed)
    fine = FineTuneConfig(args.fine_tune_epochs, seed=seeds[0])
    rows = compare_strategies(env, strategies, splits, fine, reward_acc=True)
    base = rows[0]
    out = []
    for row in rows[1:]:
        method, seed = labels[row.name]
        out.append(
            {
                "network": name,
                "units": env.num_units,
                "method": method,
                "seed": seed,
                "reward_acc": row.reward_acc,
                "test_acc": row.test_acc,
                "test_acc_ft": row.test_acc_finetuned,
                "relative_latency": row.latency_ms / base.latency_ms,
                "relative_macs": row.macs / base.macs,
                "policy_s": seconds.get(row.name),
                "base_test_acc": base.test_acc,
                # which zero-shot candidate won (agents.transfer.zero_shot)
                "zero_shot_choice": zero["zero_shot"] if method == "zero-shot" else None,
            }
        )
    print(
        f"  ({name}: {time.perf_counter() - t0:.0f} s, original test acc {base.test_acc:.4f})",
        flush=True,
    )
    return out


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise RlpruneError(f"--seeds must be comma-separated integers, got '{text}'") from None
    if not seeds:
        raise RlpruneError("--seeds names no seed")
    return seeds


def _mean_sd(values: list[float | None]) -> str:
    if any(v is None for v in values):  # e.g. no fine-tuned accuracy with --fine-tune-epochs 0
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: one line per (network, method), mean ± sd over seeds."""
    lines = [
        "| network | units | method | seeds | reward acc (BN-recal.) | test acc (BN-recal.) | "
        "test acc (fine-tuned) | relative latency | relative MACs | policy s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for network in dict.fromkeys(r["network"] for r in rows):
        for method in METHODS:
            group = [r for r in rows if r["network"] == network and r["method"] == method]
            if not group:
                continue
            cols = [
                _mean_sd([r[k] for r in group])
                for k in (
                    "reward_acc",
                    "test_acc",
                    "test_acc_ft",
                    "relative_latency",
                    "relative_macs",
                )
            ]
            secs = [r["policy_s"] for r in group if r["policy_s"] is not None]
            policy = f"{statistics.mean(secs):.1f}" if secs else "-"
            choice = group[0].get("zero_shot_choice")
            label = f"{method} [chose: {choice}]" if choice else method
            lines.append(
                f"| {network} | {group[0]['units']} | {label} | {len(group)} | "
                + " | ".join(cols)
                + f" | {policy} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _seeds(args.seeds)
    if args.episodes < 1:
        raise RlpruneError(f"--episodes must be >= 1, got {args.episodes}")
    if args.random_episodes < 0:
        raise RlpruneError(f"--random-episodes must be >= 0, got {args.random_episodes}")
    if args.agent is None:
        path, entry = default_agent()
        args.agent = str(path)
        print(f"agent: the shipped {entry['name']} (trained on {','.join(entry['models'])})")
    # observe what the agent was trained on and act the way it was trained
    args.features, args.actions = agent_env_settings(args.agent, args.features, args.actions)
    torch.manual_seed(0)
    device = resolve_device(args.device)
    splits = load_splits(vars(args))
    run_dir = common.new_run_dir(args.output_dir, args.name or f"transfer_{args.dataset}")
    run_dir.mkdir(parents=True)
    header = [
        f"Agent {args.agent}, {splits.name}, target {args.target} of {args.cost}, N = "
        f"{args.episodes} episodes, R = {args.random_episodes} episodes (sampled R), seeds "
        f"{args.seeds}, {args.fine_tune_epochs} fine-tune "
        "epochs; latency and MACs are relative to the original, timed interleaved.",
        "",
    ]
    rows: list[dict] = []
    failures: list[str] = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        try:
            rows += study(name, args, splits, device, run_dir)
        except RlpruneError as exc:  # one network's failure must not lose the others' rows
            failures.append(f"- {name}: not run: {exc}")
            print(failures[-1], flush=True)
        write_json_atomic(run_dir / "transfer.json", {"settings": vars(args), "rows": rows})
        text = "\n".join(header + table(rows) + [""] + failures) + "\n"
        write_text_atomic(run_dir / "transfer.md", text)
    print(text + f"\nwritten: {run_dir / 'transfer.md'}")
    return 0


if __name__ == "__main__":
    common.run_cli(main)
