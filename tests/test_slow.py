"""Long end-to-end runs (deselected by default; `python -m pytest -m slow`)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_default_train_agent_run(tmp_path):
    """The README's main job with its defaults: it finishes and writes a reloadable model."""
    proc = subprocess.run(
        [sys.executable, "scripts/train_agent.py", "--no-progress", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "vgg_small_mnist5k_latency0.5_s0"
    assert (run_dir / "pruned_model.pt").is_file()
    from envs.pruning import load_pruned

    model, meta = load_pruned(run_dir / "pruned_model.pt")
    assert meta["recipe"]["model"] == "vgg_small"
    assert len(meta["recipe"]["base_sha256"]) == 64  # evaluate.py finds its original by it
    rows = (run_dir / "episodes.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 300
