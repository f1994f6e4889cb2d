"""Observation features (version 2): hand-computed values, selection by name, agent versioning."""

import math

import numpy as np
import pytest
from fakes import MacsLatency

from agents.ddpg import AgentConfig, load_agent, make_agent, saved_features
from envs.features import (
    ALL_FEATURES,
    FEATURES_V1,
    NetworkContext,
    check_features,
    unit_features,
)
from envs.pruning_env import ChannelPruningEnv, PruningEnvConfig
from envs.units import PrunableUnit
from models.errors import CheckpointError, RlpruneError
from models.training import TrainConfig, get_base_model


def _unit(index: int, out_channels: int = 64, feature_size: int = 8) -> PrunableUnit:
    return PrunableUnit(
        index=index,
        name=f"layer{index}",
        kind="conv",
        layer_names=(f"layer{index}", f"other{index}"),
        in_channels=32,
        out_channels=out_channels,
        kernel_size=3,
        stride=2,
        feature_size=feature_size,
        params=1000,
        macs=10_000,
        cost_share=0.25,
    )


def _context(latency, macs) -> NetworkContext:
    latency, macs = np.asarray(latency), np.asarray(macs)
    return NetworkContext(
        num_units=len(latency),
        unit_latency_shares=latency,
        unit_macs_shares=macs,
        input_size=32,
        max_out_channels=128,
    )


def _features(unit, context, **overrides) -> dict[str, float]:
    kwargs = dict(
        cost_removed=0.2,
        cost_rest=0.5,
        previous_pruning_ratio=0.3,
        target=0.5,
        required_pruning_ratio=0.1,
    )
    kwargs.update(overrides)
    values = unit_features(unit, context, names=ALL_FEATURES, **kwargs)
    return dict(zip(ALL_FEATURES, values.tolist(), strict=True))


def test_version_2_features_by_hand() -> None:
    # 4 units; unit 1 holds 0.1 of the latency (average 0.25), its neighbours 0.25 and 0.5.
    context = _context([0.15, 0.1, 0.25, 0.5], [0.25, 0.25, 0.25, 0.25])
    f = _features(_unit(1), context)
    assert f["relative_latency_share"] == pytest.approx(math.log2(0.1 * 4) / 8 + 0.5)
    assert f["relative_macs_share"] == pytest.approx(0.5)  # exactly the average unit
    assert f["previous_relative_share"] == pytest.approx(math.log2(0.15 * 4) / 8 + 0.5)
    assert f["next_relative_share"] == pytest.approx(math.log2(0.25 * 4) / 8 + 0.5)
    assert f["log_downsampling"] == pytest.approx(2 / 6)  # 32 px in, 8 px out: 4x
    assert f["relative_width"] == pytest.approx(64 / 128)
    assert f["log_num_units"] == pytest.approx(2 / 7)
    # 0.2 of the cost went, 0.8 is left and must come down to the 0.5 target.
    assert f["needed_cut"] == pytest.approx(0.3 / 0.8)
    # version-1 features keep their meaning
    assert f["relative_depth"] == pytest.approx(1 / 3) and f["latency_share"] == pytest.approx(0.1)
    assert f["coupling"] == pytest.approx(0.25) and f["cost_removed"] == pytest.approx(0.2)


def test_edge_values_are_clipped_and_neighbours_absent_at_the_ends() -> None:
    context = _context([0.97, 0.01, 0.01, 0.01], [0.25] * 4)
    first = _features(_unit(0), context, cost_removed=0.0, cost_rest=0.03)
    assert first["previous_relative_share"] == 0.0
    assert first["relative_latency_share"] == pytest.approx(math.log2(0.97 * 4) / 8 + 0.5)
    last = _features(_unit(3), context, cost_removed=0.6, cost_rest=0.0)
    assert last["next_relative_share"] == 0.0
    assert last["needed_cut"] == 0.0  # 0.6 removed already meets the 0.5 target
    assert _features(_unit(3), context, cost_removed=0.0, target=0.1)[
        "needed_cut"
    ] == pytest.approx(0.9)


def test_features_are_selected_by_name_in_order() -> None:
    context = _context([0.25] * 4, [0.25] * 4)
    kwargs = dict(
        cost_removed=0.2,
        cost_rest=0.5,
        previous_pruning_ratio=0.3,
        target=0.5,
        required_pruning_ratio=0.1,
    )
    names = ("target", "relative_depth")
    values = unit_features(_unit(2), context, names=names, **kwargs)
    assert values.tolist() == pytest.approx([0.5, 2 / 3])
    assert check_features(FEATURES_V1) == FEATURES_V1
    with pytest.raises(RlpruneError, match="unknown: \\['depth'\\]"):
        check_features(["depth"])
    with pytest.raises(RlpruneError, match="bad observation features"):
        PruningEnvConfig(features=("target", "target"))


@pytest.fixture(scope="module")
def make_env(digits_splits, tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("cache"))
    model, _ = get_base_model(
        "vgg_small", digits_splits, config=TrainConfig(epochs=1, progress=False), cache_dir=cache
    )

    def build(features=ALL_FEATURES) -> ChannelPruningEnv:
        cfg = PruningEnvConfig(cost="macs", target=0.5, bn_batches=2, features=tuple(features))
        latency = MacsLatency(model, digits_splits.input_shape)
        return ChannelPruningEnv(
            model, digits_splits.train, digits_splits.reward_val, cfg, latency=latency
        )

    return build


def test_env_observes_the_configured_features(make_env) -> None:
    env = make_env(("relative_depth", "needed_cut"))
    obs, _ = env.reset()
    assert env.observation_space.shape == (2,)
    assert obs[0] == 0.0 and obs[1] == pytest.approx(0.5)  # first unit; all 50% still to cut


def test_agent_records_its_features_and_refuses_other_observations(make_env, tmp_path) -> None:
    env = make_env(FEATURES_V1)
    agent = make_agent(env, AgentConfig(warmup_episodes=1, batch_size=8), num_units=env.num_units)
    agent.save(tmp_path / "v2.zip")
    assert saved_features(tmp_path / "v2.zip") == list(FEATURES_V1)
    load_agent(tmp_path / "v2.zip", make_env(FEATURES_V1))  # same features: fine
    with pytest.raises(CheckpointError, match="pass --features relative_depth,is_conv"):
        load_agent(tmp_path / "v2.zip", make_env())
    # An agent saved before the observation was versioned carries no feature names.
    agent.observation_features = None
    agent.save(tmp_path / "v1.zip")
    with pytest.raises(CheckpointError, match="version-1 observation.*incompatible version"):
        load_agent(tmp_path / "v1.zip", make_env(FEATURES_V1))
