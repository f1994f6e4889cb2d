"""Networks the pruning tests run on: one per coupling pattern, small inputs."""

import torchvision

from models.architectures import SMALL_ARCHITECTURES

# name -> (builder, input shape); small inputs keep tracing fast.
ARCHS = {
    "vgg_small": (lambda: SMALL_ARCHITECTURES["vgg_small"](1, 10), (1, 16, 16)),
    "resnet20": (lambda: SMALL_ARCHITECTURES["resnet20"](3, 10), (3, 16, 16)),
    "mobilenetv2_small": (lambda: SMALL_ARCHITECTURES["mobilenetv2_small"](3, 10), (3, 16, 16)),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (3, 32, 32)),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10), (3, 32, 32)),
}
