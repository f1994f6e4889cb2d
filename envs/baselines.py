"""Rule-based strategies to compare the agent with, each tuned to meet a cost target.

* :func:`uniform_for_target`: the same pruning ratio for every unit.
* :func:`global_for_target`: one importance threshold over all units (Torch-Pruning's global
  pruning): channel importances are normalised within each unit, one threshold over all of them
  decides how many channels each unit loses.
* :func:`random_search`: the best of N random strategies drawn through the env (whose action wall
  keeps every one of them at the target), the same number of evaluations the agent gets. Per-unit
  random actions through the wall push the late units to the maximum pruning ratio.
* :func:`sampled_search`: EagleEye's random search (Li et al., ECCV 2020): whole strategies drawn
  at random and projected onto the target band of the env's cost estimate, so every unit's
  pruning ratio is random and every candidate meets the target.
* :func:`tpe_search`: Optuna's TPE sampler proposes the per-unit propensities of the same
  projection, learning from the rewards of earlier candidates.

The first two bisect on the env's own cost measure (measured relative latency, or relative MACs);
all return :meth:`ChannelPruningEnv.evaluate_strategy`-style results. The three searches run whole
episodes through the env (so its latency calibration, caches and callbacks see them as the
agent's) and return the best episode with the per-episode history.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch_pruning as tp

from envs.pruning_env import ChannelPruningEnv
from envs.units import analyse_units
from models.errors import PruningError, RlpruneError


def _bisect(
    env: ChannelPruningEnv,
    strategy: Callable[[float], dict[str, float]],
    target: float,
    steps: int,
) -> float:
    """Smallest knob in [0, 1] whose strategy meets ``target`` (cost assumed non-increasing):
    measured cost at most :meth:`ChannelPruningEnv.target_limit` (latency: the reward's
    tolerance over the target)."""
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        result = env.evaluate_strategy(strategy(mid), with_accuracy=False)
        if env.relative_cost(result) <= env.target_limit(target):
            hi = mid
        else:
            lo = mid
    return hi


def uniform_for_target(
    env: ChannelPruningEnv, target: float | None = None, *, steps: int = 10
) -> dict[str, Any]:
    """The same pruning ratio for every unit, the smallest that meets ``target``.

    Bisection on the pruning ratio against the env's own cost measure (measured relative latency, or
    relative MACs), then one full evaluation (BN recalibration + reward-split accuracy) of the
    result.

    Args:
        env: the environment of the model to prune.
        target: target relative cost; the env's target when None.
        steps: bisection steps.

    Returns:
        :meth:`ChannelPruningEnv.evaluate_strategy`'s result, plus ``uniform_pruning_ratio``.
    """
    target = env.config.target if target is None else target
    lo, hi = env.config.min_pruning_ratio, env.config.max_pruning_ratio

    def strategy(knob: float) -> dict[str, float]:
        return {u.name: lo + knob * (hi - lo) for u in env.units}

    knob = _bisect(env, strategy, target, steps)
    result = env.evaluate_strategy(strategy(knob))
    return {**result, "uniform_pruning_ratio": lo + knob * (hi - lo)}


def unit_importances(env: ChannelPruningEnv) -> list[torch.Tensor]:
    """Per-channel importance of every unit, normalised by the unit's mean (Torch-Pruning style).

    The scores are Torch-Pruning's ``GroupMagnitudeImportance`` (``p`` = 1 for the env's ``l1``
    importance, 2 for ``l2``) on the same dependency groups the env's pruner ranks, so within a
    unit the order is exactly the pruner's; the per-unit mean normalisation makes scores of
    different units comparable for one global threshold.

    Returns:
        One float tensor ``[out_channels]`` per unit, in ``env.units`` order.

    Raises:
        PruningError: the re-traced units do not match the env's.
    """
    analysis = analyse_units(env.model, env.example_input)
    if [u.name for u in analysis.units] != [u.name for u in env.units]:
        raise PruningError("re-tracing the model gave other units than the env's; rebuild the env")
    scorer = tp.importance.GroupMagnitudeImportance(
        p=2 if env.config.importance == "l2" else 1, normalizer="mean"
    )
    scores = []
    with torch.no_grad():
        for unit, group in zip(env.units, analysis.groups, strict=True):
            score = scorer(group)
            scores.append(torch.ones(unit.out_channels) if score is None else score.cpu().float())
    return scores


def threshold_pruning_ratios(
    scores: Sequence[torch.Tensor],
    names: Sequence[str],
    threshold: float,
    *,
    min_pruning_ratio: float = 0.0,
    max_pruning_ratio: float = 0.8,
) -> dict[str, float]:
    """Per-unit pruning ratios from one global threshold: the share of channels scoring below it.

    Args:
        scores: normalised channel importances per unit.
        names: the unit names, in the order of ``scores``.
        threshold: channels with a lower score are removed.
        min_pruning_ratio: smallest pruning ratio a unit gets.
        max_pruning_ratio: largest pruning ratio a unit gets (a unit never loses more).

    Returns:
        ``{unit name: pruning ratio}``.
    """
    pruning_ratios = {}
    for name, score in zip(names, scores, strict=True):
        below = float((score < threshold).float().mean())
        pruning_ratios[name] = min(max(below, min_pruning_ratio), max_pruning_ratio)
    return pruning_ratios


def global_for_target(
    env: ChannelPruningEnv, target: float | None = None, *, steps: int = 12
) -> dict[str, Any]:
    """Global magnitude pruning: one importance threshold over all units that meets ``target``.

    Channel importances are normalised within each unit (:func:`unit_importances`); a threshold at
    the ``q``-quantile of all channels' scores gives each unit the share of its channels below it
    (:func:`threshold_pruning_ratios`, clipped to the env's pruning ratio range). ``q`` is bisected
    on the env's own cost measure, then the result is fully evaluated (BN recalibration + reward
    accuracy).

    Args:
        env: the environment of the model to prune.
        target: target relative cost; the env's target when None.
        steps: bisection steps.

    Returns:
        :meth:`ChannelPruningEnv.evaluate_strategy`'s result, plus ``threshold`` (normalised score)
        and ``quantile`` (share of all channels below it).
    """
    target = env.config.target if target is None else target
    scores = unit_importances(env)
    names = [u.name for u in env.units]
    pooled = torch.cat(scores).double()

    def threshold(q: float) -> float:
        return float(torch.quantile(pooled, q)) if q < 1.0 else float("inf")

    def strategy(q: float) -> dict[str, float]:
        return threshold_pruning_ratios(
            scores,
            names,
            threshold(q),
            min_pruning_ratio=env.config.min_pruning_ratio,
            max_pruning_ratio=env.config.max_pruning_ratio,
        )

    q = _bisect(env, strategy, target, steps)
    result = env.evaluate_strategy(strategy(q))
    return {**result, "threshold": threshold(q), "quantile": q}


#: The rules tuned to a cost target, by name: ``(env, target=None) -> result``. The env measures
#: each once at its own target (:meth:`ChannelPruningEnv.rule`) for its anchor and the final
#: selection's candidates.
TARGET_RULES = {"uniform": uniform_for_target, "global": global_for_target}


def _rollout(env: ChannelPruningEnv, rng: np.random.Generator, seed: int | None) -> dict[str, Any]:
    """One episode of uniform random actions; the info of its last step."""
    env.reset(seed=seed)
    while True:
        action = rng.uniform(-1.0, 1.0, size=(1,)).astype(np.float32)
        _, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return info


def estimated_cost(env: ChannelPruningEnv, strategy: Mapping[str, float]) -> float:
    """The env's cost estimate (calibrated latency table, or MACs) of ``strategy``, relative to the
    original."""
    return env.cost_estimate(env.pruner.keep_fractions(strategy))


def project_to_target(
    env: ChannelPruningEnv,
    propensity: Sequence[float],
    target: float | None = None,
    *,
    steps: int = 30,
    measured: bool = False,
    measured_steps: int = 10,
) -> dict[str, float]:
    """The strategy of the given per-unit propensities that just meets ``target``.

    Unit ``i`` gets ``lo + (hi - lo) * min(1, s * propensity[i])`` (``lo``, ``hi``: the env's
    ``min_pruning_ratio`` and ``max_pruning_ratio``); the scale ``s`` is bisected to the smallest
    value whose estimated cost (:func:`estimated_cost`) is at most ``target``. Units with a larger
    propensity are pruned more; all units reach the maximum pruning ratio together only if the
    target needs it.

    With ``measured`` the scale is bisected on the env's *measured* cost instead, exactly as the
    rules bisect theirs (:func:`uniform_for_target`: at most :meth:`ChannelPruningEnv.target_limit`,
    ``measured_steps`` timings of pruned copies, cached by architecture), so every candidate
    spends the budget the rules spend. The calibrated estimate errs by a few percent per strategy
    (sd 0.02 of the measured relative latency on CIFAR resnet20,
    ``docs/benchmarks/s14_latency_model``) and the search's calibration errs low on purpose, while
    accuracy at a quarter of the MACs falls by ~5 points per percent of latency there.

    Args:
        env: the environment of the model to prune.
        propensity: one value in (0, 1] per unit, in ``env.units`` order.
        target: target relative cost; the env's target when None.
        steps: bisection steps on the estimate.
        measured: bisect on the measured cost (slower: one timing per step).
        measured_steps: bisection steps on the measured cost.

    Returns:
        ``{unit name: pruning ratio}``.
    """
    target = env.config.target if target is None else target
    p = np.clip(np.asarray(propensity, dtype=float), 1e-3, 1.0)
    if p.shape != (env.num_units,):
        raise PruningError(f"need one propensity per unit ({env.num_units}), got {p.shape}")
    lo, hi = env.config.min_pruning_ratio, env.config.max_pruning_ratio

    def strategy(scale: float) -> dict[str, float]:
        fractions = np.minimum(1.0, scale * p)
        return {
            u.name: lo + (hi - lo) * float(f) for u, f in zip(env.units, fractions, strict=True)
        }

    high = 1.0 / float(p.min())  # at ``high`` every unit is at max_pruning_ratio
    scale = _scale_by_estimate(env, strategy, target, high, steps)
    if measured:  # bisect [0, twice the estimate's scale]: 1 / p.min() can be 100x that
        top = min(high, 2.0 * scale)
        if env.relative_cost(env.evaluate_strategy(strategy(top), with_accuracy=False)) > (
            env.target_limit(target)
        ):
            top = high
        scale = top * _bisect(
            env, lambda knob: _snapped(env, strategy(knob * top)), target, measured_steps
        )
    # The bisection ends on a rounding boundary of some unit's channel count; snap every pruning
    # ratio to the count it keeps, so that replaying it (float32 actions) keeps the same channels.
    return _snapped(env, strategy(scale))


def _scale_by_estimate(
    env: ChannelPruningEnv,
    strategy: Callable[[float], dict[str, float]],
    target: float,
    high: float,
    steps: int,
) -> float:
    """The smallest scale in ``[0, high]`` whose strategy's estimated cost meets ``target``."""
    low = 0.0
    if estimated_cost(env, strategy(low)) <= target:
        return low
    for _ in range(steps):
        mid = 0.5 * (low + high)
        low, high = (low, mid) if estimated_cost(env, strategy(mid)) <= target else (mid, high)
    return high


def _snapped(env: ChannelPruningEnv, strategy: Mapping[str, float]) -> dict[str, float]:
    """``strategy`` with every pruning ratio set to exactly the channel count it keeps."""
    lo, hi = env.config.min_pruning_ratio, env.config.max_pruning_ratio
    kept = env.pruner.kept_channels(strategy)
    return {u.name: min(max(1.0 - kept[u.name] / u.out_channels, lo), hi) for u in env.units}


def run_strategy(env: ChannelPruningEnv, strategy: Mapping[str, float]) -> dict[str, Any]:
    """Plays ``strategy`` as one episode of the env; the info of its last step.

    Each unit's action is the one the env maps to the strategy's pruning ratio at that step
    (:meth:`ChannelPruningEnv.pruning_ratio_to_action`, whatever its action mode). The action wall
    raises a pruning ratio only if the strategy's estimated cost misses the target, so a strategy
    from :func:`project_to_target` is played as it is, and the env calibrates its latency estimate
    with the measured result as it does for the agent's episodes.
    """
    lo = env.config.min_pruning_ratio
    env.reset()
    for unit in env.units:
        pruning_ratio = float(strategy.get(unit.name, lo))
        action = np.array([env.pruning_ratio_to_action(pruning_ratio)], dtype=np.float32)
        _, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return info
    raise PruningError("the env did not end its episode after its last unit")


def _search(
    env: ChannelPruningEnv,
    episodes: int,
    play: Callable[[int], dict[str, Any]],
    observe: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Runs ``episodes`` episodes with ``play(episode) -> info``; the best one and the history."""
    if episodes < 1:
        raise PruningError(f"a search needs at least 1 episode, got {episodes}")
    start = time.perf_counter()
    best: dict[str, Any] | None = None
    history = []
    for episode in range(episodes):
        t0 = time.perf_counter()
        info = play(episode)
        if observe is not None:
            observe(episode, info)
        history.append(episode_record(info, time.perf_counter() - t0))
        if best is None or info["reward"] > best["reward"]:
            best = {**info, "episode": episode}
    assert best is not None
    return {
        **best,
        "episodes": episodes,
        "seconds": time.perf_counter() - start,
        "history": history,
    }


def sampled_search(
    env: ChannelPruningEnv, episodes: int, seed: int = 0, *, exact: bool = False
) -> dict[str, Any]:
    """EagleEye-style random search: the best of ``episodes`` whole random strategies at target.

    Each candidate draws one propensity per unit uniformly from (0, 1] and is projected onto
    the target (:func:`project_to_target`), then played as an episode (:func:`run_strategy`):
    BN recalibration, reward-split accuracy and measured latency as for the agent. The first
    candidate is uniform pruning by the env's cost estimate (equal propensities), as the
    agent's first episode is (:meth:`agents.ddpg.AMCDDPG._uniform_episode`).

    With ``exact`` every candidate's scale is bisected on the measured cost, as the rules' knobs
    are (``project_to_target(measured=True)``: the first candidate is then the uniform rule
    itself), and the candidate is evaluated as it is (:func:`play_exact`).

    Returns:
        Like :func:`random_search`.
    """
    rng = np.random.default_rng(seed)
    run = play_exact if exact else run_strategy

    def play(episode: int) -> dict[str, Any]:
        if episode == 0:
            return run(env, project_to_target(env, np.ones(env.num_units), measured=exact))
        return run(
            env, project_to_target(env, random_propensity(rng, env.num_units), measured=exact)
        )

    return _search(env, episodes, play)


def random_propensity(rng: np.random.Generator, num_units: int) -> np.ndarray:
    """One propensity per unit, uniform in (0, 1]: EagleEye's draw of a whole strategy."""
    return 1.0 - rng.random(num_units)


def play_exact(env: ChannelPruningEnv, strategy: Mapping[str, float]) -> dict[str, Any]:
    """Evaluates ``strategy`` as it is (:meth:`ChannelPruningEnv.evaluate_strategy`), without
    the episode's action wall, whose estimate would cut a strategy that only the measurement
    puts at the target; what a budget-exact search (``exact``) plays."""
    return env.evaluate_strategy(strategy)


def tpe_search(
    env: ChannelPruningEnv, episodes: int, seed: int = 0, *, exact: bool = False
) -> dict[str, Any]:
    """Optuna TPE over the per-unit propensities of :func:`project_to_target`.

    The first candidate is uniform pruning by the cost estimate (equal propensities), the next
    ``max(10, episodes // 10)`` are random (TPE's start-up), the rest are proposed from the
    rewards so far. Needs ``optuna`` (``pip install -e ".[search]"``). ``exact``: as in
    :func:`sampled_search`.

    Returns:
        Like :func:`random_search`.

    Raises:
        RlpruneError: optuna is not installed.
    """
    try:
        import optuna
    except ImportError as err:
        raise RlpruneError(
            'the tpe search needs optuna; install it with pip install -e ".[search]"'
        ) from err
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(10, episodes // 10))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial({f"p{i}": 1.0 for i in range(env.num_units)})  # uniform pruning first
    trials: dict[int, Any] = {}
    run = play_exact if exact else run_strategy

    def play(episode: int) -> dict[str, Any]:
        trial = study.ask()
        trials[episode] = trial
        propensity = [trial.suggest_float(f"p{i}", 1e-3, 1.0) for i in range(env.num_units)]
        return run(env, project_to_target(env, propensity, measured=exact))

    def observe(episode: int, info: dict[str, Any]) -> None:
        study.tell(trials.pop(episode), float(info["reward"]))

    return _search(env, episodes, play, observe)


def random_search(env: ChannelPruningEnv, episodes: int, seed: int = 0) -> dict[str, Any]:
    """The best of ``episodes`` random strategies, drawn as uniform random actions through the env.

    The env's action wall keeps every strategy at the target (up to the measurement of the last
    step), and its reward ranks them: for the ``acc`` reward that is the reward-split accuracy,
    penalised when the measured cost overshoots the target. Ties keep the earlier episode.

    Args:
        env: the environment (its target and reward are used as they are).
        episodes: number of strategies evaluated (the agent's episode budget).
        seed: seed of the actions; the same seed gives the same strategies.

    Returns:
        The best episode's info (``accuracy``, ``relative_latency``, ``strategy``, ...) plus
        ``episode`` (its index), ``episodes``, ``seconds`` (wall time of the search) and
        ``history`` (per episode: reward, accuracy, relative costs and stage times).

    Raises:
        PruningError: ``episodes`` < 1.
    """
    rng = np.random.default_rng(seed)
    return _search(
        env, episodes, lambda episode: _rollout(env, rng, seed if episode == 0 else None)
    )


#: The scalars of an episode's info that a search's history keeps (:func:`episode_record`).
RECORD_KEYS = (
    "reward",
    "accuracy",
    "relative_latency",
    "relative_macs",
    "relative_params",
    "cached",
    "time_prune_s",
    "time_bn_s",
    "time_eval_s",
    "time_latency_s",
)


def episode_record(info: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    """One line of a search's history: the scalars of an episode's final info and its wall
    time; the stage times are 0 when the result came from the env's cache.

    Every search method records its episodes this way (the baselines here, the agent in
    :class:`agents.callbacks.SearchCallback`), so their histories compare.
    """
    row = {k: info[k] for k in RECORD_KEYS if k in info}
    if row.get("cached"):
        row.update({k: 0.0 for k in RECORD_KEYS if k.startswith("time_")})
    return {**row, "seconds": seconds}
