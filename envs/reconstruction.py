"""AMC's feature-map reconstruction: refit the layers whose input channels were pruned.

Removing channels from a layer's input changes what the layer computes. AMC (He et al., ECCV
2018, following He et al., ICCV 2017) re-fits the weights of every such layer by least squares so
that, on feature maps sampled from the original network, its output from the kept input channels
matches the original layer's output from all of them. Distiller's AMC replication found that the
search's accuracy after this step ranks strategies like their fine-tuned accuracy (Pearson
0.66-0.75) where plain channel removal does not (0.07-0.14).

:class:`Reconstructor` samples the original network's layer inputs and outputs once (one forward
pass over ``images`` calibration images, ``positions`` output positions per image), then refits
any pruned copy in a fraction of a second: one ridge-regularised least-squares solve per layer.
Like AMC, the inputs come from the *original* network (restricted to the kept channels), so
layers are independent of each other. Plain convolutions (``groups == 1``) and linear layers are
refitted; grouped and depthwise convolutions, whose outputs each see few inputs, are left as
they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from models.errors import PruningError


@dataclass
class _Moments:
    """Least-squares moments of one layer's sampled rows: ``X^T X`` and ``X^T Y`` (float64).

    ``X`` holds unfolded inputs ``[R, C_in * k * k]`` (plus a column of ones when the layer has a
    bias), ``Y`` the layer's outputs ``[R, C_out]``. Any kept subset of inputs and outputs is a
    sub-matrix of these, so each refit needs only a small solve.
    """

    gram: torch.Tensor
    cross: torch.Tensor
    kernel_area: int
    has_bias: bool


class Reconstructor:
    """Refits the input-pruned layers of pruned copies of one model (AMC's reconstruction).

    Args:
        model: The original network (never modified).
        dataset: Training samples to draw calibration images from (first tensor: ``[N, C, H, W]``).
        images: Calibration images (AMC samples ~60 batches; a few hundred suffice here).
        positions: Output positions sampled per image and conv layer (AMC: 10).
        ridge: Ridge penalty, relative to the mean diagonal of ``X^T X``.
        seed: Seed of the image and position sampling.
        device: Where the forward pass and the solves run.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: TensorDataset,
        *,
        images: int = 500,
        positions: int = 10,
        ridge: float = 1e-3,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        if images < 1 or positions < 1:
            raise PruningError(
                f"reconstruction needs images >= 1 and positions >= 1, got {images}, {positions}"
            )
        self.model = model
        self.ridge = ridge
        self.device = torch.device(device)
        self._moments = _sample_layers(model, dataset, images, positions, seed, self.device)

    @property
    def layer_names(self) -> list[str]:
        """Names of the layers that can be refitted (plain conv and linear)."""
        return list(self._moments)

    @torch.no_grad()
    def apply(self, pruned: nn.Module) -> list[str]:
        """Refits, in place, every layer of ``pruned`` that lost input channels.

        Args:
            pruned: A pruned copy of the original model (same module names; channels removed,
                never reordered, as Torch-Pruning does).

        Returns:
            The names of the refitted layers.

        Raises:
            PruningError: A layer's weights are not a sub-matrix of the original layer's.
        """
        originals = dict(self.model.named_modules())
        refitted = []
        for name, layer in pruned.named_modules():
            moments = self._moments.get(name)
            if moments is None or _in_features(layer) == _in_features(originals[name]):
                continue
            keep_in, keep_out = _kept_indices(originals[name].weight, layer.weight)
            area = moments.kernel_area
            columns = (keep_in[:, None] * area + torch.arange(area)).reshape(-1)
            has_bias = moments.has_bias
            if has_bias:
                columns = torch.cat([columns, torch.tensor([moments.gram.shape[0] - 1])])
            gram = moments.gram[columns][:, columns]
            cross = moments.cross[columns][:, keep_out]
            solution = _ridge_solve(gram, cross, self.ridge)  # [in_features (+1), out]
            weight = solution[: len(columns) - has_bias].T
            layer.weight.copy_(weight.reshape(layer.weight.shape).to(layer.weight))
            if has_bias:
                layer.bias.copy_(solution[-1].to(layer.bias))
            refitted.append(name)
        return refitted


def _refittable(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.groups == 1)


def _in_features(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _sample_layers(
    model: nn.Module,
    dataset: TensorDataset,
    images: int,
    positions: int,
    seed: int,
    device: torch.device,
) -> dict[str, _Moments]:
    """One forward pass of ``model``: least-squares moments of every refittable layer."""
    generator = torch.Generator().manual_seed(seed)
    x_all = dataset.tensors[0]
    picked = torch.randperm(len(x_all), generator=generator)[: min(images, len(x_all))]
    rows: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    areas: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            inputs = args[0]
            if isinstance(module, nn.Linear):
                flat_in = inputs.reshape(-1, inputs.shape[-1])
                flat_out = output.reshape(-1, output.shape[-1])
                area = 1
            else:
                patches = F.unfold(
                    inputs,
                    module.kernel_size,
                    dilation=module.dilation,
                    padding=module.padding,
                    stride=module.stride,
                )  # [B, C*k*k, L]
                outs = output.flatten(2)  # [B, C_out, L]
                where = torch.randint(
                    0, patches.shape[2], (patches.shape[0], positions), generator=generator
                ).to(patches.device)
                flat_in = (
                    torch.gather(patches, 2, where[:, None, :].expand(-1, patches.shape[1], -1))
                    .transpose(1, 2)
                    .reshape(-1, patches.shape[1])
                )
                flat_out = (
                    torch.gather(outs, 2, where[:, None, :].expand(-1, outs.shape[1], -1))
                    .transpose(1, 2)
                    .reshape(-1, outs.shape[1])
                )
                area = module.kernel_size[0] * module.kernel_size[1]
            rows.setdefault(name, []).append((flat_in.cpu(), flat_out.cpu()))
            areas[name] = area

        return record

    handles = [
        module.register_forward_hook(hook(name))
        for name, module in model.named_modules()
        if _refittable(module)
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for chunk in picked.split(100):
                model(x_all[chunk].to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    moments = {}
    for name, parts in rows.items():
        inputs = torch.cat([p[0] for p in parts]).double()
        outputs = torch.cat([p[1] for p in parts]).double()
        has_bias = model.get_submodule(name).bias is not None
        if has_bias:  # a column of ones fits the bias
            inputs = torch.cat([inputs, torch.ones(len(inputs), 1, dtype=inputs.dtype)], 1)
        moments[name] = _Moments(inputs.T @ inputs, inputs.T @ outputs, areas[name], has_bias)
    return moments


def _ridge_solve(gram: torch.Tensor, cross: torch.Tensor, ridge: float) -> torch.Tensor:
    """``W = (G + lam I)^-1 C``, the ridge solution, with ``lam = ridge * mean(diag(G))``."""
    lam = ridge * float(gram.diagonal().mean()) + 1e-12
    regularised = gram + lam * torch.eye(len(gram), dtype=gram.dtype)
    return torch.linalg.solve(regularised, cross).float()


def _kept_indices(
    original: torch.Tensor, pruned: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which input and output channels of ``original`` the ``pruned`` weight kept, in order.

    Pruning removes rows (outputs) and columns (inputs) without reordering, so the first pruned
    row is an ordered sub-sequence of some original row; that match gives the kept inputs, and
    the rows then pair up in order.
    """
    orig = original.detach().reshape(original.shape[0], original.shape[1], -1)
    sub = pruned.detach().reshape(pruned.shape[0], pruned.shape[1], -1)
    keep_in = None
    for row in range(orig.shape[0]):
        keep_in = _subsequence(orig[row], sub[0])
        if keep_in is not None:
            break
    if keep_in is None:
        raise PruningError("the pruned layer is not a sub-matrix of the original; cannot refit")
    kept = orig[:, keep_in]
    keep_out, row = [], 0
    for j in range(sub.shape[0]):
        while row < kept.shape[0] and not torch.equal(kept[row], sub[j]):
            row += 1
        if row == kept.shape[0]:
            raise PruningError(
                "the pruned layer's outputs do not match the original's; cannot refit"
            )
        keep_out.append(row)
        row += 1
    return keep_in, torch.tensor(keep_out)


def _subsequence(full: torch.Tensor, part: torch.Tensor) -> torch.Tensor | None:
    """Indices ``i`` (increasing) with ``full[i] == part`` slice by slice, or None."""
    found, i = [], 0
    for slice_ in part:
        while i < len(full) and not torch.equal(full[i], slice_):
            i += 1
        if i == len(full):
            return None
        found.append(i)
        i += 1
    return torch.tensor(found)
