"""Prunable units found on real networks: coupling, order, protected classifier, cost estimates."""

from __future__ import annotations

import pytest
import torch
import torchvision
from archs import ARCHS
from torch import Tensor, nn

from envs.pruning import Pruner, count_cost
from envs.units import LayerCost, analyse_units, estimate_cost, find_units
from models.errors import NoPrunableLayersError, PruningError

EXPECTED_UNITS = {"vgg_small": 6, "resnet20": 12, "mobilenetv2_small": 18, "resnet18": 12}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def analysed() -> dict[str, tuple[nn.Module, Tensor, list, list]]:
    out = {}
    for name, (build, shape) in ARCHS.items():
        torch.manual_seed(0)
        model = build().eval()
        x = torch.randn(1, *shape)
        units, costs = find_units(model, x)
        out[name] = (model, x, units, costs)
    return out


@pytest.mark.parametrize("name", list(ARCHS))
def test_units_found_in_execution_order_without_classifier(analysed, name):
    model, x, units, costs = analysed[name]
    assert units, f"{name}: no units"
    if name in EXPECTED_UNITS:
        assert len(units) == EXPECTED_UNITS[name]
    assert [u.index for u in units] == list(range(len(units)))
    classifier = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    assert all(classifier not in u.layer_names for u in units)
    order = [c.name for c in costs]  # layer costs are in execution order
    roots = [order.index(u.name) for u in units]
    assert roots == sorted(roots)
    for unit in units:
        assert unit.out_channels >= 2
        assert unit.name == unit.layer_names[0]
        assert unit.macs > 0 and unit.params > 0 and 0 < unit.cost_share < 1
    assert sum(u.cost_share for u in units) <= 1.0 + 1e-9
    assert sum(c.macs for c in costs) == count_cost(model, x)[0]


def test_residual_stream_is_one_unit(analysed):
    _, _, units, _ = analysed["resnet20"]
    by_name = {u.name: u for u in units}
    assert by_name["stem.0"].layer_names == (
        "stem.0",
        "layers.0.conv2",
        "layers.1.conv2",
        "layers.2.conv2",
    )
    assert "layers.3.shortcut.0" in by_name["layers.3.conv2"].layer_names
    assert by_name["layers.0.conv1"].layer_names == ("layers.0.conv1",)


def test_depthwise_conv_shares_the_unit_of_its_expansion(analysed):
    model, _, units, costs = analysed["mobilenetv2_small"]
    depthwise = {c.name for c in costs if c.depthwise}
    assert len(depthwise) == 12  # one per inverted-residual block
    for name in depthwise:
        unit = next(u for u in units if name in u.layer_names)
        assert unit.layer_names[0] != name  # rooted at the conv before it
        row = next(c for c in costs if c.name == name)
        assert row.out_unit == row.in_unit == unit.index
    kinds = {u.kind for u in units}
    assert kinds == {"conv", "pointwise"}


def test_ignored_layers_are_not_units(analysed):
    model, x, units, _ = analysed["vgg_small"]
    first = model.get_submodule(units[0].name)
    fewer, _ = find_units(model, x, ignored_layers=[first])
    assert [u.name for u in fewer] == [u.name for u in units[1:]]


@pytest.mark.parametrize("name", ["vgg_small", "resnet20", "mobilenetv2_small"])
def test_estimate_cost_matches_pruned_macs(analysed, name):
    model, x, _, _ = analysed[name]
    pruner = Pruner(model, x)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        ratios = (torch.rand(len(pruner.units), generator=generator) * 0.8).tolist()
        strategy = {u.name: r for u, r in zip(pruner.units, ratios, strict=True)}
        macs, params = count_cost(pruner.apply(strategy), x)
        exact = estimate_cost(pruner.layer_costs, pruner.keep_fractions(strategy))
        assert exact == pytest.approx(macs, rel=1e-9)  # rounding to whole channels included
        rough = estimate_cost(pruner.layer_costs, [1 - r for r in ratios])
        assert rough == pytest.approx(macs, rel=0.06)  # the clamp's view: unrounded ratios
        est_params = estimate_cost(pruner.layer_costs, pruner.keep_fractions(strategy), "params")
        assert est_params <= params  # BatchNorm parameters are not in the estimate


def test_estimate_cost_per_layer_and_full_keep():
    costs = [
        LayerCost("a", macs=100, params=10, out_unit=0, in_unit=None, depthwise=False),
        LayerCost("b", macs=50, params=5, out_unit=0, in_unit=0, depthwise=True),
        LayerCost("c", macs=200, params=20, out_unit=1, in_unit=0, depthwise=False),
        LayerCost(
            "d",
            macs=40,
            params=4,
            out_unit=None,
            in_unit=1,
            depthwise=False,
            in_split=((1, 30), (None, 10)),
        ),
    ]
    assert estimate_cost(costs, [1.0, 1.0]) == 390
    assert estimate_cost(costs, [0.5, 0.5]) == pytest.approx(50 + 25 + 50 + 40 * 25 / 40)
    latency = {"a": 1.0, "b": 2.0, "c": 4.0}
    assert estimate_cost(costs, [0.5, 1.0], per_layer=latency) == pytest.approx(0.5 + 1 + 2)


class _Concat(nn.Module):
    """Two conv branches concatenated, then a conv reading both: an input split over two units."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.left = nn.Conv2d(8, 16, 1)
        self.right = nn.Conv2d(8, 24, 3, padding=1)
        self.mix = nn.Conv2d(40, 32, 1)
        self.head = nn.Linear(32, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.stem(x))
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        return self.head(self.mix(x).mean((2, 3)))


def test_concatenated_inputs_are_split_between_units():
    model, x = _Concat().eval(), torch.randn(1, 3, 12, 12)
    pruner = Pruner(model, x)
    assert [u.name for u in pruner.units] == ["stem", "left", "right", "mix"]
    mix = next(c for c in pruner.layer_costs if c.name == "mix")
    assert dict(mix.in_split) == {1: 16, 2: 24}
    strategy = {"left": 0.5, "right": 0.25, "mix": 0.5}
    pruned = pruner.apply(strategy)
    assert pruned.mix.in_channels == 8 + 18
    macs = count_cost(pruned, x)[0]
    assert estimate_cost(pruner.layer_costs, pruner.keep_fractions(strategy)) == macs


class _HardcodedView(nn.Module):
    """A reshape that hard-codes the channel count: pruning the conv before it breaks it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.conv(x), 4)
        return self.head(x.reshape(x.shape[0], 8, 16).flatten(1))


class _FixedScale(nn.Module):
    """A per-channel scale kept in a buffer, which Torch-Pruning does not prune."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.register_buffer("scale", torch.ones(1, 8, 1, 1))
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.conv(x) * self.scale, 1)
        return self.head(x.flatten(1))


def test_unprunable_layers_raise_pruning_error_naming_them():
    with pytest.raises(PruningError, match="'conv'.*ignored_layers"):
        Pruner(_FixedScale(), torch.randn(1, 3, 8, 8))
    model = _FixedScale()
    assert find_units(model, torch.randn(1, 3, 8, 8), ignored_layers=[model.conv])[0] == []
    # A reshape into 3-D: Torch-Pruning's channel mapping through it is refused up front.
    skipped = analyse_units(_HardcodedView(), torch.randn(1, 3, 8, 8)).skipped
    assert skipped == [
        ("conv", "a reshape Torch-Pruning cannot map channels through (ViewBackward0)")
    ]
    with pytest.raises(PruningError, match="example input"):
        find_units(model, torch.randn(1, 5, 8, 8))


def test_channel_shuffle_groups_are_not_units_but_the_branches_are():
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    analysis = analyse_units(model, torch.randn(1, 3, 32, 32))
    blocks = [f"stage{s}.{b}" for s, n in ((2, 4), (3, 8), (4, 4)) for b in range(n)]
    # By the architecture: the stem, the inside of every block's second branch and the last conv
    # do not cross a shuffle; the block outputs (interleaved by the shuffle) do.
    expected = ["conv1.0", *(f"{b}.branch2.0" for b in blocks), "conv5.0"]
    assert [u.name for u in analysis.units] == expected
    assert dict(analysis.skipped)["stage3.0.branch1.2"].startswith("channel shuffle")


def test_units_with_grouped_convs_keep_their_groups():
    model = torchvision.models.regnet_y_400mf(num_classes=10).eval()
    units = find_units(model, torch.randn(1, 3, 32, 32))[0]
    for name, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d) and 1 < conv.groups < conv.out_channels:
            outs = [u for u in units if name in u.layer_names]
            assert len(outs) == 1 and outs[0].channel_groups == conv.groups, name


def test_model_without_hidden_layers_has_no_units():
    with pytest.raises(NoPrunableLayersError, match="^no prunable layers in Sequential"):
        find_units(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), torch.randn(1, 1, 8, 8))
