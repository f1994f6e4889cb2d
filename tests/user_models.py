"""User-defined models loaded by name (``user_models:tiny_cnn``) in the zoo tests."""

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
