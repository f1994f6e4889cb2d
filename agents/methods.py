"""Every way to find a strategy, behind one interface: ``method(env, settings) -> result``.

:data:`SEARCH_METHODS` maps a name to a function of the env to prune and a
:class:`SearchSettings` (episode budget, seed, and for the agent its warm-up and log directory).
Each returns the best result as :meth:`envs.pruning_env.ChannelPruningEnv.evaluate_strategy`
gives it (``strategy``, ``accuracy``, ``reward``, relative costs ...) plus ``seconds`` (wall time
of the search) and ``history`` (one :func:`envs.baselines.episode_record` per episode; empty for
the rules, which evaluate no episode). All of them run in the env, so its result cache holds
every architecture they evaluated and :func:`agents.selection.select_strategy` re-scores any
search's best the same way.

To add a method: a function ``(env, settings) -> result`` here (or in :mod:`envs.baselines`
when it needs no agent, wrapped by :func:`_search` or :func:`_rule`), registered in
:data:`SEARCH_METHODS`; ``benchmark.py --methods NAME`` then runs it.
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agents.ddpg import AMCDDPG, AgentConfig, make_agent
from agents.search import run_search
from envs.baselines import TARGET_RULES, random_search, sampled_search, tpe_search
from envs.pruning_env import ChannelPruningEnv
from models.errors import RlpruneError


@dataclass(frozen=True)
class SearchSettings:
    """What a search may spend, its seed, and where the agent logs.

    Attributes:
        episodes: episodes (evaluated strategies) of a search; the rules ignore it.
        seed: seed of the search's random choices (the rules have none).
        warmup: the agent's episodes of random actions first (None: :func:`default_warmup`).
        run_dir: the agent's run directory (TensorBoard, ``episodes.csv``, checkpoints at the
            start and the end); None: a temporary one, removed after the search.
        progress: show a progress bar (the agent).
        noise_sigma: the agent's exploration sigma after the warm-up (None: ``AgentConfig``'s);
            its last episode's sigma is at most this.
        warmup_mode: how the agent's warm-up explores (None: ``AgentConfig``'s; see
            :data:`agents.ddpg.WARMUP_MODES`).
        revisit_boost: the agent's sigma multiplier per re-visited architecture (None:
            ``AgentConfig``'s, off; see :class:`agents.ddpg.AgentConfig`).
    """

    episodes: int
    seed: int = 0
    warmup: int | None = None
    run_dir: Path | None = None
    progress: bool = False
    noise_sigma: float | None = None
    warmup_mode: str | None = None
    revisit_boost: float | None = None

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise RlpruneError(f"a search needs at least 1 episode, got {self.episodes}")
        if self.noise_sigma is not None and self.noise_sigma <= 0:
            raise RlpruneError(f"the noise sigma must be > 0, got {self.noise_sigma}")
        if self.revisit_boost is not None and self.revisit_boost < 1:
            raise RlpruneError(f"the revisit boost must be >= 1 (1: off), got {self.revisit_boost}")


#: ``(env, settings) -> best result with seconds and history``.
SearchMethod = Callable[[ChannelPruningEnv, SearchSettings], dict[str, Any]]


def default_warmup(episodes: int) -> int:
    """The agent's random episodes in a search of ``episodes`` when not given: a third (at
    least 1), the share of AMC's 100 of 300."""
    return max(episodes // 3, 1)


def agent_search(
    env: ChannelPruningEnv,
    settings: SearchSettings,
    agent: AMCDDPG | None = None,
    *,
    hparams: dict[str, Any] | None = None,
    extra_best: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A DDPG search (:func:`agents.search.run_search`) of ``settings.episodes`` episodes.

    Args:
        env: the env to prune in.
        settings: budget, seed, warm-up and run directory.
        agent: an agent set up for ``env`` (e.g. a trained one prepared by
            :func:`agents.transfer.prepare_warm_start`); None: a fresh one with AMC's defaults,
            ``settings.warmup`` random episodes and ``settings.seed``.
        hparams: hyperparameters for TensorBoard's HParams tab.
        extra_best: extra fields for ``best_strategy.json``.

    Returns:
        The best episode's record (see :class:`agents.callbacks.SearchCallback`) plus
        ``seconds``, ``episodes``, ``history`` and ``interrupted`` (Ctrl-C: the best so far).

    Raises:
        RlpruneError: The search finished no episode.
    """
    if agent is None:
        warmup = default_warmup(settings.episodes) if settings.warmup is None else settings.warmup
        config = AgentConfig(warmup_episodes=warmup, seed=settings.seed, episodes=settings.episodes)
        if settings.warmup_mode is not None:
            config = replace(config, warmup_mode=settings.warmup_mode)
        if settings.revisit_boost is not None:
            config = replace(config, revisit_boost=settings.revisit_boost)
        if settings.noise_sigma is not None:
            config = config.with_sigma(settings.noise_sigma)
        agent = make_agent(env, config, num_units=env.num_units)
    with tempfile.TemporaryDirectory(prefix="rlprune-search-") as tmp:
        run_dir = settings.run_dir or Path(tmp)
        result = run_search(
            agent,
            run_dir,
            settings.episodes,
            max_units=env.num_units,
            hparams=hparams,
            extra_best=extra_best,
            checkpoint_every=settings.episodes,
            figure_every=settings.episodes,
            progress=settings.progress,
        )
    if result.best is None:
        raise RlpruneError(f"the search in {run_dir} finished no episode; raise the episodes")
    return {
        **result.best,
        "seconds": result.seconds,
        "episodes": result.episodes,
        "history": result.history,
        "interrupted": result.interrupted,
    }


#: What a method adds to the best episode's record.
SEARCH_KEYS = ("seconds", "episodes", "history", "interrupted")


def best_record(result: dict[str, Any]) -> dict[str, Any]:
    """A method's result without what the search added (:data:`SEARCH_KEYS`): the best
    episode's record, as ``best_strategy.json`` holds it."""
    return {k: v for k, v in result.items() if k not in SEARCH_KEYS}


def _rule(find: Callable[[ChannelPruningEnv], dict[str, Any]]) -> SearchMethod:
    """A rule tuned to the target (no episodes, no seed) as a search method."""

    def method(env: ChannelPruningEnv, settings: SearchSettings) -> dict[str, Any]:
        start = time.perf_counter()
        result = find(env)
        return {**result, "seconds": time.perf_counter() - start, "history": []}

    return method


def _search(run: Callable[[ChannelPruningEnv, int, int], dict[str, Any]]) -> SearchMethod:
    """A baseline search ``(env, episodes, seed)`` of :mod:`envs.baselines` as a search method."""

    def method(env: ChannelPruningEnv, settings: SearchSettings) -> dict[str, Any]:
        return run(env, settings.episodes, settings.seed)

    return method


#: Every method by name; ``uniform`` and ``global`` are rules (see :data:`RULES`).
SEARCH_METHODS: dict[str, SearchMethod] = {
    **{name: _rule(rule) for name, rule in TARGET_RULES.items()},
    "random": _search(random_search),
    "sampled": _search(sampled_search),
    "tpe": _search(tpe_search),
    # Budget-exact: every candidate's scale bisected on the measured cost, as the rules' knobs.
    "sampled_exact": _search(functools.partial(sampled_search, exact=True)),
    "tpe_exact": _search(functools.partial(tpe_search, exact=True)),
    "agent": agent_search,
}
#: Methods whose result depends on neither the seed nor the budget: one strategy, no history.
RULES = tuple(TARGET_RULES)


def run_method(name: str, env: ChannelPruningEnv, settings: SearchSettings) -> dict[str, Any]:
    """:data:`SEARCH_METHODS` ``[name](env, settings)``.

    Raises:
        RlpruneError: Unknown method name.
    """
    if name not in SEARCH_METHODS:
        raise RlpruneError(f"unknown search method '{name}'; choose {', '.join(SEARCH_METHODS)}")
    return SEARCH_METHODS[name](env, settings)
