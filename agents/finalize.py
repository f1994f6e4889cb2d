"""From a best strategy to a deliverable: pruned model, fine-tune, uniform baseline, report."""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agents.evaluation import FineTuneConfig, ModelRow, compare_strategies
from agents.selection import SelectionConfig, select_strategy
from envs.baselines import uniform_for_target
from envs.pruning import load_pruned, save_pruned
from envs.pruning_env import ChannelPruningEnv
from models.atomic import write_json_atomic
from models.data import DataSplits
from models.errors import PruningError


def compare_with_uniform(
    env: ChannelPruningEnv,
    strategy: Mapping[str, float],
    splits: DataSplits,
    *,
    fine_tune_epochs: int = 2,
    fine_tune_lr: float = 0.01,
    latency_passes: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> list[ModelRow]:
    """:func:`agents.evaluation.compare_strategies` of the agent's strategy and uniform pruning
    at the same target, both fine-tuned for ``fine_tune_epochs``.

    Returns:
        Rows for ``original``, ``agent`` and ``uniform``.
    """
    uniform = uniform_for_target(env)
    fine = FineTuneConfig(fine_tune_epochs, fine_tune_lr, seed, progress=progress)
    strategies = {"agent": strategy, "uniform": uniform["strategy"]}
    return compare_strategies(env, strategies, splits, fine, latency_passes=latency_passes)


def summary_table(rows: list[ModelRow]) -> str:
    """Markdown table of the rows (accuracies on the test split, latency, speedup, cost)."""
    base = rows[0]
    lines = [
        "| model | test acc (BN-recal.) | test acc (fine-tuned) | latency ms (spread) | speedup "
        "| MACs | params |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ft = "-" if r.test_acc_finetuned is None else f"{r.test_acc_finetuned:.4f}"
        lines.append(
            f"| {r.name} | {r.test_acc:.4f} | {ft} | {r.latency_ms:.3f} ({r.latency_spread:.0%}) "
            f"| {r.speedup:.2f}x | {r.macs / 1e6:.2f}M ({r.macs / base.macs:.0%}) "
            f"| {r.params / 1e3:.1f}k ({r.params / base.params:.0%}) |"
        )
    return "\n".join(lines)


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Hex sha256 of a state_dict's names, dtypes, shapes and bytes (same weights, same sum).

    It identifies a base model whatever file it was saved in; a pruned model records the sum of
    the model it was pruned from (``recipe["base_sha256"]``) so that evaluation can compare it
    with that very model.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def make_recipe(
    model_name: str, splits: DataSplits, base: nn.Module, settings: Mapping[str, Any], **extra: Any
) -> dict[str, Any]:
    """What rebuilds a pruned model (see :func:`envs.pruning.save_pruned`), feeds it, and its base.

    ``base_sha256`` (:func:`state_dict_sha256` of ``base``) lets ``evaluate.py`` find the exact
    original the model was pruned from; ``class_names`` and ``preprocessing``
    (:meth:`models.data.Preprocessing.to_dict`: scale, resize, per-channel mean and std) are
    what a user needs to run the model outside rlprune. The strategy is added by
    :func:`save_deliverables`.
    """
    return {
        "model": model_name,
        "dataset": splits.name,
        "input_shape": list(splits.input_shape),
        "num_classes": splits.num_classes,
        "class_names": list(splits.class_names),
        "preprocessing": splits.preprocessing.to_dict(),
        "importance": settings["importance"],
        "round_to": settings["round_to"],
        "base_sha256": state_dict_sha256(base.state_dict()),
        **extra,
    }


def save_pruned_atomic(model: nn.Module, path: str | Path, recipe: Mapping[str, Any]) -> None:
    """:func:`envs.pruning.save_pruned` into temporary files renamed into place: a kill never
    leaves a half-written model (nor destroys the one it replaces)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.pt")
    try:
        save_pruned(model, tmp, recipe)
        os.replace(tmp, path)
        os.replace(tmp.with_suffix(".json"), path.with_suffix(".json"))
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".json").unlink(missing_ok=True)


def save_deliverables(
    run_dir: str | Path,
    rows: list[ModelRow],
    strategy: Mapping[str, float],
    recipe: Mapping[str, Any],
    suffix: str = "",
) -> Path:
    """Save the agent's fine-tuned pruned model (``pruned_model<suffix>.pt`` + ``.json``).

    The saved file is reloaded at once and its outputs compared with the model's, so a run never
    leaves a model file behind that does not rebuild.
    """
    path = Path(run_dir) / f"pruned_model{suffix}.pt"
    agent_row = next(r for r in rows if r.name == "agent")
    model = copy.deepcopy(agent_row.model).cpu()
    save_pruned_atomic(model, path, {**recipe, "strategy": dict(strategy)})
    reloaded, _ = load_pruned(path)
    x = torch.randn(4, *recipe["input_shape"])
    with torch.no_grad():
        if not torch.allclose(model.eval()(x), reloaded(x), atol=1e-5):
            path.unlink()
            path.with_suffix(".json").unlink(missing_ok=True)
            raise PruningError(f"{path} did not reload to the same outputs; it was removed")
    return path


def write_report(
    run_dir: str | Path,
    title: str,
    settings: Mapping[str, Any],
    rows: list[ModelRow],
    best: Mapping[str, Any],
    timings: Mapping[str, float],
    suffix: str = "",
    latency: str | None = None,
) -> Path:
    """Write ``report<suffix>.md``: settings, summary table, best strategy, time split.

    ``latency`` says how latency was obtained (backend, device, threads; a latency table the
    search used instead of timing), e.g. ``env.latency.describe()``.
    """
    from agents.callbacks import strategy_table

    lines = [f"# {title}", "", "## Settings", ""]
    lines += [f"- {k}: `{v}`" for k, v in settings.items()]
    lines += ["", "## Result (test split)", "", summary_table(rows), ""]
    lines += [
        "Latencies were measured in the same run, interleaved, best of several passes; the "
        "spread is the inter-quartile range over the median.",
        "",
        *([f"Latency: {latency}.", ""] if latency else []),
        f"## Best strategy (episode {best.get('episode', '-')}, reward-split accuracy "
        f"{best['accuracy']:.4f}, relative latency {best['relative_latency']:.3f})",
        "",
        strategy_table(dict(best)),
        "",
        "## Wall time",
        "",
    ]
    lines += [f"- {k}: {v:.1f} s" for k, v in timings.items()]
    path = Path(run_dir) / f"report{suffix}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def select_final(
    env: ChannelPruningEnv,
    best: dict[str, Any],
    splits: DataSplits,
    settings: Mapping[str, Any],
    run_dir: Path,
    suffix: str = "",
) -> dict[str, Any]:
    """The strategy to deliver: the best architectures the env evaluated, re-scored
    (:func:`agents.selection.select_strategy`: re-timed, the rules at the target among the
    candidates and the better one the incumbent, top-k re-scored after a short fine-tune).

    Args:
        env: The env the strategies were evaluated in (its result cache holds them).
        best: The record of the best episode (``strategy``, ``reward``, ...).
        splits: Its data (the train split feeds the re-scoring's fine-tune).
        settings: Flat settings with ``select_top_k``, ``select_steps``, ``seed`` and
            ``latency_table`` (a table's device is not this one: no re-timing then).
        run_dir: Where ``selection<suffix>.json`` (every candidate's search reward and
            re-score) is written.
        suffix: Of the file name (one per network of a multi-network run).

    Returns:
        ``best`` with the chosen strategy, accuracy, cost and reward in place.
    """
    env.evaluate_strategy(best["strategy"])  # in the env's cache, also after a --resume
    config = SelectionConfig(
        top_k=settings["select_top_k"],
        fine_tune_steps=settings["select_steps"],
        seed=settings["seed"],
        # A latency table's device is not this one: its budget was kept by the table's estimate.
        retime=not settings.get("latency_table"),
    )
    chosen = select_strategy(env, splits.train, config)
    write_json_atomic(
        run_dir / f"selection{suffix}.json",
        {
            "config": vars(config),
            "chosen_search_rank": chosen["search_rank"],
            "chosen_rule": chosen["rule"],
            "candidates": chosen["candidates"],
            "dropped_over_latency": chosen["dropped"],
        },
    )
    rule = f" ({chosen['rule']} pruning at the target: no other beat it by the margin)"
    print(
        f"final choice: the search's number {chosen['search_rank'] + 1} of "
        f"{len(chosen['candidates'])} re-scored{rule if chosen['rule'] else ''} (reward-split "
        f"accuracy after {config.fine_tune_steps} fine-tune steps: "
        f"{chosen['selection_score']:.4f})"
    )
    keys = ("strategy", "accuracy", "relative_latency", "relative_macs", "reward", "kept_channels")
    final = {**best, **{k: chosen[k] for k in keys}}
    if chosen["search_rank"] != 0:
        final["episode"] = "-"  # another architecture than the best episode's
    return final
