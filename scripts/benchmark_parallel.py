"""Measure the search's episodes per second against the number of parallel envs (--envs).

For each task and each N, a fresh env runs a DDPG search of --episodes episodes on N envs (N = 1:
the serial search itself; else agents/parallel.py's worker processes, or Ray actors with
--ray-address). Reported per run: episodes/s of the search (env construction and worker start-up
excluded, shown apart), the parallel efficiency (rate / (N x rate at N = 1)) and the best
episode's reward, accuracy and relative latency. Written to OUTPUT_DIR/results.json and results.md.

    python scripts/benchmark_parallel.py               # default and cifar10-resnet20, N = 1, 2
    python scripts/benchmark_parallel.py --envs 1,2,4,8,16 --episodes 64
    python scripts/benchmark_parallel.py --envs 1,2 --ray-address local
    python scripts/benchmark_parallel.py --tasks tiny --envs 1,2 --episodes 4 --warmup 2  # seconds

Timings are only meaningful on a machine with nothing else running.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import common
from benchmark import TASKS, check_choices, csv_list, load_task, make_env

from agents.ddpg import AgentConfig, make_agent
from agents.parallel import make_vec_env, require_ray
from agents.search import run_search
from envs.latency import LatencyConfig
from models.atomic import write_json_atomic, write_text_atomic
from models.errors import RlpruneError

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--tasks", default="default,cifar10-resnet20", help=f"of {', '.join(TASKS)}")
    p.add_argument("--envs", default="1,2", help="numbers of parallel envs to measure")
    p.add_argument("--ray-address", default=None, help="run N > 1 on Ray actors ('local': here)")
    p.add_argument("--episodes", type=int, default=40, help="episodes per search")
    p.add_argument("--warmup", type=int, default=None, help="random episodes (default: half)")
    p.add_argument("--target", type=float, default=0.5, help="latency target")
    p.add_argument("--seed", type=int, default=0, help="agent seed (the same for every N)")
    p.add_argument("--cifar10", default="auto", help="CIFAR-10 source (see benchmark.py)")
    p.add_argument("--data-dir", default=None, help="where torchvision datasets are stored")
    p.add_argument("--cache-dir", default=None, help="base-model cache")
    p.add_argument("--reward-samples", type=int, default=None, help="reward split subset")
    p.add_argument("--threads", type=int, default=1, help="CPU threads while timing")
    p.add_argument("--latency-batch-size", type=int, default=16)
    p.add_argument("--latency-repeats", type=int, default=20, help="timed runs per measurement")
    p.add_argument("--output-dir", default="runs/benchmark_parallel")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> tuple[list[str], list[int]]:
    """The tasks and numbers of envs, checked; one-line errors for impossible settings."""
    tasks, counts = csv_list(args.tasks), csv_list(args.envs, int)
    check_choices(tasks, list(TASKS), "task")
    if not counts or min(counts) < 1:
        raise RlpruneError(f"--envs takes numbers >= 1, e.g. 1,2,4; got '{args.envs}'")
    if args.episodes < 1:
        raise RlpruneError(f"--episodes must be >= 1, got {args.episodes}")
    if args.warmup is not None and not 0 <= args.warmup < args.episodes:
        raise RlpruneError(f"--warmup must be in [0, --episodes), got {args.warmup}")
    if args.ray_address:
        require_ray("--ray-address")
    common.check_writable_dir(args.output_dir, "--output-dir")
    return tasks, counts


def measure(env: Any, n_envs: int, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """One search on ``n_envs`` copies of ``env``: its rate and best episode."""
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    parallel = n_envs > 1 or args.ray_address is not None
    search_env = make_vec_env(env, n_envs, ray_address=args.ray_address) if parallel else env
    try:
        warmup = args.episodes // 2 if args.warmup is None else args.warmup
        config = AgentConfig(warmup_episodes=warmup, seed=args.seed, episodes=args.episodes)
        agent = make_agent(search_env, config, num_units=env.num_units)
        startup = time.perf_counter() - start
        result = run_search(
            agent,
            run_dir,
            args.episodes,
            max_units=env.num_units,
            checkpoint_every=args.episodes,
            figure_every=args.episodes,
            progress=not args.no_progress,
        )
    finally:
        if parallel:
            search_env.close()
    best = result.best or {}
    return {
        "envs": n_envs,
        "episodes": result.episodes,
        "search_s": result.seconds,
        "startup_s": startup,
        "episodes_per_s": result.episodes / max(result.seconds, 1e-9),
        **{k: best.get(k) for k in ("reward", "accuracy", "relative_latency", "relative_macs")},
    }


def efficiency(rows: list[dict[str, Any]]) -> None:
    """Add each row's parallel efficiency: its rate over N times the task's rate at N = 1."""
    for row in rows:
        serial = next((r for r in rows if r["task"] == row["task"] and r["envs"] == 1), None)
        row["efficiency"] = (
            None
            if serial is None
            else row["episodes_per_s"] / (row["envs"] * serial["episodes_per_s"])
        )


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table, one line per task and number of envs."""
    head = (
        "| task | envs | episodes | search s | start-up s | episodes/s | efficiency "
        "| best reward | accuracy | relative latency |\n" + "|---" * 10 + "|"
    )

    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['envs']} | {r['episodes']} | {r['search_s']:.1f} "
            f"| {r['startup_s']:.1f} | {r['episodes_per_s']:.3f} | {fmt(r['efficiency'], '.0%')} "
            f"| {fmt(r['reward'], '.4f')} | {fmt(r['accuracy'], '.4f')} "
            f"| {fmt(r['relative_latency'], '.3f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tasks, counts = check_args(args)
    out = Path(args.output_dir)
    latency = LatencyConfig(
        batch_size=args.latency_batch_size, repeats=args.latency_repeats, threads=args.threads
    )
    rows: list[dict[str, Any]] = []
    for name in tasks:
        model, splits, _ = load_task(name, args, ROOT)
        for n_envs in counts:
            env = make_env(model, splits, args.target, "latency", latency)  # fresh cache each run
            row = {"task": name, **measure(env, n_envs, args, out / "runs" / f"{name}_n{n_envs}")}
            rows.append(row)
            print(f"{name}, {n_envs} env(s): {row['episodes_per_s']:.3f} episodes/s")
    efficiency(rows)
    text = table(rows)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    settings = {k: v for k, v in vars(args).items() if k != "no_progress"}
    write_json_atomic(
        out / "results.json", {"machine": machine, "settings": settings, "rows": rows}
    )
    write_text_atomic(
        out / "results.md",
        f"# Parallel episodes\n\nMachine: {machine}. Settings: {settings}.\n\n{text}\n",
    )
    print(f"\n{text}\n\nwritten: {out / 'results.json'}, {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    common.run_cli(main)
