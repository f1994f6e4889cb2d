"""Latency tables: the per-layer latency profile of one architecture, saved as JSON and reused.

A table holds what :func:`envs.latency.profile_layers` measures for a (model, input shape, batch
size, threads, backend, device): each conv/linear layer's milliseconds with its widths, and the
overhead (everything the pruning does not shrink). It serves two purposes:

- **Reuse**: a search saves the table of its base model next to the base-model cache
  (``<cache>/latency_tables/``, :func:`table_path`) and a later search with the same settings on
  the same device reads it instead of profiling again.
- **Another device**: a table measured where the model will run (``scripts/latency_table.py``)
  is loaded where the search runs (``--latency-table FILE``, :class:`TableLatency`); every
  episode's latency is then the table's estimate for the pruned widths, not a timing. The
  reported latencies of the final models are still measured where the search runs.

The estimate is linear in each layer's work, but small layers run less efficiently than that (on
the tiny digits vgg_small here, uniform pruning the linear estimate put at 0.50 of the latency
measured 0.72 in ONNX Runtime). So ``scripts/latency_table.py`` also times a few uniformly pruned
copies on the device, and the table maps its linear estimate through those measured points
(:meth:`LatencyTable.corrected`), as the env recalibrates its own estimate with measured episodes.

Files are written atomically. A table that is unreadable, or measured for another architecture,
input, batch size, thread count or backend, is refused with one line naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from envs.backends import compile_key
from envs.latency import LatencyConfig, LatencyMeter, profile_layers
from models.atomic import write_json_atomic
from models.errors import CheckpointError, PruningError

#: The ``format`` field of a table file; another value is refused.
TABLE_FORMAT = "rlprune-latency-table/1"


@dataclass(frozen=True)
class LayerLatency:
    """One layer's row: its time and the widths it was timed at.

    Attributes:
        ms: Milliseconds per batch at full width.
        in_channels: Input channels (features of a linear layer).
        out_channels: Output channels (features).
        groups: Convolution groups (1 for a linear layer); a depthwise layer has
            ``groups == in_channels``.
    """

    ms: float
    in_channels: int
    out_channels: int
    groups: int


@dataclass(frozen=True)
class LatencyTable:
    """The per-layer latency profile of one architecture in one runtime on one device.

    Attributes:
        model: The model's name (informative).
        architecture: Fingerprint of the architecture (:func:`architecture_id`), not weights.
        input_shape: One sample's shape, ``(C, H, W)``.
        batch_size: Samples per timed forward pass.
        threads: Threads while timing (None: the runtime's default).
        backend: Runtime (:data:`envs.backends.BACKENDS`).
        device: ``"cpu"`` or ``"cuda:N"``.
        device_name: The processor or GPU (:func:`device_name`).
        overhead_ms: Time not in the layers (ms per batch).
        layers: Row per conv/linear layer name.
        profile: How the layers' times were obtained (see :func:`envs.latency.profile_layers`).
        created: When the table was measured (UTC, ISO 8601).
        calibration: Measured points ``(linear estimate, measured relative latency)`` of pruned
            copies on the table's device, sorted; empty: the linear estimate is used as it is.
    """

    model: str
    architecture: str
    input_shape: tuple[int, ...]
    batch_size: int
    threads: int | None
    backend: str
    device: str
    device_name: str
    overhead_ms: float
    layers: dict[str, LayerLatency]
    profile: str
    created: str
    calibration: tuple[tuple[float, float], ...] = ()

    @property
    def latency_ms(self) -> float:
        """The whole model's time per batch at full width: overhead plus every layer."""
        return self.overhead_ms + sum(row.ms for row in self.layers.values())

    def layer_ms(self) -> dict[str, float]:
        """Milliseconds per layer name (the per-layer table of the env's estimate)."""
        return {name: row.ms for name, row in self.layers.items()}

    def estimate_ms(self, model: nn.Module) -> float:
        """Estimated time of ``model``, a pruned copy of the profiled architecture.

        Each layer's time scales with its work, ``out_channels * in_channels / groups``, relative
        to the profiled widths (so a depthwise layer with its channels, a plain one with both
        widths), as :func:`envs.units.estimate_cost` scales a per-layer table; the overhead is
        constant.

        Raises:
            PruningError: A profiled layer is missing from ``model`` or is not conv/linear.
        """
        modules = dict(model.named_modules())
        total = self.overhead_ms
        for name, row in self.layers.items():
            if name not in modules:
                raise PruningError(
                    f"layer '{name}' of the {self.model} latency table is not in "
                    f"{type(model).__name__}; the table is for another architecture"
                )
            cin, cout, groups = layer_widths(modules[name])
            full = row.out_channels * row.in_channels / row.groups
            total += row.ms * (cout * cin / groups) / full
        return total

    def corrected(self, estimate: float) -> float:
        """The relative latency a linear ``estimate`` (:meth:`estimate_ms` over :attr:`latency_ms`)
        stands for on the table's device: interpolated through the measured ``calibration``
        points and (1, 1); below the lowest point, proportional to it. Without points, as is."""
        points = sorted({*self.calibration, (1.0, 1.0)})
        x0, y0 = points[0]
        if estimate <= x0:
            return estimate * y0 / x0
        for x1, y1 in points[1:]:
            if estimate <= x1 and x1 > x0:
                return y0 + (y1 - y0) * (estimate - x0) / (x1 - x0)
            x0, y0 = x1, y1
        return estimate

    def describe(self) -> str:
        """One line: backend, device, threads, batch size and calibration points."""
        points = f", {len(self.calibration)} measured calibration points" * bool(self.calibration)
        return (
            f"{self.backend} on {self.device} ({self.device_name}), {self.threads} thread(s), "
            f"batch {self.batch_size}{points}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of the table."""
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        data["calibration"] = [list(point) for point in self.calibration]
        return {"format": TABLE_FORMAT, **data}


def layer_widths(module: nn.Module) -> tuple[int, int, int]:
    """(in, out, groups) of a convolution, (in_features, out_features, 1) of a linear layer.

    Raises:
        PruningError: Another kind of module.
    """
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.in_channels, module.out_channels, module.groups
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, 1
    raise PruningError(f"a latency table profiles conv/linear layers, not {type(module).__name__}")


def architecture_id(model: nn.Module) -> str:
    """Hex fingerprint of what fixes a model's work (:func:`envs.backends.compile_key`): the
    module tree as printed and the parameter shapes; equal for any weights."""
    return hashlib.sha256(repr(compile_key(model)).encode()).hexdigest()[:16]


def device_name(device: str) -> str:
    """The processor (``/proc/cpuinfo`` model name, else the platform's) or the GPU's name."""
    where = torch.device(device)
    if where.type == "cuda":
        return torch.cuda.get_device_name(where)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def measure_table(
    model: nn.Module,
    input_shape: tuple[int, ...],
    layer_names: Sequence[str],
    config: LatencyConfig,
    model_name: str = "model",
) -> LatencyTable:
    """Profile ``model`` (:func:`envs.latency.profile_layers`) into a table."""
    per_layer, overhead = profile_layers(model, tuple(input_shape), layer_names, config)
    modules = dict(model.named_modules())
    layers = {n: LayerLatency(per_layer[n], *layer_widths(modules[n])) for n in layer_names}
    how = (
        "forward hooks"
        if config.backend == "torch"
        else (f"eager forward hooks scaled to the {config.backend} whole-model median")
    )
    return LatencyTable(
        model=model_name,
        architecture=architecture_id(model),
        input_shape=tuple(input_shape),
        batch_size=config.batch_size,
        threads=config.threads,
        backend=config.backend,
        device=str(config.device),
        device_name=device_name(config.device),
        overhead_ms=overhead,
        layers=layers,
        profile=f"{how}; median of {config.repeats} runs after {config.warmup} warm-up",
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def calibrate_table(
    table: LatencyTable, model: nn.Module, pruned: Sequence[nn.Module], config: LatencyConfig
) -> LatencyTable:
    """``table`` with a measured point per pruned copy of ``model``: (its linear estimate, its
    relative latency timed interleaved with ``model``, every repeat) on this device."""
    meter = LatencyMeter(model, table.input_shape, replace(config, rel_tol=None))
    points = [
        (table.estimate_ms(p) / table.latency_ms, meter.relative_latency(p)[0]) for p in pruned
    ]
    return replace(table, calibration=tuple(sorted(points)))


def table_path(root: str | Path, model_name: str, model: nn.Module, config: LatencyConfig) -> Path:
    """Where the table of ``model`` timed with ``config`` on this device is cached under ``root``
    (``<cache>/latency_tables``): one file per model, architecture, backend, batch size, threads
    and device."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_name)[:40]
    where = hashlib.sha256(f"{config.device}|{device_name(config.device)}".encode()).hexdigest()
    name = (
        f"{slug}-{architecture_id(model)[:12]}-{config.backend}-b{config.batch_size}"
        f"-t{config.threads}-{torch.device(config.device).type}-{where[:8]}.json"
    )
    return Path(root).expanduser() / name


def cached_table(
    root: str | Path,
    model: nn.Module,
    input_shape: tuple[int, ...],
    layer_names: Sequence[str],
    config: LatencyConfig,
    model_name: str = "model",
) -> tuple[LatencyTable, Path, bool]:
    """The table of ``model`` on this device from the cache under ``root``, else measured
    (:func:`measure_table`) and saved there.

    A cached file that is unreadable or does not fit (another rlprune wrote it, or the layers
    differ) is measured again and replaced.

    Returns:
        (table, its file, whether it was read from the cache).
    """
    path = table_path(root, model_name, model, config)
    if path.is_file():
        try:
            table = load_table(path)
            check_table(table, path, model, input_shape, config)
            if set(table.layers) == set(layer_names) and table.device == str(config.device):
                return table, path, True
        except CheckpointError:
            pass  # a stale cache entry: measured again below
    table = measure_table(model, input_shape, layer_names, config, model_name)
    return table, save_table(table, path), False


def save_table(table: LatencyTable, path: str | Path) -> Path:
    """Write ``table`` as JSON to ``path`` atomically; returns the path."""
    write_json_atomic(path, table.to_dict())
    return Path(path)


def load_table(path: str | Path) -> LatencyTable:
    """Read a table written by :func:`save_table`.

    Raises:
        CheckpointError: Missing, not JSON, another format, or a field missing or mistyped.
    """
    path = Path(path).expanduser()
    fix = "measure it again with scripts/latency_table.py"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"no latency table at {path}; check --latency-table") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"latency table {path} is not readable JSON ({err}); {fix}") from None
    if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
        raise CheckpointError(f"{path} is not an rlprune latency table ({TABLE_FORMAT}); {fix}")
    try:
        layers = {str(n): LayerLatency(**row) for n, row in data["layers"].items()}
        table = LatencyTable(
            **{k: data[k] for k in LatencyTable.__dataclass_fields__ if k != "layers"},
            layers=layers,
        )
        table = _typed(table)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(
            f"latency table {path} is incomplete or corrupt ({type(err).__name__}: {err}); {fix}"
        ) from None
    return table


def _typed(table: LatencyTable) -> LatencyTable:
    """``table`` with its numbers checked and converted (ValueError/TypeError when they are not)."""
    layers = {
        n: LayerLatency(float(r.ms), int(r.in_channels), int(r.out_channels), int(r.groups))
        for n, r in table.layers.items()
    }
    if not layers or any(
        r.ms < 0 or min(r.in_channels, r.out_channels, r.groups) < 1 for r in layers.values()
    ):
        raise ValueError("a layer has a negative time or a width below 1")
    if float(table.overhead_ms) < 0 or int(table.batch_size) < 1:
        raise ValueError("negative overhead or batch size below 1")
    if any(not (0 < float(x) and 0 < float(y)) for x, y in table.calibration):
        raise ValueError("a calibration point is not a pair of positive ratios")
    return LatencyTable(
        model=str(table.model),
        architecture=str(table.architecture),
        input_shape=tuple(int(d) for d in table.input_shape),
        batch_size=int(table.batch_size),
        threads=None if table.threads is None else int(table.threads),
        backend=str(table.backend),
        device=str(table.device),
        device_name=str(table.device_name),
        overhead_ms=float(table.overhead_ms),
        layers=layers,
        profile=str(table.profile),
        created=str(table.created),
        calibration=tuple(sorted((float(x), float(y)) for x, y in table.calibration)),
    )


def check_table(
    table: LatencyTable,
    path: str | Path,
    model: nn.Module,
    input_shape: tuple[int, ...],
    config: LatencyConfig,
) -> None:
    """Raise if ``table`` was not measured for ``model`` with ``config``'s batch, threads, backend.

    The device may differ: measuring elsewhere is what a table is for.

    Raises:
        CheckpointError: One line naming the file, what differs (theirs and ours) and the fix.
    """
    check_table_settings(table, path, config)
    _check_same(path, "input shape", list(table.input_shape), list(input_shape), "--dataset")
    _check_same(path, "architecture", table.architecture, architecture_id(model), "--model")


def check_table_settings(table: LatencyTable, path: str | Path, config: LatencyConfig) -> None:
    """The part of :func:`check_table` that needs no model: batch size, threads, backend."""
    _check_same(path, "batch size", table.batch_size, config.batch_size, "--latency-batch-size")
    _check_same(path, "threads", table.threads, config.threads, "--threads")
    _check_same(path, "backend", table.backend, config.backend, "--latency-backend")


def _check_same(path: str | Path, what: str, theirs: Any, ours: Any, flag: str) -> None:
    if theirs != ours:
        raise CheckpointError(
            f"latency table {path} was measured for {what} {theirs}, this run has {ours}; "
            f"pass the {flag} it was measured with, or measure a table for these settings "
            "(scripts/latency_table.py)"
        )


class TableLatency:
    """Latency from a table measured elsewhere, instead of timing (``--latency-table``).

    Implements :class:`envs.pruning_env.LatencySource`: the profile is the table's, and a
    candidate's latency is :meth:`LatencyTable.estimate_ms` of its real widths. Nothing is
    timed, so the search optimises for the table's device; the final models are still timed
    where the search runs (``config``).

    Args:
        table: The loaded table.
        path: Its file, for messages and reports.
        reference: The unpruned model.
        input_shape: One sample's shape.
        config: The run's latency settings; batch size, threads and backend must be the table's.

    Raises:
        CheckpointError: The table does not fit (:func:`check_table`).
    """

    def __init__(
        self,
        table: LatencyTable,
        path: str | Path,
        reference: nn.Module,
        input_shape: tuple[int, ...],
        config: LatencyConfig,
    ) -> None:
        check_table(table, path, reference, input_shape, config)
        self.table, self.path, self.config = table, Path(path), config
        self.base_ms = table.estimate_ms(reference)

    def profile(self, layer_names: Sequence[str]) -> tuple[dict[str, float], float]:
        """The table's per-layer ms and overhead.

        Raises:
            CheckpointError: The table's layers are not ``layer_names``.
        """
        if set(layer_names) != set(self.table.layers):
            missing = sorted(set(layer_names) ^ set(self.table.layers))[:3]
            raise CheckpointError(
                f"latency table {self.path} profiles other layers than the model has ({missing}); "
                "measure a table for this model (scripts/latency_table.py)"
            )
        return self.table.layer_ms(), self.table.overhead_ms

    def relative_latency(self, model: nn.Module, fresh: bool = False) -> tuple[float, float]:
        """(estimated relative latency, its ms): the linear estimate relative to the reference's,
        through the table's measured points (:meth:`LatencyTable.corrected`); deterministic, so
        ``fresh`` changes nothing."""
        relative = self.table.corrected(self.table.estimate_ms(model) / self.base_ms)
        return relative, relative * self.base_ms

    def describe(self) -> str:
        """Where the search's latency came from, for logs and reports."""
        return (
            f"search latency from the table {self.path} ({self.table.describe()}; not timed); "
            f"final latencies timed here with {self.config.backend} on {self.config.device} "
            f"({device_name(self.config.device)})"
        )
