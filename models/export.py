"""Export a (pruned) model to TorchScript or ONNX, and prove the file computes the same outputs.

Both exporters work on a CPU copy of the model in eval mode, so the files run anywhere and the
source model is left as it was. After writing, each file is reloaded and run on a random batch of
a different size than the example input (which also proves the batch axis is not baked in):

- TorchScript: ``torch.jit.load`` outputs must match PyTorch's within ``atol=rtol=1e-5`` (same
  kernels, so only summation-order noise is allowed).
- ONNX: the graph must pass ``onnx.checker``; then outputs are compared within ``atol=rtol=1e-4``
  (other kernels) using ONNX Runtime (the ``onnx`` extra installs it), else, when it is not
  installed, ONNX's pure-Python reference evaluator (``onnx.reference``). Only if neither can run
  the graph, the inferred output shape is checked.

:func:`ort_session` is the one place an ONNX Runtime session is made: for this check and for the
``onnxruntime`` latency backend (:mod:`envs.backends`).

The ONNX file comes from the TorchScript-based exporter (``dynamo=False``): the newer
``torch.export``-based default needs the ``onnxscript`` package. torch marks both ``torch.jit`` and
that exporter as deprecated; their deprecation warnings are silenced here.

The exported graphs take normalised inputs; :func:`deployment_info` describes the normalisation
(per-channel mean and std, pixel scale, resize) and the class names, for a JSON sidecar.
"""

from __future__ import annotations

import copy
import importlib
import io
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from models.errors import RlpruneError

if TYPE_CHECKING:
    import onnx
    import onnxruntime

TORCHSCRIPT_TOLERANCE = 1e-5
ONNX_TOLERANCE = 1e-4
CHECK_SEED = 0


@dataclass(frozen=True)
class ExportResult:
    """An exported file and how its correctness was verified.

    Attributes:
        path: The written file.
        check: What verified it: ``"torch.jit.load"``, ``"onnxruntime"`` or ``"onnx.reference"``
            (outputs compared with PyTorch's), or ``"onnx.checker+shape"`` (graph valid and
            output shape right, outputs not compared).
        max_abs_diff: Largest absolute difference from PyTorch's outputs, None if not compared.
        batch_size: Batch size of the random check input.
    """

    path: Path
    check: str
    max_abs_diff: float | None
    batch_size: int

    def describe(self) -> str:
        """One line for humans: the file, the check and the largest difference."""
        if self.max_abs_diff is None:
            return f"{self.path}: {self.check} passed (outputs not compared: no ONNX runtime)"
        return (
            f"{self.path}: {self.check} outputs match PyTorch on a batch of {self.batch_size} "
            f"(max abs diff {self.max_abs_diff:.2e})"
        )


def export_torchscript(
    model: nn.Module, example_input: torch.Tensor, path: str | Path
) -> ExportResult:
    """Traces ``model`` to TorchScript, saves it, reloads it and checks its outputs.

    Args:
        model: Classifier returning one tensor; not modified.
        example_input: A batch the model accepts, ``[N, C, H, W]``.
        path: Destination, conventionally ``*.ts`` or ``*.pt``.

    Returns:
        The file and its check (``"torch.jit.load"``).

    Raises:
        RlpruneError: Tracing fails, or the reloaded module's outputs differ from the model's.
    """
    path = Path(path)
    source, example = _cpu_eval_copy(model, example_input)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with quiet_deprecations(), torch.no_grad():
            torch.jit.save(torch.jit.trace(source, example, check_trace=False), str(path))
    except Exception as err:
        raise RlpruneError(
            f"TorchScript export of {path} failed ({type(err).__name__}: {_first_line(err)}); "
            "torch.jit.trace cannot follow this model - try --format onnx"
        ) from err
    x = _check_batch(example)
    with quiet_deprecations():
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        got = loaded(x)
    return _compare(
        "TorchScript", path, "torch.jit.load", got, _reference(source, x), x, TORCHSCRIPT_TOLERANCE
    )


def export_onnx(
    model: nn.Module, example_input: torch.Tensor, path: str | Path, opset: int | None = None
) -> ExportResult:
    """Exports ``model`` to ONNX with a dynamic batch axis, validates the graph, checks outputs.

    The graph has one input ``input`` ``[batch, C, H, W]`` and one output ``logits``
    ``[batch, num_classes]``.

    Args:
        model: Classifier returning one tensor; not modified.
        example_input: A batch the model accepts, ``[N, C, H, W]``.
        path: Destination, conventionally ``*.onnx``.
        opset: ONNX opset version; None uses torch's default.

    Returns:
        The file and its check (see :class:`ExportResult`).

    Raises:
        RlpruneError: ``onnx`` is not installed, the export or ``onnx.checker`` fails, or the
            ONNX outputs differ from the model's.
    """
    try:
        import onnx
    except ImportError as err:
        raise RlpruneError('ONNX export needs the onnx package; pip install -e ".[onnx]"') from err
    path = Path(path)
    source, example = _cpu_eval_copy(model, example_input)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _torch_onnx_export(source, example, str(path), dynamic_batch=True, opset=opset)
        graph = onnx.load(str(path))
        onnx.checker.check_model(graph, full_check=True)
    except Exception as err:
        raise RlpruneError(
            f"ONNX export of {path} failed ({type(err).__name__}: {_first_line(err)}); try "
            "another --opset, or --format torchscript"
        ) from err

    x = _check_batch(example)
    expected = _reference(source, x)
    run = _onnx_runner(graph, path)
    if run is None:
        return _check_onnx_shape(graph, path, expected, x)
    name, run_graph = run
    got = torch.from_numpy(np.asarray(run_graph(x.numpy())))
    return _compare("ONNX", path, name, got, expected, x, ONNX_TOLERANCE)


def deployment_info(recipe: Mapping[str, Any], files: Mapping[str, str]) -> dict[str, Any]:
    """What a user needs to run exported files outside rlprune (the export's ``.deploy.json``).

    Args:
        recipe: The saved pruned model's recipe (``load_pruned(path)[1]["recipe"]``).
        files: Exported file name by format, e.g. ``{"onnx": "pruned_model.onnx"}``.

    Returns:
        JSON-able dict: the files; the input (name ``input``, ``[batch, C, H, W]`` float32) and
        its ``preprocessing`` (scale, resize, per-channel mean and std; see
        :class:`models.data.Preprocessing`); the output (name ``logits``, ``[batch,
        num_classes]``) and ``class_names`` by index. A recipe of an older rlprune has no
        preprocessing nor class names: those are None.
    """
    return {
        "model": recipe["model"],
        "dataset": recipe.get("dataset"),
        "files": dict(files),
        "input": {
            "name": "input",
            "shape": ["batch", *recipe["input_shape"]],
            "dtype": "float32",
            "preprocessing": recipe.get("preprocessing"),
        },
        "output": {
            "name": "logits",
            "shape": ["batch", recipe["num_classes"]],
            "meaning": "class scores (softmax gives probabilities); argmax is the class index",
        },
        "class_names": recipe.get("class_names"),
    }


def export_onnx_bytes(model: nn.Module, example_input: torch.Tensor) -> bytes:
    """The ONNX graph of ``model`` (in eval mode; not modified) for exactly ``example_input``'s
    shape, in memory.

    Fixed shapes let ONNX Runtime plan the whole graph; the latency backend times one batch size.
    The graph has one input ``input`` and one output ``logits``. Exporter errors propagate.
    """
    buffer = io.BytesIO()
    _torch_onnx_export(model, example_input, buffer, dynamic_batch=False, opset=None)
    return buffer.getvalue()


def require_onnxruntime(what: str) -> ModuleType:
    """The ``onnxruntime`` module, after checking that ``onnx`` (the exporter needs it) is there.

    Args:
        what: What needs them, for the message (e.g. ``"--latency-backend onnxruntime"``).

    Raises:
        RlpruneError: One of the two packages is missing; the message names the extra to install.
    """
    missing, module = [], None
    for name in ("onnx", "onnxruntime"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise RlpruneError(
            f"{what} needs the {' and '.join(missing)} package{'s' * (len(missing) > 1)}; "
            'pip install -e ".[onnx]"'
        )
    return module


def ort_session(
    graph: bytes | str | Path, *, threads: int | None = None, device: str = "cpu"
) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session of ``graph`` (serialized bytes or a file) on ``device``.

    Args:
        graph: The ONNX model.
        threads: Intra-op threads (the parallelism inside an operator); None: ORT's default (one
            per core). Inter-op parallelism is off (one operator at a time), as in PyTorch.
        device: ``"cpu"`` (CPUExecutionProvider) or ``"cuda[:N]"`` (CUDAExecutionProvider on GPU
            N, the CPU for operators it lacks).

    All graph optimisations are on. Idle worker threads sleep instead of spinning, as PyTorch's
    do under the scripts' ``OMP_WAIT_POLICY=PASSIVE`` (spinning slowed a shared CPU).

    Raises:
        RlpruneError: onnx/onnxruntime missing, or CUDA asked of an onnxruntime without it.
    """
    ort = require_onnxruntime("ONNX Runtime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers: list = ["CPUExecutionProvider"]
    where = torch.device(device)
    if where.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RlpruneError(
                f"onnxruntime {ort.__version__} here cannot run on {device} (no "
                "CUDAExecutionProvider); pip install onnxruntime-gpu, or time on --device cpu"
            )
        providers = [("CUDAExecutionProvider", {"device_id": where.index or 0}), *providers]
    source = graph if isinstance(graph, bytes) else str(graph)
    return ort.InferenceSession(source, options, providers=providers)


def _torch_onnx_export(
    model: nn.Module,
    example: torch.Tensor,
    f: str | io.BytesIO,
    dynamic_batch: bool,
    opset: int | None,
) -> None:
    """torch's TorchScript-based ONNX exporter: input ``input``, output ``logits``."""
    dynamic = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with quiet_deprecations(), torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            f,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,
        )


def _onnx_runner(
    graph: onnx.ModelProto, path: Path
) -> tuple[str, Callable[[np.ndarray], np.ndarray]] | None:
    """(check name, function input array -> output array) of the best available ONNX runtime:
    ONNX Runtime, else (when it is not installed) ONNX's reference evaluator.

    Returns None when no runtime can load the graph (e.g. an op the reference evaluator lacks).
    """
    try:
        import onnxruntime  # noqa: F401 - is it installed?
    except ImportError:
        onnxruntime = None
    if onnxruntime is not None:
        try:
            session = ort_session(path)
        except Exception as err:
            raise RlpruneError(
                f"ONNX export of {path}: onnxruntime cannot load the graph ({_first_line(err)}); "
                "try another --opset"
            ) from err
        return "onnxruntime", lambda x: session.run(None, {"input": x})[0]
    from onnx.reference import ReferenceEvaluator

    try:
        evaluator = ReferenceEvaluator(graph)
    except Exception as err:  # an op without a reference implementation
        warnings.warn(
            f"onnx.reference cannot run {path} ({err}); checking shapes only", stacklevel=3
        )
        return None
    return "onnx.reference", lambda x: evaluator.run(None, {"input": x})[0]


def _check_onnx_shape(
    graph: onnx.ModelProto, path: Path, expected: torch.Tensor, x: torch.Tensor
) -> ExportResult:
    """Checks the inferred output shape is ``[batch, *expected.shape[1:]]``."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(graph, strict_mode=True)
    except Exception as err:
        raise RlpruneError(
            f"ONNX export of {path}: shape inference fails ({_first_line(err)}); use another opset"
        ) from err
    dims = inferred.graph.output[0].type.tensor_type.shape.dim
    shape = [d.dim_param or d.dim_value for d in dims]
    want = ["batch", *expected.shape[1:]]
    if shape != want:
        raise RlpruneError(f"ONNX export of {path}: output shape {shape}, expected {want}")
    return ExportResult(path, "onnx.checker+shape", None, len(x))


def _compare(
    fmt: str,
    path: Path,
    check: str,
    got: torch.Tensor,
    expected: torch.Tensor,
    x: torch.Tensor,
    tolerance: float,
) -> ExportResult:
    if got.shape != expected.shape:
        raise RlpruneError(
            f"{fmt} export of {path}: output shape {tuple(got.shape)} on a batch of {len(x)}, "
            f"PyTorch gives {tuple(expected.shape)}; the batch size is baked into the graph - "
            "use x.flatten(1) or x.view(x.size(0), -1) instead of a fixed batch in forward()"
        )
    diff = (got.float() - expected.float()).abs().max().item()
    if not torch.allclose(got.float(), expected.float(), atol=tolerance, rtol=tolerance):
        raise RlpruneError(
            f"{fmt} export of {path}: outputs differ from PyTorch's (max abs diff {diff:.3g} > "
            f"tolerance {tolerance:g}, checked with {check}); the export baked in a shape- or "
            "data-dependent branch of forward() - compute that branch with tensor ops"
        )
    return ExportResult(path, check, diff, len(x))


def _cpu_eval_copy(model: nn.Module, example_input: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1:
        raise RlpruneError("example_input must be a batched tensor, e.g. torch.zeros(1, C, H, W)")
    return copy.deepcopy(model).cpu().eval(), example_input.detach().cpu().float()


def _check_batch(example: torch.Tensor) -> torch.Tensor:
    """A seeded random batch two samples larger than the example's, same sample shape."""
    generator = torch.Generator().manual_seed(CHECK_SEED)
    return torch.randn(len(example) + 2, *example.shape[1:], generator=generator)


def _reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    if not isinstance(out, torch.Tensor):
        raise RlpruneError(
            f"export expects a model returning one tensor, got {type(out).__name__}; wrap the "
            "model so its forward returns the logits"
        )
    return out


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no message"


@contextmanager
def quiet_deprecations() -> Iterator[None]:
    """Silences torch's deprecation notices of torch.jit and the TorchScript ONNX exporter."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export")
        yield
