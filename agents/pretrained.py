"""The agent shipped with rlprune: trained across several architectures, used when none is given.

``agents/pretrained/index.json`` lists each shipped agent: its file, SHA-256, the observation it
was trained on (feature names and version), the networks and dataset of its training episodes,
the target and cost, the episode count and the command that produced it. The entry marked
``"default": true`` is what ``scripts/apply_agent.py`` and ``scripts/transfer_study.py`` load
when no ``--agent`` is passed. ``scripts/ship_agent.py`` adds a finished run's agent here.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Any

from agents.checkpoint import read_state
from agents.config import load_run_config
from agents.ddpg import saved_features
from envs.features import FEATURES_VERSION
from models.atomic import write_json_atomic
from models.errors import CheckpointError
from models.pretrained import file_sha256

AGENT_DIR = Path(__file__).resolve().parent / "pretrained"
INDEX = "index.json"

# The flags of train_agent.py a shipped agent's command repeats, in this order (the rest are the
# defaults of the run's rlprune version, kept flat by flag name in the entry's ``settings``).
_COMMAND_FLAGS = (
    "model",
    "dataset",
    "data_seed",
    "target",
    "cost",
    "episodes",
    "warmup",
    "seed",
    "features",
    "fine_tune_epochs",
    "round_to",
    "actions",
)


def read_agent_index(root: Path = AGENT_DIR) -> list[dict[str, Any]]:
    """The entries of the shipped-agent index (empty when there is none)."""
    path = root / INDEX
    if not path.is_file():
        return []
    try:
        return json.loads(path.read_text())["agents"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{path} is not a readable agent index ({type(exc).__name__}); restore it with "
            "git checkout"
        ) from None


def default_agent(root: Path = AGENT_DIR) -> tuple[Path, dict[str, Any]]:
    """The default shipped agent's file, checksum verified, and its index entry.

    Raises:
        CheckpointError: No default agent is shipped, or its file is missing or altered.
    """
    entries = [e for e in read_agent_index(root) if e.get("default")]
    if not entries:
        raise CheckpointError(
            f"no default agent is shipped in {root}; pass --agent RUN/agent.zip (train one with "
            "scripts/train_agent.py)"
        )
    entry = entries[-1]
    path = root / entry["file"]
    if not path.is_file() or file_sha256(path) != entry["sha256"]:
        raise CheckpointError(
            f"shipped agent {path} is missing or altered (SHA-256 mismatch); restore it with git "
            "checkout, or pass --agent RUN/agent.zip"
        )
    return path, entry


def training_command(settings: dict[str, Any]) -> str:
    """The ``train_agent.py`` command of a run, from its flat settings
    (:meth:`agents.config.RunConfig.to_settings` of its ``config.json``)."""
    words = ["python", "scripts/train_agent.py"]
    for key in _COMMAND_FLAGS:
        value = settings.get(key)
        if value is not None:
            words += ["--" + key.replace("_", "-"), str(value)]
    return shlex.join(words)


def ship_agent(
    run_dir: Path, name: str, *, default: bool = True, root: Path = AGENT_DIR
) -> dict[str, Any]:
    """Copies the finished run's ``agent.zip`` into ``root`` as ``<name>.zip`` and indexes it.

    The copy and the index are written atomically; with ``default`` the new entry becomes the
    default agent (the others lose the mark).

    Raises:
        CheckpointError: The run has no agent or no config.json, or its search did not finish.
    """
    run_dir = Path(run_dir)
    agent, config = run_dir / "agent.zip", run_dir / "config.json"
    if not agent.is_file() or not config.is_file():
        raise CheckpointError(
            f"{run_dir} has no agent.zip and config.json; pass the directory of a finished "
            "train_agent.py run"
        )
    settings = load_run_config(config).to_settings()
    state = read_state(run_dir) or {}
    episodes = state.get("episode")
    if episodes is None or episodes < settings.get("episodes", 0):
        raise CheckpointError(
            f"the search in {run_dir} stopped at episode {episodes} of {settings.get('episodes')};"
            f" finish it first: python scripts/train_agent.py --resume {run_dir}"
        )
    root.mkdir(parents=True, exist_ok=True)
    file = f"{name}.zip"
    tmp = root / f".{file}.tmp"
    shutil.copyfile(agent, tmp)
    tmp.replace(root / file)
    entry = {
        "name": name,
        "file": file,
        "sha256": file_sha256(root / file),
        "default": default,
        "features_version": FEATURES_VERSION,
        "observation_features": saved_features(root / file),
        "models": [m.strip() for m in str(settings["model"]).split(",") if m.strip()],
        "dataset": settings.get("dataset"),
        "target": settings.get("target"),
        "cost": settings.get("cost"),
        "episodes": episodes,
        "seed": settings.get("seed"),
        "command": training_command(settings),
        "settings": settings,
    }
    others = [e for e in read_agent_index(root) if e["file"] != file]
    if default:
        others = [{**e, "default": False} for e in others]
    write_json_atomic(root / INDEX, {"agents": others + [entry]}, indent=2)
    return entry
