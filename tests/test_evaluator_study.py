"""The evaluator study script end to end on digits, and its resume from the cache."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "--model", "vgg_small", "--dataset", "digits", "--base-epochs", "2", "--strategies", "2",
    "--ft-epochs", "1", "--ft-seeds", "2", "--short-steps", "3", "--reward-images", "100",
    "--bn-batches", "2", "--threads", "1",
]  # fmt: skip


def _run(out: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RLPRUNE_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "evaluator_study.py"), *ARGS, *extra, "--output"]
        + [str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_evaluator_study_scores_every_strategy_and_resumes(tmp_path: Path) -> None:
    out, cache = tmp_path / "study.json", tmp_path / "cache"
    first = _run(out, cache)
    assert first.returncode == 0, first.stderr
    rows = json.loads(out.read_text())["rows"]
    assert sorted(rows) == ["random00", "random01", "uniform"]
    for row in rows.values():
        assert len(row["truth_seeds"]) == 2
        assert row["truth"] == sum(row["truth_seeds"]) / 2
        assert abs(row["relative_macs_estimate"] - 0.5) < 0.06  # every strategy at the target
    for signal in ("bn", "bn_full", "reconstruct", "short_ft"):
        assert f"| {signal} |" in first.stdout
    # A shorter second run finds its strategies in the cache: it scores nothing again, reports
    # on its first rows and keeps the longer run's rows.
    second = _run(out, cache, "--strategies", "1")
    assert second.returncode == 0, second.stderr
    assert json.loads(out.read_text())["rows"] == rows
    assert "random00:" not in second.stdout  # no strategy was scored again
    assert "2 strategies at 0.5" in second.stdout  # uniform + random00
