"""The user's own trained network: ``--model`` plus ``--weights`` searched, recorded and evaluated,
and weights that do not fit rejected in one line."""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agents.finalize import state_dict_sha256
from envs.pruning import load_pruned
from models.errors import CheckpointError
from models.training import evaluate
from models.weights import load_weights
from models.zoo import build_model

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
sys.path.insert(0, str(SCRIPTS))  # the scripts import their shared `common` module
TINY = [
    "--dataset", "digits", "--cost", "macs", "--fine-tune-epochs", "0", "--bn-batches", "2",
    "--latency-repeats", "3", "--select-top-k", "1", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, digits_vgg_small) -> Path:
    """The user's trained vgg_small (1 epoch on digits), saved as a plain state_dict."""
    path = tmp_path_factory.mktemp("user") / "my_vgg.pt"
    torch.save(digits_vgg_small.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def weights_run(tmp_path_factory, weights_file) -> tuple[Path, Path, str]:
    """train_agent.py on the user's weights, 2 episodes, in a fresh process with an empty cache."""
    out, cache = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("cache")
    args = [*TINY, "--weights", str(weights_file), "--episodes", "2", "--warmup", "1"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "train_agent.py"), *args, "--output-dir", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "RLPRUNE_CACHE": str(cache)},
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out / "vgg_small_digits_macs0.5_s0", cache, proc.stdout


def test_search_on_user_weights_records_their_checksum(
    weights_run, weights_file, digits_vgg_small, digits_splits
):
    run_dir, cache, stdout = weights_run
    sha = hashlib.sha256(weights_file.read_bytes()).hexdigest()
    data = json.loads((run_dir / "config.json").read_text())["data"]
    assert data["weights"] == str(weights_file) and data["weights_sha256"] == sha
    assert f"weights_sha256: `{sha}`" in (run_dir / "report.md").read_text()
    assert not (cache / "base_models").exists()  # no base model was trained nor cached
    # The original row is the user's model on the test split.
    test_acc = evaluate(digits_vgg_small, digits_splits.test)
    assert f"test accuracy {test_acc:.4f}; no base model trained" in stdout
    assert f"| original | {test_acc:.4f} |" in stdout
    recipe = load_pruned(run_dir / "pruned_model.pt")[1]["recipe"]
    assert recipe["weights_sha256"] == sha
    assert recipe["base_sha256"] == state_dict_sha256(digits_vgg_small.state_dict())


def test_evaluate_takes_the_recorded_weights_as_the_original(
    weights_run, digits_vgg_small, digits_splits, tmp_path, capsys
):
    run_dir, cache, _ = weights_run
    main = runpy.run_path(str(SCRIPTS / "evaluate.py"), run_name="weights_test")["main"]
    report = tmp_path / "eval.json"
    argv = [str(run_dir / "pruned_model.pt"), "--cache-dir", str(cache), "--passes", "1"]
    assert main([*argv, "--repeats", "2", "--json", str(report)]) == 0
    assert "original: your weights" in capsys.readouterr().out
    numbers = json.loads(report.read_text())
    assert numbers["original"]["test_acc"] == evaluate(digits_vgg_small, digits_splits.test)
    assert numbers["class_names"] == [str(i) for i in range(10)]


def run_in_process(script: str, argv: list[str], capsys) -> tuple[int, str]:
    """``scripts/<script>`` as its ``__main__`` runs it; returns (exit status, stderr)."""
    namespace = runpy.run_path(str(SCRIPTS / script), run_name="weights_test")
    common = sys.modules["common"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        common.run_cli(lambda: namespace["main"](argv))
    return exit_.value.code, capsys.readouterr().err


def bad_weights(tmp_path: Path, kind: str) -> Path:
    """A weights file that does not fit vgg_small on digits."""
    path = tmp_path / f"{kind}.pt"
    if kind == "five_classes":
        torch.save(build_model("vgg_small", (1, 8, 8), 5).state_dict(), path)
    elif kind == "resnet20":
        torch.save(build_model("resnet20", (1, 8, 8), 10).state_dict(), path)
    else:
        torch.save(build_model("vgg_small", (1, 8, 8), 10).state_dict(), path)
        path.write_bytes(path.read_bytes()[:2000])  # a truncated copy
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("five_classes", "'classifier.weight' is [5, 128] in the file, [10, 128] in the model"),
        ("resnet20", "missing key 'features.0.weight' (+37 more), unexpected key 'stem.0.weight'"),
        ("corrupt", "is unreadable (RuntimeError); it is corrupt or not written by torch.save"),
    ],
)
@pytest.mark.parametrize("script", ["train_agent.py", "evaluate.py"])
def test_weights_that_do_not_fit_are_one_line(
    script, kind, message, weights_run, tmp_path, capsys, monkeypatch
):
    run_dir, cache, _ = weights_run
    monkeypatch.setenv("RLPRUNE_CACHE", str(cache))
    path = str(bad_weights(tmp_path, kind))
    if script == "train_agent.py":
        argv = [*TINY, "--weights", path, "--episodes", "2", "--warmup", "1"]
        argv += ["--output-dir", str(tmp_path / "o")]
    else:
        argv = [str(run_dir / "pruned_model.pt"), "--weights", path]
    code, stderr = run_in_process(script, argv, capsys)
    assert code == 2 and "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: weights file "), stderr
    assert message in lines[0]
    assert not (tmp_path / "o").exists()  # rejected before a run directory was claimed


def test_other_weights_than_the_pruned_models_base_are_refused(
    weights_run, tmp_path, capsys, monkeypatch
):
    run_dir, cache, _ = weights_run
    monkeypatch.setenv("RLPRUNE_CACHE", str(cache))
    other = tmp_path / "other.pt"
    torch.save(build_model("vgg_small", (1, 8, 8), 10).state_dict(), other)
    argv = [str(run_dir / "pruned_model.pt"), "--weights", str(other)]
    code, stderr = run_in_process("evaluate.py", argv, capsys)
    assert code == 2 and "is not the vgg_small" in stderr and "was pruned from" in stderr


def test_load_weights_accepts_checkpoint_dicts_and_names_the_whole_model_mistake(
    tmp_path, digits_vgg_small
):
    wrapped = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": digits_vgg_small.state_dict(), "epoch": 3}, wrapped)
    loaded = load_weights("vgg_small", (1, 8, 8), 10, wrapped)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), digits_vgg_small.eval()(x))
    assert loaded.sha256 == hashlib.sha256(wrapped.read_bytes()).hexdigest()

    whole = tmp_path / "whole.pt"
    torch.save(digits_vgg_small, whole)
    with pytest.raises(CheckpointError, match=r"not only tensors.*model\.state_dict\(\)"):
        load_weights("vgg_small", (1, 8, 8), 10, whole)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "vgg_small,resnet20"], "--weights fits one model"),
        (["--base-epochs", "2"], "--base-epochs trains a base model, but --weights gives one"),
    ],
)
def test_weights_with_flags_that_contradict_them(flags, message, weights_file, tmp_path, capsys):
    argv = [*TINY, "--weights", str(weights_file), *flags, "--warmup", "1", "--episodes", "2"]
    argv += ["--output-dir", str(tmp_path / "o")]
    code, stderr = run_in_process("train_agent.py", argv, capsys)
    assert code == 2 and message in stderr and stderr.strip().count("\n") == 0


def test_resume_refuses_weights_changed_since_the_run_started(
    weights_run, weights_file, capsys, monkeypatch
):
    run_dir, cache, _ = weights_run
    monkeypatch.setenv("RLPRUNE_CACHE", str(cache))
    original = weights_file.read_bytes()
    state = torch.load(weights_file, weights_only=True)
    state["classifier.bias"] += 1  # the user retrained their model in place
    torch.save(state, weights_file)
    try:
        code, stderr = run_in_process("train_agent.py", ["--resume", str(run_dir)], capsys)
    finally:
        weights_file.write_bytes(original)
    assert code == 2 and "changed since the run started" in stderr
    assert stderr.strip().count("\n") == 0
