"""The run configuration: one home per default, config.json round trips, one seed vocabulary."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from agents.config import FLAT, RunConfig, default, load_run_config
from agents.workload import build_workload, load_splits
from envs.latency import LatencyConfig
from envs.pruning_env import PruningEnvConfig
from models.errors import CheckpointError, RlpruneError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_agent():
    return _script("train_agent")


@pytest.fixture(scope="module")
def train_base():
    return _script("train_base")


def test_every_flag_of_train_agent_is_a_setting_with_its_dataclass_default(train_agent):
    args = vars(train_agent.parse_args([]))
    script_only = {"list_models", "list_datasets", "resume"}
    recorded_only = {"weights_sha256"}  # written by the run, not a flag
    assert set(args) - script_only == set(FLAT) - recorded_only
    expected = RunConfig().to_settings()
    assert {k: args.get(k) for k in FLAT} == expected
    # independent expectations: the product defaults the docs name
    assert (args["latency_batch_size"], args["threads"], args["data_seed"]) == (16, 1, 0)


def test_changing_a_dataclass_default_changes_the_flag(train_agent, monkeypatch):
    batch = next(f for f in fields(LatencyConfig) if f.name == "batch_size")
    bn = next(f for f in fields(PruningEnvConfig) if f.name == "bn_batches")
    monkeypatch.setattr(batch, "default", 4)
    monkeypatch.setattr(bn, "default", 9)
    args = train_agent.parse_args([])
    assert args.latency_batch_size == 4 and args.bn_batches == 9
    assert default("latency_batch_size") == 4


def test_settings_round_trip_through_config_json(tmp_path):
    flat = {
        **RunConfig().to_settings(),
        "target": 0.3,
        "cost": "macs",
        "features": "relative_depth,target",
        "latency_batch_size": 8,
        "data_seed": 2,
        "seed": 5,
        "select_top_k": 3,
    }
    config = RunConfig.from_settings(flat)
    assert config.env.latency.batch_size == 8 and config.data.data_seed == 2
    assert config.env.features == ("relative_depth", "target") and config.search.seed == 5
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    assert load_run_config(tmp_path / "config.json") == config


def test_config_json_is_the_nested_asdict_of_the_run_config(tmp_path):
    config = RunConfig.from_settings({"target": 0.3, "latency_batch_size": 8, "seed": 5})
    data = json.loads(json.dumps(config.to_dict()))
    assert list(data) == ["data", "env", "search", "device", "output"]
    assert data["env"]["target"] == 0.3 and data["env"]["latency"]["batch_size"] == 8
    assert data["env"]["min_pruning_ratio"] == 0.0 and data["search"]["seed"] == 5
    # A setting added after a run started gets its default when the run is resumed.
    del data["search"]["select_steps"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert load_run_config(tmp_path / "config.json") == config


def test_an_old_flat_config_json_is_one_clear_error(tmp_path):
    old = {  # written by rlprune before config.json was nested and "ratio" was renamed
        "model": "vgg_small", "dataset": "digits", "target": 0.4, "cost": "macs",
        "reward": "acc", "min_ratio": 0.0, "max_ratio": 0.8, "seed": 3, "episodes": 6,
    }  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    with pytest.raises(CheckpointError) as err:
        load_run_config(path)
    message = str(err.value)
    assert str(path) in message and "older rlprune" in message and "start a new run" in message
    assert "'min_ratio'" in message and "env.min_pruning_ratio" in message
    # A nested file with a renamed key, or with a key that is no setting, is refused too.
    path.write_text(json.dumps({"env": {"max_ratio": 0.8}}))
    with pytest.raises(CheckpointError, match="'max_ratio' is now 'max_pruning_ratio'"):
        load_run_config(path)
    path.write_text(json.dumps({"env": {"latency": {"batch": 8}}}))
    with pytest.raises(CheckpointError, match="'env.latency.batch' is no setting"):
        load_run_config(path)


def test_a_broken_config_json_is_one_clear_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="holds no run settings"):
        load_run_config(path)
    path.write_text("{")
    with pytest.raises(CheckpointError, match="not JSON"):
        load_run_config(path)
    path.write_text(json.dumps({"env": {"reward": "accc"}}))
    with pytest.raises(RlpruneError, match="accc"):
        load_run_config(path)


def test_train_base_seed_trains_the_base_model_train_agent_seed_uses(
    train_base, train_agent, tmp_path
):
    tiny = ["--dataset", "digits", "--cache-dir", str(tmp_path), "--no-progress"]
    base = train_base.parse_args([*tiny, "--epochs", "1", "--seed", "1", "--device", "cpu"])
    _, trained, splits, _ = train_base.train_from_args(base, shipped_dir=None)
    assert splits.name == "digits"  # --seed does not move the split
    settings = vars(train_agent.parse_args([*tiny, "--base-epochs", "1", "--seed", "1"]))
    settings["cost"] = "macs"
    work = build_workload("vgg_small", load_splits(settings), settings, torch.device("cpu"))
    assert work.base_info["source"] == "cache" and work.base_info["path"] == trained["path"]


def test_the_data_seed_moves_the_split_in_every_script(train_base, train_agent):
    base = train_base.parse_args(["--dataset", "digits", "--data-seed", "1"])
    agent = vars(train_agent.parse_args(["--dataset", "digits", "--data-seed", "1"]))
    split_of_base = train_base.load_dataset("digits", seed=base.data_seed)
    split_of_agent = load_splits(agent)
    assert split_of_base.name == split_of_agent.name == "digits@seed=1"
    assert torch.equal(split_of_base.test.tensors[1], split_of_agent.test.tensors[1])
    assert not torch.equal(
        split_of_agent.test.tensors[0], load_splits({"dataset": "digits"}).test.tensors[0]
    )
