"""The Gymnasium environment: contract, episode structure, budget, determinism, errors."""

import math

import gymnasium
import numpy as np
import pytest
import torch
from fakes import CurveLatency, MacsLatency, SlowConv, Wait, record_episodes
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from torch import nn
from torch.utils.data import TensorDataset

import envs
from agents.ddpg import AgentConfig, agent_env_settings, load_agent, make_agent
from envs.baselines import global_for_target, uniform_for_target
from envs.features import NUM_FEATURES
from envs.latency import LatencyConfig
from envs.pruning_env import ChannelPruningEnv, PruningEnvConfig
from envs.rewards import TARGET_TOLERANCE
from models.errors import BudgetError, CheckpointError, RlpruneError
from models.training import TrainConfig, get_base_model


@pytest.fixture(scope="module")
def trained(mnist5k_splits, tmp_path_factory):
    model, _ = get_base_model(
        "vgg_small",
        mnist5k_splits,
        config=TrainConfig(epochs=1, progress=False),
        cache_dir=str(tmp_path_factory.mktemp("cache")),
    )
    return model


def _env(trained, splits, measured=False, **config):
    latency = None if measured else MacsLatency(trained, splits.input_shape)
    # AMC's absolute actions unless a test asks otherwise: the wall tests push it hardest.
    cfg = PruningEnvConfig(
        **{"latency": LatencyConfig(batch_size=8, repeats=5), "actions": "absolute", **config}
    )
    return ChannelPruningEnv(trained, splits.train, splits.reward_val, cfg, latency=latency)


def _episode(env, actions, seed=0):
    obs, _ = env.reset(seed=seed)
    observations, infos = [obs], []
    for step, action in enumerate(actions):
        obs, reward, terminated, truncated, info = env.step(np.array([action], dtype=np.float32))
        observations.append(obs)
        infos.append(info)
        assert not truncated
        assert terminated == (step == len(actions) - 1)
    return observations, reward, infos


def test_env_passes_gymnasium_and_sb3_checkers(trained, mnist5k_splits):
    env = _env(trained, mnist5k_splits)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env)
    assert env.observation_space.shape == (NUM_FEATURES,)


def test_episode_has_one_step_per_unit_and_reports_the_result(trained, mnist5k_splits):
    env = _env(trained, mnist5k_splits)
    obs, reward, infos = _episode(env, [0.0] * env.num_units)
    assert len(infos) == env.num_units == 6
    assert all(env.observation_space.contains(o) for o in obs)
    final = infos[-1]
    for key in ("accuracy", "latency_ms", "relative_latency", "relative_macs", "relative_params"):
        assert np.isfinite(final[key])
    assert set(final["strategy"]) == {u.name for u in env.units}
    assert isinstance(reward, float) and reward == final["reward"]
    with pytest.raises(RlpruneError, match="reset"):
        env.step(np.zeros(1, dtype=np.float32))


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_budget_holds_whatever_the_agent_does(trained, mnist5k_splits, target):
    env = _env(trained, mnist5k_splits, cost="macs", target=target)
    rng = np.random.default_rng(0)
    for _ in range(5):
        _, _, infos = _episode(env, rng.uniform(-1, 1, env.num_units))
        assert infos[-1]["relative_macs"] <= target * 1.05


def test_same_seed_same_episode_with_a_fixed_latency_source(trained, mnist5k_splits):
    actions = np.linspace(-1, 1, 6)
    runs = [_episode(_env(trained, mnist5k_splits), actions) for _ in range(2)]
    (obs_a, rew_a, info_a), (obs_b, rew_b, info_b) = runs
    np.testing.assert_array_equal(np.stack(obs_a), np.stack(obs_b))
    assert rew_a == rew_b and info_a[-1]["strategy"] == info_b[-1]["strategy"]


#: Latency curves of a layer as a function of the share of its MACs kept (tests/fakes.py).
CURVES = {
    "affine": lambda f: 0.4 + 0.6 * f,  # a fixed cost per op: pruning saves less than MACs
    "convex": lambda f: f * f,  # saves more than MACs
    "concave": math.sqrt,  # saves less, and more so the less is pruned
}


def _curve_env(trained, splits, curve, **config):
    reward_val = TensorDataset(*(t[:100] for t in splits.reward_val.tensors))
    cfg = PruningEnvConfig(**{"bn_batches": 1, "actions": "absolute", **config})
    latency = CurveLatency(trained, CURVES[curve])
    return ChannelPruningEnv(trained, splits.train, reward_val, cfg, latency=latency)


def _random_episodes(env, episodes, seed=0):
    rng = np.random.default_rng(seed)
    return [_episode(env, rng.uniform(-1, 1, env.num_units))[2][-1] for _ in range(episodes)]


def test_calibration_slope_by_hand(trained, mnist5k_splits):
    # Every layer takes 0.4 + 0.6 f of its 1 ms (f: share of its MACs kept), plus 0.5 ms fixed:
    # the real saving is 0.6 of the table's, whatever the strategy, so the slope is 0.6.
    env = _curve_env(trained, mnist5k_splits, "affine", target=0.7)
    assert env.calibration == pytest.approx(0.6)
    # Uniform 0.5 on vgg_small's chain: the first conv and the classifier keep f = 0.5, the five
    # other convs f = 0.25; 7 layers of 1 ms and 0.5 ms fixed.
    table = (0.5 + 0.5 + 5 * 0.25 + 0.5) / 7.5
    measured = (0.5 + 0.7 + 5 * 0.55 + 0.7) / 7.5
    half = [0.5] * env.num_units
    assert env.latency_estimate(half) == pytest.approx(measured)
    raw = _curve_env(trained, mnist5k_splits, "affine", target=0.7, calibrate=False)
    assert raw.calibration == 1.0 and raw.latency_estimate(half) == pytest.approx(table)


@pytest.mark.parametrize("target", [0.5, 0.7])
def test_wall_keeps_affine_latency_within_target(trained, mnist5k_splits, target):
    # A fixed cost per op plus a part proportional to MACs: the calibrated slope fits it exactly.
    env = _curve_env(trained, mnist5k_splits, "affine", target=target)
    limit = target * (1 + TARGET_TOLERANCE)
    assert all(info["relative_latency"] <= limit for info in _random_episodes(env, 8))
    _, _, infos = _episode(env, [-1.0] * env.num_units)  # the agent asks for no pruning at all
    assert infos[-1]["relative_latency"] <= limit
    # The fake is hard enough: the table alone (no calibration) lets the latency overshoot.
    raw = _curve_env(trained, mnist5k_splits, "affine", target=target, calibrate=False)
    assert max(info["relative_latency"] for info in _random_episodes(raw, 8)) > limit


@pytest.mark.parametrize("curve", ["convex", "concave"])
def test_wall_bounds_the_overshoot_on_curved_latency(trained, mnist5k_splits, curve):
    # One slope cannot fit a curve for every strategy: a few episodes overshoot, by little.
    env = _curve_env(trained, mnist5k_splits, curve, target=0.5)
    to_target = np.array([info["relative_latency"] for info in _random_episodes(env, 20)]) / 0.5
    assert np.mean(to_target <= 1 + TARGET_TOLERANCE) >= 0.8
    assert to_target.max() <= 1.1


def _known_duration_net():
    """Layers whose time is known: each conv 0.1 ms + its ms x share of MACs kept; 0.2 ms fixed."""
    torch.manual_seed(0)
    return nn.Sequential(
        SlowConv(1, 16, ms=0.3, fixed_ms=0.1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        SlowConv(16, 16, ms=0.6, fixed_ms=0.1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        SlowConv(16, 16, ms=0.3, fixed_ms=0.1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        Wait(0.2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    ).eval()


def _expected_ms(net):
    convs = [m for m in net.modules() if isinstance(m, SlowConv)]
    kept = sum(c.fixed_ms + c.ms * c.in_channels * c.out_channels / c.full for c in convs)
    return kept + 0.2


def test_wall_keeps_real_latency_within_target_on_known_durations():
    # Tolerances are wide: on a 2-core machine at load 7, a run is often preempted, the longer
    # reference more often, which biased measured ratios down by up to 0.2 here.
    net = _known_duration_net()
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 1, 8, 8, generator=generator), torch.arange(64) % 4)
    timing = LatencyConfig(batch_size=1, warmup=1, repeats=12, threads=1)
    env = ChannelPruningEnv(net, data, data, PruningEnvConfig(bn_batches=1, latency=timing))
    full_ms = _expected_ms(net)
    # Candidates are timed against a bridge near the target (uniform pruning), whose own ratio
    # to the unpruned net is timed as the durations say.
    bridge = env.latency.meter.bridge
    assert bridge is not None and 0.3 < _expected_ms(bridge) / full_ms < 0.7
    assert env.latency.meter.bridge_ratio == pytest.approx(_expected_ms(bridge) / full_ms, abs=0.15)
    errors = []
    for info in [*_random_episodes(env, 6), _episode(env, [-1.0] * env.num_units)[2][-1]]:
        expected = _expected_ms(env.pruner.apply(info["strategy"])) / full_ms
        assert expected <= 0.5 + 0.2  # the wall let no strategy far over the target through
        errors.append(abs(info["relative_latency"] - expected))
    assert np.median(errors) < 0.15  # and the env measured about what the durations say
    unbridged = PruningEnvConfig(bn_batches=1, latency=timing, latency_bridge=False)
    assert ChannelPruningEnv(net, data, data, unbridged).latency.meter.bridge is None


def test_accuracy_drops_as_pruning_grows_and_original_is_untouched(trained, mnist5k_splits):
    env = _env(trained, mnist5k_splits, cost="macs", target=0.9)
    before = [p.clone() for p in trained.parameters()]
    light = env.evaluate_strategy({u.name: 0.1 for u in env.units})
    heavy = env.evaluate_strategy({u.name: 0.8 for u in env.units})
    assert light["accuracy"] > heavy["accuracy"]
    assert light["relative_macs"] > heavy["relative_macs"]
    assert all(torch.equal(a, b) for a, b in zip(before, trained.parameters(), strict=True))
    again = env.evaluate_strategy({u.name: 0.1 for u in env.units})
    assert again["cached"] and again["accuracy"] == light["accuracy"]


def test_impossible_targets_are_rejected_up_front(trained, mnist5k_splits):
    with pytest.raises(BudgetError, match="unreachable"):
        _env(trained, mnist5k_splits, cost="macs", target=0.01)
    with pytest.raises(BudgetError, match="fraction"):
        _env(trained, mnist5k_splits, cost="macs", target=1.2)
    with pytest.raises(RlpruneError, match="reward"):
        PruningEnvConfig(reward="nope")


def test_gymnasium_make_builds_the_registered_env(trained, mnist5k_splits):
    env = gymnasium.make(
        envs.ENV_ID,
        model=trained,
        train_set=mnist5k_splits.train,
        reward_val=mnist5k_splits.reward_val,
        config=PruningEnvConfig(cost="macs"),
        latency=MacsLatency(trained, mnist5k_splits.input_shape),
    )
    obs, _ = env.reset(seed=1)
    assert obs.shape == (NUM_FEATURES,)


def test_relative_action_zero_prunes_uniformly_at_the_target(trained, mnist5k_splits):
    env = _env(
        trained, mnist5k_splits, cost="macs", target=0.5, actions="relative", anchor_rule="uniform"
    )
    _, _, infos = _episode(env, [0.0] * env.num_units)
    ratios = [info["pruning_ratio"] for info in infos]
    # One ratio for every unit (up to the channel rounding the later centres see) ...
    assert max(ratios) - min(ratios) < 0.03
    # ... the one uniform pruning, bisected on the measured MACs, needs for the target.
    uniform = uniform_for_target(env, 0.5)
    assert ratios[0] == pytest.approx(uniform["uniform_pruning_ratio"], abs=0.02)
    assert 0.47 <= infos[-1]["relative_macs"] <= 0.5 * (1 + TARGET_TOLERANCE)


@pytest.mark.parametrize("round_to", [None, 8, 16])
def test_relative_action_zero_is_the_measured_rule_with_the_anchor(
    trained, mnist5k_splits, round_to
):
    """Concave latency (square root of the MACs share kept): the calibrated estimate is off
    between its fit points, so action 0 by the estimate alone is not uniform pruning at the
    measured target; with the anchor it is exactly that rule's architecture."""
    zeros = [0.0] * 6
    config = {"target": 0.5, "round_to": round_to}
    rule = uniform_for_target(_curve_env(trained, mnist5k_splits, "concave", **config))
    anchored = _curve_env(
        trained, mnist5k_splits, "concave", actions="relative", anchor_rule="uniform", **config
    )
    for _ in range(2):  # also after the calibration has seen an episode
        final = _episode(anchored, zeros)[2][-1]
        assert final["kept_channels"] == rule["kept_channels"]
    assert final["relative_latency"] <= 0.5 * (1 + TARGET_TOLERANCE)
    plain = _curve_env(
        trained, mnist5k_splits, "concave", actions="relative", anchor=False, **config
    )
    assert _episode(plain, zeros)[2][-1]["kept_channels"] != rule["kept_channels"]


@pytest.mark.parametrize("round_to", [None, 8])
def test_relative_action_zero_is_global_magnitude_pruning_with_its_anchor(
    trained, mnist5k_splits, round_to
):
    """A per-unit anchor: action 0 everywhere is global magnitude pruning's architecture (not a
    uniform one), and ``"best"`` anchors on whichever rule has the higher reward."""
    zeros = [0.0] * 6
    config = {"target": 0.5, "round_to": round_to}
    rules_env = _curve_env(trained, mnist5k_splits, "concave", **config)
    rules = {"uniform": uniform_for_target(rules_env), "global": global_for_target(rules_env)}
    widths = [rules["global"]["kept_channels"][u.name] / u.out_channels for u in rules_env.units]
    assert max(widths) - min(widths) > 0.05  # the global rule is not uniform here
    assert rules["global"]["kept_channels"] != rules["uniform"]["kept_channels"]
    best = max(rules, key=lambda name: rules[name]["reward"])
    for anchor_rule, expected in (("global", "global"), ("best", best)):
        env = _curve_env(
            trained,
            mnist5k_splits,
            "concave",
            actions="relative",
            anchor_rule=anchor_rule,
            **config,
        )
        for _ in range(2):
            assert _episode(env, zeros)[2][-1]["kept_channels"] == rules[expected]["kept_channels"]
        assert env.anchor_name == expected


def test_envs_sharing_a_latency_store_find_the_same_rule_without_timing_it(
    trained, mnist5k_splits, tmp_path
):
    """Measured latency: a second env on the same store (and per-layer table, which fixes the
    estimate's calibration points) gets the first env's numbers, so the rule that bisects on
    them lands on the same architecture and nothing is timed again."""
    cfg = PruningEnvConfig(target=0.5, latency=LatencyConfig(batch_size=8, repeats=5))
    kept = []
    for _ in range(2):
        env = ChannelPruningEnv(
            trained,
            mnist5k_splits.train,
            mnist5k_splits.reward_val,
            cfg,
            latency_store=tmp_path,
            latency_tables=tmp_path,
        )
        kept.append(global_for_target(env)["kept_channels"])
    assert kept[0] == kept[1]
    assert env.latency.meter.misses == 0 and env.latency.meter.hits > 3


def test_relative_actions_redistribute_what_a_unit_spares(trained, mnist5k_splits):
    env = _env(
        trained, mnist5k_splits, cost="macs", target=0.5, actions="relative", anchor_rule="uniform"
    )
    centre = [i["pruning_ratio"] for i in _episode(env, [0.0] * env.num_units)[2]][0]
    spare = [i["pruning_ratio"] for i in _episode(env, [-1.0] + [0.0] * 5)[2]]
    cut = [i["pruning_ratio"] for i in _episode(env, [1.0] + [0.0] * 5)[2]]
    assert spare[0] == 0.0 and cut[0] == pytest.approx(0.8)  # -1: the minimum, +1: the maximum
    assert all(r > centre + 0.02 for r in spare[1:])  # the rest prune more ...
    assert all(r < centre - 0.02 for r in cut[1:])  # ... or less, to meet the same target
    for actions in ([-1.0] + [0.0] * 5, [1.0] + [0.0] * 5):
        assert _episode(env, actions)[2][-1]["relative_macs"] <= 0.5 * (1 + TARGET_TOLERANCE)


@pytest.mark.parametrize("actions", ["relative", "absolute"])
def test_a_fresh_relative_agent_starts_with_uniform_pruning(
    trained, mnist5k_splits, tmp_path, actions
):
    """Relative actions: the first episode is the uniform pruning uniform_for_target bisects,
    the next ones are the random warm-up; AMC's absolute actions have no such anchor."""
    from agents.methods import SearchSettings, agent_search

    env = _env(
        trained, mnist5k_splits, cost="macs", target=0.5, actions=actions, anchor_rule="uniform"
    )
    played = record_episodes(env)
    agent_search(env, SearchSettings(3, 0, 3, tmp_path / actions, progress=False))
    first, second = played[0], played[1]
    uniform = uniform_for_target(env, 0.5)["uniform_pruning_ratio"]
    if actions == "relative":
        assert max(first) - min(first) < 0.03 and first[0] == pytest.approx(uniform, abs=0.02)
        assert max(second) - min(second) > 0.1  # then random
    else:
        assert max(first) - min(first) > 0.1


def test_agent_refuses_an_env_that_maps_actions_differently(trained, mnist5k_splits, tmp_path):
    relative = _env(trained, mnist5k_splits, cost="macs", actions="relative")
    agent = make_agent(relative, AgentConfig(episodes=4, warmup_episodes=2), num_units=6)
    assert agent.action_mode == "relative"
    agent.save(tmp_path / "agent.zip")
    assert load_agent(tmp_path / "agent.zip", relative).action_mode == "relative"
    with pytest.raises(CheckpointError, match="trained with --actions relative"):
        load_agent(tmp_path / "agent.zip", _env(trained, mnist5k_splits, cost="macs"))
    # apply_agent / transfer_study play an agent in its own mode; another one asked is an error.
    assert agent_env_settings(tmp_path / "agent.zip", None, "relative")[1] == "relative"
    absolute = make_agent(_env(trained, mnist5k_splits, cost="macs"), AgentConfig(), num_units=6)
    absolute.save(tmp_path / "absolute.zip")
    assert (
        agent_env_settings(tmp_path / "absolute.zip", None, "relative")[1] == "absolute"
    )  # the default
    with pytest.raises(CheckpointError, match="trained with --actions relative; drop --actions"):
        agent_env_settings(tmp_path / "agent.zip", None, "absolute")
    with pytest.raises(RlpruneError, match="unknown action mode"):
        PruningEnvConfig(actions="sideways")


def test_reward_accuracy_in_channels_last_is_the_contiguous_one_and_timing_sees_contiguous(
    trained, mnist5k_splits, monkeypatch
):
    """The reward split is evaluated with channels-last weights (faster oneDNN convolutions),
    giving the accuracy of the contiguous copy computed by hand (prune, recalibrate, evaluate);
    the latency source then gets the copy back in contiguous format, as deployed."""
    import envs.pruning_env as pruning_env
    from envs.pruning import recalibrate_bn
    from models.training import evaluate

    formats, timed = [], []

    def recording_evaluate(model, *args):
        # one input channel: both layouts have the same strides, so they cannot be told apart
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1]
        formats.append([c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs])
        return evaluate(model, *args)

    class RecordingLatency(MacsLatency):
        def relative_latency(self, model, fresh=False):
            timed.append(all(p.is_contiguous() for p in model.parameters()))
            return super().relative_latency(model)

    monkeypatch.setattr(pruning_env, "evaluate", recording_evaluate)
    cfg = PruningEnvConfig(cost="macs", target=0.6, actions="absolute")
    env = ChannelPruningEnv(
        trained, mnist5k_splits.train, mnist5k_splits.reward_val, cfg,
        latency=RecordingLatency(trained, mnist5k_splits.input_shape),
    )  # fmt: skip
    strategy = {u.name: 0.4 + 0.1 * i for i, u in enumerate(env.units)}
    result = env.evaluate_strategy(strategy)
    assert formats[-1] and all(formats[-1]) and timed[-1]

    by_hand = recalibrate_bn(
        env.pruner.apply(strategy), mnist5k_splits.train, num_batches=cfg.bn_batches,
        batch_size=cfg.bn_batch_size,
    )  # fmt: skip
    assert all(p.is_contiguous() for p in by_hand.parameters())
    images = len(mnist5k_splits.reward_val)
    # the same numbers in another layout: at most one borderline image may round differently
    assert abs(result["accuracy"] - evaluate(by_hand, mnist5k_splits.reward_val)) <= 1 / images

    plain = ChannelPruningEnv(
        trained, mnist5k_splits.train, mnist5k_splits.reward_val,
        PruningEnvConfig(cost="macs", target=0.6, actions="absolute", channels_last=False),
        latency=RecordingLatency(trained, mnist5k_splits.input_shape),
    )  # fmt: skip
    assert plain.evaluate_strategy(strategy)["accuracy"] == pytest.approx(
        result["accuracy"], abs=1 / images
    )
    assert not any(formats[-1])


class FirstReadingLow(MacsLatency):
    """MACs latency, except that the first timing of the architectures in ``low`` reads
    ``factor`` x the true value (a disturbed reference); a fresh timing reads true."""

    def __init__(self, reference, input_shape, factor=0.6):
        super().__init__(reference, input_shape)
        self.factor, self.low, self.calls = factor, set(), []

    def relative_latency(self, model, fresh=False):
        relative, ms = super().relative_latency(model)
        key = tuple(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
        self.calls.append((key, fresh))
        if key in self.low and not fresh:
            return self.factor * relative, self.factor * ms
        return relative, ms


@pytest.mark.parametrize("band", [0.15, 0.0])
def test_a_reading_far_below_the_calibration_is_timed_again(trained, mnist5k_splits, band):
    latency = FirstReadingLow(trained, mnist5k_splits.input_shape)
    cfg = PruningEnvConfig(target=0.6, actions="absolute", retime_below=band)
    env = ChannelPruningEnv(
        trained, mnist5k_splits.train, mnist5k_splits.reward_val, cfg, latency=latency
    )
    rng = np.random.default_rng(0)
    for _ in range(6):  # measured episodes fill the calibration window
        env.reset()
        for _ in env.units:
            env.step(rng.uniform(-1, 1, size=1).astype(np.float32))
    strategy = {u.name: 0.5 for u in env.units}
    pruned = env.pruner.apply(strategy)
    key = tuple(m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d))
    true, _ = MacsLatency(trained, mnist5k_splits.input_shape).relative_latency(pruned)
    typical = env.latency_cost.typical(env.pruner.keep_fractions(strategy))
    assert typical is not None and 0.6 * true < typical * (1 - 0.15)  # the low reading is odd
    latency.low.add(key)
    latency.calls.clear()
    result = env.evaluate_strategy(strategy)
    if band:
        assert latency.calls == [(key, False), (key, True)]
        assert result["relative_latency"] == pytest.approx(true)
        assert result["latency_retimed_from"] == pytest.approx(0.6 * true)
    else:
        assert latency.calls == [(key, False)]
        assert result["relative_latency"] == pytest.approx(0.6 * true)
        assert result["latency_retimed_from"] is None
    # a reading close to the typical value is timed once
    other = {u.name: 0.3 for u in env.units}
    latency.calls.clear()
    again = env.evaluate_strategy(other)
    assert [fresh for _, fresh in latency.calls] == [False]
    assert again["latency_retimed_from"] is None


def test_retime_below_must_be_a_fraction():
    with pytest.raises(RlpruneError, match="retime_below"):
        PruningEnvConfig(retime_below=1.0)
