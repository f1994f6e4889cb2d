"""scripts/benchmark.py end to end on a tiny setting, its tables and its one-line errors."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "benchmark.py"
sys.path.insert(0, str(ROOT / "scripts"))

import benchmark  # noqa: E402
import common  # noqa: E402

from agents.evaluation import FineTuneConfig  # noqa: E402
from models.errors import RlpruneError  # noqa: E402


def _run(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RLPRUNE_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


def test_benchmark_runs_end_to_end_and_writes_table_and_plots(tmp_path):
    out = tmp_path / "bench"
    flags = (
        "--tasks", "tiny", "--targets", "0.8", "--seeds", "0", "--episodes", "3",
        "--warmup", "1", "--fine-tune-epochs", "1", "--latency-repeats", "3",
        "--latency-passes", "1", "--no-progress",
        "--methods", ",".join(benchmark.METHODS), "--select-top-k", "2", "--select-steps", "2",
        "--output-dir", str(out),
    )  # fmt: skip
    proc = _run(*flags, cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (out / "results.md").read_text()
    for method in benchmark.METHODS:
        assert f"| tiny | 0.8 | {method} | 1 |" in table
    assert "episodes/s" in table
    assert (out / "accuracy_vs_latency.png").stat().st_size > 1000
    assert (out / "strategies_tiny_t0.8.png").stat().st_size > 1000
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["method"] for r in rows} == set(benchmark.METHODS)
    for r in rows:
        assert 0.0 <= r["test_acc"] <= 1.0 and 0.0 <= r["test_acc_ft"] <= 1.0
        assert r["relative_latency"] > 0 and 0 < r["relative_macs"] <= 1.0
        assert r["env_relative_latency"] > 0
    agent = next(r for r in rows if r["method"] == "agent")
    assert len(agent["history"]) == 3 and agent["history"][0]["seconds"] > 0
    assert (out / "runs" / "tiny_t0.8_agent_s0" / "episodes.csv").is_file()
    # Every env kept its measurements in the one store of this task and target (the MACs agent's
    # env has no latency threshold: a file of its own), and each row's own latency is in it.
    stores = [json.loads(f.read_text()) for f in (out / "latency").glob("tiny-measurements-*.json")]
    assert sorted(s["identity"]["threshold"] is None for s in stores) == [False, True]
    measured = {m["relative"] for s in stores for m in s["measurements"].values()}
    assert {r["env_relative_latency"] for r in rows} <= measured
    for method in benchmark.SEARCHES:  # every search went through the final selection
        row = next(r for r in rows if r["method"] == method)
        # the choice is one of the --select-top-k re-scored (ranks among the search's best by
        # reward; those over the latency budget were dropped first, so a rank may exceed k - 1)
        assert len(row["rescored_ranks"]) in (1, 2) and row["select_s"] > 0
        assert row["selected_rank"] in row["rescored_ranks"]

    # Every cell is cached: a second run scores nothing again and reports the same accuracies;
    # a target this network cannot reach is skipped with its reason, not the end of the run.
    flags = tuple("0.8,0.001" if f == "0.8" else f for f in flags)
    again = _run(*flags, cache=tmp_path / "cache")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count(": cached") == len(benchmark.METHODS)
    skipped = (out / "results.md").read_text().split("## Skipped targets")[1]
    assert "tiny at 0.001: target 0.001 of the original latency is unreachable" in skipped
    rows_again = json.loads((out / "results.json").read_text())["rows"]
    for first, second in zip(rows, rows_again, strict=True):
        assert (first["method"], first["test_acc"], first["test_acc_ft"]) == (
            second["method"],
            second["test_acc"],
            second["test_acc_ft"],
        )

    # No reachable target at all: the tables say why, and the run still succeeds.
    flags = tuple("0.001" if f == "0.8,0.001" else f for f in flags)
    flags = tuple(str(tmp_path / "none") if f == str(out) else f for f in flags)
    none = _run(*flags, cache=tmp_path / "cache")
    assert none.returncode == 0, none.stderr[-2000:]
    skipped = (tmp_path / "none" / "results.md").read_text().split("## Skipped targets")[1]
    assert "tiny at 0.001: target 0.001 of the original latency is unreachable" in skipped


def test_benchmark_round_to_prunes_every_method_to_aligned_widths(tmp_path):
    """--round-to 8: each delivered model keeps multiples of 8 channels in every conv that is wide
    enough (vgg_small on digits: 32-64-128), read off the rebuilt models' layers."""
    out = tmp_path / "bench"
    flags = (
        "--tasks", "tiny", "--targets", "0.8", "--seeds", "0", "--episodes", "3",
        "--warmup", "1", "--fine-tune-epochs", "0", "--latency-repeats", "3",
        "--latency-passes", "1", "--no-progress", "--methods", "uniform,sampled",
        "--select-top-k", "2", "--round-to", "8", "--reconstruct", "--output-dir", str(out),
        "--reward-samples", "100",
    )  # fmt: skip
    proc = _run(*flags, cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # aligned widths and the reconstruction evaluator are other cells than the plain ones, and
    # so is a search re-scored on the 80 reward images (of digits' 180) held out from it
    assert sorted(p.name for p in (out / "cells").iterdir()) == [
        "tiny_t0.8_sampled_r8_rec_ho_s0.json",
        "tiny_t0.8_uniform_r8_rec_s0.json",
    ]
    sampled = json.loads((out / "cells" / "tiny_t0.8_sampled_r8_rec_ho_s0.json").read_text())
    # the re-score ran on the held-out images unless re-timing left a single candidate (a loaded
    # machine can time the others over the budget), which is kept without re-scoring
    rescored = len(sampled["rescored_ranks"])
    assert sampled["selection_images"] == (80 if rescored > 1 else 0)
    for dropped in sampled["dropped_over_latency"]:  # recorded: over 0.8 * 1.05, not re-scored
        assert dropped["measured_relative_latency"] > 0.84
        assert dropped["search_rank"] not in sampled["rescored_ranks"]
    import torch

    from envs.pruning import Pruner, count_cost
    from models.data import load_dataset
    from models.training import TrainConfig, get_base_model

    splits = load_dataset("digits")
    model, _ = get_base_model(
        "vgg_small", splits, config=TrainConfig(epochs=2, progress=False),
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    x = torch.zeros(1, *splits.input_shape)
    base, _ = count_cost(model, x)
    aligned, plain = Pruner(model, x, round_to=8), Pruner(model, x)
    for row in json.loads((out / "results.json").read_text())["rows"]:
        pruned = aligned.apply(row["strategy"])
        convs = [m for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)]
        assert all(c.out_channels % 8 == 0 for c in convs), [c.out_channels for c in convs]
        # the benchmark scored the aligned model ...
        assert row["relative_macs"] == pytest.approx(count_cost(pruned, x)[0] / base)
        unaligned_model = plain.apply(row["strategy"])
        unaligned_widths = [
            m.out_channels for m in unaligned_model.modules() if isinstance(m, torch.nn.Conv2d)
        ]
        # ... not uniform's ratio pruned to any width (where that differs: the ratio bisected on
        # measured latency may happen to give multiples of 8 anyway, e.g. 0.25 of 32-64-128)
        if row["method"] == "uniform" and any(w % 8 for w in unaligned_widths):
            unaligned = count_cost(unaligned_model, x)[0] / base
            assert row["relative_macs"] != pytest.approx(unaligned)


def test_a_fine_tune_of_the_same_architecture_is_reused(tmp_path):
    """A cell delivering an architecture already fine-tuned with the same recipe and seed in the
    output directory takes that fine-tune's accuracy (here: uniform's cell deleted and run again;
    in a benchmark: a search that delivers the uniform rule) instead of minutes of fine-tuning."""
    out = tmp_path / "bench"
    flags = (
        "--tasks", "tiny", "--targets", "0.8", "--seeds", "0", "--methods", "uniform",
        "--fine-tune-epochs", "1", "--latency-repeats", "3", "--latency-passes", "1",
        "--no-progress", "--output-dir", str(out),
    )  # fmt: skip
    first = _run(*flags, cache=tmp_path / "cache")
    assert first.returncode == 0, first.stderr[-2000:]
    (cell,) = (out / "cells").iterdir()
    fresh = json.loads(cell.read_text())
    assert fresh["fine_tune_reused_from"] is None
    cell.unlink()
    again = _run(*flags, cache=tmp_path / "cache")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"(fine-tune of the same model in {cell.name} reused)" in again.stdout
    reused = json.loads(cell.read_text())
    assert reused["fine_tune_reused_from"] == cell.name
    assert reused["test_acc_ft"] == fresh["test_acc_ft"]
    assert reused["strategy"] == fresh["strategy"]
    # another recipe, seed or evaluator is another fine-tune
    record, kept = benchmark.fine_tune_record, {"a": 8, "b": 16}
    base = record(out, "tiny", "", kept, FineTuneConfig(1, seed=0))
    assert base == record(out, "tiny", "", dict(reversed(kept.items())), FineTuneConfig(1, seed=0))
    others = [
        record(out, "tiny", "", kept, FineTuneConfig(2, seed=0)),
        record(out, "tiny", "", kept, FineTuneConfig(1, seed=1)),
        record(out, "tiny", "", kept, FineTuneConfig(1, seed=0, augment=True)),
        record(out, "tiny", "_rec", kept, FineTuneConfig(1, seed=0)),
        record(out, "tiny", "", {"a": 8, "b": 8}, FineTuneConfig(1, seed=0)),
    ]
    assert len({base, *others}) == 6


def test_a_cached_seed_newly_among_fine_tune_seeds_is_fine_tuned_without_a_new_search(tmp_path):
    """Seeds 0-1 with --fine-tune-seeds 1, then --fine-tune-seeds 2: seed 1's cells get the
    fine-tune that a cell run afresh with --fine-tune-seeds 2 gets (a copy of the output directory
    with that cell deleted: its latency store lands the rule on the same strategy), and its search
    is not repeated."""
    flags = (
        "--tasks", "tiny", "--targets", "0.8", "--seeds", "0,1", "--methods", "uniform,random",
        "--episodes", "3", "--warmup", "1", "--select-top-k", "2", "--select-steps", "2",
        "--fine-tune-epochs", "1", "--latency-repeats", "3", "--latency-passes", "1",
        "--no-progress",
    )  # fmt: skip
    out, fresh = tmp_path / "bench", tmp_path / "fresh"
    first = _run(*flags, "--fine-tune-seeds", "1", "--output-dir", str(out), cache=tmp_path / "c")
    assert first.returncode == 0, first.stderr[-2000:]
    cells = {c.name: json.loads(c.read_text()) for c in (out / "cells").iterdir()}
    assert sorted("test_acc_ft" in c for c in cells.values()) == [False, False, True, True]
    shutil.copytree(out, fresh)
    uniform = "tiny_t0.8_uniform_s1.json"
    (fresh / "cells" / uniform).unlink()
    again = _run(*flags, "--fine-tune-seeds", "2", "--output-dir", str(out), cache=tmp_path / "c")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("cached search, fine-tuned") == 2
    assert again.stdout.count(": cached\n") == 2  # seed 0: nothing to add
    full = _run(*flags, "--fine-tune-seeds", "2", "--output-dir", str(fresh), cache=tmp_path / "c")
    assert full.returncode == 0, full.stderr[-2000:]
    assert "uniform s1: reward acc" in full.stdout  # scored afresh
    # the same fine-tunes (architecture, recipe, seed) were run and recorded in both
    assert {f.name for f in (out / "fine_tuned").iterdir()} == {
        f.name for f in (fresh / "fine_tuned").iterdir()
    }
    assert (
        json.loads((fresh / "cells" / uniform).read_text())["strategy"]
        == cells[uniform]["strategy"]
    )
    after = json.loads((out / "cells" / uniform).read_text())
    assert (
        after["test_acc_ft"] == json.loads((fresh / "cells" / uniform).read_text())["test_acc_ft"]
    )
    (searched,) = [n for n in cells if "_random_" in n and n.endswith("_s1.json")]
    after = json.loads((out / "cells" / searched).read_text())
    assert after["history"] == cells[searched]["history"]  # the search was kept, not re-run
    assert after["strategy"] == cells[searched]["strategy"]
    assert 0.0 <= after["test_acc_ft"] <= 1.0 and after["test_acc"] == cells[searched]["test_acc"]


def test_reward_samples_hold_the_rest_of_the_reward_split_out_for_the_selection(tmp_path):
    """--reward-samples 100 on digits (180 reward images): the searches see 100 of them, the
    selection re-scores on the other 80, and together they are the whole reward split."""
    args = benchmark.parse_args(
        ["--tasks", "tiny", "--reward-samples", "100", "--no-progress",
         "--cache-dir", str(tmp_path / "cache")]
    )  # fmt: skip
    _, splits, _ = benchmark.load_task("tiny", args, ROOT)
    reward, held_out = splits.reward_val.tensors, splits.selection_val.tensors
    assert (len(reward[1]), len(held_out[1])) == (100, 80)
    import torch

    from models.data import load_dataset

    whole = load_dataset("digits").reward_val.tensors[0]
    both = torch.cat([reward[0], held_out[0]])

    def rows(x):
        return sorted(tuple(image.flatten().tolist()) for image in x)

    assert rows(both) == rows(whole)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tasks", "cifar11"], "unknown task ['cifar11']"),
        (["--methods", "uniform,amc"], "unknown method ['amc']"),
        (["--seeds", ""], "at least one seed"),
    ],
)
def test_bad_flags_raise_a_named_error(tmp_path, flags, message):
    with pytest.raises(RlpruneError, match=re.escape(message)):
        benchmark.main([*flags, "--output-dir", str(tmp_path)])


def test_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        common.run_cli(
            lambda: benchmark.main(["--tasks", "cifar11", "--output-dir", str(tmp_path)])
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown task") and len(err.splitlines()) == 1


def test_cifar10_source_prefers_the_shared_folder_and_falls_back_to_torchvision(tmp_path):
    assert benchmark.cifar10_source("auto", tmp_path / "repo") == "cifar10"
    (tmp_path / "shared" / "data" / "cifar10" / "train").mkdir(parents=True)
    (tmp_path / "repo").mkdir()
    assert benchmark.cifar10_source("auto", tmp_path / "repo").startswith("imagefolder:")
    assert benchmark.cifar10_source("imagefolder:/x", tmp_path) == "imagefolder:/x"


def test_episode_split_attributes_the_rest_to_the_agent():
    history = [
        {"time_prune_s": 0.1, "time_bn_s": 0.1, "time_eval_s": 0.2, "time_latency_s": 0.1,
         "seconds": 1.0, "cached": False},
        {"time_prune_s": 0.0, "time_bn_s": 0.0, "time_eval_s": 0.0, "time_latency_s": 0.0,
         "seconds": 0.2, "cached": True},
    ]  # fmt: skip
    split = benchmark.episode_split(history)
    assert split["episode_s"] == pytest.approx(0.6)
    assert split["rest_s"] == pytest.approx(0.6 - 0.25)
    assert split["cached"] == 0.5
    assert "| 1.67 |" in benchmark.split_row("x", 6, split)


def test_over_budget_lists_models_over_target_plus_five_percent():
    """0.5 * 1.05 = 0.525: 0.526 is over, 0.525 is not; a MACs-target method is not held to a
    latency target; the report names them under the results table."""
    row = {"task": "t", "target": 0.5, "seed": 0, "env_relative_latency": 0.49}
    rows = [
        {**row, "method": "uniform", "relative_latency": 0.525},
        {**row, "method": "agent_relative", "relative_latency": 0.526},
        {**row, "method": "agent_macs", "relative_latency": 0.9},
        {**row, "method": "tpe", "target": 0.3, "seed": 2, "relative_latency": 0.32},
    ]
    lines = benchmark.over_budget(rows)
    assert lines == [
        "t t=0.5 agent_relative s0: 0.526 > 0.525 (env's paired timing 0.490)",
        "t t=0.3 tpe s2: 0.320 > 0.315 (env's paired timing 0.490)",
    ]
    assert benchmark.over_budget(rows[:1]) == []


def test_every_cifar_task_pins_a_shipped_base_model():
    """Each CIFAR task's recipe is exactly one shipped model's, so a benchmark takes the committed
    weights instead of training for hours (a recipe or start file edited without shipping its
    model, or the reverse, fails here)."""
    from models.pretrained import read_index
    from models.training import TrainConfig, train_settings

    shipped = [(e["model"], e["train_config"]) for e in read_index()]
    cifar = {name: task for name, task in benchmark.TASKS.items() if task.dataset == "cifar10"}
    assert {"cifar10-resnet20", "cifar10-plain20", "cifar10-plain20-cutout"} <= set(cifar)
    for name, task in cifar.items():
        train = dict(task.train)
        if "init_from" in train:
            train["init_from"] = str(ROOT / train["init_from"])
        settings = train_settings(TrainConfig(**train, seed=0))
        assert (task.model, settings) in shipped, name


def test_the_plot_draws_every_method_even_beyond_the_palette(tmp_path):
    rows = [
        {
            "task": "t",
            "target": 0.5,
            "method": m,
            "relative_latency": 0.5 - i / 100,
            "test_acc": 0.5,
            "test_acc_ft": 0.8,
        }
        for i, m in enumerate(benchmark.METHODS)
    ]
    assert len(rows) > 10  # more methods than matplotlib's default colour cycle
    benchmark.plot_accuracy_vs_latency(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0
