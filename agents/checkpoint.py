"""A search checkpoint, written and read as one consistent set that survives a kill at any moment.

The set, in the run directory: ``agent.zip`` (SB3 agent), ``replay_buffer.pkl``,
``rng_state.pkl`` (Python, NumPy, torch and action-space generators, so a resumed search draws
the numbers the uninterrupted one would have drawn) and ``search_state.json`` (episode count,
best results and the sha256 of each of the other files).

Writing (:func:`write_checkpoint`): each file goes to ``<name>.next``; then
``search_state.json.next`` is written (temp file + rename). That rename is the commit point.
Then every ``.next`` file is renamed over its final name, ``search_state.json`` last.
Reading (:func:`read_state`) first completes an interrupted write (a committed set is rolled
forward, an uncommitted one is discarded), then checks every file against its checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.ddpg import AMCDDPG, load_agent
from models.errors import CheckpointError
from models.renamed import check_current_names

STATE = "search_state.json"
FILES = ("agent.zip", "replay_buffer.pkl", "rng_state.pkl")
NEXT = ".next"
FORMAT_VERSION = 2


def write_checkpoint(agent: AMCDDPG, run_dir: str | Path, state: dict[str, Any]) -> None:
    """Write agent, replay buffer, RNG state and ``state`` (episode, bests) as one set."""
    run_dir = Path(run_dir)
    recover(run_dir)  # a set left committed by an interrupted write is completed first
    writers = {
        "agent.zip": agent.save,
        "replay_buffer.pkl": agent.save_replay_buffer,
        "rng_state.pkl": lambda f: pickle.dump(capture_rng(agent), f),
    }
    sums = {}
    for name in FILES:
        path = run_dir / (name + NEXT)
        with path.open("wb") as f:
            writers[name](f)
            f.flush()
            os.fsync(f.fileno())
        sums[name] = file_sha256(path)
    payload = {**state, "files": sums, "format_version": FORMAT_VERSION}
    tmp = run_dir / (STATE + NEXT + ".tmp")
    with tmp.open("w") as f:
        json.dump(payload, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, run_dir / (STATE + NEXT))  # commit
    _fsync_dir(run_dir)
    recover(run_dir)


def recover(run_dir: str | Path) -> None:
    """Finish a checkpoint write that a kill interrupted, or discard it if it was not committed."""
    run_dir = Path(run_dir)
    committed = run_dir / (STATE + NEXT)
    if committed.is_file():
        for name in FILES:
            if (run_dir / (name + NEXT)).is_file():
                os.replace(run_dir / (name + NEXT), run_dir / name)
        os.replace(committed, run_dir / STATE)
        _fsync_dir(run_dir)
    leftovers = [run_dir / (name + NEXT) for name in FILES] + [run_dir / (STATE + NEXT + ".tmp")]
    for path in leftovers:  # an uncommitted write: the previous checkpoint stands
        path.unlink(missing_ok=True)


def read_state(run_dir: str | Path) -> dict[str, Any] | None:
    """The checkpoint's ``search_state.json`` (None when there is none), its files verified.

    Raises:
        CheckpointError: A file is missing or does not match its recorded checksum, or the state
            was written by an older rlprune (a renamed key, see :mod:`models.renamed`).
    """
    run_dir = Path(run_dir)
    recover(run_dir)
    path = run_dir / STATE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc}); the checkpoint is lost") from None
    check_current_names(state, path, "it cannot be resumed: start a new run")
    for name, digest in state.get("files", {}).items():
        if not (run_dir / name).is_file() or file_sha256(run_dir / name) != digest:
            raise CheckpointError(
                f"{run_dir / name} does not belong to the checkpoint of episode "
                f"{state.get('episode')} (missing or changed since); restore it or start anew"
            )
    return state


def load_checkpoint(run_dir: str | Path, env: Any, device: str = "cpu") -> tuple[AMCDDPG, dict]:
    """The agent of a run's checkpoint with its replay buffer and RNG state, and the state.

    Raises:
        CheckpointError: No checkpoint, or one that does not fit ``env``.
    """
    run_dir = Path(run_dir)
    state = read_state(run_dir)
    if state is None:
        raise CheckpointError(f"no checkpoint ({STATE}) in {run_dir}")
    agent = load_agent(run_dir / "agent.zip", env, device=device)
    if (run_dir / "replay_buffer.pkl").is_file():
        agent.load_replay_buffer(run_dir / "replay_buffer.pkl")
    drop_partial_episode(agent)
    if (run_dir / "rng_state.pkl").is_file():
        with (run_dir / "rng_state.pkl").open("rb") as f:
            restore_rng(agent, pickle.load(f))
    return agent, state


def drop_partial_episode(agent: AMCDDPG) -> int:
    """Forget the transitions of an unfinished episode held by the replay buffer.

    They would otherwise be written with the *next* episode's reward. Returns their number
    (also taken off the agent's step count; with several envs, the steps of every env).
    """
    pending = getattr(agent.replay_buffer, "_pending", None)  # EpisodeRewardBuffer's episode
    if not pending:
        return 0
    count = len(pending) * agent.n_envs
    pending.clear()
    agent.num_timesteps = max(agent.num_timesteps - count, 0)
    return count


def capture_rng(agent: AMCDDPG) -> dict[str, Any]:
    """States of every random generator a search draws from."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "action_space": agent.action_space.np_random.bit_generator.state,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(agent: AMCDDPG, state: dict[str, Any]) -> None:
    """Put back the generator states of :func:`capture_rng` (loading an agent reseeds them)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    agent.action_space.np_random.bit_generator.state = state["action_space"]
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
