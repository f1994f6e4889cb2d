"""User-defined models loaded by name (``user_models:tiny_cnn``) in the zoo tests."""

import torch
from torch import nn


def tiny_cnn(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """A 1-conv classifier that adapts to the dataset."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


def fixed_mlp() -> nn.Module:
    """A model whose builder takes no arguments: 1x8x8 inputs, 10 classes."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def not_a_model() -> str:
    """A callable that returns something other than a module."""
    return "oops"


class _Inception(nn.Module):
    """Four branches (1x1; 1x1-3x3; 1x1-3x3-3x3; pool-1x1) concatenated, GoogLeNet style."""

    def __init__(self, cin: int, width: int) -> None:
        super().__init__()

        def conv(a: int, b: int, k: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(a, b, k, padding=k // 2, bias=False), nn.BatchNorm2d(b), nn.ReLU()
            )

        self.b1 = conv(cin, width, 1)
        self.b2 = nn.Sequential(conv(cin, width, 1), conv(width, width, 3))
        self.b3 = nn.Sequential(conv(cin, width // 2, 1), conv(width // 2, width, 3),
                                conv(width, width, 3))  # fmt: skip
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv(cin, width, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1)


def inception_cnn(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """A user's own small Inception-style CNN (concatenating branches): a family none of the
    zoo's architectures has, for the transfer study (``tests.user_models:inception_cnn``)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        _Inception(32, 16),
        nn.MaxPool2d(2),
        _Inception(64, 32),
        nn.MaxPool2d(2),
        _Inception(128, 48),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(192, num_classes),
    )
