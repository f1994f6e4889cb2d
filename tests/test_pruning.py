"""Pruning real networks: strategies, invariants, BatchNorm recalibration, save and reload."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from archs import ARCHS
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

from envs.pruning import (
    Pruner,
    apply_strategy,
    count_cost,
    load_pruned,
    recalibrate_bn,
    save_pruned,
)
from envs.units import analyse_units
from models.architectures import SMALL_ARCHITECTURES
from models.errors import CheckpointError, PruningError
from models.zoo import build_model

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pruners() -> dict[str, tuple[nn.Module, torch.Tensor, Pruner]]:
    out = {}
    for name, (build, shape) in ARCHS.items():
        torch.manual_seed(0)
        model = build().eval()
        x = torch.randn(2, *shape)
        out[name] = (model, x, Pruner(model, x))
    return out


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _random_strategy(pruner: Pruner, seed: int, high: float = 0.9) -> dict[str, float]:
    generator = torch.Generator().manual_seed(seed)
    ratios = torch.rand(len(pruner.units), generator=generator) * high
    return {u.name: float(r) for u, r in zip(pruner.units, ratios, strict=True)}


@pytest.mark.parametrize("name", list(ARCHS))
def test_random_strategies_give_smaller_working_models(pruners, name):
    model, x, pruner = pruners[name]
    before = _snapshot(model)
    with torch.no_grad():
        reference = model(x)
    for seed in range(2):
        strategy = _random_strategy(pruner, seed)
        pruned = pruner.apply(strategy).eval()
        with torch.no_grad():
            assert pruned(x).shape == reference.shape
        macs, params = count_cost(pruned, x)
        assert macs < pruner.base_macs and params < pruner.base_params
        kept = pruner.kept_channels(strategy)
        for unit in pruner.units:  # every coupled layer got the unit's width
            for layer in unit.layer_names:
                module = pruned.get_submodule(layer)
                width = (
                    module.out_features if isinstance(module, nn.Linear) else module.out_channels
                )
                assert width == kept[unit.name], layer
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "source model was modified"
    with torch.no_grad():
        assert torch.equal(model(x), reference)


@pytest.mark.parametrize("name", list(ARCHS))
def test_zero_strategy_is_identity(pruners, name):
    model, x, pruner = pruners[name]
    same = pruner.apply({u.name: 0.0 for u in pruner.units})
    assert same is not model
    with torch.no_grad():
        assert torch.allclose(same(x), model(x))
        assert torch.allclose(pruner.apply({})(x), model(x))


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2_small"])
def test_same_result_as_torch_pruning_group_prune(pruners, name):
    """The cached pruning calls equal Torch-Pruning's own group.prune on a re-traced copy."""
    model, x, pruner = pruners[name]
    strategy = _random_strategy(pruner, 6)
    ours = pruner.apply(strategy)
    theirs = copy.deepcopy(model)
    graph = tp.DependencyGraph().build_dependency(theirs, x, verbose=False)
    names = {m: n for n, m in model.named_modules()}
    groups = analyse_units(model, x).groups
    removed = pruner.removed_channels(strategy)
    for unit, group in zip(pruner.units, groups, strict=True):
        if removed[unit.name]:
            root = theirs.get_submodule(names[group[0].dep.target.module])
            prune = graph.get_pruner_of_module(root).prune_out_channels
            graph.get_pruning_group(root, prune, removed[unit.name]).prune()
    assert [v.shape for v in ours.state_dict().values()] == [
        v.shape for v in theirs.state_dict().values()
    ]
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-6)


def test_residual_stream_widths_stay_equal(pruners):
    _, x, pruner = pruners["resnet20"]
    pruned = pruner.apply(_random_strategy(pruner, 3))
    assert pruned.stem[0].out_channels == pruned.layers[0].conv2.out_channels
    for first in (0, 3, 6):
        widths = {pruned.layers[i].conv2.out_channels for i in range(first, first + 3)}
        assert len(widths) == 1
        if first:
            assert pruned.layers[first].shortcut[0].out_channels in widths
            assert (
                pruned.layers[first].conv1.in_channels
                == pruned.layers[first - 1].conv2.out_channels
            )
    _, _, tv_pruner = pruners["resnet18"]
    tv = tv_pruner.apply(_random_strategy(tv_pruner, 4))
    assert tv.layer2[0].downsample[0].out_channels == tv.layer2[0].conv2.out_channels
    assert tv.layer2[1].conv2.out_channels == tv.layer2[0].conv2.out_channels
    assert tv.fc.in_features == tv.layer4[1].conv2.out_channels
    assert tv.fc.out_features == 10


def test_depthwise_convs_stay_depthwise(pruners):
    _, x, pruner = pruners["mobilenet_v2"]
    pruned = pruner.apply(_random_strategy(pruner, 5))
    for module in pruned.modules():
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            assert module.groups == module.in_channels == module.out_channels


def test_round_to_and_never_zero_channels(pruners):
    model, x, _ = pruners["resnet20"]
    pruner = Pruner(model, x, round_to=8)
    for ratio in (0.3, 0.6, 0.99):
        kept = pruner.kept_channels({u.name: ratio for u in pruner.units})
        for unit in pruner.units:
            assert 8 <= kept[unit.name] <= unit.out_channels
            assert kept[unit.name] % 8 == 0
    assert pruner.kept_channels({"layers.6.conv1": 0.01})["layers.6.conv1"] == 64
    assert pruner.kept_channels({"layers.6.conv1": 0.1})["layers.6.conv1"] == 56
    plain = pruners["resnet20"][2]
    kept = plain.kept_channels({u.name: 0.99 for u in plain.units})
    assert min(kept.values()) == 1
    tiny = plain.apply({u.name: 0.99 for u in plain.units})
    with torch.no_grad():
        assert tiny(x).shape == (2, 10)


def test_bad_strategies_raise_pruning_error(pruners):
    _, x, pruner = pruners["vgg_small"]
    name = pruner.units[0].name
    with pytest.raises(PruningError, match="did you mean 'features.10'"):
        pruner.apply({"featurs.10": 0.5})
    for ratio in (1.0, -0.1, float("nan")):
        with pytest.raises(PruningError, match=r"\[0, 1\)"):
            pruner.apply({name: ratio})
    with pytest.raises(PruningError, match="importance"):
        Pruner(pruners["vgg_small"][0], x, importance="taylor")


def test_importance_picks_channels(pruners):
    model, x, _ = pruners["vgg_small"]
    strategy = {"features.0": 0.5}
    l1 = apply_strategy(model, strategy, x, importance="l1")
    l1_again = apply_strategy(model, strategy, x, importance="l1")
    rnd = apply_strategy(model, strategy, x, importance="random")
    assert torch.equal(l1.features[0].weight, l1_again.features[0].weight)
    assert not torch.equal(l1.features[0].weight, rnd.features[0].weight)


def test_l1_importance_removes_the_hand_set_weakest_channels():
    """Channel c of the first conv is scaled by a hand-set factor; everything it couples to (BN,
    the next conv's input slice) is equal across channels, so L1 must remove the 4 smallest."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding=1, bias=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    ).eval()
    scale = torch.tensor([5.0, 0.1, 7.0, 0.3, 0.2, 9.0, 0.4, 3.0])  # weakest: 1, 4, 3, 6
    with torch.no_grad():
        model[0].weight.copy_(torch.ones_like(model[0].weight) * scale[:, None, None, None])
        model[3].weight.fill_(0.5)
    pruned = Pruner(model, torch.zeros(1, 3, 8, 8), importance="l1").apply({"0": 0.5})
    kept = pruned[0].weight[:, 0, 0, 0]
    assert kept.tolist() == pytest.approx([5.0, 7.0, 9.0, 3.0])  # channels 0, 2, 5, 7, in order


def _digits() -> tuple[TensorDataset, TensorDataset]:
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(labels), generator=generator)
    train, test = order[:1400], order[1400:]
    return TensorDataset(images[train], labels[train]), TensorDataset(images[test], labels[test])


def _accuracy(model: nn.Module, data: TensorDataset) -> float:
    model.eval()
    with torch.no_grad():
        return (model(data.tensors[0]).argmax(1) == data.tensors[1]).float().mean().item()


def test_bn_recalibration_restores_accuracy_of_pruned_trained_model():
    train, test = _digits()
    torch.manual_seed(0)
    model = SMALL_ARCHITECTURES["vgg_small"](1, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(6):
        for batch in torch.randperm(len(train)).split(64):
            images, labels = train[batch]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
    base = _accuracy(model, test)
    assert base > 0.9
    pruner = Pruner(model, train.tensors[0][:1])
    pruned = pruner.apply({u.name: 0.5 for u in pruner.units})
    stale = _accuracy(pruned, test)
    momentum = pruned.features[1].momentum
    recalibrate_bn(pruned, train, num_batches=10, batch_size=64)
    fresh = _accuracy(pruned, test)
    assert not pruned.training and pruned.features[1].momentum == momentum
    assert fresh > stale + 0.05, (base, stale, fresh)
    assert recalibrate_bn(pruned, train, num_batches=10, batch_size=64) is pruned
    assert _accuracy(pruned, test) == fresh  # same seed, same batches, same statistics


def _recipe(strategy: dict[str, float]) -> dict:
    return {
        "model": "vgg_small",
        "input_shape": [1, 16, 16],
        "num_classes": 10,
        "strategy": strategy,
    }


def test_save_and_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = build_model("vgg_small", (1, 16, 16), 10).eval()
    x = torch.randn(3, 1, 16, 16)
    pruner = Pruner(model, x[:1], round_to=4)
    strategy = _random_strategy(pruner, 7)
    pruned = pruner.apply(strategy)
    path = tmp_path / "pruned_model.pt"
    save_pruned(pruned, path, _recipe(strategy))
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["recipe"]["strategy"] == strategy
    assert sidecar["macs"] == count_cost(pruned, x[:1])[0]

    versions = torch.load(path, weights_only=True)["state_dict_metadata"]
    assert versions == {k: dict(v) for k, v in pruned.state_dict()._metadata.items()}
    assert versions["features.1"] == {"version": 2}  # BatchNorm's, read back on loading

    loaded, meta = load_pruned(path)
    assert meta["recipe"] == _recipe(strategy)
    with torch.no_grad():
        expected = pruned.eval()(x)
        assert torch.equal(loaded(x), expected)

    torch.save(x, tmp_path / "x.pt")
    torch.save(expected, tmp_path / "y.pt")
    script = (
        "import torch, sys; from envs.pruning import load_pruned; "
        f"m, _ = load_pruned(r'{path}'); d = r'{tmp_path}'; "
        "x = torch.load(d + '/x.pt'); y = torch.load(d + '/y.pt'); "
        "sys.exit(0 if torch.equal(m(x), y) else 3)"
    )
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_bad_checkpoints_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_pruned(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt.pt: unreadable"):
        load_pruned(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not an rlprune pruned model"):
        load_pruned(foreign)

    model = build_model("vgg_small", (1, 16, 16), 10)
    pruned = apply_strategy(model, {"features.3": 0.5}, torch.zeros(1, 1, 16, 16))
    wrong = tmp_path / "wrong.pt"
    save_pruned(pruned, wrong, {**_recipe({}), "model": "resnet20"})  # recipe of another net
    with pytest.raises(CheckpointError, match="wrong.pt: cannot rebuild|wrong.pt: weights"):
        load_pruned(wrong)
    with pytest.raises(CheckpointError, match="lacks"):
        save_pruned(pruned, tmp_path / "x.pt", {"model": "vgg_small"})


class _Grouped(nn.Module):
    """ResNeXt-style: a conv, a grouped 3x3 conv (4 groups of 4), a 1x1 conv, the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.c = nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.c(self.b(self.a(x))).mean((2, 3)))


def _with_inputs_cut(model: nn.Module, layer: str, inputs: list[int]) -> nn.Module:
    """A copy of ``model`` whose ``layer`` ignores the given input channels (weights zeroed)."""
    cut = copy.deepcopy(model)
    with torch.no_grad():
        cut.get_submodule(layer).weight[:, inputs] = 0.0
    return cut


def test_grouped_convs_lose_the_same_channels_in_every_group():
    torch.manual_seed(0)
    model, x = _Grouped().eval(), torch.randn(2, 3, 8, 8)
    pruner = Pruner(model, x[:1])
    units = [(u.name, u.channel_groups) for u in pruner.units]
    assert units == [("a.0", 4), ("b.0", 4), ("c", 1)]
    strategy = {"a.0": 0.5, "b.0": 0.3}
    assert pruner.kept_channels(strategy) == {"a.0": 8, "b.0": 12, "c": 8}  # 4 groups: 8, 12
    removed = pruner.removed_channels(strategy)
    a_local = {i % 4 for i in removed["a.0"]}
    assert len(a_local) == 2 and sorted(removed["a.0"]) == sorted(
        i + 4 * g for i in a_local for g in range(4)
    )
    pruned = pruner.apply(strategy)
    assert pruned.b[0].groups == 4 and pruned.b[0].weight.shape == (12, 2, 3, 3)
    # Independent expectation: the original model with the removed channels' consumers cut.
    # b's input channel i (local i % 4 in its group) feeds through weight[:, i % 4].
    cut = _with_inputs_cut(model, "b.0", sorted(a_local))
    cut = _with_inputs_cut(cut, "c", removed["b.0"])
    with torch.no_grad():
        assert torch.allclose(pruned(x), cut(x), atol=1e-5)


def test_channel_counts_of_grouped_units_are_multiples_of_the_groups():
    model, x = _Grouped().eval(), torch.randn(1, 3, 8, 8)
    assert Pruner(model, x).kept_channels({"a.0": 0.99})["a.0"] == 4  # one channel per group
    assert Pruner(model, x, round_to=8).kept_channels({"a.0": 0.6})["a.0"] == 8
    assert Pruner(model, x, round_to=3).kept_channels({"a.0": 0.3})["a.0"] == 12  # lcm 12
    with pytest.raises(PruningError, match="16 channels in 4 equal groups; cannot keep 10"):
        Pruner(model, x).prune_to({"a.0": 10})


def test_shufflenet_branches_are_pruned_exactly():
    torch.manual_seed(0)
    model = build_model("shufflenet_v2_x0_5", (3, 32, 32), 10).eval()
    x = torch.randn(2, 3, 32, 32)
    pruner = Pruner(model, x[:1])
    branch = "stage3.2.branch2.0"  # 1x1 conv -> BN -> ReLU -> depthwise -> BN -> 1x1 conv (.5)
    strategy = {branch: 0.5}
    pruned = pruner.apply(strategy)
    cut = _with_inputs_cut(model, "stage3.2.branch2.5", pruner.removed_channels(strategy)[branch])
    with torch.no_grad():
        assert torch.allclose(pruned(x), cut(x), atol=1e-5)
    assert pruned.get_submodule("stage3.2.branch2.3").groups == 24  # still depthwise
