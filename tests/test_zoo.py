"""Model zoo: every small architecture, a few torchvision models, user models, name errors."""

from pathlib import Path

import pytest
import torch
from torch import nn

from models.architectures import SMALL_ARCHITECTURES
from models.errors import UnknownModelError
from models.zoo import DEFAULT_MODEL, ResizedInput, build_model, list_models

SHAPES = [((1, 28, 28), 10), ((3, 32, 32), 7)]


def _logits(model: nn.Module, input_shape: tuple[int, int, int]) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        return model(torch.randn(2, *input_shape))


@pytest.mark.parametrize("input_shape,num_classes", SHAPES)
@pytest.mark.parametrize("name", [*SMALL_ARCHITECTURES, "resnet18", "mobilenet_v2"])
def test_models_adapt_to_channels_and_classes(name, input_shape, num_classes) -> None:
    model = build_model(name, input_shape, num_classes)
    assert _logits(model, input_shape).shape == (2, num_classes)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == input_shape[0]


def test_too_small_input_is_resized_for_torchvision_models() -> None:
    model = build_model("densenet121", (1, 28, 28), 10)  # pools 28 px down to nothing
    assert isinstance(model, ResizedInput) and model.size == (32, 32)
    assert _logits(model, (1, 28, 28)).shape == (2, 10)
    assert not isinstance(build_model("densenet121", (3, 32, 32), 10), ResizedInput)


@pytest.mark.parametrize(
    "name,size", [("googlenet", 16), ("squeezenet1_0", 22), ("squeezenet1_1", 18)]
)
def test_nets_that_fail_on_digits_are_upsampled(name: str, size: int) -> None:
    model = build_model(name, (1, 8, 8), 10)  # their pools shrink 8x8 maps to nothing
    assert isinstance(model, ResizedInput) and model.size == (size, size)
    assert _logits(model, (1, 8, 8)).shape == (2, 10)


def test_list_models_has_small_and_torchvision_names() -> None:
    names = list_models()
    assert DEFAULT_MODEL in names and "resnet20" in names and "vit_b_16" in names
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    "name,message",
    [
        ("resnt18", "unknown model 'resnt18'; did you mean 'resnet18'? (see --list-models)"),
        ("zzzz", "unknown model 'zzzz' (see --list-models)"),
    ],
)
def test_unknown_model_names_suggest(name: str, message: str) -> None:
    with pytest.raises(UnknownModelError) as info:
        build_model(name, (1, 28, 28), 10)
    assert str(info.value) == message


@pytest.fixture
def user_models_on_path(monkeypatch) -> None:
    monkeypatch.chdir(Path(__file__).parent)  # build_model also imports from the current dir


@pytest.mark.usefixtures("user_models_on_path")
def test_user_callable_gets_the_arguments_it_accepts() -> None:
    model = build_model("user_models:tiny_cnn", (1, 28, 28), 5)
    assert _logits(model, (1, 28, 28)).shape == (2, 5)
    assert _logits(build_model("user_models:fixed_mlp", (1, 8, 8), 10), (1, 8, 8)).shape == (2, 10)


@pytest.mark.usefixtures("user_models_on_path")
@pytest.mark.parametrize(
    "spec,match",
    [
        ("no_such_module_xyz:net", "cannot load user model"),
        ("user_models:missing", "cannot load user model"),
        ("user_models:not_a_model", "not a torch.nn.Module"),
    ],
)
def test_bad_user_models_raise(spec: str, match: str) -> None:
    with pytest.raises(UnknownModelError, match=match):
        build_model(spec, (1, 8, 8), 10)
