"""Search callbacks: TensorBoard logging of every episode, figures, CSV, checkpoints.

TensorBoard tags written here (step = episode number, SB3's own ``train/*`` and ``rollout/*``
losses use timesteps):

* ``episode/reward``, ``episode/accuracy``, ``episode/latency_ms``, ``episode/relative_latency``,
  ``episode/relative_macs``, ``episode/relative_params``, ``episode/best_reward``,
  ``episode/seconds``, ``episode/revisit`` (1: the episode's architecture had been evaluated
  before), ``episode/noise_sigma`` (the exploration sigma the episode was played with, in
  pruning-ratio units; with the agent's truncated-normal noise);
* ``strategy/<unit name>``: the pruning ratio each unit got in each episode;
* ``best/strategy`` (figure: pruning ratio per unit with its latency share),
  ``best/strategy_table`` (text), ``policy/heatmap`` (figure: pruning ratio per unit over
  episodes), and the HParams tab.

``relative_*`` is the pruned model's cost relative to the original's (pruned / original).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import HParam, TensorBoardOutputFormat

from agents.checkpoint import drop_partial_episode, write_checkpoint
from agents.ddpg import DecayingTruncatedNormalNoise, unshared
from envs.baselines import episode_record
from models.renamed import check_current_names

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CSV_FIELDS = (
    "episode",
    "model",
    "reward",
    "accuracy",
    "latency_ms",
    "relative_latency",
    "relative_macs",
    "relative_params",
    "best_reward",
    "cached",
    "seconds",
)


def strategy_table(best: dict[str, Any]) -> str:
    """The best strategy as a Markdown table (unit, pruning ratio, kept channels, latency share)."""
    shares = best.get("latency_share_by_unit", {})
    kept = best.get("kept_channels", {})
    rows = ["| unit | pruning_ratio | kept_channels | latency_share |", "|---|---|---|---|"]
    for name, pruning_ratio in best["strategy"].items():
        row = f"| {name} | {pruning_ratio:.3f} | {kept.get(name, '')} | {shares.get(name, 0):.3f} |"
        rows.append(row)
    return "\n".join(rows)


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, imported on first use (~0.5 s, figures only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def strategy_figure(best: dict[str, Any]) -> Figure:
    """Bar chart of the best strategy: pruning ratio per unit, with each unit's latency share."""
    names = list(best["strategy"])
    pruning_ratios = [best["strategy"][n] for n in names]
    shares = [best.get("latency_share_by_unit", {}).get(n, 0.0) for n in names]
    x = np.arange(len(names))
    fig, ax = _pyplot().subplots(figsize=(max(6, 0.35 * len(names)), 4))
    ax.bar(x - 0.2, pruning_ratios, 0.4, label="pruning ratio")
    ax.bar(x + 0.2, shares, 0.4, label="latency share (original)")
    ax.set_xticks(x, names, rotation=75, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_title(
        f"best strategy: episode {best['episode']}, acc {best['accuracy']:.3f}, "
        f"latency x{best['relative_latency']:.2f}, MACs x{best['relative_macs']:.2f}"
    )
    ax.legend()
    fig.tight_layout()
    return fig


def heatmap_figure(names: list[str], history: list[list[float]]) -> Figure:
    """Heat map of pruning ratios: one row per unit, one column per episode."""
    fig, ax = _pyplot().subplots(figsize=(8, max(3, 0.25 * len(names))))
    image = ax.imshow(
        np.array(history).T, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest"
    )
    ax.set_yticks(range(len(names)), names, fontsize=6)
    ax.set_xlabel("episode")
    ax.set_title("pruning ratio per unit over episodes")
    fig.colorbar(image, ax=ax, label="pruning ratio")
    fig.tight_layout()
    return fig


class SearchCallback(BaseCallback):
    """Logs every finished episode and keeps the run directory resumable.

    Writes into ``run_dir``: ``episodes.csv`` (one row per episode), ``best_strategy.json`` (on
    every new best; with several networks, ``best_strategy_<model>.json`` for each), and a
    checkpoint (:mod:`agents.checkpoint`: agent, replay buffer, RNG state, search state) at the
    start, every ``checkpoint_every`` episodes and at the end of training. Checkpoints are taken
    between episodes, after the agent has stored and trained on the finished one, so a resumed
    search continues exactly where the checkpoint left off.

    A resumed search (``state`` given) cuts ``episodes.csv`` back to the checkpoint's episodes
    (a killed run may have logged more) and keeps a best strategy found after the checkpoint.

    Args:
        run_dir: output directory of the run.
        hparams: hyperparameters for TensorBoard's HParams tab.
        checkpoint_every: episodes between checkpoints of the agent and its replay buffer.
        figure_every: episodes between heat-map figures.
        state: the ``search_state.json`` of a resumed run (episode count, best result).
        noise: the agent's exploration noise as checkpointed, put back at the start of a resumed
            search (SB3 resets the noise when learning starts, which would skip an episode).
        extra_best: extra fields written into ``best_strategy.json`` (e.g. target, cost).
        per_model: several networks are searched: one best file and figure per network.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        hparams: dict[str, Any] | None = None,
        checkpoint_every: int = 25,
        figure_every: int = 50,
        state: dict[str, Any] | None = None,
        extra_best: dict[str, Any] | None = None,
        per_model: bool = False,
        noise: Any = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        self.run_dir = Path(run_dir)
        self.hparams = hparams or {}
        self.checkpoint_every = checkpoint_every
        self.figure_every = figure_every
        self.extra_best = extra_best or {}
        self.per_model = per_model
        self.resumed = state is not None
        self.noise = noise
        state = state or {}
        self.episode: int = state.get("episode", 0)
        self.bests: dict[str, dict[str, Any]] = state.get("bests", {})
        self._saved_episode: int | None = self.episode if self.resumed else None
        self.history: dict[str, list[list[float]]] = {}
        self.unit_names: dict[str, list[str]] = {}
        #: This session's episodes (:func:`envs.baselines.episode_record`, plus episode, model).
        self.records: list[dict[str, Any]] = []
        self.writer = None
        self._episode_start = time.perf_counter()

    @property
    def best(self) -> dict[str, Any] | None:
        """Best result of the first network searched (the only one in a one-network search)."""
        return next(iter(self.bests.values()), None)

    def best_reward(self, model: str) -> float:
        best = self.bests.get(model)
        return float("-inf") if best is None else float(best["reward"])

    def _on_training_start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for fmt in self.logger.output_formats:
            if isinstance(fmt, TensorBoardOutputFormat):
                self.writer = fmt.writer
        if self.hparams and self.episode == 0:
            hp = {
                k: (str(v) if isinstance(v, list | tuple | dict) else v)
                for k, v in self.hparams.items()
            }
            metrics = {"episode/best_reward": 0.0, "episode/reward": 0.0}
            self.logger.record(
                "hparams", HParam(hp, metrics), exclude=("stdout", "log", "json", "csv")
            )
        if self.noise is not None:
            self.model.action_noise = self.noise
        if self.resumed:
            self._restore_bests()
        self._truncate_csv()

    def _truncate_csv(self) -> None:
        """Keep the rows of ``episodes.csv`` up to the current episode (all of them, or none)."""
        path = self.run_dir / "episodes.csv"
        rows = []
        if path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if self._logged_before(r)]
        tmp = self.run_dir / ".episodes.csv.tmp"
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(path)

    def _logged_before(self, row: dict[str, str | None]) -> bool:
        """A complete row (a kill can cut the last one) of an episode up to the current one."""
        if any(row.get(k) in (None, "") for k in ("episode", "seconds")):
            return False
        return row["episode"].isdigit() and int(row["episode"]) <= self.episode

    def _restore_bests(self) -> None:
        """Take back a best strategy written after the checkpoint (the run was killed later)."""
        pattern = "best_strategy_*.json" if self.per_model else "best_strategy.json"
        for path in sorted(self.run_dir.glob(pattern)):
            try:
                best = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue  # a best file is written atomically; a foreign file is not ours
            check_current_names(best, path, "it cannot be resumed: start a new run")
            model, reward = best.get("model", "model"), best.get("reward")
            if isinstance(reward, int | float) and reward > self.best_reward(model):
                self.bests[model] = best

    def _on_step(self) -> bool:
        ended = [
            info
            for info, done in zip(self.locals["infos"], self.locals["dones"], strict=True)
            if done and info.get("accuracy") is not None
        ]
        if ended:  # episodes of parallel envs end together: each is given its share of the time
            seconds = (time.perf_counter() - self._episode_start) / len(ended)
            self._episode_start = time.perf_counter()
        for info in ended:
            self._on_episode_end(info, seconds)
        return True

    def _on_episode_end(self, info: dict[str, Any], seconds: float) -> None:
        self.episode += 1
        model = info.get("model", "model")
        if info["reward"] > self.best_reward(model):
            self.bests[model] = {
                "episode": self.episode,
                "model": model,
                **{k: info[k] for k in ("reward", "accuracy", "latency_ms", "relative_latency")},
                **{
                    k: info[k]
                    for k in ("relative_macs", "relative_params", "strategy", "kept_channels")
                },
                "latency_share_by_unit": info.get("latency_share_by_unit", {}),
                **self.extra_best,
            }
            name = f"best_strategy_{model}.json" if self.per_model else "best_strategy.json"
            self._write_json(name, self.bests[model])
            self._log_best(model)
        scalars = {k: info[k] for k in ("reward", "accuracy", "latency_ms", "relative_latency")}
        scalars |= {k: info[k] for k in ("relative_macs", "relative_params")}
        scalars |= {"best_reward": self.best_reward(model), "seconds": seconds}
        if self.writer is not None:
            logged = {**scalars, "revisit": float(info["cached"])}
            noise = unshared(self.model.action_noise)
            if isinstance(noise, DecayingTruncatedNormalNoise):
                logged["noise_sigma"] = noise.current_sigma / 2.0  # [-1, 1] units to ratio units
            for key, value in logged.items():
                self.writer.add_scalar(f"episode/{key}", value, self.episode)
            for unit, pruning_ratio in info["strategy"].items():
                self.writer.add_scalar(f"strategy/{unit}", pruning_ratio, self.episode)
        with (self.run_dir / "episodes.csv").open("a", newline="") as f:
            row = {**scalars, "episode": self.episode, "model": model, "cached": info["cached"]}
            csv.writer(f).writerow([row[k] for k in CSV_FIELDS])
        self.records.append(
            {**episode_record(info, seconds), "episode": self.episode, "model": model}
        )
        self.unit_names[model] = list(info["strategy"])
        self.history.setdefault(model, []).append(list(info["strategy"].values()))
        if self.episode % self.figure_every == 0:
            self._log_heatmaps()

    def _on_rollout_start(self) -> None:
        # Between episodes: the last one is stored in the buffer and trained on. With N parallel
        # envs the count moves N at a time, so a checkpoint is due once a multiple is passed.
        every = self.checkpoint_every
        if self._saved_episode is None or self.episode // every > self._saved_episode // every:
            self.save_checkpoint()

    def _log_best(self, model: str) -> None:
        if self.writer is None:
            return
        best = self.bests[model]
        suffix = f"_{model}" if self.per_model else ""
        self.writer.add_text(f"best/strategy_table{suffix}", strategy_table(best), self.episode)
        fig = strategy_figure(best)
        self.writer.add_figure(f"best/strategy{suffix}", fig, self.episode, close=True)

    def _log_heatmaps(self) -> None:
        if self.writer is None:
            return
        for model, history in self.history.items():
            tag = f"policy/heatmap_{model}" if self.per_model else "policy/heatmap"
            fig = heatmap_figure(self.unit_names[model], history)
            self.writer.add_figure(tag, fig, self.episode, close=True)

    def _write_json(self, name: str, data: dict[str, Any]) -> None:
        tmp = self.run_dir / f".{name}.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.run_dir / name)

    def save_checkpoint(self, *, mid_episode: bool = False) -> None:
        """Save agent, replay buffer, RNG state and search state (episodes, bests) as one set.

        Args:
            mid_episode: the search stopped inside an episode (Ctrl-C, crash): its transitions
                are dropped so that a resumed search does not credit them with another reward.
        """
        if mid_episode:
            if self.episode == self._saved_episode:
                return  # the last checkpoint holds this very state, taken between episodes
            drop_partial_episode(self.model)
        write_checkpoint(self.model, self.run_dir, {"episode": self.episode, "bests": self.bests})
        self._saved_episode = self.episode

    def _on_training_end(self) -> None:
        self._log_heatmaps()
        if self.episode != self._saved_episode:
            self.save_checkpoint()
        if self.writer is not None:
            self.writer.flush()
