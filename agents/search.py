"""Run a DDPG pruning search for a number of episodes, safely: Ctrl-C and crashes keep the run."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import configure
from tqdm.auto import tqdm

from agents.callbacks import SearchCallback
from agents.ddpg import AMCDDPG


class EpisodeLimit(BaseCallback):
    """Stops learning after ``episodes`` finished episodes; shows a progress bar with the best."""

    def __init__(self, search: SearchCallback, episodes: int, progress: bool = True) -> None:
        super().__init__()
        self.search = search
        self.target_episode = search.episode + episodes
        self.bar = tqdm(
            total=episodes,
            desc="search",
            unit="ep",
            disable=None if progress else True,  # None: only on a terminal, not in a log file
            dynamic_ncols=True,
        )

    def _on_step(self) -> bool:
        done = self.search.episode - (self.target_episode - self.bar.total)
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)
            best = self.search.best
            if best is not None:
                self.bar.set_postfix(
                    best=f"{best['reward']:.4f}",
                    acc=f"{best['accuracy']:.3f}",
                    lat=f"{best['latency_ratio']:.2f}",
                )
        return self.search.episode < self.target_episode

    def _on_training_end(self) -> None:
        self.bar.close()


@dataclass
class SearchResult:
    """What a search produced: best record (of the first network; ``bests`` per network)."""

    best: dict[str, Any] | None
    bests: dict[str, dict[str, Any]]
    episodes: int
    seconds: float
    interrupted: bool


def read_search_state(run_dir: str | Path) -> dict[str, Any] | None:
    """The ``search_state.json`` of a run directory, or None when there is none."""
    path = Path(run_dir) / "search_state.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run_search(
    agent: AMCDDPG,
    run_dir: str | Path,
    episodes: int,
    *,
    max_units: int,
    hparams: dict[str, Any] | None = None,
    extra_best: dict[str, Any] | None = None,
    resume_state: dict[str, Any] | None = None,
    checkpoint_every: int = 25,
    figure_every: int = 50,
    progress: bool = True,
    per_model: bool = False,
) -> SearchResult:
    """Let ``agent`` search for ``episodes`` episodes, logging into ``run_dir``.

    TensorBoard events, ``episodes.csv``, ``best_strategy.json``, ``agent.zip``,
    ``replay_buffer.pkl`` and ``search_state.json`` are written into ``run_dir``. On Ctrl-C the
    agent, its buffer and the best strategy are saved and the result is marked ``interrupted``;
    on any other error they are saved before the error propagates.

    Args:
        agent: the DDPG agent, its env already set.
        run_dir: output directory.
        episodes: episodes to run (in addition to those of ``resume_state``).
        max_units: the most steps an episode can have (bounds SB3's timestep budget).
        hparams: hyperparameters shown in TensorBoard's HParams tab.
        extra_best: extra fields for ``best_strategy.json``.
        resume_state: ``search_state.json`` of the run being continued.
        checkpoint_every: episodes between checkpoints.
        figure_every: episodes between heat-map figures.
        progress: show a progress bar.
        per_model: several networks are searched (one best strategy each, see ``bests``).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    agent.set_logger(configure(str(run_dir), ["tensorboard"]))
    search = SearchCallback(
        run_dir,
        hparams=hparams,
        checkpoint_every=checkpoint_every,
        figure_every=figure_every,
        state=resume_state,
        extra_best=extra_best,
        per_model=per_model,
    )
    start_episode = search.episode
    limit = EpisodeLimit(search, episodes, progress)
    start = time.perf_counter()
    interrupted = False
    try:
        agent.learn(
            total_timesteps=(episodes + 1) * max_units,
            callback=CallbackList([search, limit]),
            log_interval=1,
            reset_num_timesteps=resume_state is None,
        )
    except KeyboardInterrupt:
        interrupted = True
        search.save_checkpoint()
        limit.bar.close()
    except BaseException:
        search.save_checkpoint()
        limit.bar.close()
        raise
    return SearchResult(
        best=search.best,
        bests=search.bests,
        episodes=search.episode - start_episode,
        seconds=time.perf_counter() - start,
        interrupted=interrupted,
    )
