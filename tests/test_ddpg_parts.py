"""AMC's additions to SB3 DDPG: episode reward on every transition, baseline, decaying noise."""

import numpy as np
import pytest
from gymnasium import spaces

from agents.ddpg import (
    AgentConfig,
    DecayingTruncatedNormalNoise,
    EpisodeRewardBuffer,
    budget_noise_decay,
)


def _buffer():
    obs_space = spaces.Box(0.0, 1.0, (3,), dtype=np.float32)
    act_space = spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)
    return EpisodeRewardBuffer(16, obs_space, act_space, device="cpu", baseline_alpha=0.5)


def test_final_reward_is_credited_to_every_transition_of_the_episode():
    buf = _buffer()
    obs = np.zeros((1, 3), dtype=np.float32)
    act = np.zeros((1, 1), dtype=np.float32)
    for _ in range(3):
        buf.add(obs, obs, act, np.array([0.0]), np.array([False]), [{}])
    assert buf.size() == 0  # held until the episode ends
    buf.add(obs, obs, act, np.array([0.7]), np.array([True]), [{}])
    assert buf.size() == 4
    np.testing.assert_allclose(buf.rewards[:4, 0], 0.7)
    np.testing.assert_allclose(buf.dones[:4, 0], 1.0)


def test_sampled_rewards_have_the_moving_average_baseline_removed():
    buf = _buffer()
    obs = np.zeros((1, 3), dtype=np.float32)
    act = np.zeros((1, 1), dtype=np.float32)
    buf.add(obs, obs, act, np.array([1.0]), np.array([True]), [{}])
    first = buf.sample(8)
    assert np.allclose(first.rewards.numpy(), 0.0)  # baseline starts at the first batch mean
    buf.add(obs, obs, act, np.array([3.0]), np.array([True]), [{}])
    buf.sample(64)
    assert 1.0 < buf.baseline < 3.0


def test_noise_is_truncated_to_the_action_range_and_decays_after_warmup():
    noise = DecayingTruncatedNormalNoise(sigma=0.5, decay=0.9, warmup_episodes=2, seed=0)
    samples = np.array([noise.sample_around(np.array([0.95])) for _ in range(500)])
    assert samples.min() >= -1.0 and samples.max() <= 1.0
    assert samples.std() > 0.1
    start = noise.current_sigma
    noise.reset()
    noise.reset()
    assert noise.current_sigma == start  # still inside the warm-up
    noise.reset()
    assert np.isclose(noise.current_sigma, start * 0.9)


def test_noise_decay_is_tied_to_the_episode_budget():
    # 100 warm-up + 200 exploitation episodes: sigma 0.5 -> 0.05 means 0.1 ** (1/200) per episode.
    config = AgentConfig(warmup_episodes=100, episodes=300, noise_sigma=0.5, noise_final=0.05)
    assert np.isclose(config.decay, 0.1 ** (1 / 200))
    noise = DecayingTruncatedNormalNoise(0.5, config.decay, 100, seed=0)
    for _ in range(300):
        noise.reset()
    assert np.isclose(noise.current_sigma, 2 * 0.05)  # [-1, 1] units: twice the ratio sigma
    noise_half = DecayingTruncatedNormalNoise(0.5, config.decay, 100, seed=0)
    for _ in range(200):
        noise_half.reset()
    # Halfway through the exploitation phase sigma is still sqrt(0.5 * 0.05), not ~0 as with
    # AMC's 0.95 (0.5 * 0.95 ** 100 = 0.003).
    assert np.isclose(noise_half.current_sigma / 2, np.sqrt(0.5 * 0.05))
    assert AgentConfig().decay == 0.95  # budget unknown: AMC's decay
    assert AgentConfig(noise_decay=0.9, episodes=300).decay == 0.9  # explicit wins
    assert budget_noise_decay(0.5, 0.05, 0) == 1.0  # no exploitation episode: no decay


def test_revisits_widen_the_noise_and_new_architectures_narrow_it_back():
    """sigma 0.15, no decay, boost 1.5: each re-visit multiplies the ratio sigma by 1.5 (up to
    0.5), each new architecture divides it (down to the schedule); warm-up episodes leave it."""
    noise = DecayingTruncatedNormalNoise(0.15, 1.0, 1, seed=0, revisit_boost=1.5)
    noise.observe(True)  # episode 0: warm-up
    assert np.isclose(noise.current_sigma / 2, 0.15)
    noise.reset()
    noise.observe(True)
    noise.observe(True)
    assert np.isclose(noise.current_sigma / 2, 0.15 * 2.25)
    noise.observe(False)
    assert np.isclose(noise.current_sigma / 2, 0.225)
    for _ in range(3):
        noise.observe(False)
    assert np.isclose(noise.current_sigma / 2, 0.15)  # never below the schedule
    for _ in range(10):
        noise.observe(True)
    assert np.isclose(noise.current_sigma / 2, 0.5)  # capped at MAX_BOOSTED_SIGMA
    noise.observe(False)
    assert np.isclose(noise.current_sigma / 2, 0.5 / 1.5)  # the cap is not a debt to repay
    off = DecayingTruncatedNormalNoise(0.15, 1.0, 0, seed=0)
    off.observe(True)
    assert off.current_sigma / 2 == 0.15


def test_the_boost_rides_on_the_decaying_schedule():
    # sigma 0.4 halving per episode, boost 2: a re-visit in episode 1 (schedule 0.2) doubles it
    # to 0.4; episode 2 plays 0.1 * 2; two more re-visits take episode 3's 0.05 * 4 to 0.05 * 8
    # = 0.4, then to the cap 0.5 (not 0.05 * 16 = 0.8).
    noise = DecayingTruncatedNormalNoise(0.4, 0.5, 0, seed=0, revisit_boost=2.0)
    noise.reset()
    noise.observe(True)
    assert np.isclose(noise.current_sigma / 2, 0.4)
    noise.reset()
    assert np.isclose(noise.current_sigma / 2, 0.2)
    noise.observe(True)
    noise.reset()
    assert np.isclose(noise.current_sigma / 2, 0.05 * 4)
    noise.observe(True)
    noise.observe(True)
    assert np.isclose(noise.current_sigma / 2, 0.5)
    with pytest.raises(ValueError, match="revisit_boost must be >= 1"):
        AgentConfig(revisit_boost=0.5)
