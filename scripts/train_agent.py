"""Train an AMC-style DDPG agent to prune a network for measured latency, then deliver the model.

With no arguments: trains (or reuses) the default base model (vgg_small on the offline mnist5k
dataset), searches per-unit pruning ratios for 50% of the original latency, exports the best
pruned model, fine-tunes it briefly and compares it with uniform pruning at the same target.

    python scripts/train_agent.py
    python scripts/train_agent.py --model resnet20 --target 0.6 --episodes 400
    python scripts/train_agent.py --resume runs/vgg_small_mnist5k_latency0.5_s0
    tensorboard --logdir runs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

try:
    import envs  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from agents.ddpg import AgentConfig, agent_config_dict, load_agent, make_agent
from agents.finalize import compare_with_uniform, save_deliverables, summary_table, write_report
from agents.search import read_search_state, run_search
from agents.workload import build_workload, load_splits
from envs.rewards import REWARDS
from models.data import list_datasets
from models.errors import CheckpointError, RlpruneError
from models.training import resolve_device
from models.zoo import DEFAULT_MODEL, list_models


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("model and data")
    g.add_argument(
        "--model", default=DEFAULT_MODEL, help="zoo or torchvision name, or module:callable"
    )
    g.add_argument(
        "--dataset",
        default="mnist5k",
        help="mnist5k, digits, mnist, fashion-mnist, cifar10, imagefolder:PATH",
    )
    g.add_argument("--data-dir", default=None, help="where torchvision datasets live")
    g.add_argument(
        "--download", action="store_true", help="download a torchvision dataset if missing"
    )
    g.add_argument(
        "--max-samples", type=int, default=None, help="use a stratified subset of this many images"
    )
    g.add_argument(
        "--image-size", type=int, default=None, help="resize imagefolder images to this size"
    )
    g.add_argument(
        "--base-epochs",
        type=int,
        default=None,
        help="epochs to train the base model (default: TrainConfig's)",
    )
    g.add_argument(
        "--cache-dir",
        default=None,
        help="base-model cache (default $RLPRUNE_CACHE or ~/.cache/rlprune)",
    )
    g.add_argument("--list-models", action="store_true", help="print the model names and exit")
    g.add_argument("--list-datasets", action="store_true", help="print the dataset names and exit")

    g = p.add_argument_group("search")
    g.add_argument(
        "--target", type=float, default=0.5, help="target cost as a fraction of the original"
    )
    g.add_argument(
        "--cost", choices=("latency", "macs"), default="latency", help="what the target constrains"
    )
    g.add_argument("--reward", choices=sorted(REWARDS), default="acc", help="reward function")
    g.add_argument("--episodes", type=int, default=300, help="search episodes (warm-up included)")
    g.add_argument(
        "--warmup", type=int, default=100, help="episodes of random actions before learning"
    )
    g.add_argument("--min-ratio", type=float, default=0.0, help="smallest pruning ratio of a unit")
    g.add_argument("--max-ratio", type=float, default=0.8, help="largest pruning ratio of a unit")
    g.add_argument(
        "--round-to", type=int, default=None, help="keep channel counts multiples of this"
    )
    g.add_argument("--importance", choices=("l1", "l2"), default="l1", help="channel importance")
    g.add_argument(
        "--bn-batches", type=int, default=8, help="training batches for BN recalibration"
    )
    g.add_argument("--seed", type=int, default=0, help="seed of agent, base model and fine-tune")

    g = p.add_argument_group("latency")
    g.add_argument(
        "--device",
        default="auto",
        help="auto, cpu, cuda, cuda:N: where the network runs and is timed",
    )
    g.add_argument(
        "--latency-batch-size", type=int, default=16, help="batch size of the latency measurement"
    )
    g.add_argument("--latency-repeats", type=int, default=20, help="timed runs per measurement")
    g.add_argument(
        "--threads", type=int, default=None, help="CPU threads while timing (default: torch's)"
    )

    g = p.add_argument_group("output")
    g.add_argument(
        "--fine-tune-epochs", type=int, default=2, help="fine-tune epochs of the pruned models"
    )
    g.add_argument("--output-dir", default="runs", help="parent directory of run directories")
    g.add_argument(
        "--name", default=None, help="run name (default: model_dataset_costTARGET_sSEED)"
    )
    g.add_argument(
        "--resume", default=None, metavar="RUN_DIR", help="continue the search saved in RUN_DIR"
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def run_directory(args: argparse.Namespace) -> Path:
    """A new run directory (suffixed -2, -3... when the name is taken)."""
    name = args.name or f"{args.model}_{args.dataset}_{args.cost}{args.target}_s{args.seed}"
    name = name.replace(":", "-").replace("/", "-")
    base = Path(args.output_dir) / name
    path, i = base, 1
    while path.exists() and any(path.iterdir()):
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def load_resume_settings(run_dir: Path) -> dict:
    path = run_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"no config.json in {run_dir}; --resume takes a run directory of train_agent.py"
        )
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_models:
        print("\n".join(list_models()))
        return 0
    if args.list_datasets:
        print("\n".join(list_datasets()))
        return 0
    timings: dict[str, float] = {}
    if args.resume:
        run_dir = Path(args.resume)
        settings = load_resume_settings(run_dir)
        settings["no_progress"] = args.no_progress
    else:
        run_dir = run_directory(args)
        settings = {
            k: v
            for k, v in vars(args).items()
            if k not in ("resume", "list_models", "list_datasets")
        }
    progress = not settings["no_progress"]
    torch.manual_seed(settings["seed"])
    device = resolve_device(settings["device"])

    t0 = time.perf_counter()
    splits = load_splits(settings)
    work = build_workload(settings["model"], splits, settings, device, progress=progress)
    timings["base model (train or load) + env setup"] = time.perf_counter() - t0
    env = work.env
    print(
        f"{settings['model']} on {splits.name}: {env.num_units} prunable units, reward-split "
        f"accuracy {env.base_accuracy:.4f}, latency {env.base_latency_ms:.3f} ms "
        f"(batch {settings['latency_batch_size']}, {device}); "
        f"target {settings['target']} of {settings['cost']}"
    )

    agent_cfg = AgentConfig(warmup_episodes=settings["warmup"], seed=settings["seed"])
    run_dir.mkdir(parents=True, exist_ok=True)
    state = read_search_state(run_dir) if args.resume else None
    if state is not None:
        agent = load_agent(run_dir / "agent.zip", env)
        buffer = run_dir / "replay_buffer.pkl"
        if buffer.is_file():
            agent.load_replay_buffer(buffer)
        remaining = settings["episodes"] - state["episode"]
        print(f"resuming {run_dir} at episode {state['episode']}, {max(remaining, 0)} to go")
    else:
        (run_dir / "config.json").write_text(json.dumps(settings, indent=2))
        agent = make_agent(env, agent_cfg, num_units=env.num_units)
        remaining = settings["episodes"]

    t0 = time.perf_counter()
    result = run_search(
        agent,
        run_dir,
        max(remaining, 0),
        max_units=env.num_units,
        hparams={**settings, **agent_config_dict(agent_cfg)},
        extra_best={"target": settings["target"], "cost": settings["cost"]},
        resume_state=state,
        progress=progress,
    )
    timings["search"] = time.perf_counter() - t0
    if result.best is None:
        raise RlpruneError(f"the search in {run_dir} finished no episode; run more --episodes")
    eps = result.episodes / max(result.seconds, 1e-9)
    print(f"search: {result.episodes} episodes in {result.seconds:.1f} s ({eps:.2f} episodes/s)")
    if result.interrupted:
        print(
            f"interrupted: agent, replay buffer and best strategy saved in {run_dir}; "
            f"continue with --resume {run_dir}"
        )
        return 130

    t0 = time.perf_counter()
    rows = compare_with_uniform(
        env,
        result.best["strategy"],
        splits,
        fine_tune_epochs=settings["fine_tune_epochs"],
        seed=settings["seed"],
        progress=progress,
    )
    timings["fine-tune + evaluation"] = time.perf_counter() - t0
    recipe = {
        "model": settings["model"],
        "dataset": splits.name,
        "input_shape": list(splits.input_shape),
        "num_classes": splits.num_classes,
        "importance": settings["importance"],
        "round_to": settings["round_to"],
    }
    model_path = save_deliverables(run_dir, rows, result.best["strategy"], recipe)
    table = summary_table(rows)
    report = write_report(
        run_dir,
        f"rlprune search: {settings['model']} on {splits.name}",
        settings,
        rows,
        result.best,
        timings,
    )
    print(table)
    print(
        f"\nrun directory: {run_dir}\n  pruned model: {model_path}\n  report: {report}\n"
        f"  TensorBoard: tensorboard --logdir {run_dir.parent}"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RlpruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
