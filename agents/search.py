"""Run a DDPG pruning search for a number of episodes, safely: Ctrl-C and crashes keep the run."""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import configure
from tqdm.auto import tqdm

from agents.callbacks import SearchCallback
from agents.checkpoint import load_checkpoint, read_state
from agents.ddpg import AMCDDPG


class EpisodeBudgetReached(Exception):
    """Raised between episodes once the episode budget is spent (ends SB3's ``learn``)."""


class EpisodeLimit(BaseCallback):
    """Stops learning after ``episodes`` finished episodes; shows a progress bar with the best.

    The stop comes at the start of the next rollout, after SB3 has stored the last episode's
    transitions and trained on them (stopping in ``on_step`` would skip both), and before any
    random number of the next episode is drawn.
    """

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
                    lat=f"{best['relative_latency']:.2f}",
                )
        return True

    def _on_rollout_start(self) -> None:
        if self.search.episode >= self.target_episode:
            raise EpisodeBudgetReached

    def _on_training_end(self) -> None:
        self.bar.close()


@dataclass
class SearchResult:
    """What a search produced: best record (of the first network; ``bests`` per network) and
    ``history``, one :func:`envs.baselines.episode_record` per episode of this call (with
    ``episode`` and ``model``), as every search method returns it."""

    best: dict[str, Any] | None
    bests: dict[str, dict[str, Any]]
    episodes: int
    seconds: float
    interrupted: bool
    history: list[dict[str, Any]]


def read_search_state(run_dir: str | Path) -> dict[str, Any] | None:
    """The checkpoint's ``search_state.json`` of a run directory, or None when there is none.

    An interrupted checkpoint write is completed or discarded first, and the checkpoint's files
    are verified (:func:`agents.checkpoint.read_state`).
    """
    return read_state(run_dir)


def resume(run_dir: str | Path, env: Any, device: str = "cpu") -> tuple[AMCDDPG, dict[str, Any]]:
    """The agent of a run's last checkpoint, ready to continue, and the checkpoint's state.

    The agent comes with its replay buffer (without any unfinished episode) and the random
    generators as they were at the checkpoint; pass the state to :func:`run_search` as
    ``resume_state``. With a deterministic environment the continued search then equals the
    uninterrupted one. The environment's own state is not part of the checkpoint: its result
    cache and (``cost="latency"``) the calibration of its latency estimate start afresh.

    Raises:
        CheckpointError: No checkpoint in ``run_dir``, or one that does not fit ``env``.
    """
    return load_checkpoint(run_dir, env, device)


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

    TensorBoard events, ``episodes.csv``, ``best_strategy.json`` and the checkpoint
    (``agent.zip``, ``replay_buffer.pkl``, ``rng_state.pkl``, ``search_state.json``, see
    :mod:`agents.checkpoint`) are written into ``run_dir``. On Ctrl-C the agent, its buffer and
    the best strategy are saved (an unfinished episode is dropped) and the result is marked
    ``interrupted``; on any other error they are saved before the error propagates.

    Args:
        agent: the DDPG agent, its env already set.
        run_dir: output directory.
        episodes: episodes to run (in addition to those of ``resume_state``); with an agent on N
            envs (:mod:`agents.parallel`), rounded up to whole rounds of N episodes.
        max_units: the most steps an episode can have (bounds SB3's timestep budget).
        hparams: hyperparameters shown in TensorBoard's HParams tab.
        extra_best: extra fields for ``best_strategy.json``.
        resume_state: ``search_state.json`` of the run being continued (see :func:`resume`).
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
        noise=copy.deepcopy(agent.action_noise) if resume_state is not None else None,
    )
    start_episode = search.episode
    limit = EpisodeLimit(search, episodes, progress)
    callbacks = CallbackList([search, limit])
    start = time.perf_counter()
    interrupted = False
    try:
        agent.learn(
            total_timesteps=(episodes + agent.n_envs) * max_units,
            callback=callbacks,
            log_interval=1,
            reset_num_timesteps=resume_state is None,
        )
    except EpisodeBudgetReached:
        callbacks.on_training_end()
    except KeyboardInterrupt:
        interrupted = True
        limit.bar.close()
        search.save_checkpoint(mid_episode=True)
    except BaseException:
        limit.bar.close()
        with contextlib.suppress(Exception):  # the original error is the one to report
            search.save_checkpoint(mid_episode=True)
        raise
    return SearchResult(
        best=search.best,
        bests=search.bests,
        episodes=search.episode - start_episode,
        seconds=time.perf_counter() - start,
        interrupted=interrupted,
        history=search.records,
    )
