"""Parallel episodes (agents/parallel.py): worker processes and Ray actors vs the serial search.

The latency source is deterministic (MACs, as in test_search.py) and logs when each timing ran,
so the runs can be compared exactly and the timings checked for overlap.
"""

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fakes import MacsLatency

from agents import callbacks
from agents.checkpoint import write_checkpoint
from agents.ddpg import AgentConfig, EpisodeRewardBuffer, make_agent
from agents.parallel import collect_results, make_vec_env, require_ray
from agents.search import read_search_state, resume, run_search
from envs.pruning_env import ChannelPruningEnv, PruningEnvConfig
from models.errors import RlpruneError

ROOT = Path(__file__).resolve().parents[1]
TEXT_OUT = {"capture_output": True, "text": True, "timeout": 600}
sys.path.insert(0, str(ROOT / "scripts"))
import benchmark_parallel  # noqa: E402

SLEEP_S = 0.1  # each timing's length: two unlocked timings started together would overlap


class LoggedLatency(MacsLatency):
    """MACs-proportional latency whose every timing takes SLEEP_S and appends its interval to
    ``log`` (a file shared by the worker processes)."""

    def __init__(self, reference, input_shape, log) -> None:
        super().__init__(reference, input_shape)
        self.log = str(log)

    def relative_latency(self, model, fresh=False):
        start = time.time()
        time.sleep(SLEEP_S)
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()} {start} {time.time()}\n")
        return super().relative_latency(model)


def intervals(log):
    with open(log) as f:
        return sorted((float(a), float(b)) for _, a, b in (line.split() for line in f))


def assert_never_concurrent(log):
    spans = intervals(log)
    assert spans, "nothing was timed"
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, f"two timings overlapped: one ended at {end}, another began {start}"


@pytest.fixture(scope="module")
def env(digits_splits, digits_vgg_small_2ep, tmp_path_factory):
    model = digits_vgg_small_2ep
    log = tmp_path_factory.mktemp("timings") / "latency.log"
    latency = LoggedLatency(model, digits_splits.input_shape, log)
    cfg = PruningEnvConfig(cost="macs", target=0.5, bn_batches=2)
    return ChannelPruningEnv(
        model, digits_splits.train, digits_splits.reward_val, cfg, latency=latency
    )


@pytest.fixture(scope="module")
def vec_env(env):
    vec = make_vec_env(env, 2)
    yield vec
    vec.close()


def config(**kwargs) -> AgentConfig:
    return AgentConfig(**{"warmup_episodes": 2, "batch_size": 8, "seed": 0, **kwargs})


def episodes(run_dir) -> list[tuple]:
    """(episode, reward, accuracy, relative_macs) of every row of a run's episodes.csv."""
    with open(run_dir / "episodes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keys = ("episode", "reward", "accuracy", "relative_macs")
    return [tuple(float(r[k]) for k in keys) for r in rows]


def transitions(buffer, rows) -> list[tuple]:
    """The (observation, action, reward) transitions of a replay buffer's first ``rows`` rows,
    every env's, sorted (their order is not the point)."""
    out = []
    for pos in range(rows):
        for e in range(buffer.n_envs):
            parts = (buffer.observations[pos, e], buffer.actions[pos, e], buffer.rewards[pos, e])
            out.append(tuple(np.concatenate([np.ravel(p) for p in parts]).round(6).tolist()))
    return sorted(out)


def test_buffer_credits_each_env_its_own_final_reward(env):
    buffer = EpisodeRewardBuffer(10, env.observation_space, env.action_space, n_envs=2)
    obs, action = np.zeros((2, env.observation_space.shape[0])), np.zeros((2, 1))
    for step in range(3):
        done = np.array([step == 2, step == 2])
        reward = np.array([0.25, 0.75]) if step == 2 else np.zeros(2)
        buffer.add(obs, obs, action, reward, done, [{}, {}])
    assert buffer.pos == 3
    np.testing.assert_array_equal(buffer.rewards[:3], [[0.25, 0.75]] * 3)
    np.testing.assert_array_equal(buffer.dones[:3], np.ones((3, 2)))
    with pytest.raises(ValueError, match="end together"):
        buffer.add(obs, obs, action, np.zeros(2), np.array([True, False]), [{}, {}])


def test_parallel_search_equals_serial_and_resumes_exactly(env, vec_env, tmp_path):
    # The serial warm-up: 2 episodes of random actions.
    serial = make_agent(env, config(), num_units=env.num_units)
    run_search(serial, tmp_path / "serial", 2, max_units=env.num_units, progress=False)

    # Two envs: a warm-up round (2 episodes), then two rounds of acting and learning.
    agent = make_agent(vec_env, config(), num_units=env.num_units)
    assert agent.observation_features == list(env.feature_names)
    result = run_search(agent, tmp_path / "full", 6, max_units=env.num_units, progress=False)
    assert result.episodes == 6
    full = episodes(tmp_path / "full")
    assert [row[0] for row in full] == [1, 2, 3, 4, 5, 6]

    # The warm-up evaluates the serial warm-up's strategies, and each env's transitions carry
    # that env's own episode reward: the same transitions as the serial buffer's.
    assert sorted(row[1:] for row in full[:2]) == sorted(
        row[1:] for row in episodes(tmp_path / "serial")
    )
    units = env.num_units
    assert transitions(agent.replay_buffer, units) == transitions(serial.replay_buffer, 2 * units)
    # Every later round trained on all of its episodes' transitions.
    assert agent.replay_buffer.pos == 3 * units and agent.num_timesteps == 6 * units

    # Stopped after 4 episodes and resumed to 6: the uninterrupted run, episode for episode.
    agent = make_agent(vec_env, config(), num_units=env.num_units)
    run_search(agent, tmp_path / "split", 4, max_units=env.num_units, progress=False)
    agent, state = resume(tmp_path / "split", vec_env)
    assert state["episode"] == 4
    run_search(
        agent, tmp_path / "split", 2, max_units=env.num_units, resume_state=state, progress=False
    )
    assert episodes(tmp_path / "split") == full

    # The workers' results reach the env's cache, where the final selection reads them.
    assert collect_results(vec_env, env) > 0
    rewards = {round(r["reward"], 9) for r in env.evaluated_results()}
    assert {round(row[1], 9) for row in full} <= rewards


def test_workers_never_time_two_candidates_at_once(env, vec_env, tmp_path):
    log = env.latency.log
    open(log, "w").close()
    agent = make_agent(vec_env, config(seed=5), num_units=env.num_units)
    run_search(agent, tmp_path, 4, max_units=env.num_units, progress=False)
    with open(tmp_path / "episodes.csv", newline="") as f:
        timed = [row for row in csv.DictReader(f) if row["cached"] == "False"]
    assert len(timed) >= 2 and len(intervals(log)) == len(timed)  # once per new architecture
    assert_never_concurrent(log)


def test_checkpoints_fall_on_multiples_with_two_envs(vec_env, env, tmp_path, monkeypatch):
    saved = []

    def write(agent, run_dir, state):  # records each checkpoint's episode, then writes it
        saved.append(state["episode"])
        write_checkpoint(agent, run_dir, state)

    monkeypatch.setattr(callbacks, "write_checkpoint", write)
    agent = make_agent(vec_env, config(), num_units=env.num_units)
    run_search(agent, tmp_path, 6, max_units=env.num_units, checkpoint_every=3, progress=False)
    # Episodes move 2 at a time (2, 4, 6): a checkpoint once 3 is passed, and at the end.
    assert saved == [0, 4, 6]
    assert read_search_state(tmp_path)["episode"] == 6


def test_bad_parallel_settings_are_one_line_errors(env, monkeypatch):
    with pytest.raises(RlpruneError, match="--envs must be >= 1"):
        make_vec_env(env, 0)
    monkeypatch.setitem(sys.modules, "ray", None)  # import fails as if not installed
    with pytest.raises(RlpruneError, match=r'pip install -e "\.\[ray\]"'):
        require_ray("--ray-address")


def test_unreachable_ray_address_is_a_one_line_error(env):
    pytest.importorskip("ray", reason='Ray is the ray extra: pip install -e ".[ray]"')
    start = time.perf_counter()
    with pytest.raises(RlpruneError, match="--ray-address 127.0.0.1:1: nothing answers"):
        make_vec_env(env, 2, ray_address="127.0.0.1:1")
    assert time.perf_counter() - start < 10  # not Ray's minutes of retries


def test_local_ray_cluster_runs_the_same_search(env, vec_env, tmp_path):
    pytest.importorskip("ray", reason='Ray is the ray extra: pip install -e ".[ray]"')
    agent = make_agent(vec_env, config(seed=9), num_units=env.num_units)
    run_search(agent, tmp_path / "processes", 4, max_units=env.num_units, progress=False)

    log = env.latency.log
    open(log, "w").close()
    ray_env = make_vec_env(env, 2, ray_address="local")
    try:
        agent = make_agent(ray_env, config(seed=9), num_units=env.num_units)
        result = run_search(agent, tmp_path / "ray", 4, max_units=env.num_units, progress=False)
        new = collect_results(ray_env, env)
    finally:
        ray_env.close()
    assert result.episodes == 4
    assert episodes(tmp_path / "ray") == episodes(tmp_path / "processes")
    assert new >= 2 and len(intervals(log)) == new  # each new architecture timed once
    assert_never_concurrent(log)  # by the timing actor, one call at a time


def test_parallel_efficiency_is_rate_over_n_times_the_serial_rate():
    rows = [
        {"task": "a", "envs": 1, "episodes_per_s": 2.0},
        {"task": "a", "envs": 2, "episodes_per_s": 3.0},
        {"task": "a", "envs": 4, "episodes_per_s": 4.0},
        {"task": "b", "envs": 2, "episodes_per_s": 1.0},  # no serial run to compare with
    ]
    benchmark_parallel.efficiency(rows)
    assert [r["efficiency"] for r in rows] == [1.0, 0.75, 0.5, None]


def test_benchmark_parallel_writes_its_table(tmp_path, monkeypatch):
    monkeypatch.setenv("RLPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench"
    flags = ["--tasks", "tiny", "--envs", "1,2", "--episodes", "2", "--warmup", "1"]
    flags += ["--target", "0.8"]  # a tiny net on a loaded machine: 0.5 can be out of reach
    flags += ["--latency-repeats", "3", "--latency-batch-size", "64"]
    flags += ["--output-dir", str(out), "--no-progress"]
    assert benchmark_parallel.main(flags) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["task"], r["envs"], r["episodes"]) for r in rows] == [("tiny", 1, 2), ("tiny", 2, 2)]
    assert "| tiny | 2 | 2 |" in (out / "results.md").read_text()
    with pytest.raises(RlpruneError, match="--envs takes numbers >= 1"):
        benchmark_parallel.main(["--envs", "0,2", "--output-dir", str(out)])


def train_agent(*flags: str) -> None:
    """scripts/train_agent.py in a fresh process (a run holds its directory's lock until exit)."""
    script = [sys.executable, str(ROOT / "scripts" / "train_agent.py"), *flags]
    proc = subprocess.run(script, env={**os.environ, "PYTHONPATH": str(ROOT)}, **TEXT_OUT)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_train_agent_with_two_envs_selects_among_the_workers_results_and_resumes(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("RLPRUNE_CACHE", str(tmp_path / "cache"))
    flags = ["--dataset", "digits", "--cost", "macs", "--base-epochs", "1", "--bn-batches", "2"]
    flags += ["--fine-tune-epochs", "0", "--latency-repeats", "3", "--select-steps", "2"]
    flags += ["--warmup", "2", "--envs", "2", "--no-progress", "--output-dir", str(tmp_path)]
    train_agent(*flags, "--episodes", "4")
    run_dir = tmp_path / "vgg_small_digits_macs0.5_s0"
    with open(run_dir / "episodes.csv", newline="") as f:
        new = [row for row in csv.DictReader(f) if row["cached"] == "False"]
    # The final choice re-scores the top 5 of every architecture the two workers evaluated (each
    # worker caches its own: both may play the same one, e.g. uniform pruning, the first
    # episode and a fresh actor's output; an architecture is told by its MACs and parameters;
    # those over the 0.5 target do not compete), and of the two rules (uniform, global) unless
    # played.
    archs = {
        (row["relative_macs"], row["relative_params"])
        for row in new
        if float(row["relative_macs"]) <= 0.5
    }
    selection = json.loads((run_dir / "selection.json").read_text())
    assert 1 < min(5, len(archs)) <= len(selection["candidates"]) <= min(5, len(archs) + 2)

    train_agent("--resume", str(run_dir), "--episodes", "6", "--no-progress")
    assert [row[0] for row in episodes(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert json.loads((run_dir / "config.json").read_text())["search"]["envs"] == 2
