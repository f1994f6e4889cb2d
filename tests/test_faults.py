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
import runpy
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


def test_resume_keeps_a_later_best_and_cuts_the_log_back(env, tmp_path):
    agent = make_agent(env, AGENT, num_units=env.num_units)
    run_search(agent, tmp_path, 3, max_units=env.num_units, progress=False)
    # as if killed after logging episode 4, whose strategy was the best so far
    later = {**json.loads((tmp_path / "best_strategy.json").read_text()), "episode": 4}
    later["reward"] += 1.0
    (tmp_path / "best_strategy.json").write_text(json.dumps(later))
    with (tmp_path / "episodes.csv").open("a") as f:
        f.write("4,model,0.5,0.5,1,0.5,0.5,0.5,1.5,False,0.1\n5,mod")  # and cut in episode 5

    agent, state = resume(tmp_path, env)
    assert state["episode"] == 3 and state["bests"]["model"]["reward"] < later["reward"]
    result = run_search(
        agent, tmp_path, 1, max_units=env.num_units, resume_state=state, progress=False
    )
    assert result.best == later
    assert read_search_state(tmp_path)["bests"]["model"] == later
    assert [int(r["episode"]) for r in csv_rows(tmp_path)] == [1, 2, 3, 4]


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


# ----------------------------------------------------------------------------- the scripts
SCRIPTS = ROOT / "scripts"
sys.path.insert(0, str(SCRIPTS))  # the scripts import their shared `common` module
TINY = [
    "--dataset", "digits", "--cost", "macs", "--base-epochs", "1", "--fine-tune-epochs", "1",
    "--bn-batches", "2", "--latency-repeats", "3", "--no-progress",
]  # fmt: skip


def run_in_process(script: str, argv: list[str], capsys) -> tuple[int, str]:
    """Runs ``scripts/<script>`` as its ``__main__`` would; returns (exit status, stderr)."""
    namespace = runpy.run_path(str(SCRIPTS / script), run_name="fault_test")
    common = sys.modules["common"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        if script == "train_base.py":  # handles its errors itself
            sys.exit(namespace["main"](argv))
        common.run_cli(lambda: namespace["main"](argv))
    return exit_.value.code, capsys.readouterr().err


def assert_one_line_error(code: int, stderr: str, message: str) -> None:
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert message in lines[0], stderr


@pytest.fixture
def out(tmp_path, monkeypatch, cache) -> Path:
    """An output directory that must stay empty, and the module's base-model cache."""
    monkeypatch.setenv("RLPRUNE_CACHE", cache)
    return tmp_path / "runs"


@pytest.fixture(scope="module")
def a_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("file") / "plain.txt"
    path.write_text("not a directory\n")
    return path


EARLY = [  # rejected before any data or model is loaded
    ("--threads", "0", "--threads must be >= 1"),
    ("--threads", "-1", "--threads must be >= 1"),
    ("--latency-batch-size", "-4", "--latency-batch-size must be >= 1"),
    ("--latency-batch-size", "0", "--latency-batch-size must be >= 1"),
    ("--latency-repeats", "0", "--latency-repeats must be >= 1"),
    ("--episodes", "0", "--episodes must be >= 1"),
    ("--episodes", "-1", "--episodes must be >= 1"),
    ("--warmup", "4", "--warmup must be in [0, --episodes)"),
    ("--fine-tune-epochs", "-1", "--fine-tune-epochs must be >= 0"),
    ("--target", "1.5", "--target must be a fraction"),
    ("--min-pruning-ratio", "0.9", "min_pruning_ratio < max_pruning_ratio"),
    ("--bn-batches", "0", "--bn-batches must be >= 1"),
    ("--noise-sigma", "0", "--noise-sigma must be > 0"),
    ("--revisit-boost", "0.5", "--revisit-boost must be >= 1"),
]


@pytest.mark.parametrize(("flag", "value", "message"), EARLY)
def test_train_agent_rejects_bad_settings_before_any_work(flag, value, message, out, capsys):
    argv = [*TINY, "--episodes", "4", "--warmup", "2", "--output-dir", str(out), flag, value]
    code, stderr = run_in_process("train_agent.py", argv, capsys)
    assert_one_line_error(code, stderr, message)
    assert not out.exists()


def test_unwritable_output_dir_is_rejected_first(out, a_file, capsys):
    for script, extra in (
        ("train_agent.py", ["--episodes", "4", "--warmup", "2"]),
        ("apply_agent.py", ["--agent", str(a_file)]),  # any file: rejected before loading it
    ):
        argv = [*TINY, *extra, "--output-dir", str(a_file / "runs")]
        code, stderr = run_in_process(script, argv, capsys)
        assert_one_line_error(code, stderr, "is a file, not a directory")
    code, stderr = run_in_process(
        "fine_tune.py", ["x.pt", "--epochs", "1", "--output", str(a_file / "ft.pt")], capsys
    )
    assert_one_line_error(code, stderr, "is a file, not a directory")
    code, stderr = run_in_process("evaluate.py", ["x.pt", "--json", str(a_file / "e.json")], capsys)
    assert_one_line_error(code, stderr, "is a file, not a directory")
    code, stderr = run_in_process(
        "export_model.py", ["x.pt", "--output-dir", str(a_file / "d")], capsys
    )
    assert_one_line_error(code, stderr, "is a file, not a directory")


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("apply_agent.py", ["--agent", "/nonexistent/run"], "no agent file"),
        ("apply_agent.py", ["--episodes", "-1"], "--episodes must be >= 0"),
        ("apply_agent.py", ["--threads", "0"], "--threads must be >= 1"),
        ("apply_agent.py", ["--revisit-boost", "0.9"], "--revisit-boost must be >= 1"),
        ("evaluate.py", ["x.pt", "--threads", "0"], "--threads must be >= 1"),
        ("evaluate.py", ["x.pt", "--latency-batch-size", "-4"], "--latency-batch-size must be"),
        ("fine_tune.py", ["x.pt", "--epochs", "0"], "--epochs must be >= 1"),
        ("train_base.py", ["--epochs", "0", "--dataset", "digits"], "--epochs must be >= 1"),
        ("train_base.py", ["--model", "os:system", "--dataset", "digits"], "'os:system' failed"),
        ("train_agent.py", ["--resume", "/nonexistent/run"], "no config.json"),
    ],
)
def test_other_scripts_reject_bad_settings(script, argv, message, out, a_file, capsys):
    if script == "apply_agent.py":
        argv = [*TINY, "--output-dir", str(out), *argv]
        if "--agent" not in argv:
            argv += ["--agent", str(a_file)]
    code, stderr = run_in_process(script, argv, capsys)
    assert_one_line_error(code, stderr, message)
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "os:system"], "user model 'os:system' failed when called (TypeError"),
        (["--model", "resnt20"], "did you mean 'resnet20'"),
        (["--target", "0.01"], "unreachable"),
    ],
)
def test_bad_model_or_target_leaves_no_run_directory(flags, message, out, capsys):
    argv = [*TINY, "--episodes", "4", "--warmup", "2", "--output-dir", str(out), *flags]
    code, stderr = run_in_process("train_agent.py", argv, capsys)
    assert_one_line_error(code, stderr, message)
    assert not out.exists() or not any(out.iterdir())


def test_one_class_image_folder_is_rejected(out, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "images" / "only_class"
    folder.mkdir(parents=True)
    for i in range(30):
        Image.new("L", (8, 8), color=i * 8).save(folder / f"{i}.png")
    argv = [*TINY, "--dataset", f"imagefolder:{folder.parent}", "--output-dir", str(out)]
    code, stderr = run_in_process("train_agent.py", argv, capsys)
    assert_one_line_error(code, stderr, "needs at least 2")
    assert not out.exists()


def test_ctrl_c_during_base_training_is_one_line(out, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("agents.workload.get_base_model", interrupted)
    code, stderr = run_in_process("train_agent.py", [*TINY, "--output-dir", str(out)], capsys)
    assert code == 130 and stderr.strip() == "interrupted (Ctrl-C)"
    assert not out.exists()
    monkeypatch.setattr("models.training.get_base_model", interrupted)
    code, stderr = run_in_process("train_base.py", ["--dataset", "digits"], capsys)
    assert code == 130 and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1


def test_resume_refuses_changed_settings(out, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    argv = ["--resume", str(run_dir), "--target", "0.3"]
    code, stderr = run_in_process("train_agent.py", argv, capsys)
    assert_one_line_error(code, stderr, "only --episodes (the new total) and --no-progress")


def test_resume_of_a_run_written_by_an_older_rlprune_is_one_clear_error(out, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    old = {"model": "vgg_small", "dataset": "digits", "target": 0.5, "max_ratio": 0.8}
    (run_dir / "config.json").write_text(json.dumps(old))  # flat, keyed by the old flags
    code, stderr = run_in_process("train_agent.py", ["--resume", str(run_dir)], capsys)
    assert_one_line_error(code, stderr, f"{run_dir / 'config.json'} was written by an older")
    assert "'max_ratio'" in stderr and "start a new run" in stderr


def test_a_real_process_exits_2_with_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RLPRUNE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "train_agent.py"), "--threads", "0"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert_one_line_error(proc.returncode, proc.stderr, "--threads must be >= 1")
    assert not (tmp_path / "runs").exists()


def test_runs_started_at_once_claim_different_directories(tmp_path):
    common = __import__("common")
    pipes, pids = [], []
    for i in range(4):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                path = common.claim_run_dir(str(tmp_path), "same", {"child": i})
                os.write(write, str(path).encode())
            finally:
                os._exit(0)
        pipes.append((read, write))
        pids.append(pid)
    claimed = []
    for pid, (read, write) in zip(pids, pipes, strict=True):
        os.waitpid(pid, 0)
        os.close(write)
        claimed.append(Path(os.read(read, 4096).decode()))
        os.close(read)
    assert len(set(claimed)) == 4
    assert sorted(p.name for p in claimed) == ["same", "same-2", "same-3", "same-4"]
    children = sorted(json.loads((p / "config.json").read_text())["child"] for p in claimed)
    assert children == [0, 1, 2, 3]
    common.lock_run_dir(claimed[0])  # no child holds it any more
    with pytest.raises(Exception, match="in use by another rlprune process"):
        common.lock_run_dir(claimed[0])


@pytest.mark.slow
def test_train_agent_killed_then_resumed_logs_each_episode_once(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RLPRUNE_CACHE": str(tmp_path / "cache")}
    args = [sys.executable, str(SCRIPTS / "train_agent.py"), *TINY, "--warmup", "2"]
    log = tmp_path / "runs" / "vgg_small_digits_macs0.5_s0" / "episodes.csv"
    proc = subprocess.Popen(
        [*args, "--episodes", "200", "--output-dir", str(tmp_path / "runs")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (log.is_file() and len(log.read_text().splitlines()) > 5):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    proc.kill()  # SIGKILL: no checkpoint since the one at episode 0
    proc.wait()

    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "train_agent.py"), "--resume", str(log.parent),
         "--episodes", "6", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "at episode 0, 6 to go" in done.stdout
    with log.open(newline="") as f:
        assert [int(r["episode"]) for r in csv.DictReader(f)] == [1, 2, 3, 4, 5, 6]
    assert json.loads((log.parent / "config.json").read_text())["search"]["episodes"] == 6
    assert read_search_state(log.parent)["episode"] == 6
