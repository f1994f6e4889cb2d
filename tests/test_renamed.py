"""Files written with the names rlprune dropped ("ratio" for a relative cost, ``min_ratio``...)
get one clear error naming the file and the key; the shipped agent still reads as today's."""

from __future__ import annotations

import importlib
import json
import sys
import zipfile
from pathlib import Path

import pytest

from agents.callbacks import SearchCallback
from agents.checkpoint import read_state
from agents.ddpg import saved_features
from agents.pretrained import AGENT_DIR, read_agent_index
from envs.features import DEFAULT_FEATURES, RENAMED_FEATURES
from models.errors import CheckpointError
from models.renamed import old_key

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))


def _script(name: str):
    return importlib.import_module(name)


def _old_error(excinfo: pytest.ExceptionInfo, path: Path, key: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message and str(path) in message
    assert f"'{key}'" in message and "older rlprune" in message


def test_old_key_finds_a_renamed_key_at_any_depth():
    assert old_key({"rows": {"a": {"relative_latency": 0.5}}, "history": [{}]}) is None
    assert old_key({"history": [{"reward": 1.0}, {"latency_ratio": 0.5}]}) == "latency_ratio"
    assert old_key({"env": {"latency_shares": {}}}) == "latency_shares"


def test_an_old_search_state_is_refused(tmp_path):
    best = {"episode": 3, "reward": 0.9, "latency_ratio": 0.48, "strategy": {"conv1": 0.2}}
    path = tmp_path / "search_state.json"
    path.write_text(json.dumps({"episode": 3, "bests": {"model": best}, "files": {}}))
    with pytest.raises(CheckpointError) as excinfo:
        read_state(tmp_path)
    _old_error(excinfo, path, "latency_ratio")


def test_an_old_best_strategy_is_refused_when_a_search_resumes(tmp_path):
    path = tmp_path / "best_strategy.json"
    path.write_text(json.dumps({"model": "model", "reward": 0.9, "macs_ratio": 0.4}))
    callback = SearchCallback(tmp_path, state={"episode": 1, "bests": {}})
    with pytest.raises(CheckpointError) as excinfo:
        callback._restore_bests()
    _old_error(excinfo, path, "macs_ratio")


def test_an_old_benchmark_cell_is_refused(tmp_path):
    benchmark = _script("benchmark")
    path = tmp_path / "cells" / "tiny_t0.8_uniform_s0.json"
    path.parent.mkdir()
    row = {"task": "tiny", "method": "uniform", "strategy": {"conv1": 0.3}}
    path.write_text(json.dumps({**row, "relative_macs": 0.6}))
    assert benchmark.read_cell(path)["relative_macs"] == 0.6
    path.write_text(json.dumps({**row, "env_latency_ratio": 0.6}))
    with pytest.raises(CheckpointError) as excinfo:
        benchmark.read_cell(path)
    _old_error(excinfo, path, "env_latency_ratio")
    assert "run it again" in str(excinfo.value)


def test_an_old_evaluator_study_cache_is_refused(tmp_path):
    study = _script("evaluator_study")
    path = tmp_path / "study.json"
    assert study.read_cache(path) == {}
    path.write_text(json.dumps({"settings": {}, "rows": {"uniform": {"macs_ratio_estimate": 0.5}}}))
    with pytest.raises(CheckpointError) as excinfo:
        study.read_cache(path)
    _old_error(excinfo, path, "macs_ratio_estimate")


def test_the_shipped_agent_recorded_old_feature_names_and_reads_as_todays_observation():
    # multi6-v2 (the default until the 12th session) was saved before two features were renamed
    entry = next(e for e in read_agent_index() if e["name"] == "multi6-v2")
    path = AGENT_DIR / entry["file"]
    with zipfile.ZipFile(path) as archive:  # the committed file is unchanged: old names inside
        data = archive.read("data").decode()
    assert all(old in data for old in RENAMED_FEATURES)
    assert saved_features(path) == list(DEFAULT_FEATURES)
    assert entry["observation_features"] == list(DEFAULT_FEATURES)
    assert path.parent == AGENT_DIR
