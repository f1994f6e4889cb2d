"""A search's measured latencies kept on disk, so that every search of one benchmark sees one number
per architecture.

:class:`envs.latency.LatencyMeter` caches the relative latency of each architecture it timed, but
only in memory: two envs built on the same model and target (one per method and seed in
``scripts/benchmark.py``) time the same architecture twice and get two numbers. Rules that bisect on
measured latency then land on different architectures in different envs: on plain20 at 0.5 of the
latency the global-magnitude rule of one env scored 0.436 test accuracy and that of another 0.413,
so a search's own incumbent could be weaker than the ``global`` row it was compared with.

A :class:`MeasurementStore` is a JSON file of ``{architecture id: measurement}`` for one reference
model, timing protocol, decision threshold and device (:func:`store_path` names it after all of
them, so a file is never read for other settings). The meter asks it before timing and adds what it
timed. Every write merges the file's entries with its own and replaces the file atomically, so
envs in other processes only add to it, and a kill leaves the old or the new file. A file that is
unreadable or written for other settings is ignored (and replaced at the next write).
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from envs.latency import LatencyConfig, LatencyStats
from envs.latency_table import architecture_id, device_name
from models.atomic import write_json_atomic

STORE_FORMAT = "rlprune-latency-measurements-v1"


def store_identity(
    reference: nn.Module, config: LatencyConfig, threshold: float | None
) -> dict[str, Any]:
    """What a stored measurement depends on: the reference's architecture, every timing setting,
    the threshold the stopping rule decides on, the processor and the PyTorch version."""
    return {
        "reference": architecture_id(reference),
        "config": asdict(config),
        "threshold": threshold,
        "device_name": device_name(config.device),
        "torch": torch.__version__,
    }


def store_path(root: str | Path, model_name: str, identity: dict[str, Any]) -> Path:
    """``<root>/<model>-measurements-<digest of the identity>.json``."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_name)[:40]
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return Path(root).expanduser() / f"{slug}-measurements-{digest}.json"


class MeasurementStore:
    """Relative latencies to one reference, by architecture, in one JSON file.

    Args:
        root: the directory of the store files.
        reference: the model every measurement is relative to.
        config: the timing settings of the measurements.
        threshold: the meter's decision threshold (its stopping rule depends on it).
        model_name: names the file.

    Attributes:
        path: the file (:func:`store_path`).
        entries: ``{architecture id: (relative latency, stats)}`` read or measured so far.
    """

    def __init__(
        self,
        root: str | Path,
        reference: nn.Module,
        config: LatencyConfig,
        threshold: float | None = None,
        model_name: str = "model",
    ) -> None:
        self.identity = store_identity(reference, config, threshold)
        self.path = store_path(root, model_name, self.identity)
        self.entries: dict[str, tuple[float, LatencyStats]] = self._read()

    def get(self, model: nn.Module) -> tuple[float, LatencyStats] | None:
        """The stored (relative latency, stats) of ``model``'s architecture, or None."""
        return self.entries.get(architecture_id(model))

    def put(self, model: nn.Module, relative: float, stats: LatencyStats) -> None:
        """Add a measurement and write the file (merged with what other envs added meanwhile)."""
        kept = self._read(warn=False)  # an unreadable file was reported when it was opened
        self.entries = {**kept, **self.entries, architecture_id(model): (relative, stats)}
        write_json_atomic(
            self.path,
            {
                "format": STORE_FORMAT,
                "identity": self.identity,
                "measurements": {
                    key: {"relative": rel, **asdict(st)} for key, (rel, st) in self.entries.items()
                },
            },
            indent=None,
        )

    def _read(self, warn: bool = True) -> dict[str, tuple[float, LatencyStats]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            problem = f"unreadable latency store {self.path} ({err})"
        else:
            if (
                not isinstance(data, dict)
                or data.get("format") != STORE_FORMAT
                or data.get("identity") != self.identity
            ):
                return {}
            try:
                return {
                    str(key): (
                        float(row["relative"]),
                        LatencyStats(
                            float(row["median_ms"]),
                            float(row["p25_ms"]),
                            float(row["p75_ms"]),
                            float(row["min_ms"]),
                            int(row["n"]),
                        ),
                    )
                    for key, row in dict(data["measurements"]).items()
                }
            except (KeyError, TypeError, ValueError) as err:
                problem = f"malformed latency store {self.path} ({err!r})"
        if warn:
            warnings.warn(f"ignoring {problem}", stacklevel=3)
        return {}
