"""Small CIFAR-style architectures that adapt to any input shape and class count.

Each builder takes ``in_channels`` and ``num_classes`` and returns a randomly initialised
``nn.Module``. They cover the three coupling patterns a pruner must handle: a plain chain
(:func:`vgg_small`), residual additions (:func:`resnet20`, :func:`resnet56`) and depthwise
convolutions with inverted residuals (:func:`mobilenetv2_small`).
"""

from __future__ import annotations

from torch import Tensor, nn


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> list:
    return [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class VGGSmall(nn.Module):
    """A narrow 6-conv VGG: three stages of two 3x3 conv-BN-ReLU layers, each then max-pooled."""

    def __init__(
        self, in_channels: int = 3, num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 128)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for width in widths:
            layers += _conv_bn_relu(cin, width) + _conv_bn_relu(width, width)
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
            cin = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 conv shortcut when the shape changes (option B).

    With ``residual=False`` it is two plain conv-BN-ReLU layers (AMC's Plain-20 building block).
    """

    def __init__(self, cin: int, cout: int, stride: int, residual: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual
        self.shortcut: nn.Module = nn.Identity()
        if residual and (stride != 1 or cin != cout):
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x) if self.residual else out)


class CifarResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016): 3 stages of ``n`` basic blocks, depth = 6n + 2.

    ``residual=False`` drops every shortcut: the plain network of the same depth.
    """

    def __init__(
        self,
        depth: int = 20,
        in_channels: int = 3,
        num_classes: int = 10,
        width: int = 16,
        residual: bool = True,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, width))
        blocks: list[nn.Module] = []
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(cin, cout, stride, residual))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += _conv_bn_relu(cin, hidden, kernel=1)
        layers += _conv_bn_relu(hidden, hidden, stride=stride, groups=hidden)
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2Small(nn.Module):
    """A small CIFAR-style MobileNetV2 (stride-1 stem, 12 inverted-residual blocks)."""

    # (expansion, out channels, repeats, first stride)
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 3, 2), (6, 96, 3, 1))

    def __init__(self, in_channels: int = 3, num_classes: int = 10, last_channels: int = 256):
        super().__init__()
        layers: list[nn.Module] = list(_conv_bn_relu(in_channels, 32))
        cin = 32
        for expand, cout, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers += _conv_bn_relu(cin, last_channels, kernel=1)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg_small(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """6-conv VGG with widths 32-64-128 (the default base model)."""
    return VGGSmall(in_channels, num_classes)


def resnet20(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """CIFAR ResNet-20 (widths 16-32-64)."""
    return CifarResNet(20, in_channels, num_classes)


def plain20(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """AMC's Plain-20: ResNet-20 without shortcuts, 19 independently prunable convs."""
    return CifarResNet(20, in_channels, num_classes, residual=False)


def vgg_cifar(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """An 8-conv CIFAR VGG (widths 32-64-128-256, two convs per stage, 1.2M parameters)."""
    return VGGSmall(in_channels, num_classes, widths=(32, 64, 128, 256))


def resnet56(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """CIFAR ResNet-56 (widths 16-32-64)."""
    return CifarResNet(56, in_channels, num_classes)


def mobilenetv2_small(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """Small CIFAR-style MobileNetV2 with depthwise convolutions."""
    return MobileNetV2Small(in_channels, num_classes)


SMALL_ARCHITECTURES = {
    "vgg_small": vgg_small,
    "resnet20": resnet20,
    "plain20": plain20,
    "vgg_cifar": vgg_cifar,
    "resnet56": resnet56,
    "mobilenetv2_small": mobilenetv2_small,
}
