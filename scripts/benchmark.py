"""Benchmark the learned pruning policy against simple rules, at equal measured latency.

For every task (base model + dataset), latency target and seed, the methods prune the same trained
model: ``uniform`` (one pruning ratio everywhere), ``global`` (one global magnitude threshold),
``random`` (per-unit random actions through the env's action wall), ``sampled`` (EagleEye's random
search: whole random strategies projected onto the target), ``tpe`` (Optuna TPE over the same
projection), ``agent`` (DDPG, latency reward), ``agent_relative`` (the same with actions relative to
the anchor rule, :mod:`envs.actions`), ``agent_local`` (relative actions, a short warm-up and a
small exploration sigma: a local search around the anchor rule), ``agent_macs`` (DDPG, AMC's MACs
proxy, same numeric target), ``agent_strategies`` / ``agent_relative_strategies`` (a warm-up of
whole strategies drawn as ``sampled`` draws them), and the budget-exact ``sampled_exact``,
``tpe_exact``, ``agent_relative_exact`` and ``agent_local_exact`` (every candidate rescaled onto the
measured budget, as the rules are bisected), ``agent_local_exact_boost`` (the last with an
exploration sigma that widens while the policy re-visits evaluated architectures), the searches with
the same number of episodes. Every search ends with the same selection protocol
(:mod:`agents.selection`: its top ``--select-top-k`` architectures re-scored by BN recalibration +
``--select-steps`` fine-tune steps on the images of the reward split that ``--reward-samples`` held
out from the searches, or on the whole reward split without it). Each result is BN-recalibrated,
evaluated (reward and test split), fine-tuned with the same settings (annealed to zero) and
evaluated again; all models of one task and target are then timed together, interleaved, best of
several passes. Every finished cell (task, target, method, seed) is cached in
``--output-dir``/cells, so an interrupted benchmark continues where it stopped. The searches'
latency measurements are kept in ``--output-dir``/latency, one file per task, target and timing
setting, shared by every method and seed: an architecture timed once has one relative latency in
every env, so a rule lands on the same strategy in all of them (delete the folder to time afresh,
e.g. on another machine load). An architecture already fine-tuned in ``--output-dir`` with the same
recipe and seed (``--output-dir``/fine_tuned: e.g. a search that delivered the uniform rule) takes
that fine-tune's accuracy instead of being fine-tuned again; its cell names the cell it came from
(``fine_tune_reused_from``). A cached cell of a seed that a larger ``--fine-tune-seeds`` adds is
fine-tuned from its cached strategy; its search is not repeated. Writes ``results.md`` (tables),
``results.json`` and PNG plots into ``--output-dir``.

    python scripts/benchmark.py --quick                  # mnist5k, vgg_small, target 0.5: minutes
    python scripts/benchmark.py                          # everything: hours on 2 CPU cores
    python scripts/benchmark.py --reduced                # CIFAR-10 resnet20 (GPU-trained), one seed
    python scripts/benchmark.py --throughput-only        # search cost vs units and reward split
    python scripts/benchmark.py --quick --latency-backend onnxruntime \
        --latency-backends torch,torchscript,onnxruntime  # searched in ORT, timed in all three

``--latency-backend`` is the runtime every search times its candidates in and the final timing
uses; ``--latency-backends`` also times every result in each of these runtimes (the cross-backend
table of ``results.md``: does the strategy found for one runtime run fastest there?).

CIFAR-10 tasks read ``imagefolder:../shared/data/cifar10/train`` when that folder exists,
otherwise torchvision's ``cifar10`` under ``--data-dir`` (``--cifar10`` overrides both).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import common
import matplotlib
import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from agents.config import default  # noqa: E402
from agents.evaluation import FineTuneConfig, ModelRow, score_strategy, time_together  # noqa: E402
from agents.methods import RULES, SEARCH_METHODS, SearchSettings, run_method  # noqa: E402
from agents.selection import SelectionConfig, select_strategy  # noqa: E402
from agents.workload import load_splits  # noqa: E402
from envs.backends import check_backend  # noqa: E402
from envs.latency import LatencyConfig  # noqa: E402
from envs.pruning import Pruner  # noqa: E402
from envs.pruning_env import STAGE_TIMES, ChannelPruningEnv, PruningEnvConfig  # noqa: E402
from models.atomic import write_text_atomic  # noqa: E402
from models.data import DataSplits, load_dataset, split_off  # noqa: E402
from models.errors import BudgetError, RlpruneError  # noqa: E402
from models.renamed import check_current_names  # noqa: E402
from models.training import TrainConfig, get_base_model  # noqa: E402
from models.zoo import DEFAULT_MODEL, build_model  # noqa: E402

SHARED_CIFAR10 = "../shared/data/cifar10/train"
#: The local budget-exact agent's settings (``agent_local_exact``; the boosted variant adds one).
LOCAL_EXACT: dict[str, Any] = {
    "actions": "relative",
    "warmup": 10,
    "noise_sigma": 0.15,
    "exact_budget": True,
}
#: The library's search methods, and the agent on AMC's MACs proxy (``agent`` on a MACs env).
#: Variants of the agent: the env setting each one changes.
AGENT_VARIANTS: dict[str, dict[str, Any]] = {
    "agent_macs": {"cost": "macs"},
    "agent_relative": {"actions": "relative"},
    # Exploration near the anchor: with the default sigma (0.5) and a third of the budget in
    # uniform random actions, 150 of plain20's 200 episodes scored far below the anchor rule.
    "agent_local": {"actions": "relative", "warmup": 10, "noise_sigma": 0.15},
    # The warm-up plays whole strategies at the target (EagleEye's sampling) instead of random
    # per-unit actions, which the action wall turns into late units at the maximum ratio.
    "agent_strategies": {"warmup_mode": "strategies"},
    "agent_relative_strategies": {"actions": "relative", "warmup_mode": "strategies"},
    # Every episode rescaled onto the measured budget before it is scored, as the rules are.
    "agent_relative_exact": {"actions": "relative", "exact_budget": True},
    # Both: budget-exact episodes that explore near the anchor (the rules are sharp optima).
    "agent_local_exact": LOCAL_EXACT,
    # And exploration that widens when the policy re-visits evaluated architectures.
    "agent_local_exact_boost": {**LOCAL_EXACT, "revisit_boost": 1.5},
}
METHODS = (*SEARCH_METHODS, *AGENT_VARIANTS)
#: Methods that search (a strategy per seed, re-scored by the final selection).
SEARCHES = tuple(m for m in METHODS if m not in RULES)
DEFAULT_METHODS = (
    "uniform",
    "global",
    "sampled",
    "tpe",
    "tpe_exact",
    "agent",
    "agent_relative",
    "agent_local_exact",
)


@dataclass(frozen=True)
class Task:
    """A base model on a dataset.

    Attributes:
        model: zoo / torchvision name.
        dataset: ``mnist5k``, ``digits``, ``cifar10`` (resolved, see :func:`cifar10_source`).
        max_samples: stratified subset of the images (None: all).
        train: base-model training settings that differ from :class:`TrainConfig`'s defaults
            (pinned, so the cached model stays the same when the defaults change).
    """

    model: str
    dataset: str
    max_samples: int | None = None
    train: tuple[tuple[str, Any], ...] = ()


#: The CIFAR-10 recipe of the shipped base models (models/pretrained, docs/training.md): with
#: exactly these settings get_base_model takes the shipped weights instead of training.
_CIFAR_TRAIN = (
    ("epochs", 40),
    ("batch_size", 128),
    ("lr", 0.1),
    ("augment", True),
    ("nesterov", True),
    ("label_smoothing", 0.1),
    ("precision", "bf16"),
)
#: vgg_cifar converges sooner: the same recipe over 30 epochs.
_CIFAR_TRAIN_VGG = (("epochs", 30),) + _CIFAR_TRAIN[1:]
#: resnet20: a second annealed 40-epoch cycle at peak lr 0.05 from the 40-epoch model (shipped).
_CIFAR_RESTART = tuple((k, 0.05 if k == "lr" else v) for k, v in _CIFAR_TRAIN)
_CIFAR_RESTART_RESNET20 = (
    *_CIFAR_RESTART,
    ("init_from", "models/pretrained/resnet20-cifar10_train-988471ca.pt"),
)
#: plain20: the same warm restart from its 40-epoch model (shipped).
_CIFAR_RESTART_PLAIN20 = (
    *_CIFAR_RESTART,
    ("init_from", "models/pretrained/plain20-cifar10_train-988471ca.pt"),
)


def _cutout_restart(start: str, epochs: int) -> tuple[tuple[str, Any], ...]:
    """A further annealed cycle at peak lr 0.05 with Cutout 16 from the shipped file ``start``
    (sessions 12-13; shipped, the most accurate model of each network; docs/training.md)."""
    settings = dict(_CIFAR_RESTART, epochs=epochs, cutout=16)
    return (*settings.items(), ("init_from", f"models/pretrained/{start}"))


TASKS: dict[str, Task] = {
    "default": Task(DEFAULT_MODEL, "mnist5k"),  # the project's default base model
    "cifar10-resnet20": Task("resnet20", "cifar10", None, _CIFAR_RESTART_RESNET20),
    "cifar10-plain20": Task("plain20", "cifar10", None, _CIFAR_RESTART_PLAIN20),
    "cifar10-vgg_cifar": Task("vgg_cifar", "cifar10", None, _CIFAR_TRAIN_VGG),
    "cifar10-resnet20-cutout": Task(
        "resnet20",
        "cifar10",
        None,
        _cutout_restart("resnet20-cifar10_train-988471ca-092b50.pt", 40),
    ),
    "cifar10-plain20-cutout": Task(
        "plain20", "cifar10", None, _cutout_restart("plain20-cifar10_train-988471ca-7396d6.pt", 30)
    ),
    "cifar10-vgg_cifar-cutout": Task(
        "vgg_cifar",
        "cifar10",
        None,
        _cutout_restart("vgg_cifar-cifar10_train-988471ca-695ee6.pt", 30),
    ),
    # Trained on an H200 in session 14 (docs/training.md): the most accurate shipped models.
    "cifar10-resnet20-gpu": Task(
        "resnet20",
        "cifar10",
        None,
        _cutout_restart("resnet20-cifar10_train-988471ca-43d332.pt", 96),
    ),
    "cifar10-plain20-gpu": Task(
        "plain20", "cifar10", None, _cutout_restart("plain20-cifar10_train-988471ca-2b0ab1.pt", 99)
    ),
    "cifar10-vgg_cifar-gpu": Task(
        "vgg_cifar", "cifar10", None, tuple(dict(_CIFAR_TRAIN, epochs=141, cutout=16).items())
    ),
    "tiny": Task("vgg_small", "digits", None, (("epochs", 2),)),  # seconds; for tests
}
#: The issue's decisive benchmark, on the most accurate shipped models (trained on a GPU).
FULL_TASKS = ("default", "cifar10-resnet20-gpu", "cifar10-plain20-gpu")
#: Tasks whose fine-tunes use the CIFAR crop-and-flip augmentation.
AUGMENTED_TASKS = tuple(name for name in TASKS if name.startswith("cifar10-"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="default task, target 0.5, 1 seed, 60 episodes"
    )
    p.add_argument(
        "--reduced",
        action="store_true",
        help="cifar10-resnet20-gpu, target 0.5, 1 seed, 150 episodes, reward split 1,000 images",
    )
    p.add_argument("--tasks", default=",".join(FULL_TASKS), help=f"of {', '.join(TASKS)}")
    p.add_argument("--targets", default="0.5,0.3", help="latency (and MACs) targets")
    p.add_argument("--seeds", default="0,1,2", help="search and fine-tune seeds")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"of {', '.join(METHODS)}")
    p.add_argument("--episodes", type=int, default=300, help="episodes per search (all searches)")
    p.add_argument("--warmup", type=int, default=None, help="agent warm-up (default episodes/3)")
    p.add_argument("--select-top-k", type=int, default=SelectionConfig().top_k)
    p.add_argument(
        "--select-steps",
        type=int,
        default=SelectionConfig().fine_tune_steps,
        help="fine-tune steps of the final re-scoring of each search's top-k",
    )
    p.add_argument(
        "--reconstruct",
        action="store_true",
        help="every evaluation refits input-pruned layers (AMC's least squares) before BN recal.",
    )
    p.add_argument(
        "--round-to",
        type=int,
        default=None,
        help="keep channel counts multiples of N in every method (8: aligned widths, where CPU "
        "and ONNX Runtime latency fall with the MACs)",
    )
    p.add_argument("--fine-tune-epochs", type=int, default=5, help="same for every method")
    p.add_argument(
        "--fine-tune-seeds",
        type=int,
        default=None,
        help="fine-tune only the first N seeds of each method (default: all); a cached cell "
        "of a seed that a larger N adds is fine-tuned without repeating its search",
    )
    p.add_argument(
        "--cifar10", default="auto", help="CIFAR-10 source: auto, cifar10 or imagefolder:DIR"
    )
    p.add_argument("--data-dir", default=None, help="where torchvision datasets are stored")
    p.add_argument(
        "--cache-dir", default=None, help="base-model cache ($RLPRUNE_CACHE or ~/.cache)"
    )
    p.add_argument(
        "--reward-samples",
        type=int,
        default=None,
        help="cap the reward split the searches see (stratified); the rest of it is held out for "
        "their final selection's re-score",
    )
    p.add_argument(
        "--threads", type=int, default=default("threads"), help="CPU threads for everything"
    )
    p.add_argument("--latency-batch-size", type=int, default=default("latency_batch_size"))
    p.add_argument(
        "--latency-repeats",
        type=int,
        default=default("latency_repeats"),
        help="timed runs per measurement",
    )
    p.add_argument("--latency-passes", type=int, default=5, help="passes of the final timing")
    common.add_latency_backend_arg(p)
    p.add_argument(
        "--latency-backends",
        default="",
        help="also time every result in each of these runtimes (comma-separated), for the "
        "cross-backend table",
    )
    p.add_argument("--throughput", action="store_true", help="also time search cost vs units/split")
    p.add_argument("--throughput-only", action="store_true", help="only the throughput section")
    p.add_argument("--throughput-episodes", type=int, default=10)
    p.add_argument("--output-dir", default="runs/benchmark")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.quick:
        args.tasks, args.targets, args.seeds, args.episodes = "default", "0.5", "0", 60
    if args.reduced:
        args.tasks, args.targets, args.seeds = "cifar10-resnet20-gpu", "0.5", "0"
        args.episodes, args.fine_tune_epochs = 150, 2
        args.reward_samples = args.reward_samples or 1000
    return args


def csv_list(text: str, kind: type = str) -> list:
    """``"a,b"`` -> ``["a", "b"]`` (converted with ``kind``)."""
    return [kind(x.strip()) for x in text.split(",") if x.strip()]


def check_choices(names: Sequence[str], known: Sequence[str], what: str) -> None:
    """Raise a one-line error naming an unknown task or method."""
    bad = [n for n in names if n not in known]
    if bad:
        raise RlpruneError(f"unknown {what} {bad}; choose from {', '.join(known)}")


def cifar10_source(choice: str, repo_root: Path) -> str:
    """The CIFAR-10 dataset name: the shared JPEG folder when present, else torchvision's."""
    if choice != "auto":
        return choice
    shared = (repo_root / SHARED_CIFAR10).resolve()
    return f"imagefolder:{SHARED_CIFAR10}" if shared.is_dir() else "cifar10"


# ----------------------------------------------------------------------------- methods
def latency_config(args: argparse.Namespace) -> LatencyConfig:
    """How every search times its candidates (``--latency-*``, ``--threads``)."""
    return LatencyConfig(
        batch_size=args.latency_batch_size,
        repeats=args.latency_repeats,
        threads=args.threads,
        backend=args.latency_backend,
    )


def make_env(
    model: nn.Module,
    splits: DataSplits,
    target: float,
    cost: str,
    latency: LatencyConfig,
    reconstruct: bool = False,
    round_to: int | None = None,
    actions: str = "absolute",
    latency_dir: Path | None = None,
    model_name: str = "model",
    exact_budget: bool = False,
) -> ChannelPruningEnv:
    """A fresh pruning env (own calibration) for one method and seed.

    With ``latency_dir`` the per-layer table of the base model and every measured relative latency
    are kept there (:class:`envs.latency_store.MeasurementStore`), so all methods and seeds of a
    task and target get one number per architecture: the same rule lands on the same strategy in
    every env, and a search's incumbent is the rule it is compared with.
    """
    cfg = PruningEnvConfig(
        target=target,
        cost=cost,
        latency=latency,
        reconstruct=reconstruct,
        round_to=round_to,
        actions=actions,
        exact_budget=exact_budget,
    )
    return ChannelPruningEnv(
        model,
        splits.train,
        splits.reward_val,
        cfg,
        latency_tables=latency_dir,
        latency_store=latency_dir,
        model_name=model_name,
    )


def method_env(
    method: str,
    model: nn.Module,
    splits: DataSplits,
    target: float,
    args: argparse.Namespace,
    out: Path,
    task_name: str,
) -> ChannelPruningEnv:
    """:func:`make_env` with the settings of ``method`` (its variant's cost, actions and budget)
    and the latency store of the benchmark in ``out``."""
    variant = AGENT_VARIANTS.get(method, {})
    return make_env(
        model,
        splits,
        target,
        variant.get("cost", "latency"),
        latency_config(args),
        args.reconstruct,
        args.round_to,
        variant.get("actions", "absolute"),
        out / "latency",
        task_name,
        variant.get("exact_budget", False),
    )


def search_strategy(
    method: str,
    model: nn.Module,
    splits: DataSplits,
    target: float,
    seed: int,
    args: argparse.Namespace,
    run_dir: Path,
    task_name: str = "model",
) -> dict[str, Any]:
    """Run one method in a fresh env; its strategy, search seconds and per-episode history.

    Every search ends with the same final choice (:func:`select_strategy` of its top-k). The env
    keeps its latencies in ``<output-dir>/latency`` (the grandparent of ``run_dir``), shared by
    every cell of the task (see :func:`make_env`).
    """
    variant = AGENT_VARIANTS.get(method, {})
    env = method_env(method, model, splits, target, args, run_dir.parent.parent, task_name)
    shutil.rmtree(run_dir, ignore_errors=True)  # a killed cell's partial run
    warmup = variant.get("warmup", args.warmup)
    settings = SearchSettings(
        args.episodes,
        seed,
        warmup,
        run_dir,
        noise_sigma=variant.get("noise_sigma"),
        warmup_mode=variant.get("warmup_mode"),
        revisit_boost=variant.get("revisit_boost"),
    )
    result = run_method("agent" if method in AGENT_VARIANTS else method, env, settings)
    found = {
        "strategy": result["strategy"],
        "search_s": result["seconds"],
        "history": result["history"],
        "env": env,
        "search_best_reward_acc": result.get("accuracy"),
    }
    if method in SEARCHES:
        t0 = time.perf_counter()
        selection = SelectionConfig(
            top_k=args.select_top_k, fine_tune_steps=args.select_steps, seed=seed
        )
        chosen = select_strategy(env, splits.train, selection, score_set=splits.selection_val)
        found["strategy"] = chosen["strategy"]
        found["select_s"] = time.perf_counter() - t0
        found["selected_rank"] = chosen["search_rank"]
        found["rescored_ranks"] = [c["search_rank"] for c in chosen["candidates"]]
        found["selected_rule"] = chosen["rule"]
        found["selection_images"] = chosen["selection_images"]
        found["dropped_over_latency"] = chosen["dropped"]
    return found


def cell_scores(scored: ModelRow, env: ChannelPruningEnv) -> dict[str, float]:
    """The accuracies (reward and test split; test after the fine-tune) and relative costs of a
    scored strategy, as a cell of the benchmark records them."""
    accs = {"reward_acc": scored.reward_acc, "test_acc": scored.test_acc}
    if scored.test_acc_finetuned is not None:
        accs["test_acc_ft"] = scored.test_acc_finetuned
    accs["relative_macs"] = scored.macs / env.base_macs
    accs["relative_params"] = scored.params / env.base_params
    return accs


def read_cell(path: Path) -> dict[str, Any]:
    """A finished cell (``<output-dir>/cells/*.json``) as :func:`run_task_target` wrote it.

    Raises:
        CheckpointError: The cell was written by an older rlprune (a renamed key).
    """
    row = json.loads(path.read_text())
    check_current_names(row, path, "delete it (or pass another --output-dir) to run it again")
    return row


def fine_tune_record(
    out: Path, task: str, runtime: str, kept: Mapping[str, int], fine: FineTuneConfig
) -> Path:
    """Where the fine-tuned test accuracy of one architecture of ``task`` is kept, so that another
    cell delivering the same architecture (a search that chose the uniform rule, another target)
    reuses it: the same pruned model fine-tuned with the same recipe and seed is the same
    computation, minutes on CIFAR. ``runtime`` names the evaluator suffixes of the cells (the
    reconstruction changes the weights the fine-tune starts from)."""
    recipe = [task, runtime, sorted(kept.items()), fine.epochs, fine.lr, fine.seed, fine.augment]
    digest = hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:16]
    return out / "fine_tuned" / f"{task}{runtime}_{digest}.json"


def score_cell(
    key: str,
    strategy: Mapping[str, float],
    env: ChannelPruningEnv,
    splits: DataSplits,
    fine: FineTuneConfig,
    record: Path | None,
    cell: Path,
) -> tuple[ModelRow, dict[str, float], dict[str, Any] | None]:
    """Score ``strategy`` (:func:`cell_scores`) with the fine-tune ``fine`` when ``record`` names
    one (None: no fine-tune), taking the fine-tuned accuracy from ``record`` when another cell
    already fine-tuned this architecture with this recipe, else writing it there. Also returns
    the record reused (None when the fine-tune ran or none was asked for)."""
    reused = json.loads(record.read_text()) if record and record.is_file() else None
    scored = score_strategy(
        key, strategy, env, splits, fine if record and not reused else None, reward_acc=True
    )
    accs = cell_scores(scored, env)
    if reused:
        accs["test_acc_ft"] = reused["test_acc_ft"]
    elif record:
        done = {"test_acc_ft": accs["test_acc_ft"], "cell": cell.name}
        write_text_atomic(record, json.dumps(done))
    return scored, accs, reused


def relative_latencies_together(
    models: Mapping[str, nn.Module],
    input_shape: tuple[int, ...],
    args: argparse.Namespace,
    backend: str,
) -> dict[str, tuple[float, float, float]]:
    """(relative latency vs ``original``, spread, ms) of every model, timed together
    (:func:`agents.evaluation.time_together`) in ``backend``."""
    config = replace(latency_config(args), backend=backend)
    stats = time_together(
        models, input_shape, config, passes=args.latency_passes, same_network=True
    )  # one timing per architecture: a task's models are all prunings of its base model
    base = stats["original"].median_ms
    return {k: (s.median_ms / base, s.spread, s.median_ms) for k, s in stats.items()}


def run_task_target(
    task_name: str,
    model: nn.Module,
    splits: DataSplits,
    target: float,
    args: argparse.Namespace,
    out: Path,
) -> list[dict[str, Any]]:
    """All methods and seeds at one target; rows with accuracies, costs and timings.

    A finished cell (method, seed) is read back from ``out/cells`` instead of being run again;
    its pruned model is rebuilt from the cached strategy for the final, shared timing.
    """
    methods, seeds = csv_list(args.methods), csv_list(args.seeds, int)
    progress = not args.no_progress
    ft_seeds = seeds if args.fine_tune_seeds is None else seeds[: args.fine_tune_seeds]
    augment = task_name in AUGMENTED_TASKS
    rows, models = [], {"original": model}
    pruner = None
    # Searches in another runtime are other cells (the eager cells keep their old names).
    runtime = "" if args.latency_backend == "torch" else f"_{args.latency_backend}"
    runtime += f"_r{args.round_to}" if args.round_to else ""  # aligned widths: other cells too
    runtime += "_rec" if args.reconstruct else ""  # another evaluator: other cells
    for method in methods:
        deterministic = method not in SEARCHES
        # A search re-scored on held-out images is another cell than one re-scored on its own
        # reward split.
        name = f"{task_name}_t{target}_{method}{runtime}"
        name += "_ho" if method in SEARCHES and splits.selection_val is not None else ""
        found = None
        for seed in seeds:
            key = f"{method}/s{seed}"
            cell = out / "cells" / f"{name}_s{seed}.json"
            if cell.is_file():
                row = read_cell(cell)
                if pruner is None:
                    pruner = Pruner(
                        model, torch.zeros(1, *splits.input_shape), round_to=args.round_to
                    )
                models[key] = pruner.apply(row["strategy"])
                note = "cached"
                if seed in ft_seeds and args.fine_tune_epochs and "test_acc_ft" not in row:
                    # A seed newly among --fine-tune-seeds: fine-tune its strategy, keep the search.
                    env = method_env(method, model, splits, target, args, out, task_name)
                    fine = FineTuneConfig(
                        args.fine_tune_epochs, seed=seed, augment=augment, progress=progress
                    )
                    record = fine_tune_record(
                        out, task_name, runtime, env.pruner.kept_channels(row["strategy"]), fine
                    )
                    _, accs, reused = score_cell(
                        key, row["strategy"], env, splits, fine, record, cell
                    )
                    row["test_acc_ft"] = accs["test_acc_ft"]
                    row["fine_tune_reused_from"] = reused["cell"] if reused else None
                    write_text_atomic(cell, json.dumps(row, default=float))
                    note = f"cached search, fine-tuned {row['test_acc_ft']:.4f}"
                rows.append({**row, "key": key})
                print(f"  {task_name} t={target} {method} s{seed}: {note}", flush=True)
                continue
            if found is None or not deterministic:  # rules: one strategy, fine-tuned per seed
                run_dir = out / "runs" / f"{name}_s{seed}"
                found = search_strategy(
                    method, model, splits, target, seed, args, run_dir, task_name
                )
            t0 = time.perf_counter()
            epochs = args.fine_tune_epochs if seed in ft_seeds else 0
            fine = FineTuneConfig(epochs, seed=seed, augment=augment, progress=progress)
            kept = found["env"].pruner.kept_channels(found["strategy"])
            record = fine_tune_record(out, task_name, runtime, kept, fine) if epochs else None
            scored, accs, reused = score_cell(
                key, found["strategy"], found["env"], splits, fine, record, cell
            )
            models[key] = scored.model
            # The env's own relative latency: timed interleaved run by run with the original
            # (cached by shape, so free for latency searches); robust where best-of-passes is not.
            env_result = found["env"].evaluate_strategy(found["strategy"], with_accuracy=False)
            row = {
                "task": task_name,
                "target": target,
                "method": method,
                "seed": seed,
                **accs,
                "env_relative_latency": env_result["relative_latency"],
                "search_s": found["search_s"] if seed == seeds[0] or not deterministic else 0.0,
                "select_s": found.get("select_s", 0.0),
                "selected_rank": found.get("selected_rank"),
                "rescored_ranks": found.get("rescored_ranks"),
                "selected_rule": found.get("selected_rule"),
                "selection_images": found.get("selection_images"),
                "dropped_over_latency": found.get("dropped_over_latency"),
                "search_best_reward_acc": found.get("search_best_reward_acc"),
                "score_s": time.perf_counter() - t0,
                "fine_tune_reused_from": reused["cell"] if reused else None,
                "strategy": found["strategy"],
                "history": found["history"] if not deterministic else [],
                "units": found["env"].num_units,
                "latency_backend": args.latency_backend,
            }
            write_text_atomic(cell, json.dumps(row, default=float))
            rows.append({**row, "key": key})
            ft = accs.get("test_acc_ft", float("nan"))
            print(
                f"  {task_name} t={target} {method} s{seed}: reward acc {accs['reward_acc']:.4f}, "
                f"test {accs['test_acc']:.4f}, fine-tuned {ft:.4f}, "
                f"MACs x{accs['relative_macs']:.2f}, search {found['search_s']:.0f} s"
                + (f" (fine-tune of the same model in {reused['cell']} reused)" if reused else ""),
                flush=True,
            )
    backends = list(dict.fromkeys([args.latency_backend, *csv_list(args.latency_backends)]))
    timed = {b: relative_latencies_together(models, splits.input_shape, args, b) for b in backends}
    for row in rows:
        key = row.pop("key")
        row["relative_latency"], row["latency_spread"], row["latency_ms"] = timed[backends[0]][key]
        if args.latency_backends:
            row["relative_latency_by_backend"] = {b: timed[b][key][0] for b in backends}
    return rows


def load_task(
    name: str, args: argparse.Namespace, repo_root: Path
) -> tuple[nn.Module, DataSplits, dict[str, Any]]:
    """The task's data splits and its trained (cached) base model with its training info."""
    task = TASKS[name]
    dataset = cifar10_source(args.cifar10, repo_root) if task.dataset == "cifar10" else task.dataset
    splits = load_splits(
        {"dataset": dataset, "data_dir": args.data_dir, "max_samples": task.max_samples}
    )
    train = dict(task.train)
    if train.get("init_from"):  # a warm restart of a shipped model: a repo-relative path
        train["init_from"] = str(repo_root / train["init_from"])
    cfg = TrainConfig(**train, seed=0, progress=not args.no_progress)
    model, info = get_base_model(task.model, splits, config=cfg, cache_dir=args.cache_dir)
    if args.reward_samples and args.reward_samples < len(splits.reward_val.tensors[1]):
        # Only now: the base-model cache is keyed on the full splits. The rest of the reward
        # split is held out from the searches for their final selection.
        reward, held_out = split_off(splits.reward_val, args.reward_samples)
        splits = replace(splits, reward_val=reward, selection_val=held_out)
    info = {
        "model": task.model,
        "dataset": splits.name,
        "split_sizes": [len(s.tensors[1]) for s in (splits.train, splits.reward_val, splits.test)],
        "base_epochs": cfg.epochs,
        "base_batch_size": cfg.batch_size,
        "test_acc": info["test_acc"],
        "train_time_s": info["train_time_s"],
    }
    return model.eval(), splits, info


# ----------------------------------------------------------------------------- reporting
def mean_std(values: Sequence[float]) -> str:
    """``mean ± std`` (std over seeds; omitted for one value)."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def results_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table: one line per task, target and method, mean ± std over seeds."""
    head = (
        "| task | target | method | seeds | reward acc (BN) | test acc (BN) "
        "| test acc (fine-tuned) | relative latency, joint timing (IQR/median) "
        "| relative latency, paired (env) | relative MACs | relative params | search s |\n"
        + "|---" * 12
        + "|"
    )
    lines = [head]
    keys = dict.fromkeys((r["task"], r["target"], r["method"]) for r in rows)
    for task, target, method in keys:
        group = [r for r in rows if (r["task"], r["target"], r["method"]) == (task, target, method)]
        spread = statistics.mean(r["latency_spread"] for r in group)
        searches = [r["search_s"] for r in group if r["search_s"] > 0]
        lines.append(
            f"| {task} | {target} | {method} | {len(group)} "
            f"| {mean_std([r['reward_acc'] for r in group])} "
            f"| {mean_std([r['test_acc'] for r in group])} "
            f"| {mean_std([r.get('test_acc_ft') for r in group])} "
            f"| {mean_std([r['relative_latency'] for r in group])} ({spread:.0%}) "
            f"| {mean_std([r.get('env_relative_latency') for r in group])} "
            f"| {mean_std([r['relative_macs'] for r in group])} "
            f"| {mean_std([r['relative_params'] for r in group])} "
            f"| {statistics.mean(searches) if searches else 0:.0f} |"
        )
    return "\n".join(lines)


def over_budget(
    rows: Sequence[Mapping[str, Any]], tolerance: float = SelectionConfig().tolerance
) -> list[str]:
    """One line per delivered model whose joint-timing relative latency is over its latency
    target by more than ``tolerance`` (the final selection's, 5%); models of a MACs-target
    method (``agent_macs``) are not held to a latency target."""
    lines = []
    for r in rows:
        if AGENT_VARIANTS.get(r["method"], {}).get("cost", "latency") != "latency":
            continue
        limit = r["target"] * (1 + tolerance)
        if r["relative_latency"] > limit:
            lines.append(
                f"{r['task']} t={r['target']} {r['method']} s{r['seed']}: "
                f"{r['relative_latency']:.3f} > {limit:.3f} (env's paired timing "
                f"{r.get('env_relative_latency', float('nan')):.3f})"
            )
    return lines


def cross_backend_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: each method's relative latency timed in every runtime of ``--latency-backends``,
    mean ± std over seeds; the search ran in ``search backend``."""
    backends = list(rows[0]["relative_latency_by_backend"])  # the same runtimes for every row
    lines = [
        "| task | target | method | search backend | "
        + " | ".join(f"relative latency in {b}" for b in backends)
        + " |",
        "|---" * (4 + len(backends)) + "|",
    ]
    keys = dict.fromkeys((r["task"], r["target"], r["method"]) for r in rows)
    for task, target, method in keys:
        group = [r for r in rows if (r["task"], r["target"], r["method"]) == (task, target, method)]
        cells = [mean_std([r["relative_latency_by_backend"][b] for r in group]) for b in backends]
        search = group[0].get("latency_backend", "torch")
        lines.append(f"| {task} | {target} | {method} | {search} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def episode_split(history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean seconds per episode by stage; ``rest`` is the remaining wall time (agent update)."""
    if not history:
        return {}
    split = {k: statistics.mean(h[k] for h in history) for k in STAGE_TIMES}
    total = statistics.mean(h["seconds"] for h in history)
    split["rest_s"] = max(total - sum(split.values()), 0.0)
    split["episode_s"] = total
    split["cached"] = statistics.mean(float(h["cached"]) for h in history)
    return split


def split_row(label: str, units: Any, split: Mapping[str, float]) -> str:
    """One Markdown line of a time split."""
    total = split["episode_s"]
    parts = " | ".join(f"{split[k] * 1e3:.0f}" for k in (*STAGE_TIMES, "rest_s"))
    return (
        f"| {label} | {units} | {1 / total:.2f} | {total * 1e3:.0f} | {parts} "
        f"| {split['cached']:.0%} |"
    )


SPLIT_HEAD = (
    "| search | units | episodes/s | ms/episode | prune | BN recal. | eval | latency "
    "| rest (agent update, env steps) | cached |\n" + "|---" * 10 + "|"
)


def search_throughput_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Episodes/s and the time split of every search run of the benchmark, averaged over seeds."""
    lines = [SPLIT_HEAD]
    keys = dict.fromkeys((r["task"], r["target"], r["method"]) for r in rows if r["history"])
    for task, target, method in keys:
        history = [
            h
            for r in rows
            if (r["task"], r["target"], r["method"]) == (task, target, method)
            for h in r["history"]
        ]
        units = next(r["units"] for r in rows if r["task"] == task)
        lines.append(split_row(f"{task} t={target} {method}", units, episode_split(history)))
    return "\n".join(lines)


def plot_accuracy_vs_latency(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Per task: BN-recalibrated and fine-tuned test accuracy against measured relative latency."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.5 * len(tasks), 7), squeeze=False)
    present = [m for m in METHODS if any(r["method"] == m for r in rows)]
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {m: palette[i % len(palette)] for i, m in enumerate(present)}  # more methods than hues
    for col, task in enumerate(tasks):
        for row_i, (key, label) in enumerate((("test_acc", "BN-recal."), ("test_acc_ft", "FT"))):
            ax = axes[row_i][col]
            for method in METHODS:
                pts = [r for r in rows if r["task"] == task and r["method"] == method and key in r]
                if pts:
                    ax.scatter(
                        [r["relative_latency"] for r in pts],
                        [r[key] for r in pts],
                        label=method,
                        color=colors[method],
                        alpha=0.8,
                    )
            for target in {r["target"] for r in rows if r["task"] == task}:
                ax.axvline(target, color="grey", lw=0.8, ls="--")
            ax.set_xlabel("measured relative latency")
            ax.set_ylabel(f"test accuracy ({label})")
            ax.set_title(f"{task}: {label}")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_strategies(
    rows: Sequence[Mapping[str, Any]], task: str, target: float, path: Path
) -> None:
    """Pruning ratio per unit of every method's strategy (first seed) at one task and target."""
    picked = {}
    for r in rows:
        if r["task"] == task and r["target"] == target and r["method"] not in picked:
            picked[r["method"]] = r["strategy"]
    units = list(next(iter(picked.values())))
    width = 0.8 / len(picked)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(units) + 3), 4))
    x = np.arange(len(units))
    for i, (method, strategy) in enumerate(picked.items()):
        ax.bar(x + i * width, [strategy[u] for u in units], width, label=method)
    ax.set_xticks(x + 0.4 - width / 2, units, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("pruning ratio")
    ax.set_title(f"{task}, target {target}: best strategy per method (first seed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- throughput
def throughput_scaling(args: argparse.Namespace) -> str:
    """Random-action episodes per second vs number of units and reward-split size.

    Untrained networks on mnist5k: the cost of an episode does not depend on the weights.
    """
    splits = load_dataset("mnist5k")
    latency = latency_config(args)
    lines = [SPLIT_HEAD]
    cases = [(m, 500) for m in ("vgg_small", "resnet20", "resnet56", "mobilenetv2_small")]
    cases += [("vgg_small", 250), ("vgg_small", 1000), ("resnet20", 250), ("resnet20", 1000)]
    for name, n_reward in cases:
        torch.manual_seed(0)
        model = build_model(name, splits.input_shape, splits.num_classes).eval()
        reward = _reward_subset(splits, n_reward)
        env = ChannelPruningEnv(
            model, splits.train, reward, PruningEnvConfig(latency=latency), model_name=name
        )
        result = run_method("random", env, SearchSettings(args.throughput_episodes))
        label = f"{name}, reward split {len(reward.tensors[1])}"
        lines.append(split_row(label, env.num_units, episode_split(result["history"])))
        print(f"  throughput: {lines[-1]}", flush=True)
    return "\n".join(lines)


def _reward_subset(splits: DataSplits, n: int) -> TensorDataset:
    """The first ``n`` reward images, repeated if the split is smaller."""
    x, y = splits.reward_val.tensors
    idx = torch.arange(n) % len(y)
    return TensorDataset(x[idx], y[idx])


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    tasks, methods = csv_list(args.tasks), csv_list(args.methods)
    targets, seeds = csv_list(args.targets, float), csv_list(args.seeds, int)
    check_choices(tasks, list(TASKS), "task")
    check_choices(methods, METHODS, "method")
    for backend in [args.latency_backend, *csv_list(args.latency_backends)]:
        check_backend(backend)
    if not seeds or not targets or args.episodes < 1:
        raise RlpruneError("need at least one seed, one target and --episodes >= 1")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    repo_root = Path.cwd()
    command = "python scripts/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
    start = time.perf_counter()

    rows: list[dict[str, Any]] = []
    bases: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []  # (task, target) pairs the network cannot reach
    for task in [] if args.throughput_only else tasks:
        model, splits, info = load_task(task, args, repo_root)
        bases[task] = info
        print(f"{task}: {info}", flush=True)
        for target in targets:
            try:
                rows += run_task_target(task, model, splits, target, args, out)
            except BudgetError as exc:  # this network cannot reach it: the others still can
                skipped.append(f"{task} at {target}: {exc}")
                print(f"  {task} t={target}: skipped: {exc}", flush=True)
                continue
            _write(out, command, rows, bases, "", time.perf_counter() - start, skipped)
            plot_strategies(rows, task, target, out / f"strategies_{task}_t{target}.png")
        if rows:  # every target so far skipped: nothing to plot yet
            plot_accuracy_vs_latency(rows, out / "accuracy_vs_latency.png")

    scaling = throughput_scaling(args) if (args.throughput or args.throughput_only) else ""
    _write(out, command, rows, bases, scaling, time.perf_counter() - start, skipped)
    print(f"\n{results_table(rows)}\n\nwritten to {out}/results.md")
    return 0


def _write(
    out: Path,
    command: str,
    rows: list[dict[str, Any]],
    bases: dict[str, dict[str, Any]],
    scaling: str,
    seconds: float,
    skipped: list[str] = (),
) -> None:
    """results.md (tables), throughput.md and results.json (every row, per-episode history);
    ``skipped`` names the targets a network cannot reach (with the reason)."""
    base_lines = ["| task | model | dataset | train/reward/test | base epochs | test acc |"]
    base_lines.append("|---|---|---|---|---|---|")
    for task, b in bases.items():
        sizes = "/".join(str(n) for n in b["split_sizes"])
        base_lines.append(
            f"| {task} | {b['model']} | {b['dataset']} | {sizes} | {b['base_epochs']} "
            f"| {b['test_acc']:.4f} |"
        )
    over = over_budget(rows)
    text = [
        f"# rlprune benchmark\n\n`{command}` ({seconds / 60:.1f} min)\n",
        "## Base models\n",
        "\n".join(base_lines),
        "\n## Results (mean ± std over seeds)\n",
        results_table(rows) if rows else "(no method run)",
        *(
            [
                "\nOver target + 5% in the joint timing (re-time on a quiet machine: the same "
                "command again times only):\n",
                "\n".join(f"- {line}" for line in over),
            ]
            if over
            else []
        ),
        *(
            ["\n## Skipped targets\n", "\n".join(f"- {line}" for line in skipped)]
            if skipped
            else []
        ),
        "\n## Search throughput (per search run)\n",
        search_throughput_table(rows) if rows else "(no search run)",
    ]
    if any("relative_latency_by_backend" in r for r in rows):
        text += [
            "\n## Relative latency in each runtime (joint timing)\n",
            cross_backend_table(rows),
        ]
    if scaling:
        text += ["\n## Search cost vs units and reward-split size (random actions)\n", scaling]
    write_text_atomic(out / "results.md", "\n".join(text) + "\n")
    write_text_atomic(
        out / "results.json",
        json.dumps({"command": command, "bases": bases, "rows": rows}, indent=1, default=float),
    )


if __name__ == "__main__":
    common.run_cli(main)
