"""Architectures users bring: every torchvision classifier, pruned, saved and reloaded elsewhere.

Each model is built untrained (``weights=None``) for a small input, its units are found, a random
strategy that meets a MACs target is applied, the pruned model runs, is saved, and is reloaded in a
fresh Python process, whose outputs must equal the pruned model's bit for bit. A model that cannot
be pruned is listed in ``EXCLUDED`` with the reason and the one-line error it gets (also in
docs/coverage.md). The sweep over all of ``torchvision.models`` is slow (``-m slow``); the default
suite runs one representative of each hard family.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from envs.pruning import Pruner, count_cost, save_pruned
from envs.units import estimate_cost
from models.errors import InputTooSmallError, NoPrunableLayersError, PruningError, RlpruneError
from models.zoo import build_model, torchvision_models

ROOT = Path(__file__).resolve().parents[1]
SWEEP_SHAPE = (3, 32, 32)  # CIFAR-sized; the zoo upsamples for the families that need more
MACS_TARGET = 0.5  # pruned conv/linear MACs / original, the default search target
MAX_PRUNING_RATIO = 0.9  # largest pruning ratio the random strategies give a unit

# Models that cannot be pruned, with the start of the one-line error they get and why.
EXCLUDED: dict[str, tuple[type[RlpruneError], str, str]] = {
    "maxvit_t": (
        PruningError,
        "cannot prune unit 'net.blocks.0.layers.0.layers.MBconv.proj.1' (layers",
        "the residual stream runs through attention that reshapes its output to the width of its "
        "input (torchvision's RelativePositionalMultiHeadAttention: reshape(B, G, P, D)), so it "
        "cannot get narrower; the first unit on it fails the forward check",
    ),
    "swin_t": (
        PruningError,
        "cannot prune unit 'features.0.0' (layers features.0.0, features.1.0.mlp.3",
        "the residual stream (patch embedding and every block's output) passes through "
        "shifted-window attention whose projection Torch-Pruning leaves out of the unit, so the "
        "pruned copy fails the forward check",
    ),
    **{
        name: (
            PruningError,
            "cannot trace SwinTransformer for pruning (TypeError: unsupported operand",
            "Torch-Pruning's channel inference through the patch-merging concatenations gives up "
            "in these deeper nets (it warns 'Maximum recursive depth reached') and tracing crashes",
        )
        for name in ("swin_b", "swin_s")
    },
}

# One per family whose coupling is special: metadata versions (MNASNet), grouped convs (RegNet),
# channel shuffle (ShuffleNet), a net that needs the zoo's upsampling on digits (GoogLeNet, 8x8).
FAST_CASES = [
    ("mnasnet0_5", SWEEP_SHAPE),
    ("regnet_x_400mf", SWEEP_SHAPE),
    ("shufflenet_v2_x0_5", SWEEP_SHAPE),
    ("googlenet", (1, 8, 8)),
]

pytestmark = pytest.mark.usefixtures("one_thread")

_RELOAD = """
import sys, torch
torch.set_num_threads(1)
from envs.pruning import load_pruned
model, _ = load_pruned(sys.argv[1])
x, y = torch.load(sys.argv[2]), torch.load(sys.argv[3])
with torch.no_grad():
    out = model(x)
if not torch.equal(out, y):
    sys.exit(f"outputs differ after reload: max |diff| {(out - y).abs().max().item()}")
"""


def random_strategy(pruner: Pruner, target: float, seed: int) -> dict[str, float]:
    """Random per-unit ratios, scaled (bisection) to the least pruning whose MACs meet ``target``.

    Raises:
        AssertionError: Even ``MAX_PRUNING_RATIO`` on every unit leaves more than ``target`` of
            the MACs.
    """
    weights = torch.rand(len(pruner.units), generator=torch.Generator().manual_seed(seed)) + 0.1

    def strategy(scale: float) -> dict[str, float]:
        ratios = (weights * scale).clamp(max=1.0) * MAX_PRUNING_RATIO
        return {u.name: float(r) for u, r in zip(pruner.units, ratios, strict=True)}

    def relative_macs(scale: float) -> float:
        keep = pruner.keep_fractions(strategy(scale))
        return estimate_cost(pruner.layer_costs, keep) / pruner.base_macs

    low, high = 0.0, float(1 / weights.min())  # at high every unit is at MAX_PRUNING_RATIO
    assert relative_macs(high) <= target, (
        f"maximal pruning keeps {relative_macs(high):.2f} of the MACs"
    )
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (low, mid) if relative_macs(mid) <= target else (mid, high)
    return strategy(high)


def prune_save_reload(name: str, shape: tuple[int, int, int], tmp_path: Path) -> None:
    """Build -> units -> random strategy at the MACs target -> forward -> save -> fresh reload."""
    torch.manual_seed(0)
    model = build_model(name, shape, 10).eval()
    x = torch.randn(2, *shape)
    pruner = Pruner(model, x[:1])
    strategy = random_strategy(pruner, MACS_TARGET, seed=0)
    pruned = pruner.apply(strategy).eval()
    with torch.no_grad():
        y = pruned(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    macs = count_cost(pruned, x[:1])[0]
    assert macs <= MACS_TARGET * pruner.base_macs
    assert macs == pytest.approx(estimate_cost(pruner.layer_costs, pruner.keep_fractions(strategy)))

    path = tmp_path / f"{name}.pt"
    recipe = {"model": name, "input_shape": list(shape), "num_classes": 10, "strategy": strategy}
    save_pruned(pruned, path, recipe)
    torch.save(x, tmp_path / "x.pt")
    torch.save(y, tmp_path / "y.pt")
    del model, pruner, pruned  # the big ones: the subprocess rebuilds its own copy
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    done = subprocess.run(
        [sys.executable, "-c", _RELOAD, str(path), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    path.unlink()  # the sweep would otherwise keep gigabytes of weights in the temp dirs
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("name,shape", FAST_CASES, ids=[c[0] for c in FAST_CASES])
def test_representative_families_prune_save_and_reload(name, shape, tmp_path):
    prune_save_reload(name, shape, tmp_path)


def test_regnet_reaches_half_the_macs_through_its_grouped_convs():
    model = build_model("regnet_x_400mf", SWEEP_SHAPE, 10).eval()
    x = torch.zeros(1, *SWEEP_SHAPE)
    pruner = Pruner(model, x)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    grouped = [n for n, m in convs if 1 < m.groups < m.out_channels]
    assert len(grouped) == 22  # one 3x3 grouped conv per block
    assert all(any(g in u.layer_names for u in pruner.units) for g in grouped)
    pruned = pruner.apply({u.name: MAX_PRUNING_RATIO for u in pruner.units})
    assert count_cost(pruned, x)[0] / pruner.base_macs < 0.1  # was 0.66-0.71 with them unpruned
    for name in grouped:
        before, after = model.get_submodule(name), pruned.get_submodule(name)
        assert after.groups == before.groups and after.out_channels < before.out_channels


def test_model_without_prunable_layers_is_a_one_line_error():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # only the classifier
    with pytest.raises(NoPrunableLayersError, match="^no prunable layers in Sequential") as info:
        Pruner(mlp, torch.zeros(1, 1, 8, 8))
    assert "\n" not in str(info.value)
    head_only = nn.Sequential(nn.Conv2d(1, 10, 8), nn.Flatten())  # its one conv is the output
    with pytest.raises(NoPrunableLayersError, match="^no prunable layers in Sequential"):
        Pruner(head_only, torch.zeros(1, 1, 8, 8))


def test_too_small_input_names_the_minimum_size():
    net = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True).eval()
    with torch.no_grad():  # the expectation, found independently: 15 px runs, 14 px does not
        net(torch.zeros(1, 3, 15, 15))
        with pytest.raises(RuntimeError, match="too small"):
            net(torch.zeros(1, 3, 14, 14))
    with pytest.raises(InputTooSmallError) as info:
        Pruner(net, torch.zeros(1, 3, 8, 8))
    assert str(info.value).startswith("GoogLeNet needs inputs of at least 15x15 pixels, got 8x8")
    assert "\n" not in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXCLUDED))
def test_excluded_models_get_their_one_line_error(name):
    error, message, _ = EXCLUDED[name]
    model = build_model(name, SWEEP_SHAPE, 10).eval()
    with pytest.raises(error) as info:
        Pruner(model, torch.zeros(1, *SWEEP_SHAPE))
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in torchvision_models() if n not in EXCLUDED])
def test_every_torchvision_classifier(name, tmp_path):
    """The sweep: ``python -m pytest tests/test_coverage.py -m slow`` (see docs/coverage.md)."""
    prune_save_reload(name, SWEEP_SHAPE, tmp_path)
    digits = build_model(name, (1, 8, 8), 10).eval()  # the zoo also adapts it to digits
    with torch.no_grad():
        assert digits(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
