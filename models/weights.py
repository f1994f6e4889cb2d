"""A user's own trained network: an architecture by name plus a ``state_dict`` file.

Every script that takes ``--model`` and ``--weights`` loads them here, so a file that does not fit
gives the same one-line error everywhere (naming the first offending key and the fix), and the
file's SHA-256 identifies the weights in run records.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models.errors import CheckpointError
from models.pretrained import file_sha256
from models.zoo import build_model

#: Keys under which common checkpoint dicts hold the state_dict (rlprune's cache uses the first).
STATE_DICT_KEYS = ("state_dict", "model_state_dict")


@dataclass(frozen=True)
class TrainedModel:
    """A network with a user's weights loaded.

    Attributes:
        model: The network in eval mode, on the CPU.
        path: The weights file, absolute.
        sha256: Hex SHA-256 of the file's bytes.
    """

    model: nn.Module
    path: Path
    sha256: str


def load_weights(
    model_name: str, input_shape: tuple[int, int, int], num_classes: int, path: str | Path
) -> TrainedModel:
    """Builds ``model_name`` for the data and loads the ``state_dict`` saved at ``path``.

    The file is what ``torch.save(model.state_dict(), path)`` writes, or a dict holding it
    under ``state_dict`` / ``model_state_dict``. It is read with ``weights_only=True``: tensors
    only, no code runs.

    Args:
        model_name: Any name :func:`models.zoo.build_model` accepts (zoo, torchvision,
            ``module:callable``).
        input_shape: ``(C, H, W)`` of the dataset's images.
        num_classes: The dataset's class count.
        path: The weights file.

    Returns:
        The model with the weights, and the file's checksum.

    Raises:
        CheckpointError: No such file, an unreadable or corrupt one, not a state_dict, or a
            state_dict that does not fit the architecture (the first missing, unexpected or
            differently shaped key is named).
        UnknownModelError: ``model_name`` is unknown.
    """
    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise CheckpointError(f"weights file {path}: no such file; check the path")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():
            raise _unreadable(path, err) from None
        raise CheckpointError(
            f"weights file {path} holds pickled Python objects, not only tensors (a whole "
            "model?); save torch.save(model.state_dict(), path) and pass that file"
        ) from None
    except Exception as err:  # torch raises RuntimeError, EOFError, ... on corrupt files
        raise _unreadable(path, err) from None
    state = _state_dict(path, payload)
    model = build_model(model_name, input_shape, num_classes)
    _check_fit(path, model_name, input_shape, num_classes, model.state_dict(), state)
    model.load_state_dict(state)
    return TrainedModel(model.eval(), path, file_sha256(path))


def _unreadable(path: Path, err: Exception) -> CheckpointError:
    return CheckpointError(
        f"weights file {path} is unreadable ({type(err).__name__}); it is corrupt or not "
        "written by torch.save - save it again with torch.save(model.state_dict(), path)"
    )


def _state_dict(path: Path, payload: object) -> Mapping[str, torch.Tensor]:
    """The state_dict inside a loaded file: the payload itself or one of :data:`STATE_DICT_KEYS`."""
    if isinstance(payload, Mapping):
        for key in STATE_DICT_KEYS:
            if isinstance(payload.get(key), Mapping):
                payload = payload[key]
                break
    if not isinstance(payload, Mapping) or not payload:
        kind = "an empty dict" if isinstance(payload, Mapping) else f"a {type(payload).__name__}"
        raise CheckpointError(
            f"weights file {path} holds {kind}, not a state_dict; save "
            "torch.save(model.state_dict(), path)"
        )
    bad = next((k for k, v in payload.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(
            f"weights file {path}: entry '{bad}' is a {type(payload[bad]).__name__}, not a "
            "tensor, so this is not a state_dict; save torch.save(model.state_dict(), path)"
        )
    return payload


def _check_fit(
    path: Path,
    model_name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
) -> None:
    """Raises one line naming the first key of ``state`` that does not fit ``expected``."""
    built = (
        f"{model_name} built for {'x'.join(map(str, input_shape))} images, {num_classes} classes"
    )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
            parts.append(f"missing key '{missing[0]}'{more}")
        if unexpected:
            more = f" (+{len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
            parts.append(f"unexpected key '{unexpected[0]}'{more}")
        fix = "pass the --model the weights were saved from"
        if unexpected and all(k.startswith("module.") for k in unexpected):
            fix = "the keys start with 'module.' (DataParallel): save model.module.state_dict()"
        raise CheckpointError(
            f"weights file {path} does not fit {built}: {', '.join(parts)}; {fix}"
        )
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise CheckpointError(
                f"weights file {path} does not fit {built}: '{key}' is {list(state[key].shape)} "
                f"in the file, {list(tensor.shape)} in the model; pass the --dataset the weights "
                "were trained on (channels, size, classes) or the --model they were saved from"
            )
