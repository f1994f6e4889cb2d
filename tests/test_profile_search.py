"""scripts/profile_search.py: the timing summary by hand, and a fast end-to-end run."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from profile_search import timing_summary  # noqa: E402


def test_timing_summary_by_hand():
    # ten measurements whose reference runs have median 10 ms, then one at 11 ms
    steady = [([5.0, 5.0, 5.0], [9.0, 10.0, 12.0])] * 10
    drifted = ([5.5, 5.5, 5.5, 5.5, 5.5], [11.0, 11.0, 11.0, 11.0, 11.0])
    summary = timing_summary([*steady, drifted], window=10)
    assert summary["measurements"] == 11
    assert summary["pairs_mean"] == pytest.approx((10 * 3 + 5) / 11)
    assert summary["pairs_median"] == 3 and summary["pairs_max"] == 5
    assert summary["share_of_pairs_in_longest"] == pytest.approx(5 / 35)
    assert summary["reference_drift_median_abs"] == pytest.approx(math.log(1.1))
    assert summary["reference_drift_sd"] == 0.0  # one drift value
    logs = [math.log(t) for t in (9.0, 10.0, 12.0)]
    mean = sum(logs) / 3
    expected = math.sqrt(sum((v - mean) ** 2 for v in logs) / 3)
    assert summary["reference_within_sd"] == pytest.approx(expected)  # 10 of 11 measurements
    ratios = [math.log(5 / r) for r in (9.0, 10.0, 12.0)]
    mean = sum(ratios) / 3
    assert summary["pair_ratio_within_sd"] == pytest.approx(
        math.sqrt(sum((v - mean) ** 2 for v in ratios) / 3)
    )
    assert timing_summary([]) == {"measurements": 0}


def test_profile_search_end_to_end(tmp_path):
    """With --latency-repeats 5 every measurement is exactly 5 pairs (at least min_repeats = 5,
    at most repeats), and the stages add up to less than the run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RLPRUNE_CACHE": str(tmp_path / "cache")}
    flags = [
        "--dataset", "digits", "--base-epochs", "1", "--fine-tune-epochs", "0",
        "--bn-batches", "1", "--latency-repeats", "5", "--no-progress", "--episodes", "2",
        "--warmup", "1", "--select-top-k", "1", "--latency-batch-size", "8", "--target", "0.8",
        "--output-dir", str(tmp_path / "runs"),
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "profile_search.py"),
         "--json", str(tmp_path / "prof.json"), "--", *flags],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| latency timing |" in proc.stdout and "| agent updates (SB3 train) |" in proc.stdout
    data = json.loads((tmp_path / "prof.json").read_text())
    assert data["evaluated"] >= 2 and data["latency"]["measurements"] >= 1
    for timing in data["timings_ms"]:
        assert len(timing["candidate"]) == len(timing["reference"]) == 5
    assert data["latency"]["pairs_max"] == 5
    assert 0 < sum(data["stages_s"].values()) + data["agent_updates_s"] < data["wall_s"]
