"""Apply a trained rlprune agent to another network: zero-shot, or warm-starting a short search.

    python scripts/apply_agent.py --model resnet18          # the shipped agent, zero-shot
    python scripts/apply_agent.py --agent runs/RUN/agent.zip --model resnet20
    python scripts/apply_agent.py --agent runs/RUN/agent.zip --model mobilenet_v2 --episodes 50
    python scripts/apply_agent.py --agent runs/RUN/agent.zip --model my_pkg.nets:build \\
        --weights my_trained_weights.pt

The agent's observation is architecture-agnostic, so the same agent proposes a per-unit strategy
for a network it has never seen. Without ``--agent`` the agent shipped in agents/pretrained/
(trained across six architectures, see agents/pretrained/README.md) is used. Zero-shot plays a
few variants of the policy (its episode, its allocation fitted to the target and, with relative
actions, the policy shrunk towards the anchor rule: :func:`agents.transfer.zero_shot`) and keeps
the best by reward. The agent's strategies (zero-shot, and the warm start's) then go through the
final choice of a search (:func:`agents.finalize.select_final`): re-timed, uniform and global
magnitude pruning at the target among the candidates, the top ``--select-top-k`` re-scored after
``--select-steps`` fine-tune steps, a rule kept unless beaten by a standard error (zero-shot
scored below uniform on two of three unseen networks in docs/transfer.md). The run directory
gets the agent's strategy (``zero_shot_strategy.json``, ``best_strategy.json``), the final choice
(``selection.json``), the pruned model, a report that compares it with uniform pruning at the same
target, and TensorBoard logs of any search.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import common
import torch

from agents.ddpg import agent_env_settings, load_agent
from agents.finalize import (
    compare_with_uniform,
    make_recipe,
    save_deliverables,
    select_final,
    summary_table,
    write_report,
)
from agents.methods import SearchSettings, agent_search, best_record
from agents.pretrained import default_agent
from agents.transfer import prepare_warm_start, zero_shot
from agents.workload import build_workload, load_splits
from models.atomic import write_json_atomic
from models.data import list_datasets
from models.errors import CheckpointError, RlpruneError
from models.pretrained import file_sha256
from models.training import resolve_device
from models.zoo import list_models


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--agent",
        help="agent.zip of a train_agent.py run, or its run directory (default: the agent "
        "shipped in agents/pretrained/)",
    )
    common.add_data_args(p)
    common.add_weights_arg(p)
    common.add_env_args(p)
    g = p.add_argument_group("agent")
    g.add_argument(
        "--episodes", type=int, default=0, help="warm-start search episodes (0: zero-shot only)"
    )
    g.add_argument("--noise-sigma", type=float, default=0.25, help="warm-start exploration sigma")
    g.add_argument(
        "--revisit-boost",
        type=float,
        default=1.0,
        help="multiply the warm-start sigma by this after each episode that re-visits an "
        "architecture already evaluated, divide by it after each new one (1: off; as "
        "train_agent.py's)",
    )
    common.add_selection_args(g)
    common.add_output_args(p)
    return p.parse_args(argv)


def agent_file(path: str) -> Path:
    """The agent.zip at ``path``, or inside ``path`` when it is a run directory.

    Raises:
        CheckpointError: No agent file there.
    """
    agent = Path(path)
    if agent.is_dir():
        agent = agent / "agent.zip"
    if not agent.is_file():
        raise CheckpointError(
            f"no agent file at {agent}; pass the agent.zip of a train_agent.py run or its directory"
        )
    return agent


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_models or args.list_datasets:
        print("\n".join(list_models() if args.list_models else list_datasets()))
        return 0
    if args.agent:
        agent_path = agent_file(args.agent)
    else:
        agent_path, entry = default_agent()
        print(
            f"agent: the shipped {entry['name']} (trained on {','.join(entry['models'])} / "
            f"{entry['dataset']}, {entry['episodes']} episodes)"
        )
    settings = {k: v for k, v in vars(args).items() if not k.startswith("list_")}
    common.check_settings(settings)
    if args.episodes < 0:
        raise RlpruneError(f"--episodes must be >= 0 (0: zero-shot only), got {args.episodes}")
    if args.noise_sigma <= 0:
        raise RlpruneError(f"--noise-sigma must be > 0, got {args.noise_sigma}")
    if args.revisit_boost < 1:
        raise RlpruneError(f"--revisit-boost must be >= 1 (1: off), got {args.revisit_boost}")
    common.check_writable_dir(args.output_dir, "--output-dir")
    # observe what the agent was trained on and act the way it was trained
    settings["features"], settings["actions"] = agent_env_settings(
        agent_path, settings.get("features"), settings["actions"]
    )
    progress = not args.no_progress
    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    splits = load_splits(settings)
    work = build_workload(args.model, splits, settings, device, progress=progress)
    env = work.env
    agent = load_agent(agent_path, env)
    timings["base model + environment"] = time.perf_counter() - t0
    common.print_weights(work)
    print(
        f"{args.model} on {splits.name}: {env.num_units} prunable units, base accuracy "
        f"{env.base_accuracy:.4f}, latency {env.base_latency_ms:.3f} ms; target {args.target} "
        f"of {args.cost}"
    )
    print(f"  {env.latency.describe()}")
    name = f"apply_{args.model}_{args.dataset}_{args.cost}{args.target}_s{args.seed}"
    settings.update(work.weights)
    run_dir = common.claim_run_dir(args.output_dir, args.name or name, settings)

    t0 = time.perf_counter()
    best = {**zero_shot(agent, env, seed=args.seed), "episode": 0}
    timings["zero-shot episodes"] = time.perf_counter() - t0
    for label, c in best["candidates"].items():
        print(
            f"zero-shot ({label}): reward-split accuracy {c['accuracy']:.4f}, relative latency "
            f"{c['relative_latency']:.3f}, relative MACs {c['relative_macs']:.3f}"
            + (" (chosen)" if label == best["zero_shot"] else "")
        )
    write_json_atomic(run_dir / "zero_shot_strategy.json", best, default=str)
    if args.episodes > 0:
        t0 = time.perf_counter()
        prepare_warm_start(
            agent, noise_sigma=args.noise_sigma, seed=args.seed, revisit_boost=args.revisit_boost
        )
        search = SearchSettings(args.episodes, args.seed, run_dir=run_dir, progress=progress)
        extra = {"target": args.target, "cost": args.cost}
        found = agent_search(env, search, agent, hparams=settings, extra_best=extra)
        timings["warm-start search"] = time.perf_counter() - t0
        if found["reward"] > best["reward"]:
            best = best_record(found)
        print(f"warm-start: {found['episodes']} episodes, best reward {best['reward']:.4f}")
    write_json_atomic(run_dir / "best_strategy.json", best, default=str)
    # the agent's strategies (zero-shot, warm start) compete with the rules at the target, as
    # in a search's final choice: a transferred policy that scores below a rule does not ship
    t0 = time.perf_counter()
    best = select_final(env, best, splits, settings, run_dir)
    timings["final selection"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows = compare_with_uniform(
        env,
        best["strategy"],
        splits,
        fine_tune_epochs=args.fine_tune_epochs,
        seed=args.seed,
        progress=progress,
    )
    timings["fine-tune + evaluation"] = time.perf_counter() - t0
    recipe = make_recipe(
        args.model,
        splits,
        work.model,
        settings,
        agent=str(agent_path),
        agent_sha256=file_sha256(agent_path),
        **work.weights,
    )
    path = save_deliverables(run_dir, rows, best["strategy"], recipe)
    title = f"rlprune agent {agent_path} applied to {args.model} on {splits.name}"
    latency = env.latency.describe()
    report = write_report(run_dir, title, settings, rows, best, timings, latency=latency)
    print(
        f"{summary_table(rows)}\n  {latency}\n\nrun directory: {run_dir}\n  pruned model: {path}\n"
        f"  report: {report}"
    )
    return 0


if __name__ == "__main__":
    common.run_cli(main)
