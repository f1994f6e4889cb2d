"""The CIFAR architectures of the benchmark: shapes, shortcuts and prunable units."""

import torch
from torch import nn

from envs.units import analyse_units
from models.architectures import plain20, resnet20, vgg_cifar


def test_plain20_is_resnet20_without_shortcuts() -> None:
    plain, residual = plain20(), resnet20()
    convs = [m for m in plain.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19  # AMC's Plain-20: 19 convs + the classifier
    assert sum(isinstance(m, nn.Conv2d) for m in residual.modules()) == 21  # + 2 shortcut convs
    # Same weights: plain20's output is resnet20's with every shortcut removed.
    residual.load_state_dict(plain.state_dict(), strict=False)
    for block in residual.layers:
        block.residual = False
    plain.eval(), residual.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(plain(x), residual(x))


def test_unit_counts_follow_the_coupling() -> None:
    """Plain-20's 19 convs are independent; ResNet-20's adds tie each stage into one unit."""
    example = torch.zeros(1, 3, 32, 32)
    counts = {}
    for name, build in [("plain20", plain20), ("resnet20", resnet20), ("vgg_cifar", vgg_cifar)]:
        counts[name] = len(analyse_units(build().eval(), example).units)
    # resnet20: 9 blocks' inner convs + 3 stage units (stem and block outputs coupled by adds)
    assert counts == {"plain20": 19, "resnet20": 12, "vgg_cifar": 8}
