"""Latency backends: the runtime a model is timed in (eager PyTorch, TorchScript, ONNX Runtime).

A network is deployed through a runtime, and which layers are cheap differs between runtimes
(operator fusion, memory layouts, threading), so the search times every candidate in the runtime
it will run in. A backend turns a model into the forward pass that is timed:

- ``torch``: the module itself, eager PyTorch (the default).
- ``torchscript``: ``torch.jit.trace`` then ``torch.jit.freeze`` (weights folded in as
  constants, BatchNorm folded into the convolutions), run by the TorchScript interpreter.
- ``onnxruntime``: exported with ``torch.onnx`` (fixed input shape, in memory) and run by an ONNX
  Runtime session (:func:`models.export.ort_session`: all graph optimisations, intra-op threads
  fixed to the timing's threads; the CPU provider, or CUDA's on a GPU).

Compiling (tracing, exporting, creating a session) costs time, so a :class:`Backend` keeps the
compiled forms of the last few architectures it saw, keyed by what fixes the runtime's work (the
module tree with its hyper-parameters, the parameter and buffer shapes, the input's shape): two
pruned copies with the same kept channels share one compiled form, whatever their weights, as
dense kernels take the same time for any values. It counts its compilations and their seconds.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from models.errors import RlpruneError
from models.export import export_onnx_bytes, ort_session, quiet_deprecations, require_onnxruntime

#: The runtimes a model can be timed in.
BACKENDS = ("torch", "torchscript", "onnxruntime")

#: A compiled forward pass: called with the input batch, its result is ignored.
Forward = Callable[[torch.Tensor], Any]


def check_backend(name: str) -> None:
    """Raise a one-line :class:`RlpruneError` if ``name`` is unknown or its packages are missing."""
    if name not in BACKENDS:
        raise RlpruneError(f"unknown latency backend '{name}'; choose {', '.join(BACKENDS)}")
    if name == "onnxruntime":
        require_onnxruntime("--latency-backend onnxruntime")


class Backend:
    """Compiles models for one runtime on one device, caching the compiled forms.

    Args:
        name: One of :data:`BACKENDS`.
        device: Where the model runs (``"cpu"``, ``"cuda[:N]"``).
        threads: Intra-op threads of an ONNX Runtime session (None: ORT's default). PyTorch's
            threads (eager and TorchScript) are set around each measurement instead.
        cache_size: Compiled forms kept (least recently used dropped first).

    Attributes:
        exports: Models compiled so far (cache misses; always 0 for ``torch``).
        compile_s: Seconds spent compiling them.

    Raises:
        RlpruneError: Unknown backend, or onnxruntime asked but not installed.
    """

    def __init__(
        self, name: str, device: str = "cpu", threads: int | None = None, cache_size: int = 8
    ) -> None:
        check_backend(name)
        self.name, self.device, self.threads = name, device, threads
        self.cache_size = max(cache_size, 1)
        self.exports = 0
        self.compile_s = 0.0
        self._cache: OrderedDict[tuple, Forward] = OrderedDict()

    def compile(self, model: nn.Module, x: torch.Tensor) -> Forward:
        """The forward pass of ``model`` (in eval mode) on batches shaped like ``x``, here.

        For ``torch`` it is the module itself; otherwise the cached or newly compiled form.

        Raises:
            RlpruneError: The model cannot be traced or exported (one line naming the fix).
        """
        if self.name == "torch":
            return model
        key = (compile_key(model), tuple(x.shape), x.dtype)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        start = time.perf_counter()
        compiled = _COMPILERS[self.name](model, x, self.device, self.threads)
        self.compile_s += time.perf_counter() - start
        self.exports += 1
        self._cache[key] = compiled
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return compiled


def compile_key(model: nn.Module) -> tuple:
    """What fixes a model's work in a compiled runtime: its module tree as printed (classes,
    widths, kernels, strides, groups...) and its parameter and buffer shapes, not their values."""
    params = tuple((n, tuple(p.shape), p.dtype) for n, p in model.named_parameters())
    buffers = tuple((n, tuple(b.shape), b.dtype) for n, b in model.named_buffers())
    return repr(model), params, buffers


def _torchscript(model: nn.Module, x: torch.Tensor, device: str, threads: int | None) -> Forward:
    """``torch.jit.freeze(torch.jit.trace(model, x))``."""
    try:
        with quiet_deprecations(), torch.no_grad():
            return torch.jit.freeze(torch.jit.trace(model.eval(), x, check_trace=False))
    except Exception as err:
        raise RlpruneError(
            f"--latency-backend torchscript cannot trace {type(model).__name__} "
            f"({type(err).__name__}: {_first_line(err)}); time it with --latency-backend torch"
        ) from None


def _onnxruntime(model: nn.Module, x: torch.Tensor, device: str, threads: int | None) -> Forward:
    """An ONNX Runtime session of ``model`` exported for ``x``'s shape, as a forward pass."""
    try:
        graph = export_onnx_bytes(model.eval(), x)
        session = ort_session(graph, threads=threads, device=device)
    except RlpruneError:
        raise
    except Exception as err:
        raise RlpruneError(
            f"--latency-backend onnxruntime cannot export or load {type(model).__name__} "
            f"({type(err).__name__}: {_first_line(err)}); time it with --latency-backend "
            "torchscript or torch"
        ) from None
    return OrtForward(session, device)


class OrtForward:
    """One ONNX Runtime inference on a torch batch, as a callable.

    On the CPU the batch is passed as a NumPy view (no copy); on a GPU it is bound in place
    (``io_binding``) and the output left on the device, as eager PyTorch would, and the call
    returns once the GPU is done.

    Attributes:
        session: The ``onnxruntime.InferenceSession``.
    """

    def __init__(self, session: Any, device: str) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self.cuda = torch.device(device).type == "cuda"

    def __call__(self, x: torch.Tensor) -> Any:
        if not self.cuda:
            return self.session.run(None, {self.input_name: x.detach().contiguous().numpy()})
        x = x.contiguous()
        index = x.device.index or 0
        binding = self.session.io_binding()
        binding.bind_input(self.input_name, "cuda", index, np.float32, list(x.shape), x.data_ptr())
        binding.bind_output(self.output_name, "cuda", index)
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return binding


_COMPILERS: dict[str, Callable[[nn.Module, torch.Tensor, str, int | None], Forward]] = {
    "torchscript": _torchscript,
    "onnxruntime": _onnxruntime,
}


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no message"
