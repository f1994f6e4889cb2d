"""Train an AMC-style DDPG agent to prune a network for measured latency, then deliver the model.

With no arguments: trains (or reuses) the default base model (vgg_small on the offline mnist5k
dataset), searches per-unit pruning ratios for 50% of the original latency, exports the best
pruned model, fine-tunes it briefly and compares it with uniform pruning at the same target.
With ``--weights`` the network is yours: your trained state_dict for ``--model`` is the original
(evaluated on the test split, no base model trained) and the run records the file's sha256.

    python scripts/train_agent.py
    python scripts/train_agent.py --model resnet20 --target 0.6 --episodes 400
    python scripts/train_agent.py --model my_pkg.nets:build --weights mine.pt --dataset cifar10
    python scripts/train_agent.py --model vgg_small,resnet20   # one agent, episodes alternate
    python scripts/train_agent.py --envs 2                      # 2 episodes at a time
    python scripts/train_agent.py --envs 4 --ray-address local  # episodes on Ray actors
    python scripts/train_agent.py --resume runs/vgg_small_mnist5k_latency0.5_s0
    python scripts/train_agent.py --resume runs/vgg_small_mnist5k_latency0.5_s0 --episodes 500
    tensorboard --logdir runs
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import common
import torch

from agents.config import RunConfig, default, load_run_config
from agents.ddpg import WARMUP_MODES, AgentConfig, agent_config_dict, make_agent
from agents.finalize import (
    compare_with_uniform,
    make_recipe,
    save_deliverables,
    select_final,
    summary_table,
    write_report,
)
from agents.parallel import collect_results, make_vec_env, require_ray
from agents.search import read_search_state, resume, run_search
from agents.transfer import MultiModelEnv
from agents.workload import build_workload, load_splits
from models.data import list_datasets
from models.errors import CheckpointError, RlpruneError
from models.training import resolve_device
from models.zoo import list_models


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common.add_data_args(
        p, "network(s) to prune: zoo/torchvision names or module:callable, comma-separated"
    )
    common.add_weights_arg(p)
    common.add_env_args(p)
    common.add_parallel_args(p)
    g = p.add_argument_group("agent")
    g.add_argument(
        "--episodes",
        type=int,
        default=default("episodes"),
        help="search episodes, warm-up included; with --resume the new total",
    )
    g.add_argument(
        "--warmup", type=int, default=default("warmup"), help="episodes of random actions first"
    )
    g.add_argument(
        "--warmup-mode",
        choices=WARMUP_MODES,
        default=default("warmup_mode"),
        help="how the warm-up explores: 'actions' (AMC: uniform random actions, unit by unit) or "
        "'strategies' (whole random strategies projected onto the target, as EagleEye samples)",
    )
    g.add_argument(
        "--noise-sigma",
        type=float,
        default=default("noise_sigma"),
        help="exploration sigma after the warm-up, in pruning-ratio units (AMC: 0.5); it decays "
        "to 0.05 (or to itself, if smaller) by the last episode. With relative actions, "
        "--warmup 10 --noise-sigma 0.15 --exact-budget searches near the anchor rule "
        "(docs/benchmarks.md)",
    )
    g.add_argument(
        "--revisit-boost",
        type=float,
        default=default("revisit_boost"),
        help="after the warm-up, multiply the sigma by this after each episode that re-visits an "
        "architecture already evaluated and divide by it after each new one, so a collapsed "
        "policy widens its search instead of re-evaluating one strategy (capped at sigma 0.5; "
        "1: off, as AMC)",
    )
    common.add_selection_args(g)
    g.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue a saved search from its last checkpoint, with its settings",
    )
    common.add_output_args(p)
    return p.parse_args(argv)


#: Flags that --resume may change; every other setting is the run's config.json.
RESUME_FLAGS = {"--resume", "--episodes", "--no-progress", "--ray-address"}


def resume_settings(run_dir: Path, args: argparse.Namespace, given: set[str]) -> dict:
    """The flat settings of the run being resumed (its config.json, read back into a
    :class:`RunConfig` by :func:`load_run_config`); ``--episodes`` sets its new total.

    Raises:
        CheckpointError: ``run_dir`` is not a train_agent.py run directory.
        RlpruneError: A flag other than --episodes / --no-progress was given.
    """
    path = run_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"no config.json in {run_dir}; --resume takes a run directory made by train_agent.py"
        )
    changed = sorted(given - RESUME_FLAGS)
    if changed:
        raise RlpruneError(
            f"--resume continues the settings of {path}; only --episodes (the new total) and "
            f"--no-progress can change (and --ray-address, where episodes run), not "
            f"{', '.join(changed)}"
        )
    settings = load_run_config(path).to_settings()
    settings["no_progress"] = args.no_progress
    if "--episodes" in given:
        settings["episodes"] = args.episodes
    if "--ray-address" in given:
        settings["ray_address"] = args.ray_address
    return settings


def check_search_settings(settings: dict) -> None:
    """Reject impossible search settings before anything is built."""
    common.check_settings(settings)
    if settings["episodes"] < 1:
        raise RlpruneError(f"--episodes must be >= 1, got {settings['episodes']}")
    if not 0 <= settings["warmup"] < settings["episodes"]:
        raise RlpruneError(
            f"--warmup must be in [0, --episodes), got {settings['warmup']} for "
            f"{settings['episodes']} episodes: the agent would never act on what it learned"
        )
    if not settings.get("noise_sigma", 1.0) > 0:
        raise RlpruneError(f"--noise-sigma must be > 0, got {settings['noise_sigma']}")
    if not settings.get("revisit_boost", 1.0) >= 1:
        raise RlpruneError(
            f"--revisit-boost must be >= 1 (1: off), got {settings['revisit_boost']}"
        )
    if settings.get("envs", 1) > 1 and "," in settings["model"]:
        raise RlpruneError(
            f"--envs {settings['envs']} runs copies of one network's env, but --model names "
            f"{settings['model']}; search one model at a time in parallel"
        )
    if settings.get("ray_address"):
        require_ray("--ray-address")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_models or args.list_datasets:
        print("\n".join(list_models() if args.list_models else list_datasets()))
        return 0
    if args.resume:
        run_dir = Path(args.resume)
        settings = resume_settings(run_dir, args, common.explicit_flags(argv))
        check_search_settings(settings)
        common.lock_run_dir(run_dir)
    else:
        check_search_settings(vars(args))
        settings = RunConfig.from_settings(vars(args)).to_settings()
        common.check_writable_dir(args.output_dir, "--output-dir")
    progress = not settings["no_progress"]
    torch.manual_seed(settings["seed"])
    device = resolve_device(settings["device"])
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    splits = load_splits(settings)
    names = [m.strip() for m in settings["model"].split(",") if m.strip()]
    works = [build_workload(n, splits, settings, device, progress=progress) for n in names]
    timings["base model(s) + environment"] = time.perf_counter() - t0
    for w in works:
        common.print_weights(w)
        print(
            f"{w.model_name} on {splits.name}: {w.env.num_units} prunable units, base accuracy "
            f"(reward split) {w.env.base_accuracy:.4f}, latency {w.env.base_latency_ms:.3f} ms "
            f"(batch {settings['latency_batch_size']}, {device}); target {settings['target']} "
            f"of {settings['cost']}"
        )
        print(f"  {w.env.latency.describe()}")
    env = works[0].env if len(works) == 1 else MultiModelEnv([w.env for w in works])
    max_units = max(w.env.num_units for w in works)
    agent_cfg = AgentConfig(
        warmup_episodes=settings["warmup"],
        warmup_mode=settings["warmup_mode"],
        seed=settings["seed"],
        episodes=settings["episodes"],
        revisit_boost=settings.get("revisit_boost", AgentConfig.revisit_boost),
    ).with_sigma(settings["noise_sigma"])
    state = read_search_state(run_dir) if args.resume else None
    search_env = parallel_env(env, settings)
    try:
        if state is not None:
            agent, state = resume(run_dir, search_env)
            write_config(run_dir, settings)
            remaining = max(settings["episodes"] - state["episode"], 0)
            print(f"resuming {run_dir} at episode {state['episode']}, {remaining} to go")
        else:
            if args.resume:
                print(f"{run_dir} has no checkpoint (stopped before its search began): starting it")
                write_config(run_dir, settings)
            else:
                name = f"{args.model}_{args.dataset}_{args.cost}{args.target}_s{args.seed}"
                name = args.name or name.replace(",", "+")
                settings.update(works[0].weights)
                config = RunConfig.from_settings(settings).to_dict()
                run_dir = common.claim_run_dir(args.output_dir, name, config)
            agent = make_agent(search_env, agent_cfg, num_units=max_units)
            remaining = settings["episodes"]

        t0 = time.perf_counter()
        result = run_search(
            agent,
            run_dir,
            remaining,
            max_units=max_units,
            hparams={**settings, **agent_config_dict(agent_cfg)},
            extra_best={"target": settings["target"], "cost": settings["cost"]},
            resume_state=state,
            progress=progress,
            per_model=len(works) > 1,
        )
        if search_env is not env and not result.interrupted:  # the final selection reads
            collect_results(search_env, env)  # the workers' results in env
    finally:
        if search_env is not env:
            search_env.close()
    timings["search"] = time.perf_counter() - t0
    rate = result.episodes / max(result.seconds, 1e-9)
    print(f"search: {result.episodes} episodes in {result.seconds:.1f} s ({rate:.2f} episodes/s)")
    if result.interrupted:
        print(
            f"interrupted: agent, replay buffer and best strategy are saved in {run_dir}; "
            f"continue with: python scripts/train_agent.py --resume {run_dir}"
        )
        return 130

    for w in works:
        suffix = "" if len(works) == 1 else f"_{w.model_name}"
        best = result.bests.get(w.model_name)
        if best is None:
            raise RlpruneError(f"the search in {run_dir} finished no episode; raise --episodes")
        t0 = time.perf_counter()
        final = select_final(w.env, best, splits, settings, run_dir, suffix)
        timings[f"final selection ({w.model_name})"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = compare_with_uniform(
            w.env,
            final["strategy"],
            splits,
            fine_tune_epochs=settings["fine_tune_epochs"],
            seed=settings["seed"],
            progress=progress,
        )
        timings[f"fine-tune + evaluation ({w.model_name})"] = time.perf_counter() - t0
        recipe = make_recipe(w.model_name, splits, w.model, settings, **w.weights)
        path = save_deliverables(run_dir, rows, final["strategy"], recipe, suffix=suffix)
        title = f"rlprune search: {w.model_name} on {splits.name}"
        latency = w.env.latency.describe()
        report = write_report(
            run_dir, title, settings, rows, final, timings, suffix=suffix, latency=latency
        )
        print(f"\n{title}\n{summary_table(rows)}\n  {latency}\n  pruned model: {path}")
        print(f"  report: {report}")
    print(f"\nrun directory: {run_dir}\nTensorBoard: tensorboard --logdir {run_dir.parent}")
    return 0


def write_config(run_dir: Path, settings: dict) -> None:
    """``run_dir/config.json``: the run's settings as :meth:`RunConfig.to_dict` writes them."""
    config = RunConfig.from_settings(settings).to_dict()
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))


def parallel_env(env, settings: dict):
    """``env`` itself, or with --envs N / --ray-address the SB3 VecEnv of N copies of it
    stepping in parallel (:mod:`agents.parallel`)."""
    n_envs, address = settings.get("envs", 1), settings.get("ray_address")
    if n_envs == 1 and address is None:
        return env
    where = f"Ray actors ({address})" if address else "worker processes"
    print(f"search: {n_envs} envs in parallel on {where}, episodes in rounds of {n_envs}")
    return make_vec_env(env, n_envs, ray_address=address)


if __name__ == "__main__":
    common.run_cli(main)
