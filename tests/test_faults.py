"""Faults: kill -9 during a search or a checkpoint write, resumed runs, and the bad-input matrix.

Every bad input must end in exit status 2 and one ``error:`` line on stderr (no traceback), and a
run rejected before its search must leave no run directory behind.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fakes import MacsLatency

from agents.checkpoint import FILES, STATE, read_state, write_checkpoint
from agents.ddpg import AMCDDPG, AgentConfig, make_agent
from agents.search import read_search_state, resume, run_search
from envs.pruning_env import ChannelPruningEnv, PruningEnvConfig
from models.training import TrainConfig, get_base_model

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
AGENT = AgentConfig(warmup_episodes=3, batch_size=8, seed=0)


def build_env(cache_dir: str) -> ChannelPruningEnv:
    """vgg_small on digits (2 epochs, cached), MACs target, deterministic latency."""
    from models.data import load_dataset

    splits = load_dataset("digits")
    model, _ = get_base_model(
        "vgg_small", splits, config=TrainConfig(epochs=2, progress=False), cache_dir=cache_dir
    )
    cfg = PruningEnvConfig(cost="macs", target=0.5, bn_batches=2)
    latency = MacsLatency(model, splits.input_shape)
    return ChannelPruningEnv(model, splits.train, splits.reward_val, cfg, latency=latency)


def search_until_killed(run_dir: str, cache_dir: str, episodes: int, kill_at_step: int) -> None:
    """(In a child process.) The search of the resume test, killed with SIGKILL at one step."""
    torch.set_num_threads(1)
    env = build_env(cache_dir)
    original, steps = env.step, [0]

    def step(action):
        steps[0] += 1
        if steps[0] == kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(action)

    env.step = step
    agent = make_agent(env, AGENT, num_units=env.num_units)
    run_search(
        agent, run_dir, episodes, max_units=env.num_units, checkpoint_every=3, progress=False
    )


def python_child(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def env(cache, one_thread) -> ChannelPruningEnv:
    return build_env(cache)


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    """The rows of episodes.csv without the columns that depend on time and caching."""
    with (run_dir / "episodes.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in r.items() if k not in ("seconds", "cached")} for r in rows]


def test_killed_and_resumed_search_equals_the_uninterrupted_one(env, cache, tmp_path):
    episodes, units = 8, env.num_units
    whole = tmp_path / "whole"
    agent = make_agent(env, AGENT, num_units=units)
    run_search(agent, whole, episodes, max_units=units, checkpoint_every=3, progress=False)

    killed = tmp_path / "killed"
    kill_at = 7 * units + 2  # inside episode 8; the last checkpoint holds episode 6
    code = (
        "from test_faults import search_until_killed; "
        f"search_until_killed({str(killed)!r}, {cache!r}, {episodes}, {kill_at})"
    )
    proc = python_child(code)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len(csv_rows(killed)) == 7  # the log ran ahead of the checkpoint
    state = read_search_state(killed)
    assert state["episode"] == 6

    agent, state = resume(killed, env)
    result = run_search(
        agent,
        killed,
        episodes - state["episode"],
        max_units=units,
        resume_state=state,
        checkpoint_every=3,
        progress=False,
    )
    assert result.episodes == 2
    assert csv_rows(killed) == csv_rows(whole)
    assert [int(r["episode"]) for r in csv_rows(killed)] == list(range(1, episodes + 1))
    best_whole = json.loads((whole / "best_strategy.json").read_text())
    assert json.loads((killed / "best_strategy.json").read_text()) == best_whole
    assert result.best == best_whole
    final = [AMCDDPG.load(d / "agent.zip").policy.state_dict() for d in (whole, killed)]
    for key, value in final[0].items():
        assert torch.equal(value, final[1][key]), key


def write_checkpoints_forever(agent: AMCDDPG, run_dir: Path, first: int, ready: int) -> None:
    """(In a forked child.) Checkpoint ``first``, ``first + 1``, ... until killed.

    Checkpoint i is marked in all three files: the agent's step count, the first reward of
    the replay buffer and a random draw whose generator state goes into ``rng_state.pkl``.
    """
    for i in range(first, 10**9):
        agent.num_timesteps = i
        agent.replay_buffer.rewards[0, 0] = i
        random.seed(i)
        write_checkpoint(agent, run_dir, {"episode": i, "bests": {}})
        if i == first:
            os.write(ready, b"1")


def test_kill_9_during_checkpoint_writes_leaves_a_consistent_set(env, tmp_path):
    # A buffer of 50k transitions (~8 MB) makes a write take long enough to be hit mid-way.
    agent = make_agent(env, AgentConfig(buffer_episodes=100, hidden=(16, 16)), num_units=500)
    rng, last, torn = random.Random(0), 0, 0
    for _ in range(10):
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child never returns into pytest
            try:
                write_checkpoints_forever(agent, tmp_path, last + 1, ready_w)
            finally:
                os._exit(0)
        os.read(ready_r, 1)
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready_r), os.close(ready_w)
        torn += any(tmp_path.glob("*.next*"))

        state = read_state(tmp_path)  # completes or discards the interrupted write
        episode = state["episode"]
        assert episode > last  # the first checkpoint of each child was complete
        assert not list(tmp_path.glob("*.next*"))
        loaded = AMCDDPG.load(tmp_path / "agent.zip")
        assert loaded.num_timesteps == episode
        loaded.load_replay_buffer(tmp_path / "replay_buffer.pkl")
        assert loaded.replay_buffer.rewards[0, 0] == episode
        with (tmp_path / "rng_state.pkl").open("rb") as f:
            random.setstate(pickle.load(f)["python"])
        draw = random.random()
        random.seed(episode)
        assert draw == random.random()
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*FILES, STATE])
        last = episode
    assert torn > 0  # at least one kill landed inside a write (else the test proves nothing)
