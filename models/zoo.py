"""Architectures by name: the small CIFAR-style zoo, every torchvision classifier, user models.

:func:`build_model` returns a randomly initialised network adapted to a dataset: its first
convolution takes the dataset's channel count and its classifier outputs the dataset's class count.
torchvision models that cannot run on small inputs are wrapped in :class:`ResizedInput`, which
upsamples the batch to the smallest size the model accepts. Nothing is ever downloaded.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import os
import sys
from collections.abc import Callable
from types import ModuleType

from torch import Tensor, nn
from torch.nn import functional as F

from models.architectures import SMALL_ARCHITECTURES
from models.errors import UnknownModelError

DEFAULT_MODEL = "vgg_small"

# Smallest square input (pixels) of the torchvision families that fail on 28x28 or on 8x8 (digits),
# by name prefix: found by trying every model on growing sizes (strided stems and pools shrink the
# map to nothing). All families not listed here or below run on 8x8, 28x28 and 32x32 as they are.
_MIN_INPUT_SIZE = {
    "alexnet": 63,
    "convnext": 32,
    "densenet": 32,  # 29 would do; 32 keeps the maps even
    "googlenet": 16,  # 15 would do
    "inception_v3": 75,
    "squeezenet1_0": 22,  # 21 would do
    "squeezenet1_1": 18,  # 17 would do
    "vgg": 32,
}
# Models built for one input size: always resized to it (ViTs get a patch multiple, see below).
_FIXED_INPUT_SIZE = {"maxvit_t": 224}
# Extra builder arguments: plain tensor outputs in training mode, no init-weights warning.
_BUILD_KWARGS: dict[str, dict] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
_VIT_PATCH = {"vit_b_16": 16, "vit_b_32": 32, "vit_l_16": 16, "vit_l_32": 32, "vit_h_14": 14}


class ResizedInput(nn.Module):
    """Wraps a network that needs a larger input: bilinear upsampling of the batch, then the net.

    Attributes:
        net: The wrapped network.
        size: The (height, width) in pixels the input is resized to.
    """

    def __init__(self, net: nn.Module, size: tuple[int, int]) -> None:
        super().__init__()
        self.net = net
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return self.net(x)


def torchvision_models() -> list[str]:
    """Names of every torchvision classification architecture (ImageNet-style builders)."""
    import torchvision  # here, not at the top: its import takes ~1.5 s that most runs never need

    return sorted(torchvision.models.list_models(module=torchvision.models))


def list_models() -> list[str]:
    """All model names :func:`build_model` accepts (besides ``package.module:callable``)."""
    return list(SMALL_ARCHITECTURES) + torchvision_models()


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Builds a randomly initialised classifier for inputs ``(C, H, W)`` and ``num_classes``.

    Args:
        name: A small architecture (``vgg_small``, ``resnet20``, ...), a torchvision
            classification model name (``resnet18``, ``vit_b_16``, ...), or a user model as
            ``package.module:callable`` (importable from ``sys.path`` or the current directory;
            called with ``in_channels`` and ``num_classes`` if it accepts them).
        input_shape: The dataset's (channels, height, width) of one image.
        num_classes: Number of output logits.

    Returns:
        The model, in training mode, on the CPU; it maps ``[N, C, H, W]`` to ``[N, num_classes]``.

    Raises:
        UnknownModelError: The name is unknown or the user callable cannot be imported.
    """
    in_channels = input_shape[0]
    if name in SMALL_ARCHITECTURES:
        return SMALL_ARCHITECTURES[name](in_channels=in_channels, num_classes=num_classes)
    if name in torchvision_models():
        return _build_torchvision(name, input_shape, num_classes)
    if ":" in name:
        return _build_user_model(name, in_channels, num_classes)
    hint = difflib.get_close_matches(name, list_models(), n=1)
    suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
    raise UnknownModelError(f"unknown model '{name}'{suggestion} (see --list-models)")


def _build_torchvision(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    channels, height, width = input_shape
    kwargs = dict(_BUILD_KWARGS.get(name, {}))
    fixed = name in _VIT_PATCH or name in _FIXED_INPUT_SIZE
    if name in _VIT_PATCH:
        # A ViT takes any image size divisible by its patch: round up rather than resize to 224.
        patch = _VIT_PATCH[name]
        size = kwargs["image_size"] = math.ceil(max(height, width) / patch) * patch
    elif name in _FIXED_INPUT_SIZE:
        size = _FIXED_INPUT_SIZE[name]
    else:
        min_size = max((v for k, v in _MIN_INPUT_SIZE.items() if name.startswith(k)), default=1)
        size = max(min_size, height, width)
    import torchvision

    net = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if channels != 3:
        _replace_first_conv(net, channels)
    if (height, width) != (size, size) and (fixed or min(height, width) < size):
        return ResizedInput(net, (size, size))
    return net


def _replace_first_conv(net: nn.Module, channels: int) -> None:
    """Swaps the first 3-channel convolution for one taking ``channels`` input channels."""
    for parent in net.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3 and child.groups == 1:
                conv = nn.Conv2d(
                    channels,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.dilation,
                    bias=child.bias is not None,
                    padding_mode=child.padding_mode,
                )
                setattr(parent, child_name, conv)
                return
    raise UnknownModelError(f"cannot find the input convolution of {type(net).__name__}")


def _build_user_model(spec: str, in_channels: int, num_classes: int) -> nn.Module:
    """Imports ``package.module:callable`` and calls it with the keyword arguments it accepts."""
    module_name, _, attr = spec.partition(":")
    try:
        target: object = _import_from_cwd(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, ValueError) as err:
        raise UnknownModelError(
            f"cannot load user model '{spec}': {err} (expected an importable "
            "'package.module:callable')"
        ) from err
    if not callable(target):
        raise UnknownModelError(f"user model '{spec}' is not callable")
    model = target(**_accepted_kwargs(target, in_channels=in_channels, num_classes=num_classes))
    if not isinstance(model, nn.Module):
        raise UnknownModelError(
            f"user model '{spec}' returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def _import_from_cwd(module_name: str) -> ModuleType:
    """Imports a module, also searching the current directory (as ``python -m`` would)."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    finally:
        if added:
            sys.path.remove(cwd)


def _accepted_kwargs(fn: Callable, **candidates: int) -> dict[str, int]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return candidates
    return {key: value for key, value in candidates.items() if key in params}
