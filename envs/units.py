"""Prunable units of a network, found on Torch-Pruning's traced dependency graph.

A *unit* is one Torch-Pruning dependency group rooted at a conv or linear layer: every layer whose
output channels must be removed together (residual additions, depthwise convs, BatchNorm, the
inputs of the consumers). The agent gives one pruning ratio per unit, so coupled layers can never
receive conflicting pruning ratios. Units are ordered by the execution order of their first layer.

A unit that touches a grouped convolution (ResNeXt, RegNet) has ``channel_groups`` > 1: its channels
form that many equal groups, and every group loses the same channels, so the convolution keeps its
``groups``. A channel shuffle (ShuffleNet: a view that splits the channel dimension into groups, a
transpose, a view back) is a permutation Torch-Pruning cannot follow: the groups crossing it are
not units, the layers inside the shuffled branches are. The same holds for other reshapes from or
to tensors that are neither 2-D nor 4-D (attention heads, Swin's windows).

:func:`estimate_cost` predicts the MACs, parameters or latency of a pruned model from per-layer
costs without pruning anything, for the budget clamp of the environment.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode
from torch_pruning.dependency import index_mapping

from models.errors import InputTooSmallError, NoPrunableLayersError, PruningError

ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class PrunableUnit:
    """One group of coupled output channels; the agent picks one pruning ratio per unit.

    Attributes:
        index: Position in execution order (0 = first unit the input reaches).
        name: Name of the root layer (the first layer of the group to execute), e.g.
            ``"layers.3.conv1"``; the key of this unit in a strategy.
        kind: Kind of the root layer: ``"conv"``, ``"pointwise"`` (1x1 conv), ``"depthwise"`` or
            ``"linear"``.
        layer_names: Every conv/linear layer whose output channels this unit removes.
        in_channels: Input channels (features) of the root layer.
        out_channels: Number of channels the unit can remove (size of the coupled dimension).
        kernel_size: Kernel height of the root layer (1 for linear).
        stride: Stride (height) of the root layer (1 for linear).
        feature_size: Output feature-map height of the root layer, pixels (1 for linear).
        params: Parameters of the layers in ``layer_names``.
        macs: MACs per sample of the layers in ``layer_names`` at full width.
        cost_share: ``macs`` / conv+linear MACs of the whole model.
        channel_groups: The channels form this many equal groups (a grouped convolution in the
            unit); each group loses the same channels, so kept counts are multiples of it.
    """

    index: int
    name: str
    kind: str
    layer_names: tuple[str, ...]
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    feature_size: int
    params: int
    macs: int
    cost_share: float
    channel_groups: int = 1


@dataclass(frozen=True)
class LayerCost:
    """Cost of one conv/linear layer and the units that shrink it, for :func:`estimate_cost`.

    Attributes:
        name: Module name of the layer.
        macs: MACs per sample at full width.
        params: Weight and bias elements.
        out_unit: Index of the unit whose pruning ratio removes this layer's output channels, or
            None.
        in_unit: Index of the unit that removes (most of) this layer's input channels, or None.
        depthwise: Cost scales with the kept fraction once (groups == channels).
        in_split: When the input channels come from several units (a concatenation): pairs of
            (unit index or None for fixed channels, channel count); empty otherwise.
    """

    name: str
    macs: int
    params: int
    out_unit: int | None
    in_unit: int | None
    depthwise: bool
    in_split: tuple[tuple[int | None, int], ...] = ()


@dataclass
class UnitAnalysis:
    """Everything :class:`envs.pruning.Pruner` needs: units, costs, and the Torch-Pruning objects.

    Attributes:
        units: Prunable units in execution order.
        layer_costs: One row per conv/linear layer, in execution order.
        graph: The dependency graph of the traced model.
        groups: ``groups[i]`` is the full-index Torch-Pruning group of ``units[i]``.
        skipped: (layer name, reason) of groups that are not offered as units.
    """

    units: list[PrunableUnit]
    layer_costs: list[LayerCost]
    graph: tp.DependencyGraph
    groups: list[tp.dependency.Group]
    skipped: list[tuple[str, str]] = field(default_factory=list)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Puts ``model`` in eval mode and restores every submodule's own mode afterwards."""
    modes = {m: m.training for m in model.modules()}
    try:
        yield model.eval()
    finally:
        for module, training in modes.items():
            module.train(training)


@dataclass(frozen=True)
class _LayerStat:
    order: int
    macs: int
    params: int
    out_shape: tuple[int, ...]


def layer_stats(model: nn.Module, example_input: torch.Tensor) -> dict[str, _LayerStat]:
    """MACs per sample, parameters and output shape of every conv/linear layer, by one forward.

    MACs count multiply-accumulates of the layer's weights (AMC's convention): BatchNorm, activation
    and pooling are left out. The dict is in execution order (first call of each layer).
    """
    calls: dict[str, list[int]] = {}  # name -> [order, macs, params]
    shapes: dict[str, tuple[int, ...]] = {}
    batch = max(int(example_input.shape[0]), 1)

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if isinstance(module, nn.modules.conv._ConvTransposeNd):
                per_in = module.out_channels // module.groups * _prod(module.kernel_size)
                macs = inputs[0].numel() // batch * per_in
            elif isinstance(module, nn.modules.conv._ConvNd):
                per_out = module.in_channels // module.groups * _prod(module.kernel_size)
                macs = output.numel() // batch * per_out
            else:
                macs = output.numel() // batch * module.in_features
            if name in calls:
                calls[name][1] += macs  # a module called twice costs twice
                return
            params = sum(p.numel() for p in module.parameters(recurse=False))
            calls[name] = [len(calls), macs, params]
            shapes[name] = tuple(output.shape)

        return record

    handles = [
        m.register_forward_hook(hook(n)) for n, m in model.named_modules() if _is_root_type(m)
    ]
    try:
        with eval_mode(model), torch.no_grad():  # eval: BatchNorm statistics must not move
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return {name: _LayerStat(*c, shapes[name]) for name, c in calls.items()}


def find_units(
    model: nn.Module, example_input: torch.Tensor, *, ignored_layers: Sequence[nn.Module] = ()
) -> tuple[list[PrunableUnit], list[LayerCost]]:
    """Prunable units and per-layer costs of ``model``.

    Args:
        model: The network; it is traced, not modified.
        example_input: A batch the model accepts, e.g. shape ``[1, C, H, W]``.
        ignored_layers: Layers whose output channels must be kept, besides the automatically
            protected final layers (those feeding the output without another conv/linear).

    Returns:
        Units in execution order and one :class:`LayerCost` per conv/linear layer (execution
        order). Groups that cannot take arbitrary widths (GroupNorm with several groups,
        attention, RNNs, a channel shuffle) and groups narrower than 2 channels (2 per group of a
        grouped conv) are not units.

    Raises:
        InputTooSmallError: The model's feature maps shrink to nothing on ``example_input``.
        NoPrunableLayersError: The model has no conv/linear layer besides its output layers.
        PruningError: The model fails on ``example_input`` or cannot be traced.
    """
    analysis = analyse_units(model, example_input, ignored_layers=ignored_layers)
    return analysis.units, analysis.layer_costs


def analyse_units(
    model: nn.Module, example_input: torch.Tensor, *, ignored_layers: Sequence[nn.Module] = ()
) -> UnitAnalysis:
    """Like :func:`find_units`, also returning the dependency graph and the groups."""
    try:
        stats = layer_stats(model, example_input)
    except Exception as err:
        if _too_small(err):
            raise InputTooSmallError(_too_small_message(model, example_input)) from err
        raise PruningError(
            f"{type(model).__name__} fails on an example input of shape "
            f"{tuple(example_input.shape)} ({type(err).__name__}: {err}); pass a batch the model "
            "accepts, e.g. torch.zeros(1, C, H, W) of the dataset's image shape"
        ) from err
    if len(stats) < 2:  # Torch-Pruning cannot even trace some of these (UnboundLocalError)
        raise NoPrunableLayersError(
            f"no prunable layers in {type(model).__name__}: it has {len(stats)} conv/linear "
            "layer(s) and the output layer is never pruned; pick a model with hidden conv or "
            "linear layers"
        )
    graph, reshapes = _build_graph(model, example_input)
    names = {m: n for n, m in model.named_modules()}
    protected = list(ignored_layers) + _final_layers(graph)
    found: list[tuple[int, str, tuple[str, ...], tp.dependency.Group, int]] = []
    skipped: list[tuple[str, str]] = []
    for root, group, failure in _all_groups(graph, protected):
        if failure:
            skipped.append((names[root], failure))
            continue
        layers = [
            names[d.target.module]
            for d, _ in group
            if _is_root_type(d.target.module)
            and graph.is_out_channel_pruning_fn(d.handler)
            and names.get(d.target.module) in stats
        ]
        if not layers:
            continue
        layers.sort(key=lambda n: stats[n].order)
        reason = _unsupported(group, reshapes)
        channel_groups, reason = (1, reason) if reason else _channel_groups(graph, group)
        if not reason and len(group[0].idxs) < 2 * channel_groups:
            reason = "fewer than 2 channels" + (" per group" if channel_groups > 1 else "")
        if reason:
            skipped.append((layers[0], reason))
            continue
        found.append((stats[layers[0]].order, layers[0], tuple(layers), group, channel_groups))
    found.sort(key=lambda f: f[0])

    modules = dict(model.named_modules())
    total_macs = sum(s.macs for s in stats.values())
    units = [
        _make_unit(i, name, layers, len(group[0].idxs), modules, stats, total_macs, groups)
        for i, (_, name, layers, group, groups) in enumerate(found)
    ]
    groups = [f[3] for f in found]
    costs = _layer_costs(graph, groups, names, modules, stats)
    return UnitAnalysis(units, costs, graph, groups, skipped)


def estimate_cost(
    layer_costs: Sequence[LayerCost],
    keep: Sequence[float],
    field: str = "macs",
    per_layer: Mapping[str, float] | None = None,
) -> float:
    """Cost of the model with kept fractions ``keep``, without pruning it.

    Each layer costs ``cost * keep[out_unit] * keep[in_unit]`` (a depthwise layer: ``keep`` once,
    a concatenated input: the channel-weighted mean of its sources' ``keep``); a None unit keeps 1.

    Args:
        layer_costs: Rows from :func:`find_units`.
        keep: Kept fraction (1 - pruning ratio) per unit index.
        field: ``"macs"`` or ``"params"``.
        per_layer: Cost per layer name overriding ``field`` (e.g. measured latency in ms); layers
            missing from it cost 0.

    Returns:
        The estimated cost, in the units of ``field`` or ``per_layer``.
    """
    total = 0.0
    for row in layer_costs:
        cost = per_layer.get(row.name, 0.0) if per_layer is not None else getattr(row, field)
        factor = 1.0 if row.out_unit is None else keep[row.out_unit]
        if not row.depthwise:
            factor *= _input_keep(row, keep)
        total += cost * factor
    return float(total)


def _input_keep(row: LayerCost, keep: Sequence[float]) -> float:
    if row.in_split:
        kept = sum(c * (1.0 if u is None else keep[u]) for u, c in row.in_split)
        return kept / sum(c for _, c in row.in_split)
    return 1.0 if row.in_unit is None else keep[row.in_unit]


def _build_graph(
    model: nn.Module, example_input: torch.Tensor
) -> tuple[tp.DependencyGraph, dict[object, str]]:
    """The dependency graph, and the autograd nodes of the reshapes it cannot map, with why."""
    seen = _Reshapes()
    refused: dict[object, str] = {}
    try:
        with eval_mode(model), torch.enable_grad(), _guarded_mappings(seen, refused):
            x = example_input.detach().clone().requires_grad_(True)
            with seen:
                graph = tp.DependencyGraph().build_dependency(model, x, verbose=False)
        for node in graph.module2node.values():  # no mapping in later get_pruning_group calls
            unbound = node.type == tp.ops.OPTYPE.UNBIND and not node.inputs
            if node.grad_fn in refused or unbound:
                node.type = tp.ops.OPTYPE.ELEMENTWISE
        return graph, refused
    except Exception as err:
        hint = (
            "call outside torch.inference_mode()"
            if torch.is_inference_mode_enabled()
            else "pass the failing op's layer in ignored_layers or register a Torch-Pruning "
            "customized pruner for it"
        )
        raise PruningError(
            f"cannot trace {type(model).__name__} for pruning ({type(err).__name__}: {err}); "
            f"Torch-Pruning traces with autograd: {hint}"
        ) from err


class _Reshapes(TorchFunctionMode):
    """Records the flattens of 4-D maps for a linear layer, and the channel-shuffle views.

    Torch-Pruning maps channels through a reshape by inferring the channel counts around it; only
    flattening ``[N, C, H, W]`` into ``[N, C*H*W]`` (and back) is mapped right. Its guard against
    other ranks reads a grad_fn attribute that torch 2 renamed (``_saved_self_sizes``), so it never
    fires: through a channel shuffle (``x.view(n, g, c // g, h, w).transpose(1, 2).view(n, c, h,
    w)``) it divides by zero, through attention matmuls and windows (Swin) it multiplies indices
    until one group takes many minutes.
    """

    _RESHAPES = (torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.Tensor.flatten)
    _RESHAPES += (torch.flatten, torch.Tensor.unflatten, torch.unflatten)

    def __init__(self) -> None:
        super().__init__()
        self.flattens: set[object] = set()
        self.shuffles: set[object] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self._RESHAPES and isinstance(out, torch.Tensor) and out.grad_fn is not None:
            src, dst = tuple(args[0].shape), tuple(out.shape)
            if _flattens(src, dst) or _flattens(dst, src):
                self.flattens.add(out.grad_fn)
            if _splits_channels(src, dst) or _splits_channels(dst, src):
                self.shuffles.add(out.grad_fn)
        return out


def _flattens(maps: tuple[int, ...], flat: tuple[int, ...]) -> bool:
    return len(maps) == 4 and len(flat) == 2 and flat == (maps[0], _prod(maps[1:]))


def _splits_channels(flat: tuple[int, ...], split: tuple[int, ...]) -> bool:
    return (
        len(flat) == 4
        and len(split) == 5
        and split[0] == flat[0]
        and split[1] * split[2] == flat[1]
        and split[3:] == flat[2:]
    )


@contextmanager
def _guarded_mappings(seen: _Reshapes, refused: dict[object, str]) -> Iterator[None]:
    """Lets Torch-Pruning map channels through reshapes and expands only for real flattens.

    Any other mapping it installs (or fails to) is undone and the node lands in ``refused`` with
    why; :func:`_build_graph` then retypes those nodes so that later calls skip them too, and
    :func:`_unsupported` refuses the groups crossing them.
    """
    originals = (
        index_mapping.update_reshape_index_mapping,
        index_mapping.update_expand_index_mapping,
        index_mapping.update_unbind_index_mapping,
    )

    def unbind(graph: tp.DependencyGraph, node) -> None:
        if node.inputs:  # an unbound constant (a buffer) has none: Torch-Pruning would crash
            originals[2](graph, node)

    def guarded(update):
        def run(graph: tp.DependencyGraph, node) -> None:
            if node.grad_fn in refused:
                return
            deps = _deps_around(node)
            before = [list(d.index_mapping) for d in deps]
            try:
                update(graph, node)
                mapped = any(d.index_mapping != b for d, b in zip(deps, before, strict=True))
                if not mapped or node.grad_fn in seen.flattens:
                    return
            except ArithmeticError:
                pass
            for dep, mapping in zip(deps, before, strict=True):
                dep.index_mapping[:] = mapping
            refused[node.grad_fn] = (
                "channel shuffle (a permutation of channels Torch-Pruning cannot follow)"
                if node.grad_fn in seen.shuffles
                else f"a reshape Torch-Pruning cannot map channels through ({node.grad_fn.name()})"
            )

        return run

    index_mapping.update_reshape_index_mapping = guarded(originals[0])
    index_mapping.update_expand_index_mapping = guarded(originals[1])
    index_mapping.update_unbind_index_mapping = unbind
    try:
        yield
    finally:
        (
            index_mapping.update_reshape_index_mapping,
            index_mapping.update_expand_index_mapping,
            index_mapping.update_unbind_index_mapping,
        ) = originals


def _deps_around(node) -> list:
    """The dependencies from ``node`` and those into it: where index mappings of a node live."""
    into = [d for n in (*node.inputs, *node.outputs) for d in n.dependencies if d.target is node]
    return [*node.dependencies, *into]


def _all_groups(
    graph: tp.DependencyGraph, protected: Sequence[nn.Module]
) -> Iterator[tuple[nn.Module, tp.dependency.Group | None, str]]:
    """(root layer, its full-index group, '') for each group not holding a protected layer.

    Like ``DependencyGraph.get_all_groups``, but a layer whose group Torch-Pruning fails to build
    yields ``(layer, None, why)`` instead of ending the iteration.
    """
    protected = set(protected) | set(graph.IGNORED_LAYERS_IN_TRACING)
    visited: set[nn.Module] = set()
    for module in list(graph.module2node):
        if module in protected or module in visited or not _is_root_type(module):
            continue
        pruner = graph.get_pruner_of_module(module)
        if pruner is None or pruner.get_out_channels(module) is None:
            continue
        try:
            channels = list(range(pruner.get_out_channels(module)))
            group = graph.get_pruning_group(module, pruner.prune_out_channels, channels)
        except Exception as err:
            yield module, None, f"Torch-Pruning cannot map its channels ({type(err).__name__})"
            continue
        outs = [d.target.module for d, _ in group if graph.is_out_channel_pruning_fn(d.handler)]
        visited.update(outs)
        if not protected.intersection(outs):
            yield module, group, ""


_TOO_SMALL = ("output size is too small", "kernel size can't be greater", "smaller than kernel")


def _too_small(err: Exception) -> bool:
    return any(text in str(err).lower() for text in _TOO_SMALL)


def _too_small_message(model: nn.Module, example_input: torch.Tensor) -> str:
    height, width = example_input.shape[-2:]
    size = _min_input_size(model, example_input)
    need = f"at least {size}x{size} pixels" if size else "larger images"
    return (
        f"{type(model).__name__} needs inputs of {need}, got {height}x{width}: its strides and "
        "pools shrink the feature map to nothing; upsample the images (models.zoo.build_model "
        "wraps torchvision models that need it in ResizedInput)"
    )


def _min_input_size(model: nn.Module, example_input: torch.Tensor, limit: int = 512) -> int | None:
    """Smallest square input side (pixels) ``model`` runs on, by bisection; None above ``limit``."""

    def runs(size: int) -> bool:
        x = torch.zeros(*example_input.shape[:-2], size, size, dtype=example_input.dtype)
        try:
            with eval_mode(model), torch.no_grad():
                model(x.to(example_input.device))
        except RuntimeError:
            return False
        return True

    low = int(max(example_input.shape[-2:]))  # fails
    high = low * 2
    while not runs(high):
        if high >= limit:
            return None
        low, high = high, min(high * 2, limit)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if runs(mid) else (mid, high)
    return high


def _final_layers(graph: tp.DependencyGraph) -> list[nn.Module]:
    """Conv/linear layers whose outputs reach a model output without another conv/linear."""
    sinks = [n for n in graph.module2node.values() if not n.outputs]
    finals = [n.module for n in sinks if _is_root_type(n.module)]
    stack = [n for n in sinks if not _is_root_type(n.module)]
    seen = set(sinks)
    while stack:
        node = stack.pop()
        for parent in node.inputs:
            if parent in seen:
                continue
            seen.add(parent)
            if _is_root_type(parent.module):
                finals.append(parent.module)
            else:
                stack.append(parent)
    return finals


def _unsupported(group: tp.dependency.Group, reshapes: Mapping[object, str] | None = None) -> str:
    """Why pruning the group would break a layer of it ('' when it would not).

    ``reshapes`` maps the autograd nodes of reshapes Torch-Pruning cannot map to why.
    """
    for dep, _ in group:
        m = dep.target.module
        if reshapes and dep.target.grad_fn in reshapes:
            return reshapes[dep.target.grad_fn]
        if isinstance(m, nn.GroupNorm) and 1 < m.num_groups < m.num_channels:
            return f"GroupNorm with {m.num_groups} groups"
        if isinstance(m, nn.MultiheadAttention | nn.RNNBase):
            return f"{type(m).__name__} (head / gate sizes)"
    return ""


def _channel_groups(graph: tp.DependencyGraph, group: tp.dependency.Group) -> tuple[int, str]:
    """(Equal channel groups the unit must keep: LCM of its grouped convs' ``groups``, '').

    Or ``(1, why)`` when the group's channels cannot be split so.

    Pruning the same channels of every group keeps a grouped conv valid only where the unit's
    channel ``i`` is the conv's channel ``i`` (no concatenation or reshape in between).
    """
    channels = len(group[0].idxs)
    groups = 1
    for item in group:
        m = item.dep.target.module
        if not isinstance(m, nn.modules.conv._ConvNd) or m.groups == 1:
            continue
        if tp.ops.module2type(m) == tp.ops.OPTYPE.DEPTHWISE_CONV:
            continue
        inputs = graph.is_in_channel_pruning_fn(item.dep.handler)
        width = m.in_channels if inputs else m.out_channels
        if list(item.idxs) != list(item.root_idxs) or len(item.idxs) != width:
            return 1, f"grouped convolution (groups={m.groups}) fed through a concat or reshape"
        groups = math.lcm(groups, m.groups)
    if channels % groups:
        return 1, f"grouped convolutions whose groups ({groups}) do not divide {channels} channels"
    return groups, ""


def _make_unit(
    index: int,
    name: str,
    layers: tuple[str, ...],
    channels: int,
    modules: Mapping[str, nn.Module],
    stats: Mapping[str, _LayerStat],
    total_macs: int,
    channel_groups: int = 1,
) -> PrunableUnit:
    root = modules[name]
    if isinstance(root, nn.Linear):
        kind, cin, kernel, stride, size = "linear", root.in_features, 1, 1, 1
    else:
        kernel, stride = root.kernel_size[0], root.stride[0]
        cin = root.in_channels
        shape = stats[name].out_shape
        size = shape[2] if len(shape) > 2 else 1
        if tp.ops.module2type(root) == tp.ops.OPTYPE.DEPTHWISE_CONV:
            kind = "depthwise"
        else:
            kind = "pointwise" if _prod(root.kernel_size) == 1 else "conv"
    macs = sum(stats[n].macs for n in layers)
    return PrunableUnit(
        index=index,
        name=name,
        kind=kind,
        layer_names=layers,
        in_channels=cin,
        out_channels=channels,
        kernel_size=kernel,
        stride=stride,
        feature_size=size,
        params=sum(stats[n].params for n in layers),
        macs=macs,
        cost_share=macs / max(total_macs, 1),
        channel_groups=channel_groups,
    )


def _layer_costs(
    graph: tp.DependencyGraph,
    groups: Sequence[tp.dependency.Group],
    names: Mapping[nn.Module, str],
    modules: Mapping[str, nn.Module],
    stats: Mapping[str, _LayerStat],
) -> list[LayerCost]:
    out_unit: dict[str, int] = {}
    in_counts: dict[str, dict[int, int]] = defaultdict(dict)
    for u, group in enumerate(groups):
        for dep, idxs in group:
            name = names.get(dep.target.module)
            if name not in stats:
                continue
            if graph.is_out_channel_pruning_fn(dep.handler):
                out_unit[name] = u
            if graph.is_in_channel_pruning_fn(dep.handler):
                in_counts[name][u] = in_counts[name].get(u, 0) + len(idxs)
    rows = []
    for name, stat in stats.items():
        module = modules[name]
        depthwise = tp.ops.module2type(module) == tp.ops.OPTYPE.DEPTHWISE_CONV
        in_unit, split = _input_sources(module, in_counts.get(name, {}))
        rows.append(
            LayerCost(name, stat.macs, stat.params, out_unit.get(name), in_unit, depthwise, split)
        )
    return rows


def _input_sources(
    module: nn.Module, counts: Mapping[int, int]
) -> tuple[int | None, tuple[tuple[int | None, int], ...]]:
    """(main input unit, split) of a layer from how many input channels each unit prunes."""
    if not counts:
        return None, ()
    total = module.in_features if isinstance(module, nn.Linear) else module.in_channels
    main = max(counts, key=lambda u: counts[u])
    if len(counts) == 1 and counts[main] == total:
        return main, ()
    fixed = total - sum(counts.values())
    split = tuple(counts.items()) + (((None, fixed),) if fixed > 0 else ())
    return main, split


def _is_root_type(module: object) -> bool:
    return isinstance(module, ROOT_TYPES)


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out
