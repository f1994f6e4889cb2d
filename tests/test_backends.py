"""Latency backends (eager, TorchScript, ONNX Runtime), latency tables, and their script paths.

Durations are checked on modules of known duration where the runtime can run them (a custom op
that busy-waits traces into TorchScript but cannot be exported to ONNX); ONNX Runtime is checked
on real networks: its outputs, its session cache, its threads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fakes import busy_wait
from torch import nn

from envs.backends import Backend, OrtForward
from envs.latency import LatencyConfig, LatencyMeter, measure_latency
from envs.latency_table import (
    LatencyTable,
    LayerLatency,
    TableLatency,
    architecture_id,
    check_table,
    layer_widths,
    load_table,
    measure_table,
    save_table,
)
from envs.pruning import Pruner
from envs.pruning_env import ChannelPruningEnv, PruningEnvConfig
from envs.units import estimate_cost
from models.architectures import SMALL_ARCHITECTURES
from models.errors import CheckpointError, RlpruneError
from models.export import export_onnx

pytest.importorskip("onnxruntime", reason="the onnx extra: pip install -e '.[onnx]'")

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 16, 16)
FAST = LatencyConfig(warmup=1, repeats=5, threads=1)


@torch.library.custom_op("rlprune_test::wait", mutates_args=())
def wait_op(x: torch.Tensor, ms: float) -> torch.Tensor:
    """Identity that busy-waits ``ms``: a dispatcher op, so TorchScript records and runs it."""
    busy_wait(ms)
    return x.clone()


@wait_op.register_fake
def _(x: torch.Tensor, ms: float) -> torch.Tensor:
    return torch.empty_like(x)


class WaitOp(nn.Module):
    """Identity whose forward takes ``ms`` milliseconds in eager PyTorch and in TorchScript."""

    def __init__(self, ms: float) -> None:
        super().__init__()
        self.ms = ms

    def extra_repr(self) -> str:
        return f"ms={self.ms}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return wait_op(x, self.ms)


def _best_min(measure, tries: int = 3) -> float:
    """Fastest of a few tries: on a shared machine a run is only ever slowed down."""
    return min(measure() for _ in range(tries))


@pytest.mark.parametrize("backend", ["torch", "torchscript"])
def test_known_duration_through_each_backend_that_can_run_it(backend):
    model = WaitOp(1.0)
    cfg = LatencyConfig(warmup=1, repeats=7, threads=1, backend=backend)
    fastest = _best_min(lambda: measure_latency(model, SHAPE, cfg).min_ms)
    assert 1.0 <= fastest < 1.15  # a busy wait is never shorter; the fastest run is close


def test_meter_times_compiled_forms_interleaved(one_thread):
    cfg = LatencyConfig(warmup=1, repeats=20, threads=1, backend="torchscript")

    def ratio() -> float:
        meter = LatencyMeter(WaitOp(1.0), SHAPE, cfg)
        value = meter.relative_latency(WaitOp(0.5))[0]
        assert meter.backend.exports == 2  # reference and candidate, each traced once
        return value

    assert sorted(ratio() for _ in range(3))[1] == pytest.approx(0.5, abs=0.1)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    model = SMALL_ARCHITECTURES["vgg_small"](1, 10).eval()
    pruner = Pruner(model, torch.zeros(1, *SHAPE))
    half = pruner.apply({u.name: 0.5 for u in pruner.units})
    half_again = pruner.apply({u.name: 0.5 for u in pruner.units})
    quarter = pruner.apply({u.name: 0.75 for u in pruner.units})
    return model, half, half_again, quarter, pruner


def test_onnxruntime_outputs_equal_torch(nets):
    model, half, *_ = nets
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(1))
    backend = Backend("onnxruntime", threads=1)
    for net in (model, half):
        forward = backend.compile(net, x)
        assert isinstance(forward, OrtForward)
        got = torch.from_numpy(forward(x)[0])
        with torch.no_grad():
            expected = net(x)
        assert got.shape == (4, 10)
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_session_cache_by_pruned_shape(nets):
    model, half, half_again, quarter, _ = nets
    x = torch.zeros(2, *SHAPE)
    backend = Backend("onnxruntime", threads=1)
    first = backend.compile(half, x)
    assert backend.exports == 1 and backend.compile_s > 0
    assert backend.compile(half_again, x) is first  # other weights, same shape: no re-export
    other = backend.compile(quarter, x)
    assert backend.exports == 2 and other is not first and other.session is not first.session
    assert backend.compile(half, x) is first and backend.exports == 2
    backend.compile(half, torch.zeros(3, *SHAPE))  # another batch size is another graph
    assert backend.exports == 3
    small = Backend("onnxruntime", threads=1, cache_size=1)  # least recently used is dropped
    for net in (half, quarter, half):
        small.compile(net, x)
    assert small.exports == 3


def test_thread_setting_reaches_the_session(nets):
    model = nets[0]
    x = torch.zeros(2, *SHAPE)
    for threads in (1, 3):
        session = Backend("onnxruntime", threads=threads).compile(model, x).session
        assert session.get_session_options().intra_op_num_threads == threads
    cfg = LatencyConfig(warmup=1, repeats=3, threads=2, batch_size=2, backend="onnxruntime")
    meter = LatencyMeter(model, SHAPE, cfg)
    reference = meter.backend.compile(model, x)  # the session the meter timed, from its cache
    assert meter.backend.exports == 1
    assert reference.session.get_session_options().intra_op_num_threads == 2


def test_missing_onnxruntime_is_one_line_error_naming_the_extra(monkeypatch, nets):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(RlpruneError, match=r'onnxruntime package; pip install -e "\.\[onnx\]"'):
        Backend("onnxruntime")
    with pytest.raises(RlpruneError) as err:
        measure_latency(nets[0], SHAPE, LatencyConfig(backend="onnxruntime"))
    assert "\n" not in str(err.value)
    with pytest.raises(RlpruneError, match="unknown latency backend 'onnx'; choose torch"):
        LatencyConfig(backend="onnx")


def test_export_check_runs_onnxruntime_else_the_reference_evaluator(nets, tmp_path, monkeypatch):
    half = nets[1]
    example = torch.zeros(1, *SHAPE)
    result = export_onnx(half, example, tmp_path / "a.onnx")
    assert result.check == "onnxruntime" and result.max_abs_diff < 1e-4
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = export_onnx(half, example, tmp_path / "b.onnx")
    assert result.check == "onnx.reference" and result.max_abs_diff < 1e-4


# ----------------------------------------------------------------------------- tables
def _table(model: nn.Module, ms: dict[str, float], overhead: float = 0.5) -> LatencyTable:
    """A table of ``model`` with hand-set layer times (batch 16, 1 thread, torch)."""
    modules = dict(model.named_modules())
    layers = {n: LayerLatency(t, *layer_widths(modules[n])) for n, t in ms.items()}
    return LatencyTable(
        model="vgg_small",
        architecture=architecture_id(model),
        input_shape=SHAPE,
        batch_size=16,
        threads=1,
        backend="torch",
        device="cpu",
        device_name="the phone",
        overhead_ms=overhead,
        layers=layers,
        profile="by hand",
        created="2026-01-01T00:00:00Z",
    )


def test_table_estimate_matches_the_envs_per_layer_estimate(nets):
    model, half, _, quarter, pruner = nets
    ms = {c.name: 0.1 * (i + 1) for i, c in enumerate(pruner.layer_costs)}  # unequal weights
    table = _table(model, ms)
    for ratio, net in ((0.5, half), (0.75, quarter)):
        keep = pruner.keep_fractions({u.name: ratio for u in pruner.units})
        expected = 0.5 + estimate_cost(pruner.layer_costs, keep, per_layer=ms)
        assert table.estimate_ms(net) == pytest.approx(expected, rel=1e-9)
    assert table.estimate_ms(model) == pytest.approx(0.5 + sum(ms.values()))
    assert table.latency_ms == pytest.approx(0.5 + sum(ms.values()))


def test_calibration_points_map_the_linear_estimate(nets):
    model, *_, pruner = nets
    table = _table(model, {c.name: 1.0 for c in pruner.layer_costs})
    assert table.corrected(0.4) == 0.4  # no points: the linear estimate as it is
    table = LatencyTable(**{**table.__dict__, "calibration": ((0.25, 0.5), (0.5, 0.8))})
    by_hand = {0.1: 0.2, 0.25: 0.5, 0.375: 0.65, 0.75: 0.9, 1.0: 1.0}
    for estimate, measured in by_hand.items():
        assert table.corrected(estimate) == pytest.approx(measured)


def test_table_round_trip_and_reuse_equal_the_profile(digits_splits, digits_vgg_small, tmp_path):
    latency = LatencyConfig(warmup=1, repeats=5, threads=1, batch_size=4)
    cfg = PruningEnvConfig(cost="macs", latency=latency)  # the profile is measured all the same

    def env() -> ChannelPruningEnv:
        train, reward = digits_splits.train, digits_splits.reward_val
        return ChannelPruningEnv(
            digits_vgg_small, train, reward, cfg, model_name="vgg_small", latency_tables=tmp_path
        )

    first = env()
    assert not first.latency.table_reused and first.latency.table_path.parent == tmp_path
    table = load_table(first.latency.table_path)
    assert table == first.latency.table  # the JSON round trip is exact
    assert table.layer_ms() == first.layer_latency_ms and table.overhead_ms == first.overhead_ms
    assert (table.backend, table.batch_size, table.threads, table.device) == ("torch", 4, 1, "cpu")
    second = env()  # timed again, the floats would differ: equal means read, not measured
    assert second.latency.table_reused and second.latency.table_path == first.latency.table_path
    assert second.layer_latency_ms == first.layer_latency_ms
    assert second.overhead_ms == first.overhead_ms


def test_an_env_on_a_table_takes_its_latency_from_the_table(
    digits_splits, digits_vgg_small, tmp_path
):
    env_model = digits_vgg_small
    pruner = Pruner(env_model, torch.zeros(1, *digits_splits.input_shape))
    ms = {c.name: 0.2 * (i + 1) for i, c in enumerate(pruner.layer_costs)}
    table = _table(env_model, ms, overhead=0.3)
    table = LatencyTable(
        **{**table.__dict__, "input_shape": digits_splits.input_shape, "calibration": ((0.2, 0.3),)}
    )
    path = save_table(table, tmp_path / "phone.json")
    cfg = PruningEnvConfig(latency=LatencyConfig(threads=1, batch_size=16), calibrate=False)
    env = ChannelPruningEnv(
        env_model, digits_splits.train, digits_splits.reward_val, cfg, latency_table=path
    )
    assert isinstance(env.latency, TableLatency) and env.base_latency_ms == pytest.approx(
        0.3 + sum(ms.values())
    )
    strategy = {u.name: 0.5 for u in env.units}
    result = env.evaluate_strategy(strategy, with_accuracy=False)
    keep = env.pruner.keep_fractions(strategy)
    linear = (0.3 + estimate_cost(env.layer_costs, keep, per_layer=ms)) / env.base_latency_ms
    assert 0.2 < linear < 1  # between the measured point (0.2 -> 0.3) and (1, 1):
    assert result["relative_latency"] == pytest.approx(0.3 + 0.7 * (linear - 0.2) / 0.8, rel=1e-9)
    assert "the table" in env.latency.describe() and str(path) in env.latency.describe()


def test_a_corrupt_or_mismatched_table_is_refused_in_one_line(nets, tmp_path):
    model, half, *_, pruner = nets
    table = _table(model, {c.name: 1.0 for c in pruner.layer_costs})
    path = save_table(table, tmp_path / "t.json")
    cfg = LatencyConfig(threads=1, batch_size=16)
    check_table(load_table(path), path, model, SHAPE, cfg)  # fits: no error
    cases = [
        (model, SHAPE, LatencyConfig(threads=1, batch_size=8), "batch size 16, this run has 8"),
        (model, SHAPE, LatencyConfig(threads=2, batch_size=16), "--threads"),
        (model, SHAPE, LatencyConfig(threads=1, batch_size=16, backend="torchscript"),
         "backend torch, this run has torchscript"),
        (half, SHAPE, cfg, "architecture"),
        (model, (1, 8, 8), cfg, "input shape"),
    ]  # fmt: skip
    for net, shape, config, message in cases:
        with pytest.raises(CheckpointError, match=message) as err:
            check_table(load_table(path), path, net, shape, config)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    data = json.loads(path.read_text())
    broken = {
        "garbage.json": "{not json",
        "other.json": json.dumps({**data, "format": "something else"}),
        "nolayers.json": json.dumps({k: v for k, v in data.items() if k != "layers"}),
        "negative.json": json.dumps({**data, "overhead_ms": -1.0}),
    }
    for name, text in broken.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(
            CheckpointError, match="latency table|not an rlprune latency table"
        ) as err:
            load_table(tmp_path / name)
        assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="no latency table at"):
        load_table(tmp_path / "missing.json")


def test_measured_table_profiles_the_backend_total(nets):
    """Under a compiled backend the eager per-layer split is scaled to the backend's total."""
    model, *_, pruner = nets
    names = [c.name for c in pruner.layer_costs]
    cfg = LatencyConfig(warmup=1, repeats=5, threads=1, batch_size=4, backend="onnxruntime")
    table = measure_table(model, SHAPE, names, cfg, "vgg_small")
    assert set(table.layers) == set(names) and table.backend == "onnxruntime"
    assert "scaled to the onnxruntime" in table.profile
    total = _best_min(lambda: measure_latency(model, SHAPE, cfg).median_ms)
    assert table.latency_ms == pytest.approx(total, rel=0.5)  # both the ORT time, noisy machine


# ----------------------------------------------------------------------------- scripts
def _run(script: str, *args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RLPRUNE_CACHE": str(cache)}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
    )  # fmt: skip


TINY = [
    "--dataset", "digits", "--base-epochs", "1", "--fine-tune-epochs", "0", "--bn-batches", "1",
    "--latency-repeats", "5", "--no-progress", "--episodes", "2", "--warmup", "1",
    "--select-top-k", "1", "--latency-batch-size", "8",
]  # fmt: skip


def test_train_agent_in_onnxruntime_then_on_its_table(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "runs"
    # Target 0.7: under onnxruntime at batch 8, pruning every unit at the maximum ratio reaches
    # only ~0.5 of vgg_small's latency, so the default 0.5 failed as unreachable under load.
    proc = _run("train_agent.py", *TINY, "--target", "0.7", "--latency-backend", "onnxruntime",
                "--output-dir", str(out), "--name", "ort", cache=cache)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "latency timed with onnxruntime on cpu" in proc.stdout
    report = (out / "ort" / "report.md").read_text()
    assert "Latency: latency timed with onnxruntime on cpu" in report
    assert "- latency_backend: `onnxruntime`" in report
    tables = list((cache / "latency_tables").glob("vgg_small-*-onnxruntime-b8-t1-cpu-*.json"))
    assert len(tables) == 1
    table = load_table(tables[0])
    assert table.backend == "onnxruntime" and table.batch_size == 8
    best = json.loads((out / "ort" / "best_strategy.json").read_text())
    assert best["relative_latency"] > 0

    # A table measured "on the device" by the script, searched with here: nothing is timed.
    phone = tmp_path / "phone.json"
    proc = _run("latency_table.py", "--dataset", "digits", "--latency-backend", "onnxruntime",
                "--latency-batch-size", "8", "--latency-repeats", "5", "--round-to", "8",
                "--calibration-pruning-ratios", "0.5",
                "--output", str(phone), cache=cache)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    made = load_table(phone)
    assert len(made.calibration) == 1 and made.calibration[0][0] < 1
    assert made.architecture == table.architecture  # built untrained: the same architecture
    proc = _run("train_agent.py", *TINY, "--target", "0.7", "--latency-backend", "onnxruntime",
                "--latency-table", str(phone), "--output-dir", str(out), "--name", "table",
                cache=cache)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (out / "table" / "report.md").read_text()
    assert f"search latency from the table {phone}" in report
    assert "final latencies timed here with onnxruntime on cpu" in report

    # Another backend than the table's: refused before any work, in one line.
    proc = _run("train_agent.py", *TINY, "--latency-table", str(phone),
                "--output-dir", str(out), cache=cache)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: latency table {phone} was measured for backend")
    assert proc.stderr.strip().count("\n") == 0


def test_benchmark_times_each_result_in_every_backend(tmp_path):
    out = tmp_path / "bench"
    proc = _run(
        "benchmark.py", "--tasks", "tiny", "--targets", "0.8", "--seeds", "0",
        "--methods", "uniform", "--episodes", "2", "--fine-tune-epochs", "0",
        "--latency-repeats", "3", "--latency-passes", "1", "--latency-batch-size", "8",
        "--select-top-k", "1", "--no-progress", "--output-dir", str(out),
        "--latency-backend", "onnxruntime", "--latency-backends", "torch,torchscript,onnxruntime",
        cache=tmp_path / "cache",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (out / "results.md").read_text()
    head = "| task | target | method | search backend | relative latency in onnxruntime "
    assert head + "| relative latency in torch | relative latency in torchscript |" in text
    assert "| tiny | 0.8 | uniform | onnxruntime |" in text
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["uniform"]
    for row in rows:
        by_backend = row["relative_latency_by_backend"]
        assert set(by_backend) == {"torch", "torchscript", "onnxruntime"}
        assert all(0 < v < 1.5 for v in by_backend.values())
        assert row["relative_latency"] == by_backend["onnxruntime"]  # the search's runtime first
        assert row["latency_backend"] == "onnxruntime"
    assert (out / "cells" / "tiny_t0.8_uniform_onnxruntime_s0.json").is_file()
