"""Keys that rlprune renamed, so that a file written by an older rlprune fails with one clear line.

"Ratio" used to mean two things. Now a *pruning ratio* is the fraction of a unit's channels removed
(``min_pruning_ratio``, a strategy's values) and a cost compared with the original model's is
*relative* (``relative_latency``: pruned / original). Files written before the rename (run
settings, best strategies, benchmark cells, evaluator caches) still carry the old keys; every
reader passes what it read through :func:`check_current_names` instead of misreading them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.errors import CheckpointError

#: Old key -> its current name.
RENAMED_KEYS: dict[str, str] = {
    "latency_ratio": "relative_latency",
    "macs_ratio": "relative_macs",
    "params_ratio": "relative_params",
    "cost_ratio": "relative_cost",
    "env_latency_ratio": "env_relative_latency",
    "latency_ratio_by_backend": "relative_latency_by_backend",
    "macs_ratio_estimate": "relative_macs_estimate",
    "measured_ratio": "measured_relative_latency",
    "min_ratio": "min_pruning_ratio",
    "max_ratio": "max_pruning_ratio",
    "uniform_ratio": "uniform_pruning_ratio",
    "latency_shares": "latency_share_by_unit",
}


def old_key(data: Any) -> str | None:
    """The first renamed key anywhere in ``data`` (nested dicts and lists), or None."""
    if isinstance(data, dict):
        for key, value in data.items():
            if key in RENAMED_KEYS:
                return key
            found = old_key(value)
            if found is not None:
                return found
    elif isinstance(data, list):
        for value in data:
            found = old_key(value)
            if found is not None:
                return found
    return None


def check_current_names(data: Any, path: str | Path, fix: str) -> None:
    """Raise :class:`CheckpointError` if ``data``, read from ``path``, uses a renamed key.

    Args:
        data: what was read (parsed JSON, a CSV header as a dict, ...).
        path: the file, for the message.
        fix: what the user should do, e.g. ``"re-run the search"``.
    """
    key = old_key(data)
    if key is not None:
        raise CheckpointError(
            f"{path} was written by an older rlprune: its key '{key}' is now "
            f"'{RENAMED_KEYS[key]}'; {fix}"
        )
